//! The start of the harness's virtual clock, as `wasmesh run --start-time` and the exchange
//! file's `start_time` give it: RFC 3339 (`2024-01-01T00:00:00Z`, an offset, fractional seconds)
//! or Unix seconds (`1704067200`).
//!
//! By default the clock starts at the current time, so a token or certificate is judged as a
//! proxy would judge it now; pinning the start makes a run reproducible (the same verdict, the
//! same timestamps) whatever the day.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A pinned start of the virtual clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartTime(pub SystemTime);

impl std::str::FromStr for StartTime {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
            let seconds: u64 = text
                .parse()
                .map_err(|error| format!("{text:?}: Unix seconds out of range: {error}"))?;
            return Ok(StartTime(UNIX_EPOCH + Duration::from_secs(seconds)));
        }
        parse_rfc3339(text).map(StartTime).ok_or_else(|| {
            format!(
                "{text:?} is neither an RFC 3339 time (2024-01-01T00:00:00Z) nor Unix seconds \
                 (1704067200)"
            )
        })
    }
}

impl<'de> Deserialize<'de> for StartTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StartTimeVisitor;

        impl Visitor<'_> for StartTimeVisitor {
            type Value = StartTime;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an RFC 3339 time string or Unix seconds")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<StartTime, E> {
                value.parse().map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<StartTime, E> {
                Ok(StartTime(UNIX_EPOCH + Duration::from_secs(value)))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<StartTime, E> {
                u64::try_from(value)
                    .map(|seconds| StartTime(UNIX_EPOCH + Duration::from_secs(seconds)))
                    .map_err(|_| E::custom("a start time before 1970 is not supported"))
            }
        }

        deserializer.deserialize_any(StartTimeVisitor)
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` (RFC 3339's `date-time`; `t`, `z` and a
/// space instead of `T` accepted, as the RFC allows). Times before 1970 are refused.
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<u64> {
        let digits = bytes.get(range)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    let separator =
        |index: usize, allowed: &[u8]| bytes.get(index).is_some_and(|b| allowed.contains(b));
    if !(separator(4, b"-")
        && separator(7, b"-")
        && separator(10, b"Tt ")
        && separator(13, b":")
        && separator(16, b":"))
    {
        return None;
    }
    let year = number(0..4)?;
    let month = number(5..7)?;
    let day = number(8..10)?;
    let hour = number(11..13)?;
    let minute = number(14..16)?;
    // 60 is a leap second; it is read as the next second, as most libraries do.
    let second = number(17..19)?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }

    let mut rest = text.get(19..)?;
    let mut nanos: u64 = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits: Vec<u8> = fraction.bytes().take_while(u8::is_ascii_digit).collect();
        if digits.is_empty() {
            return None;
        }
        // Nanosecond precision: further digits are dropped (truncated, not rounded).
        for position in 0..9 {
            let digit = digits.get(position).map_or(0, |digit| digit - b'0');
            nanos = nanos * 10 + u64::from(digit);
        }
        rest = fraction.get(digits.len()..)?;
    }
    let offset_seconds: i64 = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]
            if [h1, h2, m1, m2].iter().all(|digit| digit.is_ascii_digit()) =>
        {
            let hours = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let minutes = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if hours > 23 || minutes > 59 {
                return None;
            }
            let magnitude = hours * 3600 + minutes * 60;
            if *sign == b'+' {
                magnitude
            } else {
                -magnitude
            }
        }
        _ => return None,
    };

    let days = days_from_civil(i64::try_from(year).ok()?, month, day);
    let local_seconds = days * 86_400 + i64::try_from(hour * 3600 + minute * 60 + second).ok()?;
    let utc_seconds = u64::try_from(local_seconds - offset_seconds).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(utc_seconds) + Duration::from_nanos(nanos))
}

fn is_leap_year(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl serde::Serialize for StartTime {
    /// RFC 3339 in UTC, to the nanosecond when there is a fraction: what the parser reads back.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let seconds = since.as_secs();
        let days = i64::try_from(seconds / 86_400).unwrap_or(i64::MAX);
        let (year, month, day) = wasmesh_sdk::clock::civil_from_days(days);
        let of_day = seconds % 86_400;
        let fraction = match since.subsec_nanos() {
            0 => String::new(),
            nanos => format!(".{nanos:09}"),
        };
        serializer.serialize_str(&format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
            of_day / 3600,
            of_day / 60 % 60,
            of_day % 60
        ))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`, the
/// inverse of `wasmesh_sdk::clock::civil_from_days`).
fn days_from_civil(year: i64, month: u64, day: u64) -> i64 {
    let month = i64::try_from(month).unwrap_or(1);
    let day = i64::try_from(day).unwrap_or(1);
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(text: &str) -> u64 {
        text.parse::<StartTime>()
            .unwrap()
            .0
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn writes_what_it_reads() {
        for text in ["2024-02-29T23:59:59Z", "1970-01-01T00:00:00.000000001Z"] {
            let time: StartTime = text.parse().unwrap();
            let written = serde_json::to_value(time).unwrap();
            assert_eq!(written, serde_json::Value::String(text.to_string()));
        }
    }

    #[test]
    fn reads_unix_seconds_and_rfc3339() {
        assert_eq!(seconds("1704067200"), 1_704_067_200);
        assert_eq!(seconds("2024-01-01T00:00:00Z"), 1_704_067_200);
        assert_eq!(seconds("2024-01-01t00:00:00z"), 1_704_067_200);
        assert_eq!(seconds("2024-01-01 00:00:00Z"), 1_704_067_200);
        assert_eq!(seconds("1970-01-01T00:00:00Z"), 0);
        assert_eq!(seconds("2000-02-29T12:34:56Z"), 951_827_696);
        assert_eq!(seconds("2024-01-01T01:00:00+01:00"), 1_704_067_200);
        assert_eq!(seconds("2023-12-31T19:00:00-05:00"), 1_704_067_200);
        assert_eq!(seconds("2100-01-01T00:00:00Z"), 4_102_444_800);
    }

    #[test]
    fn keeps_fractional_seconds_to_the_nanosecond() {
        let time = "2024-01-01T00:00:00.123456789123Z"
            .parse::<StartTime>()
            .unwrap()
            .0;
        assert_eq!(
            time.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_704_067_200, 123_456_789)
        );
        let millis = "2024-01-01T00:00:00.5Z".parse::<StartTime>().unwrap().0;
        assert_eq!(
            millis.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_704_067_200, 500_000_000)
        );
    }

    #[test]
    fn refuses_what_is_not_a_time() {
        for bad in [
            "",
            "yesterday",
            "-5",
            "2024-01-01",
            "2024-01-01T00:00:00",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00+0100",
            "2024-01-01T00:00:00+01:0x",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:30:00+01:00",
        ] {
            let error = bad.parse::<StartTime>().unwrap_err();
            assert!(
                error.contains("RFC 3339") || error.contains("range"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn reads_json_strings_and_numbers() {
        let from_json = |json: &str| serde_json::from_str::<StartTime>(json);
        assert_eq!(
            from_json("1704067200").unwrap(),
            from_json("\"2024-01-01T00:00:00Z\"").unwrap()
        );
        assert_eq!(
            from_json("\"1704067200\"").unwrap(),
            from_json("1704067200").unwrap()
        );
        assert!(from_json("-1").is_err());
        assert!(from_json("\"soon\"").is_err());
        assert!(from_json("true").is_err());
    }
}
