#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Every WASI function the harness registers, called by a module in the harness and in a real
//! Envoy 1.40, once from `_initialize` (while Envoy restricts hostcalls) and once from
//! `proxy_on_request_headers`: the result code, and the bytes the host wrote into a 32-byte
//! region pre-filled with 0xAA, must be the same. Go's runtime calls several of these from
//! `_initialize` (`fd_fdstat_get`, `fd_fdstat_set_flags`, `fd_prestat_get`), so a harness that
//! refused them would not start Go modules that Envoy serves.

mod common;
use std::sync::Mutex;

use common::*;
use wasmesh_envoy::{self as envoy, EnvoyBuilder, EnvoyError, HttpRequest, WasmFilter};
use wasmesh_harness::Harness;

/// Where the host writes (dumped after each call).
const OUT: u32 = 8192;
/// Inputs: an iovec for `fd_write` at 8448 (pointing at TEXT), one for `fd_read` at 8456
/// (pointing into OUT), a zeroed subscription at 8704, poll events written at 8960.
const TEXT: u32 = 8320;

/// One WASI call: the import's parameter types, the arguments, and whether the written bytes are
/// values that differ from run to run (clocks, randomness) and are shown only as "written or
/// not" per 8-byte word.
struct Case {
    name: &'static str,
    module: &'static str,
    function: &'static str,
    params: &'static str,
    returns: bool,
    args: &'static str,
    varying: bool,
}

const fn case(
    name: &'static str,
    function: &'static str,
    params: &'static str,
    args: &'static str,
) -> Case {
    Case {
        name,
        module: "wasi_snapshot_preview1",
        function,
        params,
        returns: true,
        args,
        varying: false,
    }
}

