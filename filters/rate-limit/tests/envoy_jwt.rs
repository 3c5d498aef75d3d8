#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Per-principal limits in a real Envoy: Envoy's own `jwt_authn` verifies a JWT (made by
//! Python's standard library, `tests/data/make_jwt.py`) and writes its payload to dynamic
//! metadata; the filter's `metadata` action reads the `sub` claim from there, one bucket per
//! subject. Set `WASMESH_SKIP_ENVOY=1` to skip without Envoy.

mod common;

use serde_json::{json, Value};
use wasmesh_envoy::{self as envoy, EnvoyBuilder, HttpRequest, TestServer, WasmFilter};

const CONFIG: &str = r#"{
  "stat_prefix": "per_user",
  "filter_enabled": {"default_value": {"numerator": 100}},
  "filter_enforced": {"default_value": {"numerator": 100}},
  "rate_limits": [{"actions": [{"metadata": {"descriptor_key": "sub", "metadata_key": {"key": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": "sub"}]}}}]}],
  "descriptors": [{"entries": [{"key": "sub"}], "token_bucket": {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "3600s"}}]
}"#;

fn vectors() -> Value {
    let text = std::fs::read_to_string(common::crate_dir().join("tests/data/jwt.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_jwt_claim_in_dynamic_metadata_keys_the_bucket() {
    if envoy::skip_requested() {
        return;
    }
    let vectors = vectors();
    let jwt_authn = json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"test": {
                "issuer": "https://issuer.example",
                "local_jwks": {"inline_string": vectors["jwks"]},
                "payload_in_metadata": "payload",
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "test"}}],
        },
    });
    let upstream = TestServer::echo().unwrap();
    let envoy = EnvoyBuilder::new()
        .concurrency(2)
        .http_filter_json(jwt_authn)
        .wasm_filter(
            WasmFilter::new(common::wasm())
                .name("rate-limit")
                .configuration(CONFIG),
        )
        .upstream(upstream.addr())
        .start()
        .unwrap();
    let send = |subject: &str| {
        let token = vectors["tokens"][subject].as_str().unwrap();
        envoy
            .send(&HttpRequest::get("/").header("authorization", format!("Bearer {token}")))
            .unwrap()
    };
    let alice: Vec<u16> = (0..3).map(|_| send("alice").status).collect();
    assert_eq!(alice, [200, 200, 429]);
    let limited = send("alice");
    assert_eq!(limited.response_code_details(), Some("local_rate_limited"));
    // Bob has his own bucket.
    assert_eq!(send("bob").status, 200);
    // Without a token, jwt_authn answers before the rate limit runs.
    assert_eq!(envoy.send(&HttpRequest::get("/")).unwrap().status, 401);
    assert_eq!(
        envoy
            .wasm_metric("per_user.http_local_rate_limit.enforced")
            .unwrap(),
        Some(2)
    );
}
