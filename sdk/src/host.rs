//! Host services and the host-backed [`Request`].
//!
//! [`Host`] bundles what logic may ask of the proxy besides the request: time ([`Clock`]),
//! shared data ([`SharedData`]), callouts ([`Callouts`]), metrics ([`MetricSink`]) and logging
//! ([`Log`]). In wasm it is implemented with proxy-wasm hostcalls (`ProxyWasmHost`, only
//! compiled for `wasm32`: the hostcall imports do not link into native test binaries); in
//! native tests by [`crate::testing::MemoryHost`].
//!
//! [`HostRequest`] is the [`Request`] the adapter hands to logic inside a callback. It reads
//! lazily through a [`HeaderBackend`] and caches what it read for the rest of the callback
//! (one `proxy_get_header_map_pairs` call serves every header lookup), keeps the cache in step
//! with its own mutations, and refuses operations the current phase does not allow *before*
//! calling the host — the proxy-wasm Rust SDK panics (and so aborts the VM) when Envoy answers
//! such calls with `BadArgument`.

use std::borrow::Cow;
use std::cell::OnceCell;

pub use proxy_wasm::types::LogLevel;

use crate::callout::Callouts;
use crate::clock::Clock;
use crate::error::Error;
use crate::metrics::MetricSink;
use crate::properties::{Properties, PropertyCache};
use crate::request::{
    apply_mutation, first_value, mutation, validate_header_name, validate_header_value, Header,
    HeaderMapKind, MutationKind, Request,
};
use crate::shared::SharedData;

/// Logging through the host (Envoy's `wasm` log component).
pub trait Log {
    /// Logs `message` at `level`.
    fn log(&self, level: LogLevel, message: &str);
}

/// Everything logic may ask of the host besides the request itself.
pub trait Host: Clock + SharedData + Callouts + MetricSink + Log {}

impl<T: Clock + SharedData + Callouts + MetricSink + Log + ?Sized> Host for T {}

/// The stream phase a callback runs in, which decides which header maps the host exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Request headers are readable and writable; response headers do not exist yet.
    RequestHeaders,
    /// Response headers are readable and writable; request headers were already forwarded
    /// (reads are served from the snapshot taken in the request phase, writes are refused).
    ResponseHeaders,
    /// Access-log time: both maps readable, nothing writable.
    Log,
    /// Outside any header callback (e.g. a callout answered after the stream continued):
    /// only the request snapshot is readable.
    Detached,
}

/// The raw header/property hostcalls [`HostRequest`] needs.
pub trait HeaderBackend {
    /// Every header of `map`, in order.
    fn get_headers(&self, map: HeaderMapKind) -> Result<Vec<Header>, Error>;
    /// The first value of `name` in `map` (`proxy_get_header_map_value`), `None` if absent.
    fn get_header(&self, map: HeaderMapKind, name: &str) -> Result<Option<String>, Error> {
        let headers = self.get_headers(map)?;
        Ok(first_value(&headers, name).map(str::to_string))
    }
    /// A property, `None` if absent.
    fn get_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Error>;
    /// Replaces every value of `name`.
    fn set_header(&self, map: HeaderMapKind, name: &str, value: &str) -> Result<(), Error>;
    /// Appends a value of `name`.
    fn add_header(&self, map: HeaderMapKind, name: &str, value: &str) -> Result<(), Error>;
    /// Removes every value of `name`.
    fn remove_header(&self, map: HeaderMapKind, name: &str) -> Result<(), Error>;
}

/// A [`Request`] backed by hostcalls, valid for one callback.
pub struct HostRequest<B: HeaderBackend> {
    backend: B,
    phase: Phase,
    request_headers: OnceCell<Vec<Header>>,
    response_headers: OnceCell<Vec<Header>>,
    /// In the access-log phase, the snapshot of the request phase: the live request headers are
    /// read only if the filter asks for them.
    earlier_snapshot: Option<Vec<Header>>,
    /// Properties read in this callback.
    properties: PropertyCache,
}

