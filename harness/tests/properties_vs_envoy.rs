#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Every property the harness documents, read by one module at every phase (root context,
//! request headers, request body, response headers, response body, access log) in a real Envoy
//! 1.40 and in the harness on the same exchange: the status and the bytes must be identical.
//!
//! Values the harness cannot know from configuration (node, route and cluster names, metadata,
//! the peer addresses of this run) are set in the harness to what the Envoy bootstrap and this
//! run have, so the comparison checks encodings and phase availability; values that change from
//! run to run (times, durations, connection ids) are compared by status and length.

mod common;
use std::collections::BTreeMap;

use common::*;
use serde_json::json;
use wasmesh_envoy::{self as envoy, BootstrapFormat, EnvoyBuilder, HttpRequest, TestServer};
use wasmesh_harness::{headermap, Harness, HttpStream, PropertyValue};

const WASM_NS: &str = "envoy.filters.http.wasm";

/// Every path probed. Display names join segments with `.` (a segment containing a dot is
/// written between brackets).
fn paths() -> Vec<Vec<&'static str>> {
    let mut paths: Vec<Vec<&str>> = [
        "plugin_name",
        "plugin_root_id",
        "plugin_vm_id",
        // Before Envoy 1.3x these were top-level; Envoy 1.40 serves them under `xds` only.
        "node",
        "listener_direction",
        "listener_metadata",
        "cluster_name",
        "cluster_metadata",
        "route_name",
        "route_metadata",
        "upstream_host_metadata",
        "metadata",
        "connection_id",
        "xds",
        "request",
        "response",
        "source",
        "destination",
        "connection",
        "upstream",
        "nope",
    ]
    .iter()
    .map(|p| vec![*p])
    .collect();
    paths.push(vec!["node", "id"]);
    // Odd paths: empty, a trailing NUL, an empty segment.
    paths.push(vec![""]);
    paths.push(vec!["", ""]);
    paths.push(vec!["request", ""]);
    paths.push(vec!["request", "", "path"]);
    paths.push(vec!["xds", "node", "id", ""]);
    paths.push(vec!["route_metadata", "filter_metadata"]);
    paths.push(vec!["filter_state", "nope"]);
    // Written with proxy_set_property from the request headers on.
    paths.push(vec!["my_state"]);
    paths.push(vec!["my_state", "x"]);
    paths.push(vec!["filter_state", "wasm.my_state"]);
    paths.push(vec!["filter_state", "my_state"]);
    paths.push(vec!["metadata", "filter_metadata"]);
    for xds in [
        "node",
        "node.id",
        "node.cluster",
        "node.metadata",
        "node.metadata.REGION",
        "node.metadata.LABELS",
        "node.metadata.LABELS.app",
        "node.metadata.N",
        "node.metadata.FLAG",
        "node.metadata.L",
        "node.metadata.L.1",
        "node.metadata.nope",
        "node.nope",
        "cluster_name",
        "cluster_metadata",
        "cluster_metadata.filter_metadata.cmeta.k",
        "route_name",
        "route_metadata",
        "route_metadata.filter_metadata",
        "route_metadata.typed_filter_metadata",
        "route_metadata.nope",
        "route_metadata.filter_metadata.other",
        "virtual_host_name",
        "virtual_host_metadata",
        "virtual_host_metadata.filter_metadata",
        "virtual_host_metadata.filter_metadata.vmeta",
        "virtual_host_metadata.filter_metadata.vmeta.n",
        "upstream_host_metadata",
        "upstream_host_metadata.filter_metadata.hmeta.k",
        "upstream_host_locality_metadata",
        "filter_chain_name",
        "listener_metadata",
        "listener_metadata.filter_metadata.lmeta.k",
        "listener_direction",
        "nope",
    ] {
        paths.push(std::iter::once("xds").chain(xds.split('.')).collect());
    }
    for below in [
        "",
        "key",
        "key.0",
        "key.1",
        "key.2",
        "key.3",
        "key.3.inner",
        "key.4",
        "key.4.1",
        "key.5",
        "key.x",
        "key.0.deeper",
        "missing",
    ] {
        let mut path = vec!["xds", "route_metadata", "filter_metadata", WASM_NS];
        path.extend(below.split('.').filter(|s| !s.is_empty()));
        paths.push(path);
    }
    for attribute in [
        "request.path",
        "request.url_path",
        "request.query",
        "request.host",
        "request.scheme",
        "request.method",
        "request.referer",
        "request.useragent",
        "request.id",
        "request.headers",
        "request.headers.x-multi",
        "request.headers.x-absent",
        "request.headers.X-Multi",
        "request.headers.x multi",
        "response.headers.X-Up",
        "request.headers_bytes",
        "request.time",
        "request.duration",
        "request.size",
        "request.total_size",
        "request.protocol",
        "request.nope",
        "response.code",
        "response.code_details",
        "response.flags",
        "response.grpc_status",
        "response.headers",
        "response.headers.x-up",
        "response.headers_bytes",
        "response.trailers",
        "response.size",
        "response.total_size",
        "response.backend_latency",
        "source.address",
        "source.port",
        "destination.address",
        "destination.port",
        "connection.id",
        "connection.mtls",
        "connection.requested_server_name",
        "connection.tls_version",
        "connection.uri_san_peer_certificate",
        "connection.termination_details",
        "connection.transport_failure_reason",
        "upstream.address",
        "upstream.port",
        "upstream.local_address",
        "upstream.transport_failure_reason",
        "upstream.request_attempt_count",
    ] {
        paths.push(attribute.split('.').collect());
    }
    paths
}

