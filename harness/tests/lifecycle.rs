#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Module loading, ABI detection, start-up order, context numbering and stream end order.

mod common;
use common::*;
use wasmesh_harness::{AbiVersion, Harness, HarnessError, LogLevel};

/// Callbacks that log their name and arguments.
fn tracing_callbacks(t: &mut Strings, configure_ok: bool, vm_start_ok: bool) -> String {
    let create = t.s("create");
    let vm_start = t.s("vm_start");
    let configure = t.s("configure");
    let headers = t.s("request_headers");
    let log = t.s("log");
    let done = t.s("done");
    let delete = t.s("delete");
    format!(
        r#"
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32)
    (call $log2 {create} (local.get $ctx) (local.get $parent)))
  (func (export "proxy_on_vm_start") (param $ctx i32) (param $size i32) (result i32)
    (call $log2 {vm_start} (local.get $ctx) (local.get $size)) (i32.const {vm_start_ok}))
  (func (export "proxy_on_configure") (param $ctx i32) (param $size i32) (result i32)
    (call $log2 {configure} (local.get $ctx) (local.get $size)) (i32.const {configure_ok}))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (call $log2 {headers} (local.get $ctx) (local.get $n)) (i32.const 0))
  (func (export "proxy_on_log") (param $ctx i32) (call $log1 {log} (local.get $ctx)))
  (func (export "proxy_on_done") (param $ctx i32) (result i32) (call $log1 {done} (local.get $ctx)) (i32.const 1))
  (func (export "proxy_on_delete") (param $ctx i32) (call $log1 {delete} (local.get $ctx)))
"#,
        vm_start_ok = u8::from(vm_start_ok),
        configure_ok = u8::from(configure_ok),
    )
}

#[test]
fn start_runs_create_vm_start_configure_on_root_context_1_then_streams_get_2_and_3() {
    let mut t = Strings::new();
    let body = tracing_callbacks(&mut t, true, true);
    let plugin = builder(&module(&format!("{}\n{body}", t.data())))
        .vm_config("vmcfg")
        .config("{\"a\":1}")
        .start()
        .unwrap();
    assert_eq!(
        messages(&plugin),
        vec!["create 1 0", "vm_start 1 5", "configure 1 7"]
    );
    plugin.clear_logs();

    let mut first = plugin.http_stream();
    first.request_headers(GET, true).unwrap();
    let mut second = plugin.http_stream();
    second.request_headers(GET, true).unwrap();
    assert_eq!(first.context_id(), Some(2));
    assert_eq!(second.context_id(), Some(3));
    first.complete().unwrap();
    // Envoy runs the access log (on_log) before destroying the filter (on_done, on_delete).
    assert_eq!(
        messages(&plugin),
        vec![
            "create 2 1",
            "request_headers 2 4",
            "create 3 1",
            "request_headers 3 4",
            "log 2",
            "done 2",
            "delete 2"
        ]
    );
}

#[test]
fn on_configure_false_is_a_config_rejection_carrying_the_logs() {
    let mut t = Strings::new();
    let body = tracing_callbacks(&mut t, false, true);
    let err = builder(&module(&format!("{}\n{body}", t.data())))
        .start()
        .err()
        .unwrap();
    match err {
        HarnessError::ConfigRejected { logs } => {
            assert_eq!(logs.last().unwrap().message, "configure 1 0");
        }
        other => panic!("expected ConfigRejected, got {other:?}"),
    }
}

#[test]
fn on_vm_start_false_fails_the_start() {
    let mut t = Strings::new();
    let body = tracing_callbacks(&mut t, true, false);
    let err = builder(&module(&format!("{}\n{body}", t.data())))
        .start()
        .err()
        .unwrap();
    assert!(
        matches!(err, HarnessError::VmStartRejected { .. }),
        "{err:?}"
    );
}

#[test]
fn a_module_without_abi_version_export_is_rejected() {
    let wat = module_with_abi("", "not_an_abi_marker");
    let err = Harness::from_bytes(wat.as_bytes()).err().unwrap();
    match err {
        HarnessError::Abi(message) => assert!(message.contains("ABI version"), "{message}"),
        other => panic!("expected Abi, got {other:?}"),
    }
    let old = module_with_abi("", "proxy_abi_version_0_1_0");
    assert!(matches!(
        Harness::from_bytes(old.as_bytes()),
        Err(HarnessError::Abi(_))
    ));
}

#[test]
fn abi_0_2_0_modules_are_accepted_and_detected() {
    // 0.2.0 has no proxy_get_log_level: the prelude's import of it is stubbed, not fatal.
    let builder = builder(&module_with_abi("", "proxy_abi_version_0_2_0"));
    assert_eq!(builder.abi_version(), AbiVersion::V0_2_0);
    builder.start().unwrap();
    let newer = common::builder(&module(""));
    assert_eq!(newer.abi_version(), AbiVersion::V0_2_1);
}

