//! `google.protobuf.Struct` in protobuf binary form, and base64: the encoding of Istio's
//! `x-envoy-peer-metadata` header (base64 of a serialized `Struct`) and of Envoy 1.40's
//! `node.metadata` property.
//!
//! Hand-written because the filter needs only `Struct`/`Value`/`ListValue`; decoding is strict
//! (bounded depth and size, every length checked) since the header comes from the network.

use std::collections::BTreeMap;
use std::fmt;

use wasmesh_sdk::protobuf::{
    put_len, put_varint, Reader, WireError, WIRE_FIXED64, WIRE_LEN, WIRE_VARINT,
};

/// A `google.protobuf.Value`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null_value`.
    Null,
    /// `number_value`.
    Number(f64),
    /// `string_value`.
    String(String),
    /// `bool_value`.
    Bool(bool),
    /// `struct_value`.
    Struct(Struct),
    /// `list_value`.
    List(Vec<Value>),
}

/// A `google.protobuf.Struct`: field name to value (sorted, so encoding is deterministic).
pub type Struct = BTreeMap<String, Value>;

/// Why bytes are not a valid `Struct`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl From<WireError> for DecodeError {
    fn from(error: WireError) -> Self {
        DecodeError(error.0)
    }
}

/// Largest input [`decode_struct`] accepts (Envoy's default header limit is 60 KiB).
pub const MAX_STRUCT_BYTES: usize = 64 * 1024;

/// Deepest nesting of structs and lists accepted.
pub const MAX_DEPTH: usize = 16;

/// Decodes a serialized `google.protobuf.Struct`. Unknown fields are skipped, as protobuf does.
pub fn decode_struct(bytes: &[u8]) -> Result<Struct, DecodeError> {
    if bytes.len() > MAX_STRUCT_BYTES {
        return Err(DecodeError("too large"));
    }
    struct_at(bytes, 0)
}

fn struct_at(bytes: &[u8], depth: usize) -> Result<Struct, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError("nested too deeply"));
    }
    let mut reader = Reader::new(bytes);
    let mut fields = Struct::new();
    while !reader.is_done() {
        let (field, wire) = reader.tag()?;
        if field == 1 && wire == WIRE_LEN {
            let (key, value) = entry(reader.length_delimited()?, depth)?;
            // As protobuf map semantics: the last entry for a key wins.
            fields.insert(key, value);
        } else {
            reader.skip(wire)?;
        }
    }
    Ok(fields)
}

/// One `map<string, Value>` entry.
fn entry(bytes: &[u8], depth: usize) -> Result<(String, Value), DecodeError> {
    let mut reader = Reader::new(bytes);
    let mut key = String::new();
    let mut value = Value::Null;
    while !reader.is_done() {
        let (field, wire) = reader.tag()?;
        match (field, wire) {
            (1, WIRE_LEN) => key = utf8(reader.length_delimited()?)?,
            (2, WIRE_LEN) => value = value_at(reader.length_delimited()?, depth + 1)?,
            _ => reader.skip(wire)?,
        }
    }
    Ok((key, value))
}

fn utf8(bytes: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError("string is not UTF-8"))
}

fn value_at(bytes: &[u8], depth: usize) -> Result<Value, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError("nested too deeply"));
    }
    let mut reader = Reader::new(bytes);
    // A Value with no kind set reads as null.
    let mut value = Value::Null;
    while !reader.is_done() {
        let (field, wire) = reader.tag()?;
        value = match (field, wire) {
            (1, WIRE_VARINT) => {
                reader.varint()?;
                Value::Null
            }
            (2, WIRE_FIXED64) => {
                let raw = reader.take(8)?;
                let array: [u8; 8] = raw.try_into().map_err(|_| DecodeError("truncated"))?;
                Value::Number(f64::from_le_bytes(array))
            }
            (3, WIRE_LEN) => Value::String(utf8(reader.length_delimited()?)?),
            (4, WIRE_VARINT) => Value::Bool(reader.varint()? != 0),
            (5, WIRE_LEN) => Value::Struct(struct_at(reader.length_delimited()?, depth + 1)?),
            (6, WIRE_LEN) => Value::List(list_at(reader.length_delimited()?, depth + 1)?),
            _ => {
                reader.skip(wire)?;
                continue;
            }
        };
    }
    Ok(value)
}

fn list_at(bytes: &[u8], depth: usize) -> Result<Vec<Value>, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError("nested too deeply"));
    }
    let mut reader = Reader::new(bytes);
    let mut values = Vec::new();
    while !reader.is_done() {
        let (field, wire) = reader.tag()?;
        if field == 1 && wire == WIRE_LEN {
            values.push(value_at(reader.length_delimited()?, depth + 1)?);
        } else {
            reader.skip(wire)?;
        }
    }
    Ok(values)
}

/// Serializes a `Struct` (entries in key order).
pub fn encode_struct(fields: &Struct) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in fields {
        let mut entry = Vec::new();
        put_len(&mut entry, 1, key.as_bytes());
        put_len(&mut entry, 2, &encode_value(value));
        put_len(&mut out, 1, &entry);
    }
    out
}

