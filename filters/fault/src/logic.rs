//! The fault filter's decisions, as Envoy's `envoy.filters.http.fault` takes them.
//!
//! Per request (request headers):
//! 1. no experiment running (control service says off, or has not answered): pass;
//! 2. the request must be routed to `upstream_cluster` (if set), come from one of
//!    `downstream_nodes` (if set) and match every `headers` matcher;
//! 3. **delay**: roll the dice against the delay percentage (capped by
//!    `x-envoy-fault-delay-request-percentage` for header delays); the duration is the fixed
//!    delay or `x-envoy-fault-delay-request` (ms); a positive duration pauses the request,
//!    which the root context's tick resumes once it has elapsed;
//! 4. **abort** (immediately, or when the delay is over, with a fresh roll): the status is the
//!    fixed HTTP/gRPC status or comes from `x-envoy-fault-abort-request` (200-599) /
//!    `x-envoy-fault-abort-grpc-request`; the local reply is Envoy's (`fault filter abort`,
//!    response code details `fault_filter_abort`);
//! 5. every injected fault first takes one of `max_active_faults` (shared by all workers); a
//!    request holds at most one, from injection until it completes (a delay that is not
//!    followed by an abort gives it back when it resumes, as in Envoy).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use wasmesh_sdk::callout::CalloutResponse;
use wasmesh_sdk::decision::{Decision, GrpcStatusCode, LocalReply};
use wasmesh_sdk::error::Error;
use wasmesh_sdk::host::{Host, LogLevel};
use wasmesh_sdk::matcher::{match_all, FractionalPercent};
use wasmesh_sdk::metrics::{stat_name, Counter, Gauge, MetricSink};
use wasmesh_sdk::request::Request;

use crate::active::{Acquire, ActiveFaults};
use crate::config::{AbortSource, Config, DelaySource, Experiment, MAX_GRPC_STATUS};
use crate::control::{ControlEvent, ControlState, ControlVerdict};
use crate::random::{entropy, Dice};

/// Response code details of an abort (`%RESPONSE_CODE_DETAILS%`), as Envoy's fault filter.
pub const ABORT_DETAILS: &str = "fault_filter_abort";
/// Body of an abort reply, as Envoy's fault filter.
pub const ABORT_BODY: &str = "fault filter abort";
/// Name in stats and logs.
pub const FILTER_NAME: &str = "fault";
/// Most downstream clusters that get their own `fault.<cluster>.*` counters: the header comes
/// from the client side, and must not be able to create stats without bound.
pub const MAX_DOWNSTREAM_CLUSTER_STATS: usize = 64;

/// The request headers the filter reads (Envoy's names).
pub mod headers {
    /// HTTP status to abort with (`header_abort`).
    pub const ABORT_REQUEST: &str = "x-envoy-fault-abort-request";
    /// gRPC status to abort with (`header_abort`).
    pub const ABORT_GRPC_REQUEST: &str = "x-envoy-fault-abort-grpc-request";
    /// Abort percentage numerator, capped by the configured one (`header_abort`).
    pub const ABORT_REQUEST_PERCENTAGE: &str = "x-envoy-fault-abort-request-percentage";
    /// Delay in milliseconds (`header_delay`).
    pub const DELAY_REQUEST: &str = "x-envoy-fault-delay-request";
    /// Delay percentage numerator, capped by the configured one (`header_delay`).
    pub const DELAY_REQUEST_PERCENTAGE: &str = "x-envoy-fault-delay-request-percentage";
    /// Matched against `downstream_nodes`.
    pub const DOWNSTREAM_SERVICE_NODE: &str = "x-envoy-downstream-service-node";
    /// Names per-downstream-cluster stats.
    pub const DOWNSTREAM_SERVICE_CLUSTER: &str = "x-envoy-downstream-service-cluster";
}

/// Per-request state.
#[derive(Debug, Default)]
pub struct FaultStream {
    /// The experiment the request was judged by (kept for the abort after a delay).
    experiment: Option<Rc<Experiment>>,
    /// When a delayed request may go on.
    delay_until: Option<SystemTime>,
    /// Whether the request holds one of `max_active_faults`.
    holds_fault: bool,
    /// `x-envoy-downstream-service-cluster`, for per-cluster stats.
    downstream_cluster: Option<String>,
}

impl FaultStream {
    /// When the delayed request resumes, if it is delayed.
    pub fn delay_until(&self) -> Option<SystemTime> {
        self.delay_until
    }

    /// Whether the request holds an active fault.
    pub fn holds_fault(&self) -> bool {
        self.holds_fault
    }
}

/// The filter's counters and gauge (`<stat_prefix>.fault.<name>`).
#[derive(Debug)]
struct Stats {
    delays_injected: Counter,
    aborts_injected: Counter,
    faults_overflow: Counter,
    active_faults: Gauge,
    control_updates: Counter,
    control_failures: Counter,
}

/// The fault filter of one root context.
#[derive(Debug)]
pub struct FaultFilter {
    experiment: Rc<Experiment>,
    control: Option<RefCell<ControlState>>,
    active: ActiveFaults,
    dice: RefCell<Dice>,
    stats: Stats,
    stat_prefix: String,
    downstream_stats: RefCell<BTreeMap<String, (Counter, Counter)>>,
    downstream_cluster_stats: bool,
    tick: Option<Duration>,
}

