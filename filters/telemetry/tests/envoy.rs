#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The filter in a real Envoy (V8) as the inbound sidecar of `reviews-v2`, with the same wasm,
//! configuration and exchanges as the harness tests: Envoy's `/stats/prometheus` must show the
//! same labelled series as the harness's recording rendered the same way. Set
//! `WASMESH_SKIP_ENVOY=1` to skip on a machine without Envoy.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{
    exchanges, istio_rows, prometheus_of, run_in_harness, sample_config, start, stats_tags_for,
    trace_headers, upstream_answer, workload, Exchange, AUTHORITY,
};
use serde_json::{json, Value};
use wasmesh_envoy::{
    self as envoy, BootstrapFormat, Cluster, Envoy, EnvoyBuilder, HttpRequest, HttpResponse,
    TestServer, WasmFilter,
};
use wasmesh_telemetry::peer::{decode_peer_header, PEER_METADATA_HEADER};
use wasmesh_telemetry::prometheus::{self, Exposition};

/// A port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Envoy as the inbound sidecar of `reviews-v2` (node metadata as Istio's agent writes it),
/// with the `stats_tags` of the configuration, `/dead` routed to a closed port.
fn start_envoy(upstream: &TestServer, config: &str) -> Envoy {
    let builder = EnvoyBuilder::new()
        .wasm_filter(
            WasmFilter::new(common::wasm())
                .name("telemetry")
                .configuration(config),
        )
        .upstream(upstream.addr())
        .cluster(Cluster::new("dead", ([127, 0, 0, 1], closed_port()).into()));
    let mut bootstrap = builder.bootstrap();
    let reviews = &common::vectors()["workloads"]["reviews"];
    bootstrap["node"]["id"] = reviews["id"].clone();
    bootstrap["node"]["metadata"] = reviews["metadata"].clone();
    bootstrap["stats_config"] = json!({ "stats_tags": stats_tags_for(config) });
    // Histograms are merged when the admin interface is read (no flush timer to wait for).
    bootstrap["stats_flush_on_admin"] = json!(true);
    let listener = &mut bootstrap["static_resources"]["listeners"][0];
    listener["traffic_direction"] = json!("INBOUND");
    let routes = &mut listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
        ["virtual_hosts"][0]["routes"];
    let catch_all = routes[0].clone();
    *routes =
        json!([{ "match": { "prefix": "/dead" }, "route": { "cluster": "dead" } }, catch_all]);
    builder
        .start_with_bootstrap(&bootstrap.to_string(), BootstrapFormat::Json)
        .unwrap()
}

fn upstream() -> TestServer {
    TestServer::start(|request| {
        let (status, headers, body) = upstream_answer(&request.path);
        let mut response = HttpResponse::new(status, body);
        for (name, value) in headers {
            response = response.with_header(name, value);
        }
        response
    })
    .unwrap()
}

fn send(envoy: &Envoy, exchange: &Exchange) -> HttpResponse {
    let mut request = HttpRequest::new(exchange.method, exchange.path)
        .header("host", AUTHORITY)
        .body(exchange.body.clone());
    for (name, value) in &exchange.headers {
        request = request.header(name.clone(), value.clone());
    }
    envoy.send(&request).unwrap()
}

