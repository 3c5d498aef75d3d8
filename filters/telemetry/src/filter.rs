//! The glue: the logic as a wasmesh [`HttpFilter`], exported as the proxy-wasm module.

use wasmesh_sdk::adapter::HttpFilter;
use wasmesh_sdk::body::Body;
use wasmesh_sdk::decision::Decision;
use wasmesh_sdk::error::Error;
use wasmesh_sdk::host::Host;
use wasmesh_sdk::request::Request;

use crate::config::Config;
use crate::logic::{StreamState, Telemetry};

impl HttpFilter for Telemetry {
    const NAME: &'static str = "telemetry";
    type Config = Config;
    type Stream = StreamState;

    fn new(config: Config, _host: &mut dyn Host) -> Result<Self, Error> {
        // Series are defined on first use: their names carry per-request dimension values.
        Telemetry::new(config)
    }

    fn on_request_headers(
        &self,
        stream: &mut StreamState,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        Telemetry::on_request_headers(self, stream, request, host);
        Decision::Continue
    }

    fn on_request_body(
        &self,
        stream: &mut StreamState,
        _request: &mut dyn Request,
        _host: &mut dyn Host,
        body: &Body<'_>,
    ) -> Decision {
        Telemetry::on_request_body(self, stream, body);
        Decision::Continue
    }

    fn on_response_headers(
        &self,
        stream: &mut StreamState,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        Telemetry::on_response_headers(self, stream, request, host);
        Decision::Continue
    }

    fn on_response_body(&self, stream: &mut StreamState, _host: &mut dyn Host, body: &Body<'_>) {
        Telemetry::on_response_body(self, stream, body);
    }

    fn on_log(&self, stream: &mut StreamState, request: &mut dyn Request, host: &mut dyn Host) {
        Telemetry::on_log(self, stream, request, host);
    }
}

wasmesh_sdk::export_filter!(Telemetry);

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use wasmesh_sdk::adapter::{configure, configure_error_message, Outcome, StreamDriver};
    use wasmesh_sdk::request::MemoryRequest;
    use wasmesh_sdk::testing::MemoryHost;

    #[test]
    fn never_blocks_a_stream() {
        let mut host = MemoryHost::new();
        let filter = Rc::new(configure::<Telemetry>(b"", &mut host).unwrap());
        let mut driver = StreamDriver::new(Some(filter));
        let mut request = MemoryRequest::get("/").with_response_header(":status", "200");
        assert_eq!(
            driver.on_request_headers(&mut request, &mut host),
            Outcome::Continue
        );
        assert_eq!(
            driver.on_response_headers(&mut request, &mut host),
            Outcome::Continue
        );
        driver.on_log(&mut request, &mut host);
        assert_eq!(driver.paused(), None);
    }

    #[test]
    fn bad_configuration_is_refused_with_its_path() {
        let mut host = MemoryHost::new();
        let error = configure::<Telemetry>(br#"{"metrics": [{"drop": "yes"}]}"#, &mut host)
            .err()
            .unwrap();
        assert_eq!(
            configure_error_message::<Telemetry>(&error),
            "telemetry: invalid configuration: metrics[0].drop: invalid type: string \"yes\", \
             expected a boolean; the filter refuses to start"
        );
    }
}
