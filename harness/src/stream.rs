//! HTTP streams: Envoy's HTTP filter manager and wasm `Context` as one filter sees them.
//!
//! What is emulated, following `source/extensions/common/wasm/context.cc` and the filter
//! manager:
//! - a stream context is created (`proxy_on_context_create(id, root)`) when request headers
//!   arrive;
//! - the status a callback returns is converted as Envoy does (`StopIteration` from headers
//!   becomes `StopAllIterationAndWatermark`, a local reply forces a stop, out-of-range values
//!   stop);
//! - after headers stop all iteration, body and trailers are held by the filter manager and
//!   handed to the filter when it resumes; after `StopIterationAndBuffer` on a body chunk, the
//!   next chunk is appended and the filter sees the whole buffer;
//! - header maps and bodies are only reachable while Envoy holds them for the filter;
//! - `proxy_send_local_response` and `proxy_continue_stream` take effect after the callback
//!   returns; a local reply sent before the response started goes through the filter's own
//!   response callbacks, as Envoy's `sendLocalReply` does;
//! - at the end of the stream Envoy calls `proxy_on_log`, then `proxy_on_done` and
//!   `proxy_on_delete` (Envoy runs access logs before destroying filters; the spec lists
//!   `on_done` first).

use crate::callouts::HttpCallout;
use crate::client::{ClientRequest, UpstreamResponse};
use crate::error::HarnessError;
use crate::hostcalls::{add_header, header_value};
use crate::plugin::{len_u32, reentrancy, Plugin, PluginInner};
use crate::property::PropertyValue;
use crate::types::{Action, FailurePolicy, LocalReply, Outcome, StreamState};
use crate::vm::{ContextState, Deferred, HttpExchange, PendingLocalReply, StreamKind, TcpState};

/// Which part of a direction a callback is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Headers,
    Body,
    Trailers,
}

/// Identifies a stream context on a given VM.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamHandle {
    pub(crate) generation: u64,
    pub(crate) context: u32,
}

/// One HTTP request/response exchange through the filter, driven like a proxy drives it.
pub struct HttpStream {
    plugin: Plugin,
    worker: usize,
    handle: Option<StreamHandle>,
    pending_properties: Vec<(Vec<String>, PropertyValue)>,
}

impl HttpStream {
    pub(crate) fn new(plugin: Plugin, worker: usize) -> Self {
        HttpStream {
            plugin,
            worker,
            handle: None,
            pending_properties: Vec::new(),
        }
    }

    /// The worker (VM) this stream runs on.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// The stream's context id in its VM, once the stream has started.
    pub fn context_id(&self) -> Option<u32> {
        self.handle.map(|h| h.context)
    }

    /// Sets a property of this stream (e.g. `["source", "address"]`, `["connection", "mtls"]`,
    /// `["upstream", "address"]`, `["xds", "route_name"]`, `["metadata", ...]`).
    pub fn property(&mut self, path: &[&str], value: impl Into<PropertyValue>) -> &mut Self {
        set_property(
            &self.plugin,
            self.worker,
            self.handle,
            &mut self.pending_properties,
            path,
            value.into(),
        );
        self
    }

    /// Starts the stream: allocates its context (reloading a failed VM under `FailReload`).
    pub(crate) fn open(&mut self) -> Result<StreamHandle, HarnessError> {
        if let Some(handle) = self.handle {
            return Ok(handle);
        }
        let worker = self.worker;
        let properties = std::mem::take(&mut self.pending_properties);
        let handle = self
            .plugin
            .with_inner(|inner| inner.new_stream_context(worker, properties, None))?;
        self.handle = Some(handle);
        Ok(handle)
    }

    fn drive(&mut self, op: StreamOp) -> Result<Outcome, HarnessError> {
        let handle = self.open()?;
        let worker = self.worker;
        self.plugin.with_inner(|inner| {
            let step = inner.apply(worker, handle, op)?;
            let drained = inner.drain_events();
            let outcome = step.into_outcome(inner, worker, handle)?;
            drained?;
            Ok(outcome)
        })
    }

