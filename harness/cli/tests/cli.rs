#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The `wasmesh` binary: `run` output format and error reporting, `build` artifacts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

const EXAMPLE_PACKAGE: &str = "wasmesh-example-header-filter";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

fn example_wasm() -> PathBuf {
    wasmesh_harness::build::wasm(EXAMPLE_PACKAGE).unwrap()
}

fn example_config() -> PathBuf {
    workspace_root().join("examples/header-filter/config.json")
}

/// A scratch file for one test.
fn scratch_file(name: &str, contents: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn wasmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap()
}

fn run_exchange(wasm: &Path, config: &Path, request: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--wasm",
        wasm.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--request",
        request.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    wasmesh(&args)
}

/// Parses stdout of a successful run.
fn report(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "wasmesh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn stderr(output: &Output) -> String {
    assert!(!output.status.success(), "wasmesh unexpectedly succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn header<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
    headers
        .as_array()
        .unwrap()
        .iter()
        .find(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap())
}

#[test]
fn the_sample_request_is_denied_with_the_configured_reply() {
    let request = workspace_root().join("examples/header-filter/request.json");

    let report = report(&run_exchange(
        &example_wasm(),
        &example_config(),
        &request,
        &[],
    ));

    assert_eq!(report["format"], 1);
    assert_eq!(
        report["phases"],
        json!([{ "phase": "request_headers", "action": "pause", "invoked": true }])
    );
    let reply = &report["local_reply"];
    assert_eq!(reply["status"], 403);
    assert_eq!(reply["details"], "header_filter_denied");
    assert_eq!(reply["body"], "Forbidden by wasmesh header-filter\n");
    assert_eq!(report["response"]["headers"], reply["headers"]);
    assert_eq!(header(&reply["headers"], ":status"), Some("403"));
    assert_eq!(
        report["metrics"]["header_filter.denied"],
        json!({
            "type": "counter",
            "value": 1,
            "envoy_stat": "wasmcustom.header_filter.denied",
            "prometheus": "header_filter_denied"
        })
    );
    assert_eq!(report["metrics"]["header_filter.allowed"]["value"], 0);
}

#[test]
fn an_allowed_request_shows_what_upstream_and_client_receive() {
    let request = scratch_file(
        "allowed.json",
        r#"{
          "request": {
            "headers": {":method": "POST", ":path": "/api/items", ":authority": "shop", "x-wasmesh-filtered": "spoofed"},
            "body": "{\"id\": 1}"
          },
          "response": {"headers": [[":status", "201"]], "body": "created"}
        }"#,
    );

    let report = report(&run_exchange(
        &example_wasm(),
        &example_config(),
        &request,
        &["--workers", "2"],
    ));

    let phases: Vec<(&str, &str)> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["phase"].as_str().unwrap(), p["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        phases,
        [
            ("request_headers", "continue"),
            ("request_body", "continue"),
            ("response_headers", "continue"),
            ("response_body", "continue"),
        ]
    );
    assert_eq!(report["local_reply"], Value::Null);
    // OVERWRITE_IF_EXISTS_OR_ADD replaced the client's spoofed value.
    assert_eq!(
        header(&report["request"]["headers"], "x-wasmesh-filtered"),
        Some("true")
    );
    assert_eq!(report["request"]["body"], "{\"id\": 1}");
    assert_eq!(
        header(&report["response"]["headers"], ":status"),
        Some("201")
    );
    assert_eq!(
        header(&report["response"]["headers"], "x-wasmesh"),
        Some("hello")
    );
    assert_eq!(report["response"]["body"], "created");
    assert_eq!(report["metrics"]["header_filter.allowed"]["value"], 1);
}

#[test]
fn bad_request_json_names_the_file_and_the_json_path() {
    let request = scratch_file(
        "bad-type.json",
        r#"{"request": {"headers": [[":path", "/"], [":method", 7]]}}"#,
    );

    let message = stderr(&run_exchange(
        &example_wasm(),
        &example_config(),
        &request,
        &[],
    ));

    assert!(message.contains("bad-type.json"), "{message}");
    assert!(message.contains("request.headers[1]"), "{message}");
}

