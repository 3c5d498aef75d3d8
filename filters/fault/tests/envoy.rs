#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The fault filter in a real Envoy (V8), with the same wasm and configurations as the harness
//! tests: every exchange must get the same verdict from both. Set `WASMESH_SKIP_ENVOY=1` to
//! skip these tests on a machine without Envoy.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    cases, request_headers, run_in_harness, sample_config, send_in_harness, start_in_harness,
    verdict_in_harness, Verdict, HEADER_CONTROLLED,
};
use wasmesh_envoy::{
    self as envoy, Envoy, EnvoyBuilder, EnvoyError, HttpRequest, HttpResponse, ShippedBootstrap,
    ShippedExample, TestServer, WasmFilter,
};
use wasmesh_harness::{Harness, StreamState};

/// How long to wait for Envoy-side state another thread changes.
const WAIT: Duration = Duration::from_secs(20);

/// Envoy with the fault filter in front of `upstream`.
fn start_envoy(upstream: &TestServer, config: &str) -> Result<Envoy, EnvoyError> {
    EnvoyBuilder::new()
        .wasm_filter(
            WasmFilter::new(common::wasm())
                .name("fault")
                .configuration(config),
        )
        .upstream(upstream.addr())
        .start()
}

fn verdict_of(response: &HttpResponse) -> Verdict {
    match response.response_code_details() {
        // Only local replies carry details.
        Some(details) => Verdict::Aborted {
            status: u32::from(response.status),
            details: details.to_string(),
            body: response.text(),
            grpc_status: response.header("grpc-status").map(str::to_string),
            grpc_message: response.header("grpc-message").map(str::to_string),
        },
        None => {
            assert_eq!(response.status, 200, "upstream answer: {}", response.text());
            Verdict::Forwarded
        }
    }
}

fn request(path: &str, headers: &[(&str, &str)]) -> HttpRequest {
    let mut request = HttpRequest::get(path).header("host", "shop.example.com");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
}

fn counter(envoy: &Envoy, name: &str) -> u64 {
    envoy.wasm_metric(name).unwrap().unwrap_or(0)
}

