//! What the policies see of one request: normalized path and authority, addresses, the TLS
//! peer, dynamic metadata and JWT claims. Built once per request; connection properties are
//! read from the host lazily, the first time a rule needs them.

use std::cell::OnceCell;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;
use serde_json::Value;
use wasmesh_sdk::matcher::{HeaderMatcher, StringMatcher};
use wasmesh_sdk::properties::property;
use wasmesh_sdk::request::{Header, Request};

use crate::metadata::decode_metadata;
use crate::normalize::{host_forms, Normalization, NormalizedPath, PathRejection};
use crate::rule::Match;
use crate::util::{base64url_decode, deserialize_non_empty};

/// `connection.dns_san_peer_certificate`: first DNS SAN of the peer certificate.
const PEER_DNS_SAN: &[&str] = &["connection", "dns_san_peer_certificate"];
/// `connection.tls_version`: present on TLS connections.
const TLS_VERSION: &[&str] = &["connection", "tls_version"];
/// `connection.requested_server_name`: the SNI.
const REQUESTED_SERVER_NAME: &[&str] = &["connection", "requested_server_name"];

/// How a request with several values of one header is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum MultipleHeaderValues {
    /// Every reading (each value alone, and all joined with `","`) must satisfy an ALLOW; any
    /// reading triggers a DENY (default; see [`crate::rule`]).
    #[serde(rename = "STRICT")]
    #[default]
    Strict,
    /// The header matches if one of its values matches: what Envoy 1.40's RBAC filter does
    /// (so a second value can satisfy an ALLOW the first value would fail).
    #[serde(rename = "ANY_VALUE")]
    AnyValue,
    /// Values joined with `","`, as Envoy's `HeaderUtility::getAllOfHeaderAsString`.
    #[serde(rename = "JOIN")]
    Join,
}

/// Where Istio's `request.auth.*` attributes (request principal, claims) come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtPayloadSource {
    /// Dynamic metadata written by Envoy's `jwt_authn` (`payload_in_metadata`).
    #[serde(default)]
    pub metadata: Option<MetadataKey>,
    /// A request header carrying the base64url-encoded payload (`forward_payload_header` of
    /// a JWT filter that runs before this one and always overwrites or removes it).
    #[serde(default)]
    pub header: Option<String>,
}

/// `metadata.filter_metadata[filter][key]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataKey {
    /// The filter namespace.
    #[serde(deserialize_with = "deserialize_non_empty")]
    pub filter: String,
    /// The key under which the payload is stored.
    #[serde(deserialize_with = "deserialize_non_empty")]
    pub key: String,
}

impl Default for JwtPayloadSource {
    fn default() -> Self {
        JwtPayloadSource {
            metadata: Some(MetadataKey {
                filter: "envoy.filters.http.jwt_authn".to_string(),
                key: "jwt_payload".to_string(),
            }),
            header: None,
        }
    }
}

/// Everything of the configuration that shapes the attributes.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Path and host normalization.
    pub normalization: Normalization,
    /// Multi-value header semantics.
    pub multiple_header_values: MultipleHeaderValues,
    /// `x-forwarded-for` entries (from the right) added by trusted proxies.
    pub xff_num_trusted_hops: u32,
    /// The JWT payload's source, when some rule reads claims.
    pub jwt_payload: Option<JwtPayloadSource>,
    /// Metadata namespaces some rule reads (fetched once per request).
    pub metadata_filters: Vec<String>,
}

#[derive(Debug, Default)]
struct Peer {
    tls: bool,
    uri_san: Option<String>,
    dns_san: Option<String>,
    subject: Option<String>,
}

/// One request as the policies see it.
pub struct Attributes<'r> {
    request: &'r dyn Request,
    settings: &'r Settings,
    headers: Vec<Header>,
    path: Option<NormalizedPath>,
    metadata: Vec<(String, Value)>,
    jwt_payload: Option<Value>,
    destination: OnceCell<Option<SocketAddr>>,
    direct_remote_ip: OnceCell<Option<IpAddr>>,
    remote_ip: OnceCell<Option<IpAddr>>,
    requested_server_name: OnceCell<String>,
    peer: OnceCell<Peer>,
}

