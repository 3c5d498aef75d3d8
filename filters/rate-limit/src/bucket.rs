//! Token buckets as GCRA (`governor`) over proxy-wasm shared data, exact across worker VMs.
//!
//! Envoy runs one wasm VM per worker thread. A limiter that keeps its state in VM memory
//! admits anywhere between `limit / workers` and `limit * workers`. Here every bucket is one
//! shared-data entry holding the GCRA *theoretical arrival time* (TAT) as an **absolute** host
//! time in nanoseconds, and every decision is a compare-and-swap on that entry: the admitted
//! requests of all workers form one linear sequence, so the count is exact.
//!
//! governor's GCRA keeps times relative to each limiter's creation instant, which would differ
//! between VMs. So the limiter is created per decision with a clock frozen at the current host
//! time, and [`SharedTat`] (governor's `StateStore`) converts between the stored absolute TAT
//! and governor's relative one (`relative = absolute - now`).
//!
//! # Bounded state
//! A bucket that is full again has the same state as a bucket never used (`TAT <= now`), so its
//! entry can be reused by another key without changing any decision. Wildcard descriptors (one
//! bucket per request value) therefore use a fixed table of `max_dynamic_descriptors` entries,
//! created at startup: a value hashes (SHA-256) to a home slot and probes up to
//! [`PROBE_WINDOW`] slots for its own entry, else a free one (never used or full again). Only
//! when every probed slot holds a live bucket of another value is one evicted (the one closest
//! to full), which resets that value's bucket: the documented approximation, counted in the
//! `descriptor_evicted` stat. Shared data never holds more than
//! `1 + descriptors + max_dynamic_descriptors * wildcard descriptors` entries per plugin.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use sha2::{Digest, Sha256};
use wasmesh_sdk::error::Error;
use wasmesh_sdk::shared::{create_if_absent, SharedData, SharedValue};

use crate::config::TokenBucket;

/// How many slots a wildcard descriptor's value may probe.
pub const PROBE_WINDOW: u32 = 8;

/// Size of a fixed bucket entry: the absolute TAT.
const FIXED_ENTRY_LEN: usize = 8;
/// Size of a table slot: a 16-byte fingerprint of the value, then the absolute TAT.
const SLOT_ENTRY_LEN: usize = 24;

/// A bucket's GCRA parameters: burst `max_tokens`, one token every `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketQuota {
    burst: NonZeroU32,
    period_nanos: u64,
    quota: Quota,
}

impl BucketQuota {
    /// From a validated token bucket (`None` for a zero burst or period).
    pub fn new(bucket: &TokenBucket) -> Option<Self> {
        let burst = bucket.burst()?;
        let period_nanos = bucket.period_nanos();
        let quota = Quota::with_period(Duration::from_nanos(period_nanos))?.allow_burst(burst);
        Some(BucketQuota {
            burst,
            period_nanos,
            quota,
        })
    }

    /// `max_tokens`.
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// Nanoseconds per token.
    pub fn period_nanos(&self) -> u64 {
        self.period_nanos
    }

    /// GCRA's tolerance: `period * (burst - 1)`.
    fn tau(&self) -> u64 {
        self.period_nanos
            .saturating_mul(u64::from(self.burst.get() - 1))
    }

    /// How many requests a fresh bucket admits when one arrives every `interval` for `span`
    /// (starting at 0, the last at `span`): `burst + floor(span / period)`, while arrivals are
    /// at least as frequent as tokens. The bound the exactness tests check.
    pub fn admitted_bound(&self, span: Duration) -> u64 {
        let span = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX);
        u64::from(self.burst.get()) + span / self.period_nanos
    }
}

/// Where a bucket's state lives in shared data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// One entry (the default bucket, a descriptor with fixed values).
    Fixed(String),
    /// One of `slots` entries `<prefix>.<index>`, chosen by the value's fingerprint.
    Table {
        /// Key prefix.
        prefix: String,
        /// Table size.
        slots: u32,
        /// SHA-256 (first 16 bytes) of the request descriptor.
        fingerprint: [u8; 16],
    },
}

