//! `wasmesh run`: one HTTP exchange through a filter in the harness, reported as JSON.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use wasmesh_harness::{
    envoy_stat_name, prometheus_name, Action, CalloutReply, FailurePolicy, Harness, HarnessError,
    HttpCallout, HttpStream, LogLevel, MetricValue, Outcome, Plugin, PropertyValue, StreamState,
};

use crate::exchange::StartTime;
use crate::exchange::{
    to_pretty_json, CalloutFailure, CalloutMock, CalloutOutput, ExchangeInput, ExchangeOutput,
    Headers, LocalReplyOutput, LogOutput, MessageInput, MessageOutput, MetricOutput,
    MetricValueOutput, PhaseOutput, PropertyValueInput, VmFailureOutput, FORMAT_VERSION,
};

/// Callouts answered "timeout" only fire when virtual time passes; a filter that keeps
/// re-dispatching on timeout would otherwise make the run loop forever.
const MAX_TIMEOUT_ROUNDS: usize = 16;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The filter module (.wasm, or .wat text).
    #[arg(long)]
    wasm: PathBuf,

    /// Plugin configuration file, handed to the filter's on_configure as is.
    #[arg(long)]
    config: Option<PathBuf>,

    /// The exchange to run (JSON, format 1; see the README).
    #[arg(long)]
    request: PathBuf,

    /// Root id selecting the root context inside the module.
    #[arg(long, default_value = "")]
    root_id: String,

    /// Number of workers (VMs); the exchange runs on the first.
    #[arg(long, default_value_t = 1)]
    workers: usize,

    /// Log level the host reports to the module; lower-level lines are not captured.
    #[arg(long, value_enum, default_value_t = LogLevelArg::Info)]
    log_level: LogLevelArg,

    /// What happens to the request when the VM crashes (as Envoy's `failure_policy`).
    #[arg(long, value_enum, default_value_t = FailurePolicyArg::Closed)]
    failure_policy: FailurePolicyArg,

    /// Start the virtual clock here (RFC 3339, e.g. 2024-01-01T00:00:00Z, or Unix seconds)
    /// instead of now; overrides the exchange file's `start_time`.
    #[arg(long, value_name = "TIME")]
    start_time: Option<StartTime>,

    /// Race mode: instead of one exchange, the exchange's request arrives on every worker at the
    /// same instant, under this many seeded schedules (seeds 0..N, a fresh plugin each), with
    /// other workers' callbacks run at a VM's shared-data and queue hostcalls. Fails if the
    /// verdicts depend on the schedule or a shared-data write can lose an update.
    #[arg(long, value_name = "ROUNDS")]
    race: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogLevelArg {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

impl From<LogLevelArg> for LogLevel {
    fn from(level: LogLevelArg) -> Self {
        match level {
            LogLevelArg::Trace => LogLevel::Trace,
            LogLevelArg::Debug => LogLevel::Debug,
            LogLevelArg::Info => LogLevel::Info,
            LogLevelArg::Warn => LogLevel::Warn,
            LogLevelArg::Error => LogLevel::Error,
            LogLevelArg::Critical => LogLevel::Critical,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
/// Values named after Envoy's `FAIL_CLOSED`, `FAIL_OPEN`, `FAIL_RELOAD`.
pub(crate) enum FailurePolicyArg {
    #[value(name = "fail-closed")]
    Closed,
    #[value(name = "fail-open")]
    Open,
    #[value(name = "fail-reload")]
    Reload,
}

impl From<FailurePolicyArg> for wasmesh_envoy::FailurePolicy {
    fn from(policy: FailurePolicyArg) -> Self {
        match policy {
            FailurePolicyArg::Closed => Self::FailClosed,
            FailurePolicyArg::Open => Self::FailOpen,
            FailurePolicyArg::Reload => Self::FailReload,
        }
    }
}

impl From<FailurePolicyArg> for FailurePolicy {
    fn from(policy: FailurePolicyArg) -> Self {
        match policy {
            FailurePolicyArg::Closed => FailurePolicy::FailClosed,
            FailurePolicyArg::Open => FailurePolicy::FailOpen,
            FailurePolicyArg::Reload => FailurePolicy::FailReload,
        }
    }
}

pub fn run(args: &Args) -> Result<()> {
    let exchange = read_exchange(&args.request)?;
    let config = match &args.config {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => Vec::new(),
    };
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }

    let answered: Rc<RefCell<Vec<CalloutOutput>>> = Rc::default();
    if let Some(rounds) = args.race {
        return crate::race::run(&exchange, rounds, || {
            start_plugin(args, &exchange, config.clone(), Rc::default())
        });
    }
    let plugin = start_plugin(args, &exchange, config, Rc::clone(&answered))?;
    if exchange.advance_clock_ms > 0 {
        plugin
            .advance_clock(Duration::from_millis(exchange.advance_clock_ms))
            .context("advancing the clock before the exchange")?;
    }
    let output = execute(&plugin, &exchange, &answered)?;
    println!(
        "{}",
        to_pretty_json(&output).context("serializing the result")?
    );
    Ok(())
}

/// Drives the exchange through a new stream on the first worker and reports what happened.
fn execute(
    plugin: &Plugin,
    exchange: &ExchangeInput,
    answered: &RefCell<Vec<CalloutOutput>>,
) -> Result<ExchangeOutput> {
    let mut stream = plugin.http_stream_on(0);
    for property in &exchange.properties {
        let path: Vec<&str> = property.path.iter().map(String::as_str).collect();
        stream.property(&path, property_value(&property.value));
    }
    let mut phases = Vec::new();
    let mut vm_failure = None;
    let default_response = MessageInput {
        headers: Headers(vec![(":status".to_string(), "200".to_string())]),
        body: None,
        body_base64: None,
        trailers: None,
    };
    let response = exchange.response.as_ref().unwrap_or(&default_response);

    let mut driver = Driver {
        plugin,
        stream: &mut stream,
        phases: &mut phases,
        vm_failure: &mut vm_failure,
    };
    driver.send(Direction::Request, &exchange.request)?;
    // The upstream only answers a request the filter let through.
    if driver.stream.request_state() == StreamState::Continued {
        driver.send(Direction::Response, response)?;
    }

    let held = [stream.request_state(), stream.response_state()].contains(&StreamState::Paused)
        && stream.local_reply().is_none();
    if held {
        let pending = plugin.pending_http_callouts().len() + plugin.pending_grpc_callouts().len();
        eprintln!(
            "warning: the module still holds the {} ({pending} callout(s) pending without an \
             answer): Envoy would wait for them or for a timeout. Answer them in `callouts`, or \
             use `wasmesh test`, which fails such a step",
            if stream.request_state() == StreamState::Paused {
                "request"
            } else {
                "response"
            }
        );
    }
    let request_headers = stream.request_headers_now();
    let request_body = stream.request_body_now();
    let local_reply = stream.local_reply();
    let response_message = match &local_reply {
        Some(reply) => MessageOutput {
            headers: reply.headers.clone(),
            body: String::from_utf8_lossy(&reply.body).into_owned(),
        },
        None => MessageOutput {
            headers: stream.response_headers_now(),
            body: String::from_utf8_lossy(&stream.response_body_now()).into_owned(),
        },
    };
    match stream.complete() {
        Ok(()) => {}
        // A crash in on_log / on_done: the exchange itself has already been answered.
        Err(error) if error.is_vm_crash() => {
            vm_failure.get_or_insert_with(|| vm_failure_output(&error));
        }
        Err(error) => return Err(error).context("completing the stream"),
    }
    if let Some(failure) = &vm_failure {
        eprintln!(
            "warning: the VM crashed in {}: {} (see vm_failure)",
            failure.callback, failure.message
        );
    }

    Ok(ExchangeOutput {
        format: FORMAT_VERSION,
        phases,
        local_reply: local_reply.map(|reply| LocalReplyOutput {
            status: reply.status,
            headers: reply.headers,
            body: String::from_utf8_lossy(&reply.body).into_owned(),
            details: reply.details,
            grpc_status: reply.grpc_status,
        }),
        request: MessageOutput {
            headers: request_headers,
            body: String::from_utf8_lossy(&request_body).into_owned(),
        },
        response: response_message,
        callouts: answered.borrow().clone(),
        metrics: metrics(plugin),
        logs: plugin
            .logs()
            .into_iter()
            .map(|entry| LogOutput {
                level: level_name(entry.level).to_string(),
                message: entry.message,
                main_thread: entry.main_thread,
            })
            .collect(),
        vm_failure,
    })
}

/// Reads and validates the exchange file; errors name the file and the JSON path.
fn read_exchange(path: &Path) -> Result<ExchangeInput> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut deserializer = serde_json::Deserializer::from_str(&text);
    let exchange: ExchangeInput = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|error| anyhow!("{}: {error}", path.display()))?;
    exchange
        .validate()
        .with_context(|| path.display().to_string())?;
    Ok(exchange)
}

fn start_plugin(
    args: &Args,
    exchange: &ExchangeInput,
    config: Vec<u8>,
    answered: Rc<RefCell<Vec<CalloutOutput>>>,
) -> Result<Plugin> {
    let mut builder = Harness::load(&args.wasm)
        .with_context(|| format!("loading {}", args.wasm.display()))?
        .config(config)
        .root_id(&args.root_id)
        .workers(args.workers)
        .log_level(args.log_level.into())
        .failure_policy(args.failure_policy.into());
    // Without either, the harness starts the clock now, as a proxy started now would be.
    if let Some(StartTime(start)) = args.start_time.or(exchange.start_time) {
        builder = builder.start_time(start);
    }
    for property in &exchange.plugin_properties {
        let path: Vec<&str> = property.path.iter().map(String::as_str).collect();
        builder = builder.property(&path, property_value(&property.value));
    }
    for cluster in exchange.clusters.iter().flatten() {
        builder = builder.cluster(cluster);
    }
    let mocks: Vec<(CalloutMock, CalloutReplyTemplate)> = exchange
        .callouts
        .iter()
        .map(|mock| (mock.clone(), CalloutReplyTemplate::of(mock)))
        .collect();
    builder = builder.http_callout_handler(move |callout: &HttpCallout| {
        let matched = mocks
            .iter()
            .find(|(mock, _)| mock.matches(&callout.upstream, &callout.headers));
        let (reply, answer) = match matched {
            Some((_, template)) => (template.reply(), template.answer()),
            // A cluster with nothing behind it: Envoy's router answers 503 (refused).
            None => (CalloutReply::Refused, "unmatched"),
        };
        answered.borrow_mut().push(CalloutOutput {
            cluster: callout.upstream.clone(),
            headers: callout.headers.clone(),
            body: String::from_utf8_lossy(&callout.body).into_owned(),
            timeout_ms: callout.timeout.as_millis(),
            answer,
        });
        reply
    });
    builder.start().map_err(|error| match error {
        HarnessError::ConfigRejected { logs } => anyhow!(
            "the filter rejected its configuration{}",
            logs.iter()
                .map(|entry| format!("\n  [{}] {}", level_name(entry.level), entry.message))
                .collect::<String>()
        ),
        other => anyhow::Error::new(other).context("starting the plugin"),
    })
}

/// A mock's answer, kept in owned form so the handler can hand out a fresh reply per callout.
#[derive(Debug, Clone)]
enum CalloutReplyTemplate {
    Response {
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        trailers: Vec<(String, String)>,
    },
    Fail(CalloutFailure),
}

impl CalloutReplyTemplate {
    fn of(mock: &CalloutMock) -> Self {
        match (&mock.response, mock.fail) {
            (_, Some(failure)) => Self::Fail(failure),
            (Some(response), None) => Self::Response {
                headers: response.headers.0.clone(),
                body: response.body_bytes().unwrap_or_default(),
                trailers: response.trailers.clone().unwrap_or_default().0,
            },
            // `ExchangeInput::validate` guarantees exactly one of the two.
            (None, None) => Self::Fail(CalloutFailure::Refused),
        }
    }

    fn reply(&self) -> CalloutReply {
        match self {
            Self::Response {
                headers,
                body,
                trailers,
            } => CalloutReply::Response {
                headers: headers.clone(),
                body: body.clone(),
                trailers: trailers.clone(),
            },
            Self::Fail(CalloutFailure::Refused) => CalloutReply::Refused,
            Self::Fail(CalloutFailure::Reset) => CalloutReply::Reset,
            Self::Fail(CalloutFailure::Timeout) => CalloutReply::Timeout,
            Self::Fail(CalloutFailure::ResetAfterHeaders) => CalloutReply::Failure,
        }
    }

    fn answer(&self) -> &'static str {
        match self {
            Self::Response { .. } => "response",
            Self::Fail(CalloutFailure::Refused) => "refused",
            Self::Fail(CalloutFailure::Reset) => "reset",
            Self::Fail(CalloutFailure::Timeout) => "timeout",
            Self::Fail(CalloutFailure::ResetAfterHeaders) => "reset_after_headers",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

/// Feeds one direction of the exchange to the stream, recording each callback's action.
struct Driver<'a> {
    plugin: &'a Plugin,
    stream: &'a mut HttpStream,
    phases: &'a mut Vec<PhaseOutput>,
    vm_failure: &'a mut Option<VmFailureOutput>,
}

impl Driver<'_> {
    fn send(&mut self, direction: Direction, message: &MessageInput) -> Result<()> {
        let (headers_phase, body_phase, trailers_phase) = match direction {
            Direction::Request => ("request_headers", "request_body", "request_trailers"),
            Direction::Response => ("response_headers", "response_body", "response_trailers"),
        };
        let body = message.body_bytes();
        let has_body = body.is_some();
        let has_trailers = message.trailers.is_some();

        let headers = message.headers.as_pairs();
        let end_of_stream = !has_body && !has_trailers;
        let outcome = match direction {
            Direction::Request => self.stream.request_headers(&headers, end_of_stream),
            Direction::Response => self.stream.response_headers(&headers, end_of_stream),
        };
        if !self.record(headers_phase, outcome)? {
            return Ok(());
        }

        if let Some(body) = &body {
            let outcome = match direction {
                Direction::Request => self.stream.request_body(body, !has_trailers),
                Direction::Response => self.stream.response_body(body, !has_trailers),
            };
            if !self.record(body_phase, outcome)? {
                return Ok(());
            }
        }

        if let Some(trailers) = &message.trailers {
            let trailers = trailers.as_pairs();
            let outcome = match direction {
                Direction::Request => self.stream.request_trailers(&trailers),
                Direction::Response => self.stream.response_trailers(&trailers),
            };
            self.record(trailers_phase, outcome)?;
        }
        Ok(())
    }

    /// Records a callback's outcome, lets mocked timeouts expire, and tells whether the exchange
    /// goes on (false once the stream was answered locally or reset).
    fn record(
        &mut self,
        phase: &'static str,
        outcome: Result<Outcome, HarnessError>,
    ) -> Result<bool> {
        match outcome {
            Ok(outcome) => self.phases.push(PhaseOutput {
                phase,
                action: action_name(outcome.action()).to_string(),
                invoked: outcome.invoked,
            }),
            // The harness applied the failure policy to the stream; report the crash and go on
            // as Envoy would.
            Err(error) if error.is_vm_crash() => {
                self.phases.push(PhaseOutput {
                    phase,
                    action: "crashed".to_string(),
                    invoked: true,
                });
                *self.vm_failure = Some(vm_failure_output(&error));
            }
            Err(error) => return Err(error).with_context(|| format!("running {phase}")),
        }
        self.expire_timed_out_callouts()?;
        Ok(self.stream.local_reply().is_none()
            && !matches!(
                (self.stream.request_state(), self.stream.response_state()),
                (StreamState::Reset, _) | (_, StreamState::Reset)
            ))
    }

    /// Callouts mocked as timeouts stay pending until their timeout elapses in virtual time. A
    /// callout without a timeout never expires (as in Envoy) and stays pending.
    fn expire_timed_out_callouts(&mut self) -> Result<()> {
        for _ in 0..MAX_TIMEOUT_ROUNDS {
            let pending = self.plugin.pending_http_callouts();
            let longest = pending.iter().map(|callout| callout.timeout).max();
            let Some(longest) = longest.filter(|timeout| !timeout.is_zero()) else {
                return Ok(());
            };
            self.plugin
                .advance_clock(longest)
                .context("letting mocked callout timeouts expire")?;
        }
        bail!("the filter kept dispatching callouts that time out ({MAX_TIMEOUT_ROUNDS} rounds)")
    }
}

fn vm_failure_output(error: &HarnessError) -> VmFailureOutput {
    let (kind, callback, message) = match error {
        HarnessError::Trap {
            callback, message, ..
        } => ("trap", callback.clone(), message.clone()),
        HarnessError::MemoryLimit { callback, .. } => {
            ("memory_limit", callback.clone(), error.to_string())
        }
        HarnessError::FuelExhausted { callback, .. } => {
            ("fuel_exhausted", callback.clone(), error.to_string())
        }
        HarnessError::ResourceLimit { callback, .. } => {
            ("resource_limit", callback.clone(), error.to_string())
        }
        // Only VM crashes (`is_vm_crash`) are reported here, all named above; `other` would be
        // a crash kind added to the harness and not yet to this list.
        other => ("other", String::new(), other.to_string()),
    };
    VmFailureOutput {
        kind,
        callback,
        message,
        backtrace: error.backtrace().to_vec(),
    }
}

pub(crate) fn property_value(value: &PropertyValueInput) -> PropertyValue {
    value.to_harness()
}

fn metrics(plugin: &Plugin) -> BTreeMap<String, MetricOutput> {
    plugin
        .metrics()
        .into_iter()
        .map(|(name, value)| {
            let value = match value {
                MetricValue::Counter(value) => MetricValueOutput::Counter { value },
                MetricValue::Gauge(value) => MetricValueOutput::Gauge { value },
                MetricValue::Histogram(values) => MetricValueOutput::Histogram { values },
            };
            let output = MetricOutput {
                value,
                envoy_stat: envoy_stat_name(&name),
                prometheus: prometheus_name(&name),
            };
            (name, output)
        })
        .collect()
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Continue => "continue",
        Action::Pause => "pause",
        Action::ContinueAndEndStream => "continue_and_end_stream",
        Action::StopAllIterationAndBuffer => "stop_all_iteration_and_buffer",
        Action::StopAllIterationAndWatermark => "stop_all_iteration_and_watermark",
        Action::StopIterationAndWatermark => "stop_iteration_and_watermark",
        Action::StopIterationNoBuffer => "stop_iteration_no_buffer",
    }
}

