//! The plugin configuration: Envoy's `envoy.extensions.filters.http.ext_authz.v3.ExtAuthz` in
//! proto3-JSON form, plus four wasmesh extensions (`decision_cache`, `fail_static`,
//! `local_lists`, `dry_run`). Envoy fields the wasm filter cannot honour are refused at their
//! JSON path with the reason; none is silently ignored.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
pub use wasmesh_sdk::config::proto::HttpStatus;
use wasmesh_sdk::config::{proto, validate_each, validate_field, ConfigError, Validate};
use wasmesh_sdk::matcher::{CidrRange, HeaderMatcher, StringMatcher};
use wasmesh_sdk::request::validate_header_name;

/// Default timeout of a check (Envoy's ext_authz default for both services).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);

/// `ExtAuthz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC `envoy.service.auth.v3.Authorization/Check` service.
    #[serde(default)]
    pub grpc_service: Option<GrpcService>,
    /// Raw HTTP authorization service.
    #[serde(default)]
    pub http_service: Option<HttpService>,
    /// Only `V3` (the default) exists.
    #[serde(default)]
    pub transport_api_version: Option<String>,
    /// Let requests through when the service fails (error, timeout, 5xx).
    #[serde(default)]
    pub failure_mode_allow: bool,
    /// With `failure_mode_allow`, mark such requests with
    /// `x-envoy-auth-failure-mode-allowed: true` upstream.
    #[serde(default)]
    pub failure_mode_allow_header_add: bool,
    /// Buffer the request body and send it with the check.
    #[serde(default)]
    pub with_request_body: Option<BufferSettings>,
    /// Status sent when the service fails and the request is not let through (default 403).
    #[serde(default)]
    pub status_on_error: Option<HttpStatus>,
    /// Send the peer certificate's identity with the check (see README: the PEM is not
    /// exposed to wasm, its identity fields are).
    #[serde(default)]
    pub include_peer_certificate: bool,
    /// Send the TLS SNI with gRPC checks (`tls_session.sni`).
    #[serde(default)]
    pub include_tls_session: bool,
    /// Stats are named `<stat_prefix>.ext_authz.<event>`.
    #[serde(default)]
    pub stat_prefix: String,
    /// Request headers sent with the check (see README for the defaults per service).
    #[serde(default)]
    pub allowed_headers: Option<ListStringMatcher>,
    /// Request headers never sent with the check.
    #[serde(default)]
    pub disallowed_headers: Option<ListStringMatcher>,
    /// gRPC: send headers as `header_map` with raw byte values instead of the `headers` map.
    #[serde(default)]
    pub encode_raw_headers: bool,
    /// Truncate the body of a denial from the service to this many bytes (0: no limit).
    #[serde(default, deserialize_with = "proto::uint32")]
    pub max_denied_response_body_bytes: u32,

    // Envoy fields the wasm filter refuses unless they hold their default value.
    #[serde(default)]
    clear_route_cache: Option<Value>,
    #[serde(default)]
    validate_mutations: Option<Value>,
    #[serde(default)]
    metadata_context_namespaces: Option<Value>,
    #[serde(default)]
    typed_metadata_context_namespaces: Option<Value>,
    #[serde(default)]
    route_metadata_context_namespaces: Option<Value>,
    #[serde(default)]
    route_typed_metadata_context_namespaces: Option<Value>,
    #[serde(default)]
    filter_enabled: Option<Value>,
    #[serde(default)]
    filter_enabled_metadata: Option<Value>,
    #[serde(default)]
    deny_at_disable: Option<Value>,
    #[serde(default)]
    bootstrap_metadata_labels_key: Option<Value>,
    #[serde(default)]
    charge_cluster_response_stats: Option<Value>,
    #[serde(default)]
    decoder_header_mutation_rules: Option<Value>,
    #[serde(default)]
    enable_dynamic_metadata_ingestion: Option<Value>,
    #[serde(default)]
    filter_metadata: Option<Value>,
    #[serde(default)]
    emit_filter_state_stats: Option<Value>,

    /// wasmesh: decision cache.
    #[serde(default)]
    pub decision_cache: Option<DecisionCache>,
    /// wasmesh: serve the last known decision when the service fails.
    #[serde(default)]
    pub fail_static: Option<FailStatic>,
    /// wasmesh: allow/deny lists evaluated before any check.
    #[serde(default)]
    pub local_lists: Option<LocalLists>,
    /// wasmesh: log and count decisions without enforcing them.
    #[serde(default)]
    pub dry_run: bool,
}

