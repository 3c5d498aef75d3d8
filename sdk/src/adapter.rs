//! The glue between a filter's logic and proxy-wasm.
//!
//! A filter implements [`HttpFilter`] (pure logic over SDK types) and exports itself with one
//! line:
//!
//! ```ignore
//! wasmesh_sdk::export_filter!(MyFilter);
//! ```
//!
//! The adapter then:
//! * on `proxy_on_configure` reads the plugin configuration, parses it with
//!   [`crate::config::load`] and builds the filter with [`HttpFilter::new`] (where metrics are
//!   defined, once per root context). On error it logs the message (JSON path included) at
//!   `error` level and returns `false`, so the proxy refuses to start the plugin;
//! * per HTTP stream, builds a host-backed [`crate::request::Request`], calls the logic and
//!   applies the [`Decision`]: `Continue`; `Deny` sends the local reply (with its response code
//!   details) and stops the stream; `Pause` holds it until a callout answers;
//! * routes callout answers to the stream that dispatched them and, when the callout hook
//!   returns `Continue`, resumes the paused stream;
//! * after root-context work (a tick, a root callout answer) offers every paused stream to
//!   [`HttpFilter::on_wake`], so a stream can wait for something the root context does for all
//!   streams (a delay elapsing, a key set being fetched) and resume or answer when it is done;
//! * keeps the request headers seen in the request phase as a read-only snapshot for later
//!   phases (the proxy no longer exposes them once they were forwarded), unless the filter
//!   says it does not need them ([`HttpFilter::KEEPS_REQUEST_HEADERS`]);
//! * does not run the filter's response hook on the filter's own local reply (Envoy sends
//!   local replies through the encoder chain, this filter included), but offers that reply to
//!   [`HttpFilter::on_own_reply_headers`].
//!
//! The decision logic lives in [`StreamDriver`], which is host-independent and unit-tested
//! natively; the proxy-wasm trait impls are a thin shell compiled only for `wasm32`.

use std::rc::Rc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::body::Body;
use crate::callout::CalloutResponse;
use crate::config::{load, Validate};
use crate::decision::{Decision, LocalReply};
use crate::error::Error;
use crate::host::{HeaderBackend, Host, HostRequest, Phase};
use crate::request::Request;

/// Response code details of the 503 a stream gets if its filter was never configured
/// (defensive: the proxy normally refuses to start a plugin whose `on_configure` failed).
pub const NOT_CONFIGURED_DETAILS: &str = "wasmesh_filter_not_configured";

/// A filter's logic, as the adapter drives it.
pub trait HttpFilter: Sized + 'static {
    /// Name used in logs (e.g. `"header_filter"`).
    const NAME: &'static str;

    /// The JSON plugin configuration.
    type Config: DeserializeOwned + Validate;

    /// Per-stream state (`()` for stateless filters), created with `Default` for every stream.
    type Stream: Default;

    /// Whether request headers stay readable after the request-headers phase: in
    /// [`HttpFilter::on_response_headers`], and in body and callout hooks that run once the
    /// stream went on. The proxy stops exposing them once they were forwarded, so the adapter
    /// reads them all at the end of the request phase and keeps a copy: a hostcall and a copy
    /// of every header on every request. A filter that reads request headers only while they
    /// are live (the request-headers phase, while it holds the stream paused there, and
    /// [`HttpFilter::on_log`]) sets this to `false` and saves both; later phases then see no
    /// request headers.
    const KEEPS_REQUEST_HEADERS: bool = true;

    /// Builds the filter from its validated configuration, once per root context (and again
    /// on reconfiguration). Define metrics here.
    fn new(config: Self::Config, host: &mut dyn Host) -> Result<Self, Error>;

    /// Called right before [`HttpFilter::on_request_headers`]: `end_of_stream` tells whether
    /// the headers end the request (no body follows). Filters that buffer bodies keep it in
    /// their stream state.
    fn on_request_start(&self, _stream: &mut Self::Stream, _end_of_stream: bool) {}

    /// Request headers arrived.
    fn on_request_headers(
        &self,
        stream: &mut Self::Stream,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision;

    /// Response headers arrived (not called for this filter's own local replies).
    fn on_response_headers(
        &self,
        _stream: &mut Self::Stream,
        _request: &mut dyn Request,
        _host: &mut dyn Host,
    ) -> Decision {
        Decision::Continue
    }

    /// This filter's own local reply is on its way out. Envoy sends a local reply through the
    /// encoder chain, this filter included, once it has set its own headers
    /// (`content-length`, `content-type`, a `local_reply_config` mapper's): headers added here
    /// come after those, where an Envoy native filter's encoder path adds its headers (e.g.
    /// `local_ratelimit`'s `X-RateLimit-*`), while the [`LocalReply`]'s headers come before
    /// them. Default: nothing.
    fn on_own_reply_headers(
        &self,
        _stream: &mut Self::Stream,
        _request: &mut dyn Request,
        _host: &mut dyn Host,
    ) {
    }

    /// A request body chunk arrived; `body` is everything the proxy holds for this filter
    /// (see [`crate::body`]). `Continue` lets the held headers and body go on; `Pause` keeps the
    /// body buffered (Envoy `StopIterationAndBuffer`) to see more of it, or while a callout
    /// dispatched here is in flight (the callout hook's `Continue` then resumes the stream);
    /// `Deny` answers locally. Not called for bodies of requests this filter already answered.
    fn on_request_body(
        &self,
        _stream: &mut Self::Stream,
        _request: &mut dyn Request,
        _host: &mut dyn Host,
        _body: &Body<'_>,
    ) -> Decision {
        Decision::Continue
    }

    /// A response body chunk went by (`body` holds this chunk only). Observation only: the
    /// chunk always continues (e.g. to count gRPC messages). Not called for the body of this
    /// filter's own local reply.
    fn on_response_body(&self, _stream: &mut Self::Stream, _host: &mut dyn Host, _body: &Body<'_>) {
    }

    /// A callout dispatched by this stream answered. `Continue` resumes the stream if it is
    /// paused, `Deny` answers locally, `Pause` keeps waiting (another callout is in flight).
    fn on_callout_response(
        &self,
        _stream: &mut Self::Stream,
        _request: &mut dyn Request,
        _host: &mut dyn Host,
        _response: CalloutResponse,
    ) -> Decision {
        Decision::Continue
    }

    /// The stream is complete (access-log time); headers are readable, not writable.
    fn on_log(&self, _stream: &mut Self::Stream, _request: &mut dyn Request, _host: &mut dyn Host) {
    }

    /// If `Some`, the root context calls [`HttpFilter::on_tick`] with this period.
    fn tick_period(&self) -> Option<Duration> {
        None
    }

    /// Periodic root-context work (e.g. refreshing a JWKS cache).
    fn on_tick(&self, _host: &mut dyn Host) {}

    /// A callout dispatched from the root context (e.g. in `on_tick`) answered.
    fn on_root_callout_response(&self, _host: &mut dyn Host, _response: CalloutResponse) {}

    /// A paused stream is offered to go on after root-context work ([`HttpFilter::on_tick`],
    /// [`HttpFilter::on_root_callout_response`]). `Continue` resumes it, `Deny` answers it,
    /// `Pause` (the default) keeps it waiting.
    fn on_wake(
        &self,
        _stream: &mut Self::Stream,
        _request: &mut dyn Request,
        _host: &mut dyn Host,
    ) -> Decision {
        Decision::Pause
    }

    /// Whether a callout answer to one stream also offers every other paused stream to
    /// [`HttpFilter::on_wake`]: for a callout one stream makes on behalf of all (the first fetch
    /// of a key set every stream needs), so the others need not wait for the next tick.
    /// Default `false`.
    fn wake_paused_after_stream_callout(&self) -> bool {
        false
    }
}

