//! State shared by every VM of a plugin (what Envoy keeps process-wide): the clock, logs, the
//! stats store, shared data, shared queues, callout records and the event queue.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;

use crate::callouts::{GrpcCalloutRecord, HttpCalloutRecord};
use crate::clock::VirtualClock;
use crate::error::Status;
use crate::metrics::MetricsStore;
use crate::property::PropertyValue;
use crate::race::{Scheduler, SharedDataHazard};
use crate::types::{LogEntry, LogLevel};

/// key -> (value, cas) of one VM id.
pub(crate) type SharedDataMap = HashMap<Vec<u8>, (Vec<u8>, u32)>;

/// A foreign function registered by a test.
pub(crate) type ForeignFn = dyn Fn(&[u8]) -> Result<Vec<u8>, Status>;

/// Plugin-wide configuration, fixed at start.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) vm_id: String,
    pub(crate) root_id: String,
    pub(crate) plugin_name: String,
    pub(crate) log_level: LogLevel,
    pub(crate) plugin_config: Vec<u8>,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) envs: Vec<(String, String)>,
    /// Clusters that exist; `None` accepts any name.
    pub(crate) clusters: Option<BTreeSet<String>>,
    pub(crate) properties: BTreeMap<Vec<String>, PropertyValue>,
}

/// Something that happens asynchronously, after the current callback has returned.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A new HTTP callout: ask the test's mock handler, if any.
    HttpCalloutDispatched { worker: usize, token: u32 },
    /// A new unary gRPC call: ask the test's mock handler, if any.
    GrpcCallDispatched { worker: usize, token: u32 },
    /// A gRPC call or stream whose serialized `GrpcService` names an unknown cluster: Envoy
    /// refused it (`InternalFailure`) yet closes its token afterwards.
    GrpcClusterUnavailable {
        worker: usize,
        generation: u64,
        token: u32,
    },
    /// Data was enqueued: Envoy posts `onQueueReady` to the registering VM.
    QueueReady {
        worker: usize,
        generation: u64,
        context_id: u32,
        token: u32,
    },
}

/// Caps on what the host holds for modules outside their linear memory (from [`crate::Limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostCaps {
    pub(crate) shared_data_keys: usize,
    pub(crate) shared_bytes: u64,
    pub(crate) queued_items: usize,
}

impl Default for HostCaps {
    fn default() -> Self {
        let limits = crate::types::Limits::default();
        HostCaps {
            shared_data_keys: limits.max_shared_data_keys,
            shared_bytes: limits.max_shared_bytes,
            queued_items: limits.max_queued_items,
        }
    }
}

/// A cap a module write would exceed: what, and the cap.
pub(crate) type CapExceeded = (&'static str, u64);

#[derive(Debug, Clone)]
pub(crate) struct SharedQueue {
    pub(crate) worker: usize,
    pub(crate) generation: u64,
    pub(crate) context_id: u32,
    pub(crate) items: VecDeque<Vec<u8>>,
}

pub(crate) struct SharedState {
    pub(crate) settings: Settings,
    pub(crate) clock: VirtualClock,
    pub(crate) logs: Vec<LogEntry>,
    pub(crate) metrics: MetricsStore,
    /// vm_id -> key -> (value, cas)
    pub(crate) shared_data: HashMap<String, SharedDataMap>,
    next_cas: u32,
    /// (vm_id, queue name) -> token
    pub(crate) queue_names: HashMap<(String, String), u32>,
    pub(crate) queues: HashMap<u32, SharedQueue>,
    next_queue_token: u32,
    pub(crate) http_callouts: Vec<HttpCalloutRecord>,
    pub(crate) grpc_callouts: Vec<GrpcCalloutRecord>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) foreign_functions: HashMap<String, Rc<ForeignFn>>,
    rng_state: u64,
    /// Envoy's request-id generator, apart from the modules' randomness so that presenting a
    /// request does not change what a module draws.
    request_id_state: u64,
    next_connection_id: u64,
    /// Current VM generation per worker (bumped on reload).
    pub(crate) generations: Vec<u64>,
    pub(crate) caps: HostCaps,
    /// Fuel used by every callback of every VM so far (bounds the work of one event drain).
    pub(crate) fuel_spent: u64,
    /// Keys in `shared_data`, all VM ids together.
    shared_data_keys: usize,
    /// Bytes of keys and values in `shared_data` plus bytes of queued items.
    shared_bytes: u64,
    /// Items in all queues.
    queued_items: usize,
    /// Calls of each hostcall by every VM, by function name.
    hostcall_counts: HashMap<String, u64>,
    /// The race in progress ([`crate::Plugin::race`]), reached by the hostcalls' race points.
    pub(crate) race: Option<Rc<RefCell<Scheduler>>>,
    /// Shared-data writes that can lose a concurrent update.
    pub(crate) hazards: Vec<SharedDataHazard>,
    /// The worker slots of VMs that run on Envoy's main thread (a singleton service, the
    /// plugin's main-thread VMs): their log lines say so ([`LogEntry::main_thread`]).
    pub(crate) main_thread_slots: BTreeSet<usize>,
}

