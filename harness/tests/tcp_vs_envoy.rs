#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! A network (TCP) filter in the harness ([`wasmesh_harness::TcpConnection`]) and in a real
//! Envoy 1.40 (`envoy.filters.network.wasm` before `envoy.filters.network.tcp_proxy`, to a
//! local TCP echo server). One WAT module logs every callback with its sizes and end-of-stream
//! flags, wraps each downstream chunk in `<`...`>`, prefixes each upstream chunk with `u:`,
//! holds downstream data that ends in `+` (`StopIteration`) until more arrives, lets data that
//! ends in `!` through with `proxy_continue_stream(Downstream)` (then stops), and closes the
//! connection (`proxy_close_stream(Downstream)`) when downstream data holds `CLOSE`; when the
//! connection opens it logs the status of a few property reads (HTTP ones, `connection.*`,
//! `plugin_name`). The module's log lines, the bytes the upstream received and the bytes the
//! client received must be the same.
//!
//! The same scenarios run on the same filter written with the `proxy-wasm` crate alone
//! (`harness/e2e/modules/rust/tcp`): `tcp_filter_in_rust_matches_envoy`.
//!
//! The echo server answers each read with the same bytes; on `BYE` it also ends its side of
//! the connection (a half-close from the upstream), and it ends its side when the client's
//! side ends.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;
use wasmesh_envoy::{self as envoy, BootstrapFormat, Cluster, EnvoyBuilder, WasmFilter};
use wasmesh_harness::{PeerType, TcpConnection};

const TAGS: [&str; 16] = [
    "TCP props",
    "TCP continue",
    "TCP hold",
    "TCP create",
    "TCP new_connection",
    "TCP downstream",
    "TCP upstream",
    "TCP close",
    "TCP edit",
    "TCP size",
    "TCP downstream_close",
    "TCP upstream_close",
    "TCP log",
    "TCP done",
    "TCP delete",
    "TCP read",
];

