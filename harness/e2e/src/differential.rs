//! Runs corpus groups through a real Envoy and through the harness, and lists every
//! difference.
//!
//! One group is one filter configuration: one Envoy (one worker, so one wasm VM, like the
//! harness's single worker) and one harness plugin, each given the group's requests in order, so
//! state (rate-limit buckets, caches, a crashed VM) carries over identically. Both sides talk to
//! the same kind of services ([`crate::services`]). Compared, per exchange: [`Observed`]; per
//! group: the callouts the services received, and the counters and gauges the module defined.

use std::path::Path;
use std::time::{Duration, Instant};

use wasmesh_envoy::{Envoy, EnvoyBuilder, WasmFilter};
use wasmesh_harness::{envoy_stat_name, Harness, MetricValue, Plugin};

use crate::corpus::{Corpus, Group, Tokens};
use crate::observe::{normalize, observe_envoy, observe_harness, Observed};
use crate::services::{self, Services};
use crate::E2eError;

/// Pseudo-headers, compared in the request line instead. (What Envoy's async client adds,
/// `x-envoy-internal` and `x-envoy-expected-rq-timeout-ms`, is compared: the harness's callouts
/// carry them as Envoy sends them.)
const IGNORED_CALLOUT_HEADERS: &[&str] = &[":method", ":path", ":scheme"];

/// How long Envoy's counters may lag behind the last response (access logs and `on_log` run
/// after the response is written; stats are merged asynchronously).
const METRIC_SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Both observations of one exchange.
#[derive(Debug, Clone)]
pub struct ExchangeResult {
    /// The exchange's name.
    pub name: String,
    /// What real Envoy did.
    pub envoy: Observed,
    /// What the harness did.
    pub harness: Observed,
    /// Errors the harness returned (a trapping module), for the report.
    pub harness_errors: Vec<String>,
    /// The documented divergence this exchange is expected to show, if any.
    pub divergence: Option<String>,
}

impl ExchangeResult {
    /// Whether Envoy and the harness observed the same thing.
    pub fn agrees(&self) -> bool {
        self.envoy == self.harness
    }
}

/// A disagreement between Envoy and the harness (or a stale divergence note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// An exchange was observed differently.
    Exchange {
        /// The exchange.
        name: String,
        /// Envoy's observation.
        envoy: Box<Observed>,
        /// The harness's observation.
        harness: Box<Observed>,
    },
    /// The callout services saw different requests.
    Callouts {
        /// What Envoy sent, one line per callout.
        envoy: Vec<String>,
        /// What the harness's module dispatched, one line per callout.
        harness: Vec<String>,
    },
    /// A counter or gauge the module defined has a different value.
    Metric {
        /// The metric's name as the module defined it.
        name: String,
        /// Envoy's value (`wasmcustom.<name>`), `None` if Envoy has no such stat.
        envoy: Option<u64>,
        /// The harness's value.
        harness: u64,
    },
    /// An exchange marked as a known divergence now agrees: the note must go.
    StaleDivergence {
        /// The exchange.
        name: String,
        /// The README anchor it named.
        divergence: String,
    },
}

impl std::fmt::Display for Difference {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exchange {
                name,
                envoy,
                harness,
            } => write!(
                formatter,
                "exchange {name:?}:\n    envoy:   {envoy:?}\n    harness: {harness:?}"
            ),
            Self::Callouts { envoy, harness } => write!(
                formatter,
                "callouts:\n    envoy:   {envoy:?}\n    harness: {harness:?}"
            ),
            Self::Metric {
                name,
                envoy,
                harness,
            } => write!(
                formatter,
                "metric {name}: envoy {envoy:?}, harness {harness}"
            ),
            Self::StaleDivergence { name, divergence } => write!(
                formatter,
                "exchange {name:?} is marked as divergence {divergence:?} but now agrees: \
                 remove the mark (and the README entry if it was the last)"
            ),
        }
    }
}

