#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! One scenario through both judges, the harness and a real Envoy 1.40: a request the module
//! holds while it calls an HTTP cluster (whose answer it forwards upstream as a header), a local
//! reply, a request with a body, concurrent requests and a clock jump. Both judges must see the
//! same statuses, details, bodies, upstream requests, callouts, metrics and logs.

use std::path::{Path, PathBuf};

use wasmesh_scenario::envoy_judge::EnvoyJudge;
use wasmesh_scenario::harness_judge::HarnessJudge;
use wasmesh_scenario::load::{parse, validate, ScenarioFile};
use wasmesh_scenario::observe::{header, StepObservation};
use wasmesh_scenario::ScenarioError;

/// Places strings in the module's data section and hands back `(i32.const ptr) (i32.const len)`.
struct Strings {
    next: u32,
    data: String,
}

impl Strings {
    fn new() -> Self {
        Self {
            next: 1024,
            data: String::new(),
        }
    }

    fn bytes(&mut self, bytes: &[u8]) -> String {
        let ptr = self.next;
        let escaped: String = bytes.iter().map(|b| format!("\\{b:02x}")).collect();
        self.data
            .push_str(&format!("(data (i32.const {ptr}) \"{escaped}\")\n"));
        self.next += (bytes.len() as u32 + 8) & !7;
        format!("(i32.const {ptr}) (i32.const {})", bytes.len())
    }

    fn s(&mut self, text: &str) -> String {
        self.bytes(text.as_bytes())
    }

    fn map(&mut self, pairs: &[(&str, &str)]) -> String {
        self.bytes(&wasmesh_harness::headermap::serialize(pairs))
    }
}

/// The module: counts requests (`judge.requests`) and logs each path; `/d...` gets a local
/// reply (403 `denied`, details `judge_denied`); `/c...` is held while the module calls cluster
/// `auth` (`GET /check`), then goes upstream with the call's answer body in `x-auth`; anything
/// else goes upstream as is. `configure_ok` 0 makes the configuration fail.
fn module(configure_ok: u32) -> String {
    let mut t = Strings::new();
    let metric = t.s("judge.requests");
    let path = t.s(":path");
    let details = t.s("judge_denied");
    let denied = t.s("denied");
    let empty = t.map(&[]);
    let cluster = t.s("auth");
    let call_headers = t.map(&[
        (":method", "GET"),
        (":path", "/check"),
        (":authority", "auth.local"),
        ("x-call", "1"),
    ]);
    let no_body = t.s("");
    let x_auth = t.s("x-auth");
    format!(
        r#"(module
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $proxy_get_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $proxy_add_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $proxy_send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $proxy_continue_stream (param i32) (result i32)))
  (import "env" "proxy_http_call" (func $proxy_http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $proxy_get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $proxy_set_effective_context (param i32) (result i32)))
  (import "env" "proxy_define_metric" (func $proxy_define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $proxy_increment_metric (param i32 i64) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (global $stream (mut i32) (i32.const 0))
  (global $metric (mut i32) (i32.const 0))
  (func $malloc (export "malloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.add (i32.shr_u (local.get $size) (i32.const 16)) (i32.const 1))))))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $proxy_define_metric (i32.const 0) {metric} (i32.const 520)))
    (global.set $metric (i32.load (i32.const 520)))
    (i32.const {configure_ok}))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (local $p i32) (local $first i32)
    (drop (call $proxy_increment_metric (global.get $metric) (i64.const 1)))
    (drop (call $proxy_get_header_map_value (i32.const 0) {path} (i32.const 512) (i32.const 516)))
    (local.set $p (i32.load (i32.const 512)))
    (drop (call $proxy_log (i32.const 2) (local.get $p) (i32.load (i32.const 516))))
    (local.set $first (i32.load8_u offset=1 (local.get $p)))
    (if (i32.eq (local.get $first) (i32.const 100))
      (then
        (drop (call $proxy_send_local_response (i32.const 403) {details} {denied} {empty} (i32.const -1)))
        (return (i32.const 1))))
    (if (i32.eq (local.get $first) (i32.const 99))
      (then
        (global.set $stream (local.get $ctx))
        (drop (call $proxy_http_call {cluster} {call_headers} {no_body} {empty} (i32.const 5000) (i32.const 520)))
        (return (i32.const 1))))
    (i32.const 0))
  (func (export "proxy_on_http_call_response") (param $ctx i32) (param $token i32) (param $headers i32) (param $size i32) (param $trailers i32)
    (drop (call $proxy_set_effective_context (global.get $stream)))
    (drop (call $proxy_get_buffer_bytes (i32.const 4) (i32.const 0) (local.get $size) (i32.const 512) (i32.const 516)))
    (drop (call $proxy_add_header_map_value (i32.const 0) {x_auth} (i32.load (i32.const 512)) (i32.load (i32.const 516))))
    (drop (call $proxy_continue_stream (i32.const 0))))
{data})"#,
        data = t.data
    )
}

