//! Path normalization as Envoy's HTTP connection manager does it with `normalize_path: true`
//! and `merge_slashes: true` (`PathUtil::canonicalPath` — Chromium's URL path canonicalizer —
//! followed by `PathUtil::mergeSlashes`).
//!
//! Filters that match on paths must match the *normalized* path, or `/a/../admin`,
//! `//admin` and `/%2e%2e/admin` walk around a rule for `/admin`.
//!
//! [`normalize_path`] performs, in order:
//! 1. drops the query (`?...`) and fragment (`#...`);
//! 2. canonicalizes (RFC 3986 section 5.2.4 dot-segment removal, with Chromium's rules):
//!    * `\` becomes `/`;
//!    * `%XX` encoding an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded; any other
//!      valid escape is kept verbatim, hex case included (so `%2F`/`%2f`, encoded slashes,
//!      stay encoded and never split a segment — Envoy's default
//!      `path_with_escaped_slashes_action: KEEP_UNCHANGED`);
//!    * `.`/`%2e` and `..`/`.%2e`/`%2e.`/`%2e%2e` segments are resolved; `..` never climbs
//!      above the root;
//!    * characters that are not allowed in a path (space, `"`, `<`, `>`, `` ` ``, `{`, `|`,
//!      `}`, `^`, controls, non-ASCII bytes) are percent-encoded with upper-case hex;
//!    * a path not starting with `/` gets one;
//!    * the pass is repeated until nothing changes, so escapes formed by decoding (`%2%65` is
//!      `%2e` after one pass) are resolved too and the result is idempotent (Envoy runs one
//!      pass; the two differ only on such double-encoding tricks, see [`canonicalize_path`]);
//! 3. merges runs of `/` into one.
//!
//! A NUL byte, raw or as `%00`, makes the path invalid: Envoy rejects such requests with 400.

use std::fmt;

/// Why a path could not be normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// The path contains a NUL byte (raw or `%00`).
    NulByte,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::NulByte => f.write_str("path contains a NUL byte"),
        }
    }
}

impl std::error::Error for PathError {}

/// Strips query and fragment, canonicalizes, merges slashes. See the module docs.
pub fn normalize_path(path: &str) -> Result<String, PathError> {
    let canonical = canonicalize_path(strip_query_and_fragment(path))?;
    Ok(merge_slashes(&canonical))
}

/// The path component of a `:path` value: everything before the first `?` or `#`.
pub fn strip_query_and_fragment(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(end) => path.get(..end).unwrap_or(path),
        None => path,
    }
}

/// Replaces each run of `/` with a single `/` (Envoy `merge_slashes`). Input must not carry
/// a query; use [`normalize_path`] for a full `:path`.
pub fn merge_slashes(path: &str) -> String {
    let mut merged = String::with_capacity(path.len());
    let mut previous_slash = false;
    for c in path.chars() {
        if c == '/' {
            if !previous_slash {
                merged.push(c);
            }
            previous_slash = true;
        } else {
            merged.push(c);
            previous_slash = false;
        }
    }
    merged
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Copied as is.
    Pass,
    /// Percent-encoded in the output.
    Escape,
    /// Decoded when found percent-encoded.
    Unescape,
    /// Never valid (NUL).
    Invalid,
}