/// The outcome of one group.
#[derive(Debug, Clone)]
pub struct GroupReport {
    /// The group's name.
    pub group: String,
    /// The filter it ran.
    pub filter: String,
    /// Every exchange, in order.
    pub exchanges: Vec<ExchangeResult>,
    /// Every unexpected difference (documented divergences are not listed, stale ones are).
    pub differences: Vec<Difference>,
    /// Callouts compared (as the harness's module dispatched them).
    pub callouts_compared: usize,
    /// Counters and gauges compared.
    pub metrics_compared: usize,
    /// How long the group took (Envoy start included).
    pub elapsed: Duration,
}

/// A per-group request id, the same for Envoy and the harness.
pub fn request_id(group: usize, exchange: usize) -> String {
    format!("{group:08x}-0000-4000-8000-{exchange:012x}")
}

/// Runs group `index` of `corpus`. `scratch` receives compiled WAT modules.
pub fn run_group(
    corpus: &Corpus,
    index: usize,
    tokens: &Tokens,
    scratch: &Path,
) -> Result<GroupReport, E2eError> {
    let started = Instant::now();
    let group = corpus
        .groups
        .get(index)
        .ok_or_else(|| E2eError::Corpus(format!("no group {index}")))?;
    let source = corpus
        .filters
        .get(&group.filter)
        .ok_or_else(|| E2eError::Corpus(format!("unknown filter {:?}", group.filter)))?;
    let wasm = source.wasm(scratch)?;
    let config = group.config_text()?;
    let services = Services::start(tokens.jwks_text())?;

    // Envoy boots (V8 compiles the module) while wasmtime compiles it for the harness.
    let (envoy, plugin) = std::thread::scope(|scope| {
        let booting = scope.spawn(|| start_envoy(group, &wasm, &config, &services));
        let plugin = start_harness(group, &wasm, &config, tokens);
        let envoy = booting
            .join()
            .map_err(|_| E2eError::Corpus("the thread starting Envoy panicked".to_string()))?;
        Ok::<_, E2eError>((envoy?, plugin?))
    })?;

    let mut exchanges = Vec::new();
    let mut differences = Vec::new();
    for (number, exchange) in group.requests.iter().enumerate() {
        let id = request_id(index, number);
        let (in_envoy, answer) =
            observe_envoy(&envoy, &services, exchange, &id, &group.volatile_headers)?;
        // The harness's upstream answers with what the upstream answered Envoy.
        let (in_harness, notes) =
            observe_harness(&plugin, exchange, &id, &answer, &group.volatile_headers)?;
        let result = ExchangeResult {
            name: exchange.name.clone(),
            envoy: in_envoy,
            harness: in_harness,
            harness_errors: notes.errors,
            divergence: exchange.divergence.clone(),
        };
        match (&result.divergence, result.agrees()) {
            (None, false) => differences.push(Difference::Exchange {
                name: result.name.clone(),
                envoy: Box::new(result.envoy.clone()),
                harness: Box::new(result.harness.clone()),
            }),
            (Some(divergence), true) => differences.push(Difference::StaleDivergence {
                name: result.name.clone(),
                divergence: divergence.clone(),
            }),
            _ => {}
        }
        exchanges.push(result);
    }

    let envoy_callouts = envoy_callouts(&services);
    let harness_callouts = harness_callouts(&plugin);
    let callouts_compared = harness_callouts.len();
    if envoy_callouts != harness_callouts {
        differences.push(Difference::Callouts {
            envoy: envoy_callouts,
            harness: harness_callouts,
        });
    }
    let (metrics_compared, metric_differences) = compare_metrics(&envoy, &plugin)?;
    differences.extend(metric_differences);

    Ok(GroupReport {
        group: group.name.clone(),
        filter: group.filter.clone(),
        exchanges,
        differences,
        callouts_compared,
        metrics_compared,
        elapsed: started.elapsed(),
    })
}

