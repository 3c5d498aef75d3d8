//! JSON Web Key Sets, parsed with the rules of Envoy's `jwt_verify` library: every key is
//! checked on its own, unusable keys are skipped, and the set is valid if one key is usable.
//! Also the `{"kid": "-----BEGIN CERTIFICATE-----..."}` form (X.509 certificates holding RSA
//! keys, as Google publishes them), the one PEM form Envoy accepts in a key set.

use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::rsa::{significant, RsaPublicKey};
use serde_json::{Map, Value};

use crate::jwt::{decode_base64url, encode_base64url};
use crate::status::Status;

/// What kind of key, which decides the algorithm family it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA: RS* and PS* only.
    Rsa,
    /// EC on P-256: ES256 only.
    EcP256,
    /// EC on P-384: ES384 only.
    EcP384,
    /// EC on P-521: ES512 (never verifies here, see [`crate::jwt::Alg::Es512`]).
    EcP521,
    /// Symmetric secret: HS* only.
    Oct,
    /// Ed25519: EdDSA only.
    Ed25519,
}

/// One usable key.
#[derive(Clone)]
pub struct Key {
    /// `kid`, empty when absent.
    pub kid: String,
    /// `alg`, empty when absent.
    pub alg: String,
    /// Key type.
    pub kind: KeyKind,
    /// The key material, ready for its verifier.
    pub material: Material,
}

/// What a key verifies signatures with.
#[derive(Clone)]
pub enum Material {
    /// RSA: this crate's verifier ([`crate::rsa`]), constants precomputed.
    Rsa(RsaPublicKey),
    /// Every other key type: `jsonwebtoken`'s RustCrypto verifiers.
    Jwt(DecodingKey),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material (an `oct` key is a secret).
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A parsed key set.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    /// The usable keys, in document order.
    pub keys: Vec<Key>,
    /// Problems with skipped keys (for logs), as Envoy statuses.
    pub skipped: Vec<Status>,
}

/// Largest key set document accepted (a real one is a few KiB).
pub const MAX_JWKS_BYTES: usize = 512 * 1024;

/// Parses a key set. The error is the status Envoy reports for it: the first key's problem
/// when no key is usable, or a document-level problem.
pub fn parse(document: &[u8]) -> Result<Jwks, Status> {
    if document.len() > MAX_JWKS_BYTES {
        return Err(Status::JwksParseError);
    }
    let Ok(Value::Object(root)) = serde_json::from_slice::<Value>(document) else {
        return Err(Status::JwksParseError);
    };
    let Some(keys) = root.get("keys") else {
        if is_x509_map(&root) {
            return x509_keys(&root);
        }
        return Err(Status::JwksNoKeys);
    };
    let Value::Array(keys) = keys else {
        return Err(Status::JwksBadKeys);
    };
    let mut jwks = Jwks::default();
    for key in keys {
        let Value::Object(key) = key else {
            continue;
        };
        match parse_key(key) {
            Ok(key) => jwks.keys.push(key),
            Err(status) => jwks.skipped.push(status),
        }
    }
    if jwks.keys.is_empty() {
        return Err(jwks
            .skipped
            .first()
            .copied()
            .unwrap_or(Status::JwksNoValidKeys));
    }
    Ok(jwks)
}

enum Member<'a> {
    Missing,
    WrongType,
    Text(&'a str),
}

fn member<'a>(key: &'a Map<String, Value>, name: &str) -> Member<'a> {
    match key.get(name) {
        None => Member::Missing,
        Some(Value::String(text)) => Member::Text(text),
        Some(_) => Member::WrongType,
    }
}

fn required<'a>(
    key: &'a Map<String, Value>,
    name: &str,
    missing: Status,
    wrong_type: Status,
) -> Result<&'a str, Status> {
    match member(key, name) {
        Member::Text(text) => Ok(text),
        Member::Missing => Err(missing),
        Member::WrongType => Err(wrong_type),
    }
}

fn optional_text(key: &Map<String, Value>, name: &str) -> String {
    match member(key, name) {
        Member::Text(text) => text.to_string(),
        // Envoy ignores a `kid`/`alg` of the wrong type, as if absent.
        Member::Missing | Member::WrongType => String::new(),
    }
}