impl<'r> Attributes<'r> {
    /// Normalizes the request; `Err` when its path must be refused.
    pub fn new(request: &'r dyn Request, settings: &'r Settings) -> Result<Self, PathRejection> {
        let path = request
            .path()
            .map(|raw| settings.normalization.path(raw))
            .transpose()?;
        let mut headers = request.request_headers().to_vec();
        for (name, value) in &mut headers {
            match name.as_str() {
                ":path" => {
                    if let Some(normalized) = &path {
                        *value = normalized.with_query();
                    }
                }
                ":authority" | "host" => *value = settings.normalization.authority(value),
                _ => {}
            }
        }
        let reads_jwt_metadata = settings
            .jwt_payload
            .as_ref()
            .is_some_and(|source| source.metadata.is_some());
        // One read and decode of all dynamic metadata serves every rule.
        let metadata = if settings.metadata_filters.is_empty() && !reads_jwt_metadata {
            Vec::new()
        } else {
            request
                .property(&["metadata"])
                .and_then(|bytes| decode_metadata(&bytes))
                .unwrap_or_default()
        };
        let jwt_payload = settings
            .jwt_payload
            .as_ref()
            .and_then(|source| read_jwt_payload(request, source, &metadata));
        Ok(Attributes {
            request,
            settings,
            headers,
            path,
            metadata,
            jwt_payload,
            destination: OnceCell::new(),
            direct_remote_ip: OnceCell::new(),
            remote_ip: OnceCell::new(),
            requested_server_name: OnceCell::new(),
            peer: OnceCell::new(),
        })
    }

    /// The normalized path (no query, no fragment); `None` without `:path`.
    pub fn url_path(&self) -> Option<&str> {
        self.path.as_ref().map(|p| p.path.as_str())
    }

    /// The normalized path with the query, as it would be forwarded normalized.
    pub fn normalized_path(&self) -> Option<&NormalizedPath> {
        self.path.as_ref()
    }

    /// Matches a header on every reading of the request (see [`crate::rule`]).
    pub fn match_header(&self, matcher: &HeaderMatcher) -> Match {
        let mode = self.settings.multiple_header_values;
        let values: Vec<&Header> = self
            .headers
            .iter()
            .filter(|(name, _)| name.as_str() == matcher.name())
            .collect();
        if values.len() < 2 || mode == MultipleHeaderValues::Join {
            return Match::exactly(matcher.matches_headers(&self.headers));
        }
        let mut any = false;
        let mut all = true;
        for (name, value) in values {
            let matched = matcher.matches_headers(&[(name.clone(), value.clone())]);
            any |= matched;
            all &= matched;
        }
        if mode == MultipleHeaderValues::AnyValue {
            return Match::exactly(any);
        }
        let joined = matcher.matches_headers(&self.headers);
        Match {
            certain: all && joined,
            possible: any || joined,
        }
    }

    /// Istio `hosts`: the canonical authority with its port, or without it.
    pub fn host_matches(&self, matcher: &StringMatcher) -> bool {
        let Some(authority) = self.request.authority() else {
            return false;
        };
        let (with_port, without_port) = host_forms(authority);
        matcher.matches(&with_port) || without_port.is_some_and(|host| matcher.matches(&host))
    }

    /// The local address the request arrived on.
    pub fn destination(&self) -> Option<SocketAddr> {
        *self
            .destination
            .get_or_init(|| self.request.destination_address())
    }

    /// The downstream peer (`source.address`).
    pub fn direct_remote_ip(&self) -> Option<IpAddr> {
        *self
            .direct_remote_ip
            .get_or_init(|| self.request.source_address().map(|a| a.ip()))
    }

    /// The client address: the `x-forwarded-for` entry `xff_num_trusted_hops` from the right,
    /// else the downstream peer.
    pub fn remote_ip(&self) -> Option<IpAddr> {
        *self.remote_ip.get_or_init(|| {
            let forwarded: Vec<&str> = self
                .request
                .header_values("x-forwarded-for")
                .into_iter()
                .flat_map(|value| value.split(','))
                .map(str::trim)
                .collect();
            let hops = usize::try_from(self.settings.xff_num_trusted_hops).unwrap_or(usize::MAX);
            forwarded
                .len()
                .checked_sub(hops.saturating_add(1))
                .and_then(|index| forwarded.get(index))
                .and_then(|entry| entry.parse::<IpAddr>().ok())
                .or_else(|| self.direct_remote_ip())
        })
    }

    /// The TLS SNI, empty without one.
    pub fn requested_server_name(&self) -> &str {
        self.requested_server_name.get_or_init(|| {
            self.request
                .property_string(REQUESTED_SERVER_NAME)
                .unwrap_or_default()
        })
    }

    fn peer(&self) -> &Peer {
        self.peer.get_or_init(|| {
            let non_empty = |path: &[&str]| {
                self.request
                    .property_string(path)
                    .filter(|value| !value.is_empty())
            };
            Peer {
                tls: self.request.mtls() || non_empty(TLS_VERSION).is_some(),
                uri_san: non_empty(property::PEER_URI_SAN),
                dns_san: non_empty(PEER_DNS_SAN),
                subject: non_empty(property::PEER_SUBJECT),
            }
        })
    }

