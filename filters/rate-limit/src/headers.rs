//! Rate limit response headers: Envoy's `X-RateLimit-*` (draft 03) and the IETF
//! `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers-09).

use std::time::Duration;

use crate::rls::{DescriptorStatus, Unit};

/// `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: &str = "x-ratelimit-limit";
/// `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: &str = "x-ratelimit-remaining";
/// `X-RateLimit-Reset`.
pub const X_RATELIMIT_RESET: &str = "x-ratelimit-reset";
/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
/// `RateLimit`.
pub const RATELIMIT: &str = "ratelimit";
/// `x-envoy-ratelimited`.
pub const X_ENVOY_RATELIMITED: &str = "x-envoy-ratelimited";

/// A local bucket's state after a decision, as the headers describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketState {
    /// Policy name (for the IETF headers).
    pub name: String,
    /// `max_tokens`.
    pub limit: u32,
    /// Whole tokens left.
    pub remaining: u32,
    /// Time until the next token.
    pub next_token: Duration,
    /// Time until the bucket is full.
    pub full_in: Duration,
    /// Time a full refill takes (`max_tokens * period`): the IETF policy window.
    pub window: Duration,
}

/// Envoy's local `X-RateLimit-*`: limit = `max_tokens`, whole tokens left, and the seconds
/// until the next token, [`local_reset_seconds`].
pub fn x_ratelimit_local(state: &BucketState) -> Vec<(String, String)> {
    vec![
        (X_RATELIMIT_LIMIT.into(), state.limit.to_string()),
        (X_RATELIMIT_REMAINING.into(), state.remaining.to_string()),
        (
            X_RATELIMIT_RESET.into(),
            local_reset_seconds(state.next_token).to_string(),
        ),
    ]
}

/// `X-RateLimit-Reset` of Envoy 1.40's `local_ratelimit` for a bucket whose next token is
/// `next_token` away (zero while a whole token is left): Envoy's token bucket gives that time in
/// whole milliseconds and the filter rounds them **up** to seconds
/// (`std::chrono::ceil<std::chrono::seconds>`, envoyproxy/envoy#45703), so 8.99 s and 0.8 s
/// give 9 and 1, and a bucket refilled one token per 360 s says 360 right after it ran dry.
/// `tests/envoy_native.rs` compares these headers with the native filter's. (Below the
/// millisecond — a fraction truncated to whole milliseconds, as Envoy's conversion does — no
/// real-Envoy test can tell.)
pub fn local_reset_seconds(next_token: Duration) -> u64 {
    let millis = next_token.as_millis();
    u64::try_from(millis.div_ceil(1000)).unwrap_or(u64::MAX)
}

/// IETF headers for a local bucket: `"name";q=<max_tokens>;w=<seconds to refill>` and
/// `"name";r=<remaining>;t=<seconds until full>`.
pub fn ietf_local(state: &BucketState) -> Vec<(String, String)> {
    let name = sf_string(&state.name);
    vec![
        (
            RATELIMIT_POLICY.into(),
            format!(
                "{name};q={};w={}",
                state.limit,
                ceil_secs(state.window).max(1)
            ),
        ),
        (
            RATELIMIT.into(),
            format!(
                "{name};r={};t={}",
                state.remaining,
                ceil_secs(state.full_in)
            ),
        ),
    ]
}

/// Envoy's global `X-RateLimit-*` (`XRateLimitHeaderUtils::create`): the status with the
/// fewest remaining requests gives limit, remaining and reset; the limit is followed by every
/// status's quota policy `, <limit>;w=<window>[;name="<name>"]`.
pub fn x_ratelimit_global(statuses: &[DescriptorStatus]) -> Vec<(String, String)> {
    let mut policy = String::new();
    let mut tightest: Option<&DescriptorStatus> = None;
    for status in statuses {
        let Some(limit) = &status.current_limit else {
            continue;
        };
        if tightest.is_none_or(|best| status.limit_remaining < best.limit_remaining) {
            tightest = Some(status);
        }
        let window = limit.unit.seconds();
        if window > 0 {
            policy.push_str(&format!(", {};w={window}", limit.requests_per_unit));
            if !limit.name.is_empty() {
                policy.push_str(&format!(";name=\"{}\"", limit.name));
            }
        }
    }
    let Some(status) = tightest else {
        return Vec::new();
    };
    let limit = status
        .current_limit
        .as_ref()
        .map_or(0, |limit| limit.requests_per_unit);
    vec![
        (X_RATELIMIT_LIMIT.into(), format!("{limit}{policy}")),
        (
            X_RATELIMIT_REMAINING.into(),
            status.limit_remaining.to_string(),
        ),
        (
            X_RATELIMIT_RESET.into(),
            status.duration_until_reset.as_secs().to_string(),
        ),
    ]
}

