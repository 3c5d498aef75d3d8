#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The policy filter's real wasm build in the harness, with mock policy services.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use prost::Message;

use common::{
    builder, cases, grpc_config, run_in_harness, sample_config, send_in_harness, start_in_harness,
    Verdict, TIMEOUT,
};
use wasmesh_harness::{CalloutReply, Harness, HarnessError, MetricValue, Plugin, StreamState};

fn counter(plugin: &Plugin, event: &str) -> u64 {
    match plugin.metric(&format!("ext_authz.{event}")) {
        Some(MetricValue::Counter(value)) => value,
        other => panic!("ext_authz.{event}: {other:?}"),
    }
}

fn get(plugin: &Plugin, path: &str, headers: &[(&str, &str)]) -> Verdict {
    send_in_harness(plugin, "GET", path, headers, "")
}

const ALICE: (&str, &str) = ("authorization", "Bearer alice");

#[test]
fn http_service_every_case_gets_its_verdict() {
    let plugin = start_in_harness(&sample_config());
    for case in cases() {
        assert_eq!(
            run_in_harness(&plugin, &case),
            case.expected,
            "{}",
            case.name
        );
    }
    let asked = cases().iter().filter(|case| case.asks_service).count();
    assert_eq!(plugin.http_callouts().len(), asked);
    assert_eq!(counter(&plugin, "cache_hit"), 1);
    assert_eq!(counter(&plugin, "local_denied"), 2);
    assert_eq!(counter(&plugin, "local_allowed"), 1);
    assert_eq!(counter(&plugin, "error"), 2);
    assert_eq!(counter(&plugin, "timeout"), 1);
}

#[test]
fn grpc_service_every_case_gets_its_verdict() {
    let plugin = start_in_harness(&grpc_config());
    for case in cases() {
        assert_eq!(
            run_in_harness(&plugin, &case),
            case.expected,
            "{}",
            case.name
        );
    }
    let calls = plugin.grpc_callouts();
    assert_eq!(
        calls.len(),
        cases().iter().filter(|c| c.asks_service).count()
    );
    assert!(calls.iter().all(|call| call.cluster == "authz-grpc"
        && call.service == "envoy.service.auth.v3.Authorization"
        && call.method == "Check"
        && call.timeout == TIMEOUT));
}

#[test]
fn the_check_carries_what_envoy_sends_an_http_service() {
    let plugin = start_in_harness(&sample_config());
    get(
        &plugin,
        "/orders?id=1",
        &[ALICE, ("x-tenant", "acme"), ("cookie", "secret")],
    );
    let check = &plugin.http_callouts()[0];
    assert_eq!(check.upstream, "authz");
    assert_eq!(check.timeout, TIMEOUT);
    assert_eq!(check.header(":path"), Some("/authz/orders?id=1"));
    assert_eq!(check.header(":method"), Some("GET"));
    assert_eq!(check.header(":authority"), Some("shop.example.com"));
    assert_eq!(check.header("authorization"), Some("Bearer alice"));
    assert_eq!(check.header("x-tenant"), Some("acme"));
    assert_eq!(check.header("x-authz-client"), Some("wasmesh"));
    assert_eq!(check.header("content-length"), Some("0"));
    assert_eq!(check.header("cookie"), None, "not an allowed header");
}

#[test]
fn decisions_expire_with_the_ttl_on_the_virtual_clock() {
    let plugin = start_in_harness(&sample_config());
    get(&plugin, "/orders", &[ALICE]);
    plugin.advance_clock(Duration::from_secs(29)).unwrap();
    get(&plugin, "/orders", &[ALICE]);
    assert_eq!(plugin.http_callouts().len(), 1, "still fresh at 29s");
    plugin.advance_clock(Duration::from_secs(1)).unwrap();
    get(&plugin, "/orders", &[ALICE]);
    assert_eq!(plugin.http_callouts().len(), 2, "expired at 30s");
    assert_eq!(
        (
            counter(&plugin, "cache_hit"),
            counter(&plugin, "cache_miss")
        ),
        (1, 2)
    );
}

#[test]
fn least_recently_used_decisions_are_evicted() {
    let config = sample_config().replace("\"max_entries\": 10000", "\"max_entries\": 2");
    let plugin = start_in_harness(&config);
    for path in ["/a", "/b", "/a", "/c", "/b", "/a"] {
        get(&plugin, path, &[ALICE]);
    }
    // /a hit once, /c evicted /b, /b evicted /a (LRU after /a's hit), /a asked again.
    let asked: Vec<String> = plugin
        .http_callouts()
        .iter()
        .map(|check| check.header(":path").unwrap().to_string())
        .collect();
    assert_eq!(
        asked,
        ["/authz/a", "/authz/b", "/authz/c", "/authz/b", "/authz/a"]
    );
    assert_eq!(counter(&plugin, "cache_evicted"), 3);
}