/// `config.core.v3.GrpcService` (Envoy gRPC only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcService {
    /// The cluster.
    #[serde(default)]
    pub envoy_grpc: Option<EnvoyGrpc>,
    /// Check timeout (default 200ms).
    #[serde(default, deserialize_with = "proto::optional_duration")]
    pub timeout: Option<Duration>,
    /// Metadata sent with every call.
    #[serde(default)]
    pub initial_metadata: Vec<HeaderValue>,
    #[serde(default)]
    google_grpc: Option<Value>,
    #[serde(default)]
    retry_policy: Option<Value>,
}

/// `GrpcService.EnvoyGrpc`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyGrpc {
    /// Cluster the calls go to.
    pub cluster_name: String,
    #[serde(default)]
    authority: Option<Value>,
    #[serde(default)]
    retry_policy: Option<Value>,
    #[serde(default)]
    max_receive_message_length: Option<Value>,
    #[serde(default)]
    skip_envoy_headers: Option<Value>,
}

/// `ext_authz.v3.HttpService`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpService {
    /// Where checks go.
    pub server_uri: HttpUri,
    /// Prepended to the request's `:path` in the check.
    #[serde(default)]
    pub path_prefix: String,
    /// What the check carries.
    #[serde(default)]
    pub authorization_request: Option<AuthorizationRequest>,
    /// What is taken from the service's answer.
    #[serde(default)]
    pub authorization_response: Option<AuthorizationResponse>,
    #[serde(default)]
    retry_policy: Option<Value>,
}

/// `config.core.v3.HttpUri`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpUri {
    /// Documentation of the service's URI (required by Envoy, not used for routing).
    pub uri: String,
    /// Cluster the checks go to.
    pub cluster: String,
    /// Check timeout (default 200ms).
    #[serde(default, deserialize_with = "proto::optional_duration")]
    pub timeout: Option<Duration>,
}

/// `ext_authz.v3.AuthorizationRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRequest {
    /// Deprecated in Envoy in favour of the top-level `allowed_headers` (which wins).
    #[serde(default)]
    pub allowed_headers: Option<ListStringMatcher>,
    /// Headers set on every check request (overwriting client headers of the same name).
    #[serde(default)]
    pub headers_to_add: Vec<HeaderValue>,
}

/// `ext_authz.v3.AuthorizationResponse`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationResponse {
    /// On 200: service headers set on the upstream request (overwriting).
    #[serde(default)]
    pub allowed_upstream_headers: Option<ListStringMatcher>,
    /// On 200: service headers appended to the upstream request.
    #[serde(default)]
    pub allowed_upstream_headers_to_append: Option<ListStringMatcher>,
    /// On denial: service headers sent to the client (default: all but `host`).
    #[serde(default)]
    pub allowed_client_headers: Option<ListStringMatcher>,
    /// On 200: service headers added to the response sent to the client.
    #[serde(default)]
    pub allowed_client_headers_on_success: Option<ListStringMatcher>,
    #[serde(default)]
    dynamic_metadata_from_headers: Option<Value>,
}

/// `type.matcher.v3.ListStringMatcher`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListStringMatcher {
    /// Matches when any pattern matches.
    pub patterns: Vec<StringMatcher>,
}

impl ListStringMatcher {
    /// Whether any pattern matches `value`.
    pub fn matches(&self, value: &str) -> bool {
        self.patterns.iter().any(|pattern| pattern.matches(value))
    }
}

/// `config.core.v3.HeaderValue`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    /// Header name.
    pub key: String,
    /// Header value.
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    raw_value: Option<Value>,
}