/// The module; `new_connection` is what `proxy_on_new_connection` returns.
fn module(new_connection: u32) -> String {
    let mut t = Strings::new();
    let tags: Vec<String> = TAGS.iter().map(|tag| t.s(tag)).collect();
    let tag = |name: &str| -> &str {
        let index = TAGS.iter().position(|t| *t == name).unwrap();
        &tags[index]
    };
    let marker = t.s("CLOSE");
    let request_path = t.path(&["request", "path"]);
    let response_code = t.path(&["response", "code"]);
    let mtls = t.path(&["connection", "mtls"]);
    let plugin_name = t.path(&["plugin_name"]);
    let request_headers = t.path(&["request", "headers"]);
    let connection_id = t.path(&["connection", "id"]);
    let lt = t.s("<");
    let gt = t.s(">");
    let up = t.s("u:");
    common::module(&format!(
        r#"
  {data}
  (global $root (mut i32) (i32.const 0))
  ;; 1 when the 5 bytes at $p are "CLOSE".
  (func $is_marker (param $p i32) (result i32)
    (i32.and
      (i32.eq (i32.load (local.get $p)) (i32.load {marker_ptr}))
      (i32.eq (i32.load8_u (i32.add (local.get $p) (i32.const 4))) (i32.const 69))))
  ;; 1 when ($p, $len) holds "CLOSE".
  (func $has_marker (param $p i32) (param $len i32) (result i32)
    (local $i i32)
    (if (i32.lt_u (local.get $len) (i32.const 5)) (then (return (i32.const 0))))
    (block $done (loop $next
      (br_if $done (i32.gt_u (i32.add (local.get $i) (i32.const 5)) (local.get $len)))
      (if (call $is_marker (i32.add (local.get $p) (local.get $i))) (then (return (i32.const 1))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i32.const 0))
  ;; Logs "TCP size <buffer> <size>" for a buffer type.
  (func $size (param $buffer i32)
    (drop (call $proxy_get_buffer_status (local.get $buffer) (i32.const 520) (i32.const 524)))
    (call $log2 {size} (local.get $buffer) (i32.load (i32.const 520))))
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32)
    (if (i32.eqz (local.get $parent))
      (then (global.set $root (local.get $ctx)))
      (else (call $info {create}))))
  (func (export "proxy_on_vm_start") (param $ctx i32) (param $size i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $ctx i32) (param $size i32) (result i32) (i32.const 1))
  (func (export "proxy_on_new_connection") (param $ctx i32) (result i32)
    (call $info {new_connection})
    (call $log2 {props}
      (call $proxy_get_property {request_path} (i32.const 512) (i32.const 516))
      (call $proxy_get_property {response_code} (i32.const 512) (i32.const 516)))
    (call $log2 {props}
      (call $proxy_get_property {mtls} (i32.const 512) (i32.const 516))
      (call $proxy_get_property {plugin_name} (i32.const 512) (i32.const 516)))
    (call $log2 {props}
      (call $proxy_get_property {request_headers} (i32.const 512) (i32.const 516))
      (call $proxy_get_property {connection_id} (i32.const 512) (i32.const 516)))
    (i32.const {new_connection_result}))
  (func (export "proxy_on_downstream_data") (param $ctx i32) (param $len i32) (param $eos i32) (result i32)
    (local $rc i32)
    (call $log2 {downstream} (local.get $len) (local.get $eos))
    (local.set $rc (call $proxy_get_buffer_bytes (i32.const 2) (i32.const 0) (local.get $len) (i32.const 512) (i32.const 516)))
    (call $log2 {read} (local.get $rc) (i32.load (i32.const 516)))
    (if (i32.eqz (local.get $len)) (then (return (i32.const 0))))
    ;; Data ending in '!' asks Envoy to continue reading (and to continue the upstream side,
    ;; which Envoy 1.40 does not implement), and stops.
    (if (i32.eq (i32.load8_u (i32.add (i32.load (i32.const 512)) (i32.sub (local.get $len) (i32.const 1)))) (i32.const 33))
      (then
        (call $log2 {continue} (call $proxy_continue_stream (i32.const 2)) (call $proxy_continue_stream (i32.const 3)))
        (return (i32.const 1))))
    ;; Data ending in '+' is held (StopIteration) until more arrives.
    (if (i32.eq (i32.load8_u (i32.add (i32.load (i32.const 512)) (i32.sub (local.get $len) (i32.const 1)))) (i32.const 43))
      (then
        (call $info {hold})
        (return (i32.const 1))))
    (if (call $has_marker (i32.load (i32.const 512)) (i32.load (i32.const 516)))
      (then
        (call $log1 {close} (call $proxy_close_stream (i32.const 2)))
        (return (i32.const 0))))
    (call $log2 {edit}
      (call $proxy_set_buffer_bytes (i32.const 2) (i32.const 0) (i32.const 0) {lt})
      (call $proxy_set_buffer_bytes (i32.const 2) (i32.add (local.get $len) (i32.const 1)) (i32.const 0) {gt}))
    (call $size (i32.const 2))
    (call $size (i32.const 3))
    (i32.const 0))
  (func (export "proxy_on_upstream_data") (param $ctx i32) (param $len i32) (param $eos i32) (result i32)
    (local $rc i32)
    (call $log2 {upstream} (local.get $len) (local.get $eos))
    (local.set $rc (call $proxy_get_buffer_bytes (i32.const 3) (i32.const 0) (local.get $len) (i32.const 512) (i32.const 516)))
    (call $log2 {read} (local.get $rc) (i32.load (i32.const 516)))
    (if (i32.eqz (local.get $len)) (then (return (i32.const 0))))
    (call $log2 {edit}
      (call $proxy_set_buffer_bytes (i32.const 3) (i32.const 0) (i32.const 0) {up})
      (call $proxy_set_buffer_bytes (i32.const 2) (i32.const 0) (i32.const 0) {up}))
    (call $size (i32.const 3))
    (call $size (i32.const 2))
    (i32.const 0))
  (func (export "proxy_on_downstream_connection_close") (param $ctx i32) (param $peer i32)
    (call $log1 {downstream_close} (local.get $peer)))
  (func (export "proxy_on_upstream_connection_close") (param $ctx i32) (param $peer i32)
    (call $log1 {upstream_close} (local.get $peer)))
  (func (export "proxy_on_log") (param $ctx i32)
    (call $info {log})
    (call $size (i32.const 2))
    (call $size (i32.const 3)))
  (func (export "proxy_on_done") (param $ctx i32) (result i32)
    (if (i32.ne (local.get $ctx) (global.get $root)) (then (call $info {done})))
    (i32.const 1))
  (func (export "proxy_on_delete") (param $ctx i32)
    (if (i32.ne (local.get $ctx) (global.get $root)) (then (call $info {delete}))))
"#,
        data = t.data(),
        marker_ptr = ptr(&marker),
        size = tag("TCP size"),
        create = tag("TCP create"),
        new_connection = tag("TCP new_connection"),
        downstream = tag("TCP downstream"),
        upstream = tag("TCP upstream"),
        read = tag("TCP read"),
        close = tag("TCP close"),
        hold = tag("TCP hold"),
        props = tag("TCP props"),
        new_connection_result = new_connection,
        request_path = request_path,
        response_code = response_code,
        mtls = mtls,
        plugin_name = plugin_name,
        request_headers = request_headers,
        connection_id = connection_id,
        continue = tag("TCP continue"),
        edit = tag("TCP edit"),
        downstream_close = tag("TCP downstream_close"),
        upstream_close = tag("TCP upstream_close"),
        log = tag("TCP log"),
        done = tag("TCP done"),
        delete = tag("TCP delete"),
        lt = lt,
        gt = gt,
        up = up,
    ))
}

/// The module's `TCP ...` lines, in order.
fn tcp_lines(lines: impl Iterator<Item = String>) -> Vec<String> {
    lines
        .filter_map(|line| line.find("TCP ").map(|i| line[i..].trim().to_string()))
        .collect()
}

/// Envoy reads the echo server's last bytes and its end (written right after them) in one read
/// or, now and then, in two, as the sockets go: `TCP upstream N 0` ... then `TCP upstream 0 1` and
/// its read. The harness's echo answers with its end at once, so the two-read form is folded
/// into the one-read form (`TCP upstream N 1` ...): the filter sees the same bytes either way.
fn fold_split_upstream_end(lines: &mut Vec<String>) {
    let mut end = 0;
    while end < lines.len() {
        if lines[end] != "TCP upstream 0 1" {
            end += 1;
            continue;
        }
        let data = lines[..end]
            .iter()
            .rposition(|l| l.starts_with("TCP upstream ") || l.starts_with("TCP downstream "));
        let size = data.and_then(|data| {
            lines[data]
                .strip_prefix("TCP upstream ")
                .and_then(|rest| rest.strip_suffix(" 0"))
                .filter(|size| *size != "0")
                .map(|size| (data, size.to_string()))
        });
        let Some((data, size)) = size else {
            end += 1;
            continue;
        };
        lines[data] = format!("TCP upstream {size} 1");
        let read = lines
            .get(end + 1)
            .is_some_and(|l| l.starts_with("TCP read "));
        lines.drain(end..end + 1 + usize::from(read));
    }
}

/// What the client does on one connection.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Writes bytes, then waits for what comes back.
    Write(&'static [u8]),
    /// Ends its sending side (`shutdown(Write)`), then reads until the connection ends.
    HalfClose,
    /// Closes the socket.
    Close,
}

/// The scenarios: a few writes each way then a close; a half-close from the upstream (`BYE`)
/// with the client still writing, then the client's half-close; bytes the filter holds back,
/// handed to it again with the next ones, then let through by `proxy_continue_stream`; the
/// close-on-marker case.
const SCENARIOS: [(&str, &[Step]); 5] = [
    (
        "writes",
        &[
            Step::Write(b"hello"),
            Step::Write(b"world"),
            Step::Write(b"x"),
            Step::Close,
        ],
    ),
    (
        "half-close",
        &[
            Step::Write(b"ping"),
            Step::Write(b"BYE"),
            Step::Write(b"more"),
            Step::HalfClose,
        ],
    ),
    (
        "hold-then-more",
        &[Step::Write(b"a+"), Step::Write(b"b"), Step::HalfClose],
    ),
    (
        "hold-then-continue",
        &[Step::Write(b"a+"), Step::Write(b"b!"), Step::HalfClose],
    ),
    (
        "close-on-marker",
        &[
            Step::Write(b"hi"),
            Step::Write(b"xxCLOSExx"),
            Step::HalfClose,
        ],
    ),
];

#[derive(Debug, Default, PartialEq, Eq)]
struct Observed {
    lines: Vec<String>,
    /// What the upstream received.
    upstream: Vec<u8>,
    /// What the client received.
    client: Vec<u8>,
}

/// The echo server's answer to one read, and whether it then ends its side.
fn echo(data: &[u8]) -> (Vec<u8>, bool) {
    (data.to_vec(), data.windows(3).any(|w| w == b"BYE"))
}

/// A TCP echo server; records what each connection received.
struct EchoServer {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl EchoServer {
    fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(Vec::new());
                    log.len() - 1
                };
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut write_open = true;
                    loop {
                        let n = match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        log.lock().unwrap()[index].extend_from_slice(&buf[..n]);
                        if write_open {
                            let (answer, end) = echo(&buf[..n]);
                            let _ = stream.write_all(&answer);
                            if end {
                                let _ = stream.shutdown(Shutdown::Write);
                                write_open = false;
                            }
                        }
                    }
                    let _ = stream.shutdown(Shutdown::Write);
                });
            }
        });
        EchoServer { addr, received }
    }
}

