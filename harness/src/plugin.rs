//! Loading a module, configuring a plugin, and driving its VMs: start-up, the asynchronous event
//! loop (callout responses, queue notifications), the virtual clock (ticks and timeouts) and
//! Envoy's failure policy.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use crate::callouts::{CalloutReply, CalloutStatus, GrpcCallout, GrpcReply, HttpCallout};
use crate::clock::VirtualClock;
use crate::engine::{self, AbiVersion, CacheStats, CompiledModule};
use crate::error::{HarnessError, Status};
use crate::property::PropertyValue;
use crate::race::{Race, SharedDataHazard};
use crate::shared::{Event, ForeignFn, HostCaps, Settings, SharedState};
use crate::stream::HttpStream;
use crate::tcp::TcpConnection;
use crate::types::{FailurePolicy, Limits, LogEntry, LogLevel, MetricValue};
use crate::vm::{CalloutResponseData, ContextState, Vm, VmSettings};

/// Entry point: loads a module.
pub struct Harness;

impl Harness {
    /// Loads a `.wasm` (or `.wat`) file.
    pub fn load(path: impl AsRef<Path>) -> Result<PluginBuilder, HarnessError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| HarnessError::Load(format!("cannot read {}: {e}", path.display())))?;
        Self::from_bytes(&bytes)
    }

    /// Loads a module from its binary or text (WAT) form. Compiled modules are cached per
    /// content hash for the life of the process.
    pub fn from_bytes(wasm_or_wat: &[u8]) -> Result<PluginBuilder, HarnessError> {
        let (compiled, from_cache) = engine::load(wasm_or_wat)?;
        Ok(PluginBuilder::new(compiled, from_cache))
    }

    /// Statistics of the process-wide module cache.
    pub fn cache_stats() -> CacheStats {
        engine::cache_stats()
    }
}

type HttpHandler = Box<dyn FnMut(&HttpCallout) -> CalloutReply>;
type GrpcHandler = Box<dyn FnMut(&GrpcCallout) -> GrpcReply>;

/// Configures a plugin before starting it. Every setter consumes and returns the builder.
pub struct PluginBuilder {
    compiled: CompiledModule,
    from_cache: bool,
    settings: Settings,
    workers: usize,
    failure_policy: FailurePolicy,
    limits: Limits,
    foreign_functions: HashMap<String, Rc<ForeignFn>>,
    http_handler: Option<HttpHandler>,
    grpc_handler: Option<GrpcHandler>,
    random_seed: u64,
    allow_on_headers_stop_iteration: bool,
    buffer_limit: usize,
    start_time: Option<SystemTime>,
    service: Option<ServiceSpec>,
    main_thread_vms: bool,
}

/// What a singleton service runs: its module and its own settings.
#[derive(Clone)]
pub(crate) struct ServiceSpec {
    compiled: CompiledModule,
    settings: Settings,
}

impl PluginBuilder {
    fn new(compiled: CompiledModule, from_cache: bool) -> Self {
        PluginBuilder {
            compiled,
            from_cache,
            settings: Settings {
                vm_id: String::new(),
                root_id: String::new(),
                plugin_name: String::new(),
                log_level: LogLevel::Info,
                plugin_config: Vec::new(),
                vm_config: Vec::new(),
                envs: Vec::new(),
                clusters: None,
                properties: BTreeMap::new(),
            },
            workers: 1,
            failure_policy: FailurePolicy::default(),
            limits: Limits::default(),
            foreign_functions: HashMap::new(),
            http_handler: None,
            grpc_handler: None,
            random_seed: 0x5eed,
            allow_on_headers_stop_iteration: false,
            buffer_limit: DEFAULT_BUFFER_LIMIT,
            start_time: None,
            service: None,
            main_thread_vms: DEFAULT_MAIN_THREAD_VMS,
        }
    }

    /// Whether the module came from the in-process compile cache.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// The ABI version the module advertises.
    pub fn abi_version(&self) -> AbiVersion {
        self.compiled.abi
    }

    /// SHA-256 of the module bytes (the compile-cache key).
    pub fn module_sha256(&self) -> [u8; 32] {
        self.compiled.sha256
    }

    /// Plugin configuration (`PLUGIN_CONFIGURATION` buffer, read in `proxy_on_configure`).
    pub fn config(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.settings.plugin_config = bytes.into();
        self
    }

    /// VM configuration (`VM_CONFIGURATION` buffer, read in `proxy_on_vm_start`).
    pub fn vm_config(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.settings.vm_config = bytes.into();
        self
    }

    /// Root id (`plugin_root_id` property).
    pub fn root_id(mut self, root_id: &str) -> Self {
        self.settings.root_id = root_id.to_string();
        self
    }

    /// Plugin name (`plugin_name` property).
    pub fn plugin_name(mut self, name: &str) -> Self {
        self.settings.plugin_name = name.to_string();
        self
    }

    /// VM id (`plugin_vm_id`; also scopes shared data and queues).
    pub fn vm_id(mut self, vm_id: &str) -> Self {
        self.settings.vm_id = vm_id.to_string();
        self
    }

