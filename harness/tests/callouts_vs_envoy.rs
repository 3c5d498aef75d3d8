#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! HTTP callouts through the harness and a real Envoy 1.40, upstream by upstream: one that
//! answers, one that refuses the connection (a closed port), one that accepts and closes it,
//! one that never answers (the callout's timeout fires), one that closes in the middle of the
//! body, and a cluster Envoy does not have; each with and without `content-type:
//! application/grpc` on the callout. What the module sees (dispatch status, the response's
//! headers, body, trailers, `proxy_get_status`) and what the upstream receives must be the same.

mod common;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::*;
use wasmesh_envoy::{
    self as envoy, Cluster, EnvoyBuilder, HttpRequest, HttpResponse, TestServer, WasmFilter,
};
use wasmesh_harness::{CalloutReply, GrpcReply, Harness, HttpCallout};

/// How the module dispatches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `proxy_http_call`.
    Http,
    /// `proxy_grpc_call` with the cluster name as the service argument.
    GrpcByName,
    /// `proxy_grpc_call` with a serialized `GrpcService { envoy_grpc { cluster_name } }`.
    GrpcByProto,
    /// `proxy_grpc_stream` with the cluster name.
    StreamByName,
    /// `proxy_grpc_stream` with a serialized `GrpcService`.
    StreamByProto,
}

/// One callout the module makes when a request carries `x-case: <index>`.
struct Case {
    name: &'static str,
    kind: Kind,
    cluster: &'static str,
    method: &'static str,
    content_type: Option<&'static str>,
    timeout_ms: u32,
    /// Whether the request waits for the answer (always for HTTP; for gRPC, only where the
    /// answer is compared).
    wait: bool,
}

const fn http(
    name: &'static str,
    cluster: &'static str,
    content_type: Option<&'static str>,
) -> Case {
    Case {
        name,
        kind: Kind::Http,
        cluster,
        method: "POST",
        content_type,
        timeout_ms: 5000,
        wait: true,
    }
}

const GRPC: Option<&str> = Some("application/grpc");

const CASES: &[Case] = &[
    http("answered", "answer", None),
    Case {
        timeout_ms: 0,
        ..http("answered_without_timeout", "answer", None)
    },
    http("answered_grpc", "answer", GRPC),
    http("refused", "refused", None),
    http("refused_grpc", "refused", GRPC),
    http(
        "refused_grpc_proto",
        "refused",
        Some("application/grpc+proto"),
    ),
    http("refused_grpc_web", "refused", Some("application/grpc-web")),
    http("refused_json", "refused", Some("application/json")),
    Case {
        method: "HEAD",
        ..http("refused_head", "refused", None)
    },
    http("reset", "reset", None),
    http("reset_grpc", "reset", GRPC),
    Case {
        timeout_ms: 300,
        ..http("timeout", "hang", None)
    },
    Case {
        timeout_ms: 300,
        ..http("timeout_grpc", "hang", GRPC)
    },
    http("reset_mid_body", "partial", None),
    http("unknown_cluster", "nowhere", None),
    Case {
        kind: Kind::GrpcByName,
        ..http("grpc_refused", "refused", None)
    },
    Case {
        kind: Kind::GrpcByName,
        ..http("grpc_reset", "reset", None)
    },
    Case {
        kind: Kind::GrpcByName,
        timeout_ms: 300,
        ..http("grpc_timeout", "hang", None)
    },
    Case {
        kind: Kind::GrpcByName,
        wait: false,
        ..http("grpc_unknown_cluster_by_name", "nowhere", None)
    },
    Case {
        kind: Kind::GrpcByProto,
        wait: false,
        ..http("grpc_unknown_cluster_by_proto", "nowhere", None)
    },
    Case {
        kind: Kind::GrpcByName,
        wait: false,
        ..http("grpc_known_cluster_by_name", "answer", None)
    },
    Case {
        kind: Kind::GrpcByProto,
        wait: false,
        ..http("grpc_known_cluster_by_proto", "answer", None)
    },
    Case {
        kind: Kind::StreamByName,
        wait: false,
        ..http("stream_unknown_cluster_by_name", "nowhere", None)
    },
    Case {
        kind: Kind::StreamByProto,
        wait: false,
        ..http("stream_unknown_cluster_by_proto", "nowhere", None)
    },
    Case {
        kind: Kind::StreamByName,
        wait: false,
        ..http("stream_known_cluster_by_name", "answer", None)
    },
    Case {
        kind: Kind::StreamByProto,
        wait: false,
        ..http("stream_known_cluster_by_proto", "answer", None)
    },
];

