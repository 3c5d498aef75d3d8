#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! `wasmesh run`'s answer to a callout no mock matches, against a real Envoy 1.40 whose cluster
//! has nothing listening: the module must see the same response (status, content type, gRPC
//! status and message, body), for a plain callout and for one with `content-type:
//! application/grpc`. And a callout to a cluster the exchange does not declare fails at
//! dispatch, as in Envoy.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use wasmesh_envoy::{self as envoy, Cluster, EnvoyBuilder, HttpRequest, WasmFilter};
use wasmesh_harness::headermap;

/// WAT data-section text for `bytes`.
fn escaped(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// Calls cluster `authz` from request headers (`content-type: application/grpc` when the request
/// has `x-grpc`), or cluster `elsewhere` when it has `x-elsewhere`, logging the dispatch status
/// as `CO dispatch=<digit>`; logs `CO <name>=<value>` for the response's `:status`,
/// `content-type`, `grpc-status`, `grpc-message` and `CO body=<body>`, then resumes.
fn module() -> String {
    let plain = headermap::serialize(&[
        (":method", "POST"),
        (":path", "/check"),
        (":authority", "authz"),
    ]);
    let grpc = headermap::serialize(&[
        (":method", "POST"),
        (":path", "/check"),
        (":authority", "authz"),
        ("content-type", "application/grpc"),
    ]);
    let keys = [":status", "content-type", "grpc-status", "grpc-message"];
    let mut data = String::new();
    let mut logs = String::new();
    let mut at = 2000;
    for key in keys {
        let tag = format!("CO {key}=");
        data.push_str(&format!(
            "  (data (i32.const {at}) \"{}\")\n",
            escaped(key.as_bytes())
        ));
        data.push_str(&format!(
            "  (data (i32.const {}) \"{}\")\n",
            at + 100,
            escaped(tag.as_bytes())
        ));
        logs.push_str(&format!(
            "    (if (i32.eqz (call $get_header (i32.const 6) (i32.const {at}) (i32.const {}) (i32.const 512) (i32.const 516)))
      (then (call $logkv (i32.const {}) (i32.const {}) (i32.load (i32.const 512)) (i32.load (i32.const 516)))))\n",
            key.len(),
            at + 100,
            tag.len()
        ));
        at += 200;
    }
    format!(
        r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_context (param i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (global $stream (mut i32) (i32.const 0))
  (data (i32.const 100) "authz")
  (data (i32.const 110) "elsewhere")
  (data (i32.const 120) "x-grpc")
  (data (i32.const 130) "x-elsewhere")
  (data (i32.const 150) "ping")
  (data (i32.const 160) "CO body=")
  (data (i32.const 170) "CO dispatch=")
  (data (i32.const 200) "{plain}")
  (data (i32.const 400) "{grpc}")
{data}
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (global.get $heap) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (local.get $ptr))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  ;; Logs tag then value as one line.
  (func $logkv (param $tag i32) (param $taglen i32) (param $value i32) (param $len i32)
    (memory.copy (i32.const 30000) (local.get $tag) (local.get $taglen))
    (memory.copy (i32.add (i32.const 30000) (local.get $taglen)) (local.get $value) (local.get $len))
    (drop (call $log (i32.const 2) (i32.const 30000) (i32.add (local.get $taglen) (local.get $len)))))
  (func (export "proxy_on_request_headers") (param $context i32) (param i32 i32) (result i32)
    (local $rc i32)
    (global.set $stream (local.get $context))
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 130) (i32.const 11) (i32.const 512) (i32.const 516)))
      (then (local.set $rc (call $http_call (i32.const 110) (i32.const 9) (i32.const 200) (i32.const {plain_len})
                           (i32.const 150) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 600))))
      (else
        (if (i32.eqz (call $get_header (i32.const 0) (i32.const 120) (i32.const 6) (i32.const 512) (i32.const 516)))
          (then (local.set $rc (call $http_call (i32.const 100) (i32.const 5) (i32.const 400) (i32.const {grpc_len})
                               (i32.const 150) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 600))))
          (else (local.set $rc (call $http_call (i32.const 100) (i32.const 5) (i32.const 200) (i32.const {plain_len})
                               (i32.const 150) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 600)))))))
    (i32.store8 (i32.const 700) (i32.add (i32.const 48) (local.get $rc)))
    (call $logkv (i32.const 170) (i32.const 12) (i32.const 700) (i32.const 1))
    (if (result i32) (local.get $rc) (then (i32.const 0)) (else (i32.const 1))))
  (func (export "proxy_on_http_call_response") (param i32 i32) (param $headers i32) (param $body i32) (param i32)
{logs}
    (if (local.get $body)
      (then
        (drop (call $get_buffer (i32.const 4) (i32.const 0) (local.get $body) (i32.const 512) (i32.const 516)))
        (call $logkv (i32.const 160) (i32.const 8) (i32.load (i32.const 512)) (i32.load (i32.const 516)))))
    (drop (call $set_context (global.get $stream)))
    (drop (call $continue (i32.const 0)))))"#,
        plain = escaped(&plain),
        grpc = escaped(&grpc),
        plain_len = plain.len(),
        grpc_len = grpc.len(),
    )
}

