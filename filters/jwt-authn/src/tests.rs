//! Native tests of the whole logic, driven like the proxy drives it (through the SDK's
//! `StreamDriver`), with keys and tokens made by PyJWT (`tests/fixtures/make_vectors.py`).

use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};
use wasmesh_sdk::adapter::{configure, Outcome, StreamDriver};
use wasmesh_sdk::callout::{CalloutResponse, HttpCalloutResponse};
use wasmesh_sdk::decision::LocalReply;
use wasmesh_sdk::request::{MemoryRequest, Request};
use wasmesh_sdk::testing::MemoryHost;

use crate::authn::JwtAuthn;

pub const VECTORS: &str = include_str!("../tests/fixtures/vectors.json");

fn vectors() -> Value {
    serde_json::from_str(VECTORS).unwrap()
}

fn jwks() -> String {
    vectors()["jwks"].to_string()
}

fn token(alg: &str) -> String {
    vectors()["valid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["alg"] == alg)
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A provider `p` with the fixture keys, issuer and audience; `extra` merged in.
fn provider(extra: Value) -> Value {
    let mut provider = json!({
        "issuer": "https://issuer.example.com",
        "audiences": ["api.example.com"],
        "local_jwks": {"inline_string": jwks()},
    });
    for (key, value) in extra.as_object().unwrap() {
        provider[key] = value.clone();
    }
    provider
}

fn config_with(provider_extra: Value, top: Value) -> String {
    let mut config = json!({
        "providers": {"p": provider(provider_extra)},
        "rules": [
            {"match": {"prefix": "/public"}},
            {"match": {"prefix": "/"}, "requires": {"provider_name": "p"}},
        ],
    });
    for (key, value) in top.as_object().unwrap() {
        config[key] = value.clone();
    }
    config.to_string()
}

struct Fixture {
    host: MemoryHost,
    filter: Rc<JwtAuthn>,
}

impl Fixture {
    fn new(config: &str) -> Self {
        let mut host = MemoryHost::new();
        let filter = Rc::new(configure::<JwtAuthn>(config.as_bytes(), &mut host).unwrap());
        Fixture { host, filter }
    }

    fn driver(&self) -> StreamDriver<JwtAuthn> {
        StreamDriver::new(Some(self.filter.clone()))
    }

    fn send(&mut self, request: &mut MemoryRequest) -> Outcome {
        let mut driver = self.driver();
        driver.on_request_headers(request, &mut self.host)
    }

    fn reply(&mut self, request: &mut MemoryRequest) -> LocalReply {
        match self.send(request) {
            Outcome::Reply(reply) => reply,
            other => panic!("expected a local reply, got {other:?}"),
        }
    }

    fn metric(&self, event: &str) -> i64 {
        self.host.metric(&format!("jwt_authn.{event}")).unwrap()
    }
}

fn get(path: &str) -> MemoryRequest {
    MemoryRequest::new()
        .with_header(":method", "GET")
        .with_header(":path", path)
        .with_header(":authority", "api.example.com")
        .with_header(":scheme", "https")
}

fn bearer(path: &str, token: &str) -> MemoryRequest {
    get(path).with_header("authorization", &format!("Bearer {token}"))
}

fn header(reply: &LocalReply, name: &str) -> Option<String> {
    reply
        .headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.clone())
}

#[test]
fn every_algorithm_from_pyjwt_verifies() {
    let mut fixture = Fixture::new(&config_with(json!({}), json!({})));
    let valid = vectors()["valid"].as_array().unwrap().clone();
    assert_eq!(valid.len(), 13);
    for vector in valid {
        let mut request = bearer("/api", vector["token"].as_str().unwrap());
        assert_eq!(
            fixture.send(&mut request),
            Outcome::Continue,
            "{}",
            vector["alg"]
        );
        assert_eq!(
            request.header("authorization"),
            None,
            "token is not forwarded"
        );
    }
    assert_eq!(fixture.metric("allowed"), 13);
}

#[test]
fn x509_certificate_key_sets_verify() {
    let vectors = vectors();
    let config = json!({
        "providers": {"google": {"local_jwks": {"inline_string": vectors["x509_jwks"].to_string()}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "google"}}],
    });
    let mut fixture = Fixture::new(&config.to_string());
    let mut request = bearer("/", vectors["x509_token"].as_str().unwrap());
    assert_eq!(fixture.send(&mut request), Outcome::Continue);
    let mut other = bearer("/", &token("RS256"));
    // Its `kid` names no key of this set.
    assert_eq!(
        fixture.reply(&mut other).body,
        b"Jwks doesn't have key to match kid or alg from Jwt"
    );
}

