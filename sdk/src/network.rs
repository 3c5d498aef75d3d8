//! Network (TCP) filters: logic over a connection, as [`crate::adapter`] runs logic over a
//! request.
//!
//! A network filter implements [`NetworkFilter`] (pure logic over [`Properties`] and the bytes
//! the proxy holds) and exports itself with one line:
//!
//! ```ignore
//! wasmesh_sdk::export_network_filter!(MyFilter);
//! ```
//!
//! Envoy runs it as `envoy.filters.network.wasm`, ahead of the filter that forwards the
//! connection (`envoy.filters.network.tcp_proxy`). The adapter then:
//! * on `proxy_on_configure` builds the filter from its JSON configuration exactly as for an
//!   HTTP filter: a bad configuration is logged with its JSON path and the plugin refuses to
//!   start;
//! * per connection, keeps the filter's state ([`NetworkFilter::Connection`]) and calls the
//!   logic with a view of the connection's properties (source address, SNI, peer certificate)
//!   read through the host once per path per callback;
//! * applies each [`Verdict`]: [`Verdict::Continue`] lets the bytes through,
//!   [`Verdict::Hold`] keeps them for the next callback (Envoy `StopIteration`: the next call
//!   sees the held bytes and the new ones as one buffer), [`Verdict::Close`] closes the
//!   connection (`proxy_close_stream`): held bytes never reach the other side, and the filter
//!   is not called with data again;
//! * closes the connections of a filter that was never configured (fail closed).
//!
//! [`ConnectionDriver`] holds these rules, host-independent and unit-tested natively; the
//! proxy-wasm context shells are compiled only for `wasm32`.

use std::rc::Rc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::body::Body;
use crate::config::{load, Validate};
use crate::error::Error;
use crate::host::{Host, LogLevel};
use crate::properties::Properties;

/// What happens to a connection after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let the bytes (or the new connection) through.
    Continue,
    /// Keep the bytes for the next callback of the same direction, which then sees them with
    /// the new ones (e.g. to read a protocol header split across reads). Nothing goes through
    /// until a later callback continues: a filter that holds must expect more bytes.
    Hold,
    /// Close the connection: nothing held goes through, no callback gets data again.
    Close,
}

/// Which side ended a connection's half (Envoy's `PeerType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The proxy does not say.
    Unknown,
    /// The proxy closed it.
    Local,
    /// The other end closed it.
    Remote,
}

/// A network filter's logic, as the adapter drives it.
pub trait NetworkFilter: Sized + 'static {
    /// Name used in logs (e.g. `"allow_list"`).
    const NAME: &'static str;

    /// The JSON plugin configuration.
    type Config: DeserializeOwned + Validate;

    /// Per-connection state (`()` for stateless filters), created with `Default` for every
    /// connection.
    type Connection: Default;

    /// Builds the filter from its validated configuration, once per root context. Define
    /// metrics here.
    fn new(config: Self::Config, host: &mut dyn Host) -> Result<Self, Error>;

    /// A connection was accepted. Envoy has run its listener filters: with a TLS inspector
    /// the requested server name (SNI) is known. No byte has been read yet; [`Verdict::Hold`]
    /// here is [`Verdict::Continue`] (the adapter waits for data instead).
    fn on_new_connection(
        &self,
        _state: &mut Self::Connection,
        _connection: &dyn Properties,
        _host: &mut dyn Host,
    ) -> Verdict {
        Verdict::Continue
    }

    /// Bytes from the client; `data` holds every byte held so far. Default: let them through.
    fn on_downstream_data(
        &self,
        _state: &mut Self::Connection,
        _connection: &dyn Properties,
        _host: &mut dyn Host,
        _data: &Body<'_>,
    ) -> Verdict {
        Verdict::Continue
    }

    /// Bytes from the upstream; `data` holds every byte held so far. Default: let them
    /// through.
    fn on_upstream_data(
        &self,
        _state: &mut Self::Connection,
        _connection: &dyn Properties,
        _host: &mut dyn Host,
        _data: &Body<'_>,
    ) -> Verdict {
        Verdict::Continue
    }

    /// The client's side of the connection closed.
    fn on_downstream_close(
        &self,
        _state: &mut Self::Connection,
        _host: &mut dyn Host,
        _peer: Peer,
    ) {
    }

    /// The upstream's side of the connection closed.
    fn on_upstream_close(&self, _state: &mut Self::Connection, _host: &mut dyn Host, _peer: Peer) {}

    /// The connection is over (access-log time).
    fn on_log(
        &self,
        _state: &mut Self::Connection,
        _connection: &dyn Properties,
        _host: &mut dyn Host,
    ) {
    }

    /// If `Some`, the root context calls [`NetworkFilter::on_tick`] with this period.
    fn tick_period(&self) -> Option<Duration> {
        None
    }

    /// Periodic root-context work.
    fn on_tick(&self, _host: &mut dyn Host) {}
}

