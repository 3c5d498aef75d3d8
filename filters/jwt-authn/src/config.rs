//! The configuration: Envoy's `envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication` in
//! proto3 JSON, field for field. Fields this filter cannot honour inside proxy-wasm are refused
//! with an error at their JSON path, never ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use wasmesh_sdk::config::{proto, ConfigError, Validate};
use wasmesh_sdk::matcher::{HeaderMatcher, RegexMatcher, StringMatcher};
use wasmesh_sdk::request::validate_header_name;

/// The `@type` of Envoy's filter config, accepted so a `typed_config` block can be pasted as is.
pub const TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";

/// `JwtAuthentication`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthentication {
    /// The `@type` of a pasted `typed_config` (must be [`TYPE_URL`] if present).
    #[serde(rename = "@type", default)]
    pub type_url: Option<String>,
    /// Providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, JwtProvider>,
    /// Route rules; the first match decides the requirement.
    #[serde(default)]
    pub rules: Vec<RequirementRule>,
    /// Refused: filter state is not reachable from proxy-wasm.
    #[serde(default)]
    pub filter_state_rules: Option<Value>,
    /// Let CORS preflight requests through without a token.
    #[serde(default)]
    pub bypass_cors_preflight: bool,
    /// Named requirements for `requirement_name`.
    #[serde(default)]
    pub requirement_map: BTreeMap<String, JwtRequirement>,
    /// Reply with the status code only (no body, no `WWW-Authenticate`).
    #[serde(default)]
    pub strip_failure_response: bool,
    /// Prepended to stat names.
    #[serde(default)]
    pub stat_prefix: String,
    /// wasmesh extension (not an Envoy field): a request header set to `iss/sub` of the
    /// verified token, the request principal later filters (RBAC) can match on. Removed from
    /// every incoming request, so it can never be spoofed.
    #[serde(default)]
    pub principal_header: String,
}

/// `JwtProvider`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProvider {
    /// Required `iss` (any issuer when empty).
    #[serde(default)]
    pub issuer: String,
    /// Allowed audiences (any when empty).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Allowed subjects.
    #[serde(default)]
    pub subjects: Option<StringMatcher>,
    /// Tokens must carry `exp`.
    #[serde(default)]
    pub require_expiration: bool,
    /// Largest remaining lifetime (`exp - now`) accepted; implies `require_expiration`.
    #[serde(default, deserialize_with = "optional_duration")]
    pub max_lifetime: Option<Duration>,
    /// Keys fetched over HTTP.
    #[serde(default)]
    pub remote_jwks: Option<RemoteJwks>,
    /// Keys in the configuration.
    #[serde(default)]
    pub local_jwks: Option<DataSource>,
    /// Keep the token in the request after verification.
    #[serde(default)]
    pub forward: bool,
    /// Header locations.
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameter locations.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Cookie locations.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// Header receiving the payload (base64url).
    #[serde(default)]
    pub forward_payload_header: String,
    /// Pad the forwarded payload.
    #[serde(default)]
    pub pad_forward_payload_header: bool,
    /// Refused: dynamic metadata is not writable from proxy-wasm.
    #[serde(default)]
    pub payload_in_metadata: String,
    /// Refused with `payload_in_metadata`.
    #[serde(default)]
    pub normalize_payload_in_metadata: Option<Value>,
    /// Refused: dynamic metadata is not writable from proxy-wasm.
    #[serde(default)]
    pub header_in_metadata: String,
    /// Refused: dynamic metadata is not writable from proxy-wasm.
    #[serde(default)]
    pub failed_status_in_metadata: String,
    /// Clock skew for `exp`/`nbf` (0 means the default, 60).
    #[serde(default, deserialize_with = "proto::uint32")]
    pub clock_skew_seconds: u32,
    /// Cache of verified tokens.
    #[serde(default)]
    pub jwt_cache_config: Option<JwtCacheConfig>,
    /// Claims copied to request headers.
    #[serde(default)]
    pub claim_to_headers: Vec<JwtClaimToHeader>,
    /// Refused when true: proxy-wasm cannot clear the route cache.
    #[serde(default)]
    pub clear_route_cache: bool,
}

