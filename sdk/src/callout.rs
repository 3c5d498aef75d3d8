//! HTTP and gRPC callouts to other clusters.
//!
//! Logic dispatches a callout through [`Callouts`], keeps the returned token in its per-stream
//! state and returns [`crate::decision::Decision::Pause`]. When the host answers, the adapter
//! routes the [`CalloutResponse`] back to the stream that dispatched it (proxy-wasm maps the
//! token to the dispatching context) and calls the filter's callout hook.
//!
//! A failed HTTP callout mostly arrives as a response Envoy's router made (measured with Envoy
//! 1.40): a refused connection or an upstream that closed before answering as a `503`, a
//! timeout as a `504` (for a callout with `content-type: application/grpc`, a `200` with
//! `grpc-status: 14`); only a reset after the response headers arrives as a response without
//! headers (zero headers, body and trailers). A failed gRPC call arrives with a non-zero status.

use std::time::Duration;

use crate::error::Error;
use crate::request::{joined_value, Header};

/// An HTTP request to another cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCallout {
    /// Envoy cluster name.
    pub cluster: String,
    /// Request headers; `:method`, `:path` and `:authority` are required by Envoy.
    pub headers: Vec<Header>,
    /// Request body (empty for none).
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: Vec<Header>,
    /// Timeout (whole milliseconds, at least 1ms).
    pub timeout: Duration,
}

impl HttpCallout {
    /// A request with `:method`, `:path`, `:authority` set.
    pub fn new(
        cluster: &str,
        method: &str,
        authority: &str,
        path: &str,
        timeout: Duration,
    ) -> Self {
        HttpCallout {
            cluster: cluster.to_string(),
            headers: vec![
                (":method".to_string(), method.to_string()),
                (":path".to_string(), path.to_string()),
                (":authority".to_string(), authority.to_string()),
            ],
            body: Vec::new(),
            trailers: Vec::new(),
            timeout,
        }
    }

    /// `GET path` on `cluster`.
    pub fn get(cluster: &str, authority: &str, path: &str, timeout: Duration) -> Self {
        HttpCallout::new(cluster, "GET", authority, path, timeout)
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Checks what Envoy would refuse with `BadArgument`, before dispatching.
    pub fn validate(&self) -> Result<(), Error> {
        if self.cluster.is_empty() {
            return Err(Error::InvalidArgument("callout cluster is empty".into()));
        }
        for required in [":method", ":path", ":authority"] {
            if joined_value(&self.headers, required).is_none_or(|value| value.is_empty()) {
                return Err(Error::InvalidArgument(format!(
                    "HTTP callout to {} lacks the {required} header",
                    self.cluster
                )));
            }
        }
        timeout_millis(self.timeout).map(|_| ())
    }
}

/// A unary gRPC call to another cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCallout {
    /// Envoy cluster name (or a serialized `GrpcService`, as Envoy accepts both).
    pub cluster: String,
    /// Fully qualified service, e.g. `envoy.service.auth.v3.Authorization`.
    pub service: String,
    /// Method, e.g. `Check`.
    pub method: String,
    /// Initial metadata.
    pub initial_metadata: Vec<(String, Vec<u8>)>,
    /// Serialized request message.
    pub message: Vec<u8>,
    /// Timeout (whole milliseconds, at least 1ms).
    pub timeout: Duration,
}

impl GrpcCallout {
    /// Checks arguments before dispatching.
    pub fn validate(&self) -> Result<(), Error> {
        if self.cluster.is_empty() || self.service.is_empty() || self.method.is_empty() {
            return Err(Error::InvalidArgument(
                "gRPC callout needs a cluster, a service and a method".into(),
            ));
        }
        timeout_millis(self.timeout).map(|_| ())
    }
}

/// The timeout as the ABI carries it: `u32` milliseconds, non-zero.
pub fn timeout_millis(timeout: Duration) -> Result<u32, Error> {
    let millis = u32::try_from(timeout.as_millis())
        .map_err(|_| Error::InvalidArgument(format!("callout timeout {timeout:?} is too long")))?;
    if millis == 0 {
        return Err(Error::InvalidArgument(format!(
            "callout timeout {timeout:?} is shorter than 1ms"
        )));
    }
    Ok(millis)
}

