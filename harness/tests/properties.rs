#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! `proxy_get_property` / `proxy_set_property` with Envoy's paths and encodings.

mod common;
use std::time::Duration;

use common::*;
use wasmesh_harness::{headermap, pinned_start, PropertyValue, START_UNIX_SECONDS};

/// A module whose request-headers callback stores the raw bytes of each path (or its status as
/// text) in shared data under `p0`, `p1`, ... (shared data keeps bytes intact, logs are text).
fn reader(paths: &[&[&str]]) -> String {
    let mut t = Strings::new();
    let mut calls = String::new();
    for (index, path) in paths.iter().enumerate() {
        let p = t.path(path);
        let key = t.s(&format!("p{index}"));
        calls.push_str(&format!(
            r#"
    (local.set $st (call $proxy_get_property {p} (i32.const 512) (i32.const 516)))
    (if (local.get $st)
      (then (drop (call $proxy_set_shared_data {key} (i32.const 700) (call $itoa (local.get $st) (i32.const 700)) (i32.const 0))))
      (else (drop (call $proxy_set_shared_data {key} (i32.load (i32.const 512)) (i32.load (i32.const 516)) (i32.const 0)))))"#
        ));
    }
    module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $st i32)
    {calls}
    (i32.const 0))"#,
        t.data()
    ))
}

fn stored(plugin: &wasmesh_harness::Plugin, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            plugin
                .shared_data(&format!("p{i}"))
                .map(|(v, _)| v)
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn request_attributes_come_from_the_request_headers_with_envoys_encodings() {
    let wat = reader(&[
        &["request", "path"],
        &["request", "url_path"],
        &["request", "query"],
        &["request", "host"],
        &["request", "method"],
        &["request", "scheme"],
        &["request", "id"],
        &["request", "headers", "x-multi"],
        &["request", "time"],
        &["request", "size"],
        &["request", "protocol"],
        &["request", "nope"],
        &["request"],
    ]);
    // `request.time` is compared with a fixed instant.
    let plugin = builder(&wat).start_time(pinned_start()).start().unwrap();
    plugin.advance_clock(Duration::from_secs(5)).unwrap();
    let mut stream = plugin.http_stream();
    stream
        .request_headers(
            &[
                (":method", "POST"),
                (":path", "/a/b?c=d"),
                (":authority", "api.example.com"),
                (":scheme", "https"),
                ("x-request-id", "rid-1"),
                ("x-multi", "1"),
                ("x-multi", "2"),
                ("content-length", "12"),
            ],
            false,
        )
        .unwrap();
    let start_nanos = (START_UNIX_SECONDS as i64 + 5) * 1_000_000_000;
    assert_eq!(
        stored(&plugin, 13),
        vec![
            b"/a/b?c=d".to_vec(),
            b"/a/b".to_vec(),
            b"c=d".to_vec(),
            b"api.example.com".to_vec(),
            b"POST".to_vec(),
            b"https".to_vec(),
            b"rid-1".to_vec(),
            b"1,2".to_vec(),
            start_nanos.to_le_bytes().to_vec(),
            12i64.to_le_bytes().to_vec(),
            b"HTTP/1.1".to_vec(),
            b"1".to_vec(), // NotFound
            b"3".to_vec(), // the whole request cannot be serialized
        ]
    );
}

#[test]
fn connection_and_address_attributes_have_defaults_and_per_stream_overrides() {
    let wat = reader(&[
        &["source", "address"],
        &["source", "port"],
        &["destination", "port"],
        &["connection", "mtls"],
        &["connection", "uri_san_peer_certificate"],
        &["plugin_name"],
        &["plugin_root_id"],
        &["plugin_vm_id"],
        &["xds", "node", "id"],
        &["xds", "node", "metadata", "REGION"],
        &["xds", "route_name"],
        // Envoy 1.40 serves these under `xds` only.
        &["node", "id"],
        &["route_name"],
    ]);
    let plugin = builder(&wat)
        .plugin_name("authz")
        .root_id("root-a")
        .vm_id("vm-a")
        .property(&["node", "id"], "sidecar~10.0.0.1")
        .property(
            &["node", "metadata"],
            PropertyValue::Map(vec![("REGION".into(), "eu".into())]),
        )
        .start()
        .unwrap();
    let mut stream = plugin.http_stream();
    stream
        .property(&["source", "address"], "10.1.2.3:5555")
        .property(&["connection", "mtls"], true)
        .property(
            &["connection", "uri_san_peer_certificate"],
            "spiffe://cluster.local/ns/default/sa/client",
        )
        .property(&["xds", "route_name"], "r1");
    stream.request_headers(GET, true).unwrap();
    assert_eq!(
        stored(&plugin, 13),
        vec![
            b"10.1.2.3:5555".to_vec(),
            5555i64.to_le_bytes().to_vec(),
            10000i64.to_le_bytes().to_vec(),
            vec![1],
            b"spiffe://cluster.local/ns/default/sa/client".to_vec(),
            b"authz".to_vec(),
            b"root-a".to_vec(),
            b"vm-a".to_vec(),
            b"sidecar~10.0.0.1".to_vec(),
            b"eu".to_vec(),
            b"r1".to_vec(),
            b"1".to_vec(), // NotFound
            b"1".to_vec(),
        ]
    );
    // Without TLS, peer certificate attributes do not exist.
    plugin.http_stream().request_headers(GET, true).unwrap();
    let values = stored(&plugin, 13);
    assert_eq!(values[0], b"127.0.0.1:40000".to_vec());
    assert_eq!(values[3], vec![0]);
    assert_eq!(values[4], b"1".to_vec());
}

#[test]
fn set_property_stores_filter_state_per_stream_and_needs_a_stream() {
    let mut t = Strings::new();
    let key = t.path(&["my_state"]);
    let value = t.s("v1");
    let other = t.path(&["other"]);
    let root = t.s("root");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (call $info {root})
    (call $log_status (call $proxy_set_property {key} {value}))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $log_status (call $proxy_get_property {key} (i32.const 512) (i32.const 516)))
    (call $log_status (call $proxy_set_property {key} {value}))
    (call $log_status (call $proxy_get_property {key} (i32.const 512) (i32.const 516)))
    (call $info_ret)
    (call $log_status (call $proxy_get_property {other} (i32.const 512) (i32.const 516)))
    (i32.const 0))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    plugin.http_stream().request_headers(GET, true).unwrap();
    // The root context has no stream info: NotFound. Then unset, set, read back, unknown.
    assert_eq!(
        messages(&plugin),
        vec!["root", "1", "1", "0", "0", "v1", "1"]
    );
    plugin.clear_logs();
    plugin.http_stream().request_headers(GET, true).unwrap();
    assert_eq!(
        messages(&plugin)[0],
        "1",
        "filter state does not leak across streams"
    );
}

