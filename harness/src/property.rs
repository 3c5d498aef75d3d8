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
    /// An `envoy.config.core.v3.Metadata` message (`xds.route_metadata`, `xds.cluster_metadata`,
    /// `xds.listener_metadata`, `metadata`...) in its JSON form, e.g.
    /// `{"filter_metadata": {"envoy.filters.http.wasm": {"key": "value"}}}`. The whole value
    /// reads as the serialized protobuf message; paths below it walk the message as Envoy does:
    /// `filter_metadata` is a map of `google.protobuf.Struct`, a struct reads as a map (the
    /// header-map serialization, values serialized recursively), a list as a map of elements
    /// with empty values, an element by its index, a number as a little-endian `f64`, a bool as
    /// one byte, a string as its bytes, and `null` fails to serialize. Envoy lists the keys of a
    /// struct in its hash-map order; the harness in `serde_json`'s map order (sorted by key).
    Metadata(serde_json::Value),
    /// A `google.protobuf.Struct` or `Value` given as JSON (`xds.node.metadata`, a struct
    /// inside metadata), read as Envoy serializes the CEL value: an object as a map and an array
    /// as a map of elements with empty values (both in the header-map serialization, values
    /// serialized recursively), a number as a little-endian `f64`, a bool as one byte, a string
    /// as its bytes; `null` fails to serialize. Paths below it walk objects by key and arrays by
    /// index.
    Struct(serde_json::Value),
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
            PropertyValue::Metadata(metadata) => metadata_message(metadata),
            // `null` has no encoding; `lookup` reports it as a serialization failure.
            PropertyValue::Struct(value) => cel_value(value).unwrap_or_default(),
        }
    }

    /// The bytes (or the failure) Envoy returns for `path` below this value, `None` for a path
    /// that does not exist.
    pub(crate) fn lookup(&self, path: &[String]) -> Option<Result<Vec<u8>, crate::error::Status>> {
        match (self, path) {
            (PropertyValue::Struct(value), path) => walk(value, path),
            (value, []) => Some(Ok(value.encode())),
            (PropertyValue::Map(pairs), [key]) => pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| Ok(v.as_bytes().to_vec())),
            (PropertyValue::Metadata(metadata), [field, rest @ ..]) => {
                let map = match field.as_str() {
                    "filter_metadata" => metadata.get("filter_metadata"),
                    // Typed metadata (`Any` values) is not emulated: always an empty map.
                    "typed_filter_metadata" => None,
                    _ => return None,
                };
                let empty = serde_json::Value::Object(serde_json::Map::new());
                let map = map.filter(|m| m.is_object()).unwrap_or(&empty);
                walk(map, rest)
            }

            _ => None,
        }
    }
}

/// The CEL value at `path` below `value` (objects by key, arrays by index), serialized.
fn walk(
    mut value: &serde_json::Value,
    path: &[String],
) -> Option<Result<Vec<u8>, crate::error::Status>> {
    for segment in path {
        value = match value {
            serde_json::Value::Object(fields) => fields.get(segment)?,
            serde_json::Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cel_value(value).ok_or(crate::error::Status::SerializationFailure))
}

/// A JSON value as Envoy serializes the CEL value of a `google.protobuf.Value`.
fn cel_value(value: &serde_json::Value) -> Option<Vec<u8>> {
    use serde_json::Value;
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => vec![u8::from(*b)],
        Value::Number(n) => n.as_f64().unwrap_or_default().to_le_bytes().to_vec(),
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Array(items) => {
            let pairs = items
                .iter()
                .map(|item| cel_value(item).map(|bytes| (bytes, Vec::new())))
                .collect::<Option<Vec<_>>>()?;
            headermap::serialize(&pairs)
        }
        Value::Object(fields) => {
            let pairs = fields
                .iter()
                .map(|(key, item)| cel_value(item).map(|bytes| (key.as_bytes().to_vec(), bytes)))
                .collect::<Option<Vec<_>>>()?;
            headermap::serialize(&pairs)
        }
    })
}

/// Protobuf wire encoding of `envoy.config.core.v3.Metadata` (its `filter_metadata`).
fn metadata_message(metadata: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(serde_json::Value::Object(namespaces)) = metadata.get("filter_metadata") {
        for (namespace, value) in namespaces {
            let mut entry = Vec::new();
            length_delimited(&mut entry, 1, namespace.as_bytes());
            let fields = match value {
                serde_json::Value::Object(fields) => struct_message(fields),
                _ => Vec::new(),
            };
            length_delimited(&mut entry, 2, &fields);
            length_delimited(&mut out, 1, &entry);
        }
    }
    out
}

/// `google.protobuf.Struct`: map<string, Value> fields = 1.
fn struct_message(fields: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in fields {
        let mut entry = Vec::new();
        length_delimited(&mut entry, 1, key.as_bytes());
        length_delimited(&mut entry, 2, &value_message(value));
        length_delimited(&mut out, 1, &entry);
    }
    out
}

