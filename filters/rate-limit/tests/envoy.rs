#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The filter in a real Envoy (V8) with several worker threads: the same exchanges give the same
//! verdicts as in the harness, and concurrent clients spread over the workers are admitted
//! exactly `max_tokens` times. Set `WASMESH_SKIP_ENVOY=1` to skip on a machine without Envoy.

mod common;

use std::sync::Arc;

use common::{run_in_harness, sample_cases, sample_config, start, Verdict, VERDICT_HEADERS};
use wasmesh_envoy::{
    self as envoy, Envoy, EnvoyBuilder, EnvoyError, HttpRequest, HttpResponse, ShippedBootstrap,
    ShippedExample, TestServer, WasmFilter,
};
use wasmesh_harness::MetricValue;

const ENVOY_WORKERS: u32 = 4;

fn start_envoy(upstream: &TestServer, config: &str) -> Result<Envoy, EnvoyError> {
    EnvoyBuilder::new()
        .concurrency(ENVOY_WORKERS)
        .wasm_filter(
            WasmFilter::new(common::wasm())
                .name("rate-limit")
                .configuration(config),
        )
        .upstream(upstream.addr())
        .start()
}

fn request(headers: &[(&str, &str)]) -> HttpRequest {
    let path = headers
        .iter()
        .find(|(name, _)| *name == ":path")
        .map_or("/api/items", |(_, value)| value);
    let mut request = HttpRequest::get(path).header("host", "shop.example.com");
    for (name, value) in headers.iter().filter(|(name, _)| !name.starts_with(':')) {
        request = request.header(*name, *value);
    }
    request
}

fn verdict_of(response: &HttpResponse) -> Verdict {
    Verdict {
        status: u32::from(response.status),
        details: response.response_code_details().map(str::to_string),
        headers: VERDICT_HEADERS
            .iter()
            .map(|name| response.header(name).map(str::to_string))
            .collect(),
    }
}

