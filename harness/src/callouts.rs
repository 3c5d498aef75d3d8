//! HTTP and gRPC callouts: what the module dispatched, and how a test answers.

use std::time::Duration;

use crate::shared::SharedState;

/// An HTTP callout dispatched with `proxy_http_call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCallout {
    /// The token the module got back (unique per VM: 4, 8, 12, ... as in Envoy).
    pub token: u32,
    /// The cluster the call goes to.
    pub upstream: String,
    /// Request headers as Envoy sends them (keys lower-cased; `content-length` set when there is
    /// a body; then `x-envoy-internal: true`, and `x-envoy-expected-rq-timeout-ms` when there is
    /// a timeout, which Envoy's async client and router add).
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
///
/// `Refused`, `Reset` and `TimedOut` are the failures Envoy's router turns into a local reply
/// of the async client; the harness builds that reply when it delivers the answer, from the
/// callout's own request headers, as Envoy does (measured with Envoy 1.40,
/// `tests/callouts_vs_envoy.rs`): a plain `503`/`504` with a `text/plain` body, or, when the
/// callout's `content-type` is `application/grpc` (or `application/grpc+...`), a gRPC
/// trailers-only answer (`:status 200`, `content-type: application/grpc`, `grpc-status: 14`,
/// `grpc-message: <the body text>`, no body, no trailers); for a `HEAD` callout, the headers
/// without the body. Either way it arrives through `proxy_on_http_call_response` as a
/// response, with `proxy_get_status` `Ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutReply {
    /// The upstream answered (the headers should include `:status`). As in Envoy, the module
    /// also sees `x-envoy-upstream-service-time`: the virtual milliseconds between dispatch and
    /// delivery (replacing any value given here).
    Response {
        /// Response headers.
        headers: Vec<(String, String)>,
        /// Response body.
        body: Vec<u8>,
        /// Response trailers.
        trailers: Vec<(String, String)>,
    },
    /// The async client's failure (Envoy's `onFailure`, which Envoy calls when the request is
    /// reset after the response headers arrived: the upstream closed the connection in the
    /// middle of the body, or the response outgrew the async client's buffer): the module gets
    /// `proxy_on_http_call_response` with zero headers, body and trailers, and
    /// `proxy_get_status` returns `BrokenConnection` with message `reset`. A failure before
    /// response headers is [`CalloutReply::Refused`] or [`CalloutReply::Reset`].
    Failure,
    /// Leave the callout pending; it times out when the virtual clock passes its timeout (then
    /// answered as [`CalloutReply::TimedOut`]), or never without one.
    Timeout,
    /// Nothing accepted the connection (a closed port): Envoy's router answers `503` with body
    /// `upstream connect error or disconnect/reset before headers. reset reason: remote
    /// connection failure` (gRPC-shaped for a gRPC callout, see above).
    Refused,
    /// The upstream accepted the connection and closed it before response headers: `503` with
    /// body `upstream connect error or disconnect/reset before headers. reset reason:
    /// connection termination` (gRPC-shaped for a gRPC callout).
    Reset,
    /// The callout's timeout fires now: `504` with body `upstream request timeout` (gRPC-shaped
    /// for a gRPC callout). What a pending callout gets when the clock passes its timeout.
    TimedOut,
}

/// Body of the router's local reply when the connection is refused.
pub(crate) const REFUSED_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
/// Body of the router's local reply when the upstream closes before response headers.
pub(crate) const RESET_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection termination";
/// Body of the router's local reply when the upstream resets the stream before response headers.
pub(crate) const STREAM_RESET_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: remote reset";
/// Body of the router's local reply when the callout times out.
pub(crate) const TIMEOUT_BODY: &str = "upstream request timeout";

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

    /// What Envoy answers when the upstream cannot be reached: [`CalloutReply::Refused`] (a
    /// `503`, or its gRPC form for a gRPC callout, built at delivery).
    pub fn upstream_unavailable() -> CalloutReply {
        CalloutReply::Refused
    }

    /// What the module receives when its timeout expires: [`CalloutReply::TimedOut`] (a `504
    /// upstream request timeout`, or its gRPC form for a gRPC callout, built at delivery).
    pub fn timeout_response() -> CalloutReply {
        CalloutReply::TimedOut
    }

    /// The answer as the module receives it from Envoy for `callout`, dispatched `service_time`
    /// ago: router failures become the router's local reply (shaped by the callout's request
    /// headers), and an upstream's response gains `x-envoy-upstream-service-time`.
    pub(crate) fn into_delivered(
        self,
        callout: &HttpCallout,
        service_time: Duration,
    ) -> CalloutReply {
        match self {
            CalloutReply::Refused => router_local_reply(callout, 503, REFUSED_BODY),
            CalloutReply::Reset => router_local_reply(callout, 503, RESET_BODY),
            CalloutReply::TimedOut => router_local_reply(callout, 504, TIMEOUT_BODY),
            CalloutReply::Response {
                mut headers,
                body,
                trailers,
            } => {
                let millis = service_time.as_millis().to_string();
                match headers
                    .iter_mut()
                    .find(|(k, _)| k.eq_ignore_ascii_case("x-envoy-upstream-service-time"))
                {
                    Some((_, value)) => *value = millis,
                    None => headers.push(("x-envoy-upstream-service-time".to_string(), millis)),
                }
                CalloutReply::Response {
                    headers,
                    body,
                    trailers,
                }
            }
            other @ (CalloutReply::Failure | CalloutReply::Timeout) => other,
        }
    }
}