pub(crate) fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
        LogLevel::Critical => "critical",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vm_crash_has_its_own_kind() {
        let callback = || "proxy_on_request_headers".to_string();
        let backtrace = || vec!["flood".to_string()];
        let crashes = [
            (
                HarnessError::Trap {
                    callback: callback(),
                    message: "unreachable".to_string(),
                    backtrace: backtrace(),
                },
                "trap",
            ),
            (
                HarnessError::MemoryLimit {
                    callback: callback(),
                    requested_bytes: 2,
                    limit_bytes: 1,
                    backtrace: backtrace(),
                },
                "memory_limit",
            ),
            (
                HarnessError::FuelExhausted {
                    callback: callback(),
                    fuel: 1,
                    backtrace: backtrace(),
                },
                "fuel_exhausted",
            ),
            (
                HarnessError::ResourceLimit {
                    callback: callback(),
                    resource: "callouts dispatched by one callback".to_string(),
                    limit: 1_000,
                    backtrace: backtrace(),
                },
                "resource_limit",
            ),
        ];
        for (error, kind) in crashes {
            assert!(error.is_vm_crash(), "{error}");
            let output = vm_failure_output(&error);
            assert_eq!(
                (output.kind, output.callback.as_str()),
                (kind, "proxy_on_request_headers")
            );
            assert_eq!(output.backtrace, backtrace());
        }
        let limit = vm_failure_output(&HarnessError::ResourceLimit {
            callback: callback(),
            resource: "queued items".to_string(),
            limit: 5,
            backtrace: backtrace(),
        });
        assert_eq!(
            limit.message,
            "proxy_on_request_headers exceeded the harness limit on queued items (5)"
        );
    }
}
