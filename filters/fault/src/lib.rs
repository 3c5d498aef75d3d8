//! wasmesh fault filter: Envoy's `envoy.filters.http.fault` (and Istio's `VirtualService`
//! `fault`) as a proxy-wasm module, for chaos runs on any mesh that loads wasm.
//!
//! * [`config`]: the configuration (Envoy's `HTTPFault` in proto3 JSON, Istio's shape, wasmesh
//!   extensions), validated with JSON paths, compiled into an [`config::Experiment`];
//! * [`logic`]: the per-request decisions (delay, abort, selection, stats), tested natively;
//! * [`active`]: `max_active_faults` across worker VMs (a shared-data ledger with leases);
//! * [`control`]: polling a control service for the live experiment and the kill switch;
//! * [`random`]: the fault dice (seeded for reproducible runs);
//! * [`filter`]: the glue that exports the logic as a proxy-wasm module.
//!
//! See `README.md` for every field and a worked chaos run.

pub mod active;
pub mod config;
pub mod control;
pub mod filter;
pub mod logic;
pub mod random;

pub use config::Config;
pub use logic::{FaultFilter, FaultStream};
