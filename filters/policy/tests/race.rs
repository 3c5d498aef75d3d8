#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The shared decision cache under race mode: worker VMs interleaved at hostcall granularity, as
//! Envoy's worker threads can be.
//!
//! Each round, 24 requests over 12 keys (every key twice: concurrent misses of the same key, and
//! of different keys) arrive at the same instant on 8 (and 4) workers; the service's answers come
//! back after the race (the harness delivers callout answers after the racing events, so the
//! stores themselves run one at a time: `src/cache.rs`'s unit tests interleave them), and each is
//! stored in the shared tier. Then every key is asked again on a worker that did not see it.
//! Whatever the schedule: every verdict equals the one a lone worker without a cache gets; the
//! shared tier is exactly its table of slots, created at start-up, and every decision in it is
//! the right one for its key, no key in two slots; a roomy tier holds every key of the round and
//! answers every second request without asking the service; and no write to shared data can lose
//! a concurrent update.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::{builder, sample_config, send_in_harness, Verdict};
use wasmesh_harness::{explore_races, Action, HttpStream, Plugin, StreamState};
use wasmesh_policy::cache::Entry;
use wasmesh_policy::{verdict, Config, Policy};
use wasmesh_sdk::testing::MemoryHost;

const SEEDS: u64 = 30;

/// The keyed attributes of the 12 keys: (authorization, x-tenant).
const KEYS: [(Option<&str>, Option<&str>); 12] = [
    (Some("Bearer alice"), None),
    (Some("Bearer alice"), Some("t1")),
    (Some("Bearer alice"), Some("blocked")),
    (Some("Bearer mallory"), None),
    (Some("Bearer mallory"), Some("t1")),
    (Some("Bearer mallory"), Some("blocked")),
    (Some("Bearer eve"), None),
    (Some("Bearer eve"), Some("t1")),
    (Some("Bearer eve"), Some("blocked")),
    (None, None),
    (None, Some("t1")),
    (None, Some("blocked")),
];

/// The sample configuration (its key: method, path, host, authorization, x-tenant) with the
/// shared tier on and `max_entries` decisions.
fn shared_config(max_entries: u32) -> String {
    sample_config().replace(
        "\"max_entries\": 10000",
        &format!("\"max_entries\": {max_entries}, \"shared\": true"),
    )
}

fn headers_of(key: usize, path: &str) -> Vec<(&'static str, String)> {
    let (authorization, tenant) = KEYS[key];
    let mut headers = vec![
        (":method", "GET".to_string()),
        (":scheme", "http".to_string()),
        (":authority", "shop.example.com".to_string()),
        (":path", path.to_string()),
    ];
    if let Some(authorization) = authorization {
        headers.push(("authorization", authorization.to_string()));
    }
    if let Some(tenant) = tenant {
        headers.push(("x-tenant", tenant.to_string()));
    }
    headers
}

/// What a lone worker without a cache decides for each key.
fn expected_verdicts() -> Vec<Verdict> {
    let plugin = builder(&sample_config()).start().unwrap();
    KEYS.iter()
        .map(|(authorization, tenant)| {
            let mut extra = Vec::new();
            if let Some(authorization) = authorization {
                extra.push(("authorization", *authorization));
            }
            if let Some(tenant) = tenant {
                extra.push(("x-tenant", *tenant));
            }
            send_in_harness(&plugin, "GET", "/orders", &extra, "")
        })
        .collect()
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.clone())
}

/// The verdict of a stream whose check was answered (or served from the cache).
fn verdict_of(stream: &mut HttpStream) -> Result<Verdict, String> {
    if let Some(reply) = stream.local_reply() {
        return Ok(Verdict::Replied {
            status: reply.status,
            details: reply.details,
            body: String::from_utf8(reply.body).map_err(|e| e.to_string())?,
            reason: header(&reply.headers, "x-reason"),
            www_authenticate: header(&reply.headers, "www-authenticate"),
        });
    }
    if stream.request_state() != StreamState::Continued {
        return Err(format!(
            "the request neither continued nor was answered ({:?})",
            stream.request_state()
        ));
    }
    let upstream = stream.request_headers_now();
    stream
        .response_headers(&[(":status", "200")], true)
        .map_err(|e| e.to_string())?;
    Ok(Verdict::Forwarded {
        user: header(&upstream, "x-user"),
        tier: header(&upstream, "x-authz-tier"),
        check_only_header: header(&upstream, "x-authz-client"),
        internal_note: header(&upstream, "x-internal-note"),
        quota: stream.response_header("x-quota"),
    })
}

