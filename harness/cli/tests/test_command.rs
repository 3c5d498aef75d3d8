#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! `wasmesh test`: scenario files through the command, as a user runs them (harness judge; the
//! Envoy judge is covered by `harness/scenario/tests` and the shipped scenarios).

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::wasmesh;

/// Writes `contents` to a file `name` in a fresh scratch folder.
fn scratch(name: &str, contents: &str) -> PathBuf {
    let path = common::scratch_dir("test-command").join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A module whose `on_request_headers` always stops iteration, and nothing ever resumes it.
const HOLDS_EVERY_REQUEST: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 1)))"#;

/// The minimal example: a request without `x-api-key` gets a 401.
fn minimal_scenario(name: &str, denied_status: u16) -> PathBuf {
    let module = wasmesh_harness::build::wasm("wasmesh-example-minimal").unwrap();
    scratch(
        name,
        &format!(
            "format: 1\nmodule: {{path: {}}}\nconfig: {{required_header: x-api-key}}\nsteps:\n\
             \x20 - name: no key\n    request: {{path: /a}}\n    expect: {{status: {denied_status}, details: minimal_header_missing}}\n\
             \x20 - name: a key\n    request: {{path: /a, headers: {{x-api-key: k}}}}\n    upstream: {{body: fine}}\n    expect: {{status: 200, body: fine}}\n",
            module.display()
        ),
    )
}

#[test]
fn a_passing_scenario_exits_0_with_a_line_per_step_and_a_summary() {
    let file = minimal_scenario("pass.scenario.yaml", 401);
    let output = wasmesh(&["test", file.to_str().unwrap()]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("  ok    1. no key (2 checks)"), "{text}");
    assert!(text.contains("  ok    2. a key (2 checks)"), "{text}");
    assert!(
        text.contains("passed: 1 of 1 scenarios, 2 of 2 steps passed"),
        "{text}"
    );
}

#[test]
fn a_failed_expectation_exits_1_showing_expected_and_got() {
    let file = minimal_scenario("fail.scenario.yaml", 403);
    let output = wasmesh(&["test", file.to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("  FAIL  1. no key"), "{text}");
    assert!(
        text.contains("[harness] status:\n            expected 403\n            got      401"),
        "{text}"
    );
    assert!(
        text.contains("FAILED: 0 of 1 scenarios, 1 of 2 steps passed"),
        "{text}"
    );

    let junit = wasmesh(&["test", file.to_str().unwrap(), "--format", "junit"]);
    let xml = stdout(&junit);
    assert_eq!(junit.status.code(), Some(1));
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(
        xml.contains("<testsuites name=\"wasmesh test\" tests=\"2\" failures=\"1\">"),
        "{xml}"
    );
    assert!(
        xml.contains("<failure message=\"status: expected 403, got 401\">"),
        "{xml}"
    );
}

#[test]
fn update_rewrites_expectations_from_what_happened() {
    let file = minimal_scenario("update.scenario.yaml", 403);
    let output = wasmesh(&["test", file.to_str().unwrap(), "--update"]);
    assert!(output.status.success(), "{}", stdout(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("updated"));
    let rewritten = std::fs::read_to_string(&file).unwrap();
    assert!(rewritten.contains("status: 401"), "{rewritten}");
    assert!(rewritten.contains("minimal.denied: 1"), "{rewritten}");
    let again = wasmesh(&["test", file.to_str().unwrap()]);
    assert!(again.status.success(), "{}", stdout(&again));
}

#[test]
fn a_typo_is_refused_with_file_line_and_field() {
    let file = scratch(
        "typo.scenario.yaml",
        "format: 1\nmodule: {path: m.wasm}\nsteps:\n  - request:\n      path: /\n    expcet: {status: 200}\n",
    );
    let output = wasmesh(&["test", file.to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "typo.scenario.yaml:6: steps[0].expcet: unknown field `expcet`, expected one of"
        ),
        "{text}"
    );
}

#[test]
fn a_module_that_cannot_start_fails_its_scenario_not_the_runner() {
    let module = scratch("broken.wat", "(module (memory (export \"memory\") 1))");
    let broken = scratch(
        "broken.scenario.yaml",
        &format!(
            "format: 1\nmodule: {{path: {}}}\nsteps: [{{request: {{}}}}]\n",
            module.display()
        ),
    );
    let good = minimal_scenario("good.scenario.yaml", 401);
    let output = wasmesh(&["test", broken.to_str().unwrap(), good.to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  the scenario did not start under harness:"),
        "{text}"
    );
    assert!(text.contains("FAILED: 1 of 2 scenarios"), "{text}");
}

#[test]
fn a_request_held_with_nothing_pending_fails_the_step_instead_of_passing() {
    let module = scratch("holds.wat", HOLDS_EVERY_REQUEST);
    let file = scratch(
        "holds.scenario.yaml",
        &format!(
            "format: 1\nmodule: {{path: {}}}\nsteps: [{{request: {{}}}}]\n",
            module.display()
        ),
    );
    let output = wasmesh(&["test", file.to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("stopped: the module still holds the request after 60s of virtual time (nothing pending)"),
        "{text}"
    );
}

#[test]
fn folders_are_searched_for_scenario_files_and_the_schema_is_printed() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-test-folder");
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    let source = minimal_scenario("folder-source.scenario.yaml", 401);
    std::fs::copy(&source, dir.join("nested/a.scenario.yaml")).unwrap();
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    let output = wasmesh(&["test", dir.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stdout(&output));
    assert!(stdout(&output).contains("passed: 1 of 1 scenarios"));

    let schema = wasmesh(&["test", "--schema"]);
    let schema: serde_json::Value = serde_json::from_slice(&schema.stdout).unwrap();
    assert_eq!(schema, wasmesh_scenario::schema());
}

#[test]
fn run_takes_base64_bodies_and_warns_when_the_module_holds_the_request() {
    let module = scratch("holds-run.wat", HOLDS_EVERY_REQUEST);
    let exchange = scratch(
        "holds-run.json",
        r#"{"request": {"headers": {":method": "POST", ":path": "/", ":authority": "a"}, "body_base64": "aGk="}}"#,
    );
    let output = wasmesh(&[
        "run",
        "--wasm",
        module.to_str().unwrap(),
        "--request",
        exchange.to_str().unwrap(),
    ]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning: the module still holds the request (0 callout(s) pending"),
        "{stderr}"
    );
    let minimal = wasmesh_harness::build::wasm("wasmesh-example-minimal").unwrap();
    let config = scratch("minimal-run.json", r#"{"required_header": "x-api-key"}"#);
    let passing = scratch(
        "base64-run.json",
        r#"{"request": {"headers": {":method": "POST", ":path": "/", ":authority": "a", "x-api-key": "k"}, "body_base64": "aGk="}}"#,
    );
    let output = wasmesh(&[
        "run",
        "--wasm",
        minimal.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--request",
        passing.to_str().unwrap(),
    ]);
    assert!(output.status.success());
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["request"]["body"], "hi");

    let both = scratch(
        "both-bodies.json",
        r#"{"request": {"headers": {}, "body": "x", "body_base64": "eA=="}}"#,
    );
    let refused = wasmesh(&[
        "run",
        "--wasm",
        module.to_str().unwrap(),
        "--request",
        both.to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr)
        .contains("request: give `body` or `body_base64`, not both"));
}
