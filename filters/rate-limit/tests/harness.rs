#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The filter's real wasm build in the harness: exactness across worker VMs, the sample
//! configuration's verdicts, bounded state, and global mode against a mock rate limit service
//! speaking real protobuf (`prost`).

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::rls::{self, RateLimitResponse};
use common::{
    admitted_on, builder, local_config, run_in_harness, sample_cases, sample_config, start,
};
use prost::Message;
use wasmesh_harness::{GrpcReply, HarnessError, MetricValue, Plugin};
use wasmesh_rate_limit::bucket::BucketQuota;
use wasmesh_rate_limit::config::{Config, TokenBucket};
use wasmesh_rate_limit::local::LocalLimiter;

const WORKERS: usize = 8;

/// Sends `requests` requests round-robin over the workers, one every `interval` of virtual
/// time (the first at the start), and counts the admitted ones.
fn admitted_over_time(plugin: &Plugin, requests: usize, interval: Duration) -> u64 {
    let mut admitted = 0;
    for index in 0..requests {
        if index > 0 {
            plugin.advance_clock(interval).unwrap();
        }
        admitted += u64::from(admitted_on(plugin, index % plugin.workers()));
    }
    admitted
}

struct Quota {
    max_tokens: u32,
    tokens_per_fill: u32,
    fill_interval: &'static str,
    interval: Duration,
    requests: usize,
}

impl Quota {
    fn bound(&self) -> u64 {
        let seconds: f64 = self.fill_interval.trim_end_matches('s').parse().unwrap();
        let bucket = TokenBucket {
            max_tokens: self.max_tokens,
            tokens_per_fill: Some(self.tokens_per_fill),
            fill_interval: Duration::from_secs_f64(seconds),
        };
        // GCRA bound: burst + floor(span / period), span = time of the last request.
        BucketQuota::new(&bucket)
            .unwrap()
            .admitted_bound(self.interval * (self.requests as u32 - 1))
    }
}

const QUOTAS: [Quota; 4] = [
    // 10 burst, 1 per second; a request every 100ms for 19.9s: 10 + 19.
    Quota {
        max_tokens: 10,
        tokens_per_fill: 1,
        fill_interval: "1s",
        interval: Duration::from_millis(100),
        requests: 200,
    },
    // No burst beyond one, 5 per second: 1 + 24.
    Quota {
        max_tokens: 1,
        tokens_per_fill: 5,
        fill_interval: "1s",
        interval: Duration::from_millis(50),
        requests: 100,
    },
    // 50 burst, 10 per 2s (one per 200ms); 1000 requests, one per 10ms: 50 + 49.
    Quota {
        max_tokens: 50,
        tokens_per_fill: 10,
        fill_interval: "2s",
        interval: Duration::from_millis(10),
        requests: 1000,
    },
    // 3 per 0.3s (one per 100ms) with a period that does not divide the arrival grid (70ms).
    Quota {
        max_tokens: 3,
        tokens_per_fill: 3,
        fill_interval: "0.3s",
        interval: Duration::from_millis(70),
        requests: 300,
    },
];

#[test]
fn eight_workers_sharing_data_admit_exactly_the_gcra_bound() {
    for quota in &QUOTAS {
        let config = local_config(
            quota.max_tokens,
            quota.tokens_per_fill,
            quota.fill_interval,
            "SHARED",
        );
        let plugin = start(&config, WORKERS);
        let admitted = admitted_over_time(&plugin, quota.requests, quota.interval);
        assert_eq!(
            admitted,
            quota.bound(),
            "{} tokens, {} per {}",
            quota.max_tokens,
            quota.tokens_per_fill,
            quota.fill_interval
        );
        assert_eq!(
            plugin.metric("edge.http_local_rate_limit.ok"),
            Some(MetricValue::Counter(admitted))
        );
        assert_eq!(
            plugin.metric("edge.http_local_rate_limit.enforced"),
            Some(MetricValue::Counter(quota.requests as u64 - admitted))
        );
        assert_eq!(
            plugin.metric("edge.http_local_rate_limit.shared_state_error"),
            Some(MetricValue::Counter(0))
        );
    }
}

