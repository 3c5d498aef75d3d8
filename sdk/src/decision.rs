//! What the logic tells the glue to do with a stream.

use std::borrow::Cow;

use crate::request::{validate_header_name, validate_header_value};

pub use proxy_wasm::types::GrpcStatusCode;

/// The verdict of a filter callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let the stream proceed.
    Continue,
    /// Stop the stream and answer locally (Envoy `sendLocalReply`).
    Deny(LocalReply),
    /// Hold the stream until a callout answers; the glue resumes it when the callout hook
    /// returns [`Decision::Continue`]. Only meaningful after dispatching a callout.
    Pause,
}

impl Decision {
    /// Shorthand for `Decision::Deny(reply)`.
    pub fn deny(reply: LocalReply) -> Self {
        Decision::Deny(reply)
    }

    /// True for [`Decision::Continue`].
    pub fn is_continue(&self) -> bool {
        matches!(self, Decision::Continue)
    }

    /// The local reply of a [`Decision::Deny`].
    pub fn local_reply(&self) -> Option<&LocalReply> {
        match self {
            Decision::Deny(reply) => Some(reply),
            _ => None,
        }
    }
}

/// A locally generated response.
///
/// `details` is Envoy's *response code details* (`%RESPONSE_CODE_DETAILS%` in access logs,
/// e.g. `jwt_authn_access_denied`); it is not sent to the client. Envoy replaces whitespace in
/// details with `_`; [`LocalReply::sanitized_details`] applies the same rule so what the
/// harness records is what Envoy logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status code.
    pub status: u16,
    /// Extra response headers (Envoy adds them with `addCopy`).
    pub headers: Vec<(String, String)>,
    /// Response body (Envoy sets `content-type: text/plain` when non-empty).
    pub body: Vec<u8>,
    /// Response code details.
    pub details: String,
    /// For gRPC requests: the `grpc-status` to send (`None` lets Envoy map the HTTP status).
    pub grpc_status: Option<GrpcStatusCode>,
}

impl LocalReply {
    /// A reply with a status and response code details, no body, no headers.
    pub fn new(status: u16, details: impl Into<String>) -> Self {
        LocalReply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            details: details.into(),
            grpc_status: None,
        }
    }

    /// `400 Bad Request`.
    pub fn bad_request(details: impl Into<String>) -> Self {
        LocalReply::new(400, details)
    }

    /// `401 Unauthorized`.
    pub fn unauthorized(details: impl Into<String>) -> Self {
        LocalReply::new(401, details)
    }

    /// `403 Forbidden`.
    pub fn forbidden(details: impl Into<String>) -> Self {
        LocalReply::new(403, details)
    }

    /// `429 Too Many Requests`.
    pub fn too_many_requests(details: impl Into<String>) -> Self {
        LocalReply::new(429, details)
    }

    /// `503 Service Unavailable`.
    pub fn unavailable(details: impl Into<String>) -> Self {
        LocalReply::new(503, details)
    }

    /// Sets the body.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Adds a response header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the gRPC status for gRPC requests.
    #[must_use]
    pub fn with_grpc_status(mut self, status: GrpcStatusCode) -> Self {
        self.grpc_status = Some(status);
        self
    }

    /// Details with every whitespace character replaced by `_`, as Envoy stores them
    /// (`StringUtil::replaceAllEmptySpace`).
    pub fn sanitized_details(&self) -> Cow<'_, str> {
        if self.details.chars().any(is_envoy_space) {
            Cow::Owned(
                self.details
                    .chars()
                    .map(|c| if is_envoy_space(c) { '_' } else { c })
                    .collect(),
            )
        } else {
            Cow::Borrowed(&self.details)
        }
    }

    /// The `grpc_status` argument of `proxy_send_local_response`: `-1` for "not set".
    pub fn grpc_status_code(&self) -> i32 {
        self.grpc_status
            .map_or(-1, |status| i32::try_from(status as u32).unwrap_or(-1))
    }

    /// Whether `status` is a final HTTP status Envoy can send as a local reply (200-599).
    pub fn is_valid_status(status: u32) -> bool {
        (200..=599).contains(&status)
    }

    /// The status actually sent: `status` if valid, else `500` (a filter bug must not make the
    /// proxy emit a non-final or nonsensical status line).
    pub fn status_to_send(&self) -> u16 {
        if LocalReply::is_valid_status(u32::from(self.status)) {
            self.status
        } else {
            500
        }
    }

    /// The headers actually sent: names lower-cased; entries with an invalid name, a
    /// pseudo-header name, or a value containing NUL/CR/LF are dropped (they would corrupt the
    /// response or be rejected by the proxy).
    pub fn headers_to_send(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(name, value)| {
                !name.starts_with(':')
                    && validate_header_name(name).is_ok()
                    && validate_header_value(value).is_ok()
            })
            .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
            .collect()
    }
}

fn is_envoy_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_set_status_and_details() {
        let reply = LocalReply::forbidden("rbac_access_denied")
            .with_body("denied\n")
            .with_header("x-reason", "policy");
        assert_eq!(reply.status, 403);
        assert_eq!(reply.details, "rbac_access_denied");
        assert_eq!(reply.body, b"denied\n");
        assert_eq!(
            reply.headers,
            vec![("x-reason".to_string(), "policy".to_string())]
        );
        assert_eq!(LocalReply::unauthorized("x").status, 401);
        assert_eq!(LocalReply::too_many_requests("x").status, 429);
        assert_eq!(LocalReply::bad_request("x").status, 400);
        assert_eq!(LocalReply::unavailable("x").status, 503);
        let decision = Decision::deny(reply.clone());
        assert_eq!(decision.local_reply(), Some(&reply));
        assert!(!decision.is_continue());
        assert!(Decision::Continue.is_continue());
        assert_eq!(Decision::Pause.local_reply(), None);
    }

    #[test]
    fn details_whitespace_is_replaced_like_envoy() {
        let reply = LocalReply::forbidden("jwt verification\tfailed\n");
        assert_eq!(reply.sanitized_details(), "jwt_verification_failed_");
        let clean = LocalReply::forbidden("already_clean");
        assert!(matches!(
            clean.sanitized_details(),
            Cow::Borrowed("already_clean")
        ));
    }

    #[test]
    fn grpc_status_defaults_to_minus_one() {
        assert_eq!(LocalReply::forbidden("x").grpc_status_code(), -1);
        let reply = LocalReply::forbidden("x").with_grpc_status(GrpcStatusCode::PermissionDenied);
        assert_eq!(reply.grpc_status_code(), 7);
    }

    #[test]
    fn invalid_status_and_headers_are_not_sent() {
        let reply = LocalReply::new(42, "x")
            .with_header("X-Ok", "1")
            .with_header("bad name", "1")
            .with_header(":status", "200")
            .with_header("x-split", "a\r\nset-cookie: evil");
        assert_eq!(reply.status_to_send(), 500);
        assert_eq!(
            reply.headers_to_send(),
            vec![("x-ok".to_string(), "1".to_string())]
        );
        assert_eq!(LocalReply::forbidden("x").status_to_send(), 403);
    }

    #[test]
    fn valid_statuses_are_final_codes() {
        assert!(LocalReply::is_valid_status(200));
        assert!(LocalReply::is_valid_status(599));
        assert!(!LocalReply::is_valid_status(199));
        assert!(!LocalReply::is_valid_status(600));
    }
}
