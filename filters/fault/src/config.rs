//! The plugin configuration: Envoy's `envoy.extensions.filters.http.fault.v3.HTTPFault` in
//! proto3-JSON form, Istio's `VirtualService.http[].fault` as a second input, and a few wasmesh
//! extensions (stat prefix, tick interval, seeded randomness, control service).
//!
//! Everything is checked when the configuration loads; the result is an [`Experiment`] (what to
//! inject, and to which requests) plus the settings of the filter itself. Envoy fields this
//! filter cannot honour in proxy-wasm are refused with a message saying why, never ignored.

use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use wasmesh_sdk::config::{proto, validate_field, ConfigError, Validate};
use wasmesh_sdk::matcher::{Denominator, FractionalPercent, HeaderMatcher, Percent};

/// Default period of the root context's tick, which resumes delayed requests.
pub const DEFAULT_TICK_INTERVAL: Duration = Duration::from_millis(10);
/// Default period between two polls of the control service.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default timeout of one poll of the control service.
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_millis(500);
/// Largest gRPC status a proxy-wasm local reply can carry (`UNAUTHENTICATED`); Envoy drops others.
pub const MAX_GRPC_STATUS: u32 = 16;

/// The plugin configuration (see README.md for every field).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Envoy `delay` (`envoy.extensions.filters.common.fault.v3.FaultDelay`).
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    /// Envoy `abort` (`FaultAbort`).
    #[serde(default)]
    pub abort: Option<FaultAbort>,
    /// Envoy `upstream_cluster`: only requests routed to this cluster get faults.
    #[serde(default)]
    pub upstream_cluster: String,
    /// Envoy `headers`: every matcher must match.
    #[serde(default)]
    pub headers: Vec<HeaderMatcher>,
    /// Envoy `downstream_nodes`: only requests whose `x-envoy-downstream-service-node` is listed.
    #[serde(default)]
    pub downstream_nodes: Vec<String>,
    /// Envoy `max_active_faults`, enforced across every worker VM through shared data.
    #[serde(default, deserialize_with = "proto::optional_uint32")]
    pub max_active_faults: Option<u32>,
    /// Envoy `disable_downstream_cluster_stats`.
    #[serde(default)]
    pub disable_downstream_cluster_stats: bool,
    /// Istio `VirtualService.http[].fault`, as an alternative to `delay`/`abort`.
    #[serde(default)]
    pub fault: Option<IstioFault>,
    /// wasmesh: prepended to stat names (`<stat_prefix>.fault.delays_injected`).
    #[serde(default)]
    pub stat_prefix: String,
    /// wasmesh: period of the tick that resumes delayed requests (delay accuracy).
    #[serde(
        default = "default_tick_interval",
        deserialize_with = "proto::duration"
    )]
    pub tick_interval: Duration,
    /// wasmesh: seed of the fault dice, for reproducible runs. Unset: real randomness.
    #[serde(default)]
    pub random_seed: Option<u64>,
    /// wasmesh: a control service polled for the current experiment (and the kill switch).
    #[serde(default)]
    pub control: Option<ControlConfig>,

    // Envoy fields proxy-wasm cannot honour: present means refused (see `Refused`).
    #[serde(default)]
    #[allow(dead_code)] // Deserialized only to be refused.
    response_rate_limit: Refused<ResponseRateLimitReason>,
    #[serde(default)]
    #[allow(dead_code)] // Deserialized only to be refused.
    delay_percent_runtime: Refused<RuntimeReason>,
    #[serde(default)]
    #[allow(dead_code)] // Deserialized only to be refused.
    abort_percent_runtime: Refused<RuntimeReason>,
    #[serde(default)]
    #[allow(dead_code)] // Deserialized only to be refused.
    delay_duration_runtime: Refused<RuntimeReason>,
    #[serde(default)]
    #[allow(dead_code)] // Deserialized only to be refused.
    abort_http_status_runtime: Refused<RuntimeReason>,
    #[serde(default)]
    #[allow(dead_code)] // Deserialized only to be refused.
    abort_grpc_status_runtime: Refused<RuntimeReason>,
    #[serde(default)]
    #[allow(dead_code)] // Deserialized only to be refused.
    max_active_faults_runtime: Refused<RuntimeReason>,
    #[serde(default)]
    #[allow(dead_code)] // Deserialized only to be refused.
    response_rate_limit_percent_runtime: Refused<RuntimeReason>,
    #[serde(default)]
    #[allow(dead_code)] // Deserialized only to be refused.
    filter_metadata: Refused<FilterMetadataReason>,
}

