//! Fuzz target: JWT parsing and signature verification, then the configured jwt_authn filter with the token in a header, a custom header and a query parameter.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wasmesh_fuzz::check_token(data);
});
