#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! A singleton service (Envoy's bootstrap extension `envoy.bootstrap.wasm` with
//! `singleton: true`: one VM on the main thread) fed through a shared queue by an HTTP filter of
//! the same vm_id, in the harness ([`PluginBuilder::service`]) and in a real Envoy 1.40. One
//! module plays both parts, told apart by its VM configuration (`service` or `filter`, which
//! also keeps the two in VMs of their own in Envoy, whose VM key includes it). The service
//! registers queue `q`, sets a tick period and, on each `proxy_on_queue_ready`, dequeues one
//! item and logs it; the filter resolves `q` on each request (under the vm_id, under no vm_id
//! and under another vm_id) and enqueues the request path. What the service logged, from its
//! start-up callbacks on, and what the filter logged per request must be the same.
//!
//! Every line the module logs is `SQ <S|F> <event> <number>`. The same module written with the
//! `proxy-wasm` crate alone (`harness/e2e/modules/rust/queue`) goes through the same comparison.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use wasmesh_envoy::{self as envoy, BootstrapFormat, EnvoyBuilder, HttpRequest, WasmFilter};

const VM_ID: &str = "sq";
const SERVICE_CONFIG: &str = "svc-config";
const PATHS: [&str; 3] = ["/a", "/bb", "/ccc"];

/// The events the module logs, each as a data-segment string.
const TAGS: [&str; 13] = [
    "context_create",
    "vm_start",
    "configure",
    "register",
    "tick_period",
    "tick",
    "queue_ready",
    "dequeue",
    "resolve",
    "resolve_empty_vm_id",
    "resolve_other_vm_id",
    "enqueue",
    "done",
];

fn module() -> String {
    let mut t = Strings::new();
    let q = t.s("q");
    let vm_id = t.s(VM_ID);
    let other = t.s("other");
    let path = t.s(":path");
    let tags: Vec<String> = TAGS.iter().map(|tag| t.s(tag)).collect();
    let tag = |name: &str| -> &str {
        let index = TAGS.iter().position(|t| *t == name).unwrap();
        &tags[index]
    };
    module_body(format!(
        r#"
  {data}
  ;; 1 for the service, 2 for the filter (from the VM configuration's first byte).
  (global $role (mut i32) (i32.const 0))
  (global $token (mut i32) (i32.const 0))
  ;; Logs "SQ <S|F> <tag> <n>".
  (func $say (param $tag i32) (param $taglen i32) (param $n i32)
    (local $p i32)
    (i32.store8 (i32.const 4096) (i32.const 83))
    (i32.store8 (i32.const 4097) (i32.const 81))
    (i32.store8 (i32.const 4098) (i32.const 32))
    (i32.store8 (i32.const 4099) (select (i32.const 83) (i32.const 70) (i32.eq (global.get $role) (i32.const 1))))
    (i32.store8 (i32.const 4100) (i32.const 32))
    (memory.copy (i32.const 4101) (local.get $tag) (local.get $taglen))
    (local.set $p (i32.add (i32.const 4101) (local.get $taglen)))
    (i32.store8 (local.get $p) (i32.const 32))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (local.set $p (i32.add (local.get $p) (call $itoa (local.get $n) (local.get $p))))
    (call $info (i32.const 4096) (i32.sub (local.get $p) (i32.const 4096))))
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32)
    (if (i32.eqz (local.get $parent)) (then (call $say {context_create} (i32.const 0)))))
  (func (export "proxy_on_vm_start") (param $ctx i32) (param $size i32) (result i32)
    (if (i32.eqz (call $proxy_get_buffer_bytes (i32.const 6) (i32.const 0) (local.get $size) (i32.const 512) (i32.const 516)))
      (then (global.set $role (select (i32.const 1) (i32.const 2)
        (i32.eq (i32.load8_u (i32.load (i32.const 512))) (i32.const 115)))))) ;; 's'
    (call $say {vm_start} (local.get $size))
    (i32.const 1))
  (func (export "proxy_on_configure") (param $ctx i32) (param $size i32) (result i32)
    (call $say {configure} (local.get $size))
    (if (i32.eq (global.get $role) (i32.const 1))
      (then
        (call $say {register} (call $proxy_register_shared_queue {q} (i32.const 520)))
        (global.set $token (i32.load (i32.const 520)))
        (call $say {tick_period} (call $proxy_set_tick_period_milliseconds (i32.const 500)))))
    (i32.const 1))
  (func (export "proxy_on_tick") (param $ctx i32)
    ;; One tick, then none: Envoy's ticks follow the wall clock.
    (call $say {tick} (call $proxy_set_tick_period_milliseconds (i32.const 0))))
  (func (export "proxy_on_queue_ready") (param $ctx i32) (param $token i32)
    (local $rc i32)
    (call $say {queue_ready} (i32.eq (local.get $token) (global.get $token)))
    ;; One item per notification: Envoy posts one per enqueue.
    (local.set $rc (call $proxy_dequeue_shared_queue (local.get $token) (i32.const 512) (i32.const 516)))
    (if (i32.eqz (local.get $rc))
      (then (call $say (i32.load (i32.const 512)) (i32.load (i32.const 516)) (local.get $rc)))
      (else (call $say {dequeue} (local.get $rc)))))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (local $rc i32)
    (call $say {resolve_other_vm_id} (call $proxy_resolve_shared_queue {other} {q} (i32.const 520)))
    (call $say {resolve_empty_vm_id} (call $proxy_resolve_shared_queue (i32.const 0) (i32.const 0) {q} (i32.const 520)))
    (local.set $rc (call $proxy_resolve_shared_queue {vm_id} {q} (i32.const 520)))
    (call $say {resolve} (local.get $rc))
    (if (i32.eqz (local.get $rc))
      (then
        (drop (call $proxy_get_header_map_value (i32.const 0) {path} (i32.const 512) (i32.const 516)))
        (call $say {enqueue} (call $proxy_enqueue_shared_queue (i32.load (i32.const 520))
          (i32.load (i32.const 512)) (i32.load (i32.const 516))))))
    (i32.const 0))
  (func (export "proxy_on_done") (param $ctx i32) (result i32)
    (call $say {done} (local.get $ctx))
    (i32.const 1))
  (func (export "proxy_on_delete") (param $ctx i32)
    (call $say {done} (i32.add (i32.const 1000) (local.get $ctx))))
"#,
        data = t.data(),
        context_create = tag("context_create"),
        vm_start = tag("vm_start"),
        configure = tag("configure"),
        register = tag("register"),
        tick_period = tag("tick_period"),
        tick = tag("tick"),
        queue_ready = tag("queue_ready"),
        dequeue = tag("dequeue"),
        resolve = tag("resolve"),
        resolve_empty_vm_id = tag("resolve_empty_vm_id"),
        resolve_other_vm_id = tag("resolve_other_vm_id"),
        enqueue = tag("enqueue"),
        done = tag("done"),
        q = q,
        vm_id = vm_id,
        other = other,
        path = path,
    ))
}

