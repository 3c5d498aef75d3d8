#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The benchmark scenarios, checked:
//! * every scenario reaches its promised verdict natively and in the harness, so the benches
//!   measure the path they claim to (an error path is cheaper, and would flatter them);
//! * linear memory per VM is flat over 10,000 requests through every filter's primary scenario
//!   (no growth = no leak).
//!
//! One test binary, so the harness compiles each module once for all of these tests.

use wasmesh_benches::{scenarios, Scenario, Verdict};
use wasmesh_harness::Harness;

#[test]
fn every_scenario_gets_its_verdict_natively_and_in_wasm() {
    let all = scenarios::all().unwrap();
    for scenario in &all {
        let requests = scenario.exchanges.len().min(3) + 1;
        let mut native = scenario.native().unwrap();
        scenario.check(requests, || Ok(native.run_once())).unwrap();
        let mut wasm = scenario.wasm().unwrap();
        scenario.check(requests, || wasm.run_once()).unwrap();
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
        assert_eq!(
            primaries, 1,
            "{filter} must have exactly one primary scenario"
        );
    }
    // One entry per filter crate of the workspace, plus the baseline.
    let filter_dirs = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../filters"))
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("Cargo.toml").is_file())
        .count();
    assert_eq!(
        filters.len(),
        filter_dirs + 1,
        "filters benchmarked: {filters:?}"
    );
}

/// Requests before the first reading: caches fill, allocator pools settle, lazily built tables
/// appear (the rate-limit scenario cycles through 1,000 keys, policy through 100 decisions).
const WARM_UP: usize = 1_000;
/// Requests between the two readings.
const REQUESTS: usize = 10_000;

/// Linear memory (bytes) after the warm-up, and after [`REQUESTS`] more requests.
fn memory_over_requests(
    mut run: impl FnMut() -> Verdict,
    memory: impl Fn() -> usize,
) -> (usize, usize) {
    for _ in 0..WARM_UP {
        run();
    }
    let before = memory();
    for _ in 0..REQUESTS {
        run();
    }
    (before, memory())
}

fn assert_memory_flat(filter: &str) {
    let scenario: Scenario = scenarios::primary()
        .unwrap()
        .into_iter()
        .find(|scenario| scenario.filter == filter)
        .unwrap();
    let mut wasm = scenario.wasm().unwrap();
    let plugin = wasm.plugin().clone();
    let mut verdicts_ok = true;
    let (before, after) = memory_over_requests(
        || {
            let verdict = wasm.run_once().unwrap();
            verdicts_ok &= verdict == scenario.expect;
            verdict
        },
        || plugin.worker_memory_bytes(0),
    );
    assert!(
        verdicts_ok,
        "{}: a request got another verdict",
        scenario.id()
    );
    assert!(before > 0);
    // The figure BENCHMARKS.md quotes (`cargo test -p wasmesh-benches --test scenarios --
    // memory --nocapture`).
    eprintln!(
        "{}: linear memory {} KiB after {WARM_UP} requests, {} KiB after {REQUESTS} more",
        scenario.id(),
        before / 1024,
        after / 1024
    );
    assert_eq!(
        after,
        before,
        "{}: linear memory grew by {} bytes over {REQUESTS} requests",
        scenario.id(),
        after - before
    );
}

#[test]
fn memory_is_flat_noop() {
    assert_memory_flat(scenarios::NOOP);
}

#[test]
fn memory_is_flat_fault() {
    assert_memory_flat("fault");
}

#[test]
fn memory_is_flat_jwt_authn() {
    assert_memory_flat("jwt-authn");
}

#[test]
fn memory_is_flat_policy() {
    assert_memory_flat("policy");
}

#[test]
fn memory_is_flat_rate_limit() {
    assert_memory_flat("rate-limit");
}

#[test]
fn memory_is_flat_rbac() {
    assert_memory_flat("rbac");
}

#[test]
fn memory_is_flat_telemetry() {
    assert_memory_flat("telemetry");
}

/// The check catches a leak: a module that keeps 64 bytes per request (bumping its heap pointer
/// and growing memory when it runs out) grows by whole pages over the same run.
#[test]
fn memory_check_catches_a_leaking_module() {
    let leaky = r#"(module
      (memory (export "memory") 1)
      (global $heap (mut i32) (i32.const 1024))
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "malloc") (param i32) (result i32) (i32.const 0))
      (func (export "proxy_on_context_create") (param i32 i32))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (global.set $heap (i32.add (global.get $heap) (i32.const 64)))
        (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
          (then (drop (memory.grow (i32.const 1)))))
        (i32.const 0)))"#;
    let plugin = Harness::from_bytes(leaky.as_bytes())
        .unwrap()
        .start()
        .unwrap();
    let (before, after) = memory_over_requests(
        || {
            let mut stream = plugin.http_stream();
            stream
                .request_headers(&[(":method", "GET"), (":path", "/")], true)
                .unwrap();
            stream.complete().unwrap();
            Verdict::Allowed
        },
        || plugin.worker_memory_bytes(0),
    );
    // 10,000 requests x 64 bytes = 640,000 bytes: about ten 64 KiB pages.
    assert!(after >= before + 9 * 65536, "{before} -> {after}");
}

#[test]
fn a_filter_that_asks_nothing_costs_no_hostcall_per_request() {
    // The SDK's glue itself reads nothing from the proxy: a filter that keeps no request
    // headers for later phases and asks for nothing makes no VM exit at all.
    let noop = scenarios::noop();
    let mut wasm = noop.wasm().unwrap();
    noop.check(3, || wasm.run_once()).unwrap();
    wasm.plugin().reset_hostcall_counts();
    noop.check(10, || wasm.run_once()).unwrap();
    assert_eq!(wasm.plugin().hostcall_counts(), Default::default());
}

/// The hostcalls of one request through a scenario's wasm module, by name (after warm-up).
fn hostcalls_per_request(id: &str) -> Vec<(String, u64)> {
    const REQUESTS: u64 = 10;
    let all = scenarios::all().unwrap();
    let scenario = all.iter().find(|scenario| scenario.id() == id).unwrap();
    let mut wasm = scenario.wasm().unwrap();
    scenario.check(3, || wasm.run_once()).unwrap();
    wasm.plugin().reset_hostcall_counts();
    scenario
        .check(usize::try_from(REQUESTS).unwrap(), || wasm.run_once())
        .unwrap();
    wasm.plugin()
        .hostcall_counts()
        .into_iter()
        .map(|(name, count)| {
            assert_eq!(
                count % REQUESTS,
                0,
                "{id}: {name} is not the same every request"
            );
            (name, count / REQUESTS)
        })
        .collect()
}

fn calls(expected: &[(&str, u64)]) -> Vec<(String, u64)> {
    expected
        .iter()
        .map(|(name, count)| (name.to_string(), *count))
        .collect()
}

#[test]
fn rate_limit_reads_the_one_header_it_needs_not_the_whole_map() {
    // Each hostcall is a VM exit in Envoy: a change that adds one (or reads the whole header map
    // again) shows here, deterministically.
    assert_eq!(
        hostcalls_per_request("rate-limit/1 key"),
        calls(&[
            ("proxy_add_header_map_value", 3),
            ("proxy_get_current_time_nanoseconds", 1),
            ("proxy_get_header_map_value", 1),
            ("proxy_get_shared_data", 2),
            ("proxy_increment_metric", 2),
            ("proxy_set_shared_data", 2),
        ])
    );
}
