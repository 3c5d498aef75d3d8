//! The client side of Envoy's rate limit service API
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), protobuf encoded by hand:
//! the two messages need a few dozen lines, far less wasm than a protobuf runtime. Tests decode
//! and encode them with `prost`, an independent implementation.
//!
//! ```text
//! RateLimitRequest  { string domain = 1; repeated RateLimitDescriptor descriptors = 2;
//!                     uint32 hits_addend = 3; }
//! RateLimitDescriptor { repeated Entry entries = 1 {string key = 1; string value = 2;}
//!                       google.protobuf.UInt64Value hits_addend = 3; }
//! RateLimitResponse { Code overall_code = 1; repeated DescriptorStatus statuses = 2;
//!                     repeated config.core.v3.HeaderValue response_headers_to_add = 3;
//!                     repeated config.core.v3.HeaderValue request_headers_to_add = 4;
//!                     bytes raw_body = 5; ... }
//! DescriptorStatus  { Code code = 1; RateLimit current_limit = 2; uint32 limit_remaining = 3;
//!                     google.protobuf.Duration duration_until_reset = 4; ... }
//! RateLimit         { uint32 requests_per_unit = 1; Unit unit = 2; string name = 3; }
//! ```

use std::time::Duration;

use wasmesh_sdk::protobuf::{
    put_key, put_len, put_varint, Reader, WireError, WIRE_LEN, WIRE_VARINT,
};

use crate::descriptor::RequestDescriptor;

/// gRPC service name.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// gRPC method name.
pub const METHOD: &str = "ShouldRateLimit";

/// `RateLimitResponse.Code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// `UNKNOWN` (Envoy treats it as OK).
    Unknown,
    /// `OK`.
    Ok,
    /// `OVER_LIMIT`.
    OverLimit,
}

impl Code {
    fn from_wire(value: u64) -> Code {
        match value {
            1 => Code::Ok,
            2 => Code::OverLimit,
            _ => Code::Unknown,
        }
    }
}

/// `RateLimitResponse.RateLimit.Unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// `SECOND`.
    Second,
    /// `MINUTE`.
    Minute,
    /// `HOUR`.
    Hour,
    /// `DAY`.
    Day,
    /// `WEEK`.
    Week,
    /// `UNKNOWN`, `MONTH`, `YEAR` or a future value.
    Other(u64),
}

impl Unit {
    fn from_wire(value: u64) -> Unit {
        match value {
            1 => Unit::Second,
            2 => Unit::Minute,
            3 => Unit::Hour,
            4 => Unit::Day,
            7 => Unit::Week,
            other => Unit::Other(other),
        }
    }
}

/// `RateLimitResponse.RateLimit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentLimit {
    /// Requests per unit.
    pub requests_per_unit: u32,
    /// The unit.
    pub unit: Unit,
    /// Optional name.
    pub name: String,
}

/// `RateLimitResponse.DescriptorStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorStatus {
    /// The descriptor's verdict.
    pub code: Code,
    /// The limit that applied.
    pub current_limit: Option<CurrentLimit>,
    /// Requests left in the window.
    pub limit_remaining: u32,
    /// Time until the window resets.
    pub duration_until_reset: Duration,
}

/// `RateLimitResponse`, the fields the filter uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The overall verdict.
    pub overall_code: Code,
    /// One status per descriptor.
    pub statuses: Vec<DescriptorStatus>,
    /// Headers for the response to the client.
    pub response_headers_to_add: Vec<(String, String)>,
    /// Headers for the request sent upstream.
    pub request_headers_to_add: Vec<(String, String)>,
    /// Body of an over-limit reply.
    pub raw_body: Vec<u8>,
}

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed RateLimitResponse: {}", self.0)
    }
}

impl From<WireError> for DecodeError {
    fn from(error: WireError) -> Self {
        DecodeError(error.0)
    }
}

// ---- encoding ----

