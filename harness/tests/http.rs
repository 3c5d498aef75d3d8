#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! HTTP stream hostcalls and Envoy's filter-manager semantics.

mod common;
use common::*;
use wasmesh_harness::{headermap, Action, StreamState};

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn header_map_pairs_round_trip_byte_for_byte_and_edits_follow_envoy() {
    let mut t = Strings::new();
    let new_map = t.map(&[
        ("x-rep", "first"),
        (":method", "POST"),
        ("x-rep", "second"),
        ("x-gone", "1"),
        (":path", "/new"),
    ]);
    let rep = t.s("x-rep");
    let gone = t.s("x-gone");
    let replaced = t.s("replaced");
    let key_upper = t.s("X-Upper");
    let value_upper = t.s("Keep-Case");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    ;; 1: the serialized map exactly as the host hands it over.
    (drop (call $proxy_get_header_map_pairs (i32.const 0) (i32.const 512) (i32.const 516)))
    (call $info_ret)
    ;; replace everything, pseudo-headers given out of order
    (call $log_status (call $proxy_set_header_map_pairs (i32.const 0) {new_map}))
    ;; repeated key: Envoy returns the first value
    (drop (call $proxy_get_header_map_value (i32.const 0) {rep} (i32.const 512) (i32.const 516)))
    (call $info_ret)
    (drop (call $proxy_replace_header_map_value (i32.const 0) {rep} {replaced}))
    (drop (call $proxy_remove_header_map_value (i32.const 0) {gone}))
    (drop (call $proxy_add_header_map_value (i32.const 0) {key_upper} {value_upper}))
    ;; absent key
    (call $log_status (call $proxy_get_header_map_value (i32.const 0) {gone} (i32.const 512) (i32.const 516)))
    ;; unknown map type
    (call $log_status (call $proxy_get_header_map_value (i32.const 9) {rep} (i32.const 512) (i32.const 516)))
    (drop (call $proxy_get_header_map_size (i32.const 0) (i32.const 512)))
    (call $log_status (i32.load (i32.const 512)))
    (i32.const 0))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    let sent = [
        (":method", "GET"),
        (":path", "/a"),
        (":authority", "h"),
        ("x-multi", "1"),
        ("x-multi", "2"),
    ];
    stream.request_headers(&sent, true).unwrap();
    let logs = plugin.logs();
    assert_eq!(
        logs[0].message.as_bytes(),
        headermap::serialize(&sent).as_slice()
    );
    let expected_final = pairs(&[
        (":method", "POST"),
        (":path", "/new"),
        ("x-rep", "replaced"),
        ("x-upper", "Keep-Case"),
    ]);
    let size: usize = expected_final.iter().map(|(k, v)| k.len() + v.len()).sum();
    let rest: Vec<String> = logs[1..].iter().map(|l| l.message.clone()).collect();
    assert_eq!(rest, vec!["0", "first", "1", "2", &size.to_string()]);
    assert_eq!(stream.request_headers_now(), expected_final);
}

#[test]
fn request_maps_are_only_reachable_while_envoy_holds_them() {
    let mut t = Strings::new();
    let path = t.s(":path");
    let k = t.s("x-late");
    let response = t.s("response");
    let on_log = t.s("on_log");
    let path_property = t.path(&["request", "path"]);
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $info {response})
    ;; request headers were let through: Envoy no longer holds them
    (call $log_status (call $proxy_get_header_map_value (i32.const 0) {path} (i32.const 512) (i32.const 516)))
    (drop (call $proxy_get_header_map_pairs (i32.const 0) (i32.const 512) (i32.const 516)))
    (call $log_status (i32.load (i32.const 516)))
    (call $log_status (call $proxy_get_property {path_property} (i32.const 512) (i32.const 516)))
    ;; response headers are readable and writable
    (call $log_status (call $proxy_add_header_map_value (i32.const 2) {k} {k}))
    (i32.const 0))
  (func (export "proxy_on_log") (param i32)
    (call $info {on_log})
    ;; the access log sees the request headers, read-only
    (call $log_status (call $proxy_get_header_map_value (i32.const 0) {path} (i32.const 512) (i32.const 516)))
    (call $info_ret)
    (call $log_status (call $proxy_add_header_map_value (i32.const 0) {k} {k}))
    (call $log_status (call $proxy_get_property {path_property} (i32.const 512) (i32.const 516)))
    ;; request trailers are not part of the access-log view
    (call $log_status (call $proxy_get_header_map_value (i32.const 1) {k} (i32.const 512) (i32.const 516))))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    stream.request_headers(GET, true).unwrap();
    stream
        .response_headers(&[(":status", "200")], true)
        .unwrap();
    assert_eq!(stream.response_header("x-late").as_deref(), Some("x-late"));
    stream.complete().unwrap();
    assert_eq!(
        messages(&plugin),
        vec![
            "response",
            "2",
            "0",
            "1",
            "0", // BadArgument, empty pairs, NotFound, Ok
            "on_log",
            "0",
            "/hello?x=1",
            "2",
            "0",
            "1"
        ]
    );
}

