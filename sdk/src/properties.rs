//! Envoy attributes: what a filter reads of the connection and the stream besides headers.
//!
//! [`Properties`] is the read side every view shares: an HTTP filter's
//! [`Request`](crate::request::Request) and a network filter's connection
//! ([`crate::network`]). The raw read ([`Properties::property`]) returns bytes as Envoy encodes
//! them: strings as their bytes, integers as 8-byte little-endian, booleans as one byte. The
//! typed helpers decode those encodings.
//!
//! Two implementations back the views: [`MemoryProperties`] (plain data, for native tests) and
//! [`PropertyCache`] in front of the host, which asks the proxy once per path per callback.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;

/// Well-known property paths (Envoy attribute names).
pub mod property {
    /// `source.address`: downstream peer address, `"ip:port"` string.
    pub const SOURCE_ADDRESS: &[&str] = &["source", "address"];
    /// `destination.address`: local address the connection arrived on, `"ip:port"` string.
    pub const DESTINATION_ADDRESS: &[&str] = &["destination", "address"];
    /// `connection.mtls`: whether the downstream connection used mutual TLS (bool).
    pub const CONNECTION_MTLS: &[&str] = &["connection", "mtls"];
    /// `connection.requested_server_name`: the SNI the client asked for (empty without TLS, or
    /// without a TLS inspector on a listener that does not terminate TLS).
    pub const REQUESTED_SERVER_NAME: &[&str] = &["connection", "requested_server_name"];
    /// `connection.uri_san_peer_certificate`: first URI SAN of the peer certificate.
    pub const PEER_URI_SAN: &[&str] = &["connection", "uri_san_peer_certificate"];
    /// `connection.subject_peer_certificate`: subject of the peer certificate.
    pub const PEER_SUBJECT: &[&str] = &["connection", "subject_peer_certificate"];
    /// `request.id`: the `x-request-id` Envoy assigned.
    pub const REQUEST_ID: &[&str] = &["request", "id"];
}

/// Decodes a string property (raw bytes; invalid UTF-8 is refused).
pub fn decode_string(bytes: &[u8]) -> Option<String> {
    String::from_utf8(bytes.to_vec()).ok()
}

/// Decodes an integer property (8-byte little-endian, as Envoy serializes `int64`/`uint64`).
pub fn decode_int(bytes: &[u8]) -> Option<i64> {
    let array: [u8; 8] = bytes.try_into().ok()?;
    Some(i64::from_le_bytes(array))
}

/// Decodes a boolean property (one byte, non-zero means true).
pub fn decode_bool(bytes: &[u8]) -> Option<bool> {
    match bytes {
        [byte] => Some(*byte != 0),
        _ => None,
    }
}

/// Encodes an integer property as Envoy does.
pub fn encode_int(value: i64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

/// Encodes a boolean property as Envoy does.
pub fn encode_bool(value: bool) -> Vec<u8> {
    vec![u8::from(value)]
}

/// Envoy attributes of the connection and the stream.
///
/// Object-safe: logic takes `&dyn Properties` (or a [`Request`](crate::request::Request),
/// which is one).
pub trait Properties {
    /// Raw property bytes at `path` (e.g. `["source", "address"]`), `None` when absent.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;

    /// A configuration attribute (`node`, `cluster_name`, `route_name`, `listener_direction`,
    /// the metadata ones): Envoy 1.40 serves these only under `xds.` (`xds.cluster_name`) and
    /// answers `NotFound` at the top level, where older proxies served them; both are tried, in
    /// that order.
    fn xds_property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let mut xds = Vec::with_capacity(path.len() + 1);
        xds.push("xds");
        xds.extend_from_slice(path);
        self.property(&xds).or_else(|| self.property(path))
    }

    /// A string configuration attribute (see [`Properties::xds_property`]).
    fn xds_property_string(&self, path: &[&str]) -> Option<String> {
        self.xds_property(path)
            .and_then(|bytes| decode_string(&bytes))
    }

    /// A string property.
    fn property_string(&self, path: &[&str]) -> Option<String> {
        self.property(path).and_then(|bytes| decode_string(&bytes))
    }

    /// An integer property.
    fn property_int(&self, path: &[&str]) -> Option<i64> {
        self.property(path).and_then(|bytes| decode_int(&bytes))
    }

    /// A boolean property.
    fn property_bool(&self, path: &[&str]) -> Option<bool> {
        self.property(path).and_then(|bytes| decode_bool(&bytes))
    }

    /// Downstream peer address (`source.address`).
    fn source_address(&self) -> Option<SocketAddr> {
        self.property_string(property::SOURCE_ADDRESS)?.parse().ok()
    }

    /// Local address the connection arrived on (`destination.address`).
    fn destination_address(&self) -> Option<SocketAddr> {
        self.property_string(property::DESTINATION_ADDRESS)?
            .parse()
            .ok()
    }

    /// The server name (SNI) the client asked for, `None` when it asked for none
    /// (`connection.requested_server_name`).
    fn requested_server_name(&self) -> Option<String> {
        self.property_string(property::REQUESTED_SERVER_NAME)
            .filter(|name| !name.is_empty())
    }

    /// Whether the downstream connection used mutual TLS (`connection.mtls`).
    fn mtls(&self) -> bool {
        self.property_bool(property::CONNECTION_MTLS)
            .unwrap_or(false)
    }

    /// Peer identity from the client certificate: the URI SAN (SPIFFE ID in a mesh) when
    /// present, else the certificate subject. `None` without a peer certificate.
    fn peer_identity(&self) -> Option<String> {
        self.property_string(property::PEER_URI_SAN)
            .filter(|value| !value.is_empty())
            .or_else(|| {
                self.property_string(property::PEER_SUBJECT)
                    .filter(|value| !value.is_empty())
            })
    }
}

