//! `max_active_faults` across worker VMs.
//!
//! Envoy runs one wasm VM per worker thread, so a per-VM counter would let every worker inject
//! `max_active_faults` faults. The count lives in shared data instead, as a **ledger**: one
//! entry per root context (token, count, lease expiry), updated with compare-and-swap. The total
//! is the sum of the entries whose lease has not expired.
//!
//! Why entries with leases rather than one shared integer: a VM that crashes (or a root context
//! that is torn down) while it holds faults can never decrement them; a bare counter would then
//! block fault injection for good. An entry whose owner stops refreshing it simply expires
//! after [`LEASE`]. Owners refresh their entry on every change and from the tick while they
//! hold faults.
//!
//! Unlike Envoy's fuzzy gauge check, acquiring is exact: the read-check-write is one CAS step.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmesh_sdk::error::Error;
use wasmesh_sdk::host::Host;
use wasmesh_sdk::shared::{create_if_absent, update, Update, DEFAULT_CAS_ATTEMPTS};

/// How long an entry counts without being refreshed.
pub const LEASE: Duration = Duration::from_secs(30);

/// One root context's share of the active faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Random identity of the root context.
    pub token: u64,
    /// Faults it holds.
    pub count: u32,
    /// Lease expiry, milliseconds since the Unix epoch.
    pub expires_ms: u64,
}

/// The shared-data value: entries, one per line, `token count expires_ms`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    entries: Vec<Entry>,
}

impl Ledger {
    /// Parses a stored ledger; malformed lines are dropped (they can only come from another
    /// program writing the key, and must not wedge the limit).
    pub fn parse(bytes: Option<&[u8]>) -> Ledger {
        let text = bytes.map(String::from_utf8_lossy).unwrap_or_default();
        let entries = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(' ');
                let entry = Entry {
                    token: fields.next()?.parse().ok()?,
                    count: fields.next()?.parse().ok()?,
                    expires_ms: fields.next()?.parse().ok()?,
                };
                fields.next().is_none().then_some(entry)
            })
            .collect();
        Ledger { entries }
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        self.entries
            .iter()
            .map(|e| format!("{} {} {}\n", e.token, e.count, e.expires_ms))
            .collect::<String>()
            .into_bytes()
    }

    /// Drops expired and empty entries.
    pub fn prune(&mut self, now_ms: u64) {
        self.entries
            .retain(|entry| entry.count > 0 && entry.expires_ms > now_ms);
    }

    /// Faults held by live entries.
    pub fn total(&self, now_ms: u64) -> u64 {
        self.entries
            .iter()
            .filter(|entry| entry.expires_ms > now_ms)
            .map(|entry| u64::from(entry.count))
            .sum()
    }

    /// Sets (or removes, for `count == 0`) the entry of `token`.
    pub fn set(&mut self, token: u64, count: u32, expires_ms: u64) {
        self.entries.retain(|entry| entry.token != token);
        if count > 0 {
            self.entries.push(Entry {
                token,
                count,
                expires_ms,
            });
        }
    }

    /// The entry of `token`.
    pub fn entry(&self, token: u64) -> Option<Entry> {
        self.entries
            .iter()
            .find(|entry| entry.token == token)
            .copied()
    }
}

/// The result of [`ActiveFaults::try_acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// The fault may be injected.
    Acquired,
    /// `max_active_faults` faults are already active.
    Overflow,
    /// Shared data failed (e.g. CAS contention); the fault is not injected (fail safe).
    Failed(Error),
}

/// This root context's handle on the active-fault count.
#[derive(Debug)]
pub struct ActiveFaults {
    key: String,
    token: u64,
    limit: Option<u32>,
    held: Cell<u32>,
    /// When our entry's lease expires, as last written (ms since the epoch).
    lease_until_ms: Cell<u64>,
}

impl ActiveFaults {
    /// `limit` is `max_active_faults` (`None`: unlimited, nothing shared); `key` names the
    /// shared-data ledger; `token` identifies this root context in it.
    pub fn new(key: String, token: u64, limit: Option<u32>) -> Self {
        ActiveFaults {
            key,
            token,
            limit,
            held: Cell::new(0),
            lease_until_ms: Cell::new(0),
        }
    }