/// The answering upstream's response.
const ANSWER_BODY: &str = "answer";

fn callout_module() -> String {
    let mut t = Strings::new();
    let case_header = t.s("x-case");
    let dispatch = t.s("CALL dispatch");
    let response = t.s("CALL response");
    let trailers = t.s("CALL trailers");
    let headers_tag = t.s("CALL headers ");
    let body_tag = t.s("CALL body ");
    let status = t.s("CALL status");
    let message_tag = t.s("CALL status_message ");
    let end = t.s("CALL end");
    let grpc_close = t.s("CALL grpc_close");
    let grpc_receive = t.s("CALL grpc_receive");
    let mut dispatches = String::new();
    for (index, case) in CASES.iter().enumerate() {
        let call = match case.kind {
            Kind::Http => {
                let cluster = t.s(case.cluster);
                let mut headers = vec![
                    (":method", case.method),
                    (":path", "/check"),
                    (":authority", "callout.local"),
                ];
                if let Some(content_type) = case.content_type {
                    headers.push(("content-type", content_type));
                }
                let headers = t.map(&headers);
                let body = t.s("ping");
                let no_trailers = t.map(&[]);
                format!(
                    "(call $proxy_http_call {cluster} {headers} {body} {no_trailers} (i32.const {}) (i32.const 520))",
                    case.timeout_ms
                )
            }
            Kind::GrpcByName | Kind::GrpcByProto | Kind::StreamByName | Kind::StreamByProto => {
                let service = if matches!(case.kind, Kind::GrpcByName | Kind::StreamByName) {
                    t.s(case.cluster)
                } else {
                    let name = case.cluster.as_bytes();
                    let mut inner = vec![0x0a, name.len() as u8];
                    inner.extend_from_slice(name);
                    let mut outer = vec![0x0a, inner.len() as u8];
                    outer.extend_from_slice(&inner);
                    t.bytes(&outer)
                };
                let service_name = t.s("test.Service");
                let method = t.s("Call");
                let metadata = t.map(&[]);
                let message = t.s("ping");
                if matches!(case.kind, Kind::StreamByName | Kind::StreamByProto) {
                    format!(
                        "(call $proxy_grpc_stream {service} {service_name} {method} {metadata} (i32.const 520))"
                    )
                } else {
                    format!(
                        "(call $proxy_grpc_call {service} {service_name} {method} {metadata} {message} (i32.const {}) (i32.const 520))",
                        case.timeout_ms
                    )
                }
            }
        };
        // Unless the case waits, the request continues at once.
        let wait = i32::from(case.wait);
        dispatches.push_str(&format!(
            "(if (i32.eq (global.get $case) (i32.const {index})) (then (local.set $rc {call}) (local.set $wait (i32.const {wait}))))\n"
        ));
    }
    module(&format!(
        r#"{data}
  (global $stream (mut i32) (i32.const 0))
  (global $case (mut i32) (i32.const 0))
  (func $hex (param $n i32) (result i32)
    (i32.add (local.get $n) (select (i32.const 48) (i32.const 87) (i32.lt_u (local.get $n) (i32.const 10)))))
  ;; Logs "<tag><hex of len bytes at ptr>".
  (func $log_hex (param $tag i32) (param $taglen i32) (param $ptr i32) (param $len i32)
    (local $p i32) (local $i i32) (local $b i32)
    (memory.copy (i32.const 20000) (local.get $tag) (local.get $taglen))
    (local.set $p (i32.add (i32.const 20000) (local.get $taglen)))
    (block $done (loop $bytes
      (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
      (local.set $b (i32.load8_u (i32.add (local.get $ptr) (local.get $i))))
      (i32.store8 (local.get $p) (call $hex (i32.shr_u (local.get $b) (i32.const 4))))
      (i32.store8 (i32.add (local.get $p) (i32.const 1)) (call $hex (i32.and (local.get $b) (i32.const 15))))
      (local.set $p (i32.add (local.get $p) (i32.const 2)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $bytes)))
    (call $info (i32.const 20000) (i32.sub (local.get $p) (i32.const 20000))))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (local $rc i32) (local $wait i32)
    (global.set $stream (local.get $ctx))
    (drop (call $proxy_get_header_map_value (i32.const 0) {case_header} (i32.const 512) (i32.const 516)))
    (global.set $case (call $atoi (i32.load (i32.const 512)) (i32.load (i32.const 516))))
    (i32.store (i32.const 520) (i32.const 0))
    {dispatches}
    (call $log2 {dispatch} (local.get $rc) (i32.load (i32.const 520)))
    (if (i32.or (local.get $rc) (i32.eqz (local.get $wait))) (then (call $info {end}) (return (i32.const 0))))
    (i32.const 1))
  (func (export "proxy_on_grpc_close") (param $root i32) (param $token i32) (param $status i32)
    (call $log1 {grpc_close} (local.get $status))
    (i32.store (i32.const 512) (i32.const 0))
    (i32.store (i32.const 516) (i32.const 0))
    (drop (call $proxy_get_status (i32.const 520) (i32.const 512) (i32.const 516)))
    (call $log1 {status} (i32.load (i32.const 520)))
    (call $log_hex {message_tag} (i32.load (i32.const 512)) (i32.load (i32.const 516)))
    (call $info {end})
    (drop (call $proxy_set_effective_context (global.get $stream)))
    (drop (call $proxy_continue_stream (i32.const 0))))
  (func (export "proxy_on_grpc_receive") (param $root i32) (param $token i32) (param $size i32)
    (call $log1 {grpc_receive} (local.get $size))
    (call $info {end})
    (drop (call $proxy_set_effective_context (global.get $stream)))
    (drop (call $proxy_continue_stream (i32.const 0))))
  (func (export "proxy_on_http_call_response") (param $root i32) (param $token i32) (param $nh i32) (param $nb i32) (param $nt i32)
    (call $log2 {response} (local.get $nh) (local.get $nb))
    (call $log1 {trailers} (local.get $nt))
    (i32.store (i32.const 512) (i32.const 0))
    (i32.store (i32.const 516) (i32.const 0))
    (drop (call $proxy_get_header_map_pairs (i32.const 6) (i32.const 512) (i32.const 516)))
    (call $log_hex {headers_tag} (i32.load (i32.const 512)) (i32.load (i32.const 516)))
    (i32.store (i32.const 512) (i32.const 0))
    (i32.store (i32.const 516) (i32.const 0))
    (if (local.get $nb)
      (then (drop (call $proxy_get_buffer_bytes (i32.const 4) (i32.const 0) (local.get $nb) (i32.const 512) (i32.const 516)))))
    (call $log_hex {body_tag} (i32.load (i32.const 512)) (i32.load (i32.const 516)))
    (i32.store (i32.const 512) (i32.const 0))
    (i32.store (i32.const 516) (i32.const 0))
    (drop (call $proxy_get_status (i32.const 520) (i32.const 512) (i32.const 516)))
    (call $log1 {status} (i32.load (i32.const 520)))
    (call $log_hex {message_tag} (i32.load (i32.const 512)) (i32.load (i32.const 516)))
    (call $info {end})
    (drop (call $proxy_set_effective_context (global.get $stream)))
    (drop (call $proxy_continue_stream (i32.const 0))))"#,
        data = t.data(),
    ))
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The module's `CALL` lines, decoded: header maps and bodies become readable text, and the
/// value of `x-envoy-upstream-service-time` (milliseconds of real time in Envoy, of virtual time
/// in the harness) becomes `<ms>`.
fn observed(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|line| line.split_once("CALL ").map(|(_, rest)| rest.trim_end()))
        .map(|rest| {
            if let Some(hex) = rest.strip_prefix("headers ") {
                let bytes = unhex(hex);
                let pairs = if bytes.is_empty() {
                    Vec::new()
                } else {
                    wasmesh_harness::headermap::deserialize(&bytes).unwrap()
                };
                let shown: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| {
                        let k = String::from_utf8_lossy(k);
                        let v = if k == "x-envoy-upstream-service-time" {
                            "<ms>".into()
                        } else {
                            String::from_utf8_lossy(v)
                        };
                        format!("{k}: {v}")
                    })
                    .collect();
                format!("headers [{}]", shown.join(", "))
            } else if let Some(hex) = rest.strip_prefix("body ") {
                format!("body {:?}", String::from_utf8_lossy(&unhex(hex)))
            } else if let Some(hex) = rest.strip_prefix("status_message ") {
                format!("status_message {:?}", String::from_utf8_lossy(&unhex(hex)))
            } else {
                rest.to_string()
            }
        })
        .collect()
}