/// Parses and validates `bytes`, then builds the filter. What `on_configure` runs.
pub fn configure<F: HttpFilter>(bytes: &[u8], host: &mut dyn Host) -> Result<F, Error> {
    let config = load::<F::Config>(bytes)?;
    F::new(config, host)
}

/// The message `on_configure` logs when [`configure`] fails.
pub fn configure_error_message<F: HttpFilter>(error: &Error) -> String {
    refusal_message(F::NAME, error)
}

/// The message a plugin named `name` logs when it refuses to start because of `error`.
pub fn refusal_message(name: &str, error: &Error) -> String {
    format!("{name}: {error}; the filter refuses to start")
}

/// What the glue must do after a callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Return `Action::Continue`.
    Continue,
    /// Return `Action::Pause` (waiting for a callout).
    Pause,
    /// Send this local reply, then return `Action::Pause`.
    Reply(LocalReply),
    /// (Callout answered) resume the stream paused in this phase.
    Resume(Phase),
    /// (Callout answered) nothing to do: still waiting, or the stream was not paused.
    Wait,
}

/// Per-stream state machine, independent of the host.
pub struct StreamDriver<F: HttpFilter> {
    filter: Option<Rc<F>>,
    state: F::Stream,
    paused: Option<Phase>,
    replied: bool,
    request_snapshot: Option<Vec<crate::request::Header>>,
}

impl<F: HttpFilter> StreamDriver<F> {
    /// A driver for one stream; `None` when the root context has no configured filter.
    pub fn new(filter: Option<Rc<F>>) -> Self {
        StreamDriver {
            filter,
            state: F::Stream::default(),
            paused: None,
            replied: false,
            request_snapshot: None,
        }
    }

    /// The phase the stream is paused in, if any.
    pub fn paused(&self) -> Option<Phase> {
        self.paused
    }

    /// Whether this stream already answered with a local reply.
    pub fn replied(&self) -> bool {
        self.replied
    }

    /// The filter's per-stream state.
    pub fn state(&self) -> &F::Stream {
        &self.state
    }

    /// The request view for a callback in `phase`, lent the request headers kept from the
    /// request phase (give it back with [`StreamDriver::end_request_view`]).
    pub fn request_view<B: HeaderBackend>(&mut self, backend: B, phase: Phase) -> HostRequest<B> {
        HostRequest::new(backend, phase, self.request_snapshot.take())
    }

    /// Takes back a callback's request view. If the filter
    /// [keeps request headers](HttpFilter::KEEPS_REQUEST_HEADERS), its request headers are kept
    /// for later phases (read now if the filter did not); otherwise nothing is read.
    pub fn end_request_view<B: HeaderBackend>(&mut self, request: HostRequest<B>) {
        if F::KEEPS_REQUEST_HEADERS {
            self.request_snapshot = Some(request.into_request_snapshot());
        }
    }

    /// The phase a callout answer runs in: the paused phase, else detached.
    pub fn callout_phase(&self) -> Phase {
        self.paused.unwrap_or(Phase::Detached)
    }

    /// Request headers arrived; `end_of_stream`: no body follows (see
    /// [`HttpFilter::on_request_start`]).
    pub fn on_request_headers_ending(
        &mut self,
        request: &mut dyn Request,
        host: &mut dyn Host,
        end_of_stream: bool,
    ) -> Outcome {
        if let Some(filter) = self.filter.clone() {
            filter.on_request_start(&mut self.state, end_of_stream);
        }
        self.on_request_headers(request, host)
    }