fn cases() -> Vec<Case> {
    vec![
        case(
            "fd_write_stdout",
            "fd_write",
            "i32 i32 i32 i32",
            "(i32.const 1) (i32.const 8448) (i32.const 1) (i32.const 8192)",
        ),
        case(
            "fd_write_stderr",
            "fd_write",
            "i32 i32 i32 i32",
            "(i32.const 2) (i32.const 8448) (i32.const 1) (i32.const 8192)",
        ),
        case(
            "fd_write_stdin",
            "fd_write",
            "i32 i32 i32 i32",
            "(i32.const 0) (i32.const 8448) (i32.const 1) (i32.const 8192)",
        ),
        case(
            "fd_read_stdin",
            "fd_read",
            "i32 i32 i32 i32",
            "(i32.const 0) (i32.const 8456) (i32.const 1) (i32.const 8192)",
        ),
        case(
            "fd_seek_stdout",
            "fd_seek",
            "i32 i64 i32 i32",
            "(i32.const 1) (i64.const 0) (i32.const 0) (i32.const 8192)",
        ),
        case("fd_close_3", "fd_close", "i32", "(i32.const 3)"),
        case(
            "fd_fdstat_get_stdin",
            "fd_fdstat_get",
            "i32 i32",
            "(i32.const 0) (i32.const 8192)",
        ),
        case(
            "fd_fdstat_get_stdout",
            "fd_fdstat_get",
            "i32 i32",
            "(i32.const 1) (i32.const 8192)",
        ),
        case(
            "fd_fdstat_get_stderr",
            "fd_fdstat_get",
            "i32 i32",
            "(i32.const 2) (i32.const 8192)",
        ),
        case(
            "fd_fdstat_get_3",
            "fd_fdstat_get",
            "i32 i32",
            "(i32.const 3) (i32.const 8192)",
        ),
        case(
            "fd_fdstat_set_flags_stdout",
            "fd_fdstat_set_flags",
            "i32 i32",
            "(i32.const 1) (i32.const 4)",
        ),
        case(
            "fd_filestat_get_stdout",
            "fd_filestat_get",
            "i32 i32",
            "(i32.const 1) (i32.const 8192)",
        ),
        case(
            "fd_prestat_get_3",
            "fd_prestat_get",
            "i32 i32",
            "(i32.const 3) (i32.const 8192)",
        ),
        case(
            "fd_prestat_dir_name_3",
            "fd_prestat_dir_name",
            "i32 i32 i32",
            "(i32.const 3) (i32.const 8192) (i32.const 8)",
        ),
        case(
            "path_open",
            "path_open",
            "i32 i32 i32 i32 i32 i64 i64 i32 i32",
            "(i32.const 3) (i32.const 0) (i32.const 8320) (i32.const 4) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 8192)",
        ),
        case(
            "path_filestat_get",
            "path_filestat_get",
            "i32 i32 i32 i32 i32",
            "(i32.const 3) (i32.const 0) (i32.const 8320) (i32.const 4) (i32.const 8192)",
        ),
        case(
            "environ_sizes_get",
            "environ_sizes_get",
            "i32 i32",
            "(i32.const 8192) (i32.const 8196)",
        ),
        case(
            "environ_get",
            "environ_get",
            "i32 i32",
            "(i32.const 8192) (i32.const 8208)",
        ),
        case(
            "args_sizes_get",
            "args_sizes_get",
            "i32 i32",
            "(i32.const 8192) (i32.const 8196)",
        ),
        case(
            "args_get",
            "args_get",
            "i32 i32",
            "(i32.const 8192) (i32.const 8208)",
        ),
        Case {
            varying: true,
            ..case(
                "clock_time_get_realtime",
                "clock_time_get",
                "i32 i64 i32",
                "(i32.const 0) (i64.const 1) (i32.const 8192)",
            )
        },
        Case {
            varying: true,
            ..case(
                "clock_time_get_monotonic",
                "clock_time_get",
                "i32 i64 i32",
                "(i32.const 1) (i64.const 1) (i32.const 8192)",
            )
        },
        case(
            "clock_time_get_process_cputime",
            "clock_time_get",
            "i32 i64 i32",
            "(i32.const 2) (i64.const 1) (i32.const 8192)",
        ),
        case(
            "clock_res_get_realtime",
            "clock_res_get",
            "i32 i32",
            "(i32.const 0) (i32.const 8192)",
        ),
        case(
            "clock_res_get_monotonic",
            "clock_res_get",
            "i32 i32",
            "(i32.const 1) (i32.const 8192)",
        ),
        case(
            "clock_res_get_process_cputime",
            "clock_res_get",
            "i32 i32",
            "(i32.const 2) (i32.const 8192)",
        ),
        Case {
            varying: true,
            ..case(
                "random_get_16",
                "random_get",
                "i32 i32",
                "(i32.const 8192) (i32.const 16)",
            )
        },
        case(
            "random_get_too_many",
            "random_get",
            "i32 i32",
            "(i32.const 8192) (i32.const 65537)",
        ),
        case("sched_yield", "sched_yield", "", ""),
        case(
            "poll_oneoff",
            "poll_oneoff",
            "i32 i32 i32 i32",
            "(i32.const 8704) (i32.const 8960) (i32.const 1) (i32.const 8192)",
        ),
        Case {
            module: "wasi_unstable",
            ..case(
                "unstable_fd_fdstat_get_stdout",
                "fd_fdstat_get",
                "i32 i32",
                "(i32.const 1) (i32.const 8192)",
            )
        },
        Case {
            returns: false,
            ..case("proc_exit", "proc_exit", "i32", "(i32.const 0)")
        },
    ]
    .into_iter()
    .chain(more_cases())
    .collect()
}