/// Dispatching callouts.
pub trait Callouts {
    /// Sends an HTTP request; returns the token its response will carry.
    fn dispatch_http(&mut self, callout: &HttpCallout) -> Result<u32, Error>;
    /// Sends a unary gRPC request; returns the token its response will carry.
    fn dispatch_grpc(&mut self, callout: &GrpcCallout) -> Result<u32, Error>;
}

/// The answer to an HTTP callout.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpCalloutResponse {
    /// Token returned by [`Callouts::dispatch_http`].
    pub token: u32,
    /// Response headers including `:status`; empty when the callout failed.
    pub headers: Vec<Header>,
    /// Response body.
    pub body: Vec<u8>,
    /// Response trailers.
    pub trailers: Vec<Header>,
}

impl HttpCalloutResponse {
    /// The `:status`, `None` for a failed callout (reset, no healthy upstream, ...).
    pub fn status(&self) -> Option<u16> {
        joined_value(&self.headers, ":status")?.parse().ok()
    }

    /// A response header (values joined with `","`).
    pub fn header(&self, name: &str) -> Option<String> {
        joined_value(&self.headers, name).map(|value| value.into_owned())
    }

    /// True when the callout produced no response at all.
    pub fn is_failure(&self) -> bool {
        self.headers.is_empty()
    }
}

/// The answer to a gRPC callout.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrpcCalloutResponse {
    /// Token returned by [`Callouts::dispatch_grpc`].
    pub token: u32,
    /// gRPC status code (0 = OK).
    pub status: u32,
    /// gRPC status message, if any.
    pub message: Option<String>,
    /// Serialized response message (empty on failure).
    pub body: Vec<u8>,
}

/// A callout answer routed back to the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutResponse {
    /// HTTP.
    Http(HttpCalloutResponse),
    /// gRPC.
    Grpc(GrpcCalloutResponse),
}

impl CalloutResponse {
    /// The token of the callout this answers.
    pub fn token(&self) -> u32 {
        match self {
            CalloutResponse::Http(response) => response.token,
            CalloutResponse::Grpc(response) => response.token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_callout_requires_envoy_pseudo_headers_and_a_sane_timeout() {
        let ok = HttpCallout::get("jwks", "issuer.example", "/keys", Duration::from_secs(1))
            .with_header("Accept", "application/json");
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(
            ok.headers.last(),
            Some(&("accept".to_string(), "application/json".to_string()))
        );
        let mut missing = ok.clone();
        missing.headers.retain(|(name, _)| name != ":authority");
        assert!(
            matches!(missing.validate(), Err(Error::InvalidArgument(m)) if m.contains(":authority"))
        );
        let zero = HttpCallout::get("jwks", "a", "/", Duration::from_micros(10));
        assert!(zero.validate().is_err());
        let huge = HttpCallout::get("jwks", "a", "/", Duration::from_secs(u64::from(u32::MAX)));
        assert!(huge.validate().is_err());
        assert_eq!(timeout_millis(Duration::from_millis(1500)), Ok(1500));
    }

    #[test]
    fn grpc_callout_validation() {
        let call = GrpcCallout {
            cluster: "authz".into(),
            service: "envoy.service.auth.v3.Authorization".into(),
            method: "Check".into(),
            initial_metadata: vec![],
            message: vec![],
            timeout: Duration::from_millis(200),
        };
        assert_eq!(call.validate(), Ok(()));
        let mut no_method = call.clone();
        no_method.method.clear();
        assert!(no_method.validate().is_err());
    }

    #[test]
    fn responses_expose_status_and_failure() {
        let ok = HttpCalloutResponse {
            token: 3,
            headers: vec![
                (":status".into(), "200".into()),
                ("content-type".into(), "application/json".into()),
            ],
            body: b"{}".to_vec(),
            trailers: vec![],
        };
        assert_eq!(ok.status(), Some(200));
        assert_eq!(
            ok.header("Content-Type").as_deref(),
            Some("application/json")
        );
        assert!(!ok.is_failure());
        let failed = HttpCalloutResponse {
            token: 4,
            ..HttpCalloutResponse::default()
        };
        assert_eq!(failed.status(), None);
        assert!(failed.is_failure());
        assert_eq!(CalloutResponse::Http(failed).token(), 4);
        assert_eq!(
            CalloutResponse::Grpc(GrpcCalloutResponse {
                token: 9,
                ..GrpcCalloutResponse::default()
            })
            .token(),
            9
        );
    }
}
