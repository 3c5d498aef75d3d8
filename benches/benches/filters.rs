#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Per-request cost of every filter: natively (the filter crate's logic through the SDK's
//! `StreamDriver` over `MemoryHost`), as its real wasm release build in the harness, and the
//! same two for the no-op filter; then the ratios, computed from this run's timings.
//!
//! ```text
//! cargo bench -p wasmesh-benches --bench filters
//! cargo bench -p wasmesh-benches --bench filters -- jwt-authn     # one filter
//! ```
//!
//! Defaults keep the run bounded (1 s warm-up, 3 s measurement, 20 samples per benchmark);
//! criterion's command-line options override them. Figures: BENCHMARKS.md.

use std::time::Duration;

use criterion::Criterion;
use wasmesh_benches::timing::{filter_table, FilterRow, Recorder};
use wasmesh_benches::{scenarios, Scenario, Verdict};

fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args()
}

fn bench_scenario(c: &mut Criterion, recorder: &Recorder, scenario: &Scenario) {
    let id = scenario.id();
    // Every request must get the verdict the scenario promises: a benchmark of an error path
    // would be meaningless.
    let mut native = scenario.native().unwrap();
    scenario.check(3, || Ok(native.run_once())).unwrap();
    let mut wasm = scenario.wasm().unwrap();
    scenario.check(3, || wasm.run_once()).unwrap();

    let mut group = c.benchmark_group(&id);
    let native_id = format!("{id}/native");
    group.bench_function("native", |b| {
        b.iter_custom(|iters| recorder.time(&native_id, iters, || native.run_once()));
    });
    let wasm_id = format!("{id}/wasm");
    group.bench_function("wasm", |b| {
        b.iter_custom(|iters| {
            recorder.time(&wasm_id, iters, || {
                let verdict = wasm.run_once();
                debug_assert_eq!(verdict, Ok(scenario.expect));
                verdict.unwrap_or(Verdict::Held)
            })
        });
    });
    group.finish();
    // The wasm run must still be healthy after the measurement.
    scenario.check(1, || wasm.run_once()).unwrap();
}

fn main() {
    let mut c = criterion();
    let recorder = Recorder::new();
    let scenarios = scenarios::all().unwrap();
    for scenario in &scenarios {
        bench_scenario(&mut c, &recorder, scenario);
    }
    c.final_summary();

    let row = |scenario: &Scenario| {
        let id = scenario.id();
        FilterRow {
            native: recorder.nanos(&format!("{id}/native")),
            wasm: recorder.nanos(&format!("{id}/wasm")),
            id,
        }
    };
    let rows: Vec<FilterRow> = scenarios.iter().map(row).collect();
    let noop = row(&scenarios::noop());
    println!("\nPer request, whole stream (request headers, response headers, log, end):\n");
    println!("{}", filter_table(&rows, &noop));
    println!(
        "native/no-op, wasm/no-op: the filter against the no-op filter run the same way.\n\
         logic wasm/native: (wasm - wasm no-op) / (native - native no-op), the filter's own work."
    );
}