#[test]
fn attack_corpus_is_rejected_with_envoys_reasons() {
    let mut fixture = Fixture::new(&config_with(json!({}), json!({})));
    let attacks = vectors()["attacks"].as_array().unwrap().clone();
    assert!(attacks.len() >= 40, "{}", attacks.len());
    for attack in &attacks {
        let mut request = bearer("/api", attack["token"].as_str().unwrap());
        let reply = fixture.reply(&mut request);
        let expected = attack["expected"].as_str().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&reply.body),
            expected,
            "{}",
            attack["name"]
        );
        let status = if expected == "Audiences in Jwt are not allowed" {
            403
        } else {
            401
        };
        assert_eq!(reply.status, status, "{}", attack["name"]);
        assert_eq!(
            reply.details,
            format!("jwt_authn_access_denied{{{expected}}}")
        );
        assert_eq!(
            header(&reply, "www-authenticate").as_deref(),
            Some("Bearer realm=\"https://api.example.com/api\", error=\"invalid_token\"")
        );
    }
    assert_eq!(
        fixture.metric("denied"),
        i64::try_from(attacks.len()).unwrap()
    );
    assert_eq!(fixture.metric("allowed"), 0);
    assert!(fixture.metric("denied_jwt_verification_failed") > 10);
    assert!(fixture.metric("denied_jwt_malformed") > 10);
}

#[test]
fn missing_token_gets_a_bare_challenge() {
    let mut fixture = Fixture::new(&config_with(json!({}), json!({})));
    let reply = fixture.reply(&mut get("/api?x=1"));
    assert_eq!(reply.status, 401);
    assert_eq!(reply.body, b"Jwt is missing");
    assert_eq!(
        header(&reply, "www-authenticate").as_deref(),
        Some("Bearer realm=\"https://api.example.com/api?x=1\"")
    );
    assert_eq!(fixture.metric("denied_jwt_missing"), 1);
    // The public rule has no requirement; no rule at all means no requirement either.
    assert_eq!(fixture.send(&mut get("/public/x")), Outcome::Continue);
    let mut x_forwarded = get("/api").with_header("x-forwarded-proto", "http");
    let reply = fixture.reply(&mut x_forwarded);
    assert_eq!(
        header(&reply, "www-authenticate").as_deref(),
        Some("Bearer realm=\"http://api.example.com/api\"")
    );
}

#[test]
fn strip_failure_response_sends_the_status_only() {
    let mut fixture = Fixture::new(&config_with(
        json!({}),
        json!({"strip_failure_response": true}),
    ));
    let reply = fixture.reply(&mut get("/api"));
    assert_eq!((reply.status, reply.body.len()), (401, 0));
    assert_eq!(header(&reply, "www-authenticate"), None);
    assert_eq!(reply.details, "jwt_authn_access_denied{Jwt is missing}");
}

