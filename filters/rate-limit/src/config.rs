//! The filter's configuration, in the proto3-JSON shape of Envoy's rate limit filters.
//!
//! One document configures either mode:
//! * **local** (`envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`): token buckets
//!   counted in proxy-wasm shared data, exact across the worker VMs of one Envoy;
//! * **global** (`envoy.extensions.filters.http.ratelimit.v3.RateLimit`): selected by setting
//!   `rate_limit_service`; each request asks an Envoy rate limit service (RLS) over gRPC.
//!
//! Fields of both Envoy protos are accepted with their Envoy names and semantics; a field of
//! the other mode, or an Envoy field this filter cannot honour, is refused at its JSON path
//! with the reason. wasmesh's own knobs live under the single `wasmesh` object.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;
pub use wasmesh_sdk::config::proto::HttpStatus;
use wasmesh_sdk::config::{proto, validate_each, validate_field, ConfigError, Validate};
use wasmesh_sdk::header_option::HeaderValueOption;
use wasmesh_sdk::matcher::{HeaderMatcher, RuntimeFractionalPercent, StringMatcher};
use wasmesh_sdk::request::validate_header_name;

/// Largest `fill_interval / tokens_per_fill * max_tokens` accepted (100 years): GCRA keeps
/// absolute nanosecond times in 64 bits, so a bucket that refills more slowly than this could
/// overflow.
pub const MAX_BUCKET_SPAN: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Largest `max_dynamic_descriptors`: every slot is a shared-data entry created at startup.
pub const MAX_DYNAMIC_DESCRIPTORS: u32 = 65_536;

/// Envoy's default `max_dynamic_descriptors`.
pub const DEFAULT_DYNAMIC_DESCRIPTORS: u32 = 20;

/// Envoy's default timeout of a rate limit service call.
pub const DEFAULT_RLS_TIMEOUT: Duration = Duration::from_millis(20);

/// Default number of compare-and-swap attempts per bucket update.
pub const DEFAULT_CAS_ATTEMPTS: u32 = 32;

/// The whole plugin configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    // ---- fields of both Envoy filters ----
    /// Prefix of the filter's stats. Required in local mode, as Envoy requires it.
    #[serde(default)]
    pub stat_prefix: String,
    /// Fraction of requests the filter looks at. Unset: **0% in local mode** (Envoy's
    /// `local_ratelimit` default), 100% in global mode.
    #[serde(default)]
    pub filter_enabled: Option<RuntimeFractionalPercent>,
    /// Fraction of limited requests that are actually denied (the rest only report: shadow
    /// mode). Unset: **0% in local mode**, 100% in global mode (Envoy's defaults).
    #[serde(default)]
    pub filter_enforced: Option<RuntimeFractionalPercent>,
    /// How descriptors are generated from each request (`config.route.v3.RateLimit`).
    #[serde(default)]
    pub rate_limits: Vec<RateLimitPolicy>,
    /// `X-RateLimit-*` headers (`OFF` or `DRAFT_VERSION_03`).
    #[serde(default)]
    pub enable_x_ratelimit_headers: XRateLimitHeaders,
    /// gRPC requests that are limited get `RESOURCE_EXHAUSTED` instead of `UNAVAILABLE`.
    #[serde(default)]
    pub rate_limited_as_resource_exhausted: bool,
    /// Local: headers added to rate-limited local replies. Global: added to every response
    /// (Envoy 1.40 `response_headers_to_add` of the ratelimit filter).
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// Only `0` is meaningful for a filter-level `rate_limits` list.
    #[serde(default, deserialize_with = "proto::uint32")]
    pub stage: u32,

    // ---- local_ratelimit only ----
    /// Status of a rate-limited reply (default 429; below 400 means 429).
    #[serde(default)]
    pub status: Option<HttpStatus>,
    /// The default bucket (consumed by requests that match no descriptor, and by every
    /// request when `always_consume_default_token_bucket` is true).
    #[serde(default)]
    pub token_bucket: Option<TokenBucket>,
    /// Headers added to the forwarded request when it is limited but not enforced.
    #[serde(default)]
    pub request_headers_to_add_when_not_enforced: Vec<HeaderValueOption>,
    /// Per-descriptor buckets.
    #[serde(default)]
    pub descriptors: Vec<LocalRateLimitDescriptor>,
    /// Envoy: one bucket per downstream connection. Refused (see `validate`).
    #[serde(default)]
    pub local_rate_limit_per_downstream_connection: bool,
    /// Consume the default bucket even when a descriptor matched (default true).
    #[serde(default)]
    pub always_consume_default_token_bucket: Option<bool>,
    /// Capacity of each wildcard descriptor's table of per-value buckets (default 20).
    #[serde(default, deserialize_with = "proto::optional_uint32")]
    pub max_dynamic_descriptors: Option<u32>,
    /// Envoy: share the limit across the instances of the local cluster. Refused.
    #[serde(default)]
    pub local_cluster_rate_limit: Option<Value>,
    /// Envoy: how route and virtual host rate limits combine. Refused unless `OVERRIDE`.
    #[serde(default)]
    pub vh_rate_limits: Option<Value>,

    // ---- ratelimit (global) only ----
    /// The rate limit domain sent to the service.
    #[serde(default)]
    pub domain: String,
    /// `internal`, `external` or `both` (default).
    #[serde(default)]
    pub request_type: String,
    /// Timeout of the service call (default 20ms).
    #[serde(default, deserialize_with = "proto::optional_duration")]
    pub timeout: Option<Duration>,
    /// Deny (with `status_on_error`) when the service cannot be reached.
    #[serde(default)]
    pub failure_mode_deny: bool,
    /// Deny this fraction of requests when the service cannot be reached.
    #[serde(default)]
    pub failure_mode_deny_percent: Option<RuntimeFractionalPercent>,
    /// The rate limit service; setting it selects global mode.
    #[serde(default)]
    pub rate_limit_service: Option<RateLimitServiceConfig>,
    /// Do not add `x-envoy-ratelimited` to over-limit replies.
    #[serde(default)]
    pub disable_x_envoy_ratelimited_header: bool,
    /// Status of an over-limit reply (default 429).
    #[serde(default)]
    pub rate_limited_status: Option<HttpStatus>,
    /// Status of a fail-closed reply (default 500).
    #[serde(default)]
    pub status_on_error: Option<HttpStatus>,

    // ---- wasmesh extensions ----
    /// Settings Envoy has no equivalent for.
    #[serde(default)]
    pub wasmesh: WasmeshOptions,
}

