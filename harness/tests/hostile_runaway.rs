#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Hostile modules, part 3: runaway code and memory. Infinite loops wherever the host runs
//! module code (callbacks, the start section, the allocator, loops of hostcalls), and memory
//! that grows without bound (declared, grown by the module, grown by the host's copies).
//! Each ends as `FuelExhausted` or `MemoryLimit` (or a refused load), never a hang or an
//! exhausted host. `safety.rs` covers the plain loop in a callback and `memory.grow` in a loop.

mod common;

use std::time::Duration;

use common::*;
use wasmesh_harness::{Harness, HarnessError, Limits};

fn fuel(units: u64) -> Limits {
    Limits {
        fuel_per_callback: Some(units),
        ..Limits::default()
    }
}

fn expect_fuel_exhausted(result: Result<impl std::fmt::Debug, HarnessError>, callback: &str) {
    match result {
        Err(HarnessError::FuelExhausted { callback: got, .. }) => assert_eq!(got, callback),
        other => panic!("expected fuel exhaustion in {callback}, got {other:?}"),
    }
}

#[test]
fn a_loop_of_cheap_hostcalls_is_charged_and_interrupted() {
    // ~6 fuel of wasm per iteration: without charging host work, 10M fuel would allow 1.6M
    // log lines; the host charges each call, so at most 10M / 1000 get through.
    let mut t = Strings::new();
    let line = t.s("x");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (loop $forever (drop (call $proxy_log (i32.const 2) {line})) (br $forever))
    (i32.const 0))"#,
        t.data()
    ));
    let plugin = builder(&wat).limits(fuel(10_000_000)).start().unwrap();
    let mut stream = plugin.http_stream();
    expect_fuel_exhausted(
        stream.request_headers(GET, true),
        "proxy_on_request_headers",
    );
    let lines = plugin.logs().len();
    assert!((9_000..=10_000).contains(&lines), "{lines} log lines");
    assert_eq!(stream.local_reply().unwrap().status, 503);
}

#[test]
fn a_loop_of_wasi_calls_is_charged_and_interrupted() {
    let wat = module(
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (loop $forever (drop (call $fd_prestat_get (i32.const 3) (i32.const 512))) (br $forever))
    (i32.const 0))"#,
    );
    let plugin = builder(&wat).limits(fuel(5_000_000)).start().unwrap();
    expect_fuel_exhausted(
        plugin.http_stream().request_headers(GET, true),
        "proxy_on_request_headers",
    );
}

#[test]
fn copying_large_buffers_in_a_loop_is_charged_per_byte() {
    // Logging the whole 128 KiB memory over and over: each line costs its size in fuel.
    let wat = module(
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (loop $forever (drop (call $proxy_log (i32.const 2) (i32.const 0) (i32.const 131072))) (br $forever))
    (i32.const 0))"#,
    );
    let plugin = builder(&wat).limits(fuel(10_000_000)).start().unwrap();
    expect_fuel_exhausted(
        plugin.http_stream().request_headers(GET, true),
        "proxy_on_request_headers",
    );
    let lines = plugin.logs().len();
    assert!((70..=77).contains(&lines), "{lines} lines of 128 KiB");
}

#[test]
fn one_write_with_many_vectors_over_one_buffer_is_charged_per_vector() {
    // 100,000 iovecs that all point at the same 64 KiB: 6.4 GB of stdout in one call unless
    // the host charges as it gathers.
    let wat = module(
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32)
    (loop $fill
      (i32.store (i32.add (i32.const 65536) (i32.mul (local.get $i) (i32.const 8))) (i32.const 0))
      (i32.store (i32.add (i32.const 65540) (i32.mul (local.get $i) (i32.const 8))) (i32.const 65536))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 8192))))
    ;; The iovec array is 64 KiB (8192 vectors); claim 100,000 of them.
    (drop (call $fd_write (i32.const 1) (i32.const 65536) (i32.const 100000) (i32.const 512)))
    (i32.const 0))"#,
    );
    let plugin = builder(&wat).limits(fuel(20_000_000)).start().unwrap();
    expect_fuel_exhausted(
        plugin.http_stream().request_headers(GET, true),
        "proxy_on_request_headers",
    );
    assert!(plugin.logs().is_empty(), "nothing was written");
}

#[test]
fn an_infinite_loop_in_the_allocator_called_by_the_host_is_interrupted() {
    let wat = r#"(module
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $ready (mut i32) (i32.const 0))
  (func (export "malloc") (param i32) (result i32)
    (if (global.get $ready) (then (loop $forever (br $forever))))
    (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (global.set $ready (i32.const 1)) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $pairs (i32.const 0) (i32.const 512) (i32.const 516))) (i32.const 0)))"#;
    let plugin = Harness::from_bytes(wat.as_bytes())
        .unwrap()
        .limits(fuel(5_000_000))
        .start()
        .unwrap();
    expect_fuel_exhausted(
        plugin.http_stream().request_headers(GET, true),
        "proxy_on_request_headers",
    );
}

