#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The filter's replies against Envoy's own: two Envoy 1.40s with 4 workers and the same policy,
//! one running the wasm filter, the other the native filter, get the same requests one after the
//! other (wasm, native, wasm, native, ...) so that both see the same elapsed times. Every
//! response — the 429s above all — must be the same, status, body and every header in order;
//! only `date` may differ (each Envoy stamps its own clock). Local mode is compared with
//! `envoy.filters.http.local_ratelimit`, global mode with `envoy.filters.http.ratelimit` (both
//! asking one gRPC rate limit service). Set `WASMESH_SKIP_ENVOY=1` to skip on a machine without
//! Envoy.

mod common;

use std::time::{Duration, Instant};

use common::rls::{self, RateLimitResponse};
use prost::Message;
use serde_json::{json, Value};
use wasmesh_envoy::{
    self as envoy, Cluster, Envoy, EnvoyBuilder, GrpcAnswer, GrpcTestServer, HttpRequest,
    HttpResponse, TestServer, WasmFilter,
};

const ENVOY_WORKERS: u32 = 4;

/// One policy for both filters, in the native filter's own proto3 JSON: a default bucket of 3
/// tokens refilled 10 per hour (one token every 360 s), one bucket per `x-api-key` value of
/// one token every 10 s, a header on rate-limited replies, a `status` below 400 (which both
/// turn into 429), and the `X-RateLimit-*` headers.
fn policy() -> Value {
    json!({
        "stat_prefix": "edge",
        "token_bucket": {"max_tokens": 3, "tokens_per_fill": 10, "fill_interval": "3600s"},
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "descriptors": [{
            "entries": [{"key": "api_key", "value": ""}],
            "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "10s"}
        }],
        "rate_limits": [{"actions": [{"request_headers": {"header_name": "x-api-key", "descriptor_key": "api_key"}}]}],
        "response_headers_to_add": [{
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            "header": {"key": "x-local-rate-limit", "value": "true"}
        }],
        "status": {"code": 200},
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03"
    })
}

fn wasm_envoy(policy: &Value) -> Envoy {
    EnvoyBuilder::new()
        .concurrency(ENVOY_WORKERS)
        .wasm_filter(
            WasmFilter::new(common::wasm())
                .name("rate-limit")
                .configuration(policy.to_string()),
        )
        .start()
        .unwrap()
}

fn native_envoy(policy: &Value) -> Envoy {
    let mut typed_config = policy.clone();
    typed_config["@type"] = json!(
        "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
    );
    EnvoyBuilder::new()
        .concurrency(ENVOY_WORKERS)
        .http_filter_json(json!({
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": typed_config,
        }))
        .start()
        .unwrap()
}

/// Headers that must differ between two Envoys: the `date` each one stamps, and on responses
/// from an upstream (global mode) the milliseconds the upstream took.
const VOLATILE: [&str; 2] = ["date", "x-envoy-upstream-service-time"];

/// Status, body and every header in the order received, minus [`VOLATILE`] ones.
fn wire(response: &HttpResponse) -> (u16, String, Vec<(String, String)>) {
    (
        response.status,
        response.text(),
        response
            .headers
            .iter()
            .filter(|(name, _)| !VOLATILE.iter().any(|v| name.eq_ignore_ascii_case(v)))
            .cloned()
            .collect(),
    )
}