impl Validate for HeaderValue {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_header_name(&self.key)
            .map_err(|_| ConfigError::new("key", format!("invalid header name {:?}", self.key)))?;
        if self.key.starts_with(':') {
            return Err(ConfigError::new("key", "pseudo-headers cannot be added"));
        }
        if self.value.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n')) {
            return Err(ConfigError::new("value", "contains NUL, CR or LF"));
        }
        if has_substitution(&self.value) {
            return Err(ConfigError::new(
                "value",
                "Envoy command operators (%...%) are not evaluated by the wasm filter; write `%%` for a literal %",
            ));
        }
        refuse(&self.raw_value, "raw_value", "use `value`")
    }
}

impl HeaderValue {
    /// The value with `%%` unescaped.
    pub fn literal_value(&self) -> String {
        self.value.replace("%%", "%")
    }
}

/// Whether `value` contains a `%` that is not part of a `%%` escape.
fn has_substitution(value: &str) -> bool {
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '%' && chars.next() != Some('%') {
            return true;
        }
    }
    false
}

/// `ext_authz.v3.BufferSettings`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferSettings {
    /// Largest body buffered (required, > 0). Bigger bodies get 413 unless
    /// `allow_partial_message`.
    #[serde(deserialize_with = "proto::uint32")]
    pub max_request_bytes: u32,
    /// Send the first `max_request_bytes` instead of answering 413.
    #[serde(default)]
    pub allow_partial_message: bool,
    /// gRPC: send the body as `raw_body` bytes instead of the UTF-8 `body` string.
    #[serde(default)]
    pub pack_as_bytes: bool,
}

/// wasmesh extension: the decision cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionCache {
    /// Which request attributes a decision is keyed by.
    #[serde(default)]
    pub key: CacheKey,
    /// How long a decision is reused (default 30s).
    #[serde(default = "default_ttl", deserialize_with = "proto::duration")]
    pub ttl: Duration,
    /// Most decisions kept per worker, least recently used evicted first (default 10000).
    #[serde(default = "default_max_entries", deserialize_with = "proto::uint32")]
    pub max_entries: u32,
    /// A service response header giving this decision's TTL in whole seconds (`0`: do not
    /// cache). The header is consumed: it reaches neither the upstream nor the client.
    #[serde(default)]
    pub ttl_header: Option<String>,
    /// Share decisions between worker VMs through proxy-wasm shared data.
    #[serde(default)]
    pub shared: bool,
    /// Cache denials too (default true).
    #[serde(default = "default_true")]
    pub cache_denials: bool,
}

fn default_ttl() -> Duration {
    Duration::from_secs(30)
}

fn default_max_entries() -> u32 {
    10_000
}

fn default_true() -> bool {
    true
}

/// The attributes a cached decision is keyed by; a cached decision is only reused for a
/// request whose keyed attributes are all equal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheKey {
    /// `:method`.
    #[serde(default = "default_true")]
    pub method: bool,
    /// `:path` exactly as received (query included).
    #[serde(default = "default_true")]
    pub path: bool,
    /// `:authority`.
    #[serde(default = "default_true")]
    pub host: bool,
    /// Values of these request headers (all values, in order; absent is distinct from empty).
    #[serde(default = "default_key_headers")]
    pub headers: Vec<String>,
    /// The mTLS peer identity (URI SAN, else subject).
    #[serde(default)]
    pub principal: bool,
    /// The downstream IP address.
    #[serde(default)]
    pub source_address: bool,
    /// JWT claims from a header holding the verified payload.
    #[serde(default)]
    pub claims: Option<ClaimsKey>,
}

fn default_key_headers() -> Vec<String> {
    vec!["authorization".to_string()]
}

impl Default for CacheKey {
    fn default() -> Self {
        CacheKey {
            method: true,
            path: true,
            host: true,
            headers: default_key_headers(),
            principal: false,
            source_address: false,
            claims: None,
        }
    }
}

