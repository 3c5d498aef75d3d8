//! Code shared by the fuzz targets (`fuzz_targets/*.rs`). Each target is one line that calls
//! a function here, so the oracles can be read (and reused) in one place.
//!
//! The oracle of every target is first "no panic, no hang" (libFuzzer reports both); some add
//! semantic checks that panic on a violation (a canonical path must be idempotent, an accepted
//! token must verify independently, a parsed header map has one encoding).

pub mod hostcalls;

use std::rc::Rc;
use std::sync::OnceLock;

use wasmesh_sdk::adapter::{configure, HttpFilter, Outcome, StreamDriver};
use wasmesh_sdk::request::MemoryRequest;
use wasmesh_sdk::testing::MemoryHost;

/// Parses `data` as the plugin configuration of filter `F` and builds the filter, exactly as
/// `proxy_on_configure` does. Refusing is fine (and must say why); panicking is a bug.
pub fn configure_filter<F: HttpFilter>(data: &[u8]) {
    let mut host = MemoryHost::new();
    match configure::<F>(data, &mut host) {
        Ok(filter) => drop(filter),
        Err(error) => assert!(
            !error.to_string().is_empty(),
            "a configuration error must explain itself"
        ),
    }
}

/// The independent test vectors of the JWT filter (keys and tokens made by PyJWT).
const VECTORS: &str = include_str!("../../filters/jwt-authn/tests/fixtures/vectors.json");

fn vectors() -> &'static serde_json::Value {
    static VALUE: OnceLock<serde_json::Value> = OnceLock::new();
    VALUE.get_or_init(|| serde_json::from_str(VECTORS).unwrap_or_default())
}

fn fixture_jwks() -> &'static wasmesh_jwt_authn::jwks::Jwks {
    static JWKS: OnceLock<wasmesh_jwt_authn::jwks::Jwks> = OnceLock::new();
    JWKS.get_or_init(|| {
        let text = vectors()
            .get("jwks")
            .map(|v| v.to_string())
            .unwrap_or_default();
        wasmesh_jwt_authn::jwks::parse(text.as_bytes()).expect("the fixture JWKS parses")
    })
}

/// The JWT filter, configured once with the fixture keys and every token location.
fn jwt_filter() -> Rc<wasmesh_jwt_authn::JwtAuthn> {
    thread_local! {
        static FILTER: Rc<wasmesh_jwt_authn::JwtAuthn> = {
            let jwks = vectors().get("jwks").map(|v| v.to_string()).unwrap_or_default();
            let config = serde_json::json!({
                "providers": {"p": {
                    "issuer": "https://issuer.example.com",
                    "audiences": ["https://api.example.com"],
                    "local_jwks": {"inline_string": jwks},
                    "from_headers": [{"name": "authorization", "value_prefix": "Bearer "},
                                     {"name": "x-token"}],
                    "from_params": ["access_token"],
                    "forward_payload_header": "x-jwt-payload",
                    "claim_to_headers": [{"header_name": "x-sub", "claim_name": "sub"},
                                         {"header_name": "x-level", "claim_name": "realm.level"}],
                }},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}],
            });
            let mut host = MemoryHost::new();
            let filter = configure::<wasmesh_jwt_authn::JwtAuthn>(config.to_string().as_bytes(), &mut host)
                .expect("the fuzzing configuration is valid");
            Rc::new(filter)
        };
    }
    FILTER.with(Rc::clone)
}

/// A token, parsed and verified on its own, then presented to the configured filter in each
/// place it looks. Oracle: the filter only lets a request through when the token parses and
/// its signature verifies with the fixture keys (checked here independently of the filter's
/// decision path).
pub fn check_token(data: &[u8]) {
    let token = String::from_utf8_lossy(data);
    let independently_valid = match wasmesh_jwt_authn::jwt::parse(&token) {
        Ok(jwt) => {
            let _ = jwt.claim("realm.roles");
            let _ = jwt.claim("a.b.c.d");
            wasmesh_jwt_authn::verify::verify_signature(&jwt, fixture_jwks())
                == wasmesh_jwt_authn::Status::Ok
        }
        Err(_) => false,
    };
    let filter = jwt_filter();
    let requests = [
        base_request().with_header("authorization", &format!("Bearer {token}")),
        base_request().with_header("x-token", &token),
        MemoryRequest::new()
            .with_header(":method", "GET")
            .with_header(":path", &format!("/api?access_token={token}"))
            .with_header(":authority", "api.example.com"),
    ];
    for mut request in requests {
        let mut host = MemoryHost::new();
        let mut driver = StreamDriver::new(Some(filter.clone()));
        let outcome = driver.on_request_headers(&mut request, &mut host);
        // Only for tokens made of JWT characters: extraction legitimately cuts a token at a
        // `&` (query), a `,` or a space (header), so a longer input can carry a valid token.
        let jwt_alphabet = token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if outcome == Outcome::Continue && jwt_alphabet {
            assert!(
                independently_valid,
                "the filter accepted a token that does not verify: {token:?}"
            );
        }
    }
}

