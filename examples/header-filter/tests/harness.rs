#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The example's real wasm build, driven through the harness like Envoy drives it.

mod common;

use common::{cases, run_in_harness, sample_config, start_in_harness, Verdict};
use wasmesh_harness::{Action, Harness, HarnessError, MetricValue, StreamState};

#[test]
fn every_case_gets_its_expected_verdict() {
    let plugin = start_in_harness(&sample_config());

    for case in cases() {
        assert_eq!(
            run_in_harness(&plugin, &case),
            case.expected,
            "{}",
            case.name
        );
    }
}

#[test]
fn counts_allowed_and_denied_requests() {
    let plugin = start_in_harness(&sample_config());
    let cases = cases();
    let denied = cases
        .iter()
        .filter(|case| matches!(case.expected, Verdict::Replied { .. }))
        .count() as u64;

    for case in &cases {
        run_in_harness(&plugin, case);
    }

    assert_eq!(
        plugin.metric("header_filter.denied"),
        Some(MetricValue::Counter(denied))
    );
    assert_eq!(
        plugin.metric("header_filter.allowed"),
        Some(MetricValue::Counter(cases.len() as u64 - denied))
    );
}

#[test]
fn an_allowed_request_continues_with_its_body_and_gets_both_headers() {
    let plugin = start_in_harness(&sample_config());
    let mut stream = plugin.http_stream();

    let headers = stream
        .request_headers(
            &[
                (":method", "POST"),
                (":path", "/api/items"),
                (":authority", "shop"),
            ],
            false,
        )
        .unwrap();
    let body = stream.request_body(b"{\"id\": 7}", true).unwrap();
    let response = stream
        .response_headers(&[(":status", "201"), ("x-wasmesh", "from-upstream")], true)
        .unwrap();

    assert_eq!(headers.action(), Action::Continue);
    assert_eq!(body.action(), Action::Continue);
    assert_eq!(response.action(), Action::Continue);
    assert_eq!(stream.request_state(), StreamState::Continued);
    assert_eq!(
        stream.request_header("x-wasmesh-filtered").as_deref(),
        Some("true")
    );
    assert_eq!(stream.request_body_now(), b"{\"id\": 7}");
    // No append_action in the sample: Envoy's default APPEND_IF_EXISTS_OR_ADD keeps both values.
    let markers: Vec<_> = stream
        .response_headers_now()
        .into_iter()
        .filter(|(name, _)| name == "x-wasmesh")
        .map(|(_, value)| value)
        .collect();
    assert_eq!(markers, ["from-upstream", "hello"]);
    stream.complete().unwrap();
}

#[test]
fn a_denied_request_is_answered_locally_and_never_reaches_upstream() {
    let plugin = start_in_harness(&sample_config());
    let mut stream = plugin.http_stream();

    let outcome = stream
        .request_headers(
            &[
                (":method", "GET"),
                (":path", "/admin"),
                (":authority", "shop"),
            ],
            true,
        )
        .unwrap();

    let reply = outcome.local_reply().unwrap();
    assert_eq!(reply.status, 403);
    assert_eq!(reply.details, "header_filter_denied");
    assert_eq!(reply.body, b"Forbidden by wasmesh header-filter\n");
    assert!(outcome.stopped());
    assert_eq!(stream.request_state(), StreamState::Replied);
    stream.complete().unwrap();
}

#[test]
fn a_bad_configuration_is_refused_with_the_reason_in_the_logs() {
    let error = Harness::load(common::wasm())
        .unwrap()
        .config(r#"{"deny": [{"prefix": ""}]}"#)
        .start()
        .err()
        .unwrap();

    let HarnessError::ConfigRejected { logs } = &error else {
        panic!("expected the configuration to be rejected, got {error}");
    };
    assert!(
        logs.iter()
            .any(|entry| entry.message.contains("deny[0]")
                && entry.message.contains("refuses to start")),
        "{logs:?}"
    );
}

#[test]
fn stat_prefix_names_the_counters() {
    let plugin = start_in_harness(r#"{"stat_prefix": "edge"}"#);
    let mut stream = plugin.http_stream();

    stream
        .request_headers(
            &[(":method", "GET"), (":path", "/"), (":authority", "shop")],
            true,
        )
        .unwrap();
    stream.complete().unwrap();

    assert_eq!(
        plugin.metric("edge.header_filter.allowed"),
        Some(MetricValue::Counter(1))
    );
    assert_eq!(plugin.metric("header_filter.allowed"), None);
}
