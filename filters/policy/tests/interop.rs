#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Interop with an independent protobuf implementation: `CheckResponse`s and a `CheckRequest`
//! encoded by Google's Python protobuf runtime (`testdata/make_vectors.py`, message types
//! declared from Envoy's .proto files) must decode with the filter's hand-written prost types
//! and lead to Envoy's decisions.

use prost::Message;
use serde_json::Value;
use wasmesh_policy::check::{Answer, Service};
use wasmesh_policy::config::Config;
use wasmesh_policy::proto::CheckRequest;
use wasmesh_policy::verdict::Verdict;
use wasmesh_sdk::callout::GrpcCalloutResponse;
use wasmesh_sdk::config::load;

fn base64(text: &str) -> Vec<u8> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.bytes().filter(|byte| *byte != b'=') {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {byte}"),
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

fn pairs(value: &Value) -> Vec<(String, String)> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_string(),
                pair[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn vectors() -> Vec<Value> {
    let text = include_str!("../testdata/check_vectors.json");
    let document: Value = serde_json::from_str(text).unwrap();
    document["vectors"].as_array().unwrap().clone()
}

#[test]
fn check_responses_from_python_protobuf_decide_as_envoy() {
    let config: Config =
        load(br#"{"grpc_service": {"envoy_grpc": {"cluster_name": "authz"}}}"#).unwrap();
    let service = Service::new(&config);
    let mut seen = 0;
    for vector in vectors().iter().filter(|v| v["kind"] == "CheckResponse") {
        seen += 1;
        let name = vector["name"].as_str().unwrap();
        let expected = &vector["expected"];
        let response = GrpcCalloutResponse {
            token: 1,
            status: 0,
            message: None,
            body: base64(vector["base64"].as_str().unwrap()),
        };
        let Answer::Decided { verdict, ttl } = service.grpc_answer(&response, false) else {
            panic!("{name}: no decision");
        };
        assert_eq!(ttl, None, "{name}");
        match verdict {
            Verdict::Allow(allow) => {
                assert!(expected["allow"].as_bool().unwrap(), "{name}: allowed");
                assert_eq!(
                    allow.upstream_set,
                    pairs(&expected["upstream_set"]),
                    "{name}"
                );
                assert_eq!(
                    allow.upstream_append,
                    pairs(&expected["upstream_append"]),
                    "{name}"
                );
                let removed: Vec<String> = expected["upstream_remove"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|name| name.as_str().unwrap().to_string())
                    .collect();
                assert_eq!(allow.upstream_remove, removed, "{name}");
                assert_eq!(
                    allow.response_set,
                    pairs(&expected["response_set"]),
                    "{name}"
                );
                assert_eq!(
                    allow.response_add_if_absent,
                    pairs(&expected["response_add_if_absent"]),
                    "{name}"
                );
            }
            Verdict::Deny(deny) => {
                assert!(!expected["allow"].as_bool().unwrap(), "{name}: denied");
                assert_eq!(
                    u64::from(deny.status),
                    expected["status"].as_u64().unwrap(),
                    "{name}"
                );
                assert_eq!(deny.headers, pairs(&expected["headers"]), "{name}");
                assert_eq!(
                    deny.body,
                    expected["body"].as_str().unwrap().as_bytes(),
                    "{name}"
                );
            }
        }
    }
    assert_eq!(seen, 4);
}

#[test]
fn a_check_request_from_python_protobuf_decodes_field_by_field() {
    let vector = vectors()
        .into_iter()
        .find(|v| v["kind"] == "CheckRequest")
        .unwrap();
    let expected = &vector["expected"];
    let request =
        CheckRequest::decode(base64(vector["base64"].as_str().unwrap()).as_slice()).unwrap();
    let attributes = request.attributes.unwrap();
    let source = attributes.source.unwrap();
    let address = source.address.unwrap().socket_address.unwrap();
    assert_eq!(
        format!("{}:{}", address.address, address.port_value),
        expected["source"].as_str().unwrap()
    );
    assert_eq!(source.principal, expected["principal"].as_str().unwrap());
    let http_request = attributes.request.unwrap();
    assert_eq!(http_request.time.unwrap().seconds, 1_700_000_000);
    let http = http_request.http.unwrap();
    assert_eq!(http.method, expected["method"].as_str().unwrap());
    assert_eq!(http.path, expected["path"].as_str().unwrap());
    assert_eq!(http.host, expected["host"].as_str().unwrap());
    assert_eq!(http.scheme, expected["scheme"].as_str().unwrap());
    assert_eq!(http.size, expected["size"].as_i64().unwrap());
    assert_eq!(http.protocol, expected["protocol"].as_str().unwrap());
    assert_eq!(http.body, expected["body"].as_str().unwrap());
    assert_eq!(
        http.headers.get("authorization").map(String::as_str),
        expected["authorization"].as_str()
    );
    // And the filter's own encoding of it reads back identically (field numbers agree).
    let reencoded = CheckRequest::decode(
        CheckRequest {
            attributes: Some(wasmesh_policy::proto::AttributeContext {
                request: Some(wasmesh_policy::proto::Request {
                    time: None,
                    http: Some(http.clone()),
                }),
                ..Default::default()
            }),
        }
        .encode_to_vec()
        .as_slice(),
    )
    .unwrap();
    assert_eq!(
        reencoded.attributes.unwrap().request.unwrap().http.unwrap(),
        http
    );
}