fn default_tick_interval() -> Duration {
    DEFAULT_TICK_INTERVAL
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.fault.is_some() && (self.delay.is_some() || self.abort.is_some()) {
            return Err(ConfigError::new(
                "fault",
                "Istio's `fault` cannot be combined with Envoy's `delay`/`abort`: use one shape",
            ));
        }
        validate_field("delay", &self.delay)?;
        validate_field("abort", &self.abort)?;
        validate_field("fault", &self.fault)?;
        validate_field("control", &self.control)?;
        if self.tick_interval < Duration::from_millis(1) {
            return Err(ConfigError::new(
                "tick_interval",
                "must be at least 1ms (proxy-wasm ticks have millisecond resolution)",
            ));
        }
        if self.tick_interval > Duration::from_secs(60) {
            return Err(ConfigError::new("tick_interval", "must be at most 60s"));
        }
        Ok(())
    }
}

impl Config {
    /// The experiment this configuration describes (possibly empty: no fault).
    pub fn experiment(&self) -> Experiment {
        Experiment::build(
            self.delay.as_ref(),
            self.abort.as_ref(),
            self.fault.as_ref(),
            &self.headers,
            &self.upstream_cluster,
            &self.downstream_nodes,
        )
    }

    /// Whether the filter needs the root context's tick (delays to resume, a control service
    /// to poll, or a shared active-fault lease to keep fresh).
    pub fn needs_tick(&self) -> bool {
        let static_delay =
            self.delay.is_some() || self.fault.as_ref().is_some_and(|f| f.delay.is_some());
        static_delay || self.control.is_some() || self.max_active_faults.is_some()
    }
}

/// An empty message (`{}`), e.g. `header_delay` / `header_abort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `envoy.extensions.filters.common.fault.v3.FaultDelay`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// A fixed delay (proto3 `Duration`, e.g. `"3s"`).
    #[serde(default, deserialize_with = "proto::optional_duration")]
    pub fixed_delay: Option<Duration>,
    /// The delay comes from the `x-envoy-fault-delay-request` header (milliseconds).
    #[serde(default)]
    pub header_delay: Option<Empty>,
    /// Share of requests delayed; unset means 0%, as in Envoy.
    #[serde(default)]
    pub percentage: Option<FractionalPercent>,
}

impl Validate for FaultDelay {
    fn validate(&self) -> Result<(), ConfigError> {
        match (self.fixed_delay, self.header_delay) {
            (Some(_), Some(_)) => Err(ConfigError::root(
                "only one of `fixed_delay` and `header_delay` may be set",
            )),
            (None, None) => Err(ConfigError::root(
                "one of `fixed_delay` or `header_delay` must be set",
            )),
            (Some(delay), None) if delay.is_zero() => {
                Err(ConfigError::new("fixed_delay", "must be greater than 0s"))
            }
            _ => Ok(()),
        }
    }
}

/// `envoy.extensions.filters.http.fault.v3.FaultAbort`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status of the abort reply, 200-599.
    #[serde(default, deserialize_with = "proto::optional_uint32")]
    pub http_status: Option<u32>,
    /// gRPC status of the abort reply (HTTP 200 with `grpc-status`).
    #[serde(default, deserialize_with = "proto::optional_uint32")]
    pub grpc_status: Option<u32>,
    /// The status comes from `x-envoy-fault-abort-request` / `-abort-grpc-request`.
    #[serde(default)]
    pub header_abort: Option<Empty>,
    /// Share of requests aborted; unset means 0%, as in Envoy.
    #[serde(default)]
    pub percentage: Option<FractionalPercent>,
}

