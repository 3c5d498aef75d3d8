#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Hostile modules, part 5: re-entrancy. The module's allocator runs *inside* hostcalls (the
//! host calls it to copy data in), so it can call back into the host, recursively or to change
//! the state the host is in the middle of using; callbacks can feed events to themselves
//! forever; test code (mock handlers, foreign functions) can try to drive the plugin while the
//! plugin is driving it. None of it may crash, deadlock or hang the host.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::*;
use wasmesh_harness::{CalloutReply, Harness, HarnessError, Plugin};

/// A module whose allocator does `in_malloc` before allocating (once `$armed`), and whose
/// request-headers callback asks for the header pairs (so the host calls the allocator).
fn reentrant_allocator_module(in_malloc: &str, data: &str) -> String {
    module(data)
        .replace(
            "(func $malloc (export \"malloc\") (param $size i32) (result i32)\n    (local $p i32) (local $end i32)",
            &format!(
                "(global $armed (mut i32) (i32.const 0))\n  (func $malloc (export \"malloc\") (param $size i32) (result i32)\n    (local $p i32) (local $end i32)\n    (if (global.get $armed) (then {in_malloc}))"
            ),
        )
        .replace(
            "(func (export \"proxy_abi_version_0_2_1\"))",
            r#"(func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (global.set $armed (i32.const 1))
    (call $log_status (call $proxy_get_header_map_pairs (i32.const 0) (i32.const 512) (i32.const 516)))
    (global.set $armed (i32.const 0))
    (i32.const 0))"#,
        )
}

#[test]
fn an_allocator_that_recurses_through_the_host_overflows_the_wasm_stack_not_the_host() {
    // malloc -> proxy_get_header_map_pairs -> malloc -> ... : every level has host frames
    // between wasm frames; the wasm stack limit covers them and the recursion traps.
    let wat = reentrant_allocator_module(
        "(drop (call $proxy_get_header_map_pairs (i32.const 0) (i32.const 520) (i32.const 524)))",
        "",
    );
    assert!(
        wat.contains("(global $armed"),
        "the allocator was instrumented"
    );
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    match stream.request_headers(GET, true) {
        Err(HarnessError::Trap {
            callback, message, ..
        }) => {
            assert_eq!(callback, "proxy_on_request_headers");
            assert!(message.contains("stack"), "{message}");
        }
        other => panic!("expected a stack overflow trap, got {other:?}"),
    }
    assert_eq!(stream.local_reply().unwrap().status, 503);
}

#[test]
fn an_allocator_that_changes_host_state_mid_copy_gets_a_consistent_answer() {
    // While the host copies the request headers in, the allocator replaces them, logs, writes
    // shared data and sends a local reply. The copy in flight is the snapshot taken before the
    // allocator ran; every change made from inside the allocator takes effect as usual.
    let mut t = Strings::new();
    let replacement = t.map(&[(":path", "/replaced")]);
    let note = t.s("from malloc");
    let key = t.s("k");
    let details = t.s("denied_in_malloc");
    let empty = t.s("");
    let wat = reentrant_allocator_module(
        &format!(
            r#"(global.set $armed (i32.const 0))
      (drop (call $proxy_set_header_map_pairs (i32.const 0) {replacement}))
      (drop (call $proxy_log (i32.const 2) {note}))
      (drop (call $proxy_set_shared_data {key} {note} (i32.const 0)))
      (drop (call $proxy_send_local_response (i32.const 429) {details} {empty} {empty} (i32.const -1)))"#
        ),
        &t.data(),
    );
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    let outcome = stream.request_headers(GET, true).unwrap();
    assert_eq!(messages(&plugin), vec!["from malloc", "0"]);
    assert_eq!(
        plugin.shared_data("k").map(|(value, _)| value),
        Some(b"from malloc".to_vec())
    );
    let reply = outcome.local_reply().unwrap();
    assert_eq!(
        (reply.status, reply.details.as_str()),
        (429, "denied_in_malloc")
    );
    assert!(plugin.vm_failure(0).is_none());
}

