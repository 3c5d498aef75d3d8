//! Decisions and how they are applied: an allow carries header mutations for the upstream
//! request and for the response, a denial carries the reply the client gets. Both are plain
//! data, so they can be cached (and shared between workers as JSON).

use serde::{Deserialize, Serialize};
use wasmesh_sdk::decision::LocalReply;
use wasmesh_sdk::request::Request;

/// One header as the service gave it.
pub type HeaderPair = (String, String);

/// What the service (or the cache) decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Let the request through, with these mutations.
    Allow(Allow),
    /// Answer the client with this reply.
    Deny(Deny),
}

/// Mutations of an allowed request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allow {
    /// Set on the upstream request, replacing any value.
    pub upstream_set: Vec<HeaderPair>,
    /// Added to the upstream request as another value.
    pub upstream_add: Vec<HeaderPair>,
    /// Appended (`,`-joined) to an existing upstream header; ignored when it is absent.
    pub upstream_append: Vec<HeaderPair>,
    /// Removed from the upstream request (never pseudo-headers or `host`).
    pub upstream_remove: Vec<String>,
    /// Added to the response sent to the client.
    pub response_add: Vec<HeaderPair>,
    /// Set on the response, replacing any value.
    pub response_set: Vec<HeaderPair>,
    /// Added to the response only when absent.
    pub response_add_if_absent: Vec<HeaderPair>,
    /// Replaces a response header only when present.
    pub response_overwrite_if_exists: Vec<HeaderPair>,
}

/// A denial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deny {
    /// HTTP status for the client.
    pub status: u16,
    /// Headers for the client.
    pub headers: Vec<HeaderPair>,
    /// Body for the client.
    pub body: Vec<u8>,
}

/// Response code details of a denial by the service (as Envoy's ext_authz).
pub const DENIED_DETAILS: &str = "ext_authz_denied";
/// Response code details of a failure answered with `status_on_error` (as Envoy's ext_authz).
pub const ERROR_DETAILS: &str = "ext_authz_error";
/// Response code details of a denial by a local list.
pub const LOCAL_DENIED_DETAILS: &str = "ext_authz_local_denied";
/// Response code details of a body over `max_request_bytes` (as Envoy's buffer limit).
pub const TOO_LARGE_DETAILS: &str = "request_payload_too_large";

/// Headers the proxy manages itself on a reply (it computes the length and framing).
fn managed_reply_header(name: &str) -> bool {
    name.starts_with(':')
        || matches!(
            name,
            "content-length" | "transfer-encoding" | "connection" | "keep-alive" | "upgrade"
        )
}

impl Deny {
    /// The local reply of this denial.
    pub fn reply(&self) -> LocalReply {
        let mut reply = LocalReply::new(self.status, DENIED_DETAILS).with_body(self.body.clone());
        for (name, value) in &self.headers {
            if !managed_reply_header(name) {
                reply = reply.with_header(name.clone(), value.clone());
            }
        }
        reply
    }
}

