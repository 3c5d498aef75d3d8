//! Small public value types shared by the harness API.

use std::time::Duration;

/// Log level (`proxy_log_level_t`); numeric values are the ABI's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// 0
    Trace = 0,
    /// 1
    Debug = 1,
    /// 2
    Info = 2,
    /// 3
    Warn = 3,
    /// 4
    Error = 4,
    /// 5
    Critical = 5,
}

impl LogLevel {
    /// The level for an ABI value, if valid.
    pub fn from_code(code: u32) -> Option<LogLevel> {
        Some(match code {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// One line logged by a module (`proxy_log`, or stdout/stderr through WASI `fd_write`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The level it was logged at (stdout is `Info`, stderr is `Error`, as in Envoy).
    pub level: LogLevel,
    /// The message, without Envoy's `wasm log <plugin>:` prefix.
    pub message: String,
    /// The worker (VM) that logged it: a worker's number, or the slot of a VM on Envoy's main
    /// thread (a singleton service's, [`crate::Service::worker`]; the plugin's main-thread VMs',
    /// [`crate::MainThread::worker`]), past the workers.
    pub worker: usize,
    /// Whether a VM on Envoy's main thread logged it (a singleton service, or one of the VMs
    /// Envoy runs there beside an HTTP plugin's workers: [`crate::PluginBuilder::main_thread_vms`])
    /// rather than a worker's VM.
    pub main_thread: bool,
}

/// What Envoy does with requests once a VM has crashed
/// (`envoy.extensions.wasm.v3.PluginConfig.failure_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// `FAIL_CLOSED` (Envoy's default): the failing request and every later request of that VM get
    /// a 503 local reply with details `wasm_fail_stream`.
    #[default]
    FailClosed,
    /// `FAIL_OPEN`: requests that start after the crash pass through as if the filter were
    /// absent. The request that was being processed when the VM crashed (and any other request
    /// already in flight on it) still gets the 503, as in Envoy.
    FailOpen,
    /// `FAIL_RELOAD`: the failing request gets the 503 of `FAIL_CLOSED`; the next request on that
    /// worker recreates the VM once [`Limits::reload_backoff`] has passed since the VM was loaded
    /// (like Envoy's `reload_config.backoff`); until then requests get the 503.
    FailReload,
}

/// Resource limits applied to every VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Cap on each VM's linear memory. Default 64 MiB: four times what a typical Rust filter
    /// uses at peak, and small enough that a leak or a memory bomb is caught in a test run.
    pub max_memory_bytes: u64,
    /// Fuel (roughly, wasm instructions) allowed per callback; `None` means unlimited. Default
    /// 1e9: a few hundred milliseconds of straight-line code, orders of magnitude above what a
    /// filter callback needs, and deterministic unlike a wall-clock timeout. Host work is
    /// charged too: 1,000 units per hostcall plus one per byte copied between the module and
    /// the host, so a loop of hostcalls is interrupted like any other runaway loop.
    pub fuel_per_callback: Option<u64>,
    /// Minimum virtual time between two loads of a worker's VM under
    /// [`FailurePolicy::FailReload`] (Envoy's default base interval is 1s). As in Envoy, it also
    /// runs from the first load: a VM that crashes less than this after the plugin started is
    /// reloaded only once the clock has passed it.
    pub reload_backoff: Duration,
    /// Cap on the number of shared-data keys the plugin's modules may create (all VM ids
    /// together). Default 100,000: a hundred times what a filter keeping per-descriptor state
    /// needs. Envoy has no cap; here a module that stores a key per request (a leak) or floods
    /// shared data fails with [`crate::HarnessError::ResourceLimit`] instead of exhausting the
    /// memory of the test process. Writes made by the test ([`crate::Plugin::set_shared_data`])
    /// are not capped.
    pub max_shared_data_keys: usize,
    /// Cap on the bytes the host holds for the plugin's modules in shared data (keys and values)
    /// and shared queues (items not yet dequeued). Default 64 MiB, like the memory cap.
    pub max_shared_bytes: u64,
    /// Cap on the items waiting in all shared queues. Default 100,000.
    pub max_queued_items: usize,
    /// Cap on the callouts (HTTP calls, gRPC calls and streams) one callback may dispatch.
    /// Default 1,000. Every callout is recorded and scheduled; a module dispatching millions
    /// of them in one callback would otherwise stall the event loop.
    pub max_callouts_per_callback: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory_bytes: 64 * 1024 * 1024,
            fuel_per_callback: Some(1_000_000_000),
            reload_backoff: Duration::from_secs(1),
            max_shared_data_keys: 100_000,
            max_shared_bytes: 64 * 1024 * 1024,
            max_queued_items: 100_000,
            max_callouts_per_callback: 1_000,
        }
    }
}

