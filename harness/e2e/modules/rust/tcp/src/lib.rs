//! The network (TCP) filter of `harness/tests/tcp_vs_envoy.rs`, written with the `proxy-wasm`
//! crate alone (no wasmesh SDK), as filter authors outside wasmesh write them. It does what that
//! test's WAT module does and logs the same `TCP ...` lines: every callback with its sizes and
//! end-of-stream flags; each downstream chunk wrapped in `<`...`>`, each upstream chunk prefixed
//! with `u:` (and an attempt to prefix the downstream buffer too, which Envoy refuses); downstream
//! data ending in `+` held (`StopIteration`) until more arrives; data ending in `!` let through
//! with `proxy_continue_stream` (then stopped); the connection closed when downstream data holds
//! `CLOSE`; the status of a few property reads when the connection opens. With the plugin
//! configuration `stop`, `proxy_on_new_connection` returns `StopIteration` (and the module never
//! continues), as the WAT module built with `module(1)` does.
//!
//! Where the crate reports less than the ABI does, the module logs what the crate gives (see
//! `status_of`, `read`); where the crate would panic on a status Envoy answers, or does not wrap
//! a hostcall, the module calls the ABI function itself (module `abi` at the end).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, PeerType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { stop: false }) });
}}

fn log(message: &str) {
    let _ = hostcalls::log(LogLevel::Info, message);
}

/// A crate result as the status code the ABI call answered: `Ok(None)` is `NotFound` for the
/// crate's property reads (it also stands for `Ok` without a value; the crate does not tell the
/// two apart).
fn status_of<T>(result: Result<Option<T>, Status>) -> u32 {
    match result {
        Ok(Some(_)) => 0,
        Ok(None) => 1,
        Err(status) => status as u32,
    }
}

fn unit_status(result: Result<(), Status>) -> u32 {
    match result {
        Ok(()) => 0,
        Err(status) => status as u32,
    }
}

/// Logs `TCP size <buffer> <size>` for a buffer type (0 when the host reports none).
fn size(buffer: BufferType) {
    log(&format!(
        "TCP size {} {}",
        buffer as u32,
        abi::buffer_size(buffer as u32)
    ));
}

/// Reads a data buffer as the crate hands it over and logs `TCP read 0 <size>`, or
/// `TCP read 0 none` when the crate gives no bytes (Envoy gives none for an empty buffer).
fn read(buffer: BufferType, len: usize) -> Vec<u8> {
    match hostcalls::get_buffer(buffer, 0, len) {
        Ok(Some(bytes)) => {
            log(&format!("TCP read 0 {}", bytes.len()));
            bytes
        }
        Ok(None) => {
            log("TCP read 0 none");
            Vec::new()
        }
        Err(status) => {
            log(&format!("TCP read {} 0", status as u32));
            Vec::new()
        }
    }
}

struct Root {
    /// Whether connections stop at `proxy_on_new_connection`.
    stop: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.stop = self.get_plugin_configuration().as_deref() == Some(b"stop".as_slice());
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        log("TCP create");
        Some(Box::new(Connection { stop: self.stop }))
    }
}

struct Connection {
    stop: bool,
}

impl Context for Connection {
    fn on_done(&mut self) -> bool {
        log("TCP done");
        true
    }
}

