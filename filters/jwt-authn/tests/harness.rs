#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The real `wasm32-wasip1` build in the harness: the request table, remote key sets (pausing,
//! one fetch for many streams, failures, timeouts, retries, background refresh), stats and
//! configuration errors.

mod common;

use std::time::Duration;

use common::{
    cases, comparison_config, jwks_document, run_in_harness, start_in_harness, status_of, token,
    wasm, Verdict, HOST, JWKS_CLUSTER,
};
use serde_json::json;
use wasmesh_harness::{CalloutReply, Harness, HarnessError, HttpStream, Plugin, StreamState};

#[test]
fn every_case_of_the_table_gets_its_expected_verdict() {
    let plugin = start_in_harness(&comparison_config().to_string(), jwks_document());
    let cases = cases();
    assert!(cases.len() > 80, "{}", cases.len());
    for case in &cases {
        let verdict = run_in_harness(&plugin, case);
        assert_eq!(
            status_of(&verdict),
            case.expected_status,
            "{}: {verdict:?}",
            case.name
        );
        if let Verdict::Replied { details, body, .. } = &verdict {
            // Envoy replaces whitespace in response code details with `_`.
            let expected = format!("jwt_authn_access_denied{{{}}}", body.replace(' ', "_"));
            assert_eq!(details, &expected, "{}", case.name);
        }
    }
    // The key set was fetched once, by the first request that needed it.
    assert_eq!(plugin.http_callouts().len(), 1);
    let fetch = &plugin.http_callouts()[0];
    assert_eq!(fetch.upstream, JWKS_CLUSTER);
    assert_eq!(fetch.header(":path"), Some("/jwks.json"));
    assert_eq!(fetch.header(":authority"), Some("idp.example.com"));
    let counter = |name: &str| plugin.metric(name).and_then(|value| value.value());
    let denied = cases
        .iter()
        .filter(|case| case.expected_status != 200)
        .count();
    assert_eq!(
        counter("jwt_authn.denied"),
        Some(u64::try_from(denied).unwrap())
    );
    assert_eq!(
        counter("jwt_authn.allowed"),
        Some(u64::try_from(cases.len() - denied).unwrap())
    );
    assert_eq!(counter("jwt_authn.jwks_fetch_success"), Some(1));
    assert_eq!(counter("jwt_authn.cors_preflight_bypassed"), Some(1));
    assert!(counter("jwt_authn.denied_jwt_verification_failed").unwrap() > 10);
}

#[test]
fn verified_requests_carry_claims_and_lose_the_token() {
    let plugin = start_in_harness(&comparison_config().to_string(), jwks_document());
    let rs256 = token("RS256");
    let case = cases()
        .into_iter()
        .find(|case| case.name == "spoofed claim headers are replaced")
        .unwrap();
    let Verdict::Forwarded {
        path,
        authorization,
        payload,
        sub,
        level,
        ..
    } = run_in_harness(&plugin, &case)
    else {
        panic!("not forwarded");
    };
    assert_eq!(path, "/api");
    assert_eq!(authorization, None);
    assert_eq!(payload.as_deref(), rs256.split('.').nth(1));
    assert_eq!(sub.as_deref(), Some("user-1"));
    assert_eq!(level.as_deref(), Some("3"));
}

fn remote_plugin(remote: serde_json::Value) -> Plugin {
    let mut remote_jwks = json!({
        "http_uri": {"uri": "https://idp.example.com/keys", "cluster": JWKS_CLUSTER, "timeout": "2s"},
    });
    for (key, value) in remote.as_object().unwrap() {
        remote_jwks[key] = value.clone();
    }
    let config = json!({
        "providers": {"idp": {"issuer": "https://issuer.example.com", "remote_jwks": remote_jwks}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}],
    });
    Harness::load(wasm())
        .unwrap()
        .config(config.to_string())
        .cluster(JWKS_CLUSTER)
        .start()
        .unwrap()
}

