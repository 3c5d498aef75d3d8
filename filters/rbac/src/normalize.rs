//! Request normalization before matching: what the policies see of the path and the host.
//!
//! Envoy's RBAC filter matches the `:path` and `:authority` the HTTP connection manager hands
//! it, and relies on the connection manager's `normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action` and `strip_any_host_port` to make them canonical. A wasm
//! filter cannot assume how the listener is configured, so this filter performs the same steps
//! itself, in Envoy's order, before any policy looks at the request:
//!
//! 1. the query (`?...`) and fragment (`#...`) are split off (policies on `url_path` never see
//!    them; a `:path` header matcher sees the normalized path followed by the query);
//! 2. `path_with_escaped_slashes_action`: `%2F`, `%2f`, `%5C`, `%5c` are decoded
//!    (`UNESCAPE_AND_FORWARD`, the default here), kept (`KEEP_UNCHANGED`), or make the request
//!    fail with 400 (`REJECT_REQUEST`);
//! 3. `normalize_path`: RFC 3986 dot segments, `\` as `/`, decoding of unreserved escapes
//!    (`%61` is `a`) — Envoy's `PathUtil::canonicalPath`;
//! 4. `merge_slashes`: `//admin` is `/admin`.
//!
//! Steps 2 and 3 are repeated while the decoding of step 3 forms new escaped slashes
//! (`%2%66` is `%2f` once `%66` is decoded): each pass applies the escaped-slash action again, so
//! such a slash is decoded too (or the request refused under `REJECT_REQUEST`), and policies see
//! what an upstream that decodes once more would see. Envoy runs one pass; the two differ only on
//! such nested encodings, which a client acting in good faith does not send. The repetition is
//! bounded: a path still forming escaped slashes after [`MAX_PASSES`] passes is refused.
//!
//! Hosts: the authority is lower-cased and a trailing dot of the host name dropped; with
//! `strip_any_host_port` the port is removed before `:authority` header matchers see it. Istio
//! `hosts` always compare case-insensitively and with or without the port (see [`host_forms`]).

use serde::Deserialize;
use wasmesh_sdk::matcher::path::{canonicalize_path, merge_slashes, strip_query_and_fragment};

/// What to do with `%2F`, `%2f`, `%5C`, `%5c` in the path (Envoy's
/// `HttpConnectionManager.PathWithEscapedSlashesAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum EscapedSlashesAction {
    /// Match the path with escaped slashes as they are: `/%2Fadmin` is not `/admin`.
    #[serde(rename = "KEEP_UNCHANGED")]
    KeepUnchanged,
    /// Answer 400 to any request whose path contains an escaped slash.
    #[serde(rename = "REJECT_REQUEST")]
    RejectRequest,
    /// Decode escaped slashes before normalizing: `/%2Fadmin` is `/admin` (default).
    #[serde(rename = "UNESCAPE_AND_FORWARD")]
    #[default]
    UnescapeAndForward,
}

/// The `normalization` block of the configuration (field names of Envoy's
/// `HttpConnectionManager`, secure defaults).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    /// RFC 3986 normalization of the path (default `true`).
    #[serde(default = "yes")]
    pub normalize_path: bool,
    /// Merge runs of `/` (default `true`).
    #[serde(default = "yes")]
    pub merge_slashes: bool,
    /// What to do with escaped slashes (default `UNESCAPE_AND_FORWARD`).
    #[serde(default)]
    pub path_with_escaped_slashes_action: EscapedSlashesAction,
    /// Lower-case `:authority` and drop a trailing dot of its host before header matchers see
    /// it (default `true`; host names are case-insensitive). Istio `hosts` always do.
    #[serde(default = "yes")]
    pub normalize_host: bool,
    /// Remove the port from `:authority` before header matchers see it (default `false`, as
    /// Envoy). Istio `hosts` ignore the port regardless.
    #[serde(default)]
    pub strip_any_host_port: bool,
    /// Send the normalized path upstream (query kept), so the upstream acts on exactly the path
    /// that was authorized (default `false`: the request is forwarded as received).
    #[serde(default)]
    pub forward_normalized_path: bool,
}

