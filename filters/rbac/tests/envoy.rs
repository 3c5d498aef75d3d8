#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The Envoy-format sample in real Envoys (V8): the wasm filter, the harness, and Envoy's own
//! native RBAC filter given the same `rules`/`shadow_rules` must give the same verdict for
//! every case (except where the wasm filter is deliberately stricter, recorded per case), and
//! count the same. Both Envoys run Envoy's native `jwt_authn` before the RBAC filter, so
//! `metadata` principals read real dynamic metadata. Set `WASMESH_SKIP_ENVOY=1` to skip.

mod common;

use std::path::PathBuf;

use common::envoy::{jwt_authn, request_for, start_wasm_envoy, verdict_of};
use common::{
    cases, jwt_vectors, run_in_harness, sample_config, start_in_harness, JwtVectors, Verdict,
};
use serde_json::{json, Value};
use wasmesh_envoy::{
    self as envoy, Envoy, EnvoyBuilder, HttpRequest, ShippedBootstrap, ShippedExample, TestServer,
};

/// Envoy with jwt_authn and the native RBAC filter, with the connection manager normalizing
/// paths as the wasm filter does by default and trusting one `x-forwarded-for` hop as the
/// sample's `xff_num_trusted_hops: 1`.
fn start_native_envoy(upstream: &TestServer, vectors: &JwtVectors, sample: &Value) -> Envoy {
    let rbac = json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": sample["rules"],
            "shadow_rules": sample["shadow_rules"],
            "track_per_rule_stats": sample["track_per_rule_stats"],
        },
    });
    EnvoyBuilder::new()
        .connection_manager_field("use_remote_address", json!(true))
        .connection_manager_field("xff_num_trusted_hops", json!(1))
        .connection_manager_field("normalize_path", json!(true))
        .connection_manager_field("merge_slashes", json!(true))
        .connection_manager_field(
            "path_with_escaped_slashes_action",
            json!("UNESCAPE_AND_FORWARD"),
        )
        .http_filter_json(jwt_authn(vectors))
        .http_filter_json(rbac)
        .upstream(upstream.addr())
        .start()
        .unwrap()
}

#[test]
fn wasm_filter_harness_and_native_rbac_agree_on_every_case() {
    if envoy::skip_requested() {
        return;
    }
    let vectors = jwt_vectors();
    let sample: Value = serde_json::from_str(&sample_config()).unwrap();
    let upstream = TestServer::echo().unwrap();
    let wasm_envoy = start_wasm_envoy(&upstream, &vectors, &sample_config());
    let native_envoy = start_native_envoy(&upstream, &vectors, &sample);
    let plugin = start_in_harness(&sample_config());
    let cases = cases();

    for case in &cases {
        let in_harness = run_in_harness(&plugin, &vectors, case);
        let in_wasm_envoy = verdict_of(&wasm_envoy.send(&request_for(case, &vectors)).unwrap());
        let in_native_envoy = verdict_of(&native_envoy.send(&request_for(case, &vectors)).unwrap());

        assert_eq!(
            in_wasm_envoy, in_harness,
            "{}: Envoy and the harness disagree",
            case.name
        );
        assert_eq!(in_wasm_envoy, case.expected, "{}", case.name);
        assert_eq!(
            in_native_envoy,
            case.native.clone().unwrap_or_else(|| case.expected.clone()),
            "{}: native RBAC",
            case.name
        );
    }

    // The wasm filter counts exactly what the harness counts (Envoy files wasm metrics under
    // `wasmcustom.`)...
    let names = [
        "rbac.allowed",
        "rbac.denied",
        "rbac.shadow_allowed",
        "rbac.shadow_denied",
        "rbac.policy.public-site.allowed",
        "rbac.policy.beta-for-gold-tier.allowed",
        "rbac.policy.admins-by-jwt-group.allowed",
        "rbac.policy.users-with-jwt.allowed",
        "rbac.policy.partner-network.allowed",
        "rbac.policy.api-from-local-clients.allowed",
        "rbac.policy.no-debug-header.shadow_denied",
    ];
    for name in names {
        let in_harness = plugin.metric(name).and_then(|value| value.value());
        assert_eq!(wasm_envoy.wasm_metric(name).unwrap(), in_harness, "{name}");
    }
    // ...and what native RBAC counts under the same names, but for the requests it handles
    // differently: the multi-value requests Envoy 1.40 lets into an ALLOW on any one value (the
    // wasm filter requires every value), and the NUL path that Envoy's connection manager
    // rejects before RBAC runs.
    let stricter = cases
        .iter()
        .filter(|c| c.native == Some(Verdict::Allowed))
        .count() as u64;
    let rejected_before_rbac = cases
        .iter()
        .filter(|c| matches!(&c.native, Some(Verdict::Denied { status: 400, .. })))
        .count() as u64;
    let wasm = |name: &str| wasm_envoy.wasm_metric(name).unwrap().unwrap_or(0);
    let native = |name: &str| {
        native_envoy
            .stat(&format!("http.ingress_http.{name}"))
            .unwrap()
            .unwrap_or(0)
    };
    assert_eq!(native("rbac.allowed"), wasm("rbac.allowed") + stricter);
    assert_eq!(
        native("rbac.denied"),
        wasm("rbac.denied") - stricter - rejected_before_rbac
    );
    assert_eq!(native("rbac.shadow_denied"), wasm("rbac.shadow_denied"));
    assert_eq!(native("rbac.shadow_allowed"), wasm("rbac.shadow_allowed"));
    for name in &names[4..] {
        let adjustment = if *name == "rbac.policy.beta-for-gold-tier.allowed" {
            stricter
        } else {
            0
        };
        assert_eq!(native(name), wasm(name) + adjustment, "{name}");
    }
}

