//! The virtual clock. Time only moves when a test calls [`crate::Plugin::advance_clock`], so
//! timers and timeouts are deterministic.
//!
//! The clock starts at the wall-clock time of [`crate::PluginBuilder::start`], so a module judges
//! real data (a JWT's `exp`, a certificate's validity) as a proxy running now would. A test whose
//! expectations depend on the date pins the start with [`crate::PluginBuilder::start_time`], by
//! convention at [`START_UNIX_SECONDS`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2024-01-01T00:00:00Z: the start tests pin with [`crate::PluginBuilder::start_time`] (see
/// [`pinned_start`]) when an expectation depends on the date, such as a timestamp in a golden
/// file.
pub const START_UNIX_SECONDS: u64 = 1_704_067_200;

/// [`START_UNIX_SECONDS`] as a [`SystemTime`], ready for [`crate::PluginBuilder::start_time`].
pub fn pinned_start() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(START_UNIX_SECONDS)
}

/// The monotonic clock (WASI clock id 1) starts at this many nanoseconds, like a host that has
/// been up for a while; only differences between readings are meaningful.
const MONOTONIC_BASE_NANOS: u64 = 1_000_000_000_000;

#[derive(Debug, Clone)]
pub(crate) struct VirtualClock {
    /// The wall-clock time at which the plugin started, since the Unix epoch.
    start: Duration,
    elapsed: Duration,
}

impl VirtualClock {
    /// A clock starting now (wall-clock time).
    pub(crate) fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A clock starting at `start`; a time before the Unix epoch starts at the epoch (Envoy's
    /// clock, and `proxy_get_current_time_nanoseconds`, cannot go below it).
    pub(crate) fn starting_at(start: SystemTime) -> Self {
        VirtualClock {
            start: start.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO),
            elapsed: Duration::ZERO,
        }
    }

    /// The current virtual wall-clock time.
    pub(crate) fn now(&self) -> SystemTime {
        self.at(self.elapsed)
    }

    /// The virtual wall-clock time at `elapsed` since the start.
    pub(crate) fn at(&self, elapsed: Duration) -> SystemTime {
        let start = UNIX_EPOCH + self.start;
        start.checked_add(elapsed).unwrap_or(start)
    }

    /// Time since the plugin started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Nanoseconds since the Unix epoch (what `proxy_get_current_time_nanoseconds` returns).
    pub(crate) fn realtime_nanos(&self) -> u64 {
        u64::try_from(self.start.saturating_add(self.elapsed).as_nanos()).unwrap_or(u64::MAX)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_the_given_time_and_moves_only_when_told() {
        let mut clock = VirtualClock::starting_at(pinned_start());
        assert_eq!(clock.now(), pinned_start());
        assert_eq!(clock.realtime_nanos(), START_UNIX_SECONDS * 1_000_000_000);
        clock.set_elapsed(Duration::from_millis(1500));
        assert_eq!(clock.now(), pinned_start() + Duration::from_millis(1500));
        assert_eq!(
            clock.realtime_nanos(),
            START_UNIX_SECONDS * 1_000_000_000 + 1_500_000_000
        );
        clock.set_elapsed(Duration::from_secs(1));
        assert_eq!(
            clock.elapsed(),
            Duration::from_millis(1500),
            "never backwards"
        );
    }

    #[test]
    fn by_default_starts_at_the_wall_clock() {
        let before = SystemTime::now();
        let clock = VirtualClock::new();
        let after = SystemTime::now();
        assert!(clock.now() >= before && clock.now() <= after);
    }

    #[test]
    fn a_start_before_the_epoch_is_the_epoch() {
        let clock = VirtualClock::starting_at(UNIX_EPOCH - Duration::from_secs(10));
        assert_eq!(clock.now(), UNIX_EPOCH);
        assert_eq!(clock.realtime_nanos(), 0);
    }
}
