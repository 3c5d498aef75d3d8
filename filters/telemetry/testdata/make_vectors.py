#!/usr/bin/env python3
"""Interop vectors for the telemetry filter, made by independent implementations.

* Workload metadata: Istio's node-metadata `google.protobuf.Struct`, serialized by Google's
  `protobuf` package (`struct_pb2`), and the `x-envoy-peer-metadata` header value (standard
  base64 of it), as an Istio sidecar sends it.
* Prometheus: `envoy_prometheus.txt` (captured from Envoy 1.40 running the filter by
  `WASMESH_WRITE_VECTORS=1 cargo test -p wasmesh-telemetry --test envoy`) parsed by the
  reference `prometheus_client` parser.

Run from this directory: `pip install protobuf prometheus_client && python3 make_vectors.py`.
It rewrites `peer_metadata.json` and `envoy_prometheus.parsed.json`; tests read them, so they
need neither Python nor the network.
"""

import base64
import json
import os

from google.protobuf import struct_pb2

WORKLOADS = {
    # A bookinfo client with every canonical label.
    "productpage": {
        "id": "sidecar~10.244.0.12~productpage-v1-6b746f74dc-9stvs.default~default.svc.cluster.local",
        "metadata": {
            "NAME": "productpage-v1-6b746f74dc-9stvs",
            "NAMESPACE": "default",
            "WORKLOAD_NAME": "productpage-v1",
            "OWNER": "kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1",
            "CLUSTER_ID": "Kubernetes",
            "MESH_ID": "cluster.local",
            "SERVICE_ACCOUNT": "bookinfo-productpage",
            "ISTIO_VERSION": "1.22.0",
            "APP_CONTAINERS": "productpage",
            "INSTANCE_IPS": "10.244.0.12",
            "INTERCEPTION_MODE": "REDIRECT",
            "LABELS": {
                "app": "productpage",
                "version": "v1",
                "pod-template-hash": "6b746f74dc",
                "security.istio.io/tlsMode": "istio",
                "service.istio.io/canonical-name": "productpage",
                "service.istio.io/canonical-revision": "v1",
            },
            "PLATFORM_METADATA": {},
        },
        "expect": {
            "workload": "productpage-v1", "namespace": "default", "app": "productpage",
            "version": "v1", "canonical_service": "productpage", "canonical_revision": "v1",
            "cluster": "Kubernetes",
        },
    },
    # The server the tests run the filter as (inbound).
    "reviews": {
        "id": "sidecar~10.244.0.20~reviews-v2-7d79d5bd5d-x2n8c.default~default.svc.cluster.local",
        "metadata": {
            "NAME": "reviews-v2-7d79d5bd5d-x2n8c",
            "NAMESPACE": "default",
            "WORKLOAD_NAME": "reviews-v2",
            "CLUSTER_ID": "Kubernetes",
            "MESH_ID": "cluster.local",
            "SERVICE_ACCOUNT": "bookinfo-reviews",
            "LABELS": {
                "app": "reviews",
                "version": "v2",
                "service.istio.io/canonical-name": "reviews",
                "service.istio.io/canonical-revision": "v2",
            },
        },
        "expect": {
            "workload": "reviews-v2", "namespace": "default", "app": "reviews",
            "version": "v2", "canonical_service": "reviews", "canonical_revision": "v2",
            "cluster": "Kubernetes",
        },
    },
    # A client with only app.kubernetes.io labels (the canonical names fall back to them).
    "frontend": {
        "id": "sidecar~10.1.0.5~frontend-5c9b8-abcde.shop~shop.svc.cluster.local",
        "metadata": {
            "NAME": "frontend-5c9b8-abcde",
            "NAMESPACE": "shop",
            "WORKLOAD_NAME": "frontend",
            "CLUSTER_ID": "east",
            "LABELS": {"app.kubernetes.io/name": "web", "app.kubernetes.io/version": "3.1"},
        },
        "expect": {
            "workload": "frontend", "namespace": "shop", "app": "web", "version": "3.1",
            "canonical_service": "web", "canonical_revision": "3.1", "cluster": "east",
        },
    },
    # A gRPC server with no labels at all, plus values of every Struct kind the decoder must
    # skip or keep (numbers, booleans, nulls, lists, nested structs, non-ASCII text).
    "cart": {
        "id": "sidecar~10.1.0.9~cart-0.shop~shop.svc.cluster.local",
        "metadata": {
            "NAME": "cart-0",
            "NAMESPACE": "shop",
            "WORKLOAD_NAME": "cart",
            "CLUSTER_ID": "east",
            "PORT": 8080,
            "READY": True,
            "NOTHING": None,
            "ZONES": ["a", "b", 3],
            "PLATFORM_METADATA": {"gcp_project": "shop-prod", "nested": {"deep": [1.5]}},
            "DISPLAY": "Einkaufswagen \u00fc\u2603",
        },
        "expect": {
            "workload": "cart", "namespace": "shop", "app": "", "version": "",
            "canonical_service": "cart", "canonical_revision": "latest", "cluster": "east",
        },
    },
}


def workload_vectors():
    out = {}
    for name, spec in WORKLOADS.items():
        message = struct_pb2.Struct()
        message.update(spec["metadata"])
        serialized = message.SerializeToString()
        out[name] = {
            "id": spec["id"],
            "struct_hex": serialized.hex(),
            "header": base64.b64encode(serialized).decode("ascii"),
            "metadata": spec["metadata"],
            "expect": spec["expect"],
        }
    return out


def prometheus_vectors():
    from prometheus_client.parser import text_string_to_metric_families

    path = "envoy_prometheus.txt"
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read()
    series = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.append({"name": sample.name, "labels": sample.labels, "value": sample.value})
    series.sort(key=lambda s: (s["name"], sorted(s["labels"].items())))
    return series


def main():
    with open("peer_metadata.json", "w") as f:
        json.dump({"workloads": workload_vectors()}, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    parsed = prometheus_vectors()
    if parsed is not None:
        with open("envoy_prometheus.parsed.json", "w") as f:
            # One series per line: small, and diffs stay readable.
            f.write("[\n")
            f.write(",\n".join(json.dumps(s, sort_keys=True, ensure_ascii=False) for s in parsed))
            f.write("\n]\n")


if __name__ == "__main__":
    main()
