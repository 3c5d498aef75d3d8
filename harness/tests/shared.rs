#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! State shared across VMs (shared data, queues, metrics), ticks, foreign functions and WASI.

mod common;
use std::time::Duration;

use common::*;
use wasmesh_harness::{LogLevel, MetricValue, Status};

#[test]
fn shared_data_is_visible_across_workers_with_envoys_cas() {
    let mut t = Strings::new();
    let key = t.s("k");
    let value = t.s("written");
    let get = t.s("get");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (i32.store (i32.const 520) (i32.const 0))
    (call $log2 {get}
      (call $proxy_get_shared_data {key} (i32.const 512) (i32.const 516) (i32.const 520))
      (i32.load (i32.const 520)))
    (if (i32.load (i32.const 516)) (then (call $info_ret)))
    (call $log_status (call $proxy_set_shared_data {key} {value} (i32.load (i32.const 520))))
    (i32.const 0))"#,
        t.data()
    ));
    let plugin = builder(&wat).workers(2).start().unwrap();
    plugin.http_stream_on(0).request_headers(GET, true).unwrap();
    assert_eq!(messages(&plugin), vec!["get 1 0", "0"]);
    assert_eq!(plugin.shared_data("k"), Some((b"written".to_vec(), 1)));
    plugin.clear_logs();

    plugin.http_stream_on(1).request_headers(GET, true).unwrap();
    // Worker 1 sees worker 0's write, and its CAS write succeeds.
    assert_eq!(messages(&plugin), vec!["get 0 1", "written", "0"]);
    assert_eq!(plugin.shared_data("k").unwrap().1, 2);

    // Another writer (cas 0 = unconditional) moves the CAS on; a stale CAS is refused.
    assert_eq!(plugin.set_shared_data("k", b"other", 0), Status::Ok);
    assert_eq!(
        plugin.set_shared_data("k", b"stale", 2),
        Status::CasMismatch
    );
    plugin.clear_logs();
    plugin.http_stream_on(1).request_headers(GET, true).unwrap();
    assert_eq!(messages(&plugin), vec!["get 0 3", "other", "0"]);
}

#[test]
fn shared_queue_notifies_the_registering_vm_and_is_reachable_from_any_vm() {
    let mut t = Strings::new();
    let name = t.s("q");
    let vm_id = t.s("");
    let registered = t.s("registered");
    let ready = t.s("ready");
    let data = t.s("from-stream");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $proxy_register_shared_queue {name} (i32.const 520)))
    (call $log1 {registered} (i32.load (i32.const 520)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $log_status (call $proxy_resolve_shared_queue {vm_id} {name} (i32.const 524)))
    (call $log_status (call $proxy_enqueue_shared_queue (i32.load (i32.const 524)) {data}))
    (call $log_status (call $proxy_enqueue_shared_queue (i32.const 77) {data}))
    (i32.const 0))
  (func (export "proxy_on_queue_ready") (param $ctx i32) (param $token i32)
    (call $log2 {ready} (local.get $ctx) (local.get $token))
    (call $log_status (call $proxy_dequeue_shared_queue (local.get $token) (i32.const 512) (i32.const 516)))
    (call $info_ret)
    (call $log_status (call $proxy_dequeue_shared_queue (local.get $token) (i32.const 512) (i32.const 516))))"#,
        t.data()
    ));
    let plugin = builder(&wat).workers(2).vm_id("vm-a").start().unwrap();
    assert_eq!(messages(&plugin), vec!["registered 1", "registered 1"]);
    plugin.clear_logs();

    plugin.http_stream_on(0).request_headers(GET, true).unwrap();
    let logs = plugin.logs();
    let lines: Vec<(usize, &str)> = logs
        .iter()
        .map(|l| (l.worker, l.message.as_str()))
        .collect();
    // Enqueued from worker 0, delivered after the callback to the last registrant (worker 1),
    // on its root context; the queue is then empty.
    assert_eq!(
        lines,
        vec![
            (0, "0"),
            (0, "0"),
            (0, "1"),
            (1, "ready 1 1"),
            (1, "0"),
            (1, "from-stream"),
            (1, "7")
        ]
    );
    plugin.clear_logs();
    plugin.enqueue("q", b"from-host").unwrap();
    assert_eq!(messages(&plugin)[2], "from-host");
    assert!(plugin.enqueue("missing", b"x").is_err());
}