/// Races `requests` (key, worker) on the seed's schedule; checks every verdict; returns how many
/// checks the service got and the schedule's interleavings inside shared-data reads.
fn wave(
    plugin: &Plugin,
    seed: u64,
    path: &str,
    requests: &[(usize, usize)],
    expected: &[Verdict],
) -> Result<(usize, usize), String> {
    let checks_before = plugin.http_callouts().len();
    let mut streams: Vec<HttpStream> = requests
        .iter()
        .map(|(_, worker)| plugin.http_stream_on(*worker))
        .collect();
    let headers: Vec<Vec<(&str, String)>> = requests
        .iter()
        .map(|(key, _)| headers_of(*key, path))
        .collect();
    let mut race = plugin.race(seed);
    for (stream, headers) in streams.iter_mut().zip(&headers) {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        race.request_headers(stream, &headers, true)
            .map_err(|e| e.to_string())?;
    }
    let report = race.run().map_err(|e| e.to_string())?;
    for outcome in &report.outcomes {
        match outcome {
            Ok(outcome) if matches!(outcome.action(), Action::Pause | Action::Continue) => {}
            Ok(outcome) if outcome.local_reply().is_some() => {}
            other => return Err(format!("unexpected outcome {other:?}")),
        }
    }
    for ((key, worker), stream) in requests.iter().zip(streams.iter_mut()) {
        let got = verdict_of(stream)?;
        if got != expected[*key] {
            return Err(format!(
                "key {:?} on worker {worker}: got {got:?}, a lone worker gets {:?}; schedule:\n{}",
                KEYS[*key],
                expected[*key],
                report.schedule.join("\n")
            ));
        }
    }
    for stream in streams {
        stream.complete().map_err(|e| e.to_string())?;
    }
    let interleavings = report
        .schedule
        .iter()
        .filter(|line| line.contains("race point") && line.contains("wasmesh.policy."))
        .count();
    Ok((plugin.http_callouts().len() - checks_before, interleavings))
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

/// The shared tier's keys, as the filter computes them: its complete footprint.
fn table_of(config: &str) -> Vec<String> {
    let config = wasmesh_sdk::config::load::<Config>(config.as_bytes()).unwrap();
    Policy::new(config, &mut MemoryHost::new())
        .unwrap()
        .shared_keys()
}

/// Which of [`KEYS`] a decision's key material is for (on `path`), if any.
fn key_of(material: &str, path: &str) -> Option<usize> {
    if !material.contains(&format!("|path={}:{path}|", path.len())) {
        return None;
    }
    let fragment = |name: &str, value: Option<&str>| match value {
        Some(value) => format!("|h:{name}#0={}:{value}", value.len()),
        None => format!("|h:{name}!"),
    };
    KEYS.iter().position(|(authorization, tenant)| {
        material.contains(&fragment("authorization", *authorization))
            && material.contains(&fragment("x-tenant", *tenant))
    })
}

/// Whether a stored decision is the one a lone worker applies.
fn same_decision(stored: &verdict::Verdict, expected: &Verdict) -> bool {
    match (stored, expected) {
        (verdict::Verdict::Allow(_), Verdict::Forwarded { .. }) => true,
        (verdict::Verdict::Deny(deny), Verdict::Replied { status, body, .. }) => {
            u32::from(deny.status) == *status && deny.body == body.as_bytes()
        }
        _ => false,
    }
}

/// Checks the shared tier after a wave on `path`: every slot exists (created at start-up) and
/// nothing lies outside the table; every stored decision is the right one for its key; with
/// `complete`, every key of the round is stored, each in exactly one slot.
fn check_table(
    plugin: &Plugin,
    table: &[String],
    path: &str,
    expected: &[Verdict],
    complete: bool,
) -> Result<(), String> {
    let mut found = vec![0usize; KEYS.len()];
    for slot in table {
        let (value, _) = plugin
            .shared_data(slot)
            .ok_or_else(|| format!("slot {slot} was not created at start-up"))?;
        if value.is_empty() {
            continue;
        }
        // Digest (16 bytes), end of the grace period (8 bytes), then the JSON entry.
        let entry: Entry = value
            .get(24..)
            .and_then(|json| serde_json::from_slice(json).ok())
            .ok_or_else(|| format!("slot {slot} holds no decision: {value:?}"))?;
        let Some(key) = key_of(&entry.key, path) else {
            continue;
        };
        if !same_decision(&entry.verdict, &expected[key]) {
            return Err(format!(
                "slot {slot}: {:?} stored for {:?}, a lone worker gets {:?}",
                entry.verdict, KEYS[key], expected[key]
            ));
        }
        found[key] += 1;
    }
    let outside = table[0].rsplit_once('.').unwrap().0.to_string() + &format!(".{}", table.len());
    if plugin.shared_data(&outside).is_some() {
        return Err(format!("{outside} is outside the table"));
    }
    if complete && found.iter().any(|count| *count != 1) {
        return Err(format!(
            "decisions per key in the shared tier {found:?} (each key exactly once)"
        ));
    }
    if found.iter().any(|count| *count > 1) {
        return Err(format!("a key is in several slots: {found:?}"));
    }
    Ok(())
}

/// One round on a fresh path (so every key misses first): every key twice at once, then every
/// key once more on a worker that saw neither of its first two requests. Returns the checks of
/// each wave and the interleavings.
fn round(
    plugin: &Plugin,
    table: &[String],
    seed: u64,
    expected: &[Verdict],
    complete: bool,
) -> Result<(usize, usize, usize), String> {
    let workers = plugin.workers();
    let path = format!("/orders/{seed}");
    let first: Vec<(usize, usize)> = (0..2 * KEYS.len())
        .map(|index| (index % KEYS.len(), index % workers))
        .collect();
    let (first_checks, first_interleavings) = wave(plugin, seed, &path, &first, expected)?;
    check_table(plugin, table, &path, expected, complete)?;
    let again: Vec<(usize, usize)> = (0..KEYS.len())
        .map(|key| {
            let seen = [key % workers, (key + KEYS.len()) % workers];
            let worker = (1..workers)
                .map(|step| (key + step) % workers)
                .find(|worker| !seen.contains(worker))
                .unwrap();
            (key, worker)
        })
        .collect();
    let (second_checks, second_interleavings) =
        wave(plugin, seed.wrapping_add(1 << 32), &path, &again, expected)?;
    check_table(plugin, table, &path, expected, complete)?;
    Ok((
        first_checks,
        second_checks,
        first_interleavings + second_interleavings,
    ))
}

#[test]
fn a_roomy_shared_cache_keeps_every_decision_when_workers_race() {
    let expected = expected_verdicts();
    for workers in [8, 4] {
        let started = Instant::now();
        // Room for every decision of every round: nothing is evicted.
        let config = shared_config(1000);
        let table = table_of(&config);
        assert_eq!(table.len(), 1000);
        let plugin = builder(&config).workers(workers).start().unwrap();
        let mut interleaved = 0;
        let mut checks = BTreeMap::new();
        explore_races(0..SEEDS, |seed| {
            let (first, second, interleavings) = round(&plugin, &table, seed, &expected, true)?;
            interleaved += interleavings;
            *checks.entry(first).or_insert(0) += 1;
            // Every decision of the first wave is in the shared tier: no key is asked again.
            if second != 0 {
                return Err(format!(
                    "{workers} workers: {second} of {} keys asked again on another worker: \
                     the shared tier lost their decisions",
                    KEYS.len()
                ));
            }
            Ok::<(), String>(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
        assert!(interleaved >= SEEDS as usize, "{interleaved} interleavings");
        assert_no_hazards(&plugin, &format!("{workers} workers"));
        println!(
            "roomy shared cache, {workers} workers: {SEEDS} seeds x 36 requests over {} keys, \
             first-wave checks {checks:?}, {interleaved} interleavings, in {:?}",
            KEYS.len(),
            started.elapsed()
        );
    }
}

#[test]
fn a_crowded_shared_cache_stays_right_when_workers_race() {
    let expected = expected_verdicts();
    for workers in [8, 4] {
        let started = Instant::now();
        // Fewer places than keys: decisions are evicted, verdicts must not change.
        let config = shared_config(8);
        let table = table_of(&config);
        assert_eq!(table.len(), 8);
        let plugin = builder(&config).workers(workers).start().unwrap();
        let mut interleaved = 0;
        explore_races(0..SEEDS, |seed| {
            let (_, _, interleavings) = round(&plugin, &table, seed, &expected, false)?;
            interleaved += interleavings;
            Ok::<(), String>(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
        assert!(interleaved >= SEEDS as usize, "{interleaved} interleavings");
        assert_no_hazards(&plugin, &format!("{workers} workers"));
        println!(
            "crowded shared cache (8 entries), {workers} workers: {SEEDS} seeds x 36 requests \
             over {} keys, {interleaved} interleavings, in {:?}",
            KEYS.len(),
            started.elapsed()
        );
    }
}
