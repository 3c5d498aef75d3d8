#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Property tests of the proxy-wasm header-map serialization (`wasmesh_harness::headermap`):
//! round trips, one canonical encoding, no panic on arbitrary bytes, agreement with the SDK's
//! encoder, and a round trip through a module over the ABI.

mod common;

use common::*;
use proptest::prelude::*;
use wasmesh_harness::headermap::{deserialize, serialize, serialized_len};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Arbitrary byte pairs: empty, repeated, containing NULs and non-UTF-8.
fn byte_pairs() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    prop::collection::vec(
        (
            prop::collection::vec(any::<u8>(), 0..12),
            prop::collection::vec(any::<u8>(), 0..24),
        ),
        0..12,
    )
}

/// Headers as a client may send them: lower-case names, printable values, repeats allowed.
fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[a-z][a-z0-9-]{0,11}", "[ -~]{0,24}"), 0..10)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn serialize_then_deserialize_is_the_identity(pairs in byte_pairs()) {
        let bytes = serialize(&pairs);
        prop_assert_eq!(bytes.len(), serialized_len(&pairs));
        prop_assert_eq!(deserialize(&bytes).unwrap(), pairs);
    }

    /// A map has exactly one encoding: whatever parses re-serializes to the same bytes (except
    /// the two spellings of the empty map the specification allows, `""` and `"\0"`).
    #[test]
    fn deserialize_never_panics_and_accepts_only_canonical_bytes(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
        if let Ok(pairs) = deserialize(&bytes) {
            if bytes.len() > 1 {
                prop_assert_eq!(serialize(&pairs), bytes);
            } else {
                prop_assert!(pairs.is_empty());
            }
        }
    }

    /// The same property on inputs that are almost valid: a serialization with one byte
    /// changed, dropped or added.
    #[test]
    fn corrupted_maps_are_rejected_or_reparse_canonically(
        pairs in byte_pairs(),
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        edit in 0u8..3,
    ) {
        let mut bytes = serialize(&pairs);
        let at = position.index(bytes.len());
        match edit {
            0 => bytes[at] = byte,
            1 => { bytes.remove(at); }
            _ => bytes.insert(at, byte),
        }
        if let Ok(parsed) = deserialize(&bytes) {
            if bytes.len() > 1 {
                prop_assert_eq!(serialize(&parsed), bytes);
            }
        }
    }

    /// Every strict prefix of a serialized map is refused (a truncated map never parses as a
    /// shorter one).
    #[test]
    fn truncated_maps_are_refused(pairs in byte_pairs()) {
        let bytes = serialize(&pairs);
        for end in 2..bytes.len() {
            prop_assert!(deserialize(&bytes[..end]).is_err(), "prefix of {} bytes parsed", end);
        }
    }

    /// The SDK's encoder (what filters send) and the harness's (what the host sends) agree.
    #[test]
    fn the_sdk_and_the_harness_encode_alike(pairs in headers()) {
        prop_assert_eq!(wasmesh_sdk::host::serialize_pairs(&pairs), serialize(&pairs));
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// A module that reads the request headers and writes the same bytes back leaves them
    /// exactly as they were (order, repeats and pseudo-headers included).
    #[test]
    fn headers_survive_a_round_trip_through_a_module(extra in headers()) {
        let wat = module(
            r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $proxy_get_header_map_pairs (i32.const 0) (i32.const 512) (i32.const 516)))
    (call $log_status (call $proxy_set_header_map_pairs (i32.const 0) (i32.load (i32.const 512)) (i32.load (i32.const 516))))
    (i32.const 0))"#,
        );
        let passthrough = module(
            r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))"#,
        );
        let mut request: Vec<(&str, &str)> = vec![(":method", "GET"), (":path", "/p"), (":authority", "a")];
        request.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));

        let untouched = builder(&passthrough).start().unwrap();
        let mut reference = untouched.http_stream();
        reference.request_headers(&request, true).unwrap();

        let plugin = builder(&wat).start().unwrap();
        let mut stream = plugin.http_stream();
        stream.request_headers(&request, true).unwrap();
        prop_assert_eq!(messages(&plugin), vec!["0"]);
        prop_assert_eq!(stream.request_headers_now(), reference.request_headers_now());
    }
}

/// Replays the corpus the `headermap` fuzz target kept (`fuzz/corpus/headermap/`).
#[test]
fn the_fuzz_corpus_parses_canonically_or_is_refused() {
    let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/headermap");
    let entries: Vec<_> = std::fs::read_dir(directory)
        .expect("the header-map fuzz corpus is committed")
        .collect();
    assert!(!entries.is_empty());
    for entry in entries {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        if let Ok(pairs) = deserialize(&bytes) {
            if bytes.len() > 1 {
                assert_eq!(serialize(&pairs), bytes);
            }
        }
    }
}
