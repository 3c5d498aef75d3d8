#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The same module and exchanges through the harness and through a real Envoy (V8): the
//! callbacks, their arguments and the hostcall results the module observes must be identical.
//! This pins the Envoy-specific behaviours the harness reproduces: context numbering, metric
//! ids, `on_log` before `on_done`/`on_delete`, local replies passing through the filter's own
//! `on_response_headers`, and request headers becoming unreachable once they continued.

mod common;
use common::*;
use wasmesh_envoy::{self as envoy, EnvoyBuilder, HttpRequest, WasmFilter};
use wasmesh_harness::{envoy_stat_name, prometheus_name, Harness};

/// Logs every callback as `FID <name> <args>`.
fn tracing_module() -> String {
    let mut t = Strings::new();
    let create = t.s("FID create");
    let vm_start = t.s("FID vm_start");
    let configure = t.s("FID configure");
    let request = t.s("FID request_headers");
    let response = t.s("FID response_headers");
    let reachable = t.s("FID request_path_header_and_property");
    let status = t.s("FID response_status");
    let log = t.s("FID log");
    let done = t.s("FID done");
    let delete = t.s("FID delete");
    let ids = t.s("FID metric_ids");
    let metric = t.s("requests");
    let deny = t.s("x-deny");
    let path = t.s(":path");
    let status_key = t.s(":status");
    let path_property = t.path(&["request", "path"]);
    let details = t.s("denied here");
    let body = t.s("nope");
    let extra = t.map(&[("x-r", "1")]);
    module(&format!(
        r#"{}
  (func (export "proxy_on_context_create") (param $c i32) (param $p i32)
    (call $log2 {create} (local.get $c) (local.get $p)))
  (func (export "proxy_on_vm_start") (param $c i32) (param i32) (result i32)
    (call $log1 {vm_start} (local.get $c)) (i32.const 1))
  (func (export "proxy_on_configure") (param $c i32) (param i32) (result i32)
    (call $log1 {configure} (local.get $c))
    (drop (call $proxy_define_metric (i32.const 0) {metric} (i32.const 520)))
    (drop (call $proxy_define_metric (i32.const 0) {metric} (i32.const 524)))
    (call $log2 {ids} (i32.load (i32.const 520)) (i32.load (i32.const 524)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param $c i32) (param $n i32) (param $e i32) (result i32)
    (call $log2 {request} (local.get $c) (local.get $e))
    (if (i32.eqz (call $proxy_get_header_map_value (i32.const 0) {deny} (i32.const 512) (i32.const 516)))
      (then (drop (call $proxy_send_local_response (i32.const 403) {details} {body} {extra} (i32.const -1)))))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param $c i32) (param $n i32) (param $e i32) (result i32)
    (call $log2 {response} (local.get $c) (local.get $e))
    (call $log2 {reachable}
      (call $proxy_get_header_map_value (i32.const 0) {path} (i32.const 512) (i32.const 516))
      (call $proxy_get_property {path_property} (i32.const 512) (i32.const 516)))
    (drop (call $proxy_get_header_map_value (i32.const 2) {status_key} (i32.const 512) (i32.const 516)))
    (call $log1 {status} (call $atoi (i32.load (i32.const 512)) (i32.load (i32.const 516))))
    (i32.const 0))
  (func (export "proxy_on_log") (param $c i32)
    (call $log2 {log} (local.get $c)
      (call $proxy_get_header_map_value (i32.const 0) {path} (i32.const 512) (i32.const 516))))
  (func (export "proxy_on_done") (param $c i32) (result i32) (call $log1 {done} (local.get $c)) (i32.const 1))
  (func (export "proxy_on_delete") (param $c i32) (call $log1 {delete} (local.get $c)))"#,
        t.data()
    ))
}

fn traced(lines: impl Iterator<Item = String>) -> Vec<String> {
    lines
        .filter_map(|l| {
            l.split_once("FID ")
                .map(|(_, rest)| rest.trim().to_string())
        })
        .collect()
}