#[test]
fn unknown_fields_and_wrong_format_versions_are_refused() {
    let typo = scratch_file(
        "typo.json",
        r#"{"request": {"headers": {}}, "respnse": {}}"#,
    );
    let future = scratch_file(
        "future.json",
        r#"{"format": 2, "request": {"headers": {}}}"#,
    );

    let typo_message = stderr(&run_exchange(
        &example_wasm(),
        &example_config(),
        &typo,
        &[],
    ));
    let future_message = stderr(&run_exchange(
        &example_wasm(),
        &example_config(),
        &future,
        &[],
    ));

    assert!(
        typo_message.contains("unknown field `respnse`"),
        "{typo_message}"
    );
    assert!(
        future_message.contains("reads format 1, the file is format 2"),
        "{future_message}"
    );
}

#[test]
fn a_rejected_configuration_is_an_error_with_the_filter_logs() {
    let config = scratch_file("bad-config.json", r#"{"deny": [{"prefix": ""}]}"#);
    let request = workspace_root().join("examples/header-filter/request.json");

    let message = stderr(&run_exchange(&example_wasm(), &config, &request, &[]));

    assert!(
        message.contains("the filter rejected its configuration"),
        "{message}"
    );
    assert!(message.contains("deny[0]"), "{message}");
}

#[test]
fn a_missing_module_is_an_error() {
    let request = workspace_root().join("examples/header-filter/request.json");

    let message = stderr(&run_exchange(
        Path::new("/nonexistent/filter.wasm"),
        &example_config(),
        &request,
        &[],
    ));

    assert!(message.contains("/nonexistent/filter.wasm"), "{message}");
}

/// A module that asks cluster `authz` (`GET /check`, 1s timeout) on request headers, then
/// resumes the request when the callout got a response and answers 503 `callout_failed` when it
/// was reset.
const CALLOUT_FILTER: &str = r#"(module
  (import "env" "proxy_http_call"
    (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_context (param i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (global $stream (mut i32) (i32.const 0))
  (data (i32.const 100) "authz")
  ;; Serialized header map: count, (name length, value length) pairs, then NUL-terminated strings.
  (data (i32.const 200) "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\06\00\00\00\0a\00\00\00\05\00\00\00:method\00GET\00:path\00/check\00:authority\00authz\00")
  (data (i32.const 400) "callout_failed")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (global.get $heap) (local.get $size)) (i32.const 7))
                               (i32.const -8)))
    (local.get $ptr))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param $context i32) (param i32 i32) (result i32)
    (global.set $stream (local.get $context))
    (drop (call $http_call (i32.const 100) (i32.const 5) (i32.const 200) (i32.const 70)
                           (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                           (i32.const 1000) (i32.const 300)))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param i32 i32) (param $headers i32) (param i32 i32)
    (drop (call $set_context (global.get $stream)))
    (if (i32.eqz (local.get $headers))
      (then (drop (call $reply (i32.const 503) (i32.const 400) (i32.const 14) (i32.const 0)
                               (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1))))
      (else (drop (call $continue (i32.const 0)))))))"#;

fn run_callout_filter(callouts: Value) -> Value {
    let module = scratch_file("callout-filter.wat", CALLOUT_FILTER);
    let config = scratch_file("empty-config.json", "");
    let request = scratch_file(
        &format!(
            "callouts-{}.json",
            wasmesh_harness::build::sha256_hex(callouts.to_string().as_bytes())
        ),
        &json!({
            "request": { "headers": [[":method", "GET"], [":path", "/"], [":authority", "shop"]] },
            "callouts": callouts,
        })
        .to_string(),
    );
    report(&run_exchange(&module, &config, &request, &[]))
}

#[test]
fn callouts_are_answered_by_the_matching_mock() {
    let report = run_callout_filter(json!([
        { "cluster": "authz", "path": "/other", "fail": "reset" },
        { "cluster": "authz", "path": "/check", "response": { "headers": { ":status": "200" }, "body": "ok" } },
    ]));

    let callouts = report["callouts"].as_array().unwrap();
    assert_eq!(callouts.len(), 1);
    assert_eq!(callouts[0]["cluster"], "authz");
    assert_eq!(callouts[0]["answer"], "response");
    assert_eq!(callouts[0]["timeout_ms"], 1000);
    assert_eq!(header(&callouts[0]["headers"], ":path"), Some("/check"));
    // The response resumed the request: it reached the upstream (default 200).
    assert_eq!(report["local_reply"], Value::Null);
    assert_eq!(
        header(&report["response"]["headers"], ":status"),
        Some("200")
    );
    assert_eq!(report["phases"][0]["action"], "pause");
    assert_eq!(report["phases"][1]["phase"], "response_headers");
}

