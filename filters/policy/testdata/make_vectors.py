#!/usr/bin/env python3
"""Encodes ext_authz protobuf messages with Google's Python protobuf runtime (an implementation
independent of the filter's hand-written prost structs) and writes them as test vectors.

The message types are declared here from Envoy's .proto files (field names, numbers, types),
compiled at run time with descriptor_pb2 (no protoc needed):
  envoy/service/auth/v3/external_auth.proto, attribute_context.proto,
  envoy/config/core/v3/base.proto, address.proto, envoy/type/v3/http_status.proto,
  google/rpc/status.proto, google/protobuf/wrappers.proto, timestamp.proto.

  python3 make_vectors.py > check_vectors.json     (protobuf 7.x)
"""
import base64
import json

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto


def field(name, number, kind, type_name=None, repeated=False):
    f = F(name=name, number=number, type=kind,
          label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
    if type_name:
        f.type_name = type_name
    return f


def message(name, *fields, nested=()):
    m = descriptor_pb2.DescriptorProto(name=name)
    m.field.extend(fields)
    m.nested_type.extend(nested)
    return m


def map_entry(name, key, value):
    entry = message(name, field("key", 1, key), field("value", 2, value))
    entry.options.map_entry = True
    return entry


S, B, I32, I64, U32, BOOL, MSG, BYTES = (F.TYPE_STRING, F.TYPE_BOOL, F.TYPE_INT32, F.TYPE_INT64,
                                         F.TYPE_UINT32, F.TYPE_BOOL, F.TYPE_MESSAGE, F.TYPE_BYTES)
P = ".t."

file = descriptor_pb2.FileDescriptorProto(name="ext_authz_vectors.proto", package="t", syntax="proto3")
file.message_type.extend([
    message("BoolValue", field("value", 1, BOOL)),
    message("Timestamp", field("seconds", 1, I64), field("nanos", 2, I32)),
    message("HeaderValue", field("key", 1, S), field("value", 2, S), field("raw_value", 3, BYTES)),
    message("HeaderValueOption", field("header", 1, MSG, P + "HeaderValue"),
            field("append", 2, MSG, P + "BoolValue"), field("append_action", 3, I32)),
    message("HttpStatus", field("code", 1, I32)),
    message("RpcStatus", field("code", 1, I32), field("message", 2, S)),
    message("DeniedHttpResponse", field("status", 1, MSG, P + "HttpStatus"),
            field("headers", 2, MSG, P + "HeaderValueOption", repeated=True), field("body", 3, S)),
    message("OkHttpResponse", field("headers", 2, MSG, P + "HeaderValueOption", repeated=True),
            field("headers_to_remove", 5, S, repeated=True),
            field("response_headers_to_add", 6, MSG, P + "HeaderValueOption", repeated=True)),
    # dynamic_metadata (4) is a google.protobuf.Struct; encoded here as an opaque message the
    # filter must skip.
    message("Opaque", field("blob", 1, S)),
    message("CheckResponse", field("status", 1, MSG, P + "RpcStatus"),
            field("denied_response", 2, MSG, P + "DeniedHttpResponse"),
            field("ok_response", 3, MSG, P + "OkHttpResponse"),
            field("dynamic_metadata", 4, MSG, P + "Opaque")),
    message("SocketAddress", field("address", 2, S), field("port_value", 3, U32)),
    message("Address", field("socket_address", 1, MSG, P + "SocketAddress")),
    message("Peer", field("address", 1, MSG, P + "Address"), field("principal", 4, S)),
    message("HttpRequest", field("id", 1, S), field("method", 2, S),
            field("headers", 3, MSG, P + "HttpRequest.HeadersEntry", repeated=True),
            field("path", 4, S), field("host", 5, S), field("scheme", 6, S), field("size", 9, I64),
            field("protocol", 10, S), field("body", 11, S),
            nested=[map_entry("HeadersEntry", S, S)]),
    message("Request", field("time", 1, MSG, P + "Timestamp"), field("http", 2, MSG, P + "HttpRequest")),
    message("AttributeContext", field("source", 1, MSG, P + "Peer"),
            field("destination", 2, MSG, P + "Peer"), field("request", 4, MSG, P + "Request")),
    message("CheckRequest", field("attributes", 1, MSG, P + "AttributeContext")),
])

pool = descriptor_pool.DescriptorPool()
pool.Add(file)
T = {name: message_factory.GetMessageClass(pool.FindMessageTypeByName("t." + name))
     for name in ["CheckResponse", "CheckRequest", "HeaderValueOption"]}


def hvo(key, value, append=None, action=0, raw=None):
    option = T["HeaderValueOption"]()
    option.header.key = key
    if raw is not None:
        option.header.raw_value = raw
    else:
        option.header.value = value
    if append is not None:
        option.append.value = append
    option.append_action = action
    return option


vectors = []


def response(name, build, expected):
    msg = T["CheckResponse"]()
    build(msg)
    vectors.append({"name": name, "kind": "CheckResponse",
                    "base64": base64.b64encode(msg.SerializeToString()).decode(),
                    "expected": expected})


def ok_with_mutations(m):
    m.status.code = 0
    m.ok_response.headers.extend([hvo("x-user", "alice"), hvo("x-trace", "authz", append=True),
                                  hvo("x-raw", None, raw=b"bytes\x21")])
    m.ok_response.headers_to_remove.append("authorization")
    m.ok_response.response_headers_to_add.extend([hvo("x-quota", "9", action=2),
                                                  hvo("x-hint", "1", action=1)])
    m.dynamic_metadata.blob = "ignored by the filter"


response("ok with mutations and unknown dynamic_metadata", ok_with_mutations, {
    "allow": True,
    "upstream_set": [["x-user", "alice"], ["x-raw", "bytes!"]],
    "upstream_append": [["x-trace", "authz"]],
    "upstream_remove": ["authorization"],
    "response_set": [["x-quota", "9"]],
    "response_add_if_absent": [["x-hint", "1"]],
})


def denied_custom(m):
    m.status.code = 7
    m.status.message = "permission denied"
    m.denied_response.status.code = 401
    m.denied_response.headers.append(hvo("www-authenticate", "Bearer realm=\"shop\""))
    m.denied_response.body = "login required\n"


response("denied with status, headers and body", denied_custom, {
    "allow": False, "status": 401,
    "headers": [["www-authenticate", "Bearer realm=\"shop\""]], "body": "login required\n",
})


def denied_bare(m):
    m.status.code = 16


response("denied without details is 403", denied_bare,
         {"allow": False, "status": 403, "headers": [], "body": ""})


def empty(m):
    pass


# An empty CheckResponse has no status: proto3 reads it as code 0, OK.
response("empty response allows", empty, {"allow": True, "upstream_set": [], "upstream_append": [],
                                          "upstream_remove": [], "response_set": [],
                                          "response_add_if_absent": []})

request = T["CheckRequest"]()
a = request.attributes
a.source.address.socket_address.address = "10.0.0.9"
a.source.address.socket_address.port_value = 4567
a.source.principal = "spiffe://cluster.local/ns/shop/sa/web"
a.request.time.seconds = 1700000000
a.request.http.id = "req-1"
a.request.http.method = "POST"
a.request.http.headers["authorization"] = "Bearer alice"
a.request.http.headers[":path"] = "/orders?id=7"
a.request.http.path = "/orders?id=7"
a.request.http.host = "shop.example.com"
a.request.http.scheme = "https"
a.request.http.size = 11
a.request.http.protocol = "HTTP/2"
a.request.http.body = "{\"item\": 7}"
vectors.append({"name": "a CheckRequest", "kind": "CheckRequest",
                "base64": base64.b64encode(request.SerializeToString(deterministic=True)).decode(),
                "expected": {"source": "10.0.0.9:4567", "principal": a.source.principal,
                             "method": "POST", "path": "/orders?id=7", "host": "shop.example.com",
                             "scheme": "https", "size": 11, "protocol": "HTTP/2",
                             "body": "{\"item\": 7}", "authorization": "Bearer alice"}})

print(json.dumps({"generator": "google.protobuf " + __import__("google.protobuf").protobuf.__version__,
                  "vectors": vectors}, indent=2))
