#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! HTTP and gRPC callouts: dispatch, mock answers, explicit answers, failure and timeouts.

mod common;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use wasmesh_harness::{CalloutReply, GrpcReply, HarnessError, StreamState};

/// A filter that calls `authz` from request headers and resumes from the response.
fn authz_filter() -> String {
    let mut t = Strings::new();
    let cluster = t.s("authz");
    let headers = t.map(&[
        (":method", "POST"),
        (":path", "/check"),
        (":authority", "authz.local"),
        ("X-Trace", "t1"),
    ]);
    let body = t.s("payload");
    let trailers = t.map(&[("x-tr", "v")]);
    let dispatch = t.s("dispatch");
    let response = t.s("response");
    let status = t.s(":status");
    let code = t.s("status");
    let wat = format!(
        r#"{}
  (global $stream (mut i32) (i32.const 0))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (global.set $stream (local.get $ctx))
    (call $log2 {dispatch}
      (call $proxy_http_call {cluster} {headers} {body} {trailers} (i32.const 500) (i32.const 520))
      (i32.load (i32.const 520)))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param $root i32) (param $token i32) (param $nh i32) (param $body i32) (param $nt i32)
    (call $log2 {response} (local.get $root) (local.get $token))
    (call $log2 {response} (local.get $nh) (local.get $body))
    (if (i32.eqz (call $proxy_get_header_map_value (i32.const 6) {status} (i32.const 512) (i32.const 516)))
      (then (call $info_ret)))
    (if (i32.eqz (call $proxy_get_buffer_bytes (i32.const 4) (i32.const 0) (local.get $body) (i32.const 512) (i32.const 516)))
      (then (if (local.get $body) (then (call $info_ret)))))
    (drop (call $proxy_get_status (i32.const 520) (i32.const 512) (i32.const 516)))
    (call $log1 {code} (i32.load (i32.const 520)))
    (if (i32.load (i32.const 516)) (then (call $info_ret)))
    (drop (call $proxy_set_effective_context (global.get $stream)))
    (drop (call $proxy_continue_stream (i32.const 0))))"#,
        t.data()
    );
    module(&wat)
}

#[test]
fn a_mock_handler_answers_after_the_callback_returns_and_the_filter_resumes() {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let recorder = seen.clone();
    let plugin = builder(&authz_filter())
        .http_callout_handler(move |callout| {
            recorder.borrow_mut().push(callout.clone());
            CalloutReply::ok(200, "allowed")
        })
        .start()
        .unwrap();
    let mut stream = plugin.http_stream();
    let outcome = stream.request_headers(GET, true).unwrap();
    assert_eq!(outcome.action(), wasmesh_harness::Action::Pause);
    assert_eq!(stream.request_state(), StreamState::Continued);
    let callout = seen.borrow()[0].clone();
    assert_eq!(callout.token, 4, "Envoy numbers HTTP callouts 4, 8, ...");
    assert_eq!(callout.upstream, "authz");
    assert_eq!(callout.context_id, 2);
    assert_eq!(callout.timeout, Duration::from_millis(500));
    assert_eq!(callout.body, b"payload");
    assert_eq!(
        callout.header("x-trace"),
        Some("t1"),
        "keys are lower-cased"
    );
    assert_eq!(callout.header("content-length"), Some("7"));
    assert_eq!(
        callout.trailers,
        vec![("x-tr".to_string(), "v".to_string())]
    );
    // Envoy's async client and router add these (`callouts_vs_envoy.rs`).
    assert_eq!(callout.header("x-envoy-internal"), Some("true"));
    assert_eq!(
        callout.header("x-envoy-expected-rq-timeout-ms"),
        Some("500")
    );
    // The response goes to the root context (1), as in Envoy, with three headers: `:status`,
    // `content-length` and the `x-envoy-upstream-service-time` Envoy's router adds.
    assert_eq!(
        messages(&plugin),
        vec![
            "dispatch 0 4",
            "response 1 4",
            "response 3 7",
            "200",
            "allowed",
            "status 0"
        ]
    );
    assert_eq!(stream.http_callouts().len(), 1);
    assert!(plugin.pending_http_callouts().is_empty());
}

