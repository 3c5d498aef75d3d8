//! One VM (one wasmtime instance, Envoy's per-worker `Wasm`), its host-side state, and the
//! wrapper every call into the module goes through.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use wasmtime::{
    Instance, Memory, ResourceLimiter, Store, Trap, TypedFunc, WasmBacktrace, WasmParams,
    WasmResults,
};

use crate::engine::CompiledModule;
use crate::error::HarnessError;
use crate::metrics::MetricKind;
use crate::property::PropertyValue;
use crate::shared::SharedState;
use crate::types::{LocalReply, LogLevel, StreamState};

/// Tables a module may define (Rust and C++ modules have one; reference types allow more).
const MAX_TABLES: usize = 16;

/// Caps linear memory growth and remembers a denied growth so that the resulting crash can be
/// reported as [`HarnessError::MemoryLimit`] rather than as the allocator's abort.
#[derive(Debug, Clone)]
pub(crate) struct MemoryLimiter {
    pub(crate) max_bytes: u64,
    pub(crate) denied_request: Option<u64>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = u64::try_from(desired).unwrap_or(u64::MAX);
        if desired > self.max_bytes {
            // Deny like an exhausted host would: `memory.grow` returns -1 and the module's
            // allocator decides what to do (Rust aborts, which traps).
            self.denied_request = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; 100k entries is far beyond any real filter.
        Ok(desired <= 100_000)
    }

    // One instance with one memory per store (the engine also refuses multi-memory modules);
    // a few tables. wasmtime's defaults (10,000 each) would let one module reserve thousands
    // of capped memories or tables, multiplying every per-memory or per-table cap.
    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

/// The stream direction a hostcall refers to (`proxy_stream_type_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    Request,
    Response,
}

/// A local reply requested by the module, sent after the callback returns (Envoy defers it with
/// `addAfterVmCallAction`).
#[derive(Debug, Clone)]
pub(crate) struct PendingLocalReply {
    pub(crate) status: u32,
    pub(crate) body: Vec<u8>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) grpc_status: u32,
    pub(crate) details: String,
}

/// Actions Envoy runs once the current call into the VM has returned.
#[derive(Debug, Clone)]
pub(crate) enum Deferred {
    LocalReply {
        context: u32,
        reply: PendingLocalReply,
    },
    Continue {
        context: u32,
        stream: StreamKind,
    },
    /// Either direction: Envoy resets the whole stream (for a TCP connection: closes the
    /// downstream connection, `FlushWrite`).
    Close {
        context: u32,
    },
    /// `proxy_continue_stream(Downstream)` of a TCP connection: Envoy's `continueReading`.
    ContinueReading {
        context: u32,
    },
}

/// One direction of an HTTP exchange, as the filter and the rest of the proxy see it.
#[derive(Debug, Clone)]
pub(crate) struct Direction {
    /// The headers as the filter left them (what the next hop gets).
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) headers_received: bool,
    /// Envoy's `request_headers_` pointer is set: the filter may read and modify them.
    pub(crate) headers_available: bool,
    pub(crate) trailers: Option<Vec<(String, String)>>,
    pub(crate) trailers_available: bool,
    /// The body chunk of the current `decodeData` call (Envoy's `request_body_buffer_`).
    pub(crate) chunk: Vec<u8>,
    pub(crate) chunk_available: bool,
    /// Data the filter manager holds back because the filter stopped iteration.
    pub(crate) buffered: Vec<u8>,
    /// The filter returned `StopIterationAndBuffer` last time (Envoy's `buffering_request_body_`):
    /// the next chunk is appended to `buffered` and the filter sees the whole buffer.
    pub(crate) buffering: bool,
    /// Body bytes that went past the filter.
    pub(crate) forwarded_body: Vec<u8>,
    pub(crate) state: StreamState,
    pub(crate) end_stream_received: bool,
    pub(crate) body_bytes_received: u64,
    /// The headers went past the filter.
    pub(crate) headers_forwarded: bool,
    /// The filter stopped all iteration at headers: later data is held for it.
    pub(crate) stopped_all: bool,
    /// ... with `StopAllIterationAndBuffer`: the held data counts against the buffer limit
    /// (with `StopAllIterationAndWatermark` Envoy applies back-pressure instead).
    pub(crate) stopped_all_buffering: bool,
    /// Body data arrived while iteration was stopped at headers.
    pub(crate) held_data: bool,
    /// Trailers arrived while iteration was stopped at headers.
    pub(crate) trailers_pending: bool,
}

