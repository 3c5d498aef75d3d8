//! The plugin configuration: Istio's stats plugin configuration (`stats.PluginConfig`, the
//! `envoy.wasm.stats` / `istio.stats` filter) in proto3 JSON, plus two wasmesh additions
//! (`exchange_peer_metadata`, `access_log`). See README.md for every field.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use wasmesh_sdk::config::{proto, ConfigError, Validate};
use wasmesh_sdk::matcher::percent::FractionalPercent;
use wasmesh_sdk::metrics::MetricKind;

use crate::expr::Expr;

/// Istio's standard dimensions, in the order they appear in stat names.
pub const STANDARD_DIMENSIONS: &[&str] = &[
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// What a standard metric records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    /// One per request.
    One,
    /// Milliseconds from request start to stream end.
    DurationMillis,
    /// `request.total_size`: request headers and body.
    RequestBytes,
    /// `response.total_size`: response headers, body and trailers.
    ResponseBytes,
    /// gRPC messages the client sent.
    RequestMessages,
    /// gRPC messages the server sent.
    ResponseMessages,
    /// A custom definition's integer expression.
    Expression(Expr),
}

/// Where a dimension's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagSource {
    /// A standard dimension (index into [`STANDARD_DIMENSIONS`]).
    Standard(usize),
    /// A configured expression.
    Expression(Expr),
}

/// One metric the filter records, with its dimensions resolved from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricFamily {
    /// Name without the prefix (`requests_total`).
    pub name: String,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// What is recorded.
    pub value: ValueSource,
    /// Recorded for gRPC requests only (the message counters).
    pub grpc_only: bool,
    /// Dimensions in stat-name order.
    pub tags: Vec<(String, TagSource)>,
}

/// `stats.MetricConfig`: dimension overrides for one metric (or all).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    /// Dimension name to expression; adds or overrides dimensions.
    #[serde(default)]
    pub dimensions: BTreeMap<String, String>,
    /// The metric (without prefix) this applies to; all metrics when empty.
    #[serde(default)]
    pub name: String,
    /// Dimensions removed.
    #[serde(default)]
    pub tags_to_remove: Vec<String>,
    /// Not implemented by Istio either: refused when set.
    #[serde(default, rename = "match")]
    pub match_: String,
    /// Do not record the selected metric(s).
    #[serde(default)]
    pub drop: bool,
}

/// `stats.MetricType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricType {
    /// A counter (the default).
    #[default]
    Counter,
    /// A gauge.
    Gauge,
    /// A histogram.
    Histogram,
}

impl<'de> Deserialize<'de> for MetricType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TypeVisitor;
        impl Visitor<'_> for TypeVisitor {
            type Value = MetricType;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("one of \"COUNTER\", \"GAUGE\", \"HISTOGRAM\" (or 0, 1, 2)")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<MetricType, E> {
                match value {
                    "COUNTER" => Ok(MetricType::Counter),
                    "GAUGE" => Ok(MetricType::Gauge),
                    "HISTOGRAM" => Ok(MetricType::Histogram),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<MetricType, E> {
                match value {
                    0 => Ok(MetricType::Counter),
                    1 => Ok(MetricType::Gauge),
                    2 => Ok(MetricType::Histogram),
                    other => Err(E::invalid_value(de::Unexpected::Unsigned(other), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<MetricType, E> {
                match u64::try_from(value) {
                    Ok(value) => self.visit_u64(value),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(value), &self)),
                }
            }
        }
        deserializer.deserialize_any(TypeVisitor)
    }
}

/// `stats.MetricDefinition`: a custom metric.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricDefinition {
    /// Name without the prefix.
    pub name: String,
    /// Integer expression recorded per request (`1` counts requests).
    pub value: String,
    /// Counter (default), gauge or histogram.
    #[serde(default, rename = "type")]
    pub metric_type: MetricType,
}

/// `stats.PluginConfig.MetadataMode`: only the local node's metadata is supported.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub enum MetadataMode {
    /// Node information from Envoy's local node metadata (the default).
    #[serde(rename = "LOCAL_NODE_METADATA_MODE")]
    LocalNode,
    /// Refused: needs control-plane host metadata.
    #[serde(rename = "UPSTREAM_HOST_METADATA_MODE")]
    UpstreamHost,
    /// Refused: needs control-plane cluster metadata.
    #[serde(rename = "CLUSTER_METADATA_MODE")]
    Cluster,
}

/// Proxy log level of access-log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogLevel {
    /// `trace`.
    Trace,
    /// `debug`.
    Debug,
    /// `info` (the default).
    #[default]
    Info,
    /// `warn`.
    Warn,
    /// `error`.
    Error,
    /// `critical`.
    Critical,
}