#[test]
fn envoy_agrees_with_the_harness_and_is_exact_across_workers() {
    if envoy::skip_requested() {
        return;
    }
    let upstream = TestServer::echo().unwrap();
    let envoy = start_envoy(&upstream, &sample_config()).unwrap();
    let plugin = start(&sample_config(), ENVOY_WORKERS as usize);

    for (name, headers, expected) in sample_cases() {
        let in_envoy = envoy.send(&request(&headers)).unwrap();
        let in_harness = run_in_harness(&plugin, &headers);
        assert_eq!(
            verdict_of(&in_envoy),
            in_harness,
            "{name}: Envoy vs harness"
        );
        assert_eq!(in_harness, expected, "{name}");
        // Local denials carry no `x-envoy-ratelimited`, as Envoy's local_ratelimit (nor does
        // Envoy add one of its own).
        assert!(
            in_envoy
                .headers
                .iter()
                .all(|(header, _)| header != "x-envoy-ratelimited"),
            "{name}: no x-envoy-ratelimited"
        );
    }

    // Many clients at once, spread over Envoy's worker threads (one wasm VM each): the bucket
    // of one API key (3 per minute) admits exactly 3 of them.
    let envoy = Arc::new(envoy);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let envoy = Arc::clone(&envoy);
            std::thread::spawn(move || {
                (0..6)
                    .map(|_| {
                        envoy
                            .send(&request(&[("x-api-key", "shared-load")]))
                            .unwrap()
                            .status
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    let statuses: Vec<u16> = clients
        .into_iter()
        .flat_map(|client| client.join().unwrap())
        .collect();
    assert_eq!(statuses.len(), 48);
    assert_eq!(statuses.iter().filter(|status| **status == 200).count(), 3);
    assert_eq!(statuses.iter().filter(|status| **status == 429).count(), 45);
    // The connections really were spread over several workers (per-worker listener stats).
    let busy_workers = envoy
        .stats()
        .unwrap()
        .iter()
        .filter(|(name, value)| {
            name.starts_with("listener.127.0.0.1_")
                && name.contains(".worker_")
                && name.ends_with(".downstream_cx_total")
                && **value > 0
        })
        .count();
    assert!(
        busy_workers >= 2,
        "only {busy_workers} worker(s) got connections"
    );

    // Envoy and the harness count alike (Envoy files wasm metrics under `wasmcustom.`).
    let prefix = "http_local_rate_limiter.http_local_rate_limit";
    assert_eq!(
        envoy.wasm_metric(&format!("{prefix}.enforced")).unwrap(),
        Some(2 + 45)
    );
    assert_eq!(
        plugin.metric(&format!("{prefix}.enforced")),
        Some(MetricValue::Counter(2))
    );
    assert_eq!(
        envoy
            .wasm_metric(&format!("{prefix}.shared_state_error"))
            .unwrap(),
        Some(0)
    );
}

#[test]
fn envoy_refuses_a_bad_configuration_as_the_harness_does() {
    if envoy::skip_requested() {
        return;
    }
    let bad = r#"{"stat_prefix": "rl", "rate_limits": [{"actions": [{"source_cluster": {}}]}]}"#;
    let upstream = TestServer::echo().unwrap();
    let error = start_envoy(&upstream, bad).unwrap_err();
    let EnvoyError::Exited { log_tail, .. } = &error else {
        panic!("expected Envoy to refuse the configuration, got {error}");
    };
    assert!(log_tail.contains("rate_limits[0].actions[0]"), "{log_tail}");
    assert!(common::builder(bad).start().is_err());
}

#[test]
fn shipped_envoy_and_istio_configs_embed_the_sample_configuration() {
    let shipped =
        ShippedExample::read(&common::crate_dir().join("../../examples"), "rate-limit").unwrap();
    let sample = sample_config();
    assert_eq!(shipped.envoy_filter_config().unwrap().trim(), sample.trim());
    assert_eq!(shipped.istio_plugin_config().unwrap().trim(), sample.trim());
}

#[test]
fn the_shipped_envoy_config_runs_the_filter() {
    if envoy::skip_requested() {
        return;
    }
    let upstream = TestServer::echo().unwrap();
    // What `wasmesh build` ships (the release build through wasm-opt, when installed), pointed
    // at the test upstream and at free ports.
    let envoy = ShippedBootstrap::read(&common::crate_dir().join("../../examples"), "rate-limit")
        .unwrap()
        .shipped_wasm(&common::wasm(), env!("CARGO_TARGET_TMPDIR").as_ref())
        .unwrap()
        .upstream(upstream.addr())
        .start()
        .unwrap();
    let statuses: Vec<u16> = (0..4)
        .map(|_| {
            envoy
                .send(&HttpRequest::get("/").header("x-api-key", "k"))
                .unwrap()
                .status
        })
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(
        envoy
            .wasm_metric("http_local_rate_limiter.http_local_rate_limit.enforced")
            .unwrap(),
        Some(1)
    );
}

#[test]
fn destination_cluster_descriptors_see_the_routed_cluster_in_envoy() {
    if envoy::skip_requested() {
        return;
    }
    let upstream = TestServer::echo().unwrap();
    // Every request is routed to the cluster `upstream`: one token per hour for it, none spent
    // on the (unlimited) default bucket.
    let config = serde_json::json!({
        "stat_prefix": "edge",
        "token_bucket": {"max_tokens": 1000, "tokens_per_fill": 1000, "fill_interval": "3600s"},
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "descriptors": [{
            "entries": [{"key": "destination_cluster", "value": "upstream"}],
            "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "3600s"}
        }],
        "rate_limits": [{"actions": [{"destination_cluster": {}}]}]
    })
    .to_string();
    let envoy = EnvoyBuilder::new()
        .wasm_filter(
            WasmFilter::new(common::wasm())
                .name("rate-limit")
                .configuration(config.as_str()),
        )
        .upstream(upstream.addr())
        .start()
        .unwrap();
    let statuses: Vec<u16> = (0..2)
        .map(|_| envoy.send(&request(&[])).unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 429]);
}