#[test]
fn a_callout_left_pending_times_out_with_envoys_504_when_the_clock_passes_its_timeout() {
    let plugin = builder(&authz_filter()).start().unwrap();
    let mut stream = plugin.http_stream();
    stream.request_headers(GET, true).unwrap();
    assert_eq!(stream.request_state(), StreamState::Paused);
    assert_eq!(plugin.pending_http_callouts().len(), 1);
    plugin.advance_clock(Duration::from_millis(499)).unwrap();
    assert_eq!(messages(&plugin), vec!["dispatch 0 4"]);
    plugin.advance_clock(Duration::from_millis(1)).unwrap();
    assert_eq!(
        messages(&plugin)[1..],
        [
            "response 1 4",
            "response 3 24",
            "504",
            "upstream request timeout",
            "status 0"
        ]
    );
    assert_eq!(stream.request_state(), StreamState::Continued);
}

#[test]
fn a_failed_callout_delivers_no_headers_and_broken_connection_status() {
    let plugin = builder(&authz_filter()).start().unwrap();
    let mut stream = plugin.http_stream();
    stream.request_headers(GET, true).unwrap();
    plugin
        .respond_http_callout(4, CalloutReply::Failure)
        .unwrap();
    assert_eq!(
        messages(&plugin)[1..],
        ["response 1 4", "response 0 0", "status 11", "reset"]
    );
    // Answering twice is a harness misuse, not a crash.
    assert!(matches!(
        plugin.respond_http_callout(4, CalloutReply::ok(200, "")),
        Err(HarnessError::InvalidUse(_))
    ));
    // Time passing after the answer fires no timeout.
    plugin.advance_clock(Duration::from_secs(5)).unwrap();
    assert_eq!(plugin.logs().len(), 5);
}

#[test]
fn http_call_arguments_are_validated_like_envoy() {
    let mut t = Strings::new();
    let known = t.s("authz");
    let unknown = t.s("nowhere");
    let complete = t.map(&[(":method", "GET"), (":path", "/"), (":authority", "a")]);
    let no_authority = t.map(&[(":method", "GET"), (":path", "/")]);
    let empty = t.s("");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (call $log_status (call $proxy_http_call {unknown} {complete} {empty} (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 520)))
    (call $log_status (call $proxy_http_call {known} {no_authority} {empty} (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 520)))
    (call $log_status (call $proxy_http_call {known} {complete} {empty} (i32.const 0) (i32.const 0) (i32.const -1) (i32.const 520)))
    (call $log_status (call $proxy_http_call {known} {complete} {empty} (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 999999)))
    (call $log_status (call $proxy_http_call {known} {complete} {empty} (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 520)))
    (i32.const 1))"#,
        t.data()
    ));
    let plugin = builder(&wat).cluster("authz").start().unwrap();
    // unknown cluster, missing :authority, negative timeout, bad token pointer, then OK.
    assert_eq!(messages(&plugin), vec!["2", "2", "2", "6", "0"]);
    // The worker's call and the main-thread VM's (the canary's was cancelled with it).
    let pending = plugin.pending_http_callouts();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].timeout, Duration::ZERO);
    // No timeout: the calls stay pending however long we wait.
    plugin.advance_clock(Duration::from_secs(3600)).unwrap();
    assert_eq!(plugin.pending_http_callouts().len(), 2);
}