    /// Request headers from the client (`proxy_on_request_headers`).
    pub fn request_headers(
        &mut self,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Outcome, HarnessError> {
        self.drive(StreamOp::request_headers(headers, end_of_stream))
    }

    /// A request body chunk (`proxy_on_request_body`).
    pub fn request_body(
        &mut self,
        data: &[u8],
        end_of_stream: bool,
    ) -> Result<Outcome, HarnessError> {
        self.drive(StreamOp::request_body(data, end_of_stream))
    }

    /// Request trailers (`proxy_on_request_trailers`); they end the request.
    pub fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Outcome, HarnessError> {
        self.drive(StreamOp::Trailers(StreamKind::Request, owned(trailers)))
    }

    /// Response headers from the upstream (`proxy_on_response_headers`).
    pub fn response_headers(
        &mut self,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Outcome, HarnessError> {
        self.drive(StreamOp::response_headers(headers, end_of_stream))
    }

    /// A response body chunk (`proxy_on_response_body`).
    pub fn response_body(
        &mut self,
        data: &[u8],
        end_of_stream: bool,
    ) -> Result<Outcome, HarnessError> {
        self.drive(StreamOp::response_body(data, end_of_stream))
    }

    /// Response trailers (`proxy_on_response_trailers`).
    pub fn response_trailers(
        &mut self,
        trailers: &[(&str, &str)],
    ) -> Result<Outcome, HarnessError> {
        self.drive(StreamOp::Trailers(StreamKind::Response, owned(trailers)))
    }

    /// Sends `request` as Envoy's connection manager hands a client's HTTP/1.1 request to the
    /// first filter (see [`crate::client`]): headers with `:scheme`, `x-forwarded-proto` and a
    /// generated `x-request-id`, then the body as one chunk and an empty chunk that ends the
    /// stream. Returns the outcome of the last piece the filter was given.
    pub fn send_request(&mut self, request: &ClientRequest) -> Result<Outcome, HarnessError> {
        let request_id = self
            .plugin
            .shared
            .try_borrow_mut()
            .map(|mut shared| shared.next_request_id())
            .map_err(|_| reentrancy())?;
        let headers = request.presented_headers(&request_id);
        let Some(body) = request.body_bytes() else {
            return self.drive(StreamOp::Headers(StreamKind::Request, headers, true));
        };
        self.drive(StreamOp::Headers(StreamKind::Request, headers, false))?;
        self.request_body(body, false)?;
        self.request_body(&[], true)
    }

    /// The upstream answers with `response`, handed to the filter as Envoy's router does (see
    /// [`crate::client`]): headers ending with `x-envoy-upstream-service-time` (virtual
    /// milliseconds since the stream started), then the body as one chunk and an empty chunk that
    /// ends the stream. Returns the outcome of the last piece the filter was given.
    pub fn upstream_response(
        &mut self,
        response: &UpstreamResponse,
    ) -> Result<Outcome, HarnessError> {
        let handle = self.open()?;
        let worker = self.worker;
        let service_time = self.plugin.with_inner(|inner| {
            let now = inner.elapsed();
            let start = inner
                .exchange(worker, handle)
                .map(|exchange| exchange.start)
                .unwrap_or(now);
            Ok(u64::try_from(now.saturating_sub(start).as_millis()).unwrap_or(u64::MAX))
        })?;
        let headers = response.presented_headers(service_time);
        let body = response.body_bytes();
        if body.is_empty() {
            return self.drive(StreamOp::Headers(StreamKind::Response, headers, true));
        }
        self.drive(StreamOp::Headers(StreamKind::Response, headers, false))?;
        self.response_body(body, false)?;
        self.response_body(&[], true)
    }

    /// Ends the stream normally: `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`.
    pub fn complete(mut self) -> Result<(), HarnessError> {
        self.end(false)
    }

    /// The client went away mid-stream: the stream is reset, then logged and destroyed.
    pub fn reset(mut self) -> Result<(), HarnessError> {
        self.end(true)
    }

    fn end(&mut self, reset: bool) -> Result<(), HarnessError> {
        let Some(handle) = self.handle else {
            // The filter was never created: nothing to tell the module.
            return Ok(());
        };
        let worker = self.worker;
        self.plugin.with_inner(|inner| {
            let finished = inner.finish(worker, handle, reset);
            let drained = inner.drain_events();
            finished.and(drained)
        })
    }

    fn read<R>(&self, f: impl FnOnce(&HttpExchange) -> R) -> Option<R> {
        let handle = self.handle?;
        let inner = self.plugin.inner.try_borrow().ok()?;
        let vm = inner.vm_ref(self.worker, handle.generation)?;
        vm.state().exchange(handle.context).map(f)
    }

    /// The local reply, if the stream was answered locally.
    pub fn local_reply(&self) -> Option<LocalReply> {
        self.read(|e| e.local_reply.clone()).flatten()
    }

    /// Request headers as the filter left them (what the upstream gets once they continue).
    pub fn request_headers_now(&self) -> Vec<(String, String)> {
        self.read(|e| e.request.headers.clone()).unwrap_or_default()
    }

    /// Response headers as the client gets them (the local reply's, if one was sent).
    pub fn response_headers_now(&self) -> Vec<(String, String)> {
        self.read(|e| e.response.headers.clone())
            .unwrap_or_default()
    }

    /// Request trailers as the filter left them.
    pub fn request_trailers_now(&self) -> Option<Vec<(String, String)>> {
        self.read(|e| e.request.trailers.clone()).flatten()
    }

    /// Response trailers as the filter left them.
    pub fn response_trailers_now(&self) -> Option<Vec<(String, String)>> {
        self.read(|e| e.response.trailers.clone()).flatten()
    }

    /// The request body that went past the filter so far.
    pub fn request_body_now(&self) -> Vec<u8> {
        self.read(|e| e.request.forwarded_body.clone())
            .unwrap_or_default()
    }

    /// The response body that went past the filter so far.
    pub fn response_body_now(&self) -> Vec<u8> {
        self.read(|e| e.response.forwarded_body.clone())
            .unwrap_or_default()
    }

    /// A request header (first value) as the filter left it.
    pub fn request_header(&self, name: &str) -> Option<String> {
        self.read(|e| header_value(&e.request.headers, name).map(str::to_string))
            .flatten()
    }

    /// A response header (first value) as the client gets it.
    pub fn response_header(&self, name: &str) -> Option<String> {
        self.read(|e| header_value(&e.response.headers, name).map(str::to_string))
            .flatten()
    }

    /// HTTP callouts dispatched from this stream's context.
    pub fn http_callouts(&self) -> Vec<HttpCallout> {
        let Some(handle) = self.handle else {
            return Vec::new();
        };
        self.plugin
            .http_callouts()
            .into_iter()
            .filter(|c| c.worker == self.worker && c.context_id == handle.context)
            .collect()
    }

    /// Where the request stands.
    pub fn request_state(&self) -> StreamState {
        self.read(|e| e.request.state).unwrap_or(StreamState::Idle)
    }

    /// Where the response stands.
    pub fn response_state(&self) -> StreamState {
        self.read(|e| e.response.state).unwrap_or(StreamState::Idle)
    }

    /// How many times the module called the `clear_route_cache` foreign function for this
    /// stream. Envoy then picks the route again with the headers as the filter left them; the
    /// harness has no routes, so a test that relies on re-routing checks this count instead.
    pub fn route_cache_clears(&self) -> u32 {
        self.read(|e| e.route_cache_clears).unwrap_or(0)
    }

    /// Response code details Envoy recorded (`via_upstream`, a local reply's details,
    /// `wasm_close_stream`, `wasm_fail_stream`).
    pub fn response_code_details(&self) -> Option<String> {
        self.read(|e| e.response_code_details.clone()).flatten()
    }
}

impl Drop for HttpStream {
    /// Forgets the state of an ended stream, so that long benchmarks do not accumulate it.
    /// (Context ids are never reused, as in Envoy.) A stream dropped before it ended keeps its
    /// state: the module may still refer to its context.
    fn drop(&mut self) {
        let Some(handle) = self.handle else {
            return;
        };
        let Ok(mut inner) = self.plugin.inner.try_borrow_mut() else {
            return;
        };
        if let Ok(vm) = inner.vm(self.worker, handle.generation) {
            let state = vm.state_mut();
            let ended = state
                .contexts
                .get(&handle.context)
                .is_some_and(|c| c.deleted);
            if ended {
                state.contexts.remove(&handle.context);
            }
        }
    }
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        add_header(&mut out, key, value);
    }
    out
}

/// What one stream operation did.
pub(crate) struct Step {
    action: Action,
    effective: Action,
    invoked: bool,
    error: Option<HarnessError>,
}

impl Step {
    fn skipped(action: Action) -> Step {
        Step {
            action,
            effective: action,
            invoked: false,
            error: None,
        }
    }
}

impl Step {
    /// The outcome a test sees: the step plus the stream's local reply, if any by now.
    pub(crate) fn into_outcome(
        self,
        inner: &PluginInner,
        worker: usize,
        handle: StreamHandle,
    ) -> Result<Outcome, HarnessError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let local_reply = inner
            .exchange(worker, handle)
            .and_then(|e| e.local_reply.clone());
        Ok(Outcome {
            action: self.action,
            effective_action: self.effective,
            local_reply,
            invoked: self.invoked,
        })
    }
}