/// `envoy.type.v3.TokenBucket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Capacity (the burst).
    #[serde(deserialize_with = "proto::uint32")]
    pub max_tokens: u32,
    /// Tokens added per `fill_interval` (default 1).
    #[serde(default, deserialize_with = "proto::optional_uint32")]
    pub tokens_per_fill: Option<u32>,
    /// Refill period.
    #[serde(deserialize_with = "proto::duration")]
    pub fill_interval: Duration,
}

impl TokenBucket {
    /// `tokens_per_fill`, defaulted.
    pub fn tokens_per_fill(&self) -> u32 {
        self.tokens_per_fill.unwrap_or(1)
    }

    /// The burst (`max_tokens`) as a non-zero count; `None` only for an invalid bucket.
    pub fn burst(&self) -> Option<NonZeroU32> {
        NonZeroU32::new(self.max_tokens)
    }

    /// GCRA emission interval: one token every `fill_interval / tokens_per_fill`
    /// (nanoseconds, rounded down, at least 1): the same long-run rate as Envoy's bucket.
    pub fn period_nanos(&self) -> u64 {
        let fill = u64::try_from(self.fill_interval.as_nanos()).unwrap_or(u64::MAX);
        (fill / u64::from(self.tokens_per_fill().max(1))).max(1)
    }
}

impl Validate for TokenBucket {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_tokens == 0 {
            return Err(ConfigError::new("max_tokens", "must be greater than 0"));
        }
        if self.tokens_per_fill == Some(0) {
            return Err(ConfigError::new(
                "tokens_per_fill",
                "must be greater than 0",
            ));
        }
        if self.fill_interval.is_zero() {
            return Err(ConfigError::new("fill_interval", "must be greater than 0s"));
        }
        let span = u128::from(self.period_nanos()) * u128::from(self.max_tokens);
        if span > MAX_BUCKET_SPAN.as_nanos() {
            return Err(ConfigError::new(
                "fill_interval",
                "refills too slowly: fill_interval / tokens_per_fill * max_tokens must not exceed 100 years",
            ));
        }
        Ok(())
    }
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorEntry {
    /// Descriptor key.
    pub key: String,
    /// Descriptor value; empty in a local descriptor means "any value, one bucket per value".
    #[serde(default)]
    pub value: String,
}

/// `envoy.extensions.common.ratelimit.v3.LocalRateLimitDescriptor`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRateLimitDescriptor {
    /// Entries a request descriptor must equal (in order; an empty value is a wildcard).
    pub entries: Vec<DescriptorEntry>,
    /// The descriptor's bucket.
    pub token_bucket: TokenBucket,
    /// Envoy: per-descriptor shadow mode. Refused (use `filter_enforced`).
    #[serde(default)]
    pub shadow_mode: bool,
}

impl LocalRateLimitDescriptor {
    /// True when some entry has an empty value (one bucket per distinct request value).
    pub fn is_wildcard(&self) -> bool {
        self.entries.iter().any(|entry| entry.value.is_empty())
    }
}

impl Validate for LocalRateLimitDescriptor {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.entries.is_empty() {
            return Err(ConfigError::new("entries", "must have at least one entry"));
        }
        for (index, entry) in self.entries.iter().enumerate() {
            if entry.key.is_empty() {
                return Err(ConfigError::new(
                    format!("entries[{index}].key"),
                    "must not be empty",
                ));
            }
        }
        if self.shadow_mode {
            return Err(ConfigError::new(
                "shadow_mode",
                "per-descriptor shadow mode is not supported; use `filter_enforced` to report without denying",
            ));
        }
        validate_field("token_bucket", &self.token_bucket)
    }
}

/// `XRateLimitHeadersRFCVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum XRateLimitHeaders {
    /// No headers.
    #[default]
    #[serde(rename = "OFF")]
    Off,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    #[serde(rename = "DRAFT_VERSION_03")]
    DraftVersion03,
}

/// `config.route.v3.RateLimit`: actions that build one descriptor from a request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    /// Actions, in order; each appends one entry (or, failing, drops the descriptor).
    pub actions: Vec<Action>,
    /// Tokens the descriptor consumes (`{"number": 5}`; default 1).
    #[serde(default)]
    pub hits_addend: Option<HitsAddend>,
    /// Refused, as Envoy refuses it in filter-level `rate_limits`.
    #[serde(default)]
    pub stage: Option<Value>,
    /// Refused, as Envoy refuses it in filter-level `rate_limits`.
    #[serde(default)]
    pub disable_key: Option<Value>,
    /// Envoy: limit override from dynamic metadata. Refused.
    #[serde(default)]
    pub limit: Option<Value>,
    /// Envoy: apply the limit when the stream is done. Refused.
    #[serde(default)]
    pub apply_on_stream_done: Option<Value>,
}

