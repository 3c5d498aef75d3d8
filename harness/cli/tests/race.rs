#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! `wasmesh run --race`: the exchange's request on every worker at once, under seeded schedules.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn scratch_file(name: &str, contents: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-race");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn wasmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .args(args)
        .output()
        .unwrap()
}

const REQUEST: &str = r#"{"format": 1, "request": {"headers": [[":method", "GET"], [":path", "/"], [":authority", "shop"]]}}"#;

#[test]
fn a_filter_exact_across_workers_gives_the_same_verdicts_under_every_schedule() {
    let wasm = wasmesh_harness::build::wasm("wasmesh-fault").unwrap();
    let config = scratch_file(
        "fault.json",
        r#"{"delay": {"fixed_delay": "0.5s", "percentage": {"numerator": 100}}, "max_active_faults": 1}"#,
    );
    let request = scratch_file("request.json", REQUEST);
    let output = wasmesh(&[
        "run",
        "--wasm",
        wasm.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--request",
        request.to_str().unwrap(),
        "--workers",
        "4",
        "--race",
        "20",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["workers"], 4);
    assert_eq!(report["rounds"], 20);
    let groups = report["verdicts"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{report:#}");
    assert_eq!(
        groups[0]["verdicts"],
        serde_json::json!(["continue", "continue", "continue", "pause"])
    );
    assert_eq!(groups[0]["seeds"].as_array().unwrap().len(), 20);
    assert_eq!(report["hazards"], serde_json::json!([]));
}

#[test]
fn a_write_without_its_cas_token_fails_the_run_and_is_named() {
    // Counts requests in shared data: read, add one, write without the token of the read.
    let module = r#"(module
  (import "env" "proxy_get_shared_data" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (func (export "malloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (data (i32.const 1024) "n")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (i32.store (i32.const 516) (i32.const 0))
    (drop (call $get (i32.const 1024) (i32.const 1) (i32.const 512) (i32.const 516) (i32.const 520)))
    (i32.store8 (i32.const 600) (i32.add (i32.const 1)
      (if (result i32) (i32.load (i32.const 516))
        (then (i32.load8_u (i32.load (i32.const 512)))) (else (i32.const 0)))))
    (drop (call $set (i32.const 1024) (i32.const 1) (i32.const 600) (i32.const 1) (i32.const 0)))
    (i32.const 0)))"#;
    let wasm = scratch_file("blind_counter.wat", module);
    let request = scratch_file("request-counter.json", REQUEST);
    let output = wasmesh(&[
        "run",
        "--wasm",
        wasm.to_str().unwrap(),
        "--request",
        request.to_str().unwrap(),
        "--workers",
        "4",
        "--race",
        "5",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("shared-data write(s) can lose a concurrent update"),
        "{stderr}"
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let hazards = report["hazards"].as_array().unwrap();
    assert!(
        hazards.iter().any(|h| h
            .as_str()
            .unwrap()
            .contains("read it with a CAS token, then wrote it without the token")),
        "{report:#}"
    );
}