const SCENARIO: &str = r#"
format: 1
module: {path: judge.wat}
clusters:
  auth:
    answers:
      - path: /check
        body: granted
steps:
  - request:
      path: /call?q=1
      headers: {x-in: "1"}
    upstream: {status: 201, headers: {x-up: u}, body: upstream says hi}
    expect:
      metrics: {judge.requests: 1}
      logs: ['^/call\?q=1$']
      callouts: [{cluster: auth, path: /check}]
  - request: {path: /deny}
    expect:
      metrics: {judge.requests: 2}
      logs: ['^/deny$']
  - request: {method: POST, path: /plain, body: hello}
  - request: {path: /many}
    concurrent: 3
    expect:
      metrics: {judge.requests: 6}
  - advance_ms: 10
"#;

/// A scratch folder with the module as text, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, wat: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "wasmesh-scenario-test-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("judge.wat"), wat).unwrap();
        Self(dir)
    }

    fn module(&self) -> PathBuf {
        self.0.join("judge.wat")
    }

    fn scenario(&self, text: &str) -> ScenarioFile {
        let path = self.0.join("judge.yaml");
        let scenario = parse(&path, text).unwrap();
        validate(&scenario).unwrap();
        ScenarioFile { path, scenario }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_both(file: &ScenarioFile, module: &Path) -> Vec<(StepObservation, StepObservation)> {
    let mut harness = HarnessJudge::start(file, module, 1).unwrap();
    let mut envoy = EnvoyJudge::start(file, module).unwrap();
    file.scenario
        .steps
        .iter()
        .enumerate()
        .map(|(index, step)| {
            let by_harness = harness
                .step(index, step)
                .unwrap_or_else(|error| panic!("harness, step {index}: {error}"));
            let by_envoy = envoy
                .step(index, step)
                .unwrap_or_else(|error| panic!("envoy, step {index}: {error}"));
            (by_harness, by_envoy)
        })
        .collect()
}

/// The response's status, reset, details and body under both judges, which must agree.
fn agreed_response(
    index: usize,
    (harness, envoy): &(StepObservation, StepObservation),
) -> (u16, bool, Option<String>, String) {
    let view = |seen: &StepObservation| {
        let response = seen.response.clone().unwrap();
        (
            response.status,
            response.reset,
            response.details,
            String::from_utf8_lossy(&response.body).into_owned(),
        )
    };
    assert_eq!(view(harness), view(envoy), "step {index}: harness vs Envoy");
    view(harness)
}

#[test]
fn the_harness_and_envoy_judges_see_the_same_steps() {
    if wasmesh_envoy::skip_requested() {
        return;
    }
    let scratch = Scratch::new("agree", &module(1));
    let file = scratch.scenario(SCENARIO);
    let steps = run_both(&file, &scratch.module());

    // A held request, a callout, then the upstream's answer.
    let called = &steps[0];
    assert_eq!(
        agreed_response(0, called),
        (201, false, None, "upstream says hi".to_string())
    );
    for (judge, seen) in [("harness", &called.0), ("envoy", &called.1)] {
        let response = seen.response.as_ref().unwrap();
        assert_eq!(header(&response.headers, "x-up"), Some("u"), "{judge}");
        let upstream = seen.upstream.as_ref().unwrap();
        for (name, value) in [
            (":method", "GET"),
            (":path", "/call?q=1"),
            (":authority", "example.com"),
            ("x-in", "1"),
            ("x-auth", "granted"),
        ] {
            assert_eq!(
                header(&upstream.headers, name),
                Some(value),
                "{judge}: {name}"
            );
        }
        assert_eq!(upstream.body, b"", "{judge}");
        assert_eq!(seen.callouts.len(), 1, "{judge}: {:?}", seen.callouts);
        let callout = &seen.callouts[0];
        assert_eq!(
            (callout.cluster.as_str(), callout.path.as_str()),
            ("auth", "/check"),
            "{judge}"
        );
        for (name, value) in [
            (":method", "GET"),
            (":authority", "auth.local"),
            ("x-call", "1"),
        ] {
            assert_eq!(
                header(&callout.headers, name),
                Some(value),
                "{judge}: {name}"
            );
        }
        assert_eq!(callout.body, b"", "{judge}");
        assert_eq!(seen.metrics.get("judge.requests"), Some(&1), "{judge}");
        assert_eq!(seen.logs, Some(vec!["/call?q=1".to_string()]), "{judge}");
    }

    // A local reply: the upstream never sees the request.
    let denied = &steps[1];
    assert_eq!(
        agreed_response(1, denied),
        (
            403,
            false,
            Some("judge_denied".to_string()),
            "denied".to_string()
        )
    );
    for (judge, seen) in [("harness", &denied.0), ("envoy", &denied.1)] {
        assert_eq!(seen.upstream, None, "{judge}");
        assert!(seen.callouts.is_empty(), "{judge}");
        assert_eq!(seen.metrics.get("judge.requests"), Some(&2), "{judge}");
        assert_eq!(seen.logs, Some(vec!["/deny".to_string()]), "{judge}");
    }

    // A body reaches the upstream; the default answer is 200 without a body.
    let posted = &steps[2];
    assert_eq!(
        agreed_response(2, posted),
        (200, false, None, String::new())
    );
    for (judge, seen) in [("harness", &posted.0), ("envoy", &posted.1)] {
        let upstream = seen.upstream.as_ref().unwrap();
        assert_eq!(upstream.body, b"hello", "{judge}");
        assert_eq!(
            header(&upstream.headers, ":method"),
            Some("POST"),
            "{judge}"
        );
        assert_eq!(
            header(&upstream.headers, ":path"),
            Some("/plain"),
            "{judge}"
        );
    }

    // Concurrent requests: their statuses, sorted.
    let many = &steps[3];
    assert_eq!(many.0.statuses, vec![200, 200, 200]);
    assert_eq!(many.1.statuses, many.0.statuses);
    assert_eq!(many.1.metrics.get("judge.requests"), Some(&6));

    // A clock jump is the harness's only.
    let jump = &steps[4];
    assert_eq!(jump.0.not_run, None);
    assert!(jump.1.not_run.as_deref().unwrap().contains("harness only"));
    assert_eq!((jump.1.shared_data.clone(), jump.1.vm_failed), (None, None));
}

#[test]
fn a_module_envoy_refuses_is_an_error_with_envoys_log() {
    if wasmesh_envoy::skip_requested() {
        return;
    }
    let scratch = Scratch::new("refused", &module(0));
    let file = scratch.scenario(SCENARIO);
    assert!(HarnessJudge::start(&file, &scratch.module(), 1).is_err());
    let error = match EnvoyJudge::start(&file, &scratch.module()) {
        Err(error) => error,
        Ok(_) => panic!("Envoy started a module whose configuration fails"),
    };
    assert!(matches!(error, ScenarioError::Envoy(_)), "{error}");
    assert!(error.to_string().contains("end of its log"), "{error}");
}

/// One call the callout module makes, chosen by the request path `/c<letter>`.
struct Call {
    /// `http` or `grpc`.
    grpc: bool,
    cluster: &'static str,
    /// The HTTP path, or the gRPC method of service `pkg.Svc`.
    target: &'static str,
}

const CALLS: &[Call] = &[
    Call {
        grpc: false,
        cluster: "auth",
        target: "/check",
    },
    Call {
        grpc: false,
        cluster: "auth",
        target: "/slow",
    },
    Call {
        grpc: false,
        cluster: "auth",
        target: "/reset",
    },
    Call {
        grpc: false,
        cluster: "auth",
        target: "/hang",
    },
    Call {
        grpc: false,
        cluster: "down",
        target: "/check",
    },
    Call {
        grpc: false,
        cluster: "auth",
        target: "/unmatched",
    },
    Call {
        grpc: true,
        cluster: "svc",
        target: "Do",
    },
    Call {
        grpc: true,
        cluster: "svc",
        target: "Fail",
    },
    Call {
        grpc: true,
        cluster: "svc",
        target: "Reset",
    },
    Call {
        grpc: true,
        cluster: "svc",
        target: "Hang",
    },
    Call {
        grpc: true,
        cluster: "svc",
        target: "Slow",
    },
    Call {
        grpc: true,
        cluster: "gone",
        target: "Do",
    },
    Call {
        grpc: false,
        cluster: "auth",
        target: "/broken",
    },
    Call {
        grpc: false,
        cluster: "auth",
        target: "/trailing",
    },
    Call {
        grpc: true,
        cluster: "svc",
        target: "Quiet",
    },
    Call {
        grpc: false,
        cluster: "nowhere",
        target: "/check",
    }, // A service argument that parses as a `GrpcService` without a target: Envoy 1.40 aborts.
    Call {
        grpc: true,
        cluster: ABORTS,
        target: "Do",
    },
];

/// The call of [`CALLS`] that aborts Envoy.
const ABORTS: &str = "empty";

/// The request path that makes call `index` of [`CALLS`].
fn call_path(index: usize) -> String {
    format!("/c{}", char::from(b'A' + u8::try_from(index).unwrap()))
}

/// The module: a request to `/c<letter>` is held while the module makes call `letter - 'A'`
/// of [`CALLS`] (timeout 1 s), then goes upstream with what the call got in request headers:
/// `x-call-status` and `x-call-body` (HTTP), `x-grpc-body` (a unary call's answer: only
/// `proxy_on_grpc_receive` runs), or `x-grpc-status` and `x-grpc-message` (a failed call:
/// only `proxy_on_grpc_close` runs). A call that cannot be dispatched gets a local reply (500, details
/// `dispatch_failed`).
fn callout_module() -> String {
    let mut t = Strings::new();
    let path = t.s(":path");
    let status = t.s(":status");
    let dash = t.s("-");
    let empty = t.map(&[]);
    let x_call_status = t.s("x-call-status");
    let x_call_body = t.s("x-call-body");
    let x_grpc_body = t.s("x-grpc-body");
    let x_grpc_status = t.s("x-grpc-status");
    let x_grpc_message = t.s("x-grpc-message");
    let failed = t.s("dispatch_failed");
    let no_body = t.s("");
    let service = t.s("pkg.Svc");
    let message = t.s("ping");
    let metadata = t.map(&[("x-meta", "m")]);
    let mut dispatches = String::new();
    for (index, call) in CALLS.iter().enumerate() {
        let cluster = t.s(call.cluster);
        let dispatch = if call.grpc {
            let method = t.s(call.target);
            format!("(call $proxy_grpc_call {cluster} {service} {method} {metadata} {message} (i32.const 1000) (i32.const 520))")
        } else {
            let headers = t.map(&[
                (":method", "POST"),
                (":path", call.target),
                (":authority", "callee"),
            ]);
            let body = t.s("question");
            format!("(call $proxy_http_call {cluster} {headers} {body} {empty} (i32.const 1000) (i32.const 520))")
        };
        dispatches.push_str(&format!(
            "(if (i32.eq (local.get $case) (i32.const {index})) (then (local.set $rc {dispatch})))\n"
        ));
    }
    format!(
        r#"(module
  (import "env" "proxy_get_header_map_value" (func $proxy_get_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $proxy_add_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $proxy_send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $proxy_continue_stream (param i32) (result i32)))
  (import "env" "proxy_http_call" (func $proxy_http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_call" (func $proxy_grpc_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $proxy_get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_status" (func $proxy_get_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $proxy_set_effective_context (param i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (global $stream (mut i32) (i32.const 0))
  (func $malloc (export "malloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.add (i32.shr_u (local.get $size) (i32.const 16)) (i32.const 1))))))
    (local.get $p))
  ;; Writes the decimal form of $n at $dst and returns its length.
  (func $itoa (param $n i32) (param $dst i32) (result i32)
    (local $len i32) (local $tmp i32) (local $i i32)
    (local.set $tmp (local.get $n)) (local.set $len (i32.const 1))
    (block $done (loop $count
      (br_if $done (i32.lt_u (local.get $tmp) (i32.const 10)))
      (local.set $tmp (i32.div_u (local.get $tmp) (i32.const 10)))
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (br $count)))
    (local.set $i (local.get $len)) (local.set $tmp (local.get $n))
    (loop $write
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $dst) (local.get $i)) (i32.add (i32.const 48) (i32.rem_u (local.get $tmp) (i32.const 10))))
      (local.set $tmp (i32.div_u (local.get $tmp) (i32.const 10)))
      (br_if $write (i32.gt_u (local.get $i) (i32.const 0))))
    (local.get $len))
  ;; Adds request header (name) with the (ptr, len) the host wrote at 512/516, or "-" if none.
  (func $add_ret (param $name i32) (param $len i32) (param $rc i32)
    (if (i32.or (local.get $rc) (i32.eqz (i32.load (i32.const 516))))
      (then (drop (call $proxy_add_header_map_value (i32.const 0) (local.get $name) (local.get $len) {dash})))
      (else (drop (call $proxy_add_header_map_value (i32.const 0) (local.get $name) (local.get $len) (i32.load (i32.const 512)) (i32.load (i32.const 516)))))))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (local $case i32) (local $rc i32)
    (drop (call $proxy_get_header_map_value (i32.const 0) {path} (i32.const 512) (i32.const 516)))
    (local.set $case (i32.sub (i32.load8_u offset=2 (i32.load (i32.const 512))) (i32.const 65)))
    (global.set $stream (local.get $ctx))
    (local.set $rc (i32.const -1))
    {dispatches}
    (if (local.get $rc)
      (then
        (drop (call $proxy_send_local_response (i32.const 500) {failed} {no_body} {empty} (i32.const -1)))))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param $root i32) (param $token i32) (param $nh i32) (param $nb i32) (param $nt i32)
    (drop (call $proxy_set_effective_context (global.get $stream)))
    (i32.store (i32.const 516) (i32.const 0))
    (call $add_ret {x_call_status} (call $proxy_get_header_map_value (i32.const 6) {status} (i32.const 512) (i32.const 516)))
    (i32.store (i32.const 516) (i32.const 0))
    (call $add_ret {x_call_body} (call $proxy_get_buffer_bytes (i32.const 4) (i32.const 0) (local.get $nb) (i32.const 512) (i32.const 516)))
    (drop (call $proxy_continue_stream (i32.const 0))))
  (func (export "proxy_on_grpc_receive") (param $root i32) (param $token i32) (param $size i32)
    (drop (call $proxy_set_effective_context (global.get $stream)))
    (i32.store (i32.const 516) (i32.const 0))
    (call $add_ret {x_grpc_body} (call $proxy_get_buffer_bytes (i32.const 5) (i32.const 0) (local.get $size) (i32.const 512) (i32.const 516)))
    (drop (call $proxy_continue_stream (i32.const 0))))
  (func (export "proxy_on_grpc_close") (param $root i32) (param $token i32) (param $code i32)
    (drop (call $proxy_set_effective_context (global.get $stream)))
    (drop (call $proxy_add_header_map_value (i32.const 0) {x_grpc_status} (i32.const 700) (call $itoa (local.get $code) (i32.const 700))))
    (i32.store (i32.const 516) (i32.const 0))
    (call $add_ret {x_grpc_message} (call $proxy_get_status (i32.const 520) (i32.const 512) (i32.const 516)))
    (drop (call $proxy_continue_stream (i32.const 0))))
{data})"#,
        data = t.data
    )
}

