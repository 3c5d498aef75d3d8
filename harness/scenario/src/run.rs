//! Running a scenario under its judges: resolve the module, start each judge, run the steps in
//! order, check each step's expectations under each judge, and (with both judges) compare what
//! they saw.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use wasmesh_harness::build::{locate_workspace, WasmBuild};

use crate::check::{check, show_bytes, show_closed, Check, Verdict};
use crate::envoy_judge::EnvoyJudge;
use crate::format::{Module, Step};
use crate::harness_judge::HarnessJudge;
use crate::load::ScenarioFile;
use crate::observe::{header, Response, StepObservation};
use crate::ScenarioError;

/// The judges a run uses.
pub const HARNESS: &str = "harness";
/// The real-Envoy judge.
pub const ENVOY: &str = "envoy";

/// Response headers whose values depend on the moment or on Envoy's own generation, not on the
/// module: compared between judges for presence only.
const VOLATILE_HEADERS: &[&str] = &[
    "date",
    "server",
    "x-envoy-upstream-service-time",
    "x-request-id",
    "x-response-code-details",
    "content-length",
    "transfer-encoding",
    "connection",
];

/// Upstream request headers Envoy's router adds after the filter chain or that name the moment.
const VOLATILE_UPSTREAM_HEADERS: &[&str] = &[
    "x-request-id",
    "x-envoy-expected-rq-timeout-ms",
    "content-length",
    "transfer-encoding",
    "connection",
    ":scheme",
];

/// How to run scenarios.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Also run every scenario in a real Envoy.
    pub envoy: bool,
    /// Run this module instead of the one each scenario names.
    pub module: Option<PathBuf>,
    /// The race-mode schedule of concurrent steps in the harness.
    pub race_seed: u64,
}

/// What one judge made of one step.
#[derive(Debug, Clone)]
pub struct JudgeStep {
    /// `harness` or `envoy`.
    pub judge: &'static str,
    /// The checks of the step's expectations.
    pub checks: Vec<Check>,
    /// The step could not run (the run stopped here under this judge).
    pub error: Option<String>,
    /// What the judge saw.
    pub seen: StepObservation,
}

/// One step under every judge.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Position in the file (0-based).
    pub index: usize,
    /// Its name (given, or derived).
    pub name: String,
    /// One entry per judge that ran it.
    pub judges: Vec<JudgeStep>,
    /// Where the judges saw different things, whatever the expectations say.
    pub disagreements: Vec<String>,
}

impl StepReport {
    /// Whether every check passed and no judge failed to run the step.
    pub fn passed(&self) -> bool {
        self.judges.iter().all(|judge| {
            judge.error.is_none()
                && judge
                    .checks
                    .iter()
                    .all(|check| !matches!(check.verdict, Verdict::Fail { .. }))
        })
    }
}

/// One scenario under every judge.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    /// The file.
    pub path: PathBuf,
    /// The scenario's name.
    pub name: String,
    /// The judges that ran.
    pub judges: Vec<&'static str>,
    /// What stopped the scenario before its steps, per judge (a module that cannot start, a
    /// build failure).
    pub errors: Vec<(&'static str, String)>,
    /// Settings only the harness applies (Envoy has no way to take them), named so that a
    /// difference they cause is not a surprise.
    pub harness_only: Vec<&'static str>,
    /// The steps.
    pub steps: Vec<StepReport>,
}

impl ScenarioReport {
    /// Whether the scenario passed under every judge.
    pub fn passed(&self) -> bool {
        self.errors.is_empty() && self.steps.iter().all(StepReport::passed)
    }

    /// A report for a file that could not even be read.
    pub fn unreadable(path: &Path, error: &ScenarioError) -> Self {
        Self {
            path: path.to_path_buf(),
            name: path.display().to_string(),
            judges: Vec::new(),
            errors: vec![("load", error.to_string())],
            harness_only: Vec::new(),
            steps: Vec::new(),
        }
    }
}

/// The module file a scenario runs: the override, a path relative to the scenario, or a
/// workspace filter built now.
pub fn resolve_module(file: &ScenarioFile, options: &Options) -> Result<PathBuf, ScenarioError> {
    if let Some(module) = &options.module {
        return Ok(module.clone());
    }
    let Module { path, filter } = &file.scenario.module;
    match (path, filter) {
        (Some(path), _) => Ok(file.dir().join(path)),
        (None, Some(name)) => build_filter(&file.dir(), name),
        // `load::validate` requires one of the two.
        (None, None) => Err(ScenarioError::Invalid {
            file: file.path.display().to_string(),
            line: None,
            field: "module".to_string(),
            message: "give `path` or `filter`".to_string(),
        }),
    }
}

