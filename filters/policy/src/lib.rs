//! wasmesh policy filter: external authorization with a decision cache and local lists.
//!
//! Envoy's `envoy.filters.http.ext_authz` as a proxy-wasm module: every request is checked
//! with an authorization service (raw HTTP, or gRPC `envoy.service.auth.v3.Authorization/Check`
//! with real protobuf), configured with the same proto3-JSON fields. wasmesh adds a decision
//! cache (keyed by chosen request attributes, TTL, LRU, per-decision TTL, shared between
//! workers), fail-static, local allow/deny lists evaluated before any check, and dry-run.
//!
//! * [`config`]: the configuration (Envoy's `ExtAuthz` plus the wasmesh extensions);
//! * [`lists`]: local allow/deny lists;
//! * [`cache`]: the decision cache;
//! * [`check`]: building the check and reading the service's answer;
//! * [`verdict`]: decisions and how they are applied;
//! * [`proto`]: the `Authorization/Check` protobuf messages;
//! * [`logic`]: the per-request flow, tested natively;
//! * [`filter`]: the proxy-wasm glue.

pub mod cache;
pub mod check;
pub mod config;
pub mod filter;
pub mod lists;
pub mod logic;
pub mod proto;
pub mod verdict;

pub use config::Config;
pub use logic::{Policy, PolicyStream};
