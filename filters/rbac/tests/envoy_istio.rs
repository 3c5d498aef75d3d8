#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The Istio-format sample (`AuthorizationPolicy` input) in a real Envoy (V8) behind Envoy's
//! jwt_authn, against the harness: every case gets the same verdict from both, the bypass
//! corpus is refused by both, and both count the same. Set `WASMESH_SKIP_ENVOY=1` to skip.

mod common;

use common::envoy::{request_for, start_wasm_envoy, verdict_of};
use common::{
    istio_bypass_controls, istio_bypass_corpus, istio_cases, istio_config, jwt_vectors,
    run_in_harness, start_in_harness, Verdict,
};
use wasmesh_envoy::{self as envoy, TestServer};

#[test]
fn istio_policies_in_envoy_agree_with_the_harness_and_resist_the_bypass_corpus() {
    if envoy::skip_requested() {
        return;
    }
    let vectors = jwt_vectors();
    let upstream = TestServer::echo().unwrap();
    let envoy = start_wasm_envoy(&upstream, &vectors, &istio_config());
    let plugin = start_in_harness(&istio_config());
    let cases = istio_cases();

    for case in &cases {
        let in_harness = run_in_harness(&plugin, &vectors, case);
        let in_envoy = verdict_of(&envoy.send(&request_for(case, &vectors)).unwrap());
        assert_eq!(
            in_envoy, in_harness,
            "{}: Envoy and the harness disagree",
            case.name
        );
        assert_eq!(in_envoy, case.expected, "{}", case.name);
    }

    // Both count the same (before the corpus: Envoy's codec answers some of its requests, such
    // as those with a fragment, with a 400 before any filter runs).
    for name in [
        "rbac.allowed",
        "rbac.denied",
        "rbac.logged",
        "rbac.not_logged",
        "rbac.shadow_allowed",
        "rbac.shadow_denied",
        "rbac.policy.ns[shop]-policy[deny-admin-paths]-rule[0].denied",
        "rbac.policy.ns[shop]-policy[allow-shop]-rule[1].allowed",
        "rbac.policy.ns[shop]-policy[allow-shop]-rule[3].allowed",
    ] {
        let in_harness = plugin.metric(name).and_then(|value| value.value());
        assert_eq!(envoy.wasm_metric(name).unwrap(), in_harness, "{name}");
    }

    let corpus = istio_bypass_corpus();
    let mut bypasses = Vec::new();
    for attack in &corpus {
        let in_harness = run_in_harness(&plugin, &vectors, attack);
        let response = envoy.send(&request_for(attack, &vectors)).unwrap();
        // A bypass is a request that reached the upstream, in either implementation.
        if in_harness.is_allowed() || response.response_code_details().is_none() {
            bypasses.push((attack.name, attack.path, attack.authority, response.status));
        }
        assert!(
            matches!(response.status, 400 | 403),
            "{}: {}",
            attack.name,
            response.status
        );
    }
    assert!(corpus.len() >= 30, "{}", corpus.len());
    assert_eq!(bypasses, Vec::new(), "bypasses of {} attacks", corpus.len());
    for control in istio_bypass_controls() {
        assert_eq!(
            run_in_harness(&plugin, &vectors, &control),
            Verdict::Allowed,
            "{}",
            control.name
        );
        assert_eq!(
            verdict_of(&envoy.send(&request_for(&control, &vectors)).unwrap()),
            Verdict::Allowed,
            "{}",
            control.name
        );
    }
}
