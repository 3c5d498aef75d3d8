//! # wasmesh RBAC filter
//!
//! Authorization configured like Envoy's `envoy.filters.http.rbac` (`rules`, `shadow_rules`,
//! per-rule stats, `RBAC: access denied`), or with Istio `AuthorizationPolicy` objects, for
//! Envoy and Istio through proxy-wasm. See `README.md` for every field.
//!
//! * [`config`]: the configuration (Envoy proto3 JSON plus wasmesh fields);
//! * [`istio`]: the `AuthorizationPolicy` input format;
//! * [`normalize`]: path and host normalization before matching;
//! * [`attributes`]: what the policies see of a request;
//! * [`rule`], [`metadata`], [`template`]: permissions, principals and their matchers;
//! * [`engine`]: Envoy and Istio evaluation order;
//! * [`logic`]: the per-request decision, stats and logs;
//! * [`filter`]: the proxy-wasm glue.

pub mod attributes;
pub mod config;
pub mod engine;
pub mod filter;
pub mod istio;
pub mod logic;
pub mod metadata;
pub mod normalize;
pub mod rule;
pub mod template;
mod util;

pub use config::Config;
pub use logic::RbacFilter;