    /// Number of worker VMs (Envoy runs one per worker thread). Default 1; at least 1.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// What happens to requests when a VM crashes.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Memory, fuel and reload limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The host log level: `proxy_get_log_level` returns it and lower-level lines are dropped,
    /// as Envoy's logger does. Default `Info`.
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.settings.log_level = level;
        self
    }

    /// A plugin-wide property (e.g. `["xds", "node", "id"]`, `["xds", "cluster_name"]`),
    /// visible from every context (Envoy serves only `plugin_*` and `xds.node` to root contexts). Stream values set with [`HttpStream::property`] win.
    pub fn property(mut self, path: &[&str], value: impl Into<PropertyValue>) -> Self {
        self.settings
            .properties
            .insert(path.iter().map(|s| s.to_string()).collect(), value.into());
        self
    }

    /// An environment variable visible through WASI `environ_get` (Envoy's
    /// `vm_config.environment_variables`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.settings
            .envs
            .push((key.to_string(), value.to_string()));
        self
    }

    /// Declares a cluster. Once at least one is declared, `proxy_http_call` to any other
    /// cluster fails with `BadArgument` (and `proxy_grpc_call`/`proxy_grpc_stream` with
    /// `ParseFailure` for a cluster name, `InternalFailure` for a serialized `GrpcService`, whose
    /// used-up token `proxy_on_grpc_close` closes afterwards), as in Envoy 1.40; with none
    /// declared every name is accepted.
    pub fn cluster(mut self, name: &str) -> Self {
        self.settings
            .clusters
            .get_or_insert_with(BTreeSet::new)
            .insert(name.to_string());
        self
    }

    /// Seed of the deterministic `random_get`.
    pub fn random_seed(mut self, seed: u64) -> Self {
        self.random_seed = seed;
        self
    }

    /// Starts the virtual clock at `start` instead of the wall-clock time of [`Self::start`].
    /// Pin it when an expectation depends on the date (a golden timestamp, a token valid only
    /// at that time); [`crate::pinned_start`] is the conventional instant.
    pub fn start_time(mut self, start: SystemTime) -> Self {
        self.start_time = Some(start);
        self
    }

    /// Envoy's `PluginConfig.allow_on_headers_stop_iteration`: when set, `Pause` from a
    /// headers callback is a plain `StopIteration` (the filter keeps receiving body chunks
    /// while the proxy holds the headers) instead of stopping all iteration. Default `false`,
    /// as in Envoy.
    pub fn allow_on_headers_stop_iteration(mut self, allow: bool) -> Self {
        self.allow_on_headers_stop_iteration = allow;
        self
    }

    /// The most body data the proxy holds for a filter that buffers it (`StopIterationAndBuffer`
    /// from a body callback, `StopAllIterationAndBuffer` from a headers callback): Envoy's
    /// listener `per_connection_buffer_limit_bytes`, 1 MiB by default. Beyond it a request gets
    /// `413 Payload Too Large` (details `request_payload_too_large`) and a response
    /// `500 Internal Server Error` (`response_payload_too_large`), or a reset once the response
    /// headers went downstream. Watermarked buffers (`StopIterationAndWatermark`,
    /// `StopAllIterationAndWatermark`) only slow the sender down in Envoy and have no limit here.
    pub fn buffer_limit(mut self, bytes: usize) -> Self {
        self.buffer_limit = bytes;
        self
    }

    /// Registers a foreign function callable with `proxy_call_foreign_function`. It replaces
    /// Envoy's built-in of the same name (`compress`, `uncompress`, `declare_property`,
    /// `set_envoy_filter_state`, `clear_route_cache`, `expr_*`, `sign`, `verify_signature`),
    /// e.g. to answer `expr_create` or `sign`, which the harness does not emulate.
    pub fn foreign_function(
        mut self,
        name: &str,
        function: impl Fn(&[u8]) -> Result<Vec<u8>, Status> + 'static,
    ) -> Self {
        self.foreign_functions
            .insert(name.to_string(), Rc::new(function));
        self
    }

    /// Answers every HTTP callout automatically, right after the callback that dispatched it
    /// returns (never re-entrantly). Return [`CalloutReply::Timeout`] to leave it pending.
    /// The handler must not call back into the [`Plugin`].
    pub fn http_callout_handler(
        mut self,
        handler: impl FnMut(&HttpCallout) -> CalloutReply + 'static,
    ) -> Self {
        self.http_handler = Some(Box::new(handler));
        self
    }

    /// Answers every unary gRPC call automatically (see [`Self::http_callout_handler`]).
    pub fn grpc_callout_handler(
        mut self,
        handler: impl FnMut(&GrpcCallout) -> GrpcReply + 'static,
    ) -> Self {
        self.grpc_handler = Some(Box::new(handler));
        self
    }

    /// Whether to run the VMs Envoy 1.40 runs on its main thread beside an HTTP plugin's worker
    /// VMs (measured: `tests/main_thread_vs_envoy.rs`). Envoy loads the plugin on its main
    /// thread first: a base VM that only runs `_initialize` (the module's start function), a
    /// canary VM that runs the start sequence (`_initialize`, `proxy_on_context_create`,
    /// `proxy_on_vm_start`, `proxy_on_configure`) and is dropped without `proxy_on_done` (its
    /// ticks never fire), then the main thread's own VM, which runs the start sequence and
    /// stays: its ticks fire, it answers its callouts and, when it registered a shared queue
    /// last, gets the queue's notifications, but it never sees a request or a connection. Then
    /// each worker's VM starts. So with one worker the module's start-up runs three times and
    /// two VMs tick; what those VMs log, register, write to shared data and count in metrics
    /// counts as in Envoy. Their log lines carry [`LogEntry::main_thread`] and the main-thread
    /// slot ([`MainThread::worker`], past the workers and the service); reach them with
    /// [`Plugin::main_thread`].
    ///
    /// Default `true`, as in Envoy. `false` runs the worker VMs alone (one start-up per
    /// worker), e.g. for a test that counts a worker's start-up lines in [`Plugin::logs`].
    pub fn main_thread_vms(mut self, run: bool) -> Self {
        self.main_thread_vms = run;
        self
    }

    /// Runs `service` as a singleton service beside this plugin, as Envoy runs a bootstrap
    /// extension `envoy.bootstrap.wasm` with `singleton: true`: one more VM (Envoy's main
    /// thread) whose root context gets `proxy_on_vm_start`, `proxy_on_configure`, ticks,
    /// callout answers and `proxy_on_queue_ready`, but no streams. It shares this plugin's
    /// shared data and queues (both keyed by vm_id, so a worker reaches the service's queue by
    /// resolving it under the service's vm_id), clock, logs, stats and limits; from `service`
    /// it takes its module, vm_id, root_id, plugin name, configurations, environment and
    /// properties (the log level, clusters, handlers and limits are this plugin's, the host's).
    /// It starts after the plugin's main-thread VMs ([`Self::main_thread_vms`]) and before its
    /// workers, as in Envoy 1.40. Reach it with [`Plugin::service`].
    pub fn service(mut self, service: PluginBuilder) -> Self {
        let mut settings = service.settings;
        settings.log_level = self.settings.log_level;
        settings.clusters = self.settings.clusters.clone();
        self.service = Some(ServiceSpec {
            compiled: service.compiled,
            settings,
        });
        self
    }

    /// Starts this module as a singleton service alone, without an HTTP plugin (see
    /// [`Self::service`]): a bootstrap extension whose module only serves queues and ticks.
    pub fn start_service(mut self) -> Result<Service, HarnessError> {
        self.service = Some(ServiceSpec {
            compiled: self.compiled.clone(),
            settings: self.settings.clone(),
        });
        let plugin = self.start_host(0)?;
        plugin
            .service()
            .ok_or_else(|| HarnessError::InvalidUse("the service did not start".into()))
    }

    /// Instantiates the VMs and runs `_initialize`, `proxy_on_context_create`,
    /// `proxy_on_vm_start` and `proxy_on_configure` on each, then delivers any callout
    /// answered by the mock handlers.
    pub fn start(self) -> Result<Plugin, HarnessError> {
        let workers = self.workers;
        self.start_host(workers)
    }

    /// Starts `workers` worker VMs, after the service if there is one (its VM is the slot after
    /// the workers, so stream round-robin never reaches it) and the plugin's main-thread VMs if
    /// it runs them (the slot after that). With no worker there is no HTTP plugin, so no
    /// main-thread VM of its own either.
    fn start_host(self, workers: usize) -> Result<Plugin, HarnessError> {
        let service_slot = self.service.is_some().then_some(workers);
        let main_slot = (self.main_thread_vms && workers > 0)
            .then(|| workers + usize::from(service_slot.is_some()));
        let slots =
            workers + usize::from(service_slot.is_some()) + usize::from(main_slot.is_some());
        let shared = Rc::new(RefCell::new(SharedState::new(
            self.settings,
            slots,
            self.random_seed,
        )));
        if let Ok(mut s) = shared.try_borrow_mut() {
            // Read here, not when the builder was made: the clock starts with the plugin.
            s.clock = VirtualClock::starting_at(self.start_time.unwrap_or_else(SystemTime::now));
            s.foreign_functions = self.foreign_functions;
            s.caps = HostCaps {
                shared_data_keys: self.limits.max_shared_data_keys,
                shared_bytes: self.limits.max_shared_bytes,
                queued_items: self.limits.max_queued_items,
            };
            s.main_thread_slots = service_slot.into_iter().chain(main_slot).collect();
        }
        let service = self.service.map(|spec| (workers, spec));
        let mut inner = PluginInner {
            compiled: self.compiled,
            shared: shared.clone(),
            workers: Vec::with_capacity(slots),
            policy: self.failure_policy,
            limits: self.limits,
            http_handler: self.http_handler,
            grpc_handler: self.grpc_handler,
            allow_on_headers_stop_iteration: self.allow_on_headers_stop_iteration,
            buffer_limit: self.buffer_limit,
            service,
            main_slot,
        };
        // The plugin's main-thread VMs, then the service's, then the workers' (Envoy 1.40 loads
        // its listeners' filters, then starts bootstrap services `onServerInitialized`, and its
        // workers once the main thread is done; measured). On the main thread Envoy loads a
        // module as a base VM that only runs `_initialize` (`proxy_wasm::createWasm`), runs
        // the start sequence on a canary VM cloned from it, which it drops without
        // `proxy_on_done` and whose ticks never fire (`WasmHandleBase::canary`), then on the
        // main thread's own VM
        // (`getOrCreateThreadLocalPlugin`), which stays (measured:
        // `tests/singleton_vs_envoy.rs`, `tests/main_thread_vs_envoy.rs`). What the first two
        // did (logs, queue registrations, shared data) remains; queue notifications reach
        // whichever VM registered the queue last.
        let main_vm = match main_slot {
            Some(slot) => Some(inner.start_main_thread_vms(slot)?),
            None => None,
        };
        let service_vm = match service_slot {
            Some(slot) => Some(inner.start_main_thread_vms(slot)?),
            None => None,
        };
        for worker in 0..workers {
            let vm = inner.start_vm(worker, 0)?;
            // Envoy stamps a worker's plugin handle with its load time (`last_load`), so the
            // reload backoff also runs from the first load: a VM that crashes within the
            // backoff of Envoy's start is not reloaded until the backoff has passed.
            let loaded = inner.elapsed();
            inner.workers.push(Worker {
                vms: vec![vm],
                last_reload: Some(loaded),
                reload_error: None,
            });
        }
        for (vm, loaded) in service_vm.into_iter().chain(main_vm) {
            inner.workers.push(Worker {
                vms: vec![vm],
                last_reload: Some(loaded),
                reload_error: None,
            });
        }
        inner.drain_events()?;
        Ok(Plugin {
            inner: Rc::new(RefCell::new(inner)),
            shared,
            next_worker: Rc::new(Cell::new(0)),
            worker_count: workers,
        })
    }
}

