//! Scenario files: language-neutral tests of any proxy-wasm module, judged by the harness and by
//! a real Envoy. `wasmesh test` is a thin command over this crate.
//!
//! A scenario (YAML, or JSON) names a module and its configuration, the clusters it may call
//! with their answers, then steps: requests, clock advances, concurrent requests, or TCP
//! connections through a network filter, each with what must hold afterwards. The format is [`format::Scenario`]; its JSON Schema is [`schema`].
//!
//! Each step is run by a judge and observed in one shape ([`observe::StepObservation`]), then
//! checked against the step's expectations ([`check::check`]):
//! - [`harness_judge::HarnessJudge`]: the module in `wasmesh-harness`, clusters answered by
//!   mocks, on a virtual clock;
//! - [`envoy_judge::EnvoyJudge`]: the module in a real Envoy 1.40, with local servers behind its
//!   clusters and its upstream. What Envoy cannot do (a clock jump) or show (shared data) is
//!   reported as such, never passed silently.
//!
//! [`run::run_scenario`] runs one file under the chosen judges and reports every expectation
//! under each, and, with both, every place where they disagree.

pub mod check;
pub mod envoy_judge;
pub mod format;
pub mod harness_judge;
pub mod load;
pub mod observe;
pub mod report;
pub mod run;
mod start_time;
pub mod tls;
pub mod update;
mod values;

use std::path::PathBuf;
use std::time::Duration;

pub use start_time::StartTime;
pub use values::{Headers, PropertyInput, PropertyValueInput};

/// Everything that stops a scenario (as opposed to an expectation that fails, which is a result).
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// The scenario file is invalid.
    #[error("{file}{}: {field}{}{message}", line.map(|line| format!(":{line}")).unwrap_or_default(), if field.is_empty() { "" } else { ": " })]
    Invalid {
        /// The file.
        file: String,
        /// The line (1-based), when the parser knows it.
        line: Option<usize>,
        /// The path of the faulty field, e.g. `steps[2].request.headers`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The module could not be built.
    #[error("building the module: {0}")]
    Build(#[from] wasmesh_harness::build::BuildError),
    /// The harness refused the module or a call (a module that cannot start lands here).
    #[error("harness: {0}")]
    Harness(#[from] wasmesh_harness::HarnessError),
    /// Envoy could not be started or talked to.
    #[error("envoy: {0}")]
    Envoy(#[from] wasmesh_envoy::EnvoyError),
    /// The module held a request and nothing could resume it.
    #[error(
        "the module still holds the request after {limit:?} of virtual time ({pending}): Envoy \
         would hold it until a timeout of the route or the client"
    )]
    Held {
        /// How long the harness waited.
        limit: Duration,
        /// What is pending.
        pending: String,
    },
}

/// The JSON Schema of scenario files, for editors (`wasmesh test --schema`).
pub fn schema() -> serde_json::Value {
    let schema = schemars::schema_for!(format::Scenario);
    serde_json::to_value(schema).unwrap_or_default()
}
