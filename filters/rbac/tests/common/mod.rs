//! What the harness and the real-Envoy tests share: the module, the sample configurations, the
//! JWT vectors, and tables of requests with the verdict each must get.
//!
//! Every case runs through the harness (`harness.rs`) and through real Envoys (`envoy.rs`,
//! `envoy_istio.rs`): the wasm filter in Envoy must agree with the harness, and — for the
//! Envoy-format sample — with Envoy's own native RBAC filter given the same rules.
//!
//! The harness plays the parts Envoy's other components play in the Envoy tests:
//! * the connection manager runs with `use_remote_address: true`, so it appends the peer
//!   (`127.0.0.1`) to `x-forwarded-for`; the harness runner does the same;
//! * Envoy's `jwt_authn` verifies the bearer token and stores its payload in dynamic metadata
//!   (`payload_in_metadata: jwt_payload`); the harness runner sets the `metadata` property, in
//!   the protobuf `Metadata` encoding Envoy uses, and drops the `authorization` header as
//!   `jwt_authn` does.
#![allow(dead_code)]

pub mod envoy;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Value};
use wasmesh_harness::{Harness, Plugin, PropertyValue};
use wasmesh_rbac::metadata::encode_metadata;

/// The filter's cargo package; its wasm is built on first use.
pub const PACKAGE: &str = "wasmesh-rbac";

/// The metadata namespace Envoy's jwt_authn writes.
pub const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";

/// `filters/rbac`.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real `wasm32-wasip1` release build.
pub fn wasm() -> PathBuf {
    wasmesh_harness::build::wasm(PACKAGE).unwrap()
}

/// `filters/rbac/config.json`: the Envoy-format sample.
pub fn sample_config() -> String {
    std::fs::read_to_string(crate_dir().join("config.json")).unwrap()
}

/// `filters/rbac/istio-policies.json`: the Istio-format sample.
pub fn istio_config() -> String {
    std::fs::read_to_string(crate_dir().join("istio-policies.json")).unwrap()
}

/// Tokens made by `tests/data/make_jwt_vectors.py` (Python standard library, HS256).
pub struct JwtVectors {
    /// `iss` of every token.
    pub issuer: String,
    /// The JWKS (a JSON string) that verifies them.
    pub jwks: String,
    /// Token by user.
    pub tokens: BTreeMap<String, String>,
    /// Payload by user.
    pub payloads: BTreeMap<String, Value>,
}

pub fn jwt_vectors() -> JwtVectors {
    let text = std::fs::read_to_string(crate_dir().join("tests/data/jwt_vectors.json")).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    let map = |key: &str| -> BTreeMap<String, Value> {
        value[key]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    JwtVectors {
        issuer: value["issuer"].as_str().unwrap().to_string(),
        jwks: value["jwks"].as_str().unwrap().to_string(),
        tokens: map("tokens")
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap().to_string()))
            .collect(),
        payloads: map("payloads"),
    }
}

/// The plugin in the harness, one worker (as the Envoy tests run).
pub fn start_in_harness(config: &str) -> Plugin {
    Harness::load(wasm())
        .unwrap()
        .config(config)
        .start()
        .unwrap()
}

/// What the client observes: the comparison point between the harness and Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The request reached the upstream.
    Allowed,
    /// A local reply.
    Denied {
        /// Status code.
        status: u32,
        /// Response code details.
        details: String,
        /// Body.
        body: String,
    },
}

impl Verdict {
    /// Envoy RBAC's 403.
    pub fn forbidden(policy: &str) -> Self {
        Verdict::Denied {
            status: 403,
            details: format!("rbac_access_denied_matched_policy[{policy}]"),
            body: "RBAC: access denied".to_string(),
        }
    }

    /// The filter's 400 for a path it cannot normalize.
    pub fn bad_path() -> Self {
        Verdict::Denied {
            status: 400,
            details: "rbac_path_normalization_failed".to_string(),
            body: String::new(),
        }
    }

    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allowed)
    }
}

/// One request of a table.
#[derive(Debug, Clone)]
pub struct Case {
    /// What the case is about.
    pub name: &'static str,
    pub method: &'static str,
    /// `:path`, sent as is.
    pub path: &'static str,
    /// `Host`.
    pub authority: &'static str,
    /// Extra headers (repeat a name to send several values).
    pub headers: Vec<(&'static str, &'static str)>,
    /// A bearer token of `jwt_vectors()` by user name.
    pub user: Option<&'static str>,
    /// The verdict the wasm filter must give.
    pub expected: Verdict,
    /// Envoy's native RBAC filter gives another verdict (the filter is stricter on purpose);
    /// `None`: the same.
    pub native: Option<Verdict>,
}

