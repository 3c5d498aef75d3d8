#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Per-request cost of the rate-limit filter, natively (the logic over the in-memory host) and
//! as the real wasm build in the harness, with 1 and 1000 active keys (one per-key bucket each,
//! in a shared-data table). Results: `filters/rate-limit/BENCHMARKS.md`.
//!
//! `cargo bench -p wasmesh-rate-limit`

use std::rc::Rc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use wasmesh_harness::Harness;
use wasmesh_rate_limit::RateLimitFilter;
use wasmesh_sdk::adapter::{configure, Outcome, StreamDriver};
use wasmesh_sdk::request::MemoryRequest;
use wasmesh_sdk::testing::MemoryHost;

/// Every request is checked against its key's bucket and the default bucket, and admitted
/// (buckets large enough never to run dry): the common path.
const CONFIG: &str = r#"{
  "stat_prefix": "bench",
  "token_bucket": {"max_tokens": 1000000000, "tokens_per_fill": 1000000000, "fill_interval": "1s"},
  "filter_enabled": {"default_value": {"numerator": 100}},
  "filter_enforced": {"default_value": {"numerator": 100}},
  "rate_limits": [{"actions": [{"request_headers": {"header_name": "x-api-key", "descriptor_key": "api_key"}}]}],
  "descriptors": [{"entries": [{"key": "api_key"}], "token_bucket": {"max_tokens": 1000000000, "tokens_per_fill": 1000000000, "fill_interval": "1s"}}],
  "max_dynamic_descriptors": 4096,
  "enable_x_ratelimit_headers": "DRAFT_VERSION_03"
}"#;

fn keys(count: usize) -> Vec<String> {
    (0..count).map(|index| format!("client-{index}")).collect()
}

fn native(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit/native");
    for count in [1, 1000] {
        let mut host = MemoryHost::new();
        let filter = Rc::new(configure::<RateLimitFilter>(CONFIG.as_bytes(), &mut host).unwrap());
        let keys = keys(count);
        let mut next = 0;
        group.bench_function(format!("{count}_keys"), |b| {
            b.iter(|| {
                let key = &keys[next % keys.len()];
                next += 1;
                let mut driver = StreamDriver::new(Some(Rc::clone(&filter)));
                let mut request = MemoryRequest::get("/api").with_header("x-api-key", key);
                let outcome = driver.on_request_headers(&mut request, &mut host);
                assert_eq!(outcome, Outcome::Continue);
                driver.on_response_headers(&mut request, &mut host);
            });
        });
    }
    group.finish();
}

fn wasm(c: &mut Criterion) {
    let module = wasmesh_harness::build::wasm("wasmesh-rate-limit").unwrap();
    let mut group = c.benchmark_group("rate_limit/wasm");
    for count in [1, 1000] {
        let plugin = Harness::load(&module)
            .unwrap()
            .config(CONFIG)
            .start()
            .unwrap();
        let keys = keys(count);
        let mut next = 0;
        group.bench_function(format!("{count}_keys"), |b| {
            b.iter(|| {
                let key = &keys[next % keys.len()];
                next += 1;
                let mut stream = plugin.http_stream();
                stream
                    .request_headers(
                        &[
                            (":method", "GET"),
                            (":path", "/api"),
                            (":authority", "shop"),
                            ("x-api-key", key),
                        ],
                        true,
                    )
                    .unwrap();
                assert!(stream.local_reply().is_none());
                stream
                    .response_headers(&[(":status", "200")], true)
                    .unwrap();
                stream.complete().unwrap();
            });
        });
    }
    // The harness's own per-stream cost, to subtract: the same exchange with the filter
    // disabled (`filter_enabled` 0%), so the module only runs its callbacks.
    let disabled = CONFIG.replace(
        r#""filter_enabled": {"default_value": {"numerator": 100}}"#,
        r#""filter_enabled": {"default_value": {"numerator": 0}}"#,
    );
    let plugin = Harness::load(&module)
        .unwrap()
        .config(disabled)
        .start()
        .unwrap();
    group.bench_function("filter_disabled", |b| {
        b.iter(|| {
            let mut stream = plugin.http_stream();
            stream
                .request_headers(
                    &[
                        (":method", "GET"),
                        (":path", "/api"),
                        (":authority", "shop"),
                        ("x-api-key", "k"),
                    ],
                    true,
                )
                .unwrap();
            stream
                .response_headers(&[(":status", "200")], true)
                .unwrap();
            stream.complete().unwrap();
        });
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = native, wasm
}
criterion_main!(benches);
