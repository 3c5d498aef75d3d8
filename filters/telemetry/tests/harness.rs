#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The telemetry filter's real wasm build, driven through the harness like Envoy drives it:
//! every series and label value checked exactly.

mod common;

use std::time::Duration;

use common::{
    access_log_lines, exchanges, labels, recorded, run_in_harness, sample_config, series, start,
    trace_headers, workload, AUTHORITY,
};
use wasmesh_harness::{HarnessError, MetricValue, PropertyValue};
use wasmesh_telemetry::peer::{decode_peer_header, PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER};
use wasmesh_telemetry::prometheus;

/// The standard labels of an inbound request to `reviews-v2` from `productpage-v1`.
fn productpage_to_reviews(code: &str) -> Vec<(&'static str, String)> {
    [
        ("reporter", "destination"),
        ("source_workload", "productpage-v1"),
        ("source_workload_namespace", "default"),
        ("source_principal", "unknown"),
        ("source_app", "productpage"),
        ("source_version", "v1"),
        ("source_canonical_service", "productpage"),
        ("source_canonical_revision", "v1"),
        ("source_cluster", "Kubernetes"),
        ("destination_workload", "reviews-v2"),
        ("destination_workload_namespace", "default"),
        ("destination_principal", "unknown"),
        ("destination_app", "reviews"),
        ("destination_version", "v2"),
        ("destination_service", "reviews.default.svc.cluster.local"),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "default"),
        ("destination_canonical_service", "reviews"),
        ("destination_canonical_revision", "v2"),
        ("destination_cluster", "Kubernetes"),
        ("request_protocol", "http"),
        ("response_code", code),
        ("grpc_response_status", ""),
        ("response_flags", "-"),
        ("connection_security_policy", "none"),
    ]
    .iter()
    .map(|(k, v)| (*k, (*v).to_string()))
    .collect()
}

