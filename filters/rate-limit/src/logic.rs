//! The filter's decisions, over SDK types only (no hostcalls): what happens to a request in
//! local and in global mode.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use wasmesh_sdk::callout::{CalloutResponse, GrpcCallout, GrpcCalloutResponse};
use wasmesh_sdk::clock::since_epoch;
use wasmesh_sdk::decision::{Decision, GrpcStatusCode, LocalReply};
use wasmesh_sdk::error::Error;
use wasmesh_sdk::header_option::{self, AppendAction, HeaderValueOption};
use wasmesh_sdk::host::{Host, LogLevel};
use wasmesh_sdk::matcher::RuntimeFractionalPercent;
use wasmesh_sdk::metrics::{stat_name, Counter};
use wasmesh_sdk::request::{HeaderMapKind, Request};
use wasmesh_sdk::shared::SharedData;

use crate::bucket::WorkerStore;
use crate::config::{Config, Mode, StateScope, XRateLimitHeaders, DEFAULT_RLS_TIMEOUT};
use crate::descriptor::generate;
use crate::headers::{
    ietf_global, ietf_local, x_ratelimit_global, x_ratelimit_local, BucketState,
    X_ENVOY_RATELIMITED,
};
use crate::local::LocalLimiter;
use crate::rls::{self, Code};

/// Response code details of a local-mode denial (Envoy's).
pub const LOCAL_RATE_LIMITED: &str = "local_rate_limited";
/// Response code details of a global-mode over-limit reply (Envoy's).
pub const REQUEST_RATE_LIMITED: &str = "request_rate_limited";
/// Response code details of a fail-closed reply when the service failed (Envoy's).
pub const RATE_LIMITER_ERROR: &str = "rate_limiter_error";

/// Where fractional percentages draw their random numbers (tests pin them).
pub trait Random {
    /// A uniformly distributed number.
    fn next_u64(&self) -> u64;
}

/// Randomness from the host (WASI `random_get` seeds std's hasher keys once per VM), mixed
/// with a counter so that every draw differs.
#[derive(Debug, Default)]
pub struct HostRandom {
    state: RandomState,
    counter: Cell<u64>,
}

impl Random for HostRandom {
    fn next_u64(&self) -> u64 {
        let count = self.counter.get().wrapping_add(1);
        self.counter.set(count);
        let mut hasher = self.state.build_hasher();
        hasher.write_u64(count);
        hasher.finish()
    }
}

/// Local-mode stats, Envoy's names: `<stat_prefix>.http_local_rate_limit.<event>`.
#[derive(Debug, Clone, Copy)]
struct LocalStats {
    enabled: Counter,
    ok: Counter,
    rate_limited: Counter,
    enforced: Counter,
    /// wasmesh: a bucket update failed (the request was admitted).
    shared_state_error: Counter,
    /// wasmesh: a live per-value bucket was evicted from a full table.
    descriptor_evicted: Counter,
}

/// Global-mode stats: `<stat_prefix>.ratelimit.<event>` (Envoy files them under the route's
/// cluster, which a wasm filter does not know at configuration time).
#[derive(Debug, Clone, Copy)]
struct GlobalStats {
    ok: Counter,
    over_limit: Counter,
    error: Counter,
    failure_mode_allowed: Counter,
}

enum Engine {
    Local {
        limiter: LocalLimiter,
        stats: LocalStats,
        /// `Some` with `wasmesh.state_scope: WORKER`.
        worker_store: Option<WorkerStore>,
    },
    Global {
        callout: GrpcCallout,
        stats: GlobalStats,
    },
}

/// Per-stream state.
#[derive(Debug, Default)]
pub struct Stream {
    /// The rate limit service call in flight.
    pending: Option<u32>,
    /// Headers to add to the upstream response (rate limit headers, service headers).
    response_headers: Vec<(String, String)>,
    /// Apply `response_headers_to_add` to the upstream response too (global over-limit in
    /// shadow mode).
    add_configured_response_headers: bool,
}

/// The rate limit filter of one plugin configuration.
pub struct RateLimitFilter {
    config: Config,
    engine: Engine,
    random: Box<dyn Random>,
}