impl RateLimitPolicy {
    /// The configured hits per request (default 1).
    pub fn hits(&self) -> u64 {
        self.hits_addend
            .as_ref()
            .and_then(|hits| hits.number)
            .unwrap_or(1)
    }
}

impl Validate for RateLimitPolicy {
    fn validate(&self) -> Result<(), ConfigError> {
        let refused = [
            (
                "stage",
                self.stage.is_some(),
                "is not supported in a filter-level `rate_limits` entry (as in Envoy)",
            ),
            (
                "disable_key",
                self.disable_key.is_some(),
                "is not supported in a filter-level `rate_limits` entry (as in Envoy)",
            ),
            (
                "limit",
                self.limit.is_some(),
                "(a limit override from dynamic metadata) is not supported",
            ),
            (
                "apply_on_stream_done",
                self.apply_on_stream_done.is_some(),
                "is not supported: limits apply when the request headers arrive",
            ),
        ];
        for (field, present, why) in refused {
            if present {
                return Err(ConfigError::new(field, format!("`{field}` {why}")));
            }
        }
        if self.actions.is_empty() {
            return Err(ConfigError::new("actions", "must have at least one action"));
        }
        validate_each("actions", &self.actions)?;
        if let Some(hits) = &self.hits_addend {
            validate_field("hits_addend", hits)?;
        }
        Ok(())
    }
}

/// `config.route.v3.RateLimit.HitsAddend`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HitsAddend {
    /// Fixed number of hits.
    #[serde(default, deserialize_with = "optional_uint64")]
    pub number: Option<u64>,
    /// Envoy: hits from a substitution format string. Refused.
    #[serde(default)]
    pub format: Option<String>,
}

impl Validate for HitsAddend {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.format.is_some() {
            return Err(ConfigError::new(
                "format",
                "hits from a substitution format string are not supported; use `number`",
            ));
        }
        if self
            .number
            .is_some_and(|number| number > u64::from(u32::MAX))
        {
            return Err(ConfigError::new("number", "must not exceed 4294967295"));
        }
        Ok(())
    }
}

/// One descriptor action (`config.route.v3.RateLimit.Action`), validated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawAction")]
pub enum Action {
    /// `("destination_cluster", <routed cluster>)`, from the `cluster_name` property.
    DestinationCluster,
    /// `(descriptor_key, <first value of header_name>)`.
    RequestHeaders {
        /// Lower-case header name (pseudo-headers such as `:path` allowed).
        header_name: String,
        /// Entry key.
        descriptor_key: String,
        /// Missing header: skip this entry instead of dropping the descriptor.
        skip_if_absent: bool,
    },
    /// `("remote_address", <downstream IP>)`.
    RemoteAddress,
    /// `("masked_remote_address", <downstream IP masked>/<len>)`.
    MaskedRemoteAddress {
        /// IPv4 prefix length (default 32).
        v4_prefix_mask_len: u8,
        /// IPv6 prefix length (default 128).
        v6_prefix_mask_len: u8,
    },
    /// `(descriptor_key or "generic_key", descriptor_value)`.
    GenericKey {
        /// Entry key.
        descriptor_key: String,
        /// Entry value.
        descriptor_value: String,
    },
    /// `(descriptor_key or "header_match", descriptor_value)` when the headers match
    /// (or do not, with `expect_match: false`).
    HeaderValueMatch {
        /// Entry key.
        descriptor_key: String,
        /// Entry value.
        descriptor_value: String,
        /// Whether the entry is added on a match (true) or on a mismatch (false).
        expect_match: bool,
        /// All must match.
        headers: Vec<HeaderMatcher>,
    },
    /// `(descriptor_key or "query_match", descriptor_value)` when the query parameters match.
    QueryParameterValueMatch {
        /// Entry key.
        descriptor_key: String,
        /// Entry value.
        descriptor_value: String,
        /// Whether the entry is added on a match (true) or on a mismatch (false).
        expect_match: bool,
        /// All must match.
        query_parameters: Vec<QueryParameterMatcher>,
    },
    /// `(descriptor_key, <value of query parameter>)`.
    QueryParameters {
        /// Parameter name.
        query_parameter_name: String,
        /// Entry key.
        descriptor_key: String,
        /// Missing parameter: skip this entry instead of dropping the descriptor.
        skip_if_absent: bool,
    },
    /// `(descriptor_key, <string in dynamic metadata>)`, e.g. a JWT claim that Envoy's
    /// `jwt_authn` wrote with `payload_in_metadata`.
    Metadata {
        /// Entry key.
        descriptor_key: String,
        /// Metadata namespace (`filter_metadata` key).
        key: String,
        /// Path inside the namespace's struct.
        path: Vec<String>,
        /// Value used when the metadata is absent (empty: none).
        default_value: String,
        /// Absent and no default: skip this entry instead of dropping the descriptor.
        skip_if_absent: bool,
    },
}