/// Reads until nothing more arrives for a while (or the connection ends).
fn read_idle(stream: &mut TcpStream, into: &mut Vec<u8>) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn envoy_run(name: &str, bytes: &[u8], configuration: &str) -> Vec<Observed> {
    // One file per test: the tests run in parallel in one process.
    let file = WasmFile::new(name, bytes);
    let echo = EchoServer::start();
    let mut filter = WasmFilter::new(&file.path).name("tcp").root_id("tcp");
    if !configuration.is_empty() {
        filter = filter.configuration(configuration);
    }
    let builder = EnvoyBuilder::new()
        .wasm_filter(filter.clone())
        .cluster(Cluster::new("echo", echo.addr))
        .concurrency(1);
    let mut bootstrap = builder.bootstrap();
    bootstrap["static_resources"]["listeners"][0]["filter_chains"] = json!([{ "filters": [
        {
            "name": "envoy.filters.network.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
                "config": filter.to_envoy_json()["typed_config"]["config"].clone(),
            },
        },
        {
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "tcp",
                "cluster": "echo",
            },
        },
    ] }]);
    let envoy = builder
        .start_with_bootstrap(&format!("{bootstrap:#}"), BootstrapFormat::Json)
        .unwrap();
    let lines = || tcp_lines(envoy.log().lines().map(str::to_string));
    let mut observed = Vec::new();
    for (index, (_, steps)) in SCENARIOS.iter().enumerate() {
        let before = lines().len();
        let mut client = TcpStream::connect(envoy.listener_addr()).unwrap();
        let mut received = Vec::new();
        let mut ended = false;
        for step in *steps {
            match step {
                Step::Write(data) => {
                    // After Envoy ended the client's side the client still writes (a
                    // half-closed connection); after a close the write may fail.
                    if client.write_all(data).is_err() {
                        break;
                    }
                    if !ended {
                        ended = read_idle(&mut client, &mut received);
                    } else {
                        std::thread::sleep(Duration::from_millis(300));
                    }
                }
                Step::HalfClose => {
                    let _ = client.shutdown(Shutdown::Write);
                    // Bounded: a connection Envoy never ends would otherwise hang the test.
                    for _ in 0..10 {
                        if read_idle(&mut client, &mut received) {
                            break;
                        }
                    }
                }
                Step::Close => break,
            }
        }
        drop(client);
        // The filter's last callbacks run once both sides are gone.
        let mut last = lines().len();
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(100));
            let now = lines().len();
            if now == last && lines()[before..].iter().any(|l| l == "TCP delete") {
                break;
            }
            last = now;
        }
        observed.push(Observed {
            lines: lines()[before..].to_vec(),
            upstream: echo
                .received
                .lock()
                .unwrap()
                .get(index)
                .cloned()
                .unwrap_or_default(),
            client: received,
        });
    }
    observed
}

