//! Verification outcomes, with the exact messages Envoy's `jwt_authn` filter puts in its reply
//! bodies and response code details (`source/common/jwt/status.cc`).

/// Why a token (or a request) was not authenticated. `Ok` is success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Verified.
    Ok,
    /// No token in any configured location.
    JwtMissed,
    /// `nbf` is in the future (beyond the clock skew).
    JwtNotYetValid,
    /// `exp` is in the past (beyond the clock skew).
    JwtExpired,
    /// Not three non-empty dot-separated sections (or larger than the size limit).
    JwtBadFormat,
    /// Header is not base64url.
    JwtHeaderParseErrorBadBase64,
    /// Header is not a JSON object.
    JwtHeaderParseErrorBadJson,
    /// `alg` missing or not a string.
    JwtHeaderBadAlg,
    /// `alg` is not one of the supported algorithms (`none` included).
    JwtHeaderNotImplementedAlg,
    /// `kid` is not a string.
    JwtHeaderBadKid,
    /// Payload is not base64url.
    JwtPayloadParseErrorBadBase64,
    /// Ed25519 signature is not 64 bytes.
    JwtEd25519SignatureWrongLength,
    /// Payload is not a JSON object (or has duplicate claims).
    JwtPayloadParseErrorBadJson,
    /// `iss` is not a string.
    JwtPayloadParseErrorIssNotString,
    /// `sub` is not a string.
    JwtPayloadParseErrorSubNotString,
    /// `iat` is not a number.
    JwtPayloadParseErrorIatNotInteger,
    /// `iat` is negative or too large.
    JwtPayloadParseErrorIatOutOfRange,
    /// `nbf` is not a number.
    JwtPayloadParseErrorNbfNotInteger,
    /// `nbf` is negative or too large.
    JwtPayloadParseErrorNbfOutOfRange,
    /// `exp` is not a number.
    JwtPayloadParseErrorExpNotInteger,
    /// `exp` is negative or too large.
    JwtPayloadParseErrorExpOutOfRange,
    /// `jti` is not a string.
    JwtPayloadParseErrorJtiNotString,
    /// `aud` is neither a string nor a list of strings.
    JwtPayloadParseErrorAudNotString,
    /// Signature is not base64url.
    JwtSignatureParseErrorBadBase64,
    /// `iss` is not the provider's issuer.
    JwtUnknownIssuer,
    /// No `aud` is allowed (the only 403).
    JwtAudienceNotAllowed,
    /// Signature, subject or lifetime check failed.
    JwtVerificationFail,
    /// The key set could not be fetched.
    JwksFetchFail,
    /// No key matches the token's `kid` and `alg`.
    JwksKidAlgMismatch,
    /// The provider has no usable key.
    JwksNoValidKeys,
    /// Key set is not JSON.
    JwksParseError,
    /// Key set has no `keys`.
    JwksNoKeys,
    /// `keys` is not an array.
    JwksBadKeys,
    /// RSA `n`/`e` undecodable, or not a usable RSA key.
    JwksRsaParseError,
    /// EC `x`/`y` undecodable.
    JwksEcXorYBadBase64,
    /// EC point of the wrong size for its curve.
    JwksEcParseError,
    /// `k` undecodable or empty.
    JwksOctBadBase64,
    /// OKP `x` undecodable.
    JwksOkpXBadBase64,
    /// OKP `x` of the wrong length.
    JwksOkpXWrongLength,
    /// `kty` missing.
    JwksMissingKty,
    /// `kty` not a string.
    JwksBadKty,
    /// `kty` unsupported.
    JwksNotImplementedKty,
    /// RSA key whose `alg` is not RS*/PS*.
    JwksRsaKeyBadAlg,
    /// RSA key without `n`.
    JwksRsaKeyMissingN,
    /// RSA `n` not a string.
    JwksRsaKeyBadN,
    /// RSA key without `e`.
    JwksRsaKeyMissingE,
    /// RSA `e` not a string.
    JwksRsaKeyBadE,
    /// EC key whose `alg` is not ES*.
    JwksEcKeyBadAlg,
    /// EC `crv` not a string.
    JwksEcKeyBadCrv,
    /// EC `crv`/`alg` unsupported.
    JwksEcKeyAlgOrCrvUnsupported,
    /// EC `alg` and `crv` disagree.
    JwksEcKeyAlgNotCompatibleWithCrv,
    /// EC key without `x`.
    JwksEcKeyMissingX,
    /// EC `x` not a string.
    JwksEcKeyBadX,
    /// EC key without `y`.
    JwksEcKeyMissingY,
    /// EC `y` not a string.
    JwksEcKeyBadY,
    /// HMAC key whose `alg` is not HS*.
    JwksHmacKeyBadAlg,
    /// HMAC key without `k`.
    JwksHmacKeyMissingK,
    /// HMAC `k` not a string.
    JwksHmacKeyBadK,
    /// OKP key whose `alg` is not EdDSA.
    JwksOkpKeyBadAlg,
    /// OKP key without `crv`.
    JwksOkpKeyMissingCrv,
    /// OKP `crv` not a string.
    JwksOkpKeyBadCrv,
    /// OKP `crv` other than Ed25519.
    JwksOkpKeyCrvUnsupported,
    /// OKP key without `x`.
    JwksOkpKeyMissingX,
    /// OKP `x` not a string.
    JwksOkpKeyBadX,
    /// An X.509 certificate of the `{kid: PEM}` form could not be parsed.
    JwksX509ParseError,
    /// The certificate's public key is not a usable RSA key.
    JwksX509GetPubkeyError,
}

