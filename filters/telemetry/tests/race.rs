#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Simultaneous requests under race mode over 8 (and 4) workers. Telemetry keeps no state
//! shared between worker VMs: every count goes through the host's metrics (atomic in Envoy), and
//! it touches neither shared data nor shared queues. So whatever the schedule, every request is
//! counted once in its series, and there is nothing a worker could overwrite; the test pins both,
//! so that shared state added later comes with its race test.

mod common;

use std::time::Instant;

use common::{builder, exchanges, recorded, sample_config, series, AUTHORITY};
use wasmesh_harness::{explore_races, HttpStream, MetricValue, Plugin};

const SEEDS: u64 = 20;

/// Requests per round.
const REQUESTS: usize = 16;

/// The shared-data and shared-queue hostcalls: none may be made.
const SHARED_HOSTCALLS: [&str; 5] = [
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_dequeue_shared_queue",
];

/// `REQUESTS` requests from productpage at once, request `i` on worker `i % workers`, each
/// answered 200 (even `i`) or 404 (odd `i`) as its second event.
fn round(plugin: &Plugin, seed: u64, peer: &str) -> Result<(), String> {
    let workers = plugin.workers();
    let mut streams: Vec<HttpStream> = (0..REQUESTS)
        .map(|index| plugin.http_stream_on(index % workers))
        .collect();
    let request = [
        (":method", "GET"),
        (":path", "/reviews/1"),
        (":authority", AUTHORITY),
        ("x-envoy-peer-metadata", peer),
    ];
    let mut race = plugin.race(seed);
    for (index, stream) in streams.iter_mut().enumerate() {
        let status = if index % 2 == 0 { "200" } else { "404" };
        race.request_headers(stream, &request, true)
            .map_err(|e| e.to_string())?;
        race.response_headers(stream, &[(":status", status)], true)
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
    for stream in streams {
        stream.complete().map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn every_request_is_counted_once_whatever_the_schedule_and_nothing_is_shared() {
    let peer = exchanges()[0].headers[0].1.clone();
    for workers in [8, 4] {
        let started = Instant::now();
        let plugin = builder(&sample_config(), "reviews")
            .workers(workers)
            .start()
            .unwrap();
        explore_races(0..SEEDS, |seed| round(&plugin, seed, &peer))
            .unwrap_or_else(|failure| panic!("{workers} workers: {failure}"));
        let recorded = recorded(&plugin);
        for code in ["200", "404"] {
            let requests = series(
                &recorded,
                "istio_requests_total",
                &[
                    ("source_workload", "productpage-v1"),
                    ("response_code", code),
                ],
            );
            assert_eq!(requests.len(), 1, "{code}: {requests:?}");
            assert_eq!(
                *requests[0].1,
                MetricValue::Counter(SEEDS * REQUESTS as u64 / 2),
                "{code}"
            );
        }
        let counts = plugin.hostcall_counts();
        for hostcall in SHARED_HOSTCALLS {
            assert_eq!(counts.get(hostcall), None, "{hostcall}");
        }
        assert_eq!(plugin.shared_data_hazards(), vec![]);
        println!(
            "telemetry, {workers} workers: {SEEDS} seeds x {REQUESTS} requests in {:?}",
            started.elapsed()
        );
    }
}