fn yes() -> bool {
    true
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization {
            normalize_path: true,
            merge_slashes: true,
            path_with_escaped_slashes_action: EscapedSlashesAction::default(),
            normalize_host: true,
            strip_any_host_port: false,
            forward_normalized_path: false,
        }
    }
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRejection {
    /// A NUL byte, raw or `%00` (Envoy answers 400 too).
    NulByte,
    /// An escaped slash under `REJECT_REQUEST`, as received or formed by decoding.
    EscapedSlash,
    /// Escaped slashes nested in more levels of percent-encoding than [`MAX_PASSES`] undo.
    TooDeeplyEncoded,
}

/// Passes of escaped-slash action and `normalize_path` before a path whose decoding keeps
/// forming escaped slashes is refused. A path sent in good faith needs one pass; one whose
/// decoding formed an escaped slash needs a second (`canonicalize_path` undoes every level of
/// nested encoding at once, and decoding an escaped slash only writes a separator, which forms no
/// new escape). The bound makes termination obvious rather than argued.
pub const MAX_PASSES: usize = 4;

/// A `:path` split and normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// The normalized path, without query or fragment: what `url_path` matches.
    pub path: String,
    /// The query without its `?`, if the request had one (fragment dropped).
    pub query: Option<String>,
}

impl NormalizedPath {
    /// Path and query as a `:path` value (what `:path` header matchers see).
    pub fn with_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }
}

fn escaped_slash_at(bytes: &[u8], at: usize) -> bool {
    matches!(
        (bytes.get(at), bytes.get(at + 1), bytes.get(at + 2)),
        (Some(b'%'), Some(b'2'), Some(b'f' | b'F')) | (Some(b'%'), Some(b'5'), Some(b'c' | b'C'))
    )
}

fn contains_escaped_slash(path: &str) -> bool {
    let bytes = path.as_bytes();
    (0..bytes.len()).any(|at| escaped_slash_at(bytes, at))
}

/// Decodes `%2F`/`%2f` to `/` and `%5C`/`%5c` to `\` (Envoy's `unescapeSlashes`).
fn unescape_slashes(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut output = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if escaped_slash_at(bytes, i) {
            output.push(if bytes.get(i + 1) == Some(&b'2') {
                '/'
            } else {
                '\\'
            });
            i += 3;
        } else {
            // Copy the next UTF-8 character whole.
            let rest = path.get(i..).unwrap_or_default();
            let Some(c) = rest.chars().next() else {
                break;
            };
            output.push(c);
            i += c.len_utf8();
        }
    }
    output
}

impl Normalization {
    /// Normalizes a `:path` value as configured.
    pub fn path(&self, raw: &str) -> Result<NormalizedPath, PathRejection> {
        self.path_within(raw, MAX_PASSES)
    }

    /// [`Normalization::path`] with at most `max_passes` passes (see [`MAX_PASSES`]).
    fn path_within(&self, raw: &str, max_passes: usize) -> Result<NormalizedPath, PathRejection> {
        if raw.contains('\0') {
            return Err(PathRejection::NulByte);
        }
        let path_part = strip_query_and_fragment(raw);
        let query = raw
            .get(path_part.len()..)
            .and_then(|rest| rest.strip_prefix('?'))
            .map(|query| query.split('#').next().unwrap_or_default().to_string());
        let mut path = path_part.to_string();
        let mut passes = 0;
        loop {
            path = self.escaped_slashes_pass(path)?;
            // `canonicalize_path` returns its own fixed point (and `unescape_slashes` cannot
            // form an escaped slash: it only writes `/` and `\`), so only the escaped-slash
            // action can change the path again, and only if decoding formed an escaped slash.
            if self.path_with_escaped_slashes_action == EscapedSlashesAction::KeepUnchanged
                || !contains_escaped_slash(&path)
            {
                break;
            }
            passes += 1;
            if passes >= max_passes {
                return Err(PathRejection::TooDeeplyEncoded);
            }
        }
        if self.merge_slashes {
            path = merge_slashes(&path);
        }
        Ok(NormalizedPath { path, query })
    }