fn grpc_filter() -> String {
    let mut t = Strings::new();
    let cluster = t.s("ext_authz");
    let service = t.s("envoy.service.auth.v3.Authorization");
    let method = t.s("Check");
    let metadata = t.map(&[("x-md", "1")]);
    let request = t.s("req");
    let call = t.s("call");
    let stream = t.s("stream");
    let receive = t.s("receive");
    let close = t.s("close");
    let initial = t.s("initial");
    let trailing = t.s("trailing");
    let m1 = t.s("m1");
    let wat = format!(
        r#"{}
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (call $log2 {call}
      (call $proxy_grpc_call {cluster} {service} {method} {metadata} {request} (i32.const 1000) (i32.const 520))
      (i32.load (i32.const 520)))
    (call $log2 {stream}
      (call $proxy_grpc_stream {cluster} {service} {method} {metadata} (i32.const 520))
      (i32.load (i32.const 520)))
    (call $log_status (call $proxy_grpc_send (i32.load (i32.const 520)) {m1} (i32.const 0)))
    ;; a call token is not a stream
    (call $log_status (call $proxy_grpc_send (i32.const 5) {m1} (i32.const 0)))
    ;; unknown call token
    (call $log_status (call $proxy_grpc_cancel (i32.const 97)))
    (i32.const 1))
  (func (export "proxy_on_grpc_receive_initial_metadata") (param $ctx i32) (param $token i32) (param $n i32)
    (call $log2 {initial} (local.get $token) (local.get $n)))
  (func (export "proxy_on_grpc_receive") (param $ctx i32) (param $token i32) (param $size i32)
    (call $log2 {receive} (local.get $token) (local.get $size))
    (drop (call $proxy_get_buffer_bytes (i32.const 5) (i32.const 0) (local.get $size) (i32.const 512) (i32.const 516)))
    (call $info_ret))
  (func (export "proxy_on_grpc_receive_trailing_metadata") (param $ctx i32) (param $token i32) (param $n i32)
    (call $log2 {trailing} (local.get $token) (local.get $n)))
  (func (export "proxy_on_grpc_close") (param $ctx i32) (param $token i32) (param $status i32)
    (call $log2 {close} (local.get $token) (local.get $status))
    (drop (call $proxy_get_status (i32.const 520) (i32.const 512) (i32.const 516)))
    (call $info_ret))"#,
        t.data()
    );
    module(&wat)
}

#[test]
fn grpc_unary_call_is_answered_by_the_mock_with_a_message() {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let recorder = seen.clone();
    let plugin = builder(&grpc_filter())
        .grpc_callout_handler(move |call| {
            recorder.borrow_mut().push(call.clone());
            GrpcReply::Response(b"allowed".to_vec())
        })
        .start()
        .unwrap();
    let call = seen.borrow()[0].clone();
    assert_eq!(call.token, 5);
    assert!(!call.is_stream);
    assert_eq!(call.cluster, "ext_authz");
    assert_eq!(call.service, "envoy.service.auth.v3.Authorization");
    assert_eq!(call.method, "Check");
    assert_eq!(call.messages, vec![b"req".to_vec()]);
    assert_eq!(
        call.initial_metadata,
        vec![("x-md".to_string(), "1".to_string())]
    );
    assert_eq!(call.timeout, Duration::from_secs(1));
    assert_eq!(
        messages(&plugin),
        vec![
            "call 0 5",
            "stream 0 6",
            "0",
            "2",
            "1",
            "receive 5 7",
            "allowed"
        ]
    );
}

#[test]
fn grpc_errors_timeouts_and_streams_reach_the_module() {
    // One VM's calls and streams (the main-thread VM would open the same tokens).
    let plugin = builder(&grpc_filter())
        .main_thread_vms(false)
        .start()
        .unwrap();
    plugin.clear_logs();
    // The unary call times out: Envoy 1.40 reports UNAVAILABLE with the router's message and
    // its response code details.
    plugin.advance_clock(Duration::from_secs(1)).unwrap();
    assert_eq!(
        messages(&plugin),
        vec!["close 5 14", "upstream request timeout{response_timeout}"]
    );
    plugin.clear_logs();

    let stream = plugin
        .pending_grpc_callouts()
        .into_iter()
        .find(|c| c.is_stream)
        .unwrap();
    assert_eq!(stream.messages, vec![b"m1".to_vec()]);
    plugin
        .grpc_stream_initial_metadata(6, &[("a", "1"), ("b", "2")])
        .unwrap();
    plugin.grpc_stream_message(6, b"chunk").unwrap();
    plugin
        .grpc_stream_trailing_metadata(6, &[("grpc-status", "0")])
        .unwrap();
    plugin.grpc_stream_close(6, 0, "").unwrap();
    assert_eq!(
        messages(&plugin),
        vec![
            "initial 6 2",
            "receive 6 5",
            "chunk",
            "trailing 6 1",
            "close 6 0",
            ""
        ]
    );
    assert!(plugin.grpc_stream_message(6, b"late").is_err());
}

#[test]
fn grpc_error_reply_carries_status_and_message() {
    let plugin = builder(&grpc_filter())
        .grpc_callout_handler(|_| GrpcReply::Error {
            status: 7,
            message: "denied".into(),
        })
        .start()
        .unwrap();
    // Envoy 1.40 appends the response code details of the service's answer.
    assert!(
        messages(&plugin).ends_with(&["close 5 7".to_string(), "denied{via_upstream}".to_string()])
    );
}
