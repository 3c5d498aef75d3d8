//! What the harness and the real-Envoy tests of the fault filter share: the module, the
//! configurations, and a table of requests with the verdict each must get.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use wasmesh_harness::{Harness, HttpStream, Plugin, StreamState};

/// The filter's cargo package; its wasm is built on first use by the build helper.
pub const PACKAGE: &str = "wasmesh-fault";

/// Where the filter's sample files live.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The filter's real `wasm32-wasip1` release build.
pub fn wasm() -> PathBuf {
    wasmesh_harness::build::wasm(PACKAGE).unwrap()
}

/// `filters/fault/config.json`: the worked chaos-run configuration.
pub fn sample_config() -> String {
    std::fs::read_to_string(crate_dir().join("config.json")).unwrap()
}

/// Everything driven by request headers, so one configuration (one Envoy) serves every case:
/// requests carrying `x-chaos` get the delay and abort their `x-envoy-fault-*` headers ask for,
/// at most one fault at a time.
pub const HEADER_CONTROLLED: &str = r#"{
    "delay": {"header_delay": {}, "percentage": {"numerator": 100}},
    "abort": {"header_abort": {}, "percentage": {"numerator": 100}},
    "headers": [{"name": "x-chaos", "present_match": true}],
    "max_active_faults": 1,
    "tick_interval": "0.005s"
}"#;

/// The filter loaded in the harness with `config`, one worker (as the Envoy tests run).
pub fn start_in_harness(config: &str) -> Plugin {
    Harness::load(wasm())
        .unwrap()
        .config(config)
        .start()
        .unwrap()
}

/// What a client observes for one request: the comparison point between harness and Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The request reached the upstream.
    Forwarded,
    /// The filter answered locally.
    Aborted {
        /// HTTP status.
        status: u32,
        /// Response code details.
        details: String,
        /// Body.
        body: String,
        /// `grpc-status` of the reply (gRPC requests).
        grpc_status: Option<String>,
        /// `grpc-message` of the reply (gRPC requests).
        grpc_message: Option<String>,
    },
}

impl Verdict {
    /// An HTTP abort with `status`, as Envoy's fault filter answers.
    pub fn http_abort(status: u32) -> Self {
        Verdict::Aborted {
            status,
            details: "fault_filter_abort".to_string(),
            body: "fault filter abort".to_string(),
            grpc_status: None,
            grpc_message: None,
        }
    }

    /// A gRPC abort: HTTP 200, trailers-only with `grpc-status`.
    pub fn grpc_abort(code: u32) -> Self {
        Verdict::Aborted {
            status: 200,
            details: "fault_filter_abort".to_string(),
            body: String::new(),
            grpc_status: Some(code.to_string()),
            grpc_message: Some("fault filter abort".to_string()),
        }
    }
}

/// One request of the table.
#[derive(Debug, Clone)]
pub struct Case {
    /// What the case is about.
    pub name: &'static str,
    /// Request headers besides the pseudo-headers.
    pub headers: Vec<(&'static str, &'static str)>,
    /// Whether the filter must delay the request first.
    pub delayed: bool,
    /// The verdict under [`HEADER_CONTROLLED`].
    pub expected: Verdict,
}

const GRPC: (&str, &str) = ("content-type", "application/grpc");