/// The lines of case `index`: from its `dispatch` line (the `index`-th) to the `end` after it.
/// Answers Envoy delivers after the request went on (gRPC calls the case does not wait for) fall
/// outside, and are not compared.
fn case_lines(lines: &[String], index: usize) -> Option<Vec<String>> {
    let start = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("dispatch "))
        .nth(index)?
        .0;
    let end = start + lines[start..].iter().position(|l| l == "end")?;
    Some(lines[start..=end].to_vec())
}

/// A raw upstream: reads each request head (and its content-length body), then acts.
#[derive(Clone, Copy)]
enum Raw {
    /// Closes the connection without answering.
    Close,
    /// Never answers (keeps the connection open).
    Hang,
    /// Sends headers announcing 10 bytes, 3 bytes of body, then closes.
    Partial,
}

fn raw_upstream(mode: Raw) -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let address = listener.local_addr().unwrap();
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            let Ok(mut connection) = connection else {
                continue;
            };
            let held = held.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(connection.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                match mode {
                    Raw::Close => drop(connection),
                    Raw::Hang => held.lock().unwrap().push(connection),
                    Raw::Partial => {
                        let _ = connection
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc");
                        let _ = connection.flush();
                        drop(connection);
                    }
                }
            });
        }
    });
    address
}

