//! wasmesh harness: a wasmtime host that emulates the proxy-wasm ABI as Envoy implements it.

pub mod build;
pub mod envoy;
