//! What the real-Envoy tests share: Envoy's `jwt_authn` in front of the filter, how a case
//! becomes a request, and how a verdict is read off Envoy's response.

use serde_json::{json, Value};
use wasmesh_envoy::{Envoy, EnvoyBuilder, HttpRequest, HttpResponse, TestServer, WasmFilter};

use super::{Case, JwtVectors, Verdict};

/// Envoy's jwt_authn: tokens optional, payload stored as dynamic metadata `jwt_payload`.
pub fn jwt_authn(vectors: &JwtVectors) -> Value {
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"test": {
                "issuer": vectors.issuer,
                "local_jwks": {"inline_string": vectors.jwks},
                "payload_in_metadata": "jwt_payload",
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "test"}, {"allow_missing": {}}
            ]}}}],
        },
    })
}

/// Envoy with jwt_authn and the wasm filter; the connection manager appends the peer to
/// `x-forwarded-for` and does no path normalization (the filter does its own).
pub fn start_wasm_envoy(upstream: &TestServer, vectors: &JwtVectors, config: &str) -> Envoy {
    EnvoyBuilder::new()
        .connection_manager_field("use_remote_address", json!(true))
        .http_filter_json(jwt_authn(vectors))
        .wasm_filter(
            WasmFilter::new(super::wasm())
                .name("rbac")
                .configuration(config),
        )
        .upstream(upstream.addr())
        .start()
        .unwrap()
}

/// The request of `case`, with the bearer token of its user.
pub fn request_for(case: &Case, vectors: &JwtVectors) -> HttpRequest {
    let mut request = HttpRequest::new(case.method, case.path).header("host", case.authority);
    for (name, value) in &case.headers {
        request = request.header(*name, *value);
    }
    if let Some(user) = case.user {
        request = request.header("authorization", format!("Bearer {}", vectors.tokens[user]));
    }
    request
}

/// The verdict of Envoy's response: only local replies carry response-code details.
pub fn verdict_of(response: &HttpResponse) -> Verdict {
    match response.response_code_details() {
        Some(details) => Verdict::Denied {
            status: u32::from(response.status),
            details: details.to_string(),
            body: response.text(),
        },
        None => {
            assert_eq!(response.status, 200, "upstream answer: {}", response.text());
            Verdict::Allowed
        }
    }
}
