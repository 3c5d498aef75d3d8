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
//! back after the race (the harness delivers callout answers after the racing events), and each
//! is stored in the shared tier. Then every key is asked again on a worker that did not see it:
//! whatever the schedule, every verdict equals the one a lone worker without a cache gets, a
//! roomy shared tier answers every second request without asking the service, and no write to
//! shared data can lose a concurrent update.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::{builder, sample_config, send_in_harness, Verdict};
use wasmesh_harness::{explore_races, Action, HttpStream, Plugin, StreamState};

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

/// One round on a fresh path (so every key misses first): every key twice at once, then every
/// key once more on a worker that saw neither of its first two requests. Returns the checks of
/// each wave and the interleavings.
fn round(
    plugin: &Plugin,
    seed: u64,
    expected: &[Verdict],
) -> Result<(usize, usize, usize), String> {
    let workers = plugin.workers();
    let path = format!("/orders/{seed}");
    let first: Vec<(usize, usize)> = (0..2 * KEYS.len())
        .map(|index| (index % KEYS.len(), index % workers))
        .collect();
    let (first_checks, first_interleavings) = wave(plugin, seed, &path, &first, expected)?;
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
        let plugin = builder(&shared_config(1000))
            .workers(workers)
            .start()
            .unwrap();
        let mut interleaved = 0;
        let mut checks = BTreeMap::new();
        explore_races(0..SEEDS, |seed| {
            let (first, second, interleavings) = round(&plugin, seed, &expected)?;
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
        let plugin = builder(&shared_config(8)).workers(workers).start().unwrap();
        let mut interleaved = 0;
        explore_races(0..SEEDS, |seed| {
            let (_, _, interleavings) = round(&plugin, seed, &expected)?;
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