#[test]
fn verified_claims_reach_the_upstream_and_spoofs_do_not() {
    let config = config_with(
        json!({
            "forward_payload_header": "x-jwt-payload",
            "pad_forward_payload_header": true,
            "claim_to_headers": [
                {"header_name": "x-jwt-sub", "claim_name": "sub"},
                {"header_name": "x-jwt-level", "claim_name": "realm.level"},
                {"header_name": "x-jwt-active", "claim_name": "realm.active"},
                {"header_name": "x-jwt-roles", "claim_name": "realm.roles"},
                {"header_name": "x-jwt-absent", "claim_name": "realm.nope"},
            ],
        }),
        json!({"principal_header": "x-jwt-principal"}),
    );
    let mut fixture = Fixture::new(&config);
    let token = token("ES256");
    let mut request = bearer("/api", &token)
        .with_header("x-jwt-sub", "spoofed")
        .with_header("x-jwt-absent", "spoofed")
        .with_header("x-jwt-principal", "spoofed");
    assert_eq!(fixture.send(&mut request), Outcome::Continue);
    let payload = token.split('.').nth(1).unwrap();
    let padded = request.header("x-jwt-payload").unwrap();
    assert!(padded.starts_with(payload) && padded.len().is_multiple_of(4));
    assert_eq!(request.header("x-jwt-sub").as_deref(), Some("user-1"));
    assert_eq!(request.header("x-jwt-level").as_deref(), Some("3"));
    assert_eq!(request.header("x-jwt-active").as_deref(), Some("true"));
    assert_eq!(
        request.header("x-jwt-roles").as_deref(),
        Some("WyJhZG1pbiIsImRldiJd")
    );
    assert_eq!(request.header("x-jwt-absent"), None);
    assert_eq!(
        request.header("x-jwt-principal").as_deref(),
        Some("https://issuer.example.com/user-1")
    );
    // Spoofed headers are removed even where no token is required.
    let mut public = get("/public").with_header("x-jwt-sub", "spoofed");
    assert_eq!(fixture.send(&mut public), Outcome::Continue);
    assert_eq!(public.header("x-jwt-sub"), None);
}

#[test]
fn forward_and_token_locations() {
    let mut fixture = Fixture::new(&config_with(json!({"forward": true}), json!({})));
    let mut kept = bearer("/api", &token("RS256"));
    assert_eq!(fixture.send(&mut kept), Outcome::Continue);
    assert!(kept.header("authorization").is_some());

    let mut fixture = Fixture::new(&config_with(json!({}), json!({})));
    let mut param = get(&format!("/api?a=1&access_token={}&b=2", token("RS256")));
    assert_eq!(fixture.send(&mut param), Outcome::Continue);
    assert_eq!(param.path(), Some("/api?a=1&b=2"));

    let custom = config_with(
        json!({"from_headers": [{"name": "x-token", "value_prefix": "Token "}], "from_cookies": ["jwt"]}),
        json!({}),
    );
    let mut fixture = Fixture::new(&custom);
    let mut header = get("/api").with_header("x-token", &format!("Token {}", token("PS256")));
    assert_eq!(fixture.send(&mut header), Outcome::Continue);
    assert_eq!(header.header("x-token"), None);
    let mut cookie = get("/api").with_header("cookie", &format!("a=b; jwt={}", token("EdDSA")));
    assert_eq!(fixture.send(&mut cookie), Outcome::Continue);
    assert!(
        cookie.header("cookie").is_some(),
        "cookies stay, as in Envoy"
    );
    // Custom locations replace the defaults.
    let mut default_location = bearer("/api", &token("RS256"));
    assert_eq!(fixture.reply(&mut default_location).body, b"Jwt is missing");
}

#[test]
fn every_token_of_a_request_must_be_valid() {
    let mut fixture = Fixture::new(&config_with(json!({}), json!({})));
    let mut two = bearer("/api?access_token=abc", &token("RS256"));
    let reply = fixture.reply(&mut two);
    assert_eq!(
        reply.body,
        b"Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
    );
}

#[test]
fn subject_lifetime_and_skew() {
    let mut fixture = Fixture::new(&config_with(
        json!({"subjects": {"prefix": "admin-"}}),
        json!({}),
    ));
    assert_eq!(
        fixture.reply(&mut bearer("/api", &token("RS256"))).body,
        b"Jwt verification fails"
    );
    // Tokens expire in 2100: a 1-day maximum lifetime refuses them, an unlimited one does not.
    let mut fixture = Fixture::new(&config_with(json!({"max_lifetime": "86400s"}), json!({})));
    assert_eq!(
        fixture.reply(&mut bearer("/api", &token("RS256"))).body,
        b"Jwt verification fails"
    );
    let mut fixture = Fixture::new(&config_with(json!({"require_expiration": true}), json!({})));
    assert_eq!(
        fixture.send(&mut bearer("/api", &token("RS256"))),
        Outcome::Continue
    );
}

