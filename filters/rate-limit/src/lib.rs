//! wasmesh rate-limit filter: Envoy's `local_ratelimit` (exact across worker VMs) and
//! `ratelimit` (an Envoy rate limit service over gRPC) as one proxy-wasm module.
//!
//! * [`config`]: the configuration, in Envoy's proto3-JSON shape;
//! * [`descriptor`]: request descriptors built by `rate_limits` actions;
//! * [`bucket`]: GCRA token buckets (`governor`) over shared data with compare-and-swap;
//! * [`local`]: Envoy's local rate limiter semantics over those buckets;
//! * [`rls`]: the rate limit service messages;
//! * [`headers`]: `X-RateLimit-*` and IETF `RateLimit` headers;
//! * [`logic`]: the decisions per request; [`filter`]: the proxy-wasm glue.

pub mod bucket;
pub mod config;
pub mod descriptor;
pub mod filter;
pub mod headers;
pub mod local;
pub mod logic;
pub mod rls;

pub use config::Config;
pub use logic::RateLimitFilter;
