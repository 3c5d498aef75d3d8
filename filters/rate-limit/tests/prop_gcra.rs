#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Property tests of the GCRA token bucket (`wasmesh_rate_limit::bucket`), through its public
//! API: whatever the quota and however requests arrive, the tokens admitted in any window never
//! exceed `burst + window / period` (the bucket never over-admits), and a bucket left idle long
//! enough to refill admits a full burst again (it never under-admits).

use std::time::Duration;

use proptest::prelude::*;
use wasmesh_rate_limit::bucket::{acquire, create_entries, fingerprint, BucketQuota, Location};
use wasmesh_rate_limit::config::{Config, TokenBucket};
use wasmesh_rate_limit::local::LocalLimiter;
use wasmesh_sdk::testing::MemoryHost;

/// An arbitrary host time (2023-11-14), far from 0 and from overflow.
const START: u64 = 1_700_000_000_000_000_000;
const CAS_ATTEMPTS: u32 = 4;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Valid token buckets: burst 1..=20, 1..=5 tokens per fill, fill interval 1 ms..=2 s.
fn bucket() -> impl Strategy<Value = TokenBucket> {
    (1u32..=20, 1u32..=5, 1u64..=2_000).prop_map(|(max_tokens, per_fill, millis)| TokenBucket {
        max_tokens,
        tokens_per_fill: Some(per_fill),
        fill_interval: Duration::from_millis(millis),
    })
}

/// Arrivals as (gap since the previous one in 1/8 periods, hits), up to 150 of them: gaps from
/// zero (bursts) to four periods (idle), hits 1..=3 (sometimes more than the burst).
fn arrivals() -> impl Strategy<Value = Vec<(u64, u32)>> {
    prop::collection::vec((0u64..=32, 1u32..=3), 1..150)
}

/// Admitted (time, hits) of a run of `acquire` calls.
fn run(
    location: &Location,
    quota: &BucketQuota,
    arrivals: &[(u64, u32)],
    store: &MemoryHost,
) -> Vec<(u64, u64)> {
    let mut now = START;
    let mut admitted = Vec::new();
    for (eighths, hits) in arrivals {
        now += quota.period_nanos() * eighths / 8;
        let decision = acquire(store, location, quota, *hits, now, CAS_ATTEMPTS);
        assert!(decision.error.is_none(), "{:?}", decision.error);
        assert!(decision.remaining <= decision.limit);
        assert_eq!(decision.limit, quota.burst());
        if decision.allowed {
            admitted.push((now, u64::from(*hits)));
        } else if *hits <= quota.burst() {
            // Hits that fit in the burst are only refused for now: the answer says when.
            assert!(
                decision.reset > Duration::ZERO,
                "a denial says when to retry"
            );
        }
    }
    admitted
}

/// Checks every window that starts and ends at an admitted request.
fn assert_never_over_admits(
    admitted: &[(u64, u64)],
    quota: &BucketQuota,
) -> Result<(), TestCaseError> {
    for (i, (start, _)) in admitted.iter().enumerate() {
        let mut tokens = 0u64;
        for (end, hits) in admitted.iter().skip(i) {
            tokens += hits;
            let bound = quota.admitted_bound(Duration::from_nanos(end - start));
            prop_assert!(
                tokens <= bound,
                "{} tokens admitted in {} ns, bound {} (burst {}, period {} ns)",
                tokens,
                end - start,
                bound,
                quota.burst(),
                quota.period_nanos()
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_fixed_bucket_never_admits_more_than_burst_plus_elapsed_over_period(
        bucket in bucket(),
        arrivals in arrivals(),
    ) {
        let quota = BucketQuota::new(&bucket).unwrap();
        let store = MemoryHost::new();
        let location = Location::Fixed("rl.prop".into());
        create_entries(&store, &location).unwrap();
        let admitted = run(&location, &quota, &arrivals, &store);
        assert_never_over_admits(&admitted, &quota)?;
    }

    #[test]
    fn a_wildcard_table_bucket_keeps_the_same_bound(
        bucket in bucket(),
        arrivals in arrivals(),
        slots in 1u32..=16,
    ) {
        let quota = BucketQuota::new(&bucket).unwrap();
        let store = MemoryHost::new();
        let location = Location::Table {
            prefix: "rl.prop.table".into(),
            slots,
            fingerprint: fingerprint([("client", "alice")]),
        };
        create_entries(&store, &location).unwrap();
        let admitted = run(&location, &quota, &arrivals, &store);
        assert_never_over_admits(&admitted, &quota)?;
    }

    #[test]
    fn an_idle_bucket_refills_to_a_full_burst(
        bucket in bucket(),
        arrivals in arrivals(),
    ) {
        let quota = BucketQuota::new(&bucket).unwrap();
        let store = MemoryHost::new();
        let location = Location::Fixed("rl.prop".into());
        create_entries(&store, &location).unwrap();
        run(&location, &quota, &arrivals, &store);
        // After burst periods of silence (plus the whole run, to be safe) the bucket is full:
        // exactly `burst` single-token requests at one instant are admitted, the next is not.
        let gap: u64 = arrivals.iter().map(|(eighths, _)| quota.period_nanos() * eighths / 8).sum();
        let later = START + 2 * gap + quota.period_nanos() * u64::from(quota.burst());
        for taken in 0..quota.burst() {
            let decision = acquire(&store, &location, &quota, 1, later, CAS_ATTEMPTS);
            prop_assert!(decision.allowed, "token {} of a full burst of {} refused", taken + 1, quota.burst());
        }
        prop_assert!(!acquire(&store, &location, &quota, 1, later, CAS_ATTEMPTS).allowed);
    }

    #[test]
    fn more_hits_than_the_burst_are_never_admitted(bucket in bucket(), extra in 1u32..=100) {
        let quota = BucketQuota::new(&bucket).unwrap();
        let store = MemoryHost::new();
        let location = Location::Fixed("rl.prop".into());
        create_entries(&store, &location).unwrap();
        let decision = acquire(&store, &location, &quota, quota.burst() + extra, START, CAS_ATTEMPTS);
        prop_assert!(!decision.allowed);
        // ...and asking did not consume anything.
        prop_assert!(acquire(&store, &location, &quota, quota.burst(), START, CAS_ATTEMPTS).allowed);
    }

    /// The same bound through the filter's configuration and its local limiter, as a request
    /// path uses them.
    #[test]
    fn the_configured_local_limiter_keeps_the_bound(
        bucket in bucket(),
        gaps in prop::collection::vec(0u64..=32, 1..150),
    ) {
        let json = format!(
            r#"{{"stat_prefix": "rl", "token_bucket": {{"max_tokens": {}, "tokens_per_fill": {}, "fill_interval": "{}.{:03}s"}}}}"#,
            bucket.max_tokens,
            bucket.tokens_per_fill(),
            bucket.fill_interval.as_secs(),
            bucket.fill_interval.subsec_millis()
        );
        let config = wasmesh_sdk::config::load::<Config>(json.as_bytes()).unwrap();
        let limiter = LocalLimiter::new(&config);
        let store = MemoryHost::new();
        limiter.create_entries(&store).unwrap();
        let quota = BucketQuota::new(&bucket).unwrap();
        let mut now = START;
        let mut admitted = Vec::new();
        for eighths in gaps {
            now += quota.period_nanos() * eighths / 8;
            let outcome = limiter.check(&store, &[], now);
            prop_assert!(outcome.errors.is_empty());
            if outcome.allowed {
                admitted.push((now, 1));
            }
        }
        assert_never_over_admits(&admitted, &quota)?;
    }
}
