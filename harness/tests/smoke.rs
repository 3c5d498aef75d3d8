#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod common;
use common::*;
use wasmesh_harness::{Action, StreamState};

#[test]
fn request_headers_flow() {
    let wat = module(
        r#"
  (data (i32.const 1024) ":path")
  (data (i32.const 1040) "x-added")
  (data (i32.const 1056) "yes")
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (call $log_status (call $proxy_get_header_map_value (i32.const 0) (i32.const 1024) (i32.const 5) (i32.const 512) (i32.const 516)))
    (call $info_ret)
    (drop (call $proxy_add_header_map_value (i32.const 0) (i32.const 1040) (i32.const 7) (i32.const 1056) (i32.const 3)))
    (i32.const 0))
"#,
    );
    let plugin = builder(&wat).start().unwrap();
    let mut s = plugin.http_stream();
    let out = s.request_headers(GET, true).unwrap();
    assert_eq!(out.action(), Action::Continue);
    assert_eq!(messages(&plugin), vec!["0", "/hello?x=1"]);
    assert_eq!(s.request_header("x-added").as_deref(), Some("yes"));
    assert_eq!(s.request_state(), StreamState::Continued);
    s.complete().unwrap();
}

#[test]
fn hostcalls_are_counted_by_name_until_reset() {
    let wat = module(
        r#"
  (data (i32.const 1024) ":path")
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (drop (call $proxy_get_header_map_value (i32.const 0) (i32.const 1024) (i32.const 5) (i32.const 512) (i32.const 516)))
    (drop (call $proxy_get_header_map_value (i32.const 0) (i32.const 1024) (i32.const 5) (i32.const 512) (i32.const 516)))
    (call $info_ret)
    (i32.const 0))
"#,
    );
    let plugin = builder(&wat).start().unwrap();
    plugin.reset_hostcall_counts();
    let mut s = plugin.http_stream();
    s.request_headers(GET, true).unwrap();
    let counts = plugin.hostcall_counts();
    assert_eq!(counts.get("proxy_get_header_map_value"), Some(&2));
    assert_eq!(counts.get("proxy_log"), Some(&1));
    assert_eq!(counts.values().sum::<u64>(), 3, "{counts:?}");
    plugin.reset_hostcall_counts();
    assert!(plugin.hostcall_counts().is_empty());
    s.complete().unwrap();
}
