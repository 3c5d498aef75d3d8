//! Fuzz target: proxy-wasm header-map deserialization (`wasmesh_harness::headermap`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wasmesh_fuzz::check_headermap(data);
});