#[test]
fn stop_iteration_and_buffer_accumulates_chunks_and_the_filter_can_rewrite_the_whole_body() {
    let mut t = Strings::new();
    let body = t.s("body");
    let replacement = t.s("REPLACED");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (call $log2 {body} (local.get $size) (local.get $eos))
    (if (result i32) (local.get $eos)
      (then
        (drop (call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (local.get $size) (i32.const 512) (i32.const 516)))
        (call $info_ret)
        (call $log_status (call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (local.get $size) {replacement}))
        (i32.const 0))
      (else (i32.const 1))))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    stream
        .request_headers(&[(":method", "POST"), (":path", "/")], false)
        .unwrap();
    assert_eq!(
        stream.request_body(b"ab", false).unwrap().action(),
        Action::Pause
    );
    assert_eq!(stream.request_state(), StreamState::Paused);
    assert!(stream.request_body_now().is_empty());
    stream.request_body(b"cd", false).unwrap();
    let last = stream.request_body(b"ef", true).unwrap();
    assert_eq!(last.action(), Action::Continue);
    assert_eq!(
        messages(&plugin),
        vec!["body 2 0", "body 4 0", "body 6 1", "abcdef", "0"]
    );
    assert_eq!(stream.request_body_now(), b"REPLACED");
    assert_eq!(stream.request_state(), StreamState::Continued);
}

#[test]
fn set_buffer_bytes_prepends_appends_and_refuses_inner_edits() {
    let mut t = Strings::new();
    let pre = t.s("<");
    let post = t.s(">");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (call $log_status (call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0) {pre}))
    (call $log_status (call $proxy_set_buffer_bytes (i32.const 0) (i32.const -1) (i32.const 0) {post}))
    (call $log_status (call $proxy_set_buffer_bytes (i32.const 0) (i32.const 2) (i32.const 1) {post}))
    (call $log_status (call $proxy_set_buffer_bytes (i32.const 6) (i32.const 0) (i32.const 0) {post}))
    (call $log_status (call $proxy_set_buffer_bytes (i32.const 7) (i32.const 0) (i32.const 0) {post}))
    (drop (call $proxy_get_buffer_status (i32.const 0) (i32.const 512) (i32.const 516)))
    (call $log_status (i32.load (i32.const 512)))
    (i32.const 0))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    stream
        .request_headers(&[(":method", "POST")], false)
        .unwrap();
    stream.request_body(b"data", true).unwrap();
    // prepend OK, append OK, inner edit BadArgument; VM and plugin configuration are read-only
    assert_eq!(messages(&plugin), vec!["0", "0", "2", "2", "2", "6"]);
    assert_eq!(stream.request_body_now(), b"<data>");
}

#[test]
fn pausing_at_headers_holds_body_and_trailers_until_continue_stream() {
    let mut t = Strings::new();
    let body = t.s("body");
    let trailers = t.s("trailers");
    let tick = t.s("resume");
    let wat = module(&format!(
        r#"{}
  (global $stream (mut i32) (i32.const 0))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $proxy_set_tick_period_milliseconds (i32.const 1000))) (i32.const 1))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (global.set $stream (local.get $ctx))
    (i32.const 1))
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (call $log2 {body} (local.get $size) (local.get $eos)) (i32.const 0))
  (func (export "proxy_on_request_trailers") (param $ctx i32) (param $n i32) (result i32)
    (call $log1 {trailers} (local.get $n)) (i32.const 0))
  (func (export "proxy_on_tick") (param $root i32)
    (call $info {tick})
    (call $log_status (call $proxy_set_effective_context (global.get $stream)))
    (call $log_status (call $proxy_continue_stream (i32.const 0))))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    let headers = stream
        .request_headers(&[(":method", "POST"), (":path", "/")], false)
        .unwrap();
    // Envoy turns StopIteration from headers into StopAllIterationAndWatermark.
    assert_eq!(headers.action(), Action::Pause);
    assert_eq!(
        headers.effective_action,
        Action::StopAllIterationAndWatermark
    );
    let held = stream.request_body(b"12345", false).unwrap();
    assert!(!held.invoked);
    stream.request_trailers(&[("x-t", "1")]).unwrap();
    assert!(messages(&plugin).is_empty());
    plugin
        .advance_clock(std::time::Duration::from_secs(1))
        .unwrap();
    assert_eq!(
        messages(&plugin),
        vec!["resume", "0", "0", "body 5 0", "trailers 1"]
    );
    assert_eq!(stream.request_body_now(), b"12345");
    assert_eq!(stream.request_state(), StreamState::Continued);
    assert_eq!(stream.request_trailers_now(), Some(pairs(&[("x-t", "1")])));
}

