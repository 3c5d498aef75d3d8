#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The VMs Envoy 1.40 runs on its main thread beside an HTTP plugin's worker VMs, in the harness
//! and in a real Envoy, at `--concurrency` 1 and 2.
//!
//! Envoy loads an HTTP wasm plugin on its main thread: a base VM that only runs `_initialize`,
//! a canary VM that runs the plugin's start sequence (`proxy_on_context_create`,
//! `proxy_on_vm_start`, `proxy_on_configure`) and is dropped without `proxy_on_done`, then the
//! main thread's own thread-local VM (its plugin config's thread-local slot is set on the main
//! thread as on every worker), which stays: its ticks fire, but it never sees a request. Then
//! each worker's VM starts.
//!
//! The module numbers its VMs: in `proxy_on_configure` it increments shared-data key `starts`
//! (with its CAS, retrying on a mismatch) and keeps the value as its serial, so serial 1 is the
//! canary, 2 the main thread's VM and 3.. the workers', in the harness and in Envoy. Every line
//! it logs is `MT <event> <serial or status>`: start-up callbacks, queue registration, ticks,
//! requests, queue notifications. A request enqueues on queue `q`, which every VM registers
//! (the last registration wins: a worker's).
//!
//! With a bootstrap service (`envoy.bootstrap.wasm`) the same module also runs as `svc`: a
//! singleton service's VMs start after the plugin's main-thread VMs, and a service without
//! `singleton` runs as a plugin does (main-thread VMs, then one VM per worker).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use wasmesh_envoy::{self as envoy, EnvoyBuilder, HttpRequest, WasmFilter};

const VM_ID: &str = "mt";
const TICK_MS: u64 = 200;
const TAGS: [&str; 11] = [
    "MT init",
    "MT root_create",
    "MT vm_start",
    "MT configure",
    "MT starts",
    "MT register",
    "MT tick_period",
    "MT tick",
    "MT request",
    "MT queue_ready",
    "MT done",
];

fn module() -> String {
    let mut t = Strings::new();
    let tags: Vec<String> = TAGS.iter().map(|tag| t.s(tag)).collect();
    let tag = |name: &str| -> String {
        let index = TAGS.iter().position(|t| *t == name).unwrap();
        tags[index].clone()
    };
    let q = t.s("q");
    let key = t.s("starts");
    let vm_id = t.s(VM_ID);
    common::module(&format!(
        r#"
  {data}
  (global $serial (mut i32) (i32.const 0))
  (global $queue (mut i32) (i32.const 0))
  (func (export "_initialize")
    (call $log1 {init} (i32.const 0)))
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32)
    (if (i32.eqz (local.get $parent)) (then (call $log1 {root_create} (local.get $ctx)))))
  (func (export "proxy_on_vm_start") (param $ctx i32) (param $size i32) (result i32)
    (call $log1 {vm_start} (local.get $size))
    (i32.const 1))
  (func (export "proxy_on_configure") (param $ctx i32) (param $size i32) (result i32)
    (local $rc i32) (local $value i32) (local $cas i32)
    (call $log1 {configure} (local.get $size))
    ;; starts += 1 under its CAS; the new value is this VM's serial.
    (block $done (loop $retry
      (local.set $rc (call $proxy_get_shared_data {key} (i32.const 512) (i32.const 516) (i32.const 520)))
      (if (i32.eqz (local.get $rc))
        (then
          (local.set $value (i32.load (i32.load (i32.const 512))))
          (local.set $cas (i32.load (i32.const 520))))
        (else (local.set $value (i32.const 0)) (local.set $cas (i32.const 0))))
      (i32.store (i32.const 600) (i32.add (local.get $value) (i32.const 1)))
      (br_if $done (i32.eqz (call $proxy_set_shared_data {key} (i32.const 600) (i32.const 4) (local.get $cas))))
      (br $retry)))
    (global.set $serial (i32.load (i32.const 600)))
    (call $log1 {starts} (global.get $serial))
    (call $log2 {register} (call $proxy_register_shared_queue {q} (i32.const 524)) (global.get $serial))
    (global.set $queue (i32.load (i32.const 524)))
    (call $log2 {tick_period} (call $proxy_set_tick_period_milliseconds (i32.const {tick_ms})) (global.get $serial))
    (i32.const 1))
  (func (export "proxy_on_tick") (param $ctx i32)
    (call $log1 {tick} (global.get $serial)))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (call $log1 {request} (global.get $serial))
    (if (i32.eqz (call $proxy_resolve_shared_queue {vm_id} {q} (i32.const 528)))
      (then (drop (call $proxy_enqueue_shared_queue (i32.load (i32.const 528)) {q}))))
    (i32.const 0))
  (func (export "proxy_on_queue_ready") (param $ctx i32) (param $token i32)
    (drop (call $proxy_dequeue_shared_queue (local.get $token) (i32.const 512) (i32.const 516)))
    (call $log1 {queue_ready} (global.get $serial)))
  (func (export "proxy_on_done") (param $ctx i32) (result i32)
    (call $log1 {done} (global.get $serial))
    (i32.const 1))
