#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Hostile modules, part 2: a trap in every callback the host can call, including the WASI
//! start-up entry points, context creation, the gRPC, queue and foreign-function callbacks,
//! `proxy_on_done`/`proxy_on_delete` and the module's allocator called from inside a hostcall.
//! Each must surface as `HarnessError::Trap` naming the callback, mark the VM failed, and
//! from then on Envoy's failure policy applies (`safety.rs` covers the request/response
//! callbacks and the three policies in detail; this file covers the rest).

mod common;

use std::time::Duration;

use common::*;
use wasmesh_harness::{FailurePolicy, Harness, HarnessError, Plugin};

/// Callbacks that run while the plugin starts.
const START_CALLBACKS: [&str; 5] = [
    "_initialize",
    "main",
    "_start",
    "proxy_on_context_create",
    "proxy_on_configure",
];

/// Callbacks reached by driving a stream, callouts, queues, foreign functions and shutdown.
const LATER_CALLBACKS: [&str; 12] = [
    "proxy_on_context_create",
    "proxy_on_request_trailers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
    "proxy_on_grpc_receive_initial_metadata",
    "proxy_on_grpc_receive",
    "proxy_on_grpc_receive_trailing_metadata",
    "proxy_on_grpc_close",
    "proxy_on_queue_ready",
    "proxy_on_foreign_function",
    "proxy_on_done",
    "proxy_on_delete",
];

/// A module that traps in `target` (for context creation: of the root context when
/// `at_start`, else of a stream context). Every other callback succeeds.
fn trapping_module(target: &str, at_start: bool) -> String {
    let mut t = Strings::new();
    let queue = t.s("queue");
    let cluster = t.s("cluster");
    let service = t.s("pkg.Service");
    let method = t.s("Watch");
    let no_metadata = t.bytes(&0u32.to_le_bytes());
    let trap = |name: &str| {
        if name == target {
            "(call $explode)"
        } else {
            ""
        }
    };
    let context_trap = if target == "proxy_on_context_create" {
        if at_start {
            "(if (i32.eqz (local.get $parent)) (then (call $explode)))"
        } else {
            "(if (i32.ne (local.get $parent) (i32.const 0)) (then (call $explode)))"
        }
    } else {
        ""
    };
    // The WASI entry points change how the VM starts, so they exist only when targeted.
    let entry_points = match target {
        "_initialize" => r#"(func (export "_initialize") (call $explode))"#,
        "main" => {
            r#"(func (export "_initialize")) (func (export "main") (param i32 i32) (result i32) (call $explode) (i32.const 0))"#
        }
        "_start" => r#"(func (export "_start") (call $explode))"#,
        _ => "",
    };
    module(&format!(
        r#"{data}
  (func $explode (unreachable))
  {entry_points}
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32) {context_trap})
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    {configure}
    (drop (call $proxy_register_shared_queue {queue} (i32.const 600)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $proxy_grpc_stream {cluster} {service} {method} {no_metadata} (i32.const 604)))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32) {request_trailers} (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) {response_body} (i32.const 0))
  (func (export "proxy_on_response_trailers") (param i32 i32) (result i32) {response_trailers} (i32.const 0))
  (func (export "proxy_on_grpc_receive_initial_metadata") (param i32 i32 i32) {grpc_initial})
  (func (export "proxy_on_grpc_receive") (param i32 i32 i32) {grpc_receive})
  (func (export "proxy_on_grpc_receive_trailing_metadata") (param i32 i32 i32) {grpc_trailing})
  (func (export "proxy_on_grpc_close") (param i32 i32 i32) {grpc_close})
  (func (export "proxy_on_queue_ready") (param i32 i32) {queue_ready})
  (func (export "proxy_on_foreign_function") (param i32 i32 i32) {foreign})
  (func (export "proxy_on_done") (param i32) (result i32) {done} (i32.const 1))
  (func (export "proxy_on_delete") (param i32) {delete})"#,
        data = t.data(),
        configure = trap("proxy_on_configure"),
        request_trailers = trap("proxy_on_request_trailers"),
        response_body = trap("proxy_on_response_body"),
        response_trailers = trap("proxy_on_response_trailers"),
        grpc_initial = trap("proxy_on_grpc_receive_initial_metadata"),
        grpc_receive = trap("proxy_on_grpc_receive"),
        grpc_trailing = trap("proxy_on_grpc_receive_trailing_metadata"),
        grpc_close = trap("proxy_on_grpc_close"),
        queue_ready = trap("proxy_on_queue_ready"),
        foreign = trap("proxy_on_foreign_function"),
        done = trap("proxy_on_done"),
        delete = trap("proxy_on_delete"),
    ))
}

