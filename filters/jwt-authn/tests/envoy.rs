#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The filter in a real Envoy (V8), next to Envoy's own native `jwt_authn` filter given the very
//! same configuration, and next to the harness: every request of the table must get the same
//! verdict from all three. A local JWKS server backs the remote key set. Set
//! `WASMESH_SKIP_ENVOY=1` to skip on a machine without Envoy.

mod common;

use std::path::PathBuf;

use common::{
    cases, comparison_config, crate_dir, jwks_document, run_in_harness, start_in_harness,
    status_of, token, wasm, Case, Verdict, HOST, JWKS_CLUSTER,
};
use serde_json::{json, Value};
use wasmesh_envoy::{
    self as envoy, Cluster, Envoy, EnvoyBuilder, EnvoyError, HttpRequest, HttpResponse,
    ReceivedRequest, ShippedBootstrap, ShippedExample, TestServer, WasmFilter,
};
use wasmesh_jwt_authn::config::TYPE_URL;

/// Requests where the wasm filter deliberately differs from Envoy's native filter: it matches
/// rules on the normalized path, native `jwt_authn` on the path as received (so without
/// `normalize_path` in the connection manager, `/healthz/../api` skips authentication there).
const HARDENED: &[&str] = &["dot segments out of a public prefix"];

fn jwks_server() -> TestServer {
    let jwks = jwks_document();
    TestServer::start(move |_| {
        HttpResponse::new(200, jwks.clone()).with_header("content-type", "application/json")
    })
    .unwrap()
}

fn wasm_envoy(config: &str, upstream: &TestServer, jwks: &TestServer) -> Result<Envoy, EnvoyError> {
    EnvoyBuilder::new()
        .wasm_filter(
            WasmFilter::new(wasm())
                .name("jwt-authn")
                .configuration(config),
        )
        .upstream(upstream.addr())
        .cluster(Cluster::new(JWKS_CLUSTER, jwks.addr()))
        .start()
}

fn native_envoy(config: &Value, upstream: &TestServer, jwks: &TestServer) -> Envoy {
    let mut typed_config = config.clone();
    typed_config["@type"] = json!(TYPE_URL);
    EnvoyBuilder::new()
        .http_filter_json(
            json!({"name": "envoy.filters.http.jwt_authn", "typed_config": typed_config}),
        )
        .upstream(upstream.addr())
        .cluster(Cluster::new(JWKS_CLUSTER, jwks.addr()))
        .start()
        .unwrap()
}

fn run_in_envoy(envoy: &Envoy, case: &Case) -> Verdict {
    let mut request =
        HttpRequest::new(case.method.as_str(), case.path.as_str()).header("host", HOST);
    for (name, value) in &case.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = envoy.send(&request).unwrap();
    match response.response_code_details() {
        Some(details) => Verdict::Replied {
            status: u32::from(response.status),
            details: details.to_string(),
            body: response.text(),
            challenge: response.header("www-authenticate").map(str::to_string),
        },
        None => {
            assert_eq!(response.status, 200, "{}: {}", case.name, response.text());
            let seen = ReceivedRequest::from_echo(&response).unwrap();
            let header = |name: &str| seen.header(name).map(str::to_string);
            Verdict::Forwarded {
                path: seen.path.clone(),
                authorization: header("authorization"),
                remote_token: header("x-remote-token"),
                payload: header("x-jwt-payload"),
                sub: header("x-jwt-sub"),
                level: header("x-jwt-level"),
            }
        }
    }
}