#[test]
fn response_attributes_and_maps_follow_the_response() {
    let mut t = Strings::new();
    let mut calls = String::new();
    for (index, path) in [
        &["response", "code"][..],
        &["response", "code_details"],
        &["response", "headers"],
    ]
    .iter()
    .enumerate()
    {
        let p = t.path(path);
        let key = t.s(&format!("p{index}"));
        calls.push_str(&format!(
            "(drop (call $proxy_get_property {p} (i32.const 512) (i32.const 516)))
             (drop (call $proxy_set_shared_data {key} (i32.load (i32.const 512)) (i32.load (i32.const 516)) (i32.const 0)))\n"
        ));
    }
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    {calls}
    (i32.const 0))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    stream.request_headers(GET, false).unwrap();
    plugin.advance_clock(Duration::from_millis(30)).unwrap();
    stream.request_body(b"x", true).unwrap();
    stream
        .response_headers(&[(":status", "201"), ("x-a", "1")], true)
        .unwrap();
    let values = stored(&plugin, 3);
    assert_eq!(values[0], 201i64.to_le_bytes().to_vec());
    assert_eq!(values[1], b"via_upstream".to_vec());
    assert_eq!(
        values[2],
        headermap::serialize(&[(":status", "201"), ("x-a", "1")])
    );
}

#[test]
fn request_duration_is_known_once_the_stream_completed() {
    let mut t = Strings::new();
    let duration = t.path(&["request", "duration"]);
    let key = t.s("p0");
    let wat = module(&format!(
        r#"{}
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $log_status (call $proxy_get_property {duration} (i32.const 512) (i32.const 516)))
    (i32.const 0))
  (func (export "proxy_on_log") (param i32)
    (call $log_status (call $proxy_get_property {duration} (i32.const 512) (i32.const 516)))
    (drop (call $proxy_set_shared_data {key} (i32.load (i32.const 512)) (i32.load (i32.const 516)) (i32.const 0))))"#,
        t.data()
    ));
    let plugin = builder(&wat).start().unwrap();
    let mut stream = plugin.http_stream();
    stream.request_headers(GET, true).unwrap();
    plugin.advance_clock(Duration::from_millis(30)).unwrap();
    stream
        .response_headers(&[(":status", "200")], false)
        .unwrap();
    plugin.advance_clock(Duration::from_millis(20)).unwrap();
    stream.response_body(b"ok", true).unwrap();
    stream.complete().unwrap();
    // Envoy's `request.duration` runs to the end of the stream: NotFound before `on_log`.
    assert_eq!(messages(&plugin), vec!["1", "0"]);
    assert_eq!(stored(&plugin, 1)[0], 50_000_000i64.to_le_bytes().to_vec());
}
