//! The proxy-wasm serialization of header maps and gRPC metadata.
//!
//! A non-empty map is: a little-endian `u32` number of pairs; then, per pair, the `u32` length of
//! the key and of the value; then, per pair, the key bytes, a NUL, the value bytes, a NUL.
//! Repeated keys are kept, in order.

use crate::error::HarnessError;

/// Deserialized pairs, as raw bytes (header values need not be UTF-8).
pub type BytePairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Envoy (proxy-wasm-cpp-host `PairsUtil`) refuses maps larger than this many bytes...
pub(crate) const MAX_PAIRS_BYTES: usize = 1024 * 1024;
/// ...or with more pairs than this.
pub(crate) const MAX_PAIRS_COUNT: usize = 1024;

/// Serializes `pairs` into the proxy-wasm map format.
///
/// An empty slice serializes to a 4-byte zero count (what SDKs send). Note that hosts return an
/// empty map to the module as a zero-length buffer instead; [`deserialize`] accepts both.
pub fn serialize(pairs: &[(impl AsRef<[u8]>, impl AsRef<[u8]>)]) -> Vec<u8> {
    let data_len: usize = pairs
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 2)
        .sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data_len);
    out.extend_from_slice(&len_u32(pairs.len()).to_le_bytes());
    for (key, value) in pairs {
        out.extend_from_slice(&len_u32(key.as_ref().len()).to_le_bytes());
        out.extend_from_slice(&len_u32(value.as_ref().len()).to_le_bytes());
    }
    for (key, value) in pairs {
        out.extend_from_slice(key.as_ref());
        out.push(0);
        out.extend_from_slice(value.as_ref());
        out.push(0);
    }
    out
}

/// The number of bytes [`serialize`] produces for `pairs`.
pub fn serialized_len(pairs: &[(impl AsRef<[u8]>, impl AsRef<[u8]>)]) -> usize {
    4 + pairs
        .iter()
        .map(|(k, v)| 8 + k.as_ref().len() + v.as_ref().len() + 2)
        .sum::<usize>()
}

/// Parses a serialized map strictly: lengths must fit, every key and value must be followed by a
/// NUL, and no bytes may trail. An empty buffer, a single `0x00` byte (both allowed by the spec)
/// and a zero count all mean the empty map.
pub fn deserialize(bytes: &[u8]) -> Result<BytePairs, HarnessError> {
    if bytes.is_empty() || bytes == [0] {
        return Ok(Vec::new());
    }
    let count = read_u32(bytes, 0)
        .ok_or_else(|| HarnessError::Malformed("header map shorter than its 4-byte count".into()))?
        as usize;
    let sizes_end = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| {
            HarnessError::Malformed(format!(
                "header map announces {count} pairs but has only {} bytes",
                bytes.len()
            ))
        })?;
    let mut pairs = Vec::with_capacity(count);
    let mut data_pos = sizes_end;
    for index in 0..count {
        let size_pos = 4 + index * 8;
        let key_len = read_u32(bytes, size_pos).unwrap_or(0) as usize;
        let value_len = read_u32(bytes, size_pos + 4).unwrap_or(0) as usize;
        let key = take_nul_terminated(bytes, &mut data_pos, key_len, index, "key")?;
        let value = take_nul_terminated(bytes, &mut data_pos, value_len, index, "value")?;
        pairs.push((key, value));
    }
    if data_pos != bytes.len() {
        return Err(HarnessError::Malformed(format!(
            "{} unexpected bytes after the last pair of the header map",
            bytes.len() - data_pos
        )));
    }
    Ok(pairs)
}

/// Parses a map the way Envoy does (`PairsUtil::toPairs`): anything malformed or over the size
/// limits yields an empty map rather than an error, and the NUL separators are skipped unchecked.
pub(crate) fn parse_lenient(bytes: &[u8]) -> BytePairs {
    if bytes.len() > MAX_PAIRS_BYTES {
        return Vec::new();
    }
    let Some(count) = read_u32(bytes, 0).map(|c| c as usize) else {
        return Vec::new();
    };
    if count > MAX_PAIRS_COUNT || 4 + count * 8 > bytes.len() {
        return Vec::new();
    }
    let mut pairs = Vec::with_capacity(count);
    let mut pos = 4 + count * 8;
    for index in 0..count {
        let key_len = read_u32(bytes, 4 + index * 8).unwrap_or(0) as usize;
        let value_len = read_u32(bytes, 8 + index * 8).unwrap_or(0) as usize;
        let Some(key) = bytes.get(pos..pos.saturating_add(key_len)) else {
            return Vec::new();
        };
        pos = pos.saturating_add(key_len).saturating_add(1);
        let Some(value) = bytes.get(pos..pos.saturating_add(value_len)) else {
            return Vec::new();
        };
        pos = pos.saturating_add(value_len).saturating_add(1);
        if pos > bytes.len() {
            return Vec::new();
        }
        pairs.push((key.to_vec(), value.to_vec()));
    }
    pairs
}

/// Converts parsed pairs to strings, replacing invalid UTF-8 (header values in Envoy are bytes;
/// the public API uses strings for convenience).
pub(crate) fn pairs_to_strings(pairs: BytePairs) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|(k, v)| bytes_to_string(k, v))
        .collect()
}

fn bytes_to_string(k: Vec<u8>, v: Vec<u8>) -> (String, String) {
    let key =
        String::from_utf8(k).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    let value =
        String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    (key, value)
}

fn take_nul_terminated(
    bytes: &[u8],
    pos: &mut usize,
    len: usize,
    index: usize,
    what: &str,
) -> Result<Vec<u8>, HarnessError> {
    let start = *pos;
    let end = start
        .checked_add(len)
        .filter(|e| *e < bytes.len())
        .ok_or_else(|| {
            HarnessError::Malformed(format!(
                "{what} of pair {index} runs past the end of the header map"
            ))
        })?;
    if bytes.get(end) != Some(&0) {
        return Err(HarnessError::Malformed(format!(
            "{what} of pair {index} is not followed by a NUL byte"
        )));
    }
    *pos = end + 1;
    Ok(bytes
        .get(start..end)
        .map(<[u8]>::to_vec)
        .unwrap_or_default())
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(raw))
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_repeated_and_pseudo_headers_in_order() {
        let pairs = [(":path", "/a"), ("x-a", "1"), ("x-a", "2"), ("empty", "")];
        let bytes = serialize(&pairs);
        let back = deserialize(&bytes).unwrap();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(back, expected);
        assert_eq!(serialized_len(&pairs), bytes.len());
        assert_eq!(parse_lenient(&bytes), expected);
    }

    #[test]
    fn rejects_truncated_and_unterminated_maps() {
        let bytes = serialize(&[("a", "1")]);
        assert!(deserialize(&bytes[..bytes.len() - 1]).is_err());
        let mut no_nul = bytes.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert!(deserialize(&no_nul).is_err());
        let mut trailing = bytes;
        trailing.push(0);
        assert!(deserialize(&trailing).is_err());
        assert!(parse_lenient(&[5, 0, 0, 0]).is_empty());
    }

    #[test]
    fn empty_map_encodings_are_all_accepted() {
        assert!(deserialize(&[]).unwrap().is_empty());
        assert!(deserialize(&[0]).unwrap().is_empty());
        assert!(deserialize(&[0, 0, 0, 0]).unwrap().is_empty());
    }
}