#[test]
fn local_reply_ends_the_stream_and_passes_through_the_filters_response_callbacks() {
    let mut t = Strings::new();
    let details = t.s("denied by policy");
    let body = t.s("nope");
    let extra = t.map(&[("x-reason", "policy")]);
    let seen = t.s("x-seen");
    let one = t.s("1");
    let response = t.s("response_headers");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $log_status (call $proxy_send_local_response (i32.const 403) {details} {body} {extra} (i32.const -1)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (call $log2 {response} (local.get $n) (local.get $eos))
    (drop (call $proxy_add_header_map_value (i32.const 2) {seen} {one}))
    (i32.const 0))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    let outcome = stream.request_headers(GET, true).unwrap();
    assert_eq!(outcome.action(), Action::Continue);
    assert_eq!(
        outcome.effective_action,
        Action::StopAllIterationAndWatermark
    );
    let reply = outcome.local_reply().unwrap();
    assert_eq!(reply.status, 403);
    assert_eq!(reply.details, "denied_by_policy");
    assert_eq!(reply.body, b"nope");
    assert_eq!(reply.grpc_status, None);
    assert_eq!(
        reply.headers,
        pairs(&[
            (":status", "403"),
            ("x-reason", "policy"),
            ("content-length", "4"),
            ("content-type", "text/plain"),
            ("x-seen", "1"),
        ])
    );
    assert_eq!(messages(&plugin), vec!["0", "response_headers 4 0"]);
    assert_eq!(stream.request_state(), StreamState::Replied);
    assert_eq!(stream.response_state(), StreamState::Replied);
    assert_eq!(
        stream.response_code_details().as_deref(),
        Some("denied_by_policy")
    );
    // Nothing reaches the filter once the stream was answered.
    let late = stream.request_body(b"x", true).unwrap();
    assert!(!late.invoked);
}

#[test]
fn local_reply_to_a_grpc_request_is_trailers_only_with_the_grpc_status() {
    let mut t = Strings::new();
    let details = t.s("rbac");
    let body = t.s("denied");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $proxy_send_local_response (i32.const 403) {details} {body} (i32.const 0) (i32.const 0) (i32.const 7)))
    (i32.const 1))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    let outcome = stream
        .request_headers(
            &[
                (":method", "POST"),
                (":path", "/svc/M"),
                ("content-type", "application/grpc"),
            ],
            false,
        )
        .unwrap();
    let reply = outcome.local_reply().unwrap();
    assert_eq!(reply.grpc_status, Some(7));
    assert_eq!(
        reply.headers,
        pairs(&[
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", "7"),
            ("grpc-message", "denied"),
        ])
    );
    assert!(reply.body.is_empty());
}

#[test]
fn close_stream_resets_the_stream_and_ends_it() {
    let mut t = Strings::new();
    let log = t.s("log");
    let delete = t.s("delete");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $log_status (call $proxy_close_stream (i32.const 0)))
    (call $log_status (call $proxy_close_stream (i32.const 7)))
    (i32.const 1))
  (func (export "proxy_on_log") (param $ctx i32) (call $log1 {log} (local.get $ctx)))
  (func (export "proxy_on_delete") (param $ctx i32) (call $log1 {delete} (local.get $ctx)))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    stream.request_headers(GET, true).unwrap();
    assert_eq!(messages(&plugin), vec!["0", "2", "log 2", "delete 2"]);
    assert_eq!(stream.request_state(), StreamState::Reset);
    assert_eq!(
        stream.response_code_details().as_deref(),
        Some("wasm_close_stream")
    );
    // Completing an already-ended stream does not call the module again.
    stream.complete().unwrap();
    assert_eq!(plugin.logs().len(), 4);
}

#[test]
fn trailers_can_be_added_while_the_last_body_chunk_is_processed() {
    let mut t = Strings::new();
    let key = t.s("x-checksum");
    let value = t.s("abc");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (call $log_status (call $proxy_add_header_map_value (i32.const 1) {key} {value}))
    (i32.const 0))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    stream
        .request_headers(&[(":method", "POST")], false)
        .unwrap();
    stream.request_body(b"a", false).unwrap();
    stream.request_body(b"b", true).unwrap();
    // Not possible before the end of the stream (BadArgument), possible on the last chunk.
    assert_eq!(messages(&plugin), vec!["2", "0"]);
    assert_eq!(
        stream.request_trailers_now(),
        Some(pairs(&[("x-checksum", "abc")]))
    );
}

