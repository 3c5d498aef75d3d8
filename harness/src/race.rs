//! Race mode: worker VMs interleaved at hostcall granularity, as Envoy's worker threads can be.
//!
//! Envoy runs one VM per worker thread, in parallel. A filter that reads shared data, computes,
//! then writes it back is only correct if the write is conditional on the CAS token of the read:
//! between the two hostcalls, other workers may have written the same key. Outside race mode the
//! harness runs one callback at a time, so such a read-modify-write is atomic here and a missing
//! CAS check goes unnoticed.
//!
//! [`Plugin::race`] takes stream events for several workers, "arriving at the same instant", and
//! runs them on a seeded schedule: whenever a VM reaches a *race point* — right after
//! `proxy_get_shared_data` or `proxy_dequeue_shared_queue` has read, or right before
//! `proxy_set_shared_data` or `proxy_enqueue_shared_queue` writes — the schedule may run other
//! workers' pending events to completion there and then, before the first VM continues. Each such
//! interleaving is one that parallel threads can produce. The same seed gives the same schedule;
//! [`explore_races`] runs many seeds and names the one that failed.
//!
//! Limits of the emulation (also in the crate's "not emulated" list): an interrupting event runs
//! to completion (its own race points do not interrupt it in turn), events of one worker never
//! overlap (a worker thread runs one callback at a time), and asynchronous work the events start
//! (callout answers, queue notifications) is delivered after the whole race, in order.
//!
//! Independently of any schedule, the harness records [`SharedDataHazard`]s: a write without a CAS
//! token to a key that exists ([`Plugin::shared_data_hazards`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use crate::error::HarnessError;
use crate::plugin::{Plugin, PluginInner};
use crate::stream::{HttpStream, StreamHandle, StreamOp};
use crate::types::Outcome;

/// Environment variable that makes [`explore_races`] run only the seed it names.
pub const RACE_SEED_ENV: &str = "WASMESH_RACE_SEED";

/// A write to shared data that can lose a concurrent update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDataHazard {
    /// Worker whose VM wrote.
    pub worker: usize,
    /// The key written.
    pub key: String,
    /// The callback that wrote (`proxy_on_request_headers`, ...).
    pub callback: String,
    /// What was wrong with the write.
    pub kind: HazardKind,
}

/// Kinds of [`SharedDataHazard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HazardKind {
    /// The VM read the key (and with it a CAS token) in the same callback, then wrote it without
    /// that token: a read-modify-write that silently overwrites whatever another worker wrote in
    /// between.
    TokenReadButNotUsed,
    /// The VM wrote an existing key without a CAS token and without reading it first in this
    /// callback: whatever other workers stored there is replaced unseen.
    BlindOverwrite,
}

impl fmt::Display for SharedDataHazard {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            HazardKind::TokenReadButNotUsed => {
                "read it with a CAS token, then wrote it without the token (an update another \
                 worker makes in between is lost)"
            }
            HazardKind::BlindOverwrite => {
                "overwrote it without a CAS token while it existed (what other workers stored is \
                 replaced unseen)"
            }
        };
        write!(
            formatter,
            "worker {} in {}: shared-data key {:?}: {what}",
            self.worker, self.callback, self.key
        )
    }
}

/// Stream events for several workers, run on one seeded schedule. Made by [`Plugin::race`].
pub struct Race<'p> {
    plugin: &'p Plugin,
    seed: u64,
    tasks: Vec<Task>,
}

/// One stream event of a race.
struct Task {
    worker: usize,
    handle: StreamHandle,
    op: StreamOp,
}

/// What a race did: each event's outcome, in the order the events were added, and the schedule.
#[derive(Debug)]
pub struct RaceReport {
    /// The seed of the schedule.
    pub seed: u64,
    /// Each event's outcome (or the error it ended with), in the order the events were added.
    pub outcomes: Vec<Result<Outcome, HarnessError>>,
    /// The schedule as it ran, one line per decision: which event started, and which events ran
    /// inside another VM's race point.
    pub schedule: Vec<String>,
}

impl RaceReport {
    /// How many events ended with a local reply of `status`.
    pub fn local_replies_with_status(&self, status: u32) -> usize {
        self.outcomes
            .iter()
            .filter(|outcome| {
                outcome
                    .as_ref()
                    .is_ok_and(|o| o.local_reply().is_some_and(|reply| reply.status == status))
            })
            .count()
    }
}

impl<'p> Race<'p> {
    pub(crate) fn new(plugin: &'p Plugin, seed: u64) -> Self {
        Race {
            plugin,
            seed,
            tasks: Vec::new(),
        }
    }

