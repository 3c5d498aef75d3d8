//! Every filter's benchmark scenarios: the configuration, the requests and the verdict.
//!
//! Each filter has one *primary* scenario, its common path in production (a cached token, an
//! admitted request, a cached decision...), which is its row in the filter/no-op summary and
//! the workload of the memory test; further cases show what drives its cost (signature
//! verification, number of policies, decision-cache misses).

use serde_json::json;
use wasmesh_harness::PropertyValue;

use crate::error::BenchError;
use crate::scenario::{native_runner, CalloutAnswer, Exchange, Scenario, Verdict};

/// Every scenario, the no-op baseline first.
pub fn all() -> Result<Vec<Scenario>, BenchError> {
    let mut scenarios = vec![noop()];
    scenarios.extend(fault());
    scenarios.extend(jwt_authn()?);
    scenarios.extend(policy());
    scenarios.extend(rate_limit());
    scenarios.extend(rbac());
    scenarios.extend(telemetry());
    Ok(scenarios)
}

/// The primary scenario of every filter (the no-op baseline included).
pub fn primary() -> Result<Vec<Scenario>, BenchError> {
    Ok(all()?
        .into_iter()
        .filter(|scenario| scenario.primary)
        .collect())
}

/// Name of the baseline in the tables.
pub const NOOP: &str = "no-op";

/// The requests of `scenario` through the no-op filter: the baseline its ratios are taken
/// against (the same headers and properties, so the same SDK and host costs for everything but
/// the filter's own work).
pub fn baseline(scenario: &Scenario) -> Scenario {
    Scenario {
        filter: NOOP,
        case: format!("requests of {}", scenario.id()),
        package: "wasmesh-noop-filter",
        config: "{}".into(),
        plugin_properties: scenario.plugin_properties.clone(),
        exchanges: scenario.exchanges.clone(),
        expect: Verdict::Allowed,
        callout_answer: None,
        primary: false,
        native: native_runner::<wasmesh_noop_filter::NoopFilter>,
    }
}

/// A plain `GET` of `path` on `authority`, with `extra` headers.
fn get(path: &str, authority: &str, extra: &[(&str, &str)]) -> Exchange {
    let mut headers = vec![
        (":method", "GET"),
        (":path", path),
        (":scheme", "http"),
        (":authority", authority),
    ];
    headers.extend_from_slice(extra);
    Exchange::new(&headers)
}

/// The baseline: a filter that reads nothing and continues.
pub fn noop() -> Scenario {
    Scenario {
        filter: NOOP,
        case: "pass".into(),
        package: "wasmesh-noop-filter",
        config: "{}".into(),
        plugin_properties: Vec::new(),
        exchanges: vec![get(
            "/api/items",
            "shop.example.com",
            &[("user-agent", "bench/1.0")],
        )],
        expect: Verdict::Allowed,
        callout_answer: None,
        primary: true,
        native: native_runner::<wasmesh_noop_filter::NoopFilter>,
    }
}

fn fault() -> Vec<Scenario> {
    let scenario = |case: &str, delay_pct: u32, abort_pct: u32, expect, primary| Scenario {
        filter: "fault",
        case: case.into(),
        package: "wasmesh-fault",
        config: json!({
            "delay": {"fixed_delay": "3s", "percentage": {"numerator": delay_pct}},
            "abort": {"http_status": 503, "percentage": {"numerator": abort_pct}},
            "headers": [{"name": ":path", "string_match": {"prefix": "/checkout"}}],
            "max_active_faults": 100
        })
        .to_string(),
        plugin_properties: Vec::new(),
        exchanges: vec![get("/checkout/cart", "shop.example.com", &[])],
        expect,
        callout_answer: None,
        primary,
        native: native_runner::<wasmesh_fault::FaultFilter>,
    };
    vec![
        // The request is selected and the dice are rolled, but no fault is injected.
        scenario("selected, not injected", 0, 0, Verdict::Allowed, true),
        // Abort: takes one of `max_active_faults` (shared data), replies 503, gives it back.
        scenario("abort 503", 0, 100, Verdict::Denied(503), false),
    ]
}

/// Token vectors made by PyJWT (`filters/jwt-authn/tests/fixtures`).
const JWT_VECTORS: &str = include_str!("../../filters/jwt-authn/tests/fixtures/vectors.json");