#[test]
fn response_direction_buffers_modifies_and_stop_no_buffer_drops_data() {
    let mut t = Strings::new();
    let key = t.s("server");
    let value = t.s("wasm");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $proxy_replace_header_map_value (i32.const 2) {key} {value})) (i32.const 0))
  (func (export "proxy_on_response_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (if (result i32) (i32.eq (local.get $size) (i32.const 4))
      (then (i32.const 3))
      (else (i32.const 0))))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    stream.request_headers(GET, true).unwrap();
    stream
        .response_headers(&[(":status", "200"), ("server", "upstream")], false)
        .unwrap();
    assert_eq!(stream.response_header("server").as_deref(), Some("wasm"));
    let dropped = stream.response_body(b"drop", false).unwrap();
    assert_eq!(dropped.action(), Action::StopIterationNoBuffer);
    stream.response_body(b"kept!", true).unwrap();
    assert_eq!(stream.response_body_now(), b"kept!");
}

#[test]
fn a_response_cannot_arrive_before_the_request_reached_the_upstream() {
    let plugin = builder(&module(
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 1))"#,
    ))
    .start()
    .unwrap();
    let mut stream = plugin.http_stream();
    stream.request_headers(GET, true).unwrap();
    assert!(stream
        .response_headers(&[(":status", "200")], true)
        .is_err());
    assert!(stream.request_headers(GET, true).is_err(), "headers twice");
}

#[test]
fn a_client_reset_logs_and_destroys_the_stream_and_marks_it_reset() {
    let mut t = Strings::new();
    let log = t.s("log");
    let done = t.s("done");
    let delete = t.s("delete");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param $ctx i32) (call $log1 {log} (local.get $ctx)))
  (func (export "proxy_on_done") (param $ctx i32) (result i32) (call $log1 {done} (local.get $ctx)) (i32.const 1))
  (func (export "proxy_on_delete") (param $ctx i32) (call $log1 {delete} (local.get $ctx)))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    stream.request_headers(GET, false).unwrap();
    assert_eq!(stream.request_state(), StreamState::Paused);
    stream.reset().unwrap();
    assert_eq!(messages(&plugin), vec!["log 2", "done 2", "delete 2"]);
}

#[test]
fn partial_body_reads_clamp_to_the_buffer_and_response_continue_resumes_the_response() {
    let mut t = Strings::new();
    let tick = t.s("tick");
    let wat = module(&format!(
        r#"{}
  (global $stream (mut i32) (i32.const 0))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $proxy_set_tick_period_milliseconds (i32.const 10))) (i32.const 1))
  (func (export "proxy_on_response_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (global.set $stream (local.get $ctx))
    ;; bytes 1..3 of "abcd", then a read past the end, then a read starting past the end
    (drop (call $proxy_get_buffer_bytes (i32.const 1) (i32.const 1) (i32.const 2) (i32.const 512) (i32.const 516)))
    (call $info_ret)
    (drop (call $proxy_get_buffer_bytes (i32.const 1) (i32.const 2) (i32.const 100) (i32.const 512) (i32.const 516)))
    (call $info_ret)
    (call $log_status (call $proxy_get_buffer_bytes (i32.const 1) (i32.const 9) (i32.const 1) (i32.const 512) (i32.const 516)))
    (call $log_status (i32.load (i32.const 516)))
    (i32.const 2))
  (func (export "proxy_on_tick") (param i32)
    (if (global.get $stream)
      (then
        (call $info {tick})
        (drop (call $proxy_set_effective_context (global.get $stream)))
        (drop (call $proxy_continue_stream (i32.const 1)))
        (global.set $stream (i32.const 0)))))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    stream.request_headers(GET, true).unwrap();
    stream
        .response_headers(&[(":status", "200")], false)
        .unwrap();
    let outcome = stream.response_body(b"abcd", true).unwrap();
    assert_eq!(outcome.action(), Action::StopIterationAndWatermark);
    assert_eq!(stream.response_state(), StreamState::Paused);
    assert!(stream.response_body_now().is_empty());
    plugin
        .advance_clock(std::time::Duration::from_millis(10))
        .unwrap();
    assert_eq!(messages(&plugin), vec!["bc", "cd", "0", "0", "tick"]);
    assert_eq!(stream.response_state(), StreamState::Continued);
    assert_eq!(stream.response_body_now(), b"abcd");
}

#[test]
fn streams_are_spread_round_robin_over_workers_or_pinned() {
    let plugin = builder(&module("")).workers(3).start().unwrap();
    let workers: Vec<usize> = (0..4).map(|_| plugin.http_stream().worker()).collect();
    assert_eq!(workers, vec![0, 1, 2, 0]);
    assert_eq!(plugin.http_stream_on(2).worker(), 2);
    assert_eq!(plugin.workers(), 3);
}
