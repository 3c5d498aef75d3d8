#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Misbehaving modules: bad pointers, traps under each failure policy, runaway loops, memory
//! bombs, stack overflows. None of them may crash the host.

mod common;
use std::time::Duration;

use common::*;
use wasmesh_harness::{Action, FailurePolicy, HarnessError, Limits, StreamState};

#[test]
fn out_of_bounds_pointers_return_invalid_memory_access_to_the_guest() {
    let mut t = Strings::new();
    let key = t.s(":path");
    let good = t.s("ok");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; message past the end of memory, and a length that wraps around
    (call $log_status (call $proxy_log (i32.const 2) (i32.const 131070) (i32.const 100)))
    (call $log_status (call $proxy_log (i32.const 2) (i32.const 16) (i32.const -1)))
    ;; key out of bounds, then return pointers out of bounds
    (call $log_status (call $proxy_get_header_map_value (i32.const 0) (i32.const -8) (i32.const 5) (i32.const 512) (i32.const 516)))
    (call $log_status (call $proxy_get_header_map_value (i32.const 0) {key} (i32.const -4) (i32.const 516)))
    (call $log_status (call $proxy_get_header_map_pairs (i32.const 0) (i32.const 512) (i32.const 131072)))
    (call $log_status (call $proxy_get_property (i32.const 200000) (i32.const 4) (i32.const 512) (i32.const 516)))
    (call $log_status (call $proxy_set_shared_data {key} (i32.const 999999) (i32.const 3) (i32.const 0)))
    (call $log_status (call $proxy_get_current_time_nanoseconds (i32.const 131068)))
    (call $log_status (call $proxy_set_header_map_pairs (i32.const 0) (i32.const 131000) (i32.const 4096)))
    (call $log_status (call $proxy_send_local_response (i32.const 403) (i32.const -1) (i32.const 2) {good} (i32.const 0) (i32.const 0) (i32.const 0)))
    ;; WASI reports EFAULT
    (i32.store (i32.const 900) (i32.const 131000))
    (i32.store (i32.const 904) (i32.const 5000))
    (call $log_status (call $fd_write (i32.const 1) (i32.const 900) (i32.const 1) (i32.const 520)))
    (call $log_status (call $random_get (i32.const 131070) (i32.const 16)))
    (i32.const 0))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    let outcome = stream.request_headers(GET, true).unwrap();
    assert_eq!(outcome.action(), Action::Continue);
    assert!(
        outcome.local_reply().is_none(),
        "the bad local reply was not sent"
    );
    assert_eq!(
        messages(&plugin),
        vec!["6", "6", "6", "6", "6", "6", "6", "6", "6", "6", "21", "21"]
    );
    assert!(plugin.vm_failure(0).is_none(), "the VM is still healthy");
}

#[test]
fn an_allocator_returning_null_makes_copies_fail_with_invalid_memory_access() {
    let wat = r#"(module
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (i32.store8 (i32.const 100) (i32.add (i32.const 48) (call $pairs (i32.const 0) (i32.const 512) (i32.const 516))))
    (drop (call $log (i32.const 2) (i32.const 100) (i32.const 1)))
    (i32.const 0)))"#;
    let plugin = wasmesh_harness::Harness::from_bytes(wat.as_bytes())
        .unwrap()
        .start()
        .unwrap();
    plugin.http_stream().request_headers(GET, true).unwrap();
    assert_eq!(messages(&plugin), vec!["6"]);
}

/// A module that traps in the callback selected by its plugin configuration (one byte).
fn trapping_module() -> String {
    let mut t = Strings::new();
    let cluster = t.s("c");
    let headers = t.map(&[(":method", "GET"), (":path", "/"), (":authority", "c")]);
    let empty = t.s("");
    let headers_seen = t.s("request_headers");
    module(&format!(
        r#"{}
  (global $target (mut i32) (i32.const 0))
  (func $explode (unreachable))
  (func $maybe_trap (param $which i32)
    (if (i32.eq (global.get $target) (local.get $which)) (then (call $explode))))
  (func (export "proxy_on_configure") (param $ctx i32) (param $size i32) (result i32)
    (drop (call $proxy_get_buffer_bytes (i32.const 7) (i32.const 0) (local.get $size) (i32.const 512) (i32.const 516)))
    (global.set $target (i32.sub (i32.load8_u (i32.load (i32.const 512))) (i32.const 48)))
    (drop (call $proxy_set_tick_period_milliseconds (i32.const 10)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $info {headers_seen})
    (call $maybe_trap (i32.const 1))
    (drop (call $proxy_http_call {cluster} {headers} {empty} (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 520)))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    (call $maybe_trap (i32.const 2)) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $maybe_trap (i32.const 3)) (i32.const 0))
  (func (export "proxy_on_log") (param i32) (call $maybe_trap (i32.const 4)))
  (func (export "proxy_on_tick") (param i32) (call $maybe_trap (i32.const 5)))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32) (call $maybe_trap (i32.const 6)))"#,
        t.data()
    ))
}