impl<B: HeaderBackend> HostRequest<B> {
    /// A view for a callback in `phase`. `request_snapshot` serves request-header reads in
    /// phases where the host no longer exposes them.
    pub fn new(backend: B, phase: Phase, request_snapshot: Option<Vec<Header>>) -> Self {
        let request_headers = OnceCell::new();
        let live_request = matches!(phase, Phase::RequestHeaders | Phase::Log);
        let earlier_snapshot = if live_request {
            request_snapshot
        } else {
            let _ = request_headers.set(request_snapshot.unwrap_or_default());
            None
        };
        HostRequest {
            backend,
            phase,
            request_headers,
            response_headers: OnceCell::new(),
            earlier_snapshot,
            properties: PropertyCache::default(),
        }
    }

    /// The phase this view was built for.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The request headers as this view last saw them (read now if never read), to keep as
    /// the snapshot for later phases.
    ///
    /// In the access-log phase nothing comes later that could need them, so headers the filter
    /// did not read are not fetched: the earlier snapshot is handed back as it was.
    pub fn into_request_snapshot(self) -> Vec<Header> {
        if self.phase == Phase::Log && self.request_headers.get().is_none() {
            return self.earlier_snapshot.unwrap_or_default();
        }
        let _ = self.request_headers();
        self.request_headers.into_inner().unwrap_or_default()
    }

    fn map_readable(&self, map: HeaderMapKind) -> bool {
        match map {
            HeaderMapKind::Request => matches!(self.phase, Phase::RequestHeaders | Phase::Log),
            HeaderMapKind::Response => matches!(self.phase, Phase::ResponseHeaders | Phase::Log),
        }
    }

    fn check_writable(&self, map: HeaderMapKind, operation: &'static str) -> Result<(), Error> {
        let allowed = match map {
            HeaderMapKind::Request => self.phase == Phase::RequestHeaders,
            HeaderMapKind::Response => self.phase == Phase::ResponseHeaders,
        };
        if allowed {
            Ok(())
        } else {
            Err(Error::NotAllowed {
                operation,
                reason: match map {
                    HeaderMapKind::Request => "outside the request-headers phase",
                    HeaderMapKind::Response => "outside the response-headers phase",
                },
            })
        }
    }

    fn cell(&self, map: HeaderMapKind) -> &OnceCell<Vec<Header>> {
        match map {
            HeaderMapKind::Request => &self.request_headers,
            HeaderMapKind::Response => &self.response_headers,
        }
    }

    fn headers(&self, map: HeaderMapKind) -> &[Header] {
        self.cell(map).get_or_init(|| {
            if self.map_readable(map) {
                // A failed read is served as "no headers": logic then sees a request without
                // the header it looks for, which filters treat as a failed check.
                self.backend.get_headers(map).unwrap_or_default()
            } else {
                Vec::new()
            }
        })
    }

    fn mutate(
        &mut self,
        map: HeaderMapKind,
        kind: MutationKind,
        operation: &'static str,
        name: &str,
        value: Option<&str>,
    ) -> Result<(), Error> {
        self.check_writable(map, operation)?;
        validate_header_name(name)?;
        if let Some(value) = value {
            validate_header_value(value)?;
        }
        match (kind, value) {
            (MutationKind::Set, Some(value)) => self.backend.set_header(map, name, value)?,
            (MutationKind::Add, Some(value)) => self.backend.add_header(map, name, value)?,
            _ => self.backend.remove_header(map, name)?,
        }
        let change = mutation(map, kind, name, value);
        let cell = match map {
            HeaderMapKind::Request => &mut self.request_headers,
            HeaderMapKind::Response => &mut self.response_headers,
        };
        if let Some(cached) = cell.get_mut() {
            apply_mutation(cached, &change);
        }
        Ok(())
    }
}

impl<B: HeaderBackend> Properties for HostRequest<B> {
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.properties
            .get(path, |path| self.backend.get_property(path).unwrap_or(None))
    }
}