/// Envoy's exposition once its histograms show `expected` (merged on admin reads, which is
/// asynchronous: a few reads may be needed).
fn envoy_exposition(
    envoy: &Envoy,
    expected: &[(String, std::collections::BTreeMap<String, String>, u64)],
) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = envoy.admin_get("/stats/prometheus").unwrap().text();
        let exposition = prometheus::parse(&text).unwrap();
        if istio_rows(&exposition) == expected || Instant::now() > deadline {
            return exposition;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Access-log lines the filter wrote into Envoy's log.
fn envoy_access_log(envoy: &Envoy) -> Vec<Value> {
    envoy
        .log()
        .lines()
        .filter_map(|line| line.split_once("wasm log telemetry: "))
        .filter_map(|(_, message)| serde_json::from_str::<Value>(message).ok())
        .collect()
}

#[test]
fn envoy_shows_the_same_labelled_series_access_log_and_headers_as_the_harness() {
    if envoy::skip_requested() {
        return;
    }
    let upstream = upstream();
    let config = sample_config();
    let envoy = start_envoy(&upstream, &config);
    let plugin = start(&config, "reviews");

    let mut traced_response = None;
    for exchange in exchanges() {
        let response = send(&envoy, &exchange);
        if exchange.name == "success with trace context" {
            traced_response = Some(response.clone());
        }
        let stream = run_in_harness(&plugin, &exchange);
        let harness_status = stream.response_header(":status").unwrap_or_default();
        assert_eq!(
            response.status.to_string(),
            harness_status,
            "{}",
            exchange.name
        );
        stream.complete().unwrap();
    }

    let harness = prometheus::parse(&prometheus_of(&plugin, &config)).unwrap();
    let expected = istio_rows(&harness);
    assert!(expected.len() > 10, "{expected:?}");
    let in_envoy = envoy_exposition(&envoy, &expected);
    assert_eq!(
        istio_rows(&in_envoy),
        expected,
        "Envoy and the harness disagree"
    );

    // A few values read straight off Envoy's endpoint, independently of the harness.
    let value = |name: &str, labels: &[(&str, &str)]| -> Vec<f64> {
        in_envoy
            .find(name, labels)
            .map(|series| series.value)
            .collect()
    };
    assert_eq!(
        value(
            "istio_requests_total",
            &[
                ("reporter", "destination"),
                ("source_workload", "productpage-v1"),
                ("source_canonical_revision", "v1"),
                ("destination_workload", "reviews-v2"),
                ("destination_service_name", "reviews"),
                ("response_code", "200"),
                ("request_protocol", "http"),
                ("request_method", "GET"),
                ("response_flags", "-"),
            ]
        ),
        [2.0]
    );
    assert_eq!(
        value(
            "istio_requests_total",
            &[("response_code", "503"), ("response_flags", "UF")]
        ),
        [1.0]
    );
    assert_eq!(
        value(
            "istio_request_messages_total",
            &[("grpc_response_status", "0")]
        ),
        [2.0]
    );
    assert_eq!(
        value(
            "istio_response_messages_total",
            &[("request_protocol", "grpc")]
        ),
        [3.0]
    );
    assert_eq!(
        in_envoy.types["istio_request_duration_milliseconds"],
        "histogram"
    );
    if std::env::var_os("WASMESH_WRITE_VECTORS").is_some() {
        // Input of testdata/make_vectors.py (the reference Prometheus parser's vector).
        let text = envoy.admin_get("/stats/prometheus").unwrap().text();
        // Counters and one histogram family keep the vector small.
        let kept = [
            "istio_requests_total",
            "istio_re",
            "istio_request_duration_milliseconds",
        ];
        let istio: Vec<&str> = text
            .lines()
            .filter(|line| kept.iter().any(|prefix| line.contains(prefix)))
            .filter(|line| !line.contains("_bytes"))
            .collect();
        let path = common::crate_dir().join("testdata/envoy_prometheus.txt");
        std::fs::write(path, istio.join("\n") + "\n").unwrap();
    }

    let traced_response = traced_response.unwrap();
    // Trace context and the metadata exchange, as the upstream and the client saw them.
    let received = upstream.requests();
    let upstream_saw = received
        .iter()
        .find(|request| request.header("traceparent").is_some())
        .unwrap();
    for (name, value) in trace_headers() {
        assert_eq!(upstream_saw.header(&name), Some(value.as_str()), "{name}");
    }
    assert_eq!(upstream_saw.header(PEER_METADATA_HEADER), None);
    assert_eq!(upstream_saw.header("x-envoy-peer-metadata-id"), None);
    assert!(received
        .iter()
        .all(|request| request.header(PEER_METADATA_HEADER).is_none()));
    let response = &traced_response;
    let announced =
        decode_peer_header(response.header(PEER_METADATA_HEADER).unwrap(), None).unwrap();
    assert_eq!(announced.workload_name, "reviews-v2");
    assert_eq!(
        response.header("x-envoy-peer-metadata-id"),
        Some(workload("reviews").id.as_str())
    );

    // One access-log line per request; the traced one in detail.
    let lines = envoy_access_log(&envoy);
    assert_eq!(lines.len(), exchanges().len(), "{}", envoy.log_tail(20));
    let line = lines
        .iter()
        .find(|line| !line["traceparent"].is_null())
        .unwrap();
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/reviews/1");
    assert_eq!(line["authority"], AUTHORITY);
    assert_eq!(line["response_code"], 200);
    assert_eq!(line["response_code_details"], "via_upstream");
    assert_eq!(line["response_flags"], "-");
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["upstream_cluster"], "upstream");
    assert_eq!(line["upstream_host"], upstream.addr().to_string());
    assert_eq!(
        line["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(
        line["request_id"].as_str().map(str::len),
        Some(36),
        "Envoy's x-request-id"
    );
    assert!(line["start_time"].as_str().unwrap().ends_with('Z'));
    let unreachable = lines.iter().find(|line| line["path"] == "/dead/1").unwrap();
    assert_eq!(unreachable["response_flags"], "UF");
    assert_eq!(unreachable["response_code"], 503);
    assert_eq!(unreachable["upstream_cluster"], "dead");
}

#[test]
fn envoy_refuses_a_bad_configuration_as_the_harness_does() {
    if envoy::skip_requested() {
        return;
    }
    let bad = r#"{"metrics": [{"name": "requests_totl"}]}"#;
    let upstream = upstream();
    let error = EnvoyBuilder::new()
        .wasm_filter(
            WasmFilter::new(common::wasm())
                .name("telemetry")
                .configuration(bad),
        )
        .upstream(upstream.addr())
        .start()
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("metrics[0].name: no metric `requests_totl`"),
        "{message}"
    );
    assert!(common::builder(bad, "reviews").start().is_err());
}
