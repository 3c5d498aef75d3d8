//! The one error type of the benchmark support code.

use std::fmt;

/// Why a benchmark or budget check could not run (a build, a load, a filter refusing its
/// configuration, or a scenario whose verdict is not the expected one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchError(pub String);

impl fmt::Display for BenchError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

impl From<wasmesh_harness::HarnessError> for BenchError {
    fn from(error: wasmesh_harness::HarnessError) -> Self {
        BenchError(format!("harness: {error}"))
    }
}

impl From<wasmesh_harness::build::BuildError> for BenchError {
    fn from(error: wasmesh_harness::build::BuildError) -> Self {
        BenchError(format!("build: {error}"))
    }
}

impl From<wasmesh_sdk::error::Error> for BenchError {
    fn from(error: wasmesh_sdk::error::Error) -> Self {
        BenchError(format!("filter: {error}"))
    }
}

impl From<std::io::Error> for BenchError {
    fn from(error: std::io::Error) -> Self {
        BenchError(format!("i/o: {error}"))
    }
}

impl From<serde_json::Error> for BenchError {
    fn from(error: serde_json::Error) -> Self {
        BenchError(format!("json: {error}"))
    }
}