impl<B: HeaderBackend> Request for HostRequest<B> {
    fn request_headers(&self) -> &[Header] {
        self.headers(HeaderMapKind::Request)
    }

    fn response_headers(&self) -> &[Header] {
        self.headers(HeaderMapKind::Response)
    }

    fn first_header(&self, name: &str) -> Option<Cow<'_, str>> {
        let map = HeaderMapKind::Request;
        match self.request_headers.get() {
            Some(headers) => first_value(headers, name).map(Cow::Borrowed),
            // A failed read is served as an absent header, as for the whole map.
            None if self.map_readable(map) => self
                .backend
                .get_header(map, name)
                .unwrap_or(None)
                .map(Cow::Owned),
            None => None,
        }
    }

    fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        self.mutate(
            HeaderMapKind::Request,
            MutationKind::Set,
            "set_request_header",
            name,
            Some(value),
        )
    }

    fn add_request_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        self.mutate(
            HeaderMapKind::Request,
            MutationKind::Add,
            "add_request_header",
            name,
            Some(value),
        )
    }

    fn remove_request_header(&mut self, name: &str) -> Result<(), Error> {
        self.mutate(
            HeaderMapKind::Request,
            MutationKind::Remove,
            "remove_request_header",
            name,
            None,
        )
    }

    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        self.mutate(
            HeaderMapKind::Response,
            MutationKind::Set,
            "set_response_header",
            name,
            Some(value),
        )
    }

    fn add_response_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        self.mutate(
            HeaderMapKind::Response,
            MutationKind::Add,
            "add_response_header",
            name,
            Some(value),
        )
    }

    fn remove_response_header(&mut self, name: &str) -> Result<(), Error> {
        self.mutate(
            HeaderMapKind::Response,
            MutationKind::Remove,
            "remove_response_header",
            name,
            None,
        )
    }
}

/// Serializes header pairs in the proxy-wasm map format: `u32` count, then per pair `u32`
/// name length and `u32` value length, then every name and value each followed by a NUL.
pub fn serialize_pairs(pairs: &[Header]) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let payload: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
    let mut bytes = Vec::with_capacity(4 + payload);
    bytes.extend_from_slice(&len(pairs.len()));
    for (name, value) in pairs {
        bytes.extend_from_slice(&len(name.len()));
        bytes.extend_from_slice(&len(value.len()));
    }
    for (name, value) in pairs {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
    }
    bytes
}

#[cfg(target_arch = "wasm32")]
pub use wasm::ProxyWasmHost;

#[cfg(target_arch = "wasm32")]
mod wasm {
    //! proxy-wasm hostcall implementations (wasm only).

    use std::time::{SystemTime, UNIX_EPOCH};

    use proxy_wasm::hostcalls;
    use proxy_wasm::types::{BufferType, MapType, MetricType, Status};

    use super::{serialize_pairs, HeaderBackend, Log, LogLevel};
    use crate::callout::{
        timeout_millis, CalloutResponse, Callouts, GrpcCallout, GrpcCalloutResponse, HttpCallout,
        HttpCalloutResponse,
    };
    use crate::clock::Clock;
    use crate::decision::LocalReply;
    use crate::error::Error;
    use crate::metrics::{MetricKind, MetricSink};
    use crate::request::{Header, HeaderMapKind};
    use crate::shared::{SharedData, SharedValue};

    /// The proxy, reached through proxy-wasm hostcalls.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct ProxyWasmHost;

    fn map_type(map: HeaderMapKind) -> MapType {
        match map {
            HeaderMapKind::Request => MapType::HttpRequestHeaders,
            HeaderMapKind::Response => MapType::HttpResponseHeaders,
        }
    }

    fn read_map(map: MapType) -> Result<Vec<Header>, Error> {
        let pairs = hostcalls::get_map_bytes(map)
            .map_err(|status| Error::host("proxy_get_header_map_pairs", status))?;
        Ok(pairs
            .into_iter()
            .map(|(name, value)| (name, utf8_lossy(value)))
            .collect())
    }

