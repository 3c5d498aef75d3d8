#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The request table under race mode over 8 (and 4) workers. jwt-authn keeps no state shared
//! between worker VMs: each worker has its own token cache and fetches its own remote key sets
//! (callouts), and it touches neither shared data nor shared queues. So whatever the schedule,
//! every request gets the verdict it gets alone, and there is nothing a worker could overwrite;
//! the test pins both, so that a shared cache added later comes with its race test.

mod common;

use std::time::Instant;

use common::{cases, comparison_config, jwks_document, status_of, Verdict, HOST, JWKS_CLUSTER};
use wasmesh_harness::{explore_races, CalloutReply, Harness, HttpStream, Plugin};

const SEEDS: u64 = 10;

/// The shared-data and shared-queue hostcalls: none may be made.
const SHARED_HOSTCALLS: [&str; 5] = [
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_dequeue_shared_queue",
];

fn start(workers: usize) -> Plugin {
    let jwks = jwks_document();
    Harness::load(common::wasm())
        .unwrap()
        .config(comparison_config().to_string())
        .cluster(JWKS_CLUSTER)
        .http_callout_handler(move |_| CalloutReply::ok(200, jwks.clone()))
        .workers(workers)
        .start()
        .unwrap()
}

fn status(stream: &HttpStream) -> u32 {
    match stream.local_reply() {
        Some(reply) => reply.status,
        None => status_of(&Verdict::Forwarded {
            path: String::new(),
            authorization: None,
            remote_token: None,
            payload: None,
            sub: None,
            level: None,
        }),
    }
}

/// Every case of the table at once, case `i` on worker `i % workers`.
fn round(plugin: &Plugin, seed: u64) -> Result<(), String> {
    let cases = cases();
    let workers = plugin.workers();
    let mut streams: Vec<HttpStream> = (0..cases.len())
        .map(|index| plugin.http_stream_on(index % workers))
        .collect();
    let mut race = plugin.race(seed);
    for (stream, case) in streams.iter_mut().zip(&cases) {
        let mut headers = vec![
            (":method", case.method.as_str()),
            (":scheme", "http"),
            (":authority", HOST),
            (":path", case.path.as_str()),
        ];
        headers.extend(case.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        race.request_headers(stream, &headers, true)
            .map_err(|e| e.to_string())?;
    }
    let report = race.run().map_err(|e| e.to_string())?;
    if let Some(error) = report
        .outcomes
        .iter()
        .find_map(|outcome| outcome.as_ref().err())
    {
        return Err(error.to_string());
    }
    for (stream, case) in streams.iter().zip(&cases) {
        let got = status(stream);
        if got != case.expected_status {
            return Err(format!(
                "{}: status {got}, alone {}",
                case.name, case.expected_status
            ));
        }
    }
    for stream in streams {
        stream.complete().map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn every_verdict_is_independent_of_the_schedule_and_nothing_is_shared() {
    for workers in [8, 4] {
        let started = Instant::now();
        let plugin = start(workers);
        explore_races(0..SEEDS, |seed| round(&plugin, seed))
            .unwrap_or_else(|failure| panic!("{workers} workers: {failure}"));
        let counts = plugin.hostcall_counts();
        for hostcall in SHARED_HOSTCALLS {
            assert_eq!(counts.get(hostcall), None, "{hostcall}");
        }
        assert_eq!(plugin.shared_data_hazards(), vec![]);
        // Each worker that needed the remote key set fetched its own, once.
        let fetches = plugin.http_callouts().len();
        assert!((1..=workers).contains(&fetches), "{fetches} fetches");
        println!(
            "jwt-authn, {workers} workers: {SEEDS} seeds x {} requests, {fetches} key-set \
             fetches, in {:?}",
            cases().len(),
            started.elapsed()
        );
    }
}
