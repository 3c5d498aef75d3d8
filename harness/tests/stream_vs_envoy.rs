#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Stream behaviours of Envoy's filter manager, one module through the harness and a real Envoy
//! (V8) on the same requests: local replies to `HEAD`, a failure after the response headers went
//! downstream, the per-connection buffer limit, and the request and response as Envoy's HTTP/1
//! codec and connection manager present them to the filter.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use wasmesh_envoy::{self as envoy, EnvoyBuilder, HttpResponse, TestServer, WasmFilter};
use wasmesh_harness::{ClientRequest, Harness, HttpStream, Plugin, StreamState, UpstreamResponse};

/// Behaviours chosen per request by headers; each callback logs what it saw as `FID ...`.
///
/// - `x-reply`: a local reply (403, body `denied\n`, details `probe_denied`) from request headers;
/// - `x-buffer-request` / `x-buffer-response`: the body callback buffers until the end of stream;
/// - `x-stop-all-buffer-response`: response headers return `StopAllIterationAndBuffer`;
/// - `x-trap-response-body`: `proxy_on_response_body` traps;
/// - `x-reply-response-body`: `proxy_on_response_body` sends a local reply (500).
fn probe_module() -> String {
    let mut t = Strings::new();
    let flags = [
        t.s("x-reply"),
        t.s("x-buffer-request"),
        t.s("x-buffer-response"),
        t.s("x-trap-response-body"),
        t.s("x-reply-response-body"),
        t.s("x-stop-all-buffer-response"),
    ];
    let request_headers = t.s("FID request_headers");
    let request_body = t.s("FID request_body");
    let response_headers = t.s("FID response_headers");
    let response_body = t.s("FID response_body");
    let seen = [
        (t.s(":scheme"), t.s("FID :scheme")),
        (t.s("x-forwarded-proto"), t.s("FID x-forwarded-proto")),
        (t.s("x-request-id"), t.s("FID x-request-id")),
        (t.s("content-length"), t.s("FID request content-length")),
        (
            t.s("transfer-encoding"),
            t.s("FID request transfer-encoding"),
        ),
    ];
    let response_seen = [
        (t.s(":status"), t.s("FID response :status")),
        (t.s("content-length"), t.s("FID response content-length")),
        (t.s("content-type"), t.s("FID response content-type")),
    ];
    let details = t.s("probe_denied");
    let denied = t.s("denied\n");
    let late_details = t.s("probe_late");
    let none = t.s("");
    let extra = t.map(&[("x-probe", "1")]);
    let empty_map = t.map(&[]);
    let mut read_flags = String::new();
    for (bit, name) in flags.iter().enumerate() {
        read_flags.push_str(&format!(
            "(if (i32.eqz (call $proxy_get_header_map_value (i32.const 0) {name} (i32.const 512) (i32.const 516)))
              (then (local.set $f (i32.or (local.get $f) (i32.const {})))))\n",
            1 << bit
        ));
    }
    let mut log_request = String::new();
    for (name, tag) in &seen {
        log_request.push_str(&format!("(call $log_header (i32.const 0) {name} {tag})\n"));
    }
    let mut log_response = String::new();
    for (name, tag) in &response_seen {
        log_response.push_str(&format!("(call $log_header (i32.const 2) {name} {tag})\n"));
    }
    module(&format!(
        r#"{data}
  ;; Logs "<tag> <value>" of a header, or "<tag> -" when absent.
  (func $log_header (param $map i32) (param $key i32) (param $keylen i32) (param $tag i32) (param $taglen i32)
    (local $p i32)
    (memory.copy (i32.const 900) (local.get $tag) (local.get $taglen))
    (local.set $p (i32.add (i32.const 900) (local.get $taglen)))
    (i32.store8 (local.get $p) (i32.const 32))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (if (i32.eqz (call $proxy_get_header_map_value (local.get $map) (local.get $key) (local.get $keylen) (i32.const 512) (i32.const 516)))
      (then
        (memory.copy (local.get $p) (i32.load (i32.const 512)) (i32.load (i32.const 516)))
        (local.set $p (i32.add (local.get $p) (i32.load (i32.const 516)))))
      (else
        (i32.store8 (local.get $p) (i32.const 45))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))))
    (call $info (i32.const 900) (i32.sub (local.get $p) (i32.const 900))))
  ;; Logs "FID key <name>" for each header of a map, in order.
  (func $log_keys (param $map i32)
    (local $base i32) (local $n i32) (local $i i32) (local $p i32) (local $klen i32) (local $vlen i32)
    (drop (call $proxy_get_header_map_pairs (local.get $map) (i32.const 512) (i32.const 516)))
    (local.set $base (i32.load (i32.const 512)))
    (local.set $n (i32.load (local.get $base)))
    (local.set $p (i32.add (i32.add (local.get $base) (i32.const 4)) (i32.mul (local.get $n) (i32.const 8))))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $klen (i32.load (i32.add (local.get $base) (i32.add (i32.const 4) (i32.mul (local.get $i) (i32.const 8))))))
      (local.set $vlen (i32.load (i32.add (local.get $base) (i32.add (i32.const 8) (i32.mul (local.get $i) (i32.const 8))))))
      (i32.store (i32.const 960) (i32.const 0x20444946)) ;; "FID "
      (i32.store (i32.const 964) (i32.const 0x2079656b)) ;; "key "
      (memory.copy (i32.const 968) (local.get $p) (local.get $klen))
      (call $info (i32.const 960) (i32.add (local.get $klen) (i32.const 8)))
      (local.set $p (i32.add (local.get $p) (i32.add (i32.add (local.get $klen) (local.get $vlen)) (i32.const 2))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))))
  (func $flags (param $c i32) (result i32) (i32.load (i32.add (i32.const 4096) (i32.shl (local.get $c) (i32.const 2)))))
  (func (export "proxy_on_request_headers") (param $c i32) (param $n i32) (param $e i32) (result i32)
    (local $f i32)
    {read_flags}
    (i32.store (i32.add (i32.const 4096) (i32.shl (local.get $c) (i32.const 2))) (local.get $f))
    (call $log2 {request_headers} (local.get $f) (local.get $e))
    {log_request}
    (call $log_keys (i32.const 0))
    (if (i32.and (local.get $f) (i32.const 1))
      (then (drop (call $proxy_send_local_response (i32.const 403) {details} {denied} {extra} (i32.const -1)))))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param $c i32) (param $size i32) (param $e i32) (result i32)
    (call $log2 {request_body} (local.get $size) (local.get $e))
    (if (result i32) (i32.and (i32.ne (i32.and (call $flags (local.get $c)) (i32.const 2)) (i32.const 0)) (i32.eqz (local.get $e)))
      (then (i32.const 1)) (else (i32.const 0))))
  (func (export "proxy_on_response_headers") (param $c i32) (param $n i32) (param $e i32) (result i32)
    (call $log1 {response_headers} (local.get $e))
    {log_response}
    (call $log_keys (i32.const 2))
    (if (result i32) (i32.and (call $flags (local.get $c)) (i32.const 32))
      (then (i32.const 3)) (else (i32.const 0))))
  (func (export "proxy_on_response_body") (param $c i32) (param $size i32) (param $e i32) (result i32)
    (local $f i32)
    (local.set $f (call $flags (local.get $c)))
    (call $log2 {response_body} (local.get $size) (local.get $e))
    (if (i32.and (local.get $f) (i32.const 8)) (then (unreachable)))
    (if (i32.and (local.get $f) (i32.const 16))
      (then (drop (call $proxy_send_local_response (i32.const 500) {late_details} {none} {empty_map} (i32.const -1)))))
    (if (result i32) (i32.and (i32.ne (i32.and (local.get $f) (i32.const 4)) (i32.const 0)) (i32.eqz (local.get $e)))
      (then (i32.const 1)) (else (i32.const 0))))"#,
        data = t.data()
    ))
}