fn classify(byte: u8) -> Class {
    match byte {
        0 => Class::Invalid,
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => Class::Unescape,
        0x01..=0x20
        | b'"'
        | b'#'
        | b'%'
        | b'<'
        | b'>'
        | b'?'
        | b'\\'
        | b'^'
        | b'`'
        | b'{'
        | b'|'
        | b'}'
        | 0x7f..=0xff => Class::Escape,
        _ => Class::Pass,
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn decode_escape(input: &[u8], at: usize) -> Option<u8> {
    let high = hex_value(*input.get(at + 1)?)?;
    let low = hex_value(*input.get(at + 2)?)?;
    Some(high * 16 + low)
}

/// Length of a dot at `at`: 1 for `.`, 3 for `%2e`/`%2E`, 0 otherwise.
fn dot_len(input: &[u8], at: usize) -> usize {
    match input.get(at) {
        Some(b'.') => 1,
        Some(b'%') if decode_escape(input, at) == Some(b'.') => 3,
        _ => 0,
    }
}

fn is_slash(byte: Option<&u8>) -> bool {
    matches!(byte, Some(b'/' | b'\\'))
}

fn push_escaped(output: &mut Vec<u8>, byte: u8) {
    // A nibble is always a valid index; `get` keeps the code free of panic paths anyway.
    let hex = |nibble: u8| {
        b"0123456789ABCDEF"
            .get(usize::from(nibble))
            .copied()
            .unwrap_or(b'0')
    };
    output.push(b'%');
    output.push(hex(byte >> 4));
    output.push(hex(byte & 0x0f));
}

/// Drops the last segment of `output` (which ends with `/`), never going above the leading `/`.
fn back_up_to_previous_slash(output: &mut Vec<u8>) {
    if output.len() <= 1 {
        return;
    }
    // Skip the trailing slash, then find the previous one.
    let without_trailing = output.len() - 1;
    let previous = output
        .get(..without_trailing)
        .and_then(|head| head.iter().rposition(|&b| b == b'/'))
        .unwrap_or(0);
    output.truncate(previous + 1);
}

/// Chromium/Envoy path canonicalization of a path **without** query or fragment, repeated until
/// nothing changes.
///
/// One pass is exactly Chromium's (and so Envoy's) canonicalizer. One pass is not idempotent,
/// though: a malformed escape followed by an escape that decodes to a hex digit forms a new
/// escape (`%2%65` becomes `%2e`), so `/%2%65%2%65/admin` comes out of one pass as
/// `/%2e%2e/admin`, which an upstream that decodes once more reads as `/admin`. Matching on the
/// fixed point closes that gap; paths without such constructs (every path a client sends in
/// good faith) need exactly one pass, so the result matches Envoy's.
pub fn canonicalize_path(path: &str) -> Result<String, PathError> {
    let mut current = canonicalize_once(path)?;
    loop {
        let next = canonicalize_once(&current)?;
        // A pass that changes anything only decodes escapes it formed or drops dot segments,
        // so it strictly shortens the path: the loop ends after at most `len` passes (in
        // practice a handful: each level of nesting triples the input length).
        if next.len() >= current.len() {
            return Ok(current);
        }
        current = next;
    }
}

/// One pass of Chromium's path canonicalizer.
fn canonicalize_once(path: &str) -> Result<String, PathError> {
    let input = path.as_bytes();
    let mut output: Vec<u8> = Vec::with_capacity(input.len() + 1);
    if !is_slash(input.first()) {
        output.push(b'/');
    }
    let mut i = 0;
    while let Some(&byte) = input.get(i) {
        let dots = dot_len(input, i);
        if dots > 0 {
            if output.last() == Some(&b'/') {
                let after = i + dots;
                let second = dot_len(input, after);
                if after == input.len() || is_slash(input.get(after)) {
                    // "." segment: skip it (and its slash).
                    i = after + usize::from(after < input.len());
                    continue;
                }
                if second > 0 {
                    let after_second = after + second;
                    if after_second == input.len() || is_slash(input.get(after_second)) {
                        // ".." segment: drop the previous segment.
                        back_up_to_previous_slash(&mut output);
                        i = after_second + usize::from(after_second < input.len());
                        continue;
                    }
                }
            }
            // A dot inside a name: emit it decoded.
            output.push(b'.');
            i += dots;
            continue;
        }
        match byte {
            b'\\' => {
                output.push(b'/');
                i += 1;
            }
            b'%' => match decode_escape(input, i) {
                Some(decoded) => {
                    match classify(decoded) {
                        Class::Unescape => output.push(decoded),
                        Class::Invalid => return Err(PathError::NulByte),
                        Class::Pass | Class::Escape => {
                            output.extend_from_slice(input.get(i..i + 3).unwrap_or_default());
                        }
                    }
                    i += 3;
                }
                None => {
                    // Malformed escape: copied through, as Chromium does.
                    output.push(b'%');
                    i += 1;
                }
            },
            _ => {
                match classify(byte) {
                    Class::Invalid => return Err(PathError::NulByte),
                    Class::Escape => push_escaped(&mut output, byte),
                    Class::Pass | Class::Unescape => output.push(byte),
                }
                i += 1;
            }
        }
    }
    // Only ASCII is ever emitted: non-ASCII input bytes are percent-encoded above.
    Ok(String::from_utf8_lossy(&output).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(path: &str) -> String {
        normalize_path(path).unwrap()
    }

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(normalized("/a/../admin"), "/admin");
        assert_eq!(normalized("/a/./b/."), "/a/b/");
        assert_eq!(normalized("/a/b/.."), "/a/");
        assert_eq!(normalized("/../../admin"), "/admin");
        assert_eq!(normalized("/.."), "/");
        assert_eq!(normalized("/a/..b/c"), "/a/..b/c");
        assert_eq!(normalized("/a/b../c"), "/a/b../c");
        assert_eq!(normalized("/a/.../c"), "/a/.../c");
    }

    #[test]
    fn encoded_dots_are_dot_segments() {
        assert_eq!(normalized("/%2e%2e/admin"), "/admin");
        assert_eq!(normalized("/%2E%2E/admin"), "/admin");
        assert_eq!(normalized("/x/.%2e/admin"), "/admin");
        assert_eq!(normalized("/x/%2e./admin"), "/admin");
        assert_eq!(normalized("/x/%2e/admin"), "/x/admin");
        assert_eq!(normalized("/a%2eb"), "/a.b");
    }

    #[test]
    fn slashes_are_merged_and_backslashes_converted() {
        assert_eq!(normalized("//admin"), "/admin");
        assert_eq!(normalized("/a///b//"), "/a/b/");
        assert_eq!(normalized("/a\\..\\admin"), "/admin");
        assert_eq!(normalized("\\admin"), "/admin");
    }

    #[test]
    fn encoded_slashes_are_kept_and_do_not_split_segments() {
        assert_eq!(normalized("/a%2Fb"), "/a%2Fb");
        assert_eq!(normalized("/a%2fb"), "/a%2fb");
        assert_eq!(normalized("/..%2fadmin"), "/..%2fadmin");
        assert_eq!(normalized("/a/..%2F..%2Fadmin"), "/a/..%2F..%2Fadmin");
        assert_eq!(normalized("/a%5c..%5cadmin"), "/a%5c..%5cadmin");
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_kept() {
        assert_eq!(normalized("/%61dmin"), "/admin");
        assert_eq!(normalized("/%41%7e%2D%5F"), "/A~-_");
        assert_eq!(normalized("/a%20b"), "/a%20b");
        assert_eq!(normalized("/a%25b"), "/a%25b");
        assert_eq!(normalized("/a%zzb"), "/a%zzb");
        assert_eq!(normalized("/a%"), "/a%");
    }

    #[test]
    fn forbidden_characters_are_escaped() {
        assert_eq!(normalized("/a b"), "/a%20b");
        assert_eq!(normalized("/\"<>`{|}^"), "/%22%3C%3E%60%7B%7C%7D%5E");
        assert_eq!(normalized("/é"), "/%C3%A9");
        assert_eq!(normalized("/a:b@c!$&'()*+,;="), "/a:b@c!$&'()*+,;=");
    }

    #[test]
    fn query_and_fragment_are_dropped() {
        assert_eq!(normalized("/a/../b?x=/../admin"), "/b");
        assert_eq!(normalized("/a#frag"), "/a");
        assert_eq!(normalized("/a?"), "/a");
        assert_eq!(normalized(""), "/");
        assert_eq!(normalized("?q"), "/");
        assert_eq!(normalized("relative/x"), "/relative/x");
    }

    #[test]
    fn nul_bytes_are_rejected() {
        assert_eq!(normalize_path("/a%00b"), Err(PathError::NulByte));
        assert_eq!(normalize_path("/a\0b"), Err(PathError::NulByte));
    }

    #[test]
    fn normalization_is_idempotent() {
        for path in [
            "/a/../admin",
            "//x//y/",
            "/%2e%2e/a%2Fb",
            "/a b/é",
            "/..%2f/..",
        ] {
            let once = normalized(path);
            assert_eq!(normalized(&once), once, "{path}");
        }
    }
}