impl Validate for Action {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    source_cluster: Option<Value>,
    destination_cluster: Option<EmptyMessage>,
    request_headers: Option<RawRequestHeaders>,
    remote_address: Option<EmptyMessage>,
    masked_remote_address: Option<RawMaskedRemoteAddress>,
    generic_key: Option<RawGenericKey>,
    header_value_match: Option<RawHeaderValueMatch>,
    query_parameter_value_match: Option<RawQueryParameterValueMatch>,
    query_parameters: Option<RawQueryParameters>,
    metadata: Option<RawMetadata>,
    dynamic_metadata: Option<Value>,
    extension: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyMessage {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequestHeaders {
    header_name: String,
    descriptor_key: String,
    #[serde(default)]
    skip_if_absent: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaskedRemoteAddress {
    #[serde(default, deserialize_with = "proto::optional_uint32")]
    v4_prefix_mask_len: Option<u32>,
    #[serde(default, deserialize_with = "proto::optional_uint32")]
    v6_prefix_mask_len: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGenericKey {
    descriptor_value: String,
    #[serde(default)]
    descriptor_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderValueMatch {
    #[serde(default)]
    descriptor_key: String,
    descriptor_value: String,
    #[serde(default)]
    expect_match: Option<bool>,
    headers: Vec<HeaderMatcher>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueryParameterValueMatch {
    #[serde(default)]
    descriptor_key: String,
    descriptor_value: String,
    #[serde(default)]
    expect_match: Option<bool>,
    query_parameters: Vec<QueryParameterMatcher>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueryParameters {
    query_parameter_name: String,
    descriptor_key: String,
    #[serde(default)]
    skip_if_absent: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    descriptor_key: String,
    metadata_key: MetadataKey,
    #[serde(default)]
    default_value: String,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    skip_if_absent: bool,
}

/// `envoy.type.metadata.v3.MetadataKey`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataKey {
    /// Namespace, e.g. `envoy.filters.http.jwt_authn`.
    pub key: String,
    /// Path segments inside the namespace's struct.
    #[serde(default)]
    pub path: Vec<PathSegment>,
}

/// `MetadataKey.PathSegment`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSegment {
    /// Struct field name.
    pub key: String,
}

fn non_empty(field: &str, value: String) -> Result<String, String> {
    if value.is_empty() {
        Err(format!("`{field}` must not be empty"))
    } else {
        Ok(value)
    }
}

fn or_default(value: String, default: &str) -> String {
    if value.is_empty() {
        default.to_string()
    } else {
        value
    }
}

impl TryFrom<RawAction> for Action {
    type Error = String;

    fn try_from(raw: RawAction) -> Result<Self, String> {
        let mut actions: Vec<(&'static str, Result<Action, String>)> = Vec::new();
        if raw.source_cluster.is_some() {
            actions.push((
                "source_cluster",
                Err("`source_cluster` is not supported: a wasm filter cannot read Envoy's --service-cluster; use `generic_key` with the cluster name".to_string()),
            ));
        }
        if raw.destination_cluster.is_some() {
            actions.push(("destination_cluster", Ok(Action::DestinationCluster)));
        }
        if let Some(raw) = raw.request_headers {
            let action = (|| {
                let header_name = non_empty("header_name", raw.header_name)?;
                validate_header_name(&header_name).map_err(|error| error.to_string())?;
                Ok(Action::RequestHeaders {
                    header_name: header_name.to_ascii_lowercase(),
                    descriptor_key: non_empty("descriptor_key", raw.descriptor_key)?,
                    skip_if_absent: raw.skip_if_absent,
                })
            })();
            actions.push(("request_headers", action));
        }
        if raw.remote_address.is_some() {
            actions.push(("remote_address", Ok(Action::RemoteAddress)));
        }
        if let Some(raw) = raw.masked_remote_address {
            let action = (|| {
                let v4 = raw.v4_prefix_mask_len.unwrap_or(32);
                let v6 = raw.v6_prefix_mask_len.unwrap_or(128);
                if v4 > 32 {
                    return Err(format!("`v4_prefix_mask_len` {v4} is larger than 32"));
                }
                if v6 > 128 {
                    return Err(format!("`v6_prefix_mask_len` {v6} is larger than 128"));
                }
                Ok(Action::MaskedRemoteAddress {
                    v4_prefix_mask_len: u8::try_from(v4).map_err(|e| e.to_string())?,
                    v6_prefix_mask_len: u8::try_from(v6).map_err(|e| e.to_string())?,
                })
            })();
            actions.push(("masked_remote_address", action));
        }
        if let Some(raw) = raw.generic_key {
            let action = non_empty("descriptor_value", raw.descriptor_value).map(|value| {
                Action::GenericKey {
                    descriptor_key: or_default(raw.descriptor_key, "generic_key"),
                    descriptor_value: value,
                }
            });
            actions.push(("generic_key", action));
        }
        if let Some(raw) = raw.header_value_match {
            let action = (|| {
                if raw.headers.is_empty() {
                    return Err("`headers` must have at least one matcher".to_string());
                }
                Ok(Action::HeaderValueMatch {
                    descriptor_key: or_default(raw.descriptor_key, "header_match"),
                    descriptor_value: non_empty("descriptor_value", raw.descriptor_value)?,
                    expect_match: raw.expect_match.unwrap_or(true),
                    headers: raw.headers,
                })
            })();
            actions.push(("header_value_match", action));
        }
        if let Some(raw) = raw.query_parameter_value_match {
            let action = (|| {
                if raw.query_parameters.is_empty() {
                    return Err("`query_parameters` must have at least one matcher".to_string());
                }
                Ok(Action::QueryParameterValueMatch {
                    descriptor_key: or_default(raw.descriptor_key, "query_match"),
                    descriptor_value: non_empty("descriptor_value", raw.descriptor_value)?,
                    expect_match: raw.expect_match.unwrap_or(true),
                    query_parameters: raw.query_parameters,
                })
            })();
            actions.push(("query_parameter_value_match", action));
        }
        if let Some(raw) = raw.query_parameters {
            let action = (|| {
                Ok(Action::QueryParameters {
                    query_parameter_name: non_empty(
                        "query_parameter_name",
                        raw.query_parameter_name,
                    )?,
                    descriptor_key: non_empty("descriptor_key", raw.descriptor_key)?,
                    skip_if_absent: raw.skip_if_absent,
                })
            })();
            actions.push(("query_parameters", action));
        }
        if let Some(raw) = raw.metadata {
            let action = (|| {
                match raw.source.as_deref() {
                    None | Some("DYNAMIC") => {}
                    Some("ROUTE_ENTRY") => {
                        return Err("`source: ROUTE_ENTRY` is not supported: wasm filters see dynamic metadata only".to_string())
                    }
                    Some(other) => {
                        return Err(format!(
                            "unknown metadata source {other:?}, expected \"DYNAMIC\""
                        ))
                    }
                }
                Ok(Action::Metadata {
                    descriptor_key: non_empty("descriptor_key", raw.descriptor_key)?,
                    key: non_empty("metadata_key.key", raw.metadata_key.key)?,
                    path: raw
                        .metadata_key
                        .path
                        .into_iter()
                        .map(|segment| segment.key)
                        .collect(),
                    default_value: raw.default_value,
                    skip_if_absent: raw.skip_if_absent,
                })
            })();
            actions.push(("metadata", action));
        }
        if raw.dynamic_metadata.is_some() {
            actions.push((
                "dynamic_metadata",
                Err("`dynamic_metadata` is deprecated in Envoy; use `metadata`".to_string()),
            ));
        }
        if raw.extension.is_some() {
            actions.push((
                "extension",
                Err("descriptor `extension`s are not supported".to_string()),
            ));
        }
        match actions.len() {
            0 => Err("an action must set exactly one of `destination_cluster`, `request_headers`, `remote_address`, `masked_remote_address`, `generic_key`, `header_value_match`, `query_parameter_value_match`, `query_parameters`, `metadata`".to_string()),
            1 => actions.pop().map_or_else(|| Err("no action".to_string()), |(_, action)| action),
            _ => Err(format!(
                "an action must set exactly one specifier, found {}",
                actions.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

/// `config.route.v3.QueryParameterMatcher`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawQueryParameterMatcher")]
pub struct QueryParameterMatcher {
    /// Parameter name.
    pub name: String,
    /// `None`: the parameter must be present; `Some`: its value must match.
    pub string_match: Option<StringMatcher>,
    /// `present_match: false`: the parameter must be absent.
    pub must_be_absent: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueryParameterMatcher {
    name: String,
    #[serde(default)]
    string_match: Option<StringMatcher>,
    #[serde(default)]
    present_match: Option<bool>,
}

impl TryFrom<RawQueryParameterMatcher> for QueryParameterMatcher {
    type Error = String;

    fn try_from(raw: RawQueryParameterMatcher) -> Result<Self, String> {
        let name = non_empty("name", raw.name)?;
        if raw.string_match.is_some() && raw.present_match.is_some() {
            return Err("`string_match` and `present_match` are mutually exclusive".to_string());
        }
        Ok(QueryParameterMatcher {
            name,
            string_match: raw.string_match,
            must_be_absent: raw.present_match == Some(false),
        })
    }
}

/// `config.ratelimit.v3.RateLimitServiceConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitServiceConfig {
    /// Where the service is.
    pub grpc_service: GrpcService,
    /// Only `V3`.
    #[serde(default)]
    pub transport_api_version: Option<String>,
}

impl Validate for RateLimitServiceConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        match self.transport_api_version.as_deref() {
            None | Some("V3") => {}
            Some(other) => {
                return Err(ConfigError::new(
                    "transport_api_version",
                    format!("{other:?} is not supported; only \"V3\" exists"),
                ))
            }
        }
        validate_field("grpc_service", &self.grpc_service)
    }
}

/// `config.core.v3.GrpcService` (the `envoy_grpc` form).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcService {
    /// The cluster.
    #[serde(default)]
    pub envoy_grpc: Option<EnvoyGrpc>,
    /// Refused: proxy-wasm calls go through Envoy's own gRPC client.
    #[serde(default)]
    pub google_grpc: Option<Value>,
    /// Per-call timeout; the filter's `timeout` takes precedence when set.
    #[serde(default, deserialize_with = "proto::optional_duration")]
    pub timeout: Option<Duration>,
    /// Metadata sent with every call.
    #[serde(default)]
    pub initial_metadata: Vec<MetadataHeader>,
    /// Refused.
    #[serde(default)]
    pub retry_policy: Option<Value>,
}

impl Validate for GrpcService {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.google_grpc.is_some() {
            return Err(ConfigError::new(
                "google_grpc",
                "`google_grpc` is not supported; use `envoy_grpc` with a cluster",
            ));
        }
        if self.retry_policy.is_some() {
            return Err(ConfigError::new(
                "retry_policy",
                "`retry_policy` is not supported",
            ));
        }
        match &self.envoy_grpc {
            None => Err(ConfigError::new("envoy_grpc", "is required")),
            Some(grpc) if grpc.cluster_name.is_empty() => Err(ConfigError::new(
                "envoy_grpc.cluster_name",
                "must not be empty",
            )),
            Some(_) => Ok(()),
        }
    }
}

/// `GrpcService.EnvoyGrpc`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyGrpc {
    /// Cluster name.
    pub cluster_name: String,
    /// Refused.
    #[serde(default)]
    pub authority: Option<String>,
}

/// `config.core.v3.HeaderValue` as initial metadata.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataHeader {
    /// Metadata key.
    pub key: String,
    /// Metadata value.
    #[serde(default)]
    pub value: String,
}

/// Where limiter state lives (wasmesh extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum StateScope {
    /// Proxy-wasm shared data: one exact limiter per key for all worker VMs.
    #[default]
    #[serde(rename = "SHARED")]
    Shared,
    /// Each worker VM keeps its own state (faster, but the limit is multiplied by up to the
    /// number of workers). For comparison and for limits meant per worker.
    #[serde(rename = "WORKER")]
    Worker,
}

/// wasmesh settings Envoy has no field for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WasmeshOptions {
    /// Where bucket state lives.
    pub state_scope: StateScope,
    /// Emit the IETF `RateLimit-Policy` and `RateLimit` headers
    /// (draft-ietf-httpapi-ratelimit-headers-09).
    pub ietf_ratelimit_headers: bool,
    /// Compare-and-swap attempts per bucket update before failing open.
    #[serde(deserialize_with = "proto::uint32")]
    pub cas_attempts: u32,
}

impl Default for WasmeshOptions {
    fn default() -> Self {
        WasmeshOptions {
            state_scope: StateScope::Shared,
            ietf_ratelimit_headers: false,
            cas_attempts: DEFAULT_CAS_ATTEMPTS,
        }
    }
}

impl Validate for WasmeshOptions {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1000).contains(&self.cas_attempts) {
            return Err(ConfigError::new(
                "cas_attempts",
                "must be between 1 and 1000",
            ));
        }
        Ok(())
    }
}

/// Which Envoy filter the configuration mirrors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `envoy.filters.http.local_ratelimit`.
    Local,
    /// `envoy.filters.http.ratelimit`.
    Global,
}