#[test]
fn clock_skew_is_honoured_at_the_boundaries() {
    // HS256 tokens made here (the secret is in the fixture key set) with exact times.
    use jsonwebtoken::{encode, EncodingKey, Header};
    let secret =
        crate::jwt::decode_base64url(vectors()["jwks"]["keys"][4]["k"].as_str().unwrap()).unwrap();
    let make = |claims: Value| {
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("hmac".into());
        encode(&header, &claims, &EncodingKey::from_secret(&secret)).unwrap()
    };
    let now = 1_700_000_000u64; // MemoryHost's clock
    let base = json!({"iss": "https://issuer.example.com", "aud": "api.example.com"});
    let with = |key: &str, value: u64| {
        let mut claims = base.clone();
        claims[key] = json!(value);
        make(claims)
    };
    let mut fixture = Fixture::new(&config_with(json!({"clock_skew_seconds": 10}), json!({})));
    assert_eq!(
        fixture.send(&mut bearer("/a", &with("exp", now - 10))),
        Outcome::Continue
    );
    assert_eq!(
        fixture
            .reply(&mut bearer("/a", &with("exp", now - 11)))
            .body,
        b"Jwt is expired"
    );
    assert_eq!(
        fixture.send(&mut bearer("/a", &with("nbf", now + 10))),
        Outcome::Continue
    );
    assert_eq!(
        fixture
            .reply(&mut bearer("/a", &with("nbf", now + 11)))
            .body,
        b"Jwt not yet valid"
    );
    // Unlike Envoy, an explicit `exp: 0` is an expiry, not a missing claim.
    assert_eq!(
        fixture.reply(&mut bearer("/a", &with("exp", 0))).body,
        b"Jwt is expired"
    );
    let mut fixture = Fixture::new(&config_with(json!({}), json!({})));
    assert_eq!(
        fixture.send(&mut bearer("/a", &with("exp", now - 60))),
        Outcome::Continue
    );
    assert_eq!(
        fixture
            .reply(&mut bearer("/a", &with("exp", now - 61)))
            .body,
        b"Jwt is expired"
    );
}

#[test]
fn requirement_combinations() {
    let jwks = jwks();
    let config = json!({
        "providers": {
            "a": {"issuer": "https://issuer.example.com", "local_jwks": {"inline_string": jwks}},
            "b": {"issuer": "https://other.example.com", "local_jwks": {"inline_string": jwks},
                  "from_headers": [{"name": "x-b"}]},
        },
        "requirement_map": {"either": {"requires_any": {"requirements": [{"provider_name": "a"}, {"provider_name": "b"}]}}},
        "rules": [
            {"match": {"prefix": "/any"}, "requirement_name": "either"},
            {"match": {"prefix": "/all"}, "requires": {"requires_all": {"requirements": [{"provider_name": "a"}, {"provider_name": "b"}]}}},
            {"match": {"prefix": "/optional"}, "requires": {"allow_missing": {}}},
            {"match": {"prefix": "/tolerant"}, "requires": {"allow_missing_or_failed": {}}},
            {"match": {"prefix": "/aud"}, "requires": {"provider_and_audiences": {"provider_name": "a", "audiences": ["other"]}}},
            {"match": {"prefix": "/a-or-missing"}, "requires": {"requires_any": {"requirements": [{"provider_name": "a"}, {"allow_missing": {}}]}}},
        ],
    });
    let mut fixture = Fixture::new(&config.to_string());
    let good = token("RS256");
    assert_eq!(fixture.send(&mut bearer("/any", &good)), Outcome::Continue);
    assert_eq!(fixture.reply(&mut get("/any")).body, b"Jwt is missing");
    // The `b` location holds an `a` token: b says "unknown issuer", which wins over "missing".
    let mut wrong_place = get("/any").with_header("x-b", &good);
    assert_eq!(
        fixture.reply(&mut wrong_place).body,
        b"Jwt issuer is not configured"
    );
    assert_eq!(
        fixture.reply(&mut bearer("/all", &good)).body,
        b"Jwt is missing"
    );
    assert_eq!(fixture.send(&mut get("/optional")), Outcome::Continue);
    assert_eq!(
        fixture.send(&mut bearer("/optional", &good)),
        Outcome::Continue
    );
    assert_eq!(fixture.reply(&mut bearer("/optional", "bad")).status, 401);
    assert_eq!(
        fixture.send(&mut bearer("/tolerant", "bad")),
        Outcome::Continue
    );
    let reply = fixture.reply(&mut bearer("/aud", &good));
    assert_eq!(
        (reply.status, reply.body.as_slice()),
        (403, &b"Audiences in Jwt are not allowed"[..])
    );
    assert_eq!(fixture.send(&mut get("/a-or-missing")), Outcome::Continue);
    assert_eq!(
        fixture.reply(&mut bearer("/a-or-missing", "x.y.z")).status,
        401
    );
    // No rule matches: nothing is required.
    assert_eq!(fixture.send(&mut get("/elsewhere")), Outcome::Continue);
}