impl std::fmt::Debug for RateLimitFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitFilter")
            .field("mode", &self.config.mode())
            .finish_non_exhaustive()
    }
}

fn percent_hits(
    percent: Option<&RuntimeFractionalPercent>,
    default: bool,
    random: &dyn Random,
) -> bool {
    match percent {
        None => default,
        Some(percent) => {
            let fraction = &percent.default_value;
            if u64::from(fraction.numerator) >= fraction.denominator.value() {
                true
            } else if fraction.numerator == 0 {
                false
            } else {
                percent.hits(random.next_u64())
            }
        }
    }
}

impl RateLimitFilter {
    /// Builds the filter: defines its stats and, in local mode, creates the shared-data
    /// entries of every bucket (so that every later update is a compare-and-swap).
    pub fn new(config: Config, host: &mut dyn Host) -> Result<Self, Error> {
        Self::with_random(config, host, Box::new(HostRandom::default()))
    }

    /// [`RateLimitFilter::new`] with a chosen source of randomness.
    pub fn with_random(
        config: Config,
        host: &mut dyn Host,
        random: Box<dyn Random>,
    ) -> Result<Self, Error> {
        let engine = match config.mode() {
            Mode::Local => {
                let prefix = format!("{}.http_local_rate_limit", config.stat_prefix);
                let counter = |host: &mut dyn Host, event: &str| {
                    Counter::define(host, &stat_name("", &prefix, event))
                };
                let stats = LocalStats {
                    enabled: counter(host, "enabled")?,
                    ok: counter(host, "ok")?,
                    rate_limited: counter(host, "rate_limited")?,
                    enforced: counter(host, "enforced")?,
                    shared_state_error: counter(host, "shared_state_error")?,
                    descriptor_evicted: counter(host, "descriptor_evicted")?,
                };
                let limiter = LocalLimiter::new(&config);
                let worker_store =
                    (config.wasmesh.state_scope == StateScope::Worker).then(WorkerStore::default);
                match &worker_store {
                    Some(store) => limiter.create_entries(store)?,
                    None => limiter.create_entries(host)?,
                }
                if config.filter_enabled.is_none() {
                    host.log(
                        LogLevel::Warn,
                        "rate_limit: `filter_enabled` is unset, so the filter checks no request (Envoy's local_ratelimit default is 0%)",
                    );
                }
                host.log(
                    LogLevel::Info,
                    &format!(
                        "rate_limit: local mode, at most {} shared-data entries",
                        limiter.entry_bound()
                    ),
                );
                Engine::Local {
                    limiter,
                    stats,
                    worker_store,
                }
            }
            Mode::Global => {
                let prefix = config.stat_prefix.trim_end_matches('.');
                let counter = |host: &mut dyn Host, event: &str| {
                    Counter::define(host, &stat_name(prefix, "ratelimit", event))
                };
                let stats = GlobalStats {
                    ok: counter(host, "ok")?,
                    over_limit: counter(host, "over_limit")?,
                    error: counter(host, "error")?,
                    failure_mode_allowed: counter(host, "failure_mode_allowed")?,
                };
                let service = config
                    .rate_limit_service
                    .as_ref()
                    .map(|service| &service.grpc_service);
                let callout = GrpcCallout {
                    cluster: service
                        .and_then(|grpc| grpc.envoy_grpc.as_ref())
                        .map(|grpc| grpc.cluster_name.clone())
                        .unwrap_or_default(),
                    service: rls::SERVICE.to_string(),
                    method: rls::METHOD.to_string(),
                    initial_metadata: service
                        .map(|grpc| {
                            grpc.initial_metadata
                                .iter()
                                .map(|header| {
                                    (header.key.clone(), header.value.clone().into_bytes())
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    message: Vec::new(),
                    timeout: config
                        .timeout
                        .or_else(|| service.and_then(|grpc| grpc.timeout))
                        .unwrap_or(DEFAULT_RLS_TIMEOUT),
                };
                Engine::Global { callout, stats }
            }
        };
        Ok(RateLimitFilter {
            config,
            engine,
            random,
        })
    }

    /// Request headers arrived.
    pub fn on_request(
        &self,
        stream: &mut Stream,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        match &self.engine {
            Engine::Local {
                limiter,
                stats,
                worker_store,
            } => {
                let store: &dyn SharedData = match worker_store {
                    Some(store) => store,
                    None => &*host,
                };
                self.local_request(limiter, stats, store, stream, request, host)
            }
            Engine::Global { callout, stats } => {
                self.global_request(callout, stats, stream, request, host)
            }
        }
    }

    fn enforced(&self, default: bool) -> bool {
        percent_hits(self.config.filter_enforced.as_ref(), default, &*self.random)
    }

    fn rate_limit_headers_local(&self, state: &BucketState) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        if self.config.enable_x_ratelimit_headers == XRateLimitHeaders::DraftVersion03 {
            headers.extend(x_ratelimit_local(state));
        }
        if self.config.wasmesh.ietf_ratelimit_headers {
            headers.extend(ietf_local(state));
        }
        headers
    }

    fn local_request(
        &self,
        limiter: &LocalLimiter,
        stats: &LocalStats,
        store: &dyn SharedData,
        stream: &mut Stream,
        request: &mut dyn Request,
        host: &dyn Host,
    ) -> Decision {
        if !percent_hits(self.config.filter_enabled.as_ref(), false, &*self.random) {
            return Decision::Continue;
        }
        stats.enabled.increment(host);
        let descriptors = if limiter.has_descriptors() {
            generate(&self.config.rate_limits, &*request)
        } else {
            Vec::new()
        };
        let now = u64::try_from(since_epoch(host).as_nanos()).unwrap_or(u64::MAX);
        let outcome = limiter.check(store, &descriptors, now);
        if let Some(error) = outcome.errors.first() {
            stats
                .shared_state_error
                .add(host, outcome.errors.len() as u64);
            host.log(
                LogLevel::Warn,
                &format!("rate_limit: bucket state unavailable, request admitted: {error}"),
            );
        }
        if outcome.evicted > 0 {
            stats
                .descriptor_evicted
                .add(host, u64::from(outcome.evicted));
        }
        let rate_limit_headers = outcome
            .state
            .as_ref()
            .map(|state| self.rate_limit_headers_local(state))
            .unwrap_or_default();
        if outcome.allowed {
            stats.ok.increment(host);
            stream.response_headers = rate_limit_headers;
            return Decision::Continue;
        }
        stats.rate_limited.increment(host);
        if !self.enforced(false) {
            if let Err(error) = header_option::apply_all(
                &self.config.request_headers_to_add_when_not_enforced,
                request,
                HeaderMapKind::Request,
            ) {
                host.log(
                    LogLevel::Warn,
                    &format!("rate_limit: adding request headers failed: {error}"),
                );
            }
            stream.response_headers = rate_limit_headers;
            return Decision::Continue;
        }
        stats.enforced.increment(host);
        let status = self
            .config
            .status
            .map(|status| status.code)
            .filter(|code| *code >= 400)
            .unwrap_or(429);
        // As Envoy 1.40's local_ratelimit: `response_headers_to_add` in the reply, no
        // `x-envoy-ratelimited` (only the global filter sends it), and the rate limit headers
        // added when the reply passes through this filter's response path
        // ([`RateLimitFilter::on_own_reply`]), i.e. after Envoy's `content-length` and
        // `content-type`, as native adds them from its encoder path.
        let mut headers = Vec::new();
        add_options(&mut headers, &self.config.response_headers_to_add);
        stream.response_headers = rate_limit_headers;
        Decision::Deny(self.reply(
            status,
            LOCAL_RATE_LIMITED,
            b"local_rate_limited".to_vec(),
            headers,
        ))
    }

    fn reply(
        &self,
        status: u16,
        details: &str,
        body: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> LocalReply {
        let mut reply = LocalReply::new(status, details).with_body(body);
        reply.headers = headers;
        if self.config.rate_limited_as_resource_exhausted {
            reply = reply.with_grpc_status(GrpcStatusCode::ResourceExhausted);
        }
        reply
    }

    fn global_request(
        &self,
        callout: &GrpcCallout,
        stats: &GlobalStats,
        stream: &mut Stream,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        let internal = request
            .header("x-envoy-internal")
            .is_some_and(|value| value == "true");
        match self.config.request_type.as_str() {
            "internal" if !internal => return Decision::Continue,
            "external" if internal => return Decision::Continue,
            _ => {}
        }
        if !percent_hits(self.config.filter_enabled.as_ref(), true, &*self.random) {
            return Decision::Continue;
        }
        let descriptors = generate(&self.config.rate_limits, &*request);
        if descriptors.is_empty() {
            return Decision::Continue;
        }
        let call = GrpcCallout {
            message: rls::encode_request(&self.config.domain, &descriptors),
            ..callout.clone()
        };
        match host.dispatch_grpc(&call) {
            Ok(token) => {
                stream.pending = Some(token);
                Decision::Pause
            }
            Err(error) => {
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "rate_limit: calling the rate limit service on cluster {:?} failed: {error}",
                        call.cluster
                    ),
                );
                self.service_failed(stats, host)
            }
        }
    }

    /// The service could not answer: fail open (count `failure_mode_allowed`) or closed.
    fn service_failed(&self, stats: &GlobalStats, host: &dyn Host) -> Decision {
        stats.error.increment(host);
        let deny = self.config.failure_mode_deny
            || percent_hits(
                self.config.failure_mode_deny_percent.as_ref(),
                false,
                &*self.random,
            );
        if deny {
            let status = self
                .config
                .status_on_error
                .map_or(500, |status| status.code);
            return Decision::Deny(LocalReply::new(status, RATE_LIMITER_ERROR));
        }
        stats.failure_mode_allowed.increment(host);
        Decision::Continue
    }

    /// A callout answered (global mode).
    pub fn on_callout(
        &self,
        stream: &mut Stream,
        request: &mut dyn Request,
        host: &mut dyn Host,
        response: CalloutResponse,
    ) -> Decision {
        let Engine::Global { stats, .. } = &self.engine else {
            return Decision::Continue;
        };
        if stream.pending != Some(response.token()) {
            return Decision::Pause;
        }
        stream.pending = None;
        let answer = match response {
            CalloutResponse::Grpc(GrpcCalloutResponse {
                status: 0, body, ..
            }) => rls::decode_response(&body).map_err(|error| error.to_string()),
            CalloutResponse::Grpc(failed) => Err(format!(
                "gRPC status {}{}",
                failed.status,
                failed
                    .message
                    .map(|message| format!(" ({message})"))
                    .unwrap_or_default()
            )),
            CalloutResponse::Http(_) => Err("unexpected HTTP answer".to_string()),
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(reason) => {
                host.log(
                    LogLevel::Warn,
                    &format!("rate_limit: the rate limit service failed: {reason}"),
                );
                return self.service_failed(stats, host);
            }
        };
        // Envoy 1.40's order: the service's headers, `x-envoy-ratelimited` (over the limit),
        // the rate limit headers; on a denial the configured `response_headers_to_add` are
        // applied last, over those (`tests/envoy_native.rs`).
        let over_limit = answer.overall_code == Code::OverLimit;
        let mut response_headers = answer.response_headers_to_add.clone();
        if over_limit && !self.config.disable_x_envoy_ratelimited_header {
            response_headers.push((X_ENVOY_RATELIMITED.to_string(), "true".to_string()));
        }
        if self.config.enable_x_ratelimit_headers == XRateLimitHeaders::DraftVersion03 {
            response_headers.extend(x_ratelimit_global(&answer.statuses));
        }
        if self.config.wasmesh.ietf_ratelimit_headers {
            response_headers.extend(ietf_global(&answer.statuses));
        }
        if over_limit {
            stats.over_limit.increment(host);
            if self.enforced(true) {
                let status = self
                    .config
                    .rate_limited_status
                    .map(|status| status.code)
                    .filter(|code| *code >= 400)
                    .unwrap_or(429);
                let mut headers = response_headers;
                add_options(&mut headers, &self.config.response_headers_to_add);
                return Decision::Deny(self.reply(
                    status,
                    REQUEST_RATE_LIMITED,
                    answer.raw_body,
                    headers,
                ));
            }
            stream.add_configured_response_headers = true;
        } else {
            stats.ok.increment(host);
        }
        for (name, value) in &answer.request_headers_to_add {
            if let Err(error) = request.set_request_header(name, value) {
                host.log(
                    LogLevel::Warn,
                    &format!("rate_limit: adding request header {name:?} failed: {error}"),
                );
            }
        }
        stream.response_headers = response_headers;
        Decision::Continue
    }

    /// Response headers arrived: add the rate limit headers of this request.
    pub fn on_response(&self, stream: &mut Stream, request: &mut dyn Request, host: &dyn Host) {
        let mut failed = None;
        if stream.add_configured_response_headers {
            if let Err(error) = header_option::apply_all(
                &self.config.response_headers_to_add,
                request,
                HeaderMapKind::Response,
            ) {
                failed = Some(error);
            }
        }
        for (name, value) in std::mem::take(&mut stream.response_headers) {
            // Envoy adds (`addCopy`) rather than replaces.
            if let Err(error) = request.add_response_header(&name, &value) {
                failed = Some(error);
            }
        }
        if let Some(error) = failed {
            host.log(
                LogLevel::Warn,
                &format!("rate_limit: adding response headers failed: {error}"),
            );
        }
    }

    /// This filter's own local reply passes through its response path: add the rate limit
    /// headers of a local-mode denial.
    pub fn on_own_reply(&self, stream: &mut Stream, request: &mut dyn Request, host: &dyn Host) {
        self.on_response(stream, request, host);
    }

    /// How long until a paused request's service call times out (for logs and tests).
    pub fn service_timeout(&self) -> Option<Duration> {
        match &self.engine {
            Engine::Global { callout, .. } => Some(callout.timeout),
            Engine::Local { .. } => None,
        }
    }
}

/// Applies header options to the headers of a local reply (a global denial's start with the
/// service's).
fn add_options(headers: &mut Vec<(String, String)>, options: &[HeaderValueOption]) {
    for option in options {
        let header = option.header();
        let exists = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case(&header.key));
        let (replace, add) = match option.append_action() {
            AppendAction::AppendIfExistsOrAdd => (false, true),
            AppendAction::AddIfAbsent => (false, !exists),
            AppendAction::OverwriteIfExistsOrAdd => (true, true),
            AppendAction::OverwriteIfExists => (exists, exists),
        };
        if header.value.is_empty() {
            // Envoy skips empty values unless `keep_empty_value`; the SDK decides that when
            // applying to a map, here the conservative choice is to skip.
            continue;
        }
        if replace {
            headers.retain(|(name, _)| !name.eq_ignore_ascii_case(&header.key));
        }
        if add {
            headers.push((header.key.clone(), header.value.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rls::encode_request;
    use std::rc::Rc;
    use wasmesh_sdk::adapter::{configure, Outcome, StreamDriver};
    use wasmesh_sdk::request::MemoryRequest;
    use wasmesh_sdk::testing::MemoryHost;

    fn driver(host: &mut MemoryHost, json: &str) -> Rc<RateLimitFilter> {
        Rc::new(configure::<RateLimitFilter>(json.as_bytes(), host).unwrap())
    }

    const LOCAL: &str = r#"{
      "stat_prefix": "edge",
      "token_bucket": {"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "10s"},
      "filter_enabled": {"default_value": {"numerator": 100}},
      "filter_enforced": {"default_value": {"numerator": 100}},
      "status": {"code": 503},
      "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
      "wasmesh": {"ietf_ratelimit_headers": true},
      "response_headers_to_add": [{"header": {"key": "x-limited", "value": "yes"}}]
    }"#;

    fn run(filter: &Rc<RateLimitFilter>, host: &mut MemoryHost) -> (Outcome, MemoryRequest) {
        let mut driver = StreamDriver::new(Some(Rc::clone(filter)));
        let mut request = MemoryRequest::get("/");
        let outcome = driver.on_request_headers(&mut request, host);
        // The upstream's response, or (as in Envoy) the filter's own local reply on its way out.
        if matches!(outcome, Outcome::Continue | Outcome::Reply(_)) {
            driver.on_response_headers(&mut request, host);
        }
        (outcome, request)
    }

    #[test]
    fn local_denial_is_envoys_local_reply() {
        let mut host = MemoryHost::new();
        let filter = driver(&mut host, LOCAL);
        let (first, request) = run(&filter, &mut host);
        assert_eq!(first, Outcome::Continue);
        assert_eq!(
            request.response_header("x-ratelimit-limit").as_deref(),
            Some("2")
        );
        assert_eq!(
            request.response_header("x-ratelimit-remaining").as_deref(),
            Some("1")
        );
        assert_eq!(
            request.response_header("x-ratelimit-reset").as_deref(),
            Some("0")
        );
        assert_eq!(
            request.response_header("ratelimit-policy").as_deref(),
            Some("\"default\";q=2;w=20")
        );
        assert_eq!(
            request.response_header("ratelimit").as_deref(),
            Some("\"default\";r=1;t=10")
        );
        assert_eq!(request.response_header("x-limited"), None);
        run(&filter, &mut host);
        let (Outcome::Reply(reply), denied) = run(&filter, &mut host) else {
            panic!("the third request must be limited");
        };
        assert_eq!(reply.status, 503);
        assert_eq!(reply.details, "local_rate_limited");
        assert_eq!(reply.body, b"local_rate_limited");
        // The reply carries `response_headers_to_add` and no `x-envoy-ratelimited` (Envoy's
        // local_ratelimit does not send it; its global filter does).
        assert_eq!(reply.headers, vec![("x-limited".into(), "yes".into())]);
        // The rate limit headers are added as the reply passes through the filter's response
        // path, after Envoy's own headers, as native adds them from its encoder path.
        assert_eq!(
            denied.response_header("x-ratelimit-limit").as_deref(),
            Some("2")
        );
        assert_eq!(
            denied.response_header("x-ratelimit-remaining").as_deref(),
            Some("0")
        );
        assert_eq!(
            denied.response_header("x-ratelimit-reset").as_deref(),
            Some("10")
        );
        assert_eq!(denied.response_header("x-envoy-ratelimited"), None);
        assert_eq!(reply.grpc_status, None);
        for (stat, value) in [
            ("enabled", 3),
            ("ok", 2),
            ("rate_limited", 1),
            ("enforced", 1),
        ] {
            assert_eq!(
                host.metric(&format!("edge.http_local_rate_limit.{stat}")),
                Some(value),
                "{stat}"
            );
        }
        // Ten seconds later one token is back.
        host.advance(Duration::from_secs(10));
        assert_eq!(run(&filter, &mut host).0, Outcome::Continue);
    }

    #[test]
    fn unset_filter_enabled_checks_nothing_as_in_envoy() {
        let mut host = MemoryHost::new();
        let filter = driver(
            &mut host,
            r#"{"stat_prefix": "edge", "token_bucket": {"max_tokens": 1, "fill_interval": "60s"}}"#,
        );
        for _ in 0..5 {
            assert_eq!(run(&filter, &mut host).0, Outcome::Continue);
        }
        assert_eq!(host.metric("edge.http_local_rate_limit.enabled"), Some(0));
        assert!(
            host.logs()
                .iter()
                .any(|(level, message)| *level == LogLevel::Warn
                    && message.contains("filter_enabled"))
        );
    }

    #[test]
    fn shadow_mode_reports_and_marks_without_denying() {
        let mut host = MemoryHost::new();
        let filter = driver(
            &mut host,
            r#"{"stat_prefix": "edge",
                "token_bucket": {"max_tokens": 1, "fill_interval": "60s"},
                "filter_enabled": {"default_value": {"numerator": 100}},
                "request_headers_to_add_when_not_enforced": [{"header": {"key": "x-would-limit", "value": "true"}}]}"#,
        );
        let (_, first) = run(&filter, &mut host);
        assert_eq!(first.header("x-would-limit"), None);
        let (outcome, second) = run(&filter, &mut host);
        assert_eq!(outcome, Outcome::Continue);
        assert_eq!(second.header("x-would-limit").as_deref(), Some("true"));
        assert_eq!(
            host.metric("edge.http_local_rate_limit.rate_limited"),
            Some(1)
        );
        assert_eq!(host.metric("edge.http_local_rate_limit.enforced"), Some(0));
    }

    #[test]
    fn partial_percentages_use_the_random_source() {
        struct Fixed(u64);
        impl Random for Fixed {
            fn next_u64(&self) -> u64 {
                self.0
            }
        }
        let json = r#"{"stat_prefix": "edge", "token_bucket": {"max_tokens": 1, "fill_interval": "60s"},
                       "filter_enabled": {"default_value": {"numerator": 30}}}"#;
        for (draw, enabled) in [(29, 1), (30, 0), (129, 1)] {
            let mut host = MemoryHost::new();
            let config = wasmesh_sdk::config::load::<Config>(json.as_bytes()).unwrap();
            let filter = Rc::new(
                RateLimitFilter::with_random(config, &mut host, Box::new(Fixed(draw))).unwrap(),
            );
            run(&filter, &mut host);
            assert_eq!(
                host.metric("edge.http_local_rate_limit.enabled"),
                Some(enabled),
                "draw {draw}"
            );
        }
    }

    const GLOBAL: &str = r#"{
      "domain": "edge", "stat_prefix": "front",
      "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": "rls"}, "initial_metadata": [{"key": "x-tenant", "value": "acme"}]}},
      "timeout": "0.05s",
      "rate_limits": [{"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}],
      "enable_x_ratelimit_headers": "DRAFT_VERSION_03"
    }"#;

    fn grpc(token: u32, status: u32, body: Vec<u8>) -> CalloutResponse {
        CalloutResponse::Grpc(GrpcCalloutResponse {
            token,
            status,
            message: None,
            body,
        })
    }

    /// `overall_code`, then one `response_headers_to_add` header.
    fn answer(code: u8, header: (&str, &str)) -> Vec<u8> {
        let mut header_bytes = vec![0x0a, header.0.len() as u8];
        header_bytes.extend_from_slice(header.0.as_bytes());
        header_bytes.extend_from_slice(&[0x12, header.1.len() as u8]);
        header_bytes.extend_from_slice(header.1.as_bytes());
        let mut body = vec![0x08, code, 0x1a, header_bytes.len() as u8];
        body.extend_from_slice(&header_bytes);
        body
    }

    #[test]
    fn global_mode_asks_the_service_and_applies_its_verdict() {
        let mut host = MemoryHost::new();
        let filter = driver(&mut host, GLOBAL);
        assert_eq!(filter.service_timeout(), Some(Duration::from_millis(50)));

        // No descriptor (header absent): no call.
        let mut quiet = StreamDriver::new(Some(Rc::clone(&filter)));
        assert_eq!(
            quiet.on_request_headers(&mut MemoryRequest::get("/"), &mut host),
            Outcome::Continue
        );
        assert!(host.grpc_callouts().is_empty());

        let mut stream = StreamDriver::new(Some(Rc::clone(&filter)));
        let mut request = MemoryRequest::get("/").with_header("x-user", "alice");
        assert_eq!(
            stream.on_request_headers(&mut request, &mut host),
            Outcome::Pause
        );
        let (token, call) = host.grpc_callouts()[0].clone();
        assert_eq!(call.cluster, "rls");
        assert_eq!(call.service, "envoy.service.ratelimit.v3.RateLimitService");
        assert_eq!(call.method, "ShouldRateLimit");
        assert_eq!(call.timeout, Duration::from_millis(50));
        assert_eq!(
            call.initial_metadata,
            vec![("x-tenant".to_string(), b"acme".to_vec())]
        );
        assert_eq!(
            call.message,
            encode_request(
                "edge",
                &[crate::descriptor::RequestDescriptor {
                    entries: vec![("user".into(), "alice".into())],
                    hits: 1
                }]
            )
        );
        // A stale token keeps the stream waiting.
        assert_eq!(
            stream.on_callout_response(&mut request, &mut host, grpc(token + 100, 0, vec![])),
            Outcome::Wait
        );
        let over = answer(2, ("x-quota", "exhausted"));
        let Outcome::Reply(reply) =
            stream.on_callout_response(&mut request, &mut host, grpc(token, 0, over))
        else {
            panic!("over limit must be denied");
        };
        assert_eq!(
            (reply.status, reply.details.as_str()),
            (429, "request_rate_limited")
        );
        // Envoy's order: the service's headers, then `x-envoy-ratelimited` (no statuses in the
        // answer: no `X-RateLimit-*`).
        assert_eq!(
            reply.headers,
            vec![
                ("x-quota".into(), "exhausted".into()),
                ("x-envoy-ratelimited".into(), "true".into()),
            ]
        );
        assert_eq!(host.metric("front.ratelimit.over_limit"), Some(1));
    }

    #[test]
    fn configured_reply_headers_apply_over_the_services_as_envoy() {
        let mut headers = vec![
            ("Retry-After".to_string(), "42".to_string()),
            ("x-envoy-ratelimited".to_string(), "true".to_string()),
        ];
        let options: Vec<HeaderValueOption> = serde_json::from_str(
            r#"[{"append_action": "OVERWRITE_IF_EXISTS_OR_ADD", "header": {"key": "retry-after", "value": "60"}},
                {"append_action": "ADD_IF_ABSENT", "header": {"key": "x-envoy-ratelimited", "value": "no"}},
                {"header": {"key": "x-extra", "value": "1"}}]"#,
        )
        .unwrap();
        add_options(&mut headers, &options);
        // An overwritten header moves to the end (Envoy removes it, then adds the new value).
        assert_eq!(
            headers,
            vec![
                ("x-envoy-ratelimited".to_string(), "true".to_string()),
                ("retry-after".to_string(), "60".to_string()),
                ("x-extra".to_string(), "1".to_string()),
            ]
        );
    }

