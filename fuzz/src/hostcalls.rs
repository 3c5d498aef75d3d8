//! The hostcall fuzzer: one fixed wasm module interprets the fuzz input as a program of
//! hostcalls with arbitrary arguments, run from every callback, while the driver takes the
//! plugin through a whole exchange (start, request, response, callouts, gRPC, queues, ticks,
//! foreign functions, shutdown). Compiling one module and varying its data keeps iterations
//! fast (no Cranelift compile per input).
//!
//! Program: a sequence of 64-byte records, read from the plugin configuration:
//!
//! | bytes  | meaning                                                          |
//! |--------|------------------------------------------------------------------|
//! | 0      | operation: `op % OPS`, an import of [`IMPORTS`] or an extra op      |
//! | 2..4   | callbacks it runs in (bit mask, see [`CALLBACK_BITS`])            |
//! | 4..52  | twelve `u32` arguments (i32 parameters, in order)                |
//! | 52..60 | one `i64` argument (every i64 parameter)                         |
//!
//! Extra operations after the imports: `memory.grow(a0)`, store `a1` at `a0 & 0xfffc`,
//! `memory.copy(a0 & 0xffff, a1 & 0xffff, a2 & 0xfff)`, allocator mode (`a0 & 3`: bump,
//! return `a1`, return 0, trap), callback return value `a0`, `unreachable`, burn `a0 & 0xffff`
//! loop iterations.
//!
//! Known data sits at fixed low addresses so that small argument values hit something real
//! (see [`DATA`]); the committed seeds use them.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use wasmesh_harness::{CalloutReply, GrpcReply, Harness, HarnessError, Limits};

/// (module, name, parameter types `i`/`I`, returns an i32)
pub const IMPORTS: &[(&str, &str, &str, bool)] = &[
    ("env", "proxy_log", "iii", true),
    ("env", "proxy_get_log_level", "i", true),
    ("env", "proxy_get_current_time_nanoseconds", "i", true),
    ("env", "proxy_set_tick_period_milliseconds", "i", true),
    ("env", "proxy_get_property", "iiii", true),
    ("env", "proxy_set_property", "iiii", true),
    ("env", "proxy_get_buffer_bytes", "iiiii", true),
    ("env", "proxy_set_buffer_bytes", "iiiii", true),
    ("env", "proxy_get_buffer_status", "iii", true),
    ("env", "proxy_get_header_map_value", "iiiii", true),
    ("env", "proxy_add_header_map_value", "iiiii", true),
    ("env", "proxy_replace_header_map_value", "iiiii", true),
    ("env", "proxy_remove_header_map_value", "iii", true),
    ("env", "proxy_get_header_map_pairs", "iii", true),
    ("env", "proxy_set_header_map_pairs", "iii", true),
    ("env", "proxy_get_header_map_size", "ii", true),
    ("env", "proxy_send_local_response", "iiiiiiii", true),
    ("env", "proxy_continue_stream", "i", true),
    ("env", "proxy_close_stream", "i", true),
    ("env", "proxy_continue_request", "", true),
    ("env", "proxy_continue_response", "", true),
    ("env", "proxy_http_call", "iiiiiiiiii", true),
    ("env", "proxy_grpc_call", "iiiiiiiiiiii", true),
    ("env", "proxy_grpc_stream", "iiiiiiiii", true),
    ("env", "proxy_grpc_send", "iiii", true),
    ("env", "proxy_grpc_cancel", "i", true),
    ("env", "proxy_grpc_close", "i", true),
    ("env", "proxy_get_status", "iii", true),
    ("env", "proxy_get_shared_data", "iiiii", true),
    ("env", "proxy_set_shared_data", "iiiii", true),
    ("env", "proxy_register_shared_queue", "iii", true),
    ("env", "proxy_resolve_shared_queue", "iiiii", true),
    ("env", "proxy_enqueue_shared_queue", "iii", true),
    ("env", "proxy_dequeue_shared_queue", "iii", true),
    ("env", "proxy_define_metric", "iiii", true),
    ("env", "proxy_increment_metric", "iI", true),
    ("env", "proxy_record_metric", "iI", true),
    ("env", "proxy_get_metric", "ii", true),
    ("env", "proxy_set_effective_context", "i", true),
    ("env", "proxy_done", "", true),
    ("env", "proxy_call_foreign_function", "iiiiii", true),
    ("env", "pthread_equal", "ii", true),
    ("env", "emscripten_notify_memory_growth", "i", false),
    // Not provided by the host: answered by the `Unimplemented` stub.
    ("env", "proxy_not_a_real_hostcall", "ii", true),
    ("wasi_snapshot_preview1", "fd_write", "iiii", true),
    ("wasi_snapshot_preview1", "fd_read", "iiii", true),
    ("wasi_snapshot_preview1", "fd_seek", "iIii", true),
    ("wasi_snapshot_preview1", "fd_close", "i", true),
    ("wasi_snapshot_preview1", "fd_fdstat_get", "ii", true),
    ("wasi_snapshot_preview1", "fd_fdstat_set_flags", "ii", true),
    ("wasi_snapshot_preview1", "fd_filestat_get", "ii", true),
    ("wasi_snapshot_preview1", "fd_prestat_get", "ii", true),
    ("wasi_snapshot_preview1", "fd_prestat_dir_name", "iii", true),
    ("wasi_snapshot_preview1", "path_open", "iiiiiIIii", true),
    ("wasi_snapshot_preview1", "path_filestat_get", "iiiii", true),
    ("wasi_snapshot_preview1", "environ_sizes_get", "ii", true),
    ("wasi_snapshot_preview1", "environ_get", "ii", true),
    ("wasi_snapshot_preview1", "args_sizes_get", "ii", true),
    ("wasi_snapshot_preview1", "args_get", "ii", true),
    ("wasi_snapshot_preview1", "clock_time_get", "iIi", true),
    ("wasi_snapshot_preview1", "clock_res_get", "ii", true),
    ("wasi_snapshot_preview1", "random_get", "ii", true),
    ("wasi_snapshot_preview1", "proc_exit", "i", false),
    ("wasi_snapshot_preview1", "sched_yield", "", true),
    ("wasi_snapshot_preview1", "poll_oneoff", "iiii", true),
];