    /// Request headers arrived.
    pub fn on_request_headers(
        &mut self,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Outcome {
        let Some(filter) = self.filter.clone() else {
            self.replied = true;
            return Outcome::Reply(LocalReply::unavailable(NOT_CONFIGURED_DETAILS));
        };
        let decision = filter.on_request_headers(&mut self.state, request, host);
        self.apply(Phase::RequestHeaders, decision)
    }

    /// A request body chunk arrived. Pausing here keeps the stream paused in the phase it
    /// was paused in (the request headers, when the proxy still holds them), so that a callout
    /// answer resumes the whole request.
    pub fn on_request_body(
        &mut self,
        request: &mut dyn Request,
        host: &mut dyn Host,
        body: &Body<'_>,
    ) -> Outcome {
        let Some(filter) = self.filter.clone() else {
            return Outcome::Continue;
        };
        if self.replied {
            return Outcome::Continue;
        }
        match filter.on_request_body(&mut self.state, request, host, body) {
            Decision::Continue => {
                // Continuing a body also lets headers held by an earlier pause go on.
                self.paused = None;
                Outcome::Continue
            }
            Decision::Deny(reply) => {
                self.paused = None;
                self.replied = true;
                Outcome::Reply(reply)
            }
            Decision::Pause => {
                self.paused = Some(self.paused.unwrap_or(Phase::RequestHeaders));
                Outcome::Pause
            }
        }
    }

    /// The phase a request-body callback runs in: with the request headers still held (the
    /// stream paused at headers), they are readable and writable; otherwise only the snapshot.
    pub fn body_phase(&self) -> Phase {
        match self.paused {
            Some(Phase::RequestHeaders) => Phase::RequestHeaders,
            _ => Phase::Detached,
        }
    }

    /// A response body chunk went by (see [`HttpFilter::on_response_body`]).
    pub fn on_response_body(&mut self, host: &mut dyn Host, body: &Body<'_>) {
        if let (Some(filter), false) = (self.filter.clone(), self.replied) {
            filter.on_response_body(&mut self.state, host, body);
        }
    }

    /// Response headers arrived.
    pub fn on_response_headers(
        &mut self,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Outcome {
        let Some(filter) = self.filter.clone() else {
            return Outcome::Continue;
        };
        if self.replied {
            // This is our own local reply travelling through the encoder chain.
            filter.on_own_reply_headers(&mut self.state, request, host);
            return Outcome::Continue;
        }
        let decision = filter.on_response_headers(&mut self.state, request, host);
        self.apply(Phase::ResponseHeaders, decision)
    }

    /// A callout answered.
    pub fn on_callout_response(
        &mut self,
        request: &mut dyn Request,
        host: &mut dyn Host,
        response: CalloutResponse,
    ) -> Outcome {
        let Some(filter) = self.filter.clone() else {
            return Outcome::Wait;
        };
        if self.replied {
            return Outcome::Wait;
        }
        let decision = filter.on_callout_response(&mut self.state, request, host, response);
        self.settle(decision)
    }

    /// Root-context work is done: a paused stream may go on (see [`HttpFilter::on_wake`]).
    pub fn on_wake(&mut self, request: &mut dyn Request, host: &mut dyn Host) -> Outcome {
        let Some(filter) = self.filter.clone() else {
            return Outcome::Wait;
        };
        if self.replied || self.paused.is_none() {
            return Outcome::Wait;
        }
        let decision = filter.on_wake(&mut self.state, request, host);
        self.settle(decision)
    }

    /// See [`HttpFilter::wake_paused_after_stream_callout`].
    pub fn wakes_paused_after_callout(&self) -> bool {
        self.filter
            .as_ref()
            .is_some_and(|filter| filter.wake_paused_after_stream_callout())
    }

    /// Applies a decision taken outside the stream's own callbacks.
    fn settle(&mut self, decision: Decision) -> Outcome {
        match decision {
            Decision::Continue => match self.paused.take() {
                Some(phase) => Outcome::Resume(phase),
                None => Outcome::Wait,
            },
            Decision::Deny(reply) => {
                self.paused = None;
                self.replied = true;
                Outcome::Reply(reply)
            }
            Decision::Pause => Outcome::Wait,
        }
    }

    /// The stream completed.
    pub fn on_log(&mut self, request: &mut dyn Request, host: &mut dyn Host) {
        if let Some(filter) = self.filter.clone() {
            filter.on_log(&mut self.state, request, host);
        }
    }

    fn apply(&mut self, phase: Phase, decision: Decision) -> Outcome {
        match decision {
            Decision::Continue => Outcome::Continue,
            Decision::Deny(reply) => {
                self.replied = true;
                Outcome::Reply(reply)
            }
            Decision::Pause => {
                self.paused = Some(phase);
                Outcome::Pause
            }
        }
    }
}

/// Exports `$filter` (an [`HttpFilter`]) as the module's proxy-wasm entry point. Expands to
/// nothing on non-wasm targets so the crate still builds and tests natively.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        #[cfg(target_arch = "wasm32")]
        $crate::proxy_wasm::main! {{
            $crate::adapter::install::<$filter>();
        }}
    };
}

#[cfg(target_arch = "wasm32")]
pub use glue::install;