    #[test]
    fn global_failures_follow_the_failure_mode() {
        let mut host = MemoryHost::new();
        let open = driver(&mut host, GLOBAL);
        let mut stream = StreamDriver::new(Some(Rc::clone(&open)));
        let mut request = MemoryRequest::get("/").with_header("x-user", "bob");
        stream.on_request_headers(&mut request, &mut host);
        let token = host.grpc_callouts()[0].0;
        assert_eq!(
            stream.on_callout_response(&mut request, &mut host, grpc(token, 14, vec![])),
            Outcome::Resume(wasmesh_sdk::host::Phase::RequestHeaders)
        );
        assert_eq!(host.metric("front.ratelimit.error"), Some(1));
        assert_eq!(host.metric("front.ratelimit.failure_mode_allowed"), Some(1));

        let mut host = MemoryHost::new();
        let closed = driver(
            &mut host,
            &GLOBAL.replace(
                "\"domain\"",
                "\"failure_mode_deny\": true, \"status_on_error\": {\"code\": 503}, \"domain\"",
            ),
        );
        let mut stream = StreamDriver::new(Some(closed));
        let mut request = MemoryRequest::get("/").with_header("x-user", "bob");
        stream.on_request_headers(&mut request, &mut host);
        let token = host.grpc_callouts()[0].0;
        // A malformed answer is a failure too.
        let outcome =
            stream.on_callout_response(&mut request, &mut host, grpc(token, 0, vec![0x12, 9]));
        assert_eq!(
            outcome,
            Outcome::Reply(LocalReply::new(503, "rate_limiter_error"))
        );

        // A dispatch the host refuses fails the same way.
        let mut host = MemoryHost::new().with_failing_callouts();
        let closed = driver(
            &mut host,
            &GLOBAL.replace("\"domain\"", "\"failure_mode_deny\": true, \"domain\""),
        );
        let mut stream = StreamDriver::new(Some(closed));
        let mut request = MemoryRequest::get("/").with_header("x-user", "bob");
        assert_eq!(
            stream.on_request_headers(&mut request, &mut host),
            Outcome::Reply(LocalReply::new(500, "rate_limiter_error"))
        );
    }
}
