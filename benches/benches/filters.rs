#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Per-request cost of every filter: natively (the filter crate's logic through the SDK's
//! `StreamDriver` over `MemoryHost`), as its real wasm release build in the harness, and the
//! same two for the no-op filter given the same requests; then the ratios, computed from this
//! run's timings.
//!
//! ```text
//! cargo bench -p wasmesh-benches --bench filters
//! cargo bench -p wasmesh-benches --bench filters -- jwt-authn     # one filter
//! ```
//!
//! Defaults keep the run bounded (1 s warm-up, 3 s measurement, 20 samples per benchmark, about
//! six minutes in all); criterion's command-line options override them. Figures: BENCHMARKS.md.

use std::time::Duration;

use criterion::{BenchmarkGroup, Criterion};
use wasmesh_benches::timing::{filter_table, FilterRow, Recorder};
use wasmesh_benches::{scenarios, Scenario, Verdict};

fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args()
}

/// Benchmarks `scenario` natively and in wasm as `<prefix>native` and `<prefix>wasm` of
/// `group`, recording the timings under `<record_as>/native` and `<record_as>/wasm`; returns
/// the hostcalls the wasm run makes per request.
fn bench_both(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    recorder: &Recorder,
    scenario: &Scenario,
    prefix: &str,
    record_as: &str,
) -> f64 {
    // Every request must get the verdict the scenario promises: a benchmark of an error path
    // would be meaningless.
    let mut native = scenario.native().unwrap();
    scenario.check(3, || Ok(native.run_once())).unwrap();
    let mut wasm = scenario.wasm().unwrap();
    scenario.check(3, || wasm.run_once()).unwrap();

    let native_id = format!("{record_as}/native");
    group.bench_function(format!("{prefix}native"), |b| {
        b.iter_custom(|iters| recorder.time(&native_id, iters, || native.run_once()));
    });
    let wasm_id = format!("{record_as}/wasm");
    group.bench_function(format!("{prefix}wasm"), |b| {
        b.iter_custom(|iters| {
            recorder.time(&wasm_id, iters, || wasm.run_once().unwrap_or(Verdict::Held))
        });
    });
    // The runs must still be healthy after the measurement.
    scenario.check(1, || Ok(native.run_once())).unwrap();
    scenario.check(1, || wasm.run_once()).unwrap();
    wasm.hostcalls_per_request(HOSTCALL_SAMPLE).unwrap()
}

/// Requests over which hostcalls per request are counted (a multiple of every scenario's
/// request rotation).
const HOSTCALL_SAMPLE: usize = 1000;

fn main() {
    let mut c = criterion();
    let recorder = Recorder::new();
    let scenarios = scenarios::all().unwrap();
    let mut hostcalls = std::collections::HashMap::new();
    for scenario in &scenarios {
        let id = scenario.id();
        let mut group = c.benchmark_group(&id);
        hostcalls.insert(
            id.clone(),
            bench_both(&mut group, &recorder, scenario, "", &id),
        );
        if scenario.filter != scenarios::NOOP {
            let baseline = scenarios::baseline(scenario);
            bench_both(
                &mut group,
                &recorder,
                &baseline,
                "no-op ",
                &format!("{id}/no-op"),
            );
        }
        group.finish();
    }
    c.final_summary();

    let rows: Vec<FilterRow> = scenarios
        .iter()
        .map(|scenario| {
            let id = scenario.id();
            let noop = if scenario.filter == scenarios::NOOP {
                id.clone()
            } else {
                format!("{id}/no-op")
            };
            FilterRow {
                native: recorder.nanos(&format!("{id}/native")),
                wasm: recorder.nanos(&format!("{id}/wasm")),
                noop_native: recorder.nanos(&format!("{noop}/native")),
                noop_wasm: recorder.nanos(&format!("{noop}/wasm")),
                hostcalls: hostcalls.get(&id).copied(),
                id,
            }
        })
        .collect();
    println!("\nPer request, whole stream (request headers, response headers, log, end):\n");
    println!("{}", filter_table(&rows));
    println!(
        "no-op: the same requests through the no-op filter, run the same way.\n\
         logic wasm/native: (wasm - no-op wasm) / (native - no-op native), the filter's own work.\n\
         hostcalls: calls the module makes per request (`Plugin::hostcall_counts`)."
    );
}