#[test]
fn a_module_without_allocator_or_memory_is_rejected() {
    let no_malloc =
        r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1")))"#;
    match Harness::from_bytes(no_malloc.as_bytes()) {
        Err(HarnessError::Abi(message)) => assert!(message.contains("malloc"), "{message}"),
        other => panic!("expected Abi error, got {:?}", other.err()),
    }
    let no_memory = r#"(module (func (export "malloc") (param i32) (result i32) (i32.const 0))
                                (func (export "proxy_abi_version_0_2_1")))"#;
    assert!(matches!(
        Harness::from_bytes(no_memory.as_bytes()),
        Err(HarnessError::Abi(_))
    ));
}

#[test]
fn a_callback_with_a_wrong_signature_is_an_abi_error() {
    let wat = module(
        r#"(func (export "proxy_on_request_headers") (param i32) (result i32) (i32.const 0))"#,
    );
    let err = builder(&wat).start().err().unwrap();
    match err {
        HarnessError::Abi(message) => assert!(message.contains("proxy_on_request_headers")),
        other => panic!("expected Abi, got {other:?}"),
    }
}

#[test]
fn loading_the_same_module_twice_hits_the_compile_cache() {
    // A unique module so that no other test has compiled it before.
    let unique = module(&format!(
        "(global $unique i64 (i64.const {}))",
        u64::from(std::process::id()) * 7919
    ));
    let before = Harness::cache_stats();
    let first = builder(&unique);
    let second = builder(&unique);
    assert!(!first.from_cache());
    assert!(second.from_cache());
    assert_eq!(first.module_sha256(), second.module_sha256());
    let after = Harness::cache_stats();
    assert!(after.hits > before.hits);
    first.start().unwrap();
    second.start().unwrap();
}

#[test]
fn initialize_runs_before_context_creation_and_hostcalls_other_than_logging_are_refused() {
    let mut t = Strings::new();
    let init = t.s("initialize");
    let create = t.s("create");
    let ok = format!(
        r#"{}
  (func (export "_initialize") (call $info {init}))
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32)
    (call $log2 {create} (local.get $ctx) (local.get $parent)))"#,
        t.data()
    );
    let plugin = builder(&module(&ok)).start().unwrap();
    assert_eq!(messages(&plugin), vec!["initialize", "create 1 0"]);

    let restricted = module(
        r#"(func (export "_initialize") (drop (call $proxy_set_tick_period_milliseconds (i32.const 5))))"#,
    );
    let err = builder(&restricted).start().err().unwrap();
    match err {
        HarnessError::Trap {
            callback, message, ..
        } => {
            assert_eq!(callback, "_initialize");
            assert!(
                message.contains("proxy_set_tick_period_milliseconds"),
                "{message}"
            );
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn log_level_filters_lines_and_is_reported_to_the_module() {
    let mut t = Strings::new();
    let debug = t.s("debug line");
    let level = t.s("level");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $proxy_log (i32.const 1) {debug}))
    (drop (call $proxy_get_log_level (i32.const 512)))
    (call $log1 {level} (i32.load (i32.const 512)))
    (call $log_status (call $proxy_log (i32.const 9) {debug}))
    (i32.const 1))"#,
        t.data()
    ));
    let quiet = builder(&wat).start().unwrap();
    // Info by default: the debug line is dropped, the level reads 2, level 9 is BadArgument.
    assert_eq!(messages(&quiet), vec!["level 2", "2"]);
    let verbose = builder(&wat).log_level(LogLevel::Debug).start().unwrap();
    assert_eq!(messages(&verbose), vec!["debug line", "level 1", "2"]);
    assert!(verbose.worker_logs().iter().all(|l| l.worker == 0));
    assert_eq!(verbose.worker_logs()[0].level, LogLevel::Debug);
    // The main thread's two start-ups (canary, then its own VM) logged the same, first.
    let main = verbose.main_thread().unwrap();
    assert_eq!(main.logs().len(), 6);
    assert!(main.logs().iter().all(|l| l.main_thread && l.worker == 1));
}

#[test]
fn shutdown_calls_on_done_then_on_delete_on_the_root_context() {
    let mut t = Strings::new();
    let body = tracing_callbacks(&mut t, true, true);
    let plugin = builder(&module(&format!("{}\n{body}", t.data())))
        .start()
        .unwrap();
    plugin.clear_logs();
    plugin.shutdown().unwrap();
    assert_eq!(messages(&plugin), vec!["done 1", "delete 1"]);
}

#[test]
fn unknown_proxy_imports_answer_unimplemented_instead_of_failing_to_load() {
    let wat = r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_future_feature" (func $future (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "malloc") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (i32.store8 (i32.const 100) (i32.add (i32.const 48) (call $future (i32.const 1))))
    (drop (call $log (i32.const 2) (i32.const 100) (i32.const 1)))
    (i32.const 1)))"#;
    let plugin = Harness::from_bytes(wat.as_bytes())
        .unwrap()
        .start()
        .unwrap();
    // 12 = Unimplemented, rendered as '0' + 12 = '<'.
    assert_eq!(messages(&plugin), vec!["<"]);
    let unknown_module = r#"(module (import "somewhere" "else" (func))
      (memory (export "memory") 1) (func (export "malloc") (param i32) (result i32) (i32.const 0))
      (func (export "proxy_abi_version_0_2_1")))"#;
    assert!(matches!(
        Harness::from_bytes(unknown_module.as_bytes()),
        Err(HarnessError::Load(_))
    ));
}