fn scratch_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-callouts-vs-envoy");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// The module's `CO` lines in `wasmesh run`'s report of one exchange with these extra request
/// headers (no callout mocks).
fn cli_lines(wasm: &Path, extra_headers: &[(&str, &str)]) -> Vec<String> {
    let dir = scratch_dir();
    let mut headers = vec![
        json!([":method", "GET"]),
        json!([":path", "/"]),
        json!([":authority", "shop"]),
    ];
    headers.extend(extra_headers.iter().map(|(k, v)| json!([k, v])));
    let name = extra_headers
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join("-");
    let request = dir.join(format!("exchange{name}.json"));
    std::fs::write(
        &request,
        json!({ "clusters": ["authz"], "request": { "headers": headers } }).to_string(),
    )
    .unwrap();
    let config = dir.join("config.json");
    std::fs::write(&config, "").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .args(["run", "--wasm"])
        .arg(wasm)
        .arg("--config")
        .arg(&config)
        .arg("--request")
        .arg(&request)
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    if extra_headers.is_empty() || extra_headers[0].0 == "x-grpc" {
        assert_eq!(report["callouts"][0]["answer"], "unmatched");
    }
    report["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["message"].as_str())
        .filter(|m| m.starts_with("CO "))
        .map(str::to_string)
        .collect()
}

/// The `CO` lines Envoy logged since `from` (an index into all its `CO` lines), once `count`
/// are there.
fn envoy_lines(envoy: &envoy::Envoy, from: usize, count: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for _ in 0..200 {
        lines = envoy
            .log()
            .lines()
            .filter_map(|l| l.split_once(": CO ").map(|(_, rest)| format!("CO {rest}")))
            .collect::<Vec<_>>();
        if lines.len() >= from + count {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    lines.split_off(from.min(lines.len()))
}

#[test]
fn an_unmatched_callout_gets_what_envoy_answers_for_a_cluster_with_nothing_listening() {
    if envoy::skip_requested() {
        return;
    }
    let wasm = scratch_dir().join("callout-logger.wat");
    std::fs::write(&wasm, module()).unwrap();

    let plain = cli_lines(&wasm, &[]);
    let grpc = cli_lines(&wasm, &[("x-grpc", "1")]);
    let elsewhere = cli_lines(&wasm, &[("x-elsewhere", "1")]);
    let refused = "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
    assert_eq!(
        plain,
        [
            "CO dispatch=0".to_string(),
            "CO :status=503".into(),
            "CO content-type=text/plain".into(),
            format!("CO body={refused}"),
        ]
    );
    assert_eq!(
        grpc,
        [
            "CO dispatch=0".to_string(),
            "CO :status=200".into(),
            "CO content-type=application/grpc".into(),
            "CO grpc-status=14".into(),
            format!("CO grpc-message={refused}"),
        ]
    );
    // BadArgument (2): `elsewhere` is not among the exchange's clusters.
    assert_eq!(elsewhere, ["CO dispatch=2"]);

    // Port 1: nothing listens there (checked), and no listener this test binds can take it.
    let closed = SocketAddr::from(([127, 0, 0, 1], 1));
    assert!(TcpStream::connect(closed).is_err());
    let wasm_binary = scratch_dir().join("callout-logger.wasm");
    std::fs::write(&wasm_binary, wat::parse_str(module()).unwrap()).unwrap();
    let envoy = EnvoyBuilder::new()
        .wasm_filter(WasmFilter::new(&wasm_binary))
        .direct_response(200, "ok")
        .cluster(Cluster::new("authz", closed))
        .start()
        .unwrap();
    let mut seen = 0;
    for (request, expected) in [
        (HttpRequest::get("/"), &plain),
        (HttpRequest::get("/").header("x-grpc", "1"), &grpc),
        (HttpRequest::get("/").header("x-elsewhere", "1"), &elsewhere),
    ] {
        assert_eq!(envoy.send(&request).unwrap().status, 200);
        let lines = envoy_lines(&envoy, seen, expected.len());
        seen += lines.len();
        assert_eq!(&lines, expected);
    }
}