impl SharedState {
    pub(crate) fn count_hostcall(&mut self, hostcall: &str) {
        match self.hostcall_counts.get_mut(hostcall) {
            Some(count) => *count = count.saturating_add(1),
            None => {
                self.hostcall_counts.insert(hostcall.to_string(), 1);
            }
        }
    }

    /// Calls of each hostcall so far, sorted by name.
    pub(crate) fn hostcall_counts(&self) -> BTreeMap<String, u64> {
        self.hostcall_counts
            .iter()
            .map(|(name, count)| (name.clone(), *count))
            .collect()
    }

    pub(crate) fn reset_hostcall_counts(&mut self) {
        self.hostcall_counts.clear();
    }

    pub(crate) fn new(settings: Settings, workers: usize, seed: u64) -> Self {
        SharedState {
            settings,
            clock: VirtualClock::new(),
            logs: Vec::new(),
            metrics: MetricsStore::default(),
            shared_data: HashMap::new(),
            next_cas: 1,
            queue_names: HashMap::new(),
            queues: HashMap::new(),
            next_queue_token: 1,
            http_callouts: Vec::new(),
            grpc_callouts: Vec::new(),
            events: VecDeque::new(),
            foreign_functions: HashMap::new(),
            rng_state: seed,
            request_id_state: !seed,
            next_connection_id: 1,
            generations: vec![0; workers],
            caps: HostCaps::default(),
            fuel_spent: 0,
            shared_data_keys: 0,
            shared_bytes: 0,
            queued_items: 0,
            hostcall_counts: HashMap::new(),
            race: None,
            hazards: Vec::new(),
            main_thread_slots: BTreeSet::new(),
        }
    }

    /// Whether a module may store `value` under `key` without exceeding the caps.
    pub(crate) fn shared_data_fits(&self, key: &[u8], value: &[u8]) -> Result<(), CapExceeded> {
        let existing = self
            .shared_data
            .get(&self.settings.vm_id)
            .and_then(|map| map.get(key));
        if existing.is_none() && self.shared_data_keys >= self.caps.shared_data_keys {
            return Err(("shared data keys", len_u64(self.caps.shared_data_keys)));
        }
        let freed = existing.map_or(0, |(old, _)| len_u64(key.len() + old.len()));
        let needed = self
            .shared_bytes
            .saturating_sub(freed)
            .saturating_add(len_u64(key.len().saturating_add(value.len())));
        if needed > self.caps.shared_bytes {
            return Err((
                "bytes held in shared data and queues",
                self.caps.shared_bytes,
            ));
        }
        Ok(())
    }

    /// Whether a module may enqueue `data` without exceeding the caps.
    pub(crate) fn enqueue_fits(&self, data: &[u8]) -> Result<(), CapExceeded> {
        if self.queued_items >= self.caps.queued_items {
            return Err(("queued items", len_u64(self.caps.queued_items)));
        }
        if self.shared_bytes.saturating_add(len_u64(data.len())) > self.caps.shared_bytes {
            return Err((
                "bytes held in shared data and queues",
                self.caps.shared_bytes,
            ));
        }
        Ok(())
    }

    /// Records a log line if the host's log level lets it through (as Envoy's logger does).
    pub(crate) fn log(&mut self, level: LogLevel, message: String, worker: usize) {
        if level >= self.settings.log_level {
            self.logs.push(LogEntry {
                level,
                message,
                worker,
                main_thread: self.main_thread_slots.contains(&worker),
            });
        }
    }

    /// Records a hazard once (the same write repeated per request is one finding), up to a cap.
    pub(crate) fn record_hazard(&mut self, hazard: SharedDataHazard) {
        const MAX_HAZARDS: usize = 256;
        if self.hazards.len() < MAX_HAZARDS && !self.hazards.contains(&hazard) {
            self.hazards.push(hazard);
        }
    }

    /// Whether `key` exists in shared data.
    pub(crate) fn shared_data_exists(&self, key: &[u8]) -> bool {
        self.shared_data
            .get(&self.settings.vm_id)
            .is_some_and(|map| map.contains_key(key))
    }