/// The requests harness and Envoy must agree on, under [`HEADER_CONTROLLED`].
pub fn cases() -> Vec<Case> {
    let case = |name, headers: Vec<(&'static str, &'static str)>, delayed, expected| Case {
        name,
        headers,
        delayed,
        expected,
    };
    vec![
        case("plain request", vec![], false, Verdict::Forwarded),
        case(
            "abort header without the selecting header",
            vec![("x-envoy-fault-abort-request", "503")],
            false,
            Verdict::Forwarded,
        ),
        case(
            "abort 503",
            vec![("x-chaos", "1"), ("x-envoy-fault-abort-request", "503")],
            false,
            Verdict::http_abort(503),
        ),
        case(
            "abort 418",
            vec![("x-chaos", "1"), ("x-envoy-fault-abort-request", "418")],
            false,
            Verdict::http_abort(418),
        ),
        case(
            "abort status out of range",
            vec![("x-chaos", "1"), ("x-envoy-fault-abort-request", "600")],
            false,
            Verdict::Forwarded,
        ),
        case(
            "abort status not a number",
            vec![("x-chaos", "1"), ("x-envoy-fault-abort-request", "5xx")],
            false,
            Verdict::Forwarded,
        ),
        case(
            "abort percentage header lowers to zero",
            vec![
                ("x-chaos", "1"),
                ("x-envoy-fault-abort-request", "503"),
                ("x-envoy-fault-abort-request-percentage", "0"),
            ],
            false,
            Verdict::Forwarded,
        ),
        case(
            "abort percentage header cannot raise above the configuration",
            vec![
                ("x-chaos", "1"),
                ("x-envoy-fault-abort-request", "503"),
                ("x-envoy-fault-abort-request-percentage", "1000"),
            ],
            false,
            Verdict::http_abort(503),
        ),
        case(
            "gRPC abort",
            vec![
                ("x-chaos", "1"),
                GRPC,
                ("x-envoy-fault-abort-grpc-request", "14"),
            ],
            false,
            Verdict::grpc_abort(14),
        ),
        case(
            "HTTP abort of a gRPC request maps the status",
            vec![
                ("x-chaos", "1"),
                GRPC,
                ("x-envoy-fault-abort-request", "503"),
            ],
            false,
            Verdict::grpc_abort(14),
        ),
        case(
            "unknown gRPC status becomes UNKNOWN",
            vec![
                ("x-chaos", "1"),
                GRPC,
                ("x-envoy-fault-abort-grpc-request", "99"),
            ],
            false,
            Verdict::grpc_abort(2),
        ),
        case(
            "delay from the header",
            vec![("x-chaos", "1"), ("x-envoy-fault-delay-request", "30")],
            true,
            Verdict::Forwarded,
        ),
        case(
            "zero delay is no delay",
            vec![("x-chaos", "1"), ("x-envoy-fault-delay-request", "0")],
            false,
            Verdict::Forwarded,
        ),
        case(
            "delay percentage header lowers to zero",
            vec![
                ("x-chaos", "1"),
                ("x-envoy-fault-delay-request", "30"),
                ("x-envoy-fault-delay-request-percentage", "0"),
            ],
            false,
            Verdict::Forwarded,
        ),
        case(
            "delay then abort",
            vec![
                ("x-chaos", "1"),
                ("x-envoy-fault-delay-request", "30"),
                ("x-envoy-fault-abort-request", "504"),
            ],
            true,
            Verdict::http_abort(504),
        ),
    ]
}

/// The request headers of a case, pseudo-headers first.
pub fn request_headers(
    path: &'static str,
    extra: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    let mut headers = vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "shop.example.com"),
        (":path", path),
    ];
    headers.extend(extra.iter().copied());
    headers
}

/// Sends request headers (end of stream) and, if the filter delays the request, advances the
/// virtual clock until it resumes. Returns the stream and whether it was delayed.
pub fn send_in_harness(
    plugin: &Plugin,
    headers: &[(&str, &str)],
    max_delay: Duration,
) -> (HttpStream, bool) {
    let mut stream = plugin.http_stream();
    stream.request_headers(headers, true).unwrap();
    let delayed = stream.request_state() == StreamState::Paused;
    if delayed {
        plugin.advance_clock(max_delay).unwrap();
    }
    (stream, delayed)
}

/// The verdict of a stream whose request phase is over; completes the stream.
pub fn verdict_in_harness(mut stream: HttpStream) -> Verdict {
    let verdict = match stream.local_reply() {
        Some(reply) => Verdict::Aborted {
            status: reply.status,
            details: reply.details,
            body: String::from_utf8(reply.body).unwrap(),
            grpc_status: header(&reply.headers, "grpc-status"),
            grpc_message: header(&reply.headers, "grpc-message"),
        },
        None => {
            assert_eq!(stream.request_state(), StreamState::Continued);
            stream
                .response_headers(&[(":status", "200")], true)
                .unwrap();
            Verdict::Forwarded
        }
    };
    stream.complete().unwrap();
    verdict
}

/// Runs one case through the harness: the verdict and whether the request was delayed.
pub fn run_in_harness(plugin: &Plugin, case: &Case) -> (Verdict, bool) {
    let headers = request_headers("/api/items", &case.headers);
    let (stream, delayed) = send_in_harness(plugin, &headers, Duration::from_secs(1));
    (verdict_in_harness(stream), delayed)
}

/// A header of a list, by case-insensitive name.
pub fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.clone())
}

/// A counter or gauge of the harness plugin (0 when never recorded).
pub fn metric(plugin: &Plugin, name: &str) -> u64 {
    plugin
        .metric(name)
        .and_then(|value| value.value())
        .unwrap_or(0)
}
