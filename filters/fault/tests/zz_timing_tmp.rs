use std::time::Instant;
use wasmesh_fault::{Config, FaultFilter, FaultStream};
use wasmesh_sdk::config::load;
use wasmesh_sdk::request::MemoryRequest;
use wasmesh_sdk::testing::MemoryHost;
#[test]
fn timing() {
    let mut host = MemoryHost::new();
    let f = FaultFilter::new(load::<Config>(br#"{"abort": {"http_status": 503, "percentage": {"numerator": 10}}, "headers": [{"name": ":path", "string_match": {"prefix": "/checkout"}}], "max_active_faults": 100}"#).unwrap(), &mut host).unwrap();
    let req = MemoryRequest::get("/checkout/x");
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n { let mut s = FaultStream::default(); let _ = f.on_request(&mut s, &req, &mut host); f.on_log(&mut s, &mut host); }
    eprintln!("native: {:?}/request", t.elapsed() / n);
    let plugin = wasmesh_harness::Harness::load(wasmesh_harness::build::wasm("wasmesh-fault").unwrap()).unwrap().config(r#"{"abort": {"http_status": 503, "percentage": {"numerator": 10}}, "headers": [{"name": ":path", "string_match": {"prefix": "/checkout"}}], "max_active_faults": 100}"#).start().unwrap();
    let h = [(":method","GET"),(":path","/checkout/x"),(":authority","a")];
    let n = 5000u32;
    let t = Instant::now();
    for _ in 0..n { let mut s = plugin.http_stream(); s.request_headers(&h, true).unwrap(); s.complete().unwrap(); }
    eprintln!("harness: {:?}/stream", t.elapsed() / n);
}