impl Validate for FaultAbort {
    fn validate(&self) -> Result<(), ConfigError> {
        let set = usize::from(self.http_status.is_some())
            + usize::from(self.grpc_status.is_some())
            + usize::from(self.header_abort.is_some());
        if set != 1 {
            return Err(ConfigError::root(
                "exactly one of `http_status`, `grpc_status` or `header_abort` must be set",
            ));
        }
        if let Some(status) = self.http_status {
            if !(200..600).contains(&status) {
                return Err(ConfigError::new(
                    "http_status",
                    format!("must be in [200, 600), got {status}"),
                ));
            }
        }
        if let Some(status) = self.grpc_status {
            if status > MAX_GRPC_STATUS {
                return Err(ConfigError::new(
                    "grpc_status",
                    format!(
                        "must be a gRPC status code 0-{MAX_GRPC_STATUS} (proxy-wasm local replies cannot carry others), got {status}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Istio `HTTPFaultInjection`: `{"delay": {...}, "abort": {...}}` (camelCase, as in a
/// `VirtualService`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IstioFault {
    /// `fault.delay`.
    #[serde(default)]
    pub delay: Option<IstioDelay>,
    /// `fault.abort`.
    #[serde(default)]
    pub abort: Option<IstioAbort>,
}

impl Validate for IstioFault {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_field("delay", &self.delay)?;
        validate_field("abort", &self.abort)
    }
}

/// Istio `HTTPFaultInjection.Delay`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IstioDelay {
    /// `fixedDelay` (e.g. `"3s"`), at least 1ms as Istio validates.
    #[serde(default, deserialize_with = "proto::optional_duration")]
    pub fixed_delay: Option<Duration>,
    /// `percentage.value` (0-100, a double).
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// Deprecated integer `percent` (0-100), used when `percentage` is unset.
    #[serde(default)]
    pub percent: Option<i32>,
    #[serde(default)]
    #[allow(dead_code)] // Deserialized only to be refused.
    exponential_delay: Refused<ExponentialDelayReason>,
}

impl Validate for IstioDelay {
    fn validate(&self) -> Result<(), ConfigError> {
        match self.fixed_delay {
            None => return Err(ConfigError::new("fixedDelay", "must be set")),
            Some(delay) if delay < Duration::from_millis(1) => {
                return Err(ConfigError::new("fixedDelay", "must be at least 1ms"));
            }
            Some(_) => {}
        }
        if let Some(percent) = self.percent {
            if !(0..=100).contains(&percent) {
                return Err(ConfigError::new(
                    "percent",
                    format!("must be between 0 and 100, got {percent}"),
                ));
            }
        }
        Ok(())
    }
}

/// Istio `HTTPFaultInjection.Abort`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IstioAbort {
    /// `httpStatus`, 200-599.
    #[serde(default)]
    pub http_status: Option<i64>,
    /// `grpcStatus`, a code name such as `"UNAVAILABLE"`.
    #[serde(default)]
    pub grpc_status: Option<String>,
    /// `percentage.value` (0-100, a double).
    #[serde(default)]
    pub percentage: Option<Percent>,
    #[serde(default)]
    #[allow(dead_code)] // Deserialized only to be refused.
    http2_error: Refused<Http2ErrorReason>,
}

impl Validate for IstioAbort {
    fn validate(&self) -> Result<(), ConfigError> {
        match (self.http_status, &self.grpc_status) {
            (Some(_), Some(_)) => Err(ConfigError::root(
                "only one of `httpStatus` and `grpcStatus` may be set",
            )),
            (None, None) => Err(ConfigError::root(
                "one of `httpStatus` or `grpcStatus` must be set",
            )),
            (Some(status), None) if !(200..600).contains(&status) => Err(ConfigError::new(
                "httpStatus",
                format!("must be in [200, 600), got {status}"),
            )),
            (None, Some(name)) if grpc_code_by_name(name).is_none() => Err(ConfigError::new(
                "grpcStatus",
                format!("unknown gRPC status {name:?}: use a code name such as \"UNAVAILABLE\""),
            )),
            _ => Ok(()),
        }
    }
}

/// gRPC status codes by the names Istio accepts in `grpcStatus`.
pub fn grpc_code_by_name(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .iter()
        .position(|candidate| *candidate == name)
        .and_then(|index| u32::try_from(index).ok())
}

/// wasmesh extension: a service polled for the current experiment.
///
/// Every worker polls `GET <path>` on `cluster` every `poll_interval`. A `200` answer with a
/// JSON [`ControlDocument`] sets the experiment; anything else (other status, bad JSON,
/// timeout, unreachable cluster) disables every fault until the next good answer, and so does
/// the time before the first answer: the filter fails safe.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Envoy cluster of the control service.
    pub cluster: String,
    /// `:authority` of the poll (default: the cluster name).
    #[serde(default)]
    pub authority: String,
    /// `:path` of the poll, e.g. `/experiments/checkout`.
    pub path: String,
    /// Period between two polls.
    #[serde(
        default = "default_poll_interval",
        deserialize_with = "proto::duration"
    )]
    pub poll_interval: Duration,
    /// Timeout of one poll.
    #[serde(default = "default_poll_timeout", deserialize_with = "proto::duration")]
    pub timeout: Duration,
}