    /// Faults this root context holds.
    pub fn held(&self) -> u32 {
        self.held.get()
    }

    /// The shared-data key of the ledger.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Creates the ledger unless another VM has: run at start-up, so that every later change of
    /// it is a compare-and-swap (a key that does not exist has no CAS token to write with).
    pub fn create(&self, host: &dyn Host) -> Result<(), Error> {
        if self.limit.is_none() {
            return Ok(());
        }
        create_if_absent(host, &self.key, b"").map(|_| ())
    }

    /// Takes one active fault if fewer than `max_active_faults` are active across all VMs.
    pub fn try_acquire(&self, host: &dyn Host) -> Acquire {
        let Some(limit) = self.limit else {
            self.held.set(self.held.get().saturating_add(1));
            return Acquire::Acquired;
        };
        let now = now_ms(host);
        let expires = now.saturating_add(lease_ms());
        let wanted = self.held.get().saturating_add(1);
        let token = self.token;
        let result = update(host, &self.key, DEFAULT_CAS_ATTEMPTS, |bytes| {
            let mut ledger = Ledger::parse(bytes);
            ledger.prune(now);
            // Our own entry may be stale (a failed write); count what we really hold.
            ledger.set(token, wanted.saturating_sub(1), expires);
            if ledger.total(now) >= u64::from(limit) {
                Update::Keep(false)
            } else {
                ledger.set(token, wanted, expires);
                Update::Write(ledger.encode(), true)
            }
        });
        match result {
            Ok(true) => {
                self.held.set(wanted);
                self.lease_until_ms.set(expires);
                Acquire::Acquired
            }
            Ok(false) => Acquire::Overflow,
            Err(error) => Acquire::Failed(error),
        }
    }

    /// Gives back one active fault.
    pub fn release(&self, host: &dyn Host) -> Result<(), Error> {
        self.held.set(self.held.get().saturating_sub(1));
        if self.limit.is_none() {
            return Ok(());
        }
        self.write_own_entry(host)
    }

    /// Keeps our entry's lease fresh while we hold faults (call from the tick). Writes only
    /// when less than half the lease is left.
    pub fn refresh(&self, host: &dyn Host) -> Result<(), Error> {
        if self.limit.is_none() || self.held.get() == 0 {
            return Ok(());
        }
        let now = now_ms(host);
        if self.lease_until_ms.get().saturating_sub(now) > lease_ms() / 2 {
            return Ok(());
        }
        self.write_own_entry(host)
    }

    fn write_own_entry(&self, host: &dyn Host) -> Result<(), Error> {
        let now = now_ms(host);
        let expires = now.saturating_add(lease_ms());
        let held = self.held.get();
        let token = self.token;
        update(host, &self.key, DEFAULT_CAS_ATTEMPTS, |bytes| {
            let mut ledger = Ledger::parse(bytes);
            ledger.prune(now);
            ledger.set(token, held, expires);
            Update::Write(ledger.encode(), ())
        })?;
        self.lease_until_ms.set(expires);
        Ok(())
    }
}