/// The answer to the HTTP callout `token` of `worker` as the module receives it (see
/// [`CalloutReply::into_delivered`]), timed by the virtual clock.
pub(crate) fn as_delivered(
    shared: &SharedState,
    worker: usize,
    token: u32,
    reply: CalloutReply,
) -> CalloutReply {
    let record = shared
        .http_callouts
        .iter()
        .rev()
        .find(|r| r.callout.worker == worker && r.callout.token == token);
    match record {
        Some(record) => {
            let service_time = shared.clock.elapsed().saturating_sub(record.dispatched_at);
            reply.into_delivered(&record.callout, service_time)
        }
        None => reply,
    }
}

/// Envoy's `Grpc::Common::isGrpcRequestHeaders`: a `:path` and a `content-type` that is
/// `application/grpc` exactly or starts with `application/grpc+` (not `application/grpc-web`).
fn is_grpc_request(callout: &HttpCallout) -> bool {
    const GRPC: &str = "application/grpc";
    callout.header(":path").is_some()
        && callout.header("content-type").is_some_and(|value| {
            value
                .strip_prefix(GRPC)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('+'))
        })
}

/// The local reply Envoy's router gives the async client (`Utility::sendLocalReply`): for a
/// gRPC request a trailers-only answer (HTTP status mapped to gRPC `UNAVAILABLE`, 14, for the
/// 503 and 504 the router sends), otherwise the status with a `text/plain` body, which a `HEAD`
/// request gets without the body.
fn router_local_reply(callout: &HttpCallout, status: u16, body: &str) -> CalloutReply {
    let header = |k: &str, v: &str| (k.to_string(), v.to_string());
    if is_grpc_request(callout) {
        return CalloutReply::Response {
            headers: vec![
                header(":status", "200"),
                header("content-type", "application/grpc"),
                header("grpc-status", "14"),
                header("grpc-message", body),
            ],
            body: Vec::new(),
            trailers: Vec::new(),
        };
    }
    let head = callout.header(":method") == Some("HEAD");
    CalloutReply::Response {
        headers: vec![
            header(":status", &status.to_string()),
            header("content-length", &body.len().to_string()),
            header("content-type", "text/plain"),
        ],
        body: if head {
            Vec::new()
        } else {
            body.as_bytes().to_vec()
        },
        trailers: Vec::new(),
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
    /// The service failed the call: the module gets `proxy_on_grpc_close` with this status;
    /// `proxy_get_status` returns the message with Envoy's `{via_upstream}` appended (the
    /// message `via_upstream` alone when this one is empty).
    Error {
        /// gRPC status code.
        status: u32,
        /// gRPC status message.
        message: String,
    },
    /// Leave the call pending until its timeout (then answered as [`GrpcReply::TimedOut`]).
    Timeout,
    /// Nothing accepted the connection: `proxy_on_grpc_close` with status 14 (`UNAVAILABLE`) and
    /// Envoy 1.40's message `upstream connect error or disconnect/reset before headers. reset
    /// reason: remote connection failure{upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}}`
    /// (the router's text, then its response code details in braces).
    Refused,
    /// The upstream accepted the connection and closed it before answering: status 14, message
    /// `upstream connect error or disconnect/reset before headers. reset reason: connection
    /// termination{upstream_reset_before_response_started{connection_termination}}`.
    Reset,
    /// The upstream reset the call's HTTP/2 stream (`RST_STREAM`) before answering: status 14,
    /// message `upstream connect error or disconnect/reset before headers. reset reason: remote
    /// reset{upstream_reset_before_response_started{remote_reset}}` (measured with Envoy 1.40,
    /// `harness/scenario/tests/envoy_judge.rs`).
    StreamReset,
    /// The call's timeout fires now: status 14, message `upstream request
    /// timeout{response_timeout}`. What a pending call gets when the clock passes its timeout.
    TimedOut,
}

impl GrpcReply {
    /// The answer as the module receives it: router failures become the status 14 and message
    /// Envoy 1.40 delivers (measured in `tests/callouts_vs_envoy.rs`).
    pub(crate) fn into_delivered(self) -> GrpcReply {
        let unavailable = |text: &str, details: &str| GrpcReply::Error {
            status: 14,
            message: format!("{text}{{{details}}}"),
        };
        match self {
            GrpcReply::Refused => unavailable(
                REFUSED_BODY,
                "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
            ),
            GrpcReply::Reset => unavailable(
                RESET_BODY,
                "upstream_reset_before_response_started{connection_termination}",
            ),
            GrpcReply::StreamReset => unavailable(
                STREAM_RESET_BODY,
                "upstream_reset_before_response_started{remote_reset}",
            ),
            GrpcReply::TimedOut => unavailable(TIMEOUT_BODY, "response_timeout"),
            // The service's own failure: Envoy 1.40's async client adds the stream's response
            // code details, `via_upstream` (`enhancedGrpcMessage`: the details alone for an
            // empty message, else `<message>{via_upstream}`).
            GrpcReply::Error { status, message } if message.is_empty() => GrpcReply::Error {
                status,
                message: "via_upstream".to_string(),
            },
            GrpcReply::Error { status, message } => GrpcReply::Error {
                status,
                message: format!("{message}{{via_upstream}}"),
            },
            other => other,
        }
    }
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
    /// Elapsed virtual time at which it was dispatched.
    pub(crate) dispatched_at: Duration,
    pub(crate) generation: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct GrpcCalloutRecord {
    pub(crate) callout: GrpcCallout,
    pub(crate) status: CalloutStatus,
    pub(crate) deadline: Option<Duration>,
    pub(crate) generation: u64,
}