/// Claims read from a header carrying a JWT payload as base64url JSON, as Envoy's
/// `jwt_authn` writes it with `forward_payload_header` (the header must be set by a filter
/// that verified the token, never trusted from the client).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimsKey {
    /// Header with the payload.
    pub header: String,
    /// Top-level claim names.
    pub names: Vec<String>,
}

/// wasmesh extension: fail static.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailStatic {
    /// How long after a decision's TTL it may still be served when the service is down.
    #[serde(deserialize_with = "proto::duration")]
    pub grace_period: Duration,
}

/// wasmesh extension: local allow/deny lists.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalLists {
    /// Matching requests are denied (checked first).
    #[serde(default)]
    pub deny: Vec<ListRule>,
    /// Matching requests are allowed without a check.
    #[serde(default)]
    pub allow: Vec<ListRule>,
    /// Status of a local denial (default 403).
    #[serde(default = "default_forbidden", deserialize_with = "proto::uint32")]
    pub deny_status: u32,
}

fn default_forbidden() -> u32 {
    403
}

/// One local list rule: exactly one condition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListRule {
    /// Named in logs and in the denial body.
    pub name: String,
    /// Downstream address within any of these ranges.
    #[serde(default)]
    pub source_ip: Option<Vec<CidrRange>>,
    /// A request header condition.
    #[serde(default)]
    pub header: Option<HeaderMatcher>,
    /// Normalized path starts with this prefix (segment-aware: `/admin` matches `/admin` and
    /// `/admin/x`, not `/administrator`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// The mTLS peer identity matches.
    #[serde(default)]
    pub principal: Option<StringMatcher>,
}

impl Validate for ListRule {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        let set = [
            self.source_ip.is_some(),
            self.header.is_some(),
            self.path_prefix.is_some(),
            self.principal.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count();
        if set != 1 {
            return Err(ConfigError::root(
                "exactly one of `source_ip`, `header`, `path_prefix`, `principal` must be set",
            ));
        }
        if let Some(ranges) = &self.source_ip {
            if ranges.is_empty() {
                return Err(ConfigError::new("source_ip", "must not be empty"));
            }
        }
        if let Some(prefix) = &self.path_prefix {
            if !prefix.starts_with('/') {
                return Err(ConfigError::new("path_prefix", "must start with `/`"));
            }
        }
        Ok(())
    }
}

/// Refuses `value` unless it is absent or holds its proto3 default (false, 0, "", [], {}).
fn refuse(value: &Option<Value>, path: &str, reason: &str) -> Result<(), ConfigError> {
    let is_default = match value {
        None | Some(Value::Null) => true,
        Some(Value::Bool(flag)) => !flag,
        Some(Value::String(text)) => text.is_empty(),
        Some(Value::Array(items)) => items.is_empty(),
        Some(Value::Number(number)) => number.as_f64() == Some(0.0),
        Some(Value::Object(_)) => false,
    };
    if is_default {
        Ok(())
    } else {
        Err(ConfigError::new(
            path,
            format!("not supported by the wasm ext_authz filter: {reason}"),
        ))
    }
}

/// Like [`refuse`] for a field whose Envoy default is `true`: only an explicit `false` is
/// accepted.
fn refuse_unless_false(value: &Option<Value>, path: &str, reason: &str) -> Result<(), ConfigError> {
    match value {
        None | Some(Value::Bool(false)) => Ok(()),
        Some(_) => Err(ConfigError::new(
            path,
            format!(
                "not supported by the wasm ext_authz filter: {reason}; set it to false to acknowledge"
            ),
        )),
    }
}

impl Validate for ListStringMatcher {}

// Checked as part of `DecisionCache` (the paths are relative to it).
impl Validate for CacheKey {}