/// The same client steps through the harness; the test plays the echo server.
fn harness_run(
    bytes: &[u8],
    configuration: &str,
    new_connection: wasmesh_harness::Action,
) -> Vec<Observed> {
    // Named as in Envoy's configuration: `plugin_name` reads the name (the WAT module sees only
    // the status, the Rust module also whether a value came back).
    let plugin = wasmesh_harness::Harness::from_bytes(bytes)
        .unwrap()
        .plugin_name("tcp")
        .root_id("tcp")
        .config(configuration)
        .start()
        .unwrap();
    let mut observed = Vec::new();
    for (_, steps) in SCENARIOS {
        plugin.clear_logs();
        let mut connection = plugin.tcp_connection();
        assert_eq!(connection.open().unwrap(), new_connection);
        // How much of what went upstream the echo server has answered, and whether its side
        // is still open.
        let mut answered = 0;
        let mut echo_open = true;
        for step in steps {
            if connection.closed().is_some() {
                break;
            }
            match step {
                Step::Write(data) => {
                    connection.downstream_data(data, false).unwrap();
                }
                Step::HalfClose | Step::Close => {
                    connection.downstream_data(&[], true).unwrap();
                }
            }
            let upstream = connection.upstream_received();
            let fresh = upstream[answered..].to_vec();
            answered = upstream.len();
            if echo_open && !fresh.is_empty() && connection.closed().is_none() {
                // The echo server reads the client's end with its last bytes: it answers and
                // ends its side at once.
                let (answer, end) = echo(&fresh);
                let end = end || connection.upstream_got_end();
                echo_open = !end;
                connection.upstream_data(&answer, end).unwrap();
            }
            if echo_open && connection.upstream_got_end() && connection.closed().is_none() {
                echo_open = false;
                connection.upstream_close().unwrap();
            }
            if matches!(step, Step::Close) {
                break;
            }
        }
        if new_connection == wasmesh_harness::Action::Pause {
            // Envoy 1.40 hands a connection stopped at `proxy_on_new_connection` nothing more,
            // not even the client's end: no close within the test's wait.
            observed.push(Observed {
                lines: tcp_lines(messages(&plugin).into_iter()),
                upstream: connection.upstream_received(),
                client: connection.downstream_received(),
            });
            assert!(connection.closed().is_none() && connection.downstream_paused());
            assert!(connection.upstream_data(b"x", false).is_err());
            continue;
        }
        if connection.closed().is_none() {
            connection.downstream_close(PeerType::Remote).unwrap();
        }
        observed.push(Observed {
            lines: tcp_lines(messages(&plugin).into_iter()),
            upstream: connection.upstream_received(),
            client: connection.downstream_received(),
        });
        check_accessors(&connection, new_connection);
    }
    observed
}

