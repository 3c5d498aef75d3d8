#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! `scenarios/probe.scenario.yaml`, the scenario a Go or AssemblyScript author would write, passes
//! for the probe module built by each toolchain (Go, AssemblyScript, Rust with the proxy-wasm
//! crate alone) under the harness and, unless `WASMESH_SKIP_ENVOY=1`, under a real Envoy, with no
//! place where the two judges disagree. None of these modules uses the wasmesh SDK.

use wasmesh_e2e::corpus::{Corpus, FOREIGN_CORPUS_FILE};
use wasmesh_scenario::load::load;
use wasmesh_scenario::report::text;
use wasmesh_scenario::run::{run_scenario, Options};

#[test]
fn the_probe_scenario_passes_for_every_toolchain_under_both_judges() {
    let corpus = Corpus::load_file(FOREIGN_CORPUS_FILE).unwrap();
    let scratch = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-scenarios");
    let file = load(&wasmesh_e2e::crate_dir().join("scenarios/probe.scenario.yaml")).unwrap();
    let envoy = !wasmesh_envoy::skip_requested();
    let mut failed = Vec::new();
    for (name, source) in &corpus.filters {
        let options = Options {
            envoy,
            module: Some(source.wasm(&scratch).unwrap()),
            ..Options::default()
        };
        let report = run_scenario(&file, &options);
        let shown = format!("[{name}] {}", text(&report));
        eprint!("{shown}");
        assert_eq!(report.steps.len(), file.scenario.steps.len(), "{shown}");
        let disagree = report
            .steps
            .iter()
            .any(|step| !step.disagreements.is_empty());
        if !report.passed() || disagree {
            failed.push(shown);
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
