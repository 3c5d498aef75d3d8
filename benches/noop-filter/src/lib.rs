//! The no-op filter: accepts an empty configuration and lets every request and response through
//! without reading anything.
//!
//! It is the baseline of the benchmarks in `benches/`: a stream through it costs exactly what the
//! SDK's glue and the host charge for any filter (context creation, callbacks, logging), so
//! `filter - no-op` is what a filter's own work costs. Like most filters it reads nothing after
//! the request phase, so it does not keep the request headers
//! ([`HttpFilter::KEEPS_REQUEST_HEADERS`]); a filter that does pays one more hostcall and a copy
//! of the headers per request on top.

use serde::Deserialize;
use wasmesh_sdk::adapter::HttpFilter;
use wasmesh_sdk::config::Validate;
use wasmesh_sdk::decision::Decision;
use wasmesh_sdk::error::Error;
use wasmesh_sdk::host::Host;
use wasmesh_sdk::request::Request;

/// The (empty) configuration: `{}`; any field is refused, like every wasmesh filter does.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoopConfig {}

impl Validate for NoopConfig {}

/// A filter that continues every callback.
#[derive(Debug)]
pub struct NoopFilter;

impl HttpFilter for NoopFilter {
    const NAME: &'static str = "noop";
    type Config = NoopConfig;
    type Stream = ();
    const KEEPS_REQUEST_HEADERS: bool = false;

    fn new(_config: NoopConfig, _host: &mut dyn Host) -> Result<Self, Error> {
        Ok(NoopFilter)
    }

    fn on_request_headers(
        &self,
        _stream: &mut (),
        _request: &mut dyn Request,
        _host: &mut dyn Host,
    ) -> Decision {
        Decision::Continue
    }
}

wasmesh_sdk::export_filter!(NoopFilter);

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use wasmesh_sdk::adapter::{configure, Outcome, StreamDriver};
    use wasmesh_sdk::request::{MemoryRequest, Request};
    use wasmesh_sdk::testing::MemoryHost;

    use super::*;

    #[test]
    fn lets_everything_through_untouched() {
        let mut host = MemoryHost::new();
        let filter = Rc::new(configure::<NoopFilter>(b"{}", &mut host).unwrap());
        let mut driver = StreamDriver::new(Some(filter));
        let mut request = MemoryRequest::get("/").with_response_header(":status", "200");
        assert_eq!(
            driver.on_request_headers_ending(&mut request, &mut host, true),
            Outcome::Continue
        );
        assert_eq!(
            driver.on_response_headers(&mut request, &mut host),
            Outcome::Continue
        );
        driver.on_log(&mut request, &mut host);
        assert!(request.mutations().is_empty());
        assert!(host.logs().is_empty());
        assert_eq!(request.header(":path").as_deref(), Some("/"));
    }

    #[test]
    fn refuses_unknown_fields() {
        let mut host = MemoryHost::new();
        assert!(configure::<NoopFilter>(br#"{"x": 1}"#, &mut host).is_err());
    }
}