impl<'de> Deserialize<'de> for AccessLogLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.to_ascii_lowercase().as_str() {
            "trace" => Ok(AccessLogLevel::Trace),
            "debug" => Ok(AccessLogLevel::Debug),
            "info" => Ok(AccessLogLevel::Info),
            "warn" | "warning" => Ok(AccessLogLevel::Warn),
            "error" => Ok(AccessLogLevel::Error),
            "critical" => Ok(AccessLogLevel::Critical),
            _ => Err(de::Error::invalid_value(
                de::Unexpected::Str(&text),
                &"one of \"TRACE\", \"DEBUG\", \"INFO\", \"WARN\", \"ERROR\", \"CRITICAL\"",
            )),
        }
    }
}

/// The access log (a wasmesh addition): one JSON line per request through the proxy's log.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// Log level of the lines (default `INFO`).
    #[serde(default)]
    pub log_level: AccessLogLevel,
    /// Fraction of requests logged (default: all). Sampling follows `x-request-id` like Envoy's
    /// `runtime_filter`, so every proxy on a request's path makes the same choice.
    #[serde(default)]
    pub sampling: Option<FractionalPercent>,
    /// Log every request with a 5xx status or response flags, whatever the sampling.
    #[serde(default)]
    pub always_log_errors: bool,
    /// Extra fields: name to expression (overrides a standard field of the same name).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Standard fields left out.
    #[serde(default)]
    pub omit_fields: Vec<String>,
}

/// Fields of every access-log line (Istio's default JSON access log).
pub const ACCESS_LOG_FIELDS: &[&str] = &[
    "authority",
    "bytes_received",
    "bytes_sent",
    "connection_termination_details",
    "downstream_local_address",
    "downstream_remote_address",
    "duration",
    "method",
    "path",
    "protocol",
    "request_id",
    "requested_server_name",
    "response_code",
    "response_code_details",
    "response_flags",
    "route_name",
    "start_time",
    "traceparent",
    "upstream_cluster",
    "upstream_host",
    "upstream_local_address",
    "upstream_service_time",
    "upstream_transport_failure_reason",
    "user_agent",
    "x_b3_traceid",
    "x_forwarded_for",
];

fn default_stat_prefix() -> String {
    "istio".to_string()
}

fn default_peer_cache_size() -> i64 {
    500
}

fn default_true() -> bool {
    true
}

/// The plugin configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Logs every recorded series at `debug` level.
    #[serde(default)]
    pub debug: bool,
    /// Decoded peer metadata kept for reuse (per worker); 0 or negative disables the cache.
    #[serde(default = "default_peer_cache_size", deserialize_with = "proto::int64")]
    pub max_peer_cache_size: i64,
    /// Prefix of metric names (`istio` gives `istio_requests_total`).
    #[serde(default = "default_stat_prefix")]
    pub stat_prefix: String,
    /// Separator between dimensions in stat names; only the default `;.;` is supported.
    #[serde(default)]
    pub field_separator: Option<String>,
    /// Separator between a dimension and its value; only the default `=.=` is supported.
    #[serde(default)]
    pub value_separator: Option<String>,
    /// Do not use the `Host` header as the destination service when it is otherwise unknown.
    #[serde(default)]
    pub disable_host_header_fallback: bool,
    /// TCP metrics are not supported (this is an HTTP filter): refused when set.
    #[serde(default)]
    pub tcp_reporting_duration: Option<serde_json::Value>,
    /// Dimension overrides.
    #[serde(default)]
    pub metrics: Vec<MetricConfig>,
    /// Custom metrics.
    #[serde(default)]
    pub definitions: Vec<MetricDefinition>,
    /// Where workload information comes from; only `LOCAL_NODE_METADATA_MODE`.
    #[serde(default)]
    pub metadata_mode: Option<MetadataMode>,
    /// Send the local workload's metadata to the peer and strip the peer's metadata headers
    /// after reading them (Istio's metadata exchange). Default true.
    #[serde(default = "default_true")]
    pub exchange_peer_metadata: bool,
    /// JSON access log; none when absent.
    #[serde(default)]
    pub access_log: Option<AccessLogConfig>,
}

/// Prometheus label and metric names: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_prometheus_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Istio's standard dimensions, every one read from its standard source.
fn standard_tags() -> Vec<(String, TagSource)> {
    STANDARD_DIMENSIONS
        .iter()
        .enumerate()
        .map(|(index, name)| ((*name).to_string(), TagSource::Standard(index)))
        .collect()
}

