//! Workload identity: the local node (Envoy's `node.metadata`, as Istio's agent fills it) and
//! the peer's, exchanged in Istio's `x-envoy-peer-metadata` / `x-envoy-peer-metadata-id`
//! headers (base64 of a serialized `google.protobuf.Struct` with Istio's node-metadata keys).

use std::collections::BTreeMap;

use crate::proto::{base64_decode, base64_encode, decode_struct, encode_struct, Struct, Value};

/// Header carrying the peer's metadata.
pub const PEER_METADATA_HEADER: &str = "x-envoy-peer-metadata";
/// Header carrying the peer's node id.
pub const PEER_METADATA_ID_HEADER: &str = "x-envoy-peer-metadata-id";

/// Label holding a workload's canonical service.
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";
/// Label holding a workload's canonical revision.
pub const CANONICAL_REVISION_LABEL: &str = "service.istio.io/canonical-revision";

/// What Istio's node metadata says about a workload (the fields the standard labels use).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeInfo {
    /// Node id (`sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local`), from `node.id` or the `-id`
    /// header.
    pub id: String,
    /// `NAME`: the pod name.
    pub name: String,
    /// `NAMESPACE`.
    pub namespace: String,
    /// `WORKLOAD_NAME`: the deployment (or other owner) name.
    pub workload_name: String,
    /// `CLUSTER_ID`.
    pub cluster_id: String,
    /// `MESH_ID`.
    pub mesh_id: String,
    /// `SERVICE_ACCOUNT`.
    pub service_account: String,
    /// `LABELS` (string values only).
    pub labels: BTreeMap<String, String>,
    /// The metadata as received, re-sent unchanged by the metadata exchange.
    pub raw: Struct,
}

fn text(fields: &Struct, key: &str) -> String {
    match fields.get(key) {
        Some(Value::String(value)) => value.clone(),
        _ => String::new(),
    }
}