/// 16 bytes of SHA-256 over the length-prefixed entries: a bucket identity an attacker cannot
/// collide on purpose.
pub fn fingerprint<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> [u8; 16] {
    let mut hasher = Sha256::new();
    for (key, value) in entries {
        for part in [key, value] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
    }
    let digest = hasher.finalize();
    let mut out = [0u8; 16];
    // A SHA-256 digest has 32 bytes: the zip copies the first 16.
    for (byte, digest_byte) in out.iter_mut().zip(digest.iter()) {
        *byte = *digest_byte;
    }
    if out == [0u8; 16] {
        // The all-zero fingerprint marks a never-used slot.
        out[0] = 1;
    }
    out
}

/// Creates the entries of `location` that do not exist yet, so that every later write is a
/// compare-and-swap (the ABI has no "create if absent": a write without a CAS token is
/// unconditional). Run at configuration time, before traffic.
pub fn create_entries(store: &dyn SharedData, location: &Location) -> Result<(), Error> {
    match location {
        Location::Fixed(key) => create_if_absent(store, key, &[0; FIXED_ENTRY_LEN]).map(|_| ()),
        Location::Table { prefix, slots, .. } => (0..*slots).try_for_each(|index| {
            create_if_absent(store, &slot_key(prefix, index), &[0; SLOT_ENTRY_LEN]).map(|_| ())
        }),
    }
}

fn slot_key(prefix: &str, index: u32) -> String {
    format!("{prefix}.{index}")
}

/// The outcome of one bucket decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the hits were admitted.
    pub allowed: bool,
    /// `max_tokens`.
    pub limit: u32,
    /// Whole tokens left after the decision.
    pub remaining: u32,
    /// Time until the next token is available (zero when one is).
    pub reset: Duration,
    /// Time until the bucket is full again.
    pub full_in: Duration,
    /// Another value's live bucket was evicted to make room (wildcard tables only).
    pub evicted: bool,
    /// The state could not be read or written (host error, CAS contention): the request is
    /// admitted (fail open) and the error reported.
    pub error: Option<Error>,
}

/// Takes `hits` tokens from the bucket at `location` at host time `now_nanos` (since the Unix
/// epoch), retrying compare-and-swap conflicts up to `attempts` times.
pub fn acquire(
    store: &dyn SharedData,
    location: &Location,
    quota: &BucketQuota,
    hits: u32,
    now_nanos: u64,
    attempts: u32,
) -> Decision {
    let limit = quota.burst();
    let Some(hits) = NonZeroU32::new(hits) else {
        return Decision {
            allowed: true,
            limit,
            remaining: limit,
            reset: Duration::ZERO,
            full_in: Duration::ZERO,
            evicted: false,
            error: None,
        };
    };
    let tat_store = SharedTat {
        store,
        location,
        now: now_nanos,
        attempts,
        observed: Cell::new(None),
        written: Cell::new(None),
        evicted: Cell::new(false),
        error: RefCell::new(None),
    };
    let decision = if hits.get() > quota.burst() {
        // More than a full bucket can never be admitted (governor's InsufficientCapacity);
        // checked here so that governor never multiplies an out-of-range count.
        Err(None)
    } else {
        let limiter: RateLimiter<(), &SharedTat<'_>, FrozenClock, NoOpMiddleware<Nanos>> =
            RateLimiter::new(quota.quota, &tat_store, FrozenClock(Nanos::from(now_nanos)));
        match limiter.check_key_n(&(), hits) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Some(not_until.wait_time_from(Nanos::from(now_nanos)))),
            Err(_insufficient) => Err(None),
        }
    };
    let error = tat_store.error.borrow_mut().take();
    let evicted = tat_store.evicted.get();
    if let Some(error) = error {
        return Decision {
            allowed: true,
            limit,
            remaining: 0,
            reset: Duration::ZERO,
            full_in: Duration::ZERO,
            evicted,
            error: Some(error),
        };
    }
    let tau = quota.tau();
    let period = quota.period_nanos;
    // Whole tokens a relative TAT leaves at t0 = 0: floor((tau + T - tat) / T).
    let tokens_at = |tat: u64| -> u32 {
        let tokens = (tau.saturating_add(period)).saturating_sub(tat) / period;
        u32::try_from(tokens).unwrap_or(u32::MAX).min(limit)
    };
    match decision {
        Ok(()) => {
            let tat = tat_store.written.get().unwrap_or(0);
            Decision {
                allowed: true,
                limit,
                remaining: tokens_at(tat),
                reset: Duration::from_nanos(tat.saturating_sub(tau)),
                full_in: Duration::from_nanos(tat),
                evicted,
                error: None,
            }
        }
        Err(wait) => {
            let tat = tat_store.observed.get().unwrap_or(0);
            Decision {
                allowed: false,
                limit,
                remaining: tokens_at(tat),
                reset: wait.unwrap_or_else(|| Duration::from_nanos(tat.saturating_sub(tau))),
                full_in: Duration::from_nanos(tat),
                evicted,
                error: None,
            }
        }
    }
}