#[test]
fn cors_preflight_bypass_and_path_normalization() {
    let mut fixture = Fixture::new(&config_with(
        json!({}),
        json!({"bypass_cors_preflight": true}),
    ));
    let mut preflight = MemoryRequest::new()
        .with_header(":method", "OPTIONS")
        .with_header(":path", "/api")
        .with_header("origin", "https://app.example.com")
        .with_header("access-control-request-method", "GET");
    assert_eq!(fixture.send(&mut preflight), Outcome::Continue);
    assert_eq!(fixture.metric("cors_preflight_bypassed"), 1);
    // Dot segments cannot walk out of the protected prefix into the public one, nor back.
    assert_eq!(
        fixture.reply(&mut get("/public/../api")).body,
        b"Jwt is missing"
    );
    assert_eq!(
        fixture.send(&mut get("/api/../public/x")),
        Outcome::Continue
    );
    let reply = fixture.reply(&mut get("/a%00b"));
    assert_eq!(
        (reply.status, reply.details.as_str()),
        (400, "jwt_authn_invalid_path")
    );
}

#[test]
fn jwt_cache_skips_reverification() {
    let mut fixture = Fixture::new(&config_with(
        json!({"jwt_cache_config": {"jwt_cache_size": 2}}),
        json!({}),
    ));
    let good = token("RS256");
    for _ in 0..3 {
        assert_eq!(fixture.send(&mut bearer("/api", &good)), Outcome::Continue);
    }
    assert_eq!(
        (
            fixture.metric("jwt_cache_miss"),
            fixture.metric("jwt_cache_hit")
        ),
        (1, 2)
    );
    // A cached token is still checked against the claims of the route.
    let config = config_with(json!({"jwt_cache_config": {}}), json!({}));
    let mut fixture = Fixture::new(&config);
    assert_eq!(fixture.send(&mut bearer("/api", &good)), Outcome::Continue);
    fixture
        .host
        .advance(Duration::from_secs(4_102_444_800 - 1_700_000_000 + 61));
    assert_eq!(
        fixture.reply(&mut bearer("/api", &good)).body,
        b"Jwt is expired"
    );
}

fn remote_config(extra: Value) -> String {
    let mut remote = json!({
        "http_uri": {"uri": "https://idp.example.com/.well-known/jwks.json", "cluster": "idp", "timeout": "2s"},
        "cache_duration": "300s",
    });
    for (key, value) in extra.as_object().unwrap() {
        remote[key] = value.clone();
    }
    json!({
        "providers": {"p": {"issuer": "https://issuer.example.com", "remote_jwks": remote}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}],
    })
    .to_string()
}

fn jwks_answer(token: u32, status: &str, body: &str) -> CalloutResponse {
    CalloutResponse::Http(HttpCalloutResponse {
        token,
        headers: vec![(":status".into(), status.into())],
        body: body.as_bytes().to_vec(),
        trailers: Vec::new(),
    })
}

