//! wasmesh rbac filter (in progress).