impl FaultFilter {
    /// Builds the filter and defines its stats.
    pub fn new<S: MetricSink + ?Sized>(config: Config, metrics: &mut S) -> Result<Self, Error> {
        let prefix = config.stat_prefix.clone();
        let name = |event: &str| stat_name(&prefix, FILTER_NAME, event);
        let stats = Stats {
            delays_injected: Counter::define(metrics, &name("delays_injected"))?,
            aborts_injected: Counter::define(metrics, &name("aborts_injected"))?,
            faults_overflow: Counter::define(metrics, &name("faults_overflow"))?,
            active_faults: Gauge::define(metrics, &name("active_faults"))?,
            control_updates: Counter::define(metrics, &name("control_updates"))?,
            control_failures: Counter::define(metrics, &name("control_failures"))?,
        };
        let dice = match config.random_seed {
            Some(seed) => Dice::seeded(seed),
            None => Dice::from_entropy(),
        };
        Ok(FaultFilter {
            experiment: Rc::new(config.experiment()),
            control: config
                .control
                .clone()
                .map(|c| RefCell::new(ControlState::new(c))),
            active: ActiveFaults::new(
                ledger_key(&config.stat_prefix),
                // The ledger identity must differ between VMs even with a fixed seed.
                entropy(),
                config.max_active_faults,
            ),
            dice: RefCell::new(dice),
            stats,
            downstream_stats: RefCell::new(BTreeMap::new()),
            downstream_cluster_stats: !config.disable_downstream_cluster_stats,
            tick: config.needs_tick().then_some(config.tick_interval),
            stat_prefix: prefix,
        })
    }

    /// Creates the shared state the filter updates (the `max_active_faults` ledger) unless
    /// another VM has; run once per VM at start-up, before traffic.
    pub fn create_shared_state(&self, host: &dyn Host) -> Result<(), Error> {
        self.active.create(host)
    }

    /// The tick period the root context needs (`None`: no tick).
    pub fn tick_period(&self) -> Option<Duration> {
        self.tick
    }

    /// The shared-data key of the `max_active_faults` ledger.
    pub fn active_faults_key(&self) -> &str {
        self.active.key()
    }

    /// The experiment new requests are judged by; `None` while faults are off (control
    /// service says so, failed, or has not answered yet).
    pub fn current_experiment(&self) -> Option<Rc<Experiment>> {
        let Some(control) = &self.control else {
            return Some(self.experiment.clone());
        };
        let control = control.try_borrow().ok()?;
        match control.verdict() {
            ControlVerdict::Enabled(Some(experiment)) => Some(experiment.clone()),
            ControlVerdict::Enabled(None) => Some(self.experiment.clone()),
            ControlVerdict::Pending | ControlVerdict::Disabled | ControlVerdict::Failed(_) => None,
        }
    }

    /// Request headers: delay, abort or pass.
    pub fn on_request(
        &self,
        stream: &mut FaultStream,
        request: &dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        let Some(experiment) = self.current_experiment() else {
            return Decision::Continue;
        };
        if experiment.is_empty() || !self.selects(&experiment, request) {
            return Decision::Continue;
        }
        stream.downstream_cluster = request
            .header(headers::DOWNSTREAM_SERVICE_CLUSTER)
            .filter(|cluster| !cluster.is_empty())
            .map(|cluster| cluster.into_owned());

        if let Some(millis) = self.delay_millis(&experiment, request) {
            if self.acquire(stream, host) {
                stream.delay_until = Some(host.now() + Duration::from_millis(millis));
                stream.experiment = Some(experiment);
                self.stats.delays_injected.increment(host);
                self.count_for_downstream(stream, host, Injected::Delay);
                host.log(
                    LogLevel::Debug,
                    &format!("{FILTER_NAME}: delaying request {millis}ms"),
                );
                return Decision::Pause;
            }
        }
        self.maybe_abort(stream, &experiment, request, host)
    }

    /// A delayed request is offered to go on (after every tick and control answer).
    pub fn on_wake(
        &self,
        stream: &mut FaultStream,
        request: &dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        let Some(until) = stream.delay_until else {
            return Decision::Pause;
        };
        if self.current_experiment().is_none() {
            // Kill switch (or control failure) while delayed: let the request go now, unharmed.
            stream.delay_until = None;
            self.release(stream, host);
            return Decision::Continue;
        }
        if host.now() < until {
            return Decision::Pause;
        }
        stream.delay_until = None;
        let experiment = stream.experiment.clone().unwrap_or_default();
        let decision = self.maybe_abort(stream, &experiment, request, host);
        if decision.is_continue() {
            // Not followed by an abort: the fault is over.
            self.release(stream, host);
        }
        decision
    }

    /// The request is complete (also when the client went away while it was delayed).
    pub fn on_log(&self, stream: &mut FaultStream, host: &mut dyn Host) {
        stream.delay_until = None;
        self.release(stream, host);
    }