/// The value of a metric as the stats store holds it. Counters and gauges with the same name are
/// shared by every worker (Envoy's stats store is process-wide), so their values are sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricValue {
    /// A counter.
    Counter(u64),
    /// A gauge.
    Gauge(u64),
    /// A histogram: every recorded value, in recording order.
    Histogram(Vec<u64>),
}

impl MetricValue {
    /// The counter or gauge value; `None` for histograms.
    pub fn value(&self) -> Option<u64> {
        match self {
            MetricValue::Counter(v) | MetricValue::Gauge(v) => Some(*v),
            MetricValue::Histogram(_) => None,
        }
    }
}

/// What a filter callback returned, decoded for the callback kind.
///
/// Raw value `1` is [`Action::Pause`] for every callback (the SDKs' `Action::Pause`); the other
/// values keep Envoy's names for the headers and body statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// 0: continue iteration.
    Continue,
    /// 1: headers/trailers `StopIteration`, body `StopIterationAndBuffer`.
    Pause,
    /// Headers 2: `ContinueAndEndStream` (Envoy treats it as `Continue`).
    ContinueAndEndStream,
    /// Headers 3: `StopAllIterationAndBuffer`.
    StopAllIterationAndBuffer,
    /// Headers 4 (or any larger value): `StopAllIterationAndWatermark`.
    StopAllIterationAndWatermark,
    /// Body 2: `StopIterationAndWatermark`.
    StopIterationAndWatermark,
    /// Body 3 (or any larger value): `StopIterationNoBuffer`.
    StopIterationNoBuffer,
}

impl Action {
    /// Whether this status stops the filter chain.
    pub fn stops_iteration(self) -> bool {
        !matches!(self, Action::Continue | Action::ContinueAndEndStream)
    }
}

/// Where one direction (request or response) of an HTTP stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamState {
    /// Nothing was sent in this direction yet.
    Idle,
    /// The filter let everything received so far through.
    Continued,
    /// The filter stopped iteration and has not resumed it.
    Paused,
    /// A local reply ended the stream (sent by the filter, or by Envoy on VM failure).
    Replied,
    /// The stream was reset (`proxy_close_stream`, or the client went away).
    Reset,
}

/// A response generated by the proxy instead of the upstream (`proxy_send_local_response`, or
/// Envoy's 503 when a VM fails).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status code.
    pub status: u32,
    /// Response headers as the client receives them (`:status` first, then the module's
    /// additional headers, `content-length`/`content-type` when there is a body; gRPC replies get
    /// `grpc-status`/`grpc-message`), after the filter's own `on_http_response_headers` ran on them.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Vec<u8>,
    /// Response code details (Envoy replaces whitespace with `_`).
    pub details: String,
    /// The gRPC status the module asked for, when it is a known code (Envoy ignores others).
    pub grpc_status: Option<i32>,
}

/// The result of feeding one piece of an HTTP exchange to the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What the module's callback returned (decoded). When the callback was not invoked (failed
    /// VM, stream already ended) this is the status Envoy used instead.
    pub action: Action,
    /// The status Envoy acts on after its conversions (a local reply or `StopIteration` from
    /// headers become `StopAllIterationAndWatermark`, `ContinueAndEndStream` becomes `Continue`).
    pub effective_action: Action,
    /// The local reply of the stream, if one was sent by now.
    pub local_reply: Option<LocalReply>,
    /// Whether the module callback actually ran.
    pub invoked: bool,
}

impl Outcome {
    /// The action the module returned.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The local reply, if the stream was answered locally.
    pub fn local_reply(&self) -> Option<&LocalReply> {
        self.local_reply.as_ref()
    }

    /// Whether Envoy stops the filter chain after this callback.
    pub fn stopped(&self) -> bool {
        self.effective_action.stops_iteration()
    }
}