#[test]
fn metrics_are_defined_per_vm_and_summed_across_workers_like_envoys_stats() {
    let mut t = Strings::new();
    let requests = t.s("requests_total");
    let active = t.s("active");
    let latency = t.s("latency_ms");
    let ids = t.s("ids");
    let value = t.s("value");
    let wat = module(&format!(
        r#"{}
  (global $counter (mut i32) (i32.const 0))
  (global $gauge (mut i32) (i32.const 0))
  (global $histogram (mut i32) (i32.const 0))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $proxy_define_metric (i32.const 0) {requests} (i32.const 520)))
    (global.set $counter (i32.load (i32.const 520)))
    (drop (call $proxy_define_metric (i32.const 0) {requests} (i32.const 524)))
    (call $log2 {ids} (global.get $counter) (i32.load (i32.const 524)))
    (drop (call $proxy_define_metric (i32.const 1) {active} (i32.const 520)))
    (global.set $gauge (i32.load (i32.const 520)))
    (drop (call $proxy_define_metric (i32.const 2) {latency} (i32.const 520)))
    (global.set $histogram (i32.load (i32.const 520)))
    (call $log2 {ids} (global.get $gauge) (global.get $histogram))
    (call $log_status (call $proxy_define_metric (i32.const 3) {latency} (i32.const 520)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $proxy_increment_metric (global.get $counter) (i64.const 1)))
    (drop (call $proxy_increment_metric (i32.load (i32.const 524)) (i64.const 1)))
    (drop (call $proxy_increment_metric (global.get $gauge) (i64.const 3)))
    (drop (call $proxy_increment_metric (global.get $gauge) (i64.const -1)))
    (drop (call $proxy_record_metric (global.get $histogram) (i64.const 42)))
    (call $log_status (call $proxy_increment_metric (global.get $histogram) (i64.const 1)))
    (call $log_status (call $proxy_increment_metric (global.get $counter) (i64.const 0)))
    (call $log_status (call $proxy_get_metric (global.get $histogram) (i32.const 528)))
    (call $log_status (call $proxy_get_metric (i32.const 400) (i32.const 528)))
    (drop (call $proxy_get_metric (global.get $counter) (i32.const 528)))
    (call $log1 {value} (i32.wrap_i64 (i64.load (i32.const 528))))
    (i32.const 0))"#,
        t.data()
    ));
    let plugin = builder(&wat).workers(2).start().unwrap();
    // Counters 4, 8, ...; gauges 5, ...; histograms 6, ...: a second define gets a new id.
    assert_eq!(messages(&plugin)[..3], ["ids 4 8", "ids 5 6", "2"]);
    plugin.clear_logs();
    plugin.http_stream_on(0).request_headers(GET, true).unwrap();
    assert_eq!(messages(&plugin), vec!["2", "2", "2", "1", "value 2"]);
    plugin.http_stream_on(1).request_headers(GET, true).unwrap();
    assert_eq!(
        plugin.metric("requests_total"),
        Some(MetricValue::Counter(4))
    );
    assert_eq!(plugin.metric("active"), Some(MetricValue::Gauge(4)));
    assert_eq!(
        plugin.metric("latency_ms"),
        Some(MetricValue::Histogram(vec![42, 42]))
    );
    // Worker 1 reads the shared counter, including worker 0's increments.
    assert_eq!(messages(&plugin).last().unwrap(), "value 4");
    assert_eq!(plugin.metrics().len(), 3);
}