/// Encodes a `RateLimitRequest`. A descriptor's `hits` other than 1 is sent as its
/// `hits_addend`; the request-level `hits_addend` is left unset (the service counts 1).
pub fn encode_request(domain: &str, descriptors: &[RequestDescriptor]) -> Vec<u8> {
    let mut out = Vec::new();
    if !domain.is_empty() {
        put_len(&mut out, 1, domain.as_bytes());
    }
    for descriptor in descriptors {
        let mut message = Vec::new();
        for (key, value) in &descriptor.entries {
            let mut entry = Vec::new();
            put_len(&mut entry, 1, key.as_bytes());
            put_len(&mut entry, 2, value.as_bytes());
            put_len(&mut message, 1, &entry);
        }
        if descriptor.hits != 1 {
            let mut wrapper = Vec::new();
            if descriptor.hits != 0 {
                put_key(&mut wrapper, 1, WIRE_VARINT);
                put_varint(&mut wrapper, descriptor.hits);
            }
            put_len(&mut message, 3, &wrapper);
        }
        put_len(&mut out, 2, &message);
    }
    out
}

// ---- decoding ----

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The next field of `reader`, `None` at the end.
fn next_field<'a>(reader: &mut Reader<'a>) -> Result<Option<(u64, Field<'a>)>, DecodeError> {
    if reader.is_done() {
        return Ok(None);
    }
    let (number, wire) = reader.tag()?;
    let field = match wire {
        WIRE_VARINT => Field::Varint(reader.varint()?),
        WIRE_LEN => Field::Bytes(reader.length_delimited()?),
        _ => {
            reader.skip(wire)?;
            Field::Fixed
        }
    };
    Ok(Some((number, field)))
}

fn string(bytes: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError("string is not UTF-8"))
}

fn u32_of(value: u64) -> u32 {
    // proto3 uint32 fields are sent as varints of the 32-bit value.
    value as u32
}

/// Decodes a `RateLimitResponse`; unknown fields are skipped.
pub fn decode_response(bytes: &[u8]) -> Result<Response, DecodeError> {
    let mut response = Response {
        overall_code: Code::Unknown,
        statuses: Vec::new(),
        response_headers_to_add: Vec::new(),
        request_headers_to_add: Vec::new(),
        raw_body: Vec::new(),
    };
    let mut reader = Reader::new(bytes);
    while let Some((number, field)) = next_field(&mut reader)? {
        match (number, field) {
            (1, Field::Varint(code)) => response.overall_code = Code::from_wire(code),
            (2, Field::Bytes(status)) => response.statuses.push(decode_status(status)?),
            (3, Field::Bytes(header)) => response
                .response_headers_to_add
                .push(decode_header(header)?),
            (4, Field::Bytes(header)) => {
                response.request_headers_to_add.push(decode_header(header)?)
            }
            (5, Field::Bytes(body)) => response.raw_body = body.to_vec(),
            (1..=5, _) => return Err(DecodeError("wrong wire type")),
            _ => {}
        }
    }
    Ok(response)
}

fn decode_status(bytes: &[u8]) -> Result<DescriptorStatus, DecodeError> {
    let mut status = DescriptorStatus {
        code: Code::Unknown,
        current_limit: None,
        limit_remaining: 0,
        duration_until_reset: Duration::ZERO,
    };
    let mut reader = Reader::new(bytes);
    while let Some((number, field)) = next_field(&mut reader)? {
        match (number, field) {
            (1, Field::Varint(code)) => status.code = Code::from_wire(code),
            (2, Field::Bytes(limit)) => status.current_limit = Some(decode_limit(limit)?),
            (3, Field::Varint(remaining)) => status.limit_remaining = u32_of(remaining),
            (4, Field::Bytes(duration)) => status.duration_until_reset = decode_duration(duration)?,
            (1..=4, _) => return Err(DecodeError("wrong wire type in DescriptorStatus")),
            _ => {}
        }
    }
    Ok(status)
}

