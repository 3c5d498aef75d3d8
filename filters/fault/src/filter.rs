//! The glue: the logic as a wasmesh [`HttpFilter`], exported as the proxy-wasm module.

use std::time::Duration;

use wasmesh_sdk::adapter::HttpFilter;
use wasmesh_sdk::callout::CalloutResponse;
use wasmesh_sdk::decision::Decision;
use wasmesh_sdk::error::Error;
use wasmesh_sdk::host::Host;
use wasmesh_sdk::request::Request;

use crate::config::Config;
use crate::logic::{FaultFilter, FaultStream};

impl HttpFilter for FaultFilter {
    const NAME: &'static str = "fault";
    type Config = Config;
    type Stream = FaultStream;
    // Faults are chosen in the request-headers phase, and a delayed stream is held paused there.
    const KEEPS_REQUEST_HEADERS: bool = false;

    fn new(config: Config, host: &mut dyn Host) -> Result<Self, Error> {
        let filter = FaultFilter::new(config, host)?;
        filter.create_shared_state(host)?;
        Ok(filter)
    }

    fn on_request_headers(
        &self,
        stream: &mut FaultStream,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        self.on_request(stream, request, host)
    }

    fn on_log(&self, stream: &mut FaultStream, _: &mut dyn Request, host: &mut dyn Host) {
        FaultFilter::on_log(self, stream, host);
    }

    fn tick_period(&self) -> Option<Duration> {
        FaultFilter::tick_period(self)
    }

    fn on_tick(&self, host: &mut dyn Host) {
        FaultFilter::on_tick(self, host);
    }

    fn on_root_callout_response(&self, host: &mut dyn Host, response: CalloutResponse) {
        FaultFilter::on_root_callout_response(self, host, &response);
    }

    fn on_wake(
        &self,
        stream: &mut FaultStream,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        FaultFilter::on_wake(self, stream, request, host)
    }
}

wasmesh_sdk::export_filter!(FaultFilter);