const CALLOUT_SCENARIO_HEAD: &str = r#"
format: 1
module: {path: judge.wat}
clusters:
  auth:
    answers:
      - {path: /check, status: 201, headers: {x-a: a}, body: granted}
      - {path: /slow, body: late, delay_ms: 100}
      - {path: /reset, fail: reset}
      - {path: /hang, fail: timeout}
      - {path: /broken, fail: reset_after_headers}
      - {path: /trailing, body: with trailers, trailers: {x-t: "1"}}
  down:
    answers: [{fail: refused}]
  svc:
    protocol: grpc
    answers:
      - {path: /pkg.Svc/Do, body: pong}
      - {path: /pkg.Svc/Fail, grpc_status: 7, grpc_message: nope}
      - {path: /pkg.Svc/Quiet, grpc_status: 9}
      - {path: /pkg.Svc/Reset, fail: reset}
      - {path: /pkg.Svc/Hang, fail: timeout}
      - {path: /pkg.Svc/Slow, body: slow, delay_ms: 100}
  gone:
    protocol: grpc
    answers: [{fail: refused}]
steps:
"#;

/// What a step's request carried upstream from its call, or its local reply.
fn call_outcome(seen: &StepObservation) -> Vec<String> {
    let response = seen.response.clone().unwrap();
    let mut outcome = vec![format!(
        "response {} {:?} {:?}",
        response.status,
        response.details,
        String::from_utf8_lossy(&response.body)
    )];
    if let Some(upstream) = &seen.upstream {
        for name in [
            "x-call-status",
            "x-call-body",
            "x-grpc-body",
            "x-grpc-status",
            "x-grpc-message",
        ] {
            if let Some(value) = header(&upstream.headers, name) {
                outcome.push(format!("{name}: {value}"));
            }
        }
    }
    for callout in &seen.callouts {
        outcome.push(format!(
            "callout {} {} {:?} x-meta={:?}",
            callout.cluster,
            callout.path,
            String::from_utf8_lossy(&callout.body),
            header(&callout.headers, "x-meta")
        ));
    }
    outcome
}

