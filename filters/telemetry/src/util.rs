//! Time formatting (RFC 3339, as Envoy's `%START_TIME%` and CEL's `string(timestamp)`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmesh_sdk::clock::civil_from_days;

/// Nanoseconds since the Unix epoch (negative before it), saturating.
pub fn unix_nanos(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos())
            .map(|nanos| -nanos)
            .unwrap_or(i64::MIN),
    }
}

/// The time `nanos` after the epoch.
pub fn from_unix_nanos(nanos: i64) -> SystemTime {
    let magnitude = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// `2023-11-14T22:13:20.123Z`: RFC 3339 in UTC with milliseconds, Envoy's `%START_TIME%` format.
pub fn rfc3339_millis(time: SystemTime) -> String {
    let nanos = unix_nanos(time);
    let seconds = nanos.div_euclid(1_000_000_000);
    let millis = nanos.rem_euclid(1_000_000_000) / 1_000_000;
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        of_day / 3600,
        (of_day % 3600) / 60,
        of_day % 60
    )
}

/// CEL's `string(duration)`: seconds with an `s` suffix and no trailing zeros (`1.5s`, `0s`).
pub fn cel_duration(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let magnitude = nanos.unsigned_abs();
    let seconds = magnitude / 1_000_000_000;
    let fraction = magnitude % 1_000_000_000;
    if fraction == 0 {
        return format!("{sign}{seconds}s");
    }
    let digits = format!("{fraction:09}");
    format!("{sign}{seconds}.{}s", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_with_millis() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339_millis(at), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // A leap day and the end of a year.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_millis(leap), "2000-02-29T00:00:00.000Z");
        let eve = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(rfc3339_millis(eve), "2024-12-31T23:59:59.000Z");
        let before = UNIX_EPOCH - Duration::from_millis(1);
        assert_eq!(rfc3339_millis(before), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn nanos_round_trip_and_durations_format_like_cel() {
        let at = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_001);
        assert_eq!(from_unix_nanos(unix_nanos(at)), at);
        assert_eq!(cel_duration(1_500_000_000), "1.5s");
        assert_eq!(cel_duration(0), "0s");
        assert_eq!(cel_duration(-2_000_000), "-0.002s");
    }
}