/// In-memory [`Properties`] for native tests: set what the proxy would serve.
#[derive(Debug, Clone, Default)]
pub struct MemoryProperties {
    values: HashMap<Vec<String>, Vec<u8>>,
}

impl MemoryProperties {
    /// No property at all.
    pub fn new() -> Self {
        MemoryProperties::default()
    }

    /// Sets a raw property.
    #[must_use]
    pub fn with_property(mut self, path: &[&str], value: impl Into<Vec<u8>>) -> Self {
        let key = path.iter().map(|part| (*part).to_string()).collect();
        self.values.insert(key, value.into());
        self
    }

    /// Sets `source.address`.
    #[must_use]
    pub fn with_source_address(self, address: SocketAddr) -> Self {
        self.with_property(property::SOURCE_ADDRESS, address.to_string())
    }

    /// Sets `destination.address`.
    #[must_use]
    pub fn with_destination_address(self, address: SocketAddr) -> Self {
        self.with_property(property::DESTINATION_ADDRESS, address.to_string())
    }

    /// Sets `connection.requested_server_name` (the SNI).
    #[must_use]
    pub fn with_server_name(self, name: &str) -> Self {
        self.with_property(property::REQUESTED_SERVER_NAME, name)
    }

    /// Marks the connection as mTLS with the given peer URI SAN.
    #[must_use]
    pub fn with_mtls_peer(self, uri_san: &str) -> Self {
        self.with_property(property::CONNECTION_MTLS, encode_bool(true))
            .with_property(property::PEER_URI_SAN, uri_san)
    }
}

impl Properties for MemoryProperties {
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let key: Vec<String> = path.iter().map(|part| (*part).to_string()).collect();
        self.values.get(&key).cloned()
    }
}

/// The properties one callback read, so that each path costs one hostcall however often the
/// logic asks. A callback reads a handful, so a list searched without allocating beats a map
/// keyed by owned paths.
#[derive(Debug, Default)]
pub struct PropertyCache {
    read: RefCell<Vec<CachedProperty>>,
}

/// A property path and the value the host gave for it (`None`: absent).
type CachedProperty = (Vec<String>, Option<Vec<u8>>);

impl PropertyCache {
    /// The value at `path`: from the cache, else from `fetch` (then cached, absent included).
    pub fn get(
        &self,
        path: &[&str],
        fetch: impl FnOnce(&[&str]) -> Option<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        let same_path = |key: &[String]| key.iter().map(String::as_str).eq(path.iter().copied());
        if let Some((_, cached)) = self.read.borrow().iter().find(|(key, _)| same_path(key)) {
            return cached.clone();
        }
        let value = fetch(path);
        let key = path.iter().map(|part| (*part).to_string()).collect();
        self.read.borrow_mut().push((key, value.clone()));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn typed_reads_decode_envoy_encodings() {
        let properties = MemoryProperties::new()
            .with_source_address("[2001:db8::1]:443".parse().unwrap())
            .with_destination_address("10.0.0.1:8080".parse().unwrap())
            .with_property(&["connection", "mtls"], encode_bool(true))
            .with_property(&["connection", "subject_peer_certificate"], "CN=client")
            .with_property(&["upstream", "port"], encode_int(8443));
        assert_eq!(
            properties.source_address(),
            Some("[2001:db8::1]:443".parse().unwrap())
        );
        assert_eq!(
            properties.destination_address(),
            Some("10.0.0.1:8080".parse().unwrap())
        );
        assert!(properties.mtls());
        assert_eq!(properties.peer_identity().as_deref(), Some("CN=client"));
        assert_eq!(properties.property_int(&["upstream", "port"]), Some(8443));
        assert_eq!(decode_int(&[1, 2]), None);
        assert_eq!(decode_bool(&[0]), Some(false));
        assert_eq!(decode_bool(&[]), None);
    }

    #[test]
    fn peer_identity_prefers_uri_san_over_subject() {
        let properties = MemoryProperties::new()
            .with_mtls_peer("spiffe://cluster.local/ns/default/sa/client")
            .with_property(&["connection", "subject_peer_certificate"], "CN=client");
        assert_eq!(
            properties.peer_identity().as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/client")
        );
        assert_eq!(MemoryProperties::new().peer_identity(), None);
        assert!(!MemoryProperties::new().mtls());
    }

    #[test]
    fn an_empty_server_name_is_no_server_name() {
        assert_eq!(MemoryProperties::new().requested_server_name(), None);
        let plain = MemoryProperties::new().with_server_name("");
        assert_eq!(plain.requested_server_name(), None);
        let tls = MemoryProperties::new().with_server_name("api.example.com");
        assert_eq!(
            tls.requested_server_name().as_deref(),
            Some("api.example.com")
        );
    }

    #[test]
    fn the_cache_asks_once_per_whole_path() {
        let cache = PropertyCache::default();
        let asked = Cell::new(0);
        let fetch = |path: &[&str]| {
            asked.set(asked.get() + 1);
            (path == ["source", "address"]).then(|| b"10.0.0.1:5000".to_vec())
        };
        assert_eq!(cache.get(&["source"], fetch), None);
        assert_eq!(cache.get(&["source"], fetch), None);
        assert_eq!(
            cache.get(&["source", "address"], fetch).as_deref(),
            Some(&b"10.0.0.1:5000"[..])
        );
        assert_eq!(
            cache.get(&["source", "address"], fetch).as_deref(),
            Some(&b"10.0.0.1:5000"[..])
        );
        assert_eq!(asked.get(), 2);
    }
}