    /// Root-context tick: keep the active-fault lease fresh, poll the control service.
    pub fn on_tick(&self, host: &mut dyn Host) {
        if let Err(error) = self.active.refresh(host) {
            host.log(
                LogLevel::Debug,
                &format!("{FILTER_NAME}: refreshing the active-fault lease failed: {error}"),
            );
        }
        let Some(control) = &self.control else {
            return;
        };
        let now = host.now();
        let due = control.try_borrow().ok().and_then(|c| c.due(now));
        let Some(poll) = due else {
            return;
        };
        let Ok(mut state) = control.try_borrow_mut() else {
            return;
        };
        match host.dispatch_http(&poll) {
            Ok(token) => state.dispatched(token, now),
            Err(error) => {
                let was_failing = matches!(state.verdict(), ControlVerdict::Failed(_));
                let event = state
                    .dispatch_failed(format!("polling the control service failed: {error}"), now);
                drop(state);
                self.report_control(event, was_failing, host);
            }
        }
    }

    /// A root callout answered (the control service).
    pub fn on_root_callout_response(&self, host: &mut dyn Host, response: &CalloutResponse) {
        let Some(control) = &self.control else {
            return;
        };
        let Ok(mut state) = control.try_borrow_mut() else {
            return;
        };
        let was_failing = matches!(state.verdict(), ControlVerdict::Failed(_));
        let before = state.verdict().clone();
        let event = state.on_response(response);
        let after = state.verdict().clone();
        drop(state);
        if event == ControlEvent::Updated && before != after {
            let what = match &after {
                ControlVerdict::Disabled => "faults disabled (kill switch)".to_string(),
                ControlVerdict::Enabled(None) => "configured experiment enabled".to_string(),
                ControlVerdict::Enabled(Some(_)) => {
                    "experiment from the control service enabled".to_string()
                }
                other => format!("{other:?}"),
            };
            host.log(LogLevel::Info, &format!("{FILTER_NAME}: {what}"));
        }
        self.report_control(event, was_failing, host);
    }

    fn report_control(&self, event: ControlEvent, was_failing: bool, host: &mut dyn Host) {
        match event {
            ControlEvent::Updated => self.stats.control_updates.increment(host),
            ControlEvent::Failed(reason) => {
                self.stats.control_failures.increment(host);
                // Warn on the transition only: a dead control service must not flood the log.
                let level = if was_failing {
                    LogLevel::Debug
                } else {
                    LogLevel::Warn
                };
                host.log(
                    level,
                    &format!(
                        "{FILTER_NAME}: {reason}; faults are off until the control service answers"
                    ),
                );
            }
            ControlEvent::Ignored => {}
        }
    }

    /// `upstream_cluster`, `downstream_nodes` and `headers`, in Envoy's order.
    fn selects(&self, experiment: &Experiment, request: &dyn Request) -> bool {
        if !experiment.upstream_cluster.is_empty()
            && request.xds_property_string(&["cluster_name"]).as_deref()
                != Some(experiment.upstream_cluster.as_str())
        {
            return false;
        }
        if !experiment.downstream_nodes.is_empty() {
            let node = request.header(headers::DOWNSTREAM_SERVICE_NODE);
            if !node.is_some_and(|node| experiment.downstream_nodes.contains(node.as_ref())) {
                return false;
            }
        }
        match_all(&experiment.headers, request.request_headers())
    }

    fn roll(&self) -> u64 {
        self.dice
            .try_borrow_mut()
            .map(|mut dice| dice.next_u64())
            .unwrap_or(u64::MAX)
    }

    /// The delay for this request, if one is to be injected (`None` for 0ms, as Envoy).
    fn delay_millis(&self, experiment: &Experiment, request: &dyn Request) -> Option<u64> {
        let delay = experiment.delay?;
        let percentage = match delay.source {
            DelaySource::Header => {
                capped_percentage(request, headers::DELAY_REQUEST_PERCENTAGE, delay.percentage)
            }
            DelaySource::Fixed(_) => delay.percentage,
        };
        if !percentage.hits(self.roll()) {
            return None;
        }
        let millis = match delay.source {
            DelaySource::Fixed(millis) => millis,
            DelaySource::Header => first_integer(request, headers::DELAY_REQUEST)?,
        };
        (millis > 0).then_some(millis)
    }

    /// Aborts if the experiment says so (and a fault can be taken).
    fn maybe_abort(
        &self,
        stream: &mut FaultStream,
        experiment: &Experiment,
        request: &dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        let Some(reply) = self.abort_reply(experiment, request) else {
            return Decision::Continue;
        };
        if !self.acquire(stream, host) {
            return Decision::Continue;
        }
        self.stats.aborts_injected.increment(host);
        self.count_for_downstream(stream, host, Injected::Abort);
        Decision::Deny(reply)
    }

    fn abort_reply(&self, experiment: &Experiment, request: &dyn Request) -> Option<LocalReply> {
        let abort = experiment.abort?;
        let percentage = match abort.source {
            AbortSource::Header => {
                capped_percentage(request, headers::ABORT_REQUEST_PERCENTAGE, abort.percentage)
            }
            AbortSource::Http(_) | AbortSource::Grpc(_) => abort.percentage,
        };
        if !percentage.hits(self.roll()) {
            return None;
        }
        let (status, grpc) = match abort.source {
            AbortSource::Http(status) => (status, None),
            AbortSource::Grpc(code) => (200, Some(code)),
            AbortSource::Header => {
                let http = first_integer(request, headers::ABORT_REQUEST)
                    .filter(|status| (200..600).contains(status))
                    .and_then(|status| u16::try_from(status).ok());
                match http {
                    Some(status) => (status, None),
                    None => {
                        let code = first_integer(request, headers::ABORT_GRPC_REQUEST)?;
                        (200, Some(u32::try_from(code).unwrap_or(u32::MAX)))
                    }
                }
            }
        };
        let mut reply = LocalReply::new(status, ABORT_DETAILS).with_body(ABORT_BODY);
        if let Some(code) = grpc {
            reply = reply.with_grpc_status(grpc_status(code));
        }
        Some(reply)
    }