/// A module that makes the call of `case` from `_initialize` (when `at_start`) and from every
/// `proxy_on_request_headers`, logging `WASI <phase> <case> rc=<code> mem=<bytes>`.
fn probe_module(case: &Case, at_start: bool) -> String {
    let mut t = Strings::new();
    let init = t.s(&format!("WASI init {} ", case.name));
    let request = t.s(&format!("WASI request {} ", case.name));
    let result = if case.returns { "(result i32)" } else { "" };
    let call = if case.returns {
        format!("(call $probe {})", case.args)
    } else {
        format!("(call $probe {}) (i32.const 999)", case.args)
    };
    let varying = i32::from(case.varying);
    let start_call = if at_start {
        format!("(call $run {init})")
    } else {
        String::new()
    };
    let import = format!(
        r#"(import "{}" "{}" (func $probe (param {}) {result}))"#,
        case.module, case.function, case.params
    );
    // Imports come before any function: put it first in the module.
    module(&format!(
        r#"{data}
  (data (i32.const {TEXT}) "abcd")
  (data (i32.const 8448) "\80\20\00\00\04\00\00\00\10\20\00\00\08\00\00\00")
  (func $hex (param $n i32) (result i32)
    (i32.add (local.get $n) (select (i32.const 48) (i32.const 87) (i32.lt_u (local.get $n) (i32.const 10)))))
  ;; Fills OUT with 0xAA, makes the call, logs "<tag>rc=<rc> mem=<dump>".
  (func $run (param $tag i32) (param $taglen i32)
    (local $rc i32) (local $p i32) (local $i i32) (local $b i32)
    (memory.fill (i32.const {OUT}) (i32.const 0xAA) (i32.const 32))
    (local.set $rc {call})
    (memory.copy (i32.const 9216) (local.get $tag) (local.get $taglen))
    (local.set $p (i32.add (i32.const 9216) (local.get $taglen)))
    (i32.store (local.get $p) (i32.const 0x3d6372)) ;; "rc="
    (local.set $p (i32.add (local.get $p) (i32.const 3)))
    (local.set $p (i32.add (local.get $p) (call $itoa (local.get $rc) (local.get $p))))
    (i64.store (local.get $p) (i64.const 0x3d6d656d20)) ;; " mem="
    (local.set $p (i32.add (local.get $p) (i32.const 5)))
    (if (i32.const {varying})
      (then
        (loop $words
          (i32.store8 (local.get $p)
            (select (i32.const 46) (i32.const 119)
              (i64.eq (i64.load (i32.add (i32.const {OUT}) (local.get $i))) (i64.const 0xAAAAAAAAAAAAAAAA))))
          (local.set $p (i32.add (local.get $p) (i32.const 1)))
          (local.set $i (i32.add (local.get $i) (i32.const 8)))
          (br_if $words (i32.lt_u (local.get $i) (i32.const 32)))))
      (else
        (loop $bytes
          (local.set $b (i32.load8_u (i32.add (i32.const {OUT}) (local.get $i))))
          (i32.store8 (local.get $p) (call $hex (i32.shr_u (local.get $b) (i32.const 4))))
          (i32.store8 (i32.add (local.get $p) (i32.const 1)) (call $hex (i32.and (local.get $b) (i32.const 15))))
          (local.set $p (i32.add (local.get $p) (i32.const 2)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $bytes (i32.lt_u (local.get $i) (i32.const 32))))))
    (call $info (i32.const 9216) (i32.sub (local.get $p) (i32.const 9216))))
  (func (export "_initialize") {start_call})
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $run {request})
    (i32.const 0))"#,
        data = t.data(),
    ))
    .replacen("(module\n", &format!("(module\n  {import}\n"), 1)
}

/// What one phase showed: the logged line's result, or that the module failed to start.
fn wasi_lines(lines: impl Iterator<Item = String>, phase: &str, name: &str) -> Vec<String> {
    let prefix = format!("WASI {phase} {name} ");
    let mut found: Vec<String> = Vec::new();
    for line in lines {
        if let Some((_, rest)) = line.split_once(&prefix) {
            let rest = rest.trim().to_string();
            // Envoy runs `_initialize` in several VMs (base, canary, worker): keep one of each.
            if !found.contains(&rest) {
                found.push(rest);
            }
        }
    }
    found
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    /// `Ok(lines logged by _initialize)`, or `Err(why the module did not start)`.
    start: Result<Vec<String>, String>,
    /// Lines logged by the request's call (from the start-probing module when it started, else
    /// from a module that calls only per request).
    request: Vec<String>,
}

