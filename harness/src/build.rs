//! Builds wasm artifacts of workspace packages.
