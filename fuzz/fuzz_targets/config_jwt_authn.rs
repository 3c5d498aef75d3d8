//! Fuzz target: the jwt-authn filter's configuration parser (`configure`: JSON load, validation, construction).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wasmesh_fuzz::configure_filter::<wasmesh_jwt_authn::JwtAuthn>(data);
});