/// `JwtHeader`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtHeader {
    /// Header name.
    pub name: String,
    /// Text before the token (`"Bearer "`).
    #[serde(default)]
    pub value_prefix: String,
}

/// `JwtClaimToHeader`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtClaimToHeader {
    /// Header to add.
    pub header_name: String,
    /// Claim, dotted for nested claims.
    pub claim_name: String,
}

/// `JwtCacheConfig`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtCacheConfig {
    /// Entries (0 means the default, 100).
    #[serde(default, deserialize_with = "proto::uint32")]
    pub jwt_cache_size: u32,
    /// Larger tokens are not cached (0 means the default, 4096).
    #[serde(default, deserialize_with = "proto::uint32")]
    pub jwt_max_token_size: u32,
}

/// `RemoteJwks`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwks {
    /// Where to fetch.
    pub http_uri: HttpUri,
    /// How long fetched keys are used (default 10 minutes).
    #[serde(default, deserialize_with = "optional_duration")]
    pub cache_duration: Option<Duration>,
    /// Fetch in the background (at start and on expiry) instead of on demand.
    #[serde(default)]
    pub async_fetch: Option<JwksAsyncFetch>,
    /// Retries of failed fetches.
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
}

/// `config.core.v3.HttpUri`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpUri {
    /// Full URI (`https://host/path`): its authority and path make the request.
    pub uri: String,
    /// Cluster the callout goes to.
    pub cluster: String,
    /// Callout timeout.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

/// `JwksAsyncFetch`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksAsyncFetch {
    /// Accepted; a wasm filter cannot hold the listener back either way.
    #[serde(default)]
    pub fast_listener: bool,
    /// Wait after a failed background fetch (default 1 s).
    #[serde(default, deserialize_with = "optional_duration")]
    pub failed_refetch_duration: Option<Duration>,
}

/// `config.core.v3.RetryPolicy`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Backoff between attempts.
    #[serde(default)]
    pub retry_back_off: Option<BackoffStrategy>,
    /// Retries (default 1).
    #[serde(default, deserialize_with = "proto::optional_uint32")]
    pub num_retries: Option<u32>,
    /// Conditions (default `5xx,gateway-error,connect-failure,reset`).
    #[serde(default)]
    pub retry_on: String,
    /// Refused.
    #[serde(default)]
    pub retry_priority: Option<Value>,
    /// Refused.
    #[serde(default)]
    pub retry_host_predicate: Option<Value>,
    /// Refused when non-zero.
    #[serde(default, deserialize_with = "proto::int64")]
    pub host_selection_retry_max_attempts: i64,
}

/// `config.core.v3.BackoffStrategy`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffStrategy {
    /// First delay.
    #[serde(deserialize_with = "duration")]
    pub base_interval: Duration,
    /// Largest delay (default 10 × base).
    #[serde(default, deserialize_with = "optional_duration")]
    pub max_interval: Option<Duration>,
}

/// `config.core.v3.DataSource`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// Inline text.
    #[serde(default)]
    pub inline_string: Option<String>,
    /// Inline bytes (base64, as proto3 JSON writes `bytes`).
    #[serde(default)]
    pub inline_bytes: Option<String>,
    /// Refused: a wasm module has no filesystem.
    #[serde(default)]
    pub filename: Option<String>,
    /// Refused: a wasm module has no environment of the proxy.
    #[serde(default)]
    pub environment_variable: Option<String>,
    /// Refused.
    #[serde(default)]
    pub watched_directory: Option<Value>,
}

/// `RequirementRule`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequirementRule {
    /// Route match.
    #[serde(rename = "match")]
    pub route_match: RouteMatch,
    /// The requirement (no verification when neither this nor `requirement_name` is set).
    #[serde(default)]
    pub requires: Option<JwtRequirement>,
    /// A requirement of `requirement_map`.
    #[serde(default)]
    pub requirement_name: Option<String>,
}

