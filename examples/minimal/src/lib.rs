//! The smallest wasmesh filter, read top to bottom: its configuration, one decision, one metric,
//! and a test of its real wasm build in the harness. It denies requests that lack a header.

use serde::Deserialize;
use wasmesh_sdk::prelude::*;

/// The plugin configuration, e.g. `{"required_header": "x-api-key"}`. The SDK parses it: an
/// unknown field or a bad value makes the filter refuse to start and log the field's JSON path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Requests without this header get a 401.
    pub required_header: String,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.required_header.is_empty() {
            return Err(ConfigError::new("required_header", "must not be empty"));
        }
        Ok(())
    }
}

/// The filter, built once per root context (where metrics are defined) from its configuration.
pub struct Minimal {
    config: Config,
    denied: Counter,
}

impl HttpFilter for Minimal {
    const NAME: &'static str = "minimal";
    type Config = Config;
    type Stream = ();
    // Headers are read in the request phase only: the SDK need not keep a copy for later phases.
    const KEEPS_REQUEST_HEADERS: bool = false;

    fn new(config: Config, host: &mut dyn Host) -> Result<Self, Error> {
        let denied = Counter::define(host, "minimal.denied")?;
        Ok(Minimal { config, denied })
    }

    fn on_request_headers(
        &self,
        _: &mut (),
        req: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        if req.header(&self.config.required_header).is_some() {
            return Decision::Continue;
        }
        self.denied.increment(host);
        // The details are Envoy's %RESPONSE_CODE_DETAILS% (access logs): they say who denied, why.
        Decision::Deny(LocalReply::unauthorized("minimal_header_missing").with_body("no key\n"))
    }
}

wasmesh_sdk::export_filter!(Minimal);

#[cfg(test)]
mod tests {
    use wasmesh_harness::{build, Harness, MetricValue};

    #[test]
    fn the_wasm_build_denies_requests_without_the_header_and_counts_them() {
        let wasm = build::wasm("wasmesh-example-minimal").unwrap();
        let config = r#"{"required_header": "x-api-key"}"#;
        let plugin = Harness::load(wasm).unwrap().config(config).start().unwrap();
        let get = [(":method", "GET"), (":path", "/"), (":authority", "shop")];
        let denied = plugin.http_stream().request_headers(&get, true).unwrap();
        let reply = denied.local_reply().unwrap();
        assert_eq!(reply.status, 401);
        assert_eq!(reply.details, "minimal_header_missing");
        let keyed = [get[0], get[1], get[2], ("x-api-key", "k")];
        let allowed = plugin.http_stream().request_headers(&keyed, true).unwrap();
        assert_eq!(allowed.local_reply(), None);
        let denials = plugin.metric("minimal.denied");
        assert_eq!(denials, Some(MetricValue::Counter(1)));
    }
}