/// A governor clock frozen at one host time: the limiter lives for one decision, so its
/// "creation instant" is the decision time and every relative time starts at 0 there.
struct FrozenClock(Nanos);

impl GovernorClock for FrozenClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        self.0
    }
}

/// governor's `StateStore` over one bucket's shared-data entry, holding absolute TATs.
struct SharedTat<'a> {
    store: &'a dyn SharedData,
    location: &'a Location,
    /// The host time of the decision (the limiter's origin), nanoseconds since the epoch.
    now: u64,
    attempts: u32,
    /// Relative TAT read by the last attempt.
    observed: Cell<Option<u64>>,
    /// Relative TAT written by the successful attempt.
    written: Cell<Option<u64>>,
    evicted: Cell<bool>,
    error: RefCell<Option<Error>>,
}

/// One bucket entry as read: where to write back, its CAS token, and the absolute TAT
/// (`None` for a fresh bucket).
struct Read {
    key: String,
    cas: Option<u32>,
    tat: Option<u64>,
    evicts: bool,
}

impl SharedTat<'_> {
    fn read(&self) -> Result<Read, Error> {
        match self.location {
            Location::Fixed(key) => {
                let current = self.store.get_shared_data(key)?;
                let tat = current
                    .as_ref()
                    .and_then(|value| value.value.get(..FIXED_ENTRY_LEN))
                    .and_then(|bytes| bytes.try_into().ok())
                    .map(u64::from_le_bytes)
                    .filter(|tat| *tat != 0);
                Ok(Read {
                    key: key.clone(),
                    cas: current.map(|value| value.cas),
                    tat,
                    evicts: false,
                })
            }
            Location::Table {
                prefix,
                slots,
                fingerprint,
            } => self.probe(prefix, *slots, fingerprint),
        }
    }

    /// Finds this value's slot, else a free one, else the live slot closest to full.
    fn probe(&self, prefix: &str, slots: u32, fingerprint: &[u8; 16]) -> Result<Read, Error> {
        let slots = slots.max(1);
        let home_bytes: [u8; 8] = fingerprint[..8].try_into().unwrap_or([0; 8]);
        let home = u64::from_le_bytes(home_bytes) % u64::from(slots);
        let mut free: Option<Read> = None;
        let mut victim: Option<Read> = None;
        for step in 0..PROBE_WINDOW.min(slots) {
            let index = u32::try_from((home + u64::from(step)) % u64::from(slots)).unwrap_or(0);
            let key = slot_key(prefix, index);
            let current: Option<SharedValue> = self.store.get_shared_data(&key)?;
            let cas = current.as_ref().map(|value| value.cas);
            let entry = current
                .as_ref()
                .filter(|value| value.value.len() == SLOT_ENTRY_LEN)
                .map(|value| {
                    let (owner, tat) = value.value.split_at(16);
                    let tat: [u8; 8] = tat.try_into().unwrap_or([0; 8]);
                    (owner, u64::from_le_bytes(tat))
                });
            match entry {
                Some((owner, tat)) if owner == fingerprint => {
                    return Ok(Read {
                        key,
                        cas,
                        tat: Some(tat).filter(|tat| *tat != 0),
                        evicts: false,
                    });
                }
                // Never used: by construction this value was never placed past it.
                None => {
                    return Ok(free.unwrap_or(Read {
                        key,
                        cas,
                        tat: None,
                        evicts: false,
                    }));
                }
                Some((owner, _)) if owner.iter().all(|byte| *byte == 0) => {
                    return Ok(free.unwrap_or(Read {
                        key,
                        cas,
                        tat: None,
                        evicts: false,
                    }));
                }
                // Full again: reusable without changing any decision.
                Some((_, tat)) if tat <= self.now => {
                    if free.is_none() {
                        free = Some(Read {
                            key,
                            cas,
                            tat: None,
                            evicts: false,
                        });
                    }
                }
                Some((_, tat)) => {
                    if victim
                        .as_ref()
                        .is_none_or(|current| current.tat > Some(tat))
                    {
                        victim = Some(Read {
                            key,
                            cas,
                            tat: Some(tat),
                            evicts: true,
                        });
                    }
                }
            }
        }
        if let Some(free) = free {
            return Ok(free);
        }
        // Every probed slot is live: evict the one closest to full; this value starts fresh.
        victim
            .map(|victim| Read {
                tat: None,
                ..victim
            })
            .ok_or_else(|| Error::InvalidArgument("empty slot table".to_string()))
    }

    fn encode(&self, absolute_tat: u64) -> Vec<u8> {
        match self.location {
            Location::Fixed(_) => absolute_tat.to_le_bytes().to_vec(),
            Location::Table { fingerprint, .. } => {
                let mut value = Vec::with_capacity(SLOT_ENTRY_LEN);
                value.extend_from_slice(fingerprint);
                value.extend_from_slice(&absolute_tat.to_le_bytes());
                value
            }
        }
    }

    fn fail(&self, error: Error) {
        *self.error.borrow_mut() = Some(error);
    }
}

