#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Property tests of `wasmesh_sdk::matcher::normalize_path` (Envoy's `normalize_path` +
//! `merge_slashes`, see `sdk/src/matcher/path.rs` for the documented semantics).
//!
//! A path rule (RBAC, JWT requirement, ext_authz allow-list) is only as strong as the
//! normalization in front of it: every property here is a way an attacker could otherwise walk
//! around a rule for `/admin`. Encoded slashes (`%2F`, `%5C`) are documented to stay encoded
//! (Envoy's default `KEEP_UNCHANGED`), so the property checked for them is that they never act
//! as a separator.

use proptest::prelude::*;
use wasmesh_sdk::matcher::path::{canonicalize_path, merge_slashes, normalize_path, PathError};

/// Fragments that exercise every branch of the canonicalizer: separators, dot segments in all
/// encodings, valid/invalid/truncated escapes, characters that must be escaped, query/fragment.
fn fragment() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/", "/", "/", "\\", ".", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%", "%2",
        "%25", "%41", "%61", "%7e", "%20", "%%", "%3", "%32", "%65", "%45", "%66", "%35", "%63",
        "%30", "2", "e", "E", "f", "5", "c", "a", "b", "admin", "?", "#", " ", "é", "\u{7f}", "~",
        ":", "@", "%zz",
    ])
}

/// Paths built from [`fragment`]s (no NUL), up to 24 fragments long.
fn tricky_path() -> impl Strategy<Value = String> {
    prop::collection::vec(fragment(), 0..24).prop_map(|parts| parts.concat())
}

/// A clean path: `/` followed by 1-4 non-dot segments of unreserved characters.
fn clean_path() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[a-zA-Z0-9_~-]{1,6}", 1..5)
}

/// Percent-encodes a byte with random hex case.
fn encode(byte: u8, upper: bool) -> String {
    if upper {
        format!("%{byte:02X}")
    } else {
        format!("%{byte:02x}")
    }
}

