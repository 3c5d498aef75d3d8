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

/// `(year, month, day)` of a day count since 1970-01-01, proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`): what RFC 3339 timestamps are built from.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
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

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_675), (2023, 11, 14));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