/// Drives every callback of [`LATER_CALLBACKS`] once, in an order where each runs after the
/// previous ones; returns the first error.
fn drive(plugin: &Plugin) -> Result<(), HarnessError> {
    let mut stream = plugin.http_stream();
    stream.request_headers(
        &[(":method", "POST"), (":path", "/"), (":authority", "a")],
        false,
    )?;
    stream.request_body(b"body", false)?;
    stream.request_trailers(&[("x-trailer", "1")])?;
    stream.response_headers(&[(":status", "200")], false)?;
    stream.response_body(b"answer", false)?;
    stream.response_trailers(&[("grpc-status", "0")])?;
    let token = plugin
        .grpc_callouts()
        .first()
        .map(|callout| callout.token)
        .expect("the request dispatched a gRPC stream");
    plugin.grpc_stream_initial_metadata(token, &[("k", "v")])?;
    plugin.grpc_stream_message(token, b"message")?;
    plugin.grpc_stream_trailing_metadata(token, &[("grpc-status", "0")])?;
    plugin.grpc_stream_close(token, 0, "")?;
    plugin.enqueue("queue", b"item")?;
    plugin.trigger_foreign_function(1, b"args")?;
    stream.complete()?;
    plugin.shutdown()
}

fn assert_names(error: &HarnessError, callback: &str) {
    match error {
        HarnessError::Trap {
            callback: got,
            message,
            backtrace,
        } => {
            assert_eq!(got, callback);
            assert!(message.contains("unreachable"), "{callback}: {message}");
            assert!(
                backtrace
                    .first()
                    .is_some_and(|frame| frame.contains("explode")),
                "{callback}: {backtrace:?}"
            );
        }
        other => panic!("{callback}: expected a trap, got {other:?}"),
    }
}

#[test]
fn a_trap_while_the_plugin_starts_fails_the_start_with_a_trap_naming_the_callback() {
    for target in START_CALLBACKS {
        let wat = trapping_module(target, true);
        match builder(&wat).start() {
            Err(error) => assert_names(&error, target),
            Ok(_) => panic!("{target}: the plugin started"),
        }
    }
}

#[test]
fn a_trap_in_any_later_callback_fails_the_vm_and_later_requests_fail_closed() {
    for target in LATER_CALLBACKS {
        let wat = trapping_module(target, false);
        let plugin = builder(&wat).start().unwrap();
        let error = drive(&plugin).expect_err(target);
        assert_names(&error, target);
        assert!(error.is_vm_crash(), "{target}");
        assert_eq!(plugin.vm_failure(0), Some(error), "{target}");
        // Envoy's default policy (FAIL_CLOSED): every later request gets the 503 and the
        // module is never entered again.
        let mut later = plugin.http_stream();
        let outcome = later.request_headers(GET, true).unwrap();
        assert!(!outcome.invoked, "{target}");
        let reply = outcome.local_reply().unwrap();
        assert_eq!(
            (reply.status, reply.details.as_str()),
            (503, "wasm_fail_stream"),
            "{target}"
        );
    }
}