impl StateStore for &SharedTat<'_> {
    type Key = ();

    fn measure_and_replace<T, F, E>(&self, _key: &(), f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut last = None;
        for _ in 0..self.attempts {
            let read = match self.read() {
                Ok(read) => read,
                Err(error) => {
                    self.fail(error);
                    break;
                }
            };
            let relative = read.tat.map(|tat| tat.saturating_sub(self.now));
            self.observed.set(relative);
            // Denied: nothing to write.
            let (outcome, new_tat) = f(relative.map(Nanos::from))?;
            let relative_new = u64::from(new_tat);
            let absolute = self.now.saturating_add(relative_new);
            match self
                .store
                .set_shared_data(&read.key, &self.encode(absolute), read.cas)
            {
                Ok(()) => {
                    self.written.set(Some(relative_new));
                    self.evicted.set(read.evicts);
                    return Ok(outcome);
                }
                Err(Error::CasMismatch { .. }) => {
                    last = Some(outcome);
                }
                Err(error) => {
                    self.fail(error);
                    return Ok(outcome);
                }
            }
        }
        if self.error.borrow().is_none() {
            let key = match self.location {
                Location::Fixed(key) => key.clone(),
                Location::Table { prefix, .. } => prefix.clone(),
            };
            self.fail(Error::CasContention {
                key,
                attempts: self.attempts,
            });
        }
        // governor needs an answer; the caller sees the recorded error and fails open.
        match last {
            Some(outcome) => Ok(outcome),
            None => f(None).map(|(outcome, _)| outcome),
        }
    }
}

/// Shared data kept inside one VM (`wasmesh.state_scope: WORKER`): the same entries and CAS
/// rules, but every worker counts alone.
#[derive(Debug, Default)]
pub struct WorkerStore {
    entries: RefCell<HashMap<String, SharedValue>>,
    next_cas: Cell<u32>,
}