fn trap_in(
    target: u8,
    policy: FailurePolicy,
) -> (
    wasmesh_harness::Plugin,
    HarnessError,
    wasmesh_harness::HttpStream,
) {
    let plugin = builder(&trapping_module())
        .config(vec![b'0' + target])
        .failure_policy(policy)
        .start()
        .unwrap();
    let mut stream = plugin.http_stream();
    let result = (|| {
        stream.request_headers(&[(":method", "POST"), (":path", "/")], false)?;
        stream.request_body(b"body", true)?;
        plugin.respond_http_callout(4, wasmesh_harness::CalloutReply::ok(200, ""))?;
        stream.response_headers(&[(":status", "200")], true)?;
        plugin.advance_clock(Duration::from_millis(10))?;
        Ok::<(), HarnessError>(())
    })();
    let error = match result {
        Err(error) => error,
        Ok(()) => {
            let mut ended = plugin.http_stream();
            ended.request_headers(GET, true).unwrap();
            ended.complete().expect_err("on_log should trap")
        }
    };
    (plugin, error, stream)
}

#[test]
fn a_trap_in_any_callback_is_a_typed_error_with_a_named_backtrace() {
    let callbacks = [
        (1, "proxy_on_request_headers"),
        (2, "proxy_on_request_body"),
        (3, "proxy_on_response_headers"),
        (4, "proxy_on_log"),
        (5, "proxy_on_tick"),
        (6, "proxy_on_http_call_response"),
    ];
    for (target, callback) in callbacks {
        let (plugin, error, _) = trap_in(target, FailurePolicy::FailClosed);
        match &error {
            HarnessError::Trap {
                callback: got,
                message,
                backtrace,
            } => {
                assert_eq!(got, callback);
                assert!(message.contains("unreachable"), "{message}");
                assert!(backtrace[0].contains("explode"), "{backtrace:?}");
                assert!(
                    backtrace.iter().any(|f| f.contains("maybe_trap")),
                    "{backtrace:?}"
                );
            }
            other => panic!("{callback}: expected a trap, got {other:?}"),
        }
        assert!(error.is_vm_crash());
        assert_eq!(plugin.vm_failure(0), Some(error));
    }
}

#[test]
fn fail_closed_answers_503_to_the_failing_and_every_later_request() {
    let (plugin, _, stream) = trap_in(1, FailurePolicy::FailClosed);
    let reply = stream.local_reply().unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.details, "wasm_fail_stream");
    assert_eq!(
        reply.headers,
        vec![(":status".to_string(), "503".to_string())]
    );
    assert_eq!(stream.request_state(), StreamState::Replied);

    let mut later = plugin.http_stream();
    let outcome = later.request_headers(GET, true).unwrap();
    assert!(!outcome.invoked);
    assert_eq!(outcome.local_reply().unwrap().status, 503);
    assert_eq!(plugin.logs().len(), 1, "the module never ran again");
}

#[test]
fn fail_open_fails_the_crashing_request_but_lets_later_requests_through_unfiltered() {
    let (plugin, error, stream) = trap_in(1, FailurePolicy::FailOpen);
    assert!(matches!(error, HarnessError::Trap { .. }));
    // As in Envoy: the stream that was running when the VM crashed still gets the 503.
    assert_eq!(stream.local_reply().unwrap().details, "wasm_fail_stream");
    let mut later = plugin.http_stream();
    let outcome = later.request_headers(GET, true).unwrap();
    assert_eq!(outcome.action(), Action::Continue);
    assert!(!outcome.invoked);
    assert!(outcome.local_reply().is_none());
    later.response_headers(&[(":status", "204")], true).unwrap();
    assert_eq!(later.response_header(":status").as_deref(), Some("204"));
    later.complete().unwrap();
    assert_eq!(plugin.logs().len(), 1, "the module never ran again");
}

