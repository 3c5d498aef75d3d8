#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Local buckets under race mode: worker VMs interleaved at hostcall granularity, as Envoy's
//! worker threads can be. Requests arrive at the same instant on 8 (and 4) workers; whatever the
//! schedule, a bucket of N tokens admits exactly N of them, the admitted requests form one
//! sequence (each sees a different `x-ratelimit-remaining`), a wildcard descriptor's per-value
//! buckets are exact too (each value in one slot of the table, none evicted while the table has
//! room), and no write to shared data can lose a concurrent update.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use wasmesh_harness::{explore_races, Action, HttpStream, MetricValue, Plugin};
use wasmesh_rate_limit::bucket::fingerprint;
use wasmesh_rate_limit::local::LocalLimiter;
use wasmesh_rate_limit::Config;

const SEEDS: u64 = 40;

/// One default bucket of 5 tokens (one every 12 s: full again after a minute).
const FIXED: &str = r#"{
  "stat_prefix": "race",
  "token_bucket": {"max_tokens": 5, "tokens_per_fill": 5, "fill_interval": "60s"},
  "filter_enabled": {"default_value": {"numerator": 100}},
  "filter_enforced": {"default_value": {"numerator": 100}},
  "enable_x_ratelimit_headers": "DRAFT_VERSION_03"
}"#;