    /// One pass: the escaped-slash action, then `normalize_path`.
    fn escaped_slashes_pass(&self, path: String) -> Result<String, PathRejection> {
        let path = match self.path_with_escaped_slashes_action {
            EscapedSlashesAction::RejectRequest if contains_escaped_slash(&path) => {
                return Err(PathRejection::EscapedSlash);
            }
            EscapedSlashesAction::UnescapeAndForward if contains_escaped_slash(&path) => {
                unescape_slashes(&path)
            }
            _ => path,
        };
        if self.normalize_path {
            canonicalize_path(&path).map_err(|_| PathRejection::NulByte)
        } else if path.contains("%00") {
            Err(PathRejection::NulByte)
        } else {
            Ok(path)
        }
    }

    /// The `:authority` header matchers see: with `normalize_host`, lower-cased and without a
    /// trailing dot; with `strip_any_host_port`, without the port.
    pub fn authority(&self, raw: &str) -> String {
        let (host, port) = split_host_port(raw);
        let host = if self.normalize_host {
            canonical_host(host)
        } else {
            host.to_string()
        };
        match port {
            Some(port) if !self.strip_any_host_port => format!("{host}:{port}"),
            _ => host,
        }
    }
}

/// Splits `host[:port]` (IPv6 literals in brackets). A port that is not all digits is kept in
/// the host, so `example.com:evil` never compares equal to `example.com`.
pub fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    let port_start = if authority.starts_with('[') {
        authority
            .find(']')
            .and_then(|end| authority.get(end + 1..))
            .filter(|rest| rest.starts_with(':'))
            .map(|rest| authority.len() - rest.len())
    } else {
        authority
            .rfind(':')
            .filter(|_| authority.matches(':').count() == 1)
    };
    match port_start {
        Some(colon) => {
            let port = authority.get(colon + 1..).unwrap_or_default();
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                (authority.get(..colon).unwrap_or(authority), Some(port))
            } else {
                (authority, None)
            }
        }
        None => (authority, None),
    }
}