/// `JwtRequirement` (an empty object requires nothing).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtRequirement {
    /// A provider.
    #[serde(default)]
    pub provider_name: Option<String>,
    /// A provider with overriding audiences.
    #[serde(default)]
    pub provider_and_audiences: Option<ProviderWithAudiences>,
    /// Any of these.
    #[serde(default)]
    pub requires_any: Option<RequirementList>,
    /// All of these.
    #[serde(default)]
    pub requires_all: Option<RequirementList>,
    /// Verify tokens of any provider but let everything through.
    #[serde(default)]
    pub allow_missing_or_failed: Option<Empty>,
    /// Verify tokens of any provider; allow requests without one.
    #[serde(default)]
    pub allow_missing: Option<Empty>,
}

/// `google.protobuf.Empty`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `ProviderWithAudiences`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderWithAudiences {
    /// Provider.
    pub provider_name: String,
    /// Audiences replacing the provider's.
    #[serde(default)]
    pub audiences: Vec<String>,
}

/// `JwtRequirementOrList` / `JwtRequirementAndList`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequirementList {
    /// At least two requirements.
    pub requirements: Vec<JwtRequirement>,
}

/// `config.route.v3.RouteMatch` (the parts a filter can evaluate).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Path prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Exact path.
    #[serde(default)]
    pub path: Option<String>,
    /// Path regex (whole path).
    #[serde(default)]
    pub safe_regex: Option<RegexMatcher>,
    /// Prefix on a segment boundary.
    #[serde(default)]
    pub path_separated_prefix: Option<String>,
    /// Case-sensitive path matching (default true).
    #[serde(default)]
    pub case_sensitive: Option<bool>,
    /// Headers that must all match.
    #[serde(default)]
    pub headers: Vec<HeaderMatcher>,
    /// Query parameters that must all match.
    #[serde(default)]
    pub query_parameters: Vec<QueryParameterMatcher>,
    /// Refused.
    #[serde(default)]
    pub grpc: Option<Value>,
    /// Refused.
    #[serde(default)]
    pub runtime_fraction: Option<Value>,
    /// Refused.
    #[serde(default)]
    pub tls_context: Option<Value>,
    /// Refused.
    #[serde(default)]
    pub dynamic_metadata: Option<Value>,
    /// Refused.
    #[serde(default)]
    pub filter_state: Option<Value>,
    /// Refused.
    #[serde(default)]
    pub connect_matcher: Option<Value>,
    /// Refused.
    #[serde(default)]
    pub path_match_policy: Option<Value>,
}

/// `config.route.v3.QueryParameterMatcher`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParameterMatcher {
    /// Parameter name.
    pub name: String,
    /// Value matcher.
    #[serde(default)]
    pub string_match: Option<StringMatcher>,
    /// Presence.
    #[serde(default)]
    pub present_match: Option<bool>,
}

/// A `google.protobuf.Duration` written as proto3 JSON (`"1.5s"`) or as the `{seconds, nanos}`
/// object Envoy's YAML examples use.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;
    impl<'de> Visitor<'de> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(r#"a duration such as "1.5s" or {"seconds": 1, "nanos": 500000000}"#)
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            proto::parse_duration(text).map_err(E::custom)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Duration, A::Error> {
            let (mut seconds, mut nanos) = (0u64, 0u32);
            while let Some(key) = map.next_key::<String>()? {
                match key.as_str() {
                    "seconds" => {
                        let value: Value = map.next_value()?;
                        seconds = match &value {
                            Value::Number(number) => number.as_u64(),
                            Value::String(text) => text.parse().ok(),
                            _ => None,
                        }
                        .ok_or_else(|| {
                            de::Error::custom("`seconds` must be a non-negative integer")
                        })?;
                    }
                    "nanos" => {
                        nanos = map.next_value()?;
                        if nanos >= 1_000_000_000 {
                            return Err(de::Error::custom("`nanos` must be below 1e9"));
                        }
                    }
                    other => return Err(de::Error::unknown_field(other, &["seconds", "nanos"])),
                }
            }
            if seconds > proto::MAX_DURATION_SECONDS {
                return Err(de::Error::custom("duration exceeds the protobuf maximum"));
            }
            Ok(Duration::new(seconds, nanos))
        }
    }
    deserializer.deserialize_any(DurationVisitor)
}

fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

fn refuse(path: &str, why: &str) -> ConfigError {
    ConfigError::new(
        path,
        format!("not supported by the wasm jwt_authn filter: {why}"),
    )
}

fn check_header_name(path: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.starts_with(':') {
        return Err(ConfigError::new(
            path,
            "must be a non-empty, non-pseudo header name",
        ));
    }
    validate_header_name(name).map_err(|error| ConfigError::new(path, error.to_string()))
}

impl Validate for JwtAuthentication {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(type_url) = &self.type_url {
            if type_url != TYPE_URL {
                return Err(ConfigError::new("@type", format!("must be {TYPE_URL}")));
            }
        }
        if self.filter_state_rules.is_some() {
            return Err(refuse(
                "filter_state_rules",
                "filter state set by other filters is not readable from proxy-wasm",
            ));
        }
        for (name, provider) in &self.providers {
            provider
                .validate()
                .map_err(|error| error.within(&format!("providers.{name}")))?;
        }
        for (name, requirement) in &self.requirement_map {
            self.validate_requirement(requirement)
                .map_err(|error| error.within(&format!("requirement_map.{name}")))?;
        }
        for (index, rule) in self.rules.iter().enumerate() {
            self.validate_rule(rule)
                .map_err(|error| error.within(&format!("rules[{index}]")))?;
        }
        if !self.principal_header.is_empty() {
            check_header_name("principal_header", &self.principal_header)?;
        }
        Ok(())
    }
}

impl JwtAuthentication {
    fn validate_rule(&self, rule: &RequirementRule) -> Result<(), ConfigError> {
        rule.route_match
            .validate()
            .map_err(|error| error.within("match"))?;
        match (&rule.requires, &rule.requirement_name) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                "requirement_name",
                "only one of `requires` and `requirement_name` may be set",
            )),
            (Some(requirement), None) => self
                .validate_requirement(requirement)
                .map_err(|error| error.within("requires")),
            (None, Some(name)) if !self.requirement_map.contains_key(name) => {
                Err(ConfigError::new(
                    "requirement_name",
                    format!("{name:?} is not in `requirement_map`"),
                ))
            }
            _ => Ok(()),
        }
    }

    fn validate_requirement(&self, requirement: &JwtRequirement) -> Result<(), ConfigError> {
        let set: Vec<&str> = [
            ("provider_name", requirement.provider_name.is_some()),
            (
                "provider_and_audiences",
                requirement.provider_and_audiences.is_some(),
            ),
            ("requires_any", requirement.requires_any.is_some()),
            ("requires_all", requirement.requires_all.is_some()),
            (
                "allow_missing_or_failed",
                requirement.allow_missing_or_failed.is_some(),
            ),
            ("allow_missing", requirement.allow_missing.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
        .collect();
        if set.len() > 1 {
            return Err(ConfigError::root(format!(
                "at most one requirement may be set, found {}",
                set.join(", ")
            )));
        }
        let check_provider = |path: &str, name: &str| {
            if self.providers.contains_key(name) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    path,
                    format!("Required provider ['{name}'] is not configured."),
                ))
            }
        };
        if let Some(name) = &requirement.provider_name {
            check_provider("provider_name", name)?;
        }
        if let Some(with_audiences) = &requirement.provider_and_audiences {
            check_provider(
                "provider_and_audiences.provider_name",
                &with_audiences.provider_name,
            )?;
        }
        for (field, list) in [
            ("requires_any", &requirement.requires_any),
            ("requires_all", &requirement.requires_all),
        ] {
            if let Some(list) = list {
                if list.requirements.len() < 2 {
                    return Err(ConfigError::new(
                        format!("{field}.requirements"),
                        "must have at least 2 items",
                    ));
                }
                for (index, inner) in list.requirements.iter().enumerate() {
                    self.validate_requirement(inner)
                        .map_err(|error| error.within(&format!("{field}.requirements[{index}]")))?;
                }
            }
        }
        Ok(())
    }
}