#[test]
fn envoy_and_the_harness_agree_on_header_controlled_faults() {
    if envoy::skip_requested() {
        return;
    }
    let upstream = TestServer::echo().unwrap();
    let envoy = start_envoy(&upstream, HEADER_CONTROLLED).unwrap();
    let plugin = start_in_harness(HEADER_CONTROLLED);

    // 1. The table: same verdict, same delays.
    for case in cases() {
        let (in_harness, delayed_in_harness) = run_in_harness(&plugin, &case);
        let delays_before = counter(&envoy, "fault.delays_injected");
        let started = Instant::now();
        let in_envoy = verdict_of(&envoy.send(&request("/api/items", &case.headers)).unwrap());
        let delayed_in_envoy = counter(&envoy, "fault.delays_injected") > delays_before;
        assert_eq!(
            in_envoy, in_harness,
            "{}: Envoy and the harness disagree",
            case.name
        );
        assert_eq!(in_envoy, case.expected, "{}", case.name);
        assert_eq!(
            delayed_in_envoy, delayed_in_harness,
            "{}: delayed",
            case.name
        );
        assert_eq!(delayed_in_envoy, case.delayed, "{}: delayed", case.name);
        if case.delayed {
            // A lower bound only: the delay is at least what was asked for.
            assert!(
                started.elapsed() >= Duration::from_millis(30),
                "{}",
                case.name
            );
        }
    }
    for name in [
        "fault.delays_injected",
        "fault.aborts_injected",
        "fault.faults_overflow",
    ] {
        let in_harness = plugin.metric(name).and_then(|value| value.value());
        assert_eq!(envoy.wasm_metric(name).unwrap(), in_harness, "{name}");
    }
    envoy
        .wait_for_wasm_metric("fault.active_faults", 0, WAIT)
        .unwrap();

    // 2. max_active_faults (1): while one request is delayed, another fault overflows.
    let delayed = [("x-chaos", "1"), ("x-envoy-fault-delay-request", "1500")];
    let abort = [("x-chaos", "1"), ("x-envoy-fault-abort-request", "503")];
    let overflow_before = counter(&envoy, "fault.faults_overflow");
    let listener = envoy.listener_addr();
    let held = thread::spawn(move || envoy::send(listener, &request("/slow", &delayed)).unwrap());
    envoy
        .wait_for_wasm_metric("fault.active_faults", 1, WAIT)
        .unwrap();
    let in_envoy = verdict_of(&envoy.send(&request("/", &abort)).unwrap());
    assert_eq!(verdict_of(&held.join().unwrap()), Verdict::Forwarded);
    assert_eq!(
        counter(&envoy, "fault.faults_overflow"),
        overflow_before + 1
    );

    let (mut held_in_harness, _) =
        send_in_harness(&plugin, &request_headers("/slow", &delayed), Duration::ZERO);
    assert_eq!(held_in_harness.request_state(), StreamState::Paused);
    let (stream, _) = send_in_harness(&plugin, &request_headers("/", &abort), Duration::ZERO);
    let in_harness = verdict_in_harness(stream);
    assert_eq!(in_envoy, in_harness);
    assert_eq!(
        in_envoy,
        Verdict::Forwarded,
        "the second fault must overflow"
    );
    plugin.advance_clock(Duration::from_millis(1500)).unwrap();
    assert_eq!(held_in_harness.request_state(), StreamState::Continued);
    held_in_harness
        .response_headers(&[(":status", "200")], true)
        .unwrap();
    held_in_harness.complete().unwrap();

    // 3. A client that gives up on a delayed request frees its fault.
    envoy
        .wait_for_wasm_metric("fault.active_faults", 0, WAIT)
        .unwrap();
    let mut client = TcpStream::connect(listener).unwrap();
    client
        .write_all(
            b"GET /abandoned HTTP/1.1\r\nhost: shop.example.com\r\nx-chaos: 1\r\nx-envoy-fault-delay-request: 60000\r\n\r\n",
        )
        .unwrap();
    envoy
        .wait_for_wasm_metric("fault.active_faults", 1, WAIT)
        .unwrap();
    drop(client);
    envoy
        .wait_for_wasm_metric("fault.active_faults", 0, WAIT)
        .unwrap();
    assert_eq!(
        verdict_of(&envoy.send(&request("/", &abort)).unwrap()),
        Verdict::http_abort(503),
        "the abandoned request's fault was not given back"
    );
    assert!(
        upstream
            .requests()
            .iter()
            .all(|seen| seen.path != "/abandoned"),
        "an abandoned delayed request must never reach the upstream"
    );
}

#[test]
fn envoy_refuses_a_bad_configuration_as_the_harness_does() {
    if envoy::skip_requested() {
        return;
    }
    let bad = r#"{"abort": {"http_status": 503}, "response_rate_limit": {"fixed_limit": {"limit_kbps": 64}}}"#;
    let upstream = TestServer::echo().unwrap();
    let error = start_envoy(&upstream, bad).unwrap_err();
    let harness_error = Harness::load(common::wasm())
        .unwrap()
        .config(bad)
        .start()
        .err();
    let EnvoyError::Exited { log_tail, .. } = &error else {
        panic!("expected Envoy to refuse the configuration, got {error}");
    };
    assert!(
        log_tail.contains("response_rate_limit: is not supported"),
        "{log_tail}"
    );
    assert!(matches!(
        harness_error,
        Some(wasmesh_harness::HarnessError::ConfigRejected { .. })
    ));
}

#[test]
fn shipped_envoy_and_istio_configs_embed_the_sample_configuration() {
    let shipped =
        ShippedExample::read(&common::crate_dir().join("../../examples"), "fault").unwrap();
    let sample = sample_config();
    assert_eq!(shipped.envoy_filter_config().unwrap().trim(), sample.trim());
    assert_eq!(shipped.istio_plugin_config().unwrap().trim(), sample.trim());
}

/// The seed whose first `requests` draws, under the sample configuration, give at least one
/// abort and at most one delay (found with the harness, which rolls the same dice as Envoy).
fn seed_for_a_short_run(requests: usize) -> u64 {
    (1..500)
        .find(|seed| {
            let plugin = start_in_harness(&with_seed(&sample_config(), *seed));
            let (mut delays, mut aborts) = (0, 0);
            for _ in 0..requests {
                let (stream, delayed) = send_in_harness(
                    &plugin,
                    &request_headers("/checkout", &[]),
                    Duration::from_secs(3),
                );
                delays += usize::from(delayed);
                aborts += usize::from(verdict_in_harness(stream) != Verdict::Forwarded);
            }
            aborts >= 1 && delays <= 1
        })
        .unwrap()
}

