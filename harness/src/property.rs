//! Property values and their wire encoding (Envoy's `serializeValue` in `wasm/context.cc`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::headermap;

/// A property value as a test sets it. [`PropertyValue::encode`] produces the bytes Envoy hands
/// to the module for a CEL value of the same type.
#[derive(Debug, Clone, PartialEq)]
pub enum PropertyValue {
    /// CEL string: raw UTF-8 bytes.
    String(String),
    /// CEL int: 8-byte little-endian `i64`.
    Int(i64),
    /// CEL uint: 8-byte little-endian `u64`.
    Uint(u64),
    /// CEL bool: 1 byte.
    Bool(bool),
    /// CEL bytes (and serialized protobuf messages such as `node`): raw bytes.
    Bytes(Vec<u8>),
    /// CEL double: 8-byte little-endian `f64`.
    Double(f64),
    /// CEL timestamp: 8-byte little-endian `i64` nanoseconds since the Unix epoch.
    Timestamp(SystemTime),
    /// CEL duration: 8-byte little-endian `i64` nanoseconds.
    Duration(Duration),
    /// CEL map of strings: the proxy-wasm header-map serialization.
    Map(Vec<(String, String)>),
}

impl PropertyValue {
    /// The bytes Envoy returns from `proxy_get_property` for this value.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            PropertyValue::String(s) => s.as_bytes().to_vec(),
            PropertyValue::Int(i) => i.to_le_bytes().to_vec(),
            PropertyValue::Uint(u) => u.to_le_bytes().to_vec(),
            PropertyValue::Bool(b) => vec![u8::from(*b)],
            PropertyValue::Bytes(b) => b.clone(),
            PropertyValue::Double(d) => d.to_le_bytes().to_vec(),
            PropertyValue::Timestamp(t) => timestamp_nanos(*t).to_le_bytes().to_vec(),
            PropertyValue::Duration(d) => duration_nanos(*d).to_le_bytes().to_vec(),
            PropertyValue::Map(pairs) => headermap::serialize(pairs),
        }
    }
}

/// Nanoseconds since the Unix epoch, saturating (times before the epoch are negative).
pub(crate) fn timestamp_nanos(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => duration_nanos(d),
        Err(e) => duration_nanos(e.duration()).saturating_neg(),
    }
}

pub(crate) fn duration_nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl From<&str> for PropertyValue {
    fn from(v: &str) -> Self {
        PropertyValue::String(v.to_string())
    }
}
impl From<String> for PropertyValue {
    fn from(v: String) -> Self {
        PropertyValue::String(v)
    }
}
impl From<&String> for PropertyValue {
    fn from(v: &String) -> Self {
        PropertyValue::String(v.clone())
    }
}
impl From<i64> for PropertyValue {
    fn from(v: i64) -> Self {
        PropertyValue::Int(v)
    }
}
impl From<i32> for PropertyValue {
    fn from(v: i32) -> Self {
        PropertyValue::Int(i64::from(v))
    }
}
impl From<u64> for PropertyValue {
    fn from(v: u64) -> Self {
        PropertyValue::Uint(v)
    }
}
impl From<u32> for PropertyValue {
    fn from(v: u32) -> Self {
        PropertyValue::Uint(u64::from(v))
    }
}
impl From<bool> for PropertyValue {
    fn from(v: bool) -> Self {
        PropertyValue::Bool(v)
    }
}
impl From<f64> for PropertyValue {
    fn from(v: f64) -> Self {
        PropertyValue::Double(v)
    }
}
impl From<Vec<u8>> for PropertyValue {
    fn from(v: Vec<u8>) -> Self {
        PropertyValue::Bytes(v)
    }
}
impl From<&[u8]> for PropertyValue {
    fn from(v: &[u8]) -> Self {
        PropertyValue::Bytes(v.to_vec())
    }
}
impl From<SystemTime> for PropertyValue {
    fn from(v: SystemTime) -> Self {
        PropertyValue::Timestamp(v)
    }
}
impl From<Duration> for PropertyValue {
    fn from(v: Duration) -> Self {
        PropertyValue::Duration(v)
    }
}
impl From<Vec<(String, String)>> for PropertyValue {
    fn from(v: Vec<(String, String)>) -> Self {
        PropertyValue::Map(v)
    }
}
impl From<&[(&str, &str)]> for PropertyValue {
    fn from(v: &[(&str, &str)]) -> Self {
        PropertyValue::Map(
            v.iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_envoy_serialize_value() {
        assert_eq!(PropertyValue::from("abc").encode(), b"abc");
        assert_eq!(PropertyValue::Int(-2).encode(), (-2i64).to_le_bytes());
        assert_eq!(PropertyValue::Uint(7).encode(), 7u64.to_le_bytes());
        assert_eq!(PropertyValue::Bool(true).encode(), vec![1]);
        assert_eq!(
            PropertyValue::Duration(Duration::from_millis(3)).encode(),
            3_000_000i64.to_le_bytes()
        );
        let t = UNIX_EPOCH + Duration::from_secs(2);
        assert_eq!(
            PropertyValue::Timestamp(t).encode(),
            2_000_000_000i64.to_le_bytes()
        );
        assert_eq!(
            PropertyValue::Map(vec![("a".into(), "1".into())]).encode(),
            headermap::serialize(&[("a", "1")])
        );
    }
}
