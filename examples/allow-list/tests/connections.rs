#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The example's real wasm build in the harness, and in a real Envoy 1.40 running the shipped
//! bootstrap (`examples/envoy/allow-list.yaml`: TLS inspector, the filter, `tcp_proxy` to an
//! echo server) with the shipped configuration. Every client of the table must see the same
//! from both: which bytes reached the upstream, which came back, and the filter's counts. A
//! client asks for its server name in a real TLS `ClientHello` (made by rustls), which Envoy's
//! TLS inspector reads; the harness is given the same name as `connection.requested_server_name`.
//! Set `WASMESH_SKIP_ENVOY=1` to skip the Envoy half on a machine without Envoy.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wasmesh_envoy::{self as envoy, Envoy, ShippedBootstrap, ShippedExample};
use wasmesh_harness::{Harness, MetricValue, Plugin};

const PACKAGE: &str = "wasmesh-example-allow-list";

/// The shipped source range that holds the test's clients (all on 127.0.0.1).
const LOOPBACK_RANGE: &str = r#"{"address_prefix": "127.0.0.1", "prefix_len": 32}"#;
/// The same range moved off the clients' address.
const OTHER_RANGE: &str = r#"{"address_prefix": "127.0.0.2", "prefix_len": 32}"#;

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sample_config() -> String {
    std::fs::read_to_string(example_dir().join("config.json")).unwrap()
}

/// One client: the server name its `ClientHello` asks for, or plain bytes without TLS.
struct Client {
    name: &'static str,
    server_name: Option<&'static str>,
}

const CLIENTS: [Client; 4] = [
    Client {
        name: "allowed exact name",
        server_name: Some("api.example.com"),
    },
    Client {
        name: "allowed suffix",
        server_name: Some("db.internal.example.com"),
    },
    Client {
        name: "other name",
        server_name: Some("example.com"),
    },
    Client {
        name: "plain TCP, no server name",
        server_name: None,
    },
];

impl Client {
    /// The first bytes the client sends: the same in every run (a `ClientHello` holds random
    /// bytes, so each is made once).
    fn first_bytes(&self) -> Vec<u8> {
        static HELLOS: OnceLock<Mutex<HashMap<&'static str, Vec<u8>>>> = OnceLock::new();
        let Some(name) = self.server_name else {
            return b"hello over plain TCP\n".to_vec();
        };
        let mut hellos = HELLOS.get_or_init(Mutex::default).lock().unwrap();
        hellos
            .entry(name)
            .or_insert_with(|| client_hello(name))
            .clone()
    }
}

/// A TLS `ClientHello` asking for `server_name`, as a real TLS client sends it.
fn client_hello(server_name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    hello
}

/// What one client observed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    /// The bytes that reached the upstream (none: no upstream connection).
    upstream: Vec<u8>,
    /// The bytes the client got back.
    client: Vec<u8>,
}

/// What a run observed: per client, then the filter's counters (allowed, denied).
type Run = (Vec<Observed>, (u64, u64));

/// The clients through the harness, from `source`; the test plays the echo server.
fn harness_run(config: &str) -> Run {
    let wasm = wasmesh_harness::build::wasm(PACKAGE).unwrap();
    let plugin = Harness::load(wasm).unwrap().config(config).start().unwrap();
    let observed = CLIENTS
        .iter()
        .map(|client| {
            let mut connection = plugin.tcp_connection();
            connection.property(&["source", "address"], "127.0.0.1:40000");
            if let Some(name) = client.server_name {
                connection.property(&["connection", "requested_server_name"], name);
            }
            connection.open().unwrap();
            if connection.closed().is_none() {
                // The client sends; the echo server answers; then each ends its side.
                connection
                    .downstream_data(&client.first_bytes(), false)
                    .unwrap();
                let echo = connection.upstream_received();
                connection.upstream_data(&echo, false).unwrap();
                connection.downstream_data(&[], true).unwrap();
                connection.upstream_data(&[], true).unwrap();
            }
            assert!(connection.closed().is_some(), "{}: still open", client.name);
            Observed {
                upstream: connection.upstream_received(),
                client: connection.downstream_received(),
            }
        })
        .collect();
    (observed, counters(&plugin))
}

fn counters(plugin: &Plugin) -> (u64, u64) {
    let count = |name: &str| match plugin.metric(name) {
        Some(MetricValue::Counter(count)) => count,
        None => 0,
        other => panic!("{name}: {other:?}"),
    };
    (count("allow_list.allowed"), count("allow_list.denied"))
}