#[test]
fn infinite_loops_while_the_plugin_starts_fail_the_start() {
    let looping = "(loop $forever (br $forever))";
    for (where_, body) in [
        (
            "instantiate",
            format!(r#"(func $spin {looping}) (start $spin)"#),
        ),
        (
            "_initialize",
            format!(r#"(func (export "_initialize") {looping})"#),
        ),
        (
            "proxy_on_vm_start",
            format!(
                r#"(func (export "proxy_on_vm_start") (param i32 i32) (result i32) {looping} (i32.const 1))"#
            ),
        ),
        (
            "proxy_on_configure",
            format!(
                r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) {looping} (i32.const 1))"#
            ),
        ),
    ] {
        let result = builder(&module(&body)).limits(fuel(5_000_000)).start();
        expect_fuel_exhausted(result.map(|_| ()), where_);
    }
}

#[test]
fn infinite_loops_in_timers_logs_and_tail_calls_are_interrupted() {
    let tick = module(
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $proxy_set_tick_period_milliseconds (i32.const 10))) (i32.const 1))
  (func (export "proxy_on_tick") (param i32) (loop $forever (br $forever)))"#,
    );
    let plugin = builder(&tick).limits(fuel(5_000_000)).start().unwrap();
    expect_fuel_exhausted(
        plugin.advance_clock(Duration::from_millis(10)),
        "proxy_on_tick",
    );
    assert_eq!(
        plugin
            .http_stream()
            .request_headers(GET, true)
            .unwrap()
            .local_reply()
            .unwrap()
            .status,
        503,
        "the crashed VM fails closed"
    );

    let log = module(r#"(func (export "proxy_on_log") (param i32) (loop $forever (br $forever)))"#);
    let plugin = builder(&log).limits(fuel(5_000_000)).start().unwrap();
    let mut stream = plugin.http_stream();
    stream.request_headers(GET, true).unwrap();
    stream
        .response_headers(&[(":status", "200")], true)
        .unwrap();
    expect_fuel_exhausted(stream.complete(), "proxy_on_log");

    // Tail calls never grow the stack, so only fuel can stop them.
    let tail = module(
        r#"(func $spin (param $n i32) (result i32) (return_call $spin (i32.add (local.get $n) (i32.const 1))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (call $spin (i32.const 0)))"#,
    );
    let plugin = builder(&tail).limits(fuel(5_000_000)).start().unwrap();
    expect_fuel_exhausted(
        plugin.http_stream().request_headers(GET, true),
        "proxy_on_request_headers",
    );
}

fn memory_cap(bytes: u64) -> Limits {
    Limits {
        max_memory_bytes: bytes,
        ..Limits::default()
    }
}

#[test]
fn a_module_declaring_more_memory_than_the_cap_does_not_start() {
    // 2048 pages = 128 MiB, over the default 64 MiB cap.
    let wat = module("").replace(
        r#"(memory (export "memory") 2)"#,
        r#"(memory (export "memory") 2048)"#,
    );
    match builder(&wat).start() {
        Err(HarnessError::MemoryLimit {
            callback,
            requested_bytes,
            limit_bytes,
            ..
        }) => {
            assert_eq!(callback, "instantiate");
            assert_eq!(requested_bytes, 128 * 1024 * 1024);
            assert_eq!(limit_bytes, Limits::default().max_memory_bytes);
        }
        other => panic!("expected the memory cap, got {:?}", other.err()),
    }
}

#[test]
fn a_refused_memory_grow_the_module_tolerates_is_not_a_failure() {
    let wat = module(
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; 65535 pages (4 GiB) at once, then one page over a 1 MiB cap: both refused with -1.
    (call $log_status (i32.add (memory.grow (i32.const 65535)) (i32.const 2)))
    (call $log_status (i32.add (memory.grow (i32.const 14)) (i32.const 2)))
    (call $log_status (i32.add (memory.grow (i32.const 1)) (i32.const 2)))
    (i32.const 0))"#,
    );
    let plugin = builder(&wat)
        .limits(memory_cap(1024 * 1024))
        .start()
        .unwrap();
    plugin.http_stream().request_headers(GET, true).unwrap();
    // -1 + 2 = 1 (refused); 2 + 2 = 4 (grown from 2 pages to 16); refused again at the cap.
    assert_eq!(messages(&plugin), vec!["1", "4", "1"]);
    assert!(plugin.vm_failure(0).is_none());
    assert_eq!(plugin.worker_memory_bytes(0), 1024 * 1024);
}

