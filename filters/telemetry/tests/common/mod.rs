//! What the harness and the real-Envoy tests of the telemetry filter share: the module, the
//! workload identities (as Python's protobuf serialized them, see `testdata/make_vectors.py`),
//! the exchanges both run, and how to read recorded series back.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use wasmesh_harness::{Harness, MetricValue, Plugin, PluginBuilder};
use wasmesh_telemetry::config::Config;
use wasmesh_telemetry::prometheus::{self, Exposition, Sample, TagExtractor};
use wasmesh_telemetry::stats::{decode_stat_name, stats_tags};

/// The filter's cargo package; its wasm is built on first use by the build helper.
pub const PACKAGE: &str = "wasmesh-telemetry";

/// The crate's directory.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The filter's real `wasm32-wasip1` release build.
pub fn wasm() -> PathBuf {
    wasmesh_harness::build::wasm(PACKAGE).unwrap()
}

/// `filters/telemetry/config.json`, the sample configuration shipped in the examples.
pub fn sample_config() -> String {
    std::fs::read_to_string(crate_dir().join("config.json")).unwrap()
}

/// The interop vectors made by `testdata/make_vectors.py` with Python's `protobuf`.
pub fn vectors() -> Value {
    let text = std::fs::read_to_string(crate_dir().join("testdata/peer_metadata.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A workload of the vectors: `(node id, x-envoy-peer-metadata value, serialized Struct)`.
pub struct Workload {
    /// Node id.
    pub id: String,
    /// Base64 header value.
    pub header: String,
    /// The serialized `google.protobuf.Struct`.
    pub metadata: Vec<u8>,
}

/// The workload named `name` in the vectors.
pub fn workload(name: &str) -> Workload {
    let vectors = vectors();
    let entry = &vectors["workloads"][name];
    assert!(entry.is_object(), "no workload {name} in the vectors");
    let hex = entry["struct_hex"].as_str().unwrap();
    Workload {
        id: entry["id"].as_str().unwrap().to_string(),
        header: entry["header"].as_str().unwrap().to_string(),
        metadata: (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect(),
    }
}

/// The filter in the harness, running as the workload `local` (its `node.metadata` and
/// `node.id`, as Envoy 1.40 serializes them) with `config`.
pub fn builder(config: &str, local: &str) -> PluginBuilder {
    let local = workload(local);
    Harness::load(wasm())
        .unwrap()
        .config(config)
        .property(&["node", "metadata"], local.metadata)
        .property(&["node", "id"], local.id.as_str())
}

/// [`builder`] started with one worker.
pub fn start(config: &str, local: &str) -> Plugin {
    builder(config, local).start().unwrap()
}

/// Every series a plugin recorded: `(metric, labels) -> value`.
pub type Recorded = BTreeMap<(String, BTreeMap<String, String>), MetricValue>;

/// The series recorded by the module, decoded from their stat names.
pub fn recorded(plugin: &Plugin) -> Recorded {
    plugin
        .metrics()
        .into_iter()
        .map(|(name, value)| {
            let (metric, tags) = decode_stat_name(&name);
            ((metric, tags.into_iter().collect()), value)
        })
        .collect()
}

/// The series of `metric` whose labels include `selector`.
pub fn series<'a>(
    recorded: &'a Recorded,
    metric: &str,
    selector: &[(&str, &str)],
) -> Vec<(&'a BTreeMap<String, String>, &'a MetricValue)> {
    recorded
        .iter()
        .filter(|((name, labels), _)| {
            name == metric
                && selector
                    .iter()
                    .all(|(key, value)| labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|((_, labels), value)| (labels, value))
        .collect()
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_string(), (*value).to_string()))
        .collect()
}

/// The Envoy `stats_tags` for the dimensions of `config`.
pub fn stats_tags_for(config: &str) -> Value {
    let config: Config = wasmesh_sdk::config::load(config.as_bytes()).unwrap();
    stats_tags(&config.dimension_names().unwrap())
}

/// What Envoy's `/stats/prometheus` would show for a harness plugin's metrics under `config`.
pub fn prometheus_of(plugin: &Plugin, config: &str) -> String {
    let extractors = TagExtractor::from_stats_tags(&stats_tags_for(config)).unwrap();
    let metrics: Vec<(String, Sample)> = plugin
        .metrics()
        .into_iter()
        .map(|(name, value)| {
            let sample = match value {
                MetricValue::Counter(value) => Sample::Counter(value),
                MetricValue::Gauge(value) => Sample::Gauge(value),
                MetricValue::Histogram(values) => Sample::Histogram(values),
            };
            (name, sample)
        })
        .collect();
    prometheus::render(&metrics, &extractors, prometheus::ENVOY_DEFAULT_BUCKETS)
}

/// The series of an exposition that belong to Istio metrics, as comparable rows:
/// `(name, labels without le, value)` for counters and histogram counts.
pub fn istio_rows(exposition: &Exposition) -> Vec<(String, BTreeMap<String, String>, u64)> {
    let mut rows: Vec<_> = exposition
        .series
        .iter()
        .filter(|series| series.name.starts_with("istio_"))
        .filter(|series| !series.name.ends_with("_bucket") && !series.name.ends_with("_sum"))
        .map(|series| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let value = series.value as u64;
            (series.name.clone(), series.labels.clone(), value)
        })
        .collect();
    rows.sort();
    rows
}

/// The access-log lines a plugin wrote (JSON objects).
pub fn access_log_lines(plugin: &Plugin) -> Vec<Value> {
    plugin
        .logs()
        .iter()
        .filter_map(|entry| serde_json::from_str::<Value>(&entry.message).ok())
        .filter(Value::is_object)
        .collect()
}

/// The `:authority` every exchange uses (a Kubernetes service name: the destination service).
pub const AUTHORITY: &str = "reviews.default.svc.cluster.local:9080";

/// A gRPC body of messages (flag byte, big-endian length, payload).
pub fn grpc_frames(messages: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for message in messages {
        body.push(0);
        body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        body.extend_from_slice(message);
    }
    body
}

/// What the upstream answers to `path`: `(status, headers, body)`. The test server behind Envoy
/// and the harness runs answer alike.
pub fn upstream_answer(path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let header = |name: &str, value: &str| (name.to_string(), value.to_string());
    match path {
        "/reviews/missing" => (
            404,
            vec![header("content-type", "text/plain")],
            b"no such review".to_vec(),
        ),
        "/reviews/broken" => (
            503,
            vec![header("content-type", "text/plain")],
            b"overloaded".to_vec(),
        ),
        "/reviews.Reviews/List" => (
            200,
            vec![
                header("content-type", "application/grpc"),
                header("grpc-status", "0"),
            ],
            grpc_frames(&[b"one", b"two", b"three"]),
        ),
        _ => (
            200,
            vec![header("content-type", "application/json")],
            b"{\"ok\":true}".to_vec(),
        ),
    }
}

/// One exchange both the harness and Envoy run.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// What it is about.
    pub name: &'static str,
    /// `:method`.
    pub method: &'static str,
    /// `:path`.
    pub path: &'static str,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
    /// Routed to a cluster nobody listens on: Envoy answers 503 itself (response flags `UF`).
    pub unreachable: bool,
}

/// The peer-metadata headers the `productpage` client sidecar sends.
pub fn productpage_headers() -> Vec<(String, String)> {
    let peer = workload("productpage");
    vec![
        ("x-envoy-peer-metadata".to_string(), peer.header),
        ("x-envoy-peer-metadata-id".to_string(), peer.id),
    ]
}

/// Trace context headers (W3C and B3) the filter must pass through unchanged.
pub fn trace_headers() -> Vec<(String, String)> {
    [
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
        ("x-b3-sampled", "1"),
        (
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        ),
    ]
    .iter()
    .map(|(name, value)| ((*name).to_string(), (*value).to_string()))
    .collect()
}

/// The exchanges of the inbound (server-side) comparison: success, 4xx, 5xx, a local reply
/// from Envoy, gRPC, and one from an unknown client.
pub fn exchanges() -> Vec<Exchange> {
    let from_productpage = |name, method, path| Exchange {
        name,
        method,
        path,
        headers: productpage_headers(),
        body: Vec::new(),
        unreachable: false,
    };
    let mut traced = from_productpage("success with trace context", "GET", "/reviews/1");
    traced.headers.extend(trace_headers());
    let mut grpc = from_productpage("gRPC call", "POST", "/reviews.Reviews/List");
    grpc.headers
        .push(("content-type".to_string(), "application/grpc".to_string()));
    grpc.body = grpc_frames(&[b"page=1", b"page=2"]);
    let mut unreachable = from_productpage("local reply: upstream unreachable", "GET", "/dead/1");
    unreachable.unreachable = true;
    vec![
        from_productpage("success", "GET", "/reviews/1"),
        traced,
        from_productpage("4xx", "GET", "/reviews/missing"),
        from_productpage("5xx", "POST", "/reviews/broken"),
        unreachable,
        grpc,
        Exchange {
            name: "unknown client",
            method: "GET",
            path: "/reviews/2",
            headers: Vec::new(),
            body: Vec::new(),
            unreachable: false,
        },
    ]
}

/// Runs one exchange through the harness as Envoy would: the upstream answers per
/// [`upstream_answer`]; an unreachable upstream becomes Envoy's 503 with flag `UF`.
pub fn run_in_harness(plugin: &Plugin, exchange: &Exchange) -> wasmesh_harness::HttpStream {
    let mut stream = plugin.http_stream();
    let length = exchange.body.len().to_string();
    let mut headers: Vec<(&str, &str)> = vec![
        (":method", exchange.method),
        (":scheme", "http"),
        (":authority", AUTHORITY),
        (":path", exchange.path),
    ];
    for (name, value) in &exchange.headers {
        headers.push((name, value));
    }
    if !exchange.body.is_empty() {
        headers.push(("content-length", &length));
    }
    stream
        .request_headers(&headers, exchange.body.is_empty())
        .unwrap();
    if !exchange.body.is_empty() {
        stream.request_body(&exchange.body, true).unwrap();
    }
    let (status, answer_headers, body) = if exchange.unreachable {
        stream.property(&["response", "flags"], 1u64 << 5);
        (
            503,
            vec![("content-type".to_string(), "text/plain".to_string())],
            b"upstream connect error or disconnect/reset before headers".to_vec(),
        )
    } else {
        upstream_answer(exchange.path)
    };
    let status = status.to_string();
    let body_length = body.len().to_string();
    let mut response: Vec<(&str, &str)> =
        vec![(":status", &status), ("content-length", &body_length)];
    for (name, value) in &answer_headers {
        response.push((name, value));
    }
    stream.response_headers(&response, body.is_empty()).unwrap();
    if !body.is_empty() {
        stream.response_body(&body, true).unwrap();
    }
    stream
}
