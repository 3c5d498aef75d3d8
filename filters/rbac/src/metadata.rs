//! Dynamic metadata: Envoy's `MetadataMatcher` / `ValueMatcher`, and the protobuf encoding of
//! `google.protobuf.Struct` through which a wasm filter reads metadata.
//!
//! A wasm filter reads dynamic metadata with `proxy_get_property(["metadata"])`: Envoy hands
//! over the `envoy.config.core.v3.Metadata` message in protobuf wire format. (Deeper paths such
//! as `["metadata", "filter_metadata", <filter>]` are CEL maps, which Envoy serializes in its
//! own "pairs" format where a number and an 8-byte string look alike; the root message keeps
//! every type.) This module decodes `Metadata` and its `google.protobuf.Struct`s into
//! [`serde_json::Value`]s (numbers are doubles, as in `Struct`), so that matchers walk the same
//! tree Envoy's `Metadata::metadataValue` walks.

use serde::Deserialize;
use serde_json::{Map, Number, Value};
use wasmesh_sdk::matcher::StringMatcher;
use wasmesh_sdk::protobuf::{put_len, put_varint, Reader, WIRE_FIXED64, WIRE_LEN, WIRE_VARINT};

use crate::util::deserialize_non_empty;

/// How deep a decoded `Struct` may nest before it is refused (metadata is written by other
/// filters; a hostile one must not be able to exhaust the stack).
const MAX_DEPTH: usize = 32;

/// Decodes a protobuf-encoded `envoy.config.core.v3.Metadata` into its `filter_metadata`
/// (namespace → decoded `Struct`). `typed_filter_metadata` is skipped.
pub fn decode_metadata(bytes: &[u8]) -> Option<Vec<(String, Value)>> {
    let mut namespaces = Vec::new();
    let mut reader = Reader::new(bytes);
    while let Some((field, wire)) = next_key(&mut reader)? {
        if (field, wire) != (1, WIRE_LEN) {
            reader.skip(wire).ok()?;
            continue;
        }
        let mut entry = Reader::new(reader.length_delimited().ok()?);
        let mut key = String::new();
        let mut value = Value::Object(Map::new());
        while let Some((entry_field, entry_wire)) = next_key(&mut entry)? {
            match (entry_field, entry_wire) {
                (1, WIRE_LEN) => {
                    key = String::from_utf8(entry.length_delimited().ok()?.to_vec()).ok()?
                }
                (2, WIRE_LEN) => {
                    value = Value::Object(decode_struct_at(entry.length_delimited().ok()?, 0)?)
                }
                _ => entry.skip(entry_wire).ok()?,
            }
        }
        namespaces.push((key, value));
    }
    Some(namespaces)
}

