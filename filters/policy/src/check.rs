//! The check itself: building the call to the authorization service (raw HTTP, or gRPC
//! `envoy.service.auth.v3.Authorization/Check`) from a request, and reading its answer into a
//! [`Verdict`], with Envoy's ext_authz semantics.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use wasmesh_sdk::callout::{GrpcCallout, GrpcCalloutResponse, HttpCallout, HttpCalloutResponse};
use wasmesh_sdk::request::{joined_value, Header, Request};

use crate::config::{Config, HeaderValue, ListStringMatcher};
use crate::proto;
use crate::verdict::{Allow, Deny, HeaderPair, Verdict};

/// The gRPC service of a check.
pub const AUTHORIZATION_SERVICE: &str = "envoy.service.auth.v3.Authorization";
/// The gRPC method of a check.
pub const CHECK_METHOD: &str = "Check";
/// Header of the check telling whether the body sent is truncated (as Envoy).
pub const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";
/// Header an HTTP service lists request headers to remove in (as Envoy).
pub const HEADERS_TO_REMOVE_HEADER: &str = "x-envoy-auth-headers-to-remove";
/// Header carrying the peer certificate's identity with `include_peer_certificate`.
pub const CLIENT_CERT_HEADER: &str = "x-forwarded-client-cert";

/// The body sent with a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyPart {
    /// The bytes (at most `max_request_bytes`).
    pub bytes: Vec<u8>,
    /// Whether the client sent more than these bytes.
    pub partial: bool,
}

/// Why a check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The service did not answer within the timeout.
    Timeout,
    /// The service could not be reached, reset the call, answered 5xx or garbage.
    Unavailable(String),
}

/// What the service answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A decision; `ttl` is the per-decision TTL from `ttl_header`, if the service gave one
    /// (`Some(ZERO)`: do not cache).
    Decided {
        /// The decision.
        verdict: Verdict,
        /// Per-decision TTL.
        ttl: Option<Duration>,
    },
    /// No decision.
    Failed(Failure),
}

/// Settings of the HTTP service.
#[derive(Debug, Clone)]
struct HttpSettings {
    cluster: String,
    path_prefix: String,
    headers_to_add: Vec<HeaderPair>,
    upstream: Option<ListStringMatcher>,
    upstream_to_append: Option<ListStringMatcher>,
    client: Option<ListStringMatcher>,
    client_on_success: Option<ListStringMatcher>,
}

/// Settings of the gRPC service.
#[derive(Debug, Clone)]
struct GrpcSettings {
    cluster: String,
    initial_metadata: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone)]
enum Transport {
    Http(HttpSettings),
    Grpc(GrpcSettings),
}

/// The authorization service, as configured.
#[derive(Debug, Clone)]
pub struct Service {
    transport: Transport,
    timeout: Duration,
    allowed_headers: Option<ListStringMatcher>,
    disallowed_headers: Option<ListStringMatcher>,
    include_peer_certificate: bool,
    include_tls_session: bool,
    encode_raw_headers: bool,
    pack_as_bytes: bool,
    ttl_header: Option<String>,
    max_denied_body: usize,
}

/// The headers Envoy always sends to an HTTP service.
const HTTP_DEFAULT_HEADERS: [&str; 4] = ["authorization", ":method", ":path", ":authority"];

fn pairs(values: &[HeaderValue]) -> Vec<HeaderPair> {
    values
        .iter()
        .map(|value| (value.key.to_ascii_lowercase(), value.literal_value()))
        .collect()
}

