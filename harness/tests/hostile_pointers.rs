#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Hostile modules, part 1: every pointer and length a module hands the host.
//!
//! For every hostcall that takes a guest buffer or an out-pointer, the module first makes the
//! call with each pointer/length replaced by a bad one (far out of bounds, straddling the end of
//! memory, a length of `u32::MAX`, a pointer+length pair that wraps around 2^32 onto valid
//! memory), then makes the same call with good arguments. The bad calls must all answer
//! `InvalidMemoryAccess` (WASI: `EFAULT`), the good call must succeed (so the failures are due to
//! the pointers and nothing else), and the VM must stay healthy. Also: overlapping buffers,
//! allocators that return garbage, serialized maps whose sizes overflow.

mod common;

use common::*;
use wasmesh_harness::{Action, Harness, HarnessError};

const INVALID_MEMORY_ACCESS: &str = "6";
const EFAULT: &str = "21";
const EINVAL: &str = "28";

/// Extra WASI imports the shared prelude does not declare.
const EXTRA_IMPORTS: &str = r#"
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fd_fdstat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_res_get" (func $clock_res_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))"#;

fn module_with_extra_imports(body: &str) -> String {
    module(body).replacen("(module", &format!("(module{EXTRA_IMPORTS}"), 1)
}

/// Slots where baseline calls leave tokens and ids for later calls.
const QUEUE_TOKEN: u32 = 600;
const METRIC_ID: u32 = 604;
const GRPC_STREAM_TOKEN: u32 = 608;
/// Scratch out-parameters that are always valid.
const OUT_A: u32 = 512;
const OUT_B: u32 = 516;
const OUT_C: u32 = 520;

/// One argument of a hostcall.
#[derive(Clone)]
enum Arg {
    /// A plain value (WAT expression).
    Value(String),
    /// A guest buffer the host reads: pointer and length.
    In(String, String),
    /// An out-pointer the host writes through.
    Out(u32),
}

fn value(expr: impl Into<String>) -> Arg {
    Arg::Value(expr.into())
}

fn konst(v: i64) -> Arg {
    Arg::Value(format!("(i32.const {v})"))
}

/// A hostcall and the WAT to run before each invocation of it.
struct Call {
    name: &'static str,
    wasi: bool,
    args: Vec<Arg>,
    setup: String,
}

impl Call {
    fn proxy(name: &'static str, args: Vec<Arg>) -> Self {
        Call {
            name,
            wasi: false,
            args,
            setup: String::new(),
        }
    }

    fn wasi(name: &'static str, args: Vec<Arg>) -> Self {
        Call {
            name,
            wasi: true,
            args,
            setup: String::new(),
        }
    }

    fn with_setup(mut self, setup: String) -> Self {
        self.setup = setup;
        self
    }
}

/// The end of linear memory, as a WAT expression.
const MEMORY_END: &str = "(i32.shl (memory.size) (i32.const 16))";

/// Bad replacements for an in-buffer (pointer, length).
fn bad_in(ptr: &str, len: &str) -> Vec<(&'static str, String, String)> {
    vec![
        (
            "pointer far out of bounds",
            "(i32.const -16)".into(),
            len.into(),
        ),
        ("length u32::MAX", ptr.into(), "(i32.const -1)".into()),
        (
            "pointer + length wraps around 2^32",
            "(i32.const -256)".into(),
            "(i32.const 512)".into(),
        ),
        (
            "buffer straddles the end of memory",
            format!("(i32.sub {MEMORY_END} (i32.const 1))"),
            "(i32.const 2)".into(),
        ),
    ]
}

/// Bad replacements for an out-pointer.
fn bad_out() -> Vec<(&'static str, String)> {
    vec![
        ("out-pointer far out of bounds", "(i32.const -16)".into()),
        (
            "out-pointer u32::MAX (write wraps)",
            "(i32.const -1)".into(),
        ),
        (
            "out-pointer straddles the end of memory",
            format!("(i32.sub {MEMORY_END} (i32.const 2))"),
        ),
    ]
}

