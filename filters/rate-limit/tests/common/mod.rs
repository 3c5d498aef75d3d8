//! What the harness and real-Envoy tests of the rate-limit filter share: the module, sample
//! configurations, and how a request's verdict is read.
#![allow(dead_code)]

pub mod rls;

use std::path::PathBuf;

use wasmesh_harness::{Harness, HttpStream, Plugin, PluginBuilder};

/// The filter's cargo package; its wasm is built on first use.
pub const PACKAGE: &str = "wasmesh-rate-limit";

/// The filter's real `wasm32-wasip1` release build.
pub fn wasm() -> PathBuf {
    wasmesh_harness::build::wasm(PACKAGE).unwrap()
}

/// `filters/rate-limit/config.json`, the sample (and shipped) configuration.
pub fn sample_config() -> String {
    std::fs::read_to_string(crate_dir().join("config.json")).unwrap()
}

/// The crate's directory.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A harness builder for the filter with `config`.
pub fn builder(config: &str) -> PluginBuilder {
    Harness::load(wasm()).unwrap().config(config)
}

/// The filter in the harness with `workers` VMs sharing data.
pub fn start(config: &str, workers: usize) -> Plugin {
    builder(config).workers(workers).start().unwrap()
}

/// A local-mode configuration with one default bucket, enabled and enforced.
pub fn local_config(
    max_tokens: u32,
    tokens_per_fill: u32,
    fill_interval: &str,
    scope: &str,
) -> String {
    format!(
        r#"{{
          "stat_prefix": "edge",
          "token_bucket": {{"max_tokens": {max_tokens}, "tokens_per_fill": {tokens_per_fill}, "fill_interval": "{fill_interval}"}},
          "filter_enabled": {{"default_value": {{"numerator": 100}}}},
          "filter_enforced": {{"default_value": {{"numerator": 100}}}},
          "wasmesh": {{"state_scope": "{scope}"}}
        }}"#
    )
}

/// What a client observes for one request: the comparison point between harness and Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Response status (the upstream's 200, or the local reply's).
    pub status: u32,
    /// Response code details of a local reply.
    pub details: Option<String>,
    /// Headers the filter controls, in this order: `x-envoy-ratelimited`,
    /// `x-ratelimit-limit`, `x-ratelimit-remaining`, `ratelimit-policy`, `x-local-rate-limit`.
    pub headers: Vec<Option<String>>,
}

/// The headers a verdict compares.
pub const VERDICT_HEADERS: [&str; 5] = [
    "x-envoy-ratelimited",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "ratelimit-policy",
    "x-local-rate-limit",
];

/// Sends one request with `headers` through the harness; the upstream answers 200.
pub fn run_in_harness(plugin: &Plugin, headers: &[(&str, &str)]) -> Verdict {
    let mut stream = plugin.http_stream();
    run_stream(&mut stream, headers)
}

/// [`run_in_harness`] on a stream already opened (e.g. with properties set).
pub fn run_stream(stream: &mut HttpStream, headers: &[(&str, &str)]) -> Verdict {
    let mut all: Vec<(&str, &str)> = vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "shop.example.com"),
        (":path", "/api/items"),
    ];
    // A case's own pseudo-headers replace the defaults.
    all.retain(|(name, _)| !headers.iter().any(|(own, _)| own == name));
    all.extend_from_slice(headers);
    stream.request_headers(&all, true).unwrap();
    let verdict = match stream.local_reply() {
        Some(reply) => Verdict {
            status: reply.status,
            details: Some(reply.details.clone()),
            headers: VERDICT_HEADERS
                .iter()
                .map(|name| {
                    reply
                        .headers
                        .iter()
                        .find(|(key, _)| key.eq_ignore_ascii_case(name))
                        .map(|(_, value)| value.clone())
                })
                .collect(),
        },
        None => {
            stream
                .response_headers(&[(":status", "200")], true)
                .unwrap();
            Verdict {
                status: 200,
                details: None,
                headers: VERDICT_HEADERS
                    .iter()
                    .map(|name| stream.response_header(name))
                    .collect(),
            }
        }
    };
    verdict
}

/// Whether one request on `worker` is admitted.
pub fn admitted_on(plugin: &Plugin, worker: usize) -> bool {
    let mut stream = plugin.http_stream_on(worker);
    stream
        .request_headers(
            &[(":method", "GET"), (":path", "/"), (":authority", "shop")],
            true,
        )
        .unwrap();
    let admitted = stream.local_reply().is_none();
    if admitted {
        stream
            .response_headers(&[(":status", "200")], true)
            .unwrap();
    }
    stream.complete().unwrap();
    admitted
}

/// One exchange: name, request headers (a `:path` replaces the default), expected verdict.
pub type Case = (&'static str, Vec<(&'static str, &'static str)>, Verdict);

/// The sample configuration's exchanges, in order (state carries over), with their verdicts.
pub fn sample_cases() -> Vec<Case> {
    let allowed = |limit: &str, remaining: &str, policy: &str| Verdict {
        status: 200,
        details: None,
        headers: vec![
            None,
            Some(limit.to_string()),
            Some(remaining.to_string()),
            Some(policy.to_string()),
            None,
        ],
    };
    let limited = |limit: &str, policy: &str| Verdict {
        status: 429,
        details: Some("local_rate_limited".to_string()),
        headers: vec![
            // No `x-envoy-ratelimited`: Envoy's local_ratelimit does not send it.
            None,
            Some(limit.to_string()),
            Some("0".to_string()),
            Some(policy.to_string()),
            Some("true".to_string()),
        ],
    };
    let key = "\"api_key=*\";q=3;w=60";
    let search = "\"path=search\";q=5;w=60";
    let default = "\"default\";q=1000;w=3600";
    vec![
        (
            "alice 1",
            vec![("x-api-key", "alice")],
            allowed("3", "2", key),
        ),
        (
            "alice 2",
            vec![("x-api-key", "alice")],
            allowed("3", "1", key),
        ),
        (
            "alice 3",
            vec![("x-api-key", "alice")],
            allowed("3", "0", key),
        ),
        (
            "alice 4 is limited",
            vec![("x-api-key", "alice")],
            limited("3", key),
        ),
        (
            "bob has his own bucket",
            vec![("x-api-key", "bob")],
            allowed("3", "2", key),
        ),
        (
            "no key: default bucket",
            vec![],
            allowed("1000", "995", default),
        ),
        (
            "search 1",
            vec![(":path", "/search?q=a")],
            allowed("5", "4", search),
        ),
        (
            "search 2",
            vec![(":path", "/search?q=b")],
            allowed("5", "3", search),
        ),
        (
            "search 3",
            vec![(":path", "/search")],
            allowed("5", "2", search),
        ),
        (
            "search 4",
            vec![(":path", "/search")],
            allowed("5", "1", search),
        ),
        (
            "search 5",
            vec![(":path", "/search")],
            allowed("5", "0", search),
        ),
        (
            "search 6 is limited",
            vec![(":path", "/search")],
            limited("5", search),
        ),
        (
            "the default bucket still has tokens",
            vec![],
            allowed("1000", "989", default),
        ),
    ]
}
