#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Per-request cost of the policy filter on a decision-cache hit, natively (the logic over the
//! in-memory host) and as the real wasm build in the harness; and, for scale, a miss answered
//! by the mock service. Results: `filters/policy/BENCHMARKS.md`.
//!
//! `cargo bench -p wasmesh-policy`

use std::rc::Rc;

use criterion::{criterion_group, criterion_main, Criterion};
use wasmesh_harness::{CalloutReply, Harness};
use wasmesh_policy::Policy;
use wasmesh_sdk::adapter::{configure, Outcome, StreamDriver};
use wasmesh_sdk::callout::{CalloutResponse, HttpCalloutResponse};
use wasmesh_sdk::request::MemoryRequest;
use wasmesh_sdk::testing::MemoryHost;

/// The sample configuration's service and cache, without local lists.
const CONFIG: &str = r#"{
  "http_service": {
    "server_uri": {"uri": "http://authz", "cluster": "authz", "timeout": "0.5s"},
    "authorization_response": {"allowed_upstream_headers": {"patterns": [{"exact": "x-user"}]}}
  },
  "decision_cache": {"key": {"headers": ["authorization", "x-tenant"]}, "ttl": "3600s"}
}"#;

const HEADERS: [(&str, &str); 6] = [
    (":method", "GET"),
    (":path", "/orders?page=1"),
    (":authority", "shop.example.com"),
    ("authorization", "Bearer alice"),
    ("x-tenant", "acme"),
    ("user-agent", "bench"),
];

fn request() -> MemoryRequest {
    HEADERS
        .iter()
        .fold(MemoryRequest::new(), |request, (name, value)| {
            request.with_header(name, value)
        })
}

fn allow(token: u32) -> CalloutResponse {
    CalloutResponse::Http(HttpCalloutResponse {
        token,
        headers: vec![
            (":status".into(), "200".into()),
            ("x-user".into(), "alice".into()),
        ],
        body: Vec::new(),
        trailers: Vec::new(),
    })
}

fn native(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy/native");
    let mut host = MemoryHost::new();
    let filter = Rc::new(configure::<Policy>(CONFIG.as_bytes(), &mut host).unwrap());
    // Warm the cache with one answered check.
    let mut driver = StreamDriver::new(Some(Rc::clone(&filter)));
    let mut first = request();
    assert_eq!(
        driver.on_request_headers(&mut first, &mut host),
        Outcome::Pause
    );
    let token = host.http_callouts()[0].0;
    driver.on_callout_response(&mut first, &mut host, allow(token));
    group.bench_function("cache_hit", |b| {
        b.iter(|| {
            let mut driver = StreamDriver::new(Some(Rc::clone(&filter)));
            let mut request = request();
            let outcome = driver.on_request_headers_ending(&mut request, &mut host, true);
            assert_eq!(outcome, Outcome::Continue);
            driver.on_response_headers(&mut request, &mut host);
        });
    });
    group.finish();
}

fn wasm(c: &mut Criterion) {
    let module = wasmesh_harness::build::wasm("wasmesh-policy").unwrap();
    let mut group = c.benchmark_group("policy/wasm");
    let plugin = Harness::load(&module)
        .unwrap()
        .config(CONFIG)
        .http_callout_handler(|_| CalloutReply::with_headers(200, &[("x-user", "alice")], ""))
        .start()
        .unwrap();
    let run = |path: &str| {
        let mut headers = HEADERS;
        headers[1].1 = path;
        let mut stream = plugin.http_stream();
        stream.request_headers(&headers, true).unwrap();
        assert_eq!(stream.request_header("x-user").as_deref(), Some("alice"));
        stream
            .response_headers(&[(":status", "200")], true)
            .unwrap();
        stream.complete().unwrap();
    };
    run("/orders?page=1");
    group.bench_function("cache_hit", |b| b.iter(|| run("/orders?page=1")));
    let mut page = 0u64;
    let mut paths = Vec::new();
    group.bench_function("cache_miss_mock_service", |b| {
        b.iter(|| {
            page += 1;
            paths.push(format!("/orders?page=miss-{page}"));
            run(paths.last().unwrap());
        })
    });
    group.finish();
    assert!(plugin.http_callouts().len() > 1);
}

criterion_group!(benches, native, wasm);
criterion_main!(benches);