/// Parses and validates `bytes`, then builds the filter. What `on_configure` runs.
pub fn configure<F: NetworkFilter>(bytes: &[u8], host: &mut dyn Host) -> Result<F, Error> {
    let config = load::<F::Config>(bytes)?;
    F::new(config, host)
}

/// Which way bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the upstream.
    Downstream,
    /// From the upstream to the client.
    Upstream,
}

/// Per-connection state machine, independent of the host.
pub struct ConnectionDriver<F: NetworkFilter> {
    filter: Option<Rc<F>>,
    state: F::Connection,
    closed: bool,
}

impl<F: NetworkFilter> ConnectionDriver<F> {
    /// A driver for one connection; `None` when the root context has no configured filter.
    pub fn new(filter: Option<Rc<F>>) -> Self {
        ConnectionDriver {
            filter,
            state: F::Connection::default(),
            closed: false,
        }
    }

    /// The filter's per-connection state.
    pub fn state(&self) -> &F::Connection {
        &self.state
    }

    /// Whether this driver closed the connection.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// The connection was accepted.
    pub fn on_new_connection(
        &mut self,
        connection: &dyn Properties,
        host: &mut dyn Host,
    ) -> Verdict {
        let Some(filter) = self.filter.clone() else {
            host.log(
                LogLevel::Error,
                &format!("{}: not configured; closing the connection", F::NAME),
            );
            return self.settle(Verdict::Close);
        };
        match filter.on_new_connection(&mut self.state, connection, host) {
            Verdict::Hold => Verdict::Continue,
            verdict => self.settle(verdict),
        }
    }

    /// Bytes arrived from `direction`'s side.
    pub fn on_data(
        &mut self,
        direction: Direction,
        connection: &dyn Properties,
        host: &mut dyn Host,
        data: &Body<'_>,
    ) -> Verdict {
        let Some(filter) = self.filter.clone() else {
            return self.settle(Verdict::Close);
        };
        if self.closed {
            // The connection is going away: nothing more goes through.
            return Verdict::Hold;
        }
        let verdict = match direction {
            Direction::Downstream => {
                filter.on_downstream_data(&mut self.state, connection, host, data)
            }
            Direction::Upstream => filter.on_upstream_data(&mut self.state, connection, host, data),
        };
        self.settle(verdict)
    }

    /// `direction`'s side of the connection closed.
    pub fn on_close(&mut self, direction: Direction, host: &mut dyn Host, peer: Peer) {
        if let Some(filter) = self.filter.clone() {
            match direction {
                Direction::Downstream => filter.on_downstream_close(&mut self.state, host, peer),
                Direction::Upstream => filter.on_upstream_close(&mut self.state, host, peer),
            }
        }
    }

    /// The connection is over.
    pub fn on_log(&mut self, connection: &dyn Properties, host: &mut dyn Host) {
        if let Some(filter) = self.filter.clone() {
            filter.on_log(&mut self.state, connection, host);
        }
    }

    fn settle(&mut self, verdict: Verdict) -> Verdict {
        if verdict == Verdict::Close {
            self.closed = true;
        }
        verdict
    }
}

/// Exports `$filter` (a [`NetworkFilter`]) as the module's proxy-wasm entry point. Expands to
/// nothing on non-wasm targets so the crate still builds and tests natively.
#[macro_export]
macro_rules! export_network_filter {
    ($filter:ty) => {
        #[cfg(target_arch = "wasm32")]
        $crate::proxy_wasm::main! {{
            $crate::network::install::<$filter>();
        }}
    };
}

#[cfg(target_arch = "wasm32")]
pub use glue::install;

#[cfg(target_arch = "wasm32")]
mod glue {
    //! proxy-wasm `RootContext`/`StreamContext` shells around [`ConnectionDriver`] (wasm only).

    use std::rc::Rc;

    use proxy_wasm::traits::{Context, RootContext, StreamContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel, PeerType};

    use super::{configure, ConnectionDriver, Direction, NetworkFilter, Peer, Verdict};
    use crate::body::{Body, HostBuffer};
    use crate::host::{HeaderBackend, Log, ProxyWasmHost};
    use crate::properties::{Properties, PropertyCache};