/// Extra operations after the imports.
pub const EXTRA_OPS: usize = 7;

/// Bits of the callback mask.
pub const CALLBACK_BITS: &[(&str, u16)] = &[
    ("proxy_on_configure", 1 << 0),
    ("proxy_on_request_headers", 1 << 1),
    ("proxy_on_request_body", 1 << 2),
    ("proxy_on_request_trailers", 1 << 3),
    ("proxy_on_response_headers", 1 << 4),
    ("proxy_on_response_body", 1 << 5),
    ("proxy_on_response_trailers", 1 << 6),
    ("proxy_on_log", 1 << 7),
    ("proxy_on_tick", 1 << 8),
    ("proxy_on_http_call_response", 1 << 9),
    ("proxy_on_grpc_*", 1 << 10),
    ("proxy_on_queue_ready", 1 << 11),
    ("proxy_on_foreign_function", 1 << 12),
    ("proxy_on_done", 1 << 13),
    ("proxy_on_delete", 1 << 14),
    ("proxy_on_context_create", 1 << 15),
];

/// Size of one program record.
pub const RECORD: usize = 64;
/// Where the program is copied in the module's memory, and its maximum size.
const PROGRAM_AT: u32 = 0x4000;
const PROGRAM_MAX: u32 = 0x8000;

/// Known data at fixed addresses: (address, bytes).
pub fn data() -> Vec<(u32, Vec<u8>)> {
    let mut map = Vec::new();
    let pairs: [(&str, &str); 3] = [(":method", "GET"), (":path", "/"), (":authority", "a")];
    map.extend_from_slice(&wasmesh_harness::headermap::serialize(&pairs));
    let mut iovec = 0x120u32.to_le_bytes().to_vec();
    iovec.extend_from_slice(&5u32.to_le_bytes());
    vec![
        (0x100, b":path".to_vec()),
        (0x108, b"request\0path".to_vec()),
        (0x118, b"x-fuzz".to_vec()),
        (0x120, b"value".to_vec()),
        (0x128, b"cluster".to_vec()),
        (0x130, b"queue".to_vec()),
        (0x138, b"metric".to_vec()),
        (0x140, b"echo".to_vec()),
        (0x148, b"pkg.Service".to_vec()),
        (0x158, b"Method".to_vec()),
        (0x160, iovec),
        (0x180, map),
    ]
}