fn get(name: &'static str, path: &'static str, expected: Verdict) -> Case {
    Case {
        name,
        method: "GET",
        path,
        authority: "shop.example.com",
        headers: Vec::new(),
        user: None,
        expected,
        native: None,
    }
}

impl Case {
    fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }
    fn host(mut self, authority: &'static str) -> Self {
        self.authority = authority;
        self
    }
    fn user(mut self, user: &'static str) -> Self {
        self.user = Some(user);
        self
    }
    fn native(mut self, verdict: Verdict) -> Self {
        self.native = Some(verdict);
        self
    }
}

/// The requests of the Envoy-format sample (`config.json`).
pub fn cases() -> Vec<Case> {
    let allowed = || Verdict::Allowed;
    let denied = || Verdict::forbidden("none");
    vec![
        get("root is public", "/", allowed()),
        get("public page", "/index.html?utm=1", allowed()),
        get("HEAD is public", "/index.html", allowed()).method("HEAD"),
        get("POST is not public", "/index.html", denied()).method("POST"),
        get("admin is not public", "/admin", denied()),
        get("admin subtree", "/admin/users", denied()),
        get("doubled slash", "//admin", denied()),
        get("dot segment", "/./admin", denied()),
        get("dot-dot segment", "/public/../admin", denied()),
        get("encoded dot-dot", "/public/%2e%2e/admin", denied()),
        get("encoded slash", "/%2Fadmin", denied()),
        get("lower-case encoded slash", "/%2fadmin/users", denied()),
        get("encoded slash walk", "/public/..%2Fadmin", denied()),
        get("encoded backslash walk", "/public/..%5Cadmin", denied()),
        get("encoded letter", "/%61dmin", denied()),
        get("upper case (ignore_case)", "/ADMIN", denied()),
        get("mixed case", "/Admin/users", denied()),
        get("query hides nothing", "/admin?x=/public", denied()),
        get("admin by JWT group", "/admin", allowed()).user("alice"),
        get("admin subtree by JWT group", "/admin/users", allowed()).user("alice"),
        get("JWT without the group", "/admin", denied()).user("bob"),
        get("group claim that is not a list", "/admin", denied()).user("mallory"),
        get("users need a JWT", "/users/42", denied()),
        get("users with a JWT", "/users/42", allowed()).user("bob"),
        get("API with a key from loopback", "/api/v1/items", allowed()).header("x-api-key", "k"),
        get("API POST", "/api/v2/orders", allowed())
            .method("POST")
            .header("x-api-key", "k"),
        get("API without a key", "/api/v1/items", denied()),
        get("API DELETE", "/api/v1/items", denied())
            .method("DELETE")
            .header("x-api-key", "k"),
        get("API regex is a full match", "/api/v1", denied()).header("x-api-key", "k"),
        get(
            "API key does not open admin",
            "/api/v1/../../admin",
            denied(),
        )
        .header("x-api-key", "k"),
        get(
            "partner network via x-forwarded-for",
            "/partner/report",
            allowed(),
        )
        .header("x-forwarded-for", "203.0.113.7"),
        get("partner path from elsewhere", "/partner/report", denied()),
        get(
            "spoofed left-most x-forwarded-for",
            "/partner/report",
            denied(),
        )
        .header("x-forwarded-for", "203.0.113.7, 198.51.100.1"),
        get("internal host", "/", denied()).host("internal.example.com"),
        get("internal host, upper case and port", "/", denied()).host("INTERNAL.Example.com:80"),
        get("backup files", "/site.BAK", denied()),
        get("backup file with query", "/db.bak?download=1", denied()),
        get("blocked client tier", "/", denied()).header("x-client-tier", "blocked"),
        get("other client tier", "/", allowed()).header("x-client-tier", "gold"),
        get("blocked tier hidden in a second value", "/", denied())
            .header("x-client-tier", "gold")
            .header("x-client-tier", "blocked"),
        get("blocked tier first of two values", "/", denied())
            .header("x-client-tier", "blocked")
            .header("x-client-tier", "gold"),
        get("beta for the gold tier", "/beta/new", allowed()).header("x-client-tier", "gold"),
        get("beta for another tier", "/beta/new", denied()).header("x-client-tier", "silver"),
        get(
            "gold tier smuggled as a second value",
            "/beta/new",
            denied(),
        )
        .header("x-client-tier", "silver")
        .header("x-client-tier", "gold")
        .native(Verdict::Allowed),
        get("shadow rule only counts", "/", allowed()).header("x-debug", "1"),
        get("NUL in the path", "/a%00b", Verdict::bad_path()).native(Verdict::Denied {
            status: 400,
            details: "path_normalization_failed".to_string(),
            body: String::new(),
        }),
    ]
}

