#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The filter's real wasm build, driven through the harness like Envoy drives it.

mod common;

use common::{
    cases, istio_cases, istio_config, jwt_vectors, run_in_harness, sample_config, start_in_harness,
    Verdict,
};
use wasmesh_harness::{Harness, HarnessError, LogLevel, MetricValue, PropertyValue};

fn counter(plugin: &wasmesh_harness::Plugin, name: &str) -> Option<u64> {
    plugin.metric(name).and_then(|value| value.value())
}

#[test]
fn envoy_format_sample_gives_every_expected_verdict_and_counts_them() {
    let plugin = start_in_harness(&sample_config());
    let vectors = jwt_vectors();
    let cases = cases();

    for case in &cases {
        assert_eq!(
            run_in_harness(&plugin, &vectors, case),
            case.expected,
            "{}",
            case.name
        );
    }

    let allowed = cases.iter().filter(|c| c.expected.is_allowed()).count() as u64;
    let shadow_denied = cases
        .iter()
        .filter(|c| c.headers.iter().any(|(name, _)| *name == "x-debug"))
        .count() as u64;
    assert_eq!(counter(&plugin, "rbac.allowed"), Some(allowed));
    assert_eq!(
        counter(&plugin, "rbac.denied"),
        Some(cases.len() as u64 - allowed)
    );
    assert_eq!(counter(&plugin, "rbac.shadow_denied"), Some(shadow_denied));
    // The NUL-path request is refused before any policy runs, shadow ones included.
    assert_eq!(
        counter(&plugin, "rbac.shadow_allowed"),
        Some(cases.len() as u64 - shadow_denied - 1)
    );
    assert_eq!(
        counter(&plugin, "rbac.policy.admins-by-jwt-group.allowed"),
        Some(2)
    );
    assert_eq!(
        counter(&plugin, "rbac.policy.users-with-jwt.allowed"),
        Some(1)
    );
    assert_eq!(
        counter(&plugin, "rbac.policy.no-debug-header.shadow_denied"),
        Some(shadow_denied)
    );
    assert!(plugin
        .logs()
        .iter()
        .any(|entry| entry.level == LogLevel::Info
            && entry
                .message
                .contains("shadow denied, matched policy no-debug-header")));
}

#[test]
fn istio_sample_gives_every_expected_verdict_and_counts_audits_and_dry_runs() {
    let plugin = start_in_harness(&istio_config());
    let vectors = jwt_vectors();
    let cases = istio_cases();

    for case in &cases {
        assert_eq!(
            run_in_harness(&plugin, &vectors, case),
            case.expected,
            "{}",
            case.name
        );
    }

    let writes = cases
        .iter()
        .filter(|c| c.expected != Verdict::bad_path())
        .filter(|c| matches!(c.method, "POST" | "PUT" | "DELETE"))
        .count() as u64;
    assert_eq!(counter(&plugin, "rbac.logged"), Some(writes));
    assert_eq!(counter(&plugin, "rbac.shadow_denied"), Some(1));
    assert_eq!(
        counter(
            &plugin,
            "rbac.policy.ns[shop]-policy[deny-admin-paths]-rule[0].denied"
        ),
        Some(
            cases
                .iter()
                .filter(|c| c.expected
                    == Verdict::forbidden("ns[shop]-policy[deny-admin-paths]-rule[0]"))
                .count() as u64
        )
    );
}