#[test]
fn the_failure_policy_applies_to_traps_outside_any_request() {
    // A crash in a root-context callback (here the queue notification) is a VM crash like any
    // other: no request is running, so nobody gets a 503 for it, but later requests do.
    let wat = trapping_module("proxy_on_queue_ready", false);
    let crash = |policy: FailurePolicy| {
        let plugin = builder(&wat).failure_policy(policy).start().unwrap();
        let error = plugin.enqueue("queue", b"item").unwrap_err();
        assert_names(&error, "proxy_on_queue_ready");
        plugin
    };

    let closed = crash(FailurePolicy::FailClosed);
    let outcome = closed.http_stream().request_headers(GET, true).unwrap();
    assert_eq!(outcome.local_reply().unwrap().status, 503);

    let open = crash(FailurePolicy::FailOpen);
    let outcome = open.http_stream().request_headers(GET, true).unwrap();
    assert!(outcome.local_reply().is_none() && !outcome.invoked);

    let reload = crash(FailurePolicy::FailReload);
    // Within the reload backoff of the first load, the failed VM still answers 503...
    let outcome = reload.http_stream().request_headers(GET, true).unwrap();
    assert_eq!(outcome.local_reply().unwrap().status, 503);
    // ...after it, the next request gets a fresh VM.
    reload.advance_clock(Duration::from_secs(1)).unwrap();
    let outcome = reload.http_stream().request_headers(GET, true).unwrap();
    assert!(
        outcome.invoked && outcome.local_reply().is_none(),
        "{outcome:?}"
    );
    assert_eq!(reload.reload_count(0), 1);
}

#[test]
fn a_trap_in_the_allocator_called_by_a_hostcall_fails_the_callback_that_made_the_call() {
    let wat = r#"(module
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $ready (mut i32) (i32.const 0))
  (func $allocator_explodes (unreachable))
  (func (export "malloc") (param i32) (result i32)
    (if (global.get $ready) (then (call $allocator_explodes)))
    (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (global.set $ready (i32.const 1)) (i32.const 1))
  (func $ask_for_headers (drop (call $pairs (i32.const 0) (i32.const 512) (i32.const 516))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $ask_for_headers) (i32.const 0)))"#;
    let plugin = Harness::from_bytes(wat.as_bytes())
        .unwrap()
        .start()
        .unwrap();
    let mut stream = plugin.http_stream();
    match stream.request_headers(GET, true) {
        Err(HarnessError::Trap {
            callback,
            backtrace,
            ..
        }) => {
            assert_eq!(callback, "proxy_on_request_headers");
            assert!(backtrace[0].contains("allocator_explodes"), "{backtrace:?}");
            assert!(
                backtrace
                    .iter()
                    .any(|frame| frame.contains("ask_for_headers")),
                "the backtrace goes through the hostcall back into the callback: {backtrace:?}"
            );
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(stream.local_reply().unwrap().status, 503);
}

#[test]
fn an_uncaught_exception_or_a_failed_call_indirect_is_a_trap() {
    for (name, body) in [
        (
            "uncaught exception",
            r#"(tag $oops) (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (throw $oops))"#,
        ),
        (
            "call_indirect on a null entry",
            r#"(table 4 funcref) (type $t (func (result i32)))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (call_indirect (type $t) (i32.const 2)))"#,
        ),
        (
            "integer division by zero",
            r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.div_u (i32.const 1) (i32.const 0)))"#,
        ),
        (
            "out-of-bounds load",
            r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.load (i32.const -4)))"#,
        ),
    ] {
        let plugin = builder(&module(body)).start().unwrap();
        match plugin.http_stream().request_headers(GET, true) {
            Err(HarnessError::Trap { callback, .. }) => {
                assert_eq!(callback, "proxy_on_request_headers", "{name}")
            }
            other => panic!("{name}: expected a trap, got {other:?}"),
        }
        assert!(plugin.vm_failure(0).is_some(), "{name}");
    }
}