#[test]
fn per_worker_state_admits_up_to_workers_times_the_limit() {
    for quota in &QUOTAS {
        let shared = start(
            &local_config(
                quota.max_tokens,
                quota.tokens_per_fill,
                quota.fill_interval,
                "SHARED",
            ),
            WORKERS,
        );
        let per_worker = start(
            &local_config(
                quota.max_tokens,
                quota.tokens_per_fill,
                quota.fill_interval,
                "WORKER",
            ),
            WORKERS,
        );
        let exact = admitted_over_time(&shared, quota.requests, quota.interval);
        let loose = admitted_over_time(&per_worker, quota.requests, quota.interval);
        // Every worker grants its own burst: at least `workers` bursts get through.
        assert!(
            loose >= WORKERS as u64 * u64::from(quota.max_tokens).min(quota.requests as u64 / 8),
            "{loose}"
        );
        assert!(loose > exact, "per-worker {loose} vs shared {exact}");
    }
}

#[test]
fn a_burst_at_one_instant_admits_max_tokens_in_total() {
    for (scope, expected) in [("SHARED", 7), ("WORKER", 7 * WORKERS as u64)] {
        let plugin = start(&local_config(7, 1, "3600s", scope), WORKERS);
        let admitted: u64 = (0..200)
            .map(|index| u64::from(admitted_on(&plugin, index % WORKERS)))
            .sum();
        assert_eq!(admitted, expected, "{scope}");
    }
}

#[test]
fn sample_configuration_gives_the_expected_verdicts() {
    let plugin = start(&sample_config(), 2);
    for (name, headers, expected) in sample_cases() {
        assert_eq!(run_in_harness(&plugin, &headers), expected, "{name}");
    }
    assert_eq!(
        plugin.metric("http_local_rate_limiter.http_local_rate_limit.enforced"),
        Some(MetricValue::Counter(2))
    );
}

#[test]
fn distinct_keys_never_grow_shared_data_beyond_the_table() {
    let config = sample_config().replace(
        "\"max_dynamic_descriptors\": 1000",
        "\"max_dynamic_descriptors\": 16",
    );
    let plugin = start(&config, 2);
    for client in 0..300 {
        let key = format!("client-{client}");
        run_in_harness(&plugin, &[("x-api-key", key.as_str())]);
        plugin.advance_clock(Duration::from_millis(10)).unwrap();
    }
    // The complete footprint, as the filter's own limiter computes it, all created at startup.
    let limiter =
        LocalLimiter::new(&wasmesh_sdk::config::load::<Config>(config.as_bytes()).unwrap());
    let keys = limiter.shared_keys();
    assert_eq!(keys.len(), 1 + 16 + 1);
    for key in &keys {
        assert!(plugin.shared_data(key).is_some(), "{key}");
    }
    let table = keys.iter().find(|key| key.ends_with(".15")).unwrap();
    assert!(plugin.shared_data(&table.replace(".15", ".16")).is_none());
    assert!(
        matches!(
            plugin.metric("http_local_rate_limiter.http_local_rate_limit.descriptor_evicted"),
            Some(MetricValue::Counter(evicted)) if evicted > 200
        ),
        "{:?}",
        plugin.metric("http_local_rate_limiter.http_local_rate_limit.descriptor_evicted")
    );
}

#[test]
fn a_full_bucket_slot_is_reused_without_eviction() {
    let config = sample_config().replace(
        "\"max_dynamic_descriptors\": 1000",
        "\"max_dynamic_descriptors\": 1",
    );
    let plugin = start(&config, 1);
    for _ in 0..3 {
        run_in_harness(&plugin, &[("x-api-key", "alice")]);
    }
    assert_eq!(
        run_in_harness(&plugin, &[("x-api-key", "alice")]).status,
        429
    );
    // A minute later alice's bucket is full again: bob takes the only slot, no eviction.
    plugin.advance_clock(Duration::from_secs(60)).unwrap();
    assert_eq!(run_in_harness(&plugin, &[("x-api-key", "bob")]).status, 200);
    assert_eq!(
        plugin.metric("http_local_rate_limiter.http_local_rate_limit.descriptor_evicted"),
        Some(MetricValue::Counter(0))
    );
}