/// The requests of the Istio-format sample (`istio-policies.json`).
pub fn istio_cases() -> Vec<Case> {
    let allowed = || Verdict::Allowed;
    let denied_by = |rule: usize| {
        Verdict::forbidden(&format!("ns[shop]-policy[deny-admin-paths]-rule[{rule}]"))
    };
    let not_allowed = || Verdict::forbidden("none");
    vec![
        get("reads are allowed", "/products", allowed()),
        get("HEAD is allowed", "/", allowed()).method("HEAD"),
        get("DELETE is not", "/products/1", not_allowed()).method("DELETE"),
        get("admin denied", "/admin", denied_by(0)),
        get("admin subtree denied", "/admin/users", denied_by(0)),
        get("admin via dot-dot", "/x/../admin/users", denied_by(0)),
        get("admin via encoded slash", "/%2Fadmin", denied_by(0)),
        get("admin via doubled slash", "//admin//users", denied_by(0)),
        get("admin via backslash", "/x/..%5Cadmin", denied_by(0)),
        get("admin for alice", "/admin", allowed()).user("alice"),
        get("admin not for bob", "/admin", denied_by(0)).user("bob"),
        get("internal host", "/", denied_by(1)).host("internal.example.com"),
        get("internal host any case, port", "/", denied_by(1)).host("Internal.EXAMPLE.com:8080"),
        get("internal host with trailing dot", "/", denied_by(1)).host("internal.example.com."),
        get("blocked tier", "/", denied_by(2)).header("x-client-tier", "blocked"),
        get("blocked tier as second value", "/", denied_by(2))
            .header("x-client-tier", "gold")
            .header("x-client-tier", "blocked"),
        get("notPaths internal", "/internal/metrics", not_allowed()),
        get(
            "notPaths via dot-dot",
            "/public/../internal/metrics",
            not_allowed(),
        ),
        get(
            "notPaths via encoded slash",
            "/public%2F..%2Finternal/metrics",
            not_allowed(),
        ),
        get("notPaths suffix", "/dump.bak", not_allowed()),
        get("POST order with dev claim", "/api/v1/orders", allowed())
            .method("POST")
            .user("bob"),
        get(
            "POST order template is one segment",
            "/api/v1/x/orders",
            not_allowed(),
        )
        .method("POST")
        .user("bob"),
        get("POST cart subtree", "/api/v2/carts/7/items", allowed())
            .method("POST")
            .user("alice"),
        get("POST cart needs a subpath", "/api/v2/carts/", not_allowed())
            .method("POST")
            .user("alice"),
        get("POST without claim", "/api/v1/orders", not_allowed()).method("POST"),
        get(
            "POST with a string claim that differs",
            "/api/v1/orders",
            not_allowed(),
        )
        .method("POST")
        .user("mallory"),
        get("partner by remote IP", "/partner/x", allowed())
            .method("POST")
            .header("x-forwarded-for", "203.0.113.9"),
        get("partner spoof", "/partner/x", not_allowed())
            .method("POST")
            .header("x-forwarded-for", "203.0.113.9, 198.51.100.2"),
        get(
            "users by request principal and nested claim",
            "/users/1",
            allowed(),
        )
        .method("PUT")
        .user("bob"),
        get("users principal without tier", "/users/1", not_allowed())
            .method("PUT")
            .user("mallory"),
        get("dry-run deny only counts", "/", allowed()).header("x-debug", "1"),
        get("NUL in the path", "/a%00b", Verdict::bad_path()),
    ]
}

/// The request headers Envoy's filters see for `case` (the connection manager appended the
/// peer to `x-forwarded-for`; jwt_authn removed the token).
pub fn filter_headers(case: &Case) -> Vec<(String, String)> {
    let mut headers = vec![
        (":method".to_string(), case.method.to_string()),
        (":scheme".to_string(), "http".to_string()),
        (":authority".to_string(), case.authority.to_string()),
        (":path".to_string(), case.path.to_string()),
    ];
    let mut forwarded = None;
    for (name, value) in &case.headers {
        if *name == "x-forwarded-for" {
            forwarded = Some(value.to_string());
        } else {
            headers.push((name.to_string(), value.to_string()));
        }
    }
    let forwarded = match forwarded {
        Some(existing) => format!("{existing},127.0.0.1"),
        None => "127.0.0.1".to_string(),
    };
    headers.push(("x-forwarded-for".to_string(), forwarded));
    headers
}

