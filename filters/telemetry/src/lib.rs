//! wasmesh telemetry: Istio's standard metrics, peer metadata exchange and JSON access logs as a
//! proxy-wasm HTTP filter.
//!
//! * [`config`]: Istio's stats plugin configuration (`stats.PluginConfig`), checked at load;
//! * [`logic`]: what each stream phase does ([`Telemetry`]); [`filter`] is the glue;
//! * [`dimensions`]: the standard dimensions from what a stream observed;
//! * [`stats`]: stat names that Envoy's tag extraction turns into labelled Prometheus series,
//!   and the `stats_tags` to configure;
//! * [`peer`], [`proto`]: workload identity and Istio's metadata-exchange encoding;
//! * [`grpc`]: gRPC message counting; [`access_log`]: the JSON access log; [`expr`]: the
//!   expressions of the configuration;
//! * [`prometheus`]: Envoy's Prometheus exposition of these metrics, reproduced off-proxy.

pub mod access_log;
pub mod config;
pub mod dimensions;
pub mod expr;
pub mod filter;
pub mod grpc;
pub mod logic;
pub mod peer;
pub mod prometheus;
pub mod proto;
pub mod stats;
pub mod util;

pub use config::Config;
pub use logic::Telemetry;
