#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The policy filter with an HTTP authorization service, in a real Envoy (V8) and in the
//! harness: every case of the table must get the same verdict from both, the service must see
//! the same checks, and the shipped Envoy configuration must run. Set `WASMESH_SKIP_ENVOY=1` to
//! skip on a machine without Envoy.

mod common;

use std::path::PathBuf;

use common::envoy::{http_service, run_in_envoy, verdict_of, Gate};
use common::{cases, run_in_harness, sample_config, start_in_harness};
use wasmesh_harness::envoy::{
    self, BootstrapFormat, Cluster, EnvoyBuilder, HttpRequest, TestServer, WasmFilter,
};

#[test]
fn envoy_and_the_harness_agree_on_every_case() {
    if envoy::skip_requested() {
        return;
    }
    let gate = Gate::default();
    let (service, seen) = http_service(gate.clone());
    let upstream = TestServer::echo().unwrap();
    let envoy = EnvoyBuilder::new()
        .wasm_filter(
            WasmFilter::new(common::wasm())
                .name("policy")
                .configuration(sample_config()),
        )
        .upstream(upstream.addr())
        .cluster(Cluster::new("authz", service.addr()))
        .start()
        .unwrap();
    let plugin = start_in_harness(&sample_config());

    for case in cases() {
        let in_harness = run_in_harness(&plugin, &case);
        let in_envoy = run_in_envoy(&envoy, &case);
        assert_eq!(
            in_envoy, in_harness,
            "{}: Envoy and the harness disagree",
            case.name
        );
        assert_eq!(in_envoy, case.expected, "{}", case.name);
    }
    gate.open();

    // The service saw the same checks from both, with the same paths and headers.
    let from_envoy = seen.lock().unwrap().clone();
    let from_harness: Vec<String> = plugin
        .http_callouts()
        .iter()
        .map(|c| c.header(":path").unwrap().to_string())
        .collect();
    assert_eq!(from_envoy, from_harness);
    let first = &service.requests()[0];
    assert_eq!(first.method, "GET");
    assert_eq!(first.header("authorization"), Some("Bearer alice"));
    assert_eq!(first.header("x-authz-client"), Some("wasmesh"));
    assert_eq!(first.header("content-length"), Some("0"));
    // Both count the same events (Envoy files wasm metrics under `wasmcustom.`).
    for event in [
        "ok",
        "denied",
        "error",
        "timeout",
        "cache_hit",
        "cache_miss",
        "local_allowed",
        "local_denied",
    ] {
        let name = format!("ext_authz.{event}");
        let in_harness = plugin.metric(&name).and_then(|value| value.value());
        assert_eq!(envoy.wasm_metric(&name).unwrap(), in_harness, "{name}");
    }
}

#[test]
fn the_shipped_envoy_config_runs_the_filter() {
    if envoy::skip_requested() {
        return;
    }
    let (service, _) = http_service(Gate::default());
    let upstream = TestServer::echo().unwrap();
    let shipped =
        std::fs::read_to_string(common::crate_dir().join("../../examples/envoy/policy.yaml"))
            .unwrap();
    let wasm = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("policy.wasm");
    wasmesh_harness::build::optimize(&common::wasm(), &wasm).unwrap();
    let replacements = [
        (
            "filename: /etc/envoy/policy.wasm".to_string(),
            format!("filename: {}", wasm.display()),
        ),
        ("port_value: 10000".to_string(), "port_value: 0".to_string()),
        ("port_value: 9901".to_string(), "port_value: 0".to_string()),
        (
            "port_value: 8080".to_string(),
            format!("port_value: {}", upstream.addr().port()),
        ),
        (
            "port_value: 8181".to_string(),
            format!("port_value: {}", service.addr().port()),
        ),
    ];
    let mut bootstrap = shipped.clone();
    for (from, to) in &replacements {
        assert_eq!(shipped.matches(from.as_str()).count(), 1, "{from}");
        bootstrap = bootstrap.replace(from.as_str(), to);
    }
    let envoy = EnvoyBuilder::new()
        .start_with_bootstrap(&bootstrap, BootstrapFormat::Yaml)
        .unwrap();

    let allowed = envoy
        .send(&HttpRequest::get("/orders").header("authorization", "Bearer alice"))
        .unwrap();
    let denied = envoy
        .send(&HttpRequest::get("/orders").header("authorization", "Bearer mallory"))
        .unwrap();
    let internal = envoy.send(&HttpRequest::get("/internal/x")).unwrap();

    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.header("x-quota"), Some("100"));
    assert!(
        matches!(verdict_of(&allowed), common::Verdict::Forwarded { user: Some(ref user), .. } if user == "alice")
    );
    assert_eq!(
        (denied.status, denied.text().as_str()),
        (403, "token revoked\n")
    );
    assert_eq!(internal.status, 403);
    assert_eq!(envoy.wasm_metric("ext_authz.ok").unwrap(), Some(1));
}

/// The text nested under the first line containing `marker`, dedented.
fn block_under(text: &str, marker: &str) -> String {
    let mut lines = text.lines().skip_while(|line| !line.contains(marker));
    let header = lines.next().unwrap_or_else(|| panic!("no {marker:?}"));
    let depth = header.len() - header.trim_start().len();
    let block: Vec<&str> = lines
        .take_while(|line| line.trim().is_empty() || line.len() - line.trim_start().len() > depth)
        .collect();
    let indent = block
        .iter()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.len() - line.trim_start().len())
        .min()
        .unwrap_or(0);
    block
        .iter()
        .map(|line| line.get(indent..).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn shipped_envoy_and_istio_configs_embed_the_sample_configuration() {
    let examples = common::crate_dir().join("../../examples");
    let envoy_yaml = std::fs::read_to_string(examples.join("envoy/policy.yaml")).unwrap();
    let istio_yaml = std::fs::read_to_string(examples.join("istio/policy.yaml")).unwrap();
    let sample = sample_config();
    assert_eq!(block_under(&envoy_yaml, "value: |").trim(), sample.trim());
    assert_eq!(
        block_under(&istio_yaml, "pluginConfig:").trim(),
        sample.trim()
    );
    assert!(istio_yaml.contains("phase: AUTHZ"));
}