pub(crate) struct Worker {
    /// Every VM this worker ran; the last one is current. Earlier ones failed and were replaced
    /// (`FailReload`); streams started on them keep reading their state.
    pub(crate) vms: Vec<Vm>,
    last_reload: Option<Duration>,
    reload_error: Option<HarnessError>,
}

impl Worker {
    fn empty() -> Self {
        Worker {
            vms: Vec::new(),
            last_reload: None,
            reload_error: None,
        }
    }
}

pub(crate) struct PluginInner {
    compiled: CompiledModule,
    pub(crate) shared: Rc<RefCell<SharedState>>,
    pub(crate) workers: Vec<Worker>,
    pub(crate) policy: FailurePolicy,
    limits: Limits,
    http_handler: Option<HttpHandler>,
    grpc_handler: Option<GrpcHandler>,
    pub(crate) allow_on_headers_stop_iteration: bool,
    pub(crate) buffer_limit: usize,
    /// The singleton service's worker slot and what it runs.
    service: Option<(usize, ServiceSpec)>,
    /// The slot of the plugin's main-thread VM ([`PluginBuilder::main_thread_vms`]).
    main_slot: Option<usize>,
}

/// Whether a plugin runs Envoy's main-thread VMs unless told otherwise.
const DEFAULT_MAIN_THREAD_VMS: bool = true;

/// Envoy's default `per_connection_buffer_limit_bytes` (1 MiB).
pub(crate) const DEFAULT_BUFFER_LIMIT: usize = 1024 * 1024;

/// Upper bound on events handled in one go: a module that answers every queue notification by
/// enqueuing again would otherwise never let the test regain control.
const MAX_EVENTS_PER_DRAIN: usize = 100_000;

/// Upper bound on the fuel the callbacks run by one drain may use together, in callback
/// budgets ([`Limits::fuel_per_callback`]): a module whose every event callback produces another
/// event and burns its whole budget would otherwise keep the test busy for
/// `MAX_EVENTS_PER_DRAIN` budgets (hours at the default). Envoy would spin the worker forever.
const DRAIN_FUEL_IN_CALLBACK_BUDGETS: u64 = 10;

impl PluginInner {
    pub(crate) fn elapsed(&self) -> Duration {
        self.shared
            .try_borrow()
            .map(|s| s.clock.elapsed())
            .unwrap_or_default()
    }

    pub(crate) fn logs(&self) -> Vec<LogEntry> {
        self.shared
            .try_borrow()
            .map(|s| s.logs.clone())
            .unwrap_or_default()
    }

    /// What Envoy does on its main thread for a module in `slot` (the service's or the plugin's
    /// main-thread slot): a base VM that only runs the module's start function, a canary that
    /// runs the start sequence and is dropped, then the VM that stays, with its load time.
    fn start_main_thread_vms(&mut self, slot: usize) -> Result<(Vm, Duration), HarnessError> {
        drop(self.instantiate(slot, 0)?);
        drop(self.start_vm(slot, 0)?);
        self.cancel_callouts(slot);
        let vm = self.start_vm(slot, 0)?;
        Ok((vm, self.elapsed()))
    }

    /// Cancels the callouts a dropped VM of `slot` made (Envoy cancels a context's requests when
    /// it goes, before its main thread's event loop ever sends them): no handler answers them,
    /// no timeout fires, and they are not in [`Plugin::http_callouts`] or
    /// [`Plugin::grpc_callouts`], as no upstream receives them.
    fn cancel_callouts(&mut self, slot: usize) {
        let Ok(mut shared) = self.shared.try_borrow_mut() else {
            return;
        };
        shared
            .http_callouts
            .retain(|record| record.callout.worker != slot);
        shared
            .grpc_callouts
            .retain(|record| record.callout.worker != slot);
        shared.events.retain(|event| match event {
            Event::HttpCalloutDispatched { worker, .. }
            | Event::GrpcCallDispatched { worker, .. }
            | Event::GrpcClusterUnavailable { worker, .. } => *worker != slot,
            Event::QueueReady { .. } => true,
        });
    }

    /// Creates a VM and runs the module's start function (`_initialize`, then `main` if
    /// present, or `_start`), during which Envoy refuses some WASI functions.
    fn instantiate(&mut self, worker: usize, generation: u64) -> Result<Vm, HarnessError> {
        let settings = VmSettings {
            worker,
            max_memory_bytes: self.limits.max_memory_bytes,
            fuel_per_callback: self.limits.fuel_per_callback,
            max_callouts_per_callback: self.limits.max_callouts_per_callback,
        };
        let service = self
            .service
            .as_ref()
            .filter(|(slot, _)| *slot == worker)
            .map(|(_, spec)| spec);
        let compiled = service.map_or(&self.compiled, |spec| &spec.compiled);
        let mut vm = Vm::instantiate(compiled, self.shared.clone(), &settings, generation)?;
        vm.own_settings = service.map(|spec| spec.settings.clone());
        // WASI reactor (`_initialize`, then `main` if present) or command (`_start`).
        vm.state_mut().restricted = true;
        let started = (|| {
            if let Some(initialize) = vm.exports.initialize.clone() {
                vm.invoke("_initialize", initialize, 0, ())?;
                if let Some(main) = vm.exports.main.clone() {
                    vm.invoke("main", main, 0, (0, 0))?;
                }
            } else if let Some(start) = vm.exports.start.clone() {
                vm.invoke("_start", start, 0, ())?;
            }
            Ok::<(), HarnessError>(())
        })();
        vm.state_mut().restricted = false;
        started?;
        Ok(vm)
    }

    /// Creates a VM and runs Envoy's start sequence on it.
    fn start_vm(&mut self, worker: usize, generation: u64) -> Result<Vm, HarnessError> {
        let mut vm = self.instantiate(worker, generation)?;
        let service = self
            .service
            .as_ref()
            .filter(|(slot, _)| *slot == worker)
            .map(|(_, spec)| spec);
        let (vm_config_len, plugin_config_len) = match service {
            Some(spec) => (
                len_u32(spec.settings.vm_config.len()),
                len_u32(spec.settings.plugin_config.len()),
            ),
            None => self
                .shared
                .try_borrow()
                .map(|s| {
                    (
                        len_u32(s.settings.vm_config.len()),
                        len_u32(s.settings.plugin_config.len()),
                    )
                })
                .unwrap_or((0, 0)),
        };

        let root = vm.state().next_context_id;
        {
            let state = vm.state_mut();
            state.next_context_id += 1;
            state.root_context_id = root;
            state.contexts.insert(
                root,
                ContextState {
                    parent: 0,
                    created_in_vm: false,
                    deleted: false,
                    http: None,
                },
            );
        }
        if let Some(create) = vm.exports.on_context_create.clone() {
            vm.state_mut().plugin_config_visible = true;
            let created = vm.invoke("proxy_on_context_create", create, root, (root, 0));
            vm.state_mut().plugin_config_visible = false;
            created?;
        }
        if let Some(context) = vm.state_mut().contexts.get_mut(&root) {
            context.created_in_vm = true;
        }
        if let Some(vm_start) = vm.exports.on_vm_start.clone() {
            let ok = vm.invoke("proxy_on_vm_start", vm_start, root, (root, vm_config_len))?;
            if ok == 0 {
                return Err(HarnessError::VmStartRejected { logs: self.logs() });
            }
        }
        if let Some(configure) = vm.exports.on_configure.clone() {
            vm.state_mut().plugin_config_visible = true;
            let ok = vm.invoke(
                "proxy_on_configure",
                configure,
                root,
                (root, plugin_config_len),
            );
            vm.state_mut().plugin_config_visible = false;
            if ok? == 0 {
                return Err(HarnessError::ConfigRejected { logs: self.logs() });
            }
        }
        vm.state_mut().deferred.clear();
        Ok(vm)
    }