/// What a client saw: a complete response, or a stream cut short (reset).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    Reset,
}

/// Sends raw HTTP/1.1 bytes on a new connection and reads until the server closes it.
fn exchange(addr: std::net::SocketAddr, wire: &[u8], head: bool) -> Seen {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(wire).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Seen::Reset;
    };
    let head_text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let rest = &raw[split + 4..];
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    if head {
        return Seen::Response {
            status,
            headers,
            body: Vec::new(),
        };
    }
    let body = if let Some(length) = find("content-length") {
        let length: usize = length.parse().unwrap();
        if rest.len() < length {
            return Seen::Reset;
        }
        rest[..length].to_vec()
    } else if find("transfer-encoding").is_some() {
        let mut body = Vec::new();
        let mut at = rest;
        loop {
            let Some(eol) = at.windows(2).position(|w| w == b"\r\n") else {
                return Seen::Reset;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&at[..eol]).unwrap().trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            if at.len() < eol + 2 + size + 2 {
                return Seen::Reset;
            }
            body.extend_from_slice(&at[eol + 2..eol + 2 + size]);
            at = &at[eol + 2 + size + 2..];
        }
        body
    } else {
        rest.to_vec()
    };
    Seen::Response {
        status,
        headers,
        body,
    }
}

fn traced(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            l.split_once("FID ")
                .map(|(_, rest)| rest.trim().to_string())
        })
        .collect()
}