#[test]
fn native_envoy_the_wasm_filter_and_the_harness_agree_on_every_request() {
    if envoy::skip_requested() {
        return;
    }
    let config = comparison_config();
    let upstream = TestServer::echo().unwrap();
    let jwks = jwks_server();
    let wasm_in_envoy = wasm_envoy(&config.to_string(), &upstream, &jwks).unwrap();
    let native = native_envoy(&config, &upstream, &jwks);
    let plugin = start_in_harness(&config.to_string(), jwks_document());

    let mut disagreements = Vec::new();
    // Requests native Envoy lets through and the hardened wasm filter denies.
    let mut hardened_denials = 0u64;
    for case in cases() {
        let in_harness = run_in_harness(&plugin, &case);
        let in_envoy = run_in_envoy(&wasm_in_envoy, &case);
        let in_native = run_in_envoy(&native, &case);
        assert_eq!(
            in_envoy, in_harness,
            "{}: Envoy and the harness disagree",
            case.name
        );
        assert_eq!(
            status_of(&in_envoy),
            case.expected_status,
            "{}: {in_envoy:?}",
            case.name
        );
        if HARDENED.contains(&case.name.as_str()) {
            assert_ne!(in_native, in_envoy, "{}: no longer a divergence", case.name);
            if status_of(&in_native) == 200 && status_of(&in_envoy) != 200 {
                hardened_denials += 1;
            }
        } else if in_native != in_envoy {
            disagreements.push(format!(
                "{}:\n  native: {in_native:?}\n  wasm:   {in_envoy:?}",
                case.name
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));

    // The same counts everywhere (Envoy files wasm metrics under `wasmcustom.`, the native
    // filter's under the connection manager's prefix).
    for event in ["allowed", "denied", "jwks_fetch_success"] {
        let name = format!("jwt_authn.{event}");
        let in_harness = plugin.metric(&name).and_then(|value| value.value());
        let in_native = in_harness.map(|count| match event {
            "allowed" => count + hardened_denials,
            "denied" => count - hardened_denials,
            _ => count,
        });
        assert_eq!(
            wasm_in_envoy.wasm_metric(&name).unwrap(),
            in_harness,
            "{name}"
        );
        assert_eq!(
            native.stat(&format!("http.ingress_http.{name}")).unwrap(),
            in_native,
            "native {name}"
        );
    }
    // One fetch of the remote key set by each Envoy.
    assert_eq!(jwks.requests().len(), 2);
}

#[test]
fn envoy_refuses_a_bad_configuration_as_the_harness_does() {
    if envoy::skip_requested() {
        return;
    }
    let bad =
        json!({"providers": {"p": {"local_jwks": {"filename": "/etc/jwks.json"}}}}).to_string();
    let upstream = TestServer::echo().unwrap();
    let jwks = jwks_server();
    let error = wasm_envoy(&bad, &upstream, &jwks).unwrap_err();
    let EnvoyError::Exited { log_tail, .. } = &error else {
        panic!("expected Envoy to refuse the configuration, got {error}");
    };
    assert!(
        log_tail.contains("providers.p.local_jwks.filename"),
        "{log_tail}"
    );
    let harness = wasmesh_harness::Harness::load(wasm())
        .unwrap()
        .config(bad)
        .start();
    assert!(matches!(
        harness,
        Err(wasmesh_harness::HarnessError::ConfigRejected { .. })
    ));
}

fn examples_dir() -> PathBuf {
    crate_dir().join("../../examples")
}

fn sample_config() -> String {
    std::fs::read_to_string(crate_dir().join("config.json")).unwrap()
}

#[test]
fn shipped_envoy_and_istio_configs_embed_the_sample_configuration() {
    let shipped = ShippedExample::read(&examples_dir(), "jwt-authn").unwrap();
    let sample = sample_config();
    assert_eq!(shipped.envoy_filter_config().unwrap().trim(), sample.trim());
    assert_eq!(shipped.istio_plugin_config().unwrap().trim(), sample.trim());
    assert!(shipped.istio_yaml.contains("phase: AUTHN"));
}

#[test]
fn the_shipped_envoy_config_runs_the_filter() {
    if envoy::skip_requested() {
        return;
    }
    let upstream = TestServer::echo().unwrap();
    let jwks = jwks_server();
    // What `wasmesh build` ships (the release build through wasm-opt, when installed), pointed
    // at the test upstream and at free ports.
    let envoy = ShippedBootstrap::read(&examples_dir(), "jwt-authn")
        .unwrap()
        .shipped_wasm(&wasm(), env!("CARGO_TARGET_TMPDIR").as_ref())
        .unwrap()
        .upstream(upstream.addr())
        .port(8443, jwks.addr().port())
        .start()
        .unwrap();

    let health = envoy.send(&HttpRequest::get("/healthz")).unwrap();
    let missing = envoy.send(&HttpRequest::get("/orders")).unwrap();
    let good = envoy
        .send(
            &HttpRequest::get("/orders")
                .header("authorization", format!("Bearer {}", token("RS256"))),
        )
        .unwrap();

    assert_eq!(health.status, 200);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.text(), "Jwt is missing");
    assert!(missing
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer realm="));
    assert_eq!(good.status, 200, "{}", good.text());
    let seen = ReceivedRequest::from_echo(&good).unwrap();
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(
        seen.header("x-jwt-principal"),
        Some("https://issuer.example.com/user-1")
    );
    assert_eq!(
        envoy.wasm_metric("jwt_authn.jwks_fetch_success").unwrap(),
        Some(1)
    );
}