/// A port nothing listens on: port 1 (tcpmux, privileged, unused), checked. A port freed by
/// dropping a listener could be taken again by the next listener this test binds.
fn closed_port() -> SocketAddr {
    let address = SocketAddr::from(([127, 0, 0, 1], 1));
    let refused = TcpStream::connect(address)
        .err()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
    assert!(refused, "something listens on {address}");
    address
}

fn answer_upstream() -> TestServer {
    TestServer::start(|_| HttpResponse::new(200, ANSWER_BODY).with_header("x-upstream", "yes"))
        .unwrap()
}

struct EnvoyRun {
    observed: Vec<Vec<String>>,
    upstream_requests: Vec<envoy::ReceivedRequest>,
}

fn run_envoy(wasm: &std::path::Path) -> EnvoyRun {
    let answer = answer_upstream();
    let envoy = EnvoyBuilder::new()
        .wasm_filter(WasmFilter::new(wasm))
        .direct_response(200, "ok")
        .cluster(Cluster::new("answer", answer.addr()))
        .cluster(Cluster::new("refused", closed_port()))
        .cluster(Cluster::new("reset", raw_upstream(Raw::Close)))
        .cluster(Cluster::new("hang", raw_upstream(Raw::Hang)))
        .cluster(Cluster::new("partial", raw_upstream(Raw::Partial)))
        .start()
        .unwrap();
    let mut observed_cases = Vec::new();
    for (index, case) in CASES.iter().enumerate() {
        let response = envoy
            .send(&HttpRequest::get("/").header("x-case", index.to_string()))
            .unwrap();
        assert_eq!(response.status, 200, "{}", case.name);
        // The module logs `CALL end` before it lets the request continue; allow for the log
        // reaching the file late.
        let mut lines = None;
        for _ in 0..200 {
            let all: Vec<String> = envoy
                .log()
                .lines()
                .filter(|l| l.contains("CALL "))
                .map(str::to_string)
                .collect();
            lines = case_lines(&observed(&all), index);
            if lines.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        observed_cases.push(lines.unwrap_or_default());
    }
    EnvoyRun {
        observed: observed_cases,
        upstream_requests: answer.requests(),
    }
}

/// The same exchanges through the harness: the clusters declared, each upstream answered as it
/// behaves in the Envoy run.
fn run_harness(bytes: &[u8]) -> (Vec<Vec<String>>, Vec<HttpCallout>) {
    let plugin = Harness::from_bytes(bytes)
        .unwrap()
        .cluster("answer")
        .cluster("refused")
        .cluster("reset")
        .cluster("hang")
        .cluster("partial")
        .grpc_callout_handler(|callout| match callout.cluster.as_str() {
            "refused" => GrpcReply::Refused,
            "reset" => GrpcReply::Reset,
            _ => GrpcReply::Timeout,
        })
        .http_callout_handler(|callout| match callout.upstream.as_str() {
            "answer" => CalloutReply::with_headers(
                200,
                &[("x-upstream", "yes"), ("content-length", "6")],
                ANSWER_BODY,
            ),
            "refused" => CalloutReply::Refused,
            "reset" => CalloutReply::Reset,
            "partial" => CalloutReply::Failure,
            _ => CalloutReply::Timeout,
        })
        .start()
        .unwrap();
    let mut observed_cases = Vec::new();
    for index in 0..CASES.len() {
        let mut stream = plugin.http_stream();
        let index_text = index.to_string();
        stream
            .request_headers(
                &[GET, &[("x-case", index_text.as_str())][..]].concat(),
                true,
            )
            .unwrap();
        // Past every callout's timeout.
        plugin
            .advance_clock(std::time::Duration::from_secs(10))
            .unwrap();
        observed_cases.push(case_lines(&observed(&messages(&plugin)), index).unwrap_or_default());
    }
    let answered = plugin
        .http_callouts()
        .into_iter()
        .filter(|c| c.upstream == "answer")
        .collect();
    (observed_cases, answered)
}

/// A callout's request as an HTTP/1.1 upstream receives it: pseudo-headers gone, `:authority`
/// become `host`.
fn on_the_wire(callout: &HttpCallout) -> (String, String, Vec<(String, String)>, Vec<u8>) {
    let headers = callout
        .headers
        .iter()
        .filter_map(|(k, v)| match k.as_str() {
            ":authority" => Some(("host".to_string(), v.clone())),
            k if k.starts_with(':') => None,
            _ => Some((k.clone(), v.clone())),
        })
        .collect();
    (
        callout.header(":method").unwrap_or_default().to_string(),
        callout.header(":path").unwrap_or_default().to_string(),
        headers,
        callout.body.clone(),
    )
}

#[test]
fn callout_answers_and_failures_reach_the_module_as_in_envoy() {
    if envoy::skip_requested() {
        return;
    }
    let bytes = wat::parse_str(callout_module()).unwrap();
    let wasm = WasmFile::new("callouts", &bytes);
    let envoy = run_envoy(&wasm.path);
    drop(wasm);
    let (harness, harness_requests) = run_harness(&bytes);

    let mut mismatches = Vec::new();
    let mut report = String::new();
    for ((case, envoy), harness) in CASES.iter().zip(&envoy.observed).zip(&harness) {
        report.push_str(&format!(
            "{}:\n  envoy:   {envoy:?}\n  harness: {harness:?}\n",
            case.name
        ));
        if envoy != harness {
            mismatches.push(case.name);
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:?}\n{report}");
    // Spot checks of what both agree on.
    assert!(
        harness[4].iter().any(|l| l.contains("grpc-status: 14")),
        "{report}"
    );
    assert_eq!(
        harness[14],
        ["dispatch 2 0", "end"],
        "BadArgument for an unknown cluster"
    );

    let envoy_requests: Vec<_> = envoy
        .upstream_requests
        .iter()
        // Not the gRPC calls (their answers are not compared).
        .filter(|r| r.path == "/check")
        .map(|r| {
            (
                r.method.clone(),
                r.path.clone(),
                r.headers.clone(),
                r.body.clone(),
            )
        })
        .collect();
    let harness_requests: Vec<_> = harness_requests.iter().map(on_the_wire).collect();
    assert_eq!(harness_requests, envoy_requests);
    assert_eq!(
        harness_requests[0].2.last().unwrap(),
        &(
            "x-envoy-expected-rq-timeout-ms".to_string(),
            "5000".to_string()
        )
    );
}

/// What Envoy 1.40 showed the module (the test above), pinned for runs without Envoy.
#[test]
fn the_harness_shows_the_module_envoys_failure_answers() {
    let bytes = wat::parse_str(callout_module()).unwrap();
    let (observed, _) = run_harness(&bytes);
    let case = |name: &str| {
        let index = CASES.iter().position(|c| c.name == name).unwrap();
        observed[index][1..].join("\n")
    };
    let grpc_close =
        |message: &str| format!("grpc_close 14\nstatus 14\nstatus_message {message:?}\nend");
    let refused = "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
    // An empty body or header map is logged as the bare tag.
    let plain = |status: u16, body: &str, shown: &str| {
        let shown_line = if shown.is_empty() {
            "body".to_string()
        } else {
            format!("body {shown:?}")
        };
        format!(
            "response 3 {}\ntrailers 0\nheaders [:status: {status}, content-length: {}, content-type: text/plain]\n{shown_line}\nstatus 0\nstatus_message\nend",
            shown.len(),
            body.len()
        )
    };
    let grpc = |message: &str| {
        format!(
            "response 4 0\ntrailers 0\nheaders [:status: 200, content-type: application/grpc, grpc-status: 14, grpc-message: {message}]\nbody\nstatus 0\nstatus_message\nend"
        )
    };
    assert_eq!(case("refused"), plain(503, refused, refused));
    assert_eq!(case("refused_head"), plain(503, refused, ""));
    assert_eq!(case("refused_grpc"), grpc(refused));
    assert_eq!(case("refused_grpc_proto"), grpc(refused));
    assert_eq!(case("refused_grpc_web"), plain(503, refused, refused));
    let reset = "upstream connect error or disconnect/reset before headers. reset reason: connection termination";
    assert_eq!(case("reset"), plain(503, reset, reset));
    assert_eq!(case("reset_grpc"), grpc(reset));
    let timeout = "upstream request timeout";
    assert_eq!(case("timeout"), plain(504, timeout, timeout));
    assert_eq!(case("timeout_grpc"), grpc(timeout));
    assert_eq!(
        case("reset_mid_body"),
        "response 0 0\ntrailers 0\nheaders\nbody\nstatus 11\nstatus_message \"reset\"\nend"
    );
    assert_eq!(case("unknown_cluster"), "end");
    assert_eq!(
        case("grpc_refused"),
        grpc_close(&format!("{refused}{{upstream_reset_before_response_started{{remote_connection_failure|delayed_connect_error:_Connection_refused}}}}"))
    );
    assert_eq!(
        case("grpc_reset"),
        grpc_close(&format!(
            "{reset}{{upstream_reset_before_response_started{{connection_termination}}}}"
        ))
    );
    assert_eq!(
        case("grpc_timeout"),
        grpc_close("upstream request timeout{response_timeout}")
    );
    assert_eq!(
        observed[CASES
            .iter()
            .position(|c| c.name == "unknown_cluster")
            .unwrap()][0],
        "dispatch 2 0"
    );
}

/// Calls (or opens a stream to) a serialized `GrpcService` naming a cluster Envoy does not have,
/// and logs what comes back later.
fn unknown_grpc_service_module(stream: bool) -> String {
    let mut t = Strings::new();
    let name = b"nowhere";
    let mut envoy_grpc = vec![0x0a, name.len() as u8];
    envoy_grpc.extend_from_slice(name);
    let mut grpc_service = vec![0x0a, envoy_grpc.len() as u8];
    grpc_service.extend_from_slice(&envoy_grpc);
    let service = t.bytes(&grpc_service);
    let service_name = t.s("envoy.service.auth.v3.Authorization");
    let method = t.s("Check");
    let metadata = t.map(&[]);
    let dispatch = t.s("LATE dispatch");
    let close = t.s("LATE close");
    let message = t.s("LATE message ");
    let call = if stream {
        format!("(call $proxy_grpc_stream {service} {service_name} {method} {metadata} (i32.const 520))")
    } else {
        format!(
            "(call $proxy_grpc_call {service} {service_name} {method} {metadata} (i32.const 600) (i32.const 0) (i32.const 1000) (i32.const 520))"
        )
    };
    module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (i32.store (i32.const 520) (i32.const 0))
    (call $log2 {dispatch} {call} (i32.load (i32.const 520)))
    (i32.const 0))
  (func (export "proxy_on_grpc_close") (param $root i32) (param $token i32) (param $status i32)
    (call $log2 {close} (local.get $token) (local.get $status))
    (drop (call $proxy_get_status (i32.const 524) (i32.const 512) (i32.const 516)))
    ;; "LATE message <status message>"
    (memory.copy (i32.const 4096) {message})
    (memory.copy (i32.add (i32.const 4096) (i32.const 13)) (i32.load (i32.const 512)) (i32.load (i32.const 516)))
    (call $info (i32.const 4096) (i32.add (i32.const 13) (i32.load (i32.const 516)))))"#,
        t.data()
    ))
}

