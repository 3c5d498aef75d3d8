//! The virtual clock. Nothing in the harness reads the wall clock: time only moves when a test
//! calls [`crate::Plugin::advance_clock`], so timers and timeouts are deterministic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2024-01-01T00:00:00Z: every plugin starts at this instant.
pub const START_UNIX_SECONDS: u64 = 1_704_067_200;

/// The monotonic clock (WASI clock id 1) starts at this many nanoseconds, like a host that has
/// been up for a while; only differences between readings are meaningful.
const MONOTONIC_BASE_NANOS: u64 = 1_000_000_000_000;

#[derive(Debug, Clone)]
pub(crate) struct VirtualClock {
    elapsed: Duration,
}

impl VirtualClock {
    pub(crate) fn new() -> Self {
        VirtualClock {
            elapsed: Duration::ZERO,
        }
    }

    /// The current virtual wall-clock time.
    pub(crate) fn now(&self) -> SystemTime {
        let start = UNIX_EPOCH + Duration::from_secs(START_UNIX_SECONDS);
        start.checked_add(self.elapsed).unwrap_or(start)
    }

    /// The virtual wall-clock time at `elapsed` since the start.
    pub(crate) fn at(&self, elapsed: Duration) -> SystemTime {
        let start = UNIX_EPOCH + Duration::from_secs(START_UNIX_SECONDS);
        start.checked_add(elapsed).unwrap_or(start)
    }

    /// Time since the plugin started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Nanoseconds since the Unix epoch (what `proxy_get_current_time_nanoseconds` returns).
    pub(crate) fn realtime_nanos(&self) -> u64 {
        u64::try_from(
            Duration::from_secs(START_UNIX_SECONDS)
                .saturating_add(self.elapsed)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }

    /// Monotonic nanoseconds.
    pub(crate) fn monotonic_nanos(&self) -> u64 {
        MONOTONIC_BASE_NANOS
            .saturating_add(u64::try_from(self.elapsed.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Moves the clock to `elapsed` since start; never backwards.
    pub(crate) fn set_elapsed(&mut self, elapsed: Duration) {
        if elapsed > self.elapsed {
            self.elapsed = elapsed;
        }
    }
}