#[test]
fn ticks_fire_once_per_period_crossed_interleaved_with_callout_timeouts() {
    let mut t = Strings::new();
    let tick = t.s("tick");
    let timeout = t.s("timeout");
    let cluster = t.s("c");
    let headers = t.map(&[(":method", "GET"), (":path", "/"), (":authority", "c")]);
    let empty = t.s("");
    let wat = module(&format!(
        r#"{}
  (global $ticks (mut i32) (i32.const 0))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $proxy_set_tick_period_milliseconds (i32.const 100))) (i32.const 1))
  (func (export "proxy_on_tick") (param $ctx i32)
    (global.set $ticks (i32.add (global.get $ticks) (i32.const 1)))
    (drop (call $proxy_get_current_time_nanoseconds (i32.const 528)))
    (call $log1 {tick} (i32.wrap_i64 (i64.rem_u (i64.div_u (i64.load (i32.const 528)) (i64.const 1000000)) (i64.const 100000))))
    (if (i32.eq (global.get $ticks) (i32.const 1))
      (then (drop (call $proxy_http_call {cluster} {headers} {empty} (i32.const 0) (i32.const 0) (i32.const 150) (i32.const 520)))))
    (if (i32.eq (global.get $ticks) (i32.const 4))
      (then (drop (call $proxy_set_tick_period_milliseconds (i32.const 0))))))
  (func (export "proxy_on_http_call_response") (param $ctx i32) (param $token i32) (param i32 i32 i32)
    (drop (call $proxy_get_current_time_nanoseconds (i32.const 528)))
    (call $log1 {timeout} (i32.wrap_i64 (i64.rem_u (i64.div_u (i64.load (i32.const 528)) (i64.const 1000000)) (i64.const 100000)))))"#,
        t.data()
    ));
    // The module logs wall-clock milliseconds modulo 100 s: a start on a whole second.
    let plugin = builder(&wat)
        .start_time(wasmesh_harness::pinned_start())
        .start()
        .unwrap();
    let start = plugin.now();
    assert_eq!(plugin.tick_period(0), Some(Duration::from_millis(100)));
    plugin.advance_clock(Duration::from_millis(99)).unwrap();
    assert!(plugin.logs().is_empty());
    plugin.advance_clock(Duration::from_millis(251)).unwrap();
    assert_eq!(
        messages(&plugin),
        vec!["tick 100", "tick 200", "timeout 250", "tick 300"]
    );
    plugin.advance_clock(Duration::from_secs(10)).unwrap();
    // The fourth tick disabled the timer.
    assert_eq!(messages(&plugin).last().unwrap(), "tick 400");
    assert_eq!(plugin.tick_period(0), None);
    assert_eq!(
        plugin.now().duration_since(start).unwrap(),
        Duration::from_millis(10_350)
    );
}

#[test]
fn foreign_functions_are_called_synchronously_and_can_call_back() {
    let mut t = Strings::new();
    let reverse = t.s("reverse");
    let failing = t.s("failing");
    let missing = t.s("missing");
    let args = t.s("abc");
    let callback = t.s("callback");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (call $log_status (call $proxy_call_foreign_function {reverse} {args} (i32.const 512) (i32.const 516)))
    (call $info_ret)
    (call $log_status (call $proxy_call_foreign_function {failing} {args} (i32.const 512) (i32.const 516)))
    (call $log_status (call $proxy_call_foreign_function {missing} {args} (i32.const 512) (i32.const 516)))
    (i32.const 1))
  (func (export "proxy_on_foreign_function") (param $ctx i32) (param $id i32) (param $size i32)
    (call $log2 {callback} (local.get $id) (local.get $size))
    (drop (call $proxy_get_buffer_bytes (i32.const 8) (i32.const 0) (local.get $size) (i32.const 512) (i32.const 516)))
    (call $info_ret))"#,
        t.data()
    ));
    let plugin = builder(&wat)
        .foreign_function("reverse", |args| Ok(args.iter().rev().copied().collect()))
        .foreign_function("failing", |_| Err(Status::BadArgument))
        .start()
        .unwrap();
    assert_eq!(messages(&plugin), vec!["0", "cba", "2", "1"]);
    plugin.clear_logs();
    plugin.trigger_foreign_function(7, b"payload").unwrap();
    assert_eq!(messages(&plugin), vec!["callback 7 7", "payload"]);
}

