#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The shipped Envoy bootstrap and Istio `WasmPlugin` embed the sample configuration, carry a
//! tag regex for every dimension it records, and the Envoy one runs as written.

mod common;

use std::path::PathBuf;

use common::sample_config;
use wasmesh_harness::envoy::{self, BootstrapFormat, EnvoyBuilder, HttpRequest, TestServer};
use wasmesh_telemetry::config::Config;
use wasmesh_telemetry::prometheus;
use wasmesh_telemetry::stats::tag_regex;

fn examples_dir() -> PathBuf {
    common::crate_dir().join("../../examples")
}

/// The text nested under the first line containing `marker`, dedented.
fn block_under(text: &str, marker: &str) -> String {
    let mut lines = text.lines().skip_while(|line| !line.contains(marker));
    let header = lines.next().unwrap_or_else(|| panic!("no {marker:?}"));
    let depth = header.len() - header.trim_start().len();
    let block: Vec<&str> = lines
        .take_while(|line| line.trim().is_empty() || line.len() - line.trim_start().len() > depth)
        .collect();
    let indent = block
        .iter()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.len() - line.trim_start().len())
        .min()
        .unwrap_or(0);
    block
        .iter()
        .map(|line| line.get(indent..).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn shipped_configs_embed_the_sample_and_extract_every_dimension() {
    let envoy_yaml = std::fs::read_to_string(examples_dir().join("envoy/telemetry.yaml")).unwrap();
    let istio_yaml = std::fs::read_to_string(examples_dir().join("istio/telemetry.yaml")).unwrap();
    let sample = sample_config();
    assert_eq!(block_under(&envoy_yaml, "value: |").trim(), sample.trim());
    assert_eq!(
        block_under(&istio_yaml, "pluginConfig:").trim(),
        sample.trim()
    );
    assert!(istio_yaml.contains("phase: STATS"));

    let config: Config = wasmesh_sdk::config::load(sample.as_bytes()).unwrap();
    let dimensions = config.dimension_names().unwrap();
    assert_eq!(dimensions.len(), 26);
    for dimension in &dimensions {
        // In YAML's double-quoted form, each backslash is doubled.
        let line = format!("regex: \"{}\"", tag_regex(dimension).replace('\\', "\\\\"));
        assert!(
            envoy_yaml.contains(&line),
            "no stats_tags entry for {dimension}"
        );
    }
    assert_eq!(envoy_yaml.matches("- tag_name: ").count(), dimensions.len());
}

#[test]
fn the_shipped_envoy_config_runs_the_filter() {
    if envoy::skip_requested() {
        return;
    }
    let upstream = TestServer::echo().unwrap();
    let shipped = std::fs::read_to_string(examples_dir().join("envoy/telemetry.yaml")).unwrap();
    // What `wasmesh build` ships: the release build through wasm-opt (when installed).
    let wasm = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("telemetry.wasm");
    wasmesh_harness::build::optimize(&common::wasm(), &wasm).unwrap();
    let replacements = [
        (
            "filename: /etc/envoy/telemetry.wasm".to_string(),
            format!("filename: {}", wasm.display()),
        ),
        ("port_value: 10000".to_string(), "port_value: 0".to_string()),
        ("port_value: 9901".to_string(), "port_value: 0".to_string()),
        (
            "port_value: 8080".to_string(),
            format!("port_value: {}", upstream.addr().port()),
        ),
    ];
    let mut bootstrap = shipped.clone();
    for (from, to) in &replacements {
        assert_eq!(shipped.matches(from.as_str()).count(), 1, "{from}");
        bootstrap = bootstrap.replace(from.as_str(), to);
    }
    let envoy = EnvoyBuilder::new()
        .start_with_bootstrap(&bootstrap, BootstrapFormat::Yaml)
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