/// Request headers the service may never remove: the request would be malformed.
fn protected(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

/// What applying mutations left undone (invalid names or values from the service).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped(pub Vec<String>);

impl Allow {
    /// Applies the upstream mutations to the request; returns what was refused.
    pub fn apply_upstream(&self, request: &mut dyn Request) -> Skipped {
        let mut skipped = Vec::new();
        let mut note = |name: &str, result: Result<(), wasmesh_sdk::error::Error>| {
            if let Err(error) = result {
                skipped.push(format!("{name}: {error}"));
            }
        };
        for (name, value) in &self.upstream_set {
            if name.starts_with(':') {
                note(name, Err(refused_pseudo()));
                continue;
            }
            note(name, request.set_request_header(name, value));
        }
        for (name, value) in &self.upstream_add {
            if name.starts_with(':') {
                note(name, Err(refused_pseudo()));
                continue;
            }
            note(name, request.add_request_header(name, value));
        }
        for (name, value) in &self.upstream_append {
            if name.starts_with(':') {
                note(name, Err(refused_pseudo()));
                continue;
            }
            let existing = request.header(name).map(|value| value.into_owned());
            if let Some(existing) = existing {
                note(
                    name,
                    request.set_request_header(name, &format!("{existing},{value}")),
                );
            }
        }
        for name in &self.upstream_remove {
            if !protected(name) {
                note(name, request.remove_request_header(name));
            }
        }
        Skipped(skipped)
    }

    /// Applies the response mutations (at response headers).
    pub fn apply_response(&self, request: &mut dyn Request) -> Skipped {
        let mut skipped = Vec::new();
        let mut note = |name: &str, result: Result<(), wasmesh_sdk::error::Error>| {
            if let Err(error) = result {
                skipped.push(format!("{name}: {error}"));
            }
        };
        for (name, value) in &self.response_add {
            note(name, request.add_response_header(name, value));
        }
        for (name, value) in &self.response_set {
            note(name, request.set_response_header(name, value));
        }
        for (name, value) in &self.response_add_if_absent {
            if request.response_header(name).is_none() {
                note(name, request.add_response_header(name, value));
            }
        }
        for (name, value) in &self.response_overwrite_if_exists {
            if request.response_header(name).is_some() {
                note(name, request.set_response_header(name, value));
            }
        }
        Skipped(skipped)
    }

    /// Whether any response mutation is pending.
    pub fn has_response_mutations(&self) -> bool {
        !(self.response_add.is_empty()
            && self.response_set.is_empty()
            && self.response_add_if_absent.is_empty()
            && self.response_overwrite_if_exists.is_empty())
    }
}

fn refused_pseudo() -> wasmesh_sdk::error::Error {
    wasmesh_sdk::error::Error::InvalidArgument("pseudo-headers are not set by the service".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_sdk::request::MemoryRequest;

    fn pair(name: &str, value: &str) -> HeaderPair {
        (name.to_string(), value.to_string())
    }

    #[test]
    fn upstream_mutations_follow_envoy_semantics() {
        let allow = Allow {
            upstream_set: vec![pair("x-user", "alice"), pair(":path", "/evil")],
            upstream_add: vec![pair("x-role", "admin")],
            upstream_append: vec![pair("x-trace", "authz"), pair("x-absent", "v")],
            upstream_remove: vec!["authorization".into(), ":authority".into(), "host".into()],
            ..Allow::default()
        };
        let mut request = MemoryRequest::get("/")
            .with_header("x-user", "spoofed")
            .with_header("x-role", "user")
            .with_header("x-trace", "client")
            .with_header("authorization", "Bearer secret");
        let skipped = allow.apply_upstream(&mut request);
        assert_eq!(request.header("x-user").as_deref(), Some("alice"));
        assert_eq!(request.header_values("x-role"), vec!["user", "admin"]);
        assert_eq!(request.header("x-trace").as_deref(), Some("client,authz"));
        assert_eq!(request.header("x-absent"), None);
        assert_eq!(request.header("authorization"), None);
        assert_eq!(request.path(), Some("/"));
        assert_eq!(request.authority(), Some("example.com"));
        assert_eq!(skipped.0.len(), 1, "{skipped:?}");
    }

    #[test]
    fn response_mutations_respect_their_actions() {
        let allow = Allow {
            response_add: vec![pair("x-a", "1")],
            response_set: vec![pair("x-b", "2")],
            response_add_if_absent: vec![pair("x-c", "3"), pair("x-d", "new")],
            response_overwrite_if_exists: vec![pair("x-e", "5"), pair("x-f", "6")],
            ..Allow::default()
        };
        assert!(allow.has_response_mutations());
        let mut request = MemoryRequest::get("/")
            .with_response_header("x-a", "0")
            .with_response_header("x-b", "0")
            .with_response_header("x-d", "old")
            .with_response_header("x-e", "0");
        allow.apply_response(&mut request);
        assert_eq!(request.response_header("x-a").as_deref(), Some("0,1"));
        assert_eq!(request.response_header("x-b").as_deref(), Some("2"));
        assert_eq!(request.response_header("x-c").as_deref(), Some("3"));
        assert_eq!(request.response_header("x-d").as_deref(), Some("old"));
        assert_eq!(request.response_header("x-e").as_deref(), Some("5"));
        assert_eq!(request.response_header("x-f"), None);
        assert!(!Allow::default().has_response_mutations());
    }

    #[test]
    fn denial_reply_drops_framing_headers() {
        let deny = Deny {
            status: 401,
            headers: vec![
                pair(":status", "401"),
                pair("content-length", "2"),
                pair("www-authenticate", "Bearer"),
            ],
            body: b"no".to_vec(),
        };
        let reply = deny.reply();
        assert_eq!(reply.status, 401);
        assert_eq!(reply.details, DENIED_DETAILS);
        assert_eq!(reply.body, b"no");
        assert_eq!(reply.headers, vec![pair("www-authenticate", "Bearer")]);
    }
}