/// Response headers compared between the two judges (the rest are Envoy's own: `date`,
/// `server`, `connection`, `x-envoy-upstream-service-time`).
const COMPARED_HEADERS: &[&str] = &["content-length", "content-type", "x-probe"];

/// What the client saw, in a form both judges produce.
fn client_view(seen: &Seen) -> String {
    match seen {
        Seen::Reset => "reset".to_string(),
        Seen::Response {
            status,
            headers,
            body,
        } => {
            let mut shown: Vec<String> = headers
                .iter()
                .filter(|(k, _)| COMPARED_HEADERS.contains(&k.as_str()))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            shown.sort();
            let details = headers
                .iter()
                .find(|(k, _)| k == envoy::RESPONSE_CODE_DETAILS_HEADER)
                .map(|(_, v)| v.as_str())
                .unwrap_or("via_upstream");
            format!(
                "{status} {details} [{}] {} body bytes",
                shown.join(" "),
                body.len()
            )
        }
    }
}

fn harness_seen(stream: &HttpStream) -> Seen {
    if let Some(reply) = stream.local_reply() {
        let body = if stream.request_header(":method").as_deref() == Some("HEAD") {
            Vec::new()
        } else {
            reply.body.clone()
        };
        let mut headers = reply.headers.clone();
        headers.push((
            envoy::RESPONSE_CODE_DETAILS_HEADER.to_string(),
            reply.details,
        ));
        return Seen::Response {
            status: reply.status as u16,
            headers,
            body,
        };
    }
    if stream.response_state() == StreamState::Reset {
        return Seen::Reset;
    }
    let headers = stream.response_headers_now();
    let status = headers
        .iter()
        .find(|(k, _)| k == ":status")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap();
    Seen::Response {
        status,
        headers,
        body: stream.response_body_now(),
    }
}