/// The RSA vectors of the JWT filter (keys and signatures made by pyca/cryptography).
const RSA_VECTORS: &str = include_str!("../../filters/jwt-authn/tests/fixtures/rsa_vectors.json");

/// The algorithms [`check_rsa`] picks from: the filter's scheme and the `jsonwebtoken` one.
const RSA_ALGORITHMS: [(
    wasmesh_jwt_authn::rsa::Padding,
    wasmesh_jwt_authn::rsa::Hash,
    jsonwebtoken::Algorithm,
); 6] = {
    use jsonwebtoken::Algorithm;
    use wasmesh_jwt_authn::rsa::{Hash, Padding};
    [
        (Padding::Pkcs1v15, Hash::Sha256, Algorithm::RS256),
        (Padding::Pkcs1v15, Hash::Sha384, Algorithm::RS384),
        (Padding::Pkcs1v15, Hash::Sha512, Algorithm::RS512),
        (Padding::Pss, Hash::Sha256, Algorithm::PS256),
        (Padding::Pss, Hash::Sha384, Algorithm::PS384),
        (Padding::Pss, Hash::Sha512, Algorithm::PS512),
    ]
};

/// The keys of the RSA vectors, for the filter's verifier and for RustCrypto's, and the message
/// their valid signatures sign.
struct RsaFixture {
    keys: Vec<(wasmesh_jwt_authn::rsa::RsaPublicKey, jsonwebtoken::DecodingKey)>,
    message: Vec<u8>,
}

fn rsa_fixture() -> &'static RsaFixture {
    static FIXTURE: OnceLock<RsaFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        use base64::Engine;
        let decode = |value: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(value.as_str().unwrap_or_default())
                .unwrap_or_default()
        };
        let vectors: serde_json::Value = serde_json::from_str(RSA_VECTORS).unwrap_or_default();
        let keys = vectors["keys"].as_array().cloned().unwrap_or_default();
        let message = decode(&keys[0]["cases"][0]["message"]);
        let keys = keys
            .iter()
            .filter_map(|key| {
                let (n, e) = (decode(&key["n"]), decode(&key["e"]));
                let ours = wasmesh_jwt_authn::rsa::RsaPublicKey::new(&n, &e)?;
                Some((ours, jsonwebtoken::DecodingKey::from_rsa_raw_components(&n, &e)))
            })
            .collect();
        RsaFixture { keys, message }
    })
}

/// `data` is a key index, an algorithm index and a signature of the vectors' message. The
/// filter's RSA verifier must answer exactly as RustCrypto's does. The seeds are the vectors'
/// valid signatures, so the fuzzer mutates signatures that verify, where a wrong answer would
/// hide.
pub fn check_rsa(data: &[u8]) {
    let Some((&[key_index, algorithm_index], signature)) = data.split_first_chunk::<2>() else {
        return;
    };
    let fixture = rsa_fixture();
    let Some((ours, theirs)) = fixture.keys.get(usize::from(key_index) % fixture.keys.len().max(1))
    else {
        return;
    };
    let (padding, hash, algorithm) =
        RSA_ALGORITHMS[usize::from(algorithm_index) % RSA_ALGORITHMS.len()];
    let accepted = ours.verify(padding, hash, &fixture.message, signature);
    let rust_crypto = (jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.verifier_factory)(
        &algorithm, theirs,
    )
    .is_ok_and(|verifier| verifier.verify(&fixture.message, &signature.to_vec()).is_ok());
    assert_eq!(
        accepted, rust_crypto,
        "{algorithm:?} with key {key_index}: the filter says {accepted}, RustCrypto {rust_crypto}"
    );
}

