#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Per-request cost of the RBAC filter with 1, 10 and 100 policies, natively (the logic over the
//! in-memory host) and as the real wasm build in the harness. The request matches only the last
//! policy in name order, so every policy is evaluated (the worst case for an ALLOW list).
//! Results: `filters/rbac/BENCHMARKS.md`.
//!
//! `cargo bench -p wasmesh-rbac`

use std::rc::Rc;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use wasmesh_harness::{Harness, PropertyValue};
use wasmesh_rbac::metadata::encode_metadata;
use wasmesh_rbac::RbacFilter;
use wasmesh_sdk::adapter::{configure, Outcome, StreamDriver};
use wasmesh_sdk::request::MemoryRequest;
use wasmesh_sdk::testing::MemoryHost;

const COUNTS: [usize; 3] = [1, 10, 100];

/// `count` policies of realistic shape: method and path prefix; a client network, a header or
/// a JWT group.
fn envoy_config(count: usize) -> String {
    let policies: serde_json::Map<String, serde_json::Value> = (0..count)
        .map(|i| {
            let policy = json!({
                "permissions": [{"and_rules": {"rules": [
                    {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
                    {"url_path": {"path": {"prefix": format!("/svc{i}/")}}}
                ]}}],
                "principals": [{"or_ids": {"ids": [
                    {"remote_ip": {"address_prefix": format!("10.{}.0.0", i % 256), "prefix_len": 16}},
                    {"header": {"name": "x-user", "string_match": {"exact": format!("user{i}")}}},
                    {"metadata": {"filter": "envoy.filters.http.jwt_authn",
                                  "path": [{"key": "jwt_payload"}, {"key": "groups"}],
                                  "value": {"list_match": {"one_of": {"string_match": {"exact": format!("group{i}")}}}}}}
                ]}}]
            });
            (format!("p{i:03}"), policy)
        })
        .collect();
    json!({"rules": {"action": "ALLOW", "policies": policies}}).to_string()
}

/// A request matching only the last policy (by its JWT group).
fn request_headers(count: usize) -> Vec<(String, String)> {
    vec![
        (":method".into(), "GET".into()),
        (
            ":path".into(),
            format!("/svc{}/items/../items/42?page=2", count - 1),
        ),
        (":authority".into(), "shop.example.com".into()),
        ("x-user".into(), "someone".into()),
        ("x-forwarded-for".into(), "192.0.2.1".into()),
        ("user-agent".into(), "bench/1.0".into()),
    ]
}

fn metadata(count: usize) -> Vec<u8> {
    encode_metadata(&[(
        "envoy.filters.http.jwt_authn",
        json!({"jwt_payload": {"iss": "https://issuer", "sub": "alice", "groups": ["dev", format!("group{}", count - 1)]}}),
    )])
}

fn native(c: &mut Criterion) {
    let mut group = c.benchmark_group("rbac/native");
    for count in COUNTS {
        let mut host = MemoryHost::new();
        let filter =
            Rc::new(configure::<RbacFilter>(envoy_config(count).as_bytes(), &mut host).unwrap());
        let mut request = MemoryRequest::new().with_property(&["metadata"], metadata(count));
        for (name, value) in request_headers(count) {
            request = request.with_header(&name, &value);
        }
        group.bench_function(format!("{count}_policies"), |b| {
            b.iter(|| {
                let mut driver = StreamDriver::new(Some(Rc::clone(&filter)));
                let mut request = request.clone();
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
    let module = wasmesh_harness::build::wasm("wasmesh-rbac").unwrap();
    let mut group = c.benchmark_group("rbac/wasm");
    let mut run = |name: String, config: String, count: usize, expect_allowed: bool| {
        let plugin = Harness::load(&module)
            .unwrap()
            .config(config)
            .start()
            .unwrap();
        let headers = request_headers(count);
        let borrowed: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let metadata = metadata(count);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut stream = plugin.http_stream();
                stream.property(&["metadata"], PropertyValue::Bytes(metadata.clone()));
                stream.request_headers(&borrowed, true).unwrap();
                assert_eq!(stream.local_reply().is_none(), expect_allowed);
                stream.complete().unwrap();
            });
        });
    };
    for count in COUNTS {
        run(
            format!("{count}_policies"),
            envoy_config(count),
            count,
            true,
        );
    }
    // The harness's own per-stream cost, to subtract: no rules, nothing enforced, so the module
    // only runs its callbacks.
    run("no_rules".to_string(), "{}".to_string(), 1, true);
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = native, wasm
}
criterion_main!(benches);
