//! The protobuf binary wire format, for the small hand-written codecs of the filters (a
//! `google.protobuf.Struct` from metadata or a peer header, a rate-limit service message): a
//! filter that needs three messages should not pull in a protobuf code generator.
//!
//! Decoding is strict: every length is checked against the input, a varint is at most ten
//! bytes, and an unknown wire type is an error, since the bytes may come from the network.

use std::fmt;

/// Wire type of `int32`, `int64`, `uint32`, `uint64`, `bool`, enums.
pub const WIRE_VARINT: u8 = 0;
/// Wire type of `fixed64`, `sfixed64`, `double`.
pub const WIRE_FIXED64: u8 = 1;
/// Wire type of `string`, `bytes`, embedded messages, packed repeated fields.
pub const WIRE_LEN: u8 = 2;
/// Wire type of `fixed32`, `sfixed32`, `float`.
pub const WIRE_FIXED32: u8 = 5;

/// Appends `value` as a base-128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        // Low 7 bits plus the continuation bit.
        out.push(u8::try_from(value & 0x7f).unwrap_or(0) | 0x80);
        value >>= 7;
    }
    out.push(u8::try_from(value).unwrap_or(0));
}

/// Appends the key of field `field` with wire type `wire`.
pub fn put_key(out: &mut Vec<u8>, field: u64, wire: u8) {
    put_varint(out, (field << 3) | u64::from(wire));
}

/// Appends field `field` as a length-delimited `payload` (a string, bytes, or a message).
pub fn put_len(out: &mut Vec<u8>, field: u64, payload: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, u64::try_from(payload.len()).unwrap_or(u64::MAX));
    out.extend_from_slice(payload);
}

/// Why bytes are not a valid protobuf encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError(pub &'static str);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for WireError {}

/// Reads the fields of one encoded message, front to back.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, position: 0 }
    }

    /// Whether every byte has been read.
    pub fn is_done(&self) -> bool {
        self.position >= self.bytes.len()
    }

    fn byte(&mut self) -> Result<u8, WireError> {
        let byte = *self
            .bytes
            .get(self.position)
            .ok_or(WireError("truncated"))?;
        self.position += 1;
        Ok(byte)
    }

    /// A base-128 varint (at most ten bytes).
    pub fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError("varint too long"))
    }

    /// The next `len` bytes.
    pub fn take(&mut self, len: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .position
            .checked_add(len)
            .ok_or(WireError("length overflow"))?;
        let slice = self
            .bytes
            .get(self.position..end)
            .ok_or(WireError("length past the end"))?;
        self.position = end;
        Ok(slice)
    }

    /// A `fixed64` value's eight little-endian bytes.
    pub fn fixed64(&mut self) -> Result<[u8; 8], WireError> {
        self.take(8)?.try_into().map_err(|_| WireError("truncated"))
    }

    /// A length-delimited value's bytes.
    pub fn length_delimited(&mut self) -> Result<&'a [u8], WireError> {
        let len = usize::try_from(self.varint()?).map_err(|_| WireError("length overflow"))?;
        self.take(len)
    }

    /// The next field's key as written: field number and wire type (the number may be 0,
    /// which no valid message has; see [`tag`](Self::tag)).
    pub fn key(&mut self) -> Result<(u64, u8), WireError> {
        let key = self.varint()?;
        // The mask keeps 3 bits, so the value fits in a u8.
        let wire = u8::try_from(key & 7).unwrap_or(u8::MAX);
        Ok((key >> 3, wire))
    }

    /// The next field's number and wire type; field number 0 is an error.
    pub fn tag(&mut self) -> Result<(u64, u8), WireError> {
        let (field, wire) = self.key()?;
        if field == 0 {
            return Err(WireError("field number 0"));
        }
        Ok((field, wire))
    }

    /// Skips the value of a field of wire type `wire` (an unknown field).
    pub fn skip(&mut self, wire: u8) -> Result<(), WireError> {
        match wire {
            WIRE_VARINT => self.varint().map(|_| ()),
            WIRE_FIXED64 => self.take(8).map(|_| ()),
            WIRE_LEN => self.length_delimited().map(|_| ()),
            WIRE_FIXED32 => self.take(4).map(|_| ()),
            _ => Err(WireError("unsupported wire type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_width() {
        for value in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut reader = Reader::new(&out);
            assert_eq!(reader.varint(), Ok(value));
            assert!(reader.is_done());
        }
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }

    #[test]
    fn fields_are_read_back_and_unknown_ones_skipped() {
        let mut out = Vec::new();
        put_key(&mut out, 1, WIRE_VARINT);
        put_varint(&mut out, 7);
        put_key(&mut out, 2, WIRE_FIXED64);
        out.extend_from_slice(&1.5f64.to_le_bytes());
        put_key(&mut out, 3, WIRE_FIXED32);
        out.extend_from_slice(&[0; 4]);
        put_len(&mut out, 4, b"wasm");

        let mut reader = Reader::new(&out);
        assert_eq!(reader.tag(), Ok((1, WIRE_VARINT)));
        assert_eq!(reader.varint(), Ok(7));
        assert_eq!(reader.tag(), Ok((2, WIRE_FIXED64)));
        assert_eq!(reader.fixed64().map(f64::from_le_bytes), Ok(1.5));
        assert_eq!(reader.tag(), Ok((3, WIRE_FIXED32)));
        assert_eq!(reader.skip(WIRE_FIXED32), Ok(()));
        assert_eq!(reader.tag(), Ok((4, WIRE_LEN)));
        assert_eq!(reader.length_delimited(), Ok(&b"wasm"[..]));
        assert!(reader.is_done());
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert_eq!(Reader::new(&[0x80]).varint(), Err(WireError("truncated")));
        assert_eq!(
            Reader::new(&[0xff; 11]).varint(),
            Err(WireError("varint too long"))
        );
        assert_eq!(
            Reader::new(&[0x05, b'a']).length_delimited(),
            Err(WireError("length past the end"))
        );
        assert_eq!(Reader::new(&[0x00]).tag(), Err(WireError("field number 0")));
        assert_eq!(Reader::new(&[0x00]).key(), Ok((0, WIRE_VARINT)));
        assert_eq!(
            Reader::new(&[]).skip(3),
            Err(WireError("unsupported wire type"))
        );
        assert_eq!(
            Reader::new(&[1, 2]).fixed64(),
            Err(WireError("length past the end"))
        );
    }
}