impl Direction {
    fn new() -> Self {
        Direction {
            headers: Vec::new(),
            headers_received: false,
            headers_available: false,
            trailers: None,
            trailers_available: false,
            chunk: Vec::new(),
            chunk_available: false,
            buffered: Vec::new(),
            buffering: false,
            forwarded_body: Vec::new(),
            state: StreamState::Idle,
            end_stream_received: false,
            body_bytes_received: 0,
            headers_forwarded: false,
            stopped_all: false,
            stopped_all_buffering: false,
            held_data: false,
            trailers_pending: false,
        }
    }

    /// The body the filter sees through `HTTP_REQUEST_BODY`/`HTTP_RESPONSE_BODY`.
    pub(crate) fn visible_body(&self) -> Option<&Vec<u8>> {
        if self.buffering {
            Some(&self.buffered)
        } else if self.chunk_available {
            Some(&self.chunk)
        } else {
            None
        }
    }

    pub(crate) fn visible_body_mut(&mut self) -> Option<&mut Vec<u8>> {
        if self.buffering {
            Some(&mut self.buffered)
        } else if self.chunk_available {
            Some(&mut self.chunk)
        } else {
            None
        }
    }

    /// Everything the filter has been handed but not yet let through leaves the filter.
    pub(crate) fn release_held_body(&mut self) {
        let chunk = std::mem::take(&mut self.chunk);
        self.buffered.extend_from_slice(&chunk);
        let held = std::mem::take(&mut self.buffered);
        self.forwarded_body.extend_from_slice(&held);
        self.buffering = false;
    }
}

/// Per-stream HTTP state (Envoy's `Context` fields for an HTTP filter).
#[derive(Debug, Clone)]
pub(crate) struct HttpExchange {
    pub(crate) properties: BTreeMap<Vec<String>, PropertyValue>,
    /// Values stored with `proxy_set_property` (Envoy's `wasm.<path>` filter state).
    pub(crate) filter_state: HashMap<Vec<u8>, Vec<u8>>,
    /// Keys of `filter_state` created under a read-only `declare_property`: Envoy refuses to set
    /// them again (`BadArgument`).
    pub(crate) readonly_state: HashSet<Vec<u8>>,
    /// Objects set with the `set_envoy_filter_state` foreign function, by factory name.
    pub(crate) envoy_filter_state: HashMap<Vec<u8>, Vec<u8>>,
    /// Calls of the `clear_route_cache` foreign function (the harness has no routes to clear).
    pub(crate) route_cache_clears: u32,
    pub(crate) request: Direction,
    pub(crate) response: Direction,
    /// Envoy keeps one `end_of_stream_` flag for both directions.
    pub(crate) end_of_stream: bool,
    pub(crate) access_log_phase: bool,
    pub(crate) local_reply: Option<LocalReply>,
    pub(crate) failure_local_reply_sent: bool,
    pub(crate) stream_failed: bool,
    pub(crate) response_code: Option<u32>,
    pub(crate) response_code_details: Option<String>,
    pub(crate) start: Duration,
    pub(crate) request_complete_at: Option<Duration>,
    pub(crate) connection_id: u64,
    pub(crate) finished: bool,
    /// The stream started after its VM failed under `FailOpen`: Envoy does not create the filter
    /// at all, so nothing reaches the module.
    pub(crate) bypass: bool,
    /// The network-filter state when this context is a TCP connection's
    /// ([`crate::TcpConnection`]); `None` for an HTTP stream. Kept beside the HTTP state so that
    /// properties, filter state and foreign functions serve both alike.
    pub(crate) tcp: Option<Box<TcpState>>,
}