    /// Moves `worker`'s VMs out into a plugin of their own (race mode): the same module, shared
    /// state and policy, but no callout handlers (asynchronous work is delivered after the race,
    /// by this plugin).
    pub(crate) fn detach(&mut self, worker: usize) -> PluginInner {
        let mut workers: Vec<Worker> = (0..self.workers.len()).map(|_| Worker::empty()).collect();
        if let (Some(slot), Some(own)) = (workers.get_mut(worker), self.workers.get_mut(worker)) {
            std::mem::swap(slot, own);
        }
        PluginInner {
            compiled: self.compiled.clone(),
            shared: self.shared.clone(),
            workers,
            policy: self.policy,
            limits: self.limits.clone(),
            http_handler: None,
            grpc_handler: None,
            allow_on_headers_stop_iteration: self.allow_on_headers_stop_iteration,
            buffer_limit: self.buffer_limit,
            service: self.service.clone(),
            main_slot: self.main_slot,
        }
    }

    /// Takes back the VMs [`Self::detach`] moved out.
    pub(crate) fn rejoin(&mut self, worker: usize, mut shell: PluginInner) {
        if let (Some(own), Some(detached)) =
            (self.workers.get_mut(worker), shell.workers.get_mut(worker))
        {
            std::mem::swap(own, detached);
        }
    }

    /// The current VM of a worker.
    pub(crate) fn current_vm(&mut self, worker: usize) -> Result<&mut Vm, HarnessError> {
        self.workers
            .get_mut(worker)
            .and_then(|w| w.vms.last_mut())
            .ok_or_else(|| HarnessError::InvalidUse(format!("there is no worker {worker}")))
    }

    /// The VM of a given generation on a worker.
    pub(crate) fn vm(&mut self, worker: usize, generation: u64) -> Result<&mut Vm, HarnessError> {
        self.workers
            .get_mut(worker)
            .and_then(|w| w.vms.iter_mut().find(|vm| vm.generation == generation))
            .ok_or_else(|| {
                HarnessError::InvalidUse(format!(
                    "worker {worker} has no VM generation {generation}"
                ))
            })
    }

    /// The VM of a given generation on a worker, unless it is gone or failed (an event for it
    /// has nobody to go to).
    fn live_vm(&mut self, worker: usize, generation: u64) -> Option<&mut Vm> {
        self.vm(worker, generation)
            .ok()
            .filter(|vm| !vm.is_failed())
    }

    pub(crate) fn vm_ref(&self, worker: usize, generation: u64) -> Option<&Vm> {
        self.workers
            .get(worker)
            .and_then(|w| w.vms.iter().find(|vm| vm.generation == generation))
    }

    /// `FailReload`: a new stream on a failed VM recreates it once the backoff period has passed
    /// since the VM's last load (the first load included), as Envoy's
    /// `PluginConfig::maybeReloadHandleIfNeeded` does. Envoy jitters the period between 1 and
    /// 1.5 times its base; the harness uses the base, deterministically.
    pub(crate) fn maybe_reload(&mut self, worker: usize) -> Result<(), HarnessError> {
        if self.policy != FailurePolicy::FailReload {
            return Ok(());
        }
        let now = self.elapsed();
        let backoff = self.limits.reload_backoff;
        let Some(state) = self.workers.get(worker) else {
            return Err(HarnessError::InvalidUse(format!(
                "there is no worker {worker}"
            )));
        };
        let failed = state.vms.last().is_some_and(Vm::is_failed);
        let allowed = state
            .last_reload
            .is_none_or(|last| now >= last.saturating_add(backoff));
        if !failed || !allowed {
            return Ok(());
        }
        let generation = state.vms.last().map(|vm| vm.generation + 1).unwrap_or(0);
        if let Some(w) = self.workers.get_mut(worker) {
            w.last_reload = Some(now);
        }
        self.set_generation(worker, generation);
        match self.start_vm(worker, generation) {
            Ok(vm) => {
                if let Some(w) = self.workers.get_mut(worker) {
                    w.vms.push(vm);
                    w.reload_error = None;
                }
                self.drain_events()
            }
            Err(error) => {
                // The reload failed: keep serving from the failed VM (fail closed).
                self.set_generation(worker, generation - 1);
                if let Some(w) = self.workers.get_mut(worker) {
                    w.reload_error = Some(error);
                }
                Ok(())
            }
        }
    }

    fn set_generation(&self, worker: usize, generation: u64) {
        if let Ok(mut shared) = self.shared.try_borrow_mut() {
            if let Some(slot) = shared.generations.get_mut(worker) {
                *slot = generation;
            }
        }
    }

    /// Handles asynchronous events until none is left.
    pub(crate) fn drain_events(&mut self) -> Result<(), HarnessError> {
        let fuel_at_start = self.fuel_spent();
        let fuel_budget = self
            .limits
            .fuel_per_callback
            .map(|fuel| fuel.saturating_mul(DRAIN_FUEL_IN_CALLBACK_BUDGETS));
        for _ in 0..MAX_EVENTS_PER_DRAIN {
            if let Some(budget) = fuel_budget {
                if self.fuel_spent().saturating_sub(fuel_at_start) > budget {
                    return Err(HarnessError::InvalidUse(format!(
                        "the plugin kept producing events (their callbacks used more than \
                         {budget} fuel without settling)"
                    )));
                }
            }
            let event = match self.shared.try_borrow_mut() {
                Ok(mut shared) => shared.events.pop_front(),
                Err(_) => return Err(reentrancy()),
            };
            let Some(event) = event else {
                return Ok(());
            };
            match event {
                Event::HttpCalloutDispatched { worker, token } => {
                    let callout = self.http_record(worker, token).map(|r| r.0);
                    let reply = match (callout, self.http_handler.as_mut()) {
                        (Some(callout), Some(handler)) => handler(&callout),
                        _ => continue,
                    };
                    if reply != CalloutReply::Timeout {
                        self.deliver_http(worker, token, reply)?;
                    }
                }
                Event::GrpcCallDispatched { worker, token } => {
                    let callout = self.grpc_record(worker, token);
                    let reply = match (callout, self.grpc_handler.as_mut()) {
                        (Some(callout), Some(handler)) => handler(&callout),
                        _ => continue,
                    };
                    if reply != GrpcReply::Timeout {
                        self.deliver_grpc_unary(worker, token, reply)?;
                    }
                }
                Event::GrpcClusterUnavailable {
                    worker,
                    generation,
                    token,
                } => {
                    let Some(vm) = self.live_vm(worker, generation) else {
                        continue;
                    };
                    grpc_close(vm, token, 14, "Cluster not available".to_string())?;
                    self.process_deferred(worker, generation)?;
                }
                Event::QueueReady {
                    worker,
                    generation,
                    context_id,
                    token,
                } => {
                    let Some(vm) = self.live_vm(worker, generation) else {
                        continue;
                    };
                    if let Some(callback) = vm.exports.on_queue_ready.clone() {
                        vm.invoke(
                            "proxy_on_queue_ready",
                            callback,
                            context_id,
                            (context_id, token),
                        )?;
                    }
                    self.process_deferred(worker, generation)?;
                }
            }
        }
        Err(HarnessError::InvalidUse(format!(
            "the plugin kept producing events ({MAX_EVENTS_PER_DRAIN} handled without settling)"
        )))
    }

    /// Fuel used by every callback of every VM so far.
    fn fuel_spent(&self) -> u64 {
        self.shared.try_borrow().map(|s| s.fuel_spent).unwrap_or(0)
    }

    /// A callout record and the generation of the VM that made it.
    fn http_record(&self, worker: usize, token: u32) -> Option<(HttpCallout, u64, CalloutStatus)> {
        let shared = self.shared.try_borrow().ok()?;
        shared
            .http_callouts
            .iter()
            .rev()
            .find(|r| r.callout.worker == worker && r.callout.token == token)
            .map(|r| (r.callout.clone(), r.generation, r.status))
    }

    fn grpc_record(&self, worker: usize, token: u32) -> Option<GrpcCallout> {
        let shared = self.shared.try_borrow().ok()?;
        shared
            .grpc_callouts
            .iter()
            .rev()
            .find(|r| r.callout.worker == worker && r.callout.token == token)
            .map(|r| r.callout.clone())
    }