impl Service {
    /// The service of a validated configuration.
    pub fn new(config: &Config) -> Self {
        let transport = match (&config.http_service, &config.grpc_service) {
            (Some(http), _) => {
                let request = http.authorization_request.clone().unwrap_or_default();
                let response = http.authorization_response.clone().unwrap_or_default();
                Transport::Http(HttpSettings {
                    cluster: http.server_uri.cluster.clone(),
                    path_prefix: http.path_prefix.clone(),
                    headers_to_add: pairs(&request.headers_to_add),
                    upstream: response.allowed_upstream_headers,
                    upstream_to_append: response.allowed_upstream_headers_to_append,
                    client: response.allowed_client_headers,
                    client_on_success: response.allowed_client_headers_on_success,
                })
            }
            (None, grpc) => Transport::Grpc(GrpcSettings {
                cluster: grpc
                    .as_ref()
                    .and_then(|grpc| grpc.envoy_grpc.as_ref())
                    .map(|envoy| envoy.cluster_name.clone())
                    .unwrap_or_default(),
                initial_metadata: grpc
                    .as_ref()
                    .map(|grpc| {
                        pairs(&grpc.initial_metadata)
                            .into_iter()
                            .map(|(name, value)| (name, value.into_bytes()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
        };
        Service {
            transport,
            timeout: config.timeout(),
            allowed_headers: config.allowed_headers().cloned(),
            disallowed_headers: config.disallowed_headers.clone(),
            include_peer_certificate: config.include_peer_certificate,
            include_tls_session: config.include_tls_session,
            encode_raw_headers: config.encode_raw_headers,
            pack_as_bytes: config
                .with_request_body
                .as_ref()
                .is_some_and(|body| body.pack_as_bytes),
            ttl_header: config
                .decision_cache
                .as_ref()
                .and_then(|cache| cache.ttl_header.as_ref())
                .map(|name| name.to_ascii_lowercase()),
            max_denied_body: usize::try_from(config.max_denied_response_body_bytes)
                .unwrap_or(usize::MAX),
        }
    }

    /// The check timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether checks go over gRPC.
    pub fn is_grpc(&self) -> bool {
        matches!(self.transport, Transport::Grpc(_))
    }

    /// Whether a request header is sent with the check.
    fn sends_header(&self, name: &str) -> bool {
        if self
            .disallowed_headers
            .as_ref()
            .is_some_and(|list| list.matches(name))
        {
            return false;
        }
        let http_default = !self.is_grpc() && HTTP_DEFAULT_HEADERS.contains(&name);
        match &self.allowed_headers {
            Some(list) => http_default || list.matches(name),
            None => self.is_grpc() || http_default,
        }
    }

    /// The request headers sent with the check, each name once with its values joined by
    /// `,` (as Envoy builds the `CheckRequest`), plus the filter's own check headers.
    fn check_headers(&self, request: &dyn Request, body: Option<&BodyPart>) -> Vec<Header> {
        let mut headers: Vec<Header> = Vec::new();
        for (name, _) in request.request_headers() {
            if name == CLIENT_CERT_HEADER && self.include_peer_certificate {
                // Replaced by the proxy's own view of the certificate below.
                continue;
            }
            if headers.iter().any(|(seen, _)| seen == name) || !self.sends_header(name) {
                continue;
            }
            if let Some(value) = joined_value(request.request_headers(), name) {
                headers.push((name.clone(), value.into_owned()));
            }
        }
        if let Some(body) = body {
            headers.push((PARTIAL_BODY_HEADER.to_string(), body.partial.to_string()));
        }
        if self.include_peer_certificate {
            if let Some(identity) = client_cert(request) {
                headers.push((CLIENT_CERT_HEADER.to_string(), identity));
            }
        }
        headers
    }

    /// The call for `request`: HTTP or gRPC.
    pub fn callout(
        &self,
        request: &dyn Request,
        body: Option<&BodyPart>,
        now: SystemTime,
    ) -> Callout {
        match &self.transport {
            Transport::Http(http) => Callout::Http(self.http_callout(http, request, body)),
            Transport::Grpc(grpc) => Callout::Grpc(self.grpc_callout(grpc, request, body, now)),
        }
    }

    fn http_callout(
        &self,
        http: &HttpSettings,
        request: &dyn Request,
        body: Option<&BodyPart>,
    ) -> HttpCallout {
        let mut headers: Vec<Header> = Vec::new();
        let body_bytes = body.map(|body| body.bytes.clone()).unwrap_or_default();
        headers.push(("content-length".to_string(), body_bytes.len().to_string()));
        for (name, value) in self.check_headers(request, body) {
            match name.as_str() {
                "content-length" => {}
                ":path" => headers.push((name, format!("{}{value}", http.path_prefix))),
                _ => headers.push((name, value)),
            }
        }
        // Envoy's async client needs these; a request without them (CONNECT) still gets a
        // well-formed check.
        if !headers.iter().any(|(name, _)| name == ":path") {
            let path = if http.path_prefix.is_empty() {
                "/".to_string()
            } else {
                http.path_prefix.clone()
            };
            headers.push((":path".to_string(), path));
        }
        if !headers.iter().any(|(name, _)| name == ":method") {
            headers.push((":method".to_string(), "GET".to_string()));
        }
        if !headers.iter().any(|(name, _)| name == ":authority") {
            headers.push((":authority".to_string(), http.cluster.clone()));
        }
        // headers_to_add overwrite client headers of the same name.
        for (name, value) in &http.headers_to_add {
            headers.retain(|(existing, _)| existing != name);
            headers.push((name.clone(), value.clone()));
        }
        HttpCallout {
            cluster: http.cluster.clone(),
            headers,
            body: body_bytes,
            trailers: Vec::new(),
            timeout: self.timeout,
        }
    }

    fn grpc_callout(
        &self,
        grpc: &GrpcSettings,
        request: &dyn Request,
        body: Option<&BodyPart>,
        now: SystemTime,
    ) -> GrpcCallout {
        let message = self.check_request(request, body, now).encode_to_vec();
        GrpcCallout {
            cluster: grpc.cluster.clone(),
            service: AUTHORIZATION_SERVICE.to_string(),
            method: CHECK_METHOD.to_string(),
            initial_metadata: grpc.initial_metadata.clone(),
            message,
            timeout: self.timeout,
        }
    }

    /// The `CheckRequest` of `request`.
    pub fn check_request(
        &self,
        request: &dyn Request,
        body: Option<&BodyPart>,
        now: SystemTime,
    ) -> proto::CheckRequest {
        let headers = self.check_headers(request, body);
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let (header_map, headers) = if self.encode_raw_headers {
            let map = proto::HeaderMap {
                headers: headers
                    .into_iter()
                    .map(|(key, value)| proto::HeaderValue {
                        key,
                        value: String::new(),
                        raw_value: value.into_bytes(),
                    })
                    .collect(),
            };
            (Some(map), Default::default())
        } else {
            (None, headers.into_iter().collect())
        };
        let body_size = body.map(|body| body.bytes.len());
        let size = request
            .header("content-length")
            .and_then(|value| value.trim().parse::<i64>().ok())
            .or_else(|| body_size.and_then(|size| i64::try_from(size).ok()))
            .unwrap_or(-1);
        let (text_body, raw_body) = match body {
            Some(body) if self.pack_as_bytes => (String::new(), body.bytes.clone()),
            Some(body) => (
                String::from_utf8_lossy(&body.bytes).into_owned(),
                Vec::new(),
            ),
            None => (String::new(), Vec::new()),
        };
        let http = proto::HttpRequest {
            id: request
                .header("x-request-id")
                .map(|value| value.into_owned())
                .or_else(|| request.property_string(&["request", "id"]))
                .unwrap_or_default(),
            method: request.method().unwrap_or_default().to_string(),
            headers,
            path: request.path().unwrap_or_default().to_string(),
            host: request.authority().unwrap_or_default().to_string(),
            scheme: request.scheme().unwrap_or_default().to_string(),
            query: String::new(),
            fragment: String::new(),
            size,
            protocol: request
                .property_string(&["request", "protocol"])
                .unwrap_or_default(),
            body: text_body,
            raw_body,
            header_map,
        };
        let source = proto::Peer {
            address: request.source_address().map(address),
            principal: if request.mtls() {
                request.peer_identity().unwrap_or_default()
            } else {
                String::new()
            },
            ..proto::Peer::default()
        };
        let destination = proto::Peer {
            address: request.destination_address().map(address),
            principal: request
                .property_string(&["connection", "uri_san_local_certificate"])
                .or_else(|| request.property_string(&["connection", "subject_local_certificate"]))
                .unwrap_or_default(),
            ..proto::Peer::default()
        };
        let tls_session = self
            .include_tls_session
            .then(|| request.property_string(&["connection", "requested_server_name"]))
            .flatten()
            .map(|sni| proto::TlsSession { sni });
        proto::CheckRequest {
            attributes: Some(proto::AttributeContext {
                source: Some(source),
                destination: Some(destination),
                request: Some(proto::Request {
                    time: Some(proto::Timestamp {
                        seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
                        nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0),
                    }),
                    http: Some(http),
                }),
                context_extensions: Default::default(),
                tls_session,
            }),
        }
    }

    /// Reads the answer of an HTTP service (`timed_out`: the call's deadline has passed).
    pub fn http_answer(&self, response: &HttpCalloutResponse, timed_out: bool) -> Answer {
        let Some(status) = response.status() else {
            return Answer::Failed(Failure::Unavailable(
                "the authorization service reset the call or could not be reached".into(),
            ));
        };
        // Envoy answers an expired call with its own 504 `upstream request timeout`.
        if status == 504 && (timed_out || response.body == b"upstream request timeout") {
            return Answer::Failed(Failure::Timeout);
        }
        if (500..600).contains(&status) {
            return Answer::Failed(Failure::Unavailable(format!(
                "the authorization service answered {status}"
            )));
        }
        let Transport::Http(http) = &self.transport else {
            return Answer::Failed(Failure::Unavailable("not an HTTP service".into()));
        };
        let (ttl, headers) = self.take_ttl(response.headers.clone());
        let matching = |list: &Option<ListStringMatcher>| -> Vec<HeaderPair> {
            list.as_ref()
                .map(|list| {
                    headers
                        .iter()
                        .filter(|(name, _)| !name.starts_with(':') && list.matches(name))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
        if status == 200 {
            let upstream_remove = headers
                .iter()
                .filter(|(name, _)| name == HEADERS_TO_REMOVE_HEADER)
                .flat_map(|(_, value)| value.split(','))
                .map(|name| name.trim().to_ascii_lowercase())
                .filter(|name| !name.is_empty())
                .collect();
            let allow = Allow {
                upstream_set: matching(&http.upstream)
                    .into_iter()
                    .filter(|(name, _)| name != HEADERS_TO_REMOVE_HEADER)
                    .collect(),
                upstream_add: matching(&http.upstream_to_append),
                upstream_remove,
                response_add: matching(&http.client_on_success),
                ..Allow::default()
            };
            return Answer::Decided {
                verdict: Verdict::Allow(allow),
                ttl,
            };
        }
        let client_headers = match &http.client {
            // Envoy's default: every header but `host`.
            None => headers
                .iter()
                .filter(|(name, _)| name != "host" && name != ":authority")
                .cloned()
                .collect(),
            Some(list) => headers
                .iter()
                .filter(|(name, _)| {
                    list.matches(name)
                        || matches!(
                            name.as_str(),
                            ":status" | "content-length" | "www-authenticate" | "location"
                        )
                })
                .cloned()
                .collect(),
        };
        Answer::Decided {
            verdict: Verdict::Deny(Deny {
                status,
                headers: client_headers,
                body: self.truncate(&response.body),
            }),
            ttl,
        }
    }

    /// Reads the answer of a gRPC service.
    pub fn grpc_answer(&self, response: &GrpcCalloutResponse, timed_out: bool) -> Answer {
        if response.status != 0 {
            // 4 is DEADLINE_EXCEEDED; Envoy reports its own deadline as 14 UNAVAILABLE.
            if timed_out || response.status == 4 {
                return Answer::Failed(Failure::Timeout);
            }
            return Answer::Failed(Failure::Unavailable(format!(
                "the Check call failed with gRPC status {}{}",
                response.status,
                response
                    .message
                    .as_deref()
                    .map(|message| format!(": {message}"))
                    .unwrap_or_default()
            )));
        }
        let check = match proto::CheckResponse::decode(response.body.as_slice()) {
            Ok(check) => check,
            Err(error) => {
                return Answer::Failed(Failure::Unavailable(format!(
                    "undecodable CheckResponse: {error}"
                )))
            }
        };
        let allowed = check.status.as_ref().is_none_or(|status| status.code == 0);
        let mut ttl = None;
        let mut take =
            |options: &[proto::HeaderValueOption]| -> Vec<(HeaderPair, Option<bool>, i32)> {
                options
                    .iter()
                    .filter_map(|option| {
                        let header = option.header.as_ref()?;
                        let value = if header.raw_value.is_empty() {
                            header.value.clone()
                        } else {
                            String::from_utf8_lossy(&header.raw_value).into_owned()
                        };
                        let name = header.key.to_ascii_lowercase();
                        if self.ttl_header.as_deref() == Some(name.as_str()) {
                            ttl = parse_ttl(&value).or(ttl);
                            return None;
                        }
                        Some((
                            (name, value),
                            option.append.map(|append| append.value),
                            option.append_action,
                        ))
                    })
                    .collect()
            };
        if allowed {
            let ok = check.ok_response.unwrap_or_default();
            let mut allow = Allow::default();
            for (pair, append, _) in take(&ok.headers) {
                if append == Some(true) {
                    allow.upstream_append.push(pair);
                } else {
                    allow.upstream_set.push(pair);
                }
            }
            for (pair, append, action) in take(&ok.response_headers_to_add) {
                match (append, action) {
                    (Some(true), _) | (None, 0) => allow.response_add.push(pair),
                    (Some(false), _) | (None, 2) => allow.response_set.push(pair),
                    (None, 1) => allow.response_add_if_absent.push(pair),
                    (None, _) => allow.response_overwrite_if_exists.push(pair),
                }
            }
            allow.upstream_remove = ok
                .headers_to_remove
                .iter()
                .map(|name| name.to_ascii_lowercase())
                .collect();
            return Answer::Decided {
                verdict: Verdict::Allow(allow),
                ttl,
            };
        }
        let denied = check.denied_response.unwrap_or_default();
        let status = denied
            .status
            .as_ref()
            .and_then(|status| u16::try_from(status.code).ok())
            .filter(|code| *code > 0)
            .unwrap_or(403);
        let headers = take(&denied.headers)
            .into_iter()
            .map(|(pair, _, _)| pair)
            .collect();
        Answer::Decided {
            verdict: Verdict::Deny(Deny {
                status,
                headers,
                body: self.truncate(denied.body.as_bytes()),
            }),
            ttl,
        }
    }

    fn truncate(&self, body: &[u8]) -> Vec<u8> {
        if self.max_denied_body == 0 {
            body.to_vec()
        } else {
            body.get(..self.max_denied_body.min(body.len()))
                .unwrap_or_default()
                .to_vec()
        }
    }

    /// Removes the TTL header from `headers`, returning its value.
    fn take_ttl(&self, mut headers: Vec<Header>) -> (Option<Duration>, Vec<Header>) {
        let Some(name) = &self.ttl_header else {
            return (None, headers);
        };
        let ttl = joined_value(&headers, name).and_then(|value| parse_ttl(&value));
        headers.retain(|(key, _)| !key.eq_ignore_ascii_case(name));
        (ttl, headers)
    }
}

/// A TTL in whole seconds (`"30"`); anything else is ignored.
fn parse_ttl(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn address(address: std::net::SocketAddr) -> proto::Address {
    proto::Address {
        socket_address: Some(proto::SocketAddress {
            address: address.ip().to_string(),
            port_value: u32::from(address.port()),
        }),
    }
}

/// The peer certificate's identity in `x-forwarded-client-cert` form, from what Envoy
/// exposes to wasm (the PEM itself is not exposed). `None` without a client certificate.
fn client_cert(request: &dyn Request) -> Option<String> {
    if !request.mtls() {
        return None;
    }
    let property = |name: &str| {
        request
            .property_string(&["connection", name])
            .filter(|value| !value.is_empty())
    };
    let mut parts = Vec::new();
    if let Some(hash) = property("sha256_peer_certificate_digest") {
        parts.push(format!("Hash={hash}"));
    }
    if let Some(subject) = property("subject_peer_certificate") {
        parts.push(format!("Subject=\"{}\"", subject.replace('"', "\\\"")));
    }
    if let Some(uri) = property("uri_san_peer_certificate") {
        parts.push(format!("URI={uri}"));
    }
    if let Some(dns) = property("dns_san_peer_certificate") {
        parts.push(format!("DNS={dns}"));
    }
    (!parts.is_empty()).then(|| parts.join(";"))
}

/// A check to dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callout {
    /// To an HTTP service.
    Http(HttpCallout),
    /// To a gRPC service.
    Grpc(GrpcCallout),
}