#[test]
fn fail_reload_answers_503_then_recreates_the_vm_for_the_next_request() {
    let (plugin, _, stream) = trap_in(3, FailurePolicy::FailReload);
    // The response-phase failure is answered directly (the response had started).
    assert_eq!(stream.local_reply().unwrap().status, 503);
    assert_eq!(plugin.reload_count(0), 0);
    plugin.clear_logs();
    // As in Envoy, the backoff also runs from the first load: within a second of the start,
    // requests are answered 503 by the failed VM (real Envoy does the same, see the
    // `FAIL_RELOAD` group of harness/e2e's differential corpus).
    let mut early = plugin.http_stream();
    let outcome = early.request_headers(GET, true).unwrap();
    assert!(!outcome.invoked);
    assert_eq!(outcome.local_reply().unwrap().status, 503);
    assert_eq!(plugin.reload_count(0), 0);
    plugin.advance_clock(Duration::from_secs(1)).unwrap();
    let mut next = plugin.http_stream();
    let outcome = next.request_headers(GET, true).unwrap();
    assert!(outcome.invoked, "a fresh VM handles the request");
    assert_eq!(plugin.reload_count(0), 1);
    assert!(plugin.vm_failure(0).is_none());
    assert_eq!(messages(&plugin), vec!["request_headers"]);
    // A crash right after a reload waits for the backoff before the next reload.
    assert!(next.response_headers(&[(":status", "200")], true).is_err());
    plugin.http_stream().request_headers(GET, true).unwrap();
    assert_eq!(plugin.reload_count(0), 1, "still within the 1s backoff");
    plugin.advance_clock(Duration::from_secs(1)).unwrap();
    plugin.http_stream().request_headers(GET, true).unwrap();
    assert_eq!(plugin.reload_count(0), 2);
}

#[test]
fn an_infinite_loop_is_interrupted_by_fuel_and_reported() {
    let wat = module(
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (loop $forever (br $forever))
    (i32.const 0))"#,
    );
    let plugin = builder(&wat)
        .limits(Limits {
            fuel_per_callback: Some(5_000_000),
            ..Limits::default()
        })
        .start()
        .unwrap();
    let mut stream = plugin.http_stream();
    match stream.request_headers(GET, true) {
        Err(HarnessError::FuelExhausted { callback, fuel, .. }) => {
            assert_eq!(callback, "proxy_on_request_headers");
            assert_eq!(fuel, 5_000_000);
        }
        other => panic!("expected fuel exhaustion, got {other:?}"),
    }
    assert_eq!(stream.local_reply().unwrap().status, 503);
}

#[test]
fn growing_memory_without_bound_hits_the_cap_as_a_typed_error() {
    let wat = module(
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    (unreachable))"#,
    );
    let plugin = builder(&wat)
        .limits(Limits {
            max_memory_bytes: 4 * 1024 * 1024,
            ..Limits::default()
        })
        .start()
        .unwrap();
    let before = plugin.worker_memory_bytes(0);
    assert_eq!(before, 2 * 65536);
    match plugin.http_stream().request_headers(GET, true) {
        Err(HarnessError::MemoryLimit {
            callback,
            requested_bytes,
            limit_bytes,
            ..
        }) => {
            assert_eq!(callback, "proxy_on_request_headers");
            assert_eq!(limit_bytes, 4 * 1024 * 1024);
            assert!(requested_bytes > limit_bytes);
        }
        other => panic!("expected the memory cap, got {other:?}"),
    }
    assert!(plugin.worker_memory_bytes(0) <= 4 * 1024 * 1024);
}

#[test]
fn deep_recursion_is_a_trap_not_a_host_crash() {
    let wat = module(
        r#"(func $recurse (param $n i32) (result i32) (call $recurse (i32.add (local.get $n) (i32.const 1))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $recurse (i32.const 0)))"#,
    );
    let plugin = builder(&wat).start().unwrap();
    match plugin.http_stream().request_headers(GET, true) {
        Err(HarnessError::Trap { message, .. }) => assert!(message.contains("stack"), "{message}"),
        other => panic!("expected a stack overflow trap, got {other:?}"),
    }
}

#[test]
fn a_trap_during_start_fails_the_start() {
    let wat =
        module(r#"(func (export "proxy_on_vm_start") (param i32 i32) (result i32) (unreachable))"#);
    match builder(&wat).start() {
        Err(HarnessError::Trap { callback, .. }) => assert_eq!(callback, "proxy_on_vm_start"),
        other => panic!("expected a trap, got {:?}", other.err()),
    }
}