    /// `SharedData::get`: NotFound for unknown keys.
    pub(crate) fn get_shared_data(&self, key: &[u8]) -> Result<(Vec<u8>, u32), Status> {
        self.shared_data
            .get(&self.settings.vm_id)
            .and_then(|map| map.get(key))
            .cloned()
            .ok_or(Status::NotFound)
    }

    /// `SharedData::set`: a non-zero `cas` must match the stored one for existing keys; every
    /// write gets the next value of one process-wide CAS counter (starting at 1, skipping 0).
    pub(crate) fn set_shared_data(&mut self, key: &[u8], value: &[u8], cas: u32) -> Status {
        let next = self.next_cas;
        let map = self
            .shared_data
            .entry(self.settings.vm_id.clone())
            .or_default();
        if let Some(existing) = map.get_mut(key) {
            if cas != 0 && cas != existing.1 {
                return Status::CasMismatch;
            }
            let old_len = len_u64(existing.0.len());
            *existing = (value.to_vec(), next);
            self.shared_bytes = self
                .shared_bytes
                .saturating_sub(old_len)
                .saturating_add(len_u64(value.len()));
        } else {
            map.insert(key.to_vec(), (value.to_vec(), next));
            self.shared_data_keys = self.shared_data_keys.saturating_add(1);
            self.shared_bytes = self
                .shared_bytes
                .saturating_add(len_u64(key.len().saturating_add(value.len())));
        }
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        Status::Ok
    }

    /// `SharedQueue::registerQueue`: one token per (vm_id, name); re-registering moves delivery
    /// of `on_queue_ready` to the latest registrant.
    pub(crate) fn register_queue(
        &mut self,
        name: &str,
        worker: usize,
        generation: u64,
        context_id: u32,
    ) -> u32 {
        let key = (self.settings.vm_id.clone(), name.to_string());
        if let Some(token) = self.queue_names.get(&key).copied() {
            if let Some(queue) = self.queues.get_mut(&token) {
                queue.worker = worker;
                queue.generation = generation;
                queue.context_id = context_id;
            }
            return token;
        }
        let token = self.next_queue_token;
        self.next_queue_token = self.next_queue_token.wrapping_add(1).max(1);
        self.queue_names.insert(key, token);
        self.queues.insert(
            token,
            SharedQueue {
                worker,
                generation,
                context_id,
                items: VecDeque::new(),
            },
        );
        token
    }

    pub(crate) fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        let vm_id = if vm_id.is_empty() {
            self.settings.vm_id.as_str()
        } else {
            vm_id
        };
        self.queue_names
            .get(&(vm_id.to_string(), name.to_string()))
            .copied()
    }

    pub(crate) fn enqueue(&mut self, token: u32, data: &[u8]) -> Status {
        let Some(queue) = self.queues.get_mut(&token) else {
            return Status::NotFound;
        };
        queue.items.push_back(data.to_vec());
        self.queued_items = self.queued_items.saturating_add(1);
        self.shared_bytes = self.shared_bytes.saturating_add(len_u64(data.len()));
        let event = Event::QueueReady {
            worker: queue.worker,
            generation: queue.generation,
            context_id: queue.context_id,
            token,
        };
        self.events.push_back(event);
        Status::Ok
    }

    pub(crate) fn dequeue(&mut self, token: u32) -> Result<Vec<u8>, Status> {
        let queue = self.queues.get_mut(&token).ok_or(Status::NotFound)?;
        let item = queue.items.pop_front().ok_or(Status::Empty)?;
        self.queued_items = self.queued_items.saturating_sub(1);
        self.shared_bytes = self.shared_bytes.saturating_sub(len_u64(item.len()));
        Ok(item)
    }

    /// Deterministic randomness for `random_get` (splitmix64), so tests are reproducible.
    pub(crate) fn fill_random(&mut self, out: &mut [u8]) {
        splitmix(&mut self.rng_state, out);
    }

    /// A new `x-request-id` (UUID v4), as Envoy's connection manager generates one.
    pub(crate) fn next_request_id(&mut self) -> String {
        let mut bytes = [0u8; 16];
        splitmix(&mut self.request_id_state, &mut bytes);
        crate::client::uuid_v4(bytes)
    }

    pub(crate) fn next_connection_id(&mut self) -> u64 {
        let id = self.next_connection_id;
        self.next_connection_id += 1;
        id
    }
}

fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// Fills `out` from a splitmix64 sequence.
fn splitmix(state: &mut u64, out: &mut [u8]) {
    for chunk in out.chunks_mut(8) {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let bytes = z.to_le_bytes();
        for (dst, src) in chunk.iter_mut().zip(bytes.iter()) {
            *dst = *src;
        }
    }
}
