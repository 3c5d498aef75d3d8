//! Real Envoy in the loop, across filters.
//!
//! Every filter has its own end-to-end tests (`filters/<f>/tests/envoy*.rs`). This crate holds
//! what spans all of them and cannot live in the harness (which must not depend on filters):
//!
//! - the **differential corpus** (`corpus/corpus.json`): groups of exchanges, one filter and
//!   configuration per group, each exchange run through the harness and through a real Envoy
//!   (one Envoy per group, requests in order so state carries over in both). Status codes,
//!   response code details, local-reply bodies, the request the upstream saw (through an echo
//!   upstream), the response headers the client got, the callouts the filter made and the
//!   metrics it counted must be identical ([`differential`]);
//! - the **foreign-module corpus** (`corpus/foreign.json`): the same comparison for modules built
//!   by other toolchains, one behaviour written in Go (its own `wasip1` target), AssemblyScript
//!   (`@solo-io/proxy-runtime`) and Rust with the `proxy-wasm` crate alone ([`foreign`] builds
//!   them), each group run over the three;
//! - the **overhead benchmark** (`src/bin/overhead.rs`): requests/s and latency of an Envoy
//!   with no filter, with a wasmesh filter, and with Envoy's native filter given the same
//!   policy ([`load`]).
//!
//! See `harness/e2e/README.md` for the corpus format, how to run both, and the known
//! Envoy/spec divergences.

pub mod corpus;
pub mod differential;
pub mod foreign;
pub mod load;
pub mod observe;
pub mod services;

use std::path::PathBuf;

use wasmesh_envoy::EnvoyError;
use wasmesh_harness::build::BuildError;
use wasmesh_harness::HarnessError;

/// Everything that can stop a corpus run or a benchmark (as opposed to a difference between the
/// harness and Envoy, which is a result, see [`differential::Difference`]).
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// The corpus (or a file it names) is unreadable or invalid.
    #[error("corpus: {0}")]
    Corpus(String),
    /// Building a filter's wasm failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Envoy could not be started or talked to.
    #[error(transparent)]
    Envoy(#[from] EnvoyError),
    /// The harness refused the module or a call.
    #[error("harness: {0}")]
    Harness(#[from] HarnessError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// A toolchain (Go, AssemblyScript) is missing, or failed to build a module.
    #[error("{0}")]
    Toolchain(String),
    /// The load generator failed or printed something unexpected.
    #[error("load generator: {0}")]
    Load(String),
}

/// The crate's directory (`harness/e2e`), where `corpus/` lives.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace root (two levels up from this crate).
pub fn workspace_root() -> PathBuf {
    crate_dir().join("../..")
}