#[test]
fn connection_properties_drive_port_sni_and_peer_rules() {
    let config = r#"{"rules": {"action": "ALLOW", "policies": {
        "mesh-client-on-8443": {
          "permissions": [{"and_rules": {"rules": [
            {"destination_port": 8443},
            {"requested_server_name": {"exact": "api.example.com"}},
            {"destination_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}}]}}],
          "principals": [{"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/shop/sa/web"}}}]
        },
        "ops-port-range": {
          "permissions": [{"destination_port_range": {"start": 9000, "end": 9100}}],
          "principals": [{"direct_remote_ip": {"address_prefix": "192.168.0.0", "prefix_len": 16}}]
        }
    }}}"#;
    let plugin = start_in_harness(config);
    let send = |properties: &[(&[&str], PropertyValue)]| {
        let mut stream = plugin.http_stream();
        for (path, value) in properties {
            stream.property(path, value.clone());
        }
        stream
            .request_headers(
                &[(":method", "GET"), (":path", "/"), (":authority", "x")],
                true,
            )
            .unwrap();
        let allowed = stream.local_reply().is_none();
        stream.complete().unwrap();
        allowed
    };
    let mesh = |destination: &str,
                sni: &str,
                peer: &str|
     -> Vec<(&'static [&'static str], PropertyValue)> {
        vec![
            (&["destination", "address"], destination.into()),
            (&["connection", "requested_server_name"], sni.into()),
            (&["connection", "mtls"], true.into()),
            (&["connection", "uri_san_peer_certificate"], peer.into()),
        ]
    };
    let web = "spiffe://cluster.local/ns/shop/sa/web";

    assert!(send(&mesh("10.1.2.3:8443", "api.example.com", web)));
    assert!(!send(&mesh("10.1.2.3:8080", "api.example.com", web)));
    assert!(!send(&mesh("10.1.2.3:8443", "other.example.com", web)));
    assert!(!send(&mesh("172.16.0.1:8443", "api.example.com", web)));
    assert!(!send(&mesh(
        "10.1.2.3:8443",
        "api.example.com",
        "spiffe://cluster.local/ns/shop/sa/evil"
    )));
    // No TLS peer at all.
    assert!(!send(&[
        (&["destination", "address"], "10.1.2.3:8443".into()),
        (
            &["connection", "requested_server_name"],
            "api.example.com".into()
        ),
    ]));
    assert!(send(&[
        (&["destination", "address"], "10.0.0.1:9050".into()),
        (&["source", "address"], "192.168.7.7:51000".into()),
    ]));
    assert!(!send(&[
        (&["destination", "address"], "10.0.0.1:9100".into()),
        (&["source", "address"], "192.168.7.7:51000".into()),
    ]));
    assert!(!send(&[
        (&["destination", "address"], "10.0.0.1:9050".into()),
        (&["source", "address"], "[2001:db8::1]:51000".into()),
    ]));
}

#[test]
fn bad_configurations_are_refused_with_the_json_path_in_the_log() {
    for (config, path) in [
        (
            r#"{"rules": {"policies": {"p": {"permissions": [{"any": true}], "principals": [{"any": true}], "condition": {}}}}}"#,
            "rules.policies.p.condition",
        ),
        (
            r#"{"authorization_policies": [{"metadata": {"name": "x"}, "spec": {"selector": {}}}]}"#,
            "authorization_policies[0]",
        ),
        (r#"{"shadow_rule": {}}"#, "shadow_rule"),
    ] {
        let error = Harness::load(common::wasm())
            .unwrap()
            .config(config)
            .start()
            .err()
            .unwrap();
        let HarnessError::ConfigRejected { logs } = &error else {
            panic!("expected the configuration to be rejected, got {error}");
        };
        assert!(
            logs.iter()
                .any(|entry| entry.message.contains(path)
                    && entry.message.contains("refuses to start")),
            "{config}: {logs:?}"
        );
    }
}

#[test]
fn forwarded_path_is_the_normalized_one_when_asked() {
    let config = r#"{"rules": {"action": "DENY", "policies": {}},
                     "normalization": {"forward_normalized_path": true}}"#;
    let plugin = start_in_harness(config);
    let mut stream = plugin.http_stream();

    stream
        .request_headers(
            &[
                (":method", "GET"),
                (":path", "/a/./b/../c//d%2Fe?q=%2F"),
                (":authority", "x"),
            ],
            true,
        )
        .unwrap();

    assert_eq!(stream.local_reply(), None);
    assert_eq!(
        stream.request_header(":path").as_deref(),
        Some("/a/c/d/e?q=%2F")
    );
    stream.complete().unwrap();
    assert_eq!(plugin.metric("rbac.allowed"), Some(MetricValue::Counter(1)));
}