impl Config {
    /// Global when `rate_limit_service` is set.
    pub fn mode(&self) -> Mode {
        if self.rate_limit_service.is_some() {
            Mode::Global
        } else {
            Mode::Local
        }
    }

    /// `always_consume_default_token_bucket`, defaulted (true).
    pub fn always_consume_default_token_bucket(&self) -> bool {
        self.always_consume_default_token_bucket.unwrap_or(true)
    }

    /// `max_dynamic_descriptors`, defaulted (20).
    pub fn max_dynamic_descriptors(&self) -> u32 {
        self.max_dynamic_descriptors
            .unwrap_or(DEFAULT_DYNAMIC_DESCRIPTORS)
    }

    fn validate_local(&self) -> Result<(), ConfigError> {
        if self.stat_prefix.is_empty() {
            return Err(ConfigError::new(
                "stat_prefix",
                "must not be empty (Envoy requires it for local_ratelimit)",
            ));
        }
        let global_only = [
            ("domain", !self.domain.is_empty()),
            ("request_type", !self.request_type.is_empty()),
            ("timeout", self.timeout.is_some()),
            ("failure_mode_deny", self.failure_mode_deny),
            (
                "failure_mode_deny_percent",
                self.failure_mode_deny_percent.is_some(),
            ),
            (
                "disable_x_envoy_ratelimited_header",
                self.disable_x_envoy_ratelimited_header,
            ),
            ("rate_limited_status", self.rate_limited_status.is_some()),
            ("status_on_error", self.status_on_error.is_some()),
        ];
        for (field, set) in global_only {
            if set {
                return Err(ConfigError::new(
                    field,
                    format!("`{field}` belongs to the global rate limit filter and needs `rate_limit_service`"),
                ));
            }
        }
        if self.local_rate_limit_per_downstream_connection {
            return Err(ConfigError::new(
                "local_rate_limit_per_downstream_connection",
                "per-connection buckets are not supported; limits are shared by all workers",
            ));
        }
        if self.local_cluster_rate_limit.is_some() {
            return Err(ConfigError::new(
                "local_cluster_rate_limit",
                "sharing a limit across Envoy instances is not supported in local mode; use the global mode (`rate_limit_service`)",
            ));
        }
        if let Some(token_bucket) = &self.token_bucket {
            validate_field("token_bucket", token_bucket)?;
        }
        validate_each("descriptors", &self.descriptors)?;
        for (index, descriptor) in self.descriptors.iter().enumerate() {
            let duplicate = self
                .descriptors
                .iter()
                .take(index)
                .any(|earlier| earlier.entries == descriptor.entries);
            if duplicate {
                return Err(ConfigError::new(
                    format!("descriptors[{index}].entries"),
                    "duplicate descriptor",
                ));
            }
        }
        if !self.descriptors.is_empty() && self.rate_limits.is_empty() {
            return Err(ConfigError::new(
                "rate_limits",
                "`descriptors` need filter-level `rate_limits` to generate request descriptors (route-level rate limits are not visible to wasm filters)",
            ));
        }
        if let Some(max) = self.max_dynamic_descriptors {
            if !(1..=MAX_DYNAMIC_DESCRIPTORS).contains(&max) {
                return Err(ConfigError::new(
                    "max_dynamic_descriptors",
                    format!("must be between 1 and {MAX_DYNAMIC_DESCRIPTORS}"),
                ));
            }
        }
        Ok(())
    }

