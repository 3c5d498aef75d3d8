#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The bypass corpus through the wasm build in the harness, against both samples: no request
//! may reach the upstream. (`envoy_istio.rs` sends the Istio corpus through a real Envoy too.)

mod common;

use common::{
    istio_bypass_controls, istio_bypass_corpus, istio_config, jwt_vectors, run_in_harness,
    sample_config, start_in_harness, Case, Verdict,
};

/// Attacks on the Envoy-format sample's ALLOW rules (`/admin*` excluded case-insensitively
/// from the public policy, internal hosts, backup files, blocked client tier).
fn envoy_format_corpus() -> Vec<Case> {
    let attacks = [
        "/admin",
        "/ADMIN",
        "/Admin",
        "/aDmIn/users",
        "/%41DMIN",
        "//admin",
        "/./admin",
        "/x/../admin",
        "/x/..%2FADMIN",
        "/%2Fadmin",
        "/%5cadmin",
        "/%2e%2e/admin",
        "/admin#x",
        "/admin?x",
        "/site.BAK",
        "/site%2Ebak",
        "/site.Bak?x=.html",
        "/api/v1/../../admin",
        "/beta/../admin",
        "/x%2F..%2Fadmin",
    ];
    let mut corpus: Vec<Case> = cases_from(&attacks);
    for host in [
        "internal.example.com",
        "INTERNAL.example.com:80",
        "Internal.Example.Com.",
    ] {
        let mut case = cases_from(&["/"]).remove(0);
        case.authority = host;
        corpus.push(case);
    }
    for values in [["blocked", "gold"], ["gold", "blocked"]] {
        let mut case = cases_from(&["/"]).remove(0);
        case.headers = values.iter().map(|v| ("x-client-tier", *v)).collect();
        corpus.push(case);
    }
    let mut smuggled = cases_from(&["/beta/x"]).remove(0);
    smuggled.headers = vec![("x-client-tier", "silver"), ("x-client-tier", "gold")];
    corpus.push(smuggled);
    corpus
}

fn cases_from(paths: &[&'static str]) -> Vec<Case> {
    paths
        .iter()
        .map(|path| Case {
            name: path,
            method: "GET",
            path,
            authority: "shop.example.com",
            headers: Vec::new(),
            user: None,
            expected: Verdict::forbidden("none"),
            native: None,
        })
        .collect()
}

#[test]
fn no_request_of_either_corpus_reaches_the_upstream() {
    let vectors = jwt_vectors();
    let mut total = 0;
    for (config, corpus) in [
        (sample_config(), envoy_format_corpus()),
        (istio_config(), istio_bypass_corpus()),
    ] {
        let plugin = start_in_harness(&config);
        let bypasses: Vec<&str> = corpus
            .iter()
            .filter(|attack| run_in_harness(&plugin, &vectors, attack).is_allowed())
            .map(|attack| attack.name)
            .collect();
        assert_eq!(bypasses, Vec::<&str>::new());
        total += corpus.len();
    }
    assert!(total >= 60, "{total}");
}

#[test]
fn the_controls_pass_so_the_corpus_is_not_vacuous() {
    let vectors = jwt_vectors();
    let plugin = start_in_harness(&istio_config());
    for control in istio_bypass_controls() {
        assert_eq!(
            run_in_harness(&plugin, &vectors, &control),
            Verdict::Allowed,
            "{}",
            control.name
        );
    }
    let plugin = start_in_harness(&sample_config());
    for path in ["/", "/index.html", "/administration-guide-is-not-admin"] {
        let case = cases_from(&[path]).remove(0);
        let expected = if path.starts_with("/admin") {
            Verdict::forbidden("none")
        } else {
            Verdict::Allowed
        };
        assert_eq!(run_in_harness(&plugin, &vectors, &case), expected, "{path}");
    }
}