    /// Delivers the answer of an HTTP callout to the root context of the VM that made it.
    pub(crate) fn deliver_http(
        &mut self,
        worker: usize,
        token: u32,
        mut reply: CalloutReply,
    ) -> Result<(), HarnessError> {
        let Some((_, generation, status)) = self.http_record(worker, token) else {
            return Err(HarnessError::InvalidUse(format!(
                "worker {worker} has no HTTP callout with token {token}"
            )));
        };
        if status == CalloutStatus::Done {
            return Err(HarnessError::InvalidUse(format!(
                "the HTTP callout {token} of worker {worker} was already answered"
            )));
        }
        if reply == CalloutReply::Timeout {
            return Ok(());
        }
        if let Ok(mut shared) = self.shared.try_borrow_mut() {
            reply = crate::callouts::as_delivered(&shared, worker, token, reply);
            if let Some(record) = shared
                .http_callouts
                .iter_mut()
                .rev()
                .find(|r| r.callout.worker == worker && r.callout.token == token)
            {
                record.status = CalloutStatus::Done;
            }
        }
        let vm = self.vm(worker, generation)?;
        if vm.is_failed() || !vm.state_mut().http_calls.remove(&token) {
            return Ok(());
        }
        let root = vm.state().root_context_id;
        let Some(callback) = vm.exports.on_http_call_response.clone() else {
            return Ok(());
        };
        let result = match reply {
            CalloutReply::Response {
                headers,
                body,
                trailers,
            } => {
                let args = (
                    root,
                    token,
                    len_u32(headers.len()),
                    len_u32(body.len()),
                    len_u32(trailers.len()),
                );
                vm.state_mut().http_call_response = Some(CalloutResponseData {
                    headers: normalize(&headers),
                    body,
                    trailers: normalize(&trailers),
                });
                let result = vm.invoke("proxy_on_http_call_response", callback, root, args);
                vm.state_mut().http_call_response = None;
                result
            }
            // Refused, Reset and TimedOut arrive here as responses (`as_delivered`).
            _ => {
                vm.state_mut().status = (Status::BrokenConnection.code(), "reset".to_string());
                let result = vm.invoke(
                    "proxy_on_http_call_response",
                    callback,
                    root,
                    (root, token, 0, 0, 0),
                );
                vm.state_mut().status.1.clear();
                result
            }
        };
        result?;
        self.process_deferred(worker, generation)
    }

    /// Delivers the answer of a unary gRPC call (`proxy_on_grpc_receive` on success,
    /// `proxy_on_grpc_close` on failure).
    pub(crate) fn deliver_grpc_unary(
        &mut self,
        worker: usize,
        token: u32,
        reply: GrpcReply,
    ) -> Result<(), HarnessError> {
        let generation = self.mark_grpc_done(worker, token, true)?;
        if reply == GrpcReply::Timeout {
            return Ok(());
        }
        let reply = reply.into_delivered();
        let vm = self.vm(worker, generation)?;
        if vm.is_failed() || vm.state_mut().grpc_tokens.remove(&token).is_none() {
            return Ok(());
        }
        let root = vm.state().root_context_id;
        match reply {
            GrpcReply::Response(message) => {
                if let Some(callback) = vm.exports.on_grpc_receive.clone() {
                    let args = (root, token, len_u32(message.len()));
                    vm.state_mut().grpc_receive_buffer = Some(message);
                    let result = vm.invoke("proxy_on_grpc_receive", callback, root, args);
                    vm.state_mut().grpc_receive_buffer = None;
                    result?;
                }
            }
            GrpcReply::Error { status, message } => grpc_close(vm, token, status, message)?,
            // Refused, Reset and TimedOut arrive here as errors (`into_delivered`).
            _ => {}
        }
        self.process_deferred(worker, generation)
    }

    /// Marks a gRPC record answered; returns the generation of its VM.
    fn mark_grpc_done(
        &mut self,
        worker: usize,
        token: u32,
        unary: bool,
    ) -> Result<u64, HarnessError> {
        let mut shared = self.shared.try_borrow_mut().map_err(|_| reentrancy())?;
        let record = shared
            .grpc_callouts
            .iter_mut()
            .rev()
            .find(|r| r.callout.worker == worker && r.callout.token == token)
            .ok_or_else(|| {
                HarnessError::InvalidUse(format!("worker {worker} has no gRPC callout {token}"))
            })?;
        if record.callout.is_stream == unary {
            return Err(HarnessError::InvalidUse(format!(
                "gRPC token {token} is a {}",
                if record.callout.is_stream {
                    "stream"
                } else {
                    "unary call"
                }
            )));
        }
        if record.status == CalloutStatus::Done {
            return Err(HarnessError::InvalidUse(format!(
                "the gRPC {} {token} of worker {worker} is already closed",
                if unary { "call" } else { "stream" }
            )));
        }
        if unary {
            record.status = CalloutStatus::Done;
        }
        Ok(record.generation)
    }

    /// Delivers one event of a gRPC stream.
    pub(crate) fn deliver_grpc_stream(
        &mut self,
        worker: usize,
        token: u32,
        event: GrpcStreamEvent,
    ) -> Result<(), HarnessError> {
        let generation = self.mark_grpc_done(worker, token, false)?;
        if matches!(event, GrpcStreamEvent::Close { .. }) {
            if let Ok(mut shared) = self.shared.try_borrow_mut() {
                if let Some(record) = shared
                    .grpc_callouts
                    .iter_mut()
                    .rev()
                    .find(|r| r.callout.worker == worker && r.callout.token == token)
                {
                    record.status = CalloutStatus::Done;
                }
            }
        }
        let vm = self.vm(worker, generation)?;
        if vm.is_failed() || !vm.state().grpc_tokens.contains_key(&token) {
            return Ok(());
        }
        let root = vm.state().root_context_id;
        match event {
            GrpcStreamEvent::InitialMetadata(metadata) => {
                if let Some(callback) = vm.exports.on_grpc_receive_initial_metadata.clone() {
                    let args = (root, token, len_u32(metadata.len()));
                    vm.state_mut().grpc_initial_metadata = Some(normalize(&metadata));
                    let result = vm.invoke(
                        "proxy_on_grpc_receive_initial_metadata",
                        callback,
                        root,
                        args,
                    );
                    vm.state_mut().grpc_initial_metadata = None;
                    result?;
                }
            }
            GrpcStreamEvent::Message(message) => {
                if let Some(callback) = vm.exports.on_grpc_receive.clone() {
                    let args = (root, token, len_u32(message.len()));
                    vm.state_mut().grpc_receive_buffer = Some(message);
                    let result = vm.invoke("proxy_on_grpc_receive", callback, root, args);
                    vm.state_mut().grpc_receive_buffer = None;
                    result?;
                }
            }
            GrpcStreamEvent::TrailingMetadata(metadata) => {
                if let Some(callback) = vm.exports.on_grpc_receive_trailing_metadata.clone() {
                    let args = (root, token, len_u32(metadata.len()));
                    vm.state_mut().grpc_trailing_metadata = Some(normalize(&metadata));
                    let result = vm.invoke(
                        "proxy_on_grpc_receive_trailing_metadata",
                        callback,
                        root,
                        args,
                    );
                    vm.state_mut().grpc_trailing_metadata = None;
                    result?;
                }
            }
            GrpcStreamEvent::Close { status, message } => {
                let state = vm.state_mut();
                let local_closed = match state.grpc_tokens.get_mut(&token) {
                    Some(t) => {
                        t.remote_closed = true;
                        t.local_closed
                    }
                    None => false,
                };
                if local_closed {
                    state.grpc_tokens.remove(&token);
                }
                grpc_close(vm, token, status, message)?;
            }
        }
        self.process_deferred(worker, generation)
    }

    /// Finds the worker of a pending callout token; an error if none or several match.
    fn worker_of(&self, token: u32, http: bool) -> Result<usize, HarnessError> {
        let shared = self.shared.try_borrow().map_err(|_| reentrancy())?;
        let workers: BTreeSet<usize> = if http {
            shared
                .http_callouts
                .iter()
                .filter(|r| r.callout.token == token && r.status == CalloutStatus::Pending)
                .map(|r| r.callout.worker)
                .collect()
        } else {
            shared
                .grpc_callouts
                .iter()
                .filter(|r| r.callout.token == token && r.status == CalloutStatus::Pending)
                .map(|r| r.callout.worker)
                .collect()
        };
        match workers.len() {
            1 => workers
                .into_iter()
                .next()
                .ok_or_else(|| HarnessError::InvalidUse("no callout".into())),
            0 => Err(HarnessError::InvalidUse(format!(
                "no pending {} callout has token {token}",
                if http { "HTTP" } else { "gRPC" }
            ))),
            _ => Err(HarnessError::InvalidUse(format!(
                "token {token} is pending on several workers; use the `_on(worker, ..)` variant"
            ))),
        }
    }

