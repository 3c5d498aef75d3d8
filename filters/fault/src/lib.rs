//! wasmesh fault filter (in progress).