impl Validate for JwtProvider {
    fn validate(&self) -> Result<(), ConfigError> {
        match (&self.remote_jwks, &self.local_jwks) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "local_jwks",
                    "only one of `remote_jwks` and `local_jwks` may be set",
                ))
            }
            (None, None) => {
                return Err(ConfigError::root(
                    "one of `remote_jwks` and `local_jwks` must be set",
                ))
            }
            (Some(remote), None) => remote
                .validate()
                .map_err(|error| error.within("remote_jwks"))?,
            (None, Some(local)) => local
                .validate()
                .map_err(|error| error.within("local_jwks"))?,
        }
        for (field, value) in [
            ("payload_in_metadata", &self.payload_in_metadata),
            ("header_in_metadata", &self.header_in_metadata),
            ("failed_status_in_metadata", &self.failed_status_in_metadata),
        ] {
            if !value.is_empty() {
                return Err(refuse(
                    field,
                    "dynamic metadata cannot be written from proxy-wasm; use `forward_payload_header`, `claim_to_headers` or `principal_header`",
                ));
            }
        }
        if self.normalize_payload_in_metadata.is_some() {
            return Err(refuse(
                "normalize_payload_in_metadata",
                "dynamic metadata cannot be written from proxy-wasm",
            ));
        }
        if self.clear_route_cache {
            return Err(refuse(
                "clear_route_cache",
                "proxy-wasm has no way to clear the route cache",
            ));
        }
        for (index, header) in self.from_headers.iter().enumerate() {
            check_header_name(&format!("from_headers[{index}].name"), &header.name)?;
        }
        for (field, names) in [
            ("from_params", &self.from_params),
            ("from_cookies", &self.from_cookies),
        ] {
            if let Some(index) = names.iter().position(String::is_empty) {
                return Err(ConfigError::new(
                    format!("{field}[{index}]"),
                    "must not be empty",
                ));
            }
        }
        if !self.forward_payload_header.is_empty() {
            check_header_name("forward_payload_header", &self.forward_payload_header)?;
        }
        for (index, claim) in self.claim_to_headers.iter().enumerate() {
            check_header_name(
                &format!("claim_to_headers[{index}].header_name"),
                &claim.header_name,
            )?;
            if claim.claim_name.is_empty() {
                return Err(ConfigError::new(
                    format!("claim_to_headers[{index}].claim_name"),
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }
}

impl Validate for DataSource {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.filename.is_some() {
            return Err(refuse(
                "filename",
                "a wasm module cannot read the proxy's files; use `inline_string`",
            ));
        }
        if self.environment_variable.is_some() {
            return Err(refuse(
                "environment_variable",
                "a wasm module cannot read the proxy's environment; use `inline_string`",
            ));
        }
        if self.watched_directory.is_some() {
            return Err(refuse("watched_directory", "use `inline_string`"));
        }
        match (&self.inline_string, &self.inline_bytes) {
            (Some(_), Some(_)) => Err(ConfigError::root(
                "only one of `inline_string` and `inline_bytes` may be set",
            )),
            (None, None) => Err(ConfigError::root(
                "`inline_string` (or `inline_bytes`) must be set",
            )),
            _ => Ok(()),
        }
    }
}

impl DataSource {
    /// The inline document.
    pub fn bytes(&self) -> Result<Vec<u8>, ConfigError> {
        match (&self.inline_string, &self.inline_bytes) {
            (Some(text), _) => Ok(text.as_bytes().to_vec()),
            (None, Some(encoded)) => {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded)
                    .map_err(|_| ConfigError::new("inline_bytes", "is not valid base64"))
            }
            (None, None) => Err(ConfigError::root("`inline_string` must be set")),
        }
    }
}

/// Conditions of `retry_on` this filter implements.
pub const RETRY_ON: [&str; 6] = [
    "5xx",
    "gateway-error",
    "connect-failure",
    "reset",
    "refused-stream",
    "retriable-4xx",
];

