//! Values shared by scenario files and `wasmesh run`'s exchange files: header lists and
//! properties.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use wasmesh_harness::PropertyValue;

/// A header list, written either as `[["name", "value"], ...]` (keeps order and repeated names)
/// or as `{"name": "value", ...}` (document order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// The pairs as borrowed strings, the shape the harness takes.
    pub fn as_pairs(&self) -> Vec<(&str, &str)> {
        self.0
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeadersVisitor;

        impl<'de> Visitor<'de> for HeadersVisitor {
            type Value = Headers;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(r#"a list of ["name", "value"] pairs or an object of strings"#)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Headers, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = seq.next_element::<(String, String)>()? {
                    pairs.push(pair);
                }
                Ok(Headers(pairs))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Headers, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry::<String, String>()? {
                    pairs.push(pair);
                }
                Ok(Headers(pairs))
            }
        }

        deserializer.deserialize_any(HeadersVisitor)
    }
}

impl Serialize for Headers {
    /// As a map when every name is distinct (the form people write), else as pairs.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut names: Vec<&str> = self.0.iter().map(|(name, _)| name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        if names.len() < self.0.len() {
            return self.0.serialize(serializer);
        }
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl JsonSchema for Headers {
    fn schema_name() -> Cow<'static, str> {
        "Headers".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Headers: an object of strings, or a list of [name, value] pairs (repeated names, order kept).",
            "anyOf": [
                {"type": "object", "additionalProperties": {"type": "string"}},
                {"type": "array", "items": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2}}
            ]
        })
    }
}

/// A property set before the exchange: `{"path": ["source", "address"], "value": "10.0.0.1:443"}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PropertyInput {
    /// Property path segments, as a filter passes them to `proxy_get_property`.
    pub path: Vec<String>,
    /// The value, with the encoding Envoy uses for that JSON type.
    pub value: PropertyValueInput,
}

/// A property value: a string, an integer, a boolean, a number, or an object of strings (a map,
/// such as `request.headers`).
#[derive(Debug, Clone, PartialEq)]
pub enum PropertyValueInput {
    /// A JSON string.
    String(String),
    /// A JSON integer that fits `i64`.
    Int(i64),
    /// A JSON integer above `i64::MAX`.
    Uint(u64),
    /// A JSON number with a fraction.
    Double(f64),
    /// A JSON boolean.
    Bool(bool),
    /// A JSON object of strings.
    Map(Vec<(String, String)>),
}

impl PropertyValueInput {
    /// The value the harness serves for it.
    pub fn to_harness(&self) -> PropertyValue {
        match self {
            Self::String(text) => PropertyValue::String(text.clone()),
            Self::Int(number) => PropertyValue::Int(*number),
            Self::Uint(number) => PropertyValue::Uint(*number),
            Self::Double(number) => PropertyValue::Double(*number),
            Self::Bool(flag) => PropertyValue::Bool(*flag),
            Self::Map(pairs) => PropertyValue::Map(pairs.clone()),
        }
    }
}

impl Serialize for PropertyValueInput {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::String(text) => serializer.serialize_str(text),
            Self::Int(number) => serializer.serialize_i64(*number),
            Self::Uint(number) => serializer.serialize_u64(*number),
            Self::Double(number) => serializer.serialize_f64(*number),
            Self::Bool(flag) => serializer.serialize_bool(*flag),
            Self::Map(pairs) => Headers(pairs.clone()).serialize(serializer),
        }
    }
}

impl JsonSchema for PropertyValueInput {
    fn schema_name() -> Cow<'static, str> {
        "PropertyValue".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A string, number, boolean, or object of strings (a map).",
            "anyOf": [
                {"type": "string"}, {"type": "number"}, {"type": "boolean"},
                {"type": "object", "additionalProperties": {"type": "string"}}
            ]
        })
    }
}

impl<'de> Deserialize<'de> for PropertyValueInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;

        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = PropertyValueInput;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string, number, boolean or object of strings")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(PropertyValueInput::String(value.to_string()))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                Ok(PropertyValueInput::Int(value))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(value)
                    .map(PropertyValueInput::Int)
                    .unwrap_or(PropertyValueInput::Uint(value)))
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
                Ok(PropertyValueInput::Double(value))
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
                Ok(PropertyValueInput::Bool(value))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry::<String, String>()? {
                    pairs.push(pair);
                }
                Ok(PropertyValueInput::Map(pairs))
            }
        }

        deserializer.deserialize_any(ValueVisitor)
    }
}