#[test]
fn a_queue_callback_that_feeds_itself_forever_is_stopped_by_the_event_loop_bound() {
    let mut t = Strings::new();
    let name = t.s("loop");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $proxy_register_shared_queue {name} (i32.const 600)))
    (i32.const 1))
  (func (export "proxy_on_queue_ready") (param i32 i32)
    (drop (call $proxy_dequeue_shared_queue (local.get 1) (i32.const 512) (i32.const 516)))
    (drop (call $proxy_enqueue_shared_queue (local.get 1) (i32.const 0) (i32.const 4))))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    match plugin.enqueue("loop", b"ping") {
        Err(HarnessError::InvalidUse(message)) => {
            assert!(message.contains("kept producing events"), "{message}")
        }
        other => panic!("expected the event loop bound, got {other:?}"),
    }
    // The module did nothing wrong by Envoy's rules (in Envoy this is a busy worker, not a
    // crash): the VM stays healthy; the harness hands control back to the test.
    assert!(plugin.vm_failure(0).is_none());
}

#[test]
fn a_self_feeding_callback_that_burns_fuel_is_stopped_by_the_drain_fuel_budget() {
    // Each notification burns ~1M fuel and re-enqueues: the event count bound alone would
    // allow 100,000 of them; the drain's fuel budget (10 callback budgets) stops it after ~20.
    let mut t = Strings::new();
    let name = t.s("loop");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $proxy_register_shared_queue {name} (i32.const 600)))
    (i32.const 1))
  (func (export "proxy_on_queue_ready") (param i32 i32)
    (local $i i32)
    (local.set $i (i32.const 200000))
    (loop $burn (local.set $i (i32.sub (local.get $i) (i32.const 1))) (br_if $burn (local.get $i)))
    (drop (call $proxy_dequeue_shared_queue (local.get 1) (i32.const 512) (i32.const 516)))
    (drop (call $proxy_enqueue_shared_queue (local.get 1) (i32.const 0) (i32.const 4))))"#,
        t.data()
    ));
    let limits = wasmesh_harness::Limits {
        fuel_per_callback: Some(2_000_000),
        ..wasmesh_harness::Limits::default()
    };
    let plugin = builder(&wat).limits(limits).start().unwrap();
    match plugin.enqueue("loop", b"ping") {
        Err(HarnessError::InvalidUse(message)) => {
            assert!(message.contains("kept producing events"), "{message}");
            assert!(message.contains("20000000 fuel"), "{message}");
        }
        other => panic!("expected the drain fuel budget, got {other:?}"),
    }
    assert!(plugin.vm_failure(0).is_none());
}

#[test]
fn a_callout_answer_that_dispatches_another_callout_forever_is_stopped() {
    let mut t = Strings::new();
    let cluster = t.s("c");
    let headers = t.map(&[(":method", "GET"), (":path", "/"), (":authority", "c")]);
    let empty = t.s("");
    let call = format!(
        "(drop (call $proxy_http_call {cluster} {headers} {empty} {empty} (i32.const 1000) (i32.const 512)))"
    );
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) {call} (i32.const 1))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32) {call})"#,
        t.data()
    ));
    let plugin = builder(&wat)
        .http_callout_handler(|_| CalloutReply::ok(200, "again"))
        .start()
        .unwrap();
    match plugin.http_stream().request_headers(GET, true) {
        Err(HarnessError::InvalidUse(message)) => {
            assert!(message.contains("kept producing events"), "{message}")
        }
        other => panic!("expected the event loop bound, got {other:?}"),
    }
    assert!(plugin.vm_failure(0).is_none());
}