impl Status {
    /// The message Envoy uses (reply body, and response code details in braces).
    pub fn message(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::JwtMissed => "Jwt is missing",
            Status::JwtNotYetValid => "Jwt not yet valid",
            Status::JwtExpired => "Jwt is expired",
            Status::JwtBadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            Status::JwtHeaderParseErrorBadBase64 => "Jwt header is an invalid Base64url encoded",
            Status::JwtHeaderParseErrorBadJson => "Jwt header is an invalid JSON",
            Status::JwtHeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            Status::JwtHeaderNotImplementedAlg => "Jwt header [alg] is not supported",
            Status::JwtHeaderBadKid => "Jwt header [kid] field is not a string",
            Status::JwtPayloadParseErrorBadBase64 => "Jwt payload is an invalid Base64url encoded",
            Status::JwtEd25519SignatureWrongLength => "Jwt ED25519 signature is wrong length",
            Status::JwtPayloadParseErrorBadJson => "Jwt payload is an invalid JSON",
            Status::JwtPayloadParseErrorIssNotString => "Jwt payload [iss] field is not a string",
            Status::JwtPayloadParseErrorSubNotString => "Jwt payload [sub] field is not a string",
            Status::JwtPayloadParseErrorIatNotInteger => {
                "Jwt payload [iat] field is not an integer"
            }
            Status::JwtPayloadParseErrorIatOutOfRange => {
                "Jwt payload [iat] field is not a positive 64 bit integer"
            }
            Status::JwtPayloadParseErrorNbfNotInteger => {
                "Jwt payload [nbf] field is not an integer"
            }
            Status::JwtPayloadParseErrorNbfOutOfRange => {
                "Jwt payload [nbf] field is not a positive 64 bit integer"
            }
            Status::JwtPayloadParseErrorExpNotInteger => {
                "Jwt payload [exp] field is not an integer"
            }
            Status::JwtPayloadParseErrorExpOutOfRange => {
                "Jwt payload [exp] field is not a positive 64 bit integer"
            }
            Status::JwtPayloadParseErrorJtiNotString => "Jwt payload [jti] field is not a string",
            Status::JwtPayloadParseErrorAudNotString => {
                "Jwt payload [aud] field is not a string or string list"
            }
            Status::JwtSignatureParseErrorBadBase64 => {
                "Jwt signature is an invalid Base64url encoded"
            }
            Status::JwtUnknownIssuer => "Jwt issuer is not configured",
            Status::JwtAudienceNotAllowed => "Audiences in Jwt are not allowed",
            Status::JwtVerificationFail => "Jwt verification fails",
            Status::JwksFetchFail => "Jwks remote fetch is failed",
            Status::JwksKidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            Status::JwksNoValidKeys => "Jwks doesn't have any valid public key",
            Status::JwksParseError => "Jwks is an invalid JSON",
            Status::JwksNoKeys => "Jwks does not have [keys] field",
            Status::JwksBadKeys => "[keys] in Jwks is not an array",
            Status::JwksRsaParseError => {
                "Jwks RSA [n] or [e] field is missing or has a parse error"
            }
            Status::JwksEcXorYBadBase64 => "Jwks EC [x] or [y] field is an invalid Base64.",
            Status::JwksEcParseError => "Jwks EC [x] and [y] fields have a parse error.",
            Status::JwksOctBadBase64 => "Jwks Oct key is an invalid Base64",
            Status::JwksOkpXBadBase64 => "Jwks OKP [x] field is an invalid Base64.",
            Status::JwksOkpXWrongLength => "Jwks OKP [x] field is wrong length.",
            Status::JwksMissingKty => "[kty] is missing in [keys]",
            Status::JwksBadKty => "[kty] is bad in [keys]",
            Status::JwksNotImplementedKty => "[kty] is not supported in [keys]",
            Status::JwksRsaKeyBadAlg => "[alg] is not started with [RS] or [PS] for an RSA key",
            Status::JwksRsaKeyMissingN => "[n] field is missing for a RSA key",
            Status::JwksRsaKeyBadN => "[n] field is not string for a RSA key",
            Status::JwksRsaKeyMissingE => "[e] field is missing for a RSA key",
            Status::JwksRsaKeyBadE => "[e] field is not string for a RSA key",
            Status::JwksEcKeyBadAlg => "[alg] is not started with [ES] for an EC key",
            Status::JwksEcKeyBadCrv => "[crv] field is not string for an EC key",
            Status::JwksEcKeyAlgOrCrvUnsupported => {
                "[crv] or [alg] field is not supported for an EC key"
            }
            Status::JwksEcKeyAlgNotCompatibleWithCrv => {
                "[crv] field specified is not compatible with [alg] for an EC key"
            }
            Status::JwksEcKeyMissingX => "[x] field is missing for an EC key",
            Status::JwksEcKeyBadX => "[x] field is not string for an EC key",
            Status::JwksEcKeyMissingY => "[y] field is missing for an EC key",
            Status::JwksEcKeyBadY => "[y] field is not string for an EC key",
            Status::JwksHmacKeyBadAlg => "[alg] does not start with [HS] for an HMAC key",
            Status::JwksHmacKeyMissingK => "[k] field is missing for an HMAC key",
            Status::JwksHmacKeyBadK => "[k] field is not string for an HMAC key",
            Status::JwksOkpKeyBadAlg => "[alg] is not [EdDSA] for an OKP key",
            Status::JwksOkpKeyMissingCrv => "[crv] field is missing for an OKP key",
            Status::JwksOkpKeyBadCrv => "[crv] field is not string for an OKP key",
            Status::JwksOkpKeyCrvUnsupported => "[crv] field is not supported for an OKP key",
            Status::JwksOkpKeyMissingX => "[x] field is missing for an OKP key",
            Status::JwksOkpKeyBadX => "[x] field is not string for an OKP key",
            Status::JwksX509ParseError => "X509 parse pubkey fails",
            Status::JwksX509GetPubkeyError => "X509 parse pubkey internal fails: get pubkey",
        }
    }

    /// The HTTP status of the reply: 403 for a disallowed audience, 401 otherwise.
    pub fn http_status(self) -> u16 {
        if self == Status::JwtAudienceNotAllowed {
            403
        } else {
            401
        }
    }

    /// The failure class counted in `jwt_authn.denied_<reason>` (see [`REASONS`]).
    pub fn reason(self) -> Reason {
        match self {
            Status::Ok => Reason::JwtVerificationFailed,
            Status::JwtMissed => Reason::JwtMissing,
            Status::JwtExpired => Reason::JwtExpired,
            Status::JwtNotYetValid => Reason::JwtNotYetValid,
            Status::JwtHeaderNotImplementedAlg => Reason::JwtUnsupportedAlgorithm,
            Status::JwtUnknownIssuer => Reason::JwtUnknownIssuer,
            Status::JwtAudienceNotAllowed => Reason::JwtAudienceNotAllowed,
            Status::JwtVerificationFail | Status::JwtEd25519SignatureWrongLength => {
                Reason::JwtVerificationFailed
            }
            Status::JwksKidAlgMismatch => Reason::JwksKeyNotFound,
            Status::JwksFetchFail => Reason::JwksFetchFailed,
            Status::JwtBadFormat
            | Status::JwtHeaderParseErrorBadBase64
            | Status::JwtHeaderParseErrorBadJson
            | Status::JwtHeaderBadAlg
            | Status::JwtHeaderBadKid
            | Status::JwtPayloadParseErrorBadBase64
            | Status::JwtPayloadParseErrorBadJson
            | Status::JwtPayloadParseErrorIssNotString
            | Status::JwtPayloadParseErrorSubNotString
            | Status::JwtPayloadParseErrorIatNotInteger
            | Status::JwtPayloadParseErrorIatOutOfRange
            | Status::JwtPayloadParseErrorNbfNotInteger
            | Status::JwtPayloadParseErrorNbfOutOfRange
            | Status::JwtPayloadParseErrorExpNotInteger
            | Status::JwtPayloadParseErrorExpOutOfRange
            | Status::JwtPayloadParseErrorJtiNotString
            | Status::JwtPayloadParseErrorAudNotString
            | Status::JwtSignatureParseErrorBadBase64 => Reason::JwtMalformed,
            _ => Reason::JwksInvalid,
        }
    }
}