fn jwt_authn() -> Result<Vec<Scenario>, BenchError> {
    let vectors: serde_json::Value = serde_json::from_str(JWT_VECTORS)?;
    let token = |alg: &str| -> Result<String, BenchError> {
        vectors
            .get("valid")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .find(|vector| vector["alg"] == alg)
            .and_then(|vector| vector["token"].as_str())
            .map(str::to_string)
            .ok_or_else(|| BenchError(format!("no {alg} token in the JWT vectors")))
    };
    let jwks = vectors
        .get("jwks")
        .map(serde_json::Value::to_string)
        .ok_or_else(|| BenchError("no JWKS in the JWT vectors".to_string()))?;
    let mut scenarios = Vec::new();
    for (alg, key) in [("RS256", "RSA 2048"), ("ES256", "P-256")] {
        let bearer = format!("Bearer {}", token(alg)?);
        for cached in [true, false] {
            let mut provider = json!({
                "issuer": "https://issuer.example.com",
                "audiences": ["api.example.com"],
                "local_jwks": {"inline_string": jwks},
                "claim_to_headers": [{"header_name": "x-jwt-sub", "claim_name": "sub"}],
            });
            // `provider` is the object literal above: `as_object_mut` always finds it.
            if let (true, Some(fields)) = (cached, provider.as_object_mut()) {
                fields.insert(
                    "jwt_cache_config".to_string(),
                    json!({"jwt_cache_size": 100}),
                );
            }
            let config = json!({
                "providers": {"idp": provider},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}],
            });
            scenarios.push(Scenario {
                filter: "jwt-authn",
                case: format!(
                    "{alg} ({key}), {}",
                    if cached {
                        "cache hit"
                    } else {
                        "full verification"
                    }
                ),
                package: "wasmesh-jwt-authn",
                config: config.to_string(),
                plugin_properties: Vec::new(),
                exchanges: vec![get(
                    "/api",
                    "api.example.com",
                    &[("authorization", &bearer)],
                )],
                expect: Verdict::Allowed,
                callout_answer: None,
                primary: cached && alg == "RS256",
                native: native_runner::<wasmesh_jwt_authn::JwtAuthn>,
            });
        }
    }
    Ok(scenarios)
}

fn policy() -> Vec<Scenario> {
    let scenario = |case: &str, max_entries: u32, paths: usize, primary| Scenario {
        filter: "policy",
        case: case.into(),
        package: "wasmesh-policy",
        config: json!({
            "http_service": {
                "server_uri": {"uri": "http://authz", "cluster": "authz", "timeout": "0.5s"},
                "authorization_response": {
                    "allowed_upstream_headers": {"patterns": [{"exact": "x-user"}]}
                }
            },
            "decision_cache": {
                "key": {"headers": ["authorization", "x-tenant"]},
                "ttl": "3600s",
                "max_entries": max_entries
            }
        })
        .to_string(),
        plugin_properties: Vec::new(),
        exchanges: (0..paths)
            .map(|page| {
                get(
                    &format!("/orders?page={page}"),
                    "shop.example.com",
                    &[
                        ("authorization", "Bearer alice"),
                        ("x-tenant", "acme"),
                        ("user-agent", "bench/1.0"),
                    ],
                )
            })
            .collect(),
        expect: Verdict::Allowed,
        callout_answer: Some(CalloutAnswer {
            status: 200,
            headers: vec![("x-user".into(), "alice".into())],
        }),
        primary,
        native: native_runner::<wasmesh_policy::Policy>,
    };
    vec![
        // 100 distinct requests, all cached after the first round.
        scenario("decision cache hit", 1000, 100, true),
        // 1000 distinct requests through a 256-entry LRU: every request is a miss, checked with
        // the (mock) authorization service, and evicts the oldest decision.
        scenario("cache miss, service check", 256, 1000, false),
    ]
}

fn rate_limit() -> Vec<Scenario> {
    // Buckets large enough never to run dry: every request is checked and admitted.
    let bucket = json!({"max_tokens": 1_000_000_000, "tokens_per_fill": 1_000_000_000, "fill_interval": "1s"});
    let config = json!({
        "stat_prefix": "bench",
        "token_bucket": bucket,
        "filter_enabled": {"default_value": {"numerator": 100}},
        "filter_enforced": {"default_value": {"numerator": 100}},
        "rate_limits": [{"actions": [{"request_headers": {"header_name": "x-api-key", "descriptor_key": "api_key"}}]}],
        "descriptors": [{"entries": [{"key": "api_key"}], "token_bucket": bucket}],
        "max_dynamic_descriptors": 4096,
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03"
    })
    .to_string();
    [(1, false), (1000, true)]
        .into_iter()
        .map(|(keys, primary)| Scenario {
            filter: "rate-limit",
            case: format!("{keys} key{}", if keys == 1 { "" } else { "s" }),
            package: "wasmesh-rate-limit",
            config: config.clone(),
            plugin_properties: Vec::new(),
            exchanges: (0..keys)
                .map(|key| {
                    get(
                        "/api",
                        "shop.example.com",
                        &[("x-api-key", &format!("client-{key}"))],
                    )
                })
                .collect(),
            expect: Verdict::Allowed,
            callout_answer: None,
            primary,
            native: native_runner::<wasmesh_rate_limit::RateLimitFilter>,
        })
        .collect()
}