    /// The value as text, reusing its buffer when it is valid UTF-8 (header values nearly
    /// always are; copying each one again was a measurable share of every callback).
    fn utf8_lossy(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes)
            .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
    }

    fn read_buffer(buffer: BufferType, size: usize) -> Vec<u8> {
        if size == 0 {
            return Vec::new();
        }
        hostcalls::get_buffer(buffer, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    impl HeaderBackend for ProxyWasmHost {
        fn get_headers(&self, map: HeaderMapKind) -> Result<Vec<Header>, Error> {
            read_map(map_type(map))
        }

        fn get_header(&self, map: HeaderMapKind, name: &str) -> Result<Option<String>, Error> {
            let value = hostcalls::get_map_value_bytes(map_type(map), name)
                .map_err(|status| Error::host("proxy_get_header_map_value", status))?;
            Ok(value.map(utf8_lossy))
        }

        fn get_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Error> {
            hostcalls::get_property(path.to_vec())
                .map_err(|status| Error::host("proxy_get_property", status))
        }

        fn set_header(&self, map: HeaderMapKind, name: &str, value: &str) -> Result<(), Error> {
            hostcalls::set_map_value(map_type(map), name, Some(value))
                .map_err(|status| Error::host("proxy_replace_header_map_value", status))
        }

        fn add_header(&self, map: HeaderMapKind, name: &str, value: &str) -> Result<(), Error> {
            hostcalls::add_map_value(map_type(map), name, value)
                .map_err(|status| Error::host("proxy_add_header_map_value", status))
        }

        fn remove_header(&self, map: HeaderMapKind, name: &str) -> Result<(), Error> {
            hostcalls::remove_map_value(map_type(map), name)
                .map_err(|status| Error::host("proxy_remove_header_map_value", status))
        }
    }

    impl Clock for ProxyWasmHost {
        fn now(&self) -> SystemTime {
            hostcalls::get_current_time().unwrap_or(UNIX_EPOCH)
        }
    }

    impl Log for ProxyWasmHost {
        fn log(&self, level: LogLevel, message: &str) {
            // Nothing sensible to do if logging itself fails.
            let _ = hostcalls::log(level, message);
        }
    }

    impl SharedData for ProxyWasmHost {
        fn get_shared_data(&self, key: &str) -> Result<Option<SharedValue>, Error> {
            let (value, cas) = hostcalls::get_shared_data(key)
                .map_err(|status| Error::host("proxy_get_shared_data", status))?;
            // Envoy hands back an existing empty value as a null pointer with a CAS token, which
            // the proxy-wasm crate reports as no bytes: the token says the key exists, and
            // dropping it would make the next write unconditional.
            Ok(match (value, cas) {
                (None, None) => None,
                (value, cas) => Some(SharedValue {
                    value: value.unwrap_or_default(),
                    cas: cas.unwrap_or(0),
                }),
            })
        }

        fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Error> {
            hostcalls::set_shared_data(key, Some(value), cas.filter(|cas| *cas != 0)).map_err(
                |status| match status {
                    Status::CasMismatch => Error::CasMismatch {
                        key: key.to_string(),
                    },
                    other => Error::host("proxy_set_shared_data", other),
                },
            )
        }
    }

    impl Callouts for ProxyWasmHost {
        fn dispatch_http(&mut self, callout: &HttpCallout) -> Result<u32, Error> {
            callout.validate()?;
            let headers: Vec<(&str, &str)> = callout
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            let trailers: Vec<(&str, &str)> = callout
                .trailers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            let body = (!callout.body.is_empty()).then_some(callout.body.as_slice());
            hostcalls::dispatch_http_call(
                &callout.cluster,
                headers,
                body,
                trailers,
                callout.timeout,
            )
            .map_err(|status| Error::host("proxy_http_call", status))
        }

        fn dispatch_grpc(&mut self, callout: &GrpcCallout) -> Result<u32, Error> {
            callout.validate()?;
            let metadata: Vec<(&str, &[u8])> = callout
                .initial_metadata
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_slice()))
                .collect();
            hostcalls::dispatch_grpc_call(
                &callout.cluster,
                &callout.service,
                &callout.method,
                metadata,
                Some(callout.message.as_slice()),
                callout.timeout,
            )
            .map_err(|status| Error::host("proxy_grpc_call", status))
        }
    }

    impl MetricSink for ProxyWasmHost {
        fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, Error> {
            let metric_type = match kind {
                MetricKind::Counter => MetricType::Counter,
                MetricKind::Gauge => MetricType::Gauge,
                MetricKind::Histogram => MetricType::Histogram,
            };
            hostcalls::define_metric(metric_type, name)
                .map_err(|status| Error::host("proxy_define_metric", status))
        }

        fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Error> {
            hostcalls::increment_metric(id, offset)
                .map_err(|status| Error::host("proxy_increment_metric", status))
        }

        fn record_metric(&self, id: u32, value: u64) -> Result<(), Error> {
            hostcalls::record_metric(id, value)
                .map_err(|status| Error::host("proxy_record_metric", status))
        }
    }

    impl ProxyWasmHost {
        /// Sends a local reply **with** its response code details.
        pub fn send_local_reply(&self, reply: &LocalReply) -> Result<(), Error> {
            let headers = serialize_pairs(&reply.headers_to_send());
            let status = raw::send_local_response(
                u32::from(reply.status_to_send()),
                &reply.sanitized_details(),
                &reply.body,
                &headers,
                reply.grpc_status_code(),
            );
            if status == Status::Ok as u32 {
                Ok(())
            } else {
                Err(Error::host(
                    "proxy_send_local_response",
                    Status::InternalFailure,
                ))
            }
        }

        /// Resumes a paused request (`proxy_continue_stream(HttpRequest)`).
        pub fn resume_request(&self) -> Result<(), Error> {
            hostcalls::resume_http_request()
                .map_err(|status| Error::host("proxy_continue_stream", status))
        }

        /// Resumes a paused response.
        pub fn resume_response(&self) -> Result<(), Error> {
            hostcalls::resume_http_response()
                .map_err(|status| Error::host("proxy_continue_stream", status))
        }

        /// Reads an HTTP callout answer. Maps are only read when non-empty: Envoy answers
        /// reads of a failed callout's (absent) maps with `BadArgument`, on which the Rust SDK
        /// panics.
        pub fn http_callout_response(
            &self,
            token: u32,
            num_headers: usize,
            body_size: usize,
            num_trailers: usize,
        ) -> CalloutResponse {
            let headers = if num_headers > 0 {
                read_map(MapType::HttpCallResponseHeaders).unwrap_or_default()
            } else {
                Vec::new()
            };
            let trailers = if num_trailers > 0 {
                read_map(MapType::HttpCallResponseTrailers).unwrap_or_default()
            } else {
                Vec::new()
            };
            CalloutResponse::Http(HttpCalloutResponse {
                token,
                headers,
                body: read_buffer(BufferType::HttpCallResponseBody, body_size),
                trailers,
            })
        }

        /// Reads a gRPC callout answer.
        pub fn grpc_callout_response(
            &self,
            token: u32,
            status: u32,
            size: usize,
        ) -> CalloutResponse {
            let message = if status == 0 {
                None
            } else {
                hostcalls::get_grpc_status()
                    .ok()
                    .and_then(|(_, message)| message)
            };
            CalloutResponse::Grpc(GrpcCalloutResponse {
                token,
                status,
                message,
                body: read_buffer(BufferType::GrpcReceiveBuffer, size),
            })
        }

        /// Reads the plugin configuration.
        pub fn plugin_configuration(&self) -> Result<Vec<u8>, Error> {
            hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
                .map(Option::unwrap_or_default)
                .map_err(|status| Error::host("proxy_get_buffer_bytes", status))
        }

        /// Sets the root context's tick period.
        pub fn set_tick_period(&self, period: std::time::Duration) -> Result<(), Error> {
            timeout_millis(period)?;
            hostcalls::set_tick_period(period)
                .map_err(|status| Error::host("proxy_set_tick_period_milliseconds", status))
        }

        /// What `on_configure` does for every wasmesh plugin: reads the plugin configuration,
        /// builds the plugin with `build` (which parses and validates it) and sets the tick
        /// period the plugin asks for. On failure it logs why at `error` (the message names the
        /// JSON path of a bad field) and gives `None`: `on_configure` then returns `false` and
        /// the proxy refuses to start the plugin.
        pub fn configure_plugin<T>(
            &mut self,
            name: &str,
            build: impl FnOnce(&[u8], &mut dyn crate::host::Host) -> Result<T, Error>,
            tick_period: impl FnOnce(&T) -> Option<std::time::Duration>,
        ) -> Option<T> {
            let built = self.plugin_configuration().and_then(|bytes| {
                let plugin = build(&bytes, self)?;
                if let Some(period) = tick_period(&plugin) {
                    self.set_tick_period(period)?;
                }
                Ok(plugin)
            });
            match built {
                Ok(plugin) => Some(plugin),
                Err(error) => {
                    self.log(
                        LogLevel::Error,
                        &crate::adapter::refusal_message(name, &error),
                    );
                    None
                }
            }
        }
    }

    #[allow(unsafe_code)]
    mod raw {
        //! proxy-wasm-rust-sdk 0.2.x always passes empty response code details to
        //! `proxy_send_local_response` and does not expose the raw import, so the SDK imports
        //! it itself. This is the only `unsafe` in wasmesh.

        #[link(wasm_import_module = "env")]
        extern "C" {
            fn proxy_send_local_response(
                status_code: u32,
                details_data: *const u8,
                details_size: usize,
                body_data: *const u8,
                body_size: usize,
                headers_data: *const u8,
                headers_size: usize,
                grpc_status: i32,
            ) -> u32;
        }

        pub(super) fn send_local_response(
            status_code: u32,
            details: &str,
            body: &[u8],
            headers: &[u8],
            grpc_status: i32,
        ) -> u32 {
            // SAFETY: each pointer/length pair describes a live slice borrowed for the whole
            // call; the host only reads them and copies what it needs before returning.
            unsafe {
                proxy_send_local_response(
                    status_code,
                    details.as_ptr(),
                    details.len(),
                    body.as_ptr(),
                    body.len(),
                    headers.as_ptr(),
                    headers.len(),
                    grpc_status,
                )
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    /// A backend that counts hostcalls and records writes.
    #[derive(Default)]
    pub(crate) struct CountingBackend {
        pub(crate) request: RefCell<Vec<Header>>,
        response: RefCell<Vec<Header>>,
        pub(crate) header_reads: Cell<u32>,
        value_reads: Cell<u32>,
        property_reads: Cell<u32>,
        writes: RefCell<Vec<String>>,
    }

    impl HeaderBackend for &CountingBackend {
        fn get_headers(&self, map: HeaderMapKind) -> Result<Vec<Header>, Error> {
            self.header_reads.set(self.header_reads.get() + 1);
            Ok(match map {
                HeaderMapKind::Request => self.request.borrow().clone(),
                HeaderMapKind::Response => self.response.borrow().clone(),
            })
        }
        fn get_header(&self, map: HeaderMapKind, name: &str) -> Result<Option<String>, Error> {
            self.value_reads.set(self.value_reads.get() + 1);
            let headers = match map {
                HeaderMapKind::Request => self.request.borrow(),
                HeaderMapKind::Response => self.response.borrow(),
            };
            Ok(first_value(&headers, name).map(str::to_string))
        }
        fn get_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Error> {
            self.property_reads.set(self.property_reads.get() + 1);
            Ok((path == ["source", "address"]).then(|| b"10.0.0.1:5000".to_vec()))
        }
        fn set_header(&self, map: HeaderMapKind, name: &str, value: &str) -> Result<(), Error> {
            self.writes
                .borrow_mut()
                .push(format!("set {map:?} {name}={value}"));
            Ok(())
        }
        fn add_header(&self, map: HeaderMapKind, name: &str, value: &str) -> Result<(), Error> {
            self.writes
                .borrow_mut()
                .push(format!("add {map:?} {name}={value}"));
            Ok(())
        }
        fn remove_header(&self, map: HeaderMapKind, name: &str) -> Result<(), Error> {
            self.writes
                .borrow_mut()
                .push(format!("remove {map:?} {name}"));
            Ok(())
        }
    }

    pub(crate) fn backend() -> CountingBackend {
        let backend = CountingBackend::default();
        *backend.request.borrow_mut() = vec![
            (":method".into(), "GET".into()),
            (":path".into(), "/x".into()),
            ("a".into(), "1".into()),
            ("a".into(), "2".into()),
        ];
        *backend.response.borrow_mut() = vec![(":status".into(), "200".into())];
        backend
    }

    #[test]
    fn headers_are_read_once_per_callback() {
        let backend = backend();
        let request = HostRequest::new(&backend, Phase::RequestHeaders, None);
        assert_eq!(request.method(), Some("GET"));
        assert_eq!(request.path(), Some("/x"));
        assert_eq!(request.header("a").as_deref(), Some("1,2"));
        assert_eq!(backend.header_reads.get(), 1);
        assert_eq!(
            request.source_address(),
            Some("10.0.0.1:5000".parse().unwrap())
        );
        assert_eq!(
            request.source_address(),
            Some("10.0.0.1:5000".parse().unwrap())
        );
        assert_eq!(request.property(&["missing"]), None);
        assert_eq!(request.property(&["missing"]), None);
        assert_eq!(
            backend.property_reads.get(),
            2,
            "hits and misses are both cached"
        );
        assert!(request.response_headers().is_empty());
        assert_eq!(
            backend.header_reads.get(),
            1,
            "response map not readable in request phase"
        );
    }

    #[test]
    fn a_first_value_is_read_alone_until_the_map_is_read() {
        let backend = backend();
        let request = HostRequest::new(&backend, Phase::RequestHeaders, None);
        assert_eq!(request.first_header("A").as_deref(), Some("1"));
        assert_eq!(request.first_header("missing"), None);
        assert_eq!(
            (backend.value_reads.get(), backend.header_reads.get()),
            (2, 0)
        );
        // Once the whole map is read, it serves first values too.
        assert_eq!(request.header("a").as_deref(), Some("1,2"));
        assert_eq!(request.first_header("a").as_deref(), Some("1"));
        assert_eq!(
            (backend.value_reads.get(), backend.header_reads.get()),
            (2, 1)
        );
        // Where the host no longer exposes the map, the snapshot answers.
        let snapshot = vec![("a".to_string(), "kept".to_string())];
        let request = HostRequest::new(&backend, Phase::ResponseHeaders, Some(snapshot));
        assert_eq!(request.first_header("a").as_deref(), Some("kept"));
        assert_eq!(
            (backend.value_reads.get(), backend.header_reads.get()),
            (2, 1)
        );
    }

    #[test]
    fn access_log_phase_reads_request_headers_only_when_asked() {
        let backend = backend();
        let snapshot = vec![(":path".to_string(), "/snap".to_string())];
        // The filter does not look: the host is not asked, the earlier snapshot is kept.
        let request = HostRequest::new(&backend, Phase::Log, Some(snapshot.clone()));
        assert_eq!(request.into_request_snapshot(), snapshot);
        assert_eq!(backend.header_reads.get(), 0);
        // The filter looks: it sees the live headers (the host's, not the snapshot).
        let request = HostRequest::new(&backend, Phase::Log, Some(snapshot));
        assert_eq!(request.path(), Some("/x"));
        assert_eq!(backend.header_reads.get(), 1);
        assert_eq!(request.into_request_snapshot(), *backend.request.borrow());
        assert_eq!(backend.header_reads.get(), 1);
        // The request phase always keeps a snapshot for later phases, read or not.
        let request = HostRequest::new(&backend, Phase::RequestHeaders, None);
        assert_eq!(request.into_request_snapshot(), *backend.request.borrow());
        assert_eq!(backend.header_reads.get(), 2);
    }

    #[test]
    fn properties_are_cached_by_whole_path() {
        let backend = backend();
        let request = HostRequest::new(&backend, Phase::RequestHeaders, None);
        assert_eq!(request.property(&["source"]), None);
        assert_eq!(
            request.property(&["source", "address"]).as_deref(),
            Some(&b"10.0.0.1:5000"[..])
        );
        assert_eq!(request.property(&["source", "address", "x"]), None);
        assert_eq!(
            request.property(&["source", "address"]).map(|v| v.len()),
            Some(13)
        );
        assert_eq!(backend.property_reads.get(), 3);
    }

    #[test]
    fn mutations_reach_the_host_and_the_cache() {
        let backend = backend();
        let mut request = HostRequest::new(&backend, Phase::RequestHeaders, None);
        assert_eq!(request.header("a").as_deref(), Some("1,2"));
        request.set_request_header("A", "3").unwrap();
        request.add_request_header("b", "x").unwrap();
        request.remove_request_header(":path").unwrap();
        assert_eq!(request.header("a").as_deref(), Some("3"));
        assert_eq!(request.header("b").as_deref(), Some("x"));
        assert_eq!(request.path(), None);
        assert_eq!(backend.header_reads.get(), 1);
        assert_eq!(
            *backend.writes.borrow(),
            vec!["set Request A=3", "add Request b=x", "remove Request :path"]
        );
        let snapshot = request.into_request_snapshot();
        assert!(snapshot.contains(&("b".to_string(), "x".to_string())));
    }

    #[test]
    fn phase_rules_are_enforced_before_calling_the_host() {
        let backend = backend();
        let snapshot = vec![(":path".to_string(), "/snap".to_string())];
        let mut request = HostRequest::new(&backend, Phase::ResponseHeaders, Some(snapshot));
        assert_eq!(request.path(), Some("/snap"));
        assert_eq!(request.response_header(":status").as_deref(), Some("200"));
        assert!(matches!(
            request.set_request_header("x", "1"),
            Err(Error::NotAllowed {
                operation: "set_request_header",
                ..
            })
        ));
        request.add_response_header("x-wasmesh", "hello").unwrap();
        assert_eq!(
            request.response_header("x-wasmesh").as_deref(),
            Some("hello")
        );
        assert_eq!(
            *backend.writes.borrow(),
            vec!["add Response x-wasmesh=hello"]
        );

        let mut request = HostRequest::new(&backend, Phase::RequestHeaders, None);
        assert!(request.add_response_header("x", "1").is_err());
        let mut log = HostRequest::new(&backend, Phase::Log, None);
        assert_eq!(log.path(), Some("/x"));
        assert_eq!(log.response_header(":status").as_deref(), Some("200"));
        assert!(log.remove_response_header("x").is_err());
        let detached = HostRequest::new(&backend, Phase::Detached, None);
        assert!(detached.request_headers().is_empty());
        assert!(detached.response_headers().is_empty());
        assert_eq!(detached.phase(), Phase::Detached);
        assert_eq!(backend.writes.borrow().len(), 1);
    }

    #[test]
    fn invalid_header_input_never_reaches_the_host() {
        let backend = backend();
        let mut request = HostRequest::new(&backend, Phase::RequestHeaders, None);
        assert!(request.set_request_header("a b", "1").is_err());
        assert!(request.add_request_header("x", "1\n2").is_err());
        assert!(backend.writes.borrow().is_empty());
    }

    #[test]
    fn pairs_serialize_in_proxy_wasm_format() {
        let bytes = serialize_pairs(&[("ab".into(), "c".into()), ("d".into(), String::new())]);
        let expected: Vec<u8> = [
            &2u32.to_le_bytes()[..],
            &2u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            b"ab\0c\0d\0\0",
        ]
        .concat();
        assert_eq!(bytes, expected);
        assert_eq!(serialize_pairs(&[]), 0u32.to_le_bytes());
    }
}