/// One direction of a TCP connection through a network filter.
#[derive(Debug, Clone, Default)]
pub(crate) struct TcpDirection {
    /// The connection's buffer the filter was handed (Envoy's `network_*_data_buffer_`): data
    /// the filter held back with `StopIteration`, then what arrived since. Envoy's network
    /// filter manager hands a stopped filter the whole buffer again on the next read.
    pub(crate) buffer: Vec<u8>,
    /// The buffer is reachable through `proxy_get_buffer_bytes`: from the data callback on, until
    /// one returns `Continue` (Envoy only clears the pointer then; after `StopIteration` it
    /// stays set, also in the other side's callbacks).
    pub(crate) available: bool,
    /// Bytes that went past the filter (to the upstream for downstream data, to the client for
    /// upstream data).
    pub(crate) forwarded: Vec<u8>,
    /// End of stream arrived from this side.
    pub(crate) end_received: bool,
    /// End of stream went past the filter.
    pub(crate) end_forwarded: bool,
    /// The filter returned `StopIteration` on this side's last data.
    pub(crate) paused: bool,
}

/// Per-connection state of a network (TCP) filter.
#[derive(Debug, Clone, Default)]
pub(crate) struct TcpState {
    /// Client to upstream (`proxy_on_downstream_data`, `DownstreamData` buffer).
    pub(crate) downstream: TcpDirection,
    /// Upstream to client (`proxy_on_upstream_data`, `UpstreamData` buffer).
    pub(crate) upstream: TcpDirection,
    /// What `proxy_on_new_connection` returned, once it ran.
    pub(crate) new_connection: Option<crate::types::Action>,
    /// The downstream connection closed, and with which peer type.
    pub(crate) closed: Option<u32>,
    /// The filter closed it (`proxy_close_stream`).
    pub(crate) closed_by_filter: bool,
}

impl TcpDirection {
    /// The buffer, as the filter left it, goes past the filter (with the end of stream, if it
    /// arrived).
    pub(crate) fn pass(&mut self) {
        let buffer = std::mem::take(&mut self.buffer);
        self.forwarded.extend_from_slice(&buffer);
        self.available = false;
        self.paused = false;
        if self.end_received {
            self.end_forwarded = true;
        }
    }
}

impl TcpState {
    pub(crate) fn direction_mut(&mut self, downstream: bool) -> &mut TcpDirection {
        if downstream {
            &mut self.downstream
        } else {
            &mut self.upstream
        }
    }
}

impl HttpExchange {
    pub(crate) fn new(start: Duration, connection_id: u64) -> Self {
        HttpExchange {
            properties: BTreeMap::new(),
            filter_state: HashMap::new(),
            readonly_state: HashSet::new(),
            envoy_filter_state: HashMap::new(),
            route_cache_clears: 0,
            request: Direction::new(),
            response: Direction::new(),
            end_of_stream: false,
            access_log_phase: false,
            local_reply: None,
            failure_local_reply_sent: false,
            stream_failed: false,
            response_code: None,
            response_code_details: None,
            start,
            request_complete_at: None,
            connection_id,
            finished: false,
            bypass: false,
            tcp: None,
        }
    }

    pub(crate) fn direction_mut(&mut self, kind: StreamKind) -> &mut Direction {
        match kind {
            StreamKind::Request => &mut self.request,
            StreamKind::Response => &mut self.response,
        }
    }

    pub(crate) fn direction(&self, kind: StreamKind) -> &Direction {
        match kind {
            StreamKind::Request => &self.request,
            StreamKind::Response => &self.response,
        }
    }
}

/// A context known to the VM (root or stream).
#[derive(Debug, Clone)]
pub(crate) struct ContextState {
    pub(crate) parent: u32,
    pub(crate) created_in_vm: bool,
    /// `proxy_on_delete` ran: the context no longer exists for the host.
    pub(crate) deleted: bool,
    pub(crate) http: Option<HttpExchange>,
}

/// Response data of the HTTP callout being delivered (held on the root context, as in Envoy).
#[derive(Debug, Clone)]
pub(crate) struct CalloutResponseData {
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    pub(crate) trailers: Vec<(String, String)>,
}

/// Outstanding gRPC call or stream of this VM.
#[derive(Debug, Clone, Default)]
pub(crate) struct GrpcTokenState {
    pub(crate) local_closed: bool,
    pub(crate) remote_closed: bool,
}

