//! wasmesh benchmarks: what a filter costs per request, measured the way the field does.
//!
//! Every filter is described once, as [`scenario::Scenario`]s (configuration, requests, expected
//! verdict) in [`scenarios`], and run three ways by the same code:
//! * **native**: the filter crate's rlib driven through the SDK's
//!   [`StreamDriver`](wasmesh_sdk::adapter::StreamDriver) over
//!   [`MemoryHost`](wasmesh_sdk::testing::MemoryHost) and
//!   [`MemoryRequest`](wasmesh_sdk::request::MemoryRequest) ([`scenario::NativeRun`]);
//! * **wasm**: the real `wasm32-wasip1` release build in the harness ([`scenario::WasmRun`]);
//! * **no-op**: the same two for `wasmesh-noop-filter`, the baseline every ratio is taken against.
//!
//! The criterion benches (`benches/filters.rs`, `benches/harness.rs`) time them and print the
//! ratios ([`timing`]); the tests (`tests/`) hold the module-size budgets ([`size`]) and check
//! that linear memory stays flat over 10,000 requests. Figures: `BENCHMARKS.md` at the root.

pub mod error;
pub mod scenario;
pub mod scenarios;
pub mod size;
pub mod timing;
pub mod wat;

pub use error::BenchError;
pub use scenario::{Exchange, NativeRun, Scenario, Verdict, WasmRun};
