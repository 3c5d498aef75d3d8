#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The policy filter with a gRPC `envoy.service.auth.v3.Authorization/Check` service (real
//! protobuf over HTTP/2) in a real Envoy, compared with the harness; the request body is sent
//! with the check (`allow_on_headers_stop_iteration`). Set `WASMESH_SKIP_ENVOY=1` to skip.

mod common;

use common::envoy::{grpc_service, run_in_envoy};
use common::{builder, cases, grpc_config, run_in_harness, Case, Verdict};
use prost::Message;
use wasmesh_envoy::{self as envoy, Cluster, EnvoyBuilder, TestServer, WasmFilter};
use wasmesh_policy::proto;

fn body_cases() -> Vec<Case> {
    let alice = ("authorization", "Bearer alice");
    vec![
        Case {
            name: "a clean body is checked and forwarded",
            method: "POST",
            path: "/orders/new",
            headers: vec![alice],
            body: "{\"item\": 7}",
            expected: Verdict::Forwarded {
                user: Some("alice".into()),
                tier: Some("gold".into()),
                check_only_header: None,
                internal_note: None,
                quota: Some("100".into()),
            },
            asks_service: true,
        },
        Case {
            name: "the body decides",
            method: "POST",
            path: "/orders/new",
            headers: vec![alice],
            body: "an evil plan",
            expected: Verdict::Replied {
                status: 403,
                details: "ext_authz_denied".into(),
                body: "body refused\n".into(),
                reason: Some("body".into()),
                www_authenticate: None,
            },
            asks_service: true,
        },
        Case {
            name: "a body over max_request_bytes is refused",
            method: "POST",
            path: "/orders/new",
            headers: vec![alice],
            body: "0123456789012345678901234567890123456789012345678901234567890123456789",
            expected: Verdict::Replied {
                status: 413,
                details: "request_payload_too_large".into(),
                body: "Payload Too Large".into(),
                reason: None,
                www_authenticate: None,
            },
            asks_service: false,
        },
    ]
}

#[test]
fn envoy_and_the_harness_agree_over_grpc() {
    if envoy::skip_requested() {
        return;
    }
    let service = grpc_service();
    let upstream = TestServer::echo().unwrap();
    let envoy = EnvoyBuilder::new()
        .wasm_filter(
            WasmFilter::new(common::wasm())
                .name("policy")
                .configuration(grpc_config())
                .allow_on_headers_stop_iteration(true),
        )
        .upstream(upstream.addr())
        .cluster(Cluster::new("authz-grpc", service.addr()).http2())
        .start()
        .unwrap();
    let plugin = builder(&grpc_config())
        .allow_on_headers_stop_iteration(true)
        .start()
        .unwrap();

    for case in cases().iter().chain(body_cases().iter()) {
        let in_harness = run_in_harness(&plugin, case);
        let in_envoy = run_in_envoy(&envoy, case);
        assert_eq!(
            in_envoy, in_harness,
            "{}: Envoy and the harness disagree",
            case.name
        );
        assert_eq!(in_envoy, case.expected, "{}", case.name);
    }

    // The service received real CheckRequests describing the client's request.
    let calls = service.requests();
    let asked = cases()
        .iter()
        .chain(body_cases().iter())
        .filter(|c| c.asks_service)
        .count();
    assert_eq!(calls.len(), asked);
    assert_eq!(plugin.grpc_callouts().len(), asked);
    let check = proto::CheckRequest::decode(calls[0].message.as_slice()).unwrap();
    let attributes = check.attributes.unwrap();
    let http = attributes.request.unwrap().http.unwrap();
    assert_eq!(
        (http.method.as_str(), http.path.as_str()),
        ("GET", "/orders")
    );
    assert_eq!(http.host, "shop.example.com");
    assert_eq!(
        http.headers.get("authorization").map(String::as_str),
        Some("Bearer alice")
    );
    assert_eq!(http.protocol, "HTTP/1.1");
    assert!(!http.id.is_empty(), "Envoy's x-request-id");
    let source = attributes
        .source
        .unwrap()
        .address
        .unwrap()
        .socket_address
        .unwrap();
    assert_eq!(source.address, "127.0.0.1");
    // The last check is the one with the evil body (the oversized one never reached it).
    let with_body = proto::CheckRequest::decode(calls[calls.len() - 1].message.as_slice()).unwrap();
    let http = with_body.attributes.unwrap().request.unwrap().http.unwrap();
    assert_eq!(http.body, "an evil plan");
    assert_eq!(
        http.headers
            .get("x-envoy-auth-partial-body")
            .map(String::as_str),
        Some("false")
    );

    let denied = envoy.wasm_metric("ext_authz.denied").unwrap();
    assert_eq!(
        denied,
        plugin.metric("ext_authz.denied").and_then(|v| v.value())
    );
}