/// Lower-cases a host name and drops one trailing dot (`EXAMPLE.com.` is `example.com`).
pub fn canonical_host(host: &str) -> String {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

/// The forms an Istio `hosts` pattern is compared with: the canonical authority with its port
/// and, when it has one, without it. A pattern matching either matches the request.
pub fn host_forms(authority: &str) -> (String, Option<String>) {
    let (host, port) = split_host_port(authority);
    let host = canonical_host(host);
    match port {
        Some(port) => (format!("{host}:{port}"), Some(host)),
        None => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(path: &str) -> String {
        Normalization::default().path(path).unwrap().path
    }

    fn with_action(action: EscapedSlashesAction) -> Normalization {
        Normalization {
            path_with_escaped_slashes_action: action,
            ..Normalization::default()
        }
    }

    #[test]
    fn default_normalization_defeats_the_classic_bypasses() {
        for attack in [
            "/admin",
            "//admin",
            "/./admin",
            "/a/../admin",
            "/%2Fadmin",
            "/%2fadmin",
            "/%5Cadmin",
            "/\\admin",
            "/admin#x",
            "/admin?x",
            "/%61dmin",
            "/x/%2e%2e/admin",
            "/x/..%2Fadmin",
            "/x%2F..%2Fadmin",
            "///admin//",
        ] {
            let path = normalized(attack);
            assert!(path == "/admin" || path == "/admin/", "{attack} -> {path}");
        }
    }

    #[test]
    fn query_and_fragment_are_split_off() {
        let normalized = Normalization::default()
            .path("/a/../b?x=/../y#frag")
            .unwrap();
        assert_eq!(normalized.path, "/b");
        assert_eq!(normalized.query.as_deref(), Some("x=/../y"));
        assert_eq!(normalized.with_query(), "/b?x=/../y");
        let plain = Normalization::default().path("/b#f?x").unwrap();
        assert_eq!(plain.query, None);
        assert_eq!(plain.with_query(), "/b");
    }

    #[test]
    fn escaped_slash_actions() {
        let keep = with_action(EscapedSlashesAction::KeepUnchanged);
        assert_eq!(keep.path("/a%2Fb").unwrap().path, "/a%2Fb");
        let reject = with_action(EscapedSlashesAction::RejectRequest);
        assert_eq!(reject.path("/a%2fb"), Err(PathRejection::EscapedSlash));
        assert_eq!(reject.path("/a%5Cb"), Err(PathRejection::EscapedSlash));
        assert_eq!(reject.path("/a/b?x=%2F").unwrap().path, "/a/b");
        assert_eq!(normalized("/a%5cb"), "/a/b");
    }

    #[test]
    fn escaped_slashes_formed_by_decoding_are_decoded_or_rejected() {
        // `%2%66` is `%2f` once `%66` is decoded, after the escaped-slash action first ran.
        assert_eq!(normalized("/x%2%66..%2%66admin"), "/admin");
        assert_eq!(normalized("/%%35c"), "/");
        assert_eq!(normalized("/a%%32%46b"), "/a/b");
        let reject = with_action(EscapedSlashesAction::RejectRequest);
        assert_eq!(
            reject.path("/x%2%66..%2%66admin"),
            Err(PathRejection::EscapedSlash)
        );
        assert_eq!(reject.path("/%%35c"), Err(PathRejection::EscapedSlash));
        // Still kept, never decoded, under KEEP_UNCHANGED.
        let keep = with_action(EscapedSlashesAction::KeepUnchanged);
        assert_eq!(keep.path("/a%2%66b").unwrap().path, "/a%2fb");
    }

    #[test]
    fn the_passes_are_bounded() {
        let default = Normalization::default();
        // One pass for a path without escaped slashes, two when decoding formed one.
        assert_eq!(default.path_within("/a%2Fb", 1).unwrap().path, "/a/b");
        assert_eq!(
            default.path_within("/a%2%66b", 1),
            Err(PathRejection::TooDeeplyEncoded)
        );
        assert_eq!(default.path_within("/a%2%66b", 2).unwrap().path, "/a/b");
    }

    #[test]
    fn normalization_can_be_turned_off() {
        let raw = Normalization {
            normalize_path: false,
            merge_slashes: false,
            path_with_escaped_slashes_action: EscapedSlashesAction::KeepUnchanged,
            ..Normalization::default()
        };
        assert_eq!(raw.path("//a/../b%2F?q").unwrap().path, "//a/../b%2F");
        let only_merge = Normalization {
            normalize_path: false,
            ..Normalization::default()
        };
        assert_eq!(only_merge.path("//a/./b").unwrap().path, "/a/./b");
        // Without `normalize_path` nothing is decoded but escaped slashes, so none is formed.
        assert_eq!(only_merge.path("/a%2%66b").unwrap().path, "/a%2%66b");
    }

    #[test]
    fn nul_bytes_are_rejected_in_every_mode() {
        let raw = Normalization {
            normalize_path: false,
            ..Normalization::default()
        };
        for normalization in [Normalization::default(), raw] {
            assert_eq!(normalization.path("/a%00"), Err(PathRejection::NulByte));
            assert_eq!(normalization.path("/a\0"), Err(PathRejection::NulByte));
        }
    }

    #[test]
    fn multibyte_paths_survive_unescaping() {
        assert_eq!(normalized("/é%2Fü"), "/%C3%A9/%C3%BC");
    }

    #[test]
    fn authority_forms() {
        let default = Normalization::default();
        assert_eq!(default.authority("EXAMPLE.com:80"), "example.com:80");
        assert_eq!(default.authority("Example.COM."), "example.com");
        let strip = Normalization {
            strip_any_host_port: true,
            ..Normalization::default()
        };
        assert_eq!(strip.authority("EXAMPLE.com.:8080"), "example.com");
        assert_eq!(strip.authority("[::1]:443"), "[::1]");
        assert_eq!(strip.authority("::1"), "::1");
        assert_eq!(
            host_forms("Example.com:80"),
            (
                "example.com:80".to_string(),
                Some("example.com".to_string())
            )
        );
        assert_eq!(host_forms("example.com"), ("example.com".to_string(), None));
        let verbatim = Normalization {
            normalize_host: false,
            ..Normalization::default()
        };
        assert_eq!(verbatim.authority("Example.COM.:80"), "Example.COM.:80");
        assert_eq!(split_host_port("a.com:x"), ("a.com:x", None));
        assert_eq!(split_host_port("a.com:"), ("a.com:", None));
        assert_eq!(split_host_port("[::1]:9"), ("[::1]", Some("9")));
    }
}