/// Failure classes, each counted as `<stat_prefix>.jwt_authn.denied_<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// No token.
    JwtMissing,
    /// Expired.
    JwtExpired,
    /// Not yet valid.
    JwtNotYetValid,
    /// Unparseable token (format, base64, JSON, claim types).
    JwtMalformed,
    /// `alg` not supported (`none` included).
    JwtUnsupportedAlgorithm,
    /// Unknown issuer.
    JwtUnknownIssuer,
    /// Audience not allowed.
    JwtAudienceNotAllowed,
    /// Bad signature, subject or lifetime.
    JwtVerificationFailed,
    /// No key for the token's `kid`/`alg`.
    JwksKeyNotFound,
    /// The key set could not be fetched.
    JwksFetchFailed,
    /// The key set has no usable key.
    JwksInvalid,
    /// The request path could not be normalized for rule matching.
    InvalidPath,
}

/// Every reason, in counter-definition order.
pub const REASONS: [Reason; 12] = [
    Reason::JwtMissing,
    Reason::JwtExpired,
    Reason::JwtNotYetValid,
    Reason::JwtMalformed,
    Reason::JwtUnsupportedAlgorithm,
    Reason::JwtUnknownIssuer,
    Reason::JwtAudienceNotAllowed,
    Reason::JwtVerificationFailed,
    Reason::JwksKeyNotFound,
    Reason::JwksFetchFailed,
    Reason::JwksInvalid,
    Reason::InvalidPath,
];

