#!/usr/bin/env python3
"""Generates the JWTs the RBAC end-to-end tests send through Envoy's jwt_authn filter.

Independent of the code under test: Python's standard library only (hmac, hashlib, base64,
json). The tokens are HS256 with a fixed secret and expire in 2100, so the committed vectors
stay valid; rerun to regenerate:

    python3 filters/rbac/tests/data/make_jwt_vectors.py > filters/rbac/tests/data/jwt_vectors.json
"""
import base64
import hashlib
import hmac
import json

ISSUER = "https://issuer.wasmesh.test"
SECRET = b"wasmesh-rbac-test-secret-0123456789abcdef"
EXPIRY = 4102444800  # 2100-01-01T00:00:00Z


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign(payload: dict) -> str:
    header = {"alg": "HS256", "typ": "JWT", "kid": "rbac-test"}
    signing_input = b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + b64url(
        json.dumps(payload, separators=(",", ":")).encode()
    )
    signature = hmac.new(SECRET, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


PAYLOADS = {
    "alice": {"iss": ISSUER, "sub": "alice", "groups": ["admin", "dev"], "exp": EXPIRY,
              "aud": "shop", "org": {"tier": "gold"}},
    "bob": {"iss": ISSUER, "sub": "bob", "groups": ["dev"], "exp": EXPIRY, "aud": ["shop", "blog"],
            "org": {"tier": "silver"}},
    "mallory": {"iss": ISSUER, "sub": "mallory", "groups": "admin-wannabe", "exp": EXPIRY},
}

jwks = {"keys": [{"kty": "oct", "alg": "HS256", "kid": "rbac-test", "k": b64url(SECRET)}]}
print(json.dumps({
    "issuer": ISSUER,
    "jwks": json.dumps(jwks, separators=(",", ":")),
    "payloads": PAYLOADS,
    "tokens": {name: sign(payload) for name, payload in PAYLOADS.items()},
}, indent=2, sort_keys=True))