fn lease_ms() -> u64 {
    u64::try_from(LEASE.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms(host: &dyn Host) -> u64 {
    let since_epoch = host
        .now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the epoch of `time` (for tests and logs).
pub fn epoch_ms(time: SystemTime) -> u64 {
    u64::try_from(
        time.duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_sdk::shared::SharedData;
    use wasmesh_sdk::testing::MemoryHost;

    #[test]
    fn ledger_round_trips_and_drops_garbage() {
        let mut ledger = Ledger::default();
        ledger.set(1, 2, 100);
        ledger.set(7, 1, 50);
        let bytes = ledger.encode();
        assert_eq!(bytes, b"1 2 100\n7 1 50\n");
        assert_eq!(Ledger::parse(Some(&bytes)), ledger);
        let noisy = Ledger::parse(Some(b"1 2 100\nnot a line\n3 x 5\n4 1 2 9\n7 1 50"));
        assert_eq!(noisy, ledger);
        assert_eq!(ledger.total(60), 2);
        assert_eq!(ledger.total(10), 3);
        ledger.set(1, 0, 0);
        assert_eq!(ledger.entry(1), None);
        ledger.prune(60);
        assert_eq!(ledger, Ledger::default());
    }

    #[test]
    fn the_limit_holds_across_root_contexts_sharing_the_data() {
        let host = MemoryHost::new();
        let worker_a = ActiveFaults::new("k".into(), 1, Some(2));
        let worker_b = ActiveFaults::new("k".into(), 2, Some(2));
        assert_eq!(worker_a.try_acquire(&host), Acquire::Acquired);
        assert_eq!(worker_b.try_acquire(&host), Acquire::Acquired);
        assert_eq!(worker_a.try_acquire(&host), Acquire::Overflow);
        assert_eq!(worker_b.try_acquire(&host), Acquire::Overflow);
        worker_a.release(&host).unwrap();
        assert_eq!(worker_a.held(), 0);
        assert_eq!(worker_b.try_acquire(&host), Acquire::Acquired);
        assert_eq!(worker_b.held(), 2);
        let stored = host.get_shared_data("k").unwrap().unwrap().value;
        let ledger = Ledger::parse(Some(&stored));
        assert_eq!(ledger.entry(1), None, "an empty entry is removed");
        assert_eq!(ledger.entry(2).map(|e| e.count), Some(2));
    }

    #[test]
    fn a_vanished_holder_expires_after_the_lease() {
        let host = MemoryHost::new();
        let crashed = ActiveFaults::new("k".into(), 1, Some(1));
        assert_eq!(crashed.try_acquire(&host), Acquire::Acquired);
        let survivor = ActiveFaults::new("k".into(), 2, Some(1));
        assert_eq!(survivor.try_acquire(&host), Acquire::Overflow);
        host.advance(LEASE - Duration::from_millis(1));
        assert_eq!(survivor.try_acquire(&host), Acquire::Overflow);
        host.advance(Duration::from_millis(1));
        assert_eq!(survivor.try_acquire(&host), Acquire::Acquired);
    }

    #[test]
    fn refreshing_keeps_a_long_fault_counted() {
        let host = MemoryHost::new();
        let holder = ActiveFaults::new("k".into(), 1, Some(1));
        let other = ActiveFaults::new("k".into(), 2, Some(1));
        assert_eq!(holder.try_acquire(&host), Acquire::Acquired);
        for _ in 0..10 {
            host.advance(Duration::from_secs(10));
            holder.refresh(&host).unwrap();
            assert_eq!(other.try_acquire(&host), Acquire::Overflow);
        }
        holder.release(&host).unwrap();
        assert_eq!(other.try_acquire(&host), Acquire::Acquired);
    }

    #[test]
    fn refresh_writes_only_when_half_the_lease_is_gone() {
        let host = MemoryHost::new();
        let holder = ActiveFaults::new("k".into(), 1, Some(5));
        holder.try_acquire(&host);
        let cas_before = host.get_shared_data("k").unwrap().unwrap().cas;
        host.advance(Duration::from_secs(1));
        holder.refresh(&host).unwrap();
        assert_eq!(host.get_shared_data("k").unwrap().unwrap().cas, cas_before);
        host.advance(LEASE / 2);
        holder.refresh(&host).unwrap();
        assert_ne!(host.get_shared_data("k").unwrap().unwrap().cas, cas_before);
    }

    #[test]
    fn unlimited_counts_locally_without_shared_data() {
        let host = MemoryHost::new();
        let faults = ActiveFaults::new("k".into(), 1, None);
        for _ in 0..3 {
            assert_eq!(faults.try_acquire(&host), Acquire::Acquired);
        }
        faults.release(&host).unwrap();
        assert_eq!(faults.held(), 2);
        assert_eq!(host.get_shared_data("k").unwrap(), None);
    }

    #[test]
    fn zero_limit_never_acquires() {
        let host = MemoryHost::new();
        let faults = ActiveFaults::new("k".into(), 1, Some(0));
        assert_eq!(faults.try_acquire(&host), Acquire::Overflow);
    }
}
