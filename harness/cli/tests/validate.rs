#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! `wasmesh validate`: the filters' own parsers (natively) and the modules themselves (in the
//! harness) judge configurations before they are deployed.

mod common;

use common::{failed, scratch_dir, succeeded, wasmesh, workspace_root};

#[test]
fn every_shipped_configuration_is_valid_for_its_filter() {
    for (filter, folder) in [
        ("fault", "filters"),
        ("header-filter", "examples"),
        ("jwt-authn", "filters"),
        ("policy", "filters"),
        ("rate-limit", "filters"),
        ("rbac", "filters"),
        ("telemetry", "filters"),
    ] {
        let config = workspace_root()
            .join(folder)
            .join(filter)
            .join("config.json");
        let output = wasmesh(&[
            "validate",
            "--filter",
            filter,
            "--config",
            config.to_str().unwrap(),
        ]);
        let report = succeeded(&output);
        assert!(
            report.contains(&format!("valid {filter} configuration")),
            "{report}"
        );
    }
}

#[test]
fn every_error_is_listed_with_its_json_path() {
    let dir = scratch_dir("validate-errors");
    let config = dir.join("rbac.json");
    std::fs::write(
        &config,
        r#"{
          "rules": {
            "action": "ALOW",
            "policies": {
              "a": {
                "permissions": [{"any": true}, {"url_path": {"path": {"exact": 5}}}, {"hedaer": {}}],
                "principals": [{"any": "yes"}]
              }
            }
          }
        }"#,
    )
    .unwrap();
    let output = wasmesh(&[
        "validate",
        "--filter",
        "rbac",
        "--config",
        config.to_str().unwrap(),
    ]);
    let errors = failed(&output);
    let shown = config.display().to_string();
    for path in [
        "rules.action",
        "rules.policies.a.permissions[1].url_path.path.exact",
        "rules.policies.a.permissions[2].hedaer",
        "rules.policies.a.principals[0].any",
    ] {
        assert!(
            errors.contains(&format!("{shown}: {path}: ")),
            "{path} missing:\n{errors}"
        );
    }
    assert!(
        errors.contains("is not a valid rbac configuration (4 errors"),
        "{errors}"
    );
}

#[test]
fn the_module_itself_must_accept_the_configuration() {
    let wasm = wasmesh_harness::build::wasm("wasmesh-example-header-filter").unwrap();
    let dir = scratch_dir("validate-module");
    let config = dir.join("header-filter.json");
    // Refused by the filter's own checks: an empty prefix would match every path.
    std::fs::write(&config, r#"{"deny": [{"prefix": ""}]}"#).unwrap();
    let output = wasmesh(&[
        "validate",
        "--filter",
        "header-filter",
        "--config",
        config.to_str().unwrap(),
        "--wasm",
        wasm.to_str().unwrap(),
    ]);
    let errors = failed(&output);
    // Native parser and module agree, and the module's own log line is quoted.
    assert!(errors.contains(": deny[0]: "), "{errors}");
    assert!(
        errors.contains("returned false from on_configure"),
        "{errors}"
    );
    assert!(
        errors.contains("invalid configuration: deny[0]"),
        "{errors}"
    );

    // --wasm alone (a filter this tool does not know) still runs the module's check.
    std::fs::write(&config, r#"{"deny": [{"prefix": "/admin"}]}"#).unwrap();
    let output = wasmesh(&[
        "validate",
        "--config",
        config.to_str().unwrap(),
        "--wasm",
        wasm.to_str().unwrap(),
    ]);
    let report = succeeded(&output);
    assert!(
        report.contains("on_vm_start and on_configure returned true"),
        "{report}"
    );
    assert!(
        !report.contains("valid header-filter configuration"),
        "{report}"
    );
}

#[test]
fn unknown_filters_are_named_with_the_known_ones() {
    let output = wasmesh(&[
        "validate",
        "--filter",
        "waf",
        "--config",
        "examples/header-filter/config.json",
    ]);
    let error = failed(&output);
    assert!(
        error.contains("unknown filter \"waf\"; known filters: fault, header-filter"),
        "{error}"
    );
}
