//! Hand-written proxy-wasm modules (WAT) for the harness micro-benchmarks: the smallest module
//! the harness accepts, so that what is measured is the host and nothing of an SDK.

/// A module whose `proxy_on_request_headers` calls `proxy_get_current_time_nanoseconds`
/// `hostcalls` times (an empty hostcall round trip each) and then, if `read_headers`, reads the
/// whole request header map once with `proxy_get_header_map_pairs`. Every other callback
/// returns at once.
///
/// Its `malloc` always hands out the same 64 KiB buffer: the module never holds two host
/// allocations at once, and a bump allocator would run out over a long benchmark.
pub fn module(hostcalls: u32, read_headers: bool) -> String {
    let read = if read_headers {
        // HTTP_REQUEST_HEADERS (0); address and size of the copy are written at 0 and 4.
        "(drop (call $pairs (i32.const 0) (i32.const 0) (i32.const 4)))"
    } else {
        ""
    };
    format!(
        r#"(module
  (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $size i32) (result i32)
    (select (i32.const 65536) (i32.const 0) (i32.le_u (local.get $size) (i32.const 65536))))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32)
    (block $done
      (loop $again
        (br_if $done (i32.ge_u (local.get $i) (i32.const {hostcalls})))
        (drop (call $now (i32.const 8)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $again)))
    {read}
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32)))
"#
    )
}

/// `count` request headers of typical size (`x-header-N: value-of-header-N`) after the four
/// pseudo-headers.
pub fn headers(count: usize) -> Vec<(String, String)> {
    let mut headers = vec![
        (":method".to_string(), "GET".to_string()),
        (":path".to_string(), "/api/items?page=2".to_string()),
        (":scheme".to_string(), "http".to_string()),
        (":authority".to_string(), "shop.example.com".to_string()),
    ];
    headers.extend(
        (headers.len()..count).map(|i| (format!("x-header-{i}"), format!("value-of-header-{i}"))),
    );
    headers.truncate(count);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_harness::{Harness, StreamState};

    #[test]
    fn the_module_loads_and_lets_requests_through() {
        let plugin = Harness::from_bytes(module(3, true).as_bytes())
            .unwrap()
            .start()
            .unwrap();
        let headers = headers(10);
        let borrowed: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut stream = plugin.http_stream();
        stream.request_headers(&borrowed, true).unwrap();
        assert_eq!(stream.request_state(), StreamState::Continued);
        stream
            .response_headers(&[(":status", "200")], true)
            .unwrap();
        stream.complete().unwrap();
        assert!(plugin.vm_failure(0).is_none());
    }

    #[test]
    fn headers_have_the_requested_count() {
        assert_eq!(headers(10).len(), 10);
        assert_eq!(headers(100).len(), 100);
        assert_eq!(headers(100)[99].0, "x-header-99");
    }
}