    /// Registers `F` as the module's root context factory. Call from `proxy_wasm::main!`
    /// (or use [`crate::export_network_filter!`]).
    pub fn install<F: NetworkFilter>() {
        proxy_wasm::set_log_level(LogLevel::Trace);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
            Box::new(Root::<F> {
                filter: None,
                host: ProxyWasmHost,
            })
        });
    }

    struct Root<F: NetworkFilter> {
        filter: Option<Rc<F>>,
        host: ProxyWasmHost,
    }

    impl<F: NetworkFilter> Context for Root<F> {}

    impl<F: NetworkFilter> RootContext for Root<F> {
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
            }
        }

        fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
            Some(Box::new(Connection::<F> {
                driver: ConnectionDriver::new(self.filter.clone()),
                host: ProxyWasmHost,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::StreamContext)
        }
    }

    /// The connection's properties, read through the host once per path per callback.
    #[derive(Default)]
    struct HostConnection {
        cache: PropertyCache,
    }

    impl Properties for HostConnection {
        fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
            self.cache.get(path, |path| {
                ProxyWasmHost.get_property(path).unwrap_or(None)
            })
        }
    }

    struct Connection<F: NetworkFilter> {
        driver: ConnectionDriver<F>,
        host: ProxyWasmHost,
    }

    impl<F: NetworkFilter> Connection<F> {
        /// Turns a verdict into the callback's action, closing the connection if asked.
        fn enact(&self, verdict: Verdict) -> Action {
            match verdict {
                Verdict::Continue => Action::Continue,
                Verdict::Hold => Action::Pause,
                Verdict::Close => {
                    // Envoy closes the downstream connection (flushing what it already wrote),
                    // which tears down the upstream one.
                    if let Err(error) = proxy_wasm::hostcalls::close_downstream() {
                        self.host.log(
                            LogLevel::Error,
                            &format!("{}: closing the connection failed: {error:?}", F::NAME),
                        );
                    }
                    Action::Pause
                }
            }
        }

        fn data(&mut self, direction: Direction, size: usize, end_of_stream: bool) -> Action {
            let source = match direction {
                Direction::Downstream => HostBuffer::DOWNSTREAM_DATA,
                Direction::Upstream => HostBuffer::UPSTREAM_DATA,
            };
            let data = Body::new(size, end_of_stream, &source);
            let connection = HostConnection::default();
            let verdict = self
                .driver
                .on_data(direction, &connection, &mut self.host, &data);
            self.enact(verdict)
        }
    }

    fn peer(peer_type: PeerType) -> Peer {
        match peer_type {
            PeerType::Local => Peer::Local,
            PeerType::Remote => Peer::Remote,
            _ => Peer::Unknown,
        }
    }

    impl<F: NetworkFilter> Context for Connection<F> {}

    impl<F: NetworkFilter> StreamContext for Connection<F> {
        fn on_new_connection(&mut self) -> Action {
            let connection = HostConnection::default();
            let verdict = self.driver.on_new_connection(&connection, &mut self.host);
            self.enact(verdict)
        }

        fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
            self.data(Direction::Downstream, data_size, end_of_stream)
        }

        fn on_upstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
            self.data(Direction::Upstream, data_size, end_of_stream)
        }

        fn on_downstream_close(&mut self, peer_type: PeerType) {
            self.driver
                .on_close(Direction::Downstream, &mut self.host, peer(peer_type));
        }

        fn on_upstream_close(&mut self, peer_type: PeerType) {
            self.driver
                .on_close(Direction::Upstream, &mut self.host, peer(peer_type));
        }

        fn on_log(&mut self) {
            let connection = HostConnection::default();
            self.driver.on_log(&connection, &mut self.host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::MemoryBody;
    use crate::config::ConfigError;
    use crate::properties::MemoryProperties;
    use crate::testing::MemoryHost;

    /// Closes connections from outside 10.0.0.0/8; holds client bytes until a newline; closes
    /// on `QUIT`; counts upstream closes.
    struct LineGate;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NoConfig {}

    impl Validate for NoConfig {
        fn validate(&self) -> Result<(), ConfigError> {
            Ok(())
        }
    }

    #[derive(Default)]
    struct Seen {
        upstream_closes: u32,
    }

    impl NetworkFilter for LineGate {
        const NAME: &'static str = "line_gate";
        type Config = NoConfig;
        type Connection = Seen;

        fn new(_: NoConfig, _: &mut dyn Host) -> Result<Self, Error> {
            Ok(LineGate)
        }

        fn on_new_connection(
            &self,
            _: &mut Seen,
            connection: &dyn Properties,
            _: &mut dyn Host,
        ) -> Verdict {
            match connection.source_address() {
                Some(address) if address.ip().to_string().starts_with("10.") => Verdict::Hold,
                _ => Verdict::Close,
            }
        }

        fn on_downstream_data(
            &self,
            _: &mut Seen,
            _: &dyn Properties,
            _: &mut dyn Host,
            data: &Body<'_>,
        ) -> Verdict {
            let bytes = data.read_all().unwrap_or_default();
            if bytes.starts_with(b"QUIT") {
                Verdict::Close
            } else if bytes.ends_with(b"\n") {
                Verdict::Continue
            } else {
                Verdict::Hold
            }
        }

        fn on_upstream_close(&self, state: &mut Seen, _: &mut dyn Host, _: Peer) {
            state.upstream_closes += 1;
        }
    }

    fn inside() -> MemoryProperties {
        MemoryProperties::new().with_source_address("10.1.2.3:4000".parse().unwrap())
    }

    fn driver() -> ConnectionDriver<LineGate> {
        ConnectionDriver::new(Some(Rc::new(LineGate)))
    }

    #[test]
    fn verdicts_pass_through_and_a_hold_at_accept_is_a_continue() {
        let mut host = MemoryHost::new();
        let mut connection = driver();
        assert_eq!(
            connection.on_new_connection(&inside(), &mut host),
            Verdict::Continue
        );
        let partial = MemoryBody(b"GET".to_vec());
        let verdict = connection.on_data(
            Direction::Downstream,
            &inside(),
            &mut host,
            &partial.view(false),
        );
        assert_eq!(verdict, Verdict::Hold);
        let line = MemoryBody(b"GET /\n".to_vec());
        let verdict = connection.on_data(
            Direction::Downstream,
            &inside(),
            &mut host,
            &line.view(false),
        );
        assert_eq!(verdict, Verdict::Continue);
        let answer = MemoryBody(b"OK".to_vec());
        let verdict = connection.on_data(
            Direction::Upstream,
            &inside(),
            &mut host,
            &answer.view(false),
        );
        assert_eq!(verdict, Verdict::Continue, "upstream data uses the default");
        connection.on_close(Direction::Upstream, &mut host, Peer::Remote);
        assert_eq!(connection.state().upstream_closes, 1);
        assert!(!connection.closed());
    }

    #[test]
    fn after_a_close_no_byte_goes_through_and_the_filter_is_not_asked() {
        let mut host = MemoryHost::new();
        let outside =
            MemoryProperties::new().with_source_address("192.0.2.1:4000".parse().unwrap());
        let mut connection = driver();
        assert_eq!(
            connection.on_new_connection(&outside, &mut host),
            Verdict::Close
        );
        assert!(connection.closed());
        // A line would continue if the filter were asked.
        let line = MemoryBody(b"GET /\n".to_vec());
        let verdict = connection.on_data(
            Direction::Downstream,
            &outside,
            &mut host,
            &line.view(false),
        );
        assert_eq!(verdict, Verdict::Hold);

        let mut quitting = driver();
        quitting.on_new_connection(&inside(), &mut host);
        let quit = MemoryBody(b"QUIT\n".to_vec());
        let verdict = quitting.on_data(
            Direction::Downstream,
            &inside(),
            &mut host,
            &quit.view(false),
        );
        assert_eq!(verdict, Verdict::Close);
        let verdict =
            quitting.on_data(Direction::Upstream, &inside(), &mut host, &line.view(false));
        assert_eq!(verdict, Verdict::Hold);
    }

    #[test]
    fn an_unconfigured_filter_closes_every_connection_and_says_why() {
        let mut host = MemoryHost::new();
        let mut connection = ConnectionDriver::<LineGate>::new(None);
        assert_eq!(
            connection.on_new_connection(&inside(), &mut host),
            Verdict::Close
        );
        assert!(host
            .logs()
            .iter()
            .any(|(level, line)| *level == LogLevel::Error
                && line.contains("line_gate: not configured")));
        let line = MemoryBody(b"x\n".to_vec());
        let verdict = connection.on_data(
            Direction::Downstream,
            &inside(),
            &mut host,
            &line.view(false),
        );
        assert_eq!(verdict, Verdict::Close);
    }

    #[test]
    fn a_bad_configuration_names_its_json_path() {
        let mut host = MemoryHost::new();
        let error = configure::<LineGate>(br#"{"extra": 1}"#, &mut host)
            .err()
            .unwrap();
        assert!(error.to_string().contains("extra"), "{error}");
    }
}
