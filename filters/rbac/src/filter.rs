//! The glue: the logic as a wasmesh [`HttpFilter`], exported as the proxy-wasm module.

use wasmesh_sdk::adapter::HttpFilter;
use wasmesh_sdk::decision::Decision;
use wasmesh_sdk::error::Error;
use wasmesh_sdk::host::Host;
use wasmesh_sdk::request::Request;

use crate::config::Config;
use crate::logic::RbacFilter;

impl HttpFilter for RbacFilter {
    const NAME: &'static str = "rbac";
    type Config = Config;
    type Stream = ();
    // Rules see the request only in the request-headers phase.
    const KEEPS_REQUEST_HEADERS: bool = false;

    fn new(config: Config, host: &mut dyn Host) -> Result<Self, Error> {
        RbacFilter::new(config, host)
    }

    fn on_request_headers(
        &self,
        _: &mut (),
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        self.on_request(request, host)
    }
}

wasmesh_sdk::export_filter!(RbacFilter);
