#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Hostile modules, part 4: state the host keeps for modules outside their linear memory.
//! A module that writes a million shared-data keys, floods a shared queue or dispatches
//! callouts in a loop is stopped at a [`Limits`] cap with `HarnessError::ResourceLimit`, and
//! Envoy's failure policy takes over. Honest use (overwriting keys, dequeuing what was
//! enqueued) never hits the caps.

mod common;

use common::*;
use wasmesh_harness::{HarnessError, Limits, Status};

/// A module whose request-headers callback calls `body` for $i in 0..$count.
fn looping_module(count: u32, body: &str, data: &str) -> String {
    module(&format!(
        r#"{data}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (i32.const {count})))
      {body}
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (call $log_status (local.get $i))
    (i32.const 0))"#
    ))
}

fn expect_resource_limit(
    result: Result<impl std::fmt::Debug, HarnessError>,
    resource: &str,
    limit: u64,
) {
    match result {
        Err(HarnessError::ResourceLimit {
            callback,
            resource: got,
            limit: got_limit,
            backtrace,
        }) => {
            assert_eq!(callback, "proxy_on_request_headers");
            assert_eq!((got.as_str(), got_limit), (resource, limit));
            assert!(!backtrace.is_empty());
        }
        other => panic!("expected the {resource} cap, got {other:?}"),
    }
}

#[test]
fn a_million_shared_data_keys_stop_at_the_key_cap() {
    // Key = the loop counter's 4 bytes (a fresh key every iteration), value = 8 bytes.
    let wat = looping_module(
        1_000_000,
        r#"(i32.store (i32.const 600) (local.get $i))
      (drop (call $proxy_set_shared_data (i32.const 600) (i32.const 4) (i32.const 608) (i32.const 8) (i32.const 0)))"#,
        "",
    );
    let limits = Limits {
        max_shared_data_keys: 20_000,
        ..Limits::default()
    };
    let plugin = builder(&wat).limits(limits).start().unwrap();
    let mut stream = plugin.http_stream();
    expect_resource_limit(
        stream.request_headers(GET, true),
        "shared data keys",
        20_000,
    );
    // The keys written before the cap are there; the one that hit it is not.
    let key = |i: u32| String::from_utf8(i.to_le_bytes().to_vec()).unwrap();
    assert!(plugin.shared_data(&key(0)).is_some());
    assert!(plugin.shared_data(&key(19_999)).is_some());
    assert!(plugin.shared_data(&key(20_000)).is_none());
    // The failure policy applies: this request and later ones get Envoy's 503.
    assert_eq!(stream.local_reply().unwrap().status, 503);
    assert!(plugin.vm_failure(0).unwrap().is_vm_crash());
    // The test itself may still write (it is trusted).
    assert_eq!(plugin.set_shared_data("from-the-test", b"v", 0), Status::Ok);
}

#[test]
fn the_default_key_cap_stops_a_million_keys_early() {
    let wat = looping_module(
        1_000_000,
        r#"(i32.store (i32.const 600) (local.get $i))
      (drop (call $proxy_set_shared_data (i32.const 600) (i32.const 4) (i32.const 608) (i32.const 0) (i32.const 0)))"#,
        "",
    );
    let plugin = builder(&wat).start().unwrap();
    expect_resource_limit(
        plugin.http_stream().request_headers(GET, true),
        "shared data keys",
        Limits::default().max_shared_data_keys as u64,
    );
}