#[test]
fn shipped_configs_embed_the_samples() {
    let shipped =
        ShippedExample::read(&common::crate_dir().join("../../examples"), "rbac").unwrap();

    assert_eq!(
        shipped.envoy_filter_config().unwrap().trim(),
        sample_config().trim()
    );
    let plugin_config: Value =
        serde_json::from_str(&shipped.istio_plugin_config().unwrap()).unwrap();
    let mut istio_sample: Value = serde_json::from_str(&common::istio_config()).unwrap();
    // In Istio, jwt_authn stores each payload under its issuer (istiod sets
    // `payload_in_metadata: <issuer>`); the shipped WasmPlugin says so.
    istio_sample["jwt_payload"] = json!({"metadata": {
        "filter": "envoy.filters.http.jwt_authn",
        "key": "https://issuer.wasmesh.test"
    }});
    assert_eq!(plugin_config, istio_sample);
    // The shipped Istio configuration is valid for the filter.
    start_in_harness(&plugin_config.to_string());
}

#[test]
fn the_shipped_envoy_config_runs_the_filter() {
    if envoy::skip_requested() {
        return;
    }
    let vectors = jwt_vectors();
    let upstream = TestServer::echo().unwrap();
    let jwks = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rbac-jwks.json");
    std::fs::write(&jwks, &vectors.jwks).unwrap();
    // What `wasmesh build` ships (the release build through wasm-opt, when installed), pointed
    // at the test upstream and at free ports.
    let envoy = ShippedBootstrap::read(&common::crate_dir().join("../../examples"), "rbac")
        .unwrap()
        .shipped_wasm(&common::wasm(), env!("CARGO_TARGET_TMPDIR").as_ref())
        .unwrap()
        .upstream(upstream.addr())
        .replace(
            "filename: /etc/envoy/jwks.json",
            format!("filename: {}", jwks.display()),
        )
        .replace(
            "issuer: https://issuer.example.com",
            format!("issuer: {}", vectors.issuer),
        )
        .start()
        .unwrap();

    let public = envoy.send(&HttpRequest::get("/")).unwrap();
    let admin = envoy.send(&HttpRequest::get("//admin")).unwrap();
    let admin_with_jwt = envoy
        .send(&HttpRequest::get("/admin").header(
            "authorization",
            format!("Bearer {}", vectors.tokens["alice"]),
        ))
        .unwrap();

    assert_eq!(public.status, 200);
    assert_eq!(admin.status, 403);
    assert_eq!(admin.text(), "RBAC: access denied");
    assert_eq!(admin_with_jwt.status, 200);
    assert_eq!(envoy.wasm_metric("rbac.denied").unwrap(), Some(1));
    assert_eq!(
        envoy
            .wasm_metric("rbac.policy.admins-by-jwt-group.allowed")
            .unwrap(),
        Some(1)
    );
}