#[test]
fn wasi_stdout_stderr_clocks_randomness_and_environment_behave_as_in_envoy() {
    let mut t = Strings::new();
    let hello = t.s("hello from stdout\n");
    let oops = t.s("oops");
    let rt = t.s("realtime_s");
    let env = t.s("env");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    ;; iovec at 900: (ptr, len)
    (i32.store (i32.const 900) {hello_ptr})
    (i32.store (i32.const 904) (i32.const {hello_len}))
    (drop (call $fd_write (i32.const 1) (i32.const 900) (i32.const 1) (i32.const 520)))
    (call $log_status (i32.load (i32.const 520)))
    (i32.store (i32.const 900) {oops_ptr})
    (i32.store (i32.const 904) (i32.const 4))
    (drop (call $fd_write (i32.const 2) (i32.const 900) (i32.const 1) (i32.const 520)))
    (call $log_status (call $fd_write (i32.const 3) (i32.const 900) (i32.const 1) (i32.const 520)))
    (call $log_status (call $fd_write (i32.const 1) (i32.const 900) (i32.const 1) (i32.const -4)))
    (drop (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 528)))
    (call $log1 {rt} (i32.wrap_i64 (i64.div_u (i64.load (i32.const 528)) (i64.const 1000000000))))
    (call $log_status (call $clock_time_get (i32.const 1) (i64.const 1) (i32.const 536)))
    (call $log_status (call $clock_time_get (i32.const 2) (i64.const 1) (i32.const 536)))
    (call $log_status (call $random_get (i32.const 2000) (i32.const 16)))
    (call $info (i32.const 2000) (i32.const 16))
    (call $log_status (call $random_get (i32.const 2000) (i32.const 70000)))
    (drop (call $environ_sizes_get (i32.const 520) (i32.const 524)))
    (call $log2 {env} (i32.load (i32.const 520)) (i32.load (i32.const 524)))
    (drop (call $environ_get (i32.const 3000) (i32.const 3100)))
    (call $info (i32.load (i32.const 3000)) (i32.sub (i32.load (i32.const 524)) (i32.const 1)))
    (call $log_status (call $fd_prestat_get (i32.const 3) (i32.const 520)))
    (i32.const 1))"#,
        t.data(),
        hello_ptr = ptr(&hello),
        hello_len = "hello from stdout\n".len(),
        oops_ptr = ptr(&oops),
    ));
    let start = |seed| {
        builder(&wat)
            .env("REGION", "eu-1")
            .random_seed(seed)
            // The realtime clock is compared with a fixed instant.
            .start_time(wasmesh_harness::pinned_start())
            .start()
            .unwrap()
    };
    let plugin = start(1);
    let logs = plugin.logs();
    let lines: Vec<&str> = logs.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(lines[0], "hello from stdout");
    assert_eq!(logs[0].level, LogLevel::Info);
    assert_eq!(lines[1], "18", "nwritten counts the newline");
    assert_eq!((lines[2], logs[2].level), ("oops", LogLevel::Error));
    assert_eq!(lines[3], "8", "fd 3 is EBADF");
    // Envoy logs the data before it finds the bad nwritten pointer.
    assert_eq!(lines[4], "oops");
    assert_eq!(lines[5], "21", "bad nwritten pointer is EFAULT");
    assert_eq!(
        lines[6],
        format!("realtime_s {}", wasmesh_harness::START_UNIX_SECONDS)
    );
    assert_eq!(lines[7], "0");
    assert_eq!(lines[8], "58", "cputime clocks are NOTSUP");
    assert_eq!(lines[9], "0");
    assert_eq!(lines[11], "28", "random_get over 64 KiB is EINVAL");
    assert_eq!(lines[12], "env 1 12");
    assert_eq!(lines[13], "REGION=eu-1");
    assert_eq!(lines[14], "8", "no preopened directories");
    // Randomness is deterministic per seed.
    assert_eq!(start(1).logs()[10].message, lines[10]);
    assert_ne!(start(2).logs()[10].message, lines[10]);
}