/// `google.protobuf.Value`: the one field of its `kind` that is set.
fn value_message(value: &serde_json::Value) -> Vec<u8> {
    use serde_json::Value;
    let mut out = Vec::new();
    match value {
        Value::Null => out.extend_from_slice(&[0x08, 0x00]),
        Value::Number(n) => {
            out.push(0x11);
            out.extend_from_slice(&n.as_f64().unwrap_or_default().to_le_bytes());
        }
        Value::String(s) => length_delimited(&mut out, 3, s.as_bytes()),
        Value::Bool(b) => out.extend_from_slice(&[0x20, u8::from(*b)]),
        Value::Object(fields) => length_delimited(&mut out, 5, &struct_message(fields)),
        Value::Array(items) => {
            let mut list = Vec::new();
            for item in items {
                length_delimited(&mut list, 1, &value_message(item));
            }
            length_delimited(&mut out, 6, &list);
        }
    }
    out
}

fn length_delimited(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push((field << 3) | 2);
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push(u8::try_from(len & 0x7f).unwrap_or_default() | 0x80);
        len >>= 7;
    }
    out.push(u8::try_from(len).unwrap_or_default());
    out.extend_from_slice(bytes);
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

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn at(value: &PropertyValue, path: &[&str]) -> Option<Result<String, crate::error::Status>> {
        let path: Vec<String> = path.iter().map(|p| (*p).to_string()).collect();
        value
            .lookup(&path)
            .map(|found| found.map(|bytes| hex(&bytes)))
    }

    /// The bytes Envoy 1.40 returned for the same metadata (`tests/properties_vs_envoy.rs`).
    #[test]
    fn metadata_reads_as_envoy_serializes_it() {
        let route = PropertyValue::Metadata(
            serde_json::from_str(
                r#"{"filter_metadata": {"envoy.filters.http.wasm":
                    {"key": ["value", 2.5, true, {"inner": "x"}, ["a", "b"]]}}}"#,
            )
            .unwrap_or_default(),
        );
        assert_eq!(
            hex(&route.encode()),
            "0a5e0a17656e766f792e66696c746572732e687474702e7761736d12430a410a036b6579123a32380a07\
             1a0576616c75650a091100000000000004400a0220010a102a0e0a0c0a05696e6e657212031a01780a0c\
             320a0a031a01610a031a0162"
        );
        let ns = ["filter_metadata", "envoy.filters.http.wasm"];
        assert_eq!(
            at(&route, &[ns[0], ns[1], "key"]),
            Some(Ok(
                "0500000005000000000000000800000000000000010000000000000014000000000000001a\
                     0000000000000076616c7565000000000000000004400000010000010000000500000001000000\
                     696e6e6572007800000002000000010000000000000001000000000000006100006200000000"
                    .split_whitespace()
                    .collect()
            ))
        );
        assert_eq!(
            at(&route, &[ns[0], ns[1], "key", "0"]),
            Some(Ok("76616c7565".into()))
        );
        assert_eq!(
            at(&route, &[ns[0], ns[1], "key", "1"]),
            Some(Ok("0000000000000440".into()))
        );
        assert_eq!(
            at(&route, &[ns[0], ns[1], "key", "2"]),
            Some(Ok("01".into()))
        );
        assert_eq!(
            at(&route, &[ns[0], ns[1], "key", "4", "1"]),
            Some(Ok("62".into()))
        );
        assert_eq!(at(&route, &[ns[0], ns[1], "key", "5"]), None);
        assert_eq!(at(&route, &[ns[0], ns[1], "key", "0", "deeper"]), None);
        assert_eq!(at(&route, &[ns[0], "other"]), None);
        assert_eq!(at(&route, &["nope"]), None);
        assert_eq!(
            at(&route, &["typed_filter_metadata"]),
            Some(Ok("00000000".into()))
        );
        let null = PropertyValue::Metadata(
            serde_json::from_str(r#"{"filter_metadata": {"vmeta": {"n": null}}}"#)
                .unwrap_or_default(),
        );
        assert_eq!(
            hex(&null.encode()),
            "0a120a05766d65746112090a070a016e12020800"
        );
        assert_eq!(
            at(&null, &["filter_metadata"]),
            Some(Err(crate::error::Status::SerializationFailure))
        );
        let node = PropertyValue::Struct(
            serde_json::from_str(r#"{"LABELS": {"app": "probe"}, "N": 3, "L": ["x", "y"]}"#)
                .unwrap_or_default(),
        );
        assert_eq!(
            at(&node, &["LABELS"]),
            Some(Ok("0100000003000000050000006170700070726f626500".into()))
        );
        assert_eq!(at(&node, &["N"]), Some(Ok("0000000000000840".into())));
        assert_eq!(
            at(&node, &["L"]),
            Some(Ok(
                "0200000001000000000000000100000000000000780000790000".into()
            ))
        );
        assert_eq!(at(&node, &["L", "1"]), Some(Ok("79".into())));
        assert_eq!(at(&node, &["nope"]), None);
    }
}
