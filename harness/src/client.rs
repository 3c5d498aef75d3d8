//! Requests and responses as Envoy's HTTP/1 codec and connection manager (with their default
//! settings) present them to the first filter, measured against Envoy 1.40
//! (`harness/tests/stream_vs_envoy.rs`):
//!
//! - request headers: `:authority` (from `host`), `:path`, `:method`, `:scheme` (`http`, or the
//!   client's `x-forwarded-proto` when it is `http` or `https`), then the
//!   client's headers in order without the hop-by-hop ones (`connection`, `keep-alive`,
//!   `proxy-connection`, `transfer-encoding`), `content-length` for a body sent with one, then
//!   `x-forwarded-proto: http` and a generated `x-request-id` (UUID v4) unless the client sent
//!   them;
//! - a body arrives as one chunk without end of stream, then an empty chunk that ends it (the
//!   codec ends the message separately); a chunked body the same way when it arrives in one
//!   read, as a small one does;
//! - response headers: `:status`, the upstream's headers without hop-by-hop ones,
//!   `content-length` for a body, then the router's `x-envoy-upstream-service-time`.
//!
//! [`crate::HttpStream::request_headers`] and its siblings deliver exactly what they are given;
//! [`crate::HttpStream::send_request`] and [`crate::HttpStream::upstream_response`] deliver this.

/// Headers the HTTP/1 codec consumes and the filter never sees.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
];

/// How a body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    ContentLength,
    Chunked,
}

/// A request as a client sends it to Envoy over HTTP/1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    method: String,
    path: String,
    authority: String,
    headers: Vec<(String, String)>,
    body: Option<(Vec<u8>, Framing)>,
}

impl ClientRequest {
    /// A request without a body, for host `localhost`.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        ClientRequest {
            method: method.into(),
            path: path.into(),
            authority: "localhost".to_string(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// A `GET`.
    pub fn get(path: impl Into<String>) -> Self {
        Self::new("GET", path)
    }

    /// A `POST` with a body sent with `content-length`.
    pub fn post(path: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", path).body(body)
    }

    /// The `host` header (default `localhost`).
    pub fn authority(mut self, authority: impl Into<String>) -> Self {
        self.authority = authority.into();
        self
    }

    /// Adds a header (a `host` header sets [`Self::authority`]).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into().to_ascii_lowercase();
        let value = value.into();
        if name == "host" {
            self.authority = value;
        } else {
            self.headers.push((name, value));
        }
        self
    }

    /// A body sent with `content-length`.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some((body.into(), Framing::ContentLength));
        self
    }

    /// A body sent with `transfer-encoding: chunked`.
    pub fn chunked_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some((body.into(), Framing::Chunked));
        self
    }

    /// The body, if any.
    pub fn body_bytes(&self) -> Option<&[u8]> {
        self.body.as_ref().map(|(body, _)| body.as_slice())
    }

    /// The request headers the first filter sees; `request_id` is used unless the client sent
    /// an `x-request-id`.
    pub fn presented_headers(&self, request_id: &str) -> Vec<(String, String)> {
        // The connection manager takes the scheme from a valid `x-forwarded-proto`.
        let scheme = self
            .headers
            .iter()
            .find(|(name, _)| name == "x-forwarded-proto")
            .map(|(_, value)| value.as_str())
            .filter(|value| *value == "http" || *value == "https")
            .unwrap_or("http");
        let mut headers = vec![
            (":authority".to_string(), self.authority.clone()),
            (":path".to_string(), self.path.clone()),
            (":method".to_string(), self.method.clone()),
            (":scheme".to_string(), scheme.to_string()),
        ];
        headers.extend(
            self.headers
                .iter()
                .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
                .cloned(),
        );
        if let Some((body, Framing::ContentLength)) = &self.body {
            if !has(&headers, "content-length") {
                headers.push(("content-length".to_string(), body.len().to_string()));
            }
        }
        if !has(&headers, "x-forwarded-proto") {
            headers.push(("x-forwarded-proto".to_string(), "http".to_string()));
        }
        if !has(&headers, "x-request-id") {
            headers.push(("x-request-id".to_string(), request_id.to_string()));
        }
        headers
    }
}

/// A response as an upstream sends it to Envoy over HTTP/1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl UpstreamResponse {
    /// A response with `status` and no body.
    pub fn new(status: u16) -> Self {
        UpstreamResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .push((name.into().to_ascii_lowercase(), value.into()));
        self
    }

    /// The body (sent with `content-length`).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The body.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    /// The response headers the filter sees; `service_time_ms` is the router's
    /// `x-envoy-upstream-service-time`.
    pub fn presented_headers(&self, service_time_ms: u64) -> Vec<(String, String)> {
        let mut headers = vec![(":status".to_string(), self.status.to_string())];
        headers.extend(
            self.headers
                .iter()
                .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
                .cloned(),
        );
        if !has(&headers, "content-length") {
            headers.push(("content-length".to_string(), self.body.len().to_string()));
        }
        headers.push((
            "x-envoy-upstream-service-time".to_string(),
            service_time_ms.to_string(),
        ));
        headers
    }
}

fn has(headers: &[(String, String)], name: &str) -> bool {
    headers.iter().any(|(key, _)| key == name)
}

/// A version 4 UUID in Envoy's textual form, from 16 random bytes.
pub(crate) fn uuid_v4(mut bytes: [u8; 16]) -> String {
    if let Some(version) = bytes.get_mut(6) {
        *version = (*version & 0x0f) | 0x40;
    }
    if let Some(variant) = bytes.get_mut(8) {
        *variant = (*variant & 0x3f) | 0x80;
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let part = |from: usize, to: usize| hex.get(from..to).unwrap_or_default().to_string();
    format!(
        "{}-{}-{}-{}-{}",
        part(0, 8),
        part(8, 12),
        part(12, 16),
        part(16, 20),
        part(20, 32)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_presented_with_the_connection_managers_additions() {
        let request = ClientRequest::post("/p", "hello")
            .header("Connection", "close")
            .header("x-a", "1");
        assert_eq!(
            request.presented_headers("id"),
            [
                (":authority", "localhost"),
                (":path", "/p"),
                (":method", "POST"),
                (":scheme", "http"),
                ("x-a", "1"),
                ("content-length", "5"),
                ("x-forwarded-proto", "http"),
                ("x-request-id", "id"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let own_id = ClientRequest::get("/").header("x-request-id", "mine");
        assert!(own_id
            .presented_headers("generated")
            .contains(&("x-request-id".to_string(), "mine".to_string())));
        assert!(!ClientRequest::get("/")
            .chunked_body("abc")
            .presented_headers("id")
            .iter()
            .any(|(k, _)| k == "content-length"));
    }

    #[test]
    fn request_ids_are_version_4_uuids() {
        let id = uuid_v4([0xff; 16]);
        assert_eq!(id, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }
}
