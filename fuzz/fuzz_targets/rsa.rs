//! Fuzz target: jwt-authn's RSA verifier against RustCrypto's, on signatures mutated from valid ones (the seeds).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wasmesh_fuzz::check_rsa(data);
});