/// One thing the proxy hands a stream's filter.
#[derive(Debug, Clone)]
pub(crate) enum StreamOp {
    Headers(StreamKind, Vec<(String, String)>, bool),
    Body(StreamKind, Vec<u8>, bool),
    Trailers(StreamKind, Vec<(String, String)>),
}

impl StreamOp {
    pub(crate) fn request_headers(headers: &[(&str, &str)], end_of_stream: bool) -> Self {
        StreamOp::Headers(StreamKind::Request, owned(headers), end_of_stream)
    }

    pub(crate) fn request_body(data: &[u8], end_of_stream: bool) -> Self {
        StreamOp::Body(StreamKind::Request, data.to_vec(), end_of_stream)
    }

    pub(crate) fn response_headers(headers: &[(&str, &str)], end_of_stream: bool) -> Self {
        StreamOp::Headers(StreamKind::Response, owned(headers), end_of_stream)
    }

    pub(crate) fn response_body(data: &[u8], end_of_stream: bool) -> Self {
        StreamOp::Body(StreamKind::Response, data.to_vec(), end_of_stream)
    }

    /// The callback the operation runs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            StreamOp::Headers(StreamKind::Request, ..) => "proxy_on_request_headers",
            StreamOp::Body(StreamKind::Request, ..) => "proxy_on_request_body",
            StreamOp::Trailers(StreamKind::Request, ..) => "proxy_on_request_trailers",
            StreamOp::Headers(StreamKind::Response, ..) => "proxy_on_response_headers",
            StreamOp::Body(StreamKind::Response, ..) => "proxy_on_response_body",
            StreamOp::Trailers(StreamKind::Response, ..) => "proxy_on_response_trailers",
        }
    }
}

/// The status a module returned, named for the callback kind.
fn decode(phase: Phase, raw: u32) -> Action {
    match (phase, raw) {
        (_, 0) => Action::Continue,
        (_, 1) => Action::Pause,
        (Phase::Headers, 2) => Action::ContinueAndEndStream,
        (Phase::Headers, 3) => Action::StopAllIterationAndBuffer,
        (Phase::Headers, _) => Action::StopAllIterationAndWatermark,
        (Phase::Body, 2) => Action::StopIterationAndWatermark,
        (Phase::Body, _) => Action::StopIterationNoBuffer,
        (Phase::Trailers, _) => Action::Pause,
    }
}

/// What Envoy does with it (proxy-wasm-cpp-host's `convertVmCallResultTo*` then Envoy's
/// `convertFilter*Status`).
fn effective(
    phase: Phase,
    raw: u32,
    local_reply_sent: bool,
    allow_on_headers_stop_iteration: bool,
) -> Action {
    match phase {
        Phase::Headers => match raw {
            _ if local_reply_sent => Action::StopAllIterationAndWatermark,
            0 | 2 => Action::Continue,
            // With `allow_on_headers_stop_iteration`, Envoy honours StopIteration: the filter
            // keeps getting body chunks while the headers are held.
            1 if allow_on_headers_stop_iteration => Action::Pause,
            // StopIteration is not supported for 0.2.x headers by default
            // (`allow_on_headers_stop_iteration`): Envoy stops everything.
            1 => Action::StopAllIterationAndWatermark,
            3 => Action::StopAllIterationAndBuffer,
            _ => Action::StopAllIterationAndWatermark,
        },
        Phase::Body => match raw {
            _ if local_reply_sent => Action::StopIterationNoBuffer,
            0 => Action::Continue,
            1 => Action::Pause,
            2 => Action::StopIterationAndWatermark,
            _ => Action::StopIterationNoBuffer,
        },
        Phase::Trailers => match raw {
            0 if !local_reply_sent => Action::Continue,
            _ => Action::Pause,
        },
    }
}

/// The status Envoy returns for a failed (fail-closed) VM.
fn fail_stop(phase: Phase) -> Action {
    match phase {
        Phase::Headers => Action::StopAllIterationAndWatermark,
        Phase::Body => Action::StopIterationNoBuffer,
        Phase::Trailers => Action::Pause,
    }
}

fn is_grpc(headers: &[(String, String)]) -> bool {
    header_value(headers, "content-type").is_some_and(|v| v.starts_with("application/grpc"))
}

