#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The policy filter with an HTTP authorization service, in a real Envoy (V8) and in the
//! harness: every case of the table must get the same verdict from both, the service must see
//! the same checks, and the shipped Envoy configuration must run. Set `WASMESH_SKIP_ENVOY=1` to
//! skip on a machine without Envoy.

mod common;

use common::envoy::{http_service, run_in_envoy, verdict_of, Gate};
use common::{cases, run_in_harness, sample_config, start_in_harness};
use wasmesh_envoy::{
    self as envoy, Cluster, EnvoyBuilder, HttpRequest, ShippedBootstrap, ShippedExample,
    TestServer, WasmFilter,
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
    // What `wasmesh build` ships (the release build through wasm-opt, when installed), pointed
    // at the test upstream and at free ports.
    let envoy = ShippedBootstrap::read(&common::crate_dir().join("../../examples"), "policy")
        .unwrap()
        .shipped_wasm(&common::wasm(), env!("CARGO_TARGET_TMPDIR").as_ref())
        .unwrap()
        .upstream(upstream.addr())
        .port(8181, service.addr().port())
        .start()
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

#[test]
fn shipped_envoy_and_istio_configs_embed_the_sample_configuration() {
    let shipped =
        ShippedExample::read(&common::crate_dir().join("../../examples"), "policy").unwrap();
    let sample = sample_config();
    assert_eq!(shipped.envoy_filter_config().unwrap().trim(), sample.trim());
    assert_eq!(shipped.istio_plugin_config().unwrap().trim(), sample.trim());
    assert!(shipped.istio_yaml.contains("phase: AUTHZ"));
}