/// Envoy refuses a gRPC call or stream to a serialized `GrpcService` naming an unknown cluster
/// (`InternalFailure`, a token used up), then closes that token: `proxy_on_grpc_close` with
/// status 14 and message `Cluster not available`. The harness does the same.
#[test]
fn an_unknown_grpc_service_cluster_is_closed_later_as_in_envoy() {
    if envoy::skip_requested() {
        return;
    }
    for stream in [false, true] {
        let bytes = wat::parse_str(unknown_grpc_service_module(stream)).unwrap();
        let plugin = Harness::from_bytes(&bytes)
            .unwrap()
            .cluster("answer")
            .start()
            .unwrap();
        plugin.http_stream().request_headers(GET, true).unwrap();
        let harness: Vec<String> = messages(&plugin)
            .into_iter()
            .filter(|l| l.starts_with("LATE "))
            .collect();

        let wasm = WasmFile::new(&format!("late-close-{stream}"), &bytes);
        let envoy = EnvoyBuilder::new()
            .wasm_filter(WasmFilter::new(&wasm.path))
            .direct_response(200, "ok")
            .start()
            .unwrap();
        assert_eq!(envoy.send(&HttpRequest::get("/")).unwrap().status, 200);
        let mut in_envoy = Vec::new();
        for _ in 0..200 {
            in_envoy = envoy
                .log()
                .lines()
                .filter_map(|l| {
                    l.split_once("LATE ")
                        .map(|(_, m)| format!("LATE {}", m.trim()))
                })
                .collect();
            if in_envoy.len() >= harness.len() && in_envoy.len() >= 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        assert_eq!(harness, in_envoy, "stream: {stream}");
        let token = if stream { 6 } else { 5 };
        assert_eq!(
            harness,
            [
                "LATE dispatch 10 0".to_string(),
                format!("LATE close {token} 14"),
                "LATE message Cluster not available".to_string()
            ]
        );
    }
}

/// A gRPC call or stream whose "cluster name" happens to be a well-formed protobuf message
/// (`empty`: field 12, a fixed32): Envoy parses it as a `GrpcService` without a target and the
/// whole proxy aborts (`panic: unset oneof`); the harness fails the VM with an error saying so.
#[test]
fn a_cluster_name_that_parses_as_a_target_less_grpc_service_aborts_envoy_and_fails_the_harness() {
    if envoy::skip_requested() {
        return;
    }
    for stream in [false, true] {
        let mut t = Strings::new();
        let service = t.s("empty");
        let service_name = t.s("s.S");
        let method = t.s("M");
        let metadata = t.map(&[]);
        let call = if stream {
            format!("(call $proxy_grpc_stream {service} {service_name} {method} {metadata} (i32.const 520))")
        } else {
            format!(
                "(call $proxy_grpc_call {service} {service_name} {method} {metadata} (i32.const 600) (i32.const 0) (i32.const 1000) (i32.const 520))"
            )
        };
        let bytes = wat::parse_str(module(&format!(
            r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop {call})
    (i32.const 0))"#,
            t.data()
        )))
        .unwrap();

        let plugin = Harness::from_bytes(&bytes).unwrap().start().unwrap();
        let error = plugin
            .http_stream()
            .request_headers(GET, true)
            .unwrap_err()
            .to_string();
        assert!(error.contains("panic: unset oneof"), "{error}");

        let wasm = WasmFile::new(&format!("unset-oneof-{stream}"), &bytes);
        let envoy = EnvoyBuilder::new()
            .wasm_filter(WasmFilter::new(&wasm.path))
            .direct_response(200, "ok")
            .start()
            .unwrap();
        assert!(envoy.send(&HttpRequest::get("/")).is_err());
        let mut log = String::new();
        for _ in 0..200 {
            log = envoy.log();
            if log.contains("panic: unset oneof") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        assert!(log.contains("panic: unset oneof"), "{}", envoy.log_tail(20));
    }
}
