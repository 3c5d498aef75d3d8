//! A module calling Envoy's built-in foreign functions `compress` and `uncompress` (and a name
//! Envoy does not register), written with the `proxy-wasm` crate alone (no wasmesh SDK), as
//! filter authors outside wasmesh write them; `harness/tests/foreign_functions_vs_envoy.rs`
//! compares what it logs in the harness and in Envoy 1.40. It calls them from the root context
//! (`proxy_on_configure`) and from a request (`proxy_on_request_headers`): compressing then
//! uncompressing the result, for empty, short and large (100 KiB) inputs, and uncompressing a
//! truncated stream and bytes that are not zlib. Every line it logs is
//! `FF <phase> <case> rc=<status> size=<size> fnv=<FNV-1a> head=<hex of up to 32 bytes>`, as the
//! WAT module of that test logs them; the crate's `Ok(None)` (Ok without bytes) is `rc=0 size=0`.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

/// Size of the large input.
const BIG: usize = 100 * 1024;

/// Calls `function` with `args`, logs the outcome under `tag` and hands back the result bytes.
fn call(tag: &str, function: &str, args: &[u8]) -> Vec<u8> {
    let (status, result) = match hostcalls::call_foreign_function(function, Some(args)) {
        Ok(result) => (0, result.unwrap_or_default()),
        Err(status) => (status as u32, Vec::new()),
    };
    let fnv = result.iter().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    });
    let head: String = result
        .iter()
        .take(32)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let _ = hostcalls::log(
        LogLevel::Info,
        &format!(
            "{tag} rc={status} size={} fnv={fnv} head={head}",
            result.len()
        ),
    );
    result
}

/// The large input: not very compressible, the same bytes as the WAT module's.
fn big() -> Vec<u8> {
    (0..BIG as u32)
        .map(|i| ((i % 251) ^ (i.wrapping_mul(i) >> 17)) as u8)
        .collect()
}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let packed = call("FF root compress_short", "compress", b"hello");
        call("FF root uncompress_short", "uncompress", &packed);
        call("FF root unknown", "no_such_function", b"x");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request;

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let packed = call("FF request compress_empty", "compress", b"");
        call("FF request uncompress_empty", "uncompress", &packed);
        let packed = call(
            "FF request compress_short",
            "compress",
            b"hello hello hello hello, wasm",
        );
        call("FF request uncompress_short", "uncompress", &packed);
        let packed = call("FF request compress_big", "compress", &big());
        call("FF request uncompress_big", "uncompress", &packed);
        // The stream without its Adler-32 checksum.
        let truncated = packed
            .get(..packed.len().saturating_sub(4))
            .unwrap_or_default();
        call("FF request uncompress_truncated", "uncompress", truncated);
        call(
            "FF request uncompress_garbage",
            "uncompress",
            b"this is not zlib data",
        );
        call("FF request unknown", "no_such_function", b"x");
        call("FF request done", "no_such_function", b"");
        Action::Continue
    }
}