/// Host-side state of one VM: what the hostcalls read and write. Lives inside the wasmtime store.
pub(crate) struct VmState {
    pub(crate) shared: Rc<RefCell<SharedState>>,
    pub(crate) worker: usize,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) memory: Option<Memory>,
    pub(crate) malloc: Option<TypedFunc<u32, u32>>,
    pub(crate) root_context_id: u32,
    pub(crate) next_context_id: u32,
    pub(crate) contexts: BTreeMap<u32, ContextState>,
    pub(crate) current_context: u32,
    pub(crate) effective_context: u32,
    /// Set by `proxy_send_local_response`: Envoy then ignores the status the callback returns.
    pub(crate) stop_iteration: bool,
    pub(crate) deferred: VecDeque<Deferred>,
    /// True while `_initialize`/`_start` run: hostcalls Envoy refuses there trap (see
    /// `hostcalls::guard` and `wasi.rs` for the WASI functions allowed).
    pub(crate) restricted: bool,
    /// The plugin configuration is visible (Envoy's `temp_plugin_` is set).
    pub(crate) plugin_config_visible: bool,
    pub(crate) call_data: Vec<u8>,
    pub(crate) http_call_response: Option<CalloutResponseData>,
    pub(crate) grpc_receive_buffer: Option<Vec<u8>>,
    pub(crate) grpc_initial_metadata: Option<Vec<(String, String)>>,
    pub(crate) grpc_trailing_metadata: Option<Vec<(String, String)>>,
    pub(crate) status: (u32, String),
    pub(crate) next_http_call_id: u32,
    pub(crate) next_grpc_call_id: u32,
    pub(crate) next_grpc_stream_id: u32,
    pub(crate) http_calls: HashSet<u32>,
    pub(crate) grpc_tokens: HashMap<u32, GrpcTokenState>,
    pub(crate) metric_ids: HashMap<u32, (MetricKind, String)>,
    pub(crate) next_counter_id: u32,
    pub(crate) next_gauge_id: u32,
    pub(crate) next_histogram_id: u32,
    pub(crate) tick_period: Duration,
    /// Elapsed virtual time at which the next tick fires.
    pub(crate) next_tick: Option<Duration>,
    pub(crate) pending_done: HashSet<u32>,
    pub(crate) failed: Option<HarnessError>,
    /// Number of log lines before the current callback started (to quote the module's own
    /// explanation of a panic in the trap error).
    pub(crate) log_mark: usize,
    /// Bytes copied between guest and host since the last hostcall charged them to fuel
    /// (see `hostcalls::charge`). A `Cell` because reads only borrow the caller immutably.
    pub(crate) copied_bytes: Cell<u64>,
    /// Callouts (HTTP, gRPC) dispatched by the running callback.
    pub(crate) callouts_this_callback: u32,
    /// [`crate::Limits::max_callouts_per_callback`].
    pub(crate) max_callouts_per_callback: u32,
    /// Set by a hostcall that refused to exceed a [`crate::Limits`] cap, just before it traps,
    /// so that the crash is reported as [`HarnessError::ResourceLimit`].
    pub(crate) resource_exceeded: Option<ResourceExceeded>,
    /// The callback running (for reports).
    pub(crate) callback: &'static str,
    /// Shared-data keys the running callback read (with their CAS tokens): a write of one of
    /// them without a token is a [`crate::race::HazardKind::TokenReadButNotUsed`].
    pub(crate) shared_reads: HashSet<Vec<u8>>,
    /// Properties declared with the `declare_property` foreign function, by the context that
    /// declared them.
    pub(crate) declared_properties: crate::hostcalls::foreign::Declarations,
}

/// A [`crate::Limits`] cap a hostcall refused to exceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResourceExceeded {
    /// What was capped, in words (`"shared data keys"`).
    pub(crate) resource: &'static str,
    /// The cap.
    pub(crate) limit: u64,
}

impl VmState {
    /// Records that a cap was hit and returns the error that traps the module; the trap is then
    /// reported as [`HarnessError::ResourceLimit`].
    pub(crate) fn exceed(&mut self, resource: &'static str, limit: u64) -> wasmtime::Error {
        self.resource_exceeded = Some(ResourceExceeded { resource, limit });
        wasmtime::Error::msg(format!("harness limit on {resource} ({limit}) exceeded"))
    }
}