/// What Envoy shows for a call, from what the harness shows: the same, but for the differences
/// measured with Envoy 1.40 and documented in `envoy_judge.rs` (and one of the harness's own).
fn envoy_outcome(call: &Call, harness: &[String]) -> Vec<String> {
    let mut expected = harness.to_vec();
    // A refused cluster is a closed port: no server records the call.
    if matches!(call.cluster, "down" | "gone") {
        expected.retain(|line| !line.starts_with("callout "));
    }
    expected
}

#[test]
fn callouts_and_their_failures_agree_between_the_judges() {
    if wasmesh_envoy::skip_requested() {
        return;
    }
    let scratch = Scratch::new("callouts", &callout_module());
    let mut text = CALLOUT_SCENARIO_HEAD.to_string();
    let calls: Vec<&Call> = CALLS.iter().filter(|call| call.cluster != ABORTS).collect();
    for index in 0..calls.len() {
        text.push_str(&format!("  - request: {{path: {}}}\n", call_path(index)));
    }
    let file = scratch.scenario(&text);
    let steps = run_both(&file, &scratch.module());
    let mut report = String::new();
    let mut disagree = false;
    for (call, (by_harness, by_envoy)) in calls.into_iter().zip(&steps) {
        let harness = call_outcome(by_harness);
        let envoy = call_outcome(by_envoy);
        let expected = envoy_outcome(call, &harness);
        disagree |= envoy != expected;
        report.push_str(&format!(
            "{} {} {}{}\n  harness {harness:?}\n  envoy   {envoy:?}\n",
            if call.grpc { "gRPC" } else { "HTTP" },
            call.cluster,
            call.target,
            if envoy == expected {
                ""
            } else {
                ": UNEXPECTED"
            },
        ));
    }
    assert!(!disagree, "{report}");
}

