//! Fuzz target: every hostcall with arbitrary pointers, lengths and values, from every callback, in the harness.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wasmesh_fuzz::hostcalls::run_program(data);
});
