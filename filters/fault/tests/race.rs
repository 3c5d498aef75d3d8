#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! `max_active_faults` under race mode: worker VMs interleaved at hostcall granularity, as
//! Envoy's worker threads can be. Four requests arrive at the same instant on four (and eight)
//! workers; whatever the schedule, exactly one is delayed, and the fault is given back when that
//! request ends.

mod common;

use std::time::Duration;

use wasmesh_harness::{explore_races, Action, Harness, HttpStream, Plugin};

const ONE_FAULT_AT_A_TIME: &str = r#"{
    "delay": {"fixed_delay": "0.5s", "percentage": {"numerator": 100}},
    "max_active_faults": 1
}"#;

const REQUEST: [(&str, &str); 3] = [(":method", "GET"), (":path", "/"), (":authority", "shop")];

fn start(workers: usize) -> Plugin {
    Harness::load(common::wasm())
        .unwrap()
        .config(ONE_FAULT_AT_A_TIME)
        .workers(workers)
        .start()
        .unwrap()
}

/// One round: a request on every worker at once; returns how many were delayed, or why the
/// round is wrong.
fn round(plugin: &Plugin, seed: u64) -> Result<(), String> {
    let mut streams: Vec<HttpStream> = (0..plugin.workers())
        .map(|worker| plugin.http_stream_on(worker))
        .collect();
    let mut race = plugin.race(seed);
    for stream in &mut streams {
        race.request_headers(stream, &REQUEST, true)
            .map_err(|e| e.to_string())?;
    }
    let report = race.run().map_err(|e| e.to_string())?;
    let mut delayed = 0;
    for outcome in &report.outcomes {
        match outcome {
            Ok(outcome) if outcome.action() == Action::Pause => delayed += 1,
            Ok(outcome) if outcome.action() == Action::Continue => {}
            other => return Err(format!("unexpected outcome {other:?}")),
        }
    }
    if delayed != 1 {
        return Err(format!(
            "{delayed} of {} simultaneous requests were delayed with max_active_faults 1; \
             schedule:\n{}",
            report.outcomes.len(),
            report.schedule.join("\n")
        ));
    }
    // The delay ends, every request completes and the fault is given back.
    plugin
        .advance_clock(Duration::from_millis(600))
        .map_err(|e| e.to_string())?;
    for stream in streams {
        stream.complete().map_err(|e| e.to_string())?;
    }
    let mut after = plugin.http_stream();
    let outcome = after
        .request_headers(&REQUEST, true)
        .map_err(|e| e.to_string())?;
    if outcome.action() != Action::Pause {
        return Err("the fault was not given back after the delayed request ended".into());
    }
    plugin
        .advance_clock(Duration::from_millis(600))
        .map_err(|e| e.to_string())?;
    after.complete().map_err(|e| e.to_string())
}

#[test]
fn max_active_faults_is_exact_when_workers_race() {
    for workers in [4, 8] {
        let plugin = start(workers);
        explore_races(0..50, |seed| round(&plugin, seed))
            .unwrap_or_else(|failure| panic!("{workers} workers: {failure}"));
        let hazards = plugin.shared_data_hazards();
        assert!(
            hazards.is_empty(),
            "{workers} workers: shared-data writes that can lose updates:\n{}",
            hazards
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