/// IETF headers from a rate limit service answer: one policy per status with a limit, and the
/// tightest status as `RateLimit`.
pub fn ietf_global(statuses: &[DescriptorStatus]) -> Vec<(String, String)> {
    let mut policies = Vec::new();
    let mut tightest: Option<(String, &DescriptorStatus)> = None;
    for (index, status) in statuses.iter().enumerate() {
        let Some(limit) = &status.current_limit else {
            continue;
        };
        let name = if limit.name.is_empty() {
            format!("descriptor-{index}")
        } else {
            limit.name.clone()
        };
        let window = limit.unit.seconds();
        if window > 0 {
            policies.push(format!(
                "{};q={};w={window}",
                sf_string(&name),
                limit.requests_per_unit
            ));
        } else {
            policies.push(format!(
                "{};q={}",
                sf_string(&name),
                limit.requests_per_unit
            ));
        }
        if tightest
            .as_ref()
            .is_none_or(|(_, best)| status.limit_remaining < best.limit_remaining)
        {
            tightest = Some((name, status));
        }
    }
    let Some((name, status)) = tightest else {
        return Vec::new();
    };
    vec![
        (RATELIMIT_POLICY.into(), policies.join(", ")),
        (
            RATELIMIT.into(),
            format!(
                "{};r={};t={}",
                sf_string(&name),
                status.limit_remaining,
                ceil_secs(status.duration_until_reset)
            ),
        ),
    ]
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// An RFC 8941 sf-string: printable ASCII only (others dropped), `"` and `\` escaped.
pub fn sf_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

impl Unit {
    /// The unit in seconds (0 for units Envoy does not map: unknown, month, year).
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3600,
            Unit::Day => 86_400,
            Unit::Week => 604_800,
            Unit::Other(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rls::{Code, CurrentLimit};

    fn state() -> BucketState {
        BucketState {
            name: "per-client".into(),
            limit: 10,
            remaining: 3,
            next_token: Duration::from_millis(1999),
            full_in: Duration::from_millis(6001),
            window: Duration::from_secs(20),
        }
    }

    #[test]
    fn local_headers_follow_envoy_and_the_ietf_draft() {
        assert_eq!(
            x_ratelimit_local(&state()),
            vec![
                ("x-ratelimit-limit".to_string(), "10".to_string()),
                ("x-ratelimit-remaining".to_string(), "3".to_string()),
                // 1.999 s to the next token: 2, as Envoy rounds up.
                ("x-ratelimit-reset".to_string(), "2".to_string()),
            ]
        );
        assert_eq!(
            ietf_local(&state()),
            vec![
                (
                    "ratelimit-policy".to_string(),
                    "\"per-client\";q=10;w=20".to_string()
                ),
                (
                    "ratelimit".to_string(),
                    "\"per-client\";r=3;t=7".to_string()
                ),
            ]
        );
    }

    fn status(rpu: u32, unit: Unit, name: &str, remaining: u32, reset: u64) -> DescriptorStatus {
        DescriptorStatus {
            code: Code::Ok,
            current_limit: Some(CurrentLimit {
                requests_per_unit: rpu,
                unit,
                name: name.into(),
            }),
            limit_remaining: remaining,
            duration_until_reset: Duration::from_secs(reset),
        }
    }

    #[test]
    fn global_headers_pick_the_tightest_status() {
        let statuses = vec![
            status(10, Unit::Second, "per-ip", 4, 1),
            status(1000, Unit::Hour, "", 2, 1800),
            DescriptorStatus {
                code: Code::Ok,
                current_limit: None,
                limit_remaining: 0,
                duration_until_reset: Duration::ZERO,
            },
        ];
        assert_eq!(
            x_ratelimit_global(&statuses),
            vec![
                (
                    "x-ratelimit-limit".to_string(),
                    "1000, 10;w=1;name=\"per-ip\", 1000;w=3600".to_string()
                ),
                ("x-ratelimit-remaining".to_string(), "2".to_string()),
                ("x-ratelimit-reset".to_string(), "1800".to_string()),
            ]
        );
        assert_eq!(
            ietf_global(&statuses),
            vec![
                (
                    "ratelimit-policy".to_string(),
                    "\"per-ip\";q=10;w=1, \"descriptor-1\";q=1000;w=3600".to_string()
                ),
                (
                    "ratelimit".to_string(),
                    "\"descriptor-1\";r=2;t=1800".to_string()
                ),
            ]
        );
        assert!(x_ratelimit_global(&[]).is_empty());
    }

    #[test]
    fn local_reset_rounds_milliseconds_up_to_seconds_as_envoy() {
        let seconds = |nanos: u64| local_reset_seconds(Duration::from_nanos(nanos));
        // A whole token left: 0.
        assert_eq!(seconds(0), 0);
        // 0.8 s to the next token: 1 (not 0); 359.2 s: 360 (not 359).
        assert_eq!(seconds(800_000_000), 1);
        assert_eq!(seconds(359_200_000_000), 360);
        assert_eq!(seconds(8_990_000_000), 9);
        // Exactly whole seconds stay as they are.
        assert_eq!(seconds(10_000_000_000), 10);
        assert_eq!(seconds(1_000_000_000), 1);
        // Below a millisecond over a whole second: Envoy's milliseconds drop it.
        assert_eq!(seconds(8_000_400_000), 8);
        assert_eq!(seconds(8_001_000_000), 9);
        // Below one millisecond in all: 0 ms, 0 s.
        assert_eq!(seconds(999_999), 0);
        assert_eq!(local_reset_seconds(Duration::MAX), u64::MAX);
    }

    #[test]
    fn sf_strings_are_escaped_and_printable() {
        assert_eq!(sf_string("a\"b\\c\nd\u{e9}"), "\"a\\\"b\\\\cd\"");
    }
}