#[test]
fn a_bad_configuration_is_refused_with_its_json_path() {
    let error = builder(
        r#"{"stat_prefix": "x", "token_bucket": {"max_tokens": 0, "fill_interval": "1s"}}"#,
    )
    .start()
    .err()
    .unwrap();
    let HarnessError::ConfigRejected { logs } = &error else {
        panic!("expected a rejected configuration, got {error}");
    };
    assert!(
        logs.iter().any(|entry| entry
            .message
            .contains("token_bucket.max_tokens: must be greater than 0")),
        "{logs:?}"
    );
}

// ---- global mode ----

const GLOBAL: &str = r#"{
  "domain": "edge",
  "stat_prefix": "front",
  "timeout": "0.1s",
  "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}}, "transport_api_version": "V3"},
  "rate_limits": [
    {"actions": [{"generic_key": {"descriptor_value": "api"}}, {"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]},
    {"actions": [{"remote_address": {}}], "hits_addend": {"number": 2}}
  ],
  "enable_x_ratelimit_headers": "DRAFT_VERSION_03"
}"#;

/// What the mock service saw, and how it answers.
#[derive(Default)]
struct Service {
    seen: Vec<rls::RateLimitRequest>,
}

fn global_plugin(
    config: &str,
    answer: impl Fn(&rls::RateLimitRequest) -> GrpcReply + 'static,
) -> (Plugin, Rc<RefCell<Service>>) {
    let service = Rc::new(RefCell::new(Service::default()));
    let recorder = Rc::clone(&service);
    let plugin = builder(config)
        .cluster("ratelimit")
        .workers(2)
        .grpc_callout_handler(move |call| {
            assert_eq!(call.cluster, "ratelimit");
            assert_eq!(call.service, "envoy.service.ratelimit.v3.RateLimitService");
            assert_eq!(call.method, "ShouldRateLimit");
            let request = rls::decode_request(&call.messages[0]);
            let reply = answer(&request);
            recorder.borrow_mut().seen.push(request);
            reply
        })
        .start()
        .unwrap();
    (plugin, service)
}

fn respond(response: RateLimitResponse) -> GrpcReply {
    GrpcReply::Response(response.encode_to_vec())
}

fn user_request(plugin: &Plugin, user: &str) -> wasmesh_harness::HttpStream {
    let mut stream = plugin.http_stream();
    stream.property(&["source", "address"], "192.0.2.7:4242");
    stream
        .request_headers(
            &[
                (":method", "GET"),
                (":path", "/"),
                (":authority", "shop"),
                ("x-user", user),
            ],
            true,
        )
        .unwrap();
    stream
}

#[test]
fn global_mode_sends_descriptors_and_applies_an_ok_answer() {
    let (plugin, service) = global_plugin(GLOBAL, |_| {
        respond(RateLimitResponse {
            overall_code: rls::OK,
            statuses: vec![rls::DescriptorStatus {
                code: rls::OK,
                current_limit: Some(rls::RateLimit {
                    requests_per_unit: 10,
                    unit: rls::MINUTE,
                    name: "per-user".into(),
                }),
                limit_remaining: 7,
                duration_until_reset: Some(rls::ProtoDuration {
                    seconds: 42,
                    nanos: 0,
                }),
            }],
            response_headers_to_add: vec![rls::header("x-quota-tier", "gold")],
            request_headers_to_add: vec![rls::header("x-ratelimit-checked", "yes")],
            raw_body: Vec::new(),
        })
    });
    let mut stream = user_request(&plugin, "alice");
    assert_eq!(stream.local_reply(), None);
    assert_eq!(
        stream.request_header("x-ratelimit-checked").as_deref(),
        Some("yes")
    );
    stream
        .response_headers(&[(":status", "200")], true)
        .unwrap();
    assert_eq!(
        stream.response_header("x-quota-tier").as_deref(),
        Some("gold")
    );
    assert_eq!(
        stream.response_header("x-ratelimit-limit").as_deref(),
        Some("10, 10;w=60;name=\"per-user\"")
    );
    assert_eq!(
        stream.response_header("x-ratelimit-remaining").as_deref(),
        Some("7")
    );
    assert_eq!(
        stream.response_header("x-ratelimit-reset").as_deref(),
        Some("42")
    );
    stream.complete().unwrap();

    let seen = &service.borrow().seen;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].domain, "edge");
    assert_eq!(
        rls::descriptors(&seen[0]),
        vec!["generic_key=api,user=alice", "remote_address=192.0.2.7"]
    );
    assert_eq!(seen[0].descriptors[0].hits_addend, None);
    assert_eq!(
        seen[0].descriptors[1].hits_addend,
        Some(rls::UInt64Value { value: 2 })
    );
    assert_eq!(
        plugin.metric("front.ratelimit.ok"),
        Some(MetricValue::Counter(1))
    );
}

