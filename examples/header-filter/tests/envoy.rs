#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The example in a real Envoy (V8), with the same wasm and configuration as the harness tests:
//! every case of the table must get the same verdict from both. Set `WASMESH_SKIP_ENVOY=1` to
//! skip these tests on a machine without Envoy.

mod common;

use common::{cases, run_in_harness, sample_config, start_in_harness, Case, Verdict};
use wasmesh_envoy::{
    self as envoy, Envoy, EnvoyBuilder, EnvoyError, HttpRequest, HttpResponse, ReceivedRequest,
    ShippedBootstrap, ShippedExample, TestServer, WasmFilter,
};

/// Envoy with the example filter in front of `upstream`, configured with `config`.
fn start_envoy(upstream: &TestServer, config: &str) -> Result<Envoy, EnvoyError> {
    EnvoyBuilder::new()
        .wasm_filter(
            WasmFilter::new(common::wasm())
                .name("header-filter")
                .configuration(config),
        )
        .upstream(upstream.addr())
        .start()
}

/// Sends one case through Envoy and reads the verdict off the response.
fn run_in_envoy(envoy: &Envoy, case: &Case) -> Verdict {
    let mut request = HttpRequest::new(case.method, case.path).header("host", "shop.example.com");
    for (name, value) in &case.headers {
        request = request.header(*name, *value);
    }
    let response = envoy.send(&request).unwrap();
    verdict_of(&response)
}

fn verdict_of(response: &HttpResponse) -> Verdict {
    match response.response_code_details() {
        // Only local replies carry details (see `RESPONSE_CODE_DETAILS_HEADER`).
        Some(details) => Verdict::Replied {
            status: u32::from(response.status),
            details: details.to_string(),
            body: response.text(),
            content_type: response.header("content-type").map(str::to_string),
            response_marker: response.header("x-wasmesh").map(str::to_string),
        },
        None => {
            assert_eq!(response.status, 200, "upstream answer: {}", response.text());
            let upstream_saw = ReceivedRequest::from_echo(response).unwrap();
            Verdict::Forwarded {
                upstream_marker: upstream_saw
                    .header("x-wasmesh-filtered")
                    .map(str::to_string),
                response_marker: response.header("x-wasmesh").map(str::to_string),
            }
        }
    }
}

#[test]
fn envoy_and_the_harness_agree_on_every_case() {
    if envoy::skip_requested() {
        return;
    }
    let upstream = TestServer::echo().unwrap();
    let envoy = start_envoy(&upstream, &sample_config()).unwrap();
    let plugin = start_in_harness(&sample_config());

    for case in cases() {
        let in_harness = run_in_harness(&plugin, &case);
        let in_envoy = run_in_envoy(&envoy, &case);

        assert_eq!(
            in_envoy, in_harness,
            "{}: Envoy and the harness disagree",
            case.name
        );
        assert_eq!(in_envoy, case.expected, "{}", case.name);
    }

    // Both count the same requests (Envoy files wasm metrics under `wasmcustom.`).
    for name in ["header_filter.allowed", "header_filter.denied"] {
        let in_harness = plugin.metric(name).and_then(|value| value.value());
        assert_eq!(envoy.wasm_metric(name).unwrap(), in_harness, "{name}");
    }
}

#[test]
fn response_headers_are_appended_to_the_upstream_ones_as_in_the_harness() {
    if envoy::skip_requested() {
        return;
    }
    let upstream = TestServer::start(|_| {
        HttpResponse::new(200, "ok").with_header("x-wasmesh", "from-upstream")
    })
    .unwrap();
    let envoy = start_envoy(&upstream, &sample_config()).unwrap();
    let plugin = start_in_harness(&sample_config());

    let response = envoy.send(&HttpRequest::get("/")).unwrap();
    let in_envoy: Vec<&str> = response
        .headers
        .iter()
        .filter(|(name, _)| name == "x-wasmesh")
        .map(|(_, value)| value.as_str())
        .collect();
    let mut stream = plugin.http_stream();
    stream
        .request_headers(
            &[(":method", "GET"), (":path", "/"), (":authority", "shop")],
            true,
        )
        .unwrap();
    stream
        .response_headers(&[(":status", "200"), ("x-wasmesh", "from-upstream")], true)
        .unwrap();
    let in_harness: Vec<String> = stream
        .response_headers_now()
        .into_iter()
        .filter(|(name, _)| name == "x-wasmesh")
        .map(|(_, value)| value)
        .collect();

    assert_eq!(in_envoy, in_harness);
    assert_eq!(in_envoy, ["from-upstream", "hello"]);
}

#[test]
fn envoy_refuses_a_bad_configuration_as_the_harness_does() {
    if envoy::skip_requested() {
        return;
    }
    let bad = r#"{"deny": [{"prefix": ""}]}"#;
    let upstream = TestServer::echo().unwrap();

    let error = start_envoy(&upstream, bad).unwrap_err();
    let harness_error = wasmesh_harness::Harness::load(common::wasm())
        .unwrap()
        .config(bad)
        .start()
        .err();

    let EnvoyError::Exited { log_tail, .. } = &error else {
        panic!("expected Envoy to refuse the configuration, got {error}");
    };
    assert!(log_tail.contains("deny[0]"), "{log_tail}");
    assert!(matches!(
        harness_error,
        Some(wasmesh_harness::HarnessError::ConfigRejected { .. })
    ));
}

#[test]
fn shipped_envoy_and_istio_configs_embed_the_sample_configuration() {
    let shipped = ShippedExample::read(&common::example_dir().join(".."), "header-filter").unwrap();
    let sample = sample_config();

    // Verbatim copies, so that a change to the sample must be made in the shipped configs too.
    assert_eq!(shipped.envoy_filter_config().unwrap().trim(), sample.trim());
    // JSON is YAML: the WasmPlugin's pluginConfig is the same document.
    assert_eq!(shipped.istio_plugin_config().unwrap().trim(), sample.trim());
}

#[test]
fn the_shipped_envoy_config_runs_the_filter() {
    if envoy::skip_requested() {
        return;
    }
    let upstream = TestServer::echo().unwrap();
    // Point the copy-paste config at what `wasmesh build` ships (the release build through
    // wasm-opt, when installed), at the test upstream, and at free ports.
    let envoy = ShippedBootstrap::read(&common::example_dir().join(".."), "header-filter")
        .unwrap()
        .shipped_wasm(&common::wasm(), env!("CARGO_TARGET_TMPDIR").as_ref())
        .unwrap()
        .upstream(upstream.addr())
        .start()
        .unwrap();

    let denied = envoy.send(&HttpRequest::get("/admin")).unwrap();
    let allowed = envoy.send(&HttpRequest::get("/")).unwrap();

    assert_eq!(denied.status, 403);
    assert_eq!(denied.text(), "Forbidden by wasmesh header-filter\n");
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.header("x-wasmesh"), Some("hello"));
    let upstream_saw = ReceivedRequest::from_echo(&allowed).unwrap();
    assert_eq!(upstream_saw.header("x-wasmesh-filtered"), Some("true"));
    assert_eq!(envoy.wasm_metric("header_filter.denied").unwrap(), Some(1));
}