fn send(plugin: &Plugin, alg: &str) -> HttpStream {
    let mut stream = plugin.http_stream();
    let bearer = format!("Bearer {}", token(alg));
    stream
        .request_headers(
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", HOST),
                (":path", "/orders"),
                ("authorization", &bearer),
            ],
            true,
        )
        .unwrap();
    stream
}

fn pending_token(plugin: &Plugin) -> u32 {
    let pending = plugin.pending_http_callouts();
    assert_eq!(pending.len(), 1, "{pending:?}");
    pending[0].token
}

#[test]
fn requests_wait_for_the_first_fetch_and_share_it() {
    let plugin = remote_plugin(json!({}));
    let first = send(&plugin, "RS256");
    let second = send(&plugin, "ES256");
    assert_eq!(first.request_state(), StreamState::Paused);
    assert_eq!(second.request_state(), StreamState::Paused);
    let fetch = pending_token(&plugin);
    plugin
        .respond_http_callout(fetch, CalloutReply::ok(200, jwks_document()))
        .unwrap();
    for stream in [&first, &second] {
        assert_eq!(stream.request_state(), StreamState::Continued);
        assert_eq!(stream.local_reply(), None);
        assert_eq!(stream.request_header("authorization"), None);
    }
    // Cached now: the next request does not wait.
    let third = send(&plugin, "EdDSA");
    assert_eq!(third.request_state(), StreamState::Continued);
    assert_eq!(plugin.http_callouts().len(), 1);
    for stream in [first, second, third] {
        stream.complete().unwrap();
    }
}

#[test]
fn a_failed_fetch_fails_closed_with_a_clear_401() {
    let plugin = remote_plugin(json!({}));
    let first = send(&plugin, "RS256");
    let second = send(&plugin, "RS256");
    plugin
        .respond_http_callout(pending_token(&plugin), CalloutReply::Failure)
        .unwrap();
    for stream in [&first, &second] {
        let reply = stream.local_reply().unwrap();
        assert_eq!(reply.status, 401);
        assert_eq!(reply.body, b"Jwks remote fetch is failed");
        assert_eq!(
            reply.details,
            "jwt_authn_access_denied{Jwks_remote_fetch_is_failed}"
        );
    }
    assert_eq!(
        plugin
            .metric("jwt_authn.jwks_fetch_failed")
            .and_then(|v| v.value()),
        Some(1)
    );
    assert!(plugin
        .logs()
        .iter()
        .any(|entry| entry.message.contains("JWKS fetch failed")));
    // The next request tries again, and a good answer lets it through.
    let third = send(&plugin, "RS256");
    plugin
        .respond_http_callout(
            pending_token(&plugin),
            CalloutReply::ok(200, jwks_document()),
        )
        .unwrap();
    assert_eq!(third.request_state(), StreamState::Continued);
}

#[test]
fn a_fetch_that_times_out_fails_closed() {
    let plugin = remote_plugin(json!({}));
    let stream = send(&plugin, "RS256");
    plugin.advance_clock(Duration::from_millis(1999)).unwrap();
    assert_eq!(stream.request_state(), StreamState::Paused);
    plugin.advance_clock(Duration::from_millis(1)).unwrap();
    let reply = stream.local_reply().unwrap();
    assert_eq!(
        (reply.status, reply.body.as_slice()),
        (401, &b"Jwks remote fetch is failed"[..])
    );
}

#[test]
fn an_invalid_key_set_fails_closed() {
    let plugin = remote_plugin(json!({}));
    let stream = send(&plugin, "RS256");
    plugin
        .respond_http_callout(pending_token(&plugin), CalloutReply::ok(200, "<html>"))
        .unwrap();
    assert_eq!(
        stream.local_reply().unwrap().body,
        b"Jwks remote fetch is failed"
    );
}