impl Validate for RemoteJwks {
    fn validate(&self) -> Result<(), ConfigError> {
        let uri = &self.http_uri;
        if uri.cluster.is_empty() {
            return Err(ConfigError::new("http_uri.cluster", "must not be empty"));
        }
        if split_uri(&uri.uri).is_none() {
            return Err(ConfigError::new(
                "http_uri.uri",
                format!("{:?} is not an absolute http(s) URI", uri.uri),
            ));
        }
        if uri.timeout.is_zero() || uri.timeout.as_millis() > u128::from(u32::MAX) {
            return Err(ConfigError::new(
                "http_uri.timeout",
                "must be positive and below 49 days",
            ));
        }
        if let Some(cache) = self.cache_duration {
            if cache < Duration::from_millis(1) {
                return Err(ConfigError::new("cache_duration", "must be at least 1ms"));
            }
        }
        if let Some(policy) = &self.retry_policy {
            if policy.retry_priority.is_some() {
                return Err(refuse(
                    "retry_policy.retry_priority",
                    "callouts pick their host themselves",
                ));
            }
            if policy.retry_host_predicate.is_some() {
                return Err(refuse(
                    "retry_policy.retry_host_predicate",
                    "callouts pick their host themselves",
                ));
            }
            if policy.host_selection_retry_max_attempts != 0 {
                return Err(refuse(
                    "retry_policy.host_selection_retry_max_attempts",
                    "callouts pick their host themselves",
                ));
            }
            for condition in policy.retry_on.split(',').map(str::trim) {
                if !condition.is_empty() && !RETRY_ON.contains(&condition) {
                    return Err(ConfigError::new(
                        "retry_policy.retry_on",
                        format!("{condition:?} is not one of {}", RETRY_ON.join(", ")),
                    ));
                }
            }
            if let Some(backoff) = &policy.retry_back_off {
                if backoff.base_interval < Duration::from_millis(1) {
                    return Err(ConfigError::new(
                        "retry_policy.retry_back_off.base_interval",
                        "must be at least 1ms",
                    ));
                }
                if backoff
                    .max_interval
                    .is_some_and(|max| max < backoff.base_interval)
                {
                    return Err(ConfigError::new(
                        "retry_policy.retry_back_off.max_interval",
                        "must not be below `base_interval`",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Splits `http(s)://authority/path` into (authority, path).
pub fn split_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (rest.get(..slash)?, rest.get(slash..)?),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains(['@', ' ']) || path.contains(['#', ' ']) {
        return None;
    }
    Some((authority.to_string(), path.to_string()))
}

impl Validate for RouteMatch {
    fn validate(&self) -> Result<(), ConfigError> {
        let specifiers = [
            self.prefix.is_some(),
            self.path.is_some(),
            self.safe_regex.is_some(),
            self.path_separated_prefix.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count();
        if specifiers != 1 {
            return Err(ConfigError::root(
                "exactly one of `prefix`, `path`, `safe_regex`, `path_separated_prefix` must be set",
            ));
        }
        if let Some(prefix) = &self.path_separated_prefix {
            if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains(['?', '#']) {
                return Err(ConfigError::new(
                    "path_separated_prefix",
                    "must start with '/', not end with '/', and contain no '?' or '#'",
                ));
            }
        }
        for (field, present) in [
            ("grpc", self.grpc.is_some()),
            ("runtime_fraction", self.runtime_fraction.is_some()),
            ("tls_context", self.tls_context.is_some()),
            ("dynamic_metadata", self.dynamic_metadata.is_some()),
            ("filter_state", self.filter_state.is_some()),
            ("connect_matcher", self.connect_matcher.is_some()),
            ("path_match_policy", self.path_match_policy.is_some()),
        ] {
            if present {
                return Err(refuse(
                    field,
                    "only path, header and query parameter matching is available to a filter",
                ));
            }
        }
        for (index, query) in self.query_parameters.iter().enumerate() {
            if query.name.is_empty() {
                return Err(ConfigError::new(
                    format!("query_parameters[{index}].name"),
                    "must not be empty",
                ));
            }
            if query.string_match.is_some() && query.present_match.is_some() {
                return Err(ConfigError::new(
                    format!("query_parameters[{index}]"),
                    "only one of `string_match` and `present_match` may be set",
                ));
            }
        }
        Ok(())
    }
}
