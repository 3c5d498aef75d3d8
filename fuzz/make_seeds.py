#!/usr/bin/env python3
"""Writes the seed inputs and dictionaries of the fuzz targets from the project's own fixtures.

    python3 fuzz/make_seeds.py          # from the repository root; idempotent

Seeds go to fuzz/corpus/<target>/seed-*, dictionaries to fuzz/dicts/. Seeds are where libFuzzer
starts; the committed corpus is what a bounded run kept after `-merge=1` (see fuzz/README.md).
"""
import base64
import glob
import hashlib
import json
import os
import re
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "fuzz")


def seed(target, data):
    if isinstance(data, str):
        data = data.encode()
    directory = os.path.join(FUZZ, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def dictionary(name, tokens):
    os.makedirs(os.path.join(FUZZ, "dicts"), exist_ok=True)
    with open(os.path.join(FUZZ, "dicts", name + ".dict"), "w") as f:
        for token in sorted(set(tokens)):
            escaped = "".join(
                c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "\\x%02x" % ord(c)
                for c in token
            )
            f.write('"%s"\n' % escaped)


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


# ------------------------------------------------------------------------------------- JWT
vectors = json.loads(read("filters/jwt-authn/tests/fixtures/vectors.json"))
for vector in vectors["valid"] + vectors["attacks"]:
    seed("jwt", vector["token"])
seed("jwt", vectors["x509_token"])
rsa_vectors = json.load(open(os.path.join(ROOT, "filters/jwt-authn/tests/fixtures/rsa_vectors.json")))
RSA_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
for key_index, key in enumerate(rsa_vectors["keys"]):
    for case in key["cases"]:
        if case["valid"] and case["name"] == "valid":
            signature = base64.urlsafe_b64decode(case["signature"] + "=" * (-len(case["signature"]) % 4))
            seed("rsa", bytes([key_index, RSA_ALGORITHMS.index(case["alg"])]) + signature)
seed("jwks", json.dumps(vectors["jwks"]))
seed("jwks", json.dumps(vectors["x509_jwks"]))
for key in vectors["jwks"]["keys"]:
    seed("jwks", json.dumps({"keys": [key]}))
dictionary("jwt", ["eyJ", "eyJhbGciOi", "eyJ0eXAiOi", ".", "..", "alg", "none", "kid", "typ",
                   "JWT", "RS256", "ES256", "EdDSA", "HS256", "PS512", "iss", "aud", "exp",
                   "nbf", "sub", "\"", "{", "}", ":", ","])
dictionary("jwks", ["\"keys\"", "\"kty\"", "\"RSA\"", "\"EC\"", "\"OKP\"", "\"oct\"", "\"n\"",
                    "\"e\"", "\"x\"", "\"y\"", "\"crv\"", "\"P-256\"", "\"P-384\"",
                    "\"Ed25519\"", "\"k\"", "\"kid\"", "\"alg\"", "\"use\"", "\"x5c\"",
                    "\"AQAB\"", "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----",
                    "[", "]", "{", "}", ":", ","])

# ---------------------------------------------------------------------------- filter configs
RAW_STRING = re.compile(r'r#"(\{.*?\})"#', re.S)
QUOTED = re.compile(r'"([A-Za-z_][A-Za-z0-9_.:-]{1,40})"')
FIELD = re.compile(r"^\s*pub ([a-z_][a-z0-9_]*):", re.M)
FILTERS = {
    "config_jwt_authn": "filters/jwt-authn",
    "config_rbac": "filters/rbac",
    "config_rate_limit": "filters/rate-limit",
    "config_fault": "filters/fault",
    "config_telemetry": "filters/telemetry",
    "config_policy": "filters/policy",
    "config_header_filter": "examples/header-filter",
}
for target, crate in FILTERS.items():
    config = os.path.join(ROOT, crate, "config.json")
    if os.path.exists(config):
        seed(target, read(os.path.relpath(config, ROOT)))
    tokens = ["{", "}", "[", "]", ":", ",", "true", "false", "null", "0", "1", "\"\"",
              "\"1s\"", "\"0.5s\"", "-1", "4294967296", "1e400", "\"\\u0000\""]
    sources = glob.glob(os.path.join(ROOT, crate, "src", "**", "*.rs"), recursive=True)
    sources += glob.glob(os.path.join(ROOT, crate, "tests", "**", "*.rs"), recursive=True)
    sources += glob.glob(os.path.join(ROOT, "sdk", "src", "matcher", "*.rs"))
    for source in sources:
        text = open(source, encoding="utf-8").read()
        if crate in source:
            for raw in RAW_STRING.findall(text):
                try:
                    json.loads(raw)
                except ValueError:
                    continue
                seed(target, raw)
        tokens += ['"%s"' % word for word in QUOTED.findall(text)]
        tokens += ['"%s"' % word for word in FIELD.findall(text)]
    dictionary(target, tokens)

# -------------------------------------------------------------------------------- header maps
def headermap(pairs):
    out = struct.pack("<I", len(pairs))
    for key, value in pairs:
        out += struct.pack("<II", len(key), len(value))
    for key, value in pairs:
        out += key + b"\0" + value + b"\0"
    return out


seed("headermap", b"")
seed("headermap", b"\0")
seed("headermap", headermap([]))
seed("headermap", headermap([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a")]))
seed("headermap", headermap([(b"x", b"1"), (b"x", b"2"), (b"", b""), (b"k\0", b"\xff")]))
dictionary("headermap", ["\x00\x00\x00\x00", "\x01\x00\x00\x00", "\xff\xff\xff\xff", "\x00"])

# ------------------------------------------------------------------------------------ paths
bypass = read("filters/rbac/tests/bypass.rs")
for path in re.findall(r'"(/[^"]*)"', bypass):
    seed("path_normalize", path)
for path in ["/a/../admin", "//admin", "/%2e%2e/admin", "/a\\..\\admin", "/%2%65%2%65/admin",
             "/a%2Fb", "/é", "/a%00b", "?q", "relative/x", "/a/./b/.", "/%%32%65"]:
    seed("path_normalize", path)
dictionary("path_normalize", ["/", "//", ".", "..", "/./", "/../", "\\", "%2e", "%2E", "%2f",
                              "%2F", "%5c", "%5C", "%25", "%00", "%", "?", "#", ";", "%u002e"])

# ---------------------------------------------------------------------------- hostcall programs
# Mirrors fuzz/src/hostcalls.rs: IMPORTS order, data addresses, record layout.
hostcalls_rs = read("fuzz/src/hostcalls.rs")
imports = re.findall(r'\("(?:env|wasi_snapshot_preview1)", "([a-z_0-9]+)", "([iI]*)", (?:true|false)\)',
                     hostcalls_rs)
index = {name: i for i, (name, _) in enumerate(imports)}
HEADERS_MAP_LEN = len(headermap([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a")]))
REQUEST_HEADERS = 1 << 1
ALL = 0xFFFF
GOOD = {
    "proxy_log": [2, 0x120, 5],
    "proxy_get_log_level": [0x200],
    "proxy_get_current_time_nanoseconds": [0x200],
    "proxy_set_tick_period_milliseconds": [100],
    "proxy_get_property": [0x108, 12, 0x200, 0x204],
    "proxy_set_property": [0x118, 6, 0x120, 5],
    "proxy_get_buffer_bytes": [0, 0, 100, 0x200, 0x204],
    "proxy_set_buffer_bytes": [0, 0, 0, 0x120, 5],
    "proxy_get_buffer_status": [0, 0x200, 0x204],
    "proxy_get_header_map_value": [0, 0x100, 5, 0x200, 0x204],
    "proxy_add_header_map_value": [0, 0x118, 6, 0x120, 5],
    "proxy_replace_header_map_value": [0, 0x118, 6, 0x120, 5],
    "proxy_remove_header_map_value": [0, 0x118, 6],
    "proxy_get_header_map_pairs": [0, 0x200, 0x204],
    "proxy_set_header_map_pairs": [0, 0x180, HEADERS_MAP_LEN],
    "proxy_get_header_map_size": [0, 0x200],
    "proxy_send_local_response": [403, 0x120, 5, 0x120, 5, 0x180, HEADERS_MAP_LEN, 0xFFFFFFFF],
    "proxy_continue_stream": [0],
    "proxy_close_stream": [0],
    "proxy_http_call": [0x128, 7, 0x180, HEADERS_MAP_LEN, 0x120, 5, 0, 0, 1000, 0x200],
    "proxy_grpc_call": [0x128, 7, 0x148, 11, 0x158, 6, 0, 0, 0x120, 5, 1000, 0x200],
    "proxy_grpc_stream": [0x128, 7, 0x148, 11, 0x158, 6, 0, 0, 0x208],
    "proxy_grpc_send": [6, 0x120, 5, 0],
    "proxy_grpc_cancel": [5],
    "proxy_grpc_close": [6],
    "proxy_get_status": [0x200, 0x204, 0x208],
    "proxy_get_shared_data": [0x118, 6, 0x200, 0x204, 0x208],
    "proxy_set_shared_data": [0x118, 6, 0x120, 5, 0],
    "proxy_register_shared_queue": [0x130, 5, 0x200],
    "proxy_resolve_shared_queue": [0, 0, 0x130, 5, 0x200],
    "proxy_enqueue_shared_queue": [1, 0x120, 5],
    "proxy_dequeue_shared_queue": [1, 0x200, 0x204],
    "proxy_define_metric": [0, 0x138, 6, 0x200],
    "proxy_increment_metric": [4],
    "proxy_record_metric": [4],
    "proxy_get_metric": [4, 0x200],
    "proxy_set_effective_context": [1],
    "proxy_call_foreign_function": [0x140, 4, 0x120, 5, 0x200, 0x204],
    "fd_write": [1, 0x160, 1, 0x200],
    "clock_time_get": [0, 0x200],
    "random_get": [0x200, 16],
    "environ_sizes_get": [0x200, 0x204],
    "environ_get": [0x200, 0x300],
}


def record(op, mask, args, wide=1):
    args = (list(args) + [0] * 12)[:12]
    return struct.pack("<BBH12Iq4x", op, 0, mask, *[a & 0xFFFFFFFF for a in args], wide)


everything = b""
for name, args in GOOD.items():
    single = record(index[name], REQUEST_HEADERS, args)
    seed("hostcalls", single)
    everything += record(index[name], ALL, args)
seed("hostcalls", everything)
# Out-of-bounds variants of a few, and the extra operations (grow, store, copy, allocator
# modes, return value, unreachable, burn).
extra = len(imports)
seed("hostcalls", record(index["proxy_get_header_map_pairs"], ALL, [0, 0xFFFFFFF0, 0x204]))
seed("hostcalls", record(extra + 3, ALL, [1, 0x1FFFE]) + record(index["proxy_get_header_map_pairs"], ALL, [0, 0x200, 0x204]))
seed("hostcalls", record(extra + 0, ALL, [100]) + record(extra + 4, ALL, [1]) + record(extra + 6, ALL, [1000]))
seed("hostcalls", record(extra + 1, ALL, [0x200, 0x120]) + record(extra + 2, ALL, [0x300, 0x100, 64]))
seed("hostcalls", record(extra + 5, 1 << 8, []) + record(index["proxy_set_tick_period_milliseconds"], 1, [10]))
print("seeds and dictionaries written")