/// The `metadata` property (protobuf `Metadata`) after jwt_authn verified a token of `user`.
pub fn jwt_metadata(vectors: &JwtVectors, user: &str) -> Vec<u8> {
    encode_metadata(&[(JWT_AUTHN, json!({ "jwt_payload": vectors.payloads[user] }))])
}

/// Runs `case` through the harness.
pub fn run_in_harness(plugin: &Plugin, vectors: &JwtVectors, case: &Case) -> Verdict {
    let headers = filter_headers(case);
    let borrowed: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut stream = plugin.http_stream();
    if let Some(user) = case.user {
        stream.property(
            &["metadata"],
            PropertyValue::Bytes(jwt_metadata(vectors, user)),
        );
    }
    stream.request_headers(&borrowed, true).unwrap();
    let verdict = match stream.local_reply() {
        Some(reply) => Verdict::Denied {
            status: reply.status,
            details: reply.details,
            body: String::from_utf8(reply.body).unwrap(),
        },
        None => {
            stream
                .response_headers(&[(":status", "200")], true)
                .unwrap();
            Verdict::Allowed
        }
    };
    stream.complete().unwrap();
    verdict
}

/// Attacks on the Istio sample's DENY rules and ALLOW `notPaths`: each must be refused (403
/// from the filter, or 400 for a path nobody may send). `(name, path, host, headers)`.
pub fn istio_bypass_corpus() -> Vec<Case> {
    let attack = |name: &'static str, path: &'static str| get(name, path, Verdict::forbidden("?"));
    let mut corpus = vec![
        attack("plain", "/admin"),
        attack("subtree", "/admin/users"),
        attack("trailing slash", "/admin/"),
        attack("double slash", "//admin"),
        attack("triple slash", "///admin//users"),
        attack("dot", "/./admin"),
        attack("trailing dot", "/admin/."),
        attack("dot-dot", "/a/../admin"),
        attack("double dot-dot", "/a/b/../../admin/users"),
        attack("dot-dot above root", "/../../admin"),
        attack("encoded dot", "/%2e/admin"),
        attack("encoded dot-dot", "/%2e%2e/admin"),
        attack("encoded dot-dot below", "/a/%2E%2E/admin"),
        attack("half-encoded dot-dot", "/a/.%2e/admin"),
        attack("encoded slash", "/%2Fadmin"),
        attack("encoded slash lower", "/%2fadmin/users"),
        attack("encoded slash walk", "/a/..%2Fadmin"),
        attack("fully encoded walk", "/a%2F..%2Fadmin"),
        attack("encoded backslash", "/%5Cadmin"),
        attack("encoded backslash walk", "/a/..%5cadmin"),
        attack("encoded letter", "/%61dmin"),
        attack("query", "/admin?x=/public"),
        attack("fragment", "/admin#top"),
        attack("matrix parameter", "/admin/users;jsessionid=1"),
        attack("notPaths via dot-dot", "/public/../internal/metrics"),
        attack("notPaths via encoded slash", "/%2Finternal/metrics"),
        attack("notPaths via double slash", "//internal/metrics"),
        attack("notPaths encoded separator", "/internal%2Fmetrics"),
        attack("notPaths suffix with query", "/dump.bak?as=.html"),
        attack("notPaths suffix with fragment", "/dump.bak#.html"),
        attack("notPaths suffix with encoded dot", "/dump%2ebak"),
    ];
    for host in [
        "internal.example.com",
        "INTERNAL.EXAMPLE.COM",
        "internal.example.com:80",
        "internal.example.com.",
        "Internal.Example.Com.:8443",
    ] {
        corpus.push(attack("internal host", "/").host(host));
    }
    corpus.push(
        attack("blocked tier second", "/")
            .header("x-client-tier", "gold")
            .header("x-client-tier", "blocked"),
    );
    corpus.push(
        attack("blocked tier first", "/")
            .header("x-client-tier", "blocked")
            .header("x-client-tier", "gold"),
    );
    corpus.push(attack("admin as bob", "//admin/../admin/").user("bob"));
    corpus
}

/// Requests of the same shapes that must pass, so the corpus cannot pass vacuously.
pub fn istio_bypass_controls() -> Vec<Case> {
    vec![
        get("public page", "/products", Verdict::Allowed),
        get(
            "admin for alice via dot-dot",
            "/x/../admin",
            Verdict::Allowed,
        )
        .user("alice"),
        get("public host", "/", Verdict::Allowed).host("SHOP.example.com:80"),
        get("other tiers", "/", Verdict::Allowed)
            .header("x-client-tier", "gold")
            .header("x-client-tier", "silver"),
        get("encoded slash elsewhere", "/docs%2Fintro", Verdict::Allowed),
    ]
}
