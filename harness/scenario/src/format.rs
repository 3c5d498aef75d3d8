//! The scenario file format, version 1: what a file may say, as Rust types.
//!
//! These types are the one source of truth: the parser reads them (unknown fields are refused),
//! the JSON Schema for editors is generated from them (`wasmesh test --schema`), and the
//! README's format reference follows their documentation. A change that is not backward
//! compatible bumps [`FORMAT_VERSION`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{Headers, PropertyInput};
use crate::StartTime;

/// The only format version this build reads.
pub const FORMAT_VERSION: u32 = 1;

/// A scenario: one module with its configuration, then steps run in order against the same
/// plugin (its state carries from step to step, as it does in a proxy).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Format version: 1.
    pub format: u32,
    /// What the scenario shows (default: the file name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The module under test.
    pub module: Module,
    /// The plugin configuration, handed to `proxy_on_configure`: a string is sent as is, any
    /// other value as its JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// Instead of `config`: a file holding the plugin configuration (relative to the scenario).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<String>,
    /// The VM configuration, handed to `proxy_on_vm_start` (string or JSON value, as `config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_config: Option<serde_json::Value>,
    /// The root id selecting the root context inside the module.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub root_id: String,
    /// Worker threads, each with its own VM, as Envoy's `--concurrency` (default 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub workers: usize,
    /// What a request meets when the VM has failed, as Envoy's `failure_policy`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub failure_policy: FailurePolicyName,
    /// The log level the host reports to the module (`proxy_get_log_level`); lines below it are
    /// dropped, as Envoy drops them.
    #[serde(default, skip_serializing_if = "is_default")]
    pub log_level: LogLevelName,
    /// Seed of `random_get` (harness). Envoy's randomness cannot be seeded.
    #[serde(default, skip_serializing_if = "is_default")]
    pub seed: u64,
    /// Where the virtual clock starts: RFC 3339 (`2024-01-01T00:00:00Z`) or Unix seconds.
    /// Default: now. Envoy's clock is the machine's: set only in the harness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<StartTimeSchema>")]
    pub start_time: Option<StartTime>,
    /// The clusters the module may call, by name, each with its answers. A call to a cluster
    /// not listed here fails at dispatch, as in Envoy.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub clusters: BTreeMap<String, Cluster>,
    /// Response headers whose values differ from run to run by nature (they carry a request id,
    /// a time): the judges' values are compared for presence only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volatile_headers: Vec<String>,
    /// Properties of the plugin (`node.metadata`, ...), set in the harness only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<PropertyInput>,
    /// The steps, run in order.
    pub steps: Vec<Step>,
}

fn one() -> usize {
    1
}

fn is_one(value: &usize) -> bool {
    *value == 1
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// A point in time, as `start_time` accepts it.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Only its schema is used.
enum StartTimeSchema {
    /// RFC 3339, e.g. `2024-01-01T00:00:00Z`.
    Rfc3339(String),
    /// Unix seconds.
    UnixSeconds(u64),
}

/// Where the module comes from: exactly one of the two.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Module {
    /// A `.wasm` file (or `.wat` text), relative to the scenario file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A filter of the wasmesh workspace (its folder under `filters/` or `examples/`, or its
    /// package name), built for `wasm32-wasip1` on the fly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

/// Envoy's `failure_policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum FailurePolicyName {
    /// Requests get a 503 while the VM is failed.
    #[default]
    #[serde(rename = "FAIL_CLOSED")]
    FailClosed,
    /// Requests go on without the filter.
    #[serde(rename = "FAIL_OPEN")]
    FailOpen,
    /// A new VM replaces the failed one.
    #[serde(rename = "FAIL_RELOAD")]
    FailReload,
}

