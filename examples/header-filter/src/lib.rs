//! A minimal wasmesh filter, meant to be read top to bottom:
//!
//! * [`logic`]: configuration and decisions, plain Rust over SDK types, tested natively;
//! * [`filter`]: the glue that exports the logic as a proxy-wasm module.
//!
//! It denies requests whose normalized path matches a configured [`StringMatcher`]
//! (local reply with details `header_filter_denied`), adds configured request and response
//! headers, and counts `header_filter.allowed` / `header_filter.denied`.
//!
//! [`StringMatcher`]: wasmesh_sdk::matcher::StringMatcher

pub mod filter;
pub mod logic;

pub use logic::{Config, HeaderFilter};