#[test]
fn remote_keys_are_fetched_once_while_requests_wait() {
    let mut fixture = Fixture::new(&remote_config(json!({})));
    assert_eq!(fixture.filter.tick_period(), Some(Duration::from_secs(1)));
    let (mut first, mut second) = (fixture.driver(), fixture.driver());
    let mut first_request = bearer("/a", &token("ES384"));
    let mut second_request = bearer("/b", &token("RS256"));
    assert_eq!(
        first.on_request_headers(&mut first_request, &mut fixture.host),
        Outcome::Pause
    );
    assert_eq!(
        second.on_request_headers(&mut second_request, &mut fixture.host),
        Outcome::Pause
    );
    let callouts = fixture.host.http_callouts().to_vec();
    assert_eq!(callouts.len(), 1, "one fetch for both streams");
    let (fetch, callout) = &callouts[0];
    assert_eq!(callout.cluster, "idp");
    assert!(callout
        .headers
        .contains(&(":path".into(), "/.well-known/jwks.json".into())));
    // Before the answer, waking changes nothing.
    assert_eq!(
        second.on_wake(&mut second_request, &mut fixture.host),
        Outcome::Wait
    );
    let answer = jwks_answer(*fetch, "200", &jwks());
    assert!(matches!(
        first.on_callout_response(&mut first_request, &mut fixture.host, answer),
        Outcome::Resume(_)
    ));
    assert!(first.wakes_paused_after_callout());
    assert!(matches!(
        second.on_wake(&mut second_request, &mut fixture.host),
        Outcome::Resume(_)
    ));
    assert_eq!(first_request.header("authorization"), None);
    assert_eq!(fixture.metric("jwks_fetch_success"), 1);
    // Keys are cached: the next request is decided at once.
    assert_eq!(
        fixture.send(&mut bearer("/c", &token("EdDSA"))),
        Outcome::Continue
    );
    assert_eq!(fixture.host.http_callouts().len(), 1);
    // After cache_duration a request fetches again.
    fixture.host.advance(Duration::from_secs(300));
    assert_eq!(
        fixture.send(&mut bearer("/d", &token("RS256"))),
        Outcome::Pause
    );
    assert_eq!(fixture.host.http_callouts().len(), 2);
}