    fn validate_global(&self) -> Result<(), ConfigError> {
        let local_only = [
            ("status", self.status.is_some()),
            ("token_bucket", self.token_bucket.is_some()),
            (
                "request_headers_to_add_when_not_enforced",
                !self.request_headers_to_add_when_not_enforced.is_empty(),
            ),
            ("descriptors", !self.descriptors.is_empty()),
            (
                "local_rate_limit_per_downstream_connection",
                self.local_rate_limit_per_downstream_connection,
            ),
            (
                "always_consume_default_token_bucket",
                self.always_consume_default_token_bucket.is_some(),
            ),
            (
                "max_dynamic_descriptors",
                self.max_dynamic_descriptors.is_some(),
            ),
            (
                "local_cluster_rate_limit",
                self.local_cluster_rate_limit.is_some(),
            ),
        ];
        for (field, set) in local_only {
            if set {
                return Err(ConfigError::new(
                    field,
                    format!("`{field}` belongs to the local rate limit filter; remove it or `rate_limit_service`"),
                ));
            }
        }
        if self.wasmesh.state_scope != StateScope::Shared {
            return Err(ConfigError::new(
                "wasmesh.state_scope",
                "only applies to local mode (the rate limit service keeps the counts)",
            ));
        }
        if self.domain.is_empty() {
            return Err(ConfigError::new("domain", "must not be empty"));
        }
        if !matches!(
            self.request_type.as_str(),
            "" | "both" | "internal" | "external"
        ) {
            return Err(ConfigError::new(
                "request_type",
                "must be \"internal\", \"external\" or \"both\"",
            ));
        }
        if self.rate_limits.is_empty() {
            return Err(ConfigError::new(
                "rate_limits",
                "global mode needs filter-level `rate_limits` to build the descriptors sent to the service (route-level rate limits are not visible to wasm filters)",
            ));
        }
        if let Some(service) = &self.rate_limit_service {
            validate_field("rate_limit_service", service)?;
            if service
                .grpc_service
                .envoy_grpc
                .as_ref()
                .is_some_and(|grpc| grpc.authority.is_some())
            {
                return Err(ConfigError::new(
                    "rate_limit_service.grpc_service.envoy_grpc.authority",
                    "`authority` is not supported",
                ));
            }
        }
        if let Some(timeout) = self.timeout {
            if timeout < Duration::from_millis(1) {
                return Err(ConfigError::new("timeout", "must be at least 1ms"));
            }
        }
        Ok(())
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.stage != 0 {
            return Err(ConfigError::new(
                "stage",
                "only stage 0 exists for a filter-level `rate_limits` list",
            ));
        }
        if let Some(vh) = &self.vh_rate_limits {
            if vh != &Value::String("OVERRIDE".to_string()) && vh != &Value::from(0) {
                return Err(ConfigError::new(
                    "vh_rate_limits",
                    "virtual host rate limits are not visible to wasm filters; only the default `OVERRIDE` is accepted",
                ));
            }
        }
        validate_each("rate_limits", &self.rate_limits)?;
        validate_field("wasmesh", &self.wasmesh)?;
        for (field, status) in [
            ("status", self.status),
            ("rate_limited_status", self.rate_limited_status),
            ("status_on_error", self.status_on_error),
        ] {
            if let Some(status) = status {
                if !(200..=599).contains(&status.code) {
                    return Err(ConfigError::new(
                        format!("{field}.code"),
                        "a local reply needs a final status between 200 and 599",
                    ));
                }
            }
        }
        match self.mode() {
            Mode::Local => self.validate_local(),
            Mode::Global => self.validate_global(),
        }
    }
}