/// Envoy's inline-header setters: replace the first value in place, or append.
fn set_in_place(headers: &mut Vec<(String, String)>, key: &str, value: &str) {
    match headers.iter_mut().find(|(k, _)| k == key) {
        Some((_, existing)) => *existing = value.to_string(),
        None => add_header(headers, key, value),
    }
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
fn http_to_grpc_status(code: u32) -> u32 {
    match code {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

impl PluginInner {
    /// Allocates a stream context on `worker`'s VM (reloading a failed VM under `FailReload`):
    /// an HTTP stream's, or a TCP connection's when `tcp` is given. The module hears of it at
    /// its first callback (`ensure_created`).
    pub(crate) fn new_stream_context(
        &mut self,
        worker: usize,
        properties: Vec<(Vec<String>, PropertyValue)>,
        tcp: Option<Box<TcpState>>,
    ) -> Result<StreamHandle, HarnessError> {
        self.maybe_reload(worker)?;
        let start = self.elapsed();
        let connection_id = self
            .shared
            .try_borrow_mut()
            .map(|mut s| s.next_connection_id())
            .map_err(|_| reentrancy())?;
        let fail_open = self.policy == FailurePolicy::FailOpen;
        let vm = self.current_vm(worker)?;
        let bypass = fail_open && vm.is_failed();
        let state = vm.state_mut();
        let context = state.next_context_id;
        state.next_context_id += 1;
        let mut exchange = HttpExchange::new(start, connection_id);
        exchange.properties.extend(properties);
        exchange.bypass = bypass;
        exchange.tcp = tcp;
        let root = state.root_context_id;
        state.contexts.insert(
            context,
            ContextState {
                parent: root,
                created_in_vm: false,
                deleted: false,
                http: Some(exchange),
            },
        );
        Ok(StreamHandle {
            generation: vm.generation,
            context,
        })
    }

    /// Hands `op` to the stream's filter.
    pub(crate) fn apply(
        &mut self,
        worker: usize,
        handle: StreamHandle,
        op: StreamOp,
    ) -> Result<Step, HarnessError> {
        match op {
            StreamOp::Headers(kind, headers, end_of_stream) => {
                self.receive_headers(worker, handle, kind, headers, end_of_stream)
            }
            StreamOp::Body(kind, data, end_of_stream) => {
                self.receive_body(worker, handle, kind, data, end_of_stream)
            }
            StreamOp::Trailers(kind, trailers) => {
                self.receive_trailers(worker, handle, kind, trailers)
            }
        }
    }

    pub(crate) fn exchange(&self, worker: usize, handle: StreamHandle) -> Option<&HttpExchange> {
        self.vm_ref(worker, handle.generation)?
            .state()
            .exchange(handle.context)
    }

    pub(crate) fn exchange_mut(
        &mut self,
        worker: usize,
        handle: StreamHandle,
    ) -> Option<&mut HttpExchange> {
        self.vm(worker, handle.generation)
            .ok()?
            .state_mut()
            .exchange_mut(handle.context)
    }

    fn exchange_or_err(
        &mut self,
        worker: usize,
        handle: StreamHandle,
    ) -> Result<&mut HttpExchange, HarnessError> {
        self.exchange_mut(worker, handle)
            .ok_or_else(|| HarnessError::InvalidUse("the stream context no longer exists".into()))
    }

    /// Envoy's `onCreate`: `proxy_on_context_create(id, root)` once, unless the VM has failed.
    pub(crate) fn ensure_created(
        &mut self,
        worker: usize,
        handle: StreamHandle,
    ) -> Option<HarnessError> {
        let vm = self.vm(worker, handle.generation).ok()?;
        let context = handle.context;
        let state = vm.state_mut();
        let ctx = state.contexts.get_mut(&context)?;
        if ctx.created_in_vm {
            return None;
        }
        ctx.created_in_vm = true;
        let parent = ctx.parent;
        if vm.is_failed() {
            return None;
        }
        let create = vm.exports.on_context_create.clone()?;
        vm.invoke(
            "proxy_on_context_create",
            create,
            context,
            (context, parent),
        )
        .err()
    }

    /// Runs one filter callback with Envoy's failure handling (`CHECK_FAIL_HTTP`) around it.
    fn filter_callback(
        &mut self,
        worker: usize,
        handle: StreamHandle,
        kind: StreamKind,
        phase: Phase,
        size: u32,
        end_of_stream: bool,
    ) -> Result<Step, HarnessError> {
        let context = handle.context;
        if self.exchange(worker, handle).is_some_and(|e| e.bypass) {
            return Ok(Step::skipped(Action::Continue));
        }
        let vm = self.vm(worker, handle.generation)?;
        if vm.is_failed() {
            // A stream that existed when its VM failed fails closed whatever the policy: Envoy's
            // `CHECK_FAIL_HTTP` only opens for the deprecated `fail_open` flag, and
            // `failure_policy: FAIL_OPEN` only skips the filter for streams created afterwards.
            self.fail_stream(worker, handle)?;
            return Ok(Step::skipped(fail_stop(phase)));
        }
        let eos = u32::from(end_of_stream);
        let allow_stop_iteration = self.allow_on_headers_stop_iteration;
        let vm = self.vm(worker, handle.generation)?;
        vm.state_mut().stop_iteration = false;
        // Only the one callback is cloned out of `exports`: cloning a typed function takes a
        // reference on its registered type, and the whole table is two dozen of them.
        let exports = &vm.exports;
        let result = match (kind, phase) {
            (StreamKind::Request, Phase::Headers) => exports
                .on_request_headers
                .clone()
                .map(|f| vm.invoke("proxy_on_request_headers", f, context, (context, size, eos))),
            (StreamKind::Request, Phase::Body) => exports
                .on_request_body
                .clone()
                .map(|f| vm.invoke("proxy_on_request_body", f, context, (context, size, eos))),
            (StreamKind::Request, Phase::Trailers) => exports
                .on_request_trailers
                .clone()
                .map(|f| vm.invoke("proxy_on_request_trailers", f, context, (context, size))),
            (StreamKind::Response, Phase::Headers) => {
                exports.on_response_headers.clone().map(|f| {
                    vm.invoke(
                        "proxy_on_response_headers",
                        f,
                        context,
                        (context, size, eos),
                    )
                })
            }
            (StreamKind::Response, Phase::Body) => exports
                .on_response_body
                .clone()
                .map(|f| vm.invoke("proxy_on_response_body", f, context, (context, size, eos))),
            (StreamKind::Response, Phase::Trailers) => exports
                .on_response_trailers
                .clone()
                .map(|f| vm.invoke("proxy_on_response_trailers", f, context, (context, size))),
        };
        let local_reply_sent = std::mem::take(&mut vm.state_mut().stop_iteration);
        match result {
            None => Ok(Step::skipped(Action::Continue)),
            Some(Ok(raw)) => Ok(Step {
                action: decode(phase, raw),
                effective: effective(phase, raw, local_reply_sent, allow_stop_iteration),
                invoked: true,
                error: None,
            }),
            Some(Err(error)) => {
                vm.state_mut().deferred.clear();
                self.fail_stream(worker, handle)?;
                let stop = fail_stop(phase);
                Ok(Step {
                    action: stop,
                    effective: stop,
                    invoked: true,
                    error: Some(error),
                })
            }
        }
    }

    /// Envoy's `failStream`: a 503 local reply with details `wasm_fail_stream`, once.
    fn fail_stream(&mut self, worker: usize, handle: StreamHandle) -> Result<(), HarnessError> {
        let exchange = self.exchange_or_err(worker, handle)?;
        if exchange.stream_failed {
            return Ok(());
        }
        exchange.stream_failed = true;
        if exchange.failure_local_reply_sent || exchange.local_reply.is_some() {
            return Ok(());
        }
        exchange.failure_local_reply_sent = true;
        self.send_local_reply(
            worker,
            handle,
            PendingLocalReply {
                status: 503,
                body: Vec::new(),
                headers: Vec::new(),
                grpc_status: 14,
                details: "wasm_fail_stream".to_string(),
            },
            false,
        )
    }

    pub(crate) fn receive_headers(
        &mut self,
        worker: usize,
        handle: StreamHandle,
        kind: StreamKind,
        headers: Vec<(String, String)>,
        end_of_stream: bool,
    ) -> Result<Step, HarnessError> {
        let exchange = self.exchange_or_err(worker, handle)?;
        if exchange.finished || exchange.local_reply.is_some() {
            return Ok(Step::skipped(Action::StopAllIterationAndWatermark));
        }
        if exchange.direction(kind).headers_received {
            return Err(HarnessError::InvalidUse(format!(
                "{kind:?} headers were already sent on this stream"
            )));
        }
        if kind == StreamKind::Response && !exchange.request.headers_forwarded {
            return Err(HarnessError::InvalidUse(
                "the request has not reached the upstream (the filter has not let its headers \
                 through), so there is no upstream response"
                    .into(),
            ));
        }
        if kind == StreamKind::Response {
            exchange.response_code = header_value(&headers, ":status").and_then(|s| s.parse().ok());
            exchange
                .response_code_details
                .get_or_insert_with(|| "via_upstream".to_string());
        }
        let direction = exchange.direction_mut(kind);
        direction.headers = headers;
        direction.headers_received = true;
        direction.end_stream_received = end_of_stream;
        direction.state = StreamState::Continued;
        let create_error = if kind == StreamKind::Request {
            self.ensure_created(worker, handle)
        } else {
            None
        };
        let mut step = self.process_headers(worker, handle, kind, end_of_stream)?;
        if step.error.is_none() {
            step.error = create_error;
        }
        Ok(step)
    }

    /// Runs the headers callback on the headers stored in `kind` and applies the result.
    fn process_headers(
        &mut self,
        worker: usize,
        handle: StreamHandle,
        kind: StreamKind,
        end_of_stream: bool,
    ) -> Result<Step, HarnessError> {
        let elapsed = self.elapsed();
        let exchange = self.exchange_or_err(worker, handle)?;
        let bypass = kind == StreamKind::Response && exchange.failure_local_reply_sent;
        exchange.end_of_stream = end_of_stream;
        let direction = exchange.direction_mut(kind);
        direction.headers_available = true;
        let count = len_u32(direction.headers.len());
        let step = if bypass {
            Step::skipped(Action::Continue)
        } else {
            self.filter_callback(worker, handle, kind, Phase::Headers, count, end_of_stream)?
        };
        let exchange = self.exchange_or_err(worker, handle)?;
        if kind == StreamKind::Request && end_of_stream {
            exchange.request_complete_at.get_or_insert(elapsed);
        }
        let direction = exchange.direction_mut(kind);
        if matches!(
            direction.state,
            StreamState::Continued | StreamState::Paused
        ) {
            if step.effective.stops_iteration() {
                direction.state = StreamState::Paused;
                direction.stopped_all = matches!(
                    step.effective,
                    Action::StopAllIterationAndBuffer | Action::StopAllIterationAndWatermark
                );
                direction.stopped_all_buffering =
                    step.effective == Action::StopAllIterationAndBuffer;
            } else {
                direction.headers_available = false;
                direction.headers_forwarded = true;
                direction.state = StreamState::Continued;
            }
        }
        self.process_deferred(worker, handle.generation)?;
        Ok(step)
    }

    pub(crate) fn receive_body(
        &mut self,
        worker: usize,
        handle: StreamHandle,
        kind: StreamKind,
        data: Vec<u8>,
        end_of_stream: bool,
    ) -> Result<Step, HarnessError> {
        let exchange = self.exchange_or_err(worker, handle)?;
        if exchange.finished
            || matches!(
                exchange.direction(kind).state,
                StreamState::Replied | StreamState::Reset
            )
            || (kind == StreamKind::Response && exchange.local_reply.is_some())
        {
            return Ok(Step::skipped(Action::StopIterationNoBuffer));
        }
        let direction = exchange.direction_mut(kind);
        if !direction.headers_received {
            return Err(HarnessError::InvalidUse(format!(
                "{kind:?} body sent before {kind:?} headers"
            )));
        }
        if direction.end_stream_received {
            return Err(HarnessError::InvalidUse(format!(
                "{kind:?} body sent after the end of the {kind:?} stream"
            )));
        }
        direction.body_bytes_received += data.len() as u64;
        direction.end_stream_received = end_of_stream;
        if direction.state == StreamState::Paused && direction.stopped_all {
            // The filter stopped all iteration at headers: the filter manager holds the data
            // and hands it to the filter when it resumes.
            direction.buffered.extend_from_slice(&data);
            direction.held_data = true;
            let over_limit =
                direction.stopped_all_buffering && direction.buffered.len() > self.buffer_limit;
            if over_limit {
                self.body_too_large(worker, handle, kind)?;
            }
            return Ok(Step::skipped(Action::StopIterationAndWatermark));
        }
        self.process_body(worker, handle, kind, data, end_of_stream)
    }

    /// Runs the body callback on `data` and applies the result (Envoy's `decodeData`).
    fn process_body(
        &mut self,
        worker: usize,
        handle: StreamHandle,
        kind: StreamKind,
        data: Vec<u8>,
        end_of_stream: bool,
    ) -> Result<Step, HarnessError> {
        let elapsed = self.elapsed();
        let exchange = self.exchange_or_err(worker, handle)?;
        let bypass = kind == StreamKind::Response && exchange.failure_local_reply_sent;
        exchange.end_of_stream = end_of_stream;
        let direction = exchange.direction_mut(kind);
        if direction.buffering {
            // The previous chunk was buffered: this one joins it and the filter sees it all.
            direction.buffered.extend_from_slice(&data);
            direction.chunk.clear();
        } else {
            direction.chunk = data;
        }
        direction.chunk_available = true;
        let size = direction
            .visible_body()
            .map(|b| len_u32(b.len()))
            .unwrap_or(0);
        let step = if bypass {
            Step::skipped(Action::Continue)
        } else {
            self.filter_callback(worker, handle, kind, Phase::Body, size, end_of_stream)?
        };
        let exchange = self.exchange_or_err(worker, handle)?;
        if kind == StreamKind::Request && end_of_stream {
            exchange.request_complete_at.get_or_insert(elapsed);
        }
        let direction = exchange.direction_mut(kind);
        direction.buffering = false;
        if matches!(
            direction.state,
            StreamState::Continued | StreamState::Paused
        ) {
            match step.effective {
                Action::Continue | Action::ContinueAndEndStream => {
                    direction.chunk_available = false;
                    direction.release_held_body();
                    direction.state = StreamState::Continued;
                }
                Action::Pause => {
                    // StopIterationAndBuffer: unlike a watermarked buffer, this one has a limit.
                    direction.buffering = true;
                    let chunk = std::mem::take(&mut direction.chunk);
                    direction.buffered.extend_from_slice(&chunk);
                    direction.state = StreamState::Paused;
                    if direction.buffered.len() > self.buffer_limit {
                        self.body_too_large(worker, handle, kind)?;
                    }
                }
                Action::StopIterationAndWatermark => {
                    let chunk = std::mem::take(&mut direction.chunk);
                    direction.buffered.extend_from_slice(&chunk);
                    direction.state = StreamState::Paused;
                }
                _ => {
                    // StopIterationNoBuffer: the filter took responsibility for the data.
                    direction.chunk.clear();
                    direction.state = StreamState::Paused;
                }
            }
        }
        self.process_deferred(worker, handle.generation)?;
        Ok(step)
    }

    pub(crate) fn receive_trailers(
        &mut self,
        worker: usize,
        handle: StreamHandle,
        kind: StreamKind,
        trailers: Vec<(String, String)>,
    ) -> Result<Step, HarnessError> {
        let exchange = self.exchange_or_err(worker, handle)?;
        if exchange.finished
            || matches!(
                exchange.direction(kind).state,
                StreamState::Replied | StreamState::Reset
            )
            || (kind == StreamKind::Response && exchange.local_reply.is_some())
        {
            return Ok(Step::skipped(Action::Pause));
        }
        let direction = exchange.direction_mut(kind);
        if !direction.headers_received || direction.end_stream_received {
            return Err(HarnessError::InvalidUse(format!(
                "{kind:?} trailers must follow {kind:?} headers and precede the end of stream"
            )));
        }
        direction.end_stream_received = true;
        direction.trailers = Some(trailers);
        if direction.state == StreamState::Paused && direction.stopped_all {
            direction.trailers_pending = true;
            return Ok(Step::skipped(Action::Pause));
        }
        self.process_trailers(worker, handle, kind)
    }

    fn process_trailers(
        &mut self,
        worker: usize,
        handle: StreamHandle,
        kind: StreamKind,
    ) -> Result<Step, HarnessError> {
        let elapsed = self.elapsed();
        let exchange = self.exchange_or_err(worker, handle)?;
        let bypass = kind == StreamKind::Response && exchange.failure_local_reply_sent;
        let direction = exchange.direction_mut(kind);
        direction.trailers_pending = false;
        direction.trailers_available = true;
        let count = len_u32(direction.trailers.as_ref().map(Vec::len).unwrap_or(0));
        let step = if bypass {
            Step::skipped(Action::Continue)
        } else {
            self.filter_callback(worker, handle, kind, Phase::Trailers, count, true)?
        };
        let exchange = self.exchange_or_err(worker, handle)?;
        if kind == StreamKind::Request {
            exchange.request_complete_at.get_or_insert(elapsed);
        }
        let direction = exchange.direction_mut(kind);
        if matches!(
            direction.state,
            StreamState::Continued | StreamState::Paused
        ) {
            if step.effective.stops_iteration() {
                direction.state = StreamState::Paused;
            } else {
                direction.trailers_available = false;
                direction.release_held_body();
                direction.state = StreamState::Continued;
            }
        }
        self.process_deferred(worker, handle.generation)?;
        Ok(step)
    }

    /// Runs the actions the module requested during the last callback(s).
    pub(crate) fn process_deferred(
        &mut self,
        worker: usize,
        generation: u64,
    ) -> Result<(), HarnessError> {
        loop {
            let next = self
                .vm(worker, generation)?
                .state_mut()
                .deferred
                .pop_front();
            let Some(action) = next else {
                return Ok(());
            };
            match action {
                Deferred::LocalReply { context, reply } => {
                    let handle = StreamHandle {
                        generation,
                        context,
                    };
                    let live = self
                        .exchange(worker, handle)
                        .is_some_and(|e| !e.finished && e.local_reply.is_none());
                    if live {
                        self.send_local_reply(worker, handle, reply, true)?;
                    }
                }
                Deferred::Continue { context, stream } => {
                    self.resume(
                        worker,
                        StreamHandle {
                            generation,
                            context,
                        },
                        stream,
                    )?;
                }
                Deferred::Close { context } => {
                    let handle = StreamHandle {
                        generation,
                        context,
                    };
                    if self
                        .exchange(worker, handle)
                        .is_some_and(|e| e.tcp.is_some())
                    {
                        self.tcp_filter_close(worker, handle)?;
                    } else {
                        self.finish(worker, handle, true)?;
                    }
                }
                Deferred::ContinueReading { context } => {
                    self.tcp_continue_reading(
                        worker,
                        StreamHandle {
                            generation,
                            context,
                        },
                    )?;
                }
            }
        }
    }

    /// `continueDecoding`/`continueEncoding`: lets a paused direction through. After a
    /// stop-all at headers, held body and trailers are first handed to the filter.
    fn resume(
        &mut self,
        worker: usize,
        handle: StreamHandle,
        kind: StreamKind,
    ) -> Result<(), HarnessError> {
        let Some(exchange) = self.exchange_mut(worker, handle) else {
            return Ok(());
        };
        if exchange.finished {
            return Ok(());
        }
        let direction = exchange.direction_mut(kind);
        if direction.state != StreamState::Paused {
            return Ok(());
        }
        let was_stopped_all = std::mem::take(&mut direction.stopped_all);
        direction.stopped_all_buffering = false;
        direction.state = StreamState::Continued;
        direction.headers_forwarded = true;
        if was_stopped_all && direction.held_data {
            direction.held_data = false;
            let data = std::mem::take(&mut direction.buffered);
            let end_of_stream = direction.end_stream_received && direction.trailers.is_none();
            let step = self.process_body(worker, handle, kind, data, end_of_stream)?;
            if let Some(error) = step.error {
                return Err(error);
            }
        } else {
            direction.release_held_body();
        }
        let pending_trailers = self.exchange(worker, handle).is_some_and(|e| {
            e.direction(kind).trailers_pending && e.direction(kind).state == StreamState::Continued
        });
        if pending_trailers {
            let step = self.process_trailers(worker, handle, kind)?;
            if let Some(error) = step.error {
                return Err(error);
            }
        }
        Ok(())
    }

    /// Envoy's `requestDataTooLarge` / `responseDataTooLarge` when a buffer the filter asked
    /// for outgrows the connection's buffer limit: 413 for a request, 500 for a response (a reset
    /// once the response headers went downstream).
    fn body_too_large(
        &mut self,
        worker: usize,
        handle: StreamHandle,
        kind: StreamKind,
    ) -> Result<(), HarnessError> {
        let (status, text, details) = match kind {
            StreamKind::Request => (413, "Payload Too Large", "request_payload_too_large"),
            StreamKind::Response => (500, "Internal Server Error", "response_payload_too_large"),
        };
        self.send_local_reply(
            worker,
            handle,
            PendingLocalReply {
                status,
                body: text.as_bytes().to_vec(),
                headers: Vec::new(),
                // No gRPC status: Envoy maps the HTTP status.
                grpc_status: u32::MAX,
                details: details.to_string(),
            },
            true,
        )
    }

    /// Sends a local reply: through the filter's response callbacks when the response has not
    /// started (and the reply is not the failure reply), directly when it started but its
    /// headers have not gone downstream, and as a stream reset once they have (Envoy's
    /// "Prior headers have already been sent").
    fn send_local_reply(
        &mut self,
        worker: usize,
        handle: StreamHandle,
        reply: PendingLocalReply,
        through_filter: bool,
    ) -> Result<(), HarnessError> {
        let exchange = self.exchange_or_err(worker, handle)?;
        if exchange.response.headers_forwarded {
            return self.finish(worker, handle, true);
        }
        let grpc = is_grpc(&exchange.request.headers);
        // Envoy's `Utility::prepareLocalReply`: `:status`, then the module's headers, then the
        // headers Envoy sets itself (replacing a value in place when the module set it too).
        let mut headers: Vec<(String, String)> = Vec::new();
        add_header(&mut headers, ":status", &reply.status.to_string());
        for (key, value) in &reply.headers {
            add_header(&mut headers, key, value);
        }
        let is_head = header_value(&exchange.request.headers, ":method") == Some("HEAD");
        let mut body = reply.body.clone();
        let grpc_status = (reply.grpc_status <= 16).then_some(reply.grpc_status as i32);
        let status = if grpc { 200 } else { reply.status };
        if grpc {
            // A gRPC client gets a trailers-only response carrying the status.
            set_in_place(&mut headers, ":status", "200");
            set_in_place(&mut headers, "content-type", "application/grpc");
            if header_value(&headers, "grpc-status").is_none() {
                let code = grpc_status
                    .map(|c| c as u32)
                    .unwrap_or_else(|| http_to_grpc_status(reply.status));
                add_header(&mut headers, "grpc-status", &code.to_string());
            }
            if !body.is_empty() {
                set_in_place(
                    &mut headers,
                    "grpc-message",
                    &String::from_utf8_lossy(&body),
                );
            }
            crate::hostcalls::remove_header(&mut headers, "content-length");
            body.clear();
        } else if !body.is_empty() {
            set_in_place(&mut headers, "content-length", &body.len().to_string());
            if header_value(&headers, "content-type").is_none() {
                add_header(&mut headers, "content-type", "text/plain");
            }
        }
        if is_head {
            // The headers describe the body a GET would get; none is sent.
            body.clear();
        }
        exchange.response_code = Some(status);
        exchange.response_code_details = Some(reply.details.clone());
        let response_started = exchange.response.headers_received;
        let local_reply = LocalReply {
            status,
            headers: headers.clone(),
            body: body.clone(),
            details: reply.details.clone(),
            grpc_status,
        };
        exchange.local_reply = Some(local_reply.clone());
        // The request ends here; whatever the filter manager held is dropped.
        if !matches!(exchange.request.state, StreamState::Reset) {
            exchange.request.state = StreamState::Replied;
        }
        exchange.request.buffered.clear();
        exchange.request.held_data = false;
        let response = &mut exchange.response;
        response.headers = headers;
        response.headers_received = true;
        response.trailers = None;
        response.buffered.clear();
        response.chunk.clear();
        response.forwarded_body.clear();
        response.end_stream_received = true;
        response.state = StreamState::Continued;
        response.stopped_all = false;
        if through_filter && !response_started {
            let end_of_stream = body.is_empty();
            let step = self.process_headers(worker, handle, StreamKind::Response, end_of_stream)?;
            if let Some(error) = step.error {
                return Err(error);
            }
            let headers_paused = self
                .exchange(worker, handle)
                .is_some_and(|e| e.response.state == StreamState::Paused);
            if !body.is_empty() {
                if headers_paused {
                    if let Some(exchange) = self.exchange_mut(worker, handle) {
                        exchange.response.buffered.extend_from_slice(&body);
                        exchange.response.held_data = true;
                    }
                } else {
                    let step =
                        self.process_body(worker, handle, StreamKind::Response, body, true)?;
                    if let Some(error) = step.error {
                        return Err(error);
                    }
                }
            }
        } else {
            response.forwarded_body = body;
        }
        let exchange = self.exchange_or_err(worker, handle)?;
        let response = &mut exchange.response;
        response.state = StreamState::Replied;
        let mut final_body = response.forwarded_body.clone();
        final_body.extend_from_slice(&response.buffered);
        if let Some(reply) = exchange.local_reply.as_mut() {
            reply.headers = exchange.response.headers.clone();
            reply.body = final_body;
        }
        Ok(())
    }

    /// End of the stream: `proxy_on_log` (Envoy's access-log phase), then `proxy_on_done` and
    /// `proxy_on_delete`.
    pub(crate) fn finish(
        &mut self,
        worker: usize,
        handle: StreamHandle,
        reset: bool,
    ) -> Result<(), HarnessError> {
        let elapsed = self.elapsed();
        let exchange = self.exchange_or_err(worker, handle)?;
        if exchange.finished {
            return Ok(());
        }
        exchange.finished = true;
        exchange.request_complete_at.get_or_insert(elapsed);
        if reset {
            for direction in [&mut exchange.request, &mut exchange.response] {
                if direction.state != StreamState::Replied {
                    direction.state = StreamState::Reset;
                }
            }
        }
        // Envoy's `log()` creates the context if no callback did yet.
        let first_error = self.ensure_created(worker, handle);
        self.destroy_context(worker, handle, true, first_error)
    }

    /// The end of a stream context: `proxy_on_log` then `proxy_on_done` (`log_first`, an HTTP
    /// stream: Envoy runs access logs before destroying filters), or `proxy_on_done` then
    /// `proxy_on_log` (a TCP connection, as measured with Envoy 1.40), then `proxy_on_delete`.
    /// Returns the first error a callback raised.
    pub(crate) fn destroy_context(
        &mut self,
        worker: usize,
        handle: StreamHandle,
        log_first: bool,
        mut first_error: Option<HarnessError>,
    ) -> Result<(), HarnessError> {
        let context = handle.context;
        let vm = self.vm(worker, handle.generation)?;
        for callback in if log_first {
            [true, false]
        } else {
            [false, true]
        } {
            if vm.is_failed() {
                break;
            }
            let result = if callback {
                if let Some(exchange) = vm.state_mut().exchange_mut(context) {
                    exchange.access_log_phase = true;
                }
                let result = match vm.exports.on_log.clone() {
                    Some(on_log) => vm.invoke("proxy_on_log", on_log, context, context),
                    None => Ok(()),
                };
                if let Some(exchange) = vm.state_mut().exchange_mut(context) {
                    exchange.access_log_phase = false;
                }
                result
            } else {
                match vm.exports.on_done.clone() {
                    Some(on_done) => vm
                        .invoke("proxy_on_done", on_done, context, context)
                        .map(|_| ()),
                    None => Ok(()),
                }
            };
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
        let created = vm
            .state()
            .contexts
            .get(&context)
            .is_some_and(|c| c.created_in_vm);
        if !vm.is_failed() && created {
            if let Some(on_delete) = vm.exports.on_delete.clone() {
                if let Err(error) = vm.invoke("proxy_on_delete", on_delete, context, context) {
                    first_error.get_or_insert(error);
                }
            }
        }
        if let Some(ctx) = vm.state_mut().contexts.get_mut(&context) {
            ctx.deleted = true;
        }
        // Anything the module asked for while the stream was ending has no stream to act on.
        vm.state_mut()
            .deferred
            .retain(|d| !matches!(d, Deferred::LocalReply { context: c, .. } | Deferred::Continue { context: c, .. } | Deferred::ContinueReading { context: c } | Deferred::Close { context: c } if *c == context));
        self.process_deferred(worker, handle.generation)?;
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Sets a property of a stream or connection: on its context once it exists, else kept for when
/// it opens (so that its first callback sees it).
pub(crate) fn set_property(
    plugin: &Plugin,
    worker: usize,
    handle: Option<StreamHandle>,
    pending: &mut Vec<(Vec<String>, PropertyValue)>,
    path: &[&str],
    value: PropertyValue,
) {
    let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
    match handle {
        Some(handle) => {
            let _ = plugin.with_inner(|inner| {
                if let Some(exchange) = inner.exchange_mut(worker, handle) {
                    exchange.properties.insert(path, value);
                }
                Ok(())
            });
        }
        None => pending.push((path, value)),
    }
}
