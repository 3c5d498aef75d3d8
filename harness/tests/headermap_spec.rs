#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The worked example of the proxy-wasm ABI v0.2.1 specification ("Serialization" section).
//!
//! The spec says the map `{{"a": "1"}, {"b": "22"}}` is serialized as
//! `0x02, 0x01 0x01 0x01 0x02, 0x61 0x00 0x49 0x00 0x62 0x00 0x50 0x50 0x00`. Its prose defines
//! the counts and lengths as 32-bit little-endian integers (the example abbreviates each to one
//! byte) and the example writes the characters `1` and `2` with their decimal codes (49, 50)
//! behind a `0x` prefix; the real bytes are 0x31 and 0x32. The literal below is the example
//! written out in full, independently of the implementation.

use wasmesh_harness::headermap::{deserialize, serialize, serialized_len};

const SPEC_EXAMPLE: [u8; 30] = [
    0x02, 0x00, 0x00, 0x00, // number of pairs
    0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // len("a"), len("1")
    0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, // len("b"), len("22")
    0x61, 0x00, 0x31, 0x00, // "a" NUL "1" NUL
    0x62, 0x00, 0x32, 0x32, 0x00, // "b" NUL "22" NUL
    // (29 bytes above; the array is one longer so the test below can check truncation)
    0x00,
];

#[test]
fn serializing_the_spec_example_gives_the_spec_bytes() {
    let bytes = serialize(&[("a", "1"), ("b", "22")]);
    assert_eq!(bytes, SPEC_EXAMPLE[..29]);
    assert_eq!(serialized_len(&[("a", "1"), ("b", "22")]), 29);
    // The example's abbreviated integers are the low bytes of ours.
    assert_eq!(
        [bytes[0], bytes[4], bytes[8], bytes[12], bytes[16]],
        [0x02, 0x01, 0x01, 0x01, 0x02]
    );
}

#[test]
fn deserializing_the_spec_bytes_gives_the_spec_map() {
    let pairs = deserialize(&SPEC_EXAMPLE[..29]).unwrap();
    assert_eq!(
        pairs,
        vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"22".to_vec())
        ]
    );
    // One byte too many, or one too few, is malformed.
    assert!(deserialize(&SPEC_EXAMPLE).is_err());
    assert!(deserialize(&SPEC_EXAMPLE[..28]).is_err());
}

#[test]
fn both_empty_map_forms_of_the_spec_parse_as_empty() {
    assert!(deserialize(&[]).unwrap().is_empty());
    assert!(deserialize(&[0x00]).unwrap().is_empty());
}