/// Encodes `filter_metadata` as a protobuf `envoy.config.core.v3.Metadata` (what Envoy hands a
/// wasm filter for the `metadata` property). Used by tests and benchmarks to play the host.
pub fn encode_metadata(namespaces: &[(&str, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in namespaces {
        let mut entry = Vec::new();
        put_len(&mut entry, 1, name.as_bytes());
        put_len(&mut entry, 2, &encode_struct(value));
        put_len(&mut out, 1, &entry);
    }
    out
}

/// Decodes a protobuf-encoded `google.protobuf.Struct` into a JSON object.
pub fn decode_struct(bytes: &[u8]) -> Option<Value> {
    decode_struct_at(bytes, 0).map(Value::Object)
}

fn decode_struct_at(bytes: &[u8], depth: usize) -> Option<Map<String, Value>> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut fields = Map::new();
    let mut reader = Reader::new(bytes);
    while let Some((field, wire)) = next_key(&mut reader)? {
        match (field, wire) {
            (1, WIRE_LEN) => {
                let entry = reader.length_delimited().ok()?;
                let (key, value) = decode_entry(entry, depth)?;
                fields.insert(key, value);
            }
            _ => reader.skip(wire).ok()?,
        }
    }
    Some(fields)
}

fn decode_entry(bytes: &[u8], depth: usize) -> Option<(String, Value)> {
    let mut reader = Reader::new(bytes);
    let mut key = String::new();
    let mut value = Value::Null;
    while let Some((field, wire)) = next_key(&mut reader)? {
        match (field, wire) {
            (1, WIRE_LEN) => {
                key = String::from_utf8(reader.length_delimited().ok()?.to_vec()).ok()?
            }
            (2, WIRE_LEN) => value = decode_value(reader.length_delimited().ok()?, depth + 1)?,
            _ => reader.skip(wire).ok()?,
        }
    }
    Some((key, value))
}

fn decode_value(bytes: &[u8], depth: usize) -> Option<Value> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut reader = Reader::new(bytes);
    // An empty `Value` has no kind set; it reads as null, as Envoy's JSON conversion does.
    let mut value = Value::Null;
    while let Some((field, wire)) = next_key(&mut reader)? {
        value = match (field, wire) {
            (1, WIRE_VARINT) => {
                reader.varint().ok()?;
                Value::Null
            }
            (2, WIRE_FIXED64) => {
                let number = f64::from_le_bytes(reader.fixed64().ok()?);
                Number::from_f64(number).map_or(Value::Null, Value::Number)
            }
            (3, WIRE_LEN) => {
                Value::String(String::from_utf8(reader.length_delimited().ok()?.to_vec()).ok()?)
            }
            (4, WIRE_VARINT) => Value::Bool(reader.varint().ok()? != 0),
            (5, WIRE_LEN) => Value::Object(decode_struct_at(
                reader.length_delimited().ok()?,
                depth + 1,
            )?),
            (6, WIRE_LEN) => {
                let list = reader.length_delimited().ok()?;
                let mut items = Vec::new();
                let mut inner = Reader::new(list);
                while let Some((item_field, item_wire)) = next_key(&mut inner)? {
                    if (item_field, item_wire) == (1, WIRE_LEN) {
                        items.push(decode_value(inner.length_delimited().ok()?, depth + 1)?);
                    } else {
                        inner.skip(item_wire).ok()?;
                    }
                }
                Value::Array(items)
            }
            _ => {
                reader.skip(wire).ok()?;
                continue;
            }
        };
    }
    Some(value)
}

/// The next field key of `reader`: `Some(None)` at the end, `None` on malformed input.
fn next_key(reader: &mut Reader<'_>) -> Option<Option<(u64, u8)>> {
    if reader.is_done() {
        return Some(None);
    }
    reader.key().ok().map(Some)
}

/// Encodes a JSON object as a protobuf `google.protobuf.Struct` (what Envoy hands a wasm filter
/// for a metadata property). Used by tests and benchmarks to play the host; non-objects encode
/// as an empty `Struct`.
pub fn encode_struct(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    if let Value::Object(fields) = value {
        for (key, value) in fields {
            let mut entry = Vec::new();
            put_len(&mut entry, 1, key.as_bytes());
            put_len(&mut entry, 2, &encode_value(value));
            put_len(&mut out, 1, &entry);
        }
    }
    out
}

fn encode_value(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    match value {
        Value::Null => {
            put_varint(&mut out, 1 << 3);
            put_varint(&mut out, 0);
        }
        Value::Number(number) => {
            put_varint(&mut out, (2 << 3) | u64::from(WIRE_FIXED64));
            out.extend_from_slice(&number.as_f64().unwrap_or_default().to_le_bytes());
        }
        Value::String(text) => put_len(&mut out, 3, text.as_bytes()),
        Value::Bool(flag) => {
            put_varint(&mut out, 4 << 3);
            put_varint(&mut out, u64::from(*flag));
        }
        Value::Object(_) => put_len(&mut out, 5, &encode_struct(value)),
        Value::Array(items) => {
            let mut list = Vec::new();
            for item in items {
                put_len(&mut list, 1, &encode_value(item));
            }
            put_len(&mut out, 6, &list);
        }
    }
    out
}