fn encode_value(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    match value {
        Value::Null => {
            put_varint(&mut out, (1 << 3) | u64::from(WIRE_VARINT));
            put_varint(&mut out, 0);
        }
        Value::Number(number) => {
            put_varint(&mut out, (2 << 3) | u64::from(WIRE_FIXED64));
            out.extend_from_slice(&number.to_le_bytes());
        }
        Value::String(text) => put_len(&mut out, 3, text.as_bytes()),
        Value::Bool(flag) => {
            put_varint(&mut out, (4 << 3) | u64::from(WIRE_VARINT));
            put_varint(&mut out, u64::from(*flag));
        }
        Value::Struct(fields) => put_len(&mut out, 5, &encode_struct(fields)),
        Value::List(values) => {
            let mut list = Vec::new();
            for value in values {
                put_len(&mut list, 1, &encode_value(value));
            }
            put_len(&mut out, 6, &list);
        }
    }
    out
}

/// Standard base64 with padding (what Istio's metadata exchange sends).
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b0 = chunk.first().copied().unwrap_or(0);
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let triple = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        let symbol = |shift: u32| base64_symbol((triple >> shift) & 63);
        out.push(symbol(18));
        out.push(symbol(12));
        out.push(if chunk.len() > 1 { symbol(6) } else { '=' });
        out.push(if chunk.len() > 2 { symbol(0) } else { '=' });
    }
    out
}

/// The standard-alphabet symbol of a 6-bit value (only the low 6 bits count).
fn base64_symbol(value: u32) -> char {
    // `value & 63` is below 64, so every narrowing below is lossless.
    let value = (value & 63) as u8;
    char::from(match value {
        0..=25 => b'A' + value,
        26..=51 => b'a' + (value - 26),
        52..=61 => b'0' + (value - 52),
        62 => b'+',
        _ => b'/',
    })
}

fn base64_digit(symbol: u8) -> Option<u32> {
    match symbol {
        b'A'..=b'Z' => Some(u32::from(symbol - b'A')),
        b'a'..=b'z' => Some(u32::from(symbol - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(symbol - b'0') + 52),
        // Both alphabets: some clients send URL-safe base64.
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

/// Decodes base64 (standard or URL-safe alphabet, padding optional). `None` on any invalid
/// symbol or impossible length.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let trimmed = text.trim().trim_end_matches('=');
    if trimmed.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    let mut accumulator = 0u32;
    let mut bits = 0u32;
    for symbol in trimmed.bytes() {
        accumulator = (accumulator << 6) | base64_digit(symbol)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((accumulator >> bits) & 0xff).unwrap_or(0));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Struct {
        let mut labels = Struct::new();
        labels.insert("app".into(), Value::String("ratings".into()));
        labels.insert("version".into(), Value::String("v1".into()));
        let mut fields = Struct::new();
        fields.insert("NAME".into(), Value::String("ratings-v1-abc".into()));
        fields.insert("LABELS".into(), Value::Struct(labels));
        fields.insert("PORT".into(), Value::Number(9080.0));
        fields.insert("ENABLED".into(), Value::Bool(true));
        fields.insert("NOTHING".into(), Value::Null);
        fields.insert(
            "IPS".into(),
            Value::List(vec![Value::String("10.0.0.1".into())]),
        );
        fields
    }

    #[test]
    fn structs_round_trip() {
        let fields = sample();
        assert_eq!(decode_struct(&encode_struct(&fields)).unwrap(), fields);
        assert_eq!(decode_struct(&[]).unwrap(), Struct::new());
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let mut bytes = vec![0x10, 0x05, 0x1d, 1, 2, 3, 4]; // field 2 varint, field 3 fixed32
        bytes.extend(encode_struct(&sample()));
        assert_eq!(decode_struct(&bytes).unwrap(), sample());
    }

    #[test]
    fn malformed_input_is_refused_not_trusted() {
        let good = encode_struct(&sample());
        for cut in 1..good.len() {
            // Every strict prefix either fails or decodes a subset; it never panics.
            let _ = decode_struct(&good[..cut]);
        }
        assert_eq!(
            decode_struct(&[0x0a, 0x05, 0x0a]),
            Err(DecodeError("length past the end"))
        );
        assert_eq!(decode_struct(&[0x00]), Err(DecodeError("field number 0")));
        assert_eq!(
            decode_struct(&[0x0b]),
            Err(DecodeError("unsupported wire type"))
        );
        assert_eq!(
            decode_struct(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(DecodeError("length overflow"))
        );
        // A header-map serialization (older Envoy map properties) is not a Struct.
        assert!(decode_struct(&[2, 0, 0, 0, 3, 0, 0, 0]).is_err());
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut value = Value::String("x".into());
        for _ in 0..40 {
            let mut inner = Struct::new();
            inner.insert("a".into(), value);
            value = Value::Struct(inner);
        }
        let Value::Struct(outer) = value else {
            unreachable!()
        };
        assert_eq!(
            decode_struct(&encode_struct(&outer)),
            Err(DecodeError("nested too deeply"))
        );
        assert_eq!(
            decode_struct(&vec![0; MAX_STRUCT_BYTES + 1]),
            Err(DecodeError("too large"))
        );
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded).unwrap(), plain.as_bytes());
        }
        // Every symbol of the alphabet, in order, survives a round trip.
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        assert_eq!(base64_encode(&base64_decode(alphabet).unwrap()), alphabet);
        assert_eq!(base64_decode("Zm9vYg").unwrap(), b"foob");
        assert_eq!(base64_decode("-_8").unwrap(), vec![0xfb, 0xff]);
        assert_eq!(base64_decode("Zm9v!"), None);
        assert_eq!(base64_decode("Z"), None);
    }
}
