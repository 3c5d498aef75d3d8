//! The glue: the logic as a wasmesh [`HttpFilter`], exported as the proxy-wasm module.

use wasmesh_sdk::adapter::HttpFilter;
use wasmesh_sdk::callout::CalloutResponse;
use wasmesh_sdk::decision::Decision;
use wasmesh_sdk::error::Error;
use wasmesh_sdk::host::Host;
use wasmesh_sdk::request::Request;

use crate::config::Config;
use crate::logic::{RateLimitFilter, Stream};

impl HttpFilter for RateLimitFilter {
    const NAME: &'static str = "rate_limit";
    type Config = Config;
    type Stream = Stream;
    // Descriptors are built in the request-headers phase (a stream waiting for the rate limit
    // service is held paused there); the response phase only adds headers.
    const KEEPS_REQUEST_HEADERS: bool = false;

    fn new(config: Config, host: &mut dyn Host) -> Result<Self, Error> {
        RateLimitFilter::new(config, host)
    }

    fn on_request_headers(
        &self,
        stream: &mut Stream,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        self.on_request(stream, request, host)
    }

    fn on_callout_response(
        &self,
        stream: &mut Stream,
        request: &mut dyn Request,
        host: &mut dyn Host,
        response: CalloutResponse,
    ) -> Decision {
        self.on_callout(stream, request, host, response)
    }

    fn on_response_headers(
        &self,
        stream: &mut Stream,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        self.on_response(stream, request, host);
        Decision::Continue
    }

    fn on_own_reply_headers(
        &self,
        stream: &mut Stream,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) {
        self.on_own_reply(stream, request, host);
    }
}

wasmesh_sdk::export_filter!(RateLimitFilter);