/// The stream module: logs what each request callback sees (`headers <end_of_stream>`,
/// `body <size> <end_of_stream>`, `trailers <count>`), and the log level it was given
/// (`level <n>`) after a debug line `debug line`; `/t...` traps in the request headers, `/r...`
/// replaces the upstream's answer with a local reply (418, no details) in the response headers.
fn stream_module() -> String {
    let mut t = Strings::new();
    let path = t.s(":path");
    let headers = t.s("headers");
    let body = t.s("body");
    let trailers = t.s("trailers");
    let level = t.s("level");
    let debug = t.s("debug line");
    let teapot = t.s("teapot");
    let none = t.s("");
    let empty = t.map(&[]);
    format!(
        r#"(module
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_log_level" (func $proxy_get_log_level (param i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $proxy_get_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $proxy_send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (global $reply (mut i32) (i32.const 0))
  (func $malloc (export "malloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.add (i32.shr_u (local.get $size) (i32.const 16)) (i32.const 1))))))
    (local.get $p))
  (func $itoa (param $n i32) (param $dst i32) (result i32)
    (local $len i32) (local $tmp i32) (local $i i32)
    (local.set $tmp (local.get $n)) (local.set $len (i32.const 1))
    (block $done (loop $count
      (br_if $done (i32.lt_u (local.get $tmp) (i32.const 10)))
      (local.set $tmp (i32.div_u (local.get $tmp) (i32.const 10)))
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (br $count)))
    (local.set $i (local.get $len)) (local.set $tmp (local.get $n))
    (loop $write
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $dst) (local.get $i)) (i32.add (i32.const 48) (i32.rem_u (local.get $tmp) (i32.const 10))))
      (local.set $tmp (i32.div_u (local.get $tmp) (i32.const 10)))
      (br_if $write (i32.gt_u (local.get $i) (i32.const 0))))
    (local.get $len))
  ;; Logs "<tag> <a>" (with " <b>" unless $b is -1) at info.
  (func $log (param $tag i32) (param $taglen i32) (param $a i32) (param $b i32)
    (local $p i32)
    (memory.copy (i32.const 800) (local.get $tag) (local.get $taglen))
    (local.set $p (i32.add (i32.const 800) (local.get $taglen)))
    (i32.store8 (local.get $p) (i32.const 32))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (local.set $p (i32.add (local.get $p) (call $itoa (local.get $a) (local.get $p))))
    (if (i32.ne (local.get $b) (i32.const -1))
      (then
        (i32.store8 (local.get $p) (i32.const 32))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (local.set $p (i32.add (local.get $p) (call $itoa (local.get $b) (local.get $p))))))
    (drop (call $proxy_log (i32.const 2) (i32.const 800) (i32.sub (local.get $p) (i32.const 800)))))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (local $first i32)
    (drop (call $proxy_get_header_map_value (i32.const 0) {path} (i32.const 512) (i32.const 516)))
    (local.set $first (i32.load8_u offset=1 (i32.load (i32.const 512))))
    (if (i32.eq (local.get $first) (i32.const 116)) (then (unreachable)))
    (global.set $reply (i32.eq (local.get $first) (i32.const 114)))
    (call $log {headers} (local.get $eos) (i32.const -1))
    (drop (call $proxy_log (i32.const 1) {debug}))
    (drop (call $proxy_get_log_level (i32.const 520)))
    (call $log {level} (i32.load (i32.const 520)) (i32.const -1))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (call $log {body} (local.get $size) (local.get $eos))
    (i32.const 0))
  (func (export "proxy_on_request_trailers") (param $ctx i32) (param $n i32) (result i32)
    (call $log {trailers} (local.get $n) (i32.const -1))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (if (global.get $reply)
      (then
        (drop (call $proxy_send_local_response (i32.const 418) {none} {teapot} {empty} (i32.const -1)))
        (return (i32.const 1))))
    (i32.const 0))
{data})"#,
        data = t.data
    )
}