fn display(path: &[&str]) -> String {
    path.iter()
        .map(|p| {
            if p.contains('.') {
                format!("[{p}]")
            } else {
                (*p).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// At most this many bytes of a value are logged (the whole `node` runs to kilobytes); the
/// length is always logged.
const MAX_LOGGED: u32 = 600;

/// Logs `PROP <phase> <path> <status> <length> <hex>` for every path of [`paths`] at every
/// callback (and `PROP <phase> @ <count or size> <end of stream>` first); answers a request
/// carrying `x-deny` with a local 403.
fn probe_module() -> String {
    let mut t = Strings::new();
    let mut probes = String::new();
    for path in paths() {
        let name = t.s(&display(&path));
        let bytes = t.path(&path);
        probes.push_str(&format!(
            "    (call $probe (local.get $phase) (local.get $phase_len) {name} {bytes})\n"
        ));
    }
    let phases = [
        "configure",
        "request_headers",
        "request_body",
        "response_headers",
        "response_body",
        "log",
        "done",
    ];
    let phase: BTreeMap<&str, String> = phases.iter().map(|p| (*p, t.s(p))).collect();
    let args: BTreeMap<&str, String> = phases
        .iter()
        .map(|p| (*p, t.s(&format!("PROP {p} @"))))
        .collect();
    let prop = t.s("PROP ");
    let deny = t.s("x-deny");
    let state_name = t.s("my_state");
    let legacy_name = t.s("route_name");
    let state_value = t.s("v1");
    let set_configure = t.s("PROP configure @set");
    let set_request = t.s("PROP request_headers @set");
    let details = t.s("denied_here");
    let body = t.s("nope");
    let extra = t.map(&[("x-r", "1")]);
    module(&format!(
        r#"{data}
  ;; Writes $len bytes at $src as lowercase hex at $dst.
  (func $hex (param $src i32) (param $len i32) (param $dst i32)
    (local $b i32)
    (block $done (loop $next
      (br_if $done (i32.eqz (local.get $len)))
      (local.set $b (i32.load8_u (local.get $src)))
      (i32.store8 (local.get $dst) (call $digit (i32.shr_u (local.get $b) (i32.const 4))))
      (i32.store8 (i32.add (local.get $dst) (i32.const 1)) (call $digit (i32.and (local.get $b) (i32.const 15))))
      (local.set $src (i32.add (local.get $src) (i32.const 1)))
      (local.set $dst (i32.add (local.get $dst) (i32.const 2)))
      (local.set $len (i32.sub (local.get $len) (i32.const 1)))
      (br $next))))
  (func $digit (param $d i32) (result i32)
    (select (i32.add (i32.const 48) (local.get $d)) (i32.add (i32.const 87) (local.get $d)) (i32.lt_u (local.get $d) (i32.const 10))))
  (func $append (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $len))
    (i32.add (local.get $dst) (local.get $len)))
  (func $probe (param $phase i32) (param $phase_len i32) (param $name i32) (param $name_len i32) (param $path i32) (param $path_len i32)
    (local $st i32) (local $ptr i32) (local $size i32) (local $shown i32) (local $buf i32) (local $p i32)
    (i32.store (i32.const 512) (i32.const 0))
    (i32.store (i32.const 516) (i32.const 0))
    (local.set $st (call $proxy_get_property (local.get $path) (local.get $path_len) (i32.const 512) (i32.const 516)))
    (if (i32.eqz (local.get $st)) (then
      (local.set $ptr (i32.load (i32.const 512)))
      (local.set $size (i32.load (i32.const 516)))))
    (local.set $shown (select (local.get $size) (i32.const {MAX_LOGGED}) (i32.lt_u (local.get $size) (i32.const {MAX_LOGGED}))))
    (local.set $buf (call $malloc (i32.add (i32.const 96) (i32.add (i32.add (local.get $phase_len) (local.get $name_len)) (i32.shl (local.get $shown) (i32.const 1))))))
    (local.set $p (call $append (local.get $buf) {prop}))
    (local.set $p (call $append (local.get $p) (local.get $phase) (local.get $phase_len)))
    (i32.store8 (local.get $p) (i32.const 32))
    (local.set $p (call $append (i32.add (local.get $p) (i32.const 1)) (local.get $name) (local.get $name_len)))
    (i32.store8 (local.get $p) (i32.const 32))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (local.set $p (i32.add (local.get $p) (call $itoa (local.get $st) (local.get $p))))
    (i32.store8 (local.get $p) (i32.const 32))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (local.set $p (i32.add (local.get $p) (call $itoa (local.get $size) (local.get $p))))
    (i32.store8 (local.get $p) (i32.const 32))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (call $hex (local.get $ptr) (local.get $shown) (local.get $p))
    (local.set $p (i32.add (local.get $p) (i32.shl (local.get $shown) (i32.const 1))))
    (drop (call $proxy_log (i32.const 2) (local.get $buf) (i32.sub (local.get $p) (local.get $buf)))))
  (func $probe_all (param $phase i32) (param $phase_len i32)
{probes}  )
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (call $log1 {set_configure} (call $proxy_set_property {state_name} {state_value}))
    (call $probe_all {configure}) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32) (param $n i32) (param $eos i32) (result i32)
    (call $log2 {args_request_headers} (local.get $n) (local.get $eos))
    (call $log2 {set_request}
      (call $proxy_set_property {state_name} {state_value})
      (call $proxy_set_property {legacy_name} {state_value}))
    (call $probe_all {request_headers})
    (if (i32.eqz (call $proxy_get_header_map_value (i32.const 0) {deny} (i32.const 512) (i32.const 516)))
      (then (drop (call $proxy_send_local_response (i32.const 403) {details} {body} {extra} (i32.const -1)))))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param i32) (param $n i32) (param $eos i32) (result i32)
    (call $log2 {args_request_body} (local.get $n) (local.get $eos))
    (call $probe_all {request_body}) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32) (param $n i32) (param $eos i32) (result i32)
    (call $log2 {args_response_headers} (local.get $n) (local.get $eos))
    (call $probe_all {response_headers}) (i32.const 0))
  (func (export "proxy_on_response_body") (param i32) (param $n i32) (param $eos i32) (result i32)
    (call $log2 {args_response_body} (local.get $n) (local.get $eos))
    (call $probe_all {response_body}) (i32.const 0))
  (func (export "proxy_on_log") (param i32)
    (call $probe_all {log}))
  (func (export "proxy_on_done") (param i32) (result i32)
    (call $probe_all {done}) (i32.const 1))"#,
        data = t.data(),
        configure = phase["configure"],
        request_headers = phase["request_headers"],
        args_request_headers = args["request_headers"],
        request_body = phase["request_body"],
        args_request_body = args["request_body"],
        response_headers = phase["response_headers"],
        args_response_headers = args["response_headers"],
        response_body = phase["response_body"],
        args_response_body = args["response_body"],
        log = phase["log"],
        done = phase["done"],
    ))
}