/// Builds a workspace filter named by its folder (under `filters/` or `examples/`) or package.
///
/// Built once per process and folder: scenarios of one filter share the module, and each cargo
/// invocation, even with nothing to rebuild, costs a good part of a second.
fn build_filter(start: &Path, name: &str) -> Result<PathBuf, ScenarioError> {
    type Built = Mutex<HashMap<(PathBuf, String), PathBuf>>;
    static BUILT: OnceLock<Built> = OnceLock::new();
    let start = if start.as_os_str().is_empty() {
        Path::new(".")
    } else {
        start
    };
    let key = (start.to_path_buf(), name.to_string());
    let built = BUILT.get_or_init(Built::default);
    let lock = || {
        built
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    if let Some(module) = lock().get(&key) {
        return Ok(module.clone());
    }
    // The scenario's own workspace, else the one the command runs in.
    let workspace = match locate_workspace(start) {
        Ok(workspace) => workspace,
        Err(error) => locate_workspace(Path::new(".")).map_err(|_| error)?,
    };
    let package = ["filters", "examples"]
        .iter()
        .map(|folder| workspace.root.join(folder).join(name).join("Cargo.toml"))
        .find_map(|manifest| std::fs::read_to_string(manifest).ok())
        .and_then(|manifest| package_name(&manifest))
        .unwrap_or_else(|| name.to_string());
    let module = WasmBuild::new(&package)
        .workspace_root(&workspace.root)
        .run()?;
    lock().insert(key, module.clone());
    Ok(module)
}

/// The `name` of a Cargo manifest's `[package]`.
fn package_name(manifest: &str) -> Option<String> {
    let package = manifest.split("[package]").nth(1)?;
    package.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "name").then(|| value.trim().trim_matches('"').to_string())
    })
}

/// The name a step is shown with.
pub fn step_name(index: usize, step: &Step) -> String {
    if let Some(name) = &step.name {
        return name.clone();
    }
    if let Some(connection) = &step.connection {
        let sends = connection
            .client
            .iter()
            .filter(|action| !action.end)
            .count();
        let end = if connection.client.iter().any(|action| action.end) {
            ", then ends its side"
        } else {
            ""
        };
        return format!("a connection: the client sends {sends} time(s){end}");
    }
    match (&step.request, step.advance_ms, step.concurrent) {
        (Some(request), _, Some(count)) => {
            format!("{count} × {} {} at once", request.method, request.path)
        }
        (Some(request), _, None) => format!("{} {}", request.method, request.path),
        (None, Some(by), _) => format!("advance the clock {by} ms"),
        _ => format!("step {index}"),
    }
}

/// Runs one scenario under the harness (and, with `options.envoy`, under Envoy).
pub fn run_scenario(file: &ScenarioFile, options: &Options) -> ScenarioReport {
    let mut report = ScenarioReport {
        path: file.path.clone(),
        name: file.name(),
        judges: vec![HARNESS],
        errors: Vec::new(),
        harness_only: Vec::new(),
        steps: Vec::new(),
    };
    if options.envoy {
        report.judges.push(ENVOY);
        report.harness_only = harness_only_settings(&file.scenario);
    }
    let module = match resolve_module(file, options) {
        Ok(module) => module,
        Err(error) => {
            report.errors.push(("module", error.to_string()));
            return report;
        }
    };
    let mut harness = match HarnessJudge::start(file, &module, options.race_seed) {
        Ok(judge) => Some(judge),
        Err(error) => {
            report.errors.push((HARNESS, error.to_string()));
            None
        }
    };
    let mut envoy = if options.envoy {
        match EnvoyJudge::start(file, &module) {
            Ok(judge) => Some(judge),
            Err(error) => {
                report.errors.push((ENVOY, error.to_string()));
                None
            }
        }
    } else {
        None
    };
    let blind = Blind::of(file);
    let mut envoy_diverged: Option<String> = None;
    for (index, step) in file.scenario.steps.iter().enumerate() {
        let mut judges = Vec::new();
        if let Some(judge) = harness.as_mut() {
            let result = judge.step(index, step);
            let stop = result.is_err();
            judges.push(judged(HARNESS, step, result));
            if stop {
                harness = None;
            }
        }
        if let Some(judge) = envoy.as_mut() {
            // After a step Envoy could not run (a clock jump), its state is not the harness's:
            // later steps would compare a refilled bucket with an empty one. They are reported
            // as not run rather than judged on a different history.
            let result = match &envoy_diverged {
                Some(why) => Ok(StepObservation {
                    not_run: Some(format!("harness only after step {why}")),
                    ..StepObservation::default()
                }),
                None => judge.step(index, step),
            };
            if let Ok(seen) = &result {
                if seen.not_run.is_some() && envoy_diverged.is_none() {
                    envoy_diverged = Some(format!(
                        "{} ({}), which Envoy cannot run",
                        index + 1,
                        step_name(index, step)
                    ));
                }
            }
            let stop = result.is_err();
            judges.push(judged(ENVOY, step, result));
            if stop {
                envoy = None;
            }
        }
        let disagreements = match judges.as_slice() {
            [first, second] if first.error.is_none() && second.error.is_none() => {
                disagreements(&first.seen, &second.seen, &blind)
            }
            _ => Vec::new(),
        };
        report.steps.push(StepReport {
            index,
            name: step_name(index, step),
            judges,
            disagreements,
        });
    }
    report
}