impl SharedData for WorkerStore {
    fn get_shared_data(&self, key: &str) -> Result<Option<SharedValue>, Error> {
        Ok(self.entries.borrow().get(key).cloned())
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Error> {
        let mut entries = self.entries.borrow_mut();
        if let (Some(cas), Some(current)) = (cas, entries.get(key)) {
            if current.cas != cas {
                return Err(Error::CasMismatch {
                    key: key.to_string(),
                });
            }
        }
        let next = self.next_cas.get().wrapping_add(1).max(1);
        self.next_cas.set(next);
        entries.insert(
            key.to_string(),
            SharedValue {
                value: value.to_vec(),
                cas: next,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use wasmesh_sdk::testing::MemoryHost;

    const START: u64 = 1_700_000_000_000_000_000;

    fn quota(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> BucketQuota {
        BucketQuota::new(&TokenBucket {
            max_tokens,
            tokens_per_fill: Some(tokens_per_fill),
            fill_interval,
        })
        .unwrap()
    }

    fn fixed(store: &dyn SharedData) -> Location {
        let location = Location::Fixed("rl.test".into());
        create_entries(store, &location).unwrap();
        location
    }

    #[test]
    fn burst_then_one_token_per_period() {
        let host = MemoryHost::new();
        let location = fixed(&host);
        let quota = quota(3, 1, Duration::from_secs(1));
        let take = |at: u64| acquire(&host, &location, &quota, 1, at, 4);

        let first = take(START);
        assert!(first.allowed);
        assert_eq!((first.limit, first.remaining), (3, 2));
        assert!(take(START).allowed);
        let last = take(START);
        assert_eq!((last.allowed, last.remaining), (true, 0));
        assert_eq!(last.reset, Duration::from_secs(1));
        let denied = take(START + 999_999_999);
        assert!(!denied.allowed);
        assert_eq!(denied.reset, Duration::from_nanos(1));
        assert!(take(START + 1_000_000_000).allowed);
        assert!(!take(START + 1_500_000_000).allowed);
        // A long pause refills to the burst, never beyond.
        let refilled = take(START + 100_000_000_000);
        assert_eq!((refilled.allowed, refilled.remaining), (true, 2));
    }

    #[test]
    fn the_stored_tat_is_absolute_host_time() {
        let host = MemoryHost::new();
        let location = fixed(&host);
        let quota = quota(2, 1, Duration::from_secs(10));
        acquire(&host, &location, &quota, 1, START, 4);
        let stored = host.get_shared_data("rl.test").unwrap().unwrap().value;
        assert_eq!(
            u64::from_le_bytes(stored.try_into().unwrap()),
            START + 10_000_000_000
        );
        // A limiter created later (another VM, another request) reads the same state.
        let later = acquire(&host, &location, &quota, 1, START + 1, 4);
        assert!(later.allowed);
        assert!(!acquire(&host, &location, &quota, 1, START + 2, 4).allowed);
    }

    #[test]
    fn hits_consume_several_tokens_and_never_more_than_the_burst() {
        let host = MemoryHost::new();
        let location = fixed(&host);
        let quota = quota(5, 1, Duration::from_secs(1));
        let three = acquire(&host, &location, &quota, 3, START, 4);
        assert_eq!((three.allowed, three.remaining), (true, 2));
        let denied = acquire(&host, &location, &quota, 3, START, 4);
        assert_eq!((denied.allowed, denied.remaining), (false, 2));
        assert!(!acquire(&host, &location, &quota, 6, START + 100_000_000_000, 4).allowed);
        assert!(acquire(&host, &location, &quota, 0, START, 4).allowed);
    }

    #[test]
    fn envoy_token_bucket_maps_to_the_same_rate_and_burst() {
        // 10 tokens, 5 per 2s: burst 10, then one every 400ms.
        let quota = quota(10, 5, Duration::from_secs(2));
        assert_eq!(quota.burst(), 10);
        assert_eq!(quota.period_nanos(), 400_000_000);
        assert_eq!(quota.admitted_bound(Duration::from_secs(4)), 20);
    }

    #[test]
    fn exact_under_interleaved_stores_sharing_one_entry() {
        // Several "VMs" (decisions at increasing host times) over one shared entry.
        let host = MemoryHost::new();
        let location = fixed(&host);
        let quota = quota(4, 1, Duration::from_millis(100));
        let mut admitted = 0;
        for tick in 0..1000u64 {
            if acquire(&host, &location, &quota, 1, START + tick * 1_000_000, 4).allowed {
                admitted += 1;
            }
        }
        // 999ms of arrivals every 1ms: burst 4 + floor(999 / 100).
        assert_eq!(admitted, quota.admitted_bound(Duration::from_millis(999)));
        assert_eq!(admitted, 13);
    }

    /// Interleaves a competing writer between our read and our write.
    struct Racing<'a> {
        inner: &'a MemoryHost,
        races_left: Cell<u32>,
        quota: BucketQuota,
    }

    impl SharedData for Racing<'_> {
        fn get_shared_data(&self, key: &str) -> Result<Option<SharedValue>, Error> {
            let read = self.inner.get_shared_data(key);
            if self.races_left.get() > 0 {
                self.races_left.set(self.races_left.get() - 1);
                // Another worker admits one request in between.
                let location = Location::Fixed(key.to_string());
                assert!(acquire(self.inner, &location, &self.quota, 1, START, 1).allowed);
            }
            read
        }

        fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Error> {
            self.inner.set_shared_data(key, value, cas)
        }
    }

    #[test]
    fn a_lost_race_is_retried_and_counts_once() {
        let host = MemoryHost::new();
        let location = fixed(&host);
        let quota = quota(10, 1, Duration::from_secs(60));
        let racing = Racing {
            inner: &host,
            races_left: Cell::new(2),
            quota,
        };
        let ours = acquire(&racing, &location, &quota, 1, START, 4);
        assert!(ours.allowed);
        // Two competitors and ours: three tokens gone, none lost or double counted.
        assert_eq!(ours.remaining, 7);
        let next = acquire(&host, &location, &quota, 1, START, 4);
        assert_eq!(next.remaining, 6);
    }

    #[test]
    fn endless_contention_fails_open_with_an_error() {
        let host = MemoryHost::new();
        let location = fixed(&host);
        let quota = quota(10, 1, Duration::from_secs(60));
        let racing = Racing {
            inner: &host,
            races_left: Cell::new(u32::MAX),
            quota,
        };
        let decision = acquire(&racing, &location, &quota, 1, START, 3);
        assert!(decision.allowed);
        assert_eq!(
            decision.error,
            Some(Error::CasContention {
                key: "rl.test".into(),
                attempts: 3
            })
        );
    }

    /// A thread-safe store with Envoy's CAS rules, for real concurrency; counts lost races.
    #[derive(Default)]
    struct ThreadSafe(
        Mutex<(HashMap<String, SharedValue>, u32)>,
        std::sync::atomic::AtomicU64,
    );

    impl SharedData for ThreadSafe {
        fn get_shared_data(&self, key: &str) -> Result<Option<SharedValue>, Error> {
            thread_local!(static READS: Cell<u64> = const { Cell::new(0) });
            let read = self.0.lock().unwrap().0.get(key).cloned();
            // Every other read, let other threads run before our CAS write: races are likely,
            // yet each thread soon has a short window again (no starvation).
            if READS.with(|reads| {
                reads.set(reads.get() + 1);
                reads.get() % 2 == 0
            }) {
                std::thread::yield_now();
            }
            Ok(read)
        }

        fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Error> {
            let mut guard = self.0.lock().unwrap();
            let (entries, counter) = &mut *guard;
            if let (Some(cas), Some(current)) = (cas, entries.get(key)) {
                if current.cas != cas {
                    self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Err(Error::CasMismatch { key: key.into() });
                }
            }
            *counter += 1;
            let cas = *counter;
            entries.insert(
                key.into(),
                SharedValue {
                    value: value.to_vec(),
                    cas,
                },
            );
            Ok(())
        }
    }

    #[test]
    fn concurrent_threads_never_lose_or_double_count() {
        let store = Arc::new(ThreadSafe::default());
        let location = fixed(&*store);
        // 4000 attempts on a bucket of 2000 that does not refill during the test: exactly
        // 2000 admissions whatever the interleaving.
        let quota = quota(2000, 1, Duration::from_secs(3600));
        let start = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = Arc::clone(&store);
                let location = location.clone();
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    let mut admitted = 0u32;
                    let mut errors = 0u32;
                    start.wait();
                    for _ in 0..500 {
                        let decision = acquire(&*store, &location, &quota, 1, START, 1000);
                        if decision.error.is_some() {
                            errors += 1;
                        } else if decision.allowed {
                            admitted += 1;
                        }
                    }
                    (admitted, errors)
                })
            })
            .collect();
        let (admitted, errors) = threads
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .fold((0, 0), |(a, e), (da, de)| (a + da, e + de));
        assert_eq!(errors, 0);
        assert_eq!(admitted, 2000);
        // The stored TAT advanced by exactly one period per admission: no update was lost
        // (it would leave the TAT short) or applied twice.
        let stored = store.get_shared_data("rl.test").unwrap().unwrap().value;
        assert_eq!(
            u64::from_le_bytes(stored.try_into().unwrap()),
            START + 2000 * 3_600_000_000_000
        );
        let races = store.1.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            races > 0,
            "the threads never raced: the test proved nothing"
        );
    }

    fn table(store: &dyn SharedData, slots: u32, value: &str) -> Location {
        let location = Location::Table {
            prefix: "rl.table".into(),
            slots,
            fingerprint: fingerprint([("client", value)]),
        };
        create_entries(store, &location).unwrap();
        location
    }

    #[test]
    fn wildcard_values_get_their_own_buckets_in_a_bounded_table() {
        let host = MemoryHost::new();
        let quota = quota(1, 1, Duration::from_secs(10));
        for value in ["a", "b", "c"] {
            let location = table(&host, 4, value);
            assert!(
                acquire(&host, &location, &quota, 1, START, 4).allowed,
                "{value}"
            );
            assert!(
                !acquire(&host, &location, &quota, 1, START, 4).allowed,
                "{value}"
            );
        }
        assert!(host.get_shared_data("rl.table.3").unwrap().is_some());
        assert!(host.get_shared_data("rl.table.4").unwrap().is_none());
    }

    #[test]
    fn full_buckets_are_reused_and_live_ones_evicted_only_when_the_window_is_full() {
        let host = MemoryHost::new();
        let quota = quota(1, 1, Duration::from_secs(10));
        // One slot: every value competes for it.
        let a = table(&host, 1, "a");
        let b = table(&host, 1, "b");
        assert!(acquire(&host, &a, &quota, 1, START, 4).allowed);
        // `a` is live: `b` evicts it (the documented approximation).
        let evicting = acquire(&host, &b, &quota, 1, START, 4);
        assert!(evicting.allowed && evicting.evicted);
        // Once `b` is full again its slot is reused without eviction.
        let later = START + 10_000_000_000;
        let reuse = acquire(&host, &a, &quota, 1, later, 4);
        assert!(reuse.allowed && !reuse.evicted);
        assert!(!acquire(&host, &a, &quota, 1, later, 4).allowed);
    }

    #[test]
    fn fingerprints_separate_keys_and_values() {
        assert_ne!(fingerprint([("a", "bc")]), fingerprint([("ab", "c")]));
        assert_ne!(
            fingerprint([("a", "b"), ("c", "d")]),
            fingerprint([("a", "b")])
        );
        assert_eq!(fingerprint([("k", "v")]), fingerprint([("k", "v")]));
    }

    #[test]
    fn worker_store_keeps_cas_semantics() {
        let store = WorkerStore::default();
        store.set_shared_data("k", b"1", None).unwrap();
        let read = store.get_shared_data("k").unwrap().unwrap();
        store.set_shared_data("k", b"2", Some(read.cas)).unwrap();
        assert_eq!(
            store.set_shared_data("k", b"3", Some(read.cas)),
            Err(Error::CasMismatch { key: "k".into() })
        );
    }
}
