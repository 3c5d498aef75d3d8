#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The fault filter's real wasm build, driven through the harness on the virtual clock.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::{
    cases, metric, request_headers, run_in_harness, sample_config, send_in_harness,
    start_in_harness, verdict_in_harness, Verdict, HEADER_CONTROLLED,
};
use wasmesh_harness::{CalloutReply, Harness, HarnessError, MetricValue, StreamState};

const MS: Duration = Duration::from_millis(1);

#[test]
fn every_header_controlled_case_gets_its_verdict() {
    let plugin = start_in_harness(HEADER_CONTROLLED);
    for case in cases() {
        let (verdict, delayed) = run_in_harness(&plugin, &case);
        assert_eq!(verdict, case.expected, "{}", case.name);
        assert_eq!(delayed, case.delayed, "{}: delayed", case.name);
    }
    let delays = cases().iter().filter(|case| case.delayed).count() as u64;
    assert_eq!(metric(&plugin, "fault.delays_injected"), delays);
    assert_eq!(metric(&plugin, "fault.active_faults"), 0);
}

#[test]
fn a_fixed_delay_is_measured_exactly_on_the_virtual_clock() {
    let plugin = start_in_harness(
        r#"{"delay": {"fixed_delay": "3s", "percentage": {"numerator": 100}}, "tick_interval": "0.01s"}"#,
    );
    assert_eq!(plugin.tick_period(0), Some(Duration::from_millis(10)));
    let mut stream = plugin.http_stream();
    let outcome = stream
        .request_headers(&request_headers("/checkout", &[]), false)
        .unwrap();
    assert!(outcome.stopped());
    // The body waits with the headers, as behind Envoy's delay timer.
    stream.request_body(b"order", true).unwrap();
    assert_eq!(stream.request_state(), StreamState::Paused);

    plugin.advance_clock(Duration::from_millis(2990)).unwrap();
    assert_eq!(stream.request_state(), StreamState::Paused, "resumed early");
    plugin.advance_clock(Duration::from_millis(10)).unwrap();
    assert_eq!(
        stream.request_state(),
        StreamState::Continued,
        "not resumed at 3s"
    );
    assert_eq!(stream.request_body_now(), b"order");
    assert_eq!(metric(&plugin, "fault.delays_injected"), 1);
    assert_eq!(metric(&plugin, "fault.active_faults"), 0);
    assert_eq!(verdict_in_harness(stream), Verdict::Forwarded);
}

#[test]
fn delays_are_accurate_to_the_tick_interval() {
    // A coarse tick: a 250ms delay resumes at the first tick at or after 250ms, i.e. 300ms.
    let plugin = start_in_harness(
        r#"{"delay": {"header_delay": {}, "percentage": {"numerator": 100}}, "tick_interval": "0.1s"}"#,
    );
    let mut stream = plugin.http_stream();
    stream
        .request_headers(
            &request_headers("/", &[("x-envoy-fault-delay-request", "250")]),
            true,
        )
        .unwrap();
    plugin.advance_clock(299 * MS).unwrap();
    assert_eq!(stream.request_state(), StreamState::Paused);
    plugin.advance_clock(MS).unwrap();
    assert_eq!(stream.request_state(), StreamState::Continued);
    stream.complete().unwrap();
}

#[test]
fn aborts_carry_the_configured_status_body_and_details() {
    let plugin =
        start_in_harness(r#"{"abort": {"http_status": 503, "percentage": {"numerator": 100}}}"#);
    let mut stream = plugin.http_stream();
    let outcome = stream
        .request_headers(&request_headers("/checkout", &[]), true)
        .unwrap();
    let reply = outcome.local_reply().unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, b"fault filter abort");
    assert_eq!(reply.details, "fault_filter_abort");
    assert_eq!(
        common::header(&reply.headers, "content-type").as_deref(),
        Some("text/plain")
    );
    stream.complete().unwrap();

    let grpc = start_in_harness(
        r#"{"fault": {"abort": {"grpcStatus": "RESOURCE_EXHAUSTED", "percentage": {"value": 100}}}}"#,
    );
    let (stream, _) = send_in_harness(
        &grpc,
        &request_headers("/shop.Cart/Add", &[("content-type", "application/grpc")]),
        Duration::ZERO,
    );
    assert_eq!(verdict_in_harness(stream), Verdict::grpc_abort(8));
    assert_eq!(metric(&grpc, "fault.aborts_injected"), 1);
}