"#,
        data = t.data(),
        init = tag("MT init"),
        root_create = tag("MT root_create"),
        vm_start = tag("MT vm_start"),
        configure = tag("MT configure"),
        starts = tag("MT starts"),
        key = key,
        register = tag("MT register"),
        tick_period = tag("MT tick_period"),
        tick = tag("MT tick"),
        request = tag("MT request"),
        queue_ready = tag("MT queue_ready"),
        done = tag("MT done"),
        q = q,
        vm_id = vm_id,
        tick_ms = TICK_MS,
    ))
}

/// Who logged a line: a VM on the main thread, or a worker (Envoy's thread id, the harness's
/// worker number).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Thread {
    Main,
    Worker(String),
}

/// The serial at the end of a line (`MT tick 2`, `MT register 0 2`).
fn serial(line: &str) -> u32 {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// What the module logged, arranged for comparison.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    /// The main thread's lines before any request, ticks left out, in order.
    main_start: Vec<String>,
    /// Each worker's start-up lines, in order, the workers sorted by serial.
    worker_starts: Vec<Vec<String>>,
    /// Whether every start-up line of the main thread came before every worker line.
    main_first: bool,
    /// Serials of the VMs that ticked on the main thread, and on workers.
    main_ticks: BTreeSet<u32>,
    worker_ticks: BTreeSet<u32>,
    /// Serials of the VMs that saw requests, on the main thread and on workers.
    main_requests: BTreeSet<u32>,
    worker_requests: BTreeSet<u32>,
    /// How many queue notifications, and which serials got them (on a worker).
    queue_ready: usize,
    queue_ready_serials: BTreeSet<u32>,
    main_queue_ready: usize,
}

fn observe(lines: &[(Thread, String)]) -> Observed {
    let is_start = |line: &str| {
        !line.starts_with("MT tick ")
            && !line.starts_with("MT request ")
            && !line.starts_with("MT queue_ready ")
            && !line.starts_with("MT done ")
    };
    let main_start: Vec<String> = lines
        .iter()
        .filter(|(thread, line)| *thread == Thread::Main && is_start(line))
        .map(|(_, line)| line.clone())
        .collect();
    let mut workers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (thread, line) in lines {
        if let (Thread::Worker(id), true) = (thread, is_start(line)) {
            workers.entry(id.clone()).or_default().push(line.clone());
        }
    }
    let mut worker_starts: Vec<Vec<String>> = workers.into_values().collect();
    worker_starts.sort_by_key(|lines| {
        lines
            .iter()
            .find(|line| line.starts_with("MT starts "))
            .map(|line| serial(line))
    });
    let last_main_start = lines
        .iter()
        .rposition(|(thread, line)| *thread == Thread::Main && is_start(line));
    let first_worker = lines
        .iter()
        .position(|(thread, _)| matches!(thread, Thread::Worker(_)));
    let serials = |main: bool, prefix: &str| -> Vec<u32> {
        lines
            .iter()
            .filter(|(thread, line)| (*thread == Thread::Main) == main && line.starts_with(prefix))
            .map(|(_, line)| serial(line))
            .collect()
    };
    Observed {
        main_start,
        worker_starts,
        main_first: match (last_main_start, first_worker) {
            (Some(main), Some(worker)) => main < worker,
            _ => true,
        },
        main_ticks: serials(true, "MT tick ").into_iter().collect(),
        worker_ticks: serials(false, "MT tick ").into_iter().collect(),
        main_requests: serials(true, "MT request ").into_iter().collect(),
        worker_requests: serials(false, "MT request ").into_iter().collect(),
        queue_ready: serials(false, "MT queue_ready ").len(),
        queue_ready_serials: serials(false, "MT queue_ready ").into_iter().collect(),
        main_queue_ready: serials(true, "MT queue_ready ").len(),
    }
}