/// The `PROP` lines of a log, without the prefix.
fn probed(lines: impl Iterator<Item = String>) -> Vec<String> {
    lines
        .filter_map(|l| {
            l.split_once("PROP ")
                .map(|(_, rest)| rest.trim().to_string())
        })
        .collect()
}

/// Every struct has one key: Envoy lists a struct's keys in its hash-map order, which the
/// harness does not reproduce (a list keeps its order, so it carries the typed values).
const ROUTE_METADATA: &str = r#"{"filter_metadata": {"envoy.filters.http.wasm": {
    "key": ["value", 2.5, true, {"inner": "x"}, ["a", "b"]]}}}"#;
/// Compared as a set of entries at the top (see [`unordered`]); one key below.
const NODE_METADATA: &str =
    r#"{"REGION": "eu-west", "LABELS": {"app": "probe"}, "N": 3, "FLAG": false, "L": ["x", "y"]}"#;
const CLUSTER_METADATA: &str = r#"{"filter_metadata": {"cmeta": {"k": "cluster"}}}"#;
const LISTENER_METADATA: &str = r#"{"filter_metadata": {"lmeta": {"k": "listener"}}}"#;
const VIRTUAL_HOST_METADATA: &str = r#"{"filter_metadata": {"vmeta": {"n": null}}}"#;