/// The connection handle's own view after a scenario: closed, nothing held back.
fn check_accessors(connection: &TcpConnection, new_connection: wasmesh_harness::Action) {
    assert!(connection.closed().is_some());
    assert!(!connection.downstream_paused());
    assert!(!connection.upstream_paused());
    assert_eq!(connection.new_connection_action(), Some(new_connection));
}

#[test]
fn tcp_filter_matches_envoy() {
    if envoy::skip_requested() {
        return;
    }
    let bytes = wat::parse_str(module(0)).unwrap();
    compare("tcp-0", &bytes, "", wasmesh_harness::Action::Continue);
}

/// The same with `StopIteration` from `proxy_on_new_connection`: Envoy 1.40 then hands the
/// filter nothing more and connects no upstream (the module never continues).
#[test]
fn tcp_filter_stopped_at_new_connection_matches_envoy() {
    if envoy::skip_requested() {
        return;
    }
    let bytes = wat::parse_str(module(1)).unwrap();
    compare("tcp-1", &bytes, "", wasmesh_harness::Action::Pause);
}

/// The same filter written with the `proxy-wasm` crate alone
/// (`harness/e2e/modules/rust/tcp`, crate `wasmesh-e2e-tcp-rust`), through the same scenarios.
/// It logs the WAT module's lines except where the crate reports less than the ABI (an empty
/// read is `TCP read 0 none`, see its source).
#[test]
fn tcp_filter_in_rust_matches_envoy() {
    if envoy::skip_requested() {
        return;
    }
    let path = wasmesh_harness::build::wasm("wasmesh-e2e-tcp-rust").unwrap();
    let bytes = std::fs::read(path).unwrap();
    compare("tcp-rust", &bytes, "", wasmesh_harness::Action::Continue);
}

