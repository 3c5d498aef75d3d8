//! What the harness and the real-Envoy tests of the example share: the module, its sample
//! configuration, and a table of requests with the verdict each must get.
//!
//! A filter's end-to-end tests follow this template: each case runs through the harness
//! (`harness.rs`) and through a real Envoy (`envoy.rs`), and both must give the expected verdict.

use std::path::PathBuf;

use wasmesh_harness::{Harness, Plugin};

/// The example's cargo package; its wasm is built on first use by the build helper.
pub const PACKAGE: &str = "wasmesh-example-header-filter";

/// Where the example's sample files live.
pub fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The example's real `wasm32-wasip1` release build.
pub fn wasm() -> PathBuf {
    wasmesh_harness::build::wasm(PACKAGE).unwrap()
}

/// `examples/header-filter/config.json`, the configuration every case runs with.
pub fn sample_config() -> String {
    std::fs::read_to_string(example_dir().join("config.json")).unwrap()
}

/// The example loaded in the harness with `config`, one worker (as the Envoy tests run).
pub fn start_in_harness(config: &str) -> Plugin {
    Harness::load(wasm())
        .unwrap()
        .config(config)
        .start()
        .unwrap()
}

/// What a client and the upstream observe for one request: the comparison point between the
/// harness and Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The request reached the upstream.
    Forwarded {
        /// `x-wasmesh-filtered` as the upstream received it.
        upstream_marker: Option<String>,
        /// `x-wasmesh` in the response the client received.
        response_marker: Option<String>,
    },
    /// The filter answered with a local reply.
    Replied {
        /// Status code.
        status: u32,
        /// Response code details.
        details: String,
        /// Body.
        body: String,
        /// `content-type` of the reply.
        content_type: Option<String>,
        /// `x-wasmesh` in the reply (the filter's response callback sees local replies too).
        response_marker: Option<String>,
    },
}

impl Verdict {
    fn allowed() -> Self {
        Verdict::Forwarded {
            upstream_marker: Some("true".to_string()),
            response_marker: Some("hello".to_string()),
        }
    }

    fn denied() -> Self {
        Verdict::Replied {
            status: 403,
            details: "header_filter_denied".to_string(),
            body: "Forbidden by wasmesh header-filter\n".to_string(),
            content_type: Some("text/plain".to_string()),
            response_marker: None,
        }
    }

    fn invalid_path() -> Self {
        Verdict::Replied {
            status: 400,
            details: "header_filter_invalid_path".to_string(),
            body: String::new(),
            content_type: None,
            response_marker: None,
        }
    }
}

/// One request of the table.
#[derive(Debug, Clone)]
pub struct Case {
    /// What the case is about.
    pub name: &'static str,
    /// `:method`.
    pub method: &'static str,
    /// `:path`, sent as is (Envoy does not normalize paths by default; the filter does).
    pub path: &'static str,
    /// Extra request headers.
    pub headers: Vec<(&'static str, &'static str)>,
    /// The verdict the sample configuration must give.
    pub expected: Verdict,
}

/// The requests every implementation must agree on, under the sample configuration.
pub fn cases() -> Vec<Case> {
    let case = |name, method, path, expected| Case {
        name,
        method,
        path,
        headers: Vec::new(),
        expected,
    };
    vec![
        case("root is allowed", "GET", "/", Verdict::allowed()),
        case("denied prefix", "GET", "/admin", Verdict::denied()),
        case(
            "below the denied prefix",
            "GET",
            "/admin/users?page=2",
            Verdict::denied(),
        ),
        case(
            "dot-dot walks into the prefix",
            "GET",
            "/public/../admin/users",
            Verdict::denied(),
        ),
        case(
            "percent-encoded letter",
            "POST",
            "/%61dmin",
            Verdict::denied(),
        ),
        case("doubled slash", "GET", "//admin", Verdict::denied()),
        case("regex rule", "GET", "/internal/metrics", Verdict::denied()),
        case(
            "suffix rule ignores case",
            "GET",
            "/index.PHP",
            Verdict::denied(),
        ),
        case(
            "similar but outside the prefix",
            "GET",
            "/public/admin",
            Verdict::allowed(),
        ),
        case(
            "denied path only in the query",
            "GET",
            "/search?q=/admin",
            Verdict::allowed(),
        ),
        case(
            "encoded slash is not a separator",
            "GET",
            "/..%2fadmin",
            Verdict::allowed(),
        ),
        case(
            "NUL byte in the path",
            "GET",
            "/a%00b",
            Verdict::invalid_path(),
        ),
        Case {
            name: "client cannot spoof the marker header",
            method: "GET",
            path: "/api/items",
            headers: vec![("x-wasmesh-filtered", "spoofed")],
            expected: Verdict::allowed(),
        },
    ]
}

/// Runs one case through the harness, the upstream answering `200` without a body.
pub fn run_in_harness(plugin: &Plugin, case: &Case) -> Verdict {
    let mut headers = vec![
        (":method", case.method),
        (":scheme", "http"),
        (":authority", "shop.example.com"),
        (":path", case.path),
    ];
    headers.extend(case.headers.iter().copied());
    let mut stream = plugin.http_stream();
    stream.request_headers(&headers, true).unwrap();
    let verdict = match stream.local_reply() {
        Some(reply) => Verdict::Replied {
            status: reply.status,
            details: reply.details,
            body: String::from_utf8(reply.body).unwrap(),
            content_type: header(&reply.headers, "content-type"),
            response_marker: header(&reply.headers, "x-wasmesh"),
        },
        None => {
            let upstream_marker = stream.request_header("x-wasmesh-filtered");
            stream
                .response_headers(&[(":status", "200")], true)
                .unwrap();
            Verdict::Forwarded {
                upstream_marker,
                response_marker: stream.response_header("x-wasmesh"),
            }
        }
    };
    stream.complete().unwrap();
    verdict
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.clone())
}