impl FailurePolicyName {
    /// The same policy for the harness.
    pub fn for_harness(self) -> wasmesh_harness::FailurePolicy {
        match self {
            Self::FailClosed => wasmesh_harness::FailurePolicy::FailClosed,
            Self::FailOpen => wasmesh_harness::FailurePolicy::FailOpen,
            Self::FailReload => wasmesh_harness::FailurePolicy::FailReload,
        }
    }

    /// The same policy for Envoy's bootstrap.
    pub fn for_envoy(self) -> wasmesh_envoy::FailurePolicy {
        match self {
            Self::FailClosed => wasmesh_envoy::FailurePolicy::FailClosed,
            Self::FailOpen => wasmesh_envoy::FailurePolicy::FailOpen,
            Self::FailReload => wasmesh_envoy::FailurePolicy::FailReload,
        }
    }
}

/// A log level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogLevelName {
    /// `trace`.
    Trace,
    /// `debug`.
    Debug,
    /// `info` (Envoy's default).
    #[default]
    Info,
    /// `warn`.
    Warn,
    /// `error`.
    Error,
    /// `critical`.
    Critical,
}

/// A cluster: its protocol and how it answers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// `http` (default) or `grpc` (HTTP/2, for `proxy_grpc_call`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
    /// Answers, tried in order; the first whose `path` matches answers. A call no answer matches
    /// gets a `503` (gRPC: status 14) whose body says so. No answers: nothing listens, as with
    /// `fail: refused`.
    #[serde(default)]
    pub answers: Vec<Answer>,
}

impl Cluster {
    /// Whether nothing listens behind the cluster: it has no answer, or only `fail: refused`.
    pub fn refuses_connections(&self) -> bool {
        self.answers
            .iter()
            .all(|answer| answer.fail == Some(Failure::Refused))
    }
}

/// A cluster's protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 calls (`proxy_http_call`).
    #[default]
    Http,
    /// gRPC calls (`proxy_grpc_call`).
    Grpc,
}

/// One answer of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// Answer only calls to this path: the HTTP `:path` (query included), or for gRPC
    /// `/package.Service/Method`. Omitted: every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP status (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Response headers (HTTP) or initial metadata (gRPC).
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    /// The body as text (HTTP), or the response message (gRPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body as base64, for bytes that are not text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// Response trailers (HTTP) or trailing metadata (gRPC).
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub trailers: Headers,
    /// gRPC status of the call (default 0, OK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// `grpc-message` of a failed gRPC call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_message: Option<String>,
    /// Answer this much later (milliseconds): virtual time in the harness, real time in Envoy.
    #[serde(default, skip_serializing_if = "is_default")]
    pub delay_ms: u64,
    /// Fail instead of answering, as Envoy reports each failure to the module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<Failure>,
}

/// How a call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// Nothing listens: connection refused (a whole cluster: it must be its only answer).
    Refused,
    /// The upstream closes the connection before answering (gRPC: resets the call's stream).
    Reset,
    /// The upstream never answers: the call times out when the module's timeout elapses.
    Timeout,
    /// The upstream sends its response headers, then closes the connection in the middle of the
    /// body: Envoy's async client fails the call (HTTP only).
    ResetAfterHeaders,
}

/// One step: a request, a clock advance, or concurrent requests; with what to expect after it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// What the step shows (default: `<method> <path>`, or what the step does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A request from a client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    /// What the upstream answers, if the request reaches it (default: 200, no body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamAnswer>,
    /// Properties of the request's stream (`source.address`, ...), set in the harness only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<PropertyInput>,
    /// The worker whose VM gets the request (harness; Envoy picks a worker itself).
    #[serde(default, skip_serializing_if = "is_default")]
    pub worker: usize,
    /// Send the request this many times at once, spread over the workers. The harness runs them
    /// in race mode (interleaved at shared-data hostcalls, on the `--race-seed` schedule); Envoy
    /// gets them on parallel connections. Expect `statuses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<usize>,
    /// Let this much virtual time pass (milliseconds): timers fire, ticks run. Harness only:
    /// Envoy's clock cannot jump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advance_ms: Option<u64>,
    /// A TCP connection through a network filter (`envoy.filters.network.wasm` before
    /// `tcp_proxy`): what the client does and how the upstream answers. A scenario's steps are
    /// all connections (and clock advances) or all requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,
    /// What must hold after the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,
}