/// The Rust filter configured to stop at `proxy_on_new_connection` (plugin configuration
/// `stop`), as `tcp_filter_stopped_at_new_connection_matches_envoy` does with the WAT module.
#[test]
fn tcp_filter_in_rust_stopped_at_new_connection_matches_envoy() {
    if envoy::skip_requested() {
        return;
    }
    let path = wasmesh_harness::build::wasm("wasmesh-e2e-tcp-rust").unwrap();
    let bytes = std::fs::read(path).unwrap();
    compare(
        "tcp-rust-stop",
        &bytes,
        "stop",
        wasmesh_harness::Action::Pause,
    );
}

/// Runs [`SCENARIOS`] with `bytes` (given `configuration` as plugin configuration when not
/// empty) in Envoy and in the harness; `action` is what the module's `proxy_on_new_connection`
/// returns.
fn compare(name: &str, bytes: &[u8], configuration: &str, action: wasmesh_harness::Action) {
    let mut envoy = envoy_run(name, bytes, configuration);
    for observed in &mut envoy {
        fold_split_upstream_end(&mut observed.lines);
    }
    let harness = harness_run(bytes, configuration, action);
    for ((name, _), envoy) in SCENARIOS.iter().zip(&envoy) {
        eprintln!(
            "envoy {name}: {:#?}\nupstream {:?}\nclient {:?}",
            envoy.lines,
            String::from_utf8_lossy(&envoy.upstream),
            String::from_utf8_lossy(&envoy.client)
        );
    }
    for ((name, _), (harness, envoy)) in SCENARIOS.iter().zip(harness.iter().zip(&envoy)) {
        assert_eq!(harness.lines, envoy.lines, "{name}: the module's log lines");
        assert_eq!(
            String::from_utf8_lossy(&harness.upstream),
            String::from_utf8_lossy(&envoy.upstream),
            "{name}: what the upstream received"
        );
        assert_eq!(
            String::from_utf8_lossy(&harness.client),
            String::from_utf8_lossy(&envoy.client),
            "{name}: what the client received"
        );
    }
    assert_eq!(harness.len(), SCENARIOS.len());
}