#[test]
fn a_host_copy_that_needs_more_memory_than_the_cap_is_a_memory_limit() {
    // The module asks for the whole 2 MiB body; its allocator must grow past the 1 MiB cap and
    // aborts when refused.
    let wat = module(
        r#"(func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    (drop (call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const -1) (i32.const 512) (i32.const 516)))
    (i32.const 0))"#,
    );
    let plugin = builder(&wat)
        .limits(memory_cap(1024 * 1024))
        .start()
        .unwrap();
    let mut stream = plugin.http_stream();
    stream
        .request_headers(
            &[(":method", "POST"), (":path", "/"), (":authority", "a")],
            false,
        )
        .unwrap();
    match stream.request_body(&vec![b'x'; 2 * 1024 * 1024], true) {
        Err(HarnessError::MemoryLimit {
            callback,
            requested_bytes,
            ..
        }) => {
            assert_eq!(callback, "proxy_on_request_body");
            assert!(requested_bytes > 2 * 1024 * 1024);
        }
        other => panic!("expected the memory cap, got {other:?}"),
    }
    assert_eq!(stream.local_reply().unwrap().status, 503);
}

#[test]
fn tables_are_capped_too() {
    let big_table = module(r#"(table 200000 funcref)"#);
    assert!(
        builder(&big_table).start().is_err(),
        "a 200k-entry table is refused"
    );

    let growing = module(
        r#"(table $t 1 funcref)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (loop $grow (br_if $grow (i32.ne (table.grow $t (ref.null func) (i32.const 10000)) (i32.const -1))))
    (call $log_status (table.size $t))
    (i32.const 0))"#,
    );
    let plugin = builder(&growing).start().unwrap();
    plugin.http_stream().request_headers(GET, true).unwrap();
    assert_eq!(messages(&plugin), vec!["90001"]);
}

#[test]
fn proposals_that_escape_the_memory_cap_are_refused_at_load() {
    // A second linear memory (multi-memory) would get its own 64 MiB; GC objects live outside
    // linear memory altogether.
    let second_memory = module(r#"(memory $extra 1)"#);
    let gc_array = module(
        r#"(type $bytes (array (mut i8)))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (array.new_default $bytes (i32.const 1000000))) (i32.const 0))"#,
    );
    for (name, wat) in [("multi-memory", second_memory), ("gc", gc_array)] {
        let bytes = wat::parse_str(&wat).unwrap();
        match Harness::from_bytes(&bytes) {
            Err(HarnessError::Load(message)) => assert!(!message.is_empty(), "{name}"),
            Err(other) => panic!("{name}: {other:?}"),
            Ok(_) => panic!("{name}: loaded"),
        }
    }
}

#[test]
fn reading_a_large_body_a_byte_at_a_time_costs_a_byte_per_read() {
    // 8 MiB body, read one byte per call until the fuel runs out (~5,000 reads). The host
    // borrows the body instead of copying it per call: otherwise these reads would copy 40 GB.
    let wat = module(
        r#"(func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    (local $i i32)
    (loop $next
      (drop (call $proxy_get_buffer_bytes (i32.const 0) (local.get $i) (i32.const 1) (i32.const 512) (i32.const 516)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))
    (i32.const 0))"#,
    );
    let plugin = builder(&wat).limits(fuel(5_000_000)).start().unwrap();
    let mut stream = plugin.http_stream();
    stream
        .request_headers(
            &[(":method", "POST"), (":path", "/"), (":authority", "a")],
            false,
        )
        .unwrap();
    expect_fuel_exhausted(
        stream.request_body(&vec![b'x'; 8 * 1024 * 1024], true),
        "proxy_on_request_body",
    );
}

#[test]
fn growing_a_header_map_without_bound_pays_for_every_entry_it_scans() {
    // Every edit scans the map (as Envoy's header map does), and the host charges for the
    // scan: a module adding headers in a loop runs out of fuel after a few thousand, not after
    // the ~50,000 the per-call charge alone would allow with this budget.
    let mut t = Strings::new();
    let key = t.s("x-flood");
    let value = t.s("v");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (loop $more
      (drop (call $proxy_add_header_map_value (i32.const 0) {key} {value}))
      (br $more))
    (i32.const 0))"#,
        t.data()
    ));
    let plugin = builder(&wat).limits(fuel(50_000_000)).start().unwrap();
    let mut stream = plugin.http_stream();
    expect_fuel_exhausted(
        stream.request_headers(GET, true),
        "proxy_on_request_headers",
    );
    let flood = stream
        .request_headers_now()
        .iter()
        .filter(|(name, _)| name == "x-flood")
        .count();
    assert!((1_000..10_000).contains(&flood), "{flood} headers added");
}
