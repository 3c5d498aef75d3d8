#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The control service and its kill switch in a real Envoy: the filter polls a local test
//! server for the experiment; switching it off stops new faults and frees delayed requests, and
//! an unreachable control service means no faults. Set `WASMESH_SKIP_ENVOY=1` to skip.

mod common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{request_headers, send_in_harness, verdict_in_harness, Verdict};
use wasmesh_envoy::{
    self as envoy, Cluster, Envoy, EnvoyBuilder, HttpRequest, HttpResponse, TestServer, WasmFilter,
};
use wasmesh_harness::{CalloutReply, Harness};

const WAIT: Duration = Duration::from_secs(20);

/// Status the test sets to make the control server hang instead of answering.
const HANG: u16 = 299;

const CONFIG: &str = r#"{
    "abort": {"http_status": 503, "percentage": {"numerator": 100}},
    "control": {"cluster": "chaos-control", "path": "/experiments/checkout", "poll_interval": "0.05s", "timeout": "1s"},
    "tick_interval": "0.01s"
}"#;

/// What the control server answers, changed by the test.
#[derive(Clone)]
struct Answer(Arc<Mutex<(u16, String)>>);

impl Answer {
    fn set(&self, status: u16, body: &str) {
        *self.0.lock().unwrap() = (status, body.to_string());
    }
}

fn verdict(envoy: &Envoy) -> Verdict {
    let response = envoy
        .send(&HttpRequest::get("/checkout").header("host", "shop"))
        .unwrap();
    match response.response_code_details() {
        Some(details) => Verdict::Aborted {
            status: u32::from(response.status),
            details: details.to_string(),
            body: response.text(),
            grpc_status: None,
            grpc_message: None,
        },
        None => {
            assert_eq!(response.status, 200);
            Verdict::Forwarded
        }
    }
}

/// Sends requests until one gets `expected` (the control service is polled every 50ms).
fn until_verdict(envoy: &Envoy, expected: &Verdict) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = verdict(envoy);
        if got == *expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {got:?}, never {expected:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// The verdict the harness gives for the same control answer.
fn in_harness(status: u16, body: &str) -> Verdict {
    let reply = CalloutReply::ok(status, body.to_string());
    let plugin = Harness::load(common::wasm())
        .unwrap()
        .config(CONFIG)
        .http_callout_handler(move |_| reply.clone())
        .start()
        .unwrap();
    plugin.advance_clock(Duration::from_millis(10)).unwrap();
    let (stream, _) = send_in_harness(&plugin, &request_headers("/checkout", &[]), Duration::ZERO);
    verdict_in_harness(stream)
}

#[test]
fn experiments_follow_the_control_service_and_the_kill_switch_is_immediate() {
    if envoy::skip_requested() {
        return;
    }
    let answer = Answer(Arc::new(Mutex::new((
        200,
        r#"{"enabled": true}"#.to_string(),
    ))));
    let served = answer.clone();
    let control = TestServer::start(move |_| {
        let (status, body) = served.0.lock().unwrap().clone();
        if status == HANG {
            // A control service that stopped answering: longer than the poll's 1s timeout.
            thread::sleep(Duration::from_secs(3));
        }
        HttpResponse::new(status, body).with_header("content-type", "application/json")
    })
    .unwrap();
    let upstream = TestServer::echo().unwrap();
    let envoy = EnvoyBuilder::new()
        .wasm_filter(
            WasmFilter::new(common::wasm())
                .name("fault")
                .configuration(CONFIG),
        )
        .cluster(Cluster::new("chaos-control", control.addr()))
        .upstream(upstream.addr())
        .start()
        .unwrap();

    // Enabled: the configured experiment runs.
    let enabled = r#"{"enabled": true}"#;
    assert_eq!(in_harness(200, enabled), Verdict::http_abort(503));
    until_verdict(&envoy, &Verdict::http_abort(503));
    let seen = control.requests();
    assert!(seen
        .iter()
        .all(|poll| poll.method == "GET" && poll.path == "/experiments/checkout"));

    // Kill switch.
    let off = r#"{"enabled": false}"#;
    assert_eq!(in_harness(200, off), Verdict::Forwarded);
    answer.set(200, off);
    until_verdict(&envoy, &Verdict::Forwarded);
    for _ in 0..5 {
        assert_eq!(verdict(&envoy), Verdict::Forwarded);
    }

    // A new experiment, live: delays everything by 60s; the kill switch frees the delayed
    // request at once.
    let delaying = r#"{"enabled": true, "experiment": {"delay": {"fixed_delay": "60s", "percentage": {"numerator": 100}}}}"#;
    answer.set(200, delaying);
    let listener = envoy.listener_addr();
    let deadline = Instant::now() + WAIT;
    loop {
        // Wait until a request is held by the new experiment.
        let probe = thread::spawn(move || {
            envoy::send(
                listener,
                &HttpRequest::get("/checkout").header("host", "shop"),
            )
            .unwrap()
        });
        if envoy
            .wait_for_wasm_metric("fault.active_faults", 1, Duration::from_secs(1))
            .is_ok()
        {
            answer.set(200, off);
            // Not freed, the request would outlast the client's socket timeout (30s) and fail.
            let response = probe.join().unwrap();
            assert_eq!(response.status, 200);
            break;
        }
        probe.join().unwrap();
        assert!(
            Instant::now() < deadline,
            "the delaying experiment never applied"
        );
    }
    envoy
        .wait_for_wasm_metric("fault.active_faults", 0, WAIT)
        .unwrap();

    // Back on, then the control service breaks: fail safe.
    answer.set(200, enabled);
    until_verdict(&envoy, &Verdict::http_abort(503));
    assert_eq!(in_harness(500, "oops"), Verdict::Forwarded);
    answer.set(500, "oops");
    until_verdict(&envoy, &Verdict::Forwarded);
    assert!(
        envoy
            .wasm_metric("fault.control_failures")
            .unwrap()
            .unwrap_or(0)
            >= 1
    );

    // Back on, then the control service stops answering: polls time out, faults stay off.
    answer.set(200, enabled);
    until_verdict(&envoy, &Verdict::http_abort(503));
    answer.set(HANG, enabled);
    until_verdict(&envoy, &Verdict::Forwarded);
    assert!(envoy.log().contains("control service answered 504"));
    assert!(envoy
        .log()
        .contains("faults are off until the control service answers"));
    answer.set(200, enabled);
}