#[test]
fn failed_fetches_are_retried_with_backoff_on_the_root_tick() {
    let plugin = remote_plugin(json!({
        "retry_policy": {"num_retries": 2, "retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"}},
    }));
    assert_eq!(plugin.tick_period(0), Some(Duration::from_millis(100)));
    let stream = send(&plugin, "PS384");
    plugin
        .respond_http_callout(pending_token(&plugin), CalloutReply::ok(503, "busy"))
        .unwrap();
    assert_eq!(
        stream.request_state(),
        StreamState::Paused,
        "waiting for the retry"
    );
    plugin.advance_clock(Duration::from_millis(100)).unwrap();
    plugin
        .respond_http_callout(pending_token(&plugin), CalloutReply::Failure)
        .unwrap();
    assert_eq!(stream.request_state(), StreamState::Paused);
    plugin.advance_clock(Duration::from_millis(200)).unwrap();
    plugin
        .respond_http_callout(
            pending_token(&plugin),
            CalloutReply::ok(200, jwks_document()),
        )
        .unwrap();
    assert_eq!(stream.request_state(), StreamState::Continued);
    assert_eq!(plugin.http_callouts().len(), 3);
}

#[test]
fn async_fetch_loads_keys_before_requests_and_refreshes_them() {
    let plugin = remote_plugin(json!({"async_fetch": {}, "cache_duration": "60s"}));
    plugin.advance_clock(Duration::from_secs(1)).unwrap();
    // The worker's VM and, as in Envoy, the VM on its main thread each fetch.
    let pending = plugin.pending_http_callouts();
    assert_eq!(pending.len(), 2, "{pending:?}");
    for fetch in pending {
        plugin
            .respond_http_callout_on(
                fetch.worker,
                fetch.token,
                CalloutReply::ok(200, jwks_document()),
            )
            .unwrap();
    }
    let stream = send(&plugin, "ES384");
    assert_eq!(stream.request_state(), StreamState::Continued);
    plugin.advance_clock(Duration::from_secs(60)).unwrap();
    assert_eq!(
        plugin.pending_http_callouts().len(),
        2,
        "refreshed in the background"
    );
    // While the refresh is in flight, the old keys keep serving.
    let during = send(&plugin, "ES384");
    assert_eq!(during.request_state(), StreamState::Continued);
}

#[test]
fn each_worker_fetches_its_own_keys() {
    let config = json!({
        "providers": {"idp": {"remote_jwks": {"http_uri": {"uri": "https://idp/k", "cluster": JWKS_CLUSTER, "timeout": "1s"}}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}],
    });
    let jwks = jwks_document();
    let plugin = Harness::load(wasm())
        .unwrap()
        .config(config.to_string())
        .workers(2)
        .http_callout_handler(move |_| CalloutReply::ok(200, jwks.clone()))
        .start()
        .unwrap();
    for worker in 0..2 {
        let mut stream = plugin.http_stream_on(worker);
        let bearer = format!("Bearer {}", token("HS512"));
        stream
            .request_headers(
                &[
                    (":method", "GET"),
                    (":authority", HOST),
                    (":path", "/"),
                    ("authorization", &bearer),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            stream.request_state(),
            StreamState::Continued,
            "worker {worker}"
        );
    }
    assert_eq!(plugin.http_callouts().len(), 2);
}

#[test]
fn bad_configuration_is_refused_with_its_json_path() {
    for (config, expected) in [
        (
            json!({"providers": {"p": {"local_jwks": {"inline_string": "{}"}}}}),
            "providers.p.local_jwks: invalid JWKS",
        ),
        (
            json!({"providers": {"p": {"local_jwks": {"filename": "/etc/jwks"}}}}),
            "providers.p.local_jwks.filename",
        ),
        (
            json!({"rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "x"}}]}),
            "rules[0].requires.provider_name",
        ),
    ] {
        let error = Harness::load(wasm())
            .unwrap()
            .config(config.to_string())
            .start()
            .err()
            .unwrap();
        let HarnessError::ConfigRejected { logs } = error else {
            panic!("expected a rejected configuration, got {error}");
        };
        assert!(
            logs.iter().any(|entry| entry.message.contains(expected)),
            "{expected}: {logs:?}"
        );
    }
}