/// A client's request, sent over HTTP/1.1.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Method (default `GET`).
    #[serde(default = "get", skip_serializing_if = "is_get")]
    pub method: String,
    /// Path with query (default `/`).
    #[serde(default = "slash", skip_serializing_if = "is_slash")]
    pub path: String,
    /// Host (default `example.com`).
    #[serde(default = "example_com", skip_serializing_if = "is_example_com")]
    pub authority: String,
    /// Headers, as a map or as a list of `[name, value]` pairs (repeated names, order kept).
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    /// The body as text, sent with `content-length`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body as base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// The body in chunks (chunked transfer encoding), each delivered to the module apart in the
    /// harness. Envoy may merge chunks that arrive together.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<String>,
    /// Trailers after the body (chunked transfer encoding).
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub trailers: Headers,
}

impl Default for Request {
    fn default() -> Self {
        Self {
            method: get(),
            path: slash(),
            authority: example_com(),
            headers: Headers::default(),
            body: None,
            body_base64: None,
            chunks: Vec::new(),
            trailers: Headers::default(),
        }
    }
}

fn get() -> String {
    "GET".to_string()
}
fn is_get(value: &str) -> bool {
    value == "GET"
}
fn slash() -> String {
    "/".to_string()
}
fn is_slash(value: &str) -> bool {
    value == "/"
}
fn example_com() -> String {
    "example.com".to_string()
}
fn is_example_com(value: &str) -> bool {
    value == "example.com"
}

/// What the upstream answers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAnswer {
    /// Status (default 200).
    #[serde(default = "ok", skip_serializing_if = "is_ok")]
    pub status: u16,
    /// Headers.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    /// The body as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body as base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

impl Default for UpstreamAnswer {
    fn default() -> Self {
        Self {
            status: ok(),
            headers: Headers::default(),
            body: None,
            body_base64: None,
        }
    }
}

fn ok() -> u16 {
    200
}
fn is_ok(value: &u16) -> bool {
    *value == 200
}

/// What must hold after a step. Every field is optional; what is not given is not checked.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The status the client got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Whether the stream was reset (the client got no complete response).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<bool>,
    /// Response code details of a local reply (`""` for a reply without details); `null`: the
    /// upstream answered.
    #[serde(
        default,
        deserialize_with = "null_is_a_value",
        skip_serializing_if = "Option::is_none"
    )]
    pub details: Option<Option<String>>,
    /// Response headers the client got, with these values (names in lower case).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Response headers the client must get, whatever their values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_present: Vec<String>,
    /// Response headers the client must not get.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_absent: Vec<String>,
    /// The response body, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Text the response body contains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// The request as the upstream got it; `null`: it never reached the upstream.
    #[serde(
        default,
        deserialize_with = "null_is_a_value",
        skip_serializing_if = "Option::is_none"
    )]
    pub upstream: Option<Option<UpstreamExpect>>,
    /// The calls the module made during the step, in order (exactly these many).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callouts: Option<Vec<CalloutExpect>>,
    /// Metric values after the step, by the name the module gave them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, u64>,
    /// Patterns (regular expressions), each matching a line the module logged during the step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
    /// Patterns no line logged during the step may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs_absent: Vec<String>,
    /// Shared data values after the step (text; `null`: the key is absent). Harness only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shared_data: BTreeMap<String, Option<String>>,
    /// Whether the VM of the step's worker has failed (a trap, a panic). Harness only: Envoy
    /// shows a failed VM through the statuses its failure policy gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_failed: Option<bool>,
    /// For a concurrent step: how many requests got each status (`{"200": 3, "429": 1}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub statuses: BTreeMap<u16, usize>,
    /// For a connection step: what went through it and how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionExpect>,
}