impl VmState {
    /// The context hostcalls act on: the effective context if one was set and still exists,
    /// else the context of the running callback (`contextOrEffectiveContext`).
    pub(crate) fn active_context(&self) -> u32 {
        if self.effective_context != 0 {
            if let Some(ctx) = self.contexts.get(&self.effective_context) {
                if !ctx.deleted {
                    return self.effective_context;
                }
            }
        }
        self.current_context
    }

    pub(crate) fn exchange(&self, context: u32) -> Option<&HttpExchange> {
        self.contexts.get(&context).and_then(|c| c.http.as_ref())
    }

    pub(crate) fn exchange_mut(&mut self, context: u32) -> Option<&mut HttpExchange> {
        self.contexts
            .get_mut(&context)
            .and_then(|c| c.http.as_mut())
    }

    pub(crate) fn is_root(&self, context: u32) -> bool {
        self.contexts.get(&context).is_some_and(|c| c.parent == 0)
    }

    pub(crate) fn log(&self, level: LogLevel, message: String) {
        if let Ok(mut shared) = self.shared.try_borrow_mut() {
            shared.log(level, message, self.worker);
        }
    }
}

type F<P, R> = Option<TypedFunc<P, R>>;

/// The callbacks a module may export. Absent callbacks are skipped, as in Envoy.
#[derive(Clone, Default)]
pub(crate) struct Exports {
    pub(crate) initialize: F<(), ()>,
    pub(crate) main: F<(u32, u32), u32>,
    pub(crate) start: F<(), ()>,
    pub(crate) on_context_create: F<(u32, u32), ()>,
    pub(crate) on_vm_start: F<(u32, u32), u32>,
    pub(crate) on_configure: F<(u32, u32), u32>,
    pub(crate) on_tick: F<u32, ()>,
    pub(crate) on_request_headers: F<(u32, u32, u32), u32>,
    pub(crate) on_request_body: F<(u32, u32, u32), u32>,
    pub(crate) on_request_trailers: F<(u32, u32), u32>,
    pub(crate) on_response_headers: F<(u32, u32, u32), u32>,
    pub(crate) on_response_body: F<(u32, u32, u32), u32>,
    pub(crate) on_response_trailers: F<(u32, u32), u32>,
    pub(crate) on_http_call_response: F<(u32, u32, u32, u32, u32), ()>,
    pub(crate) on_grpc_receive_initial_metadata: F<(u32, u32, u32), ()>,
    pub(crate) on_grpc_receive: F<(u32, u32, u32), ()>,
    pub(crate) on_grpc_receive_trailing_metadata: F<(u32, u32, u32), ()>,
    pub(crate) on_grpc_close: F<(u32, u32, u32), ()>,
    pub(crate) on_queue_ready: F<(u32, u32), ()>,
    pub(crate) on_foreign_function: F<(u32, u32, u32), ()>,
    pub(crate) on_new_connection: F<u32, u32>,
    pub(crate) on_downstream_data: F<(u32, u32, u32), u32>,
    pub(crate) on_upstream_data: F<(u32, u32, u32), u32>,
    pub(crate) on_downstream_connection_close: F<(u32, u32), ()>,
    pub(crate) on_upstream_connection_close: F<(u32, u32), ()>,
    pub(crate) on_done: F<u32, u32>,
    pub(crate) on_log: F<u32, ()>,
    pub(crate) on_delete: F<u32, ()>,
}

/// Static settings a VM is created with.
#[derive(Debug, Clone)]
pub(crate) struct VmSettings {
    pub(crate) worker: usize,
    pub(crate) max_memory_bytes: u64,
    pub(crate) fuel_per_callback: Option<u64>,
    pub(crate) max_callouts_per_callback: u32,
}

/// A live VM.
pub(crate) struct Vm {
    pub(crate) store: Store<VmState>,
    pub(crate) exports: Exports,
    pub(crate) fuel_per_callback: Option<u64>,
    /// Bumped on every reload so streams started on a previous VM are recognised.
    pub(crate) generation: u64,
    /// A singleton service's own settings (vm_id, root_id, configuration), put in place of the
    /// host's for each of its callbacks: the service shares the host's shared data, queues,
    /// clock and logs, as Envoy's process-wide stores are, but is configured apart.
    pub(crate) own_settings: Option<crate::shared::Settings>,
}