const STREAM_SCENARIO: &str = r#"
format: 1
module: {path: judge.wat}
steps:
  - request: {path: /plain}
  - request: {method: POST, path: /body, body: hello}
  - request: {method: POST, path: /chunks, chunks: [ab, cde, f]}
  - request: {method: POST, path: /with-trailers, chunks: [ab], trailers: {x-t: "1", x-u: "2"}}
  - request: {method: POST, path: /both, body: hello, trailers: {x-t: "1"}}
  - request: {path: /reply}
    upstream: {status: 200, body: from upstream}
  - request: {path: /trap}
  - request: {path: /after}
"#;

#[test]
fn streams_bodies_trailers_logs_and_failures_agree_between_the_judges() {
    if wasmesh_envoy::skip_requested() {
        return;
    }
    let scratch = Scratch::new("stream", &stream_module());
    let file = scratch.scenario(STREAM_SCENARIO);
    let steps = run_both(&file, &scratch.module());
    let view = |seen: &StepObservation| {
        let response = seen.response.clone().unwrap();
        format!(
            "{} reset={} details={:?} body={:?} upstream_body={:?}",
            response.status,
            response.reset,
            response.details,
            String::from_utf8_lossy(&response.body),
            seen.upstream
                .as_ref()
                .map(|up| String::from_utf8_lossy(&up.body).into_owned()),
        )
    };
    for (step, (harness, envoy)) in file.scenario.steps.iter().zip(&steps) {
        let path = step.request.as_ref().unwrap().path.as_str();
        // Envoy's codec hands chunks that arrive together to the filter as one.
        if path == "/chunks" {
            assert_eq!(view(harness), view(envoy), "{path}");
            let sizes = |seen: &StepObservation| -> u32 {
                seen.logs
                    .clone()
                    .unwrap()
                    .iter()
                    .filter_map(|line| line.strip_prefix("body "))
                    .map(|rest| rest.split(' ').next().unwrap().parse::<u32>().unwrap())
                    .sum()
            };
            assert_eq!((sizes(harness), sizes(envoy)), (6, 6));
            continue;
        }
        assert_eq!(view(harness), view(envoy), "{path}");
        assert_eq!(harness.logs, envoy.logs, "{path}");
    }
    // The debug line is below the scenario's level (info, 2) in both.
    assert_eq!(steps[0].1.logs.clone().unwrap(), ["headers 1", "level 2"]);
    // A trap fails the VM: FAIL_CLOSED answers 503 from then on.
    assert_eq!(
        view(&steps[7].1),
        r#"503 reset=false details=Some("wasm_fail_stream") body="" upstream_body=None"#
    );
}