/// The settings of `scenario` the Envoy judge cannot apply.
fn harness_only_settings(scenario: &crate::format::Scenario) -> Vec<&'static str> {
    let steps = &scenario.steps;
    [
        (!scenario.properties.is_empty(), "properties"),
        (scenario.start_time.is_some(), "start_time"),
        (scenario.seed != 0, "seed"),
        (
            steps.iter().any(|step| !step.properties.is_empty()),
            "steps[].properties",
        ),
        (steps.iter().any(|step| step.worker != 0), "steps[].worker"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect()
}

fn judged(
    judge: &'static str,
    step: &Step,
    result: Result<StepObservation, ScenarioError>,
) -> JudgeStep {
    match result {
        Ok(seen) => JudgeStep {
            judge,
            checks: step
                .expect
                .as_ref()
                .map(|expect| check(expect, &seen))
                .unwrap_or_default(),
            error: None,
            seen,
        },
        Err(error) => JudgeStep {
            judge,
            checks: Vec::new(),
            error: Some(error.to_string()),
            seen: StepObservation::default(),
        },
    }
}

/// What a comparison of judges must not look at.
#[derive(Debug, Clone, Default)]
pub struct Blind {
    /// Clusters nothing listens behind: Envoy's servers cannot see calls to them.
    pub refused_clusters: Vec<String>,
    /// Response headers compared for presence only (the scenario's `volatile_headers`).
    pub volatile_headers: Vec<String>,
}

impl Blind {
    /// What the scenario makes unobservable or volatile.
    pub fn of(file: &ScenarioFile) -> Self {
        Self {
            refused_clusters: file
                .scenario
                .clusters
                .iter()
                .filter(|(_, cluster)| cluster.refuses_connections())
                .map(|(name, _)| name.clone())
                .collect(),
            volatile_headers: file
                .scenario
                .volatile_headers
                .iter()
                .map(|name| name.to_ascii_lowercase())
                .collect(),
        }
    }
}

/// Every place where two judges saw different things in the same step.
pub fn disagreements(
    harness: &StepObservation,
    envoy: &StepObservation,
    blind: &Blind,
) -> Vec<String> {
    if harness.not_run.is_some() || envoy.not_run.is_some() {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut differ = |what: &str, left: String, right: String| {
        if left != right {
            found.push(format!("{what}: harness {left}, envoy {right}"));
        }
    };
    if let (Some(left), Some(right)) = (&harness.response, &envoy.response) {
        compare_responses(left, right, &blind.volatile_headers, &mut differ);
        differ(
            "upstream",
            reached(harness.upstream.is_some()),
            reached(envoy.upstream.is_some()),
        );
        if let (Some(left), Some(right)) = (&harness.upstream, &envoy.upstream) {
            differ(
                "upstream body",
                show_bytes(&left.body),
                show_bytes(&right.body),
            );
            for (name, _) in left.headers.iter().chain(&right.headers) {
                if VOLATILE_UPSTREAM_HEADERS.contains(&name.as_str()) {
                    continue;
                }
                differ(
                    &format!("upstream header {name}"),
                    shown_header(&left.headers, name),
                    shown_header(&right.headers, name),
                );
            }
        }
    }
    if let (Some(left), Some(right)) = (&harness.connection, &envoy.connection) {
        differ(
            "upstream connected",
            left.upstream_connected.to_string(),
            right.upstream_connected.to_string(),
        );
        differ(
            "upstream received",
            show_bytes(&left.upstream_received),
            show_bytes(&right.upstream_received),
        );
        differ(
            "client received",
            show_bytes(&left.client_received),
            show_bytes(&right.client_received),
        );
        differ(
            "client got the end",
            left.client_got_end.to_string(),
            right.client_got_end.to_string(),
        );
        if let (Some(left), Some(right)) = (left.closed, right.closed) {
            differ("closed", show_closed(left), show_closed(right));
        }
    }
    let calls = |seen: &StepObservation| {
        seen.callouts
            .iter()
            .filter(|callout| !blind.refused_clusters.contains(&callout.cluster))
            .map(|callout| format!("{}{}", callout.cluster, callout.path))
            .collect::<Vec<_>>()
            .join(", ")
    };
    differ("calls", calls(harness), calls(envoy));
    for (name, value) in &envoy.metrics {
        differ(
            &format!("metric {name}"),
            harness
                .metrics
                .get(name)
                .map_or_else(|| "absent".to_string(), u64::to_string),
            value.to_string(),
        );
    }
    differ(
        "statuses",
        format!("{:?}", harness.statuses),
        format!("{:?}", envoy.statuses),
    );
    found.dedup();
    found
}

fn compare_responses(
    left: &Response,
    right: &Response,
    volatile: &[String],
    differ: &mut impl FnMut(&str, String, String),
) {
    differ("status", left.status.to_string(), right.status.to_string());
    differ("reset", left.reset.to_string(), right.reset.to_string());
    differ(
        "details",
        format!("{:?}", left.details),
        format!("{:?}", right.details),
    );
    if !left.reset && !right.reset {
        differ("body", show_bytes(&left.body), show_bytes(&right.body));
    }
    let mut names: Vec<&str> = left
        .headers
        .iter()
        .chain(&right.headers)
        .map(|(name, _)| name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        if VOLATILE_HEADERS.contains(&name) {
            continue;
        }
        let shown = |headers: &[(String, String)]| {
            if volatile.iter().any(|volatile| volatile == name) {
                reached(header(headers, name).is_some())
            } else {
                shown_header(headers, name)
            }
        };
        differ(
            &format!("header {name}"),
            shown(&left.headers),
            shown(&right.headers),
        );
    }
}

fn reached(present: bool) -> String {
    if present { "present" } else { "absent" }.to_string()
}

fn shown_header(headers: &[(String, String)], name: &str) -> String {
    header(headers, name).map_or_else(|| "absent".to_string(), |value| format!("{value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_envoy_cannot_take_are_named() {
        let scenario = crate::load::parse(
            Path::new("s.yaml"),
            "format: 1\nmodule: {path: m.wasm}\nworkers: 2\nseed: 7\nstart_time: 0\n\
             steps: [{request: {}, worker: 1}]\n",
        )
        .unwrap();
        assert_eq!(
            harness_only_settings(&scenario),
            ["start_time", "seed", "steps[].worker"]
        );
    }

    #[test]
    fn judges_disagree_on_connections() {
        let connection = |client: &[u8], closed| StepObservation {
            connection: Some(crate::observe::ConnectionSeen {
                upstream_connected: true,
                upstream_received: b"a".to_vec(),
                client_received: client.to_vec(),
                client_got_end: false,
                closed,
            }),
            ..StepObservation::default()
        };
        let blind = Blind::default();
        use crate::format::ClosedBy::{Client, Proxy};
        assert!(disagreements(
            &connection(b"x", Some(Client)),
            &connection(b"x", Some(Client)),
            &blind
        )
        .is_empty());
        assert_eq!(
            disagreements(
                &connection(b"x", Some(Client)),
                &connection(b"y", Some(Proxy)),
                &blind
            ),
            [
                "client received: harness \"x\", envoy \"y\"",
                "closed: harness client, envoy proxy"
            ]
        );
        // A judge that cannot tell who closed is not a disagreement.
        assert!(disagreements(
            &connection(b"x", Some(Client)),
            &connection(b"x", None),
            &blind
        )
        .is_empty());
    }

    #[test]
    fn a_connection_step_is_named_by_what_the_client_does() {
        let step: Step =
            serde_yaml::from_str("connection: {client: [{send: a}, {send: b}, {end: true}]}")
                .unwrap();
        assert_eq!(
            step_name(0, &step),
            "a connection: the client sends 2 time(s), then ends its side"
        );
    }

    #[test]
    fn manifests_name_their_package() {
        let manifest = "[package]\nname = \"wasmesh-rbac\"\nversion.workspace = true\n";
        assert_eq!(package_name(manifest).as_deref(), Some("wasmesh-rbac"));
        assert_eq!(package_name("[workspace]\n"), None);
    }

    #[test]
    fn judges_disagree_on_what_the_module_decides_not_on_what_envoy_stamps() {
        let response = |status: u16, date: &str, user: &str| StepObservation {
            response: Some(Response {
                status,
                headers: vec![("date".into(), date.into()), ("x-user".into(), user.into())],
                ..Response::default()
            }),
            ..StepObservation::default()
        };
        let blind = Blind::default();
        assert!(
            disagreements(&response(200, "a", "u"), &response(200, "b", "u"), &blind).is_empty()
        );
        let volatile = Blind {
            volatile_headers: vec!["x-user".into()],
            ..Blind::default()
        };
        assert!(disagreements(
            &response(200, "a", "u"),
            &response(200, "a", "v"),
            &volatile
        )
        .is_empty());
        assert_eq!(
            disagreements(&response(200, "a", "u"), &response(403, "a", "v"), &blind),
            [
                "status: harness 200, envoy 403",
                "header x-user: harness \"u\", envoy \"v\""
            ]
        );
    }
}