fn parse_key(key: &Map<String, Value>) -> Result<Key, Status> {
    let kty = required(key, "kty", Status::JwksMissingKty, Status::JwksBadKty)?;
    let kid = optional_text(key, "kid");
    let alg = optional_text(key, "alg");
    let (kind, material) = match kty {
        "RSA" => (KeyKind::Rsa, rsa_key(key, &alg)?),
        "EC" => jwt_material(ec_key(key, &alg)?),
        "oct" => jwt_material(oct_key(key, &alg)?),
        "OKP" => jwt_material(okp_key(key, &alg)?),
        _ => return Err(Status::JwksNotImplementedKty),
    };
    Ok(Key {
        kid,
        alg,
        kind,
        material,
    })
}

fn jwt_material((kind, key): (KeyKind, DecodingKey)) -> (KeyKind, Material) {
    (kind, Material::Jwt(key))
}

/// Checks RSA components the way BoringSSL's `RSA_check_key` and Envoy do: `e` is 3 or 65537,
/// the modulus is odd and 1024 to 4096 bits.
fn rsa_material(n: &[u8], e: &[u8]) -> Result<Material, Status> {
    let n = significant(n);
    let e = significant(e);
    if e != [3] && e != [1, 0, 1] {
        return Err(Status::JwksRsaParseError);
    }
    let bits = n.len() * 8;
    let odd = n.last().is_some_and(|byte| byte & 1 == 1);
    if !(1024..=4096).contains(&bits) || !odd {
        return Err(Status::JwksRsaParseError);
    }
    RsaPublicKey::new(n, e)
        .map(Material::Rsa)
        .ok_or(Status::JwksRsaParseError)
}

fn rsa_key(key: &Map<String, Value>, alg: &str) -> Result<Material, Status> {
    if !alg.is_empty() && !alg.starts_with("RS") && !alg.starts_with("PS") {
        return Err(Status::JwksRsaKeyBadAlg);
    }
    let n = required(key, "n", Status::JwksRsaKeyMissingN, Status::JwksRsaKeyBadN)?;
    let e = required(key, "e", Status::JwksRsaKeyMissingE, Status::JwksRsaKeyBadE)?;
    let (Some(n), Some(e)) = (decode_base64url(n), decode_base64url(e)) else {
        return Err(Status::JwksRsaParseError);
    };
    rsa_material(&n, &e)
}

fn ec_key(key: &Map<String, Value>, alg: &str) -> Result<(KeyKind, DecodingKey), Status> {
    if !alg.is_empty() && !alg.starts_with("ES") {
        return Err(Status::JwksEcKeyBadAlg);
    }
    let crv = match member(key, "crv") {
        Member::Text(crv) => crv,
        Member::Missing => "",
        Member::WrongType => return Err(Status::JwksEcKeyBadCrv),
    };
    if !alg.is_empty()
        && !crv.is_empty()
        && !matches!(
            (alg, crv),
            ("ES256", "P-256") | ("ES384", "P-384") | ("ES512", "P-521")
        )
    {
        return Err(Status::JwksEcKeyAlgNotCompatibleWithCrv);
    }
    let (kind, coordinate_len) =
        if alg == "ES256" || crv == "P-256" || (alg.is_empty() && crv.is_empty()) {
            (KeyKind::EcP256, 32)
        } else if alg == "ES384" || crv == "P-384" {
            (KeyKind::EcP384, 48)
        } else if alg == "ES512" || crv == "P-521" {
            (KeyKind::EcP521, 66)
        } else {
            return Err(Status::JwksEcKeyAlgOrCrvUnsupported);
        };
    let x = required(key, "x", Status::JwksEcKeyMissingX, Status::JwksEcKeyBadX)?;
    let y = required(key, "y", Status::JwksEcKeyMissingY, Status::JwksEcKeyBadY)?;
    let (Some(x), Some(y)) = (decode_base64url(x), decode_base64url(y)) else {
        return Err(Status::JwksEcXorYBadBase64);
    };
    if x.len() != coordinate_len || y.len() != coordinate_len {
        return Err(Status::JwksEcParseError);
    }
    let material = DecodingKey::from_ec_components(&encode_base64url(&x), &encode_base64url(&y))
        .map_err(|_| Status::JwksEcParseError)?;
    // A point off the curve is refused now, as BoringSSL refuses it when Envoy loads the key.
    let curve_alg = match kind {
        KeyKind::EcP384 => Some(Algorithm::ES384),
        KeyKind::EcP256 => Some(Algorithm::ES256),
        _ => None,
    };
    if let Some(curve_alg) = curve_alg {
        if (DEFAULT_PROVIDER.verifier_factory)(&curve_alg, &material).is_err() {
            return Err(Status::JwksEcParseError);
        }
    }
    Ok((kind, material))
}