impl Reason {
    /// The counter suffix.
    pub fn name(self) -> &'static str {
        match self {
            Reason::JwtMissing => "jwt_missing",
            Reason::JwtExpired => "jwt_expired",
            Reason::JwtNotYetValid => "jwt_not_yet_valid",
            Reason::JwtMalformed => "jwt_malformed",
            Reason::JwtUnsupportedAlgorithm => "jwt_unsupported_algorithm",
            Reason::JwtUnknownIssuer => "jwt_unknown_issuer",
            Reason::JwtAudienceNotAllowed => "jwt_audience_not_allowed",
            Reason::JwtVerificationFailed => "jwt_verification_failed",
            Reason::JwksKeyNotFound => "jwks_key_not_found",
            Reason::JwksFetchFailed => "jwks_fetch_failed",
            Reason::JwksInvalid => "jwks_invalid",
            Reason::InvalidPath => "invalid_path",
        }
    }

    /// Index in [`REASONS`].
    pub fn index(self) -> usize {
        REASONS
            .iter()
            .position(|reason| *reason == self)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_statuses_follow_envoy() {
        assert_eq!(Status::JwtExpired.message(), "Jwt is expired");
        assert_eq!(
            Status::JwtUnknownIssuer.message(),
            "Jwt issuer is not configured"
        );
        assert_eq!(Status::JwtAudienceNotAllowed.http_status(), 403);
        assert_eq!(Status::JwtMissed.http_status(), 401);
        assert_eq!(Status::JwksFetchFail.http_status(), 401);
    }

    #[test]
    fn every_reason_has_a_distinct_index_and_name() {
        for (index, reason) in REASONS.iter().enumerate() {
            assert_eq!(reason.index(), index);
        }
        let mut names: Vec<&str> = REASONS.iter().map(|reason| reason.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), REASONS.len());
        assert_eq!(Status::JwtBadFormat.reason(), Reason::JwtMalformed);
        assert_eq!(Status::JwksBadKeys.reason(), Reason::JwksInvalid);
    }
}