#[test]
fn failed_callouts_reach_the_filter_as_envoy_reports_them() {
    // Refused, reset before headers and unmatched (a cluster with nothing listening): Envoy's
    // router answers the callout with a 503 response, so this filter (which only tells "no
    // headers" apart) resumes the request. Only a reset after the response headers reaches the
    // module as the async client's failure: zero headers.
    for (callouts, answer, failed) in [
        (
            json!([{ "cluster": "authz", "fail": "refused" }]),
            "refused",
            false,
        ),
        (
            json!([{ "cluster": "authz", "fail": "reset" }]),
            "reset",
            false,
        ),
        (
            json!([{ "cluster": "elsewhere", "fail": "timeout" }]),
            "unmatched",
            false,
        ),
        (
            json!([{ "cluster": "authz", "fail": "reset_after_headers" }]),
            "reset_after_headers",
            true,
        ),
    ] {
        let report = run_callout_filter(callouts);

        assert_eq!(report["callouts"][0]["answer"], answer);
        if failed {
            assert_eq!(report["local_reply"]["status"], 503, "{answer}");
            assert_eq!(
                report["local_reply"]["details"], "callout_failed",
                "{answer}"
            );
        } else {
            assert_eq!(report["local_reply"], Value::Null, "{answer}");
            assert_eq!(
                header(&report["response"]["headers"], ":status"),
                Some("200"),
                "{answer}"
            );
        }
    }
}

#[test]
fn declared_clusters_make_a_callout_elsewhere_fail_at_dispatch() {
    let module = scratch_file("callout-filter.wat", CALLOUT_FILTER);
    let config = scratch_file("empty-config.json", "");
    let request = scratch_file(
        "callouts-declared-clusters.json",
        &json!({
            "request": { "headers": [[":method", "GET"], [":path", "/"], [":authority", "shop"]] },
            "clusters": ["jwks"],
            "callouts": [{ "cluster": "jwks", "fail": "refused" }],
        })
        .to_string(),
    );
    let report = report(&run_exchange(&module, &config, &request, &[]));
    // `proxy_http_call` to `authz` returned BadArgument: nothing was dispatched, and this
    // filter, which ignores the status, stays paused.
    assert_eq!(report["callouts"], json!([]));
    assert_eq!(report["phases"][0]["action"], "pause");

    let typo = scratch_file(
        "callouts-undeclared-mock.json",
        &json!({
            "request": { "headers": [[":method", "GET"], [":path", "/"], [":authority", "shop"]] },
            "clusters": ["jwks"],
            "callouts": [{ "cluster": "authz", "fail": "refused" }],
        })
        .to_string(),
    );
    let output = run_exchange(&module, &config, &typo, &[]);
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("callouts[0].cluster: `authz` is not among `clusters`"),
        "{message}"
    );
}

#[test]
fn timed_out_callouts_expire_in_virtual_time() {
    let report = run_callout_filter(json!([{ "cluster": "authz", "fail": "timeout" }]));

    assert_eq!(report["callouts"][0]["answer"], "timeout");
    // Envoy answers an expired callout with a local 504 response, which resumes this filter.
    assert_eq!(report["local_reply"], Value::Null);
    assert_eq!(
        header(&report["response"]["headers"], ":status"),
        Some("200")
    );
}

#[test]
fn build_writes_the_module_and_its_checksum_despite_hostile_cargo_settings() {
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-dist");
    let _ = std::fs::remove_dir_all(&out_dir);

    // What an outer cargo, clippy or a coverage run may export; each would break the nested
    // wasm build if it were passed on.
    let output = Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .args([
            "build",
            "header-filter",
            "--out-dir",
            out_dir.to_str().unwrap(),
        ])
        .current_dir(workspace_root())
        .env("CARGO_BUILD_TARGET", "x86_64-unknown-linux-gnu")
        .env("RUSTFLAGS", "-C link-arg=--no-such-linker-flag")
        .env("CARGO_ENCODED_RUSTFLAGS", "-Cinstrument-coverage")
        .env("RUSTC_WORKSPACE_WRAPPER", "/nonexistent/rustc-wrapper")
        .output()
        .unwrap();

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let module = out_dir.join("header-filter.wasm");
    let bytes = std::fs::read(&module).unwrap();
    assert!(bytes.starts_with(b"\0asm"));
    let digest = wasmesh_harness::build::sha256_hex(&bytes);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("header-filter.wasm.sha256")).unwrap(),
        format!("{digest}  header-filter.wasm\n")
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with(&format!(
            "header-filter\t{} bytes\tsha256:{digest}\t",
            bytes.len()
        )),
        "{stdout}"
    );
}