fn optional_uint64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let value: Option<Value> = Option::deserialize(deserializer)?;
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => number.as_u64().map(Some).ok_or_else(|| {
            de::Error::custom(format!("{number} is not an unsigned 64-bit integer"))
        }),
        Some(Value::String(text)) => text
            .parse::<u64>()
            .map(Some)
            .map_err(|_| de::Error::custom(format!("{text:?} is not an unsigned 64-bit integer"))),
        Some(other) => Err(de::Error::custom(format!(
            "expected an unsigned 64-bit integer, found {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_sdk::config::load;

    fn error(json: &str) -> String {
        load::<Config>(json.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn envoy_local_ratelimit_example_loads() {
        let config = load::<Config>(
            br#"{
              "stat_prefix": "http_local_rate_limiter",
              "token_bucket": {"max_tokens": 10000, "tokens_per_fill": 1000, "fill_interval": "1s"},
              "filter_enabled": {"runtime_key": "local_rate_limit_enabled", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
              "filter_enforced": {"runtime_key": "local_rate_limit_enforced", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
              "response_headers_to_add": [{"append_action": "OVERWRITE_IF_EXISTS_OR_ADD", "header": {"key": "x-local-rate-limit", "value": "true"}}],
              "local_rate_limit_per_downstream_connection": false,
              "status": {"code": "TooManyRequests"}
            }"#,
        )
        .unwrap();
        assert_eq!(config.mode(), Mode::Local);
        let bucket = config.token_bucket.unwrap();
        assert_eq!(bucket.period_nanos(), 1_000_000);
        assert_eq!(config.status, Some(HttpStatus { code: 429 }));
        assert!(config.always_consume_default_token_bucket());
        assert_eq!(config.max_dynamic_descriptors(), 20);
    }

    #[test]
    fn actions_parse_with_envoy_defaults() {
        let config = load::<Config>(
            br#"{
              "stat_prefix": "rl",
              "rate_limits": [{"actions": [
                {"request_headers": {"header_name": "X-Client", "descriptor_key": "client", "skip_if_absent": true}},
                {"generic_key": {"descriptor_value": "v"}},
                {"header_value_match": {"descriptor_value": "post", "headers": [{"name": ":method", "exact_match": "POST"}]}},
                {"masked_remote_address": {"v4_prefix_mask_len": 24}},
                {"query_parameter_value_match": {"descriptor_value": "q", "expect_match": false, "query_parameters": [{"name": "debug"}]}},
                {"query_parameters": {"query_parameter_name": "tenant", "descriptor_key": "tenant"}},
                {"metadata": {"descriptor_key": "sub", "metadata_key": {"key": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": "sub"}]}}},
                {"remote_address": {}},
                {"destination_cluster": {}}
              ], "hits_addend": {"number": "3"}}]
            }"#,
        )
        .unwrap();
        let policy = &config.rate_limits[0];
        assert_eq!(policy.hits(), 3);
        assert_eq!(
            policy.actions[0],
            Action::RequestHeaders {
                header_name: "x-client".into(),
                descriptor_key: "client".into(),
                skip_if_absent: true
            }
        );
        assert_eq!(
            policy.actions[1],
            Action::GenericKey {
                descriptor_key: "generic_key".into(),
                descriptor_value: "v".into()
            }
        );
        assert!(matches!(
            &policy.actions[2],
            Action::HeaderValueMatch { descriptor_key, expect_match: true, .. } if descriptor_key == "header_match"
        ));
        assert_eq!(
            policy.actions[3],
            Action::MaskedRemoteAddress {
                v4_prefix_mask_len: 24,
                v6_prefix_mask_len: 128
            }
        );
        assert!(matches!(
            &policy.actions[4],
            Action::QueryParameterValueMatch { descriptor_key, expect_match: false, .. } if descriptor_key == "query_match"
        ));
        assert!(
            matches!(&policy.actions[6], Action::Metadata { path, .. } if path == &["payload", "sub"])
        );
    }

    #[test]
    fn refused_fields_name_their_path() {
        let cases = [
            (
                r#"{"stat_prefix": "rl", "rate_limits": [{"actions": [{"source_cluster": {}}]}]}"#,
                "rate_limits[0].actions[0]: `source_cluster` is not supported",
            ),
            (
                r#"{"stat_prefix": "rl", "rate_limits": [{"stage": 1, "actions": [{"remote_address": {}}]}]}"#,
                "rate_limits[0].stage: `stage` is not supported",
            ),
            (
                r#"{"stat_prefix": "rl", "rate_limits": [{"actions": [{"remote_address": {}, "generic_key": {"descriptor_value": "a"}}]}]}"#,
                "rate_limits[0].actions[0]: an action must set exactly one specifier, found remote_address, generic_key",
            ),
            (
                r#"{"stat_prefix": "rl", "local_rate_limit_per_downstream_connection": true}"#,
                "local_rate_limit_per_downstream_connection: per-connection buckets",
            ),
            (
                r#"{"stat_prefix": "rl", "token_bucket": {"max_tokens": 0, "fill_interval": "1s"}}"#,
                "token_bucket.max_tokens: must be greater than 0",
            ),
            (
                r#"{"stat_prefix": "rl", "token_bucket": {"max_tokens": 1, "fill_interval": "1000ms"}}"#,
                "token_bucket.fill_interval: invalid duration",
            ),
            (
                r#"{"stat_prefix": "rl", "descriptors": [{"entries": [{"key": "a", "value": "b"}], "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}]}"#,
                "rate_limits: `descriptors` need filter-level `rate_limits`",
            ),
            (
                r#"{"stat_prefix": "rl", "domain": "d"}"#,
                "domain: `domain` belongs to the global rate limit filter",
            ),
            (
                r#"{"domain": "d", "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}, "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": "rls"}}}, "rate_limits": [{"actions": [{"remote_address": {}}]}]}"#,
                "token_bucket: `token_bucket` belongs to the local rate limit filter",
            ),
            (
                r#"{"domain": "d", "rate_limit_service": {"grpc_service": {"google_grpc": {}}}, "rate_limits": [{"actions": [{"remote_address": {}}]}]}"#,
                "rate_limit_service.grpc_service.google_grpc: `google_grpc` is not supported",
            ),
            (
                r#"{"stat_prefix": "rl", "status": {"code": 299}}"#,
                "status.code: 299 is not an envoy.type.v3.StatusCode",
            ),
            (
                r#"{"stat_prefix": "rl", "unknown": 1}"#,
                "unknown field `unknown`",
            ),
            (
                r#"{"stat_prefix": "rl", "wasmesh": {"cas_attempts": 0}}"#,
                "wasmesh.cas_attempts: must be between 1 and 1000",
            ),
            (
                r#"{"stat_prefix": "rl", "token_bucket": {"max_tokens": 4000000000, "fill_interval": "315576000000s"}}"#,
                "token_bucket.fill_interval: refills too slowly",
            ),
        ];
        for (json, expected) in cases {
            let message = error(json);
            assert!(
                message.contains(expected),
                "{json}\n  got: {message}\n  expected: {expected}"
            );
        }
    }

    #[test]
    fn duplicate_descriptors_are_refused_as_in_envoy() {
        let message = error(
            r#"{"stat_prefix": "rl", "rate_limits": [{"actions": [{"remote_address": {}}]}],
                "descriptors": [
                  {"entries": [{"key": "remote_address"}], "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}},
                  {"entries": [{"key": "remote_address"}], "token_bucket": {"max_tokens": 2, "fill_interval": "1s"}}
                ]}"#,
        );
        assert_eq!(message, "descriptors[1].entries: duplicate descriptor");
    }

    #[test]
    fn global_mode_is_selected_by_the_service() {
        let config = load::<Config>(
            br#"{"domain": "edge", "failure_mode_deny": true, "timeout": "0.25s",
                 "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": "rls"}}, "transport_api_version": "V3"},
                 "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "all"}}]}]}"#,
        )
        .unwrap();
        assert_eq!(config.mode(), Mode::Global);
        assert_eq!(config.timeout, Some(Duration::from_millis(250)));
    }
}