/// The stream part of a trace (Envoy starts extra VMs on the main thread first).
fn streams(trace: &[String]) -> Vec<String> {
    let first_stream = trace
        .iter()
        .position(|l| l == "create 2 1")
        .unwrap_or(trace.len());
    trace[first_stream..].to_vec()
}

#[test]
fn the_harness_and_envoy_show_the_module_the_same_lifecycle_and_results() {
    if envoy::skip_requested() {
        return;
    }
    let bytes = wat::parse_str(tracing_module()).unwrap();

    let plugin = Harness::from_bytes(&bytes).unwrap().start().unwrap();
    let base = [
        (":authority", "localhost"),
        (":method", "GET"),
        (":scheme", "http"),
    ];
    let mut allowed = plugin.http_stream();
    allowed
        .request_headers(&[base.as_slice(), &[(":path", "/a")]].concat(), true)
        .unwrap();
    allowed
        .response_headers(&[(":status", "200")], false)
        .unwrap();
    allowed.response_body(b"ok", true).unwrap();
    allowed.complete().unwrap();
    let mut denied = plugin.http_stream();
    let outcome = denied
        .request_headers(
            &[base.as_slice(), &[(":path", "/b"), ("x-deny", "1")]].concat(),
            true,
        )
        .unwrap();
    let reply = outcome.local_reply().unwrap().clone();
    denied.complete().unwrap();
    let harness = traced(plugin.logs().into_iter().map(|l| l.message));

    let wasm = WasmFile::new("fidelity", &bytes);
    let envoy = EnvoyBuilder::new()
        .wasm_filter(WasmFilter::new(&wasm.path))
        .direct_response(200, "ok")
        .start()
        .unwrap();
    assert_eq!(envoy.send(&HttpRequest::get("/a")).unwrap().status, 200);
    let response = envoy
        .send(&HttpRequest::get("/b").header("x-deny", "1"))
        .unwrap();
    // Access logs run when the stream is torn down, just after the response is written.
    let mut envoy_trace = Vec::new();
    for _ in 0..50 {
        envoy_trace = traced(envoy.log().lines().map(str::to_string));
        if envoy_trace
            .iter()
            .filter(|l| l.starts_with("delete"))
            .count()
            == 2
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    assert_eq!(response.status as u32, reply.status);
    assert_eq!(response.body, reply.body);
    let envoy_headers: Vec<&str> = response.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert!(envoy_headers.starts_with(&["x-r"]), "{envoy_headers:?}");
    assert_eq!(
        &harness[..4],
        ["create 1 0", "vm_start 1", "configure 1", "metric_ids 4 8"]
    );
    assert_eq!(&envoy_trace[..4], &harness[..4]);
    assert_eq!(streams(&envoy_trace), streams(&harness));
    // The whole trace too, with the start-ups of the VMs on Envoy's main thread.
    assert_eq!(envoy_trace, harness);
    assert_eq!(
        streams(&harness),
        [
            "create 2 1",
            "request_headers 2 1",
            "response_headers 2 0",
            "request_path_header_and_property 2 1",
            "response_status 200",
            "log 2 0",
            "done 2",
            "delete 2",
            "create 3 1",
            "request_headers 3 1",
            "response_headers 3 0",
            "request_path_header_and_property 0 0",
            "response_status 403",
            "log 3 0",
            "done 3",
            "delete 3",
        ]
    );
}

/// Pauses at request headers and resumes from a tick.
fn pausing_module() -> String {
    let mut t = Strings::new();
    let request = t.s("FID request_headers");
    let body = t.s("FID request_body");
    let resume = t.s("FID resume");
    let response = t.s("FID response_headers");
    let delete = t.s("FID delete");
    module(&format!(
        r#"{}
  (global $paused (mut i32) (i32.const 0))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $proxy_set_tick_period_milliseconds (i32.const 20))) (i32.const 1))
  (func (export "proxy_on_request_headers") (param $c i32) (param $n i32) (param $e i32) (result i32)
    (call $log2 {request} (local.get $c) (local.get $e))
    (global.set $paused (local.get $c))
    (i32.const 1))
  (func (export "proxy_on_request_body") (param $c i32) (param $size i32) (param $e i32) (result i32)
    (call $log2 {body} (local.get $size) (local.get $e))
    (i32.const 0))
  (func (export "proxy_on_tick") (param i32)
    (if (global.get $paused)
      (then
        (call $info {resume})
        (drop (call $proxy_set_effective_context (global.get $paused)))
        (drop (call $proxy_continue_stream (i32.const 0)))
        (global.set $paused (i32.const 0)))))
  (func (export "proxy_on_response_headers") (param $c i32) (param $n i32) (param $e i32) (result i32)
    (call $log2 {response} (local.get $c) (local.get $e))
    (i32.const 0))
  (func (export "proxy_on_delete") (param $c i32) (call $log1 {delete} (local.get $c)))"#,
        t.data()
    ))
}

