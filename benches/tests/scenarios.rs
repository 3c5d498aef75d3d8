#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Every benchmark scenario reaches its promised verdict natively and in the harness: the
//! benches measure the path they claim to (an error path is cheaper, and would flatter them).

use wasmesh_benches::scenarios;

#[test]
fn every_scenario_gets_its_verdict_natively_and_in_wasm() {
    let all = scenarios::all().unwrap();
    for scenario in &all {
        let mut native = scenario.native().unwrap();
        scenario
            .check(scenario.exchanges.len().min(3) + 1, || Ok(native.run_once()))
            .unwrap();
        let mut wasm = scenario.wasm().unwrap();
        scenario
            .check(scenario.exchanges.len().min(3) + 1, || wasm.run_once())
            .unwrap();
        assert!(
            wasm.plugin().vm_failure(0).is_none(),
            "{}: the VM failed",
            scenario.id()
        );
    }
}

#[test]
fn every_filter_has_one_primary_scenario_and_the_baseline_comes_first() {
    let all = scenarios::all().unwrap();
    assert_eq!(all[0].filter, scenarios::NOOP);
    let mut filters: Vec<&str> = all.iter().map(|scenario| scenario.filter).collect();
    filters.dedup();
    for filter in &filters {
        let primaries = all
            .iter()
            .filter(|scenario| scenario.filter == *filter && scenario.primary)
            .count();
        assert_eq!(primaries, 1, "{filter} must have exactly one primary scenario");
    }
    // One entry per filter crate of the workspace, plus the baseline.
    let filter_dirs = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../filters"))
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("Cargo.toml").is_file())
        .count();
    assert_eq!(filters.len(), filter_dirs + 1, "filters benchmarked: {filters:?}");
}