fn start_envoy(
    group: &Group,
    wasm: &Path,
    config: &str,
    services: &Services,
) -> Result<Envoy, E2eError> {
    let builder = EnvoyBuilder::new()
        .wasm_filter(
            WasmFilter::new(wasm)
                .name(group.filter.as_str())
                .configuration(config)
                .failure_policy(group.failure_policy.for_envoy()),
        )
        .upstream(services.upstream.addr());
    Ok(services
        .callout_clusters()
        .into_iter()
        .fold(builder, EnvoyBuilder::cluster)
        .start()?)
}

fn start_harness(
    group: &Group,
    wasm: &Path,
    config: &str,
    tokens: &Tokens,
) -> Result<Plugin, E2eError> {
    let builder = Harness::load(wasm)?
        .config(config)
        .plugin_name(&group.filter)
        .failure_policy(group.failure_policy.for_harness())
        .cluster(services::UPSTREAM_CLUSTER);
    Ok(Services::callout_cluster_names()
        .into_iter()
        .fold(builder, |builder, name| builder.cluster(name))
        .http_callout_handler(services::harness_callout_handler(tokens.jwks_text()))
        .start()?)
}

/// One callout as `<cluster> <method> <path> <headers>`, headers normalized like an upstream
/// request's, without what Envoy's async client adds after the module handed the call over.
fn callout_line(cluster: &str, method: &str, path: &str, headers: &[(String, String)]) -> String {
    let headers = normalize(headers.to_vec(), IGNORED_CALLOUT_HEADERS, &[]);
    let headers: Vec<String> = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}"))
        .collect();
    format!("{cluster} {method} {path} [{}]", headers.join(", "))
}

/// `<cluster> <method> <path> <headers>`, sorted: what the services received from Envoy.
fn envoy_callouts(services: &Services) -> Vec<String> {
    let mut lines: Vec<String> = services
        .callouts_received()
        .iter()
        .map(|(cluster, request)| {
            callout_line(cluster, &request.method, &request.path, &request.headers)
        })
        .collect();
    lines.sort();
    lines
}

/// The same lines for the callouts the harness's module dispatched to the services that record
/// what they receive (a refused or hung callout leaves no trace in Envoy's services).
fn harness_callouts(plugin: &Plugin) -> Vec<String> {
    let mut lines: Vec<String> = plugin
        .http_callouts()
        .iter()
        .filter(|callout| services::RECORDING_CLUSTERS.contains(&callout.upstream.as_str()))
        .map(|callout| {
            callout_line(
                &callout.upstream,
                callout.header(":method").unwrap_or_default(),
                callout.header(":path").unwrap_or_default(),
                &callout.headers,
            )
        })
        .collect();
    lines.sort();
    lines
}

/// Compares the counters and gauges the module defined with Envoy's (`wasmcustom.<name>`),
/// once Envoy's stats have had time to settle: how many were compared, and which differ.
fn compare_metrics(envoy: &Envoy, plugin: &Plugin) -> Result<(usize, Vec<Difference>), E2eError> {
    let expected: Vec<(String, u64)> = plugin
        .metrics()
        .into_iter()
        .filter_map(|(name, value)| match value {
            MetricValue::Counter(value) | MetricValue::Gauge(value) => Some((name, value)),
            MetricValue::Histogram(_) => None,
        })
        .collect();
    let deadline = Instant::now() + METRIC_SETTLE_TIMEOUT;
    loop {
        let stats = envoy.stats()?;
        let differences: Vec<Difference> = expected
            .iter()
            .filter_map(|(name, harness)| {
                let in_envoy = stats.get(&envoy_stat_name(name)).copied();
                (in_envoy != Some(*harness)).then(|| Difference::Metric {
                    name: name.clone(),
                    envoy: in_envoy,
                    harness: *harness,
                })
            })
            .collect();
        if differences.is_empty() || Instant::now() >= deadline {
            return Ok((expected.len(), differences));
        }
        // Stats settle asynchronously and have no change notification: poll.
        std::thread::sleep(Duration::from_millis(20));
    }
}
