//! Parsing a compact JWS token with the rules of Envoy's `jwt_verify` library: three
//! base64url sections, a JSON-object header with a supported `alg`, a JSON-object payload whose
//! registered claims have the right types. Nothing here trusts the token: the signature is
//! checked later against the provider's keys ([`crate::verify`]).

use base64::engine::general_purpose::GeneralPurpose;
use base64::engine::{DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::status::Status;

/// Tokens longer than this are refused as malformed before any decoding (Envoy's default
/// request-header limit is 60 KiB; a token near it is an attack, not a credential).
pub const MAX_TOKEN_BYTES: usize = 32 * 1024;

/// base64url, padding optional, as `absl::WebSafeBase64Unescape` accepts.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes base64url with or without padding.
pub fn decode_base64url(text: &str) -> Option<Vec<u8>> {
    BASE64URL.decode(text).ok()
}

/// Encodes base64url without padding.
pub fn encode_base64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The signature algorithms Envoy accepts in a token header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// ECDSA P-521 with SHA-512: parsed as Envoy does, but no key ever verifies it here (the
    /// pure-Rust crypto available has no P-521), so such tokens fail closed.
    Es512,
    /// HMAC with SHA-256.
    Hs256,
    /// HMAC with SHA-384.
    Hs384,
    /// HMAC with SHA-512.
    Hs512,
    /// Ed25519.
    EdDsa,
}

impl Alg {
    /// Parses a JOSE `alg` name (case-sensitive; `none` is not an algorithm here).
    pub fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "ES512" => Alg::Es512,
            "HS256" => Alg::Hs256,
            "HS384" => Alg::Hs384,
            "HS512" => Alg::Hs512,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }

    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::Es512 => "ES512",
            Alg::Hs256 => "HS256",
            Alg::Hs384 => "HS384",
            Alg::Hs512 => "HS512",
            Alg::EdDsa => "EdDSA",
        }
    }
}

/// A parsed (not yet verified) token.
#[derive(Debug, Clone, PartialEq)]
pub struct Jwt {
    /// `alg` from the header.
    pub alg: Alg,
    /// `kid` from the header, empty when absent.
    pub kid: String,
    /// `iss`, empty when absent.
    pub iss: String,
    /// `sub`, empty when absent.
    pub sub: String,
    /// `aud` as a list (a single string becomes one entry).
    pub audiences: Vec<String>,
    /// `nbf` in Unix seconds.
    pub nbf: Option<u64>,
    /// `exp` in Unix seconds. Unlike Envoy, an explicit `"exp": 0` is an expiry (in 1970),
    /// not the absence of one.
    pub exp: Option<u64>,
    /// The header section as sent (base64url).
    pub header_base64url: String,
    /// The payload section as sent (base64url), forwarded by `forward_payload_header`.
    pub payload_base64url: String,
    /// The decoded signature.
    pub signature: Vec<u8>,
    /// The payload claims.
    pub claims: Map<String, Value>,
}

impl Jwt {
    /// The bytes the signature covers: `header.payload` as sent.
    pub fn signed_data(&self) -> String {
        format!("{}.{}", self.header_base64url, self.payload_base64url)
    }

    /// A claim by dotted path (`realm.roles` looks into the `realm` object), as Envoy's
    /// `StructUtils::GetValue`.
    pub fn claim(&self, dotted: &str) -> Option<&Value> {
        let mut names = dotted.split('.');
        let mut current = self.claims.get(names.next()?)?;
        for name in names {
            current = current.as_object()?.get(name)?;
        }
        Some(current)
    }
}

/// A JSON object that refuses duplicate member names: `{"exp": 1, "exp": 9999999999}` must not
/// be read one way by us and another way by the upstream.
struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueObject, A::Error> {
                let mut map = Map::new();
                while let Some((key, value)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&key) {
                        return Err(de::Error::custom(format!("duplicate member {key:?}")));
                    }
                    map.insert(key, value);
                }
                Ok(UniqueObject(map))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

fn parse_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    serde_json::from_slice::<UniqueObject>(bytes)
        .ok()
        .map(|object| object.0)
}

/// Reads a string member: `Ok(None)` when absent, `Err(())` when of another type.
fn string_member(object: &Map<String, Value>, name: &str) -> Result<Option<String>, ()> {
    match object.get(name) {
        None => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(()),
    }
}

enum TimeClaim {
    Absent,
    Value(u64),
    WrongType,
    OutOfRange,
}