#[test]
fn large_shared_values_stop_at_the_byte_cap_and_overwrites_replace_bytes() {
    // 64 KiB values under distinct keys, with a 1 MiB cap: stopped at the 16th.
    let flood = looping_module(
        1_000,
        r#"(i32.store (i32.const 600) (local.get $i))
      (drop (call $proxy_set_shared_data (i32.const 600) (i32.const 4) (i32.const 65536) (i32.const 65536) (i32.const 0)))"#,
        "",
    );
    let limits = Limits {
        max_shared_bytes: 1024 * 1024,
        ..Limits::default()
    };
    let plugin = builder(&flood).limits(limits.clone()).start().unwrap();
    expect_resource_limit(
        plugin.http_stream().request_headers(GET, true),
        "bytes held in shared data and queues",
        1024 * 1024,
    );
    let stored = (0u32..20)
        .filter(|i| {
            plugin
                .shared_data(std::str::from_utf8(&i.to_le_bytes()).unwrap())
                .is_some()
        })
        .count();
    assert_eq!(stored, 15, "15 x (64 KiB + 4) fit in 1 MiB");

    // The same 64 KiB value written 1,000 times under one key only ever holds 64 KiB.
    let overwrite = looping_module(
        1_000,
        r#"(drop (call $proxy_set_shared_data (i32.const 600) (i32.const 4) (i32.const 65536) (i32.const 65536) (i32.const 0)))"#,
        "",
    );
    let plugin = builder(&overwrite).limits(limits).start().unwrap();
    plugin.http_stream().request_headers(GET, true).unwrap();
    assert_eq!(messages(&plugin), vec!["1000"]);
    assert!(plugin.vm_failure(0).is_none());
}

#[test]
fn a_flooded_queue_stops_at_the_item_cap_and_dequeuing_frees_room() {
    let mut t = Strings::new();
    let name = t.s("q");
    let register = format!("(drop (call $proxy_register_shared_queue {name} (i32.const 604)))");
    let flood = looping_module(
        1_000_000,
        &format!(
            r#"{register}
      (drop (call $proxy_enqueue_shared_queue (i32.load (i32.const 604)) (i32.const 0) (i32.const 16)))"#
        ),
        &t.data(),
    );
    let limits = Limits {
        max_queued_items: 1_000,
        ..Limits::default()
    };
    let plugin = builder(&flood).limits(limits.clone()).start().unwrap();
    expect_resource_limit(
        plugin.http_stream().request_headers(GET, true),
        "queued items",
        1_000,
    );

    // Enqueue then dequeue 5,000 times: never more than one item held.
    let balanced = looping_module(
        5_000,
        &format!(
            r#"{register}
      (drop (call $proxy_enqueue_shared_queue (i32.load (i32.const 604)) (i32.const 0) (i32.const 16)))
      (drop (call $proxy_dequeue_shared_queue (i32.load (i32.const 604)) (i32.const 512) (i32.const 516)))"#
        ),
        &t.data(),
    );
    let plugin = builder(&balanced).limits(limits).start().unwrap();
    plugin.http_stream().request_headers(GET, true).unwrap();
    assert_eq!(messages(&plugin), vec!["5000"]);
    assert!(plugin.vm_failure(0).is_none());
}

#[test]
fn a_callout_flood_stops_at_the_per_callback_cap() {
    let mut t = Strings::new();
    let cluster = t.s("c");
    let headers = t.map(&[(":method", "GET"), (":path", "/"), (":authority", "c")]);
    let empty = t.s("");
    let wat = looping_module(
        1_000_000,
        &format!(
            "(drop (call $proxy_http_call {cluster} {headers} {empty} {empty} (i32.const 1000) (i32.const 512)))"
        ),
        &t.data(),
    );
    let plugin = builder(&wat).start().unwrap();
    expect_resource_limit(
        plugin.http_stream().request_headers(GET, true),
        "callouts dispatched by one callback",
        1_000,
    );
    assert_eq!(plugin.http_callouts().len(), 1_000);

    // The cap is per callback: a thousand callouts in each of two requests is fine.
    let per_request = looping_module(
        1_000,
        &format!(
            "(drop (call $proxy_http_call {cluster} {headers} {empty} {empty} (i32.const 1000) (i32.const 512)))"
        ),
        &t.data(),
    );
    let plugin = builder(&per_request).start().unwrap();
    plugin.http_stream().request_headers(GET, true).unwrap();
    plugin.http_stream().request_headers(GET, true).unwrap();
    assert_eq!(plugin.http_callouts().len(), 2_000);
    assert!(plugin.vm_failure(0).is_none());
}
