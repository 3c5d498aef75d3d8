//! Fuzz target: Envoy path normalization (`wasmesh_sdk::matcher::normalize_path`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wasmesh_fuzz::check_path(data);
});
