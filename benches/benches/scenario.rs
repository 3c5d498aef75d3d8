#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! `wasmesh test` under the harness: a scenario of 1,000 requests (half denied with a local
//! reply, half through to the upstream, each with its expectations checked) through the minimal
//! example's real wasm build, from parsing the file to the last check.
//!
//! ```text
//! cargo bench -p wasmesh-benches --bench scenario
//! ```
//!
//! The module's compilation is excluded (the harness caches it per process; a fresh
//! `wasmesh test` process pays it once, about 1 s for this module on 2 cores).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use criterion::Criterion;
use wasmesh_benches::timing::{human, Recorder};
use wasmesh_harness::build;
use wasmesh_scenario::load::{parse, ScenarioFile};
use wasmesh_scenario::run::{run_scenario, Options};

const REQUESTS: usize = 1000;

fn scenario_text() -> String {
    let mut text = String::from(
        "format: 1\nmodule: {path: minimal.wasm}\nconfig: {required_header: x-api-key}\nsteps:\n",
    );
    for index in 0..REQUESTS {
        if index % 2 == 0 {
            let _ = writeln!(
                text,
                "  - request: {{path: /r{index}}}\n    expect: {{status: 401, details: minimal_header_missing, upstream: null}}"
            );
        } else {
            let _ = writeln!(
                text,
                "  - request: {{path: /r{index}, headers: {{x-api-key: k}}}}\n    upstream: {{body: ok}}\n    expect: {{status: 200, body: ok}}"
            );
        }
    }
    text
}

fn main() {
    let recorder = Recorder::new();
    let module = build::wasm("wasmesh-example-minimal").unwrap();
    let text = scenario_text();
    let options = Options {
        module: Some(module),
        ..Options::default()
    };
    let id = format!("scenario of {REQUESTS} requests, harness judge");
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(10)
        .configure_from_args();
    criterion.bench_function(&id, |b| {
        b.iter_custom(|iters| {
            recorder.time(&id, iters, || {
                let path = Path::new("thousand.scenario.yaml");
                let file = ScenarioFile {
                    path: path.to_path_buf(),
                    scenario: parse(path, &text).unwrap(),
                };
                let report = run_scenario(&file, &options);
                assert!(report.passed());
                report
            })
        });
    });
    criterion.final_summary();
    if let Some(nanos) = recorder.nanos(&id) {
        println!(
            "\n{id}: {} ({} per request)",
            human(nanos),
            human(nanos / REQUESTS as f64)
        );
    }
}
