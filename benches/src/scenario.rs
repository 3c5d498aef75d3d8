//! A scenario: one filter, one configuration, the requests it sees, the verdict it must reach;
//! and the two runners (native, wasm) that put one request through it per call.
//!
//! Both runners go through the whole life of a stream, as a proxy does: the request headers
//! (ending the request), an upstream `200` (skipped when the filter answered locally, whose reply
//! the SDK then sees go by), the access log, and the end of the stream. Requests are taken in
//! turn from [`Scenario::exchanges`], so a scenario can make every request different (distinct
//! rate-limit keys, decision-cache misses).

use std::rc::Rc;

use wasmesh_harness::{CalloutReply, Harness, Plugin, PropertyValue, StreamState};
use wasmesh_sdk::adapter::{configure, HttpFilter, Outcome, StreamDriver};
use wasmesh_sdk::callout::{CalloutResponse, HttpCalloutResponse};
use wasmesh_sdk::request::MemoryRequest;
use wasmesh_sdk::testing::MemoryHost;

use crate::error::BenchError;

/// A property path and its value (the harness encodes it; the native run gets the same bytes).
pub type Property = (Vec<String>, PropertyValue);

/// One request/response exchange.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    /// Request headers, pseudo-headers first.
    pub request_headers: Vec<(String, String)>,
    /// Upstream response headers (`:status` first), used when the filter lets the request go.
    pub response_headers: Vec<(String, String)>,
    /// Stream properties (e.g. dynamic metadata written by an earlier filter).
    pub properties: Vec<Property>,
}

impl Exchange {
    /// A request with these headers answered by an upstream `200`.
    pub fn new(request_headers: &[(&str, &str)]) -> Self {
        Exchange {
            request_headers: owned(request_headers),
            response_headers: owned(&[(":status", "200")]),
            properties: Vec::new(),
        }
    }

    /// Adds a stream property.
    #[must_use]
    pub fn with_property(mut self, path: &[&str], value: PropertyValue) -> Self {
        self.properties.push((path_of(path), value));
        self
    }
}

/// What the filter did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The request went upstream.
    Allowed,
    /// The filter answered with a local reply of this status.
    Denied(u32),
    /// The filter held the request (waiting for something the scenario does not provide).
    Held,
}

/// How HTTP callouts the filter dispatches are answered (at once, with this response).
#[derive(Debug, Clone)]
pub struct CalloutAnswer {
    /// `:status` of the answer.
    pub status: u16,
    /// Other response headers.
    pub headers: Vec<(String, String)>,
}

/// Builds the native runner of a scenario; one function per filter type.
pub type NativeFactory = fn(&Scenario) -> Result<Box<dyn NativeRun>, BenchError>;

/// One filter under one configuration and workload.
pub struct Scenario {
    /// The filter, as the figures table names it (`jwt-authn`, `no-op`, ...).
    pub filter: &'static str,
    /// What this case exercises (`RS256, cache hit`).
    pub case: String,
    /// Cargo package of the filter (its wasm build).
    pub package: &'static str,
    /// The plugin configuration (JSON).
    pub config: String,
    /// Properties of the plugin (node metadata, listener direction).
    pub plugin_properties: Vec<Property>,
    /// Requests, used in turn.
    pub exchanges: Vec<Exchange>,
    /// The verdict every request must get.
    pub expect: Verdict,
    /// Answer to HTTP callouts, for filters that call a service.
    pub callout_answer: Option<CalloutAnswer>,
    /// Whether this case is the filter's representative (common-path) one: the memory test and
    /// the summary's filter/no-op figures use it.
    pub primary: bool,
    pub(crate) native: NativeFactory,
}

impl Scenario {
    /// `filter/case`, the benchmark id.
    pub fn id(&self) -> String {
        format!("{}/{}", self.filter, self.case)
    }

    /// A runner of the filter's native logic.
    pub fn native(&self) -> Result<Box<dyn NativeRun>, BenchError> {
        (self.native)(self)
    }

    /// A runner of the filter's wasm release build in the harness (builds it on first use).
    pub fn wasm(&self) -> Result<WasmRun, BenchError> {
        let module = wasmesh_harness::build::wasm(self.package)?;
        self.wasm_from(&module)
    }

    /// A runner of the module at `module` in the harness (e.g. a build that keeps its function
    /// names, for a profiler).
    pub fn wasm_from(&self, module: &std::path::Path) -> Result<WasmRun, BenchError> {
        let mut builder = Harness::load(module)?.config(self.config.clone());
        for (path, value) in &self.plugin_properties {
            builder = builder.property(&borrow_path(path), value.clone());
        }
        if let Some(answer) = self.callout_answer.clone() {
            builder = builder.http_callout_handler(move |_callout| {
                let headers: Vec<(&str, &str)> = answer
                    .headers
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str()))
                    .collect();
                CalloutReply::with_headers(answer.status, &headers, Vec::new())
            });
        }
        Ok(WasmRun {
            plugin: builder.start()?,
            exchanges: self.exchanges.clone(),
            next: 0,
        })
    }

    /// Runs `count` requests through `run` and fails on the first unexpected verdict.
    pub fn check(
        &self,
        count: usize,
        mut run: impl FnMut() -> Result<Verdict, BenchError>,
    ) -> Result<(), BenchError> {
        for index in 0..count {
            let verdict = run()?;
            if verdict != self.expect {
                return Err(BenchError(format!(
                    "{}: request {index} got {verdict:?}, expected {:?}",
                    self.id(),
                    self.expect
                )));
            }
        }
        Ok(())
    }
}