#[test]
fn global_over_limit_is_answered_locally_with_the_service_headers_and_body() {
    let (plugin, _) = global_plugin(GLOBAL, |request| {
        let over = rls::descriptors(request)[0].ends_with("user=mallory");
        respond(RateLimitResponse {
            overall_code: if over { rls::OVER_LIMIT } else { rls::OK },
            response_headers_to_add: vec![rls::header("retry-after", "30")],
            raw_body: b"slow down\n".to_vec(),
            ..RateLimitResponse::default()
        })
    });
    let stream = user_request(&plugin, "mallory");
    let reply = stream.local_reply().expect("over limit is denied");
    assert_eq!(reply.status, 429);
    assert_eq!(reply.details, "request_rate_limited");
    assert_eq!(reply.body, b"slow down\n");
    let header = |name: &str| {
        reply
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("retry-after"), Some("30"));
    assert_eq!(header("x-envoy-ratelimited"), Some("true"));
    stream.complete().unwrap();
    let stream = user_request(&plugin, "alice");
    assert_eq!(stream.local_reply(), None);
    assert_eq!(
        plugin.metric("front.ratelimit.over_limit"),
        Some(MetricValue::Counter(1))
    );
}

#[test]
fn global_service_errors_and_timeouts_fail_open_or_closed() {
    // Fail open (Envoy's default): an error status, then a timeout.
    let (plugin, _) = global_plugin(GLOBAL, |request| {
        if rls::descriptors(request)[0].ends_with("user=slow") {
            GrpcReply::Timeout
        } else {
            GrpcReply::Error {
                status: 14,
                message: "no healthy upstream".into(),
            }
        }
    });
    let stream = user_request(&plugin, "alice");
    assert_eq!(stream.local_reply(), None);
    let slow = user_request(&plugin, "slow");
    assert_eq!(slow.local_reply(), None);
    assert_eq!(plugin.pending_grpc_callouts().len(), 1);
    assert_eq!(
        plugin.pending_grpc_callouts()[0].timeout,
        Duration::from_millis(100)
    );
    plugin.advance_clock(Duration::from_millis(100)).unwrap();
    assert_eq!(slow.local_reply(), None);
    assert!(plugin.pending_grpc_callouts().is_empty());
    assert_eq!(
        plugin.metric("front.ratelimit.error"),
        Some(MetricValue::Counter(2))
    );
    assert_eq!(
        plugin.metric("front.ratelimit.failure_mode_allowed"),
        Some(MetricValue::Counter(2))
    );

    // Fail closed.
    let closed = GLOBAL.replace("\"domain\"", "\"failure_mode_deny\": true, \"domain\"");
    let (plugin, _) = global_plugin(&closed, |_| GrpcReply::Timeout);
    let stream = user_request(&plugin, "alice");
    assert_eq!(stream.local_reply(), None, "still waiting for the service");
    plugin.advance_clock(Duration::from_millis(99)).unwrap();
    assert_eq!(stream.local_reply(), None);
    plugin.advance_clock(Duration::from_millis(1)).unwrap();
    let reply = stream.local_reply().expect("timed out: fail closed");
    assert_eq!(
        (reply.status, reply.details.as_str()),
        (500, "rate_limiter_error")
    );
    assert_eq!(
        plugin.metric("front.ratelimit.failure_mode_allowed"),
        Some(MetricValue::Counter(0))
    );
}

#[test]
fn a_garbage_answer_is_a_service_error() {
    let closed = GLOBAL.replace("\"domain\"", "\"failure_mode_deny\": true, \"domain\"");
    let (plugin, _) = global_plugin(&closed, |_| GrpcReply::Response(vec![0x12, 0xff, 0x01]));
    let stream = user_request(&plugin, "alice");
    let reply = stream.local_reply().expect("fail closed");
    assert_eq!(reply.details, "rate_limiter_error");
    assert_eq!(
        plugin.metric("front.ratelimit.error"),
        Some(MetricValue::Counter(1))
    );
}