fn base_request() -> MemoryRequest {
    MemoryRequest::new()
        .with_header(":method", "GET")
        .with_header(":path", "/api")
        .with_header(":authority", "api.example.com")
        .with_header(":scheme", "https")
}

/// A JWKS document: parsing must not panic, and every token of the fixture must verify or be
/// refused against the parsed keys without panicking.
pub fn check_jwks(data: &[u8]) {
    let Ok(jwks) = wasmesh_jwt_authn::jwks::parse(data) else {
        return;
    };
    let tokens = vectors()
        .get("valid")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .chain(
            vectors()
                .get("attacks")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten(),
        )
        .filter_map(|vector| vector.get("token").and_then(|t| t.as_str()));
    for token in tokens {
        if let Ok(jwt) = wasmesh_jwt_authn::jwt::parse(token) {
            let _ = wasmesh_jwt_authn::verify::verify_signature(&jwt, &jwks);
        }
    }
}

/// Header-map deserialization. Oracle: what parses has exactly one encoding, and re-parses to
/// the same pairs.
pub fn check_headermap(data: &[u8]) {
    use wasmesh_harness::headermap::{deserialize, serialize, serialized_len};
    if let Ok(pairs) = deserialize(data) {
        let bytes = serialize(&pairs);
        assert_eq!(bytes.len(), serialized_len(&pairs));
        if data.len() > 1 {
            assert_eq!(bytes, data, "a header map has one encoding");
        }
        assert_eq!(deserialize(&bytes).ok(), Some(pairs));
    }
}

/// Path normalization: the SDK's `normalize_path` (JWT rules, ext_authz allow-lists, the
/// example filter) and the RBAC filter's request normalization under each escaped-slash action
/// (RBAC and Istio policies). Oracle: the output is canonical and, for the SDK, a fixed point.
pub fn check_path(data: &[u8]) {
    use wasmesh_rbac::normalize::{EscapedSlashesAction, Normalization};
    use wasmesh_sdk::matcher::path::{canonicalize_path, merge_slashes, normalize_path};
    let path = String::from_utf8_lossy(data);
    for action in [
        EscapedSlashesAction::UnescapeAndForward,
        EscapedSlashesAction::RejectRequest,
        EscapedSlashesAction::KeepUnchanged,
    ] {
        let normalization = Normalization {
            path_with_escaped_slashes_action: action,
            ..Normalization::default()
        };
        if let Ok(normalized) = normalization.path(&path) {
            let out = normalized.path;
            assert!(
                out.starts_with('/') && !out.contains("//") && !out.contains('\\'),
                "{path:?} -> {out:?}"
            );
            assert!(
                !out.split('/')
                    .any(|segment| segment == "." || segment == ".."),
                "dot segment left by RBAC ({action:?}): {path:?} -> {out:?}"
            );
            if action != EscapedSlashesAction::KeepUnchanged {
                let lower = out.to_ascii_lowercase();
                assert!(
                    !lower.contains("%2f") && !lower.contains("%5c"),
                    "escaped slash left by RBAC ({action:?}): {path:?} -> {out:?}"
                );
            }
        }
        let _ = normalization.authority(&path);
    }
    let _ = canonicalize_path(&path);
    let _ = merge_slashes(&path);
    let Ok(out) = normalize_path(&path) else {
        return;
    };
    assert_eq!(
        normalize_path(&out).as_deref(),
        Ok(out.as_str()),
        "not idempotent: {path:?}"
    );
    assert!(out.starts_with('/'), "{path:?} -> {out:?}");
    assert!(!out.contains("//"), "{path:?} -> {out:?}");
    assert!(
        !out.split('/')
            .any(|segment| segment == "." || segment == ".."),
        "dot segment left: {path:?} -> {out:?}"
    );
    assert!(
        out.is_ascii() && !out.contains(['\\', '?', '#']),
        "{path:?} -> {out:?}"
    );
    let lower = out.to_ascii_lowercase();
    assert!(
        !lower.contains("%2e") && !lower.contains("%00"),
        "{path:?} -> {out:?}"
    );
}