fn harness_outcome(case: &Case) -> Outcome {
    let run_request = |bytes: &[u8]| {
        let plugin = Harness::from_bytes(bytes).unwrap().start().unwrap();
        plugin.http_stream().request_headers(GET, true).unwrap();
        let lines = messages(&plugin);
        (plugin, lines)
    };
    let bytes = wat::parse_str(probe_module(case, true)).unwrap();
    match Harness::from_bytes(&bytes).unwrap().start() {
        Ok(plugin) => {
            let start = wasi_lines(messages(&plugin).into_iter(), "init", case.name);
            plugin.http_stream().request_headers(GET, true).unwrap();
            let request = wasi_lines(messages(&plugin).into_iter(), "request", case.name);
            Outcome {
                start: Ok(start),
                request,
            }
        }
        Err(error) => {
            let bytes = wat::parse_str(probe_module(case, false)).unwrap();
            let (_plugin, lines) = run_request(&bytes);
            Outcome {
                start: Err(start_failure(&error.to_string())),
                request: wasi_lines(lines.into_iter(), "request", case.name),
            }
        }
    }
}

/// Reduces a start failure to what both hosts report: Envoy's V8 throws `restricted_callback`
/// (`Function: _initialize failed: Uncaught Error: restricted_callback`) and the module fails
/// to load; the harness's trap names the same reason.
fn start_failure(text: &str) -> String {
    if text.contains("restricted_callback") {
        "restricted_callback".to_string()
    } else {
        text.to_string()
    }
}