fn oct_key(key: &Map<String, Value>, alg: &str) -> Result<(KeyKind, DecodingKey), Status> {
    if !alg.is_empty() && !matches!(alg, "HS256" | "HS384" | "HS512") {
        return Err(Status::JwksHmacKeyBadAlg);
    }
    let k = required(
        key,
        "k",
        Status::JwksHmacKeyMissingK,
        Status::JwksHmacKeyBadK,
    )?;
    match decode_base64url(k) {
        Some(secret) if !secret.is_empty() => Ok((KeyKind::Oct, DecodingKey::from_secret(&secret))),
        _ => Err(Status::JwksOctBadBase64),
    }
}

fn okp_key(key: &Map<String, Value>, alg: &str) -> Result<(KeyKind, DecodingKey), Status> {
    if !alg.is_empty() && alg != "EdDSA" {
        return Err(Status::JwksOkpKeyBadAlg);
    }
    let crv = required(
        key,
        "crv",
        Status::JwksOkpKeyMissingCrv,
        Status::JwksOkpKeyBadCrv,
    )?;
    if crv != "Ed25519" {
        return Err(Status::JwksOkpKeyCrvUnsupported);
    }
    let x = required(key, "x", Status::JwksOkpKeyMissingX, Status::JwksOkpKeyBadX)?;
    let x = decode_base64url(x).ok_or(Status::JwksOkpXBadBase64)?;
    if x.len() != 32 {
        return Err(Status::JwksOkpXWrongLength);
    }
    let material = DecodingKey::from_ed_components(&encode_base64url(&x))
        .map_err(|_| Status::JwksOkpXBadBase64)?;
    if (DEFAULT_PROVIDER.verifier_factory)(&Algorithm::EdDSA, &material).is_err() {
        return Err(Status::JwksOkpXWrongLength);
    }
    Ok((KeyKind::Ed25519, material))
}

const CERT_PREFIX: &str = "-----BEGIN CERTIFICATE-----\n";
const CERT_SUFFIX: &str = "\n-----END CERTIFICATE-----\n";

/// Envoy's test for the certificate map form: every member is a non-empty kid whose value is
/// one PEM certificate.
fn is_x509_map(root: &Map<String, Value>) -> bool {
    !root.is_empty()
        && root.iter().all(|(kid, value)| {
            !kid.is_empty()
                && value
                    .as_str()
                    .is_some_and(|pem| pem.starts_with(CERT_PREFIX) && pem.ends_with(CERT_SUFFIX))
        })
}

fn x509_keys(root: &Map<String, Value>) -> Result<Jwks, Status> {
    let mut jwks = Jwks::default();
    for (kid, pem) in root {
        let pem = pem.as_str().unwrap_or_default();
        let body: String = pem
            .get(CERT_PREFIX.len()..pem.len().saturating_sub(CERT_SUFFIX.len()))
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body)
            .map_err(|_| Status::JwksX509ParseError)?;
        let (n, e) = der::rsa_public_key_of_certificate(&der)?;
        jwks.keys.push(Key {
            kid: kid.clone(),
            alg: String::new(),
            kind: KeyKind::Rsa,
            material: rsa_material(n, e).map_err(|_| Status::JwksX509GetPubkeyError)?,
        });
    }
    Ok(jwks)
}

/// Just enough DER to find the RSA public key of an X.509 certificate.
mod der {
    use crate::status::Status;

    /// `rsaEncryption` (1.2.840.113549.1.1.1).
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

