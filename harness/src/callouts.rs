//! HTTP and gRPC callouts: what the module dispatched, and how a test answers.

use std::time::Duration;

/// An HTTP callout dispatched with `proxy_http_call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCallout {
    /// The token the module got back (unique per VM: 4, 8, 12, ... as in Envoy).
    pub token: u32,
    /// The cluster the call goes to.
    pub upstream: String,
    /// Request headers as Envoy sends them (keys lower-cased; `content-length` set when there is
    /// a body).
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: Vec<(String, String)>,
    /// Timeout; zero means none (Envoy passes no timeout to the async client).
    pub timeout: Duration,
    /// The worker (VM) that dispatched it.
    pub worker: usize,
    /// The context that made the call (the stream's context when called from a stream callback).
    /// Envoy delivers the response to the root context, as it does.
    pub context_id: u32,
}

impl HttpCallout {
    /// The value of a request header of the callout.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How a callout is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutReply {
    /// The upstream answered (the headers should include `:status`).
    Response {
        /// Response headers.
        headers: Vec<(String, String)>,
        /// Response body.
        body: Vec<u8>,
        /// Response trailers.
        trailers: Vec<(String, String)>,
    },
    /// The request was reset (Envoy's `onHttpCallFailure`): the module gets
    /// `proxy_on_http_call_response` with zero headers, body and trailers, and
    /// `proxy_get_status` returns `BrokenConnection` with message `reset`.
    Failure,
    /// Leave the callout pending; it times out when the virtual clock passes its timeout.
    Timeout,
}

impl CalloutReply {
    /// A response with `:status` and a body (adds `content-length` when the body is not empty).
    pub fn ok(status: u16, body: impl Into<Vec<u8>>) -> CalloutReply {
        let body = body.into();
        let mut headers = vec![(":status".to_string(), status.to_string())];
        if !body.is_empty() {
            headers.push(("content-length".to_string(), body.len().to_string()));
        }
        CalloutReply::Response {
            headers,
            body,
            trailers: Vec::new(),
        }
    }

    /// A response with explicit headers (`:status` is added first if missing).
    pub fn with_headers(
        status: u16,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> CalloutReply {
        let mut all = Vec::new();
        if !headers.iter().any(|(k, _)| *k == ":status") {
            all.push((":status".to_string(), status.to_string()));
        }
        all.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        CalloutReply::Response {
            headers: all,
            body: body.into(),
            trailers: Vec::new(),
        }
    }

    /// What Envoy's router answers when the upstream cannot be reached: a local 503 delivered as
    /// a successful response.
    pub fn upstream_unavailable() -> CalloutReply {
        let body = "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
        CalloutReply::Response {
            headers: vec![
                (":status".to_string(), "503".to_string()),
                ("content-length".to_string(), body.len().to_string()),
                ("content-type".to_string(), "text/plain".to_string()),
            ],
            body: body.as_bytes().to_vec(),
            trailers: Vec::new(),
        }
    }

    /// What the module receives when its timeout expires: Envoy's router answers the async
    /// request with a local `504 upstream request timeout`, delivered as a response.
    pub fn timeout_response() -> CalloutReply {
        let body = "upstream request timeout";
        CalloutReply::Response {
            headers: vec![
                (":status".to_string(), "504".to_string()),
                ("content-length".to_string(), body.len().to_string()),
                ("content-type".to_string(), "text/plain".to_string()),
            ],
            body: body.as_bytes().to_vec(),
            trailers: Vec::new(),
        }
    }
}

/// A gRPC call (`proxy_grpc_call`) or stream (`proxy_grpc_stream`) opened by the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCallout {
    /// Token (calls: 5, 9, ...; streams: 6, 10, ... per VM, as in Envoy).
    pub token: u32,
    /// Whether this is a stream (`proxy_grpc_stream`) rather than a unary call.
    pub is_stream: bool,
    /// The cluster (the raw service bytes when they are a cluster name, or the `cluster_name` of
    /// a serialized `envoy.config.core.v3.GrpcService` with `envoy_grpc`).
    pub cluster: String,
    /// gRPC service, e.g. `envoy.service.auth.v3.Authorization`.
    pub service: String,
    /// gRPC method, e.g. `Check`.
    pub method: String,
    /// Initial metadata sent with the call.
    pub initial_metadata: Vec<(String, String)>,
    /// Request messages: the unary request, or every `proxy_grpc_send` of a stream.
    pub messages: Vec<Vec<u8>>,
    /// A stream's sender half-closed it (`end_stream` on `proxy_grpc_send`, or `proxy_grpc_close`).
    pub local_closed: bool,
    /// Timeout of a unary call; zero means none.
    pub timeout: Duration,
    /// The worker (VM) that opened it.
    pub worker: usize,
    /// The context that opened it.
    pub context_id: u32,
}

/// How a unary gRPC call is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcReply {
    /// Success: the module gets `proxy_on_grpc_receive` with the message (Envoy does not
    /// deliver metadata of unary calls).
    Response(Vec<u8>),
    /// Failure: the module gets `proxy_on_grpc_close` with this status; `proxy_get_status`
    /// returns the message.
    Error {
        /// gRPC status code.
        status: u32,
        /// gRPC status message.
        message: String,
    },
    /// Leave the call pending until its timeout (delivered as status 14 `upstream request
    /// timeout`, Envoy's mapping of the router's 504 for gRPC).
    Timeout,
}

/// Where a callout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CalloutStatus {
    Pending,
    Done,
}

#[derive(Debug, Clone)]
pub(crate) struct HttpCalloutRecord {
    pub(crate) callout: HttpCallout,
    pub(crate) status: CalloutStatus,
    /// Elapsed virtual time at which it times out.
    pub(crate) deadline: Option<Duration>,
    pub(crate) generation: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct GrpcCalloutRecord {
    pub(crate) callout: GrpcCallout,
    pub(crate) status: CalloutStatus,
    pub(crate) deadline: Option<Duration>,
    pub(crate) generation: u64,
}
