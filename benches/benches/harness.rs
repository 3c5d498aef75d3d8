#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Micro-benchmarks of the harness: an empty hostcall round trip, the lifecycle of a stream
//! through a no-op filter, loading a module from the compile cache, instantiating a VM, and the
//! proxy-wasm header-map serialization of 10 and 100 headers.
//!
//! ```text
//! cargo bench -p wasmesh-benches --bench harness
//! ```
//!
//! Differences are taken in the same run and printed at the end (e.g. one hostcall is the cost
//! of a stream making 1,000 of them, minus a stream making none, divided by 1,000).

use std::time::Duration;

use criterion::Criterion;
use wasmesh_benches::timing::{human, Recorder};
use wasmesh_benches::wat;
use wasmesh_harness::{headermap, Harness, Plugin, StreamState};

/// Hostcalls per stream in the round-trip benchmark.
const HOSTCALLS: u32 = 1000;

fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args()
}

fn start(module: &[u8]) -> Plugin {
    Harness::from_bytes(module)
        .unwrap()
        .config("{}")
        .start()
        .unwrap()
}

/// Request headers (ending the request), an upstream 200, then log/done/delete.
fn stream(plugin: &Plugin, headers: &[(&str, &str)]) -> StreamState {
    let mut stream = plugin.http_stream();
    stream.request_headers(headers, true).unwrap();
    let state = stream.request_state();
    stream
        .response_headers(&[(":status", "200")], true)
        .unwrap();
    stream.complete().unwrap();
    state
}

fn borrowed(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn main() {
    let mut c = criterion();
    let recorder = Recorder::new();
    let noop_sdk =
        std::fs::read(wasmesh_harness::build::wasm("wasmesh-noop-filter").unwrap()).unwrap();
    let jwt = std::fs::read(wasmesh_harness::build::wasm("wasmesh-jwt-authn").unwrap()).unwrap();
    let wat_none = wat::module(0, false);
    let wat_calls = wat::module(HOSTCALLS, false);
    let wat_read = wat::module(0, true);
    let four_headers = wat::headers(4);
    let four = borrowed(&four_headers);

    // Streams: hostcall round trip and the no-op lifecycles.
    {
        let mut group = c.benchmark_group("stream");
        for (name, module) in [
            ("wat no-op", wat_none.as_bytes()),
            ("wat 1000 hostcalls", wat_calls.as_bytes()),
            ("sdk no-op filter", noop_sdk.as_slice()),
        ] {
            let plugin = start(module);
            assert_eq!(stream(&plugin, &four), StreamState::Continued);
            let id = format!("stream/{name}");
            group.bench_function(name, |b| {
                b.iter_custom(|iters| recorder.time(&id, iters, || stream(&plugin, &four)));
            });
            assert!(plugin.vm_failure(0).is_none());
        }
        group.finish();
    }

    // Header maps: serialization alone, and the full `proxy_get_header_map_pairs` hostcall.
    {
        let mut group = c.benchmark_group("header map");
        for count in [10, 100] {
            let headers = wat::headers(count);
            let bytes = headermap::serialize(&headers);
            assert_eq!(headermap::deserialize(&bytes).unwrap().len(), count);
            let id = format!("header map/serialize {count}");
            group.bench_function(format!("serialize {count}"), |b| {
                b.iter_custom(|iters| recorder.time(&id, iters, || headermap::serialize(&headers)));
            });
            let id = format!("header map/deserialize {count}");
            group.bench_function(format!("deserialize {count}"), |b| {
                b.iter_custom(|iters| {
                    recorder.time(&id, iters, || {
                        headermap::deserialize(&bytes).map(|p| p.len())
                    })
                });
            });
            let pairs = borrowed(&headers);
            for (name, module) in [("no read", &wat_none), ("get pairs", &wat_read)] {
                let plugin = start(module.as_bytes());
                let id = format!("header map/stream {count} headers, {name}");
                group.bench_function(format!("stream {count} headers, {name}"), |b| {
                    b.iter_custom(|iters| recorder.time(&id, iters, || stream(&plugin, &pairs)));
                });
            }
        }
        group.finish();
    }

    // Loading and instantiating (the module is compiled once, then served from the cache).
    {
        let mut group = c.benchmark_group("vm");
        for (name, module) in [
            ("wat no-op", wat_none.as_bytes()),
            ("sdk no-op filter", noop_sdk.as_slice()),
            ("jwt-authn", jwt.as_slice()),
        ] {
            drop(start(module));
            let id = format!("vm/load from cache, {name}");
            group.bench_function(format!("load from cache, {name}"), |b| {
                b.iter_custom(|iters| {
                    recorder.time(&id, iters, || {
                        Harness::from_bytes(module).unwrap().from_cache()
                    })
                });
            });
            let id = format!("vm/load + start, {name}");
            group.bench_function(format!("load + start, {name}"), |b| {
                b.iter_custom(|iters| recorder.time(&id, iters, || start(module).workers()));
            });
        }
        group.finish();
    }
    c.final_summary();

    let get = |id: &str| recorder.nanos(id);
    let diff = |a: &str, b: &str| match (get(a), get(b)) {
        (Some(a), Some(b)) => Some(a - b),
        _ => None,
    };
    let show = |value: Option<f64>| value.map(human).unwrap_or_else(|| "—".into());
    println!("\nHarness figures (medians of this run):\n");
    println!("| what | time |\n|---|---:|");
    println!(
        "| empty hostcall round trip (`proxy_get_current_time_nanoseconds`) | {} |",
        show(
            diff("stream/wat 1000 hostcalls", "stream/wat no-op").map(|d| d / f64::from(HOSTCALLS))
        )
    );
    println!(
        "| stream lifecycle, WAT no-op module (harness only) | {} |",
        show(get("stream/wat no-op"))
    );
    println!(
        "| stream lifecycle, SDK no-op filter | {} |",
        show(get("stream/sdk no-op filter"))
    );
    for count in [10, 100] {
        println!(
            "| header map of {count}: serialize / deserialize / `proxy_get_header_map_pairs` | {} / {} / {} |",
            show(get(&format!("header map/serialize {count}"))),
            show(get(&format!("header map/deserialize {count}"))),
            show(diff(
                &format!("header map/stream {count} headers, get pairs"),
                &format!("header map/stream {count} headers, no read")
            )),
        );
    }
    for name in ["wat no-op", "sdk no-op filter", "jwt-authn"] {
        println!(
            "| {name}: load from cache / VM instantiation and start (minus load) | {} / {} |",
            show(get(&format!("vm/load from cache, {name}"))),
            show(diff(
                &format!("vm/load + start, {name}"),
                &format!("vm/load from cache, {name}")
            )),
        );
    }
}