    /// One TLV: (tag, contents, rest).
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return None;
            }
            let (bytes, after) = rest.split_at_checked(count)?;
            rest = after;
            bytes
                .iter()
                .fold(0usize, |len, byte| (len << 8) | usize::from(*byte))
        };
        let (contents, rest) = rest.split_at_checked(len)?;
        Some((tag, contents, rest))
    }

    fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (found, contents, rest) = element(input)?;
        (found == tag).then_some((contents, rest))
    }

    fn find(der: &[u8]) -> Option<(&[u8], &[u8])> {
        const SEQUENCE: u8 = 0x30;
        let (certificate, _) = expect(der, SEQUENCE)?;
        let (tbs, _) = expect(certificate, SEQUENCE)?;
        let mut fields = tbs;
        // Optional explicit version [0].
        if let Some((0xa0, _, rest)) = element(fields) {
            fields = rest;
        }
        // serialNumber, signature, issuer, validity, subject.
        for _ in 0..5 {
            fields = element(fields)?.2;
        }
        let (spki, _) = expect(fields, SEQUENCE)?;
        let (algorithm, rest) = expect(spki, SEQUENCE)?;
        let (oid, _) = expect(algorithm, 0x06)?;
        if oid != RSA_ENCRYPTION {
            return None;
        }
        let (bits, _) = expect(rest, 0x03)?;
        let (&unused, key) = bits.split_first()?;
        if unused != 0 {
            return None;
        }
        let (rsa, _) = expect(key, SEQUENCE)?;
        let (n, rest) = expect(rsa, 0x02)?;
        let (e, _) = expect(rest, 0x02)?;
        Some((n, e))
    }

    /// The modulus and exponent of the certificate's RSA key.
    pub fn rsa_public_key_of_certificate(der: &[u8]) -> Result<(&[u8], &[u8]), Status> {
        if expect(der, 0x30).is_none() {
            return Err(Status::JwksX509ParseError);
        }
        find(der).ok_or(Status::JwksX509GetPubkeyError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A 2048-bit modulus (odd) and e = 65537, made up for structure tests.
    fn modulus() -> String {
        let mut n = vec![0xc5u8; 256];
        n[255] = 0x01;
        encode_base64url(&n)
    }

    fn rsa(extra: &str) -> String {
        format!(r#"{{"kty":"RSA","n":"{}","e":"AQAB"{extra}}}"#, modulus())
    }

    /// The fixture's P-256 and Ed25519 public keys (points on their curves).
    fn fixture_key(kid: &str) -> Value {
        let vectors: Value = serde_json::from_str(crate::tests::VECTORS).unwrap();
        vectors["jwks"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|key| key["kid"] == kid)
            .unwrap()
            .clone()
    }

    #[test]
    fn parses_every_key_type_and_skips_bad_keys() {
        let x = encode_base64url(&[7u8; 32]);
        let doc = format!(
            r#"{{"keys":[{},{},
            {{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}},{},
            {{"kty":"RSA","n":"AQAB"}}, 5, {{"kty":"EC","crv":"P-384","x":"{x}","y":"{x}"}},
            {{"kty":"EC","crv":"P-256","x":"{x}","y":"{x}"}}]}}"#,
            rsa(r#","kid":"r1","alg":"RS256""#),
            fixture_key("p256"),
            fixture_key("ed"),
        );
        let jwks = parse(doc.as_bytes()).unwrap();
        let kinds: Vec<KeyKind> = jwks.keys.iter().map(|key| key.kind).collect();
        assert_eq!(
            kinds,
            [
                KeyKind::Rsa,
                KeyKind::EcP256,
                KeyKind::Oct,
                KeyKind::Ed25519
            ]
        );
        assert_eq!(jwks.keys[0].kid, "r1");
        assert_eq!(jwks.keys[0].alg, "RS256");
        // The last key is not a point of P-256.
        assert_eq!(
            jwks.skipped,
            [
                Status::JwksRsaKeyMissingE,
                Status::JwksEcParseError,
                Status::JwksEcParseError
            ]
        );
        assert!(!format!("{:?}", jwks.keys[2]).contains("secret"));
    }

    #[test]
    fn document_level_errors() {
        for (doc, status) in [
            ("not json", Status::JwksParseError),
            ("[]", Status::JwksParseError),
            ("{}", Status::JwksNoKeys),
            (r#"{"keys":{}}"#, Status::JwksBadKeys),
            (r#"{"keys":[]}"#, Status::JwksNoValidKeys),
            (r#"{"keys":[1,"a"]}"#, Status::JwksNoValidKeys),
            (
                r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#,
                Status::JwksRsaParseError,
            ),
            (r#"{"kid1":"not a certificate"}"#, Status::JwksNoKeys),
        ] {
            assert_eq!(parse(doc.as_bytes()).err(), Some(status), "{doc}");
        }
        assert_eq!(
            parse(&vec![b' '; MAX_JWKS_BYTES + 1]).err(),
            Some(Status::JwksParseError)
        );
    }

    #[test]
    fn key_rules_follow_envoy() {
        let x32 = encode_base64url(&[1u8; 32]);
        let x48 = encode_base64url(&[1u8; 48]);
        let cases = [
            (rsa(r#","alg":"HS256""#), Status::JwksRsaKeyBadAlg),
            (
                r#"{"kty":"RSA","e":"AQAB"}"#.to_string(),
                Status::JwksRsaKeyMissingN,
            ),
            (
                r#"{"kty":"RSA","n":1,"e":"AQAB"}"#.to_string(),
                Status::JwksRsaKeyBadN,
            ),
            (
                format!(r#"{{"kty":"RSA","n":"{}","e":"Aw0"}}"#, modulus()),
                Status::JwksRsaParseError,
            ),
            (
                format!(r#"{{"kty":"EC","alg":"RS256","x":"{x32}","y":"{x32}"}}"#),
                Status::JwksEcKeyBadAlg,
            ),
            (
                format!(r#"{{"kty":"EC","alg":"ES256","crv":"P-384","x":"{x32}","y":"{x32}"}}"#),
                Status::JwksEcKeyAlgNotCompatibleWithCrv,
            ),
            (
                format!(r#"{{"kty":"EC","crv":"secp256k1","x":"{x32}","y":"{x32}"}}"#),
                Status::JwksEcKeyAlgOrCrvUnsupported,
            ),
            (
                r#"{"kty":"EC","crv":7}"#.to_string(),
                Status::JwksEcKeyBadCrv,
            ),
            (
                format!(r#"{{"kty":"EC","y":"{x32}"}}"#),
                Status::JwksEcKeyMissingX,
            ),
            (
                format!(r#"{{"kty":"EC","x":"{x32}"}}"#),
                Status::JwksEcKeyMissingY,
            ),
            (
                format!(r#"{{"kty":"EC","x":"*","y":"{x32}"}}"#),
                Status::JwksEcXorYBadBase64,
            ),
            (
                format!(r#"{{"kty":"EC","crv":"P-256","x":"{x48}","y":"{x48}"}}"#),
                Status::JwksEcParseError,
            ),
            (
                r#"{"kty":"oct","k":"c2Vj","alg":"RS256"}"#.to_string(),
                Status::JwksHmacKeyBadAlg,
            ),
            (r#"{"kty":"oct"}"#.to_string(), Status::JwksHmacKeyMissingK),
            (
                r#"{"kty":"oct","k":""}"#.to_string(),
                Status::JwksOctBadBase64,
            ),
            (
                format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x32}","alg":"ES256"}}"#),
                Status::JwksOkpKeyBadAlg,
            ),
            (
                format!(r#"{{"kty":"OKP","x":"{x32}"}}"#),
                Status::JwksOkpKeyMissingCrv,
            ),
            (
                format!(r#"{{"kty":"OKP","crv":"X25519","x":"{x32}"}}"#),
                Status::JwksOkpKeyCrvUnsupported,
            ),
            (
                format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x48}"}}"#),
                Status::JwksOkpXWrongLength,
            ),
            (
                r#"{"kty":"OKP","crv":"Ed25519"}"#.to_string(),
                Status::JwksOkpKeyMissingX,
            ),
            (r#"{"kid":"a"}"#.to_string(), Status::JwksMissingKty),
            (r#"{"kty":1}"#.to_string(), Status::JwksBadKty),
            (
                r#"{"kty":"XYZ"}"#.to_string(),
                Status::JwksNotImplementedKty,
            ),
        ];
        for (key, status) in cases {
            let doc = format!(r#"{{"keys":[{key}]}}"#);
            assert_eq!(parse(doc.as_bytes()).err(), Some(status), "{key}");
        }
    }

    #[test]
    fn ec_key_without_alg_or_crv_is_p256() {
        let key = fixture_key("p256");
        let doc = format!(
            r#"{{"keys":[{{"kty":"EC","x":{},"y":{}}}]}}"#,
            key["x"], key["y"]
        );
        assert_eq!(parse(doc.as_bytes()).unwrap().keys[0].kind, KeyKind::EcP256);
    }

    #[test]
    fn malformed_certificates_are_refused() {
        let doc = format!(
            r#"{{"k1":"{}{}{}"}}"#,
            "-----BEGIN CERTIFICATE-----\\n", "MAA=", "\\n-----END CERTIFICATE-----\\n"
        );
        assert_eq!(
            parse(doc.as_bytes()).err(),
            Some(Status::JwksX509GetPubkeyError)
        );
        let doc = format!(
            r#"{{"k1":"{}{}{}"}}"#,
            "-----BEGIN CERTIFICATE-----\\n", "!!!", "\\n-----END CERTIFICATE-----\\n"
        );
        assert_eq!(
            parse(doc.as_bytes()).err(),
            Some(Status::JwksX509ParseError)
        );
    }
}
