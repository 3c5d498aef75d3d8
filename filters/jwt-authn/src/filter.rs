//! The glue: the logic as a wasmesh [`HttpFilter`], exported as the proxy-wasm module.

use std::time::Duration;

use wasmesh_sdk::adapter::HttpFilter;
use wasmesh_sdk::callout::CalloutResponse;
use wasmesh_sdk::decision::Decision;
use wasmesh_sdk::error::Error;
use wasmesh_sdk::host::Host;
use wasmesh_sdk::request::Request;

use crate::authn::{JwtAuthn, StreamState, FILTER};
use crate::config::JwtAuthentication;

impl HttpFilter for JwtAuthn {
    const NAME: &'static str = FILTER;
    type Config = JwtAuthentication;
    type Stream = StreamState;
    // Tokens are read in the request-headers phase; a stream waiting for keys is held paused there.
    const KEEPS_REQUEST_HEADERS: bool = false;

    fn new(config: JwtAuthentication, host: &mut dyn Host) -> Result<Self, Error> {
        JwtAuthn::new(config, host)
    }

    fn on_request_headers(
        &self,
        stream: &mut StreamState,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        self.on_request(stream, request, host)
    }

    fn on_callout_response(
        &self,
        stream: &mut StreamState,
        request: &mut dyn Request,
        host: &mut dyn Host,
        response: CalloutResponse,
    ) -> Decision {
        self.on_stream_callout(stream, request, host, &response)
    }

    fn on_log(&self, stream: &mut StreamState, _request: &mut dyn Request, host: &mut dyn Host) {
        self.on_stream_done(stream, host);
    }

    fn tick_period(&self) -> Option<Duration> {
        JwtAuthn::tick_period(self)
    }

    fn on_tick(&self, host: &mut dyn Host) {
        JwtAuthn::on_tick(self, host);
    }

    fn on_root_callout_response(&self, host: &mut dyn Host, response: CalloutResponse) {
        self.on_fetch_answer(&response, host);
    }

    fn on_wake(
        &self,
        stream: &mut StreamState,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        self.resume(stream, request, host)
    }

    fn wake_paused_after_stream_callout(&self) -> bool {
        // A key set one stream fetched serves every stream waiting for it.
        true
    }
}

wasmesh_sdk::export_filter!(JwtAuthn);