const PATHS: [&str; 4] = ["/a", "/b", "/c", "/d"];

fn harness_run(bytes: &[u8], workers: usize) -> (Observed, wasmesh_harness::Plugin) {
    let plugin = wasmesh_harness::Harness::from_bytes(bytes)
        .unwrap()
        .vm_id(VM_ID)
        .root_id("mt")
        .plugin_name("mt")
        .config("cfg")
        .workers(workers)
        .start()
        .unwrap();
    // Five tick periods of virtual time: every VM that ticks does, five times.
    plugin
        .advance_clock(Duration::from_millis(5 * TICK_MS))
        .unwrap();
    for path in PATHS {
        let mut stream = plugin.http_stream();
        stream
            .send_request(&wasmesh_harness::ClientRequest::get(path))
            .unwrap();
        stream.complete().unwrap();
    }
    let lines: Vec<(Thread, String)> = plugin
        .logs()
        .into_iter()
        .map(|entry| {
            let thread = if entry.main_thread {
                Thread::Main
            } else {
                Thread::Worker(entry.worker.to_string())
            };
            (thread, entry.message)
        })
        .collect();
    (observe(&lines), plugin)
}

/// The module's `MT` lines of Envoy's log, each with the thread that logged it: the main
/// thread is the one that ran the base VM's `_initialize` (the first line).
fn envoy_lines(log: &str) -> Vec<(Thread, String)> {
    let raw: Vec<(String, String)> = log
        .lines()
        .filter_map(|line| {
            let at = line.find("MT ")?;
            // Envoy's default log format: `[date time][thread id][level][logger] ...`.
            let thread = line.split(']').nth(1)?.trim_start_matches('[').to_string();
            Some((thread, line[at..].trim().to_string()))
        })
        .collect();
    let main = raw
        .first()
        .map(|(thread, _)| thread.clone())
        .unwrap_or_default();
    raw.into_iter()
        .map(|(thread, line)| {
            let thread = if thread == main {
                Thread::Main
            } else {
                Thread::Worker(thread)
            };
            (thread, line)
        })
        .collect()
}