/// The exchanges: a name, the `x-api-key` sent (if any), and which bucket's first consumption
/// the `X-RateLimit-Reset` seconds count from (for the timing check).
const STEPS: [(&str, Option<&str>, Bucket); 7] = [
    (
        "alice 1: her bucket's only token",
        Some("alice"),
        Bucket::Alice,
    ),
    (
        "alice 2: 429, 9.x s to her next token",
        Some("alice"),
        Bucket::Alice,
    ),
    (
        "no key 1: default bucket, 1 token left",
        None,
        Bucket::Default,
    ),
    ("no key 2: default bucket empties", None, Bucket::Default),
    (
        "no key 3: 429, 359.x s to the next token",
        None,
        Bucket::Default,
    ),
    (
        "bob: his bucket admits, the default bucket denies",
        Some("bob"),
        Bucket::Default,
    ),
    ("alice 3: still limited", Some("alice"), Bucket::Alice),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bucket {
    Default,
    Alice,
}

/// One run of [`STEPS`] through both Envoys: each step's two responses, or `None` when the
/// machine was too slow for a fair comparison (a bucket's requests spread over more than
/// 0.9 s, so the whole seconds until its next token could differ between the two Envoys only
/// because they were asked a few milliseconds apart).
#[allow(clippy::type_complexity)]
fn run_once() -> Option<Vec<(&'static str, HttpResponse, HttpResponse)>> {
    let policy = policy();
    let wasm = wasm_envoy(&policy);
    let native = native_envoy(&policy);
    let mut first_use: Vec<(Bucket, Instant)> = Vec::new();
    let mut exchanges = Vec::new();
    for (name, key, bucket) in STEPS {
        let mut request = HttpRequest::get("/api");
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let started = Instant::now();
        if !first_use.iter().any(|(used, _)| *used == bucket) {
            first_use.push((bucket, started));
        }
        // The default bucket is consumed by the keyed requests too (the filter's default
        // `always_consume_default_token_bucket`).
        if key.is_some() && !first_use.iter().any(|(used, _)| *used == Bucket::Default) {
            first_use.push((Bucket::Default, started));
        }
        let from_wasm = wasm.send(&request).unwrap();
        let from_native = native.send(&request).unwrap();
        let spread = first_use
            .iter()
            .map(|(_, at)| at.elapsed())
            .max()
            .unwrap_or_default();
        if spread > Duration::from_millis(900) {
            eprintln!("{name}: requests spread over {spread:?}; running the comparison again");
            return None;
        }
        exchanges.push((name, from_wasm, from_native));
    }
    Some(exchanges)
}

#[test]
fn rate_limited_replies_are_identical_to_native_local_ratelimit() {
    if envoy::skip_requested() {
        return;
    }
    let exchanges = (0..3)
        .find_map(|_| run_once())
        .expect("three runs in a row too slow for a fair comparison");
    let mut limited = 0;
    for (name, from_wasm, from_native) in &exchanges {
        eprintln!(
            "{name}\n  wasm:   {:?}\n  native: {:?}",
            wire(from_wasm),
            wire(from_native)
        );
    }
    for (name, from_wasm, from_native) in &exchanges {
        assert_eq!(
            wire(from_wasm),
            wire(from_native),
            "{name}: wasm filter (left) vs native local_ratelimit (right)"
        );
        limited += usize::from(from_native.status == 429);
    }
    // The comparison covered denials by a per-key bucket and by the default bucket.
    assert_eq!(limited, 4);
}

/// Global mode, in the native filter's proto3 JSON: a gRPC rate limit service on cluster
/// `ratelimit`, one descriptor from `x-user`, a header on rate-limited replies, a
/// `rate_limited_status` below 400 (429 for both), and the `X-RateLimit-*` headers.
fn global_policy() -> Value {
    json!({
        "domain": "edge",
        "stat_prefix": "front",
        "timeout": "2s",
        "rate_limit_service": {
            "grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}},
            "transport_api_version": "V3"
        },
        "rate_limits": [{"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}],
        "response_headers_to_add": [
            {"append_action": "OVERWRITE_IF_EXISTS_OR_ADD", "header": {"key": "x-global-rate-limit", "value": "true"}},
            {"append_action": "OVERWRITE_IF_EXISTS_OR_ADD", "header": {"key": "retry-after", "value": "60"}}
        ],
        "rate_limited_status": {"code": 200},
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03"
    })
}

/// The service's answer for a user: `mallory` is over the limit with a body, `eve` over the limit
/// without one, anyone else is under it.
fn service_answer(user: &str) -> RateLimitResponse {
    let status = |code: i32, remaining: u32| rls::DescriptorStatus {
        code,
        current_limit: Some(rls::RateLimit {
            requests_per_unit: 10,
            unit: rls::MINUTE,
            name: "per-user".into(),
        }),
        limit_remaining: remaining,
        duration_until_reset: Some(rls::ProtoDuration {
            seconds: 42,
            nanos: 500_000_000,
        }),
    };
    match user {
        "mallory" => RateLimitResponse {
            overall_code: rls::OVER_LIMIT,
            statuses: vec![status(rls::OVER_LIMIT, 0)],
            response_headers_to_add: vec![rls::header("retry-after", "42")],
            raw_body: b"slow down\n".to_vec(),
            ..RateLimitResponse::default()
        },
        "eve" => RateLimitResponse {
            overall_code: rls::OVER_LIMIT,
            statuses: vec![status(rls::OVER_LIMIT, 0)],
            ..RateLimitResponse::default()
        },
        _ => RateLimitResponse {
            overall_code: rls::OK,
            statuses: vec![status(rls::OK, 7)],
            response_headers_to_add: vec![rls::header("x-quota-tier", "gold")],
            ..RateLimitResponse::default()
        },
    }
}

#[test]
fn over_limit_replies_are_identical_to_native_ratelimit() {
    if envoy::skip_requested() {
        return;
    }
    let service = GrpcTestServer::start(|call| {
        let request = rls::decode_request(&call.message);
        let user = rls::descriptors(&request)
            .first()
            .and_then(|descriptor| descriptor.strip_prefix("user=").map(str::to_string))
            .unwrap_or_default();
        GrpcAnswer::Message(service_answer(&user).encode_to_vec())
    })
    .unwrap();
    // Envoy's ratelimit filter only acts on requests routed to a cluster (not on direct
    // responses): both Envoys forward to an upstream answering `200 ok`.
    let upstream = TestServer::start(|_| HttpResponse::new(200, "ok")).unwrap();
    let policy = global_policy();
    let with_service = || {
        EnvoyBuilder::new()
            .concurrency(ENVOY_WORKERS)
            .upstream(upstream.addr())
            .cluster(Cluster::new("ratelimit", service.addr()).http2())
    };
    let wasm = with_service()
        .wasm_filter(
            WasmFilter::new(common::wasm())
                .name("rate-limit")
                .configuration(policy.to_string()),
        )
        .start()
        .unwrap();
    let mut typed_config = policy.clone();
    typed_config["@type"] =
        json!("type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit");
    let native = with_service()
        .http_filter_json(json!({
            "name": "envoy.filters.http.ratelimit",
            "typed_config": typed_config,
        }))
        .start()
        .unwrap();

    let exchanges: Vec<_> = ["alice", "mallory", "eve", "bob"]
        .into_iter()
        .map(|user| {
            let request = HttpRequest::get("/api").header("x-user", user);
            let from_wasm = wasm.send(&request).unwrap();
            let from_native = native.send(&request).unwrap();
            eprintln!(
                "{user}\n  wasm:   {:?}\n  native: {:?}",
                wire(&from_wasm),
                wire(&from_native)
            );
            (user, from_wasm, from_native)
        })
        .collect();
    eprintln!("service calls: {}", service.requests().len());
    let mut limited = 0;
    for (user, from_wasm, from_native) in &exchanges {
        assert_eq!(
            wire(from_wasm),
            wire(from_native),
            "{user}: wasm filter (left) vs native ratelimit (right)"
        );
        limited += usize::from(from_native.status == 429);
    }
    assert_eq!(limited, 2);
    // Both asked the service for every request.
    assert_eq!(service.requests().len(), 8);
}
