#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The shipped Envoy bootstrap and Istio `WasmPlugin` embed the sample configuration, carry a
//! tag regex for every dimension it records, and the Envoy one runs as written.

mod common;

use std::path::PathBuf;

use common::sample_config;
use wasmesh_envoy::{self as envoy, HttpRequest, ShippedBootstrap, ShippedExample, TestServer};
use wasmesh_telemetry::config::Config;
use wasmesh_telemetry::prometheus;
use wasmesh_telemetry::stats::tag_regex;

fn examples_dir() -> PathBuf {
    common::crate_dir().join("../../examples")
}

#[test]
fn shipped_configs_embed_the_sample_and_extract_every_dimension() {
    let shipped = ShippedExample::read(&examples_dir(), "telemetry").unwrap();
    let sample = sample_config();
    assert_eq!(shipped.envoy_filter_config().unwrap().trim(), sample.trim());
    assert_eq!(shipped.istio_plugin_config().unwrap().trim(), sample.trim());
    assert!(shipped.istio_yaml.contains("phase: STATS"));

    let config: Config = wasmesh_sdk::config::load(sample.as_bytes()).unwrap();
    let dimensions = config.dimension_names().unwrap();
    assert_eq!(dimensions.len(), 26);
    for dimension in &dimensions {
        // In YAML's double-quoted form, each backslash is doubled.
        let line = format!("regex: \"{}\"", tag_regex(dimension).replace('\\', "\\\\"));
        assert!(
            shipped.envoy_yaml.contains(&line),
            "no stats_tags entry for {dimension}"
        );
    }
    assert_eq!(
        shipped.envoy_yaml.matches("- tag_name: ").count(),
        dimensions.len()
    );
}

#[test]
fn the_shipped_envoy_config_runs_the_filter() {
    if envoy::skip_requested() {
        return;
    }
    let upstream = TestServer::echo().unwrap();
    // What `wasmesh build` ships (the release build through wasm-opt, when installed), pointed
    // at the test upstream and at free ports.
    let envoy = ShippedBootstrap::read(&examples_dir(), "telemetry")
        .unwrap()
        .shipped_wasm(&common::wasm(), env!("CARGO_TARGET_TMPDIR").as_ref())
        .unwrap()
        .upstream(upstream.addr())
        .start()
        .unwrap();

    let mut request = HttpRequest::get("/reviews/7").header("host", common::AUTHORITY);
    for (name, value) in common::productpage_headers() {
        request = request.header(name, value);
    }
    assert_eq!(envoy.send(&request).unwrap().status, 200);

    let text = envoy.admin_get("/stats/prometheus").unwrap().text();
    let exposition = prometheus::parse(&text).unwrap();
    let requests: Vec<_> = exposition
        .find(
            "istio_requests_total",
            &[
                ("reporter", "destination"),
                ("source_workload", "productpage-v1"),
                ("destination_workload", "reviews-v2"),
                ("destination_canonical_revision", "v2"),
                ("request_method", "GET"),
                ("response_code", "200"),
            ],
        )
        .collect();
    assert_eq!(requests.len(), 1, "{text}");
    assert_eq!(requests[0].value, 1.0);
    assert!(exposition
        .types
        .contains_key("istio_request_duration_milliseconds"));
    assert!(envoy.log().contains(r#""path":"/reviews/7""#));
}