fn envoy_outcome(case: &Case, dir: &std::path::Path) -> Outcome {
    let write = |at_start: bool| {
        let path = dir.join(format!("{}-{}.wasm", case.name, at_start));
        std::fs::write(&path, wat::parse_str(probe_module(case, at_start)).unwrap()).unwrap();
        path
    };
    let request_lines = |envoy: &envoy::Envoy| {
        assert_eq!(envoy.send(&HttpRequest::get("/")).unwrap().status, 200);
        // The filter logs before the response is written, so the line is there by now; allow
        // for the log being flushed late.
        let mut lines = Vec::new();
        for _ in 0..100 {
            lines = wasi_lines(
                envoy.log().lines().map(str::to_string),
                "request",
                case.name,
            );
            if !lines.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        lines
    };
    let started = EnvoyBuilder::new()
        .wasm_filter(WasmFilter::new(write(true)))
        .direct_response(200, "ok")
        .start();
    match started {
        Ok(envoy) => {
            let start = wasi_lines(envoy.log().lines().map(str::to_string), "init", case.name);
            let request = request_lines(&envoy);
            Outcome {
                start: Ok(start),
                request,
            }
        }
        Err(EnvoyError::Exited { log_tail, .. }) => {
            let envoy = EnvoyBuilder::new()
                .wasm_filter(WasmFilter::new(write(false)))
                .direct_response(200, "ok")
                .start()
                .unwrap();
            Outcome {
                start: Err(start_failure(&log_tail)),
                request: request_lines(&envoy),
            }
        }
        Err(other) => panic!("{}: {other}", case.name),
    }
}

#[test]
fn every_wasi_function_answers_as_in_envoy_at_start_and_per_request() {
    if envoy::skip_requested() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("wasmesh-wasi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = cases();
    let envoy_results: Mutex<Vec<(usize, Outcome)>> = Mutex::new(Vec::new());
    let next = Mutex::new(0usize);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| loop {
                let index = {
                    let mut next = next.lock().unwrap();
                    let index = *next;
                    *next += 1;
                    index
                };
                let Some(case) = cases.get(index) else {
                    return;
                };
                let outcome = envoy_outcome(case, &dir);
                envoy_results.lock().unwrap().push((index, outcome));
            });
        }
    });
    let mut envoy_results = envoy_results.into_inner().unwrap();
    envoy_results.sort_by_key(|(index, _)| *index);
    let mut report = String::new();
    let mut mismatches = Vec::new();
    for (index, envoy) in envoy_results {
        let case = &cases[index];
        let harness = harness_outcome(case);
        report.push_str(&format!(
            "{}\n  envoy:   {:?}\n  harness: {:?}\n",
            case.name, envoy, harness
        ));
        if harness != envoy {
            mismatches.push(case.name);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(mismatches.is_empty(), "{mismatches:?}\n{report}");
}

/// A logged result without the untouched tail of the region: `rc=0 mem=04000000` is code 0 and
/// four bytes written.
fn compact(line: &str) -> String {
    let mut line = line.to_string();
    if !line.ends_with('.') && !line.ends_with('w') {
        while line.ends_with("aa") {
            line.truncate(line.len() - 2);
        }
    }
    line
}

/// What Envoy 1.40 answered (see the test above): whether the call is allowed in `_initialize`
/// (where it answers as per request), and the code and bytes written per request.
const ENVOY_1_40: &[(&str, bool, &str)] = &[
    ("fd_write_stdout", true, "rc=0 mem=04000000"),
    ("fd_write_stderr", true, "rc=0 mem=04000000"),
    ("fd_write_stdin", true, "rc=8 mem="),
    ("fd_read_stdin", false, "rc=52 mem="),
    ("fd_seek_stdout", false, "rc=0 mem="),
    ("fd_close_3", false, "rc=0 mem="),
    ("fd_fdstat_get_stdin", true, "rc=8 mem="),
    (
        "fd_fdstat_get_stdout",
        true,
        "rc=0 mem=000000000000000040000000000000000000000000000000",
    ),
    (
        "fd_fdstat_get_stderr",
        true,
        "rc=0 mem=000000000000000040000000000000000000000000000000",
    ),
    ("fd_fdstat_get_3", true, "rc=8 mem="),
    ("fd_fdstat_set_flags_stdout", true, "rc=52 mem="),
    ("fd_filestat_get_stdout", true, "rc=8 mem="),
    ("fd_prestat_get_3", true, "rc=8 mem="),
    ("fd_prestat_dir_name_3", true, "rc=52 mem="),
    ("path_open", false, "rc=44 mem="),
    ("path_filestat_get", true, "rc=58 mem="),
    ("environ_sizes_get", true, "rc=0 mem=0000000000000000"),
    ("environ_get", true, "rc=0 mem="),
    ("args_sizes_get", true, "rc=0 mem=0000000000000000"),
    ("args_get", true, "rc=0 mem="),
    ("clock_time_get_realtime", true, "rc=0 mem=w..."),
    ("clock_time_get_monotonic", true, "rc=0 mem=w..."),
    ("clock_time_get_process_cputime", true, "rc=58 mem="),
    ("clock_res_get_realtime", true, "rc=0 mem=0100000000000000"),
    ("clock_res_get_monotonic", true, "rc=0 mem=0100000000000000"),
    ("clock_res_get_process_cputime", true, "rc=58 mem="),
    ("random_get_16", true, "rc=0 mem=ww.."),
    ("random_get_too_many", true, "rc=28 mem="),
    ("sched_yield", false, "rc=0 mem="),
    ("poll_oneoff", true, "rc=0 mem=00000000"),
    (
        "unstable_fd_fdstat_get_stdout",
        true,
        "rc=0 mem=000000000000000040000000000000000000000000000000",
    ),
    // 999: the call returned (the module's libc would then trap on its own).
    ("proc_exit", false, "rc=999 mem="),
    ("fd_advise", true, "rc=0 mem="),
    ("fd_allocate", true, "rc=0 mem="),
    ("fd_datasync", true, "rc=0 mem="),
    ("fd_fdstat_set_rights", true, "rc=0 mem="),
    ("fd_filestat_set_size", true, "rc=0 mem="),
    ("fd_filestat_set_times", true, "rc=0 mem="),
    ("fd_pread", true, "rc=52 mem="),
    // Logged like fd_write (checked by hand in Envoy's log).
    ("fd_pwrite", true, "rc=0 mem=04000000"),
    ("fd_readdir", true, "rc=20 mem=aaaaaaaa00000000"),
    ("fd_renumber", true, "rc=8 mem="),
    ("fd_sync", true, "rc=0 mem="),
    ("fd_tell", true, "rc=0 mem=0000000000000000"),
    ("path_create_directory", true, "rc=58 mem="),
    ("path_filestat_set_times", true, "rc=58 mem="),
    ("path_readlink", true, "rc=58 mem=aaaaaaaaaaaaaaaa00000000"),
    ("path_remove_directory", true, "rc=58 mem="),
    ("path_rename", true, "rc=58 mem="),
    ("path_unlink_file", true, "rc=58 mem="),
    ("sock_accept", true, "rc=58 mem=0000000000000000"),
    ("sock_recv", true, "rc=58 mem=000000000000"),
    ("sock_send", true, "rc=58 mem=00000000"),
    ("sock_shutdown", true, "rc=58 mem="),
];

/// The same table without Envoy, so that `WASMESH_SKIP_ENVOY=1` still checks the harness.
#[test]
fn the_harness_answers_every_wasi_function_as_envoy_1_40_did() {
    let cases = cases();
    assert_eq!(cases.len(), ENVOY_1_40.len());
    for (case, (name, allowed_at_start, request)) in cases.iter().zip(ENVOY_1_40) {
        assert_eq!(case.name, *name);
        let outcome = harness_outcome(case);
        let expected_start = if *allowed_at_start {
            Ok(vec![request.to_string()])
        } else {
            Err("restricted_callback".to_string())
        };
        let start = outcome
            .start
            .map(|lines| lines.iter().map(|l| compact(l)).collect::<Vec<_>>());
        assert_eq!(start, expected_start, "{name} at start");
        let request_lines: Vec<String> = outcome.request.iter().map(|l| compact(l)).collect();
        assert_eq!(request_lines, [request.to_string()], "{name} per request");
    }
}

/// The rest of WASI preview1 that Envoy 1.40 provides.
fn more_cases() -> Vec<Case> {
    vec![
        case("fd_advise", "fd_advise", "i32 i64 i64 i32", "(i32.const 1) (i64.const 0) (i64.const 0) (i32.const 0)"),
        case("fd_allocate", "fd_allocate", "i32 i64 i64", "(i32.const 1) (i64.const 0) (i64.const 0)"),
        case("fd_datasync", "fd_datasync", "i32", "(i32.const 1)"),
        case("fd_fdstat_set_rights", "fd_fdstat_set_rights", "i32 i64 i64", "(i32.const 1) (i64.const 0) (i64.const 0)"),
        case("fd_filestat_set_size", "fd_filestat_set_size", "i32 i64", "(i32.const 1) (i64.const 0)"),
        case("fd_filestat_set_times", "fd_filestat_set_times", "i32 i64 i64 i32", "(i32.const 1) (i64.const 0) (i64.const 0) (i32.const 0)"),
        case("fd_pread", "fd_pread", "i32 i32 i32 i64 i32", "(i32.const 0) (i32.const 8456) (i32.const 1) (i64.const 0) (i32.const 8192)"),
        case("fd_pwrite", "fd_pwrite", "i32 i32 i32 i64 i32", "(i32.const 1) (i32.const 8448) (i32.const 1) (i64.const 0) (i32.const 8192)"),
        case("fd_readdir", "fd_readdir", "i32 i32 i32 i64 i32", "(i32.const 3) (i32.const 8192) (i32.const 8) (i64.const 0) (i32.const 8196)"),
        case("fd_renumber", "fd_renumber", "i32 i32", "(i32.const 1) (i32.const 5)"),
        case("fd_sync", "fd_sync", "i32", "(i32.const 1)"),
        case("fd_tell", "fd_tell", "i32 i32", "(i32.const 1) (i32.const 8192)"),
        case("path_create_directory", "path_create_directory", "i32 i32 i32", "(i32.const 3) (i32.const 8320) (i32.const 4)"),
        case("path_filestat_set_times", "path_filestat_set_times", "i32 i32 i32 i32 i64 i64 i32", "(i32.const 3) (i32.const 0) (i32.const 8320) (i32.const 4) (i64.const 0) (i64.const 0) (i32.const 0)"),
        case("path_readlink", "path_readlink", "i32 i32 i32 i32 i32 i32", "(i32.const 3) (i32.const 8320) (i32.const 4) (i32.const 8192) (i32.const 8) (i32.const 8200)"),
        case("path_remove_directory", "path_remove_directory", "i32 i32 i32", "(i32.const 3) (i32.const 8320) (i32.const 4)"),
        case("path_rename", "path_rename", "i32 i32 i32 i32 i32 i32", "(i32.const 3) (i32.const 8320) (i32.const 4) (i32.const 3) (i32.const 8320) (i32.const 4)"),
        case("path_unlink_file", "path_unlink_file", "i32 i32 i32", "(i32.const 3) (i32.const 8320) (i32.const 4)"),
        case("sock_accept", "sock_accept", "i32 i32 i32", "(i32.const 3) (i32.const 0) (i32.const 8192)"),
        case("sock_recv", "sock_recv", "i32 i32 i32 i32 i32 i32", "(i32.const 3) (i32.const 8456) (i32.const 1) (i32.const 0) (i32.const 8192) (i32.const 8196)"),
        case("sock_send", "sock_send", "i32 i32 i32 i32 i32", "(i32.const 3) (i32.const 8448) (i32.const 1) (i32.const 0) (i32.const 8192)"),
        case("sock_shutdown", "sock_shutdown", "i32 i32", "(i32.const 3) (i32.const 0)"),
    ]
}

/// WASI functions Envoy 1.40 does not provide: a module importing one does not load, in Envoy
/// (the plugin fails and Envoy exits) nor in the harness.
#[test]
fn a_module_importing_wasi_functions_envoy_lacks_loads_in_neither() {
    if envoy::skip_requested() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("wasmesh-wasi-lacking-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for case in [
        case(
            "path_link",
            "path_link",
            "i32 i32 i32 i32 i32 i32 i32",
            "(i32.const 3) (i32.const 0) (i32.const 8320) (i32.const 4) (i32.const 3) (i32.const 8320) (i32.const 4)",
        ),
        case(
            "path_symlink",
            "path_symlink",
            "i32 i32 i32 i32 i32",
            "(i32.const 8320) (i32.const 4) (i32.const 3) (i32.const 8320) (i32.const 4)",
        ),
        case("proc_raise", "proc_raise", "i32", "(i32.const 1)"),
    ] {
        let bytes = wat::parse_str(probe_module(&case, false)).unwrap();
        let harness = Harness::from_bytes(&bytes).and_then(|b| b.start().map(|_| ()));
        let error = harness.err().unwrap().to_string();
        assert!(error.contains(case.function), "{error}");
        let path = dir.join(format!("{}.wasm", case.name));
        std::fs::write(&path, &bytes).unwrap();
        let started = EnvoyBuilder::new()
            .wasm_filter(WasmFilter::new(&path))
            .direct_response(200, "ok")
            .start();
        assert!(
            matches!(started, Err(EnvoyError::Exited { .. })),
            "{}: {started:?}",
            case.name
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `env` hostcalls a module may import, with their parameter types and whether they return
/// a status: the prelude's `proxy_*` imports, and the two helpers Envoy registers for
/// Emscripten-built modules.
fn env_hostcalls() -> Vec<(String, Vec<String>, bool)> {
    let mut hostcalls: Vec<(String, Vec<String>, bool)> = module("")
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("(import \"env\" \"")?;
            let (name, signature) = rest.split_once('"')?;
            let params = signature
                .split_once("(param ")
                .and_then(|(_, p)| p.split_once(')'))
                .map(|(p, _)| p.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default();
            Some((name.to_string(), params, signature.contains("(result i32)")))
        })
        .collect();
    hostcalls.push((
        "pthread_equal".to_string(),
        vec!["i32".to_string(), "i32".to_string()],
        true,
    ));
    hostcalls.push((
        "emscripten_notify_memory_growth".to_string(),
        vec!["i32".to_string()],
        false,
    ));
    hostcalls
}

/// A module whose `_initialize` calls `name` with zero arguments, then logs that it went on.
fn start_probe(name: &str, params: &[String], returns: bool) -> Vec<u8> {
    let mut t = Strings::new();
    let survived = t.s(&format!("START {name} survived"));
    let args: String = params.iter().map(|p| format!("({p}.const 0) ")).collect();
    let call = if returns {
        format!("(drop (call $probe {args}))")
    } else {
        format!("(call $probe {args})")
    };
    let result = if returns { "(result i32)" } else { "" };
    let import = format!(
        r#"(import "env" "{name}" (func $probe (param {}) {result}))"#,
        params.join(" ")
    );
    let wat = module(&format!(
        r#"{}
  (func (export "_initialize") {call} (call $info {survived}))"#,
        t.data()
    ))
    .replacen("(module\n", &format!("(module\n  {import}\n"), 1);
    wat::parse_str(wat).unwrap()
}

/// Envoy restricts hostcalls while a module starts (`_initialize`) to logging and the WASI
/// functions of the table above: every `env` hostcall but `proxy_log` (and the no-op
/// `emscripten_notify_memory_growth`) fails the start with `restricted_callback`, in Envoy and in
/// the harness.
#[test]
fn env_hostcalls_during_start_are_restricted_as_in_envoy() {
    if envoy::skip_requested() {
        return;
    }
    let hostcalls = env_hostcalls();
    assert!(hostcalls.len() > 40, "{hostcalls:?}");
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<(String, String, String)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| loop {
                let index = {
                    let mut next = next.lock().unwrap();
                    *next += 1;
                    *next - 1
                };
                let Some((name, params, returns)) = hostcalls.get(index) else {
                    return;
                };
                let bytes = start_probe(name, params, *returns);
                let wasm = WasmFile::new(&format!("start-{name}"), &bytes);
                let in_envoy = match EnvoyBuilder::new()
                    .wasm_filter(WasmFilter::new(&wasm.path))
                    .direct_response(200, "ok")
                    .start()
                {
                    Ok(_) => "started".to_string(),
                    Err(EnvoyError::Exited { log_tail, .. }) => start_failure(&log_tail),
                    Err(other) => panic!("{name}: {other}"),
                };
                let in_harness = match Harness::from_bytes(&bytes).unwrap().start() {
                    Ok(_) => "started".to_string(),
                    Err(error) => start_failure(&error.to_string()),
                };
                results
                    .lock()
                    .unwrap()
                    .push((name.clone(), in_envoy, in_harness));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort();
    let report: Vec<String> = results
        .iter()
        .map(|(name, envoy, harness)| format!("{name}: envoy {envoy:?}, harness {harness:?}"))
        .collect();
    let differing: Vec<&String> = report
        .iter()
        .zip(&results)
        .filter(|(_, (_, envoy, harness))| envoy != harness)
        .map(|(line, _)| line)
        .collect();
    assert!(differing.is_empty(), "{differing:#?}");
    let started: Vec<&str> = results
        .iter()
        .filter(|(_, envoy, _)| envoy == "started")
        .map(|(name, _, _)| name.as_str())
        .collect();
    assert_eq!(
        started,
        ["emscripten_notify_memory_growth", "proxy_log"],
        "{report:#?}"
    );
}