    /// Moves the clock to `target` (elapsed time), firing ticks and timeouts in time order.
    fn advance_to(&mut self, target: Duration) -> Result<(), HarnessError> {
        loop {
            let next = self.next_timer(target);
            let Some((due, timer)) = next else {
                if let Ok(mut shared) = self.shared.try_borrow_mut() {
                    shared.clock.set_elapsed(target);
                }
                return Ok(());
            };
            if let Ok(mut shared) = self.shared.try_borrow_mut() {
                shared.clock.set_elapsed(due);
            }
            match timer {
                Timer::Tick { worker } => self.fire_tick(worker, due)?,
                Timer::Http { worker, token } => {
                    self.deliver_http(worker, token, CalloutReply::timeout_response())?
                }
                Timer::Grpc { worker, token } => {
                    self.deliver_grpc_unary(worker, token, GrpcReply::TimedOut)?
                }
            }
            self.drain_events()?;
        }
    }

    /// The earliest timer due at or before `target`: ticks first (by worker), then HTTP and
    /// gRPC timeouts in dispatch order.
    fn next_timer(&self, target: Duration) -> Option<(Duration, Timer)> {
        let mut best: Option<(Duration, Timer)> = None;
        let mut consider = |due: Duration, timer: Timer| {
            if due <= target && best.as_ref().is_none_or(|(b, _)| due < *b) {
                best = Some((due, timer));
            }
        };
        for (worker, w) in self.workers.iter().enumerate() {
            if let Some(vm) = w.vms.last() {
                if let (false, Some(due)) = (vm.is_failed(), vm.state().next_tick) {
                    consider(due, Timer::Tick { worker });
                }
            }
        }
        if let Ok(shared) = self.shared.try_borrow() {
            for record in &shared.http_callouts {
                if let (CalloutStatus::Pending, Some(due)) = (record.status, record.deadline) {
                    consider(
                        due,
                        Timer::Http {
                            worker: record.callout.worker,
                            token: record.callout.token,
                        },
                    );
                }
            }
            for record in &shared.grpc_callouts {
                if let (CalloutStatus::Pending, Some(due)) = (record.status, record.deadline) {
                    consider(
                        due,
                        Timer::Grpc {
                            worker: record.callout.worker,
                            token: record.callout.token,
                        },
                    );
                }
            }
        }
        best
    }

    fn fire_tick(&mut self, worker: usize, due: Duration) -> Result<(), HarnessError> {
        let vm = self.current_vm(worker)?;
        let generation = vm.generation;
        // Re-arm before the callback; a period set inside it restarts the timer from now.
        let period = vm.state().tick_period;
        vm.state_mut().next_tick = (period > Duration::ZERO).then(|| due.saturating_add(period));
        let root = vm.state().root_context_id;
        if let Some(callback) = vm.exports.on_tick.clone() {
            vm.invoke("proxy_on_tick", callback, root, root)?;
        }
        self.process_deferred(worker, generation)
    }

    fn trigger_foreign(&mut self, function_id: u32, args: &[u8]) -> Result<(), HarnessError> {
        for worker in 0..self.workers.len() {
            let vm = self.current_vm(worker)?;
            let generation = vm.generation;
            if vm.is_failed() {
                continue;
            }
            let root = vm.state().root_context_id;
            if let Some(callback) = vm.exports.on_foreign_function.clone() {
                vm.state_mut().call_data = args.to_vec();
                let result = vm.invoke(
                    "proxy_on_foreign_function",
                    callback,
                    root,
                    (root, function_id, len_u32(args.len())),
                );
                vm.state_mut().call_data.clear();
                result?;
            }
            self.process_deferred(worker, generation)?;
        }
        self.drain_events()
    }