fn rbac() -> Vec<Scenario> {
    [1, 10, 100]
        .into_iter()
        .map(|count| {
            // `count` policies of realistic shape (method and path prefix; a client network, a
            // header or a JWT group); the request matches only the last one, by its JWT group,
            // so every policy is evaluated (the worst case of an ALLOW list).
            let policies: serde_json::Map<String, serde_json::Value> = (0..count)
                .map(|i| {
                    let policy = json!({
                        "permissions": [{"and_rules": {"rules": [
                            {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
                            {"url_path": {"path": {"prefix": format!("/svc{i}/")}}}
                        ]}}],
                        "principals": [{"or_ids": {"ids": [
                            {"remote_ip": {"address_prefix": format!("10.{}.0.0", i % 256), "prefix_len": 16}},
                            {"header": {"name": "x-user", "string_match": {"exact": format!("user{i}")}}},
                            {"metadata": {"filter": "envoy.filters.http.jwt_authn",
                                          "path": [{"key": "jwt_payload"}, {"key": "groups"}],
                                          "value": {"list_match": {"one_of": {"string_match": {"exact": format!("group{i}")}}}}}}
                        ]}}]
                    });
                    (format!("p{i:03}"), policy)
                })
                .collect();
            let metadata = wasmesh_rbac::metadata::encode_metadata(&[(
                "envoy.filters.http.jwt_authn",
                json!({"jwt_payload": {"iss": "https://issuer", "sub": "alice",
                                       "groups": ["dev", format!("group{}", count - 1)]}}),
            )]);
            let path = format!("/svc{}/items/../items/42?page=2", count - 1);
            Scenario {
                filter: "rbac",
                case: format!("{count} polic{}", if count == 1 { "y" } else { "ies" }),
                package: "wasmesh-rbac",
                config: json!({"rules": {"action": "ALLOW", "policies": policies}}).to_string(),
                plugin_properties: Vec::new(),
                exchanges: vec![get(
                    &path,
                    "shop.example.com",
                    &[
                        ("x-user", "someone"),
                        ("x-forwarded-for", "192.0.2.1"),
                        ("user-agent", "bench/1.0"),
                    ],
                )
                .with_property(&["metadata"], PropertyValue::Bytes(metadata))
                .with_property(&["source", "address"], "127.0.0.1:40000".into())],
                expect: Verdict::Allowed,
                callout_answer: None,
                primary: count == 10,
                native: native_runner::<wasmesh_rbac::RbacFilter>,
            }
        })
        .collect()
}

fn telemetry() -> Vec<Scenario> {
    use wasmesh_telemetry::peer::{encode_node_metadata, NodeInfo, PEER_METADATA_HEADER};
    use wasmesh_telemetry::proto::{Struct, Value};

    let node = |workload: &str, app: &str| {
        let mut labels = Struct::new();
        labels.insert("app".into(), Value::String(app.into()));
        labels.insert("version".into(), Value::String("v1".into()));
        let mut fields = Struct::new();
        fields.insert("NAME".into(), Value::String(format!("{workload}-pod")));
        fields.insert("NAMESPACE".into(), Value::String("default".into()));
        fields.insert("WORKLOAD_NAME".into(), Value::String(workload.into()));
        fields.insert("CLUSTER_ID".into(), Value::String("Kubernetes".into()));
        fields.insert("LABELS".into(), Value::Struct(labels));
        fields
    };
    let local = node("reviews-v2", "reviews");
    let peer = NodeInfo::from_struct(node("productpage-v1", "productpage")).header_value();
    vec![Scenario {
        filter: "telemetry",
        case: "inbound, known peer, standard metrics".into(),
        package: "wasmesh-telemetry",
        config: "{}".into(),
        plugin_properties: vec![
            (
                vec!["xds".into(), "node".into(), "metadata".into()],
                PropertyValue::Bytes(encode_node_metadata(&local)),
            ),
            (
                vec!["xds".into(), "listener_direction".into()],
                PropertyValue::Int(1),
            ),
        ],
        exchanges: vec![get(
            "/reviews/1",
            "reviews.default.svc.cluster.local",
            &[(PEER_METADATA_HEADER, &peer)],
        )
        .with_property(&["response", "code"], PropertyValue::Int(200))],
        expect: Verdict::Allowed,
        callout_answer: None,
        primary: true,
        native: native_runner::<wasmesh_telemetry::Telemetry>,
    }]
}