impl Validate for GrpcService {
    fn validate(&self) -> Result<(), ConfigError> {
        refuse(
            &self.google_grpc,
            "google_grpc",
            "proxy-wasm calls go through Envoy's own gRPC client; use `envoy_grpc`",
        )?;
        refuse(&self.retry_policy, "retry_policy", "checks are not retried")?;
        let Some(envoy) = &self.envoy_grpc else {
            return Err(ConfigError::new("envoy_grpc", "is required"));
        };
        if envoy.cluster_name.is_empty() {
            return Err(ConfigError::new(
                "envoy_grpc.cluster_name",
                "must not be empty",
            ));
        }
        refuse(
            &envoy.authority,
            "envoy_grpc.authority",
            "proxy-wasm gRPC calls use the cluster name as authority",
        )?;
        refuse(
            &envoy.retry_policy,
            "envoy_grpc.retry_policy",
            "checks are not retried",
        )?;
        refuse(
            &envoy.max_receive_message_length,
            "envoy_grpc.max_receive_message_length",
            "not settable through proxy-wasm",
        )?;
        refuse(
            &envoy.skip_envoy_headers,
            "envoy_grpc.skip_envoy_headers",
            "not settable through proxy-wasm",
        )?;
        validate_timeout(self.timeout, "timeout")?;
        validate_each("initial_metadata", &self.initial_metadata)
    }
}

fn validate_timeout(timeout: Option<Duration>, path: &str) -> Result<(), ConfigError> {
    match timeout {
        Some(timeout) if timeout < Duration::from_millis(1) => Err(ConfigError::new(
            path,
            "must be at least 1ms (proxy-wasm callouts carry whole milliseconds)",
        )),
        Some(timeout) if timeout.as_millis() > u128::from(u32::MAX) => {
            Err(ConfigError::new(path, "is too long"))
        }
        _ => Ok(()),
    }
}

impl Validate for HttpService {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.server_uri.uri.is_empty() {
            return Err(ConfigError::new("server_uri.uri", "must not be empty"));
        }
        if self.server_uri.cluster.is_empty() {
            return Err(ConfigError::new("server_uri.cluster", "must not be empty"));
        }
        validate_timeout(self.server_uri.timeout, "server_uri.timeout")?;
        if self
            .path_prefix
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == 0)
        {
            return Err(ConfigError::new(
                "path_prefix",
                "must not contain whitespace or NUL",
            ));
        }
        refuse(&self.retry_policy, "retry_policy", "checks are not retried")?;
        if let Some(request) = &self.authorization_request {
            validate_each(
                "authorization_request.headers_to_add",
                &request.headers_to_add,
            )?;
        }
        if let Some(response) = &self.authorization_response {
            refuse(
                &response.dynamic_metadata_from_headers,
                "authorization_response.dynamic_metadata_from_headers",
                "dynamic metadata cannot be written from wasm",
            )?;
        }
        Ok(())
    }
}

impl Validate for DecisionCache {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl.is_zero() {
            return Err(ConfigError::new("ttl", "must be positive"));
        }
        if self.max_entries == 0 {
            return Err(ConfigError::new("max_entries", "must be positive"));
        }
        if self.shared && self.max_entries > 100_000 {
            return Err(ConfigError::new(
                "max_entries",
                "at most 100000 with `shared` (each shared decision has a shared-data key, all created at start-up)",
            ));
        }
        if let Some(header) = &self.ttl_header {
            validate_header_name(header).map_err(|_| {
                ConfigError::new("ttl_header", format!("invalid header name {header:?}"))
            })?;
        }
        for (index, header) in self.key.headers.iter().enumerate() {
            validate_header_name(header).map_err(|_| {
                ConfigError::new(
                    format!("key.headers[{index}]"),
                    format!("invalid header name {header:?}"),
                )
            })?;
        }
        if let Some(claims) = &self.key.claims {
            validate_header_name(&claims.header).map_err(|_| {
                ConfigError::new(
                    "key.claims.header",
                    format!("invalid header name {:?}", claims.header),
                )
            })?;
            if claims.names.is_empty() {
                return Err(ConfigError::new("key.claims.names", "must not be empty"));
            }
        }
        let key = &self.key;
        if !(key.method
            || key.path
            || key.host
            || !key.headers.is_empty()
            || key.principal
            || key.source_address
            || key.claims.is_some())
        {
            return Err(ConfigError::new(
                "key",
                "keys no attribute: every request would share one decision",
            ));
        }
        Ok(())
    }
}

