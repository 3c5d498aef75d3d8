//! What a judge saw during one step, in the same shape for the harness and for Envoy, so that
//! expectations are checked by one function and the two judges can be compared field by field.

use std::collections::BTreeMap;

/// What one step produced under one judge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepObservation {
    /// The judge could not run the step at all (a clock jump in Envoy): why.
    pub not_run: Option<String>,
    /// The response the client got (request steps).
    pub response: Option<Response>,
    /// The request as the upstream got it (`None`: it never reached the upstream).
    pub upstream: Option<UpstreamRequest>,
    /// The calls the module made during the step, in order.
    pub callouts: Vec<Callout>,
    /// Metric values after the step: every metric for the harness, the expected ones for Envoy.
    pub metrics: BTreeMap<String, u64>,
    /// Lines the module logged during the step (`None`: not observable).
    pub logs: Option<Vec<String>>,
    /// Shared data values of the expected keys (`None`: not observable).
    pub shared_data: Option<BTreeMap<String, Option<String>>>,
    /// Whether the step's VM has failed (`None`: not observable).
    pub vm_failed: Option<bool>,
    /// Statuses of a concurrent step's requests, sorted (0 for a reset stream).
    pub statuses: Vec<u16>,
    /// What a connection step's connection carried and how it ended.
    pub connection: Option<ConnectionSeen>,
}

/// A TCP connection once the client's actions are done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionSeen {
    /// The upstream got a connection.
    pub upstream_connected: bool,
    /// Every byte the upstream received.
    pub upstream_received: Vec<u8>,
    /// Every byte the client received.
    pub client_received: Vec<u8>,
    /// The client read the connection's end.
    pub client_got_end: bool,
    /// Whether and how it closed (`None`: the judge cannot tell).
    pub closed: Option<crate::format::ClosedBy>,
}

/// A response as the client got it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// Status (0 when the stream was reset before response headers).
    pub status: u16,
    /// The stream was reset: no complete response arrived.
    pub reset: bool,
    /// Response code details of a local reply (`None`: the upstream answered).
    pub details: Option<String>,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// A request as the upstream got it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// Headers, names lower-cased (`:method`, `:path`, `:authority` included).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// A call the module made, as the called service saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Callout {
    /// The cluster.
    pub cluster: String,
    /// HTTP `:path`, or gRPC `/package.Service/Method`.
    pub path: String,
    /// Request headers or initial metadata, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body or message.
    pub body: Vec<u8>,
}

/// The first value of a header, by lower-case name.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}