    /// Adds request headers arriving on `stream` (opened on its worker if it is new).
    pub fn request_headers(
        &mut self,
        stream: &mut HttpStream,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<&mut Self, HarnessError> {
        self.add(stream, StreamOp::request_headers(headers, end_of_stream))
    }

    /// Adds a request body chunk arriving on `stream`.
    pub fn request_body(
        &mut self,
        stream: &mut HttpStream,
        data: &[u8],
        end_of_stream: bool,
    ) -> Result<&mut Self, HarnessError> {
        self.add(stream, StreamOp::request_body(data, end_of_stream))
    }

    /// Adds response headers arriving on `stream`.
    pub fn response_headers(
        &mut self,
        stream: &mut HttpStream,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<&mut Self, HarnessError> {
        self.add(stream, StreamOp::response_headers(headers, end_of_stream))
    }

    /// Adds a response body chunk arriving on `stream`.
    pub fn response_body(
        &mut self,
        stream: &mut HttpStream,
        data: &[u8],
        end_of_stream: bool,
    ) -> Result<&mut Self, HarnessError> {
        self.add(stream, StreamOp::response_body(data, end_of_stream))
    }

    fn add(&mut self, stream: &mut HttpStream, op: StreamOp) -> Result<&mut Self, HarnessError> {
        let handle = stream.open()?;
        self.tasks.push(Task {
            worker: stream.worker(),
            handle,
            op,
        });
        Ok(self)
    }

    /// Runs the events on the seed's schedule, then delivers what they started asynchronously.
    pub fn run(&mut self) -> Result<RaceReport, HarnessError> {
        let tasks = std::mem::take(&mut self.tasks);
        let scheduler = self
            .plugin
            .with_inner(|inner| Ok(Scheduler::new(self.seed, inner, tasks)))?;
        let scheduler = Rc::new(RefCell::new(scheduler));
        self.plugin
            .shared
            .try_borrow_mut()
            .map_err(|_| crate::plugin::reentrancy())?
            .race = Some(scheduler.clone());
        while let Some(index) = next_top_level(&scheduler) {
            run_task(&scheduler, index, false);
        }
        // Tear down in every case: the scheduler holds the workers' VMs.
        if let Ok(mut shared) = self.plugin.shared.try_borrow_mut() {
            shared.race = None;
        }
        let scheduler = match Rc::try_unwrap(scheduler) {
            Ok(cell) => cell.into_inner(),
            Err(_) => return Err(crate::plugin::reentrancy()),
        };
        let Scheduler {
            seed,
            shells,
            results,
            schedule,
            tasks,
            ..
        } = scheduler;
        self.plugin.with_inner(|inner| {
            for (worker, shell) in shells {
                let shell = Rc::try_unwrap(shell)
                    .map_err(|_| crate::plugin::reentrancy())?
                    .into_inner();
                inner.rejoin(worker, shell);
            }
            let drained = inner.drain_events();
            let outcomes = tasks
                .iter()
                .zip(results)
                .map(|(task, result)| {
                    let step = result.unwrap_or_else(|| {
                        Err(HarnessError::InvalidUse(
                            "the race never ran this event".into(),
                        ))
                    })?;
                    step.into_outcome(inner, task.worker, task.handle)
                })
                .collect();
            drained?;
            Ok(RaceReport {
                seed,
                outcomes,
                schedule,
            })
        })
    }
}

/// A failed round of [`explore_races`]: the seed that reproduces it, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaceFailure {
    /// The seed whose schedule failed.
    pub seed: u64,
    /// What the round reported.
    pub message: String,
}

impl fmt::Display for RaceFailure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "race seed {seed} failed (reproduce with {RACE_SEED_ENV}={seed}): {message}",
            seed = self.seed,
            message = self.message
        )
    }
}

impl std::error::Error for RaceFailure {}

/// Runs `round` once per seed, stopping at the first failure, which names its seed. With
/// [`RACE_SEED_ENV`] set, runs only that seed.
pub fn explore_races<E: fmt::Display>(
    seeds: impl IntoIterator<Item = u64>,
    mut round: impl FnMut(u64) -> Result<(), E>,
) -> Result<(), RaceFailure> {
    let pinned = std::env::var(RACE_SEED_ENV)
        .ok()
        .and_then(|seed| seed.trim().parse::<u64>().ok());
    let seeds: Vec<u64> = match pinned {
        Some(seed) => vec![seed],
        None => seeds.into_iter().collect(),
    };
    for seed in seeds {
        round(seed).map_err(|error| RaceFailure {
            seed,
            message: error.to_string(),
        })?;
    }
    Ok(())
}

/// The state of a running race, reachable from the hostcalls through the shared state.
pub(crate) struct Scheduler {
    seed: u64,
    rng: u64,
    /// Each racing worker's VMs, in a plugin of their own, so that one worker's event can run
    /// while another worker's callback is suspended in a hostcall.
    shells: BTreeMap<usize, Rc<RefCell<PluginInner>>>,
    tasks: Vec<Task>,
    /// Events not started yet, in the order they were added.
    pending: Vec<usize>,
    results: Vec<Option<Result<crate::stream::Step, HarnessError>>>,
    schedule: Vec<String>,
    /// The event whose callback is interrupted at a race point, if any: interrupting events run
    /// to completion.
    interrupted: Option<usize>,
    /// The event running at top level.
    running: Option<usize>,
}