fn with(
    mut base: Vec<(&'static str, String)>,
    changes: &[(&'static str, &str)],
) -> std::collections::BTreeMap<String, String> {
    for (key, value) in changes {
        match base.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = (*value).to_string(),
            None => base.push((key, (*value).to_string())),
        }
    }
    let pairs: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
    labels(&pairs)
}

#[test]
fn every_exchange_records_its_series_with_exact_labels() {
    let plugin = start(&sample_config(), "reviews");
    for exchange in exchanges() {
        run_in_harness(&plugin, &exchange).complete().unwrap();
    }
    let recorded = recorded(&plugin);
    let requests = |changes: &[(&'static str, &str)]| {
        let expected = with(productpage_to_reviews("200"), changes);
        recorded
            .get(&("istio_requests_total".to_string(), expected.clone()))
            .unwrap_or_else(|| panic!("no series {expected:?} in {:#?}", recorded.keys()))
            .clone()
    };
    // "success" and "success with trace context" share one series.
    assert_eq!(
        requests(&[("request_method", "GET")]),
        MetricValue::Counter(2)
    );
    assert_eq!(
        requests(&[("request_method", "GET"), ("response_code", "404")]),
        MetricValue::Counter(1)
    );
    assert_eq!(
        requests(&[("request_method", "POST"), ("response_code", "503")]),
        MetricValue::Counter(1)
    );
    assert_eq!(
        requests(&[
            ("request_method", "GET"),
            ("response_code", "503"),
            ("response_flags", "UF")
        ]),
        MetricValue::Counter(1)
    );
    assert_eq!(
        requests(&[
            ("request_method", "POST"),
            ("request_protocol", "grpc"),
            ("grpc_response_status", "0")
        ]),
        MetricValue::Counter(1)
    );
    assert_eq!(
        requests(&[
            ("request_method", "GET"),
            ("source_workload", "unknown"),
            ("source_workload_namespace", "unknown"),
            ("source_app", "unknown"),
            ("source_version", "unknown"),
            ("source_canonical_service", "unknown"),
            ("source_canonical_revision", "latest"),
            ("source_cluster", "unknown"),
        ]),
        MetricValue::Counter(1)
    );
    let all_requests: u64 = series(&recorded, "istio_requests_total", &[])
        .iter()
        .map(|(_, value)| value.value().unwrap())
        .sum();
    assert_eq!(all_requests, exchanges().len() as u64);

    // Histograms carry the standard labels only (request_method was added to requests_total).
    let durations = series(&recorded, "istio_request_duration_milliseconds", &[]);
    assert_eq!(durations.len(), 6, "{durations:?}");
    assert!(durations
        .iter()
        .all(|(labels, _)| !labels.contains_key("request_method")));
    let success = with(productpage_to_reviews("200"), &[]);
    assert_eq!(
        recorded[&(
            "istio_request_duration_milliseconds".to_string(),
            success.clone()
        )],
        MetricValue::Histogram(vec![0, 0])
    );
    // request.total_size: headers (names and values) plus body, as Envoy counts it.
    let MetricValue::Histogram(sizes) = &recorded[&("istio_response_bytes".to_string(), success)]
    else {
        panic!("response_bytes is a histogram");
    };
    assert_eq!(sizes.len(), 2);
    assert!(
        sizes
            .iter()
            .all(|size| *size > "{\"ok\":true}".len() as u64),
        "{sizes:?}"
    );

    // gRPC message counters exist for the gRPC call only.
    let grpc = with(
        productpage_to_reviews("200"),
        &[("request_protocol", "grpc"), ("grpc_response_status", "0")],
    );
    assert_eq!(
        recorded[&("istio_request_messages_total".to_string(), grpc.clone())],
        MetricValue::Counter(2)
    );
    assert_eq!(
        recorded[&("istio_response_messages_total".to_string(), grpc)],
        MetricValue::Counter(3)
    );
    assert_eq!(
        series(&recorded, "istio_request_messages_total", &[]).len(),
        1
    );
}

#[test]
fn latency_runs_from_request_start_to_stream_end_across_pauses() {
    let plugin = start(&sample_config(), "reviews");
    let mut stream = plugin.http_stream();
    stream
        .request_headers(
            &[
                (":method", "GET"),
                (":path", "/slow"),
                (":authority", AUTHORITY),
            ],
            true,
        )
        .unwrap();
    // The upstream takes 120 ms to answer, then 30 ms to finish the body.
    plugin.advance_clock(Duration::from_millis(120)).unwrap();
    stream
        .response_headers(&[(":status", "200"), ("content-length", "2")], false)
        .unwrap();
    plugin.advance_clock(Duration::from_millis(30)).unwrap();
    stream.response_body(b"ok", true).unwrap();
    stream.complete().unwrap();

    let recorded = recorded(&plugin);
    let durations = series(&recorded, "istio_request_duration_milliseconds", &[]);
    assert_eq!(*durations[0].1, MetricValue::Histogram(vec![150]));
    assert_eq!(access_log_lines(&plugin)[0]["duration"], 150);
}

#[test]
fn trace_context_passes_unchanged_and_exchange_headers_are_handled() {
    let plugin = start(&sample_config(), "reviews");
    let mut traced = exchanges()[1].clone();
    assert_eq!(traced.name, "success with trace context");
    // The upstream answers with trace headers too; they must reach the client unchanged.
    traced
        .headers
        .push(("x-extra".to_string(), "1".to_string()));
    let stream = run_in_harness(&plugin, &traced);
    let upstream_saw = stream.request_headers_now();
    for (name, value) in trace_headers() {
        let seen: Vec<&String> = upstream_saw
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(seen, [&value], "{name}");
    }
    // The client's metadata is consumed, not forwarded to the application.
    assert!(upstream_saw
        .iter()
        .all(|(name, _)| !name.starts_with("x-envoy-peer-metadata")));
    // The server side announces itself to the client.
    let announced = stream.response_header(PEER_METADATA_HEADER).unwrap();
    let node = decode_peer_header(&announced, None).unwrap();
    assert_eq!(node.workload_name, "reviews-v2");
    assert_eq!(
        stream.response_header(PEER_METADATA_ID_HEADER).as_deref(),
        Some(workload("reviews").id.as_str())
    );
    stream.complete().unwrap();
}

#[test]
fn outbound_client_announces_itself_and_learns_the_server() {
    let plugin = common::builder(&sample_config(), "frontend")
        .property(&["xds", "listener_direction"], PropertyValue::Int(2))
        .start()
        .unwrap();
    let cart = workload("cart");
    let mut stream = plugin.http_stream();
    stream.property(
        &["xds", "cluster_name"],
        "outbound|8080||cart.shop.svc.cluster.local",
    );
    stream
        .request_headers(
            &[
                (":method", "POST"),
                (":path", "/cart.Cart/Get"),
                (":authority", "cart:8080"),
                ("content-type", "application/grpc"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ],
            false,
        )
        .unwrap();
    stream
        .request_body(&common::grpc_frames(&[b"a"]), true)
        .unwrap();
    let sent = stream.request_header(PEER_METADATA_HEADER).unwrap();
    assert_eq!(
        decode_peer_header(&sent, None).unwrap().workload_name,
        "frontend"
    );
    assert_eq!(
        stream.request_header(PEER_METADATA_ID_HEADER).unwrap(),
        workload("frontend").id
    );
    stream
        .response_headers(
            &[
                (":status", "200"),
                ("content-type", "application/grpc"),
                (PEER_METADATA_HEADER, &cart.header),
                (PEER_METADATA_ID_HEADER, &cart.id),
            ],
            false,
        )
        .unwrap();
    // The server's metadata is consumed before the client application sees the response.
    assert_eq!(stream.response_header(PEER_METADATA_HEADER), None);
    assert_eq!(stream.response_header(PEER_METADATA_ID_HEADER), None);
    stream
        .response_body(&common::grpc_frames(&[b"x", b"y"]), false)
        .unwrap();
    stream.response_trailers(&[("grpc-status", "5")]).unwrap();
    stream.complete().unwrap();

    let recorded = recorded(&plugin);
    let requests = series(&recorded, "istio_requests_total", &[]);
    assert_eq!(requests.len(), 1);
    let (labels, value) = requests[0];
    assert_eq!(*value, MetricValue::Counter(1));
    let expected = [
        ("reporter", "source"),
        ("source_workload", "frontend"),
        ("source_workload_namespace", "shop"),
        ("source_app", "web"),
        ("source_version", "3.1"),
        ("source_canonical_service", "web"),
        ("source_canonical_revision", "3.1"),
        ("source_cluster", "east"),
        ("destination_workload", "cart"),
        ("destination_workload_namespace", "shop"),
        ("destination_app", "unknown"),
        ("destination_canonical_service", "cart"),
        ("destination_canonical_revision", "latest"),
        ("destination_cluster", "east"),
        ("destination_service", "cart.shop.svc.cluster.local"),
        ("destination_service_name", "cart"),
        ("destination_service_namespace", "shop"),
        ("request_protocol", "grpc"),
        ("response_code", "200"),
        ("grpc_response_status", "5"),
        ("connection_security_policy", "unknown"),
        ("request_method", "POST"),
    ];
    for (key, value) in expected {
        assert_eq!(labels.get(key).map(String::as_str), Some(value), "{key}");
    }
    let messages = series(
        &recorded,
        "istio_response_messages_total",
        &[("reporter", "source")],
    );
    assert_eq!(*messages[0].1, MetricValue::Counter(2));
}

#[test]
fn one_json_access_log_line_per_request_with_istio_fields() {
    // `start_time` is compared with a fixed instant.
    let plugin = common::builder(&sample_config(), "reviews")
        .start_time(wasmesh_harness::pinned_start())
        .start()
        .unwrap();
    for exchange in exchanges() {
        run_in_harness(&plugin, &exchange).complete().unwrap();
    }
    let lines = access_log_lines(&plugin);
    assert_eq!(lines.len(), exchanges().len());
    let unreachable = &lines[4];
    assert_eq!(unreachable["path"], "/dead/1");
    assert_eq!(unreachable["response_code"], 503);
    assert_eq!(unreachable["response_flags"], "UF");
    assert_eq!(unreachable["method"], "GET");
    assert_eq!(unreachable["authority"], AUTHORITY);
    assert_eq!(unreachable["protocol"], "HTTP/1.1");
    assert_eq!(unreachable["duration"], 0);
    assert_eq!(unreachable["start_time"], "2024-01-01T00:00:00.000Z");
    assert_eq!(unreachable["downstream_remote_address"], "127.0.0.1:40000");
    assert!(unreachable["upstream_host"].is_null());
    let traced = &lines[1];
    assert_eq!(
        traced["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(traced["x_b3_traceid"], "80f198ee56343ba864fe8b2a57d3eff7");
    let grpc = &lines[5];
    assert_eq!(
        grpc["bytes_received"],
        common::grpc_frames(&[b"page=1", b"page=2"]).len()
    );
    assert!(plugin
        .logs()
        .iter()
        .all(|entry| entry.level == wasmesh_harness::LogLevel::Info));
}

#[test]
fn sampling_keeps_errors_when_asked() {
    let config = r#"{"access_log": {"sampling": {"numerator": 0}, "always_log_errors": true}}"#;
    let plugin = start(config, "reviews");
    for exchange in exchanges() {
        run_in_harness(&plugin, &exchange).complete().unwrap();
    }
    let codes: Vec<i64> = access_log_lines(&plugin)
        .iter()
        .map(|line| line["response_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [503, 503]);
}

#[test]
fn overrides_drop_and_custom_definitions() {
    let config = r#"{
      "stat_prefix": "mesh",
      "metrics": [
        {"tags_to_remove": ["source_principal", "destination_principal"]},
        {"name": "request_bytes", "drop": true},
        {"name": "response_bytes", "drop": true},
        {"name": "request_duration_milliseconds", "drop": true},
        {"name": "requests_total", "dimensions": {"user": "request.headers['x-user']", "peer_sa": "downstream_peer.service_account"}}
      ],
      "definitions": [{"name": "denied_total", "value": "1", "type": "COUNTER"}]
    }"#;
    let plugin = start(config, "reviews");
    let mut exchange = exchanges()[0].clone();
    exchange
        .headers
        .push(("x-user".to_string(), "alice".to_string()));
    run_in_harness(&plugin, &exchange).complete().unwrap();
    let recorded = recorded(&plugin);
    let names: std::collections::BTreeSet<&str> =
        recorded.keys().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["mesh_denied_total", "mesh_requests_total"]
    );
    let requests = series(
        &recorded,
        "mesh_requests_total",
        &[("user", "alice"), ("peer_sa", "bookinfo-productpage")],
    );
    assert_eq!(requests.len(), 1);
    assert!(!requests[0].0.contains_key("source_principal"));
    let denied = series(
        &recorded,
        "mesh_denied_total",
        &[("reporter", "destination")],
    );
    assert!(!denied[0].0.contains_key("user"));
}

#[test]
fn prometheus_exposition_shows_labelled_series_and_parses_back() {
    let plugin = start(&sample_config(), "reviews");
    for exchange in exchanges() {
        run_in_harness(&plugin, &exchange).complete().unwrap();
    }
    let text = common::prometheus_of(&plugin, &sample_config());
    let exposition = prometheus::parse(&text).unwrap();
    assert_eq!(exposition.types["istio_requests_total"], "counter");
    assert_eq!(
        exposition.types["istio_request_duration_milliseconds"],
        "histogram"
    );
    assert_eq!(exposition.types["istio_request_messages_total"], "counter");
    let ok: Vec<_> = exposition
        .find(
            "istio_requests_total",
            &[
                ("source_workload", "productpage-v1"),
                ("response_code", "200"),
                ("request_protocol", "http"),
            ],
        )
        .collect();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].value, 2.0);
    assert_eq!(
        ok[0].labels.len(),
        26,
        "25 standard labels and request_method"
    );
    let buckets: Vec<f64> = exposition
        .find(
            "istio_request_duration_milliseconds_bucket",
            &[("response_code", "200"), ("request_protocol", "http")],
        )
        .filter(|series| series.labels["source_workload"] == "productpage-v1")
        .map(|series| series.value)
        .collect();
    assert_eq!(buckets.len(), prometheus::ENVOY_DEFAULT_BUCKETS.len() + 1);
    assert!(
        buckets.iter().all(|count| *count == 2.0),
        "both durations are 0 ms"
    );
    // No series name still carries an encoded dimension.
    assert!(exposition
        .series
        .iter()
        .all(|series| !series.name.contains('=')));
}

#[test]
fn every_worker_vm_reports_into_the_same_series() {
    let plugin = common::builder(&sample_config(), "reviews")
        .workers(2)
        .start()
        .unwrap();
    let success = exchanges()[0].clone();
    for worker in [0, 1, 0, 1, 1] {
        let mut stream = plugin.http_stream_on(worker);
        stream
            .request_headers(
                &[
                    (":method", "GET"),
                    (":path", success.path),
                    (":authority", AUTHORITY),
                    ("x-envoy-peer-metadata", &success.headers[0].1),
                ],
                true,
            )
            .unwrap();
        stream
            .response_headers(&[(":status", "200")], true)
            .unwrap();
        stream.complete().unwrap();
    }
    let recorded = recorded(&plugin);
    let requests = series(
        &recorded,
        "istio_requests_total",
        &[("source_workload", "productpage-v1")],
    );
    assert_eq!(requests.len(), 1);
    assert_eq!(*requests[0].1, MetricValue::Counter(5));
}

#[test]
fn malformed_configuration_is_refused_with_its_json_path() {
    let error = common::builder(
        r#"{"metrics": [{"dimensions": {"x": "has(request.host)"}}]}"#,
        "reviews",
    )
    .start()
    .err()
    .unwrap();
    let HarnessError::ConfigRejected { logs } = &error else {
        panic!("expected ConfigRejected, got {error}");
    };
    assert_eq!(
        logs.last().map(|entry| entry.message.as_str()),
        Some(
            "telemetry: invalid configuration: metrics[0].dimensions.x: unsupported function \
             `has()` (only string() is supported); the filter refuses to start"
        )
    );
}

#[test]
fn forged_peer_metadata_cannot_inject_labels() {
    let plugin = start(&sample_config(), "reviews");
    let mut stream = plugin.http_stream();
    stream
        .request_headers(
            &[
                (":method", "GET"),
                (":path", "/"),
                (":authority", "evil;.;reporter=.=source;.;x"),
                (PEER_METADATA_HEADER, "not-base64!!"),
            ],
            true,
        )
        .unwrap();
    stream
        .response_headers(&[(":status", "200")], true)
        .unwrap();
    stream.complete().unwrap();
    let recorded = recorded(&plugin);
    let requests = series(&recorded, "istio_requests_total", &[]);
    assert_eq!(requests.len(), 1);
    let labels = requests[0].0;
    assert_eq!(labels["reporter"], "destination");
    assert_eq!(
        labels["destination_service"],
        "evil_._reporter_._source_._x"
    );
    assert_eq!(labels["source_workload"], "unknown");
}