/// Total number of operations (`op % OPS`).
pub fn ops() -> usize {
    IMPORTS.len() + EXTRA_OPS
}

fn wat_type(kind: char) -> &'static str {
    if kind == 'I' {
        "i64"
    } else {
        "i32"
    }
}

/// The interpreter module, in text form.
pub fn module_wat() -> String {
    let mut w = String::from("(module\n");
    for (index, (module, name, params, result)) in IMPORTS.iter().enumerate() {
        let params: Vec<&str> = params.chars().map(wat_type).collect();
        let result = if *result { "(result i32)" } else { "" };
        let _ = writeln!(
            w,
            "  (import \"{module}\" \"{name}\" (func $imp{index} (param {}) {result}))",
            params.join(" ")
        );
    }
    w.push_str(
        r#"  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (global $alloc_mode (mut i32) (i32.const 0))
  (global $alloc_value (mut i32) (i32.const 0))
  (global $ret (mut i32) (i32.const 0))
  (global $program_len (mut i32) (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $size i32) (result i32)
    (local $p i32) (local $end i32)
    (if (i32.eq (global.get $alloc_mode) (i32.const 1)) (then (return (global.get $alloc_value))))
    (if (i32.eq (global.get $alloc_mode) (i32.const 2)) (then (return (i32.const 0))))
    (if (i32.eq (global.get $alloc_mode) (i32.const 3)) (then (unreachable)))
    (local.set $p (global.get $heap))
    (local.set $end (i32.add (local.get $p) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (if (i32.lt_u (local.get $end) (local.get $p)) (then (return (i32.const 0))))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then (if (i32.eq (memory.grow (i32.add (i32.shr_u (i32.sub (local.get $end) (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)) (i32.const 1))) (i32.const -1))
        (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $p))
"#,
    );
    for (address, bytes) in data() {
        let escaped: String = bytes.iter().map(|b| format!("\\{b:02x}")).collect();
        let _ = writeln!(w, "  (data (i32.const {address}) \"{escaped}\")");
    }
    // The dispatcher: one block per operation, selected with br_table.
    let total = ops();
    w.push_str(
        "  (func $dispatch (param $op i32) (param $rec i32) (local $i i32)\n    (block $end\n",
    );
    for case in (0..total).rev() {
        let _ = writeln!(w, "    (block $c{case}");
    }
    let labels: Vec<String> = (0..total).map(|case| format!("$c{case}")).collect();
    let _ = writeln!(w, "      (br_table {} (local.get $op)))", labels.join(" "));
    let arg = |k: usize| format!("(i32.load offset={} (local.get $rec))", 4 + 4 * k);
    let wide = "(i64.load offset=52 (local.get $rec))";
    for (case, (_, _, params, result)) in IMPORTS.iter().enumerate() {
        let mut args = Vec::new();
        let mut next = 0;
        for kind in params.chars() {
            if kind == 'I' {
                args.push(wide.to_string());
            } else {
                args.push(arg(next));
                next += 1;
            }
        }
        let call = format!("(call $imp{case} {})", args.join(" "));
        let call = if *result {
            format!("(drop {call})")
        } else {
            call
        };
        let _ = writeln!(w, "      {call} (br $end))");
    }
    let extras = [
        format!("(drop (memory.grow {}))", arg(0)),
        format!(
            "(i32.store (i32.and {} (i32.const 0xfffc)) {})",
            arg(0),
            arg(1)
        ),
        format!(
            "(memory.copy (i32.and {} (i32.const 0xffff)) (i32.and {} (i32.const 0xffff)) (i32.and {} (i32.const 0xfff)))",
            arg(0),
            arg(1),
            arg(2)
        ),
        format!(
            "(global.set $alloc_mode (i32.and {} (i32.const 3))) (global.set $alloc_value {})",
            arg(0),
            arg(1)
        ),
        format!("(global.set $ret {})", arg(0)),
        "(unreachable)".to_string(),
        format!(
            "(local.set $i (i32.and {} (i32.const 0xffff))) (loop $burn (local.set $i (i32.sub (local.get $i) (i32.const 1))) (br_if $burn (i32.gt_s (local.get $i) (i32.const 0))))",
            arg(0)
        ),
    ];
    debug_assert_eq!(extras.len(), EXTRA_OPS);
    for extra in extras {
        let _ = writeln!(w, "      {extra} (br $end))");
    }
    // The last case closed `$end`; close the function.
    w.push_str("    )\n");
    let _ = write!(
        w,
        r#"  (func $run (param $bit i32)
    (local $rec i32) (local $end i32)
    (local.set $rec (i32.const {PROGRAM_AT}))
    (local.set $end (i32.add (i32.const {PROGRAM_AT}) (global.get $program_len)))
    (block $done (loop $next
      (br_if $done (i32.gt_u (i32.add (local.get $rec) (i32.const {RECORD})) (local.get $end)))
      (if (i32.and (i32.load16_u offset=2 (local.get $rec)) (local.get $bit))
        (then (call $dispatch (i32.rem_u (i32.load8_u (local.get $rec)) (i32.const {total})) (local.get $rec))))
      (local.set $rec (i32.add (local.get $rec) (i32.const {RECORD})))
      (br $next))))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (if (i32.eqz (call $imp6 (i32.const 7) (i32.const 0) (i32.const {PROGRAM_MAX}) (i32.const 0x200) (i32.const 0x204)))
      (then
        (memory.copy (i32.const {PROGRAM_AT}) (i32.load (i32.const 0x200)) (i32.load (i32.const 0x204)))
        (global.set $program_len (i32.load (i32.const 0x204)))))
    (call $run (i32.const 1))
    (i32.const 1))
"#
    );
    let callbacks: [(&str, &str, u16, &str); 15] = [
        (
            "proxy_on_request_headers",
            "(param i32 i32 i32) (result i32)",
            1 << 1,
            "(global.get $ret)",
        ),
        (
            "proxy_on_request_body",
            "(param i32 i32 i32) (result i32)",
            1 << 2,
            "(global.get $ret)",
        ),
        (
            "proxy_on_request_trailers",
            "(param i32 i32) (result i32)",
            1 << 3,
            "(global.get $ret)",
        ),
        (
            "proxy_on_response_headers",
            "(param i32 i32 i32) (result i32)",
            1 << 4,
            "(global.get $ret)",
        ),
        (
            "proxy_on_response_body",
            "(param i32 i32 i32) (result i32)",
            1 << 5,
            "(global.get $ret)",
        ),
        (
            "proxy_on_response_trailers",
            "(param i32 i32) (result i32)",
            1 << 6,
            "(global.get $ret)",
        ),
        ("proxy_on_log", "(param i32)", 1 << 7, ""),
        ("proxy_on_tick", "(param i32)", 1 << 8, ""),
        (
            "proxy_on_http_call_response",
            "(param i32 i32 i32 i32 i32)",
            1 << 9,
            "",
        ),
        (
            "proxy_on_grpc_receive_initial_metadata",
            "(param i32 i32 i32)",
            1 << 10,
            "",
        ),
        ("proxy_on_grpc_receive", "(param i32 i32 i32)", 1 << 10, ""),
        (
            "proxy_on_grpc_receive_trailing_metadata",
            "(param i32 i32 i32)",
            1 << 10,
            "",
        ),
        ("proxy_on_grpc_close", "(param i32 i32 i32)", 1 << 10, ""),
        ("proxy_on_queue_ready", "(param i32 i32)", 1 << 11, ""),
        (
            "proxy_on_foreign_function",
            "(param i32 i32 i32)",
            1 << 12,
            "",
        ),
    ];
    for (name, signature, bit, result) in callbacks {
        let _ = writeln!(
            w,
            "  (func (export \"{name}\") {signature} (call $run (i32.const {bit})) {result})"
        );
    }
    let _ = writeln!(
        w,
        "  (func (export \"proxy_on_done\") (param i32) (result i32) (call $run (i32.const {})) (i32.const 1))",
        1 << 13
    );
    let _ = writeln!(
        w,
        "  (func (export \"proxy_on_delete\") (param i32) (call $run (i32.const {})))",
        1 << 14
    );
    let _ = writeln!(
        w,
        "  (func (export \"proxy_on_context_create\") (param i32 i32) (call $run (i32.const {})))",
        1u32 << 15
    );
    w.push_str(")\n");
    w
}

/// The compiled interpreter module (binary), built once.
pub fn module_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        wat::parse_str(module_wat()).unwrap_or_else(|error| panic!("interpreter WAT: {error}"))
    })
}