/// Reads a field whose `null` means something (`Some(None)`), unlike a missing field (`None`,
/// by `#[serde(default)]`).
fn null_is_a_value<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The request the upstream got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamExpect {
    /// Headers with these values (names in lower case; `:path`, `:method` and `:authority`
    /// included).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Headers that must not reach the upstream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_absent: Vec<String>,
    /// The body, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// A call the module made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CalloutExpect {
    /// The cluster called.
    pub cluster: String,
    /// The HTTP `:path`, or the gRPC `/package.Service/Method`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Request headers (HTTP) or initial metadata (gRPC) with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The request body (HTTP) or message (gRPC) as text, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// A TCP connection from a client through the network filter to the upstream. The client's
/// actions run in order; after each one the bytes each side sends in answer go through before
/// the next. After the last one the connection is observed (`expect.connection`), then the
/// client closes its socket (if it has not ended its side) and the connection winds down, so
/// that the step's logs and metrics include the filter's last callbacks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// What the client does, in order (none: it connects, then closes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client: Vec<ClientAction>,
    /// How the upstream answers (default: it echoes every read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<TcpUpstream>,
    /// The client's address (`source.address`, `source.port`): an IP, or `IP:port` (port 40000
    /// when none is given). Default: the harness's `127.0.0.1:40000`. The Envoy judge's client
    /// tells Envoy its address in a PROXY protocol header (Envoy's `proxy_protocol` listener
    /// filter), with the destination `127.0.0.1:10000`, the harness's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
    /// A TLS server name (SNI): the client opens with a TLS `ClientHello` naming it (fixed
    /// bytes, before its `client` actions; the upstream reads them like any others), from which
    /// Envoy's `tls_inspector` sets `connection.requested_server_name`; the harness sets that
    /// property and sends the same bytes. Envoy does not terminate the TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

/// One action of a client: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientAction {
    /// Sends these bytes (text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// Sends these bytes (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_base64: Option<String>,
    /// `true`: ends the client's side (a half-close, `shutdown(SHUT_WR)`); it keeps reading.
    #[serde(default, skip_serializing_if = "is_default")]
    pub end: bool,
}

/// How the upstream answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpUpstream {
    /// The answer to each read, in order: the first answers the first bytes the upstream
    /// receives, and so on; once they run out it answers nothing more. Omitted: it echoes each
    /// read. Whatever it does, it ends its side when it reads the client's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replies: Option<Vec<TcpReply>>,
}

/// What the upstream does when bytes arrive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpReply {
    /// Sends these bytes (text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// Sends these bytes (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_base64: Option<String>,
    /// `true`: then ends its side (a half-close from the upstream).
    #[serde(default, skip_serializing_if = "is_default")]
    pub end: bool,
}

/// Who closed a connection, as the filter is told (`proxy_on_downstream_connection_close`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    /// Still open when the client's actions are done.
    Open,
    /// The client's end came last (Envoy's `RemoteClose`).
    Client,
    /// Envoy closed it (`LocalClose`): the filter asked to (`proxy_close_stream`), or the
    /// upstream's end came last.
    Proxy,
}

/// What must hold of a connection once the client's actions are done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionExpect {
    /// Whether the upstream got a connection at all (a filter that stops at
    /// `proxy_on_new_connection` keeps it from connecting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_connected: Option<bool>,
    /// Every byte the upstream received (text), exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_received: Option<String>,
    /// The same, as base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_received_base64: Option<String>,
    /// Every byte the client received (text), exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_received: Option<String>,
    /// The same, as base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_received_base64: Option<String>,
    /// Whether the client read the end of the connection (the upstream's end reached it, or
    /// Envoy closed the connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_got_end: Option<bool>,
    /// Whether the connection is closed, and who closed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<ClosedBy>,
}