impl StreamContext for Connection {
    fn on_new_connection(&mut self) -> Action {
        log("TCP new_connection");
        let read_status = |path: Vec<&str>| status_of(hostcalls::get_property(path));
        log(&format!(
            "TCP props {} {}",
            read_status(vec!["request", "path"]),
            read_status(vec!["response", "code"])
        ));
        log(&format!(
            "TCP props {} {}",
            read_status(vec!["connection", "mtls"]),
            read_status(vec!["plugin_name"])
        ));
        log(&format!(
            "TCP props {} {}",
            read_status(vec!["request", "headers"]),
            read_status(vec!["connection", "id"])
        ));
        if self.stop {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_downstream_data(&mut self, len: usize, end_of_stream: bool) -> Action {
        log(&format!("TCP downstream {len} {}", u8::from(end_of_stream)));
        let data = read(BufferType::DownstreamData, len);
        if len == 0 {
            return Action::Continue;
        }
        match data.last() {
            // Data ending in '!' asks Envoy to continue reading, and to continue the upstream
            // side, which Envoy 1.40 does not implement; then stops.
            Some(b'!') => {
                let downstream = unit_status(hostcalls::resume_downstream());
                // `resume_upstream` panics on any status but Ok, and Envoy answers
                // Unimplemented (12), which the crate's `Status` does not even list.
                let upstream = abi::continue_stream(abi::UPSTREAM);
                log(&format!("TCP continue {downstream} {upstream}"));
                return Action::Pause;
            }
            // Data ending in '+' is held until more arrives.
            Some(b'+') => {
                log("TCP hold");
                return Action::Pause;
            }
            _ => {}
        }
        if data.windows(5).any(|window| window == b"CLOSE") {
            log(&format!(
                "TCP close {}",
                unit_status(hostcalls::close_downstream())
            ));
            return Action::Continue;
        }
        let before = unit_status(hostcalls::set_buffer(
            BufferType::DownstreamData,
            0,
            0,
            b"<",
        ));
        let after = unit_status(hostcalls::set_buffer(
            BufferType::DownstreamData,
            len + 1,
            0,
            b">",
        ));
        log(&format!("TCP edit {before} {after}"));
        size(BufferType::DownstreamData);
        size(BufferType::UpstreamData);
        Action::Continue
    }

    fn on_upstream_data(&mut self, len: usize, end_of_stream: bool) -> Action {
        log(&format!("TCP upstream {len} {}", u8::from(end_of_stream)));
        read(BufferType::UpstreamData, len);
        if len == 0 {
            return Action::Continue;
        }
        let upstream = unit_status(hostcalls::set_buffer(BufferType::UpstreamData, 0, 0, b"u:"));
        // The downstream buffer is not this callback's: Envoy answers BadArgument, on which the
        // crate's `set_buffer` panics.
        let downstream = abi::set_buffer(BufferType::DownstreamData as u32, b"u:");
        log(&format!("TCP edit {upstream} {downstream}"));
        size(BufferType::UpstreamData);
        size(BufferType::DownstreamData);
        Action::Continue
    }

    fn on_downstream_close(&mut self, peer_type: PeerType) {
        log(&format!("TCP downstream_close {}", peer_type as u32));
    }

    fn on_upstream_close(&mut self, peer_type: PeerType) {
        log(&format!("TCP upstream_close {}", peer_type as u32));
    }

    fn on_log(&mut self) {
        log("TCP log");
        size(BufferType::DownstreamData);
        size(BufferType::UpstreamData);
    }
}

/// The crate has no `on_delete` callback: its dispatcher drops the context on
/// `proxy_on_delete`.
impl Drop for Connection {
    fn drop(&mut self) {
        log("TCP delete");
    }
}

/// ABI functions called directly: `proxy_get_buffer_status`, which the crate does not wrap, and
/// `proxy_continue_stream` / `proxy_set_buffer_bytes` for calls on which Envoy answers a status
/// the crate's wrappers panic on.
#[allow(unsafe_code)]
mod abi {
    pub const UPSTREAM: u32 = 3;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_buffer_status(buffer_type: u32, length: *mut usize, flags: *mut u32) -> u32;
        fn proxy_continue_stream(stream_type: u32) -> u32;
        fn proxy_set_buffer_bytes(
            buffer_type: u32,
            start: usize,
            size: usize,
            data: *const u8,
            data_size: usize,
        ) -> u32;
    }

    /// The buffer's size, 0 when the host reports an error.
    pub fn buffer_size(buffer_type: u32) -> usize {
        let mut length = 0;
        let mut flags = 0;
        // SAFETY: both out-parameters are valid for writes for the duration of the call.
        let status = unsafe { proxy_get_buffer_status(buffer_type, &mut length, &mut flags) };
        if status == 0 {
            length
        } else {
            0
        }
    }

    pub fn continue_stream(stream_type: u32) -> u32 {
        // SAFETY: no pointers.
        unsafe { proxy_continue_stream(stream_type) }
    }

    /// Inserts `value` at the buffer's start; the status.
    pub fn set_buffer(buffer_type: u32, value: &[u8]) -> u32 {
        // SAFETY: `value` is valid for reads of its length for the duration of the call.
        unsafe { proxy_set_buffer_bytes(buffer_type, 0, 0, value.as_ptr(), value.len()) }
    }
}