/// The Envoy bootstrap: the builder's, plus names and metadata on the listener, route and
/// cluster, and node metadata.
fn bootstrap(upstream: std::net::SocketAddr) -> serde_json::Value {
    let mut bootstrap = EnvoyBuilder::new()
        .wasm_filter(
            envoy::WasmFilter::new("probe.wasm")
                .name("probe-plugin")
                .root_id("probe-root")
                .vm_id("probe-vm"),
        )
        .upstream(upstream)
        // The local-reply mapper that reports details would add a header to local replies.
        .report_response_code_details(false)
        .bootstrap();
    bootstrap["node"]["metadata"] = serde_json::from_str(NODE_METADATA).unwrap();
    let listener = &mut bootstrap["static_resources"]["listeners"][0];
    listener["metadata"] = serde_json::from_str(LISTENER_METADATA).unwrap();
    let manager = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
    let virtual_host = &mut manager["route_config"]["virtual_hosts"][0];
    virtual_host["metadata"] = serde_json::from_str(VIRTUAL_HOST_METADATA).unwrap();
    let route = &mut virtual_host["routes"][0];
    route["name"] = json!("probe-route");
    route["metadata"] = serde_json::from_str(ROUTE_METADATA).unwrap();
    let cluster = &mut bootstrap["static_resources"]["clusters"][0];
    cluster["metadata"] = serde_json::from_str(CLUSTER_METADATA).unwrap();
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"] =
        json!({ "filter_metadata": { "hmeta": { "k": "host" } } });
    bootstrap
}

