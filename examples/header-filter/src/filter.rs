//! The glue: the logic as a wasmesh [`HttpFilter`], exported as the proxy-wasm module.

use wasmesh_sdk::adapter::HttpFilter;
use wasmesh_sdk::decision::Decision;
use wasmesh_sdk::error::Error;
use wasmesh_sdk::host::Host;
use wasmesh_sdk::request::Request;

use crate::logic::{Config, HeaderFilter};

impl HttpFilter for HeaderFilter {
    const NAME: &'static str = "header_filter";
    type Config = Config;
    type Stream = ();

    fn new(config: Config, host: &mut dyn Host) -> Result<Self, Error> {
        HeaderFilter::new(config, host)
    }

    fn on_request_headers(
        &self,
        _: &mut (),
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        self.on_request(request, host)
    }

    fn on_response_headers(
        &self,
        _: &mut (),
        request: &mut dyn Request,
        _: &mut dyn Host,
    ) -> Decision {
        self.on_response(request)
    }
}

wasmesh_sdk::export_filter!(HeaderFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use wasmesh_sdk::adapter::{configure, configure_error_message, Outcome, StreamDriver};
    use wasmesh_sdk::request::MemoryRequest;
    use wasmesh_sdk::testing::MemoryHost;

    fn driver(json: &str, host: &mut MemoryHost) -> StreamDriver<HeaderFilter> {
        StreamDriver::new(Some(Rc::new(
            configure::<HeaderFilter>(json.as_bytes(), host).unwrap(),
        )))
    }

    #[test]
    fn denied_stream_gets_the_local_reply_without_response_headers() {
        let mut host = MemoryHost::new();
        let json = r#"{"deny": [{"exact": "/admin"}], "response_headers_to_add": [{"header": {"key": "x-wasmesh", "value": "hello"}}]}"#;
        let mut stream = driver(json, &mut host);
        let mut request = MemoryRequest::get("/a/../admin");
        let Outcome::Reply(reply) = stream.on_request_headers(&mut request, &mut host) else {
            panic!("expected a local reply");
        };
        assert_eq!(
            (reply.status, reply.details.as_str()),
            (403, "header_filter_denied")
        );
        assert_eq!(
            stream.on_response_headers(&mut request, &mut host),
            Outcome::Continue
        );
        assert_eq!(request.response_header("x-wasmesh"), None);
        assert_eq!(host.metric("header_filter.denied"), Some(1));
    }

    #[test]
    fn allowed_stream_gets_response_headers() {
        let mut host = MemoryHost::new();
        let json =
            r#"{"response_headers_to_add": [{"header": {"key": "x-wasmesh", "value": "hello"}}]}"#;
        let mut stream = driver(json, &mut host);
        let mut request = MemoryRequest::get("/");
        assert_eq!(
            stream.on_request_headers(&mut request, &mut host),
            Outcome::Continue
        );
        assert_eq!(
            stream.on_response_headers(&mut request, &mut host),
            Outcome::Continue
        );
        assert_eq!(
            request.response_header("x-wasmesh").as_deref(),
            Some("hello")
        );
        assert_eq!(host.metric("header_filter.allowed"), Some(1));
    }

    #[test]
    fn bad_config_is_refused_with_a_json_path() {
        let mut host = MemoryHost::new();
        let error = configure::<HeaderFilter>(br#"{"deny": [{"prefix": ""}]}"#, &mut host)
            .err()
            .unwrap();
        assert_eq!(
            configure_error_message::<HeaderFilter>(&error),
            "header_filter: invalid configuration: deny[0]: `prefix`, `suffix` and `contains` must not be empty; the filter refuses to start"
        );
    }
}