#[test]
fn test_code_that_calls_back_into_a_busy_plugin_gets_an_invalid_use_error() {
    let mut t = Strings::new();
    let cluster = t.s("c");
    let headers = t.map(&[(":method", "GET"), (":path", "/"), (":authority", "c")]);
    let empty = t.s("");
    let name = t.s("reenter");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $proxy_http_call {cluster} {headers} {empty} {empty} (i32.const 1000) (i32.const 512)))
    (call $log_status (call $proxy_call_foreign_function {name} {empty} (i32.const 512) (i32.const 516)))
    (i32.const 0))"#,
        t.data()
    ));
    let slot: Rc<RefCell<Option<Plugin>>> = Rc::new(RefCell::new(None));
    let seen: Rc<RefCell<Vec<String>>> = Rc::new(RefCell::new(Vec::new()));
    let (handler_slot, handler_seen) = (slot.clone(), seen.clone());
    let (foreign_slot, foreign_seen) = (slot.clone(), seen.clone());
    let plugin = builder(&wat)
        .http_callout_handler(move |_| {
            if let Some(plugin) = handler_slot.borrow().as_ref() {
                let nested = plugin.http_stream().request_headers(GET, true);
                handler_seen
                    .borrow_mut()
                    .push(format!("handler: {}", kind(nested)));
            }
            CalloutReply::ok(200, "")
        })
        .foreign_function("reenter", move |_| {
            if let Some(plugin) = foreign_slot.borrow().as_ref() {
                let nested = plugin.advance_clock(std::time::Duration::from_secs(1));
                foreign_seen
                    .borrow_mut()
                    .push(format!("foreign: {}", kind(nested)));
                // Reading is fine while the plugin is busy.
                foreign_seen
                    .borrow_mut()
                    .push(format!("logs readable: {}", plugin.logs().is_empty()));
            }
            Ok(Vec::new())
        })
        .start()
        .unwrap();
    *slot.borrow_mut() = Some(plugin.clone());
    let outcome = plugin.http_stream().request_headers(GET, true).unwrap();
    assert!(outcome.invoked);
    assert_eq!(
        *seen.borrow(),
        vec![
            "foreign: InvalidUse",
            "logs readable: true",
            "handler: InvalidUse"
        ]
    );
    assert_eq!(
        messages(&plugin),
        vec!["0"],
        "the foreign call itself succeeded"
    );
    assert!(plugin.vm_failure(0).is_none());
    slot.borrow_mut().take();
}

fn kind<T>(result: Result<T, HarnessError>) -> &'static str {
    match result {
        Ok(_) => "Ok",
        Err(HarnessError::InvalidUse(_)) => "InvalidUse",
        Err(_) => "other error",
    }
}

#[test]
fn contexts_the_module_names_must_exist_and_proxy_done_is_idempotent() {
    let wat = module(
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; Unknown, the VM context (0), the root (1), this stream (2), a stream not yet created.
    (call $log_status (call $proxy_set_effective_context (i32.const 12345)))
    (call $log_status (call $proxy_set_effective_context (i32.const 0)))
    (call $log_status (call $proxy_set_effective_context (i32.const 1)))
    (call $log_status (call $proxy_set_effective_context (local.get 0)))
    (call $log_status (call $proxy_set_effective_context (i32.add (local.get 0) (i32.const 1))))
    ;; No root context is waiting to be done.
    (call $log_status (call $proxy_done))
    (call $log_status (call $proxy_done))
    (i32.const 0))"#,
    );
    let plugin = builder(&wat).start().unwrap();
    plugin.http_stream().request_headers(GET, true).unwrap();
    assert_eq!(messages(&plugin), vec!["2", "2", "0", "0", "2", "1", "1"]);
    assert!(plugin.vm_failure(0).is_none());
}

#[test]
fn two_local_replies_and_continues_from_one_callback_leave_one_reply() {
    let mut t = Strings::new();
    let first = t.s("first");
    let second = t.s("second");
    let empty = t.s("");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $proxy_send_local_response (i32.const 401) {first} {empty} {empty} (i32.const -1)))
    (drop (call $proxy_continue_stream (i32.const 0)))
    (drop (call $proxy_send_local_response (i32.const 402) {second} {empty} {empty} (i32.const -1)))
    (drop (call $proxy_continue_stream (i32.const 0)))
    (drop (call $proxy_close_stream (i32.const 0)))
    (i32.const 0))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    let outcome = stream.request_headers(GET, true).unwrap();
    let reply = outcome.local_reply().unwrap();
    assert_eq!((reply.status, reply.details.as_str()), (401, "first"));
    assert!(plugin.vm_failure(0).is_none());
    // The stream is over; driving it further is answered without entering the module.
    let later = stream.response_headers(&[(":status", "200")], true);
    assert!(later.map(|o| !o.invoked).unwrap_or(true));
    assert!(Harness::cache_stats().compilations > 0);
}