impl Vm {
    /// Instantiates the module. Does not run any code of the module except its start section.
    pub(crate) fn instantiate(
        compiled: &CompiledModule,
        shared: Rc<RefCell<SharedState>>,
        settings: &VmSettings,
        generation: u64,
    ) -> Result<Vm, HarnessError> {
        let engine = compiled.module.engine();
        let state = VmState {
            shared,
            worker: settings.worker,
            limiter: MemoryLimiter {
                max_bytes: settings.max_memory_bytes,
                denied_request: None,
            },
            memory: None,
            malloc: None,
            root_context_id: 0,
            next_context_id: 1, // 0 is Envoy's VM context; the root context gets 1.
            contexts: BTreeMap::new(),
            current_context: 0,
            effective_context: 0,
            stop_iteration: false,
            deferred: VecDeque::new(),
            restricted: false,
            plugin_config_visible: false,
            call_data: Vec::new(),
            http_call_response: None,
            grpc_receive_buffer: None,
            grpc_initial_metadata: None,
            grpc_trailing_metadata: None,
            status: (0, String::new()),
            // proxy-wasm-cpp-host numbers callouts by type in the low two bits (HTTP 0,
            // gRPC call 1, gRPC stream 2) and increments by 4 before use: 4, 8, ... / 5, 9, ...
            next_http_call_id: 0,
            next_grpc_call_id: 1,
            next_grpc_stream_id: 2,
            http_calls: HashSet::new(),
            grpc_tokens: HashMap::new(),
            metric_ids: HashMap::new(),
            // Same scheme for metrics: counters 4, 8, ...; gauges 5, 9, ...; histograms 6, 10, ...
            next_counter_id: 0,
            next_gauge_id: 1,
            next_histogram_id: 2,
            tick_period: Duration::ZERO,
            next_tick: None,
            pending_done: HashSet::new(),
            failed: None,
            log_mark: 0,
            copied_bytes: Cell::new(0),
            callouts_this_callback: 0,
            max_callouts_per_callback: settings.max_callouts_per_callback,
            resource_exceeded: None,
            callback: "",
            shared_reads: HashSet::new(),
            declared_properties: Default::default(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limiter);
        set_fuel(&mut store, settings.fuel_per_callback)?;
        let instance: Instance = compiled
            .instance_pre
            .instantiate(&mut store)
            .map_err(|e| classify_error(e, "instantiate", &store, settings.fuel_per_callback))?;
        let memory = instance.get_memory(&mut store, "memory").ok_or_else(|| {
            HarnessError::Abi("the module exports no memory named `memory`".into())
        })?;
        // Envoy prefers `malloc` and falls back to `proxy_on_memory_allocate`.
        let malloc = match typed::<u32, u32>(&instance, &mut store, "malloc")? {
            Some(f) => Some(f),
            None => typed::<u32, u32>(&instance, &mut store, "proxy_on_memory_allocate")?,
        };
        if malloc.is_none() {
            return Err(HarnessError::Abi(
                "Wasm module is missing malloc function.".into(),
            ));
        }
        store.data_mut().memory = Some(memory);
        store.data_mut().malloc = malloc;
        let exports = Exports {
            initialize: typed(&instance, &mut store, "_initialize")?,
            main: typed(&instance, &mut store, "main")?,
            start: typed(&instance, &mut store, "_start")?,
            on_context_create: typed(&instance, &mut store, "proxy_on_context_create")?,
            on_vm_start: typed(&instance, &mut store, "proxy_on_vm_start")?,
            on_configure: typed(&instance, &mut store, "proxy_on_configure")?,
            on_tick: typed(&instance, &mut store, "proxy_on_tick")?,
            on_request_headers: typed(&instance, &mut store, "proxy_on_request_headers")?,
            on_request_body: typed(&instance, &mut store, "proxy_on_request_body")?,
            on_request_trailers: typed(&instance, &mut store, "proxy_on_request_trailers")?,
            on_response_headers: typed(&instance, &mut store, "proxy_on_response_headers")?,
            on_response_body: typed(&instance, &mut store, "proxy_on_response_body")?,
            on_response_trailers: typed(&instance, &mut store, "proxy_on_response_trailers")?,
            on_http_call_response: typed(&instance, &mut store, "proxy_on_http_call_response")?,
            on_grpc_receive_initial_metadata: typed(
                &instance,
                &mut store,
                "proxy_on_grpc_receive_initial_metadata",
            )?,
            on_grpc_receive: typed(&instance, &mut store, "proxy_on_grpc_receive")?,
            on_grpc_receive_trailing_metadata: typed(
                &instance,
                &mut store,
                "proxy_on_grpc_receive_trailing_metadata",
            )?,
            on_grpc_close: typed(&instance, &mut store, "proxy_on_grpc_close")?,
            on_queue_ready: typed(&instance, &mut store, "proxy_on_queue_ready")?,
            on_foreign_function: typed(&instance, &mut store, "proxy_on_foreign_function")?,
            on_new_connection: typed(&instance, &mut store, "proxy_on_new_connection")?,
            on_downstream_data: typed(&instance, &mut store, "proxy_on_downstream_data")?,
            on_upstream_data: typed(&instance, &mut store, "proxy_on_upstream_data")?,
            on_downstream_connection_close: typed(
                &instance,
                &mut store,
                "proxy_on_downstream_connection_close",
            )?,
            on_upstream_connection_close: typed(
                &instance,
                &mut store,
                "proxy_on_upstream_connection_close",
            )?,
            on_done: typed(&instance, &mut store, "proxy_on_done")?,
            on_log: typed(&instance, &mut store, "proxy_on_log")?,
            on_delete: typed(&instance, &mut store, "proxy_on_delete")?,
        };
        Ok(Vm {
            store,
            exports,
            fuel_per_callback: settings.fuel_per_callback,
            generation,
            own_settings: None,
        })
    }

    /// Exchanges [`Self::own_settings`] with the host's, before and after a callback (a no-op
    /// for a plugin's VMs, which run with the host's).
    fn swap_settings(&mut self) {
        if let Some(own) = self.own_settings.as_mut() {
            if let Ok(mut shared) = self.store.data().shared.try_borrow_mut() {
                std::mem::swap(&mut shared.settings, own);
            }
        }
    }

    pub(crate) fn state(&self) -> &VmState {
        self.store.data()
    }

    pub(crate) fn state_mut(&mut self) -> &mut VmState {
        self.store.data_mut()
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.store.data().failed.is_some()
    }

    /// Calls `func` as callback `callback` on behalf of `context`, with a fresh fuel budget.
    /// A crash marks the VM failed and is returned as a typed error.
    pub(crate) fn invoke<P: WasmParams, R: WasmResults>(
        &mut self,
        callback: &'static str,
        func: TypedFunc<P, R>,
        context: u32,
        params: P,
    ) -> Result<R, HarnessError> {
        if let Some(failure) = &self.store.data().failed {
            return Err(HarnessError::VmFailed {
                worker: self.store.data().worker,
                reason: failure.to_string(),
            });
        }
        set_fuel(&mut self.store, self.fuel_per_callback)?;
        let log_mark = self
            .store
            .data()
            .shared
            .try_borrow()
            .map(|s| s.logs.len())
            .unwrap_or(0);
        let state = self.store.data_mut();
        let saved = (state.current_context, state.effective_context);
        state.current_context = context;
        state.effective_context = 0;
        state.limiter.denied_request = None;
        state.resource_exceeded = None;
        state.callouts_this_callback = 0;
        state.copied_bytes.set(0);
        state.log_mark = log_mark;
        state.callback = callback;
        state.shared_reads.clear();
        self.swap_settings();
        let result = func.call(&mut self.store, params);
        self.swap_settings();
        let budget = self.fuel_per_callback.unwrap_or(u64::MAX);
        let used = budget.saturating_sub(self.store.get_fuel().unwrap_or(0));
        if let Ok(mut shared) = self.store.data().shared.try_borrow_mut() {
            shared.fuel_spent = shared.fuel_spent.saturating_add(used);
        }
        let state = self.store.data_mut();
        state.current_context = saved.0;
        state.effective_context = saved.1;
        match result {
            Ok(value) => Ok(value),
            Err(error) => {
                let error = classify_error(error, callback, &self.store, self.fuel_per_callback);
                self.store.data_mut().failed = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Size of the linear memory in bytes.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.store
            .data()
            .memory
            .map(|m| m.data_size(&self.store))
            .unwrap_or(0)
    }
}

fn set_fuel(store: &mut Store<VmState>, fuel: Option<u64>) -> Result<(), HarnessError> {
    store
        .set_fuel(fuel.unwrap_or(u64::MAX))
        .map_err(|e| HarnessError::Load(format!("cannot set fuel: {e:#}")))
}

fn typed<P: WasmParams, R: WasmResults>(
    instance: &Instance,
    store: &mut Store<VmState>,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, HarnessError> {
    let Some(func) = instance.get_func(&mut *store, name) else {
        return Ok(None);
    };
    func.typed::<P, R>(&*store)
        .map(Some)
        .map_err(|_| HarnessError::Abi(format!("Bad function signature for: {name}")))
}

/// Turns a wasmtime error into the harness error that explains it best.
fn classify_error(
    error: wasmtime::Error,
    callback: &str,
    store: &Store<VmState>,
    fuel: Option<u64>,
) -> HarnessError {
    let backtrace = error
        .downcast_ref::<WasmBacktrace>()
        .map(render_backtrace)
        .unwrap_or_default();
    let state = store.data();
    if let Some(exceeded) = &state.resource_exceeded {
        return HarnessError::ResourceLimit {
            callback: callback.to_string(),
            resource: exceeded.resource.to_string(),
            limit: exceeded.limit,
            backtrace,
        };
    }
    if let Some(requested) = state.limiter.denied_request {
        return HarnessError::MemoryLimit {
            callback: callback.to_string(),
            requested_bytes: requested,
            limit_bytes: state.limiter.max_bytes,
            backtrace,
        };
    }
    let trap = error.downcast_ref::<Trap>().copied();
    if trap == Some(Trap::OutOfFuel) {
        return HarnessError::FuelExhausted {
            callback: callback.to_string(),
            fuel: fuel.unwrap_or(u64::MAX),
            backtrace,
        };
    }
    let mut message = match trap {
        Some(trap) => trap.to_string(),
        None => format!("{error:#}"),
    };
    // A Rust panic reaches the host as `unreachable`; the SDK logged the panic message first.
    if let Ok(shared) = state.shared.try_borrow() {
        let explanation = shared
            .logs
            .iter()
            .skip(state.log_mark)
            .rev()
            .find(|l| l.worker == state.worker && l.level >= LogLevel::Error);
        if let Some(line) = explanation {
            message = format!("{message} (module logged: {})", line.message);
        }
    }
    HarnessError::Trap {
        callback: callback.to_string(),
        message,
        backtrace,
    }
}

/// One line per wasm frame, innermost first, with demangled names (wasmtime's rendering).
fn render_backtrace(backtrace: &WasmBacktrace) -> Vec<String> {
    let rendered = backtrace.to_string();
    let mut frames: Vec<String> = Vec::new();
    for line in rendered.lines().skip(1) {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("note:") {
            continue;
        }
        let starts_frame = trimmed.split_once(':').is_some_and(|(index, _)| {
            !index.is_empty() && index.chars().all(|c| c.is_ascii_digit())
        });
        if starts_frame {
            let body = trimmed
                .split_once(':')
                .map(|(_, rest)| rest.trim())
                .unwrap_or(trimmed);
            // Drop the module offset ("0x1a2b - ") and keep the function name.
            let name = body.split_once(" - ").map(|(_, n)| n).unwrap_or(body);
            frames.push(name.to_string());
        } else if let Some(last) = frames.last_mut() {
            last.push(' ');
            last.push_str(trimmed);
        }
    }
    if frames.is_empty() {
        frames = backtrace
            .frames()
            .iter()
            .map(|f| {
                f.func_name()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("<wasm function {}>", f.func_index()))
            })
            .collect();
    }
    frames
}