#[test]
fn requests_differing_only_in_a_keyed_attribute_are_checked_separately() {
    let plugin = start_in_harness(&sample_config());
    let first = get(&plugin, "/orders", &[ALICE, ("x-tenant", "acme")]);
    let other_tenant = get(&plugin, "/orders", &[ALICE, ("x-tenant", "blocked")]);
    assert!(matches!(first, Verdict::Forwarded { .. }));
    assert!(matches!(other_tenant, Verdict::Replied { status: 403, .. }));
    // An attribute outside the key does not split the cache.
    let unkeyed = get(
        &plugin,
        "/orders",
        &[ALICE, ("x-tenant", "acme"), ("accept", "x/y")],
    );
    assert_eq!(unkeyed, first);
    assert_eq!(plugin.http_callouts().len(), 2);
}

#[test]
fn connection_failure_fails_closed_open_or_static() {
    let down = Rc::new(Cell::new(false));
    let answer = |down: Rc<Cell<bool>>| {
        move |callout: &wasmesh_harness::HttpCallout| {
            if down.get() {
                CalloutReply::Failure
            } else {
                common::http_mock(callout)
            }
        }
    };
    // Fail closed (default): status_on_error.
    let closed = builder(&sample_config())
        .http_callout_handler(answer(down.clone()))
        .start()
        .unwrap();
    down.set(true);
    assert_eq!(
        get(&closed, "/orders", &[ALICE]),
        Verdict::Replied {
            status: 503,
            details: "ext_authz_error".into(),
            body: String::new(),
            reason: None,
            www_authenticate: None
        }
    );
    // Fail open, marking the request.
    let open_config = sample_config().replace(
        "\"status_on_error\"",
        "\"failure_mode_allow\": true, \"status_on_error\"",
    );
    let open = builder(&open_config)
        .http_callout_handler(answer(down.clone()))
        .start()
        .unwrap();
    let mut stream = open.http_stream();
    stream
        .request_headers(
            &[
                (":method", "GET"),
                (":path", "/orders"),
                (":authority", "shop"),
                ALICE,
            ],
            true,
        )
        .unwrap();
    assert_eq!(stream.request_state(), StreamState::Continued);
    assert_eq!(stream.local_reply(), None);
    assert_eq!(counter(&open, "failure_mode_allowed"), 1);
    stream.complete().unwrap();
    // Fail static: the last known decision, within the grace period.
    down.set(false);
    let fail_static = builder(&sample_config())
        .http_callout_handler(answer(down.clone()))
        .start()
        .unwrap();
    let allowed = get(&fail_static, "/orders", &[ALICE]);
    down.set(true);
    fail_static.advance_clock(Duration::from_secs(60)).unwrap();
    assert_eq!(get(&fail_static, "/orders", &[ALICE]), allowed);
    assert_eq!(counter(&fail_static, "fail_static_served"), 1);
    fail_static.advance_clock(Duration::from_secs(300)).unwrap();
    assert!(matches!(
        get(&fail_static, "/orders", &[ALICE]),
        Verdict::Replied { status: 503, .. }
    ));
    assert_eq!(counter(&fail_static, "error"), 2);
}

#[test]
fn a_timeout_is_counted_as_an_error() {
    let plugin = start_in_harness(&sample_config());
    let slow = get(&plugin, "/slow", &[ALICE]);
    assert!(matches!(slow, Verdict::Replied { status: 503, .. }));
    assert_eq!(counter(&plugin, "timeout"), 1);
    assert_eq!(counter(&plugin, "error"), 1);
    assert!(plugin.logs().iter().any(|entry| entry
        .message
        .contains("the authorization check failed: timed out after 500ms")));
}

#[test]
fn dry_run_lets_everything_through_but_counts() {
    let config = sample_config().replace(
        "\"status_on_error\"",
        "\"dry_run\": true, \"status_on_error\"",
    );
    let plugin = start_in_harness(&config);
    for case in cases() {
        let verdict = run_in_harness(&plugin, &case);
        assert!(
            matches!(verdict, Verdict::Forwarded { .. }),
            "{}: {verdict:?}",
            case.name
        );
    }
    let would_deny = cases()
        .iter()
        .filter(|case| matches!(case.expected, Verdict::Replied { .. }))
        .count() as u64;
    assert_eq!(counter(&plugin, "dry_run_denied"), would_deny);
    assert!(plugin.logs().iter().any(|entry| entry
        .message
        .contains("dry run: authorization service would deny with 401")));
}