#[test]
fn every_documented_property_reads_as_in_envoy_at_every_phase() {
    if envoy::skip_requested() {
        return;
    }
    let bytes = wat::parse_str(probe_module()).unwrap();
    let upstream =
        TestServer::start(|_| envoy::HttpResponse::new(200, "hello").with_header("x-up", "1"))
            .unwrap();
    let wasm = WasmFile::new("properties", &bytes);
    let mut bootstrap = bootstrap(upstream.addr());
    let filename = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]
        ["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["config"]["vm_config"]
        ["code"]["local"]["filename"];
    *filename = json!(wasm.path.display().to_string());
    let envoy = EnvoyBuilder::new()
        .start_with_bootstrap(&bootstrap.to_string(), BootstrapFormat::Json)
        .unwrap();
    // One request forwarded upstream (with a body both ways), one answered by the module.
    let forwarded = HttpRequest::post("/p/a?q=1", "body!")
        .header("x-multi", "1")
        .header("x-multi", "2")
        .header("user-agent", "probe-agent")
        .header("referer", "http://ref.example");
    let denied = HttpRequest::get("/deny").header("x-deny", "1");
    assert_eq!(envoy.send(&forwarded).unwrap().status, 200);
    wait_for_access_logs(&envoy, 1);
    assert_eq!(envoy.send(&denied).unwrap().status, 403);
    let envoy_lines = without_repeated_configure(wait_for_access_logs(&envoy, 2));
    let envoy_streams = streams(&envoy_lines);
    assert_eq!(envoy_streams.len(), 2, "{envoy_lines:#?}");

    // The same exchanges in the harness, with what this Envoy run presented to the module.
    let plugin = Harness::from_bytes(&bytes)
        .unwrap()
        .plugin_name("probe-plugin")
        .root_id("probe-root")
        .vm_id("probe-vm")
        .property(&["xds", "node"], PropertyValue::Bytes(b"node".to_vec()))
        .property(&["xds", "node", "id"], "wasmesh-test")
        .property(&["xds", "node", "cluster"], "wasmesh-test")
        .property(
            &["xds", "node", "metadata"],
            PropertyValue::Struct(serde_json::from_str(NODE_METADATA).unwrap()),
        )
        // Set for the plugin (they are the listener's), served to streams only, as in Envoy.
        .property(&["xds", "listener_direction"], PropertyValue::Int(0))
        .property(&["xds", "listener_metadata"], metadata(LISTENER_METADATA))
        .property(&["xds", "filter_chain_name"], "")
        .start()
        .unwrap();

    let seen = &envoy_streams[0];
    let mut request_headers = pairs(&value(seen, "request_headers", "request.headers"));
    // Envoy's map joins a repeated header; the module saw two `x-multi` lines.
    request_headers.retain(|(k, _)| k != "x-multi");
    request_headers.push(("x-multi".into(), "1".into()));
    request_headers.push(("x-multi".into(), "2".into()));
    let response_headers = pairs(&value(seen, "response_headers", "response.headers"));
    let mut stream = harness_stream(&plugin, seen);
    stream
        .request_headers(&as_refs(&request_headers), false)
        .unwrap();
    stream.request_body(b"body!", false).unwrap();
    stream.request_body(b"", true).unwrap();
    stream
        .response_headers(&as_refs(&response_headers), false)
        .unwrap();
    stream.response_body(b"hello", false).unwrap();
    stream.response_body(b"", true).unwrap();
    stream.complete().unwrap();

    let seen = &envoy_streams[1];
    let request_headers = pairs(&value(seen, "request_headers", "request.headers"));
    let mut stream = harness_stream(&plugin, seen);
    let outcome = stream
        .request_headers(&as_refs(&request_headers), true)
        .unwrap();
    assert_eq!(outcome.local_reply().unwrap().status, 403);
    stream.complete().unwrap();

    let harness_lines =
        without_repeated_configure(probed(plugin.logs().into_iter().map(|l| l.message)));
    if std::env::var_os("WASMESH_SHOW_PROPERTIES").is_some() {
        for (e, h) in envoy_lines.iter().zip(&harness_lines) {
            println!("envoy   {e}\nharness {h}");
        }
    }
    let envoy_view: Vec<String> = envoy_lines.iter().filter_map(|l| comparable(l)).collect();
    let harness_view: Vec<String> = harness_lines.iter().filter_map(|l| comparable(l)).collect();
    let differences: Vec<String> = envoy_view
        .iter()
        .zip(&harness_view)
        .filter(|(e, h)| e != h)
        .map(|(e, h)| format!("envoy:   {e}\nharness: {h}"))
        .collect();
    assert!(
        differences.is_empty() && envoy_view.len() == harness_view.len(),
        "{} lines differ ({} in Envoy, {} in the harness):\n{}",
        differences.len(),
        envoy_view.len(),
        harness_view.len(),
        differences.join("\n")
    );
}

/// A harness stream with the route, cluster and peer addresses Envoy showed in `seen`.
fn harness_stream(plugin: &wasmesh_harness::Plugin, seen: &[String]) -> HttpStream {
    let text = |name: &str| String::from_utf8(value(seen, "request_headers", name)).unwrap();
    let mut stream = plugin.http_stream();
    stream
        .property(&["xds", "cluster_name"], "upstream")
        .property(&["xds", "cluster_metadata"], metadata(CLUSTER_METADATA))
        .property(&["xds", "route_name"], "probe-route")
        .property(&["xds", "route_metadata"], metadata(ROUTE_METADATA))
        .property(&["xds", "virtual_host_name"], "all")
        .property(
            &["xds", "virtual_host_metadata"],
            metadata(VIRTUAL_HOST_METADATA),
        )
        .property(&["source", "address"], text("source.address"))
        .property(&["destination", "address"], text("destination.address"));
    stream
}