fn decode_limit(bytes: &[u8]) -> Result<CurrentLimit, DecodeError> {
    let mut limit = CurrentLimit {
        requests_per_unit: 0,
        unit: Unit::Other(0),
        name: String::new(),
    };
    let mut reader = Reader::new(bytes);
    while let Some((number, field)) = next_field(&mut reader)? {
        match (number, field) {
            (1, Field::Varint(rpu)) => limit.requests_per_unit = u32_of(rpu),
            (2, Field::Varint(unit)) => limit.unit = Unit::from_wire(unit),
            (3, Field::Bytes(name)) => limit.name = string(name)?,
            (1..=3, _) => return Err(DecodeError("wrong wire type in RateLimit")),
            _ => {}
        }
    }
    Ok(limit)
}

fn decode_duration(bytes: &[u8]) -> Result<Duration, DecodeError> {
    let (mut seconds, mut nanos) = (0i64, 0i32);
    let mut reader = Reader::new(bytes);
    while let Some((number, field)) = next_field(&mut reader)? {
        match (number, field) {
            (1, Field::Varint(value)) => seconds = value as i64,
            (2, Field::Varint(value)) => nanos = value as i32,
            (1..=2, _) => return Err(DecodeError("wrong wire type in Duration")),
            _ => {}
        }
    }
    // A negative duration until reset is meaningless: clamp to zero.
    let seconds = u64::try_from(seconds).unwrap_or(0);
    let nanos = u32::try_from(nanos).unwrap_or(0).min(999_999_999);
    Ok(Duration::new(seconds, nanos))
}

fn decode_header(bytes: &[u8]) -> Result<(String, String), DecodeError> {
    let (mut key, mut value, mut raw) = (String::new(), String::new(), None);
    let mut reader = Reader::new(bytes);
    while let Some((number, field)) = next_field(&mut reader)? {
        match (number, field) {
            (1, Field::Bytes(bytes)) => key = string(bytes)?,
            (2, Field::Bytes(bytes)) => value = string(bytes)?,
            (3, Field::Bytes(bytes)) => raw = Some(string(bytes)?),
            (1..=3, _) => return Err(DecodeError("wrong wire type in HeaderValue")),
            _ => {}
        }
    }
    if value.is_empty() {
        if let Some(raw) = raw {
            value = raw;
        }
    }
    Ok((key.to_ascii_lowercase(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes_are_canonical_protobuf() {
        let bytes = encode_request(
            "edge",
            &[RequestDescriptor {
                entries: vec![("k".into(), "v".into())],
                hits: 1,
            }],
        );
        // domain "edge"; descriptors { entries { key "k" value "v" } }
        assert_eq!(
            bytes,
            [0x0a, 4, b'e', b'd', b'g', b'e', 0x12, 8, 0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v']
        );
        let with_hits = encode_request(
            "d",
            &[RequestDescriptor {
                entries: vec![("k".into(), "v".into())],
                hits: 300,
            }],
        );
        assert!(with_hits.ends_with(&[0x1a, 3, 0x08, 0xac, 0x02]));
    }

    #[test]
    fn truncated_and_malformed_responses_are_errors_not_panics() {
        for bad in [
            &[0x08][..],
            &[0x12, 5, 1],
            &[0x0b],
            &[0x00, 1],
            &[0x12, 2, 0x08, 0xff],
            &[
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            &[0x1a, 3, 0x0a, 1, 0xff],
        ] {
            assert!(decode_response(bad).is_err(), "{bad:?}");
        }
        assert_eq!(decode_response(&[]).unwrap().overall_code, Code::Unknown);
        // Unknown fields (e.g. dynamic_metadata = 6) are skipped.
        let response = decode_response(&[0x08, 2, 0x32, 2, 0x0a, 0, 0x3d, 0, 0, 0, 0]).unwrap();
        assert_eq!(response.overall_code, Code::OverLimit);
    }
}