/// Harness only: `proxy_close_stream(Upstream)` closes the downstream connection too (Envoy's
/// write filter callbacks hold the same connection), `proxy_continue_stream(Upstream)` is
/// `Unimplemented`, a connection the test closes gets `proxy_on_downstream_connection_close`
/// with the peer it names, and a trap ends the connection without further callbacks.
#[test]
fn tcp_closes_and_traps() {
    let mut t = Strings::new();
    let upstream = t.s("TCP upstream");
    let close = t.s("TCP downstream_close");
    let done = t.s("TCP done");
    let plugin = builder(&common::module(&format!(
        r#"
  {data}
  (func (export "proxy_on_upstream_data") (param $ctx i32) (param $len i32) (param $eos i32) (result i32)
    (call $log2 {upstream} (call $proxy_continue_stream (i32.const 3)) (call $proxy_close_stream (i32.const 3)))
    (i32.const 0))
  (func (export "proxy_on_downstream_data") (param $ctx i32) (param $len i32) (param $eos i32) (result i32)
    (unreachable))
  (func (export "proxy_on_downstream_connection_close") (param $ctx i32) (param $peer i32)
    (call $log1 {close} (local.get $peer)))
  (func (export "proxy_on_done") (param $ctx i32) (result i32)
    (if (i32.gt_u (local.get $ctx) (i32.const 1)) (then (call $info {done})))
    (i32.const 1))
"#,
        data = t.data(),
    )))
    .start()
    .unwrap();

    let mut connection = plugin.tcp_connection();
    connection.open().unwrap();
    connection.upstream_data(b"bye", false).unwrap();
    assert_eq!(connection.closed(), Some(PeerType::Local));
    assert!(connection.closed_by_filter());
    // The bytes of the callback that closed never reach the client.
    assert!(connection.downstream_received().is_empty());
    assert!(connection.downstream_data(b"late", false).is_err());
    assert_eq!(
        messages(&plugin),
        ["TCP upstream 12 0", "TCP downstream_close 1", "TCP done"]
    );

    plugin.clear_logs();
    let mut connection = plugin.tcp_connection();
    connection.downstream_close(PeerType::Remote).unwrap();
    assert_eq!(connection.closed(), Some(PeerType::Remote));
    assert!(!connection.closed_by_filter());
    assert_eq!(messages(&plugin), ["TCP downstream_close 2", "TCP done"]);

    plugin.clear_logs();
    let mut connection = plugin.tcp_connection();
    assert!(connection.downstream_data(b"boom", false).is_err());
    assert!(connection.closed().is_some());
    assert!(connection.upstream_received().is_empty());
    assert!(messages(&plugin).is_empty());
}

/// Envoy's two-read form of the echo server's last bytes and end is folded into the one-read
/// form; an end after the client's own end (no bytes of the upstream's before it) is kept.
#[test]
fn a_split_upstream_end_is_folded() {
    let lines = |lines: &[&str]| lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    let mut split = lines(&[
        "TCP upstream 4 0",
        "TCP read 0 4",
        "TCP edit 0 2",
        "TCP upstream 0 1",
        "TCP read 0 none",
        "TCP upstream_close 0",
    ]);
    fold_split_upstream_end(&mut split);
    assert_eq!(
        split,
        lines(&[
            "TCP upstream 4 1",
            "TCP read 0 4",
            "TCP edit 0 2",
            "TCP upstream_close 0",
        ])
    );
    let after_client_end = lines(&[
        "TCP upstream 3 0",
        "TCP downstream 0 1",
        "TCP read 0 0",
        "TCP upstream 0 1",
        "TCP read 0 0",
    ]);
    let mut kept = after_client_end.clone();
    fold_split_upstream_end(&mut kept);
    assert_eq!(kept, after_client_end);
}