fn envoy_run(bytes: &[u8], workers: usize) -> (Observed, BTreeMap<u32, usize>) {
    let file = WasmFile::new(&format!("main-thread-{workers}"), bytes);
    let filter = WasmFilter::new(&file.path)
        .vm_id(VM_ID)
        .root_id("mt")
        .name("mt")
        .configuration("cfg");
    let envoy = EnvoyBuilder::new()
        .wasm_filter(filter)
        .direct_response(200, "ok")
        .concurrency(workers as u32)
        .start()
        .unwrap();
    let ticks = || -> BTreeMap<u32, usize> {
        let mut ticks = BTreeMap::new();
        for (_, line) in envoy_lines(&envoy.log()) {
            if line.starts_with("MT tick ") {
                *ticks.entry(serial(&line)).or_default() += 1;
            }
        }
        ticks
    };
    // Every VM that ticks in the harness (the main thread's, serial 2, and each worker's) has
    // ticked three times; wall-clock time, so only a generous deadline.
    let ticking = 2..=(workers as u32 + 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ticking
        .clone()
        .all(|s| ticks().get(&s).is_some_and(|n| *n >= 3))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not every VM ticked three times: {:?}\n{}",
            ticks(),
            envoy.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for path in PATHS {
        assert_eq!(envoy.send(&HttpRequest::get(path)).unwrap().status, 200);
    }
    let queued = || {
        envoy_lines(&envoy.log())
            .iter()
            .filter(|(_, line)| line.starts_with("MT queue_ready "))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while queued() < PATHS.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(100));
    (observe(&envoy_lines(&envoy.log())), ticks())
}

fn compare(workers: usize) {
    let bytes = wat::parse_str(module()).unwrap();
    let (harness, plugin) = harness_run(&bytes, workers);
    let (envoy, envoy_ticks) = envoy_run(&bytes, workers);
    eprintln!("harness: {harness:#?}");
    eprintln!("envoy: {envoy:#?}");
    eprintln!("envoy ticks per serial: {envoy_ticks:?}");
    let last = workers as u32 + 2;

    // The start-ups: base VM, canary (serial 1) and main-thread VM (serial 2) on the main thread,
    // before any worker's; one per worker (serials 3..).
    assert_eq!(harness.main_start, envoy.main_start, "main thread start-up");
    assert_eq!(
        harness
            .main_start
            .iter()
            .filter(|l| *l == "MT init 0")
            .count(),
        3
    );
    assert_eq!(
        harness.worker_starts, envoy.worker_starts,
        "worker start-ups"
    );
    assert_eq!(harness.worker_starts.len(), workers);
    assert!(harness.main_first && envoy.main_first, "main thread first");

    // Ticks: the main thread's VM and every worker's, never the canary's.
    assert_eq!(harness.main_ticks, envoy.main_ticks, "main-thread ticks");
    assert_eq!(harness.main_ticks, BTreeSet::from([2]));
    assert_eq!(harness.worker_ticks, envoy.worker_ticks, "worker ticks");
    assert_eq!(harness.worker_ticks, (3..=last).collect());
    assert!(!envoy_ticks.contains_key(&1), "the canary never ticks");
    let main = plugin.main_thread().unwrap();
    assert_eq!(main.tick_period(), Some(Duration::from_millis(TICK_MS)));
    let harness_ticks = plugin
        .logs()
        .iter()
        .filter(|e| e.message.starts_with("MT tick "))
        .count();
    assert_eq!(
        harness_ticks,
        5 * (workers + 1),
        "five ticks on each ticking VM"
    );

    // Requests reach workers only; every enqueue notifies the VM that registered the queue last:
    // a worker's (in Envoy whichever worker registered last; here the last worker).
    assert_eq!(
        harness.main_requests, envoy.main_requests,
        "main-thread requests"
    );
    assert!(harness.main_requests.is_empty());
    assert!(envoy.worker_requests.iter().all(|s| (3..=last).contains(s)));
    assert_eq!(
        harness.queue_ready, envoy.queue_ready,
        "queue notifications"
    );
    assert_eq!(harness.main_queue_ready, envoy.main_queue_ready);
    assert_eq!(harness.main_queue_ready, 0);
    assert_eq!(harness.queue_ready_serials, BTreeSet::from([last]));
    assert_eq!(envoy.queue_ready_serials.len(), 1, "one VM gets the queue");
    assert!(envoy.queue_ready_serials.iter().all(|s| *s >= 3));

    // Shared data: every start-up counted, the canary's included.
    let (value, _) = plugin.shared_data("starts").unwrap();
    assert_eq!(value, last.to_le_bytes());
}

#[test]
fn main_thread_vms_match_envoy_with_one_worker() {
    if envoy::skip_requested() {
        return;
    }
    compare(1);
}

#[test]
fn main_thread_vms_match_envoy_with_two_workers() {
    if envoy::skip_requested() {
        return;
    }
    compare(2);
}

/// Without the main-thread VMs ([`wasmesh_harness::PluginBuilder::main_thread_vms`]`(false)`)
/// each worker starts once and the workers alone tick.
#[test]
fn main_thread_vms_can_be_turned_off() {
    let plugin = builder(&module())
        .vm_id(VM_ID)
        .workers(2)
        .main_thread_vms(false)
        .start()
        .unwrap();
    assert!(plugin.main_thread().is_none());
    plugin
        .advance_clock(Duration::from_millis(TICK_MS))
        .unwrap();
    let lines: Vec<String> = plugin.logs().into_iter().map(|e| e.message).collect();
    assert_eq!(lines.iter().filter(|l| *l == "MT init 0").count(), 2);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("MT tick "))
            .collect::<Vec<_>>(),
        ["MT tick 1", "MT tick 2"]
    );
    assert!(plugin.logs().iter().all(|e| !e.main_thread));
}

