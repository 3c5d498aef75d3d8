//! wasmesh harness: a wasmtime host that emulates the proxy-wasm ABI (0.2.1, and 0.2.0) as
//! Envoy implements it, so filters can be tested, debugged and benchmarked off-proxy.
//!
//! The harness is strict and follows Envoy where Envoy and the specification disagree (each
//! such place says so in a comment): header maps are only reachable while Envoy holds them,
//! local replies and `continue_stream` take effect after the callback returns, `StopIteration`
//! from headers stops everything, HTTP callout answers go to the root context, streams end with
//! `proxy_on_log` then `proxy_on_done` and `proxy_on_delete`, and a crashed VM answers 503
//! (`FAIL_CLOSED`), passes traffic through (`FAIL_OPEN`) or is recreated (`FAIL_RELOAD`).
//!
//! Time is virtual ([`Plugin::advance_clock`]): the clock starts at the wall-clock time the
//! plugin starts, so real tokens and certificates are judged as a proxy would judge them today,
//! and only moves when the test advances it. Tests whose expectations depend on the date pin the
//! start with [`PluginBuilder::start_time`] (conventionally [`pinned_start`], 2024-01-01, i.e.
//! [`START_UNIX_SECONDS`]). Randomness is seeded; every guest pointer is
//! bounds-checked; memory is capped and runaway code is stopped by fuel, each reported as a typed
//! [`HarnessError`] with a demangled wasm backtrace.
//!
//! # Envoy behaviours worth knowing (all reproduced)
//!
//! - Request headers, body and trailers are only reachable while Envoy holds them: once
//!   `proxy_on_request_headers` returns `Continue` (or the filter calls `proxy_continue_stream`),
//!   reading `HTTP_REQUEST_HEADERS` returns `BadArgument` (the Rust SDK panics on that status)
//!   and `request.path`-like properties are `NotFound`, until `proxy_on_log` where they are
//!   readable again.
//! - `Pause` from a headers callback stops all iteration: body and trailers are not given to the
//!   filter until it resumes, then they are, in order.
//! - A repeated header read with `proxy_get_header_map_value` gives its first value.
//! - An empty header map is returned to the module as (pointer 0, size 0).
//! - HTTP and gRPC callout responses are delivered to the root context; the SDKs switch to the
//!   stream with `proxy_set_effective_context`.
//! - HTTP callout failures reach the module as Envoy 1.40's router reports them
//!   (`tests/callouts_vs_envoy.rs`, [`CalloutReply`]): a refused connection, an upstream that
//!   closes before its response headers, and an expired timeout are responses with `proxy_get_status`
//!   `Ok`: `503` with body `upstream connect error or disconnect/reset before headers. reset
//!   reason: remote connection failure` (or `... connection termination`), `504 upstream
//!   request timeout`, as `text/plain` (a `HEAD` callout gets no body); for a callout whose
//!   `content-type` is `application/grpc` (or `application/grpc+...`, not `-web`) each is a
//!   gRPC answer instead: `:status 200`, `content-type: application/grpc`, `grpc-status: 14`,
//!   `grpc-message` with that text, no body, no trailers. Only a reset after the response
//!   headers (or a response over the async client's buffer limit) reaches the module as zero
//!   headers with `BrokenConnection` and message `reset`.
//! - A unary gRPC call that fails the same ways reaches `proxy_on_grpc_close` with status 14
//!   and the router's text followed by its response code details ([`GrpcReply`]): `upstream
//!   request timeout{response_timeout}`, `... reset reason: remote connection
//!   failure{upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}}`,
//!   `... reset reason: connection
//!   termination{upstream_reset_before_response_started{connection_termination}}`.
//! - Envoy adds to a callout's request `x-envoy-internal: true` and, when it has a timeout,
//!   `x-envoy-expected-rq-timeout-ms` ([`HttpCallout::headers`]); not `x-forwarded-for` (its wasm
//!   host turns that off). An upstream's response reaches the module with
//!   `x-envoy-upstream-service-time` (here: virtual milliseconds since dispatch); the router's
//!   own answers above do not carry it.
//! - A cluster Envoy does not have, once the test declares clusters
//!   ([`PluginBuilder::cluster`]): `proxy_http_call` returns `BadArgument`; `proxy_grpc_call` and
//!   `proxy_grpc_stream` return `ParseFailure` for a cluster name, and `InternalFailure` for a
//!   serialized `GrpcService`, which uses up a token that `proxy_on_grpc_close` later closes
//!   (status 14, `Cluster not available`). Without declared clusters every name exists.
//! - Envoy reads a gRPC service argument as a serialized `GrpcService` whenever it parses as a
//!   protobuf message, so some cluster names are messages (`empty` is: field 12, a fixed32); one
//!   without a target makes Envoy 1.40 abort the whole proxy (`panic: unset oneof`). The
//!   harness fails the VM with an error saying so.
//! - WASI (`tests/wasi_vs_envoy.rs`): every preview1 function Envoy 1.40 provides answers as
//!   there (all but `path_link`, `path_symlink` and `proc_raise`, whose import makes a module
//!   fail to load in both; most file and socket functions answer `ENOTSUP` or `ENOSYS`).
//!   During `_initialize`/`_start` Envoy 1.40 refuses
//!   `fd_read`, `fd_seek`, `fd_close`, `path_open`, `sched_yield` and `proc_exit` (the module
//!   traps with `restricted_callback` and does not load) and answers every other WASI function
//!   as it does per request: `fd_fdstat_get` is `0` for stdout and stderr and `EBADF` for other
//!   descriptors, `fd_fdstat_set_flags` `ENOSYS`, `fd_prestat_get` `EBADF` (no preopened
//!   directory), so Go's runtime starts.
//! - `proxy_define_metric` returns a new id on every call (counters 4, 8, ...; gauges 5, ...;
//!   histograms 6, ...); ids defined with the same name share one stat across all workers.
//! - `malloc` is preferred over `proxy_on_memory_allocate` when both are exported.
//! - Streams end with `proxy_on_log`, then `proxy_on_done`, then `proxy_on_delete`.
//! - Properties read as Envoy 1.40 serves them (`tests/properties_vs_envoy.rs` compares every
//!   one at every callback): what Envoy derives from its configuration is under `xds.` only
//!   (`xds.node`, `xds.cluster_name`, `xds.route_name`, `xds.route_metadata`,
//!   `xds.listener_metadata`, ...); the older top-level names (`node`, `route_name`,
//!   `route_metadata`, `cluster_name`, `listener_direction`, ...) are `NotFound`, and a value a
//!   test sets under such a name is served at its `xds.` path. Metadata
//!   ([`PropertyValue::Metadata`]) reads as the serialized protobuf message, and below it as
//!   CEL values (`xds.route_metadata.filter_metadata.<namespace>.<key>`: a string's bytes, an
//!   `f64`, a bool byte, a struct or list as a serialized map), as a struct does
//!   ([`PropertyValue::Struct`], e.g. `xds.node.metadata`). A root context sees only
//!   `plugin_name`, `plugin_root_id`, `plugin_vm_id` and `xds.node`. Header maps
//!   (`request.headers`, `response.headers`, `response.trailers`) read as an empty map, not
//!   `NotFound`, while Envoy does not hold them; `request.duration` exists from `proxy_on_log`
//!   on; `response.grpc_status` falls back on the HTTP status (200 gives 2, `UNKNOWN`); `xds`,
//!   `request`, `response`, `source`, `destination`, `connection` and `upstream` as a whole fail
//!   with `SerializationFailure`.
//! - A local reply to a `HEAD` request keeps the `content-length` and `content-type` of the body
//!   it would have had; the filter's `proxy_on_response_headers` sees them with end of stream,
//!   and no body follows.
//! - A local reply or a VM failure after the response headers went downstream resets the stream
//!   (Envoy: "Prior headers have already been sent"): no reply, [`HttpStream::response_state`]
//!   is [`StreamState::Reset`].
//! - A body the filter buffers (`StopIterationAndBuffer`, or `StopAllIterationAndBuffer` from
//!   headers) beyond the connection's buffer limit ([`PluginBuilder::buffer_limit`], 1 MiB) ends
//!   the stream: a request with `413` (`request_payload_too_large`), a response with `500`
//!   (`response_payload_too_large`) or a reset once its headers went downstream.
//! - [`HttpStream::send_request`] and [`HttpStream::upstream_response`] present a request and a
//!   response as Envoy's HTTP/1 codec and connection manager do (`:scheme`,
//!   `x-forwarded-proto`, a generated `x-request-id`, a body followed by an empty chunk that ends
//!   the stream, `x-envoy-upstream-service-time`; see [`client`]).
//!   [`HttpStream::request_headers`] and its siblings deliver exactly what they are given.
//! - Envoy 1.40's built-in foreign functions answer `proxy_call_foreign_function` as there
//!   (`tests/foreign_functions_vs_envoy.rs`; a test's own [`PluginBuilder::foreign_function`]
//!   of the same name replaces one, and other names are `NotFound`): `compress` and
//!   `uncompress` are zlib's, byte for byte with the zlib-ng Envoy links (a stream that does not
//!   inflate is `SerializationFailure`); `declare_property` declares a property for
//!   `proxy_set_property` (a read-only one is set once per stream, a second declaration of a
//!   name is `BadArgument`, and only the root context's declarations count);
//!   `set_envoy_filter_state` sets an object of one of Envoy's filter state factories, readable
//!   at `filter_state.<name>` (`NotFound` for other names and in a root context);
//!   `clear_route_cache` is `Ok` ([`HttpStream::route_cache_clears`] counts it). Arguments that
//!   are not the expected protobuf message are `BadArgument`.
//! - Envoy runs VMs on its main thread beside an HTTP (or network) plugin's worker VMs
//!   ([`PluginBuilder::main_thread_vms`], on by default; [`Plugin::main_thread`],
//!   `tests/main_thread_vs_envoy.rs` at `--concurrency` 1 and 2): a base VM that only runs
//!   `_initialize`, a canary that runs the start sequence (`proxy_on_context_create`,
//!   `proxy_on_vm_start`, `proxy_on_configure`) and is dropped without `proxy_on_done` (its
//!   ticks never fire, its callouts are cancelled), then the main thread's own VM, which runs it
//!   again and stays: it ticks and gets callout answers, but never a request. Then each
//!   worker's VM starts. So with N workers a module's start-up runs N + 2 times (its
//!   `_initialize` N + 3 times) and N + 1 VMs tick; shared-data writes, queue registrations and
//!   metrics of those start-ups count as in Envoy, and a queue's notifications go to whichever
//!   VM registered it last (a worker's). Their log lines carry [`LogEntry::main_thread`];
//!   [`Plugin::worker_logs`] leaves them out. A singleton service's VMs start after the
//!   plugin's main-thread VMs (Envoy starts bootstrap services once its listeners are loaded).
//! - A singleton service (bootstrap extension `envoy.bootstrap.wasm`, `singleton: true`;
//!   [`PluginBuilder::service`], [`PluginBuilder::start_service`], `tests/singleton_vs_envoy.rs`)
//!   is one more VM, with a root context and no streams, sharing shared data and queues with
//!   the plugins: both are keyed by vm_id, so a worker reaches the service's queue by resolving
//!   it under the service's vm_id (under another vm_id: `NotFound`), and every enqueue gives the
//!   service one `proxy_on_queue_ready`. Envoy 1.40 runs the service's start sequence
//!   (`proxy_on_context_create`, `proxy_on_vm_start`, `proxy_on_configure`) twice: on a VM it
//!   drops without `proxy_on_done` (its ticks never fire), then on the VM that stays.
//! - A network (TCP) filter ([`Plugin::tcp_connection`], [`TcpConnection`],
//!   `tests/tcp_vs_envoy.rs`: `envoy.filters.network.wasm` before `tcp_proxy`) gets
//!   `proxy_on_new_connection` when the connection is accepted, each side's bytes in
//!   `proxy_on_downstream_data`/`proxy_on_upstream_data` as the `DownstreamData`/`UpstreamData`
//!   buffer (the other side's buffer reads empty and refuses writes), and the whole held
//!   buffer again after `StopIteration`. `StopIteration` from `proxy_on_new_connection` stops
//!   the connection: no data callbacks and no upstream until `proxy_continue_stream`
//!   (what happens then is not compared with Envoy: held bytes go upstream unfiltered). The upstream's end of stream is followed by
//!   `proxy_on_upstream_connection_close(Unknown)`; once both sides ended the connection closes
//!   with `proxy_on_downstream_connection_close`, `Remote` when the client ended last, `Local`
//!   when the upstream did. `proxy_close_stream` (Downstream or Upstream) closes it `Local`
//!   before that callback's bytes go through; `proxy_continue_stream(Downstream)` lets held
//!   client bytes through, `Upstream` is `Unimplemented`. After `StopIteration` Envoy keeps the
//!   filter's buffer pointer set until a `Continue`, so a drained buffer stays reachable and
//!   writable. A connection ends with `proxy_on_done`, then `proxy_on_log`, then
//!   `proxy_on_delete` (an HTTP stream logs first). Its HTTP properties (`request.path`,
//!   `response.code`) are `NotFound` and `request.headers` an empty map, as in Envoy.
//! - Envoy files a module's metrics as `wasmcustom.<name>` ([`envoy_stat_name`]) and shows them
//!   to Prometheus without the namespace ([`prometheus_name`]); the harness reports them under
//!   the module's own names.
//!
//! # Workers in parallel: race mode
//!
//! Outside race mode one callback of one VM runs at a time, so a read-modify-write of shared
//! data inside one callback is atomic here, while Envoy's worker threads run in parallel.
//! [`Plugin::race`] runs stream events of several workers on a seeded schedule in which other
//! workers' events run at a VM's shared-data and queue hostcalls (between its read and its
//! write); [`explore_races`] tries many seeds and names the one that fails. Whatever the
//! schedule, writes that can lose an update are listed by [`Plugin::shared_data_hazards`]. See
//! [`race`].
//!
//! # Not emulated
//!
//! - Of parallel workers, only the interleavings race mode produces: an event that runs at
//!   another VM's race point runs to completion, and what the events start asynchronously
//!   (callout answers, queue notifications) is delivered after the race.
//! - How reads split a body: [`HttpStream::send_request`] delivers a body as one chunk, Envoy as
//!   the bytes arrive (a large body in several chunks whose sizes vary from run to run).
//! - Back-pressure: watermarked buffers (`StopIterationAndWatermark`,
//!   `StopAllIterationAndWatermark`) have no limit here; Envoy slows the sender down instead.
//! - The connection manager's own work: its statistics (`downstream_rq_too_large`,
//!   `rs_too_large`, ...), the headers it adds after the filter chain (`date`, `server`), and
//!   `x-forwarded-for` handling (tests set `source.address`).
//! - Of network (TCP) filters: what `tcp_proxy` and the sockets do on their own. The test
//!   plays the client and the upstream, so connecting to the upstream, connect failures and
//!   idle timeouts are not produced (a test ends the connection with
//!   [`TcpConnection::downstream_close`]); nor are read-disable and back-pressure (watermarks),
//!   how reads split a stream into chunks (each `downstream_data` is one read), failure
//!   policies (a callback that traps ends the connection without further callbacks, whatever
//!   the policy; Envoy fails open or closes it), and the connection properties Envoy derives
//!   from the sockets and the upstream it picked (`connection.*`, `upstream.*`, `source.*`,
//!   `destination.*`: tests set them with [`TcpConnection::property`]).
//! - Of the VMs on Envoy's main thread ([`PluginBuilder::main_thread_vms`]): Envoy keeps one VM
//!   per thread for each VM key (vm_id, VM configuration and code), so a singleton service and
//!   a plugin with the same key share the main thread's VM (and its root contexts' ticks run
//!   there side by side); here each has its own. Envoy's main thread and workers tick
//!   independently (on the wall clock); here ticks due at the same virtual instant fire workers
//!   first, then the service, then the main thread. A bootstrap service without `singleton`
//!   beside a plugin: Envoy 1.40 runs it as a plugin (base, canary and VM on the main thread,
//!   then one VM per worker, after the plugin's on each worker); alone it is a plugin that gets
//!   no requests (`tests/main_thread_vs_envoy.rs` compares that), but the harness cannot run
//!   one beside another plugin.
//! - The foreign functions that need Envoy's own libraries: `expr_create` (CEL: the harness has
//!   no CEL parser or evaluator) answers `Unimplemented`, so `expr_evaluate` finds no token
//!   (`NotFound`) and `expr_delete` is `Ok`; `sign` and `verify_signature` check their
//!   arguments as Envoy does (`BadArgument` without exactly one key) but answer
//!   `Unimplemented` instead of signing (no crypto here). `set_envoy_filter_state` does not run
//!   the factory's parser: a value Envoy's factory refuses (`envoy.network.ip` that is not an
//!   address, ...) is `BadArgument` there and accepted here. `declare_property`'s types and
//!   schemas are not applied below the property (`<name>.<field>` of a protobuf or flatbuffers
//!   value), nor its life span. A test registers its own [`PluginBuilder::foreign_function`]
//!   of the same name to answer these.
//! - Upstreams behind a callout: the test answers each callout ([`CalloutReply`]); the async
//!   client's response buffer limit, retries, and connect timeouts are not produced by the
//!   harness (a test can hand the module any of them as a [`CalloutReply::Response`] or
//!   [`CalloutReply::Failure`]). Nor are clusters without a healthy endpoint, where Envoy 1.40
//!   answers `proxy_http_call` and `proxy_grpc_call` with `InternalFailure` at dispatch, using
//!   up a token (a gRPC call's is closed afterwards with status 14); measured with an
//!   endpoint-less cluster.
//! - Properties Envoy derives from configuration or from the upstream it picked: `xds.*` (node,
//!   cluster, route, virtual host, listener, filter chain and their metadata), `upstream.*` and
//!   `xds.upstream_host_*` (Envoy knows them from the request body on),
//!   `response.backend_latency`, `typed_filter_metadata` (always an empty map here), TLS
//!   details, `response.flags` (Envoy's response flags: 0 here) and `request.protocol`
//!   (`HTTP/1.1` here): tests set those explicitly with [`PluginBuilder::property`] and
//!   [`HttpStream::property`]. A struct lists its keys sorted (`serde_json`'s map order), Envoy
//!   in its hash-map order. In `proxy_on_log` Envoy's header maps, and the sizes counting them,
//!   also hold what the router and the connection manager add after the filter chain
//!   (`x-envoy-expected-rq-timeout-ms`, `date`, `server`).
//!
//! ```no_run
//! use std::time::Duration;
//! use wasmesh_harness::{Action, CalloutReply, Harness, LogLevel};
//!
//! # fn main() -> Result<(), wasmesh_harness::HarnessError> {
//! let plugin = Harness::load("target/wasm32-wasip1/release/header_filter.wasm")?
//!     .config(r#"{"header": "x-hello"}"#)
//!     .log_level(LogLevel::Debug)
//!     .http_callout_handler(|_callout| CalloutReply::ok(200, "allowed"))
//!     .start()?;
//!
//! let mut stream = plugin.http_stream();
//! let outcome = stream.request_headers(
//!     &[(":method", "GET"), (":path", "/"), (":authority", "example.com")],
//!     true,
//! )?;
//! if let Some(reply) = outcome.local_reply() {
//!     println!("denied with {}", reply.status);
//! } else {
//!     assert_eq!(outcome.action(), Action::Continue);
//!     stream.response_headers(&[(":status", "200")], true)?;
//!     println!("upstream got {:?}", stream.request_headers_now());
//! }
//! stream.complete()?;
//! plugin.advance_clock(Duration::from_secs(1))?; // fires ticks and callout timeouts
//! println!("{:?}", plugin.metrics());
//! # Ok(())
//! # }
//! ```

pub mod build;

mod callouts;
pub mod client;
mod clock;
mod engine;
mod error;
pub mod headermap;
mod hostcalls;
mod metrics;
mod plugin;
mod property;
pub mod race;
mod shared;
mod stream;
mod tcp;
mod types;
mod vm;
mod wasi;

pub use callouts::{CalloutReply, GrpcCallout, GrpcReply, HttpCallout};
pub use client::{ClientRequest, UpstreamResponse};
pub use clock::{pinned_start, START_UNIX_SECONDS};
pub use engine::{AbiVersion, CacheStats};
pub use error::{HarnessError, Status};
pub use metrics::{envoy_stat_name, prometheus_name};
pub use plugin::{Harness, MainThread, Plugin, PluginBuilder, Service};
pub use property::PropertyValue;
pub use race::{explore_races, HazardKind, Race, RaceFailure, RaceReport, SharedDataHazard};
pub use stream::HttpStream;
pub use tcp::{PeerType, TcpConnection};
pub use types::{
    Action, FailurePolicy, Limits, LocalReply, LogEntry, LogLevel, MetricValue, Outcome,
    StreamState,
};