#[test]
fn pausing_at_headers_holds_the_body_until_resumed_in_both() {
    if envoy::skip_requested() {
        return;
    }
    let bytes = wat::parse_str(pausing_module()).unwrap();

    let plugin = Harness::from_bytes(&bytes).unwrap().start().unwrap();
    let mut stream = plugin.http_stream();
    stream
        .request_headers(
            &[
                (":authority", "localhost"),
                (":method", "POST"),
                (":path", "/p"),
                ("content-length", "5"),
            ],
            false,
        )
        .unwrap();
    let held = stream.request_body(b"12345", true).unwrap();
    assert!(!held.invoked);
    plugin
        .advance_clock(std::time::Duration::from_millis(20))
        .unwrap();
    stream
        .response_headers(&[(":status", "200")], false)
        .unwrap();
    stream.response_body(b"{}", true).unwrap();
    stream.complete().unwrap();
    let harness = traced(plugin.logs().into_iter().map(|l| l.message));

    let upstream = envoy::TestServer::echo().unwrap();
    let wasm = WasmFile::new("fidelity-pause", &bytes);
    let envoy = EnvoyBuilder::new()
        .wasm_filter(WasmFilter::new(&wasm.path))
        .upstream(upstream.addr())
        .start()
        .unwrap();
    let response = envoy.send(&HttpRequest::post("/p", "12345")).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(upstream.requests()[0].body, b"12345");
    let mut envoy_trace = Vec::new();
    for _ in 0..50 {
        envoy_trace = traced(envoy.log().lines().map(str::to_string));
        if envoy_trace.iter().any(|l| l.starts_with("delete")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        harness,
        [
            "request_headers 2 0",
            "resume",
            "request_body 5 1",
            "response_headers 2 0",
            "delete 2"
        ]
    );
    assert_eq!(envoy_trace, harness);
}

/// Traps in request headers when the request carries `x-crash`.
fn crashing_module() -> String {
    let mut t = Strings::new();
    let crash = t.s("x-crash");
    module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.eqz (call $proxy_get_header_map_value (i32.const 0) {crash} (i32.const 512) (i32.const 516)))
      (then (unreachable)))
    (i32.const 0))"#,
        t.data()
    ))
}

