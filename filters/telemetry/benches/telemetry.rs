#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Per-request cost of the telemetry filter: the native logic against in-memory host and
//! request, and the real wasm build in the harness (wasmtime), for the same exchange: an inbound
//! request from a known peer, every standard metric recorded, no access log.
//!
//! `cargo bench -p wasmesh-telemetry` (results in BENCHMARKS.md).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use wasmesh_harness::Harness;
use wasmesh_sdk::config::load;
use wasmesh_sdk::request::{encode_int, MemoryRequest, Request};
use wasmesh_sdk::testing::MemoryHost;
use wasmesh_telemetry::logic::StreamState;
use wasmesh_telemetry::peer::{encode_node_metadata, NodeInfo, PEER_METADATA_HEADER};
use wasmesh_telemetry::proto::{Struct, Value};
use wasmesh_telemetry::{Config, Telemetry};

fn node(workload: &str, app: &str) -> NodeInfo {
    let mut labels = Struct::new();
    labels.insert("app".into(), Value::String(app.into()));
    labels.insert("version".into(), Value::String("v1".into()));
    let mut fields = Struct::new();
    fields.insert("NAME".into(), Value::String(format!("{workload}-pod")));
    fields.insert("NAMESPACE".into(), Value::String("default".into()));
    fields.insert("WORKLOAD_NAME".into(), Value::String(workload.into()));
    fields.insert("CLUSTER_ID".into(), Value::String("Kubernetes".into()));
    fields.insert("LABELS".into(), Value::Struct(labels));
    NodeInfo::from_struct(fields)
}

fn bench(c: &mut Criterion) {
    let local = node("reviews-v2", "reviews");
    let peer_header = node("productpage-v1", "productpage").header_value();
    let metadata = encode_node_metadata(&local.raw);

    let mut group = c.benchmark_group("telemetry_request");
    group.measurement_time(Duration::from_secs(3));

    let filter = Telemetry::new(load::<Config>(b"{}").unwrap()).unwrap();
    let mut host = MemoryHost::new();
    group.bench_function("native", |b| {
        b.iter(|| {
            let mut request = MemoryRequest::get("/reviews/1")
                .with_header(PEER_METADATA_HEADER, &peer_header)
                .with_response_header(":status", "200")
                .with_property(&["xds", "node", "metadata"], metadata.clone())
                .with_property(&["xds", "listener_direction"], encode_int(1))
                .with_property(&["response", "code"], encode_int(200));
            let _ = request.set_request_header(":authority", "reviews.default.svc.cluster.local");
            let mut stream = StreamState::default();
            filter.on_request_headers(&mut stream, &mut request, &mut host);
            filter.on_response_headers(&mut stream, &mut request, &mut host);
            filter.on_log(&mut stream, &mut request, &mut host);
        });
    });

    let wasm = wasmesh_harness::build::wasm("wasmesh-telemetry").unwrap();
    let plugin = Harness::load(wasm)
        .unwrap()
        .config("{}")
        .property(&["xds", "node", "metadata"], metadata.clone())
        .property(&["xds", "listener_direction"], 1i64)
        .start()
        .unwrap();
    group.bench_function("wasm_in_harness", |b| {
        b.iter(|| {
            let mut stream = plugin.http_stream();
            stream
                .request_headers(
                    &[
                        (":method", "GET"),
                        (":path", "/reviews/1"),
                        (":authority", "reviews.default.svc.cluster.local"),
                        (PEER_METADATA_HEADER, &peer_header),
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

criterion_group!(benches, bench);
criterion_main!(benches);
