//! What the harness and the Envoy tests share: the wasm build, the PyJWT-made vectors, the
//! comparison configuration, the request table and how a verdict is read in the harness.

#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::{json, Value};
use wasmesh_harness::{CalloutReply, Harness, Plugin};

/// The crate under test.
pub const PACKAGE: &str = "wasmesh-jwt-authn";
/// Host header of every request (it appears in the `WWW-Authenticate` realm).
pub const HOST: &str = "api.example.com";
/// Cluster serving the remote key set.
pub const JWKS_CLUSTER: &str = "jwks";

/// The filter's crate directory.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real `wasm32-wasip1` release build.
pub fn wasm() -> PathBuf {
    wasmesh_harness::build::wasm(PACKAGE).unwrap()
}

/// `tests/fixtures/vectors.json`, made by PyJWT (`tests/fixtures/make_vectors.py`).
pub fn vectors() -> Value {
    let text = std::fs::read_to_string(crate_dir().join("tests/fixtures/vectors.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The key set of the vectors, as a JSON document.
pub fn jwks_document() -> String {
    vectors()["jwks"].to_string()
}

/// A valid token of the vectors for `alg`.
pub fn token(alg: &str) -> String {
    vectors()["valid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|vector| vector["alg"] == alg)
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The configuration every comparison runs with. Only Envoy fields: the very same document
/// configures Envoy's native `jwt_authn` filter in the Envoy tests.
pub fn comparison_config() -> Value {
    let jwks = jwks_document();
    json!({
        "providers": {
            "local": {
                "issuer": "https://issuer.example.com",
                "audiences": ["api.example.com"],
                "local_jwks": {"inline_string": jwks},
                "forward_payload_header": "x-jwt-payload",
                "claim_to_headers": [
                    {"header_name": "x-jwt-sub", "claim_name": "sub"},
                    {"header_name": "x-jwt-level", "claim_name": "realm.level"},
                ],
            },
            // No issuer: any. Providers should not share an issuer (`allow_missing*` would
            // pick one of them by issuer, in an order Envoy does not define).
            "remote": {
                "remote_jwks": {
                    "http_uri": {"uri": "http://idp.example.com/jwks.json", "cluster": JWKS_CLUSTER, "timeout": "5s"},
                    "cache_duration": "300s",
                },
                "from_headers": [{"name": "x-remote-token"}],
                "forward": true,
            },
        },
        "rules": [
            {"match": {"prefix": "/healthz"}},
            {"match": {"prefix": "/remote"}, "requires": {"provider_name": "remote"}},
            {"match": {"prefix": "/optional"}, "requires": {"allow_missing": {}}},
            {"match": {"prefix": "/tolerant"}, "requires": {"allow_missing_or_failed": {}}},
            {"match": {"prefix": "/either"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "local"}, {"provider_name": "remote"}]}}},
            {"match": {"prefix": "/both"}, "requires": {"requires_all": {"requirements": [
                {"provider_name": "local"}, {"provider_name": "remote"}]}}},
            {"match": {"prefix": "/partner"}, "requires": {"provider_and_audiences": {
                "provider_name": "local", "audiences": ["partner.example.com"]}}},
            {"match": {"prefix": "/"}, "requires": {"provider_name": "local"}},
        ],
        "bypass_cors_preflight": true,
    })
}

/// What a client and the upstream observe for one request: the comparison point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Reached the upstream with these headers (and path).
    Forwarded {
        /// `:path` as the upstream got it.
        path: String,
        /// `authorization` as the upstream got it.
        authorization: Option<String>,
        /// `x-remote-token` as the upstream got it.
        remote_token: Option<String>,
        /// `x-jwt-payload`.
        payload: Option<String>,
        /// `x-jwt-sub`.
        sub: Option<String>,
        /// `x-jwt-level`.
        level: Option<String>,
    },
    /// Answered by the filter.
    Replied {
        /// Status.
        status: u32,
        /// Response code details.
        details: String,
        /// Body.
        body: String,
        /// `www-authenticate`.
        challenge: Option<String>,
    },
}

/// One request of the table.
#[derive(Debug, Clone)]
pub struct Case {
    /// What it is about.
    pub name: String,
    /// `:method`.
    pub method: String,
    /// `:path`.
    pub path: String,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Expected status (200 when forwarded), checked everywhere.
    pub expected_status: u32,
}

fn case(name: &str, path: &str, headers: &[(&str, &str)], expected_status: u32) -> Case {
    Case {
        name: name.to_string(),
        method: "GET".to_string(),
        path: path.to_string(),
        headers: headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
        expected_status,
    }
}

/// The table: every algorithm, the attack corpus, every requirement kind, token locations.
pub fn cases() -> Vec<Case> {
    let vectors = vectors();
    let mut cases = Vec::new();
    for vector in vectors["valid"].as_array().unwrap() {
        let bearer = format!("Bearer {}", vector["token"].as_str().unwrap());
        cases.push(case(
            &format!("valid {}", vector["alg"]),
            "/api/items?page=2",
            &[("authorization", &bearer)],
            200,
        ));
    }
    for attack in vectors["attacks"].as_array().unwrap() {
        let bearer = format!("Bearer {}", attack["token"].as_str().unwrap());
        let status = if attack["expected"] == "Audiences in Jwt are not allowed" {
            403
        } else {
            401
        };
        cases.push(case(
            &format!("attack: {}", attack["name"]),
            "/api",
            &[("authorization", &bearer)],
            status,
        ));
    }
    let rs256 = token("RS256");
    let es256 = token("ES256");
    let bearer = format!("Bearer {rs256}");
    cases.extend([
        case("missing token", "/api", &[], 401),
        case("no requirement", "/healthz", &[], 200),
        case(
            "lowercase scheme is not a bearer token",
            "/api",
            &[("authorization", &format!("bearer {rs256}"))],
            401,
        ),
        case(
            "token in access_token parameter",
            &format!("/api?a=1&access_token={es256}&b=2"),
            &[],
            200,
        ),
        case(
            "two tokens, one bad",
            "/api?access_token=abc",
            &[("authorization", &bearer)],
            401,
        ),
        case(
            "remote keys",
            "/remote/x",
            &[("x-remote-token", &es256)],
            200,
        ),
        case(
            "remote keys, bad token",
            "/remote/x",
            &[("x-remote-token", "a.b.c")],
            401,
        ),
        case(
            "remote provider ignores the bearer header",
            "/remote/x",
            &[("authorization", &bearer)],
            401,
        ),
        case("optional, missing", "/optional", &[], 200),
        case(
            "optional, valid",
            "/optional",
            &[("authorization", &bearer)],
            200,
        ),
        case(
            "optional, invalid",
            "/optional",
            &[("authorization", "Bearer a.b.c")],
            401,
        ),
        case(
            "tolerant, invalid",
            "/tolerant",
            &[("authorization", "Bearer a.b.c")],
            200,
        ),
        case(
            "either, local",
            "/either",
            &[("authorization", &bearer)],
            200,
        ),
        case(
            "either, remote",
            "/either",
            &[("x-remote-token", &rs256)],
            200,
        ),
        case("either, none", "/either", &[], 401),
        case(
            "both, one missing",
            "/both",
            &[("authorization", &bearer)],
            401,
        ),
        case(
            "both",
            "/both",
            &[("authorization", &bearer), ("x-remote-token", &rs256)],
            200,
        ),
        case(
            "audience override",
            "/partner",
            &[("authorization", &bearer)],
            403,
        ),
        // Rules match the normalized path: `..` cannot walk from a public prefix into a
        // protected one. (Envoy's native filter matches the raw path: see `HARDENED`.)
        case(
            "dot segments out of a public prefix",
            "/healthz/../api",
            &[],
            401,
        ),
        case(
            "spoofed claim headers are replaced",
            "/api",
            &[
                ("authorization", &bearer),
                ("x-jwt-sub", "admin"),
                ("x-jwt-payload", "e30"),
            ],
            200,
        ),
    ]);
    cases.push(Case {
        method: "OPTIONS".to_string(),
        ..case(
            "CORS preflight bypass",
            "/api",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
            ],
            200,
        )
    });
    cases
}