#[test]
fn a_crashed_vm_fails_closed_open_or_reloads_in_both() {
    if envoy::skip_requested() {
        return;
    }
    let bytes = wat::parse_str(crashing_module()).unwrap();
    let wasm = WasmFile::new("fidelity-crash", &bytes);
    for (harness_policy, envoy_policy) in [
        (
            wasmesh_harness::FailurePolicy::FailClosed,
            envoy::FailurePolicy::FailClosed,
        ),
        (
            wasmesh_harness::FailurePolicy::FailOpen,
            envoy::FailurePolicy::FailOpen,
        ),
    ] {
        let plugin = Harness::from_bytes(&bytes)
            .unwrap()
            .failure_policy(harness_policy)
            .start()
            .unwrap();
        let headers = [
            (":authority", "localhost"),
            (":method", "GET"),
            (":path", "/"),
        ];
        let mut crashing = plugin.http_stream();
        assert!(crashing
            .request_headers(&[headers.as_slice(), &[("x-crash", "1")]].concat(), true)
            .is_err());
        let mut later = plugin.http_stream();
        later.request_headers(&headers, true).unwrap();
        let harness_results: Vec<(u32, Option<String>)> = [&crashing, &later]
            .iter()
            .map(|s| match s.local_reply() {
                Some(reply) => (reply.status, Some(reply.details)),
                None => (200, None),
            })
            .collect();

        let envoy = EnvoyBuilder::new()
            .wasm_filter(WasmFilter::new(&wasm.path).failure_policy(envoy_policy))
            .direct_response(200, "ok")
            .start()
            .unwrap();
        let envoy_results: Vec<(u32, Option<String>)> = [
            HttpRequest::get("/").header("x-crash", "1"),
            HttpRequest::get("/"),
        ]
        .iter()
        .map(|request| {
            let response = envoy.send(request).unwrap();
            let details = response
                .headers
                .iter()
                .find(|(k, _)| k == envoy::RESPONSE_CODE_DETAILS_HEADER)
                .map(|(_, v)| v.clone())
                .filter(|d| d != "direct_response");
            (u32::from(response.status), details)
        })
        .collect();
        assert_eq!(harness_results, envoy_results, "{harness_policy:?}");
    }
}

/// Writes an empty shared-data value and reads it back: what the module gets (status, pointer,
/// size, whether a CAS token came with it), and how writes with that token fare.
fn empty_shared_value_module() -> String {
    let mut t = Strings::new();
    let key = t.s("wasmesh.fidelity.empty");
    let absent = t.s("wasmesh.fidelity.absent");
    let write = t.s("FID write_empty");
    let read = t.s("FID read_empty status_ptr");
    let size_cas = t.s("FID read_empty size_has_token");
    let with_token = t.s("FID write_with_token stale_token");
    let missing = t.s("FID read_absent status_size");
    module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $cas i32)
    (call $log1 {write} (call $proxy_set_shared_data {key} (i32.const 600) (i32.const 0) (i32.const 0)))
    ;; Sentinels: what the host leaves untouched shows.
    (i32.store (i32.const 512) (i32.const 77))
    (i32.store (i32.const 516) (i32.const 77))
    (i32.store (i32.const 520) (i32.const 0))
    (call $log2 {read}
      (call $proxy_get_shared_data {key} (i32.const 512) (i32.const 516) (i32.const 520))
      (i32.load (i32.const 512)))
    (local.set $cas (i32.load (i32.const 520)))
    (call $log2 {size_cas} (i32.load (i32.const 516)) (i32.ne (local.get $cas) (i32.const 0)))
    (call $log2 {with_token}
      (call $proxy_set_shared_data {key} (i32.const 600) (i32.const 0) (local.get $cas))
      (call $proxy_set_shared_data {key} (i32.const 600) (i32.const 0) (local.get $cas)))
    (i32.store (i32.const 516) (i32.const 77))
    (call $log2 {missing}
      (call $proxy_get_shared_data {absent} (i32.const 512) (i32.const 516) (i32.const 520))
      (i32.load (i32.const 516)))
    (i32.const 0))"#,
        t.data()
    ))
}