/// One exchange of the comparison: the client's request and the upstream's body size.
struct Case {
    name: &'static str,
    method: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Option<usize>,
    chunked: bool,
    upstream_bytes: usize,
    /// Body chunk sizes depend on how Envoy's reads split a large body: left out of the trace.
    large: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "GET, plain",
        method: "GET",
        headers: &[],
        body: None,
        chunked: false,
        upstream_bytes: 2,
        large: false,
    },
    Case {
        name: "POST with content-length",
        method: "POST",
        headers: &[("x-a", "1")],
        body: Some(5),
        chunked: false,
        upstream_bytes: 2,
        large: false,
    },
    Case {
        name: "POST chunked",
        method: "POST",
        headers: &[],
        body: Some(5),
        chunked: true,
        upstream_bytes: 0,
        large: false,
    },
    Case {
        name: "client's own request id",
        method: "GET",
        headers: &[
            ("x-request-id", "client-id"),
            ("x-forwarded-proto", "https"),
        ],
        body: None,
        chunked: false,
        upstream_bytes: 2,
        large: false,
    },
    Case {
        name: "GET, local reply",
        method: "GET",
        headers: &[("x-reply", "1")],
        body: None,
        chunked: false,
        upstream_bytes: 2,
        large: false,
    },
    Case {
        name: "HEAD, local reply",
        method: "HEAD",
        headers: &[("x-reply", "1")],
        body: None,
        chunked: false,
        upstream_bytes: 2,
        large: false,
    },
    Case {
        name: "request buffered, exactly the limit",
        method: "POST",
        headers: &[("x-buffer-request", "1")],
        body: Some(1024 * 1024),
        chunked: false,
        upstream_bytes: 2,
        large: true,
    },
    Case {
        name: "request buffered, one byte over",
        method: "POST",
        headers: &[("x-buffer-request", "1")],
        body: Some(1024 * 1024 + 1),
        chunked: false,
        upstream_bytes: 2,
        large: true,
    },
    Case {
        name: "request streamed, 2 MiB",
        method: "POST",
        headers: &[],
        body: Some(2 * 1024 * 1024),
        chunked: false,
        upstream_bytes: 2,
        large: true,
    },
    Case {
        name: "response buffered after its headers went on, 2 MiB",
        method: "GET",
        headers: &[("x-buffer-response", "1")],
        body: None,
        chunked: false,
        upstream_bytes: 2 * 1024 * 1024,
        large: true,
    },
    Case {
        name: "response held by StopAllIterationAndBuffer, 2 MiB",
        method: "GET",
        headers: &[("x-stop-all-buffer-response", "1")],
        body: None,
        chunked: false,
        upstream_bytes: 2 * 1024 * 1024,
        large: true,
    },
    Case {
        name: "local reply from the response body",
        method: "GET",
        headers: &[("x-reply-response-body", "1")],
        body: None,
        chunked: false,
        upstream_bytes: 2,
        large: false,
    },
    // Last: the VM fails for good (FAIL_CLOSED).
    Case {
        name: "trap in the response body",
        method: "GET",
        headers: &[("x-trap-response-body", "1")],
        body: None,
        chunked: false,
        upstream_bytes: 2,
        large: false,
    },
];

fn wire(case: &Case) -> Vec<u8> {
    let mut wire = format!("{} / HTTP/1.1\r\nhost: localhost\r\n", case.method);
    for (k, v) in case.headers {
        wire.push_str(&format!("{k}: {v}\r\n"));
    }
    wire.push_str(&format!("x-upstream-bytes: {}\r\n", case.upstream_bytes));
    let body = vec![b'b'; case.body.unwrap_or(0)];
    match (case.body, case.chunked) {
        (None, _) => {}
        (Some(n), false) => wire.push_str(&format!("content-length: {n}\r\n")),
        (Some(_), true) => wire.push_str("transfer-encoding: chunked\r\n"),
    }
    wire.push_str("connection: close\r\n\r\n");
    let mut wire = wire.into_bytes();
    if case.chunked {
        wire.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        wire.extend_from_slice(&body);
        wire.extend_from_slice(b"\r\n0\r\n\r\n");
    } else {
        wire.extend_from_slice(&body);
    }
    wire
}

