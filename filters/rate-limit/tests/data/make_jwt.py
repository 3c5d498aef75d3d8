#!/usr/bin/env python3
"""Makes the HS256 JWTs and JWKS of tests/envoy_jwt.rs with Python's standard library only
(an implementation independent of the filter and of Envoy). Tokens have no `exp`, so they stay
valid. Run: python3 filters/rate-limit/tests/data/make_jwt.py > filters/rate-limit/tests/data/jwt.json
"""
import base64
import hashlib
import hmac
import json

SECRET = b"wasmesh-rate-limit-test-secret-0123456789"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(sub: str) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "test"}, separators=(",", ":")).encode())
    payload = b64url(json.dumps({"iss": "https://issuer.example", "sub": sub}, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = b64url(hmac.new(SECRET, signing_input, hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


jwks = {"keys": [{"kty": "oct", "kid": "test", "alg": "HS256", "k": b64url(SECRET)}]}
print(json.dumps({"jwks": json.dumps(jwks), "tokens": {sub: token(sub) for sub in ["alice", "bob"]}}, indent=2))