/// A TCP echo server: records what each connection sent, echoes it, and ends its side when
/// the client ends its own.
struct EchoServer {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl EchoServer {
    fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::clone(&received);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let index = {
                    let mut connections = connections.lock().unwrap();
                    connections.push(Vec::new());
                    connections.len() - 1
                };
                let connections = Arc::clone(&connections);
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 16384];
                    while let Ok(read) = stream.read(&mut buffer) {
                        if read == 0 {
                            break;
                        }
                        connections.lock().unwrap()[index].extend_from_slice(&buffer[..read]);
                        if stream.write_all(&buffer[..read]).is_err() {
                            return;
                        }
                    }
                    let _ = stream.shutdown(Shutdown::Write);
                });
            }
        });
        EchoServer { addr, received }
    }
}

/// The clients through Envoy, one after the other: each sends its first bytes, reads the echo,
/// ends its side and reads until Envoy closes the connection.
fn envoy_run(envoy: &Envoy, echo: &EchoServer) -> Run {
    let observed = CLIENTS
        .iter()
        .map(|client| {
            let connections_before = echo.received.lock().unwrap().len();
            let mut stream = TcpStream::connect(envoy.listener_addr()).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            // As a TLS client does, the client waits for an answer before it ends its side (a
            // client that ends its side at once is dropped by the TLS inspector, which needs
            // the connection open to read the ClientHello).
            let sent = client.first_bytes();
            stream.write_all(&sent).unwrap();
            let mut got = Vec::new();
            let mut buffer = [0u8; 16384];
            while got.len() < sent.len() {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => got.extend_from_slice(&buffer[..read]),
                }
            }
            let _ = stream.shutdown(Shutdown::Write);
            // A connection Envoy closed may end in a reset rather than an end of stream.
            let _ = stream.read_to_end(&mut got);
            let upstream = echo
                .received
                .lock()
                .unwrap()
                .get(connections_before)
                .cloned()
                .unwrap_or_default();
            Observed {
                upstream,
                client: got,
            }
        })
        .collect();
    let count = |name: &str| envoy.wasm_metric(name).unwrap().unwrap_or(0);
    (
        observed,
        (count("allow_list.allowed"), count("allow_list.denied")),
    )
}

fn start_shipped_envoy(echo: &EchoServer, replace: Option<(&str, &str)>) -> Envoy {
    let mut shipped = ShippedBootstrap::read(&example_dir().join(".."), "allow-list")
        .unwrap()
        .shipped_wasm(
            &wasmesh_harness::build::wasm(PACKAGE).unwrap(),
            env!("CARGO_TARGET_TMPDIR").as_ref(),
        )
        .unwrap()
        .upstream(echo.addr);
    if let Some((from, to)) = replace {
        shipped = shipped.replace(from, to);
    }
    shipped.start().unwrap()
}

#[test]
fn the_harness_lets_through_exactly_the_allowed_clients() {
    let (observed, counters) = harness_run(&sample_config());
    for (client, observed) in CLIENTS.iter().zip(&observed) {
        let allowed = client.name.starts_with("allowed");
        if allowed {
            assert_eq!(observed.upstream, client.first_bytes(), "{}", client.name);
            assert_eq!(observed.client, client.first_bytes(), "{}", client.name);
        } else {
            assert_eq!(observed.upstream, b"", "{}", client.name);
            assert_eq!(observed.client, b"", "{}", client.name);
        }
    }
    assert_eq!(counters, (2, 2));
    let outside = sample_config().replace(LOOPBACK_RANGE, OTHER_RANGE);
    let (observed, counters) = harness_run(&outside);
    assert!(observed.iter().all(|o| o.upstream.is_empty()));
    assert_eq!(counters, (0, 4));
}

#[test]
fn envoy_and_the_harness_agree_on_every_client() {
    if envoy::skip_requested() {
        return;
    }
    let echo = EchoServer::start();
    for replace in [None, Some((LOOPBACK_RANGE, OTHER_RANGE))] {
        let envoy = start_shipped_envoy(&echo, replace);
        let config = match replace {
            Some((from, to)) => sample_config().replace(from, to),
            None => sample_config(),
        };
        let in_envoy = envoy_run(&envoy, &echo);
        let in_harness = harness_run(&config);
        for (index, client) in CLIENTS.iter().enumerate() {
            assert_eq!(
                in_envoy.0[index],
                in_harness.0[index],
                "{} (source range replaced: {replace:?}): Envoy, then the harness\n{}",
                client.name,
                envoy.log_tail(30)
            );
        }
        assert_eq!(in_envoy.1, in_harness.1, "counters (allowed, denied)");
    }
}

#[test]
fn shipped_envoy_and_istio_configs_embed_the_sample_configuration() {
    let shipped = ShippedExample::read(&example_dir().join(".."), "allow-list").unwrap();
    let sample = sample_config();
    assert_eq!(shipped.envoy_filter_config().unwrap().trim(), sample.trim());
    assert_eq!(shipped.istio_plugin_config().unwrap().trim(), sample.trim());
    assert_eq!(shipped.envoy_yaml.matches(LOOPBACK_RANGE).count(), 1);
}