    /// Envoy's `authenticated` principal: a TLS connection; with a matcher, the peer
    /// certificate's URI SAN, else DNS SAN, else subject must match.
    pub fn authenticated(&self, matcher: Option<&StringMatcher>) -> bool {
        let peer = self.peer();
        if !peer.tls {
            return false;
        }
        let Some(matcher) = matcher else {
            return true;
        };
        [&peer.uri_san, &peer.dns_san]
            .into_iter()
            .flatten()
            .any(|san| matcher.matches(san))
            || matcher.matches(peer.subject.as_deref().unwrap_or_default())
    }

    /// The decoded dynamic metadata of `filter`.
    pub fn filter_metadata(&self, filter: &str) -> Option<&Value> {
        self.metadata
            .iter()
            .find(|(name, _)| name == filter)
            .map(|(_, value)| value)
    }

    /// The JWT payload (claims), when a source is configured and holds one.
    pub fn jwt_payload(&self) -> Option<&Value> {
        self.jwt_payload.as_ref()
    }

    /// Istio's `request.auth.principal`: `<iss>/<sub>` of the JWT.
    pub fn request_principal(&self) -> Option<String> {
        let payload = self.jwt_payload()?;
        let issuer = payload.get("iss")?.as_str()?;
        let subject = payload.get("sub")?.as_str()?;
        Some(format!("{issuer}/{subject}"))
    }

    /// A (nested) JWT claim.
    pub fn claim(&self, path: &[String]) -> Option<&Value> {
        let mut value = self.jwt_payload()?;
        for key in path {
            value = value.get(key.as_str())?;
        }
        Some(value)
    }
}

