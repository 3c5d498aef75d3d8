#!/usr/bin/env python3
"""Makes the key set and the tokens the differential corpus refers to (`${jwks}`,
`${token:NAME}`), with an implementation independent of wasmesh (PyJWT 2.x + cryptography):

    pip install pyjwt cryptography
    python3 harness/e2e/corpus/make_tokens.py > harness/e2e/corpus/tokens.json

Times are fixed so the tokens stay valid: valid tokens expire in 2100, the expired one in 2022.
"""
import base64
import json

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://issuer.example.com"
AUDIENCE = "api.example.com"
IAT = 1_600_000_000
EXP = 4_102_444_800
EXPIRED = 1_650_000_000
FUTURE = 4_000_000_000

rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
rsa_other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
p256 = ec.generate_private_key(ec.SECP256R1())


def jwk(key, algorithm, kid, alg):
    document = json.loads(algorithm.to_jwk(key.public_key()))
    document.update({"kid": kid, "alg": alg, "use": "sig"})
    return document


def claims(**overrides):
    base = {"iss": ISSUER, "sub": "user-1", "aud": AUDIENCE, "iat": IAT, "exp": EXP,
            "groups": ["dev"], "tier": "gold"}
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def sign_rsa(payload, key=rsa_key, kid="rsa-1"):
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


valid = sign_rsa(claims())
header, _, signature = valid.split(".")
tampered_payload = b64(json.dumps(claims(sub="admin"), separators=(",", ":")).encode())

tokens = {
    "rs256": valid,
    "es256": jwt.encode(claims(sub="user-2", groups=["admin"]), p256, algorithm="ES256",
                        headers={"kid": "ec-1"}),
    "expired": sign_rsa(claims(exp=EXPIRED)),
    "not_yet_valid": sign_rsa(claims(nbf=FUTURE)),
    "wrong_audience": sign_rsa(claims(aud="other.example.com")),
    "wrong_issuer": sign_rsa(claims(iss="https://evil.example.com")),
    "other_key": sign_rsa(claims(), key=rsa_other),
    "tampered": f"{header}.{tampered_payload}.{signature}",
    "alg_none": jwt.encode(claims(), None, algorithm="none"),
    "unknown_kid": sign_rsa(claims(), kid="nope"),
}

print(json.dumps({
    "generator": f"PyJWT {jwt.__version__}",
    "jwks": {"keys": [jwk(rsa_key, RSAAlgorithm, "rsa-1", "RS256"),
                      jwk(p256, ECAlgorithm, "ec-1", "ES256")]},
    "tokens": tokens,
}, indent=2))