fn standard_families() -> Vec<MetricFamily> {
    let tags = standard_tags();
    let family = |name: &str, kind, value, grpc_only| MetricFamily {
        name: name.to_string(),
        kind,
        value,
        grpc_only,
        tags: tags.clone(),
    };
    vec![
        family(
            "requests_total",
            MetricKind::Counter,
            ValueSource::One,
            false,
        ),
        family(
            "request_duration_milliseconds",
            MetricKind::Histogram,
            ValueSource::DurationMillis,
            false,
        ),
        family(
            "request_bytes",
            MetricKind::Histogram,
            ValueSource::RequestBytes,
            false,
        ),
        family(
            "response_bytes",
            MetricKind::Histogram,
            ValueSource::ResponseBytes,
            false,
        ),
        family(
            "request_messages_total",
            MetricKind::Counter,
            ValueSource::RequestMessages,
            true,
        ),
        family(
            "response_messages_total",
            MetricKind::Counter,
            ValueSource::ResponseMessages,
            true,
        ),
    ]
}

fn expression(path: &str, text: &str) -> Result<Expr, ConfigError> {
    Expr::parse(text).map_err(|message| ConfigError::new(path, message))
}

impl Config {
    /// The metrics to record, with every override applied (Istio's order: definitions add or
    /// replace metrics, then each `metrics` entry removes, then adds or overrides dimensions,
    /// or drops). Errors name the JSON path of the offending field.
    pub fn families(&self) -> Result<Vec<MetricFamily>, ConfigError> {
        let mut families = standard_families();
        let default_tags = standard_tags();
        for (index, definition) in self.definitions.iter().enumerate() {
            let path = format!("definitions[{index}]");
            if !is_prometheus_name(&definition.name) {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    format!(
                        "`{}` is not a valid metric name ([a-zA-Z_][a-zA-Z0-9_]*)",
                        definition.name
                    ),
                ));
            }
            let value = expression(&format!("{path}.value"), &definition.value)?;
            if !value.is_integer() {
                return Err(ConfigError::new(
                    format!("{path}.value"),
                    format!(
                        "`{}` is not an integer expression (use an integer literal or an integer \
                         attribute such as request.total_size)",
                        definition.value
                    ),
                ));
            }
            let kind = match definition.metric_type {
                MetricType::Counter => MetricKind::Counter,
                MetricType::Gauge => MetricKind::Gauge,
                MetricType::Histogram => MetricKind::Histogram,
            };
            let family = MetricFamily {
                name: definition.name.clone(),
                kind,
                value: ValueSource::Expression(value),
                grpc_only: false,
                tags: default_tags.clone(),
            };
            match families.iter_mut().find(|f| f.name == definition.name) {
                Some(existing) => *existing = family,
                None => families.push(family),
            }
        }
        let mut dropped = BTreeSet::new();
        for (index, metric) in self.metrics.iter().enumerate() {
            let path = format!("metrics[{index}]");
            if !metric.match_.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.match"),
                    "conditional overrides are not supported (Istio does not implement them \
                     either)",
                ));
            }
            if !metric.name.is_empty() && !families.iter().any(|f| f.name == metric.name) {
                let known: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    format!(
                        "no metric `{}` (known: {}; names are given without the stat prefix)",
                        metric.name,
                        known.join(", ")
                    ),
                ));
            }
            let mut overrides = Vec::new();
            for (tag, text) in &metric.dimensions {
                let tag_path = format!("{path}.dimensions.{tag}");
                if !is_prometheus_name(tag) || tag == "le" {
                    return Err(ConfigError::new(
                        tag_path,
                        format!("`{tag}` is not a valid Prometheus label name"),
                    ));
                }
                overrides.push((tag.clone(), expression(&tag_path, text)?));
            }
            for (position, tag) in metric.tags_to_remove.iter().enumerate() {
                let declared = STANDARD_DIMENSIONS.contains(&tag.as_str())
                    || self
                        .metrics
                        .iter()
                        .any(|other| other.dimensions.contains_key(tag));
                if !declared {
                    return Err(ConfigError::new(
                        format!("{path}.tags_to_remove[{position}]"),
                        format!("no dimension `{tag}` to remove"),
                    ));
                }
            }
            for family in families
                .iter_mut()
                .filter(|f| metric.name.is_empty() || f.name == metric.name)
            {
                if metric.drop {
                    dropped.insert(family.name.clone());
                }
                family
                    .tags
                    .retain(|(name, _)| !metric.tags_to_remove.contains(name));
                for (tag, expr) in &overrides {
                    let source = TagSource::Expression(expr.clone());
                    match family.tags.iter_mut().find(|(name, _)| name == tag) {
                        Some(existing) => existing.1 = source,
                        None => family.tags.push((tag.clone(), source)),
                    }
                }
            }
        }
        families.retain(|family| !dropped.contains(&family.name));
        Ok(families)
    }

    /// Every dimension name any metric uses (for the Envoy `stats_tags` to configure).
    pub fn dimension_names(&self) -> Result<Vec<String>, ConfigError> {
        let mut names: Vec<String> = STANDARD_DIMENSIONS
            .iter()
            .map(|name| (*name).to_string())
            .collect();
        for family in self.families()? {
            for (name, _) in family.tags {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.stat_prefix.is_empty() && !is_prometheus_name(&self.stat_prefix) {
            return Err(ConfigError::new(
                "stat_prefix",
                format!(
                    "`{}` is not a valid Prometheus name prefix ([a-zA-Z_][a-zA-Z0-9_]*)",
                    self.stat_prefix
                ),
            ));
        }
        for (field, value, default) in [
            ("field_separator", &self.field_separator, FIELD_SEPARATOR),
            ("value_separator", &self.value_separator, VALUE_SEPARATOR),
        ] {
            if value.as_deref().is_some_and(|value| value != default) {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "only the default `{default}` is supported (the Envoy stats_tags \
                         shipped with this filter extract dimensions with it)"
                    ),
                ));
            }
        }
        if self.tcp_reporting_duration.is_some() {
            return Err(ConfigError::new(
                "tcp_reporting_duration",
                "TCP metrics are not supported: this is an HTTP filter",
            ));
        }
        if let Some(mode) = &self.metadata_mode {
            if *mode != MetadataMode::LocalNode {
                return Err(ConfigError::new(
                    "metadata_mode",
                    "only LOCAL_NODE_METADATA_MODE is supported (workload metadata comes from \
                     the local node and the peer metadata exchange)",
                ));
            }
        }
        self.families()?;
        if let Some(access_log) = &self.access_log {
            for (name, text) in &access_log.fields {
                let path = format!("access_log.fields.{name}");
                if name.is_empty() {
                    return Err(ConfigError::new(path, "field names must not be empty"));
                }
                expression(&path, text)?;
            }
            for (index, name) in access_log.omit_fields.iter().enumerate() {
                if !ACCESS_LOG_FIELDS.contains(&name.as_str()) {
                    return Err(ConfigError::new(
                        format!("access_log.omit_fields[{index}]"),
                        format!(
                            "no standard field `{name}` (known: {})",
                            ACCESS_LOG_FIELDS.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Separator between dimensions in stat names.
pub const FIELD_SEPARATOR: &str = ";.;";
/// Separator between a dimension's name and its value in stat names.
pub const VALUE_SEPARATOR: &str = "=.=";

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_sdk::config::load;

    fn families(json: &str) -> Vec<MetricFamily> {
        load::<Config>(json.as_bytes()).unwrap().families().unwrap()
    }

    fn error(json: &str) -> String {
        load::<Config>(json.as_bytes()).unwrap_err().to_string()
    }

    fn tag_names(family: &MetricFamily) -> Vec<&str> {
        family.tags.iter().map(|(name, _)| name.as_str()).collect()
    }

    #[test]
    fn defaults_are_istio_standard_metrics_with_every_standard_dimension() {
        let config = load::<Config>(b"").unwrap();
        assert_eq!(config.stat_prefix, "istio");
        assert_eq!(config.max_peer_cache_size, 500);
        assert!(config.exchange_peer_metadata);
        let families = config.families().unwrap();
        let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "requests_total",
                "request_duration_milliseconds",
                "request_bytes",
                "response_bytes",
                "request_messages_total",
                "response_messages_total"
            ]
        );
        for family in &families {
            assert_eq!(tag_names(family), STANDARD_DIMENSIONS);
        }
    }

    #[test]
    fn overrides_add_replace_remove_and_drop_like_istio() {
        let families = families(
            r#"{
              "metrics": [
                {"dimensions": {"request_host": "request.host", "response_code": "'fixed'"}},
                {"name": "requests_total", "tags_to_remove": ["source_principal", "request_host"]},
                {"name": "request_bytes", "drop": true}
              ],
              "definitions": [{"name": "custom_count", "value": "1"},
                              {"name": "body_sizes", "value": "request.size", "type": "HISTOGRAM"}]
            }"#,
        );
        let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        assert!(!names.contains(&"request_bytes"));
        let requests = &families[0];
        assert!(!tag_names(requests).contains(&"source_principal"));
        assert!(!tag_names(requests).contains(&"request_host"));
        let response_code = requests
            .tags
            .iter()
            .find(|(name, _)| name == "response_code")
            .unwrap();
        assert_eq!(
            response_code.1,
            TagSource::Expression(Expr::Text("fixed".into()))
        );
        let custom = families.iter().find(|f| f.name == "custom_count").unwrap();
        assert_eq!(custom.kind, MetricKind::Counter);
        assert_eq!(tag_names(custom).last(), Some(&"request_host"));
        let sizes = families.iter().find(|f| f.name == "body_sizes").unwrap();
        assert_eq!(sizes.kind, MetricKind::Histogram);
    }

    #[test]
    fn bad_configuration_names_the_json_path() {
        assert_eq!(
            error(r#"{"metrics": [{"dimensions": {"host": "request.host =="}}]}"#),
            "metrics[0].dimensions.host: unsupported expression syntax (operators and functions \
             other than string() are not supported) at position 13: `==`"
        );
        assert!(error(r#"{"metrics": [{"name": "requests_totl"}]}"#)
            .starts_with("metrics[0].name: no metric `requests_totl`"));
        assert_eq!(
            error(r#"{"metrics": [{"tags_to_remove": ["nope"]}]}"#),
            "metrics[0].tags_to_remove[0]: no dimension `nope` to remove"
        );
        assert!(
            error(r#"{"metrics": [{"dimensions": {"bad-name": "'x'"}}]}"#)
                .starts_with("metrics[0].dimensions.bad-name: `bad-name` is not a valid")
        );
        assert!(error(r#"{"metrics": [{"match": "request.host == 'a'"}]}"#)
            .starts_with("metrics[0].match: conditional overrides are not supported"));
        assert!(
            error(r#"{"definitions": [{"name": "x", "value": "request.host"}]}"#)
                .starts_with("definitions[0].value: `request.host` is not an integer expression")
        );
        assert!(error(r#"{"definitions": [{"name": "x-y", "value": "1"}]}"#)
            .starts_with("definitions[0].name:"));
        assert!(
            error(r#"{"definitions": [{"name": "x", "value": "1", "type": "SUMMARY"}]}"#)
                .starts_with("definitions[0].type: invalid value")
        );
        assert!(error(r#"{"tcp_reporting_duration": "15s"}"#)
            .starts_with("tcp_reporting_duration: TCP metrics are not supported"));
        assert!(error(r#"{"field_separator": ";;"}"#)
            .starts_with("field_separator: only the default `;.;` is supported"));
        assert!(error(r#"{"metadata_mode": "CLUSTER_METADATA_MODE"}"#)
            .starts_with("metadata_mode: only LOCAL_NODE_METADATA_MODE"));
        assert!(error(r#"{"stat_prefix": "istio-x"}"#).starts_with("stat_prefix:"));
        assert_eq!(
            error(r#"{"rotation_interval": "1s"}"#),
            "rotation_interval: unknown field `rotation_interval`, expected one of `debug`, `max_peer_cache_size`, \
             `stat_prefix`, `field_separator`, `value_separator`, `disable_host_header_fallback`, \
             `tcp_reporting_duration`, `metrics`, `definitions`, `metadata_mode`, \
             `exchange_peer_metadata`, `access_log`"
        );
        assert!(error(r#"{"access_log": {"log_level": "LOUD"}}"#)
            .starts_with("access_log.log_level: invalid value"));
        assert!(error(r#"{"access_log": {"omit_fields": ["nope"]}}"#)
            .starts_with("access_log.omit_fields[0]: no standard field `nope`"));
        assert!(
            error(r#"{"access_log": {"fields": {"who": "request.headers["}}}"#)
                .starts_with("access_log.fields.who:")
        );
    }

    #[test]
    fn accepted_istio_fields_keep_their_defaults() {
        let config = load::<Config>(
            br#"{"debug": true, "max_peer_cache_size": "-1", "field_separator": ";.;",
                 "value_separator": "=.=", "metadata_mode": "LOCAL_NODE_METADATA_MODE",
                 "stat_prefix": "", "definitions": [{"name": "g", "value": "7", "type": 1}]}"#,
        )
        .unwrap();
        assert_eq!(config.max_peer_cache_size, -1);
        let families = config.families().unwrap();
        assert_eq!(families.last().unwrap().kind, MetricKind::Gauge);
        let names = load::<Config>(
            br#"{"metrics": [{"name": "requests_total", "dimensions": {"user": "request.headers['x-user']"}}]}"#,
        )
        .unwrap()
        .dimension_names()
        .unwrap();
        assert_eq!(names.len(), STANDARD_DIMENSIONS.len() + 1);
        assert_eq!(names.last().map(String::as_str), Some("user"));
    }
}
