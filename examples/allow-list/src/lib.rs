//! A network (TCP) filter on the wasmesh SDK, read top to bottom: it lets a connection through
//! only when it comes from an allowed source range and asks for an allowed server name (SNI),
//! and closes every other connection before a byte reaches the upstream.
//!
//! Envoy runs it as `envoy.filters.network.wasm` ahead of `envoy.filters.network.tcp_proxy`.
//! The server name is the one the client's TLS `ClientHello` asks for; Envoy reads it with the
//! listener filter `envoy.filters.listener.tls_inspector`, before any network filter runs, so
//! the filter decides as soon as the connection is accepted.

use serde::Deserialize;
use wasmesh_sdk::matcher::{CidrRange, StringMatcher};
use wasmesh_sdk::prelude::*;

/// The plugin configuration. A connection is allowed when its source address is in one of
/// `source_ranges` (any source if empty) and its server name matches one of `server_names`
/// (any, or none, if empty). At least one of the two must be set.
///
/// ```json
/// {"source_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}],
///  "server_names": [{"exact": "api.example.com"}, {"suffix": ".internal.example.com"}]}
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Envoy's `CidrRange`s the downstream address (`source.address`) must fall in.
    #[serde(default)]
    pub source_ranges: Vec<CidrRange>,
    /// Envoy's `StringMatcher`s, one of which the SNI must match. A connection without a
    /// server name (plain TCP, or TLS without SNI) matches none.
    #[serde(default)]
    pub server_names: Vec<StringMatcher>,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.source_ranges.is_empty() && self.server_names.is_empty() {
            return Err(ConfigError::new(
                "source_ranges",
                "set source_ranges, server_names or both: an allow-list that allows everything is a mistake",
            ));
        }
        Ok(())
    }
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No source range holds the downstream address (or it is unknown).
    Source,
    /// No server-name matcher matches the SNI (or there is none).
    ServerName,
}

/// The filter, built once per root context from its configuration.
pub struct AllowList {
    config: Config,
    allowed: Counter,
    denied: Counter,
}

impl AllowList {
    /// The decision for a connection's properties: `None` lets it through.
    pub fn check(&self, connection: &dyn Properties) -> Option<Refusal> {
        if !self.config.source_ranges.is_empty() {
            let inside = connection.source_address().is_some_and(|source| {
                let ip = source.ip();
                self.config
                    .source_ranges
                    .iter()
                    .any(|range| range.contains(ip))
            });
            if !inside {
                return Some(Refusal::Source);
            }
        }
        if !self.config.server_names.is_empty() {
            let name = connection.requested_server_name().unwrap_or_default();
            if name.is_empty() || !self.config.server_names.iter().any(|m| m.matches(&name)) {
                return Some(Refusal::ServerName);
            }
        }
        None
    }
}

impl NetworkFilter for AllowList {
    const NAME: &'static str = "allow_list";
    type Config = Config;
    type Connection = ();

    fn new(config: Config, host: &mut dyn Host) -> Result<Self, Error> {
        let allowed = Counter::define(host, "allow_list.allowed")?;
        let denied = Counter::define(host, "allow_list.denied")?;
        Ok(AllowList {
            config,
            allowed,
            denied,
        })
    }

    fn on_new_connection(
        &self,
        _: &mut (),
        connection: &dyn Properties,
        host: &mut dyn Host,
    ) -> Verdict {
        let Some(refusal) = self.check(connection) else {
            self.allowed.increment(host);
            return Verdict::Continue;
        };
        self.denied.increment(host);
        let source = connection.property_string(wasmesh_sdk::properties::property::SOURCE_ADDRESS);
        let name = connection.requested_server_name();
        host.log(
            LogLevel::Debug,
            &format!(
                "allow_list: closed the connection from {} for server name {:?}: {}",
                source.as_deref().unwrap_or("an unknown address"),
                name.as_deref().unwrap_or(""),
                match refusal {
                    Refusal::Source => "source not allowed",
                    Refusal::ServerName => "server name not allowed",
                },
            ),
        );
        Verdict::Close
    }
}