/// `envoy.type.matcher.v3.MetadataMatcher`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataMatcher {
    /// The filter namespace (`envoy.filters.http.jwt_authn`).
    #[serde(deserialize_with = "deserialize_non_empty")]
    pub filter: String,
    /// Keys walked from the filter's `Struct` (at least one).
    pub path: Vec<PathSegment>,
    /// What the value found there must satisfy.
    pub value: ValueMatcher,
    /// Inverts the result (a missing value then matches).
    #[serde(default)]
    pub invert: bool,
}

/// `MetadataMatcher.PathSegment`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSegment {
    /// A key of a `Struct`.
    #[serde(deserialize_with = "deserialize_non_empty")]
    pub key: String,
}

impl MetadataMatcher {
    /// Checks the structural rules Envoy's proto validation enforces.
    pub fn check(&self) -> Result<(), String> {
        if self.path.is_empty() {
            return Err("`path` must have at least one segment".to_string());
        }
        self.value.check()
    }

    /// Whether the metadata of `filter` (a decoded `Struct`, `None` when absent) matches.
    pub fn matches(&self, filter_metadata: Option<&Value>) -> bool {
        let mut value = filter_metadata;
        for segment in &self.path {
            value = value.and_then(|v| v.get(segment.key.as_str()));
        }
        self.value.matches(value) != self.invert
    }
}

