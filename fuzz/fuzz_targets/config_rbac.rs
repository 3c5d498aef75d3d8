//! Fuzz target: the rbac filter's configuration parser (`configure`: JSON load, validation, construction).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wasmesh_fuzz::configure_filter::<wasmesh_rbac::RbacFilter>(data);
});