#[cfg(target_arch = "wasm32")]
mod glue {
    //! proxy-wasm `RootContext`/`HttpContext` shells around [`StreamDriver`] (wasm only).

    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::{Rc, Weak};

    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel};

    use super::{configure, HttpFilter, Outcome, StreamDriver};
    use crate::body::Body;
    use crate::callout::CalloutResponse;
    use crate::host::{Host, Log, Phase, ProxyWasmHost};
    use crate::request::Request;

    /// Registers `F` as the module's root context factory. Call from `proxy_wasm::main!`
    /// (or use [`crate::export_filter!`]).
    pub fn install<F: HttpFilter>() {
        // Installs the SDK's panic hook, which logs a panic's message at `critical` before the
        // VM aborts.
        proxy_wasm::set_log_level(LogLevel::Trace);
        proxy_wasm::set_root_context(new_root::<F>);
    }

    /// The streams of one root context that are paused, by context id: the root context wakes
    /// them after its own work. Weak, so a stream the proxy deleted is simply gone.
    type Paused<F> = Rc<RefCell<BTreeMap<u32, Weak<RefCell<StreamDriver<F>>>>>>;

    fn new_root<F: HttpFilter>(context_id: u32) -> Box<dyn RootContext> {
        Box::new(Root::<F> {
            context_id,
            filter: None,
            host: ProxyWasmHost,
            paused: Rc::default(),
        })
    }

    struct Root<F: HttpFilter> {
        context_id: u32,
        filter: Option<Rc<F>>,
        host: ProxyWasmHost,
        paused: Paused<F>,
    }

    impl<F: HttpFilter> Root<F> {
        /// Offers every paused stream to go on, each in its own context.
        fn wake_paused_streams(&mut self) {
            wake_paused(self.host, &self.paused, self.context_id);
        }
    }

    /// Offers every paused stream to go on, each in its own context, then makes `current` the
    /// effective context again.
    fn wake_paused<F: HttpFilter>(host: ProxyWasmHost, paused: &Paused<F>, current: u32) {
        let waiting: Vec<(u32, Weak<RefCell<StreamDriver<F>>>)> = match paused.try_borrow() {
            Ok(paused) => paused
                .iter()
                .map(|(id, stream)| (*id, stream.clone()))
                .collect(),
            Err(_) => return,
        };
        for (context_id, stream) in waiting {
            let Some(driver) = stream.upgrade() else {
                forget(paused, context_id);
                continue;
            };
            if proxy_wasm::hostcalls::set_effective_context(context_id).is_err() {
                // The proxy no longer knows the stream.
                forget(paused, context_id);
                continue;
            }
            let outcome = drive(
                host,
                &driver,
                StreamDriver::callout_phase,
                StreamDriver::on_wake,
            );
            if matches!(outcome, Outcome::Resume(_) | Outcome::Reply(_)) {
                forget(paused, context_id);
            }
            enact::<F>(host, outcome);
        }
        let _ = proxy_wasm::hostcalls::set_effective_context(current);
    }

    impl<F: HttpFilter> Context for Root<F> {
        fn on_http_call_response(
            &mut self,
            token: u32,
            headers: usize,
            body: usize,
            trailers: usize,
        ) {
            let response = self
                .host
                .http_callout_response(token, headers, body, trailers);
            if let Some(filter) = self.filter.clone() {
                filter.on_root_callout_response(&mut self.host, response);
                self.wake_paused_streams();
            }
        }

        fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
            let response = self.host.grpc_callout_response(token, status, size);
            if let Some(filter) = self.filter.clone() {
                filter.on_root_callout_response(&mut self.host, response);
                self.wake_paused_streams();
            }
        }
    }

    impl<F: HttpFilter> RootContext for Root<F> {
        fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
            self.filter = self
                .host
                .configure_plugin(F::NAME, configure::<F>, F::tick_period)
                .map(Rc::new);
            self.filter.is_some()
        }

        fn on_tick(&mut self) {
            if let Some(filter) = self.filter.clone() {
                filter.on_tick(&mut self.host);
                self.wake_paused_streams();
            }
        }

        fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Stream::<F> {
                context_id,
                driver: Rc::new(RefCell::new(StreamDriver::new(self.filter.clone()))),
                host: ProxyWasmHost,
                paused: self.paused.clone(),
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Stream<F: HttpFilter> {
        context_id: u32,
        driver: Rc<RefCell<StreamDriver<F>>>,
        host: ProxyWasmHost,
        paused: Paused<F>,
    }

    /// Runs one callback of a stream's driver with a request view for the phase `phase`
    /// picks. The borrow ends before the caller enacts the outcome, since resuming a stream
    /// may call back into this module.
    fn drive<F: HttpFilter>(
        mut host: ProxyWasmHost,
        driver: &RefCell<StreamDriver<F>>,
        phase: impl FnOnce(&StreamDriver<F>) -> Phase,
        callback: impl FnOnce(&mut StreamDriver<F>, &mut dyn Request, &mut dyn Host) -> Outcome,
    ) -> Outcome {
        let Ok(mut driver) = driver.try_borrow_mut() else {
            // Only reachable if the proxy re-entered this stream from its own callback.
            return Outcome::Wait;
        };
        let phase = phase(&driver);
        let mut request = driver.request_view(host, phase);
        let outcome = callback(&mut driver, &mut request, &mut host);
        driver.end_request_view(request);
        outcome
    }

    fn forget<F: HttpFilter>(paused: &Paused<F>, context_id: u32) {
        if let Ok(mut paused) = paused.try_borrow_mut() {
            paused.remove(&context_id);
        }
    }

    /// Applies an outcome in the current (effective) context; returns the action for the
    /// current callback.
    fn enact<F: HttpFilter>(host: ProxyWasmHost, outcome: Outcome) -> Action {
        match outcome {
            Outcome::Continue | Outcome::Wait => Action::Continue,
            Outcome::Pause => Action::Pause,
            Outcome::Reply(reply) => {
                if let Err(error) = host.send_local_reply(&reply) {
                    host.log(
                        LogLevel::Error,
                        &format!("{}: sending local reply failed: {error}", F::NAME),
                    );
                }
                Action::Pause
            }
            Outcome::Resume(phase) => {
                let resumed = match phase {
                    Phase::ResponseHeaders => host.resume_response(),
                    _ => host.resume_request(),
                };
                if let Err(error) = resumed {
                    host.log(
                        LogLevel::Error,
                        &format!("{}: resuming the stream failed: {error}", F::NAME),
                    );
                }
                Action::Continue
            }
        }
    }

    impl<F: HttpFilter> Stream<F> {
        /// Runs one callback of the driver with a request view for `phase`, then enacts the
        /// outcome and keeps the paused-streams registry up to date.
        fn run(
            &mut self,
            phase: impl FnOnce(&StreamDriver<F>) -> Phase,
            callback: impl FnOnce(&mut StreamDriver<F>, &mut dyn Request, &mut dyn Host) -> Outcome,
        ) -> Action {
            let outcome = drive(self.host, &self.driver, phase, callback);
            match outcome {
                Outcome::Pause => {
                    if let Ok(mut paused) = self.paused.try_borrow_mut() {
                        paused.insert(self.context_id, Rc::downgrade(&self.driver));
                    }
                }
                // A stream that continues (e.g. a body callback releasing held headers) is no
                // longer paused either.
                Outcome::Resume(_) | Outcome::Reply(_) | Outcome::Continue => {
                    forget(&self.paused, self.context_id)
                }
                Outcome::Wait => {}
            }
            enact::<F>(self.host, outcome)
        }

        fn callout_answered(&mut self, response: CalloutResponse) {
            self.run(StreamDriver::callout_phase, |driver, request, host| {
                driver.on_callout_response(request, host, response)
            });
            let wake_others = self
                .driver
                .try_borrow()
                .is_ok_and(|driver| driver.wakes_paused_after_callout());
            if wake_others {
                wake_paused(self.host, &self.paused, self.context_id);
            }
        }
    }

    impl<F: HttpFilter> Drop for Stream<F> {
        fn drop(&mut self) {
            forget(&self.paused, self.context_id);
        }
    }

    impl<F: HttpFilter> Context for Stream<F> {
        fn on_http_call_response(
            &mut self,
            token: u32,
            headers: usize,
            body: usize,
            trailers: usize,
        ) {
            let response = self
                .host
                .http_callout_response(token, headers, body, trailers);
            self.callout_answered(response);
        }

        fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
            let response = self.host.grpc_callout_response(token, status, size);
            self.callout_answered(response);
        }

        fn on_done(&mut self) -> bool {
            // A stream the client abandoned while paused is no longer woken.
            forget(&self.paused, self.context_id);
            true
        }
    }

    impl<F: HttpFilter> HttpContext for Stream<F> {
        fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
            self.run(
                |_| Phase::RequestHeaders,
                |driver, request, host| {
                    driver.on_request_headers_ending(request, host, end_of_stream)
                },
            )
        }

        fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            let source = crate::body::HostBuffer::REQUEST_BODY;
            let body = Body::new(body_size, end_of_stream, &source);
            self.run(StreamDriver::body_phase, |driver, request, host| {
                driver.on_request_body(request, host, &body)
            })
        }

        fn on_http_response_headers(
            &mut self,
            _num_headers: usize,
            _end_of_stream: bool,
        ) -> Action {
            self.run(
                |_| Phase::ResponseHeaders,
                |driver, request, host| driver.on_response_headers(request, host),
            )
        }

        fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            let source = crate::body::HostBuffer::RESPONSE_BODY;
            let body = Body::new(body_size, end_of_stream, &source);
            if let Ok(mut driver) = self.driver.try_borrow_mut() {
                let mut host = self.host;
                driver.on_response_body(&mut host, &body);
            }
            Action::Continue
        }

        fn on_log(&mut self) {
            drive(
                self.host,
                &self.driver,
                |_| Phase::Log,
                |driver, request, host| {
                    driver.on_log(request, host);
                    Outcome::Wait
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callout::{HttpCallout, HttpCalloutResponse};
    use crate::config::ConfigError;
    use crate::metrics::Counter;
    use crate::request::MemoryRequest;
    use crate::testing::MemoryHost;
    use serde::Deserialize;

    /// A filter that asks an authorization service when a request carries `x-ask`.
    struct AskFilter {
        cluster: String,
        checked: Counter,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AskConfig {
        cluster: String,
    }

    impl Validate for AskConfig {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.cluster.is_empty() {
                return Err(ConfigError::new("cluster", "must not be empty"));
            }
            Ok(())
        }
    }

    #[derive(Default)]
    struct AskStream {
        token: Option<u32>,
    }

    impl HttpFilter for AskFilter {
        const NAME: &'static str = "ask";
        type Config = AskConfig;
        type Stream = AskStream;

        fn new(config: AskConfig, host: &mut dyn Host) -> Result<Self, Error> {
            Ok(AskFilter {
                cluster: config.cluster,
                checked: Counter::define(host, "ask.checked")?,
            })
        }

        fn on_request_headers(
            &self,
            stream: &mut AskStream,
            request: &mut dyn Request,
            host: &mut dyn Host,
        ) -> Decision {
            if request.header("x-ask").is_none() {
                return Decision::Continue;
            }
            let callout =
                HttpCallout::get(&self.cluster, "authz", "/check", Duration::from_millis(100));
            match host.dispatch_http(&callout) {
                Ok(token) => {
                    stream.token = Some(token);
                    Decision::Pause
                }
                Err(_) => Decision::Deny(LocalReply::forbidden("ask_callout_failed")),
            }
        }

        fn on_response_headers(
            &self,
            _stream: &mut AskStream,
            request: &mut dyn Request,
            _host: &mut dyn Host,
        ) -> Decision {
            let _ = request.add_response_header("x-seen", "1");
            Decision::Continue
        }

        fn on_callout_response(
            &self,
            stream: &mut AskStream,
            request: &mut dyn Request,
            host: &mut dyn Host,
            response: CalloutResponse,
        ) -> Decision {
            self.checked.increment(host);
            if Some(response.token()) != stream.token {
                return Decision::Pause;
            }
            match response {
                CalloutResponse::Http(answer) if answer.status() == Some(200) => {
                    let _ = request.set_request_header("x-checked", "yes");
                    Decision::Continue
                }
                _ => Decision::Deny(LocalReply::forbidden("ask_denied")),
            }
        }
    }

    fn filter(host: &mut MemoryHost) -> Rc<AskFilter> {
        Rc::new(configure::<AskFilter>(br#"{"cluster": "authz"}"#, host).unwrap())
    }

    fn answer(token: u32, status: &str) -> CalloutResponse {
        CalloutResponse::Http(HttpCalloutResponse {
            token,
            headers: vec![(":status".into(), status.into())],
            ..HttpCalloutResponse::default()
        })
    }

    #[test]
    fn configure_reports_json_paths_and_semantic_errors() {
        let mut host = MemoryHost::new();
        let error = configure::<AskFilter>(br#"{"cluster": 5}"#, &mut host)
            .err()
            .unwrap();
        assert_eq!(
            configure_error_message::<AskFilter>(&error),
            "ask: invalid configuration: cluster: invalid type: integer `5`, expected a string; the filter refuses to start"
        );
        let error = configure::<AskFilter>(br#"{"cluster": ""}"#, &mut host)
            .err()
            .unwrap();
        assert_eq!(
            error.to_string(),
            "invalid configuration: cluster: must not be empty"
        );
        let error = configure::<AskFilter>(b"", &mut host).err().unwrap();
        assert_eq!(
            error.to_string(),
            "invalid configuration: missing field `cluster`"
        );
    }

    #[test]
    fn continue_passes_straight_through() {
        let mut host = MemoryHost::new();
        let mut driver = StreamDriver::new(Some(filter(&mut host)));
        let mut request = MemoryRequest::get("/");
        assert_eq!(
            driver.on_request_headers(&mut request, &mut host),
            Outcome::Continue
        );
        assert_eq!(driver.paused(), None);
        assert_eq!(
            driver.on_response_headers(&mut request, &mut host),
            Outcome::Continue
        );
        assert_eq!(request.response_header("x-seen").as_deref(), Some("1"));
    }

    #[test]
    fn pause_then_callout_continue_resumes_the_request() {
        let mut host = MemoryHost::new();
        let mut driver = StreamDriver::new(Some(filter(&mut host)));
        let mut request = MemoryRequest::get("/").with_header("x-ask", "1");
        assert_eq!(
            driver.on_request_headers(&mut request, &mut host),
            Outcome::Pause
        );
        assert_eq!(driver.paused(), Some(Phase::RequestHeaders));
        assert_eq!(driver.callout_phase(), Phase::RequestHeaders);
        let token = host.http_callouts()[0].0;
        assert_eq!(driver.state().token, Some(token));
        let outcome = driver.on_callout_response(&mut request, &mut host, answer(token, "200"));
        assert_eq!(outcome, Outcome::Resume(Phase::RequestHeaders));
        assert_eq!(driver.paused(), None);
        assert_eq!(request.header("x-checked").as_deref(), Some("yes"));
        assert_eq!(host.metric("ask.checked"), Some(1));
    }

    #[test]
    fn callout_denial_sends_the_reply_and_skips_the_response_hook() {
        let mut host = MemoryHost::new();
        let mut driver = StreamDriver::new(Some(filter(&mut host)));
        let mut request = MemoryRequest::get("/").with_header("x-ask", "1");
        assert_eq!(
            driver.on_request_headers(&mut request, &mut host),
            Outcome::Pause
        );
        let outcome = driver.on_callout_response(&mut request, &mut host, answer(1, "403"));
        assert_eq!(outcome, Outcome::Reply(LocalReply::forbidden("ask_denied")));
        assert!(driver.replied());
        // The local reply comes back through the encoder path: the filter must not see it.
        assert_eq!(
            driver.on_response_headers(&mut request, &mut host),
            Outcome::Continue
        );
        assert_eq!(request.response_header("x-seen"), None);
        // A late answer after the reply is ignored.
        assert_eq!(
            driver.on_callout_response(&mut request, &mut host, answer(1, "200")),
            Outcome::Wait
        );
    }

    #[test]
    fn stale_callout_answer_keeps_waiting() {
        let mut host = MemoryHost::new();
        let mut driver = StreamDriver::new(Some(filter(&mut host)));
        let mut request = MemoryRequest::get("/").with_header("x-ask", "1");
        driver.on_request_headers(&mut request, &mut host);
        assert_eq!(
            driver.on_callout_response(&mut request, &mut host, answer(99, "200")),
            Outcome::Wait
        );
        assert_eq!(driver.paused(), Some(Phase::RequestHeaders));
    }

    #[test]
    fn failed_dispatch_denies() {
        let mut host = MemoryHost::new().with_failing_callouts();
        let mut driver = StreamDriver::new(Some(filter(&mut host)));
        let mut request = MemoryRequest::get("/").with_header("x-ask", "1");
        assert_eq!(
            driver.on_request_headers(&mut request, &mut host),
            Outcome::Reply(LocalReply::forbidden("ask_callout_failed"))
        );
    }

    #[test]
    fn unconfigured_filter_fails_closed() {
        let mut host = MemoryHost::new();
        let mut driver = StreamDriver::<AskFilter>::new(None);
        let mut request = MemoryRequest::get("/");
        assert_eq!(
            driver.on_request_headers(&mut request, &mut host),
            Outcome::Reply(LocalReply::unavailable(NOT_CONFIGURED_DETAILS))
        );
        assert_eq!(
            driver.on_response_headers(&mut request, &mut host),
            Outcome::Continue
        );
        driver.on_log(&mut request, &mut host);
    }

    /// A filter that holds `x-wait` requests until the clock passes one second after they
    /// arrived, and answers `x-deny` ones when woken.
    #[derive(Default)]
    struct GateStream {
        until: Option<std::time::SystemTime>,
    }

    struct GateFilter;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct GateConfig {}

    impl Validate for GateConfig {}

    impl HttpFilter for GateFilter {
        const NAME: &'static str = "gate";
        type Config = GateConfig;
        type Stream = GateStream;

        fn new(_: GateConfig, _: &mut dyn Host) -> Result<Self, Error> {
            Ok(GateFilter)
        }

        fn on_request_headers(
            &self,
            stream: &mut GateStream,
            request: &mut dyn Request,
            host: &mut dyn Host,
        ) -> Decision {
            if request.header("x-wait").is_none() {
                return Decision::Continue;
            }
            stream.until = Some(host.now() + Duration::from_secs(1));
            Decision::Pause
        }

        fn on_wake(
            &self,
            stream: &mut GateStream,
            request: &mut dyn Request,
            host: &mut dyn Host,
        ) -> Decision {
            if request.header("x-deny").is_some() {
                return Decision::Deny(LocalReply::forbidden("gate_denied"));
            }
            match stream.until {
                Some(until) if host.now() >= until => Decision::Continue,
                _ => Decision::Pause,
            }
        }

        fn wake_paused_after_stream_callout(&self) -> bool {
            true
        }
    }

    fn gate(host: &mut MemoryHost) -> StreamDriver<GateFilter> {
        StreamDriver::new(Some(Rc::new(configure::<GateFilter>(b"{}", host).unwrap())))
    }

    #[test]
    fn waking_others_after_a_stream_callout_is_opt_in() {
        let mut host = MemoryHost::new();
        assert!(!StreamDriver::new(Some(filter(&mut host))).wakes_paused_after_callout());
        assert!(gate(&mut host).wakes_paused_after_callout());
        assert!(!StreamDriver::<GateFilter>::new(None).wakes_paused_after_callout());
    }

    #[test]
    fn woken_stream_resumes_once_its_wait_is_over() {
        let mut host = MemoryHost::new();
        let mut driver = gate(&mut host);
        let mut request = MemoryRequest::get("/").with_header("x-wait", "1");
        assert_eq!(
            driver.on_request_headers(&mut request, &mut host),
            Outcome::Pause
        );
        host.advance(Duration::from_millis(999));
        assert_eq!(driver.on_wake(&mut request, &mut host), Outcome::Wait);
        assert_eq!(driver.paused(), Some(Phase::RequestHeaders));
        host.advance(Duration::from_millis(1));
        assert_eq!(
            driver.on_wake(&mut request, &mut host),
            Outcome::Resume(Phase::RequestHeaders)
        );
        // Once resumed, later wake-ups are no-ops.
        assert_eq!(driver.on_wake(&mut request, &mut host), Outcome::Wait);
    }

    #[test]
    fn woken_stream_can_be_answered_and_running_streams_are_not_woken() {
        let mut host = MemoryHost::new();
        let mut running = gate(&mut host);
        let mut plain = MemoryRequest::get("/").with_header("x-deny", "1");
        assert_eq!(
            running.on_request_headers(&mut plain, &mut host),
            Outcome::Continue
        );
        assert_eq!(running.on_wake(&mut plain, &mut host), Outcome::Wait);
        assert!(!running.replied());

        let mut paused = gate(&mut host);
        let mut request = MemoryRequest::get("/")
            .with_header("x-wait", "1")
            .with_header("x-deny", "1");
        paused.on_request_headers(&mut request, &mut host);
        assert_eq!(
            paused.on_wake(&mut request, &mut host),
            Outcome::Reply(LocalReply::forbidden("gate_denied"))
        );
        assert!(paused.replied());
        assert_eq!(paused.paused(), None);
    }

    #[test]
    fn default_wake_keeps_a_callout_wait() {
        let mut host = MemoryHost::new();
        let mut driver = StreamDriver::new(Some(filter(&mut host)));
        let mut request = MemoryRequest::get("/").with_header("x-ask", "1");
        driver.on_request_headers(&mut request, &mut host);
        assert_eq!(driver.on_wake(&mut request, &mut host), Outcome::Wait);
        assert_eq!(driver.paused(), Some(Phase::RequestHeaders));
    }

    /// A filter that buffers bodies of `x-body` requests until the client is done (or 8 bytes
    /// are held), then asks a service, and denies bodies containing `evil` right away.
    struct BodyFilter;

    impl HttpFilter for BodyFilter {
        const NAME: &'static str = "body";
        type Config = GateConfig;
        type Stream = Option<u32>;

        fn new(_: GateConfig, _: &mut dyn Host) -> Result<Self, Error> {
            Ok(BodyFilter)
        }

        fn on_request_start(&self, token: &mut Option<u32>, end_of_stream: bool) {
            // Marks bodiless requests, which the headers callback lets through.
            if end_of_stream {
                *token = Some(0);
            }
        }

        fn on_request_headers(
            &self,
            token: &mut Option<u32>,
            request: &mut dyn Request,
            _: &mut dyn Host,
        ) -> Decision {
            if request.header("x-body").is_some() && *token != Some(0) {
                Decision::Pause
            } else {
                Decision::Continue
            }
        }

        fn on_request_body(
            &self,
            token: &mut Option<u32>,
            request: &mut dyn Request,
            host: &mut dyn Host,
            body: &Body<'_>,
        ) -> Decision {
            if request.header("x-body").is_none() {
                return Decision::Continue;
            }
            let bytes = body.read_all().unwrap_or_default();
            if bytes.windows(4).any(|w| w == b"evil") {
                return Decision::Deny(LocalReply::forbidden("body_denied"));
            }
            if !body.end_of_stream() && body.size() < 8 {
                return Decision::Pause;
            }
            let callout = HttpCallout::get("authz", "authz", "/check", Duration::from_secs(1))
                .with_body(bytes);
            match host.dispatch_http(&callout) {
                Ok(id) => {
                    *token = Some(id);
                    Decision::Pause
                }
                Err(_) => Decision::Deny(LocalReply::forbidden("body_callout_failed")),
            }
        }

        fn on_callout_response(
            &self,
            _: &mut Option<u32>,
            request: &mut dyn Request,
            _: &mut dyn Host,
            _: CalloutResponse,
        ) -> Decision {
            let _ = request.set_request_header("x-checked", "body");
            Decision::Continue
        }
    }

    fn body_driver(host: &mut MemoryHost) -> StreamDriver<BodyFilter> {
        StreamDriver::new(Some(Rc::new(configure::<BodyFilter>(b"{}", host).unwrap())))
    }

    #[test]
    fn body_pauses_buffer_until_a_callout_resumes_the_whole_request() {
        use crate::body::MemoryBody;
        let mut host = MemoryHost::new();
        let mut bodiless = body_driver(&mut host);
        let mut request = MemoryRequest::get("/").with_header("x-body", "1");
        assert_eq!(
            bodiless.on_request_headers_ending(&mut request, &mut host, true),
            Outcome::Continue
        );
        let mut driver = body_driver(&mut host);
        assert_eq!(
            driver.on_request_headers_ending(&mut request, &mut host, false),
            Outcome::Pause
        );
        // Headers are held: the body callback may still read and write them.
        assert_eq!(driver.body_phase(), Phase::RequestHeaders);
        let first = MemoryBody(b"abc".to_vec());
        assert_eq!(
            driver.on_request_body(&mut request, &mut host, &first.view(false)),
            Outcome::Pause
        );
        assert!(host.http_callouts().is_empty());
        let all = MemoryBody(b"abcdef".to_vec());
        assert_eq!(
            driver.on_request_body(&mut request, &mut host, &all.view(true)),
            Outcome::Pause
        );
        assert_eq!(host.http_callouts()[0].1.body, b"abcdef");
        assert_eq!(driver.paused(), Some(Phase::RequestHeaders));
        assert_eq!(driver.callout_phase(), Phase::RequestHeaders);
        let token = host.http_callouts()[0].0;
        assert_eq!(
            driver.on_callout_response(&mut request, &mut host, answer(token, "200")),
            Outcome::Resume(Phase::RequestHeaders)
        );
        assert_eq!(request.header("x-checked").as_deref(), Some("body"));
    }

    #[test]
    fn body_continue_releases_held_headers_and_deny_replies_once() {
        use crate::body::MemoryBody;
        let mut host = MemoryHost::new();
        let mut plain = body_driver(&mut host);
        let mut request = MemoryRequest::get("/");
        assert_eq!(
            plain.on_request_headers(&mut request, &mut host),
            Outcome::Continue
        );
        assert_eq!(plain.body_phase(), Phase::Detached);
        let chunk = MemoryBody(b"evil".to_vec());
        assert_eq!(
            plain.on_request_body(&mut request, &mut host, &chunk.view(true)),
            Outcome::Continue
        );

        let mut denied = body_driver(&mut host);
        let mut request = MemoryRequest::get("/").with_header("x-body", "1");
        denied.on_request_headers(&mut request, &mut host);
        assert_eq!(
            denied.on_request_body(&mut request, &mut host, &chunk.view(false)),
            Outcome::Reply(LocalReply::forbidden("body_denied"))
        );
        assert!(denied.replied());
        assert_eq!(denied.paused(), None);
        // Later chunks of an answered request are not offered to the filter.
        assert_eq!(
            denied.on_request_body(&mut request, &mut host, &chunk.view(true)),
            Outcome::Continue
        );
        let unconfigured = &mut StreamDriver::<BodyFilter>::new(None);
        assert_eq!(
            unconfigured.on_request_body(&mut request, &mut host, &chunk.view(true)),
            Outcome::Continue
        );
    }

    /// Counts response body bytes it is shown.
    struct ResponseBodyCounter;

    impl HttpFilter for ResponseBodyCounter {
        const NAME: &'static str = "response_body_counter";
        type Config = GateConfig;
        type Stream = usize;

        fn new(_: GateConfig, _: &mut dyn Host) -> Result<Self, Error> {
            Ok(ResponseBodyCounter)
        }

        fn on_request_headers(
            &self,
            _: &mut usize,
            request: &mut dyn Request,
            _: &mut dyn Host,
        ) -> Decision {
            if request.header("x-deny").is_some() {
                return Decision::Deny(LocalReply::forbidden("denied"));
            }
            Decision::Continue
        }

        fn on_response_body(&self, seen: &mut usize, _: &mut dyn Host, body: &Body<'_>) {
            *seen += body.size();
        }
    }

    /// Denies every request and stamps its own reply on the way out.
    struct Stamper;

    impl HttpFilter for Stamper {
        const NAME: &'static str = "stamper";
        type Config = GateConfig;
        type Stream = ();

        fn new(_: GateConfig, _: &mut dyn Host) -> Result<Self, Error> {
            Ok(Stamper)
        }

        fn on_request_headers(
            &self,
            _: &mut (),
            _: &mut dyn Request,
            _: &mut dyn Host,
        ) -> Decision {
            Decision::Deny(LocalReply::forbidden("stamped"))
        }

        fn on_response_headers(
            &self,
            _: &mut (),
            request: &mut dyn Request,
            _: &mut dyn Host,
        ) -> Decision {
            let _ = request.add_response_header("x-seen", "response");
            Decision::Continue
        }

        fn on_own_reply_headers(&self, _: &mut (), request: &mut dyn Request, _: &mut dyn Host) {
            let _ = request.add_response_header("x-stamp", "own-reply");
        }
    }

    #[test]
    fn the_own_local_reply_goes_to_the_own_reply_hook_only() {
        let mut host = MemoryHost::new();
        let filter = Rc::new(configure::<Stamper>(b"{}", &mut host).unwrap());
        let mut driver = StreamDriver::new(Some(filter));
        let mut request = MemoryRequest::get("/");
        assert!(matches!(
            driver.on_request_headers(&mut request, &mut host),
            Outcome::Reply(_)
        ));
        assert_eq!(
            driver.on_response_headers(&mut request, &mut host),
            Outcome::Continue
        );
        assert_eq!(
            request.response_header("x-stamp").as_deref(),
            Some("own-reply")
        );
        assert_eq!(request.response_header("x-seen"), None);
    }

    #[test]
    fn response_body_chunks_are_observed_except_for_the_own_local_reply() {
        use crate::body::MemoryBody;
        let mut host = MemoryHost::new();
        let filter = Rc::new(configure::<ResponseBodyCounter>(b"{}", &mut host).unwrap());
        let mut driver = StreamDriver::new(Some(filter.clone()));
        let mut request = MemoryRequest::get("/");
        driver.on_request_headers(&mut request, &mut host);
        driver.on_response_body(&mut host, &MemoryBody(b"abc".to_vec()).view(false));
        driver.on_response_body(&mut host, &MemoryBody(b"de".to_vec()).view(true));
        assert_eq!(*driver.state(), 5);

        let mut denied = StreamDriver::new(Some(filter));
        let mut request = MemoryRequest::get("/").with_header("x-deny", "1");
        denied.on_request_headers(&mut request, &mut host);
        denied.on_response_body(&mut host, &MemoryBody(b"Forbidden".to_vec()).view(true));
        assert_eq!(*denied.state(), 0);
    }

    /// A filter that keeps no request headers for later phases.
    struct Forgetful;

    impl HttpFilter for Forgetful {
        const NAME: &'static str = "forgetful";
        type Config = AskConfig;
        type Stream = ();
        const KEEPS_REQUEST_HEADERS: bool = false;

        fn new(_: AskConfig, _: &mut dyn Host) -> Result<Self, Error> {
            Ok(Forgetful)
        }

        fn on_request_headers(
            &self,
            _: &mut (),
            _: &mut dyn Request,
            _: &mut dyn Host,
        ) -> Decision {
            Decision::Continue
        }
    }

    /// The request headers a response-phase view of `driver` sees, and how many header maps the
    /// backend was asked for over the stream, for a filter that read nothing itself.
    fn later_phase_view<F: HttpFilter>(
        mut driver: StreamDriver<F>,
    ) -> (Vec<crate::request::Header>, u32) {
        let backend = crate::host::tests::backend();
        let request = driver.request_view(&backend, Phase::RequestHeaders);
        driver.end_request_view(request);
        let response_phase = driver.request_view(&backend, Phase::ResponseHeaders);
        let seen = response_phase.request_headers().to_vec();
        driver.end_request_view(response_phase);
        (seen, backend.header_reads.get())
    }

    #[test]
    fn request_headers_are_kept_for_later_phases_only_when_the_filter_keeps_them() {
        let (seen, reads) = later_phase_view(StreamDriver::<AskFilter>::new(None));
        assert_eq!(seen, *crate::host::tests::backend().request.borrow());
        assert_eq!(reads, 1, "one read at the end of the request phase");

        let (seen, reads) = later_phase_view(StreamDriver::<Forgetful>::new(None));
        assert!(seen.is_empty());
        assert_eq!(reads, 0, "nothing read for a filter that keeps nothing");
    }

    #[test]
    fn a_stream_that_is_not_paused_answers_callouts_detached() {
        let driver = StreamDriver::<AskFilter>::new(None);
        assert_eq!(driver.callout_phase(), Phase::Detached);
    }
}