impl Validate for LocalLists {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_each("deny", &self.deny)?;
        validate_each("allow", &self.allow)?;
        if !(400..=599).contains(&self.deny_status) {
            return Err(ConfigError::new(
                "deny_status",
                format!("must be a 4xx or 5xx status, got {}", self.deny_status),
            ));
        }
        Ok(())
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        match (&self.grpc_service, &self.http_service) {
            (Some(grpc), None) => validate_field("grpc_service", grpc)?,
            (None, Some(http)) => validate_field("http_service", http)?,
            (Some(_), Some(_)) => {
                return Err(ConfigError::root(
                    "only one of `grpc_service` and `http_service` may be set",
                ))
            }
            (None, None) => {
                return Err(ConfigError::root(
                    "one of `grpc_service` or `http_service` is required",
                ))
            }
        }
        match self.transport_api_version.as_deref() {
            None | Some("V3") => {}
            Some(other) => {
                return Err(ConfigError::new(
                    "transport_api_version",
                    format!("only V3 exists, got {other:?}"),
                ))
            }
        }
        if let Some(body) = &self.with_request_body {
            if body.max_request_bytes == 0 {
                return Err(ConfigError::new(
                    "with_request_body.max_request_bytes",
                    "must be greater than 0",
                ));
            }
        }
        if let Some(status) = &self.status_on_error {
            if !(200..=599).contains(&status.code) {
                return Err(ConfigError::new(
                    "status_on_error.code",
                    format!("{} cannot be sent as a local reply", status.code),
                ));
            }
        }
        if let Some(cache) = &self.decision_cache {
            validate_field("decision_cache", cache)?;
        }
        if let Some(fail_static) = &self.fail_static {
            if self.decision_cache.is_none() {
                return Err(ConfigError::new(
                    "fail_static",
                    "needs `decision_cache`: the last known decisions live there",
                ));
            }
            if fail_static.grace_period.is_zero() {
                return Err(ConfigError::new(
                    "fail_static.grace_period",
                    "must be positive",
                ));
            }
        }
        if let Some(lists) = &self.local_lists {
            validate_field("local_lists", lists)?;
        }
        let unsupported: [(&Option<Value>, &str, &str); 12] = [
            (
                &self.clear_route_cache,
                "clear_route_cache",
                "the route cache is not reachable from wasm",
            ),
            (
                &self.validate_mutations,
                "validate_mutations",
                "invalid header mutations from the service are always dropped (and logged)",
            ),
            (
                &self.metadata_context_namespaces,
                "metadata_context_namespaces",
                "dynamic metadata is not readable from wasm",
            ),
            (
                &self.typed_metadata_context_namespaces,
                "typed_metadata_context_namespaces",
                "dynamic metadata is not readable from wasm",
            ),
            (
                &self.route_metadata_context_namespaces,
                "route_metadata_context_namespaces",
                "route metadata is not sent",
            ),
            (
                &self.route_typed_metadata_context_namespaces,
                "route_typed_metadata_context_namespaces",
                "route metadata is not sent",
            ),
            (
                &self.filter_enabled,
                "filter_enabled",
                "runtime fractions are not readable from wasm; use `local_lists` to bypass checks",
            ),
            (
                &self.filter_enabled_metadata,
                "filter_enabled_metadata",
                "dynamic metadata is not readable from wasm",
            ),
            (
                &self.deny_at_disable,
                "deny_at_disable",
                "the filter cannot be disabled by runtime",
            ),
            (
                &self.bootstrap_metadata_labels_key,
                "bootstrap_metadata_labels_key",
                "node metadata labels are not sent",
            ),
            (
                &self.decoder_header_mutation_rules,
                "decoder_header_mutation_rules",
                "use `allowed_upstream_headers` to bound what the service may set",
            ),
            (
                &self.filter_metadata,
                "filter_metadata",
                "dynamic metadata cannot be written from wasm",
            ),
        ];
        for (value, path, reason) in unsupported {
            refuse(value, path, reason)?;
        }
        refuse_unless_false(
            &self.charge_cluster_response_stats,
            "charge_cluster_response_stats",
            "cluster stats cannot be charged from wasm",
        )?;
        refuse_unless_false(
            &self.enable_dynamic_metadata_ingestion,
            "enable_dynamic_metadata_ingestion",
            "dynamic metadata cannot be written from wasm",
        )?;
        refuse(
            &self.emit_filter_state_stats,
            "emit_filter_state_stats",
            "filter state cannot be written from wasm",
        )?;
        Ok(())
    }
}