#[test]
fn request_body_is_sent_with_the_check_and_limited() {
    let plugin = builder(&grpc_config())
        .allow_on_headers_stop_iteration(true)
        .start()
        .unwrap();
    let headers = [
        (":method", "POST"),
        (":path", "/orders"),
        (":authority", "shop"),
        ALICE,
    ];
    // A clean body: buffered, checked with the body, then forwarded whole.
    let mut stream = plugin.http_stream();
    stream.request_headers(&headers, false).unwrap();
    assert_eq!(stream.request_state(), StreamState::Paused);
    stream.request_body(b"{\"item\":", false).unwrap();
    assert!(plugin.grpc_callouts().is_empty(), "still buffering");
    stream.request_body(b" 7}", true).unwrap();
    assert_eq!(stream.request_state(), StreamState::Continued);
    assert_eq!(stream.request_body_now(), b"{\"item\": 7}");
    assert_eq!(stream.request_header("x-user").as_deref(), Some("alice"));
    let check = wasmesh_policy::proto::CheckRequest::decode(
        plugin.grpc_callouts()[0].messages[0].as_slice(),
    )
    .unwrap();
    let http = check.attributes.unwrap().request.unwrap().http.unwrap();
    assert_eq!(http.body, "{\"item\": 7}");
    assert_eq!(
        http.headers
            .get("x-envoy-auth-partial-body")
            .map(String::as_str),
        Some("false")
    );
    stream.complete().unwrap();
    // The body decides: denied.
    let mut evil = plugin.http_stream();
    evil.request_headers(&headers, false).unwrap();
    evil.request_body(b"evil plan", true).unwrap();
    assert_eq!(evil.local_reply().map(|reply| reply.status), Some(403));
    evil.complete().unwrap();
    // Over max_request_bytes: 413, no check.
    let mut big = plugin.http_stream();
    big.request_headers(&headers, false).unwrap();
    big.request_body(&[b'x'; 65], false).unwrap();
    let reply = big.local_reply().unwrap();
    assert_eq!(
        (reply.status, reply.details.as_str()),
        (413, "request_payload_too_large")
    );
    assert_eq!(plugin.grpc_callouts().len(), 2);
    big.complete().unwrap();
}

#[test]
fn decisions_are_shared_between_workers_when_configured() {
    let shared = sample_config().replace(
        "\"max_entries\": 10000",
        "\"max_entries\": 10000, \"shared\": true",
    );
    for (config, expected_checks) in [(sample_config(), 2), (shared, 1)] {
        let plugin = builder(&config).workers(2).start().unwrap();
        for worker in 0..2 {
            let mut stream = plugin.http_stream_on(worker);
            stream
                .request_headers(
                    &[
                        (":method", "GET"),
                        (":path", "/orders"),
                        (":authority", "shop"),
                        ALICE,
                    ],
                    true,
                )
                .unwrap();
            assert_eq!(stream.request_header("x-user").as_deref(), Some("alice"));
            stream.complete().unwrap();
        }
        assert_eq!(plugin.http_callouts().len(), expected_checks, "{config}");
    }
}

#[test]
fn a_bad_configuration_is_refused_with_the_path_in_the_logs() {
    let error = Harness::load(common::wasm())
        .unwrap()
        .config(r#"{"http_service": {"server_uri": {"uri": "x", "cluster": "a"}}, "clear_route_cache": true}"#)
        .start()
        .err()
        .unwrap();
    let HarnessError::ConfigRejected { logs } = &error else {
        panic!("expected a rejected configuration, got {error}");
    };
    assert!(
        logs.iter().any(
            |entry| entry.message.contains("clear_route_cache: not supported")
                && entry.message.contains("refuses to start")
        ),
        "{logs:?}"
    );
}

/// The load scenario of the issue: 20 users each making 10 requests, interleaved, so 90% of
/// the requests could be answered from the cache. The service must see a tenth of them (a
/// fifth with two workers that do not share their caches).
#[test]
fn load_with_a_90_percent_hit_rate_sends_a_tenth_of_the_traffic_to_the_service() {
    let tokens: Vec<String> = (0..20).map(|user| format!("Bearer user-{user}")).collect();
    for (workers, shared, expected_checks) in [(1, false, 20), (2, true, 20), (2, false, 40)] {
        let config = if shared {
            sample_config().replace(
                "\"max_entries\": 10000",
                "\"max_entries\": 10000, \"shared\": true",
            )
        } else {
            sample_config()
        };
        let plugin = builder(&config).workers(workers).start().unwrap();
        let mut requests = 0;
        for round in 0..10 {
            for (user, token) in tokens.iter().enumerate() {
                let mut stream = plugin.http_stream_on((round + user) % workers);
                stream
                    .request_headers(
                        &[
                            (":method", "GET"),
                            (":path", "/catalog"),
                            (":authority", "shop"),
                            ("authorization", token),
                        ],
                        true,
                    )
                    .unwrap();
                stream.complete().unwrap();
                requests += 1;
            }
        }
        let checks = plugin.http_callouts().len();
        let hits = counter(&plugin, "cache_hit");
        println!(
            "workers={workers} shared={shared}: {requests} requests, {checks} checks ({:.1}%), {hits} cache hits",
            100.0 * checks as f64 / requests as f64
        );
        assert_eq!(requests, 200);
        assert_eq!(checks, expected_checks, "workers={workers} shared={shared}");
        assert_eq!(hits as usize, requests - checks);
    }
}