fn module_body(body: String) -> String {
    common::module(&body)
}

/// The module's `SQ <role>` lines, in order.
fn sq_lines(lines: impl Iterator<Item = String>, role: char) -> Vec<String> {
    let prefix = format!("SQ {role} ");
    lines
        .filter_map(|line| line.find(&prefix).map(|i| line[i..].trim().to_string()))
        .collect()
}

struct Observed {
    /// Root contexts the service's VMs created (logged before the module knows its role).
    service_root_contexts: usize,
    /// The service's lines until its tick, then its lines per request.
    service_start: Vec<String>,
    service_requests: Vec<String>,
    /// The filter's lines per request.
    filter_requests: Vec<String>,
}

fn harness_run(bytes: &[u8]) -> Observed {
    let service = wasmesh_harness::Harness::from_bytes(bytes)
        .unwrap()
        .vm_id(VM_ID)
        .root_id("svc")
        .plugin_name("svc")
        .vm_config("service")
        .config(SERVICE_CONFIG);
    let plugin = wasmesh_harness::Harness::from_bytes(bytes)
        .unwrap()
        .vm_id(VM_ID)
        .root_id("flt")
        .plugin_name("flt")
        .vm_config("filter")
        .service(service)
        .start()
        .unwrap();
    let service = plugin.service().unwrap();
    assert_eq!(service.tick_period(), Some(Duration::from_millis(500)));
    service.advance_clock(Duration::from_secs(2)).unwrap();
    let lines = |entries: Vec<wasmesh_harness::LogEntry>| entries.into_iter().map(|e| e.message);
    let service_start = sq_lines(lines(service.logs()), 'S');
    let service_root_contexts = sq_lines(lines(service.logs()), 'F').len();
    plugin.clear_logs();
    for path in PATHS {
        let mut stream = plugin.http_stream();
        stream
            .send_request(&wasmesh_harness::ClientRequest::get(path))
            .unwrap();
        stream.complete().unwrap();
    }
    Observed {
        service_root_contexts,
        service_start,
        service_requests: sq_lines(lines(service.logs()), 'S'),
        filter_requests: sq_lines(lines(plugin.logs()), 'F'),
    }
}