/// A filter's native logic, one request per call.
pub trait NativeRun {
    /// Puts the next request through a new stream.
    fn run_once(&mut self) -> Verdict;
}

/// The native runner of filter `F` (the logic through the SDK's `StreamDriver`).
pub fn native_runner<F: HttpFilter>(scenario: &Scenario) -> Result<Box<dyn NativeRun>, BenchError> {
    let mut host = MemoryHost::new();
    let filter = Rc::new(configure::<F>(scenario.config.as_bytes(), &mut host)?);
    let requests = scenario
        .exchanges
        .iter()
        .map(|exchange| memory_request(exchange, &scenario.plugin_properties))
        .collect();
    Ok(Box::new(Native {
        filter,
        host,
        requests,
        answer: scenario.callout_answer.clone(),
        next: 0,
    }))
}

struct Native<F: HttpFilter> {
    filter: Rc<F>,
    host: MemoryHost,
    requests: Vec<MemoryRequest>,
    answer: Option<CalloutAnswer>,
    next: usize,
}

impl<F: HttpFilter> NativeRun for Native<F> {
    fn run_once(&mut self) -> Verdict {
        let Some(prepared) = self.requests.get(self.next % self.requests.len().max(1)) else {
            return Verdict::Held;
        };
        self.next = self.next.wrapping_add(1);
        let mut request = prepared.clone();
        let host = &mut self.host;
        let mut driver = StreamDriver::new(Some(Rc::clone(&self.filter)));
        let mut outcome = driver.on_request_headers_ending(&mut request, host, true);
        if outcome == Outcome::Pause {
            if let (Some(answer), Some((token, _))) = (&self.answer, host.http_callouts().last()) {
                let response = CalloutResponse::Http(HttpCalloutResponse {
                    token: *token,
                    headers: std::iter::once((":status".to_string(), answer.status.to_string()))
                        .chain(answer.headers.iter().cloned())
                        .collect(),
                    body: Vec::new(),
                    trailers: Vec::new(),
                });
                outcome = driver.on_callout_response(&mut request, host, response);
            }
        }
        let verdict = match outcome {
            Outcome::Continue | Outcome::Resume(_) => Verdict::Allowed,
            Outcome::Reply(reply) => Verdict::Denied(u32::from(reply.status)),
            Outcome::Pause | Outcome::Wait => Verdict::Held,
        };
        // A local reply also goes through the encoder path; the SDK skips the filter for it.
        driver.on_response_headers(&mut request, host);
        driver.on_log(&mut request, host);
        verdict
    }
}

/// The request view the native logic gets: headers, response headers, and every property the
/// harness would answer for this stream.
fn memory_request(exchange: &Exchange, plugin_properties: &[Property]) -> MemoryRequest {
    let mut request = MemoryRequest::new();
    for (name, value) in &exchange.request_headers {
        request = request.with_header(name, value);
    }
    for (name, value) in &exchange.response_headers {
        request = request.with_response_header(name, value);
    }
    for (path, value) in plugin_properties.iter().chain(&exchange.properties) {
        request = request.with_property(&borrow_path(path), value.encode());
    }
    request
}

/// A filter's wasm build in the harness, one request per call.
pub struct WasmRun {
    plugin: Plugin,
    exchanges: Vec<Exchange>,
    next: usize,
}

impl WasmRun {
    /// The running plugin (metrics, memory, logs).
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Hostcalls the module makes per request, averaged over `requests` requests.
    pub fn hostcalls_per_request(&mut self, requests: usize) -> Result<f64, BenchError> {
        self.plugin.reset_hostcall_counts();
        for _ in 0..requests {
            self.run_once()?;
        }
        let calls: u64 = self.plugin.hostcall_counts().values().sum();
        Ok(calls as f64 / requests.max(1) as f64)
    }

    /// Puts the next request through a new stream, to its end.
    pub fn run_once(&mut self) -> Result<Verdict, BenchError> {
        let Some(exchange) = self.exchanges.get(self.next % self.exchanges.len().max(1)) else {
            return Ok(Verdict::Held);
        };
        self.next = self.next.wrapping_add(1);
        let mut stream = self.plugin.http_stream();
        for (path, value) in &exchange.properties {
            stream.property(&borrow_path(path), value.clone());
        }
        let outcome = stream.request_headers(&borrow_pairs(&exchange.request_headers), true)?;
        let verdict = match outcome.local_reply() {
            Some(reply) => Verdict::Denied(reply.status),
            None if stream.request_state() == StreamState::Continued => Verdict::Allowed,
            None => Verdict::Held,
        };
        if verdict == Verdict::Allowed {
            stream.response_headers(&borrow_pairs(&exchange.response_headers), true)?;
        }
        stream.complete()?;
        Ok(verdict)
    }
}

/// Owned copies of header pairs.
pub fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_string(), (*value).to_string()))
        .collect()
}

fn borrow_pairs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect()
}

/// A property path as owned segments.
pub fn path_of(path: &[&str]) -> Vec<String> {
    path.iter().map(|segment| (*segment).to_string()).collect()
}

fn borrow_path(path: &[String]) -> Vec<&str> {
    path.iter().map(String::as_str).collect()
}