fn render(args: &[Arg]) -> String {
    args.iter()
        .map(|arg| match arg {
            Arg::Value(expr) => expr.clone(),
            Arg::In(ptr, len) => format!("{ptr} {len}"),
            Arg::Out(address) => format!("(i32.const {address})"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An invocation to make and the status codes it may answer.
struct Case {
    label: String,
    wat: String,
    expected: Vec<&'static str>,
}

/// Every bad variant of `call`, then the good call.
fn cases(call: &Call) -> Vec<Case> {
    let fault: Vec<&'static str> = if call.wasi {
        vec![EFAULT]
    } else {
        vec![INVALID_MEMORY_ACCESS]
    };
    let invoke = |args: &[Arg]| {
        format!(
            "{}\n    (call $log_status (call ${} {}))",
            call.setup,
            call.name,
            render(args)
        )
    };
    let mut out = Vec::new();
    for (index, arg) in call.args.iter().enumerate() {
        match arg {
            Arg::In(ptr, len) => {
                for (what, bad_ptr, bad_len) in bad_in(ptr, len) {
                    let mut args = call.args.clone();
                    if let Some(slot) = args.get_mut(index) {
                        *slot = Arg::Value(format!("{bad_ptr} {bad_len}"));
                    }
                    let mut expected = fault.clone();
                    if call.name == "random_get" {
                        // WASI random_get refuses oversized requests before looking at memory.
                        expected.push(EINVAL);
                    }
                    out.push(Case {
                        label: format!("{} argument {index}: {what}", call.name),
                        wat: invoke(&args),
                        expected,
                    });
                }
            }
            Arg::Out(_) => {
                for (what, bad_ptr) in bad_out() {
                    let mut args = call.args.clone();
                    if let Some(slot) = args.get_mut(index) {
                        *slot = Arg::Value(bad_ptr);
                    }
                    out.push(Case {
                        label: format!("{} argument {index}: {what}", call.name),
                        wat: invoke(&args),
                        expected: fault.clone(),
                    });
                }
            }
            Arg::Value(_) => {}
        }
    }
    out.push(Case {
        label: format!("{} with good arguments", call.name),
        wat: invoke(&call.args),
        expected: vec!["0"],
    });
    out
}

/// (pointer, length) WAT expressions of bytes placed in the data section.
fn buffer(t: &mut Strings, bytes: &[u8]) -> Arg {
    let pair = t.bytes(bytes);
    let (ptr, len) = pair.split_once(") ").unwrap();
    Arg::In(format!("{ptr})"), len.to_string())
}

fn hostcall_table(t: &mut Strings) -> Vec<Call> {
    let message = buffer(t, b"#logged");
    let path_property = buffer(t, b"request\0path");
    let filter_state_key = buffer(t, b"wasm.key");
    let filter_state_value = buffer(t, b"value");
    let header_key = buffer(t, b":path");
    let new_header = buffer(t, b"x-new");
    let header_value = buffer(t, b"v");
    let map = buffer(
        t,
        &wasmesh_harness::headermap::serialize(&[
            (":method", "GET"),
            (":path", "/"),
            (":authority", "a"),
        ]),
    );
    let cluster = buffer(t, b"cluster");
    let body = buffer(t, b"body");
    let no_pairs: [(&str, &str); 0] = [];
    let empty_map = buffer(t, &wasmesh_harness::headermap::serialize(&no_pairs));
    let grpc_service_name = buffer(t, b"pkg.Service");
    let grpc_method = buffer(t, b"Method");
    let shared_key = buffer(t, b"shared-key");
    let shared_value = buffer(t, b"shared-value");
    let queue_name = buffer(t, b"queue");
    let vm_id = buffer(t, b"");
    let metric_name = buffer(t, b"hostile_metric");
    let foreign_name = buffer(t, b"echo");
    let foreign_args = buffer(t, b"args");
    let details = buffer(t, b"denied");
    let stdout_text = t.bytes(b"#stdout\n");
    let stdout_ptr: u32 = stdout_text
        .trim_start_matches("(i32.const ")
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut iovec = stdout_ptr.to_le_bytes().to_vec();
    iovec.extend_from_slice(&8u32.to_le_bytes());
    let iovs = buffer(t, &iovec);
    let Arg::In(iovs_ptr, _) = iovs else {
        unreachable!()
    };
    let iovs = Arg::In(iovs_ptr, "(i32.const 1)".into());
    let load = |address: u32| value(format!("(i32.load (i32.const {address}))"));

    vec![
        Call::proxy("proxy_log", vec![konst(2), message]),
        Call::proxy("proxy_get_log_level", vec![Arg::Out(OUT_A)]),
        Call::proxy("proxy_get_current_time_nanoseconds", vec![Arg::Out(OUT_A)]),
        Call::proxy(
            "proxy_get_property",
            vec![path_property, Arg::Out(OUT_A), Arg::Out(OUT_B)],
        ),
        Call::proxy(
            "proxy_set_property",
            vec![filter_state_key, filter_state_value],
        ),
        // Request body buffer: empty during request headers, still written as (0, 0).
        Call::proxy(
            "proxy_get_buffer_bytes",
            vec![
                konst(0),
                konst(0),
                konst(100),
                Arg::Out(OUT_A),
                Arg::Out(OUT_B),
            ],
        ),
        Call::proxy(
            "proxy_get_buffer_status",
            vec![konst(0), Arg::Out(OUT_A), Arg::Out(OUT_B)],
        ),
        Call::proxy(
            "proxy_get_header_map_value",
            vec![
                konst(0),
                header_key.clone(),
                Arg::Out(OUT_A),
                Arg::Out(OUT_B),
            ],
        ),
        Call::proxy(
            "proxy_add_header_map_value",
            vec![konst(0), new_header.clone(), header_value.clone()],
        ),
        Call::proxy(
            "proxy_replace_header_map_value",
            vec![konst(0), new_header.clone(), header_value],
        ),
        Call::proxy("proxy_remove_header_map_value", vec![konst(0), new_header]),
        Call::proxy(
            "proxy_get_header_map_pairs",
            vec![konst(0), Arg::Out(OUT_A), Arg::Out(OUT_B)],
        ),
        Call::proxy("proxy_set_header_map_pairs", vec![konst(0), map.clone()]),
        Call::proxy("proxy_get_header_map_size", vec![konst(0), Arg::Out(OUT_A)]),
        Call::proxy(
            "proxy_http_call",
            vec![
                cluster.clone(),
                map.clone(),
                body.clone(),
                empty_map.clone(),
                konst(1000),
                Arg::Out(OUT_A),
            ],
        ),
        Call::proxy(
            "proxy_grpc_call",
            vec![
                cluster.clone(),
                grpc_service_name.clone(),
                grpc_method.clone(),
                empty_map.clone(),
                body.clone(),
                konst(1000),
                Arg::Out(OUT_A),
            ],
        ),
        Call::proxy(
            "proxy_grpc_stream",
            vec![
                cluster,
                grpc_service_name,
                grpc_method,
                empty_map,
                Arg::Out(GRPC_STREAM_TOKEN),
            ],
        ),
        Call::proxy(
            "proxy_grpc_send",
            vec![load(GRPC_STREAM_TOKEN), body.clone(), konst(0)],
        ),
        Call::proxy(
            "proxy_get_status",
            vec![Arg::Out(OUT_A), Arg::Out(OUT_B), Arg::Out(OUT_C)],
        ),
        Call::proxy(
            "proxy_set_shared_data",
            vec![shared_key.clone(), shared_value, konst(0)],
        ),
        Call::proxy(
            "proxy_get_shared_data",
            vec![
                shared_key,
                Arg::Out(OUT_A),
                Arg::Out(OUT_B),
                Arg::Out(OUT_C),
            ],
        ),
        Call::proxy(
            "proxy_register_shared_queue",
            vec![queue_name.clone(), Arg::Out(QUEUE_TOKEN)],
        ),
        Call::proxy(
            "proxy_resolve_shared_queue",
            vec![vm_id, queue_name, Arg::Out(OUT_A)],
        ),
        Call::proxy(
            "proxy_enqueue_shared_queue",
            vec![load(QUEUE_TOKEN), body.clone()],
        ),
        // Each dequeue takes an item (even when copying it out fails, as in Envoy): refill first.
        Call::proxy(
            "proxy_dequeue_shared_queue",
            vec![load(QUEUE_TOKEN), Arg::Out(OUT_A), Arg::Out(OUT_B)],
        )
        .with_setup(format!(
            "(drop (call $proxy_enqueue_shared_queue (i32.load (i32.const {QUEUE_TOKEN})) {}))",
            render(std::slice::from_ref(&body))
        )),
        Call::proxy(
            "proxy_define_metric",
            vec![konst(0), metric_name, Arg::Out(METRIC_ID)],
        ),
        Call::proxy("proxy_get_metric", vec![load(METRIC_ID), Arg::Out(OUT_A)]),
        Call::proxy(
            "proxy_call_foreign_function",
            vec![foreign_name, foreign_args, Arg::Out(OUT_A), Arg::Out(OUT_B)],
        ),
        Call::wasi("fd_write", vec![konst(1), iovs, Arg::Out(OUT_A)]),
        Call::wasi(
            "clock_time_get",
            vec![konst(0), value("(i64.const 1)"), Arg::Out(OUT_A)],
        ),
        Call::wasi("clock_res_get", vec![konst(0), Arg::Out(OUT_A)]),
        Call::wasi(
            "random_get",
            vec![Arg::In("(i32.const 700)".into(), "(i32.const 16)".into())],
        ),
        Call::wasi("environ_sizes_get", vec![Arg::Out(OUT_A), Arg::Out(OUT_B)]),
        Call::wasi("environ_get", vec![Arg::Out(OUT_A), Arg::Out(800)]),
        Call::wasi("args_sizes_get", vec![Arg::Out(OUT_A), Arg::Out(OUT_B)]),
        Call::wasi(
            "poll_oneoff",
            vec![konst(0), konst(0), konst(0), Arg::Out(OUT_A)],
        ),
        // Last: the local reply ends the request.
        Call::proxy(
            "proxy_send_local_response",
            vec![konst(403), details, body, map, konst(-1)],
        ),
    ]
}

#[test]
fn every_bad_pointer_and_length_in_every_hostcall_is_refused_and_the_vm_survives() {
    let mut t = Strings::new();
    let table = hostcall_table(&mut t);
    let cases: Vec<Case> = table.iter().flat_map(cases).collect();
    let calls: String = cases
        .iter()
        .map(|c| c.wat.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let wat = module_with_extra_imports(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    {calls}
    (i32.const 0))"#,
        t.data()
    ));
    let plugin = builder(&wat)
        .env("HOSTILE", "1")
        .foreign_function("echo", |args| Ok(args.to_vec()))
        .start()
        .unwrap();
    let mut stream = plugin.http_stream();
    let outcome = stream.request_headers(GET, true).unwrap();

    let statuses: Vec<String> = messages(&plugin)
        .into_iter()
        .filter(|m| !m.starts_with('#'))
        .collect();
    assert_eq!(
        statuses.len(),
        cases.len(),
        "one status per call: {statuses:?}"
    );
    let mut wrong = Vec::new();
    for (case, got) in cases.iter().zip(&statuses) {
        if !case.expected.contains(&got.as_str()) {
            wrong.push(format!(
                "{}: got {got}, expected {:?}",
                case.label, case.expected
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "unexpected statuses:\n{}",
        wrong.join("\n")
    );
    // Every hostcall with a pointer is covered, with at least one bad variant each.
    assert!(cases.len() > 3 * table.len(), "{} cases", cases.len());
    // The good calls really ran: the stdout line and the log line are there, the local reply
    // was sent, and the VM is healthy.
    let logs = messages(&plugin);
    assert!(logs.contains(&"#logged".to_string()), "{logs:?}");
    assert!(logs.contains(&"#stdout".to_string()), "{logs:?}");
    assert_eq!(outcome.local_reply().map(|r| r.status), Some(403));
    assert!(plugin.vm_failure(0).is_none());
    let mut next = plugin.http_stream();
    assert!(next.request_headers(GET, true).unwrap().invoked);
}

/// A module whose allocator misbehaves in the way selected by the configuration's first byte,
/// and whose request-headers callback asks the host for data it must copy into the module.
fn hostile_allocator_module(t: &mut Strings) -> String {
    let key = t.s(":path");
    let property = t.path(&["request", "path"]);
    format!(
        r#"(module
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $proxy_get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  {}
  (global $mode (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const 65536))
  (func (export "proxy_abi_version_0_2_1"))
  (func $log_status (param $code i32)
    (i32.store8 (i32.const 700) (i32.add (i32.const 48) (local.get $code)))
    (drop (call $proxy_log (i32.const 2) (i32.const 700) (i32.const 1))))
  (func (export "malloc") (param $size i32) (result i32)
    (local $p i32)
    ;; 1: always the address of the out-parameter slot (overlaps what the host writes next)
    (if (i32.eq (global.get $mode) (i32.const 1)) (then (return (i32.const 512))))
    ;; 2: one byte before the end of memory (the copy does not fit)
    (if (i32.eq (global.get $mode) (i32.const 2))
      (then (return (i32.sub (i32.shl (memory.size) (i32.const 16)) (i32.const 1)))))
    ;; 3: u32::MAX
    (if (i32.eq (global.get $mode) (i32.const 3)) (then (return (i32.const -1))))
    ;; 4: the same address every time (allocations overlap each other)
    (if (i32.eq (global.get $mode) (i32.const 4)) (then (return (i32.const 4096))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $p))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $proxy_get_buffer_bytes (i32.const 7) (i32.const 0) (i32.const 1) (i32.const 512) (i32.const 516)))
    (global.set $mode (i32.sub (i32.load8_u (i32.load (i32.const 512))) (i32.const 48)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $log_status (call $get_value (i32.const 0) {key} (i32.const 512) (i32.const 516)))
    (call $log_status (call $get_pairs (i32.const 0) (i32.const 512) (i32.const 516)))
    (call $log_status (call $get_property {property} (i32.const 512) (i32.const 516)))
    (i32.const 0)))"#,
        t.data()
    )
}

#[test]
fn allocators_returning_overlapping_or_out_of_bounds_memory_get_invalid_memory_access_not_a_crash()
{
    let mut t = Strings::new();
    let wat = hostile_allocator_module(&mut t);
    let bytes = wat::parse_str(&wat).unwrap();
    for (mode, expected) in [
        // Overlapping the out-parameters: the copy succeeds, then the host writes the pointer
        // and size over the start of the copied data. The module gets what it asked for.
        ('1', ["0", "0", "0"]),
        ('2', ["6", "6", "6"]),
        ('3', ["6", "6", "6"]),
        ('4', ["0", "0", "0"]),
    ] {
        let plugin = Harness::from_bytes(&bytes)
            .unwrap()
            .config(vec![mode as u8])
            .start()
            .unwrap();
        let outcome = plugin.http_stream().request_headers(GET, true).unwrap();
        assert_eq!(outcome.action(), Action::Continue, "mode {mode}");
        assert_eq!(messages(&plugin), expected, "mode {mode}");
        assert!(plugin.vm_failure(0).is_none(), "mode {mode}");
    }
}

#[test]
fn overlapping_out_parameters_and_inputs_are_written_in_order() {
    let mut t = Strings::new();
    let key = t.s(":path");
    let key_ptr = ptr(&key);
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; Both out-parameters at the same address: the size is written last and wins.
    (call $log_status (call $proxy_get_header_map_value (i32.const 0) {key} (i32.const 512) (i32.const 512)))
    (call $log_status (i32.load (i32.const 512)))
    ;; The out-parameters overlap the key the host reads: the key is read first.
    (call $log_status (call $proxy_get_header_map_value (i32.const 0) {key} {key_ptr} (i32.add {key_ptr} (i32.const 4))))
    (call $log_status (i32.load (i32.add {key_ptr} (i32.const 4))))
    ;; Out-parameters overlapping each other by two bytes.
    (call $log_status (call $proxy_get_header_map_pairs (i32.const 0) (i32.const 512) (i32.const 514)))
    (i32.const 0))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    plugin.http_stream().request_headers(GET, true).unwrap();
    // GET's :path is "/hello?x=1" (10 bytes).
    assert_eq!(messages(&plugin), vec!["0", "10", "0", "10", "0"]);
    assert!(plugin.vm_failure(0).is_none());
}

#[test]
fn sizes_that_overflow_u32_are_clamped_or_refused() {
    let mut t = Strings::new();
    // A serialized map announcing u32::MAX pairs, one announcing a key of u32::MAX bytes, and
    // one whose count * 8 wraps a 32-bit multiplication to a small number.
    let huge_count = t.bytes(&[
        0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 1, 0, 0, 0, b'a', 0, b'b', 0,
    ]);
    let huge_key = t.bytes(&[
        1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, b'a', 0, b'b', 0,
    ]);
    let wrapping_count = t.bytes(&[1, 0, 0, 0x20, 1, 0, 0, 0, 1, 0, 0, 0, b'a', 0, b'b', 0]);
    let cluster = t.s("c");
    let empty = t.s("");
    let body_map = t.map(&[(":method", "GET"), (":path", "/"), (":authority", "a")]);
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    ;; start and length near u32::MAX: clamped to the buffer, never an overflow.
    (call $log_status (call $proxy_get_buffer_bytes (i32.const 0) (i32.const -1) (i32.const -1) (i32.const 512) (i32.const 516)))
    (call $log_status (i32.load (i32.const 516)))
    (call $log_status (call $proxy_get_buffer_bytes (i32.const 0) (i32.const 2) (i32.const -1) (i32.const 512) (i32.const 516)))
    (call $log_status (i32.load (i32.const 516)))
    ;; Replace u32::MAX bytes from the start: the whole body is replaced.
    (call $log_status (call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const -1) {empty}))
    ;; Append at u32::MAX: past the end is an append.
    (call $log_status (call $proxy_set_buffer_bytes (i32.const 0) (i32.const -1) (i32.const -1) {cluster}))
    ;; Maps whose sizes lie: parsed as empty, as Envoy does.
    (call $log_status (call $proxy_http_call {cluster} {huge_count} {empty} {empty} (i32.const 1000) (i32.const 520)))
    (call $log_status (call $proxy_http_call {cluster} {huge_key} {empty} {empty} (i32.const 1000) (i32.const 520)))
    (call $log_status (call $proxy_http_call {cluster} {wrapping_count} {empty} {empty} (i32.const 1000) (i32.const 520)))
    (call $log_status (call $proxy_http_call {cluster} {body_map} {empty} {huge_count} (i32.const -1) (i32.const 520)))
    (call $log_status (call $proxy_send_local_response (i32.const 400) {empty} {empty} {huge_key} (i32.const -1)))
    (i32.const 0))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    stream
        .request_headers(
            &[(":method", "POST"), (":path", "/"), (":authority", "a")],
            false,
        )
        .unwrap();
    let outcome = stream.request_body(b"hello", false).unwrap();
    assert_eq!(
        messages(&plugin),
        vec![
            "0", "0", // start past the end: nothing
            "0", "3", // from 2 to the end
            "0", "0", // replaced, appended
            "2", "2", "2", // no :method/:path/:authority in a lying map: BadArgument
            "2", // negative timeout: BadArgument
            "0", // the reply is sent, with no extra headers
        ]
    );
    let reply = outcome.local_reply().unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.headers,
        vec![(":status".to_string(), "400".to_string())]
    );
    assert!(plugin.vm_failure(0).is_none());
    assert!(plugin.http_callouts().is_empty());
}