/// `envoy.type.matcher.v3.ValueMatcher`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawValueMatcher")]
pub enum ValueMatcher {
    /// The value is `null`.
    Null,
    /// A number in `[start, end)`.
    DoubleRange(f64, f64),
    /// A number equal to this.
    DoubleExact(f64),
    /// A string matching.
    String(StringMatcher),
    /// A boolean equal to this.
    Bool(bool),
    /// Present (`true`) or — as Envoy — a `false` that never matches.
    Present(bool),
    /// A list with at least one element matching.
    List(Box<ValueMatcher>),
    /// Any of these.
    Or(Vec<ValueMatcher>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValueMatcher {
    null_match: Option<Empty>,
    double_match: Option<RawDoubleMatcher>,
    string_match: Option<StringMatcher>,
    bool_match: Option<bool>,
    present_match: Option<bool>,
    list_match: Option<RawListMatcher>,
    or_match: Option<RawOrMatcher>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoubleMatcher {
    range: Option<RawDoubleRange>,
    exact: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoubleRange {
    #[serde(default)]
    start: f64,
    #[serde(default)]
    end: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListMatcher {
    one_of: Box<ValueMatcher>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrMatcher {
    value_matchers: Vec<ValueMatcher>,
}

impl TryFrom<RawValueMatcher> for ValueMatcher {
    type Error = String;

    fn try_from(raw: RawValueMatcher) -> Result<Self, String> {
        let mut set: Vec<ValueMatcher> = Vec::new();
        if raw.null_match.is_some() {
            set.push(ValueMatcher::Null);
        }
        if let Some(double) = raw.double_match {
            set.push(match (double.range, double.exact) {
                (Some(range), None) => ValueMatcher::DoubleRange(range.start, range.end),
                (None, Some(exact)) => ValueMatcher::DoubleExact(exact),
                _ => return Err("`double_match` needs exactly one of `range`, `exact`".to_string()),
            });
        }
        if let Some(matcher) = raw.string_match {
            set.push(ValueMatcher::String(matcher));
        }
        if let Some(flag) = raw.bool_match {
            set.push(ValueMatcher::Bool(flag));
        }
        if let Some(flag) = raw.present_match {
            set.push(ValueMatcher::Present(flag));
        }
        if let Some(list) = raw.list_match {
            set.push(ValueMatcher::List(list.one_of));
        }
        if let Some(or) = raw.or_match {
            if or.value_matchers.len() < 2 {
                return Err("`or_match.value_matchers` needs at least two matchers".to_string());
            }
            set.push(ValueMatcher::Or(or.value_matchers));
        }
        match (set.pop(), set.is_empty()) {
            (Some(matcher), true) => Ok(matcher),
            _ => Err("exactly one of `null_match`, `double_match`, `string_match`, `bool_match`, `present_match`, `list_match`, `or_match` must be set".to_string()),
        }
    }
}

impl ValueMatcher {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// Envoy's `ValueMatcher::match` on a `google.protobuf.Value` (`None`: not set).
    pub fn matches(&self, value: Option<&Value>) -> bool {
        match self {
            ValueMatcher::Null => matches!(value, Some(Value::Null)),
            ValueMatcher::DoubleRange(start, end) => value
                .and_then(Value::as_f64)
                .is_some_and(|n| *start <= n && n < *end),
            ValueMatcher::DoubleExact(exact) => {
                value.and_then(Value::as_f64).is_some_and(|n| n == *exact)
            }
            ValueMatcher::String(matcher) => value
                .and_then(Value::as_str)
                .is_some_and(|s| matcher.matches(s)),
            ValueMatcher::Bool(flag) => value.and_then(Value::as_bool) == Some(*flag),
            ValueMatcher::Present(flag) => *flag && value.is_some(),
            ValueMatcher::List(one_of) => value
                .and_then(Value::as_array)
                .is_some_and(|items| items.iter().any(|item| one_of.matches(Some(item)))),
            ValueMatcher::Or(matchers) => matchers.iter().any(|m| m.matches(value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn matcher(json: &str) -> MetadataMatcher {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn struct_round_trips_through_the_wire_format() {
        let value = json!({
            "jwt_payload": {
                "iss": "https://issuer.example",
                "sub": "alice",
                "groups": ["admin", "dev"],
                "exp": 4102444800.0,
                "email_verified": true,
                "nested": {"deep": {"x": null}}
            }
        });
        let bytes = encode_struct(&value);
        assert_eq!(decode_struct(&bytes), Some(value.clone()));
        assert_eq!(decode_struct(&[]), Some(json!({})));
        let metadata = encode_metadata(&[("a", json!({"x": 1.0})), ("b", value.clone())]);
        assert_eq!(
            decode_metadata(&metadata),
            Some(vec![
                ("a".to_string(), json!({"x": 1.0})),
                ("b".to_string(), value)
            ])
        );
    }

    #[test]
    fn decodes_the_metadata_message_envoy_sends() {
        // `proxy_get_property(["metadata"])` in Envoy 1.40 after jwt_authn stored
        // {"jwt_payload": {"sub": "alice"}} (prefix of a captured answer, lengths adjusted).
        let captured: Vec<u8> = [
            &[10, 48, 10, 28][..],
            b"envoy.filters.http.jwt_authn",
            &[18, 16, 10, 14, 10, 3],
            b"sub",
            &[18, 7, 26, 5],
            b"alice",
        ]
        .concat();
        assert_eq!(
            decode_metadata(&captured),
            Some(vec![(
                "envoy.filters.http.jwt_authn".to_string(),
                json!({"sub": "alice"})
            )])
        );
        assert_eq!(decode_metadata(&[10, 3, 10]), None);
    }

    #[test]
    fn malformed_or_hostile_structs_are_refused_not_panicked_on() {
        assert_eq!(decode_struct(&[0x0a, 0x05, 0x01]), None);
        assert_eq!(decode_struct(&[0xff; 11]), None);
        assert_eq!(decode_struct(&[0x0b]), None);
        // Nesting deeper than the limit.
        let mut value = json!("leaf");
        for _ in 0..40 {
            value = json!({ "n": value });
        }
        assert_eq!(decode_struct(&encode_struct(&value)), None);
        // Unknown fields are skipped.
        let mut bytes = vec![0x10, 0x01, 0x1d, 0, 0, 0, 0];
        bytes.extend(encode_struct(&json!({"a": "b"})));
        assert_eq!(decode_struct(&bytes), Some(json!({"a": "b"})));
    }

    #[test]
    fn value_matchers_follow_envoy() {
        let metadata = json!({"p": {"sub": "alice", "groups": ["dev", "admin"], "n": 3.0, "b": true, "z": null}});
        let m = |json: &str| matcher(json).matches(Some(&metadata));
        assert!(m(
            r#"{"filter": "f", "path": [{"key": "p"}, {"key": "sub"}], "value": {"string_match": {"exact": "alice"}}}"#
        ));
        assert!(!m(
            r#"{"filter": "f", "path": [{"key": "p"}, {"key": "sub"}], "value": {"string_match": {"exact": "bob"}}}"#
        ));
        assert!(m(
            r#"{"filter": "f", "path": [{"key": "p"}, {"key": "sub"}], "value": {"string_match": {"exact": "bob"}}, "invert": true}"#
        ));
        assert!(m(
            r#"{"filter": "f", "path": [{"key": "p"}, {"key": "groups"}], "value": {"list_match": {"one_of": {"string_match": {"exact": "admin"}}}}}"#
        ));
        assert!(!m(
            r#"{"filter": "f", "path": [{"key": "p"}, {"key": "sub"}], "value": {"list_match": {"one_of": {"string_match": {"exact": "alice"}}}}}"#
        ));
        assert!(m(
            r#"{"filter": "f", "path": [{"key": "p"}, {"key": "n"}], "value": {"double_match": {"range": {"start": 1, "end": 4}}}}"#
        ));
        assert!(!m(
            r#"{"filter": "f", "path": [{"key": "p"}, {"key": "n"}], "value": {"double_match": {"range": {"start": 1, "end": 3}}}}"#
        ));
        assert!(m(
            r#"{"filter": "f", "path": [{"key": "p"}, {"key": "n"}], "value": {"double_match": {"exact": 3}}}"#
        ));
        assert!(m(
            r#"{"filter": "f", "path": [{"key": "p"}, {"key": "b"}], "value": {"bool_match": true}}"#
        ));
        assert!(m(
            r#"{"filter": "f", "path": [{"key": "p"}, {"key": "z"}], "value": {"null_match": {}}}"#
        ));
        assert!(!m(
            r#"{"filter": "f", "path": [{"key": "p"}, {"key": "missing"}], "value": {"null_match": {}}}"#
        ));
        assert!(m(
            r#"{"filter": "f", "path": [{"key": "p"}], "value": {"present_match": true}}"#
        ));
        assert!(!m(
            r#"{"filter": "f", "path": [{"key": "q"}], "value": {"present_match": true}}"#
        ));
        assert!(!m(
            r#"{"filter": "f", "path": [{"key": "p"}], "value": {"present_match": false}}"#
        ));
        assert!(m(
            r#"{"filter": "f", "path": [{"key": "p"}, {"key": "sub"}], "value": {"or_match": {"value_matchers": [{"bool_match": true}, {"string_match": {"prefix": "ali"}}]}}}"#
        ));
        // No metadata at all: nothing is present; inversion makes it match.
        let missing = matcher(
            r#"{"filter": "f", "path": [{"key": "p"}], "value": {"present_match": true}, "invert": true}"#,
        );
        assert!(missing.matches(None));
    }

    #[test]
    fn invalid_value_matchers_are_refused() {
        for bad in [
            r#"{"filter": "f", "path": [{"key": "p"}], "value": {}}"#,
            r#"{"filter": "f", "path": [{"key": "p"}], "value": {"bool_match": true, "present_match": true}}"#,
            r#"{"filter": "f", "path": [{"key": "p"}], "value": {"double_match": {}}}"#,
            r#"{"filter": "f", "path": [{"key": "p"}], "value": {"or_match": {"value_matchers": [{"bool_match": true}]}}}"#,
            r#"{"filter": "", "path": [{"key": "p"}], "value": {"bool_match": true}}"#,
            r#"{"filter": "f", "path": [{"key": ""}], "value": {"bool_match": true}}"#,
            r#"{"filter": "f", "path": [{"key": "p"}], "value": {"bool_match": true}, "extra": 1}"#,
        ] {
            assert!(
                serde_json::from_str::<MetadataMatcher>(bad).is_err(),
                "{bad}"
            );
        }
        let no_path = matcher(r#"{"filter": "f", "path": [], "value": {"bool_match": true}}"#);
        assert!(no_path.check().is_err());
    }
}