impl NodeInfo {
    /// Reads Istio's keys from a node-metadata `Struct`.
    pub fn from_struct(fields: Struct) -> NodeInfo {
        let labels = match fields.get("LABELS") {
            Some(Value::Struct(labels)) => labels
                .iter()
                .filter_map(|(key, value)| match value {
                    Value::String(value) => Some((key.clone(), value.clone())),
                    _ => None,
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        NodeInfo {
            id: String::new(),
            name: text(&fields, "NAME"),
            namespace: text(&fields, "NAMESPACE"),
            workload_name: text(&fields, "WORKLOAD_NAME"),
            cluster_id: text(&fields, "CLUSTER_ID"),
            mesh_id: text(&fields, "MESH_ID"),
            service_account: text(&fields, "SERVICE_ACCOUNT"),
            labels,
            raw: fields,
        }
    }

    /// Whether nothing is known about the workload.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty() && self.id.is_empty()
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .get(key)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }

    /// `app` label (else `app.kubernetes.io/name`).
    pub fn app(&self) -> &str {
        self.label("app")
            .or_else(|| self.label("app.kubernetes.io/name"))
            .unwrap_or_default()
    }

    /// `version` label (else `app.kubernetes.io/version`).
    pub fn version(&self) -> &str {
        self.label("version")
            .or_else(|| self.label("app.kubernetes.io/version"))
            .unwrap_or_default()
    }

    /// Canonical service: the canonical-name label, else the app name, else the workload name
    /// (Istio's derivation).
    pub fn canonical_service(&self) -> &str {
        self.label(CANONICAL_NAME_LABEL)
            .or_else(|| self.label("app.kubernetes.io/name"))
            .or_else(|| self.label("app"))
            .unwrap_or(&self.workload_name)
    }

    /// Canonical revision: the canonical-revision label, else the version, else `latest`.
    pub fn canonical_revision(&self) -> &str {
        self.label(CANONICAL_REVISION_LABEL)
            .or_else(|| self.label("app.kubernetes.io/version"))
            .or_else(|| self.label("version"))
            .unwrap_or("latest")
    }

    /// The `x-envoy-peer-metadata` value describing this node.
    pub fn header_value(&self) -> String {
        base64_encode(&encode_struct(&self.raw))
    }
}

/// Decodes an `x-envoy-peer-metadata` value (`None` if it is not base64 of a `Struct`).
pub fn decode_peer_header(value: &str, id: Option<&str>) -> Option<NodeInfo> {
    let bytes = base64_decode(value)?;
    let fields = decode_struct(&bytes).ok()?;
    let mut node = NodeInfo::from_struct(fields);
    node.id = id.unwrap_or_default().to_string();
    Some(node)
}

/// Reads the local node from the `xds.node.metadata` property. Envoy 1.40 serializes a
/// map-valued property as proxy-wasm pairs, a nested map (`LABELS`) as pairs inside the value,
/// numbers and booleans in their binary form; other hosts hand over a serialized `Struct`.
pub fn decode_node_metadata(bytes: &[u8]) -> Option<NodeInfo> {
    if let Some(fields) = pairs_to_struct(bytes, 0) {
        return Some(NodeInfo::from_struct(fields));
    }
    decode_struct(bytes).ok().map(NodeInfo::from_struct)
}

fn pairs_to_struct(bytes: &[u8], depth: usize) -> Option<Struct> {
    let mut fields = Struct::new();
    for (key, value) in decode_pairs(bytes)? {
        let key = String::from_utf8(key).ok()?;
        // Text never contains NUL; a value that does is a nested map. Numbers and booleans are
        // not needed and are skipped.
        let value = if !value.contains(&0) {
            match String::from_utf8(value) {
                Ok(text) => Value::String(text),
                Err(_) => continue,
            }
        } else if depth < crate::proto::MAX_DEPTH {
            match pairs_to_struct(&value, depth + 1) {
                Some(nested) => Value::Struct(nested),
                None => continue,
            }
        } else {
            continue;
        };
        fields.insert(key, value);
    }
    Some(fields)
}

/// The proxy-wasm map serialization: `u32` count, `u32` sizes, then NUL-terminated bytes.
/// `None` unless the input is exactly one such map.
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let word = |at: usize| -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(raw)).ok()
    };
    let count = word(0)?;
    let table_end = count.checked_mul(8)?.checked_add(4)?;
    if table_end > bytes.len() {
        return None;
    }
    let mut position = table_end;
    let mut pairs = Vec::with_capacity(count);
    for index in 0..count {
        let key_len = word(4 + index * 8)?;
        let value_len = word(8 + index * 8)?;
        let key = bytes.get(position..position.checked_add(key_len)?)?;
        position += key_len;
        (bytes.get(position) == Some(&0)).then_some(())?;
        position += 1;
        let value = bytes.get(position..position.checked_add(value_len)?)?;
        position += value_len;
        (bytes.get(position) == Some(&0)).then_some(())?;
        position += 1;
        pairs.push((key.to_vec(), value.to_vec()));
    }
    (position == bytes.len()).then_some(pairs)
}

/// Serializes pairs as proxy-wasm maps (and Envoy 1.40 map-valued properties) are.
pub fn encode_pairs(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut bytes = len(pairs.len()).to_vec();
    for (key, value) in pairs {
        bytes.extend_from_slice(&len(key.len()));
        bytes.extend_from_slice(&len(value.len()));
    }
    for (key, value) in pairs {
        bytes.extend_from_slice(key);
        bytes.push(0);
        bytes.extend_from_slice(value);
        bytes.push(0);
    }
    bytes
}