#[test]
fn a_module_that_imports_or_exports_the_wrong_things_is_refused_at_load() {
    let cases = [
        // Imports a function the host does not provide.
        r#"(module (import "env" "not_a_hostcall" (func (param i32)))
            (memory (export "memory") 1) (func (export "malloc") (param i32) (result i32) (i32.const 0))
            (func (export "proxy_abi_version_0_2_1")))"#,
        // Imports its memory instead of exporting it.
        r#"(module (import "env" "memory" (memory 1))
            (func (export "malloc") (param i32) (result i32) (i32.const 0))
            (func (export "proxy_abi_version_0_2_1")))"#,
        // A hostcall imported with the wrong signature.
        r#"(module (import "env" "proxy_log" (func (param i64) (result i64)))
            (memory (export "memory") 1) (func (export "malloc") (param i32) (result i32) (i32.const 0))
            (func (export "proxy_abi_version_0_2_1")))"#,
        // An allocator with the wrong signature.
        r#"(module (memory (export "memory") 1) (func (export "malloc") (param i64) (result i64) (i64.const 0))
            (func (export "proxy_abi_version_0_2_1")))"#,
        // `memory` is a function.
        r#"(module (memory 1) (func (export "memory")) (func (export "malloc") (param i32) (result i32) (i32.const 0))
            (func (export "proxy_abi_version_0_2_1")))"#,
        // Not wasm at all.
        "\0asm\u{1}\0\0\0garbage",
    ];
    for wat in cases {
        let result = Harness::from_bytes(wat.as_bytes()).and_then(|b| b.start());
        match result {
            Err(HarnessError::Load(_) | HarnessError::Abi(_)) => {}
            Err(other) => panic!("unexpected error {other:?} for {wat}"),
            Ok(_) => panic!("loaded {wat}"),
        }
    }
}
