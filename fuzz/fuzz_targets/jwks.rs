//! Fuzz target: JWKS documents (RSA, EC, OKP, oct, x5c), then every fixture token verified against the parsed keys.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wasmesh_fuzz::check_jwks(data);
});