    fn shutdown(&mut self) -> Result<(), HarnessError> {
        for worker in 0..self.workers.len() {
            let vm = self.current_vm(worker)?;
            if vm.is_failed() {
                continue;
            }
            let root = vm.state().root_context_id;
            let done = match vm.exports.on_done.clone() {
                Some(callback) => vm.invoke("proxy_on_done", callback, root, root)? != 0,
                None => true,
            };
            if done {
                if let Some(callback) = vm.exports.on_delete.clone() {
                    vm.invoke("proxy_on_delete", callback, root, root)?;
                }
            } else {
                vm.state_mut().pending_done.insert(root);
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Timer {
    Tick { worker: usize },
    Http { worker: usize, token: u32 },
    Grpc { worker: usize, token: u32 },
}

/// One event of a gRPC stream, as delivered by the test.
pub(crate) enum GrpcStreamEvent {
    InitialMetadata(Vec<(String, String)>),
    Message(Vec<u8>),
    TrailingMetadata(Vec<(String, String)>),
    Close { status: u32, message: String },
}

pub(crate) fn reentrancy() -> HarnessError {
    HarnessError::InvalidUse(
        "the plugin is busy (a mock handler or foreign function called back into it)".into(),
    )
}

pub(crate) fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Lower-cases header keys as Envoy's header maps do.
pub(crate) fn normalize(pairs: &[(String, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}

/// A running plugin: one VM per worker, and the VMs Envoy runs on its main thread
/// ([`PluginBuilder::main_thread_vms`]), sharing a clock, stats, shared data and queues.
/// Cheap to clone (all clones drive the same plugin). Not thread-safe.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) inner: Rc<RefCell<PluginInner>>,
    pub(crate) shared: Rc<RefCell<SharedState>>,
    next_worker: Rc<Cell<usize>>,
    worker_count: usize,
}

impl Plugin {
    pub(crate) fn with_inner<R>(
        &self,
        f: impl FnOnce(&mut PluginInner) -> Result<R, HarnessError>,
    ) -> Result<R, HarnessError> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| reentrancy())?;
        f(&mut inner)
    }

    /// Number of worker VMs.
    pub fn workers(&self) -> usize {
        self.worker_count
    }

    /// Opens an HTTP stream on the next worker (round-robin, as Envoy spreads connections).
    pub fn http_stream(&self) -> HttpStream {
        HttpStream::new(self.clone(), self.next_worker())
    }

    /// Opens an HTTP stream on a chosen worker (taken modulo the number of workers).
    pub fn http_stream_on(&self, worker: usize) -> HttpStream {
        HttpStream::new(self.clone(), self.worker_slot(worker))
    }

    /// The next worker in round-robin order, as Envoy spreads connections over its workers.
    fn next_worker(&self) -> usize {
        let worker = self.worker_slot(self.next_worker.get());
        self.next_worker.set(self.worker_slot(worker + 1));
        worker
    }

    /// `worker` taken modulo the number of workers (the service's slot is never reached).
    fn worker_slot(&self, worker: usize) -> usize {
        worker.checked_rem(self.worker_count).unwrap_or(0)
    }

    /// A TCP connection through the plugin as a network filter (Envoy's
    /// `envoy.filters.network.wasm` before `tcp_proxy`), on the next worker (round-robin, as
    /// for HTTP streams). Nothing reaches the module until [`TcpConnection::open`] or the first
    /// data.
    pub fn tcp_connection(&self) -> TcpConnection {
        TcpConnection::new(self.clone(), self.next_worker())
    }

    /// A TCP connection on a chosen worker (taken modulo the number of workers).
    pub fn tcp_connection_on(&self, worker: usize) -> TcpConnection {
        TcpConnection::new(self.clone(), self.worker_slot(worker))
    }

    /// The singleton service started beside this plugin ([`PluginBuilder::service`]).
    pub fn service(&self) -> Option<Service> {
        let slot = self.inner.try_borrow().ok()?.service.as_ref()?.0;
        Some(Service {
            plugin: self.clone(),
            slot,
        })
    }

    /// The VMs Envoy runs on its main thread beside this plugin's workers
    /// ([`PluginBuilder::main_thread_vms`]), unless turned off.
    pub fn main_thread(&self) -> Option<MainThread> {
        let slot = self.inner.try_borrow().ok()?.main_slot?;
        Some(MainThread {
            plugin: self.clone(),
            slot,
        })
    }

    /// Stream events for several workers that arrive at the same instant, run on the schedule of
    /// `seed`: see [`crate::race`].
    ///
    /// ```no_run
    /// # fn main() -> Result<(), wasmesh_harness::HarnessError> {
    /// # let plugin = wasmesh_harness::Harness::load("f.wasm")?.workers(4).start()?;
    /// let headers = [(":method", "GET"), (":path", "/"), (":authority", "example.com")];
    /// let mut streams: Vec<_> = (0..4).map(|worker| plugin.http_stream_on(worker)).collect();
    /// let mut race = plugin.race(7);
    /// for stream in &mut streams {
    ///     race.request_headers(stream, &headers, true)?;
    /// }
    /// let report = race.run()?;
    /// println!("{} denied; schedule: {:#?}", report.local_replies_with_status(429), report.schedule);
    /// # Ok(())
    /// # }
    /// ```
    pub fn race(&self, seed: u64) -> Race<'_> {
        Race::new(self, seed)
    }

    /// Writes to shared data that can lose a concurrent update, seen so far (whatever the
    /// schedule): see [`SharedDataHazard`].
    pub fn shared_data_hazards(&self) -> Vec<SharedDataHazard> {
        self.shared
            .try_borrow()
            .map(|shared| shared.hazards.clone())
            .unwrap_or_default()
    }

    /// Advances the virtual clock, firing ticks and callout timeouts in time order (each tick
    /// period crossed fires one tick) and handling the events they cause.
    pub fn advance_clock(&self, by: Duration) -> Result<(), HarnessError> {
        self.with_inner(|inner| {
            let target = inner.elapsed().saturating_add(by);
            inner.advance_to(target)
        })
    }

    /// The current virtual time.
    pub fn now(&self) -> SystemTime {
        self.shared
            .try_borrow()
            .map(|s| s.clock.now())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// A metric by name (summed over workers for counters and gauges).
    pub fn metric(&self, name: &str) -> Option<MetricValue> {
        self.shared.try_borrow().ok()?.metrics.by_name(name)
    }

    /// Every metric, sorted by name.
    pub fn metrics(&self) -> Vec<(String, MetricValue)> {
        self.shared
            .try_borrow()
            .map(|s| s.metrics.all())
            .unwrap_or_default()
    }

    /// Every log line so far, in order: the workers', and those of the VMs on Envoy's main
    /// thread ([`LogEntry::main_thread`]: the plugin's main-thread VMs, a singleton service).
    pub fn logs(&self) -> Vec<LogEntry> {
        self.shared
            .try_borrow()
            .map(|s| s.logs.clone())
            .unwrap_or_default()
    }

    /// The log lines of the worker VMs only (those that see requests), in order: [`Self::logs`]
    /// without the main thread's.
    pub fn worker_logs(&self) -> Vec<LogEntry> {
        let mut logs = self.logs();
        logs.retain(|entry| !entry.main_thread);
        logs
    }

    /// How many times the module called each hostcall (`proxy_*` and WASI functions, by
    /// name), every worker and VM together, since the plugin started or the counts were last
    /// reset: what a filter asks of the proxy per request, the first thing to look at when it
    /// is slow in Envoy (each hostcall is a VM exit).
    pub fn hostcall_counts(&self) -> BTreeMap<String, u64> {
        self.shared
            .try_borrow()
            .map(|shared| shared.hostcall_counts())
            .unwrap_or_default()
    }

    /// Starts [`Plugin::hostcall_counts`] again from zero.
    pub fn reset_hostcall_counts(&self) {
        if let Ok(mut shared) = self.shared.try_borrow_mut() {
            shared.reset_hostcall_counts();
        }
    }

    /// Forgets the log lines captured so far.
    pub fn clear_logs(&self) {
        if let Ok(mut shared) = self.shared.try_borrow_mut() {
            shared.logs.clear();
        }
    }

    /// A shared-data entry (value and CAS) of this plugin's VM id.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared
            .try_borrow()
            .ok()?
            .get_shared_data(key.as_bytes())
            .ok()
    }

    /// Writes shared data as another process sharing the VM id would (CAS 0: unconditional).
    pub fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Status {
        match self.shared.try_borrow_mut() {
            Ok(mut shared) => shared.set_shared_data(key.as_bytes(), value, cas),
            Err(_) => Status::InternalFailure,
        }
    }

    /// Enqueues data on a shared queue registered by the module (as another plugin would),
    /// then delivers `proxy_on_queue_ready`.
    pub fn enqueue(&self, queue_name: &str, data: &[u8]) -> Result<(), HarnessError> {
        let status = {
            let mut shared = self.shared.try_borrow_mut().map_err(|_| reentrancy())?;
            let vm_id = shared.settings.vm_id.clone();
            match shared.resolve_queue(&vm_id, queue_name) {
                Some(token) => shared.enqueue(token, data),
                None => Status::NotFound,
            }
        };
        if status != Status::Ok {
            return Err(HarnessError::InvalidUse(format!(
                "no shared queue named {queue_name:?} is registered"
            )));
        }
        self.with_inner(PluginInner::drain_events)
    }

    /// Every HTTP callout dispatched so far.
    pub fn http_callouts(&self) -> Vec<HttpCallout> {
        self.shared
            .try_borrow()
            .map(|s| s.http_callouts.iter().map(|r| r.callout.clone()).collect())
            .unwrap_or_default()
    }

    /// HTTP callouts not answered yet.
    pub fn pending_http_callouts(&self) -> Vec<HttpCallout> {
        self.shared
            .try_borrow()
            .map(|s| {
                s.http_callouts
                    .iter()
                    .filter(|r| r.status == CalloutStatus::Pending)
                    .map(|r| r.callout.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Answers a pending HTTP callout (the token must be pending on exactly one worker).
    pub fn respond_http_callout(
        &self,
        token: u32,
        reply: CalloutReply,
    ) -> Result<(), HarnessError> {
        self.with_inner(|inner| {
            let worker = inner.worker_of(token, true)?;
            inner.deliver_http(worker, token, reply)?;
            inner.drain_events()
        })
    }

    /// Answers a pending HTTP callout of a given worker.
    pub fn respond_http_callout_on(
        &self,
        worker: usize,
        token: u32,
        reply: CalloutReply,
    ) -> Result<(), HarnessError> {
        self.with_inner(|inner| {
            inner.deliver_http(worker, token, reply)?;
            inner.drain_events()
        })
    }

    /// Every gRPC call and stream opened so far.
    pub fn grpc_callouts(&self) -> Vec<GrpcCallout> {
        self.shared
            .try_borrow()
            .map(|s| s.grpc_callouts.iter().map(|r| r.callout.clone()).collect())
            .unwrap_or_default()
    }

    /// gRPC calls and streams still open.
    pub fn pending_grpc_callouts(&self) -> Vec<GrpcCallout> {
        self.shared
            .try_borrow()
            .map(|s| {
                s.grpc_callouts
                    .iter()
                    .filter(|r| r.status == CalloutStatus::Pending)
                    .map(|r| r.callout.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Answers a pending unary gRPC call.
    pub fn respond_grpc_call(&self, token: u32, reply: GrpcReply) -> Result<(), HarnessError> {
        self.with_inner(|inner| {
            let worker = inner.worker_of(token, false)?;
            inner.deliver_grpc_unary(worker, token, reply)?;
            inner.drain_events()
        })
    }

    fn grpc_stream_event(&self, token: u32, event: GrpcStreamEvent) -> Result<(), HarnessError> {
        self.with_inner(|inner| {
            let worker = inner.worker_of(token, false)?;
            inner.deliver_grpc_stream(worker, token, event)?;
            inner.drain_events()
        })
    }

    /// Sends initial metadata on an open gRPC stream (`proxy_on_grpc_receive_initial_metadata`).
    pub fn grpc_stream_initial_metadata(
        &self,
        token: u32,
        metadata: &[(&str, &str)],
    ) -> Result<(), HarnessError> {
        self.grpc_stream_event(token, GrpcStreamEvent::InitialMetadata(owned(metadata)))
    }

    /// Sends a message on an open gRPC stream (`proxy_on_grpc_receive`).
    pub fn grpc_stream_message(&self, token: u32, message: &[u8]) -> Result<(), HarnessError> {
        self.grpc_stream_event(token, GrpcStreamEvent::Message(message.to_vec()))
    }

    /// Sends trailing metadata on an open gRPC stream.
    pub fn grpc_stream_trailing_metadata(
        &self,
        token: u32,
        metadata: &[(&str, &str)],
    ) -> Result<(), HarnessError> {
        self.grpc_stream_event(token, GrpcStreamEvent::TrailingMetadata(owned(metadata)))
    }

    /// Closes an open gRPC stream from the remote side (`proxy_on_grpc_close`).
    pub fn grpc_stream_close(
        &self,
        token: u32,
        status: u32,
        message: &str,
    ) -> Result<(), HarnessError> {
        self.grpc_stream_event(
            token,
            GrpcStreamEvent::Close {
                status,
                message: message.to_string(),
            },
        )
    }

    /// Calls `proxy_on_foreign_function` on the root context of every worker, with `args` in the
    /// `CALL_DATA` buffer (what an Envoy extension does when it calls back into the module).
    pub fn trigger_foreign_function(
        &self,
        function_id: u32,
        args: &[u8],
    ) -> Result<(), HarnessError> {
        self.with_inner(|inner| inner.trigger_foreign(function_id, args))
    }

    /// Size of a worker's linear memory in bytes (for leak checks).
    pub fn worker_memory_bytes(&self, worker: usize) -> usize {
        self.inner
            .try_borrow()
            .ok()
            .and_then(|inner| {
                inner
                    .workers
                    .get(worker)
                    .and_then(|w| w.vms.last())
                    .map(Vm::memory_bytes)
            })
            .unwrap_or(0)
    }

    /// Why a worker's current VM failed, if it did.
    pub fn vm_failure(&self, worker: usize) -> Option<HarnessError> {
        let inner = self.inner.try_borrow().ok()?;
        inner
            .workers
            .get(worker)
            .and_then(|w| w.vms.last())
            .and_then(|vm| vm.state().failed.clone())
    }

    /// How many times a worker's VM was recreated under [`FailurePolicy::FailReload`].
    pub fn reload_count(&self, worker: usize) -> usize {
        self.inner
            .try_borrow()
            .ok()
            .and_then(|inner| {
                inner
                    .workers
                    .get(worker)
                    .map(|w| w.vms.len().saturating_sub(1))
            })
            .unwrap_or(0)
    }

    /// The tick period a worker's module set, if any.
    pub fn tick_period(&self, worker: usize) -> Option<Duration> {
        let inner = self.inner.try_borrow().ok()?;
        let period = inner.workers.get(worker)?.vms.last()?.state().tick_period;
        (period > Duration::ZERO).then_some(period)
    }

    /// Tears the plugin down as Envoy does when the configuration is removed:
    /// `proxy_on_done` on each root context, then `proxy_on_delete` if it returned true.
    pub fn shutdown(&self) -> Result<(), HarnessError> {
        self.with_inner(PluginInner::shutdown)
    }

    /// Whether a reload attempt failed, and why.
    pub fn reload_error(&self, worker: usize) -> Option<HarnessError> {
        let inner = self.inner.try_borrow().ok()?;
        inner.workers.get(worker)?.reload_error.clone()
    }
}

/// A singleton service: the VM Envoy runs on its main thread for a bootstrap extension
/// `envoy.bootstrap.wasm` with `singleton: true` ([`PluginBuilder::service`],
/// [`PluginBuilder::start_service`]). It has a root context and no streams; it sees the same
/// shared data, queues, clock and logs as the plugin it was started with. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    plugin: Plugin,
    slot: usize,
}

impl Service {
    /// The worker number its log lines ([`LogEntry::worker`]), callouts and errors carry: one
    /// past the plugin's workers.
    pub fn worker(&self) -> usize {
        self.slot
    }

    /// Advances the virtual clock shared with the plugin (see [`Plugin::advance_clock`]):
    /// fires the service's ticks as well as the workers'.
    pub fn advance_clock(&self, by: Duration) -> Result<(), HarnessError> {
        self.plugin.advance_clock(by)
    }

    /// The service's own log lines, in order (the plugin's [`Plugin::logs`] has everyone's).
    pub fn logs(&self) -> Vec<LogEntry> {
        self.plugin
            .logs()
            .into_iter()
            .filter(|entry| entry.worker == self.slot)
            .collect()
    }

    /// The service's vm_id, under which its queues and shared data are filed.
    pub fn vm_id(&self) -> String {
        self.plugin
            .inner
            .try_borrow()
            .ok()
            .and_then(|inner| {
                inner
                    .service
                    .as_ref()
                    .map(|(_, spec)| spec.settings.vm_id.clone())
            })
            .unwrap_or_default()
    }

    /// Enqueues data on a queue the service registered (as a VM of another plugin would, after
    /// resolving it under the service's vm_id), then delivers `proxy_on_queue_ready`.
    pub fn enqueue(&self, queue_name: &str, data: &[u8]) -> Result<(), HarnessError> {
        let vm_id = self.vm_id();
        let status = {
            let mut shared = self
                .plugin
                .shared
                .try_borrow_mut()
                .map_err(|_| reentrancy())?;
            // Not `resolve_queue`, which reads an empty vm_id as the host's.
            let key = (vm_id.clone(), queue_name.to_string());
            match shared.queue_names.get(&key).copied() {
                Some(token) => shared.enqueue(token, data),
                None => Status::NotFound,
            }
        };
        if status != Status::Ok {
            return Err(HarnessError::InvalidUse(format!(
                "no shared queue named {queue_name:?} is registered under vm_id {vm_id:?}"
            )));
        }
        self.plugin.with_inner(PluginInner::drain_events)
    }

    /// A shared-data entry (value and CAS) under the service's vm_id.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let vm_id = self.vm_id();
        let shared = self.plugin.shared.try_borrow().ok()?;
        shared.shared_data.get(&vm_id)?.get(key.as_bytes()).cloned()
    }

    /// The tick period the service set, if any.
    pub fn tick_period(&self) -> Option<Duration> {
        self.plugin.tick_period(self.slot)
    }

    /// Why the service's VM failed, if it did (the harness never reloads a service: it
    /// gets no streams, which are what trigger `FAIL_RELOAD`).
    pub fn vm_failure(&self) -> Option<HarnessError> {
        self.plugin.vm_failure(self.slot)
    }

    /// A metric by name, every VM of the host together (see [`Plugin::metric`]).
    pub fn metric(&self, name: &str) -> Option<MetricValue> {
        self.plugin.metric(name)
    }
}

/// The VMs Envoy 1.40 runs on its main thread beside an HTTP plugin's worker VMs
/// ([`PluginBuilder::main_thread_vms`], [`Plugin::main_thread`]): a canary, dropped after its
/// start sequence, and the VM that stays, with a root context, ticks and callouts but no
/// streams. Cheap to clone.
#[derive(Clone)]
pub struct MainThread {
    plugin: Plugin,
    slot: usize,
}

impl MainThread {
    /// The worker number its log lines ([`LogEntry::worker`]), callouts and errors carry: past
    /// the plugin's workers (and the service's slot, if there is a service).
    pub fn worker(&self) -> usize {
        self.slot
    }

    /// The main-thread VMs' log lines (the canary's first), in order.
    pub fn logs(&self) -> Vec<LogEntry> {
        let mut logs = self.plugin.logs();
        logs.retain(|entry| entry.worker == self.slot);
        logs
    }

    /// The tick period the main-thread VM set, if any (its ticks fire on
    /// [`Plugin::advance_clock`] as the workers' do).
    pub fn tick_period(&self) -> Option<Duration> {
        self.plugin.tick_period(self.slot)
    }

    /// Why the main-thread VM failed, if it did (it is never reloaded: it gets no streams).
    pub fn vm_failure(&self) -> Option<HarnessError> {
        self.plugin.vm_failure(self.slot)
    }
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `proxy_on_grpc_close(root, token, status)`, with `message` readable through
/// `proxy_get_status` during the call.
fn grpc_close(vm: &mut Vm, token: u32, status: u32, message: String) -> Result<(), HarnessError> {
    let Some(callback) = vm.exports.on_grpc_close.clone() else {
        return Ok(());
    };
    let root = vm.state().root_context_id;
    vm.state_mut().status = (status, message);
    let result = vm.invoke("proxy_on_grpc_close", callback, root, (root, token, status));
    vm.state_mut().status.1.clear();
    result.map(|_| ())
}
