//! wasmesh harness: a wasmtime host that emulates the proxy-wasm ABI (0.2.1, and 0.2.0) as
//! Envoy implements it, so filters can be tested, debugged and benchmarked off-proxy.
//!
//! The harness is strict and follows Envoy where Envoy and the specification disagree (each
//! such place says so in a comment): header maps are only reachable while Envoy holds them,
//! local replies and `continue_stream` take effect after the callback returns, `StopIteration`
//! from headers stops everything, HTTP callout answers go to the root context, streams end with
//! `proxy_on_log` then `proxy_on_done` and `proxy_on_delete`, and a crashed VM answers 503
//! (`FAIL_CLOSED`), passes traffic through (`FAIL_OPEN`) or is recreated (`FAIL_RELOAD`).
//!
//! Time is virtual ([`Plugin::advance_clock`]); randomness is seeded; every guest pointer is
//! bounds-checked; memory is capped and runaway code is stopped by fuel, each reported as a typed
//! [`HarnessError`] with a demangled wasm backtrace.
//!
//! ```no_run
//! use std::time::Duration;
//! use wasmesh_harness::{Action, CalloutReply, Harness, LogLevel};
//!
//! # fn main() -> Result<(), wasmesh_harness::HarnessError> {
//! let plugin = Harness::load("target/wasm32-wasip1/release/header_filter.wasm")?
//!     .config(r#"{"header": "x-hello"}"#)
//!     .log_level(LogLevel::Debug)
//!     .http_callout_handler(|_callout| CalloutReply::ok(200, "allowed"))
//!     .start()?;
//!
//! let mut stream = plugin.http_stream();
//! let outcome = stream.request_headers(
//!     &[(":method", "GET"), (":path", "/"), (":authority", "example.com")],
//!     true,
//! )?;
//! if let Some(reply) = outcome.local_reply() {
//!     println!("denied with {}", reply.status);
//! } else {
//!     assert_eq!(outcome.action(), Action::Continue);
//!     stream.response_headers(&[(":status", "200")], true)?;
//!     println!("upstream got {:?}", stream.request_headers_now());
//! }
//! stream.complete()?;
//! plugin.advance_clock(Duration::from_secs(1))?; // fires ticks and callout timeouts
//! println!("{:?}", plugin.metrics());
//! # Ok(())
//! # }
//! ```

pub mod build;
pub mod envoy;

mod callouts;
mod clock;
mod engine;
mod error;
pub mod headermap;
mod hostcalls;
mod metrics;
mod plugin;
mod property;
mod shared;
mod stream;
mod types;
mod vm;
mod wasi;

pub use callouts::{CalloutReply, GrpcCallout, GrpcReply, HttpCallout};
pub use clock::START_UNIX_SECONDS;
pub use engine::{AbiVersion, CacheStats};
pub use error::{HarnessError, Status};
pub use plugin::{Harness, Plugin, PluginBuilder};
pub use property::PropertyValue;
pub use stream::HttpStream;
pub use types::{
    Action, FailurePolicy, Limits, LocalReply, LogEntry, LogLevel, MetricValue, Outcome,
    StreamState,
};