fn default_poll_interval() -> Duration {
    DEFAULT_POLL_INTERVAL
}

fn default_poll_timeout() -> Duration {
    DEFAULT_POLL_TIMEOUT
}

impl Validate for ControlConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster.is_empty() {
            return Err(ConfigError::new("cluster", "must not be empty"));
        }
        if !self.path.starts_with('/') {
            return Err(ConfigError::new("path", "must start with '/'"));
        }
        if self.poll_interval < Duration::from_millis(1) {
            return Err(ConfigError::new("poll_interval", "must be at least 1ms"));
        }
        if self.timeout < Duration::from_millis(1) {
            return Err(ConfigError::new("timeout", "must be at least 1ms"));
        }
        if self.timeout.as_millis() > u128::from(u32::MAX) {
            return Err(ConfigError::new("timeout", "is too long"));
        }
        Ok(())
    }
}

impl ControlConfig {
    /// The `:authority` polls carry.
    pub fn authority(&self) -> &str {
        if self.authority.is_empty() {
            &self.cluster
        } else {
            &self.authority
        }
    }
}

/// What the control service answers: `{"enabled": false}` is the kill switch;
/// `{"enabled": true}` runs the plugin configuration's experiment; with `experiment`, that
/// experiment replaces it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlDocument {
    /// Whether faults are injected at all.
    pub enabled: bool,
    /// The experiment to run instead of the configured one.
    #[serde(default)]
    pub experiment: Option<ExperimentConfig>,
}

impl Validate for ControlDocument {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_field("experiment", &self.experiment)
    }
}

/// An experiment as the control service describes it: the request-selecting and fault fields
/// of [`Config`], in the same shapes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// As [`Config::delay`].
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    /// As [`Config::abort`].
    #[serde(default)]
    pub abort: Option<FaultAbort>,
    /// As [`Config::fault`].
    #[serde(default)]
    pub fault: Option<IstioFault>,
    /// As [`Config::headers`].
    #[serde(default)]
    pub headers: Vec<HeaderMatcher>,
    /// As [`Config::upstream_cluster`].
    #[serde(default)]
    pub upstream_cluster: String,
    /// As [`Config::downstream_nodes`].
    #[serde(default)]
    pub downstream_nodes: Vec<String>,
}

impl Validate for ExperimentConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.fault.is_some() && (self.delay.is_some() || self.abort.is_some()) {
            return Err(ConfigError::new(
                "fault",
                "Istio's `fault` cannot be combined with Envoy's `delay`/`abort`: use one shape",
            ));
        }
        validate_field("delay", &self.delay)?;
        validate_field("abort", &self.abort)?;
        validate_field("fault", &self.fault)
    }
}

impl ExperimentConfig {
    /// The experiment this document describes.
    pub fn experiment(&self) -> Experiment {
        Experiment::build(
            self.delay.as_ref(),
            self.abort.as_ref(),
            self.fault.as_ref(),
            &self.headers,
            &self.upstream_cluster,
            &self.downstream_nodes,
        )
    }
}

/// Where a delay's duration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelaySource {
    /// A fixed delay, in whole milliseconds (Envoy truncates to milliseconds).
    Fixed(u64),
    /// The `x-envoy-fault-delay-request` header.
    Header,
}

/// A configured delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayFault {
    /// Where the duration comes from.
    pub source: DelaySource,
    /// Share of requests delayed.
    pub percentage: FractionalPercent,
}

/// Where an abort's status comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortSource {
    /// A fixed HTTP status.
    Http(u16),
    /// A fixed gRPC status (sent with HTTP 200).
    Grpc(u32),
    /// The `x-envoy-fault-abort-request` / `-abort-grpc-request` headers.
    Header,
}

/// A configured abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortFault {
    /// Where the status comes from.
    pub source: AbortSource,
    /// Share of requests aborted.
    pub percentage: FractionalPercent,
}

/// What to inject, and into which requests: the compiled form of either input shape.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Experiment {
    /// The delay, if any.
    pub delay: Option<DelayFault>,
    /// The abort, if any.
    pub abort: Option<AbortFault>,
    /// Every matcher must match the request headers.
    pub headers: Vec<HeaderMatcher>,
    /// Only requests routed to this cluster (empty: any).
    pub upstream_cluster: String,
    /// Only requests from these downstream nodes (empty: any).
    pub downstream_nodes: BTreeSet<String>,
}

