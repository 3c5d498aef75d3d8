//! The glue: the policy logic as a wasmesh [`HttpFilter`], exported as the proxy-wasm module.

use wasmesh_sdk::adapter::HttpFilter;
use wasmesh_sdk::body::Body;
use wasmesh_sdk::callout::CalloutResponse;
use wasmesh_sdk::decision::Decision;
use wasmesh_sdk::error::Error;
use wasmesh_sdk::host::Host;
use wasmesh_sdk::request::Request;

use crate::config::Config;
use crate::logic::{Policy, PolicyStream, FILTER_NAME};

impl HttpFilter for Policy {
    const NAME: &'static str = FILTER_NAME;
    type Config = Config;
    type Stream = PolicyStream;

    fn new(config: Config, host: &mut dyn Host) -> Result<Self, Error> {
        let policy = Policy::new(config, host)?;
        policy.create_shared_entries(host)?;
        Ok(policy)
    }

    fn on_request_start(&self, stream: &mut PolicyStream, end_of_stream: bool) {
        self.start(stream, end_of_stream);
    }

    fn on_request_headers(
        &self,
        stream: &mut PolicyStream,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        Policy::on_request_headers(self, stream, request, host)
    }

    fn on_request_body(
        &self,
        stream: &mut PolicyStream,
        request: &mut dyn Request,
        host: &mut dyn Host,
        body: &Body<'_>,
    ) -> Decision {
        Policy::on_request_body(self, stream, request, host, body)
    }

    fn on_callout_response(
        &self,
        stream: &mut PolicyStream,
        request: &mut dyn Request,
        host: &mut dyn Host,
        response: CalloutResponse,
    ) -> Decision {
        Policy::on_callout_response(self, stream, request, host, response)
    }

    fn on_response_headers(
        &self,
        stream: &mut PolicyStream,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        Policy::on_response_headers(self, stream, request, host)
    }
}

wasmesh_sdk::export_filter!(Policy);
