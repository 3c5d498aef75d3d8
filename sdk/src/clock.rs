//! Host time.
//!
//! Filters must not read the wall clock themselves (`std::time::SystemTime::now` is WASI
//! `clock_time_get`, which is not the proxy's notion of time and cannot be controlled in tests):
//! they ask the host through [`Clock`]. In native tests, [`crate::testing::MemoryHost`] is a
//! virtual clock that only moves when told.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time.
pub trait Clock {
    /// The current time (proxy-wasm `proxy_get_current_time_nanoseconds`).
    fn now(&self) -> SystemTime;
}

/// Time since the Unix epoch (zero if the clock is before the epoch).
pub fn since_epoch<C: Clock + ?Sized>(clock: &C) -> Duration {
    clock
        .now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Whole seconds since the Unix epoch, e.g. to compare with JWT `exp`/`nbf`.
pub fn unix_seconds<C: Clock + ?Sized>(clock: &C) -> u64 {
    since_epoch(clock).as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryHost;

    #[test]
    fn virtual_clock_moves_only_when_advanced() {
        let host = MemoryHost::new().with_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_eq!(unix_seconds(&host), 1_700_000_000);
        assert_eq!(unix_seconds(&host), 1_700_000_000);
        host.advance(Duration::from_millis(1500));
        assert_eq!(since_epoch(&host), Duration::from_millis(1_700_000_001_500));
    }
}
