//! wasmesh rate-limit filter (in progress).