/// Whether `path` contains `/<segment>/` or ends with `/<segment>`.
fn has_segment(path: &str, segment: &str) -> bool {
    path.split('/').skip(1).any(|s| s == segment)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any input, including arbitrary Unicode, gives an answer and never panics.
    #[test]
    fn never_panics_on_arbitrary_input(path in any::<String>()) {
        let _ = normalize_path(&path);
        let _ = canonicalize_path(&path);
        let _ = merge_slashes(&path);
    }

    /// Normalizing twice changes nothing: what a filter matched is what it would match again
    /// (a path that normalizes to `/%2e%2e/admin` would be a second-order bypass).
    #[test]
    fn normalization_is_idempotent(path in prop_oneof![tricky_path(), any::<String>()]) {
        if let Ok(once) = normalize_path(&path) {
            prop_assert_eq!(normalize_path(&once), Ok(once.clone()), "input {:?}", path);
        }
    }

    /// The output is a canonical absolute path: no `//`, no `.`/`..` segment, no backslash,
    /// no query or fragment, ASCII only, no encoded dot, no encoded NUL.
    #[test]
    fn output_is_canonical(path in prop_oneof![tricky_path(), any::<String>()]) {
        let Ok(out) = normalize_path(&path) else { return Ok(()); };
        prop_assert!(out.starts_with('/'), "{:?} -> {:?}", path, out);
        prop_assert!(!out.contains("//"), "{:?} -> {:?}", path, out);
        prop_assert!(!has_segment(&out, "."), "{:?} -> {:?}", path, out);
        prop_assert!(!has_segment(&out, ".."), "{:?} -> {:?}", path, out);
        prop_assert!(!out.contains("/./") && !out.contains("/../"), "{:?} -> {:?}", path, out);
        prop_assert!(!out.contains('\\'), "{:?} -> {:?}", path, out);
        prop_assert!(!out.contains('?') && !out.contains('#'), "{:?} -> {:?}", path, out);
        prop_assert!(out.is_ascii(), "{:?} -> {:?}", path, out);
        let lower = out.to_ascii_lowercase();
        prop_assert!(!lower.contains("%2e"), "{:?} -> {:?}", path, out);
        prop_assert!(!lower.contains("%00"), "{:?} -> {:?}", path, out);
        prop_assert!(
            !out.bytes().any(|b| b <= 0x20 || b >= 0x7f || b"\"<>`{|}^".contains(&b)),
            "{:?} -> {:?}", path, out
        );
    }

    /// A NUL byte, raw or encoded, is always refused (Envoy answers 400).
    #[test]
    fn nul_bytes_are_always_rejected(prefix in tricky_path(), suffix in tricky_path(), raw in any::<bool>()) {
        let prefix = prefix.split(['?', '#']).next().unwrap_or_default().to_string();
        let nul = if raw { "\0" } else { "%00" };
        prop_assert_eq!(normalize_path(&format!("{prefix}{nul}{suffix}")), Err(PathError::NulByte));
    }

    /// Encoded slashes stay encoded and never split a segment: a single segment stays a single
    /// segment, whatever escapes it holds.
    #[test]
    fn encoded_slashes_never_become_separators(
        parts in prop::collection::vec(prop::sample::select(vec!["%2f", "%2F", "%5c", "%5C", "a", "..", ".", "%2e"]), 1..8)
    ) {
        let segment = parts.concat();
        // A whole segment that is a dot segment in some encoding is resolved, not kept.
        let lower = segment.to_ascii_lowercase();
        prop_assume!(!matches!(lower.as_str(), "." | ".." | "%2e" | ".%2e" | "%2e." | "%2e%2e"));
        let out = normalize_path(&format!("/{segment}")).unwrap();
        prop_assert_eq!(out.matches('/').count(), 1, "/{} -> {}", segment, out);
    }

    /// Every obfuscation of a clean path (dot segments, `x/..` detours, repeated and back
    /// slashes, percent-encoded unreserved characters in either hex case, a query) normalizes
    /// back to the clean path: none of them walks around a rule written for it.
    #[test]
    fn obfuscated_paths_normalize_to_the_clean_path(
        segments in clean_path(),
        noise in prop::collection::vec((0u8..6, any::<bool>(), 0usize..6), 0..6),
        encode_mask in any::<u64>(),
    ) {
        let clean = format!("/{}", segments.join("/"));
        let mut obfuscated = String::new();
        for (index, segment) in segments.iter().enumerate() {
            for (kind, upper, position) in &noise {
                if *position != index {
                    continue;
                }
                let dot = if *upper { "%2E" } else { "." };
                obfuscated.push_str(match kind {
                    0 => "/./",
                    1 => "//",
                    2 => "\\",
                    3 => "/detour/../",
                    4 => "/x/%2e%2e/",
                    _ => "/",
                });
                if *kind == 5 {
                    obfuscated.push_str(dot);
                    obfuscated.push('/');
                }
            }
            obfuscated.push('/');
            for (offset, byte) in segment.bytes().enumerate() {
                if encode_mask >> ((index * 8 + offset) % 64) & 1 == 1 {
                    obfuscated.push_str(&encode(byte, offset % 2 == 0));
                } else {
                    obfuscated.push(char::from(byte));
                }
            }
        }
        obfuscated.push_str("?next=/../admin");
        prop_assert_eq!(normalize_path(&obfuscated), Ok(clean.clone()), "{}", obfuscated);
    }
}

/// Regression: a malformed escape followed by an escape that decodes to a hex digit used to
/// leave a freshly formed `%2e` in the output (`/%2%65` -> `/%2e`), so `/%2%65%2%65/admin`
/// normalized to `/%2e%2e/admin`: not idempotent, and an upstream that decodes once more sees
/// `/../admin`. Found by `normalization_is_idempotent`.
#[test]
fn escapes_formed_by_decoding_are_resolved_too() {
    assert_eq!(normalize_path("/%2%65").as_deref(), Ok("/"));
    assert_eq!(
        normalize_path("/public/%2%65%2%65/admin").as_deref(),
        Ok("/admin")
    );
    assert_eq!(normalize_path("/%%30%30"), Err(PathError::NulByte));
    let once = normalize_path("/a/%%32%65%%32%65/b").unwrap();
    assert_eq!(normalize_path(&once).unwrap(), once);
}

/// Replays the corpus the `path_normalize` fuzz target kept (`fuzz/corpus/path_normalize/`):
/// every input normalizes to a canonical fixed point, or is refused.
#[test]
fn the_fuzz_corpus_normalizes_to_canonical_fixed_points() {
    let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/path_normalize");
    let Ok(entries) = std::fs::read_dir(directory) else {
        return; // The fuzz corpus is optional (e.g. the SDK published on its own).
    };
    let mut replayed = 0;
    for entry in entries {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let path = String::from_utf8_lossy(&bytes);
        if let Ok(out) = normalize_path(&path) {
            assert_eq!(normalize_path(&out), Ok(out.clone()), "{path:?}");
            assert!(
                out.starts_with('/') && !out.contains("//"),
                "{path:?} -> {out:?}"
            );
            assert!(
                !has_segment(&out, ".") && !has_segment(&out, ".."),
                "{path:?} -> {out:?}"
            );
        }
        replayed += 1;
    }
    assert!(replayed > 0);
}