fn envoy_run(name: &str, bytes: &[u8]) -> Observed {
    let file = WasmFile::new(name, bytes);
    let filter = WasmFilter::new(&file.path)
        .vm_id(VM_ID)
        .root_id("flt")
        .name("flt")
        .vm_configuration("filter");
    let service = WasmFilter::new(&file.path)
        .vm_id(VM_ID)
        .root_id("svc")
        .name("svc")
        .vm_configuration("service")
        .configuration(SERVICE_CONFIG);
    let builder = EnvoyBuilder::new()
        .wasm_filter(filter)
        .direct_response(200, "ok")
        .concurrency(1);
    let mut bootstrap = builder.bootstrap();
    bootstrap["bootstrap_extensions"] = json!([{
        "name": "envoy.bootstrap.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
            "singleton": true,
            "config": service.to_envoy_json()["typed_config"]["config"].clone(),
        },
    }]);
    let envoy = builder
        .start_with_bootstrap(&format!("{bootstrap:#}"), BootstrapFormat::Json)
        .unwrap();
    let service_lines = || sq_lines(envoy.log().lines().map(str::to_string), 'S');
    let wait_for = |done: &dyn Fn(&[String]) -> bool| {
        for _ in 0..100 {
            if done(&service_lines()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the service did not log as expected:\n{}",
            envoy.log_tail(60)
        );
    };
    wait_for(&|lines| lines.iter().any(|l| l.starts_with("SQ S tick ")));
    let service_start = service_lines();
    // Envoy prefixes a module's lines with the plugin's name and vm_id.
    let service_root_contexts = envoy
        .log()
        .lines()
        .filter(|l| l.contains("wasm log svc sq: SQ F context_create"))
        .count();
    let filter_before = sq_lines(envoy.log().lines().map(str::to_string), 'F').len();
    for path in PATHS {
        assert_eq!(envoy.send(&HttpRequest::get(path)).unwrap().status, 200);
    }
    let expected = service_start.len() + 2 * PATHS.len();
    wait_for(&|lines| lines.len() >= expected);
    std::thread::sleep(Duration::from_millis(200));
    let service_requests = service_lines()[service_start.len()..].to_vec();
    let filter_requests =
        sq_lines(envoy.log().lines().map(str::to_string), 'F')[filter_before..].to_vec();
    Observed {
        service_root_contexts,
        service_start,
        service_requests,
        filter_requests,
    }
}

#[test]
fn singleton_service_gets_what_a_filter_enqueues_as_in_envoy() {
    if envoy::skip_requested() {
        return;
    }
    let bytes = wat::parse_str(module()).unwrap();
    compare("singleton", &bytes);
}

/// The same with the module written with the `proxy-wasm` crate alone
/// (`harness/e2e/modules/rust/queue`, crate `wasmesh-e2e-queue-rust`), which logs the same lines.
#[test]
fn singleton_service_in_rust_gets_what_a_filter_enqueues_as_in_envoy() {
    if envoy::skip_requested() {
        return;
    }
    let path = wasmesh_harness::build::wasm("wasmesh-e2e-queue-rust").unwrap();
    compare("singleton-rust", &std::fs::read(path).unwrap());
}

/// Runs `bytes` as service and filter in the harness and in Envoy (written to `<name>.wasm`)
/// and compares what each part logged.
fn compare(name: &str, bytes: &[u8]) {
    let harness = harness_run(bytes);
    let envoy = envoy_run(name, bytes);
    eprintln!("harness service start: {:#?}", harness.service_start);
    eprintln!("envoy service start: {:#?}", envoy.service_start);
    eprintln!("harness service: {:#?}", harness.service_requests);
    eprintln!("envoy service: {:#?}", envoy.service_requests);
    eprintln!("harness filter: {:#?}", harness.filter_requests);
    eprintln!("envoy filter: {:#?}", envoy.filter_requests);
    assert_eq!(
        harness.service_root_contexts, envoy.service_root_contexts,
        "service root contexts"
    );
    assert_eq!(
        harness.service_start, envoy.service_start,
        "service start-up"
    );
    assert_eq!(harness.service_requests, envoy.service_requests, "service");
    assert_eq!(harness.filter_requests, envoy.filter_requests, "filter");
}

/// A service alone ([`wasmesh_harness::PluginBuilder::start_service`]): the test enqueues as
/// another plugin's VM would; a queue of another vm_id is not reachable.
#[test]
fn a_service_alone_gets_what_the_test_enqueues() {
    let service = builder(&module())
        .vm_id(VM_ID)
        .vm_config("service")
        .config(SERVICE_CONFIG)
        .start_service()
        .unwrap();
    assert_eq!(service.vm_id(), VM_ID);
    assert_eq!(service.tick_period(), Some(Duration::from_millis(500)));
    service.enqueue("q", b"/from-test").unwrap();
    assert!(service.enqueue("nope", b"x").is_err());
    service.advance_clock(Duration::from_millis(500)).unwrap();
    let lines: Vec<String> = service.logs().into_iter().map(|e| e.message).collect();
    let lines = sq_lines(lines.into_iter(), 'S');
    assert_eq!(
        &lines[lines.len() - 3..],
        ["SQ S queue_ready 1", "SQ S /from-test 0", "SQ S tick 0"]
    );
    assert_eq!(service.tick_period(), None);
    assert!(service.vm_failure().is_none());
}
