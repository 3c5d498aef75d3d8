//! wasmesh `jwt_authn`: JSON Web Token authentication for proxy-wasm, configured like Envoy's
//! `envoy.filters.http.jwt_authn` (see README.md for every field).
//!
//! * [`config`]: the configuration, in Envoy's proto3-JSON shape;
//! * [`jwt`], [`jwks`], [`verify`], [`rsa`]: parsing tokens and key sets, signature
//!   verification;
//! * [`extract`], [`rules`], [`cache`], [`keys`]: token locations, route rules and requirements,
//!   the verified-token cache, remote key sets;
//! * [`authn`]: the decisions (pure logic over SDK types, tested natively);
//! * [`filter`]: the proxy-wasm glue.

pub mod authn;
pub mod cache;
pub mod config;
pub mod extract;
pub mod filter;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod rsa;
pub mod rules;
pub mod status;
pub mod verify;

pub use authn::{JwtAuthn, StreamState};
pub use config::JwtAuthentication;
pub use status::Status;

#[cfg(test)]
mod tests;
