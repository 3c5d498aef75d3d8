//! The differential corpus's probe module, written with the `proxy-wasm` crate alone, as filter
//! authors outside wasmesh write them. It does exactly what the Go and AssemblyScript probes do
//! (`harness/e2e/modules/{go,assemblyscript}/probe`), driven by request headers; see
//! `harness/e2e/README.md`, "Foreign modules".

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { requests: 0 }) });
}}

struct Root {
    requests: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.requests = proxy_wasm::hostcalls::define_metric(MetricType::Counter, "probe_requests")
            .unwrap_or(0);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe {
            requests: self.requests,
            ..Probe::default()
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[derive(Default)]
struct Probe {
    requests: u32,
    saw: String,
    mode: String,
    buffer: String,
    request_body: String,
    failed_lately: bool,
}

impl Probe {
    fn request_header(&self, name: &str) -> String {
        self.get_http_request_header(name).unwrap_or_default()
    }

    fn buffers(&self, direction: &str) -> bool {
        self.buffer == direction || self.buffer == "both"
    }
}

impl Context for Probe {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _: usize) {
        let header = |name: &str| self.get_http_call_response_header(name).unwrap_or_default();
        let status = header(":status");
        let grpc_status = header("grpc-status");
        let body = self
            .get_http_call_response_body(0, body_size)
            .map(|body| String::from_utf8_lossy(&body).into_owned())
            .unwrap_or_default();
        let service_time = if header("x-envoy-upstream-service-time").is_empty() {
            "absent"
        } else {
            "present"
        };
        let result = format!(
            "status={status} grpc-status={grpc_status} grpc-message={} service-time={service_time} \
             body={body}",
            header("grpc-message")
        );
        if status == "200" && grpc_status.is_empty() {
            self.add_http_request_header("x-probe-callout", &result);
            self.resume_http_request();
        } else {
            self.send_http_response(403, vec![], Some(format!("{result}\n").as_bytes()));
        }
    }
}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let _ = proxy_wasm::hostcalls::increment_metric(self.requests, 1);
        self.saw = format!(
            "method={} path={} scheme={} xfp={} rid={}",
            self.request_header(":method"),
            self.request_header(":path"),
            self.request_header(":scheme"),
            self.request_header("x-forwarded-proto"),
            self.request_header("x-request-id")
        );
        self.mode = self.request_header("x-probe");
        self.buffer = self.request_header("x-probe-buffer");
        self.add_http_request_header("x-probe-request", "seen");
        match self.mode.as_str() {
            "reply" => {
                self.send_http_response(
                    403,
                    vec![("content-type", "text/x-probe"), ("x-probe-reply", "1")],
                    Some(b"probe says no\n"),
                );
                Action::Pause
            }
            "callout" => {
                let cluster = self.request_header("x-probe-cluster");
                let headers = if self.request_header("x-probe-grpc") == "1" {
                    vec![
                        (":method", "POST"),
                        (":path", "/probe.Probe/Check"),
                        (":authority", cluster.as_str()),
                        ("content-type", "application/grpc"),
                    ]
                } else {
                    vec![
                        (":method", "GET"),
                        (":path", "/probe/check"),
                        (":authority", cluster.as_str()),
                    ]
                };
                let timeout = Duration::from_millis(300);
                if let Err(status) =
                    self.dispatch_http_call(&cluster, headers, None, vec![], timeout)
                {
                    let body = format!("dispatch failed: {}\n", status as u32);
                    self.send_http_response(500, vec![], Some(body.as_bytes()));
                }
                Action::Pause
            }
            "foreign" => {
                let function = self.request_header("x-probe-function");
                let data = self.request_header("x-probe-data");
                let mut body = foreign_call(&function, data.as_bytes());
                // A compressed result goes back through `uncompress`.
                if function == "compress" {
                    if let Ok(Some(packed)) = proxy_wasm::hostcalls::call_foreign_function(
                        "compress",
                        Some(data.as_bytes()),
                    ) {
                        body.push_str(&foreign_call("uncompress", &packed));
                    }
                }
                self.send_http_response(
                    200,
                    vec![("content-type", "text/x-probe")],
                    Some(body.as_bytes()),
                );
                Action::Pause
            }
            _ => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !self.request_body.is_empty() {
            self.request_body.push(',');
        }
        self.request_body.push_str(&size.to_string());
        if end_of_stream {
            self.request_body.push('$');
        }
        if !end_of_stream && self.buffers("request") {
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let header = |name: &str| self.get_http_response_header(name).unwrap_or_default();
        let saw_response = format!(
            "status={} content-length={} content-type={}",
            header(":status"),
            header("content-length"),
            header("content-type")
        );
        self.add_http_response_header("x-probe-response", "1");
        self.add_http_response_header("x-probe-saw", &self.saw);
        self.add_http_response_header("x-probe-saw-response", &saw_response);
        if !self.request_body.is_empty() {
            self.add_http_response_header("x-probe-request-body", &self.request_body);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, _size: usize, end_of_stream: bool) -> Action {
        match self.mode.as_str() {
            "late-reply" => {
                if !self.failed_lately {
                    self.failed_lately = true;
                    self.send_http_response(500, vec![], Some(b"too late\n"));
                }
                return Action::Pause;
            }
            "late-trap" => trap(),
            _ => {}
        }
        if !end_of_stream && self.buffers("response") {
            return Action::Pause;
        }
        Action::Continue
    }
}

/// `<function> ok <result in hex>` or `<function> error <status code>`, one line: what Envoy's
/// built-in foreign function answered (`x-probe: foreign`).
fn foreign_call(function: &str, arguments: &[u8]) -> String {
    match proxy_wasm::hostcalls::call_foreign_function(function, Some(arguments)) {
        Ok(result) => {
            let hex: String = result
                .unwrap_or_default()
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect();
            format!("{function} ok {hex}\n")
        }
        Err(status) => format!("{function} error {}\n", status as u32),
    }
}

/// A wasm `unreachable`: the VM fails as it would on any bug.
fn trap() -> ! {
    std::process::abort()
}