impl Experiment {
    fn build(
        delay: Option<&FaultDelay>,
        abort: Option<&FaultAbort>,
        istio: Option<&IstioFault>,
        headers: &[HeaderMatcher],
        upstream_cluster: &str,
        downstream_nodes: &[String],
    ) -> Experiment {
        let mut experiment = Experiment {
            delay: delay.and_then(envoy_delay),
            abort: abort.and_then(envoy_abort),
            headers: headers.to_vec(),
            upstream_cluster: upstream_cluster.to_string(),
            downstream_nodes: downstream_nodes.iter().cloned().collect(),
        };
        if let Some(istio) = istio {
            experiment.delay = istio.delay.as_ref().and_then(istio_delay);
            experiment.abort = istio.abort.as_ref().and_then(istio_abort);
        }
        experiment
    }

    /// Whether the experiment injects anything at all.
    pub fn is_empty(&self) -> bool {
        self.delay.is_none() && self.abort.is_none()
    }
}

fn envoy_delay(delay: &FaultDelay) -> Option<DelayFault> {
    let source = match (delay.fixed_delay, delay.header_delay) {
        (Some(fixed), _) => DelaySource::Fixed(millis(fixed)),
        (None, Some(_)) => DelaySource::Header,
        (None, None) => return None,
    };
    Some(DelayFault {
        source,
        percentage: delay.percentage.unwrap_or_default(),
    })
}

fn envoy_abort(abort: &FaultAbort) -> Option<AbortFault> {
    let source = if let Some(status) = abort.http_status {
        AbortSource::Http(u16::try_from(status).ok()?)
    } else if let Some(status) = abort.grpc_status {
        AbortSource::Grpc(status)
    } else if abort.header_abort.is_some() {
        AbortSource::Header
    } else {
        return None;
    };
    Some(AbortFault {
        source,
        percentage: abort.percentage.unwrap_or_default(),
    })
}

/// Istio's `translatePercentToFractionalPercent`: `value * 10000` parts per million, truncated.
fn istio_percentage(percent: &Percent) -> FractionalPercent {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let numerator = (percent.value() * 10_000.0) as u32;
    FractionalPercent::new(numerator, Denominator::Million)
}

fn istio_delay(delay: &IstioDelay) -> Option<DelayFault> {
    let fixed = delay.fixed_delay?;
    let percentage = match (&delay.percentage, delay.percent) {
        (Some(percentage), _) => istio_percentage(percentage),
        // Istio falls back to the deprecated integer percent (0 when unset).
        (None, percent) => FractionalPercent::new(
            u32::try_from(percent.unwrap_or(0)).unwrap_or(0),
            Denominator::Hundred,
        ),
    };
    Some(DelayFault {
        source: DelaySource::Fixed(millis(fixed)),
        percentage,
    })
}

