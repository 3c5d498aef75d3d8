#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Per-request cost of verifying a valid RS256 and ES256 token (PyJWT-made, from
//! `tests/fixtures/vectors.json`), without and with `jwt_cache_config`, natively (the logic over
//! the in-memory host) and as the real wasm build in the harness. Results:
//! `filters/jwt-authn/BENCHMARKS.md`.
//!
//! `cargo bench -p wasmesh-jwt-authn`

use std::rc::Rc;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};
use wasmesh_harness::{Harness, StreamState};
use wasmesh_jwt_authn::JwtAuthn;
use wasmesh_sdk::adapter::{configure, Outcome, StreamDriver};
use wasmesh_sdk::request::MemoryRequest;
use wasmesh_sdk::testing::MemoryHost;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn token(vectors: &Value, alg: &str) -> String {
    let valid = vectors["valid"].as_array().unwrap();
    let vector = valid.iter().find(|vector| vector["alg"] == alg).unwrap();
    vector["token"].as_str().unwrap().to_string()
}

fn config(vectors: &Value, cached: bool) -> String {
    let mut provider = json!({
        "issuer": "https://issuer.example.com",
        "audiences": ["api.example.com"],
        "local_jwks": {"inline_string": vectors["jwks"].to_string()},
        "claim_to_headers": [{"header_name": "x-jwt-sub", "claim_name": "sub"}],
    });
    if cached {
        provider["jwt_cache_config"] = json!({"jwt_cache_size": 100});
    }
    json!({
        "providers": {"idp": provider},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}],
    })
    .to_string()
}

const CASES: [(&str, bool); 4] = [
    ("RS256", false),
    ("RS256", true),
    ("ES256", false),
    ("ES256", true),
];

fn name(alg: &str, cached: bool) -> String {
    format!("{alg}_{}", if cached { "cached" } else { "uncached" })
}

fn native(c: &mut Criterion) {
    let vectors = vectors();
    let mut group = c.benchmark_group("jwt_authn/native");
    for (alg, cached) in CASES {
        let mut host = MemoryHost::new();
        let filter =
            Rc::new(configure::<JwtAuthn>(config(&vectors, cached).as_bytes(), &mut host).unwrap());
        let bearer = format!("Bearer {}", token(&vectors, alg));
        group.bench_function(name(alg, cached), |b| {
            b.iter(|| {
                let mut driver = StreamDriver::new(Some(Rc::clone(&filter)));
                let mut request = MemoryRequest::get("/api").with_header("authorization", &bearer);
                assert_eq!(
                    driver.on_request_headers(&mut request, &mut host),
                    Outcome::Continue
                );
            });
        });
    }
    group.finish();
}

fn wasm(c: &mut Criterion) {
    let vectors = vectors();
    let module = wasmesh_harness::build::wasm("wasmesh-jwt-authn").unwrap();
    let mut group = c.benchmark_group("jwt_authn/wasm");
    for (alg, cached) in CASES {
        let plugin = Harness::load(&module)
            .unwrap()
            .config(config(&vectors, cached))
            .start()
            .unwrap();
        let bearer = format!("Bearer {}", token(&vectors, alg));
        group.bench_function(name(alg, cached), |b| {
            b.iter(|| {
                let mut stream = plugin.http_stream();
                stream
                    .request_headers(
                        &[
                            (":method", "GET"),
                            (":path", "/api"),
                            (":authority", "api.example.com"),
                            ("authorization", &bearer),
                        ],
                        true,
                    )
                    .unwrap();
                assert_eq!(stream.request_state(), StreamState::Continued);
                stream.complete().unwrap();
            });
        });
    }
    group.finish();
}

criterion_group!(benches, native, wasm);
criterion_main!(benches);