/// A wildcard descriptor (one bucket of 2 tokens per `x-client` value) in a table of `SLOTS`
/// slots, and a default bucket large enough never to deny.
fn table_config(slots: u32) -> String {
    format!(
        r#"{{
      "stat_prefix": "race",
      "token_bucket": {{"max_tokens": 1000000, "tokens_per_fill": 1000000, "fill_interval": "1s"}},
      "filter_enabled": {{"default_value": {{"numerator": 100}}}},
      "filter_enforced": {{"default_value": {{"numerator": 100}}}},
      "rate_limits": [{{"actions": [{{"request_headers": {{"header_name": "x-client", "descriptor_key": "client"}}}}]}}],
      "descriptors": [{{"entries": [{{"key": "client"}}], "token_bucket": {{"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "60s"}}}}],
      "max_dynamic_descriptors": {slots}
    }}"#
    )
}

fn counter(plugin: &Plugin, event: &str) -> u64 {
    match plugin.metric(&format!("race.http_local_rate_limit.{event}")) {
        Some(MetricValue::Counter(value)) => value,
        other => panic!("{event}: {other:?}"),
    }
}

fn assert_no_hazards(plugin: &Plugin, what: &str) {
    let hazards = plugin.shared_data_hazards();
    assert!(
        hazards.is_empty(),
        "{what}: shared-data writes that can lose updates:\n{}",
        hazards
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// What one request of a burst got: admitted with `x-ratelimit-remaining` (if sent), or 429.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Admitted(Option<String>),
    Limited,
}

/// How many events of a schedule ran inside another VM's read-modify-write of a bucket (between
/// its `proxy_get_shared_data` and its `proxy_set_shared_data`): the interleavings the test is
/// about, counted so that a schedule that never interleaves cannot pass unnoticed.
fn interleavings(schedule: &[String]) -> usize {
    schedule
        .iter()
        .filter(|line| line.contains("race point") && line.contains("wasmesh.rate_limit."))
        .count()
}

/// Sends one request per entry of `clients` (`None`: no `x-client`) at the same instant, request
/// `i` on worker `i % workers`, on the seed's schedule; then lets the admitted ones complete.
/// Returns what each got, and how many events ran inside another's read-modify-write.
fn burst(
    plugin: &Plugin,
    seed: u64,
    clients: &[Option<String>],
) -> Result<(Vec<Got>, usize), String> {
    let workers = plugin.workers();
    let mut streams: Vec<HttpStream> = (0..clients.len())
        .map(|index| plugin.http_stream_on(index % workers))
        .collect();
    let requests: Vec<Vec<(&str, &str)>> = clients
        .iter()
        .map(|client| {
            let mut headers = vec![(":method", "GET"), (":path", "/"), (":authority", "shop")];
            if let Some(client) = client {
                headers.push(("x-client", client.as_str()));
            }
            headers
        })
        .collect();
    let mut race = plugin.race(seed);
    for (stream, headers) in streams.iter_mut().zip(&requests) {
        race.request_headers(stream, headers, true)
            .map_err(|e| e.to_string())?;
    }
    let report = race.run().map_err(|e| e.to_string())?;
    let schedule = || report.schedule.join("\n");
    let mut got = Vec::new();
    for (stream, outcome) in streams.iter_mut().zip(&report.outcomes) {
        match outcome {
            Ok(outcome)
                if outcome
                    .local_reply()
                    .is_some_and(|reply| reply.status == 429) =>
            {
                got.push(Got::Limited);
            }
            Ok(outcome) if outcome.action() == Action::Continue => {
                stream
                    .response_headers(&[(":status", "200")], true)
                    .map_err(|e| e.to_string())?;
                got.push(Got::Admitted(
                    stream.response_header("x-ratelimit-remaining"),
                ));
            }
            other => {
                return Err(format!(
                    "unexpected outcome {other:?}; schedule:\n{}",
                    schedule()
                ))
            }
        }
    }
    for stream in streams {
        stream.complete().map_err(|e| e.to_string())?;
    }
    Ok((got, interleavings(&report.schedule)))
}

#[test]
fn a_bucket_of_five_admits_exactly_five_of_sixteen_simultaneous_requests() {
    for workers in [8, 4] {
        let started = Instant::now();
        let plugin = common::start(FIXED, workers);
        let clients = vec![None; 16];
        let mut interleaved = 0;
        explore_races(0..SEEDS, |seed| {
            let (got, interleavings) = burst(&plugin, seed, &clients)?;
            interleaved += interleavings;
            let mut remaining: Vec<String> = got
                .iter()
                .filter_map(|got| match got {
                    Got::Admitted(remaining) => Some(remaining.clone().unwrap_or_default()),
                    Got::Limited => None,
                })
                .collect();
            remaining.sort();
            // Exactly five admitted, and they form one sequence: each took a different token.
            if remaining != ["0", "1", "2", "3", "4"] {
                return Err(format!(
                    "{workers} workers: admitted {} of 16 with x-ratelimit-remaining {remaining:?}",
                    remaining.len()
                ));
            }
            // The bucket is full again a minute later.
            plugin
                .advance_clock(Duration::from_secs(60))
                .map_err(|e| e.to_string())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
        assert!(interleaved >= SEEDS as usize, "{interleaved} interleavings");
        assert_eq!(counter(&plugin, "ok"), 5 * SEEDS);
        assert_eq!(counter(&plugin, "rate_limited"), 11 * SEEDS);
        assert_eq!(counter(&plugin, "shared_state_error"), 0);
        assert_no_hazards(&plugin, &format!("{workers} workers"));
        println!(
            "fixed bucket, {workers} workers: {SEEDS} seeds x 16 requests, {interleaved} \
             interleaved read-modify-writes, in {:?}",
            started.elapsed()
        );
    }
}

/// Each round's requests: `values` distinct clients (new names every round, so that later
/// rounds reuse slots that are full again), `requests` requests spread over them.
fn round_clients(round: u64, values: usize, requests: usize) -> Vec<Option<String>> {
    (0..requests)
        .map(|index| Some(format!("r{round}-c{}", index % values)))
        .collect()
}

/// The table's slots as stored: for each live bucket (TAT after `now`), its fingerprint.
fn live_slots(plugin: &Plugin, keys: &[String]) -> Vec<[u8; 16]> {
    let now = plugin
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    keys.iter()
        .filter_map(|key| {
            let (value, _) = plugin.shared_data(key)?;
            let tat = u64::from_le_bytes(value.get(16..24)?.try_into().ok()?);
            (tat > now).then(|| value[..16].try_into().unwrap())
        })
        .collect()
}

#[test]
fn per_value_buckets_of_a_wildcard_descriptor_are_exact_when_workers_race() {
    // (slots, distinct values per round, requests per round): a crowded table whose probe
    // window covers every slot, and a roomier one with more values.
    for (slots, values, requests) in [(4, 3, 16), (20, 6, 24)] {
        let config = table_config(slots);
        let limiter =
            LocalLimiter::new(&wasmesh_sdk::config::load::<Config>(config.as_bytes()).unwrap());
        let table: Vec<String> = limiter
            .shared_keys()
            .into_iter()
            .filter(|key| key.contains(".descriptor."))
            .collect();
        assert_eq!(table.len(), slots as usize);
        for workers in [8, 4] {
            let started = Instant::now();
            let plugin = common::start(&config, workers);
            let mut interleaved = 0;
            explore_races(0..SEEDS, |seed| {
                let clients = round_clients(seed, values, requests);
                let (got, interleavings) = burst(&plugin, seed, &clients)?;
                interleaved += interleavings;
                let mut admitted: BTreeMap<&str, usize> = BTreeMap::new();
                for (client, got) in clients.iter().zip(&got) {
                    let client = client.as_deref().unwrap_or_default();
                    let count = admitted.entry(client).or_default();
                    if matches!(got, Got::Admitted(_)) {
                        *count += 1;
                    }
                }
                if admitted.len() != values || admitted.values().any(|count| *count != 2) {
                    return Err(format!(
                        "{workers} workers, {slots} slots: admitted per value {admitted:?} \
                         (each value's bucket holds 2)"
                    ));
                }
                // Each value's bucket lives in exactly one slot.
                let live = live_slots(&plugin, &table);
                for value in admitted.keys() {
                    let mine = fingerprint([("client", *value)]);
                    let found = live.iter().filter(|slot| **slot == mine).count();
                    if found != 1 {
                        return Err(format!(
                            "{workers} workers, {slots} slots: {value} is in {found} live slots"
                        ));
                    }
                }
                plugin
                    .advance_clock(Duration::from_secs(60))
                    .map_err(|e| e.to_string())
            })
            .unwrap_or_else(|failure| panic!("{failure}"));
            assert!(interleaved >= SEEDS as usize, "{interleaved} interleavings");
            assert_eq!(counter(&plugin, "descriptor_evicted"), 0);
            assert_eq!(counter(&plugin, "shared_state_error"), 0);
            assert_eq!(
                counter(&plugin, "ok"),
                SEEDS * values as u64 * 2,
                "{workers} workers, {slots} slots"
            );
            assert_no_hazards(&plugin, &format!("{workers} workers, {slots} slots"));
            println!(
                "wildcard table of {slots}, {workers} workers: {SEEDS} seeds x {requests} requests \
                 over {values} values, {interleaved} interleaved read-modify-writes, in {:?}",
                started.elapsed()
            );
        }
    }
}