#[test]
fn failed_fetch_fails_closed_then_a_new_request_fetches_again() {
    let mut fixture = Fixture::new(&remote_config(json!({})));
    let (mut first, mut second) = (fixture.driver(), fixture.driver());
    let mut first_request = bearer("/a", &token("RS256"));
    let mut second_request = bearer("/b", &token("RS256"));
    first.on_request_headers(&mut first_request, &mut fixture.host);
    second.on_request_headers(&mut second_request, &mut fixture.host);
    let token_id = fixture.host.http_callouts()[0].0;
    let failure = CalloutResponse::Http(HttpCalloutResponse {
        token: token_id,
        ..HttpCalloutResponse::default()
    });
    let Outcome::Reply(reply) =
        first.on_callout_response(&mut first_request, &mut fixture.host, failure)
    else {
        panic!("expected a reply");
    };
    assert_eq!(
        (reply.status, reply.body.as_slice()),
        (401, &b"Jwks remote fetch is failed"[..])
    );
    let Outcome::Reply(reply) = second.on_wake(&mut second_request, &mut fixture.host) else {
        panic!("expected a reply");
    };
    assert_eq!(reply.body, b"Jwks remote fetch is failed");
    assert_eq!(fixture.metric("jwks_fetch_failed"), 1);
    assert_eq!(fixture.metric("denied_jwks_fetch_failed"), 2);
    // An invalid key set is a failed fetch too; a later request tries again.
    let mut third = fixture.driver();
    let mut third_request = bearer("/c", &token("RS256"));
    assert_eq!(
        third.on_request_headers(&mut third_request, &mut fixture.host),
        Outcome::Pause
    );
    let token_id = fixture.host.http_callouts()[1].0;
    let answer = jwks_answer(token_id, "200", r#"{"keys": "nope"}"#);
    assert!(matches!(
        third.on_callout_response(&mut third_request, &mut fixture.host, answer),
        Outcome::Reply(_)
    ));
    assert!(fixture
        .host
        .logs()
        .iter()
        .any(|(_, line)| line.contains("[keys] in Jwks is not an array")));
}

#[test]
fn dispatch_failure_answers_immediately() {
    let mut host = MemoryHost::new().with_failing_callouts();
    let filter =
        Rc::new(configure::<JwtAuthn>(remote_config(json!({})).as_bytes(), &mut host).unwrap());
    let mut driver = StreamDriver::new(Some(filter));
    let Outcome::Reply(reply) =
        driver.on_request_headers(&mut bearer("/", &token("RS256")), &mut host)
    else {
        panic!("expected a reply");
    };
    assert_eq!(reply.body, b"Jwks remote fetch is failed");
}

#[test]
fn retries_follow_the_backoff_on_the_root_tick() {
    let config = remote_config(
        json!({"retry_policy": {"num_retries": 1, "retry_back_off": {"base_interval": "0.2s"}}}),
    );
    let mut fixture = Fixture::new(&config);
    assert_eq!(
        fixture.filter.tick_period(),
        Some(Duration::from_millis(200))
    );
    let mut stream = fixture.driver();
    let mut request = bearer("/a", &token("RS256"));
    stream.on_request_headers(&mut request, &mut fixture.host);
    let first = fixture.host.http_callouts()[0].0;
    assert_eq!(
        stream.on_callout_response(
            &mut request,
            &mut fixture.host,
            jwks_answer(first, "503", "")
        ),
        Outcome::Wait,
        "a retry is scheduled: keep waiting"
    );
    fixture.filter.on_tick(&mut fixture.host);
    assert_eq!(
        fixture.host.http_callouts().len(),
        1,
        "not before the backoff"
    );
    fixture.host.advance(Duration::from_millis(200));
    fixture.filter.on_tick(&mut fixture.host);
    let second = fixture.host.http_callouts()[1].0;
    // The retry was dispatched by the root: its answer comes to the root, then streams wake.
    fixture
        .filter
        .on_fetch_answer(&jwks_answer(second, "200", &jwks()), &fixture.host);
    assert!(matches!(
        stream.on_wake(&mut request, &mut fixture.host),
        Outcome::Resume(_)
    ));
}

#[test]
fn async_fetch_loads_keys_in_the_background() {
    let config = remote_config(json!({"async_fetch": {"failed_refetch_duration": "0.5s"}}));
    let mut fixture = Fixture::new(&config);
    fixture.filter.on_tick(&mut fixture.host);
    let first = fixture.host.http_callouts()[0].0;
    fixture
        .filter
        .on_fetch_answer(&jwks_answer(first, "200", &jwks()), &fixture.host);
    assert_eq!(
        fixture.send(&mut bearer("/", &token("RS256"))),
        Outcome::Continue
    );
    // Refreshed at cache_duration; a failed refresh keeps the old keys.
    fixture.host.advance(Duration::from_secs(300));
    fixture.filter.on_tick(&mut fixture.host);
    let refresh = fixture.host.http_callouts()[1].0;
    fixture
        .filter
        .on_fetch_answer(&jwks_answer(refresh, "500", ""), &fixture.host);
    assert_eq!(
        fixture.send(&mut bearer("/", &token("RS256"))),
        Outcome::Continue
    );
    fixture.host.advance(Duration::from_millis(500));
    fixture.filter.on_tick(&mut fixture.host);
    assert_eq!(fixture.host.http_callouts().len(), 3);
}

#[test]
fn an_abandoned_fetch_is_taken_over_by_the_root() {
    let mut fixture = Fixture::new(&remote_config(json!({})));
    let (mut owner, mut waiter) = (fixture.driver(), fixture.driver());
    let mut owner_request = bearer("/a", &token("RS256"));
    let mut waiter_request = bearer("/b", &token("RS256"));
    owner.on_request_headers(&mut owner_request, &mut fixture.host);
    waiter.on_request_headers(&mut waiter_request, &mut fixture.host);
    owner.on_log(&mut owner_request, &mut fixture.host);
    fixture.filter.on_tick(&mut fixture.host);
    let callouts = fixture.host.http_callouts().to_vec();
    assert_eq!(callouts.len(), 2);
    fixture
        .filter
        .on_fetch_answer(&jwks_answer(callouts[1].0, "200", &jwks()), &fixture.host);
    assert!(matches!(
        waiter.on_wake(&mut waiter_request, &mut fixture.host),
        Outcome::Resume(_)
    ));
}

#[test]
fn configuration_errors_name_the_field() {
    let jwks = jwks();
    let cases = [
        (
            json!({"providers": {"p": {}}}),
            "providers.p: one of `remote_jwks` and `local_jwks` must be set",
        ),
        (
            json!({"providers": {"p": {"local_jwks": {"inline_string": "{}"}}}}),
            "providers.p.local_jwks: invalid JWKS: Jwks does not have [keys] field",
        ),
        (
            json!({"providers": {"p": {"local_jwks": {"filename": "/etc/jwks.json"}}}}),
            "providers.p.local_jwks.filename: not supported by the wasm jwt_authn filter",
        ),
        (
            json!({"providers": {"p": {"local_jwks": {"inline_string": jwks}, "payload_in_metadata": "x"}}}),
            "providers.p.payload_in_metadata: not supported",
        ),
        (
            json!({"providers": {"p": {"local_jwks": {"inline_string": jwks}, "remote_jwks": {"http_uri": {"uri": "https://a/b", "cluster": "c", "timeout": "1s"}}}}}),
            "providers.p.local_jwks: only one of",
        ),
        (
            json!({"providers": {"p": {"remote_jwks": {"http_uri": {"uri": "ftp://a/b", "cluster": "c", "timeout": "1s"}}}}}),
            "providers.p.remote_jwks.http_uri.uri: \"ftp://a/b\" is not an absolute http(s) URI",
        ),
        (
            json!({"providers": {"p": {"remote_jwks": {"http_uri": {"uri": "https://a/b", "cluster": "c", "timeout": "1s"}, "retry_policy": {"retry_on": "5xx,bogus"}}}}}),
            "providers.p.remote_jwks.retry_policy.retry_on: \"bogus\" is not one of",
        ),
        (
            json!({"rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "nope"}}]}),
            "rules[0].requires.provider_name: Required provider ['nope'] is not configured.",
        ),
        (
            json!({"rules": [{"match": {"prefix": "/"}, "requirement_name": "nope"}]}),
            "rules[0].requirement_name: \"nope\" is not in `requirement_map`",
        ),
        (
            json!({"rules": [{"match": {"prefix": "/", "grpc": {}}}]}),
            "rules[0].match.grpc: not supported",
        ),
        (
            json!({"rules": [{"match": {}}]}),
            "rules[0].match: exactly one of",
        ),
        (
            json!({"requirement_map": {"r": {"requires_any": {"requirements": [{}]}}}}),
            "requirement_map.r.requires_any.requirements: must have at least 2 items",
        ),
        (
            json!({"filter_state_rules": {"name": "x"}}),
            "filter_state_rules: not supported",
        ),
        (
            json!({"providers": {"p": {"local_jwks": {"inline_string": jwks}, "issuerr": "x"}}}),
            "providers.p.issuerr: unknown field `issuerr`",
        ),
        (
            json!({"@type": "type.googleapis.com/other"}),
            "@type: must be",
        ),
    ];
    for (config, expected) in cases {
        let mut host = MemoryHost::new();
        let error = configure::<JwtAuthn>(config.to_string().as_bytes(), &mut host)
            .err()
            .unwrap();
        assert!(error.to_string().contains(expected), "{config}: {error}");
    }
    let mut host = MemoryHost::new();
    let pasted = json!({"@type": crate::config::TYPE_URL, "providers": {}, "stat_prefix": "edge"});
    let filter = configure::<JwtAuthn>(pasted.to_string().as_bytes(), &mut host).unwrap();
    let mut driver = StreamDriver::new(Some(Rc::new(filter)));
    driver.on_request_headers(&mut get("/"), &mut host);
    assert_eq!(host.metric("edge.jwt_authn.allowed"), Some(1));
}