/// The bytes Envoy gave for `name` at `phase` in one stream's lines.
fn value(seen: &[String], phase: &str, name: &str) -> Vec<u8> {
    let line = seen
        .iter()
        .find(|l| l.starts_with(&format!("{phase} {name} 0 ")))
        .unwrap_or_else(|| panic!("Envoy gave no {name} at {phase}"));
    unhex(line.split(' ').nth(4).unwrap_or_default())
}

/// The lines of each stream (each starts at its request headers).
fn streams(lines: &[String]) -> Vec<Vec<String>> {
    let mut streams: Vec<Vec<String>> = Vec::new();
    for line in lines {
        if line.starts_with("request_headers @ ") {
            streams.push(Vec::new());
        }
        if let Some(current) = streams.last_mut() {
            current.push(line.clone());
        }
    }
    streams
}

/// Envoy's `PROP` lines once `count` streams went through `proxy_on_log` (access logs run
/// when a stream is torn down, just after its response is written).
fn wait_for_access_logs(envoy: &envoy::Envoy, count: usize) -> Vec<String> {
    let last = "done upstream.request_attempt_count ";
    for _ in 0..500 {
        let lines = probed(envoy.log().lines().map(str::to_string));
        if lines.iter().filter(|l| l.starts_with(last)).count() >= count {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{count} access logs expected:\n{}", envoy.log_tail(40));
}

/// Envoy configures the plugin in several VMs (main thread, workers): one copy of each line.
fn without_repeated_configure(lines: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    lines
        .into_iter()
        .filter(|l| !l.starts_with("configure ") || seen.insert(l.clone()))
        .collect()
}

fn metadata(json: &str) -> PropertyValue {
    PropertyValue::Metadata(serde_json::from_str(json).unwrap())
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn pairs(bytes: &[u8]) -> Vec<(String, String)> {
    headermap::deserialize(bytes)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
        .collect()
}

/// Lines not compared, each for a reason the harness documents (see `lib.rs`, "Not emulated").
fn excluded(phase: &str, name: &str) -> bool {
    // Upstream selection (host, addresses, attempt count, host metadata, backend latency):
    // Envoy knows it once the router picked a host; tests set these explicitly.
    name.starts_with("upstream.")
        || name.starts_with("xds.upstream_host_")
        || name == "response.backend_latency"
        // At access-log time Envoy's maps also hold what the router and the connection manager
        // added after the filter chain (`x-envoy-expected-rq-timeout-ms`, `date`, `server`).
        || (phase == "log"
            && (name.starts_with("request.headers")
                || name.starts_with("request.total_size")
                || name.starts_with("response.headers")
                || name.starts_with("response.total_size")))
}

/// Values that change from run to run are compared by status and length.
fn volatile(name: &str) -> bool {
    matches!(
        name,
        "request.time" | "request.duration" | "connection_id" | "connection.id" | "xds.node"
    )
}

/// Maps are compared as sets of entries (Envoy lists header names in hash order).
fn unordered(name: &str) -> bool {
    matches!(
        name,
        "request.headers" | "response.headers" | "response.trailers" | "xds.node.metadata"
    )
}

/// The comparable form of a `PROP` line, `None` when it is excluded.
fn comparable(line: &str) -> Option<String> {
    let fields: Vec<&str> = line.splitn(5, ' ').collect();
    let (phase, name) = (fields[0], fields[1]);
    if name.starts_with('@') {
        return Some(line.to_string());
    }
    if excluded(phase, name) {
        return None;
    }
    let (status, length, hex) = (fields[2], fields[3], fields.get(4).copied().unwrap_or(""));
    if name == "xds.node" {
        return Some(format!("{phase} {name} {status}"));
    }
    if volatile(name) {
        return Some(format!("{phase} {name} {status} {length}"));
    }
    if unordered(name) && status == "0" {
        let mut entries = byte_pairs(&unhex(hex));
        entries.sort();
        return Some(format!("{phase} {name} {status} {entries:?}"));
    }
    Some(line.to_string())
}

fn as_refs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn byte_pairs(bytes: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    headermap::deserialize(bytes).unwrap()
}
