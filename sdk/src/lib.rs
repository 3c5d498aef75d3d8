//! # wasmesh SDK
//!
//! What every wasmesh proxy-wasm filter shares. A filter is split into pure **logic** (plain
//! Rust over the types here, unit-tested natively) and a one-line **glue**
//! ([`export_filter!`]) that the [`adapter`] turns into proxy-wasm root/HTTP contexts.
//!
//! ```ignore
//! use wasmesh_sdk::prelude::*;
//!
//! pub struct MyFilter { /* built from config */ }
//!
//! impl HttpFilter for MyFilter {
//!     const NAME: &'static str = "my_filter";
//!     type Config = MyConfig;          // serde + Validate
//!     type Stream = ();                // per-stream state
//!     fn new(config: MyConfig, host: &mut dyn Host) -> Result<Self, Error> { /* ... */ }
//!     fn on_request_headers(&self, _: &mut (), request: &mut dyn Request, host: &mut dyn Host)
//!         -> Decision { /* ... */ }
//! }
//!
//! wasmesh_sdk::export_filter!(MyFilter);
//! ```
//!
//! Modules:
//! * [`request`]: the [`Request`](request::Request) view and [`MemoryRequest`](request::MemoryRequest);
//! * [`properties`]: Envoy attributes ([`Properties`](properties::Properties)), what requests and
//!   connections share;
//! * [`decision`]: [`Decision`](decision::Decision) and [`LocalReply`](decision::LocalReply);
//! * [`config`]: JSON loading with JSON-path errors, [`Validate`](config::Validate), proto3 helpers;
//! * [`header_option`]: Envoy's `HeaderValueOption` (headers to add, with append policy);
//! * [`matcher`]: Envoy's string/header matchers, CIDR ranges, percentages, path normalization;
//! * [`metrics`], [`clock`], [`shared`], [`callout`]: host services, bundled as [`host::Host`];
//! * [`host`]: the host-backed request and (wasm only) the proxy-wasm implementation;
//! * [`testing`]: [`MemoryHost`](testing::MemoryHost) for native tests (and, with the
//!   `proptest` feature, the configuration property tests every filter runs);
//! * [`adapter`]: [`HttpFilter`](adapter::HttpFilter) and the proxy-wasm glue;
//! * [`network`]: [`NetworkFilter`](network::NetworkFilter), the same for network (TCP) filters;
//! * [`body`]: the request body a filter sees while it buffers;
//! * [`error`]: the panic-free [`Error`](error::Error).

pub mod adapter;
pub mod body;
pub mod callout;
pub mod clock;
pub mod config;
pub mod decision;
pub mod error;
pub mod header_option;
pub mod host;
pub mod matcher;
pub mod metrics;
pub mod network;
pub mod properties;
pub mod protobuf;
pub mod random;
pub mod request;
pub mod shared;
pub mod testing;

/// The proxy-wasm crate the SDK builds on (used by [`export_filter!`]).
pub use proxy_wasm;

/// The names a filter usually needs.
pub mod prelude {
    pub use crate::adapter::HttpFilter;
    pub use crate::callout::{CalloutResponse, GrpcCallout, HttpCallout};
    pub use crate::clock::Clock;
    pub use crate::config::{validate_each, validate_field, ConfigError, Validate};
    pub use crate::decision::{Decision, LocalReply};
    pub use crate::error::Error;
    pub use crate::header_option::HeaderValueOption;
    pub use crate::host::{Host, LogLevel};
    pub use crate::matcher::{normalize_path, StringMatcher};
    pub use crate::metrics::{stat_name, Counter, Gauge, Histogram};
    pub use crate::network::{NetworkFilter, Verdict};
    pub use crate::properties::Properties;
    pub use crate::request::{HeaderMapKind, Request};
}