#[test]
fn an_empty_shared_value_comes_back_as_a_null_pointer_with_its_cas_token_in_both() {
    if envoy::skip_requested() {
        return;
    }
    let bytes = wat::parse_str(empty_shared_value_module()).unwrap();
    let plugin = Harness::from_bytes(&bytes).unwrap().start().unwrap();
    plugin
        .http_stream()
        .request_headers(
            &[
                (":authority", "localhost"),
                (":method", "GET"),
                (":path", "/"),
                (":scheme", "http"),
            ],
            true,
        )
        .unwrap();
    let harness = traced(plugin.logs().into_iter().map(|l| l.message));
    assert_eq!(
        harness,
        [
            "write_empty 0",
            // Ok, null pointer, size 0, and a token.
            "read_empty status_ptr 0 0",
            "read_empty size_has_token 0 1",
            // The token makes the write conditional: the first succeeds, the stale one fails.
            "write_with_token stale_token 0 8",
            // A key that was never written is NotFound, and the size is left alone.
            "read_absent status_size 1 77",
        ]
    );

    let wasm = WasmFile::new("fidelity-empty", &bytes);
    let envoy = EnvoyBuilder::new()
        .wasm_filter(WasmFilter::new(&wasm.path))
        .direct_response(200, "ok")
        .start()
        .unwrap();
    assert_eq!(envoy.send(&HttpRequest::get("/")).unwrap().status, 200);
    let mut envoy_trace = Vec::new();
    for _ in 0..50 {
        envoy_trace = traced(envoy.log().lines().map(str::to_string));
        if envoy_trace.len() >= harness.len() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(envoy_trace, harness);
}

/// Defines a counter, a gauge and a histogram and records each once per request.
fn metrics_module() -> String {
    let mut t = Strings::new();
    let counter = t.s("probe_requests");
    let gauge = t.s("probe.in_flight");
    let histogram = t.s("probe_sizes");
    module(&format!(
        r#"{}
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $proxy_define_metric (i32.const 0) {counter} (i32.const 3000)))
    (drop (call $proxy_define_metric (i32.const 1) {gauge} (i32.const 3004)))
    (drop (call $proxy_define_metric (i32.const 2) {histogram} (i32.const 3008)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $proxy_increment_metric (i32.load (i32.const 3000)) (i64.const 1)))
    (drop (call $proxy_record_metric (i32.load (i32.const 3004)) (i64.const 7)))
    (drop (call $proxy_record_metric (i32.load (i32.const 3008)) (i64.const 42)))
    (i32.const 0))"#,
        t.data()
    ))
}

#[test]
fn metric_names_are_filed_as_envoy_files_them() {
    if envoy::skip_requested() {
        return;
    }
    let bytes = wat::parse_str(metrics_module()).unwrap();
    let wasm = WasmFile::new("fidelity-metrics", &bytes);
    let envoy = EnvoyBuilder::new()
        .wasm_filter(WasmFilter::new(&wasm.path))
        .direct_response(200, "ok")
        .start()
        .unwrap();
    envoy.send(&HttpRequest::get("/")).unwrap();
    let stats = envoy.stats().unwrap();
    let prometheus = envoy.admin_get("/stats/prometheus").unwrap().text();

    let plugin = Harness::from_bytes(&bytes).unwrap().start().unwrap();
    plugin.http_stream().request_headers(GET, true).unwrap();
    for (name, value) in plugin.metrics() {
        match value {
            wasmesh_harness::MetricValue::Histogram(values) => {
                assert_eq!(values, [42]);
                // Envoy merges histograms on its flush interval: only the name is checked.
                assert!(stats
                    .keys()
                    .all(|k| !k.starts_with(&envoy_stat_name(&name))));
                assert!(
                    prometheus.contains(&format!("# TYPE {} histogram", prometheus_name(&name)))
                );
            }
            value => {
                let value = value.value().unwrap();
                assert_eq!(stats.get(&envoy_stat_name(&name)), Some(&value), "{name}");
                assert!(
                    prometheus.contains(&format!("\n{}{{}} {value}\n", prometheus_name(&name))),
                    "{name} in\n{prometheus}"
                );
            }
        }
    }
    assert_eq!(
        envoy_stat_name("probe.in_flight"),
        "wasmcustom.probe.in_flight"
    );
    assert_eq!(prometheus_name("probe.in_flight"), "probe_in_flight");
}