/// [`wasmesh_harness::Plugin::worker_logs`] leaves the main thread's lines out, and
/// [`wasmesh_harness::MainThread::logs`] has only those.
#[test]
fn worker_logs_leave_the_main_thread_out() {
    let plugin = builder(&module()).vm_id(VM_ID).start().unwrap();
    let main = plugin.main_thread().unwrap();
    assert_eq!(main.worker(), 1);
    let worker: Vec<String> = plugin
        .worker_logs()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(
        worker,
        [
            "MT init 0",
            "MT root_create 1",
            "MT vm_start 0",
            "MT configure 0",
            "MT starts 3",
            "MT register 0 3",
            "MT tick_period 0 3",
        ]
    );
    assert!(main.logs().iter().all(|e| e.main_thread && e.worker == 1));
    assert_eq!(main.logs().len(), 3 + 2 * 6);
    assert!(main.vm_failure().is_none());
}

/// A bootstrap service `envoy.bootstrap.wasm` beside the plugin, in Envoy: the module as
/// `svc` (its own VM key, through its VM configuration) under the same vm_id, so the serials
/// count both.
fn envoy_with_service(
    file: &WasmFile,
    workers: u32,
    singleton: bool,
    with_filter: bool,
) -> wasmesh_envoy::Envoy {
    let filter = WasmFilter::new(&file.path)
        .vm_id(VM_ID)
        .root_id("mt")
        .name("mt")
        .vm_configuration("filter")
        .configuration("cfg");
    let service = WasmFilter::new(&file.path)
        .vm_id(VM_ID)
        .root_id("svc")
        .name("svc")
        .vm_configuration("service")
        .configuration("svc-config");
    let mut builder = EnvoyBuilder::new()
        .direct_response(200, "ok")
        .concurrency(workers);
    if with_filter {
        builder = builder.wasm_filter(filter);
    }
    let mut bootstrap = builder.bootstrap();
    bootstrap["bootstrap_extensions"] = serde_json::json!([{
        "name": "envoy.bootstrap.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
            "singleton": singleton,
            "config": service.to_envoy_json()["typed_config"]["config"].clone(),
        },
    }]);
    builder
        .start_with_bootstrap(
            &format!("{bootstrap:#}"),
            wasmesh_envoy::BootstrapFormat::Json,
        )
        .unwrap()
}