fn with_seed(config: &str, seed: u64) -> String {
    let trimmed = config.trim_end();
    let body = trimmed.strip_suffix('}').unwrap().trim_end();
    format!("{body},\n  \"random_seed\": {seed}\n}}")
}

#[test]
fn the_shipped_envoy_config_runs_the_filter_with_the_same_dice_as_the_harness() {
    if envoy::skip_requested() {
        return;
    }
    const REQUESTS: usize = 12;
    let upstream = TestServer::echo().unwrap();
    let seed = seed_for_a_short_run(REQUESTS);
    // What `wasmesh build` ships (the release build through wasm-opt, when installed), pointed
    // at the test upstream and at free ports.
    let envoy = ShippedBootstrap::read(&common::crate_dir().join("../../examples"), "fault")
        .unwrap()
        .shipped_wasm(&common::wasm(), env!("CARGO_TARGET_TMPDIR").as_ref())
        .unwrap()
        .upstream(upstream.addr())
        .replace(
            "\"max_active_faults\": 100",
            format!("\"max_active_faults\": 100,\n                      \"random_seed\": {seed}"),
        )
        .start()
        .unwrap();
    let plugin = start_in_harness(&with_seed(&sample_config(), seed));

    // Other routes are never touched (and roll no dice).
    for _ in 0..5 {
        let response = envoy.send(&request("/catalog", &[])).unwrap();
        assert_eq!(response.status, 200);
    }
    let mut verdicts = Vec::new();
    for index in 0..REQUESTS {
        let (stream, delayed_in_harness) = send_in_harness(
            &plugin,
            &request_headers("/checkout", &[]),
            Duration::from_secs(3),
        );
        let in_harness = verdict_in_harness(stream);
        let delays_before = counter(&envoy, "fault.delays_injected");
        let started = Instant::now();
        let response = envoy.send(&request("/checkout", &[])).unwrap();
        let in_envoy = if response.status == 503 {
            // The shipped config has no response-code-details mapper: read the body instead.
            assert_eq!(response.text(), "fault filter abort");
            Verdict::http_abort(503)
        } else {
            assert_eq!(response.status, 200);
            Verdict::Forwarded
        };
        let delayed_in_envoy = counter(&envoy, "fault.delays_injected") > delays_before;
        if delayed_in_envoy {
            assert!(started.elapsed() >= Duration::from_secs(3));
        }
        assert_eq!(in_envoy, in_harness, "request {index}");
        assert_eq!(
            delayed_in_envoy, delayed_in_harness,
            "request {index}: delayed"
        );
        verdicts.push(in_envoy);
    }
    assert!(verdicts.contains(&Verdict::http_abort(503)));
    assert_eq!(
        envoy.wasm_metric("fault.aborts_injected").unwrap(),
        plugin
            .metric("fault.aborts_injected")
            .and_then(|v| v.value())
    );
}

#[test]
fn upstream_cluster_selects_by_the_routed_cluster_in_envoy_as_in_the_harness() {
    if envoy::skip_requested() {
        return;
    }
    let upstream = TestServer::echo().unwrap();
    // Every request is routed to the cluster `upstream`.
    for (cluster, expected) in [
        ("upstream", Verdict::http_abort(503)),
        ("elsewhere", Verdict::Forwarded),
    ] {
        let config = format!(
            r#"{{"abort": {{"http_status": 503, "percentage": {{"numerator": 100}}}}, "upstream_cluster": "{cluster}"}}"#
        );
        let envoy = start_envoy(&upstream, &config).unwrap();
        let in_envoy = verdict_of(&envoy.send(&request("/", &[])).unwrap());
        // Envoy 1.40 serves the routed cluster as `xds.cluster_name` only.
        let plugin = Harness::load(common::wasm())
            .unwrap()
            .config(config.as_str())
            .property(&["xds", "cluster_name"], "upstream")
            .start()
            .unwrap();
        let (stream, _) = send_in_harness(&plugin, &request_headers("/", &[]), Duration::ZERO);
        let in_harness = verdict_in_harness(stream);
        assert_eq!(in_envoy, expected, "upstream_cluster {cluster} in Envoy");
        assert_eq!(
            in_harness, expected,
            "upstream_cluster {cluster} in the harness"
        );
    }
}
