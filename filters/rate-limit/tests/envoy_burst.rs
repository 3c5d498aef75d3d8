#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Exact admissions under simultaneous bursts in a real Envoy with four workers (four wasm VMs
//! running in parallel): every round writes 12 requests at the same instant on 12 connections
//! spread over the workers, all for one client's bucket of 5 tokens (refilled only after an
//! hour), and exactly 5 must be admitted and 7 refused, round after round. Each round uses a
//! new client (`x-client: round-<n>`), so it starts with a full bucket of its own. Set
//! `WASMESH_SKIP_ENVOY=1` to skip.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use wasmesh_envoy::{self as envoy, burst, connections_per_worker, EnvoyBuilder, WasmFilter};

const WORKERS: u32 = 4;
const ROUNDS: usize = 30;
const PER_ROUND: usize = 12;
const TOKENS: usize = 5;

fn config() -> String {
    format!(
        r#"{{
          "stat_prefix": "burst",
          "filter_enabled": {{"default_value": {{"numerator": 100}}}},
          "filter_enforced": {{"default_value": {{"numerator": 100}}}},
          "descriptors": [{{
            "entries": [{{"key": "client", "value": ""}}],
            "token_bucket": {{"max_tokens": {TOKENS}, "tokens_per_fill": {TOKENS}, "fill_interval": "3600s"}}
          }}],
          "rate_limits": [{{"actions": [{{"request_headers": {{"header_name": "x-client", "descriptor_key": "client"}}}}]}}],
          "max_dynamic_descriptors": 64
        }}"#
    )
}

fn metric(stats: &BTreeMap<String, u64>, name: &str) -> u64 {
    stats
        .get(&format!("wasmcustom.burst.http_local_rate_limit.{name}"))
        .copied()
        .unwrap_or(0)
}

#[test]
fn simultaneous_bursts_over_four_workers_admit_exactly_the_bucket() {
    if envoy::skip_requested() {
        return;
    }
    let envoy = EnvoyBuilder::new()
        .concurrency(WORKERS)
        // Debug logs from every worker go through Envoy's log lock and slow the workers down
        // unevenly: fewer requests would be in the filter at the same instant.
        .component_log_levels("wasm:warn")
        .wasm_filter(
            WasmFilter::new(common::wasm())
                .name("rate-limit")
                .configuration(config()),
        )
        .start()
        .unwrap();
    let started = Instant::now();
    let mut admitted = Vec::new();
    let mut spread = Vec::new();
    let mut other_statuses = Vec::new();
    for round in 0..ROUNDS {
        let before = connections_per_worker(&envoy.stats().unwrap());
        let client = vec![("x-client".to_string(), format!("round-{round}"))];
        let replies = burst(envoy.listener_addr(), &vec![client; PER_ROUND]).unwrap();
        let after = connections_per_worker(&envoy.stats().unwrap());
        admitted.push(replies.iter().filter(|reply| reply.status == 200).count());
        other_statuses.extend(
            replies
                .iter()
                .map(|reply| reply.status)
                .filter(|status| *status != 200 && *status != 429),
        );
        spread.push(
            after
                .iter()
                .filter(|(worker, total)| before.get(*worker).copied().unwrap_or(0) < **total)
                .count(),
        );
    }
    let summary = format!(
        "{ROUNDS} rounds of {PER_ROUND} simultaneous requests on a {TOKENS}-token bucket in \
         {:.1?}: admitted per round {admitted:?}; workers per round {spread:?}",
        started.elapsed()
    );
    eprintln!("{summary}");

    assert!(other_statuses.is_empty(), "{other_statuses:?}\n{summary}");
    let wrong: Vec<usize> = (0..ROUNDS)
        .filter(|round| admitted[*round] != TOKENS)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {ROUNDS} rounds did not admit exactly {TOKENS} (rounds {wrong:?}).\n{summary}",
        wrong.len()
    );
    // The requests of a round were on several workers at once (twelve connections all on one
    // worker of four is a one-in-four-million event).
    assert!(
        spread.iter().all(|workers| *workers >= 2),
        "connections did not spread over the workers.\n{summary}"
    );
    // The filter's own stats agree, and no bucket update failed open or was evicted.
    let stats = envoy.stats().unwrap();
    assert_eq!(metric(&stats, "ok"), (ROUNDS * TOKENS) as u64);
    assert_eq!(
        metric(&stats, "enforced"),
        (ROUNDS * (PER_ROUND - TOKENS)) as u64
    );
    assert_eq!(metric(&stats, "shared_state_error"), 0);
    assert_eq!(metric(&stats, "descriptor_evicted"), 0);
}