#[test]
fn ten_percent_of_ten_thousand_requests_are_aborted() {
    let plugin = Harness::load(common::wasm())
        .unwrap()
        .config(r#"{"abort": {"http_status": 503, "percentage": {"numerator": 10}}}"#)
        .start()
        .unwrap();
    let headers = request_headers("/checkout", &[]);
    let mut aborted = 0u64;
    for _ in 0..10_000 {
        let mut stream = plugin.http_stream();
        if stream
            .request_headers(&headers, true)
            .unwrap()
            .local_reply()
            .is_some()
        {
            aborted += 1;
        }
        stream.complete().unwrap();
    }
    // Binomial(10000, 0.1): mean 1000, standard deviation 30; allow 4 of them.
    assert!((880..=1120).contains(&aborted), "{aborted} aborted");
    assert_eq!(metric(&plugin, "fault.aborts_injected"), aborted);
}

#[test]
fn istio_percentages_in_millionths_converge() {
    // 2.5% with Istio's double percentage: 25,000 parts per million.
    let plugin = start_in_harness(
        r#"{"fault": {"abort": {"httpStatus": 500, "percentage": {"value": 2.5}}}, "random_seed": 7}"#,
    );
    let headers = request_headers("/", &[]);
    let aborted = (0..8_000)
        .filter(|_| {
            let mut stream = plugin.http_stream();
            let hit = stream
                .request_headers(&headers, true)
                .unwrap()
                .local_reply()
                .is_some();
            stream.complete().unwrap();
            hit
        })
        .count();
    // Mean 200, sd 14.
    assert!((144..=256).contains(&aborted), "{aborted} aborted");
}

#[test]
fn seeded_runs_repeat_exactly() {
    let run = |seed: u64| {
        let plugin = start_in_harness(&format!(
            r#"{{"abort": {{"http_status": 503, "percentage": {{"numerator": 30}}}}, "random_seed": {seed}}}"#
        ));
        (0..200)
            .map(|_| {
                let mut stream = plugin.http_stream();
                let hit = stream
                    .request_headers(&request_headers("/", &[]), true)
                    .unwrap()
                    .local_reply()
                    .is_some();
                stream.complete().unwrap();
                hit
            })
            .collect::<Vec<bool>>()
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}

#[test]
fn max_active_faults_holds_across_four_worker_vms() {
    let plugin = Harness::load(common::wasm())
        .unwrap()
        .config(
            r#"{"delay": {"fixed_delay": "10s", "percentage": {"numerator": 100}}, "max_active_faults": 3}"#,
        )
        .workers(4)
        .start()
        .unwrap();
    let headers = request_headers("/checkout", &[]);
    let mut streams: Vec<_> = (0..8)
        .map(|_| {
            let mut stream = plugin.http_stream();
            stream.request_headers(&headers, true).unwrap();
            stream
        })
        .collect();
    let workers_used: std::collections::BTreeSet<usize> =
        streams.iter().map(|stream| stream.worker()).collect();
    assert_eq!(workers_used.len(), 4);
    let paused = streams
        .iter()
        .filter(|stream| stream.request_state() == StreamState::Paused)
        .count();
    assert_eq!(paused, 3);
    assert_eq!(metric(&plugin, "fault.faults_overflow"), 5);
    assert_eq!(metric(&plugin, "fault.active_faults"), 3);
    assert_eq!(metric(&plugin, "fault.delays_injected"), 3);

    // One delayed client goes away: its fault is given back, another worker can take it.
    let cancelled = streams
        .iter()
        .position(|stream| stream.request_state() == StreamState::Paused)
        .unwrap();
    let cancelled_worker = streams[cancelled].worker();
    streams.remove(cancelled).reset().unwrap();
    assert_eq!(metric(&plugin, "fault.active_faults"), 2);
    let mut newcomer = plugin.http_stream_on(cancelled_worker + 1);
    newcomer.request_headers(&headers, true).unwrap();
    assert_eq!(newcomer.request_state(), StreamState::Paused);
    let mut overflow = plugin.http_stream_on(cancelled_worker + 2);
    overflow.request_headers(&headers, true).unwrap();
    assert_eq!(overflow.request_state(), StreamState::Continued);
    assert_eq!(metric(&plugin, "fault.faults_overflow"), 6);

    // When the delays end every fault is released, everywhere.
    plugin.advance_clock(Duration::from_secs(10)).unwrap();
    assert!(streams
        .iter()
        .chain([&newcomer])
        .all(|stream| stream.request_state() == StreamState::Continued));
    assert_eq!(metric(&plugin, "fault.active_faults"), 0);
    for stream in streams.into_iter().chain([newcomer, overflow]) {
        stream.complete().unwrap();
    }
    let ledger = plugin
        .shared_data("wasmesh.fault.active_faults.ledger")
        .map(|(value, _)| value)
        .unwrap_or_default();
    assert!(ledger.is_empty(), "{}", String::from_utf8_lossy(&ledger));
}

#[test]
fn a_cancelled_delayed_request_is_cleaned_up() {
    let plugin = start_in_harness(HEADER_CONTROLLED);
    let delayed = request_headers(
        "/",
        &[("x-chaos", "1"), ("x-envoy-fault-delay-request", "60000")],
    );
    let mut stream = plugin.http_stream();
    stream.request_headers(&delayed, true).unwrap();
    assert_eq!(stream.request_state(), StreamState::Paused);
    assert_eq!(metric(&plugin, "fault.active_faults"), 1);
    stream.reset().unwrap();
    assert_eq!(metric(&plugin, "fault.active_faults"), 0);
    // The filter keeps ticking without touching the gone stream, and the fault is free again.
    plugin.advance_clock(Duration::from_secs(61)).unwrap();
    let abort = request_headers(
        "/",
        &[("x-chaos", "1"), ("x-envoy-fault-abort-request", "503")],
    );
    let (stream, _) = send_in_harness(&plugin, &abort, Duration::ZERO);
    assert_eq!(verdict_in_harness(stream), Verdict::http_abort(503));
    assert!(plugin.vm_failure(0).is_none());
}

#[test]
fn upstream_cluster_is_read_from_the_route() {
    let config = r#"{"abort": {"http_status": 503, "percentage": {"numerator": 100}}, "upstream_cluster": "checkout"}"#;
    let to_checkout = Harness::load(common::wasm())
        .unwrap()
        .config(config)
        .property(&["xds", "cluster_name"], "checkout")
        .start()
        .unwrap();
    let (stream, _) = send_in_harness(&to_checkout, &request_headers("/", &[]), Duration::ZERO);
    assert_eq!(verdict_in_harness(stream), Verdict::http_abort(503));
    let elsewhere = Harness::load(common::wasm())
        .unwrap()
        .config(config)
        .property(&["xds", "cluster_name"], "payments")
        .start()
        .unwrap();
    let (stream, _) = send_in_harness(&elsewhere, &request_headers("/", &[]), Duration::ZERO);
    assert_eq!(verdict_in_harness(stream), Verdict::Forwarded);
}

#[test]
fn downstream_nodes_and_cluster_stats() {
    let plugin = start_in_harness(
        r#"{"abort": {"http_status": 503, "percentage": {"numerator": 100}}, "downstream_nodes": ["frontend"]}"#,
    );
    let from_frontend = request_headers(
        "/",
        &[
            ("x-envoy-downstream-service-node", "frontend"),
            ("x-envoy-downstream-service-cluster", "web"),
        ],
    );
    let (stream, _) = send_in_harness(&plugin, &from_frontend, Duration::ZERO);
    assert_eq!(verdict_in_harness(stream), Verdict::http_abort(503));
    let from_batch = request_headers("/", &[("x-envoy-downstream-service-node", "batch")]);
    let (stream, _) = send_in_harness(&plugin, &from_batch, Duration::ZERO);
    assert_eq!(verdict_in_harness(stream), Verdict::Forwarded);
    assert_eq!(
        plugin.metric("fault.web.aborts_injected"),
        Some(MetricValue::Counter(1))
    );
}

/// A control service whose answer the test changes between polls.
fn with_control(config: &str) -> (wasmesh_harness::Plugin, Rc<RefCell<CalloutReply>>) {
    let answer = Rc::new(RefCell::new(CalloutReply::ok(200, r#"{"enabled": true}"#)));
    let handler_answer = answer.clone();
    let plugin = Harness::load(common::wasm())
        .unwrap()
        .config(config)
        .cluster("chaos-control")
        .http_callout_handler(move |callout| {
            assert_eq!(callout.upstream, "chaos-control");
            assert_eq!(callout.header(":path"), Some("/experiments/checkout"));
            handler_answer.borrow().clone()
        })
        .start()
        .unwrap();
    (plugin, answer)
}

#[test]
fn the_kill_switch_stops_faults_and_frees_delayed_requests_at_the_next_poll() {
    let (plugin, answer) = with_control(
        r#"{"delay": {"fixed_delay": "30s", "percentage": {"numerator": 100}},
            "control": {"cluster": "chaos-control", "path": "/experiments/checkout", "poll_interval": "1s"}}"#,
    );
    let headers = request_headers("/checkout", &[]);
    // Fail safe: nothing is injected before the control service has answered.
    let (stream, delayed) = send_in_harness(&plugin, &headers, Duration::ZERO);
    assert!(!delayed);
    verdict_in_harness(stream);
    plugin.advance_clock(10 * MS).unwrap();
    // The worker's VM and, as in Envoy, the VM on its main thread each polled once.
    assert_eq!(metric(&plugin, "fault.control_updates"), 2);

    let mut victims: Vec<_> = (0..3)
        .map(|_| {
            let mut stream = plugin.http_stream();
            stream.request_headers(&headers, true).unwrap();
            stream
        })
        .collect();
    assert!(victims
        .iter()
        .all(|stream| stream.request_state() == StreamState::Paused));

    *answer.borrow_mut() = CalloutReply::ok(200, r#"{"enabled": false}"#);
    plugin.advance_clock(Duration::from_millis(999)).unwrap();
    assert!(victims
        .iter()
        .all(|stream| stream.request_state() == StreamState::Paused));
    plugin.advance_clock(MS).unwrap();
    assert!(victims
        .iter()
        .all(|stream| stream.request_state() == StreamState::Continued));
    assert_eq!(metric(&plugin, "fault.active_faults"), 0);
    let (stream, delayed) = send_in_harness(&plugin, &headers, Duration::ZERO);
    assert!(!delayed);
    verdict_in_harness(stream);
    for stream in victims.drain(..) {
        stream.complete().unwrap();
    }
    assert!(plugin
        .logs()
        .iter()
        .any(|entry| entry.message.contains("faults disabled (kill switch)")));
}

#[test]
fn an_unreachable_or_broken_control_service_fails_safe() {
    let (plugin, answer) = with_control(
        r#"{"abort": {"http_status": 503, "percentage": {"numerator": 100}},
            "control": {"cluster": "chaos-control", "path": "/experiments/checkout", "poll_interval": "1s", "timeout": "0.2s"}}"#,
    );
    let headers = request_headers("/checkout", &[]);
    let verdict = || {
        let (stream, _) = send_in_harness(&plugin, &headers, Duration::ZERO);
        verdict_in_harness(stream)
    };
    plugin.advance_clock(10 * MS).unwrap();
    assert_eq!(verdict(), Verdict::http_abort(503));

    for broken in [
        CalloutReply::upstream_unavailable(),
        CalloutReply::Failure,
        CalloutReply::Timeout,
        CalloutReply::ok(200, "not json"),
        CalloutReply::ok(200, r#"{"enabled": true, "experiment": {"abort": {}}}"#),
    ] {
        *answer.borrow_mut() = CalloutReply::ok(200, r#"{"enabled": true}"#);
        plugin.advance_clock(Duration::from_secs(1)).unwrap();
        assert_eq!(verdict(), Verdict::http_abort(503));
        *answer.borrow_mut() = broken.clone();
        // Next poll, plus its timeout for the silent one.
        plugin.advance_clock(Duration::from_millis(1200)).unwrap();
        assert_eq!(verdict(), Verdict::Forwarded, "{broken:?}");
    }
    assert!(metric(&plugin, "fault.control_failures") >= 5);
    assert!(plugin.vm_failure(0).is_none());
}

#[test]
fn the_control_service_can_swap_the_experiment_live() {
    let (plugin, answer) = with_control(
        r#"{"abort": {"http_status": 503, "percentage": {"numerator": 100}},
            "control": {"cluster": "chaos-control", "path": "/experiments/checkout", "poll_interval": "0.5s"}}"#,
    );
    *answer.borrow_mut() = CalloutReply::ok(
        200,
        r#"{"enabled": true, "experiment": {"fault": {"abort": {"httpStatus": 429, "percentage": {"value": 100}}},
            "headers": [{"name": ":path", "string_match": {"prefix": "/checkout"}}]}}"#,
    );
    plugin.advance_clock(10 * MS).unwrap();
    let (stream, _) = send_in_harness(
        &plugin,
        &request_headers("/checkout/pay", &[]),
        Duration::ZERO,
    );
    assert_eq!(verdict_in_harness(stream), Verdict::http_abort(429));
    let (stream, _) = send_in_harness(&plugin, &request_headers("/catalog", &[]), Duration::ZERO);
    assert_eq!(verdict_in_harness(stream), Verdict::Forwarded);
}

#[test]
fn an_unknown_control_cluster_fails_safe_without_crashing() {
    let plugin = Harness::load(common::wasm())
        .unwrap()
        .config(
            r#"{"abort": {"http_status": 503, "percentage": {"numerator": 100}}, "control": {"cluster": "nowhere", "path": "/x"}}"#,
        )
        .cluster("somewhere-else")
        .start()
        .unwrap();
    plugin.advance_clock(Duration::from_secs(3)).unwrap();
    let (stream, _) = send_in_harness(&plugin, &request_headers("/", &[]), Duration::ZERO);
    assert_eq!(verdict_in_harness(stream), Verdict::Forwarded);
    assert!(metric(&plugin, "fault.control_failures") >= 3);
    let warnings = plugin
        .logs()
        .iter()
        .filter(|entry| entry.message.contains("polling the control service failed"))
        .count();
    assert!(warnings >= 1);
    assert!(plugin.vm_failure(0).is_none());
}

#[test]
fn the_sample_config_selects_its_route_only() {
    let plugin = Harness::load(common::wasm())
        .unwrap()
        .config(sample_config())
        .random_seed(3)
        .start()
        .unwrap();
    let mut delayed = 0;
    let mut aborted = 0;
    for index in 0..2_000 {
        let path = if index % 2 == 0 {
            "/checkout/cart"
        } else {
            "/catalog"
        };
        let (stream, was_delayed) =
            send_in_harness(&plugin, &request_headers(path, &[]), Duration::from_secs(3));
        let verdict = verdict_in_harness(stream);
        if path == "/catalog" {
            assert!(!was_delayed);
            assert_eq!(verdict, Verdict::Forwarded);
        }
        delayed += usize::from(was_delayed);
        aborted += usize::from(verdict != Verdict::Forwarded);
    }
    // 1000 checkout requests, 10% each: mean 100, sd 9.5.
    assert!((60..=140).contains(&delayed), "{delayed} delayed");
    assert!((60..=140).contains(&aborted), "{aborted} aborted");
}

#[test]
fn a_bad_configuration_is_refused_with_the_path_in_the_logs() {
    let error = Harness::load(common::wasm())
        .unwrap()
        .config(r#"{"abort": {"http_status": 700}}"#)
        .start()
        .err()
        .unwrap();
    let HarnessError::ConfigRejected { logs } = &error else {
        panic!("expected the configuration to be rejected, got {error}");
    };
    assert!(
        logs.iter().any(|entry| entry
            .message
            .contains("abort.http_status: must be in [200, 600), got 700")),
        "{logs:?}"
    );
    let error = Harness::load(common::wasm())
        .unwrap()
        .config(r#"{"response_rate_limit": {"fixed_limit": {"limit_kbps": 64}}}"#)
        .start()
        .err()
        .unwrap();
    let HarnessError::ConfigRejected { logs } = &error else {
        panic!("expected the configuration to be rejected, got {error}");
    };
    assert!(logs.iter().any(|entry| entry
        .message
        .contains("response_rate_limit: is not supported")));
}

#[test]
fn no_tick_without_anything_to_time() {
    let plugin =
        start_in_harness(r#"{"abort": {"http_status": 503, "percentage": {"numerator": 1}}}"#);
    assert_eq!(plugin.tick_period(0), None);
}