/// A NumericDate as Envoy reads it: any JSON number, truncated towards zero, in
/// `0 <= value < 2^64`.
fn time_member(object: &Map<String, Value>, name: &str) -> TimeClaim {
    match object.get(name) {
        None => TimeClaim::Absent,
        Some(Value::Number(number)) => {
            if let Some(value) = number.as_u64() {
                return TimeClaim::Value(value);
            }
            match number.as_f64() {
                Some(value) if (0.0..18_446_744_073_709_551_615.0).contains(&value) =>
                {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    TimeClaim::Value(value as u64)
                }
                _ => TimeClaim::OutOfRange,
            }
        }
        Some(_) => TimeClaim::WrongType,
    }
}

/// Parses a compact token. The error is the first problem Envoy would report.
pub fn parse(token: &str) -> Result<Jwt, Status> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Status::JwtBadFormat);
    }
    // Envoy splits on '.' skipping empty pieces and wants exactly three.
    let sections: Vec<&str> = token.split('.').filter(|piece| !piece.is_empty()).collect();
    let [header_b64, payload_b64, signature_b64] = sections.as_slice() else {
        return Err(Status::JwtBadFormat);
    };

    let header_bytes = decode_base64url(header_b64).ok_or(Status::JwtHeaderParseErrorBadBase64)?;
    let header = parse_object(&header_bytes).ok_or(Status::JwtHeaderParseErrorBadJson)?;
    let alg_name = match header.get("alg") {
        Some(Value::String(name)) => name,
        _ => return Err(Status::JwtHeaderBadAlg),
    };
    let alg = Alg::parse(alg_name).ok_or(Status::JwtHeaderNotImplementedAlg)?;
    let kid = string_member(&header, "kid")
        .map_err(|()| Status::JwtHeaderBadKid)?
        .unwrap_or_default();

    let payload_bytes =
        decode_base64url(payload_b64).ok_or(Status::JwtPayloadParseErrorBadBase64)?;
    let claims = parse_object(&payload_bytes).ok_or(Status::JwtPayloadParseErrorBadJson)?;
    let iss = string_member(&claims, "iss")
        .map_err(|()| Status::JwtPayloadParseErrorIssNotString)?
        .unwrap_or_default();
    let sub = string_member(&claims, "sub")
        .map_err(|()| Status::JwtPayloadParseErrorSubNotString)?
        .unwrap_or_default();
    let mut times = [None; 3];
    for (slot, (name, not_integer, out_of_range)) in times.iter_mut().zip([
        (
            "iat",
            Status::JwtPayloadParseErrorIatNotInteger,
            Status::JwtPayloadParseErrorIatOutOfRange,
        ),
        (
            "nbf",
            Status::JwtPayloadParseErrorNbfNotInteger,
            Status::JwtPayloadParseErrorNbfOutOfRange,
        ),
        (
            "exp",
            Status::JwtPayloadParseErrorExpNotInteger,
            Status::JwtPayloadParseErrorExpOutOfRange,
        ),
    ]) {
        *slot = match time_member(&claims, name) {
            TimeClaim::Absent => None,
            TimeClaim::Value(value) => Some(value),
            TimeClaim::WrongType => return Err(not_integer),
            TimeClaim::OutOfRange => return Err(out_of_range),
        };
    }
    let [_iat, nbf, exp] = times;
    string_member(&claims, "jti").map_err(|()| Status::JwtPayloadParseErrorJtiNotString)?;
    let audiences = match claims.get("aud") {
        None => Vec::new(),
        Some(Value::String(audience)) => vec![audience.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or(Status::JwtPayloadParseErrorAudNotString)?,
        Some(_) => return Err(Status::JwtPayloadParseErrorAudNotString),
    };

    let signature =
        decode_base64url(signature_b64).ok_or(Status::JwtSignatureParseErrorBadBase64)?;

    Ok(Jwt {
        alg,
        kid,
        iss,
        sub,
        audiences,
        nbf,
        exp,
        header_base64url: (*header_b64).to_string(),
        payload_base64url: (*payload_b64).to_string(),
        signature,
        claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(json: &str) -> String {
        encode_base64url(json.as_bytes())
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.c2ln", b64(header), b64(payload))
    }

    #[test]
    fn parses_registered_claims() {
        let jwt = parse(&token(
            r#"{"alg":"RS256","kid":"k1"}"#,
            r#"{"iss":"i","sub":"s","aud":["a","b"],"exp":20,"nbf":10.9,"iat":5,"x":{"y":1}}"#,
        ))
        .unwrap();
        assert_eq!(jwt.alg, Alg::Rs256);
        assert_eq!(jwt.kid, "k1");
        assert_eq!((jwt.iss.as_str(), jwt.sub.as_str()), ("i", "s"));
        assert_eq!(jwt.audiences, ["a", "b"]);
        assert_eq!((jwt.nbf, jwt.exp), (Some(10), Some(20)));
        assert_eq!(jwt.signature, b"sig");
        assert_eq!(jwt.claim("x.y"), Some(&Value::from(1)));
        assert_eq!(jwt.claim("x.z"), None);
        assert_eq!(jwt.claim("iss.z"), None);
        assert!(jwt.signed_data().ends_with(&jwt.payload_base64url));
    }

    #[test]
    fn single_audience_and_padding_are_accepted() {
        // 22 bytes of JSON: 30 base64 characters and `==`.
        let header = base64::engine::general_purpose::URL_SAFE.encode(br#"{"alg":"ES256","y":12}"#);
        assert!(header.ends_with('='));
        let jwt = parse(&format!("{header}.{}.c2ln", b64(r#"{"aud":"a"}"#))).unwrap();
        assert_eq!(jwt.audiences, ["a"]);
        assert_eq!(jwt.exp, None);
    }

    #[test]
    fn errors_follow_envoy_order_and_kinds() {
        let good_header = r#"{"alg":"RS256"}"#;
        let cases: Vec<(String, Status)> = vec![
            ("abc".into(), Status::JwtBadFormat),
            ("a.b".into(), Status::JwtBadFormat),
            ("a.b.c.d".into(), Status::JwtBadFormat),
            (
                format!("{}.{}.", b64(good_header), b64("{}")),
                Status::JwtBadFormat,
            ),
            ("*.e30.c2ln".into(), Status::JwtHeaderParseErrorBadBase64),
            (token("[1]", "{}"), Status::JwtHeaderParseErrorBadJson),
            (token("{}", "{}"), Status::JwtHeaderBadAlg),
            (token(r#"{"alg":5}"#, "{}"), Status::JwtHeaderBadAlg),
            (
                token(r#"{"alg":"none"}"#, "{}"),
                Status::JwtHeaderNotImplementedAlg,
            ),
            (
                token(r#"{"alg":"rs256"}"#, "{}"),
                Status::JwtHeaderNotImplementedAlg,
            ),
            (
                token(r#"{"alg":"RS256","kid":1}"#, "{}"),
                Status::JwtHeaderBadKid,
            ),
            (
                token(r#"{"alg":"RS256","alg":"HS256"}"#, "{}"),
                Status::JwtHeaderParseErrorBadJson,
            ),
            (
                format!("{}.%%.c2ln", b64(good_header)),
                Status::JwtPayloadParseErrorBadBase64,
            ),
            (
                token(good_header, "\"str\""),
                Status::JwtPayloadParseErrorBadJson,
            ),
            (
                token(good_header, "null"),
                Status::JwtPayloadParseErrorBadJson,
            ),
            (
                token(good_header, r#"{"exp":1,"exp":2}"#),
                Status::JwtPayloadParseErrorBadJson,
            ),
            (
                token(good_header, r#"{"iss":1}"#),
                Status::JwtPayloadParseErrorIssNotString,
            ),
            (
                token(good_header, r#"{"sub":[]}"#),
                Status::JwtPayloadParseErrorSubNotString,
            ),
            (
                token(good_header, r#"{"iat":"1"}"#),
                Status::JwtPayloadParseErrorIatNotInteger,
            ),
            (
                token(good_header, r#"{"nbf":-1}"#),
                Status::JwtPayloadParseErrorNbfOutOfRange,
            ),
            (
                token(good_header, r#"{"exp":"soon"}"#),
                Status::JwtPayloadParseErrorExpNotInteger,
            ),
            (
                token(good_header, r#"{"exp":1e30}"#),
                Status::JwtPayloadParseErrorExpOutOfRange,
            ),
            (
                token(good_header, r#"{"exp":null}"#),
                Status::JwtPayloadParseErrorExpNotInteger,
            ),
            (
                token(good_header, r#"{"jti":2}"#),
                Status::JwtPayloadParseErrorJtiNotString,
            ),
            (
                token(good_header, r#"{"aud":["a",1]}"#),
                Status::JwtPayloadParseErrorAudNotString,
            ),
            (
                token(good_header, r#"{"aud":{}}"#),
                Status::JwtPayloadParseErrorAudNotString,
            ),
            (
                format!("{}.{}.a*b", b64(good_header), b64("{}")),
                Status::JwtSignatureParseErrorBadBase64,
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(parse(&token).err(), Some(expected), "{token}");
        }
    }

    #[test]
    fn huge_and_hostile_inputs_are_refused_without_panicking() {
        let huge = format!("{}.{}.c2ln", "a".repeat(MAX_TOKEN_BYTES), "b");
        assert_eq!(parse(&huge).err(), Some(Status::JwtBadFormat));
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert_eq!(
            parse(&token(r#"{"alg":"RS256"}"#, &deep)).err(),
            Some(Status::JwtPayloadParseErrorBadJson)
        );
        for garbage in ["", ".", "..", "...", "\u{0}.\u{0}.\u{0}", "é.é.é"] {
            assert!(parse(garbage).is_err(), "{garbage:?}");
        }
    }
}
