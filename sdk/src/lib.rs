//! wasmesh SDK