/// Every error the harness reports must be typed and explain itself.
fn check(result: Result<(), HarnessError>) {
    if let Err(error) = result {
        assert!(!error.to_string().is_empty());
    }
}

/// Runs `program` through a whole plugin life. Oracle: no panic, no hang, typed errors only.
pub fn run_program(program: &[u8]) {
    let builder = Harness::from_bytes(module_bytes()).unwrap_or_else(|e| panic!("load: {e}"));
    let started = builder
        .config(program.to_vec())
        .env("FUZZ", "1")
        .limits(Limits {
            // Enough for every hostcall of a long program; small enough that a program that
            // keeps feeding itself events stops quickly (10 budgets per event drain).
            fuel_per_callback: Some(5_000_000),
            max_memory_bytes: 8 * 1024 * 1024,
            max_shared_data_keys: 1_000,
            max_shared_bytes: 1024 * 1024,
            max_queued_items: 1_000,
            max_callouts_per_callback: 16,
            ..Limits::default()
        })
        .foreign_function("echo", |args| Ok(args.to_vec()))
        .http_callout_handler(|callout| {
            if callout.body.len() % 2 == 0 {
                CalloutReply::ok(200, "answer")
            } else {
                CalloutReply::Timeout
            }
        })
        .grpc_callout_handler(|_| GrpcReply::Timeout)
        .start();
    let plugin = match started {
        Ok(plugin) => plugin,
        Err(error) => return check(Err(error)),
    };
    let mut stream = plugin.http_stream();
    check(
        stream
            .request_headers(
                &[
                    (":method", "POST"),
                    (":path", "/a/../b?x=1"),
                    (":authority", "example.com"),
                    ("x-fuzz", "1"),
                ],
                false,
            )
            .map(drop),
    );
    check(stream.request_body(b"request body", false).map(drop));
    check(stream.request_trailers(&[("x-trailer", "t")]).map(drop));
    check(
        stream
            .response_headers(&[(":status", "200"), ("content-type", "text/plain")], false)
            .map(drop),
    );
    check(stream.response_body(b"response body", false).map(drop));
    check(stream.response_trailers(&[("grpc-status", "0")]).map(drop));
    for callout in plugin.pending_http_callouts() {
        check(plugin.respond_http_callout(callout.token, CalloutReply::ok(503, "late")));
    }
    for callout in plugin.pending_grpc_callouts() {
        if callout.is_stream {
            check(plugin.grpc_stream_initial_metadata(callout.token, &[("k", "v")]));
            check(plugin.grpc_stream_message(callout.token, b"message"));
            check(plugin.grpc_stream_trailing_metadata(callout.token, &[("grpc-status", "0")]));
            check(plugin.grpc_stream_close(callout.token, 0, ""));
        } else {
            check(plugin.respond_grpc_call(
                callout.token,
                GrpcReply::Error {
                    status: 14,
                    message: "unavailable".into(),
                },
            ));
        }
    }
    check(plugin.enqueue("queue", b"item"));
    check(plugin.trigger_foreign_function(7, b"args"));
    check(plugin.advance_clock(Duration::from_secs(2)));
    check(stream.complete());
    let mut second = plugin.http_stream();
    check(
        second
            .request_headers(
                &[(":method", "GET"), (":path", "/"), (":authority", "a")],
                true,
            )
            .map(drop),
    );
    check(second.reset());
    check(plugin.shutdown());
    let _ = plugin.metrics();
    let _ = plugin.logs();
}
