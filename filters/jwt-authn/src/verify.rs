//! Signature verification with Envoy's key selection: a key is tried when its `kid` matches
//! (or either side has none) and its `alg` agrees (or it has none); the key type decides the
//! algorithm family, so an RSA or EC public key is never used as an HMAC secret.

use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
use jsonwebtoken::Algorithm;

use crate::jwks::{Jwks, Key, KeyKind, Material};
use crate::jwt::{Alg, Jwt};
use crate::rsa::{Hash, Padding};
use crate::status::Status;

/// The `jsonwebtoken` algorithm that verifies `alg` with a key of `kind`, if that pairing is
/// allowed at all.
fn algorithm_for(kind: KeyKind, alg: Alg) -> Option<Algorithm> {
    Some(match (kind, alg) {
        (KeyKind::Rsa, Alg::Rs256) => Algorithm::RS256,
        (KeyKind::Rsa, Alg::Rs384) => Algorithm::RS384,
        (KeyKind::Rsa, Alg::Rs512) => Algorithm::RS512,
        (KeyKind::Rsa, Alg::Ps256) => Algorithm::PS256,
        (KeyKind::Rsa, Alg::Ps384) => Algorithm::PS384,
        (KeyKind::Rsa, Alg::Ps512) => Algorithm::PS512,
        (KeyKind::EcP256, Alg::Es256) => Algorithm::ES256,
        (KeyKind::EcP384, Alg::Es384) => Algorithm::ES384,
        (KeyKind::Oct, Alg::Hs256) => Algorithm::HS256,
        (KeyKind::Oct, Alg::Hs384) => Algorithm::HS384,
        (KeyKind::Oct, Alg::Hs512) => Algorithm::HS512,
        (KeyKind::Ed25519, Alg::EdDsa) => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The padding and hash of an RS*/PS* algorithm.
fn rsa_scheme(algorithm: Algorithm) -> Option<(Padding, Hash)> {
    Some(match algorithm {
        Algorithm::RS256 => (Padding::Pkcs1v15, Hash::Sha256),
        Algorithm::RS384 => (Padding::Pkcs1v15, Hash::Sha384),
        Algorithm::RS512 => (Padding::Pkcs1v15, Hash::Sha512),
        Algorithm::PS256 => (Padding::Pss, Hash::Sha256),
        Algorithm::PS384 => (Padding::Pss, Hash::Sha384),
        Algorithm::PS512 => (Padding::Pss, Hash::Sha512),
        _ => return None,
    })
}

fn verifies(key: &Key, jwt: &Jwt, signed_data: &[u8]) -> bool {
    let Some(algorithm) = algorithm_for(key.kind, jwt.alg) else {
        return false;
    };
    match &key.material {
        Material::Rsa(public_key) => rsa_scheme(algorithm).is_some_and(|(padding, hash)| {
            public_key.verify(padding, hash, signed_data, &jwt.signature)
        }),
        Material::Jwt(material) => {
            match (DEFAULT_PROVIDER.verifier_factory)(&algorithm, material) {
                Ok(verifier) => verifier.verify(signed_data, &jwt.signature).is_ok(),
                Err(_) => false,
            }
        }
    }
}

/// Verifies the token's signature with the key set (time and claims are checked elsewhere).
pub fn verify_signature(jwt: &Jwt, jwks: &Jwks) -> Status {
    let signed_data = jwt.signed_data();
    let mut kid_alg_matched = false;
    for key in &jwks.keys {
        if !jwt.kid.is_empty() && !key.kid.is_empty() && key.kid != jwt.kid {
            continue;
        }
        if !key.alg.is_empty() && key.alg != jwt.alg.name() {
            continue;
        }
        kid_alg_matched = true;
        if key.kind == KeyKind::Ed25519 && jwt.alg == Alg::EdDsa && jwt.signature.len() != 64 {
            return Status::JwtEd25519SignatureWrongLength;
        }
        if verifies(key, jwt, signed_data.as_bytes()) {
            return Status::Ok;
        }
    }
    if kid_alg_matched {
        Status::JwtVerificationFail
    } else {
        Status::JwksKidAlgMismatch
    }
}
