#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Global mode end to end: Envoy 1.40 runs the filter, which calls a real gRPC rate limit
//! service (HTTP/2, `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, messages
//! encoded and decoded with `prost`); the harness, with the same answers from its gRPC mock,
//! must give the same verdicts. Set `WASMESH_SKIP_ENVOY=1` to skip without Envoy.

mod common;

use std::time::Duration;

use common::rls::{self, RateLimitRequest, RateLimitResponse};
use prost::Message;
use wasmesh_envoy::{
    self as envoy, Cluster, EnvoyBuilder, GrpcAnswer, GrpcTestServer, HttpRequest, ReceivedRequest,
    TestServer, WasmFilter,
};
use wasmesh_harness::{GrpcReply, MetricValue, Plugin};

const CONFIG: &str = r#"{
  "domain": "edge",
  "stat_prefix": "front",
  "timeout": "0.25s",
  "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}}, "transport_api_version": "V3"},
  "rate_limits": [
    {"actions": [{"generic_key": {"descriptor_value": "api"}}, {"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]},
    {"actions": [{"remote_address": {}}], "hits_addend": {"number": 2}}
  ],
  "enable_x_ratelimit_headers": "DRAFT_VERSION_03"
}"#;

/// What the service decides, per user.
enum Answer {
    Response(RateLimitResponse),
    Error,
    Silence,
}

fn answer(request: &RateLimitRequest) -> Answer {
    assert_eq!(request.domain, "edge");
    let descriptors = rls::descriptors(request);
    let user = descriptors
        .first()
        .and_then(|descriptor| descriptor.split("user=").nth(1))
        .unwrap_or_default()
        .to_string();
    let status = |remaining: u32| rls::DescriptorStatus {
        code: rls::OK,
        current_limit: Some(rls::RateLimit {
            requests_per_unit: 10,
            unit: rls::MINUTE,
            name: "per-user".into(),
        }),
        limit_remaining: remaining,
        duration_until_reset: Some(rls::ProtoDuration {
            seconds: 42,
            nanos: 0,
        }),
    };
    match user.as_str() {
        "mallory" => Answer::Response(RateLimitResponse {
            overall_code: rls::OVER_LIMIT,
            statuses: vec![status(0)],
            response_headers_to_add: vec![rls::header("retry-after", "42")],
            raw_body: b"slow down\n".to_vec(),
            ..RateLimitResponse::default()
        }),
        "broken" => Answer::Error,
        "slow" => Answer::Silence,
        _ => Answer::Response(RateLimitResponse {
            overall_code: rls::OK,
            statuses: vec![status(7)],
            response_headers_to_add: vec![rls::header("x-quota-tier", "gold")],
            request_headers_to_add: vec![rls::header("x-ratelimit-checked", "yes")],
            ..RateLimitResponse::default()
        }),
    }
}

/// What the client and the upstream observe.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    status: u32,
    details: Option<String>,
    body: String,
    /// `x-envoy-ratelimited`, `x-ratelimit-limit`, `x-ratelimit-remaining`,
    /// `x-ratelimit-reset`, `retry-after`, `x-quota-tier` in the response.
    headers: Vec<Option<String>>,
    /// `x-ratelimit-checked` as the upstream received it.
    upstream_checked: Option<String>,
}

const HEADERS: [&str; 6] = [
    "x-envoy-ratelimited",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
    "x-quota-tier",
];

fn run_in_envoy(envoy: &envoy::Envoy, user: &str) -> Verdict {
    let response = envoy
        .send(&HttpRequest::get("/api").header("x-user", user))
        .unwrap();
    let details = response.response_code_details().map(str::to_string);
    let upstream_checked = if details.is_none() {
        ReceivedRequest::from_echo(&response)
            .unwrap()
            .header("x-ratelimit-checked")
            .map(str::to_string)
    } else {
        None
    };
    Verdict {
        status: u32::from(response.status),
        body: if details.is_some() {
            response.text()
        } else {
            String::new()
        },
        details,
        headers: HEADERS
            .iter()
            .map(|name| response.header(name).map(str::to_string))
            .collect(),
        upstream_checked,
    }
}

fn run_in_harness(plugin: &Plugin, user: &str) -> Verdict {
    let mut stream = plugin.http_stream();
    stream.property(&["source", "address"], "127.0.0.1:40000");
    stream
        .request_headers(
            &[
                (":method", "GET"),
                (":path", "/api"),
                (":authority", "shop"),
                ("x-user", user),
            ],
            true,
        )
        .unwrap();
    // A silent service: the call times out after the filter's 250ms.
    plugin.advance_clock(Duration::from_millis(250)).unwrap();
    let verdict = match stream.local_reply() {
        Some(reply) => Verdict {
            status: reply.status,
            details: Some(reply.details.clone()),
            body: String::from_utf8(reply.body.clone()).unwrap(),
            headers: HEADERS
                .iter()
                .map(|name| {
                    reply
                        .headers
                        .iter()
                        .find(|(key, _)| key == name)
                        .map(|(_, value)| value.clone())
                })
                .collect(),
            upstream_checked: None,
        },
        None => {
            let upstream_checked = stream.request_header("x-ratelimit-checked");
            stream
                .response_headers(&[(":status", "200")], true)
                .unwrap();
            Verdict {
                status: 200,
                details: None,
                body: String::new(),
                headers: HEADERS
                    .iter()
                    .map(|name| stream.response_header(name))
                    .collect(),
                upstream_checked,
            }
        }
    };
    stream.complete().unwrap();
    verdict
}

#[test]
fn envoy_with_a_grpc_rate_limit_service_agrees_with_the_harness() {
    if envoy::skip_requested() {
        return;
    }
    let service = GrpcTestServer::start(|call| {
        assert_eq!(
            call.path,
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
        );
        match answer(&rls::decode_request(&call.message)) {
            Answer::Response(response) => GrpcAnswer::Message(response.encode_to_vec()),
            Answer::Error => GrpcAnswer::Error {
                status: 14,
                message: "backend down".into(),
            },
            Answer::Silence => GrpcAnswer::NoAnswer,
        }
    })
    .unwrap();
    let upstream = TestServer::echo().unwrap();
    let envoy = EnvoyBuilder::new()
        .wasm_filter(
            WasmFilter::new(common::wasm())
                .name("rate-limit")
                .configuration(CONFIG),
        )
        .upstream(upstream.addr())
        .cluster(Cluster::new("ratelimit", service.addr()).http2())
        .start()
        .unwrap();
    let plugin = common::builder(CONFIG)
        .cluster("ratelimit")
        .grpc_callout_handler(
            |call| match answer(&rls::decode_request(&call.messages[0])) {
                Answer::Response(response) => GrpcReply::Response(response.encode_to_vec()),
                Answer::Error => GrpcReply::Error {
                    status: 14,
                    message: "backend down".into(),
                },
                Answer::Silence => GrpcReply::Timeout,
            },
        )
        .start()
        .unwrap();

    let allowed = Verdict {
        status: 200,
        details: None,
        body: String::new(),
        headers: vec![
            None,
            Some("10, 10;w=60;name=\"per-user\"".into()),
            Some("7".into()),
            Some("42".into()),
            None,
            Some("gold".into()),
        ],
        upstream_checked: Some("yes".into()),
    };
    let over_limit = Verdict {
        status: 429,
        details: Some("request_rate_limited".into()),
        body: "slow down\n".into(),
        headers: vec![
            Some("true".into()),
            Some("10, 10;w=60;name=\"per-user\"".into()),
            Some("0".into()),
            Some("42".into()),
            Some("42".into()),
            None,
        ],
        upstream_checked: None,
    };
    let failed_open = Verdict {
        status: 200,
        details: None,
        body: String::new(),
        headers: vec![None; 6],
        upstream_checked: None,
    };
    for (user, expected) in [
        ("alice", &allowed),
        ("mallory", &over_limit),
        ("broken", &failed_open),
        ("slow", &failed_open),
        ("bob", &allowed),
    ] {
        let in_envoy = run_in_envoy(&envoy, user);
        let in_harness = run_in_harness(&plugin, user);
        assert_eq!(in_envoy, in_harness, "{user}: Envoy vs harness");
        assert_eq!(&in_envoy, expected, "{user}");
    }

    // Envoy sent real RateLimitRequests with the descriptors the harness saw.
    let calls = service.requests();
    assert_eq!(calls.len(), 5);
    let first = rls::decode_request(&calls[0].message);
    assert_eq!(
        rls::descriptors(&first),
        vec!["generic_key=api,user=alice", "remote_address=127.0.0.1"]
    );
    assert_eq!(
        first.descriptors[1].hits_addend,
        Some(rls::UInt64Value { value: 2 })
    );
    let harness_first = rls::decode_request(&plugin.grpc_callouts()[0].messages[0]);
    assert_eq!(harness_first, first);

    for stat in ["ok", "over_limit", "error", "failure_mode_allowed"] {
        let name = format!("front.ratelimit.{stat}");
        let in_harness = plugin
            .metric(&name)
            .and_then(|value: MetricValue| value.value());
        assert_eq!(envoy.wasm_metric(&name).unwrap(), in_harness, "{name}");
    }
    assert_eq!(envoy.wasm_metric("front.ratelimit.error").unwrap(), Some(2));
}