/// Waits until each of `serials` ticked three times (wall-clock time: a generous deadline).
fn wait_for_ticks(envoy: &wasmesh_envoy::Envoy, serials: &[u32]) {
    let ticks = || -> BTreeMap<u32, usize> {
        let mut ticks = BTreeMap::new();
        for (_, line) in envoy_lines(&envoy.log()) {
            if line.starts_with("MT tick ") {
                *ticks.entry(serial(&line)).or_default() += 1;
            }
        }
        ticks
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !serials
        .iter()
        .all(|s| ticks().get(s).is_some_and(|n| *n >= 3))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not every VM ticked three times: {:?}\n{}",
            ticks(),
            envoy.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Envoy's `MT` lines with who logged them (`svc`, `mt`, or `-` for `_initialize`, which Envoy
/// logs without a plugin) before the message.
fn envoy_labelled(log: &str) -> Vec<(Thread, String)> {
    let labels: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("MT "))
        .map(|line| {
            if line.contains("wasm log svc ") {
                "svc"
            } else if line.contains("wasm log mt ") {
                "mt"
            } else {
                "-"
            }
        })
        .collect();
    envoy_lines(log)
        .into_iter()
        .zip(labels)
        .map(|((thread, line), label)| (thread, format!("{label} {line}")))
        .collect()
}

/// The harness's `MT` lines labelled as [`envoy_labelled`] does.
fn harness_labelled(plugin: &wasmesh_harness::Plugin) -> Vec<(Thread, String)> {
    let service = plugin.service().map(|s| s.worker());
    plugin
        .logs()
        .into_iter()
        .map(|entry| {
            let label = if entry.message == "MT init 0" {
                "-"
            } else if Some(entry.worker) == service {
                "svc"
            } else {
                "mt"
            };
            let thread = if entry.main_thread {
                Thread::Main
            } else {
                Thread::Worker(entry.worker.to_string())
            };
            (thread, format!("{label} {}", entry.message))
        })
        .collect()
}

/// The main thread's start-up lines (no ticks), and each worker thread's lines.
fn by_thread(lines: &[(Thread, String)]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut main = Vec::new();
    let mut workers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (thread, line) in lines {
        if line.contains("MT tick ") {
            continue;
        }
        match thread {
            Thread::Main => main.push(line.clone()),
            Thread::Worker(id) => workers.entry(id.clone()).or_default().push(line.clone()),
        }
    }
    let mut workers: Vec<Vec<String>> = workers.into_values().collect();
    workers.sort();
    (main, workers)
}

/// Who ticked: (main thread?, label and serial).
fn tickers(lines: &[(Thread, String)]) -> BTreeSet<(bool, String)> {
    lines
        .iter()
        .filter(|(_, line)| line.contains("MT tick "))
        .map(|(thread, line)| (*thread == Thread::Main, line.clone()))
        .collect()
}

/// A singleton service beside the plugin: Envoy 1.40 starts the plugin's main-thread VMs
/// (serials 1 and 2), then the service's (3 and 4: base, canary, its VM), then the worker's (5).
#[test]
fn a_singleton_service_starts_after_the_plugins_main_thread_vms_as_in_envoy() {
    if envoy::skip_requested() {
        return;
    }
    let bytes = wat::parse_str(module()).unwrap();
    let service = builder(&module())
        .vm_id(VM_ID)
        .root_id("svc")
        .vm_config("service")
        .config("svc-config");
    let plugin = builder(&module())
        .vm_id(VM_ID)
        .root_id("mt")
        .vm_config("filter")
        .config("cfg")
        .service(service)
        .start()
        .unwrap();
    plugin
        .advance_clock(Duration::from_millis(3 * TICK_MS))
        .unwrap();
    let harness = harness_labelled(&plugin);

    let file = WasmFile::new("main-thread-singleton", &bytes);
    let envoy = envoy_with_service(&file, 1, true, true);
    wait_for_ticks(&envoy, &[2, 4, 5]);
    let envoy = envoy_labelled(&envoy.log());

    let (harness_main, harness_workers) = by_thread(&harness);
    let (envoy_main, envoy_workers) = by_thread(&envoy);
    eprintln!("harness main thread: {harness_main:#?}\nenvoy main thread: {envoy_main:#?}");
    assert_eq!(harness_main, envoy_main, "main thread");
    assert_eq!(harness_workers, envoy_workers, "worker");
    assert_eq!(tickers(&harness), tickers(&envoy), "who ticks");
    assert_eq!(
        tickers(&harness),
        BTreeSet::from([
            (true, "mt MT tick 2".to_string()),
            (true, "svc MT tick 4".to_string()),
            (false, "mt MT tick 5".to_string()),
        ])
    );
}

/// A bootstrap service without `singleton` alone: Envoy 1.40 runs it as it runs a plugin (base,
/// canary and VM on the main thread, then one VM per worker, every one but the canary ticking),
/// so in the harness it is a plugin that gets no requests.
#[test]
fn a_service_without_singleton_runs_as_a_plugin_without_requests() {
    if envoy::skip_requested() {
        return;
    }
    let bytes = wat::parse_str(module()).unwrap();
    let plugin = builder(&module())
        .vm_id(VM_ID)
        .root_id("svc")
        .vm_config("service")
        .config("svc-config")
        .workers(2)
        .start()
        .unwrap();
    plugin
        .advance_clock(Duration::from_millis(3 * TICK_MS))
        .unwrap();
    // Every line labelled `svc` but `_initialize`'s.
    let harness: Vec<(Thread, String)> = harness_labelled(&plugin)
        .into_iter()
        .map(|(thread, line)| (thread, line.replacen("mt MT", "svc MT", 1)))
        .collect();

    let file = WasmFile::new("main-thread-per-worker", &bytes);
    let envoy = envoy_with_service(&file, 2, false, false);
    wait_for_ticks(&envoy, &[2, 3, 4]);
    let envoy = envoy_labelled(&envoy.log());

    let (harness_main, harness_workers) = by_thread(&harness);
    let (envoy_main, envoy_workers) = by_thread(&envoy);
    eprintln!("harness: {harness_main:#?} {harness_workers:#?}");
    eprintln!("envoy: {envoy_main:#?} {envoy_workers:#?}");
    assert_eq!(harness_main, envoy_main, "main thread");
    assert_eq!(harness_workers, envoy_workers, "workers");
    assert_eq!(tickers(&harness), tickers(&envoy), "who ticks");
}

/// A module that dispatches an HTTP callout from `proxy_on_configure` and logs `CO answered
/// <status count>` when its answer arrives.
fn callout_module() -> String {
    let mut t = Strings::new();
    let cluster = t.s("rec");
    let headers = t.map(&[
        (":method", "GET"),
        (":path", "/configure"),
        (":authority", "rec"),
    ]);
    let empty = t.s("");
    let answered = t.s("CO answered");
    common::module(&format!(
        r#"
  {data}
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $proxy_http_call {cluster} {headers} {empty} (i32.const 0) (i32.const 0) (i32.const 5000) (i32.const 520)))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
    (call $log1 {answered} (local.get 2)))
"#,
        data = t.data(),
    ))
}