/// Serializes node metadata as Envoy 1.40 hands `xds.node.metadata` to a module: string fields
/// as text, `LABELS` (and any other map of strings) as nested pairs.
pub fn encode_node_metadata(fields: &Struct) -> Vec<u8> {
    let encoded: Vec<(Vec<u8>, Vec<u8>)> = fields
        .iter()
        .filter_map(|(key, value)| {
            let value = match value {
                Value::String(text) => text.as_bytes().to_vec(),
                Value::Struct(nested) => encode_node_metadata(nested),
                _ => return None,
            };
            Some((key.as_bytes().to_vec(), value))
        })
        .collect();
    let borrowed: Vec<(&[u8], &[u8])> = encoded
        .iter()
        .map(|(key, value)| (key.as_slice(), value.as_slice()))
        .collect();
    encode_pairs(&borrowed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn node(workload: &str, namespace: &str, labels: &[(&str, &str)]) -> NodeInfo {
        let mut fields = Struct::new();
        fields.insert("NAME".into(), Value::String(format!("{workload}-pod")));
        fields.insert("NAMESPACE".into(), Value::String(namespace.into()));
        fields.insert("WORKLOAD_NAME".into(), Value::String(workload.into()));
        fields.insert("CLUSTER_ID".into(), Value::String("Kubernetes".into()));
        fields.insert(
            "LABELS".into(),
            Value::Struct(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), Value::String((*v).to_string())))
                    .collect(),
            ),
        );
        NodeInfo::from_struct(fields)
    }

    #[test]
    fn labels_derive_istio_names_with_fallbacks() {
        let full = node(
            "reviews-v2",
            "default",
            &[
                ("app", "reviews"),
                ("version", "v2"),
                (CANONICAL_NAME_LABEL, "reviews-canonical"),
                (CANONICAL_REVISION_LABEL, "2"),
            ],
        );
        assert_eq!(
            (
                full.app(),
                full.version(),
                full.canonical_service(),
                full.canonical_revision()
            ),
            ("reviews", "v2", "reviews-canonical", "2")
        );
        let bare = node("ratings", "prod", &[]);
        assert_eq!(
            (
                bare.app(),
                bare.version(),
                bare.canonical_service(),
                bare.canonical_revision()
            ),
            ("", "", "ratings", "latest")
        );
        let k8s = node(
            "web",
            "prod",
            &[
                ("app.kubernetes.io/name", "shop"),
                ("app.kubernetes.io/version", "1.2"),
            ],
        );
        assert_eq!(
            (
                k8s.app(),
                k8s.version(),
                k8s.canonical_service(),
                k8s.canonical_revision()
            ),
            ("shop", "1.2", "shop", "1.2")
        );
    }

    #[test]
    fn header_round_trips_and_garbage_is_refused() {
        let original = node("productpage-v1", "default", &[("app", "productpage")]);
        let header = original.header_value();
        let decoded = decode_peer_header(&header, Some("sidecar~10.0.0.1~p.default~x")).unwrap();
        assert_eq!(decoded.workload_name, "productpage-v1");
        assert_eq!(decoded.app(), "productpage");
        assert_eq!(decoded.id, "sidecar~10.0.0.1~p.default~x");
        assert_eq!(decoded.raw, original.raw);
        assert_eq!(decode_peer_header("not base64!", None), None);
        assert_eq!(decode_peer_header("AAAA", None), None);
    }

    #[test]
    fn node_metadata_reads_envoy_pairs_and_structs() {
        let original = node("a", "b", &[("app", "x")]);
        let from_struct = decode_node_metadata(&encode_struct(&original.raw)).unwrap();
        assert_eq!(from_struct.workload_name, "a");
        let from_pairs = decode_node_metadata(&encode_node_metadata(&original.raw)).unwrap();
        assert_eq!(from_pairs, original);
        // count 2, sizes, then "NAMESPACE\0ns\0WORKLOAD_NAME\0w\0"
        let mut pairs = vec![2, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0, 0, 13, 0, 0, 0, 1, 0, 0, 0];
        pairs.extend_from_slice(b"NAMESPACE\0ns\0WORKLOAD_NAME\0w\0");
        let flat = decode_node_metadata(&pairs).unwrap();
        assert_eq!(
            (flat.namespace.as_str(), flat.workload_name.as_str()),
            ("ns", "w")
        );
        assert_eq!(decode_pairs(&pairs[..pairs.len() - 1]), None);
        assert_eq!(decode_pairs(&[9, 0, 0, 0]), None);
        // A binary value (a number) is skipped, the rest is kept.
        let with_number = encode_pairs(&[(b"PORT", &8080f64.to_le_bytes()), (b"NAME", b"p")]);
        assert_eq!(decode_node_metadata(&with_number).unwrap().name, "p");
    }
}