#[test]
fn build_rejects_unknown_filters() {
    let message = stderr(&wasmesh(&["build", "no-such-filter"]));

    assert!(
        message.contains("unknown filter \"no-such-filter\"; available: "),
        "{message}"
    );
    assert!(message.contains("header-filter"), "{message}");
}

/// A module that traps (`unreachable`) on request headers.
const TRAPPING_FILTER: &str = r#"(module
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.add (local.get $size) (i32.const 8))))
    (local.get $ptr))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func $explode (unreachable))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $explode)
    (i32.const 0)))"#;

#[test]
fn a_crash_is_reported_and_answered_as_envoy_fails_closed() {
    let module = scratch_file("trapping-filter.wat", TRAPPING_FILTER);
    let config = scratch_file("trap-config.json", "");
    let request = scratch_file(
        "trap-request.json",
        r#"{"request": {"headers": {":method": "GET", ":path": "/", ":authority": "shop"}}}"#,
    );

    let closed = run_exchange(&module, &config, &request, &[]);

    assert!(String::from_utf8_lossy(&closed.stderr).contains("the VM crashed"));
    let closed = report(&closed);
    assert_eq!(closed["phases"][0]["action"], "crashed");
    assert_eq!(closed["local_reply"]["status"], 503);
    assert_eq!(closed["local_reply"]["details"], "wasm_fail_stream");
    let failure = &closed["vm_failure"];
    assert_eq!(failure["kind"], "trap");
    assert_eq!(failure["callback"], "proxy_on_request_headers");
    assert!(
        failure["backtrace"][0]
            .as_str()
            .unwrap()
            .contains("explode"),
        "{failure}"
    );
}

/// The first ```json block after `marker` in the CLI's README (`harness/cli/README.md`).
fn readme_json_after(marker: &str) -> String {
    let readme = std::fs::read_to_string(workspace_root().join("harness/cli/README.md")).unwrap();
    let after = &readme[readme.find(marker).unwrap()..];
    let start = after.find("```json\n").unwrap() + "```json\n".len();
    let end = start + after[start..].find("```").unwrap();
    after[start..end].to_string()
}

#[test]
fn the_readme_shows_the_real_output_of_the_quick_start() {
    let documented: Value =
        serde_json::from_str(&readme_json_after("### Output (format 1)")).unwrap();
    let request = workspace_root().join("examples/header-filter/request.json");

    let actual = report(&run_exchange(
        &example_wasm(),
        &example_config(),
        &request,
        &[],
    ));

    assert_eq!(actual, documented);
}

#[test]
fn the_readme_input_example_is_a_valid_exchange() {
    let request = scratch_file(
        "readme-input.json",
        &readme_json_after("### Input: the exchange"),
    );

    let report = report(&run_exchange(
        &example_wasm(),
        &example_config(),
        &request,
        &[],
    ));

    assert_eq!(report["local_reply"], Value::Null);
    assert_eq!(
        header(&report["request"]["headers"], "x-wasmesh-filtered"),
        Some("true")
    );
    assert_eq!(report["response"]["body"], "{\"ok\": true}");
}

/// RFC 4648 base64url without padding (the JWT encoding).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let group = chunk.iter().enumerate().fold(0u32, |acc, (i, &byte)| {
            acc | (u32::from(byte) << (16 - 8 * i))
        });
        for i in 0..=chunk.len() {
            out.push(char::from(
                ALPHABET[((group >> (18 - 6 * i)) & 63) as usize],
            ));
        }
    }
    out
}

/// HMAC-SHA256 (RFC 2104) of a key of at most one block.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let pad = |byte: u8| block.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

const JWT_SECRET: &[u8] = b"wasmesh-cli-test-hmac-secret-of-32-bytes";