/// The same request as [`wire`] sends: the case's headers, then `x-upstream-bytes`.
fn client_request(case: &Case) -> ClientRequest {
    let mut request = ClientRequest::new(case.method, "/");
    for (k, v) in case.headers {
        request = request.header(*k, *v);
    }
    request = request
        .header("x-upstream-bytes", case.upstream_bytes.to_string())
        .header("connection", "close");
    if let Some(n) = case.body {
        let body = vec![b'b'; n];
        request = if case.chunked {
            request.chunked_body(body)
        } else {
            request.body(body)
        };
    }
    request
}

/// The module's trace, with generated request ids (and, for large bodies, chunk sizes) masked.
fn normalized(trace: Vec<String>, large: bool) -> Vec<String> {
    trace
        .into_iter()
        .filter(|line| !(large && line.contains("_body ")))
        // The rig's way of showing details to the client, not Envoy's.
        .filter(|line| *line != format!("key {}", envoy::RESPONSE_CODE_DETAILS_HEADER))
        .map(|line| match line.strip_prefix("x-request-id ") {
            Some(id) if id != "client-id" => "x-request-id <generated>".to_string(),
            _ => line,
        })
        .collect()
}

fn run_in_harness(plugin: &Plugin, case: &Case) -> (String, Vec<String>) {
    let before = plugin.logs().len();
    let mut stream = plugin.http_stream();
    let _ = stream.send_request(&client_request(case));
    if stream.local_reply().is_none() && stream.request_state() == StreamState::Continued {
        let response = UpstreamResponse::new(200)
            .header("content-type", "text/plain")
            .body(vec![b'a'; case.upstream_bytes]);
        let _ = stream.upstream_response(&response);
    }
    let seen = harness_seen(&stream);
    let _ = stream.complete();
    let trace = traced(
        &plugin.logs()[before..]
            .iter()
            .map(|l| l.message.clone())
            .collect::<Vec<_>>()
            .join("\n"),
    );
    (client_view(&seen), normalized(trace, case.large))
}

#[test]
fn streams_are_presented_limited_and_ended_as_in_envoy() {
    if envoy::skip_requested() {
        return;
    }
    let bytes = wat::parse_str(probe_module()).unwrap();
    let wasm = WasmFile::new("stream", &bytes);
    let upstream = TestServer::start(|request| {
        let size: usize = request.header("x-upstream-bytes").unwrap().parse().unwrap();
        HttpResponse::new(200, vec![b'a'; size]).with_header("content-type", "text/plain")
    })
    .unwrap();
    let envoy = EnvoyBuilder::new()
        .wasm_filter(WasmFilter::new(&wasm.path))
        .upstream(upstream.addr())
        .start()
        .unwrap();
    let plugin = Harness::from_bytes(&bytes).unwrap().start().unwrap();

    let mut differences = Vec::new();
    for case in CASES {
        let before = traced(&envoy.log()).len();
        let seen = exchange(envoy.listener_addr(), &wire(case), case.method == "HEAD");
        // The module's last line for the exchange comes from `proxy_on_response_*` or the
        // request's end; Envoy writes its log asynchronously.
        let mut envoy_trace = Vec::new();
        for _ in 0..100 {
            envoy_trace = traced(&envoy.log())[before..].to_vec();
            std::thread::sleep(Duration::from_millis(20));
            if traced(&envoy.log()).len() - before == envoy_trace.len() && !envoy_trace.is_empty() {
                break;
            }
        }
        let envoy_view = (client_view(&seen), normalized(envoy_trace, case.large));
        let harness_view = run_in_harness(&plugin, case);
        if envoy_view != harness_view {
            differences.push(format!(
                "{}:\n  envoy:   {:?}\n  harness: {:?}",
                case.name, envoy_view, harness_view
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    let stats = envoy.stats().unwrap();
    // Three over the limit (request 413, response reset, response 500); two resets after the
    // response headers went downstream, plus the buffered one.
    assert_eq!(stats.get("http.ingress_http.rs_too_large"), Some(&2));
    assert_eq!(
        stats.get("http.ingress_http.downstream_rq_too_large"),
        Some(&1)
    );
}