/// A callout dispatched at start-up: the canary's never reaches the upstream (Envoy cancels it
/// with the canary), the main thread's VM's and the worker's do, and their answers arrive.
#[test]
fn start_up_callouts_of_the_main_thread_match_envoy() {
    if envoy::skip_requested() {
        return;
    }
    let bytes = wat::parse_str(callout_module()).unwrap();
    let plugin = builder(&callout_module())
        .cluster("rec")
        .http_callout_handler(|_| wasmesh_harness::CalloutReply::ok(200, "{}"))
        .start()
        .unwrap();
    let harness_callouts = plugin.http_callouts().len();
    let harness_answers = plugin
        .logs()
        .iter()
        .filter(|e| e.message.starts_with("CO answered"))
        .count();
    assert!(plugin.pending_http_callouts().is_empty());

    let upstream = wasmesh_envoy::TestServer::echo().unwrap();
    let file = WasmFile::new("main-thread-callout", &bytes);
    let envoy = EnvoyBuilder::new()
        .wasm_filter(WasmFilter::new(&file.path).name("co"))
        .cluster(wasmesh_envoy::Cluster::new("rec", upstream.addr()))
        .direct_response(200, "ok")
        .concurrency(1)
        .start()
        .unwrap();
    let answers = || {
        envoy
            .log()
            .lines()
            .filter(|l| l.contains("CO answered"))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while answers() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Anything more (the canary's) would have arrived by now.
    std::thread::sleep(Duration::from_millis(500));
    eprintln!("harness: {harness_callouts} callouts, {harness_answers} answers");
    eprintln!(
        "envoy: {} requests, {} answers",
        upstream.requests().len(),
        answers()
    );
    assert_eq!(
        harness_callouts,
        upstream.requests().len(),
        "callouts received"
    );
    assert_eq!(harness_answers, answers(), "answers");
    assert_eq!(harness_callouts, 2);
}