/// An HS256 token for the provider of [`jwt_config`], expiring at `exp` (Unix seconds).
fn hs256_token(exp: u64) -> String {
    let header = base64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = base64url(
        json!({
            "iss": "https://issuer.example.com",
            "aud": "api.example.com",
            "sub": "user-1",
            "iat": exp - 7200,
            "exp": exp,
        })
        .to_string()
        .as_bytes(),
    );
    let signing_input = format!("{header}.{claims}");
    let signature = base64url(&hmac_sha256(JWT_SECRET, signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

/// jwt-authn with a local JWKS holding the HMAC key, requiring a token on every path.
fn jwt_config() -> PathBuf {
    let jwks = json!({"keys": [{"kty": "oct", "alg": "HS256", "k": base64url(JWT_SECRET)}]});
    scratch_file(
        "jwt-authn-local.json",
        &json!({
            "providers": {"local": {
                "issuer": "https://issuer.example.com",
                "audiences": ["api.example.com"],
                "local_jwks": {"inline_string": jwks.to_string()},
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "local"}}],
        })
        .to_string(),
    )
}

fn jwt_request(name: &str, token: &str, start_time: Option<Value>) -> PathBuf {
    let mut exchange = json!({
        "request": {"headers": {
            ":method": "GET", ":path": "/orders", ":authority": "api.example.com",
            "authorization": format!("Bearer {token}"),
        }},
    });
    if let Some(start_time) = start_time {
        exchange["start_time"] = start_time;
    }
    scratch_file(name, &exchange.to_string())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The virtual clock starts at the current time: a token that expired an hour ago is rejected as
/// real Envoy rejects it, and one that expires in an hour is accepted.
#[test]
fn run_judges_tokens_at_the_current_time() {
    let wasm = wasmesh_harness::build::wasm("wasmesh-jwt-authn").unwrap();
    let config = jwt_config();
    let now = unix_now();

    let expired = jwt_request("jwt-expired.json", &hs256_token(now - 3600), None);
    let rejected = report(&run_exchange(&wasm, &config, &expired, &[]));
    assert_eq!(rejected["local_reply"]["status"], 401, "{rejected:#}");
    assert_eq!(rejected["local_reply"]["body"], "Jwt is expired");

    let valid = jwt_request("jwt-valid.json", &hs256_token(now + 3600), None);
    let accepted = report(&run_exchange(&wasm, &config, &valid, &[]));
    assert_eq!(accepted["local_reply"], Value::Null, "{accepted:#}");
}

/// A pinned start (exchange file or flag; the flag wins) judges tokens at that time instead.
#[test]
fn run_judges_tokens_at_a_pinned_start_time() {
    let wasm = wasmesh_harness::build::wasm("wasmesh-jwt-authn").unwrap();
    let config = jwt_config();
    // Valid during 2024-01-01, expired ever since.
    let token = hs256_token(1_704_067_200 + 3600);

    let pinned = jwt_request(
        "jwt-pinned.json",
        &token,
        Some(json!("2024-01-01T00:00:00Z")),
    );
    let report_pinned = report(&run_exchange(&wasm, &config, &pinned, &[]));
    assert_eq!(
        report_pinned["local_reply"],
        Value::Null,
        "{report_pinned:#}"
    );

    let pinned_in_seconds = jwt_request(
        "jwt-pinned-seconds.json",
        &token,
        Some(json!(1_704_067_200)),
    );
    let report_seconds = report(&run_exchange(&wasm, &config, &pinned_in_seconds, &[]));
    assert_eq!(
        report_seconds["local_reply"],
        Value::Null,
        "{report_seconds:#}"
    );

    // The flag overrides the file: two hours after the start, the token is expired (beyond
    // the 60 s of clock skew jwt_authn allows by default).
    let overridden = report(&run_exchange(
        &wasm,
        &config,
        &pinned,
        &["--start-time", "2024-01-01T03:00:00+01:00"],
    ));
    assert_eq!(overridden["local_reply"]["body"], "Jwt is expired");

    let unpinned = jwt_request("jwt-unpinned.json", &token, None);
    let flag_only = report(&run_exchange(
        &wasm,
        &config,
        &unpinned,
        &["--start-time", "1704067200"],
    ));
    assert_eq!(flag_only["local_reply"], Value::Null, "{flag_only:#}");
}

#[test]
fn a_bad_start_time_names_the_accepted_forms() {
    let request = workspace_root().join("examples/header-filter/request.json");
    let error = stderr(&run_exchange(
        &example_wasm(),
        &example_config(),
        &request,
        &["--start-time", "yesterday"],
    ));
    assert!(error.contains("--start-time"), "{error}");
    assert!(error.contains("RFC 3339"), "{error}");

    let bad_file = scratch_file(
        "bad-start-time.json",
        r#"{"start_time": "2024-02-30T00:00:00Z", "request": {"headers": {":path": "/"}}}"#,
    );
    let error = stderr(&run_exchange(
        &example_wasm(),
        &example_config(),
        &bad_file,
        &[],
    ));
    assert!(error.contains("start_time"), "{error}");
}