impl Config {
    /// The check timeout.
    pub fn timeout(&self) -> Duration {
        let configured = match (&self.grpc_service, &self.http_service) {
            (Some(grpc), _) => grpc.timeout,
            (_, Some(http)) => http.server_uri.timeout,
            _ => None,
        };
        configured.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// The status of a failure reply (default 403).
    pub fn status_on_error(&self) -> u16 {
        self.status_on_error.map_or(403, |status| status.code)
    }

    /// The header allow-list of the check: top-level `allowed_headers`, else the deprecated
    /// `http_service.authorization_request.allowed_headers`.
    pub fn allowed_headers(&self) -> Option<&ListStringMatcher> {
        self.allowed_headers.as_ref().or_else(|| {
            self.http_service
                .as_ref()
                .and_then(|http| http.authorization_request.as_ref())
                .and_then(|request| request.allowed_headers.as_ref())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_sdk::config::load;

    const HTTP: &str = r#""http_service": {"server_uri": {"uri": "http://authz", "cluster": "authz", "timeout": "0.5s"}}"#;

    fn config(extra: &str) -> Result<Config, ConfigError> {
        let json = if extra.is_empty() {
            format!("{{{HTTP}}}")
        } else {
            format!("{{{HTTP}, {extra}}}")
        };
        load::<Config>(json.as_bytes())
    }

    #[test]
    fn minimal_http_and_grpc_configs_load_with_envoy_defaults() {
        let http = config("").unwrap();
        assert_eq!(http.timeout(), Duration::from_millis(500));
        assert_eq!(http.status_on_error(), 403);
        assert!(!http.failure_mode_allow);
        let grpc =
            load::<Config>(br#"{"grpc_service": {"envoy_grpc": {"cluster_name": "authz"}}}"#)
                .unwrap();
        assert_eq!(grpc.timeout(), DEFAULT_TIMEOUT);
    }

    #[test]
    fn status_on_error_takes_names_and_numbers() {
        assert_eq!(
            config(r#""status_on_error": {"code": "ServiceUnavailable"}"#)
                .unwrap()
                .status_on_error(),
            503
        );
        assert_eq!(
            config(r#""status_on_error": {"code": 401}"#)
                .unwrap()
                .status_on_error(),
            401
        );
    }

    #[test]
    fn errors_name_the_field_and_the_reason() {
        let cases = [
            (
                r#""status_on_error": {"code": "Teapot"}"#,
                "status_on_error.code: unknown status code name \"Teapot\"",
            ),
            (
                r#""status_on_error": {"code": 100}"#,
                "status_on_error.code: 100 cannot be sent",
            ),
            (
                r#""clear_route_cache": true"#,
                "clear_route_cache: not supported by the wasm ext_authz filter: the route cache",
            ),
            (
                r#""metadata_context_namespaces": ["envoy.filters.http.jwt_authn"]"#,
                "metadata_context_namespaces: not supported",
            ),
            (
                r#""filter_enabled": {"default_value": {"numerator": 50}}"#,
                "filter_enabled: not supported",
            ),
            (
                r#""charge_cluster_response_stats": true"#,
                "charge_cluster_response_stats: not supported",
            ),
            (
                r#""with_request_body": {"max_request_bytes": 0}"#,
                "with_request_body.max_request_bytes: must be greater than 0",
            ),
            (
                r#""transport_api_version": "V2""#,
                "transport_api_version: only V3 exists",
            ),
            (
                r#""fail_static": {"grace_period": "60s"}"#,
                "fail_static: needs `decision_cache`",
            ),
            (
                r#""decision_cache": {"ttl": "0s"}"#,
                "decision_cache.ttl: must be positive",
            ),
            (
                r#""decision_cache": {"key": {"method": false, "path": false, "host": false, "headers": []}}"#,
                "decision_cache.key: keys no attribute",
            ),
            (
                r#""decision_cache": {"key": {"headers": ["bad header"]}}"#,
                "decision_cache.key.headers[0]: invalid header name",
            ),
            (
                r#""local_lists": {"deny": [{"name": "x"}]}"#,
                "local_lists.deny[0]: exactly one of",
            ),
            (
                r#""local_lists": {"allow": [{"name": "x", "path_prefix": "admin"}]}"#,
                "local_lists.allow[0].path_prefix: must start with `/`",
            ),
            (
                r#""local_lists": {"deny": [{"name": "x", "source_ip": [{"address_prefix": "10.0.0.0", "prefix_len": 40}]}]}"#,
                "local_lists.deny[0].source_ip[0]: prefix_len 40",
            ),
            (r#""dry_runn": true"#, "dry_runn: unknown field"),
        ];
        for (extra, expected) in cases {
            let error = config(extra).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{extra}: {error}");
        }
    }

    #[test]
    fn service_fields_are_checked_at_their_paths() {
        let cases = [
            (
                r#"{"grpc_service": {"google_grpc": {"target_uri": "x"}}}"#,
                "grpc_service.google_grpc: not supported",
            ),
            (
                r#"{"grpc_service": {"envoy_grpc": {"cluster_name": "a", "authority": "b"}}}"#,
                "grpc_service.envoy_grpc.authority: not supported",
            ),
            (
                r#"{"grpc_service": {"envoy_grpc": {"cluster_name": "a"}, "timeout": "100ms"}}"#,
                "grpc_service.timeout: invalid duration",
            ),
            (
                r#"{"grpc_service": {"envoy_grpc": {"cluster_name": "a"}, "initial_metadata": [{"key": "x-a", "value": "%DOWNSTREAM_REMOTE_ADDRESS%"}]}}"#,
                "grpc_service.initial_metadata[0].value: Envoy command operators",
            ),
            (
                r#"{"http_service": {"server_uri": {"uri": "x", "cluster": ""}}}"#,
                "http_service.server_uri.cluster: must not be empty",
            ),
            (
                r#"{"http_service": {"server_uri": {"uri": "x", "cluster": "a"}, "authorization_request": {"headers_to_add": [{"key": ":path", "value": "/"}]}}}"#,
                "http_service.authorization_request.headers_to_add[0].key: pseudo-headers",
            ),
            (
                r#"{"http_service": {"server_uri": {"uri": "x", "cluster": "a"}, "authorization_response": {"dynamic_metadata_from_headers": {"patterns": [{"exact": "x"}]}}}}"#,
                "http_service.authorization_response.dynamic_metadata_from_headers: not supported",
            ),
            (
                r#"{}"#,
                "one of `grpc_service` or `http_service` is required",
            ),
            (
                r#"{"grpc_service": {"envoy_grpc": {"cluster_name": "a"}}, "http_service": {"server_uri": {"uri": "x", "cluster": "a"}}}"#,
                "only one of",
            ),
        ];
        for (json, expected) in cases {
            let error = load::<Config>(json.as_bytes()).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{json}: {error}");
        }
    }

    #[test]
    fn defaults_of_refused_fields_are_accepted() {
        let loaded = config(
            r#""clear_route_cache": false, "metadata_context_namespaces": [], "charge_cluster_response_stats": false, "bootstrap_metadata_labels_key": """#,
        );
        assert!(loaded.is_ok(), "{loaded:?}");
    }

    #[test]
    fn literal_percent_is_escaped_with_two() {
        let value: HeaderValue = load(br#"{"key": "x-rate", "value": "100%% sure"}"#).unwrap();
        assert_eq!(value.literal_value(), "100% sure");
        assert!(has_substitution("%REQ(x)%"));
        assert!(!has_substitution("a%%b"));
    }
}