impl Scheduler {
    fn new(seed: u64, inner: &mut PluginInner, tasks: Vec<Task>) -> Self {
        let mut shells = BTreeMap::new();
        for task in &tasks {
            shells
                .entry(task.worker)
                .or_insert_with(|| Rc::new(RefCell::new(inner.detach(task.worker))));
        }
        let count = tasks.len();
        Scheduler {
            seed,
            rng: seed ^ 0x7ace_5eed_0bad_cafe,
            shells,
            tasks,
            pending: (0..count).collect(),
            results: (0..count).map(|_| None).collect(),
            schedule: Vec::new(),
            interrupted: None,
            running: None,
        }
    }

    /// splitmix64.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Pending events that may start now: the first pending event of each stream (a stream's
    /// events keep their order), on a worker other than `busy` (a worker thread runs one
    /// callback at a time).
    fn eligible(&self, busy: Option<usize>) -> Vec<usize> {
        let mut eligible = Vec::new();
        let mut streams_seen = Vec::new();
        for &index in &self.pending {
            let Some(task) = self.tasks.get(index) else {
                continue;
            };
            let stream = (task.worker, task.handle.generation, task.handle.context);
            if streams_seen.contains(&stream) {
                continue;
            }
            streams_seen.push(stream);
            if Some(task.worker) != busy {
                eligible.push(index);
            }
        }
        eligible
    }

    fn pick(&mut self, eligible: &[usize]) -> Option<usize> {
        if eligible.is_empty() {
            return None;
        }
        let len = u64::try_from(eligible.len()).unwrap_or(u64::MAX);
        let choice = usize::try_from(self.next_random() % len).unwrap_or(0);
        let index = *eligible.get(choice)?;
        self.pending.retain(|&pending| pending != index);
        Some(index)
    }

    fn describe(&self, index: usize) -> String {
        match self.tasks.get(index) {
            Some(task) => format!(
                "event {index} ({} on worker {})",
                task.op.name(),
                task.worker
            ),
            None => format!("event {index}"),
        }
    }
}

fn next_top_level(scheduler: &Rc<RefCell<Scheduler>>) -> Option<usize> {
    let mut scheduler = scheduler.try_borrow_mut().ok()?;
    let eligible = scheduler.eligible(None);
    let index = scheduler.pick(&eligible)?;
    let line = format!("start {}", scheduler.describe(index));
    scheduler.schedule.push(line);
    scheduler.running = Some(index);
    Some(index)
}

fn run_task(scheduler: &Rc<RefCell<Scheduler>>, index: usize, interrupting: bool) {
    let Ok(borrowed) = scheduler.try_borrow() else {
        return;
    };
    let Some(task) = borrowed.tasks.get(index) else {
        return;
    };
    let (worker, handle, op) = (task.worker, task.handle, task.op.clone());
    let shell = borrowed.shells.get(&worker).cloned();
    drop(borrowed);
    let result = match shell {
        Some(shell) => match shell.try_borrow_mut() {
            Ok(mut shell) => shell.apply(worker, handle, op),
            Err(_) => Err(crate::plugin::reentrancy()),
        },
        None => Err(HarnessError::InvalidUse(format!(
            "worker {worker} is not part of the race"
        ))),
    };
    if let Ok(mut scheduler) = scheduler.try_borrow_mut() {
        if let Some(slot) = scheduler.results.get_mut(index) {
            *slot = Some(result);
        }
        if !interrupting {
            scheduler.running = None;
        }
    }
}

/// A VM on `worker` reached a race point (`at`, e.g. `after proxy_get_shared_data("k")`): the
/// schedule may run other workers' pending events to completion now. Called with no borrow of the
/// shared state held.
pub(crate) fn race_point(scheduler: &Rc<RefCell<Scheduler>>, worker: usize, at: &str) {
    loop {
        let next = {
            let Ok(mut sched) = scheduler.try_borrow_mut() else {
                return;
            };
            // Interrupting events run to completion: their own race points do not nest.
            if sched.interrupted.is_some() || sched.running.is_none() {
                return;
            }
            // Interrupt here at all? Half of the race points do, so that over many seeds every
            // pair of race points is tried both ways.
            if sched.next_random() % 2 == 0 {
                return;
            }
            let eligible = sched.eligible(Some(worker));
            let Some(index) = sched.pick(&eligible) else {
                return;
            };
            let line = format!(
                "  {} runs on worker {worker}'s race point {at}",
                sched.describe(index)
            );
            sched.schedule.push(line);
            sched.interrupted = Some(index);
            index
        };
        run_task(scheduler, next, true);
        if let Ok(mut sched) = scheduler.try_borrow_mut() {
            sched.interrupted = None;
        }
    }
}
