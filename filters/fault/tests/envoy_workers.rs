#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! `max_active_faults` in a real Envoy with four workers (four wasm VMs): the limit holds for
//! the whole proxy, not per VM. Set `WASMESH_SKIP_ENVOY=1` to skip.

mod common;

use std::thread;
use std::time::Duration;

use common::HEADER_CONTROLLED;
use wasmesh_envoy::{self as envoy, EnvoyBuilder, HttpRequest, TestServer, WasmFilter};

const WAIT: Duration = Duration::from_secs(20);

fn request(headers: &[(&str, &str)]) -> HttpRequest {
    let mut request = HttpRequest::get("/").header("host", "shop");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
}

#[test]
fn max_active_faults_is_shared_by_every_worker() {
    if envoy::skip_requested() {
        return;
    }
    // HEADER_CONTROLLED allows one active fault.
    let upstream = TestServer::echo().unwrap();
    let envoy = EnvoyBuilder::new()
        .wasm_filter(
            WasmFilter::new(common::wasm())
                .name("fault")
                .configuration(HEADER_CONTROLLED),
        )
        .upstream(upstream.addr())
        .concurrency(4)
        .start()
        .unwrap();
    let listener = envoy.listener_addr();
    let held = thread::spawn(move || {
        envoy::send(
            listener,
            &request(&[("x-chaos", "1"), ("x-envoy-fault-delay-request", "2000")]),
        )
        .unwrap()
    });
    envoy
        .wait_for_wasm_metric("fault.active_faults", 1, WAIT)
        .unwrap();

    // Every request opens its own connection, which Envoy spreads over its workers: a per-VM
    // limit would let the ones landing on the three other workers through.
    let abort = [("x-chaos", "1"), ("x-envoy-fault-abort-request", "503")];
    for index in 0..12 {
        let response = envoy.send(&request(&abort)).unwrap();
        assert_eq!(
            response.status, 200,
            "request {index} got a fault beyond the limit"
        );
    }
    // The connections did reach several workers (the kernel spreads them; 13 connections on
    // one of four workers by chance is a 1-in-16-million event).
    let workers_used = envoy
        .stats()
        .unwrap()
        .iter()
        .filter(|(name, value)| {
            name.starts_with("listener.")
                && name.contains(".worker_")
                && name.ends_with(".downstream_cx_total")
                && **value > 0
        })
        .count();
    assert!(workers_used >= 2, "all connections went to one worker");
    assert_eq!(
        envoy.wasm_metric("fault.faults_overflow").unwrap(),
        Some(12)
    );
    assert_eq!(envoy.wasm_metric("fault.aborts_injected").unwrap(), Some(0));

    assert_eq!(held.join().unwrap().status, 200);
    envoy
        .wait_for_wasm_metric("fault.active_faults", 0, WAIT)
        .unwrap();
    assert_eq!(envoy.send(&request(&abort)).unwrap().status, 503);
}