#[test]
fn envoy_dying_during_a_step_is_an_error_with_its_log() {
    if wasmesh_envoy::skip_requested() {
        return;
    }
    let scratch = Scratch::new("abort", &callout_module());
    let index = CALLS
        .iter()
        .position(|call| call.cluster == ABORTS)
        .unwrap();
    let file = scratch.scenario(&format!(
        "{CALLOUT_SCENARIO_HEAD}  - request: {{path: {}}}\n",
        call_path(index)
    ));
    let step = &file.scenario.steps[0];
    // The harness fails the VM instead (FAIL_CLOSED: a 503).
    let mut harness = HarnessJudge::start(&file, &scratch.module(), 1).unwrap();
    let by_harness = harness.step(0, step).unwrap();
    assert_eq!(by_harness.response.unwrap().status, 503);
    let mut envoy = EnvoyJudge::start(&file, &scratch.module()).unwrap();
    let error = match envoy.step(0, step) {
        Err(error) => error.to_string(),
        Ok(seen) => panic!("Envoy survived: {seen:?}"),
    };
    assert!(error.contains("step 0: Envoy died"), "{error}");
    assert!(error.contains("panic: unset oneof"), "{error}");
}

#[test]
fn two_workers_and_a_root_id_give_the_same_logs_metrics_and_statuses() {
    if wasmesh_envoy::skip_requested() {
        return;
    }
    let scratch = Scratch::new("workers", &module(1));
    // Envoy prefixes the module's lines with the root id: the judge strips it.
    let text = SCENARIO.replace("format: 1\n", "format: 1\nworkers: 2\nroot_id: myroot\n");
    let file = scratch.scenario(&text);
    let steps = run_both(&file, &scratch.module());
    for (index, (harness, envoy)) in steps.iter().enumerate() {
        if envoy.not_run.is_some() {
            continue;
        }
        assert_eq!(harness.logs, envoy.logs, "step {index}");
        assert_eq!(harness.statuses, envoy.statuses, "step {index}");
        for (name, value) in &envoy.metrics {
            assert_eq!(
                harness.metrics.get(name),
                Some(value),
                "step {index}: {name}"
            );
        }
    }
    assert_eq!(steps[3].1.statuses, [200, 200, 200]);
    assert_eq!(steps[3].1.metrics.get("judge.requests"), Some(&6));
}