fn istio_abort(abort: &IstioAbort) -> Option<AbortFault> {
    let source = match (abort.http_status, &abort.grpc_status) {
        (Some(status), _) => AbortSource::Http(u16::try_from(status).ok()?),
        (None, Some(name)) => AbortSource::Grpc(grpc_code_by_name(name)?),
        (None, None) => return None,
    };
    Some(AbortFault {
        source,
        // Istio leaves Envoy's percentage unset when `percentage` is: 0%.
        percentage: abort
            .percentage
            .as_ref()
            .map(istio_percentage)
            .unwrap_or_default(),
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Why a refused field is refused (the message of its config error).
pub trait RefusalReason {
    /// The message.
    const MESSAGE: &'static str;
    /// Whether an empty string counts as "unset" (proto3 string fields).
    const EMPTY_STRING_IS_UNSET: bool = false;
}

/// `response_rate_limit`.
#[derive(Debug, Clone, Copy)]
pub struct ResponseRateLimitReason;
impl RefusalReason for ResponseRateLimitReason {
    const MESSAGE: &'static str = "is not supported by the wasm fault filter: proxy-wasm cannot release a buffered response body a little at a time (continuing a paused body releases all of it), so bandwidth throttling would turn into bursts and trip Envoy's buffer limits; use Envoy's native fault filter for response_rate_limit";
}

/// `*_runtime` keys.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeReason;
impl RefusalReason for RuntimeReason {
    const MESSAGE: &'static str = "is not supported: wasm filters cannot read Envoy's runtime, so a runtime override would never apply; remove it (the configured values are used, as in Envoy when the runtime key is absent), or use `control` to change experiments live";
    const EMPTY_STRING_IS_UNSET: bool = true;
}

/// `filter_metadata`.
#[derive(Debug, Clone, Copy)]
pub struct FilterMetadataReason;
impl RefusalReason for FilterMetadataReason {
    const MESSAGE: &'static str = "is not supported: proxy-wasm cannot write dynamic metadata";
}

/// Istio `exponentialDelay`.
#[derive(Debug, Clone, Copy)]
pub struct ExponentialDelayReason;
impl RefusalReason for ExponentialDelayReason {
    const MESSAGE: &'static str =
        "is not supported (Istio does not implement it either): use `fixedDelay`";
}

/// Istio `http2Error`.
#[derive(Debug, Clone, Copy)]
pub struct Http2ErrorReason;
impl RefusalReason for Http2ErrorReason {
    const MESSAGE: &'static str =
        "is not supported: proxy-wasm cannot reset a stream with an HTTP/2 error code; use `httpStatus` or `grpcStatus`";
}

/// A field the filter knows but refuses: absent (or, for proto3 strings, empty) is fine, any
/// other value fails the configuration with `R::MESSAGE` at the field's JSON path.
#[derive(Debug, Clone, Copy)]
pub struct Refused<R>(PhantomData<R>);

impl<R> Default for Refused<R> {
    fn default() -> Self {
        Refused(PhantomData)
    }
}

impl<R> PartialEq for Refused<R> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<'de, R: RefusalReason> Deserialize<'de> for Refused<R> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RefusedVisitor<R>(PhantomData<R>);
        impl<'de, R: RefusalReason> de::Visitor<'de> for RefusedVisitor<R> {
            type Value = Refused<R>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("nothing (this field is not supported)")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Refused<R>, E> {
                Ok(Refused(PhantomData))
            }
            fn visit_none<E: de::Error>(self) -> Result<Refused<R>, E> {
                Ok(Refused(PhantomData))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Refused<R>, E> {
                if R::EMPTY_STRING_IS_UNSET && value.is_empty() {
                    Ok(Refused(PhantomData))
                } else {
                    Err(E::custom(R::MESSAGE))
                }
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Refused<R>, E> {
                Err(E::custom(R::MESSAGE))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Refused<R>, E> {
                Err(E::custom(R::MESSAGE))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Refused<R>, E> {
                Err(E::custom(R::MESSAGE))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Refused<R>, E> {
                Err(E::custom(R::MESSAGE))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Refused<R>, A::Error> {
                Err(de::Error::custom(R::MESSAGE))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Refused<R>, A::Error> {
                Err(de::Error::custom(R::MESSAGE))
            }
        }
        deserializer.deserialize_any(RefusedVisitor(PhantomData))
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
    fn envoy_shape_compiles_to_an_experiment() {
        let config = load::<Config>(
            br#"{
                "delay": {"fixed_delay": "1.5s", "percentage": {"numerator": 10, "denominator": "TEN_THOUSAND"}},
                "abort": {"http_status": 503, "percentage": {"numerator": 25}},
                "upstream_cluster": "checkout",
                "headers": [{"name": "x-chaos", "present_match": true}],
                "downstream_nodes": ["frontend"],
                "max_active_faults": "3"
            }"#,
        )
        .unwrap();
        let experiment = config.experiment();
        assert_eq!(
            experiment.delay,
            Some(DelayFault {
                source: DelaySource::Fixed(1500),
                percentage: FractionalPercent::new(10, Denominator::TenThousand),
            })
        );
        assert_eq!(
            experiment.abort,
            Some(AbortFault {
                source: AbortSource::Http(503),
                percentage: FractionalPercent::new(25, Denominator::Hundred),
            })
        );
        assert_eq!(experiment.upstream_cluster, "checkout");
        assert!(experiment.downstream_nodes.contains("frontend"));
        assert_eq!(experiment.headers.len(), 1);
        assert_eq!(config.max_active_faults, Some(3));
        assert_eq!(config.tick_interval, DEFAULT_TICK_INTERVAL);
        assert!(config.needs_tick());
    }

    #[test]
    fn unset_percentages_mean_zero_as_in_envoy() {
        let config =
            load::<Config>(br#"{"abort": {"grpc_status": 14}, "delay": {"header_delay": {}}}"#)
                .unwrap();
        let experiment = config.experiment();
        let abort = experiment.abort.unwrap();
        assert_eq!(abort.source, AbortSource::Grpc(14));
        assert_eq!(abort.percentage.numerator, 0);
        assert_eq!(experiment.delay.unwrap().source, DelaySource::Header);
    }

    #[test]
    fn fixed_delay_is_truncated_to_milliseconds() {
        let config = load::<Config>(br#"{"delay": {"fixed_delay": "0.0019s"}}"#).unwrap();
        assert_eq!(
            config.experiment().delay.unwrap().source,
            DelaySource::Fixed(1)
        );
    }

    #[test]
    fn istio_shape_translates_like_pilot() {
        let config = load::<Config>(
            br#"{"fault": {
                "delay": {"fixedDelay": "3s", "percentage": {"value": 10}},
                "abort": {"httpStatus": 503, "percentage": {"value": 0.5}}
            }}"#,
        )
        .unwrap();
        let experiment = config.experiment();
        assert_eq!(
            experiment.delay,
            Some(DelayFault {
                source: DelaySource::Fixed(3000),
                percentage: FractionalPercent::new(100_000, Denominator::Million),
            })
        );
        assert_eq!(
            experiment.abort.unwrap().percentage,
            FractionalPercent::new(5_000, Denominator::Million)
        );

        let grpc = load::<Config>(
            br#"{"fault": {"abort": {"grpcStatus": "UNAVAILABLE"}, "delay": {"fixedDelay": "1s", "percent": 30}}}"#,
        )
        .unwrap()
        .experiment();
        assert_eq!(grpc.abort.unwrap().source, AbortSource::Grpc(14));
        assert_eq!(grpc.abort.unwrap().percentage.numerator, 0);
        assert_eq!(
            grpc.delay.unwrap().percentage,
            FractionalPercent::new(30, Denominator::Hundred)
        );
    }

    #[test]
    fn oneofs_and_ranges_are_enforced_with_paths() {
        let cases = [
            (r#"{"delay": {}}"#, "delay: one of `fixed_delay` or `header_delay` must be set"),
            (
                r#"{"delay": {"fixed_delay": "1s", "header_delay": {}}}"#,
                "delay: only one of `fixed_delay` and `header_delay` may be set",
            ),
            (r#"{"delay": {"fixed_delay": "0s"}}"#, "delay.fixed_delay: must be greater than 0s"),
            (
                r#"{"delay": {"fixed_delay": "100ms"}}"#,
                "delay.fixed_delay: invalid duration \"100ms\": expected seconds with an \"s\" suffix, e.g. \"1.5s\"",
            ),
            (
                r#"{"abort": {"http_status": 503, "header_abort": {}}}"#,
                "abort: exactly one of `http_status`, `grpc_status` or `header_abort` must be set",
            ),
            (r#"{"abort": {"http_status": 600}}"#, "abort.http_status: must be in [200, 600), got 600"),
            (r#"{"abort": {"http_status": 199}}"#, "abort.http_status: must be in [200, 600), got 199"),
            (
                r#"{"abort": {"grpc_status": 17}}"#,
                "abort.grpc_status: must be a gRPC status code 0-16 (proxy-wasm local replies cannot carry others), got 17",
            ),
            (
                r#"{"abort": {"http_status": 503, "percentage": {"numerator": 1, "denominator": "THOUSAND"}}}"#,
                "abort.percentage.denominator: invalid value: string \"THOUSAND\", expected one of \"HUNDRED\", \"TEN_THOUSAND\", \"MILLION\" (or 0, 1, 2)",
            ),
            (r#"{"delay": {"type": "FIXED", "fixed_delay": "1s"}}"#, "delay.type: unknown field `type`, expected one of `fixed_delay`, `header_delay`, `percentage`"),
            (r#"{"headers": [{"name": "a", "prefix_match": ""}]}"#, "headers[0]: `prefix_match` must not be empty"),
            (r#"{"tick_interval": "0.0001s"}"#, "tick_interval: must be at least 1ms (proxy-wasm ticks have millisecond resolution)"),
            (
                r#"{"fault": {"abort": {"httpStatus": 503}}, "abort": {"http_status": 503}}"#,
                "fault: Istio's `fault` cannot be combined with Envoy's `delay`/`abort`: use one shape",
            ),
            (r#"{"fault": {"delay": {"percentage": {"value": 5}}}}"#, "fault.delay.fixedDelay: must be set"),
            (r#"{"fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 101}}}}"#, "fault.delay.percentage: percent value must be between 0 and 100, got 101"),
            (r#"{"fault": {"abort": {"grpcStatus": "14"}}}"#, "fault.abort.grpcStatus: unknown gRPC status \"14\": use a code name such as \"UNAVAILABLE\""),
            (r#"{"fault": {"abort": {"httpStatus": 99}}}"#, "fault.abort.httpStatus: must be in [200, 600), got 99"),
            (r#"{"fault": {"delay": {"fixed_delay": "1s"}}}"#, "fault.delay.fixed_delay: unknown field `fixed_delay`, expected one of `fixedDelay`, `percentage`, `percent`, `exponentialDelay`"),
            (r#"{"control": {"cluster": "", "path": "/x"}}"#, "control.cluster: must not be empty"),
            (r#"{"control": {"cluster": "c", "path": "x"}}"#, "control.path: must start with '/'"),
            (r#"{"unknown": 1}"#, "unknown: unknown field `unknown`"),
        ];
        for (json, expected) in cases {
            let message = error(json);
            assert!(
                message.starts_with(expected),
                "{json}\n  got:      {message}\n  expected: {expected}"
            );
        }
    }

    #[test]
    fn unsupported_envoy_fields_are_refused_with_the_reason() {
        let message = error(
            r#"{"response_rate_limit": {"fixed_limit": {"limit_kbps": 1}, "percentage": {"numerator": 100}}}"#,
        );
        assert!(
            message.starts_with("response_rate_limit: is not supported by the wasm fault filter"),
            "{message}"
        );
        for field in [
            "delay_percent_runtime",
            "abort_percent_runtime",
            "delay_duration_runtime",
            "abort_http_status_runtime",
            "abort_grpc_status_runtime",
            "max_active_faults_runtime",
            "response_rate_limit_percent_runtime",
        ] {
            let message = error(&format!(r#"{{"{field}": "fault.http.x"}}"#));
            assert!(
                message.starts_with(&format!(
                    "{field}: is not supported: wasm filters cannot read Envoy's runtime"
                )),
                "{message}"
            );
            // proto3's default (empty string) is the same as unset.
            assert!(load::<Config>(format!(r#"{{"{field}": ""}}"#).as_bytes()).is_ok());
        }
        assert!(error(r#"{"filter_metadata": {"a": 1}}"#).starts_with(
            "filter_metadata: is not supported: proxy-wasm cannot write dynamic metadata"
        ));
        assert!(error(r#"{"fault": {"abort": {"http2Error": "CANCEL"}}}"#)
            .starts_with("fault.abort.http2Error: is not supported"));
        assert!(error(r#"{"fault": {"delay": {"exponentialDelay": "1s"}}}"#)
            .starts_with("fault.delay.exponentialDelay: is not supported"));
    }

    #[test]
    fn empty_config_injects_nothing_and_needs_no_tick() {
        let config = load::<Config>(b"").unwrap();
        assert!(config.experiment().is_empty());
        assert!(!config.needs_tick());
        assert!(!config.disable_downstream_cluster_stats);
    }

    #[test]
    fn control_defaults_and_documents() {
        let config =
            load::<Config>(br#"{"control": {"cluster": "chaos", "path": "/exp"}}"#).unwrap();
        let control = config.control.clone().unwrap();
        assert_eq!(control.authority(), "chaos");
        assert_eq!(control.poll_interval, DEFAULT_POLL_INTERVAL);
        assert_eq!(control.timeout, DEFAULT_POLL_TIMEOUT);
        assert!(config.needs_tick());

        let document = load::<ControlDocument>(
            br#"{"enabled": true, "experiment": {"fault": {"abort": {"httpStatus": 503, "percentage": {"value": 10}}}, "upstream_cluster": "checkout"}}"#,
        )
        .unwrap();
        let experiment = document.experiment.unwrap().experiment();
        assert_eq!(experiment.abort.unwrap().source, AbortSource::Http(503));
        assert_eq!(experiment.upstream_cluster, "checkout");
        let bad = load::<ControlDocument>(br#"{"enabled": true, "experiment": {"abort": {}}}"#)
            .unwrap_err();
        assert_eq!(
            bad.to_string(),
            "experiment.abort: exactly one of `http_status`, `grpc_status` or `header_abort` must be set"
        );
        assert!(load::<ControlDocument>(br#"{}"#).is_err());
    }

    #[test]
    fn grpc_names() {
        assert_eq!(grpc_code_by_name("OK"), Some(0));
        assert_eq!(grpc_code_by_name("UNAUTHENTICATED"), Some(16));
        assert_eq!(grpc_code_by_name("unavailable"), None);
    }
}