fn read_jwt_payload(
    request: &dyn Request,
    source: &JwtPayloadSource,
    metadata: &[(String, Value)],
) -> Option<Value> {
    let payload = if let Some(key) = &source.metadata {
        metadata
            .iter()
            .find(|(name, _)| *name == key.filter)?
            .1
            .get(key.key.as_str())?
            .clone()
    } else if let Some(header) = &source.header {
        // Several values are ambiguous: trust none of them.
        let values = request.header_values(header);
        let [encoded] = values.as_slice() else {
            return None;
        };
        let bytes = base64url_decode(encoded.trim())?;
        serde_json::from_slice(&bytes).ok()?
    } else {
        return None;
    };
    payload.is_object().then_some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::encode_metadata;
    use serde_json::json;
    use wasmesh_sdk::matcher::HeaderMatch;
    use wasmesh_sdk::request::MemoryRequest;

    fn settings() -> Settings {
        Settings::default()
    }

    #[test]
    fn headers_view_carries_the_normalized_path_and_authority() {
        let request = MemoryRequest::new()
            .with_header(":method", "GET")
            .with_header(":path", "/a/../admin?x=1#f")
            .with_header(":authority", "EXAMPLE.com.:80");
        let settings = settings();
        let attributes = Attributes::new(&request, &settings).unwrap();
        assert_eq!(attributes.url_path(), Some("/admin"));
        let path = HeaderMatcher::new(":path", HeaderMatch::Exact("/admin?x=1".into()));
        assert_eq!(attributes.match_header(&path), Match::exactly(true));
        let authority =
            HeaderMatcher::new(":authority", HeaderMatch::Exact("example.com:80".into()));
        assert_eq!(attributes.match_header(&authority), Match::exactly(true));
    }

    #[test]
    fn repeated_headers_give_bounds_unless_joined() {
        let request = MemoryRequest::get("/")
            .with_header("x-user", "alice")
            .with_header("x-user", "bob");
        let bob = HeaderMatcher::new("x-user", HeaderMatch::Exact("bob".into()));
        let strict = settings();
        let attributes = Attributes::new(&request, &strict).unwrap();
        assert_eq!(
            attributes.match_header(&bob),
            Match {
                certain: false,
                possible: true
            }
        );
        let join = Settings {
            multiple_header_values: MultipleHeaderValues::Join,
            ..settings()
        };
        let attributes = Attributes::new(&request, &join).unwrap();
        assert_eq!(attributes.match_header(&bob), Match::exactly(false));
        let joined = HeaderMatcher::new("x-user", HeaderMatch::Exact("alice,bob".into()));
        assert_eq!(attributes.match_header(&joined), Match::exactly(true));
        let any_value = Settings {
            multiple_header_values: MultipleHeaderValues::AnyValue,
            ..settings()
        };
        let attributes = Attributes::new(&request, &any_value).unwrap();
        assert_eq!(attributes.match_header(&bob), Match::exactly(true));
        assert_eq!(attributes.match_header(&joined), Match::exactly(false));
        // Strict: the joined reading counts too.
        let attributes = Attributes::new(&request, &strict).unwrap();
        assert_eq!(
            attributes.match_header(&joined),
            Match {
                certain: false,
                possible: true
            }
        );
    }

    #[test]
    fn remote_ip_honours_trusted_hops() {
        let request = MemoryRequest::get("/")
            .with_source_address("10.0.0.1:5000".parse().unwrap())
            .with_header("x-forwarded-for", "1.1.1.1, 2.2.2.2")
            .with_header("x-forwarded-for", "3.3.3.3");
        let ip = |hops: u32| {
            let settings = Settings {
                xff_num_trusted_hops: hops,
                ..settings()
            };
            Attributes::new(&request, &settings).unwrap().remote_ip()
        };
        assert_eq!(ip(0), Some("3.3.3.3".parse().unwrap()));
        assert_eq!(ip(1), Some("2.2.2.2".parse().unwrap()));
        assert_eq!(ip(2), Some("1.1.1.1".parse().unwrap()));
        // Not enough entries: the downstream peer.
        assert_eq!(ip(3), Some("10.0.0.1".parse().unwrap()));
        let garbage = MemoryRequest::get("/")
            .with_source_address("10.0.0.1:5000".parse().unwrap())
            .with_header("x-forwarded-for", "not-an-ip");
        let settings = settings();
        let attributes = Attributes::new(&garbage, &settings).unwrap();
        assert_eq!(attributes.remote_ip(), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            attributes.direct_remote_ip(),
            Some("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn authenticated_follows_envoy_san_order() {
        let plain = MemoryRequest::get("/");
        let settings = settings();
        assert!(!Attributes::new(&plain, &settings)
            .unwrap()
            .authenticated(None));
        let tls_without_cert = MemoryRequest::get("/").with_property(TLS_VERSION, "TLSv1.3");
        let attributes = Attributes::new(&tls_without_cert, &settings).unwrap();
        assert!(attributes.authenticated(None));
        assert!(attributes.authenticated(Some(&StringMatcher::exact(""))));
        let peer = MemoryRequest::get("/")
            .with_mtls_peer("spiffe://cluster.local/ns/a/sa/b")
            .with_property(PEER_DNS_SAN, "client.example.com")
            .with_property(property::PEER_SUBJECT, "CN=client");
        let attributes = Attributes::new(&peer, &settings).unwrap();
        for name in [
            "spiffe://cluster.local/ns/a/sa/b",
            "client.example.com",
            "CN=client",
        ] {
            assert!(
                attributes.authenticated(Some(&StringMatcher::exact(name))),
                "{name}"
            );
        }
        assert!(!attributes.authenticated(Some(&StringMatcher::exact("CN=other"))));
    }

    #[test]
    fn jwt_payload_from_metadata_or_header() {
        let payload = json!({"iss": "https://issuer", "sub": "alice", "groups": ["a"], "nested": {"role": "x"}});
        let metadata = encode_metadata(&[(
            "envoy.filters.http.jwt_authn",
            json!({"jwt_payload": payload}),
        )]);
        let request = MemoryRequest::get("/").with_property(&["metadata"], metadata);
        let metadata_settings = Settings {
            jwt_payload: Some(JwtPayloadSource::default()),
            ..settings()
        };
        let attributes = Attributes::new(&request, &metadata_settings).unwrap();
        assert_eq!(
            attributes.request_principal().as_deref(),
            Some("https://issuer/alice")
        );
        assert_eq!(
            attributes.claim(&["nested".into(), "role".into()]),
            Some(&json!("x"))
        );
        assert_eq!(attributes.claim(&["missing".into()]), None);

        let header_settings = Settings {
            jwt_payload: Some(JwtPayloadSource {
                metadata: None,
                header: Some("x-jwt-payload".into()),
            }),
            ..settings()
        };
        // {"iss":"i","sub":"s"}
        let encoded = "eyJpc3MiOiJpIiwic3ViIjoicyJ9";
        let request = MemoryRequest::get("/").with_header("x-jwt-payload", encoded);
        let attributes = Attributes::new(&request, &header_settings).unwrap();
        assert_eq!(attributes.request_principal().as_deref(), Some("i/s"));
        let doubled = MemoryRequest::get("/")
            .with_header("x-jwt-payload", encoded)
            .with_header("x-jwt-payload", encoded);
        let attributes = Attributes::new(&doubled, &header_settings).unwrap();
        assert_eq!(attributes.jwt_payload(), None);
        let not_json = MemoryRequest::get("/").with_header("x-jwt-payload", "bm90IGpzb24");
        assert_eq!(
            Attributes::new(&not_json, &header_settings)
                .unwrap()
                .jwt_payload(),
            None
        );
    }

    #[test]
    fn invalid_path_is_refused_and_missing_path_is_none() {
        let settings = settings();
        let nul = MemoryRequest::get("/a%00");
        assert!(matches!(
            Attributes::new(&nul, &settings),
            Err(PathRejection::NulByte)
        ));
        let connect = MemoryRequest::new().with_header(":method", "CONNECT");
        assert_eq!(
            Attributes::new(&connect, &settings).unwrap().url_path(),
            None
        );
    }
}