/// The filter in the harness with `config`, remote key sets served by `jwks` (callouts to the
/// `jwks` cluster are answered at once).
pub fn start_in_harness(config: &str, jwks: String) -> Plugin {
    Harness::load(wasm())
        .unwrap()
        .config(config)
        .cluster(JWKS_CLUSTER)
        .http_callout_handler(move |_| CalloutReply::ok(200, jwks.clone()))
        .start()
        .unwrap()
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.clone())
}

/// Runs a case through the harness, reading the verdict as a client and upstream would.
pub fn run_in_harness(plugin: &Plugin, case: &Case) -> Verdict {
    let mut headers = vec![
        (":method", case.method.as_str()),
        (":scheme", "http"),
        (":authority", HOST),
        (":path", case.path.as_str()),
    ];
    headers.extend(case.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let mut stream = plugin.http_stream();
    stream.request_headers(&headers, true).unwrap();
    let verdict = match stream.local_reply() {
        Some(reply) => Verdict::Replied {
            status: reply.status,
            details: reply.details,
            body: String::from_utf8(reply.body).unwrap(),
            challenge: header(&reply.headers, "www-authenticate"),
        },
        None => {
            let seen = stream.request_headers_now();
            Verdict::Forwarded {
                path: header(&seen, ":path").unwrap_or_default(),
                authorization: header(&seen, "authorization"),
                remote_token: header(&seen, "x-remote-token"),
                payload: header(&seen, "x-jwt-payload"),
                sub: header(&seen, "x-jwt-sub"),
                level: header(&seen, "x-jwt-level"),
            }
        }
    };
    stream.complete().unwrap();
    verdict
}

/// The status a verdict stands for.
pub fn status_of(verdict: &Verdict) -> u32 {
    match verdict {
        Verdict::Forwarded { .. } => 200,
        Verdict::Replied { status, .. } => *status,
    }
}
