#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The real-Envoy launcher: it starts Envoy from a generated bootstrap, routes to direct
//! responses and to local upstreams, loads wasm modules, reads stats, and reports startup
//! failures with Envoy's own explanation.

use std::path::PathBuf;

use wasmesh_envoy::{
    self as envoy, Cluster, EnvoyBuilder, EnvoyError, HttpRequest, HttpResponse, ReceivedRequest,
    TestServer, WasmFilter,
};

/// A minimal proxy-wasm module (ABI 0.2.1): accepts or rejects its configuration, and adds
/// `x-wat-filter: ran` to every response.
fn wat_filter(accept_configuration: bool) -> String {
    format!(
        r#"(module
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 16) "x-wat-filter")
  (data (i32.const 32) "ran")
  (func (export "proxy_abi_version_0_2_1"))
  ;; Bump allocator: Envoy copies configuration and header values into the module through it.
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (global.get $heap) (local.get $size)) (i32.const 7))
                               (i32.const -8)))
    (local.get $ptr))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const {accept}))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    ;; map type 2 = response headers
    (drop (call $add_header (i32.const 2) (i32.const 16) (i32.const 12) (i32.const 32) (i32.const 3)))
    (i32.const 0)))"#,
        accept = i32::from(accept_configuration)
    )
}

/// Writes a WAT module as a `.wasm` file in the test's scratch directory.
fn wasm_file(name: &str, wat_text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("envoy-launcher");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, wat::parse_str(wat_text).unwrap()).unwrap();
    path
}

#[test]
fn answers_from_a_direct_response_and_counts_the_request() {
    if envoy::skip_requested() {
        return;
    }
    let envoy = EnvoyBuilder::new()
        .direct_response(201, "made")
        .start()
        .unwrap();

    let response = envoy.send(&HttpRequest::get("/anything")).unwrap();

    assert_eq!(response.status, 201);
    assert_eq!(response.text(), "made");
    assert_eq!(response.header("server"), Some("envoy"));
    assert_eq!(response.response_code_details(), Some("direct_response"));
    // Counted when the request headers arrive, so it is settled once the response is back.
    assert_eq!(
        envoy.stat("http.ingress_http.downstream_rq_total").unwrap(),
        Some(1)
    );
    assert_eq!(envoy.stat("no.such.stat").unwrap(), None);
}

#[test]
fn forwards_to_an_upstream_that_echoes_what_it_received() {
    if envoy::skip_requested() {
        return;
    }
    let upstream = TestServer::echo().unwrap();
    let envoy = EnvoyBuilder::new()
        .upstream(upstream.addr())
        .start()
        .unwrap();

    let response = envoy
        .send(
            &HttpRequest::post("/submit?x=1", "payload")
                .header("x-test", "yes")
                .header("host", "api.example"),
        )
        .unwrap();

    assert_eq!(response.status, 200, "{}", response.text());
    // Not a local reply: no details header.
    assert_eq!(response.response_code_details(), None);
    let seen = ReceivedRequest::from_echo(&response).unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/submit?x=1");
    assert_eq!(seen.header("x-test"), Some("yes"));
    assert_eq!(seen.header("host"), Some("api.example"));
    assert_eq!(seen.body, b"payload");
    // The server's own record agrees with what came back through Envoy.
    assert_eq!(upstream.requests(), vec![seen]);
}

#[test]
fn extra_clusters_point_at_local_servers() {
    if envoy::skip_requested() {
        return;
    }
    let jwks = TestServer::start(|_| HttpResponse::new(200, r#"{"keys":[]}"#)).unwrap();
    let envoy = EnvoyBuilder::new()
        .cluster(Cluster::new("jwks", jwks.addr()))
        .start()
        .unwrap();

    let clusters = envoy.admin_get("/clusters").unwrap().text();

    assert!(
        clusters.contains(&format!("jwks::{}", jwks.addr())),
        "{clusters}"
    );
}

#[test]
fn runs_a_wasm_filter_from_the_generated_configuration() {
    if envoy::skip_requested() {
        return;
    }
    let module = wasm_file("accepting.wasm", &wat_filter(true));
    let envoy = EnvoyBuilder::new()
        .wasm_filter(WasmFilter::new(&module).configuration("{}"))
        .start()
        .unwrap();

    let response = envoy.send(&HttpRequest::get("/")).unwrap();

    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-wat-filter"), Some("ran"));
}

#[test]
fn reports_a_filter_that_rejects_its_configuration() {
    if envoy::skip_requested() {
        return;
    }
    let module = wasm_file("rejecting.wasm", &wat_filter(false));

    let error = EnvoyBuilder::new()
        .wasm_filter(WasmFilter::new(&module).configuration("{}"))
        .start()
        .unwrap_err();

    let EnvoyError::Exited { log_tail, .. } = &error else {
        panic!("expected Envoy to exit, got {error}");
    };
    assert!(
        log_tail.contains("Failed to configure base Wasm plugin"),
        "{log_tail}"
    );
}

#[test]
fn reports_a_missing_module_file() {
    if envoy::skip_requested() {
        return;
    }
    let error = EnvoyBuilder::new()
        .wasm_filter(WasmFilter::new("/nonexistent/filter.wasm"))
        .start()
        .unwrap_err();

    let message = error.to_string();
    assert!(matches!(error, EnvoyError::Exited { .. }), "{message}");
    assert!(message.contains("/nonexistent/filter.wasm"), "{message}");
}

#[test]
fn reports_an_envoy_binary_that_cannot_run() {
    let error = EnvoyBuilder::new()
        .envoy_binary("/nonexistent/envoy")
        .start()
        .unwrap_err();

    let message = error.to_string();
    assert!(matches!(error, EnvoyError::Io { .. }), "{message}");
    assert!(message.contains("starting /nonexistent/envoy"), "{message}");
}