wasmesh_sdk::export_network_filter!(AllowList);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_sdk::config::load;
    use wasmesh_sdk::properties::MemoryProperties;
    use wasmesh_sdk::testing::MemoryHost;

    fn filter(config: &str) -> AllowList {
        let mut host = MemoryHost::new();
        AllowList::new(load(config.as_bytes()).unwrap(), &mut host).unwrap()
    }

    fn from(address: &str) -> MemoryProperties {
        MemoryProperties::new().with_source_address(address.parse().unwrap())
    }

    #[test]
    fn source_ranges_and_server_names_must_both_allow() {
        let filter = filter(
            r#"{"source_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}],
                "server_names": [{"exact": "api.example.com"}, {"suffix": ".internal.example.com"}]}"#,
        );
        let inside = || from("10.1.2.3:5000");
        assert_eq!(
            filter.check(&inside().with_server_name("api.example.com")),
            None
        );
        assert_eq!(
            filter.check(&inside().with_server_name("db.internal.example.com")),
            None
        );
        assert_eq!(
            filter.check(&inside().with_server_name("example.com")),
            Some(Refusal::ServerName)
        );
        assert_eq!(filter.check(&inside()), Some(Refusal::ServerName), "no SNI");
        assert_eq!(
            filter.check(&from("192.0.2.1:5000").with_server_name("api.example.com")),
            Some(Refusal::Source)
        );
        assert_eq!(
            filter.check(&MemoryProperties::new().with_server_name("api.example.com")),
            Some(Refusal::Source),
            "an unknown source is outside every range"
        );
    }

    #[test]
    fn an_empty_list_allows_anything_on_its_side() {
        let by_source =
            filter(r#"{"source_ranges": [{"address_prefix": "::1", "prefix_len": 128}]}"#);
        assert_eq!(by_source.check(&from("[::1]:5000")), None);
        assert_eq!(
            by_source.check(&from("127.0.0.1:5000")),
            Some(Refusal::Source)
        );
        let by_name = filter(r#"{"server_names": [{"prefix": "api."}]}"#);
        assert_eq!(
            by_name.check(&MemoryProperties::new().with_server_name("api.x")),
            None
        );
    }

    #[test]
    fn a_denied_connection_is_closed_counted_and_logged() {
        let mut host = MemoryHost::new();
        let config = load(br#"{"server_names": [{"exact": "a"}]}"#).unwrap();
        let filter = AllowList::new(config, &mut host).unwrap();
        let denied = from("10.0.0.1:1").with_server_name("b");
        assert_eq!(
            filter.on_new_connection(&mut (), &denied, &mut host),
            Verdict::Close
        );
        let allowed = from("10.0.0.1:1").with_server_name("a");
        assert_eq!(
            filter.on_new_connection(&mut (), &allowed, &mut host),
            Verdict::Continue
        );
        assert_eq!(host.metric("allow_list.denied"), Some(1));
        assert_eq!(host.metric("allow_list.allowed"), Some(1));
        let logs = host.logs();
        assert!(
            logs.iter().any(|(_, line)| line
                == "allow_list: closed the connection from 10.0.0.1:1 for server name \"b\": server name not allowed"),
            "{logs:?}"
        );
    }

    #[test]
    fn bad_configurations_are_refused_with_their_json_path() {
        let empty = load::<Config>(b"{}").unwrap_err().to_string();
        assert!(empty.contains("source_ranges"), "{empty}");
        let bad_range = load::<Config>(
            br#"{"source_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 33}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(bad_range.contains("source_ranges[0]"), "{bad_range}");
        let bad_matcher = load::<Config>(br#"{"server_names": [{"prefix": ""}]}"#)
            .unwrap_err()
            .to_string();
        assert!(bad_matcher.contains("server_names[0]"), "{bad_matcher}");
        let unknown = load::<Config>(br#"{"server_name": []}"#)
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("server_name"), "{unknown}");
    }
}
