#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The foreign corpus's modules (Go, AssemblyScript, Rust with the proxy-wasm crate) start and
//! serve a request in the harness alone, without Envoy, so this holds even where the real-Envoy
//! tests are skipped. The builds need the toolchains `cargo xtask setup` installs; a missing one
//! fails with the command that installs it.

use wasmesh_e2e::corpus::{Corpus, FOREIGN_CORPUS_FILE};
use wasmesh_harness::{ClientRequest, Harness, MetricValue, UpstreamResponse};

#[test]
fn every_foreign_module_starts_in_the_harness_and_serves_a_request() {
    let corpus = Corpus::load_file(FOREIGN_CORPUS_FILE).unwrap();
    let scratch = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-foreign");
    for (name, source) in &corpus.filters {
        let wasm = source.wasm(&scratch).unwrap();
        let plugin = Harness::load(&wasm)
            .unwrap()
            .plugin_name(name)
            .start()
            .unwrap_or_else(|error| panic!("{name} does not start: {error}"));
        let mut stream = plugin.http_stream();
        stream
            .send_request(
                &ClientRequest::post("/hello?x=1", "hi")
                    .authority("api.example.com")
                    .header("x-request-id", "id-1"),
            )
            .unwrap();
        assert_eq!(
            stream.request_header("x-probe-request").as_deref(),
            Some("seen"),
            "{name}"
        );
        stream
            .upstream_response(
                &UpstreamResponse::new(200)
                    .header("content-type", "text/plain")
                    .body("ok"),
            )
            .unwrap();
        assert_eq!(
            stream.response_header("x-probe-saw").as_deref(),
            Some("method=POST path=/hello?x=1 scheme=http xfp=http rid=id-1"),
            "{name}"
        );
        assert_eq!(
            stream.response_header("x-probe-saw-response").as_deref(),
            Some("status=200 content-length=2 content-type=text/plain"),
            "{name}"
        );
        // The body as Envoy's HTTP/1 codec hands it over: the data, then an empty last chunk.
        assert_eq!(
            stream.response_header("x-probe-request-body").as_deref(),
            Some("2,0$"),
            "{name}"
        );
        stream.complete().unwrap();
        assert_eq!(
            plugin.metric("probe_requests"),
            Some(MetricValue::Counter(1)),
            "{name}"
        );
    }
}