    fn acquire(&self, stream: &mut FaultStream, host: &mut dyn Host) -> bool {
        if stream.holds_fault {
            return true;
        }
        match self.active.try_acquire(host) {
            Acquire::Acquired => {
                stream.holds_fault = true;
                self.stats.active_faults.add(host, 1);
                true
            }
            Acquire::Overflow => {
                self.stats.faults_overflow.increment(host);
                false
            }
            Acquire::Failed(error) => {
                host.log(
                    LogLevel::Debug,
                    &format!("{FILTER_NAME}: no fault injected, the active-fault count is unavailable: {error}"),
                );
                false
            }
        }
    }

    fn release(&self, stream: &mut FaultStream, host: &mut dyn Host) {
        if !stream.holds_fault {
            return;
        }
        stream.holds_fault = false;
        self.stats.active_faults.add(host, -1);
        if let Err(error) = self.active.release(host) {
            host.log(
                LogLevel::Debug,
                &format!("{FILTER_NAME}: releasing an active fault failed (the lease will expire): {error}"),
            );
        }
    }

    /// `fault.<downstream_cluster>.delays_injected` / `.aborts_injected`, as Envoy.
    fn count_for_downstream(&self, stream: &FaultStream, host: &mut dyn Host, what: Injected) {
        if !self.downstream_cluster_stats {
            return;
        }
        let Some(cluster) = stream.downstream_cluster.as_deref() else {
            return;
        };
        let Ok(mut known) = self.downstream_stats.try_borrow_mut() else {
            return;
        };
        if !known.contains_key(cluster) {
            if known.len() >= MAX_DOWNSTREAM_CLUSTER_STATS || !is_stat_safe(cluster) {
                return;
            }
            let name = |event: &str| {
                stat_name(
                    &self.stat_prefix,
                    FILTER_NAME,
                    &format!("{cluster}.{event}"),
                )
            };
            let (Ok(delays), Ok(aborts)) = (
                Counter::define(host, &name("delays_injected")),
                Counter::define(host, &name("aborts_injected")),
            ) else {
                return;
            };
            known.insert(cluster.to_string(), (delays, aborts));
        }
        if let Some((delays, aborts)) = known.get(cluster) {
            match what {
                Injected::Delay => delays.increment(host),
                Injected::Abort => aborts.increment(host),
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Injected {
    Delay,
    Abort,
}

/// The shared-data key of the `max_active_faults` ledger: filters sharing a VM id and a
/// stat prefix share the limit, as Envoy's gauge is scoped by the stat prefix.
pub fn ledger_key(stat_prefix: &str) -> String {
    format!(
        "wasmesh.{}.ledger",
        stat_name(stat_prefix, FILTER_NAME, "active_faults")
    )
}

/// Cluster names that can go into a stat name as they are.
fn is_stat_safe(name: &str) -> bool {
    name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The gRPC status to reply with; codes proxy-wasm cannot send become `UNKNOWN`.
fn grpc_status(code: u32) -> GrpcStatusCode {
    use GrpcStatusCode::*;
    const CODES: [GrpcStatusCode; 17] = [
        Ok,
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    ];
    if code > MAX_GRPC_STATUS {
        return Unknown;
    }
    usize::try_from(code)
        .ok()
        .and_then(|index| CODES.get(index).copied())
        .unwrap_or(Unknown)
}

/// The first value of `name` as an unsigned integer, read like `absl::SimpleAtoi` (surrounding
/// ASCII whitespace and a leading `+` allowed). Only the first value counts: the header is
/// client-controlled, as Envoy's API notes.
pub fn first_integer(request: &dyn Request, name: &str) -> Option<u64> {
    let values = request.header_values(name);
    parse_unsigned(values.first()?)
}

/// `absl::SimpleAtoi` for unsigned integers.
pub fn parse_unsigned(text: &str) -> Option<u64> {
    let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let digits = trimmed.strip_prefix('+').unwrap_or(trimmed);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The configured percentage with its numerator capped by the request's percentage header
/// (used as is when the header is missing or not a 32-bit unsigned integer), as Envoy's
/// `HeaderPercentageProvider`.
fn capped_percentage(
    request: &dyn Request,
    header: &str,
    configured: FractionalPercent,
) -> FractionalPercent {
    match first_integer(request, header).and_then(|value| u32::try_from(value).ok()) {
        Some(numerator) => {
            FractionalPercent::new(numerator.min(configured.numerator), configured.denominator)
        }
        None => configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_sdk::callout::HttpCalloutResponse;
    use wasmesh_sdk::clock::Clock;
    use wasmesh_sdk::config::load;
    use wasmesh_sdk::request::MemoryRequest;
    use wasmesh_sdk::testing::MemoryHost;

    fn filter(json: &str, host: &mut MemoryHost) -> FaultFilter {
        FaultFilter::new(load::<Config>(json.as_bytes()).unwrap(), host).unwrap()
    }

    fn get() -> MemoryRequest {
        MemoryRequest::get("/")
    }

    fn status_of(decision: &Decision) -> Option<u16> {
        decision.local_reply().map(|reply| reply.status)
    }

    #[test]
    fn full_abort_answers_like_envoy() {
        let mut host = MemoryHost::new();
        let fault = filter(
            r#"{"abort": {"http_status": 503, "percentage": {"numerator": 100}}}"#,
            &mut host,
        );
        let mut stream = FaultStream::default();
        let decision = fault.on_request(&mut stream, &get(), &mut host);
        assert_eq!(
            decision,
            Decision::Deny(
                LocalReply::new(503, "fault_filter_abort").with_body("fault filter abort")
            )
        );
        assert!(stream.holds_fault());
        assert_eq!(host.metric("fault.aborts_injected"), Some(1));
        assert_eq!(host.metric("fault.active_faults"), Some(1));
        fault.on_log(&mut stream, &mut host);
        assert_eq!(host.metric("fault.active_faults"), Some(0));
        assert!(!stream.holds_fault());
        // A second on_log changes nothing.
        fault.on_log(&mut stream, &mut host);
        assert_eq!(host.metric("fault.active_faults"), Some(0));
    }

    #[test]
    fn grpc_abort_replies_200_with_the_grpc_status() {
        let mut host = MemoryHost::new();
        let fault = filter(
            r#"{"abort": {"grpc_status": 14, "percentage": {"numerator": 100}}}"#,
            &mut host,
        );
        let decision = fault.on_request(&mut FaultStream::default(), &get(), &mut host);
        let reply = decision.local_reply().unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.grpc_status, Some(GrpcStatusCode::Unavailable));
        assert_eq!(reply.details, ABORT_DETAILS);
    }

    #[test]
    fn zero_and_unset_percentages_never_fire() {
        let mut host = MemoryHost::new();
        for json in [
            r#"{"abort": {"http_status": 503}}"#,
            r#"{"abort": {"http_status": 503, "percentage": {"numerator": 0}}}"#,
            r#"{"delay": {"fixed_delay": "1s"}}"#,
        ] {
            let fault = filter(json, &mut host);
            for _ in 0..1000 {
                assert_eq!(
                    fault.on_request(&mut FaultStream::default(), &get(), &mut host),
                    Decision::Continue,
                    "{json}"
                );
            }
        }
        assert_eq!(host.metric("fault.aborts_injected"), Some(0));
    }

    #[test]
    fn percentages_converge_for_every_denominator() {
        let mut host = MemoryHost::new();
        for (json, expected) in [
            (
                r#"{"abort": {"http_status": 503, "percentage": {"numerator": 10}}, "random_seed": 1}"#,
                0.10,
            ),
            (
                r#"{"abort": {"http_status": 503, "percentage": {"numerator": 2500, "denominator": "TEN_THOUSAND"}}, "random_seed": 2}"#,
                0.25,
            ),
            (
                r#"{"abort": {"http_status": 503, "percentage": {"numerator": 50000, "denominator": "MILLION"}}, "random_seed": 3}"#,
                0.05,
            ),
            (
                r#"{"fault": {"abort": {"httpStatus": 503, "percentage": {"value": 33.3}}}, "random_seed": 4}"#,
                0.333,
            ),
        ] {
            let fault = filter(json, &mut host);
            let requests = 20_000;
            let aborted = (0..requests)
                .filter(|_| {
                    fault
                        .on_request(&mut FaultStream::default(), &get(), &mut host)
                        .local_reply()
                        .is_some()
                })
                .count();
            #[allow(clippy::cast_precision_loss)]
            let observed = aborted as f64 / f64::from(requests);
            let sd = (expected * (1.0 - expected) / f64::from(requests)).sqrt();
            assert!(
                (observed - expected).abs() < 5.0 * sd,
                "{json}: {observed} vs {expected}"
            );
        }
    }

    #[test]
    fn seeded_runs_are_reproducible() {
        let run = || {
            let mut host = MemoryHost::new();
            let fault = filter(
                r#"{"abort": {"http_status": 503, "percentage": {"numerator": 50}}, "random_seed": 99}"#,
                &mut host,
            );
            (0..64)
                .map(|_| {
                    fault
                        .on_request(&mut FaultStream::default(), &get(), &mut host)
                        .local_reply()
                        .is_some()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn fixed_delay_pauses_until_due_then_continues_and_releases() {
        let mut host = MemoryHost::new();
        let fault = filter(
            r#"{"delay": {"fixed_delay": "3s", "percentage": {"numerator": 100}}}"#,
            &mut host,
        );
        assert_eq!(fault.tick_period(), Some(Duration::from_millis(10)));
        let mut stream = FaultStream::default();
        let request = get();
        let start = host.now();
        assert_eq!(
            fault.on_request(&mut stream, &request, &mut host),
            Decision::Pause
        );
        assert_eq!(stream.delay_until(), Some(start + Duration::from_secs(3)));
        assert_eq!(host.metric("fault.delays_injected"), Some(1));
        assert_eq!(host.metric("fault.active_faults"), Some(1));
        host.advance(Duration::from_millis(2999));
        assert_eq!(
            fault.on_wake(&mut stream, &request, &mut host),
            Decision::Pause
        );
        host.advance(Duration::from_millis(1));
        assert_eq!(
            fault.on_wake(&mut stream, &request, &mut host),
            Decision::Continue
        );
        assert_eq!(
            host.metric("fault.active_faults"),
            Some(0),
            "released when the delay ends"
        );
        fault.on_log(&mut stream, &mut host);
        assert_eq!(host.metric("fault.active_faults"), Some(0));
    }

    #[test]
    fn delay_then_abort_keeps_the_fault_until_the_stream_ends() {
        let mut host = MemoryHost::new();
        let fault = filter(
            r#"{"delay": {"fixed_delay": "0.5s", "percentage": {"numerator": 100}},
                "abort": {"http_status": 429, "percentage": {"numerator": 100}}}"#,
            &mut host,
        );
        let mut stream = FaultStream::default();
        let request = get();
        assert_eq!(
            fault.on_request(&mut stream, &request, &mut host),
            Decision::Pause
        );
        host.advance(Duration::from_millis(500));
        let decision = fault.on_wake(&mut stream, &request, &mut host);
        assert_eq!(status_of(&decision), Some(429));
        assert_eq!(host.metric("fault.active_faults"), Some(1));
        assert_eq!(host.metric("fault.delays_injected"), Some(1));
        assert_eq!(host.metric("fault.aborts_injected"), Some(1));
        fault.on_log(&mut stream, &mut host);
        assert_eq!(host.metric("fault.active_faults"), Some(0));
    }

    #[test]
    fn a_cancelled_delayed_request_gives_its_fault_back() {
        let mut host = MemoryHost::new();
        let fault = filter(
            r#"{"delay": {"fixed_delay": "10s", "percentage": {"numerator": 100}}, "max_active_faults": 1}"#,
            &mut host,
        );
        let mut cancelled = FaultStream::default();
        assert_eq!(
            fault.on_request(&mut cancelled, &get(), &mut host),
            Decision::Pause
        );
        assert_eq!(
            fault.on_request(&mut FaultStream::default(), &get(), &mut host),
            Decision::Continue
        );
        assert_eq!(host.metric("fault.faults_overflow"), Some(1));
        // The client goes away: the stream is logged without ever resuming.
        fault.on_log(&mut cancelled, &mut host);
        assert_eq!(cancelled.delay_until(), None);
        assert_eq!(
            fault.on_request(&mut FaultStream::default(), &get(), &mut host),
            Decision::Pause
        );
    }

    #[test]
    fn header_controls_work_only_with_header_faults_and_are_capped() {
        let mut host = MemoryHost::new();
        let fixed = filter(
            r#"{"abort": {"http_status": 503, "percentage": {"numerator": 0}}}"#,
            &mut host,
        );
        let forced = get()
            .with_header(headers::ABORT_REQUEST, "418")
            .with_header(headers::ABORT_REQUEST_PERCENTAGE, "100");
        assert_eq!(
            fixed.on_request(&mut FaultStream::default(), &forced, &mut host),
            Decision::Continue
        );

        let header = filter(
            r#"{"abort": {"header_abort": {}, "percentage": {"numerator": 100}}}"#,
            &mut host,
        );
        let decision = header.on_request(
            &mut FaultStream::default(),
            &get().with_header(headers::ABORT_REQUEST, "418"),
            &mut host,
        );
        assert_eq!(status_of(&decision), Some(418));
        // Without the status header there is nothing to abort with.
        assert_eq!(
            header.on_request(&mut FaultStream::default(), &get(), &mut host),
            Decision::Continue
        );
        // Out-of-range and malformed statuses are ignored.
        for bad in ["600", "199", "abc", "-500", "5 03", ""] {
            let request = get().with_header(headers::ABORT_REQUEST, bad);
            assert_eq!(
                header.on_request(&mut FaultStream::default(), &request, &mut host),
                Decision::Continue,
                "{bad}"
            );
        }
        // SimpleAtoi accepts surrounding whitespace and a plus sign; only the first value counts.
        let request = get()
            .with_header(headers::ABORT_REQUEST, " +503 ")
            .with_header(headers::ABORT_REQUEST, "404");
        assert_eq!(
            status_of(&header.on_request(&mut FaultStream::default(), &request, &mut host)),
            Some(503)
        );
        // gRPC status from its header when no HTTP status is given.
        let request = get().with_header(headers::ABORT_GRPC_REQUEST, "7");
        let decision = header.on_request(&mut FaultStream::default(), &request, &mut host);
        assert_eq!(
            decision.local_reply().map(|r| (r.status, r.grpc_status)),
            Some((200, Some(GrpcStatusCode::PermissionDenied)))
        );
        let request = get().with_header(headers::ABORT_GRPC_REQUEST, "99");
        let decision = header.on_request(&mut FaultStream::default(), &request, &mut host);
        assert_eq!(
            decision.local_reply().and_then(|r| r.grpc_status),
            Some(GrpcStatusCode::Unknown)
        );

        // The percentage header can only lower the configured percentage.
        let capped = filter(
            r#"{"abort": {"header_abort": {}, "percentage": {"numerator": 0}}}"#,
            &mut host,
        );
        let request = get()
            .with_header(headers::ABORT_REQUEST, "503")
            .with_header(headers::ABORT_REQUEST_PERCENTAGE, "100");
        for _ in 0..200 {
            assert_eq!(
                capped.on_request(&mut FaultStream::default(), &request, &mut host),
                Decision::Continue
            );
        }
        let lowered = get()
            .with_header(headers::ABORT_REQUEST, "503")
            .with_header(headers::ABORT_REQUEST_PERCENTAGE, "0");
        for _ in 0..200 {
            assert_eq!(
                header.on_request(&mut FaultStream::default(), &lowered, &mut host),
                Decision::Continue
            );
        }
    }

    #[test]
    fn header_delay_reads_milliseconds_and_zero_means_no_delay() {
        let mut host = MemoryHost::new();
        let fault = filter(
            r#"{"delay": {"header_delay": {}, "percentage": {"numerator": 100}}}"#,
            &mut host,
        );
        let mut stream = FaultStream::default();
        let request = get().with_header(headers::DELAY_REQUEST, "250");
        assert_eq!(
            fault.on_request(&mut stream, &request, &mut host),
            Decision::Pause
        );
        assert_eq!(
            stream.delay_until(),
            Some(host.now() + Duration::from_millis(250))
        );
        for value in ["0", "x", "1.5"] {
            let request = get().with_header(headers::DELAY_REQUEST, value);
            assert_eq!(
                fault.on_request(&mut FaultStream::default(), &request, &mut host),
                Decision::Continue,
                "{value}"
            );
        }
        assert_eq!(
            fault.on_request(&mut FaultStream::default(), &get(), &mut host),
            Decision::Continue
        );
        let request = get()
            .with_header(headers::DELAY_REQUEST, "250")
            .with_header(headers::DELAY_REQUEST_PERCENTAGE, "0");
        assert_eq!(
            fault.on_request(&mut FaultStream::default(), &request, &mut host),
            Decision::Continue
        );
        assert_eq!(host.metric("fault.delays_injected"), Some(1));
    }

    #[test]
    fn selection_by_cluster_node_and_headers() {
        let mut host = MemoryHost::new();
        let fault = filter(
            r#"{"abort": {"http_status": 503, "percentage": {"numerator": 100}},
                "upstream_cluster": "checkout",
                "downstream_nodes": ["frontend", "mobile"],
                "headers": [{"name": ":path", "string_match": {"prefix": "/api"}}, {"name": "x-chaos", "present_match": true}]}"#,
            &mut host,
        );
        let matching = || {
            MemoryRequest::get("/api/cart")
                .with_property(&["cluster_name"], "checkout")
                .with_header(headers::DOWNSTREAM_SERVICE_NODE, "mobile")
                .with_header("x-chaos", "1")
        };
        assert_eq!(
            status_of(&fault.on_request(&mut FaultStream::default(), &matching(), &mut host)),
            Some(503)
        );
        let misses = [
            MemoryRequest::get("/api/cart")
                .with_property(&["cluster_name"], "payments")
                .with_header(headers::DOWNSTREAM_SERVICE_NODE, "mobile")
                .with_header("x-chaos", "1"),
            MemoryRequest::get("/api/cart")
                .with_header(headers::DOWNSTREAM_SERVICE_NODE, "mobile")
                .with_header("x-chaos", "1"),
            MemoryRequest::get("/api/cart")
                .with_property(&["cluster_name"], "checkout")
                .with_header(headers::DOWNSTREAM_SERVICE_NODE, "backend")
                .with_header("x-chaos", "1"),
            MemoryRequest::get("/api/cart")
                .with_property(&["cluster_name"], "checkout")
                .with_header("x-chaos", "1"),
            MemoryRequest::get("/web")
                .with_property(&["cluster_name"], "checkout")
                .with_header(headers::DOWNSTREAM_SERVICE_NODE, "mobile")
                .with_header("x-chaos", "1"),
            MemoryRequest::get("/api/cart")
                .with_property(&["cluster_name"], "checkout")
                .with_header(headers::DOWNSTREAM_SERVICE_NODE, "mobile"),
        ];
        for (index, request) in misses.iter().enumerate() {
            assert_eq!(
                fault.on_request(&mut FaultStream::default(), request, &mut host),
                Decision::Continue,
                "miss {index}"
            );
        }
    }

    #[test]
    fn downstream_cluster_stats_are_bounded_and_can_be_disabled() {
        let mut host = MemoryHost::new();
        let fault = filter(
            r#"{"abort": {"http_status": 503, "percentage": {"numerator": 100}}}"#,
            &mut host,
        );
        let request = get().with_header(headers::DOWNSTREAM_SERVICE_CLUSTER, "frontend");
        fault.on_request(&mut FaultStream::default(), &request, &mut host);
        assert_eq!(host.metric("fault.frontend.aborts_injected"), Some(1));
        assert_eq!(host.metric("fault.frontend.delays_injected"), Some(0));
        let weird = get().with_header(headers::DOWNSTREAM_SERVICE_CLUSTER, "a b");
        fault.on_request(&mut FaultStream::default(), &weird, &mut host);
        assert_eq!(host.metric("fault.a b.aborts_injected"), None);
        for index in 0..(MAX_DOWNSTREAM_CLUSTER_STATS + 5) {
            let request =
                get().with_header(headers::DOWNSTREAM_SERVICE_CLUSTER, &format!("c{index}"));
            fault.on_request(&mut FaultStream::default(), &request, &mut host);
        }
        assert_eq!(host.metric("fault.c62.aborts_injected"), Some(1));
        assert_eq!(
            host.metric(&format!(
                "fault.c{}.aborts_injected",
                MAX_DOWNSTREAM_CLUSTER_STATS + 2
            )),
            None
        );
        assert_eq!(
            host.metric("fault.aborts_injected"),
            Some(i64::try_from(MAX_DOWNSTREAM_CLUSTER_STATS).unwrap() + 7)
        );

        let mut host = MemoryHost::new();
        let quiet = filter(
            r#"{"abort": {"http_status": 503, "percentage": {"numerator": 100}}, "disable_downstream_cluster_stats": true, "stat_prefix": "edge"}"#,
            &mut host,
        );
        quiet.on_request(&mut FaultStream::default(), &request, &mut host);
        assert_eq!(host.metric("edge.fault.aborts_injected"), Some(1));
        assert_eq!(host.metric("edge.fault.frontend.aborts_injected"), None);
    }

    fn control_answer(filter: &FaultFilter, host: &mut MemoryHost, status: &str, body: &str) {
        filter.on_tick(host);
        let token = filter
            .control
            .as_ref()
            .and_then(|c| c.borrow().in_flight())
            .expect("a poll in flight");
        let response = CalloutResponse::Http(HttpCalloutResponse {
            token,
            headers: vec![(":status".into(), status.into())],
            body: body.as_bytes().to_vec(),
            trailers: vec![],
        });
        filter.on_root_callout_response(host, &response);
        host.advance(Duration::from_secs(1));
    }

    #[test]
    fn control_service_gates_faults_and_the_kill_switch_frees_delayed_requests() {
        let mut host = MemoryHost::new();
        let fault = filter(
            r#"{"delay": {"fixed_delay": "30s", "percentage": {"numerator": 100}},
                "control": {"cluster": "chaos", "path": "/exp"}}"#,
            &mut host,
        );
        // Nothing injected before the control service has answered.
        assert_eq!(
            fault.on_request(&mut FaultStream::default(), &get(), &mut host),
            Decision::Continue
        );
        control_answer(&fault, &mut host, "200", r#"{"enabled": true}"#);
        assert_eq!(host.metric("fault.control_updates"), Some(1));
        let mut delayed = FaultStream::default();
        let request = get();
        assert_eq!(
            fault.on_request(&mut delayed, &request, &mut host),
            Decision::Pause
        );
        assert_eq!(
            fault.on_wake(&mut delayed, &request, &mut host),
            Decision::Pause
        );
        // Kill switch: the delayed request goes on at once, nothing new is injected.
        control_answer(&fault, &mut host, "200", r#"{"enabled": false}"#);
        assert_eq!(
            fault.on_wake(&mut delayed, &request, &mut host),
            Decision::Continue
        );
        assert_eq!(host.metric("fault.active_faults"), Some(0));
        assert_eq!(
            fault.on_request(&mut FaultStream::default(), &get(), &mut host),
            Decision::Continue
        );
        // A new experiment from the control service replaces the configured one.
        control_answer(
            &fault,
            &mut host,
            "200",
            r#"{"enabled": true, "experiment": {"abort": {"http_status": 418, "percentage": {"numerator": 100}}}}"#,
        );
        assert_eq!(
            status_of(&fault.on_request(&mut FaultStream::default(), &get(), &mut host)),
            Some(418)
        );
        // The control service failing switches faults off (fail safe), with one warning.
        control_answer(&fault, &mut host, "500", "");
        control_answer(&fault, &mut host, "500", "");
        assert_eq!(
            fault.on_request(&mut FaultStream::default(), &get(), &mut host),
            Decision::Continue
        );
        assert_eq!(host.metric("fault.control_failures"), Some(2));
        let warnings = host
            .logs()
            .into_iter()
            .filter(|(level, message)| {
                *level == LogLevel::Warn && message.contains("control service answered 500")
            })
            .count();
        assert_eq!(warnings, 1);
    }

    #[test]
    fn failed_poll_dispatch_is_fail_safe() {
        let mut host = MemoryHost::new().with_failing_callouts();
        let fault = filter(
            r#"{"abort": {"http_status": 503, "percentage": {"numerator": 100}}, "control": {"cluster": "missing", "path": "/exp"}}"#,
            &mut host,
        );
        fault.on_tick(&mut host);
        assert_eq!(host.metric("fault.control_failures"), Some(1));
        assert_eq!(
            fault.on_request(&mut FaultStream::default(), &get(), &mut host),
            Decision::Continue
        );
    }

    #[test]
    fn integers_parse_like_simple_atoi() {
        assert_eq!(parse_unsigned("42"), Some(42));
        assert_eq!(parse_unsigned(" \t+42 "), Some(42));
        assert_eq!(parse_unsigned("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "+", "-1", "4 2", "0x10", "18446744073709551616", "1e3"] {
            assert_eq!(parse_unsigned(bad), None, "{bad}");
        }
    }

    #[test]
    fn grpc_codes_map_and_unknown_ones_become_unknown() {
        assert_eq!(grpc_status(0), GrpcStatusCode::Ok);
        assert_eq!(grpc_status(14), GrpcStatusCode::Unavailable);
        assert_eq!(grpc_status(16), GrpcStatusCode::Unauthenticated);
        assert_eq!(grpc_status(17), GrpcStatusCode::Unknown);
    }
}
