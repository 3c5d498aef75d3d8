//! Shared helpers for the conformance tests: a WAT prelude that declares every proxy-wasm
//! import, a growing bump allocator and the ABI marker, so each test only writes the callbacks
//! it exercises.
#![allow(dead_code)]

use wasmesh_harness::{Harness, PluginBuilder};

/// Scratch words for hostcall out-parameters.
pub const RET_PTR: u32 = 512;
pub const RET_SIZE: u32 = 516;
pub const RET_EXTRA: u32 = 520;

/// Imports, memory, allocator and ABI marker; `body` adds callbacks, data and globals.
pub fn module(body: &str) -> String {
    module_with_abi(body, "proxy_abi_version_0_2_1")
}

pub fn module_with_abi(body: &str, abi_marker: &str) -> String {
    format!(
        r#"(module
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_log_level" (func $proxy_get_log_level (param i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $proxy_get_current_time_nanoseconds (param i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $proxy_set_tick_period_milliseconds (param i32) (result i32)))
  (import "env" "proxy_get_property" (func $proxy_get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $proxy_set_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $proxy_get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $proxy_set_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $proxy_get_buffer_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $proxy_get_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $proxy_add_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $proxy_replace_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $proxy_remove_header_map_value (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $proxy_get_header_map_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $proxy_set_header_map_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_size" (func $proxy_get_header_map_size (param i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $proxy_send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $proxy_continue_stream (param i32) (result i32)))
  (import "env" "proxy_close_stream" (func $proxy_close_stream (param i32) (result i32)))
  (import "env" "proxy_http_call" (func $proxy_http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_call" (func $proxy_grpc_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_stream" (func $proxy_grpc_stream (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_send" (func $proxy_grpc_send (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_cancel" (func $proxy_grpc_cancel (param i32) (result i32)))
  (import "env" "proxy_grpc_close" (func $proxy_grpc_close (param i32) (result i32)))
  (import "env" "proxy_get_status" (func $proxy_get_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $proxy_get_shared_data (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $proxy_set_shared_data (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $proxy_register_shared_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_resolve_shared_queue" (func $proxy_resolve_shared_queue (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $proxy_enqueue_shared_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $proxy_dequeue_shared_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $proxy_define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $proxy_increment_metric (param i32 i64) (result i32)))
  (import "env" "proxy_record_metric" (func $proxy_record_metric (param i32 i64) (result i32)))
  (import "env" "proxy_get_metric" (func $proxy_get_metric (param i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $proxy_set_effective_context (param i32) (result i32)))
  (import "env" "proxy_done" (func $proxy_done (result i32)))
  (import "env" "proxy_call_foreign_function" (func $proxy_call_foreign_function (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (func $malloc (export "malloc") (param $size i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (global.get $heap))
    (local.set $end (i32.add (local.get $p) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then (if (i32.eq (memory.grow (i32.add (i32.shr_u (i32.sub (local.get $end) (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)) (i32.const 1))) (i32.const -1))
        (then (unreachable)))))
    (global.set $heap (local.get $end))
    (local.get $p))
  (func (export "{abi_marker}"))
  ;; Logs (ptr, len) at info.
  (func $info (param $ptr i32) (param $len i32) (drop (call $proxy_log (i32.const 2) (local.get $ptr) (local.get $len))))
  ;; Logs the (ptr, len) pair the host wrote at RET_PTR/RET_SIZE.
  (func $info_ret (call $info (i32.load (i32.const 512)) (i32.load (i32.const 516))))
  ;; Writes the decimal form of $n at $dst and returns its length.
  (func $itoa (param $n i32) (param $dst i32) (result i32)
    (local $len i32) (local $tmp i32) (local $i i32)
    (local.set $tmp (local.get $n)) (local.set $len (i32.const 1))
    (block $done (loop $count
      (br_if $done (i32.lt_u (local.get $tmp) (i32.const 10)))
      (local.set $tmp (i32.div_u (local.get $tmp) (i32.const 10)))
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (br $count)))
    (local.set $i (local.get $len)) (local.set $tmp (local.get $n))
    (loop $write
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $dst) (local.get $i)) (i32.add (i32.const 48) (i32.rem_u (local.get $tmp) (i32.const 10))))
      (local.set $tmp (i32.div_u (local.get $tmp) (i32.const 10)))
      (br_if $write (i32.gt_u (local.get $i) (i32.const 0))))
    (local.get $len))
  ;; Reads the decimal number of $len ASCII digits at $p.
  (func $atoi (param $p i32) (param $len i32) (result i32)
    (local $n i32)
    (block $done (loop $next
      (br_if $done (i32.eqz (local.get $len)))
      (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10)) (i32.sub (i32.load8_u (local.get $p)) (i32.const 48))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (local.set $len (i32.sub (local.get $len) (i32.const 1)))
      (br $next)))
    (local.get $n))
  ;; Logs "<tag> <a> <b>".
  (func $log2 (param $tag i32) (param $taglen i32) (param $a i32) (param $b i32)
    (local $p i32)
    (memory.copy (i32.const 800) (local.get $tag) (local.get $taglen))
    (local.set $p (i32.add (i32.const 800) (local.get $taglen)))
    (i32.store8 (local.get $p) (i32.const 32))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (local.set $p (i32.add (local.get $p) (call $itoa (local.get $a) (local.get $p))))
    (i32.store8 (local.get $p) (i32.const 32))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (local.set $p (i32.add (local.get $p) (call $itoa (local.get $b) (local.get $p))))
    (call $info (i32.const 800) (i32.sub (local.get $p) (i32.const 800))))
  ;; Logs "<tag> <a>".
  (func $log1 (param $tag i32) (param $taglen i32) (param $a i32)
    (local $p i32)
    (memory.copy (i32.const 800) (local.get $tag) (local.get $taglen))
    (local.set $p (i32.add (i32.const 800) (local.get $taglen)))
    (i32.store8 (local.get $p) (i32.const 32))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (local.set $p (i32.add (local.get $p) (call $itoa (local.get $a) (local.get $p))))
    (call $info (i32.const 800) (i32.sub (local.get $p) (i32.const 800))))
  ;; Logs a status code in decimal.
  (func $log_status (param $code i32)
    (call $info (i32.const 700) (call $itoa (local.get $code) (i32.const 700))))
{body}
)"#
    )
}

/// Compiles a WAT module into a plugin builder.
pub fn builder(wat: &str) -> PluginBuilder {
    let bytes = wat::parse_str(wat).unwrap_or_else(|e| panic!("invalid WAT: {e}\n{wat}"));
    Harness::from_bytes(&bytes).unwrap()
}

/// The messages the worker VMs logged so far (not those of the VMs Envoy runs on its main
/// thread: [`wasmesh_harness::PluginBuilder::main_thread_vms`]).
pub fn messages(plugin: &wasmesh_harness::Plugin) -> Vec<String> {
    plugin
        .worker_logs()
        .into_iter()
        .map(|l| l.message)
        .collect()
}

/// Standard request headers.
pub const GET: &[(&str, &str)] = &[
    (":method", "GET"),
    (":path", "/hello?x=1"),
    (":authority", "example.com"),
    (":scheme", "http"),
];

/// Places strings in the module's data section (from address 1024) and hands back their
/// (address, length) for use in WAT instructions.
pub struct Strings {
    next: u32,
    segments: Vec<String>,
}

impl Default for Strings {
    fn default() -> Self {
        Self::new()
    }
}

impl Strings {
    pub fn new() -> Self {
        Strings {
            next: 1024,
            segments: Vec::new(),
        }
    }

    /// Adds bytes; returns "(i32.const ptr) (i32.const len)" ready to splice into a call.
    pub fn bytes(&mut self, bytes: &[u8]) -> String {
        let ptr = self.next;
        let escaped: String = bytes.iter().map(|b| format!("\\{b:02x}")).collect();
        self.segments
            .push(format!("(data (i32.const {ptr}) \"{escaped}\")"));
        self.next += (bytes.len() as u32 + 8) & !7;
        format!("(i32.const {ptr}) (i32.const {})", bytes.len())
    }

    pub fn s(&mut self, text: &str) -> String {
        self.bytes(text.as_bytes())
    }

    /// A serialized header map.
    pub fn map(&mut self, pairs: &[(&str, &str)]) -> String {
        self.bytes(&wasmesh_harness::headermap::serialize(pairs))
    }

    /// A NUL-separated property path.
    pub fn path(&mut self, parts: &[&str]) -> String {
        self.bytes(parts.join("\0").as_bytes())
    }

    pub fn data(&self) -> String {
        self.segments.join("\n")
    }
}

/// The "(i32.const ptr)" half of a `Strings` argument pair.
pub fn ptr(arg: &str) -> String {
    match arg.split_once(") ") {
        Some((first, _)) => format!("{first})"),
        None => arg.to_string(),
    }
}

/// A module's bytes written to a file of its own for Envoy to load; the file goes when this
/// value is dropped.
pub struct WasmFile {
    pub path: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl WasmFile {
    /// Writes `bytes` as `<name>.wasm` in a fresh directory named after the test process.
    pub fn new(name: &str, bytes: &[u8]) -> Self {
        let dir = std::env::temp_dir().join(format!("wasmesh-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.wasm"));
        std::fs::write(&path, bytes).unwrap();
        WasmFile { path, dir }
    }
}

impl Drop for WasmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
