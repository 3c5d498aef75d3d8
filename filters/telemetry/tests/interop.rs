#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Vectors made by independent implementations (`testdata/make_vectors.py`): Istio metadata
//! serialized by Google's protobuf, and Envoy 1.40's Prometheus output parsed by the reference
//! `prometheus_client` parser.

mod common;

use std::collections::BTreeMap;

use serde_json::Value as Json;
use wasmesh_telemetry::peer::{decode_node_metadata, decode_peer_header, encode_node_metadata};
use wasmesh_telemetry::prometheus;
use wasmesh_telemetry::proto::{base64_encode, decode_struct, encode_struct, Struct, Value};

fn from_json(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(flag) => Value::Bool(*flag),
        Json::Number(number) => Value::Number(number.as_f64().unwrap()),
        Json::String(text) => Value::String(text.clone()),
        Json::Array(items) => Value::List(items.iter().map(from_json).collect()),
        Json::Object(fields) => Value::Struct(
            fields
                .iter()
                .map(|(key, value)| (key.clone(), from_json(value)))
                .collect(),
        ),
    }
}

#[test]
fn metadata_serialized_by_google_protobuf_decodes_exactly() {
    let vectors = common::vectors();
    let workloads = vectors["workloads"].as_object().unwrap();
    assert_eq!(workloads.len(), 4);
    for (name, vector) in workloads {
        let workload = common::workload(name);
        let Value::Struct(expected) = from_json(&vector["metadata"]) else {
            panic!("metadata is an object");
        };
        // The Struct, every kind of value included.
        assert_eq!(
            decode_struct(&workload.metadata).unwrap(),
            expected,
            "{name}"
        );
        // The header as a sidecar sends it, and the labels Istio derives from it.
        let node = decode_peer_header(&workload.header, Some(&workload.id)).unwrap();
        let expect = &vector["expect"];
        let derived = [
            ("workload", node.workload_name.as_str()),
            ("namespace", node.namespace.as_str()),
            ("app", node.app()),
            ("version", node.version()),
            ("canonical_service", node.canonical_service()),
            ("canonical_revision", node.canonical_revision()),
            ("cluster", node.cluster_id.as_str()),
        ];
        for (field, value) in derived {
            assert_eq!(expect[field].as_str(), Some(value), "{name}.{field}");
        }
        assert_eq!(node.id, workload.id);
        // Our own encoding carries the same Struct (map order aside, protobuf maps are unordered).
        let ours = encode_struct(&expected);
        assert_eq!(decode_struct(&ours).unwrap(), expected);
        assert_eq!(base64_encode(&workload.metadata), workload.header);
    }
}

#[test]
fn node_metadata_reads_the_way_envoy_1_40_and_older_hosts_serve_it() {
    for name in ["productpage", "reviews", "frontend", "cart"] {
        let workload = common::workload(name);
        let fields: Struct = decode_struct(&workload.metadata).unwrap();
        let from_struct = decode_node_metadata(&workload.metadata).unwrap();
        let from_pairs = decode_node_metadata(&encode_node_metadata(&fields)).unwrap();
        assert_eq!(
            from_struct.workload_name, from_pairs.workload_name,
            "{name}"
        );
        assert_eq!(from_struct.labels, from_pairs.labels, "{name}");
    }
}

#[test]
fn envoy_prometheus_output_parses_as_the_reference_parser_reads_it() {
    let dir = common::crate_dir().join("testdata");
    let text = std::fs::read_to_string(dir.join("envoy_prometheus.txt")).unwrap();
    let reference: Vec<Json> = serde_json::from_str(
        &std::fs::read_to_string(dir.join("envoy_prometheus.parsed.json")).unwrap(),
    )
    .unwrap();
    let ours = prometheus::parse(&text).unwrap();
    type Row = (String, BTreeMap<String, String>, f64);
    let mut ours: Vec<Row> = ours
        .series
        .into_iter()
        .map(|series| (series.name, series.labels, series.value))
        .collect();
    let mut reference: Vec<Row> = reference
        .iter()
        .map(|series| {
            let labels = series["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(key, value)| (key.clone(), value.as_str().unwrap().to_string()))
                .collect();
            (
                series["name"].as_str().unwrap().to_string(),
                labels,
                series["value"].as_f64().unwrap(),
            )
        })
        .collect();
    let order = |a: &Row, b: &Row| (&a.0, &a.1).cmp(&(&b.0, &b.1));
    ours.sort_by(order);
    reference.sort_by(order);
    assert_eq!(ours.len(), reference.len());
    assert!(ours.len() > 50);
    for (mine, theirs) in ours.iter().zip(&reference) {
        assert_eq!((&mine.0, &mine.1), (&theirs.0, &theirs.1));
        let same = (mine.2 - theirs.2).abs() <= 1e-9 * theirs.2.abs().max(1.0)
            || (mine.2.is_infinite() && theirs.2.is_infinite());
        assert!(same, "{}: {} vs {}", mine.0, mine.2, theirs.2);
    }
    // The counters Envoy exposed carry every standard label.
    let requests: Vec<&Row> = ours
        .iter()
        .filter(|row| row.0 == "istio_requests_total")
        .collect();
    assert!(requests.iter().all(|row| row.1.len() == 26));
}
