//! wasmesh jwt-authn filter (in progress).
