//! The Envoy judge: a scenario run in a real Envoy 1.40, the module loaded by its wasm filter,
//! the upstream and every cluster answered by local servers, the clock the machine's.
//!
//! It mirrors [`crate::harness_judge::HarnessJudge`] step by step and reports in the same shape
//! ([`StepObservation`]), so the two can be compared field by field. What Envoy cannot do (jump
//! its clock) is reported as not run; what it cannot show (shared data, whether a VM failed) is
//! `None`. Known differences with the harness, by construction:
//! - a call no answer matches gets a `503` (gRPC: status 14) from the cluster's server saying so,
//!   as the harness judge answers it (a live server cannot refuse one call and accept the next);
//!   a cluster with no answer, or whose answers are all `fail: refused`, points at a port where
//!   nothing listens, as in the harness;
//! - a call to a refused cluster never reaches a server, so it is not in `callouts` (the harness
//!   records every call the module dispatched);
//! - a failed gRPC answer (`grpc_status` not 0) with `delay_ms` holds that cluster's server
//!   (one thread) for the delay;
//! - a module's local reply with empty details carries no details header (Envoy's local-reply
//!   mapper adds none for empty details): it is told from an upstream answer by the upstream not
//!   having seen the request, or by the absence of the router's `x-envoy-upstream-service-time`
//!   (a local reply sent in the response phase replaces the upstream's headers); a module that
//!   removes that header from an upstream answer makes it read as a local reply;
//! - Envoy's clock is real: `delay_ms` and callout timeouts take real time, and a module's
//!   ticks fire on their own (a call made from a tick lands in whichever step is running);
//! - Envoy picks the worker itself (`worker` is ignored) and has no scenario properties,
//!   `start_time` or `seed`.
//!
//! A scenario of connections runs the module as `envoy.filters.network.wasm` before
//! `envoy.filters.network.tcp_proxy`, whose cluster is a local TCP server playing each step's
//! upstream (echo, or scripted replies per read). The listener reads a PROXY header every client
//! sends (the step's `source_address`, else the harness's default client and listener
//! addresses) and, when a step names an `sni`, the TLS `ClientHello` the client opens with
//! (`tls_inspector`). After each client action the judge waits until nothing moves (bytes either
//! way, Envoy's log); who closed the connection is read from Envoy's `connection` and
//! `conn_handler` debug lines. A connection the filter stops when it is accepted stays open (Envoy
//! 1.40 hands it nothing more).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wasmesh_envoy::{
    client, refused_address, BootstrapFormat, ClientResponse, Cluster, Envoy, EnvoyBuilder,
    EnvoyError, GrpcAnswer, GrpcRequest, GrpcTestServer, HttpRequest, HttpResponse, MockReply,
    MockServer, ReceivedRequest, Route, WasmFilter, RESPONSE_CODE_DETAILS_HEADER,
};

use crate::format::{
    Answer, ClosedBy, Connection, Expect, Failure, LogLevelName, Protocol, Request, Step,
    TcpUpstream, UpstreamAnswer,
};
use crate::harness_judge::{find_answer, SOURCE_PORT};
use crate::load::{body_bytes, source_ip, ScenarioFile};
use crate::observe::{header, Callout, ConnectionSeen, Response, StepObservation, UpstreamRequest};
use crate::tls::client_hello;
use crate::ScenarioError;

/// The cluster the route sends requests to: a name no scenario is likely to give one of its own
/// clusters, so that a module calling a cluster the scenario does not list fails at dispatch in
/// Envoy as it does in the harness.
const UPSTREAM_CLUSTER: &str = "wasmesh-scenario-upstream";

/// The route's upstream timeout: longer than any answer a scenario delays on purpose, shorter
/// than the client's socket timeout, so a request the upstream never answers gets Envoy's `504`
/// rather than a client error.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long metrics, logs and callouts may lag behind the response (Envoy flushes stats and
/// writes its log from other threads; a callout may arrive after the response when the module
/// does not wait for it). A guard while polling, never a timing assertion.
const SETTLE_LIMIT: Duration = Duration::from_secs(2);
const POLL_EVERY: Duration = Duration::from_millis(20);

/// The wasm filter's plugin name. Empty, as the harness judge leaves it: it is the
/// `plugin_name` property the module may read, and part of Envoy's log prefix.
const PLUGIN_NAME: &str = "";

/// The module as Envoy loads it: a binary `.wasm` file (a text module compiled to a temporary
/// one, removed on drop, since Envoy's V8 reads only the binary form).
struct WasmFile {
    path: PathBuf,
    temporary: bool,
}

impl WasmFile {
    fn prepare(module: &Path) -> Result<Self, ScenarioError> {
        let io = |path: &Path, source| ScenarioError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = std::fs::read(module).map_err(|source| io(module, source))?;
        if bytes.starts_with(b"\0asm") {
            return Ok(Self {
                path: module.to_path_buf(),
                temporary: false,
            });
        }
        let binary = wat::parse_bytes(&bytes).map_err(|error| ScenarioError::Io {
            path: module.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string()),
        })?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "wasmesh-scenario-{}-{}.wasm",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, binary.as_ref()).map_err(|source| io(&path, source))?;
        Ok(Self {
            path,
            temporary: true,
        })
    }
}

impl Drop for WasmFile {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Locks a mutex, going on with the data if a server thread panicked while holding it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The calls the clusters' servers received, in arrival order, shared with their handlers.
type CallLog = Arc<Mutex<Vec<Callout>>>;

/// A real Envoy running one scenario, with the servers behind its clusters.
pub struct EnvoyJudge {
    // Declared first so it is dropped (killed) first, before the servers it talks to.
    envoy: Envoy,
    upstream: MockServer,
    /// What the upstream answers the current step's request.
    staged: Arc<Mutex<MockReply>>,
    http_calls: CallLog,
    grpc_calls: CallLog,
    /// Kept alive for Envoy's clusters; stopped on drop.
    _http_servers: Vec<MockServer>,
    _grpc_servers: Vec<GrpcTestServer>,
    /// Clusters nothing listens behind: calls to them reach no server.
    refused_clusters: Vec<String>,
    /// What precedes a message of the module in Envoy's log.
    log_marker: String,
    /// The upstream of a scenario of connections (`tcp_proxy`'s cluster).
    tcp_upstream: Option<TcpUpstreamServer>,
    _wasm: WasmFile,
}

impl EnvoyJudge {
    /// Starts local servers and an Envoy running the scenario's module and configuration
    /// (`module`: the resolved module file, binary or text). A module Envoy refuses (it fails to
    /// load, or its start or configuration fails) is [`ScenarioError::Envoy`] with the end of
    /// Envoy's log.
    pub fn start(file: &ScenarioFile, module: &Path) -> Result<Self, ScenarioError> {
        let scenario = &file.scenario;
        let wasm = WasmFile::prepare(module)?;
        let staged = Arc::new(Mutex::new(MockReply::respond(upstream_response(
            &UpstreamAnswer::default(),
        ))));
        let upstream = {
            let staged = Arc::clone(&staged);
            MockServer::start(move |_| lock(&staged).clone())?
        };
        let mut filter = WasmFilter::new(&wasm.path)
            .name(PLUGIN_NAME)
            .configuration(String::from_utf8_lossy(&file.config_bytes()?).into_owned())
            .root_id(&scenario.root_id)
            .failure_policy(scenario.failure_policy.for_envoy());
        let vm_config = file.vm_config_bytes();
        if !vm_config.is_empty() {
            filter = filter.vm_configuration(String::from_utf8_lossy(&vm_config).into_owned());
        }
        let mut builder = EnvoyBuilder::new()
            .concurrency(u32::try_from(scenario.workers).unwrap_or(u32::MAX))
            // The module asks its log level (`proxy_get_log_level`) of the `wasm` logger.
            .component_log_levels(format!("wasm:{}", log_level(scenario.log_level)))
            .report_response_code_details(true)
            // Request trailers reach the filter over HTTP/1 only with this, as the harness
            // judge delivers them.
            .connection_manager_field("http_protocol_options", json!({"enable_trailers": true}))
            .wasm_filter(filter.clone())
            .route(Route::Cluster {
                name: UPSTREAM_CLUSTER.to_string(),
                timeout: ROUTE_TIMEOUT,
            });
        // A scenario of connections runs the module as a network filter before `tcp_proxy`,
        // whose cluster is a TCP server playing each step's upstream.
        let tcp_upstream = if network_scenario(scenario) {
            Some(TcpUpstreamServer::start()?)
        } else {
            None
        };
        let upstream_addr = tcp_upstream
            .as_ref()
            .map_or_else(|| upstream.addr(), |server| server.addr);
        builder = builder.cluster(Cluster::new(UPSTREAM_CLUSTER, upstream_addr));
        let http_calls: CallLog = Arc::default();
        let grpc_calls: CallLog = Arc::default();
        let mut http_servers = Vec::new();
        let mut grpc_servers = Vec::new();
        let mut refused_clusters = Vec::new();
        for (name, cluster) in &scenario.clusters {
            let refused = cluster.refuses_connections();
            let address = if refused {
                refused_clusters.push(name.clone());
                refused_address()?
            } else {
                match cluster.protocol {
                    Protocol::Http => {
                        let server = http_cluster_server(name, &scenario.clusters, &http_calls)?;
                        let address = server.addr();
                        http_servers.push(server);
                        address
                    }
                    Protocol::Grpc => {
                        let server = grpc_cluster_server(name, &scenario.clusters, &grpc_calls)?;
                        let address = server.addr();
                        grpc_servers.push(server);
                        address
                    }
                }
            };
            let envoy_cluster = Cluster::new(name, address);
            let trailers = cluster
                .answers
                .iter()
                .any(|answer| !answer.trailers.is_empty());
            builder = builder.cluster(match cluster.protocol {
                // Envoy's HTTP/1 codec drops response trailers unless told to keep them; the
                // harness delivers what the scenario's answers carry.
                Protocol::Http if trailers => envoy_cluster.http1_trailers(),
                Protocol::Http => envoy_cluster,
                Protocol::Grpc => envoy_cluster.http2(),
            });
        }
        let envoy = if tcp_upstream.is_some() {
            // Envoy's `connection` logger says how each connection closed.
            let builder = builder.component_log_levels(format!(
                "wasm:{},connection:debug,conn_handler:debug",
                log_level(scenario.log_level)
            ));
            let bootstrap = network_bootstrap(builder.bootstrap(), &filter, uses_sni(scenario));
            builder.start_with_bootstrap(&format!("{bootstrap:#}"), BootstrapFormat::Json)?
        } else {
            builder.start()?
        };
        Ok(Self {
            envoy,
            upstream,
            staged,
            http_calls,
            grpc_calls,
            _http_servers: http_servers,
            _grpc_servers: grpc_servers,
            refused_clusters,
            log_marker: log_marker(PLUGIN_NAME, &scenario.root_id),
            tcp_upstream,
            _wasm: wasm,
        })
    }

    /// The running Envoy (for reports: its log, its stats).
    pub fn envoy(&self) -> &Envoy {
        &self.envoy
    }

    /// Runs one step in Envoy and reports what happened.
    pub fn step(&mut self, index: usize, step: &Step) -> Result<StepObservation, ScenarioError> {
        if step.advance_ms.is_some() {
            return Ok(StepObservation {
                not_run: Some("a jump of the virtual clock: harness only".into()),
                ..StepObservation::default()
            });
        }
        let expect = step.expect.clone().unwrap_or_default();
        let http_before = lock(&self.http_calls).len();
        let grpc_before = lock(&self.grpc_calls).len();
        let log_before = self.envoy.log().len();
        let mut seen = StepObservation::default();
        if let Some(connection) = &step.connection {
            seen.connection = Some(self.connection(index, connection)?);
        }
        if let Some(request) = &step.request {
            let answer = step.upstream.clone().unwrap_or_default();
            *lock(&self.staged) = MockReply::respond(upstream_response(&answer));
            match step.concurrent {
                Some(count) => seen.statuses = self.concurrent(index, request, count)?,
                None => {
                    let (response, reached) = self.exchange(index, request)?;
                    seen.response = Some(response);
                    seen.upstream = reached;
                }
            }
        }
        seen.callouts = self.callouts_since(http_before, grpc_before, &expect);
        seen.metrics = self.metrics(&expect)?;
        seen.logs = Some(self.logs_since(log_before, &expect));
        Ok(seen)
    }

    /// One request to Envoy's listener; the response, and the request as the upstream got it.
    fn exchange(
        &self,
        index: usize,
        request: &Request,
    ) -> Result<(Response, Option<UpstreamRequest>), ScenarioError> {
        let before = self.upstream.requests().len();
        let response = client::send(self.envoy.listener_addr(), &client_request(request))
            .map_err(|error| self.step_error(index, error))?;
        let response = self.unless_gone(index, response)?;
        let received = self.upstream.requests().into_iter().nth(before);
        Ok((
            observed_response(response, received.is_some()),
            received.map(|seen| upstream_request(&seen)),
        ))
    }

    /// One TCP connection through the listener: the client's actions, each followed by a wait
    /// until nothing moves (the client reads nothing more, the upstream receives nothing more,
    /// Envoy logs nothing more); observed, then wound down as the harness judge does.
    fn connection(
        &self,
        index: usize,
        connection: &Connection,
    ) -> Result<ConnectionSeen, ScenarioError> {
        let Some(server) = &self.tcp_upstream else {
            return Err(ScenarioError::Invalid {
                file: String::new(),
                line: None,
                field: format!("steps[{index}].connection"),
                message: "a connection in a scenario of requests".to_string(),
            });
        };
        let upstream_before = server.connections();
        server.stage(connection.upstream.clone().unwrap_or_default());
        let log_before = self.envoy.log().len();
        let mut reading = ClientReading::default();
        let mut before = self.progress(&reading, server);
        let listener = self.envoy.listener_addr();
        let mut client = TcpStream::connect(listener).map_err(|error| {
            self.step_error(
                index,
                envoy_io(format!("connecting to the listener {listener}"), error),
            )
        })?;
        // Envoy's `proxy_protocol` listener filter takes the client's address from it.
        let _ = client
            .write_all(proxy_protocol_header(connection.source_address.as_deref()).as_bytes());
        let (ip, port) = connection
            .source_address
            .as_deref()
            .and_then(source_ip)
            .unwrap_or((IpAddr::from([127, 0, 0, 1]), None));
        let client_address = SocketAddr::new(ip, port.unwrap_or(SOURCE_PORT)).to_string();
        if let Some(sni) = &connection.sni {
            // Envoy's `tls_inspector` reads the name from it; the filter sees it as data.
            let _ = client.write_all(&client_hello(sni));
        }
        self.settle(&mut client, &mut reading, server, before);
        let mut ended = false;
        for action in &connection.client {
            before = self.progress(&reading, server);
            if action.end {
                let _ = client.shutdown(Shutdown::Write);
                ended = true;
            } else {
                let bytes = body_bytes(action.send.as_deref(), action.send_base64.as_deref())
                    .unwrap_or_default();
                // After Envoy closed the connection a write may fail: nothing more happens.
                if client.write_all(&bytes).is_err() {
                    break;
                }
            }
            self.settle(&mut client, &mut reading, server, before);
        }
        let log = self.envoy.log();
        let stretch = log.get(log_before..).unwrap_or_default();
        let seen = ConnectionSeen {
            upstream_connected: server.connections() > upstream_before,
            upstream_received: server.received(upstream_before),
            client_received: reading.received.clone(),
            client_got_end: reading.ended,
            closed: closed_by(stretch, &client_address, &main_thread(&log)),
        };
        let closed = matches!(seen.closed, Some(ClosedBy::Client | ClosedBy::Proxy));
        if !ended && !closed {
            let before = self.progress(&reading, server);
            let _ = client.shutdown(Shutdown::Write);
            self.settle(&mut client, &mut reading, server, before);
        }
        drop(client);
        self.settle_log();
        Ok(seen)
    }

    /// Waits until nothing moves for [`IDLE`]: the client reads nothing more (or read the
    /// connection's end), the upstream receives nothing more, Envoy's log stays the same.
    /// Bounded by [`SETTLE_CONNECTION_LIMIT`]; a wait, never a timing assertion.
    /// `before`: the [`Self::progress`] before the action waited for.
    fn settle(
        &self,
        client: &mut TcpStream,
        reading: &mut ClientReading,
        server: &TcpUpstreamServer,
        before: Progress,
    ) {
        let _ = client.set_read_timeout(Some(POLL_EVERY));
        let deadline = Instant::now() + SETTLE_CONNECTION_LIMIT;
        let start = Instant::now();
        let mut moved = false;
        let mut last = (usize::MAX, usize::MAX, usize::MAX);
        let mut still_since = start;
        let mut buffer = [0u8; 4096];
        while Instant::now() < deadline {
            if reading.ended {
                std::thread::sleep(POLL_EVERY);
            } else {
                match client.read(&mut buffer) {
                    Ok(0) => reading.ended = true,
                    Ok(count) => reading
                        .received
                        .extend_from_slice(buffer.get(..count).unwrap_or_default()),
                    Err(error)
                        if matches!(
                            error.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => reading.ended = true,
                }
            }
            let now = self.progress(reading, server);
            moved |= now != before;
            if now != last {
                last = now;
                still_since = Instant::now();
            } else if still_since.elapsed() >= IDLE
                && (moved || start.elapsed() >= FIRST_MOVE_LIMIT)
            {
                // Nothing at all may have moved only because Envoy is slow: that is waited
                // for longer than a pause between two moves.
                return;
            }
        }
    }

    /// How far a connection got: what the client read (and its end), what the upstream
    /// received, how long Envoy's log is.
    fn progress(&self, reading: &ClientReading, server: &TcpUpstreamServer) -> Progress {
        (
            reading.received.len() + usize::from(reading.ended),
            server.total(),
            self.envoy.log().len(),
        )
    }

    /// Waits until Envoy's log stays the same for [`IDLE`] (the filter's last callbacks after a
    /// close), bounded by [`SETTLE_CONNECTION_LIMIT`].
    fn settle_log(&self) {
        let deadline = Instant::now() + SETTLE_CONNECTION_LIMIT;
        let mut last = usize::MAX;
        let mut still_since = Instant::now();
        while Instant::now() < deadline {
            let now = self.envoy.log().len();
            if now != last {
                last = now;
                still_since = Instant::now();
            } else if still_since.elapsed() >= IDLE {
                return;
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// `count` copies of the request on parallel connections, released together; their
    /// statuses, sorted (0 for a reset stream).
    fn concurrent(
        &self,
        index: usize,
        request: &Request,
        count: usize,
    ) -> Result<Vec<u16>, ScenarioError> {
        let wire = client_request(request);
        let listener = self.envoy.listener_addr();
        let start = Barrier::new(count);
        let results: Vec<Result<ClientResponse, EnvoyError>> = std::thread::scope(|scope| {
            let senders: Vec<_> = (0..count)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        client::send(listener, &wire)
                    })
                })
                .collect();
            senders
                .into_iter()
                .map(|sender| {
                    sender.join().unwrap_or_else(|_| {
                        Err(EnvoyError::MalformedHttp(
                            "a concurrent sender thread panicked".to_string(),
                        ))
                    })
                })
                .collect()
        });
        let mut statuses = Vec::with_capacity(count);
        for result in results {
            let response = result.map_err(|error| self.step_error(index, error))?;
            let response = self.unless_gone(index, response)?;
            statuses.push(if response.complete {
                response.status.unwrap_or(0)
            } else {
                0
            });
        }
        statuses.sort_unstable();
        Ok(statuses)
    }

    /// The calls the clusters received during the step, HTTP then gRPC as the harness judge
    /// lists them. When the step expects more than arrived, waits a little for late ones.
    fn callouts_since(
        &self,
        http_before: usize,
        grpc_before: usize,
        expect: &Expect,
    ) -> Vec<Callout> {
        let collect = || -> Vec<Callout> {
            let http = lock(&self.http_calls)
                .iter()
                .skip(http_before)
                .cloned()
                .collect::<Vec<_>>();
            let grpc = lock(&self.grpc_calls)
                .iter()
                .skip(grpc_before)
                .cloned()
                .collect::<Vec<_>>();
            http.into_iter().chain(grpc).collect()
        };
        // Calls to a refused cluster never arrive: not worth waiting for.
        let wanted = expect.callouts.as_ref().map_or(0, |callouts| {
            callouts
                .iter()
                .filter(|callout| !self.refused_clusters.contains(&callout.cluster))
                .count()
        });
        poll_until(collect, |calls| calls.len() >= wanted)
    }

    /// The value of each metric the step expects, polled until it shows the expected value or
    /// the time is up. Metrics Envoy does not have are left out.
    fn metrics(&self, expect: &Expect) -> Result<BTreeMap<String, u64>, ScenarioError> {
        if expect.metrics.is_empty() {
            return Ok(BTreeMap::new());
        }
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            let stats = self.envoy.stats()?;
            let values: BTreeMap<String, u64> = expect
                .metrics
                .keys()
                .filter_map(|name| {
                    let value = stats.get(&wasmesh_harness::envoy_stat_name(name))?;
                    Some((name.clone(), *value))
                })
                .collect();
            let settled = expect
                .metrics
                .iter()
                .all(|(name, wanted)| values.get(name) == Some(wanted));
            if settled || Instant::now() >= deadline {
                return Ok(values);
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// The module's log lines Envoy wrote since `before` (a length of its log), waiting a
    /// little until every expected pattern matches one.
    fn logs_since(&self, before: usize, expect: &Expect) -> Vec<String> {
        let patterns: Vec<regex_lite::Regex> = expect
            .logs
            .iter()
            .filter_map(|pattern| regex_lite::Regex::new(pattern).ok())
            .collect();
        let collect = || {
            let log = self.envoy.log();
            module_lines(log.get(before..).unwrap_or_default(), &self.log_marker)
        };
        poll_until(collect, |lines| {
            patterns
                .iter()
                .all(|pattern| lines.iter().any(|line| pattern.is_match(line)))
        })
    }
}

/// Reads `collect` until `done` holds of it or [`SETTLE_LIMIT`] passes; the last reading.
fn poll_until<T>(collect: impl Fn() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let value = collect();
        if done(&value) || Instant::now() >= deadline {
            return value;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// An I/O error of the Envoy judge's own sockets, with what it was doing.
fn envoy_io(context: impl Into<String>, source: std::io::Error) -> EnvoyError {
    EnvoyError::Io {
        context: context.into(),
        source,
    }
}

/// How long nothing may move on a connection before the Envoy judge takes it as settled:
/// generous, so that an Envoy slowed down by a loaded machine is waited for.
const IDLE: Duration = Duration::from_millis(1000);
/// How long a wait on a connection gives Envoy to show a first move (bytes either way, a log
/// line) before taking a still connection as settled.
const FIRST_MOVE_LIMIT: Duration = Duration::from_millis(3000);
/// How long one wait on a connection may last at most.
const SETTLE_CONNECTION_LIMIT: Duration = Duration::from_secs(10);

/// See [`EnvoyJudge::progress`].
type Progress = (usize, usize, usize);

/// What the client of a connection step read so far.
#[derive(Debug, Default)]
struct ClientReading {
    received: Vec<u8>,
    /// It read the connection's end (or the connection broke).
    ended: bool,
}

/// Whether a scenario drives connections (a network filter) rather than requests.
fn network_scenario(scenario: &crate::format::Scenario) -> bool {
    scenario.steps.iter().any(|step| step.connection.is_some())
}

/// Whether any connection of the scenario opens with a TLS `ClientHello` (`sni`).
fn uses_sni(scenario: &crate::format::Scenario) -> bool {
    scenario.steps.iter().any(|step| {
        step.connection
            .as_ref()
            .is_some_and(|connection| connection.sni.is_some())
    })
}

/// The PROXY protocol (v1) header that gives Envoy the client's address: the scenario's, else
/// the harness's default (`127.0.0.1:40000`), with the port [`SOURCE_PORT`] when it names none;
/// and the harness's default destination, `127.0.0.1:10000` (`[::1]:10000` for an IPv6 client),
/// so that `source.*` and `destination.*` read the same under both judges.
fn proxy_protocol_header(source: Option<&str>) -> String {
    let (ip, port) = source
        .and_then(source_ip)
        .unwrap_or((IpAddr::from([127, 0, 0, 1]), None));
    let port = port.unwrap_or(SOURCE_PORT);
    match ip {
        IpAddr::V4(ip) => format!("PROXY TCP4 {ip} 127.0.0.1 {port} {DESTINATION_PORT}\r\n"),
        IpAddr::V6(ip) => format!("PROXY TCP6 {ip} ::1 {port} {DESTINATION_PORT}\r\n"),
    }
}

/// The port of the harness's default `destination.address`.
const DESTINATION_PORT: u16 = 10000;

/// The listener of a scenario of connections: the module as `envoy.filters.network.wasm`, then
/// `tcp_proxy` to the upstream's cluster; the listener filter that reads the client's address
/// from the PROXY header every client sends; with `tls_inspector`, the one that reads the
/// server name of a TLS `ClientHello` (a client that sends something else is let through
/// without one).
fn network_bootstrap(mut bootstrap: Value, filter: &WasmFilter, tls_inspector: bool) -> Value {
    let config = filter
        .to_envoy_json()
        .pointer("/typed_config/config")
        .cloned()
        .unwrap_or_default();
    if let Some(listener) = bootstrap
        .pointer_mut("/static_resources/listeners/0")
        .and_then(Value::as_object_mut)
    {
        listener.insert(
            "filter_chains".to_string(),
            json!([{ "filters": [
                {
                    "name": "envoy.filters.network.wasm",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
                        "config": config,
                    },
                },
                {
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "wasmesh_scenario",
                        "cluster": UPSTREAM_CLUSTER,
                    },
                },
            ] }]),
        );
        let mut listener_filters = vec![json!({
            "name": "envoy.filters.listener.proxy_protocol",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
            },
        })];
        if tls_inspector {
            listener_filters.push(json!({
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
                },
            }));
        }
        listener.insert("listener_filters".to_string(), json!(listener_filters));
    }
    bootstrap
}

/// How Envoy closed the downstream connection from `client` (the address Envoy gives the
/// client, after the PROXY header), from its debug lines in `log`: the connection's id, then
/// `connection`'s `closing socket: <event>` for that id (0 `RemoteClose`: the client; 1
/// `LocalClose`: Envoy), or none yet (open). The id is on `conn_handler`'s `new connection from
/// <client>`; a connection the filter closed while Envoy accepted it has no such line, and is
/// then the one connection of a worker thread (not `main_thread`, where the admin interface's
/// are) that Envoy did not open itself (`connecting to`: the upstream, a cluster). `None` when
/// the log does not show the connection.
fn closed_by(log: &str, client: &str, main_thread: &str) -> Option<ClosedBy> {
    let accepted = format!("] new connection from {client}");
    let id = log
        .lines()
        .rev()
        .find_map(|line| {
            let (before, _) = line.split_once(&accepted)?;
            connection_id(before)
        })
        .or_else(|| {
            let mut accepted: Vec<&str> = Vec::new();
            let mut opened: Vec<&str> = Vec::new();
            for line in log.lines() {
                let Some(id) = connection_id(line) else {
                    continue;
                };
                if log_thread(line) == Some(main_thread) {
                    continue;
                }
                if line.contains("] connecting to ") {
                    opened.push(id);
                } else if !accepted.contains(&id) {
                    accepted.push(id);
                }
            }
            accepted.retain(|id| !opened.contains(id));
            match accepted.as_slice() {
                [one] => Some(*one),
                _ => None,
            }
        })?;
    let closing = format!("\"ConnectionId\":\"{id}\"] closing socket: ");
    let event = log.lines().find_map(|line| {
        let (_, event) = line.split_once(&closing)?;
        Some(event.trim())
    });
    Some(match event {
        None => ClosedBy::Open,
        Some("0") => ClosedBy::Client,
        Some(_) => ClosedBy::Proxy,
    })
}

/// The connection id a log line names (`[Tags: "ConnectionId":"7"]`), the last one.
fn connection_id(line: &str) -> Option<&str> {
    let (_, rest) = line.rsplit_once("\"ConnectionId\":\"")?;
    rest.split('"').next()
}

/// The thread of an Envoy log line (`[date][thread][level][component] ...`).
fn log_thread(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('[')?;
    let (_, rest) = rest.split_once("][")?;
    rest.split(']').next()
}

/// The thread of Envoy's main loop (where the admin interface's connections are), from its
/// start-up lines.
fn main_thread(log: &str) -> String {
    log.lines()
        .find(|line| line.contains("starting main dispatch loop"))
        .and_then(log_thread)
        .unwrap_or_default()
        .to_string()
}

/// The TCP server behind `tcp_proxy`'s cluster: it plays the current step's upstream on each
/// connection (echo, or the scripted replies, one per read), ends its side after a reply that
/// says so or once it reads the client's end, and records what each connection received.
struct TcpUpstreamServer {
    addr: SocketAddr,
    staged: Arc<Mutex<TcpUpstream>>,
    /// What each connection received, in the order they were accepted.
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl TcpUpstreamServer {
    fn start() -> Result<Self, ScenarioError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|error| envoy_io("binding the TCP upstream", error))?;
        let addr = listener
            .local_addr()
            .map_err(|error| envoy_io("reading the TCP upstream's address", error))?;
        let staged: Arc<Mutex<TcpUpstream>> = Arc::default();
        let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let server = Self {
            addr,
            staged: Arc::clone(&staged),
            received: Arc::clone(&received),
        };
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let index = {
                    let mut received = lock(&received);
                    received.push(Vec::new());
                    received.len() - 1
                };
                let script = lock(&staged).clone();
                let received = Arc::clone(&received);
                std::thread::spawn(move || play_upstream(stream, &script, &received, index));
            }
        });
        Ok(server)
    }

    /// Plays `upstream` on the connections accepted from now on.
    fn stage(&self, upstream: TcpUpstream) {
        *lock(&self.staged) = upstream;
    }

    /// How many connections it accepted.
    fn connections(&self) -> usize {
        lock(&self.received).len()
    }

    /// What connection `index` received (empty if there was none).
    fn received(&self, index: usize) -> Vec<u8> {
        lock(&self.received).get(index).cloned().unwrap_or_default()
    }

    /// Every byte it received, over all connections.
    fn total(&self) -> usize {
        let received = lock(&self.received);
        received.iter().map(Vec::len).sum::<usize>() + received.len()
    }
}

/// One upstream connection: each read answered, its side ended as the scenario says.
fn play_upstream(
    mut stream: TcpStream,
    upstream: &TcpUpstream,
    received: &Mutex<Vec<Vec<u8>>>,
    index: usize,
) {
    let mut buffer = [0u8; 4096];
    let mut open = true;
    let mut next = 0;
    loop {
        let count = match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(count) => count,
        };
        let read = buffer.get(..count).unwrap_or_default();
        if let Some(seen) = lock(received).get_mut(index) {
            seen.extend_from_slice(read);
        }
        if !open {
            continue;
        }
        let (answer, end) = match &upstream.replies {
            None => (read.to_vec(), false),
            Some(replies) => match replies.get(next) {
                Some(reply) => {
                    next += 1;
                    let bytes = body_bytes(reply.send.as_deref(), reply.send_base64.as_deref());
                    (bytes.unwrap_or_default(), reply.end)
                }
                None => (Vec::new(), false),
            },
        };
        if !answer.is_empty() {
            let _ = stream.write_all(&answer);
        }
        if end {
            let _ = stream.shutdown(Shutdown::Write);
            open = false;
        }
    }
    if open {
        let _ = stream.shutdown(Shutdown::Write);
    }
}

/// How much of Envoy's log an error shows.
const LOG_TAIL_LINES: usize = 60;

impl EnvoyJudge {
    /// When Envoy no longer answers its admin interface it died during the step (an abort, a
    /// crash), which the client sees as a reset or a connection error: that stops the
    /// scenario, with the end of Envoy's log.
    fn gone(&self, index: usize, seen: &str) -> Option<ScenarioError> {
        self.envoy.admin_get("/ready").err().map(|_| {
            ScenarioError::Envoy(EnvoyError::Io {
                context: format!("step {index}: Envoy died (the client saw {seen})"),
                source: std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    format!(
                        "it no longer answers; end of its log:\n{}",
                        self.envoy.log_tail(LOG_TAIL_LINES)
                    ),
                ),
            })
        })
    }

    /// A client error stops the scenario, naming the step (or saying Envoy died).
    fn step_error(&self, index: usize, error: EnvoyError) -> ScenarioError {
        if let Some(gone) = self.gone(index, &error.to_string()) {
            return gone;
        }
        ScenarioError::Envoy(match error {
            EnvoyError::Io { context, source } => EnvoyError::Io {
                context: format!("step {index}: {context}"),
                source,
            },
            other => other,
        })
    }

    /// The response, unless it is a reset because Envoy died.
    fn unless_gone(
        &self,
        index: usize,
        response: ClientResponse,
    ) -> Result<ClientResponse, ScenarioError> {
        if response.complete {
            return Ok(response);
        }
        match self.gone(index, "a reset stream") {
            Some(gone) => Err(gone),
            None => Ok(response),
        }
    }
}

/// The client's request: `host` from the authority (unless the headers give one), the body
/// whole, in chunks, or followed by trailers.
fn client_request(request: &Request) -> HttpRequest {
    let mut wire = HttpRequest::new(&request.method, &request.path);
    if header(&request.headers.0, "host").is_none() {
        wire = wire.header("host", &request.authority);
    }
    for (name, value) in &request.headers.0 {
        wire = wire.header(name, value);
    }
    if let Some(body) = body_bytes(request.body.as_deref(), request.body_base64.as_deref()) {
        wire = wire.body(body);
    }
    if !request.chunks.is_empty() {
        wire = wire.chunks(
            request
                .chunks
                .iter()
                .map(|chunk| chunk.as_bytes().to_vec())
                .collect(),
        );
    }
    if !request.trailers.is_empty() {
        wire = wire.trailers(request.trailers.0.clone());
    }
    wire
}

/// The header Envoy's router adds to every response an upstream sent.
const UPSTREAM_SERVICE_TIME: &str = "x-envoy-upstream-service-time";

/// The response as the client got it. A local reply carries its details in
/// [`RESPONSE_CODE_DETAILS_HEADER`], except one with empty details: a complete answer to a
/// request the upstream never saw, or one without the router's [`UPSTREAM_SERVICE_TIME`], is a
/// local reply all the same.
fn observed_response(response: ClientResponse, upstream_saw_it: bool) -> Response {
    let local = !upstream_saw_it || response.header(UPSTREAM_SERVICE_TIME).is_none();
    let details = response
        .response_code_details()
        .map(str::to_string)
        .or_else(|| (local && response.complete).then(String::new));
    Response {
        status: response.status.unwrap_or(0),
        reset: !response.complete,
        details,
        headers: response
            .headers
            .into_iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case(RESPONSE_CODE_DETAILS_HEADER))
            .map(|(name, value)| (name.to_ascii_lowercase(), value))
            .collect(),
        body: response.body,
    }
}

/// Headers as the harness shows a request: `:method`, `:path` and `:authority` first (the
/// authority from `host`, which is then dropped), the rest with lower-case names.
fn request_headers(
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> Vec<(String, String)> {
    let authority = header(headers, "host").unwrap_or_default().to_string();
    let mut all = vec![
        (":method".to_string(), method.to_string()),
        (":path".to_string(), path.to_string()),
        (":authority".to_string(), authority),
    ];
    all.extend(
        headers
            .iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("host"))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.clone())),
    );
    all
}

fn upstream_request(seen: &ReceivedRequest) -> UpstreamRequest {
    UpstreamRequest {
        headers: request_headers(&seen.method, &seen.path, &seen.headers),
        body: seen.body.clone(),
    }
}

fn upstream_response(answer: &UpstreamAnswer) -> HttpResponse {
    let body =
        body_bytes(answer.body.as_deref(), answer.body_base64.as_deref()).unwrap_or_default();
    answer.headers.0.iter().fold(
        HttpResponse::new(answer.status, body),
        |response, (name, value)| response.with_header(name.as_str(), value.as_str()),
    )
}

/// The server behind an HTTP cluster: each call answered by the cluster's first matching
/// answer, and recorded.
fn http_cluster_server(
    name: &str,
    clusters: &BTreeMap<String, crate::format::Cluster>,
    calls: &CallLog,
) -> Result<MockServer, ScenarioError> {
    let name = name.to_string();
    let clusters = clusters.clone();
    let calls = Arc::clone(calls);
    Ok(MockServer::start(move |request| {
        lock(&calls).push(Callout {
            cluster: name.clone(),
            path: request.path.clone(),
            headers: request_headers(&request.method, &request.path, &request.headers),
            body: request.body.clone(),
        });
        let answer = find_answer(&clusters, &name, Protocol::Http, &request.path);
        http_reply(&name, &request.path, answer)
    })?)
}

/// How a cluster's server treats a call, as the harness judge's mock does: `fail: reset` closes
/// the connection, `fail: timeout` never answers, `delay_ms` answers late.
fn http_reply(cluster: &str, path: &str, answer: Option<&Answer>) -> MockReply {
    let Some(answer) = answer else {
        // The harness refuses the connection; a live server cannot refuse one call and accept
        // the next, so it answers a 503 that says why.
        return MockReply::respond(HttpResponse::new(
            503,
            format!("wasmesh scenario: no answer of cluster {cluster} matches {path}"),
        ));
    };
    match answer.fail {
        // Only a cluster whose every answer is `refused` is refused (nothing listens); see
        // `EnvoyJudge::start`. A lone `refused` answer cannot reach a server.
        Some(Failure::Refused | Failure::Reset) => return MockReply::Reset,
        Some(Failure::Timeout) => return MockReply::Hang,
        Some(Failure::ResetAfterHeaders) => return MockReply::ResetAfterHeaders,
        None => {}
    }
    let body =
        body_bytes(answer.body.as_deref(), answer.body_base64.as_deref()).unwrap_or_default();
    let response = answer.headers.0.iter().fold(
        HttpResponse::new(answer.status.unwrap_or(200), body),
        |response, (name, value)| response.with_header(name.as_str(), value.as_str()),
    );
    let response = answer
        .trailers
        .0
        .iter()
        .fold(response, |response, (name, value)| {
            response.with_trailer(name.as_str(), value.as_str())
        });
    MockReply::Respond {
        response,
        delay: Duration::from_millis(answer.delay_ms),
    }
}

/// The server behind a gRPC cluster: each call answered by the cluster's first matching answer
/// (by `/package.Service/Method`), and recorded with its metadata and message.
fn grpc_cluster_server(
    name: &str,
    clusters: &BTreeMap<String, crate::format::Cluster>,
    calls: &CallLog,
) -> Result<GrpcTestServer, ScenarioError> {
    let name = name.to_string();
    let clusters = clusters.clone();
    let calls = Arc::clone(calls);
    Ok(GrpcTestServer::start(move |call: &GrpcRequest| {
        lock(&calls).push(Callout {
            cluster: name.clone(),
            path: call.path.clone(),
            headers: call
                .metadata
                .iter()
                .map(|(key, value)| (key.to_ascii_lowercase(), value.clone()))
                .collect(),
            body: call.message.clone(),
        });
        let answer = find_answer(&clusters, &name, Protocol::Grpc, &call.path);
        grpc_reply(&name, &call.path, answer)
    })?)
}

/// How a gRPC cluster's server treats a call, as the harness judge's mock does.
fn grpc_reply(cluster: &str, path: &str, answer: Option<&Answer>) -> GrpcAnswer {
    let Some(answer) = answer else {
        // The harness refuses the connection (status 14); a live server cannot refuse one
        // call and accept the next.
        return GrpcAnswer::Error {
            status: 14,
            message: format!("wasmesh scenario: no answer of cluster {cluster} matches {path}"),
        };
    };
    match answer.fail {
        // A lone `refused` answer cannot reach a server (see `EnvoyJudge::start`).
        Some(Failure::Refused | Failure::Reset) => return GrpcAnswer::Reset,
        // `load::validate` keeps `reset_after_headers` to HTTP clusters.
        Some(Failure::Timeout | Failure::ResetAfterHeaders) => return GrpcAnswer::NoAnswer,
        None => {}
    }
    let delay = Duration::from_millis(answer.delay_ms);
    match answer.grpc_status.unwrap_or(0) {
        0 => GrpcAnswer::Reply {
            message: body_bytes(answer.body.as_deref(), answer.body_base64.as_deref())
                .unwrap_or_default(),
            delay,
            initial_metadata: answer.headers.0.clone(),
            trailing_metadata: answer.trailers.0.clone(),
        },
        status => {
            if !delay.is_zero() {
                // A failed call has no delayed form: the server's thread sleeps, holding its
                // other calls for the delay too.
                std::thread::sleep(delay);
            }
            GrpcAnswer::Error {
                status,
                message: answer.grpc_message.clone().unwrap_or_default(),
            }
        }
    }
}

/// What precedes a module's message in Envoy's log: `wasm log` then the plugin's name, root id
/// and VM id, each after a space when not empty, then `: ` (Envoy's `PluginBase::log_prefix`).
/// The VM id is empty here.
fn log_marker(plugin_name: &str, root_id: &str) -> String {
    let mut marker = "wasm log".to_string();
    for part in [plugin_name, root_id] {
        if !part.is_empty() {
            marker.push(' ');
            marker.push_str(part);
        }
    }
    marker.push_str(": ");
    marker
}

/// The module's messages in a stretch of Envoy's log. A message spanning several lines goes on
/// in lines without Envoy's `[date][thread][level]` prefix, which are joined back to it.
fn module_lines(log: &str, marker: &str) -> Vec<String> {
    let mut messages: Vec<String> = Vec::new();
    let mut in_message = false;
    for line in log.lines() {
        if let Some((_, message)) = line.split_once(marker) {
            messages.push(message.to_string());
            in_message = true;
        } else if line.starts_with('[') {
            in_message = false;
        } else if in_message {
            if let Some(last) = messages.last_mut() {
                last.push('\n');
                last.push_str(line);
            }
        }
    }
    messages
}

/// Envoy's name of a log level (`--component-log-level`).
fn log_level(name: LogLevelName) -> &'static str {
    match name {
        LogLevelName::Trace => "trace",
        LogLevelName::Debug => "debug",
        LogLevelName::Info => "info",
        LogLevelName::Warn => "warn",
        LogLevelName::Error => "error",
        LogLevelName::Critical => "critical",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_module_is_compiled_for_envoy_and_the_copy_removed() {
        let dir = std::env::temp_dir().join(format!("wasmesh-judge-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("m.wat");
        std::fs::write(&text, "(module)").unwrap();
        let compiled = WasmFile::prepare(&text).unwrap();
        let binary = compiled.path.clone();
        assert_ne!(binary, text);
        assert!(std::fs::read(&binary).unwrap().starts_with(b"\0asm"));
        drop(compiled);
        assert!(!binary.exists());
        // A binary module is used where it is, and kept.
        let kept = dir.join("m.wasm");
        std::fs::write(&kept, wat::parse_str("(module)").unwrap()).unwrap();
        drop(WasmFile::prepare(&kept).unwrap());
        assert!(kept.exists());
        std::fs::write(&text, "(module").unwrap();
        assert!(matches!(
            WasmFile::prepare(&text),
            Err(ScenarioError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn who_closed_a_connection_is_read_from_envoys_debug_lines() {
        let line = |thread: &str, id: &str, text: &str| {
            format!(
                "[2026-12-08 00:13:51.561][{thread}][debug][connection] [source/common/network/connection_impl.cc:358] [Tags: \"ConnectionId\":\"{id}\"] {text}\n"
            )
        };
        let accepted = line("7", "5", "new connection from 10.0.0.1:40000");
        let log = [
            line("1", "4", "closing socket: 1"),
            accepted.clone(),
            line("7", "6", "connecting to 127.0.0.1:3000"),
            line("7", "6", "closing socket: 0"),
            line("7", "5", "closing socket: 1"),
        ]
        .concat();
        assert_eq!(
            closed_by(&log, "10.0.0.1:40000", "1"),
            Some(ClosedBy::Proxy)
        );
        let log = [accepted.clone(), line("7", "5", "closing socket: 0")].concat();
        assert_eq!(
            closed_by(&log, "10.0.0.1:40000", "1"),
            Some(ClosedBy::Client)
        );
        assert_eq!(
            closed_by(&accepted, "10.0.0.1:40000", "1"),
            Some(ClosedBy::Open)
        );
        // Closed while Envoy accepted it: no accept line; the admin's (main thread) and the
        // upstream's connections are not it.
        let log = [
            line("1", "4", "closing socket: 1"),
            line("7", "5", "closing data_to_write=0 type=0"),
            line("7", "5", "closing socket: 1"),
        ]
        .concat();
        assert_eq!(
            closed_by(&log, "10.0.0.1:40000", "1"),
            Some(ClosedBy::Proxy)
        );
        assert_eq!(closed_by("", "10.0.0.1:40000", "1"), None);
        assert_eq!(
            main_thread("[2026-12-08 00:00:28.243][13412][info][main] [server.cc:1098] starting main dispatch loop\n"),
            "13412"
        );
    }

    #[test]
    fn the_proxy_header_gives_the_scenario_s_address_or_the_harness_s() {
        assert_eq!(
            proxy_protocol_header(None),
            "PROXY TCP4 127.0.0.1 127.0.0.1 40000 10000\r\n"
        );
        assert_eq!(
            proxy_protocol_header(Some("10.1.2.3")),
            "PROXY TCP4 10.1.2.3 127.0.0.1 40000 10000\r\n"
        );
        assert_eq!(
            proxy_protocol_header(Some("[2001:db8::1]:5")),
            "PROXY TCP6 2001:db8::1 ::1 5 10000\r\n"
        );
    }

    #[test]
    fn a_network_listener_runs_the_module_before_tcp_proxy() {
        let filter = WasmFilter::new("m.wasm");
        let bootstrap = network_bootstrap(EnvoyBuilder::new().bootstrap(), &filter, true);
        let listener = &bootstrap["static_resources"]["listeners"][0];
        let filters = &listener["filter_chains"][0]["filters"];
        assert_eq!(filters[0]["name"], "envoy.filters.network.wasm");
        assert_eq!(filters[1]["name"], "envoy.filters.network.tcp_proxy");
        assert_eq!(filters[1]["typed_config"]["cluster"], UPSTREAM_CLUSTER);
        let listener_filters = &listener["listener_filters"];
        assert_eq!(
            listener_filters[0]["name"],
            "envoy.filters.listener.proxy_protocol"
        );
        assert_eq!(
            listener_filters[1]["name"],
            "envoy.filters.listener.tls_inspector"
        );
    }

    #[test]
    fn the_log_marker_follows_envoys_prefix() {
        assert_eq!(log_marker("", ""), "wasm log: ");
        assert_eq!(log_marker("p", "r"), "wasm log p r: ");
        assert_eq!(log_marker("", "r"), "wasm log r: ");
    }

    #[test]
    fn module_lines_keep_messages_only_and_join_continuations() {
        let log = "[2026-12-07 21:00:00.000][1][info][main] starting\n\
                   [2026-12-07 21:00:00.001][2][info][wasm] [source/extensions/common/wasm/context.cc:1195] wasm log r: first\n\
                   second line\n\
                   [2026-12-07 21:00:00.002][2][info][http] other\n\
                   not ours\n\
                   [2026-12-07 21:00:00.003][2][warn][wasm] [context.cc:1] wasm log r: third\n";
        assert_eq!(
            module_lines(log, &log_marker("", "r")),
            vec!["first\nsecond line".to_string(), "third".to_string()]
        );
    }

    #[test]
    fn request_headers_are_shown_as_the_harness_shows_them() {
        let headers = vec![
            ("Host".to_string(), "example.com".to_string()),
            ("X-A".to_string(), "1".to_string()),
        ];
        assert_eq!(
            request_headers("GET", "/p?q", &headers),
            vec![
                (":method".to_string(), "GET".to_string()),
                (":path".to_string(), "/p?q".to_string()),
                (":authority".to_string(), "example.com".to_string()),
                ("x-a".to_string(), "1".to_string()),
            ]
        );
    }

    #[test]
    fn a_local_reply_without_details_is_told_by_the_upstream_not_seeing_it() {
        let response = |headers: Vec<(&str, &str)>, complete: bool| ClientResponse {
            status: Some(403),
            headers: headers
                .into_iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            body: b"no".to_vec(),
            trailers: Vec::new(),
            complete,
        };
        let with = observed_response(
            response(
                vec![(RESPONSE_CODE_DETAILS_HEADER, "denied"), ("X-B", "2")],
                true,
            ),
            false,
        );
        assert_eq!(with.details.as_deref(), Some("denied"));
        assert_eq!(with.headers, vec![("x-b".to_string(), "2".to_string())]);
        let without = observed_response(response(vec![], true), false);
        assert_eq!(without.details.as_deref(), Some(""));
        let upstream = observed_response(response(vec![(UPSTREAM_SERVICE_TIME, "1")], true), true);
        assert_eq!(upstream.details, None);
        // A local reply in the response phase replaced the upstream's headers.
        let replaced = observed_response(response(vec![], true), true);
        assert_eq!(replaced.details.as_deref(), Some(""));
        let reset = observed_response(response(vec![], false), false);
        assert_eq!((reset.details, reset.reset), (None, true));
    }

    #[test]
    fn cluster_answers_become_server_replies() {
        assert_eq!(
            http_reply("c", "/x", None).clone(),
            MockReply::respond(HttpResponse::new(
                503,
                "wasmesh scenario: no answer of cluster c matches /x",
            ))
        );
        let timeout = Answer {
            fail: Some(Failure::Timeout),
            ..Answer::default()
        };
        assert_eq!(http_reply("c", "/", Some(&timeout)), MockReply::Hang);
        let late = Answer {
            status: Some(201),
            body: Some("b".into()),
            delay_ms: 30,
            ..Answer::default()
        };
        assert_eq!(
            http_reply("c", "/", Some(&late)),
            MockReply::Respond {
                response: HttpResponse::new(201, "b"),
                delay: Duration::from_millis(30)
            }
        );
        let failed = Answer {
            grpc_status: Some(7),
            grpc_message: Some("no".into()),
            ..Answer::default()
        };
        assert_eq!(
            grpc_reply("g", "/a.B/C", Some(&failed)),
            GrpcAnswer::Error {
                status: 7,
                message: "no".into()
            }
        );
        assert_eq!(
            grpc_reply("g", "/a.B/C", Some(&Answer::default())),
            GrpcAnswer::Reply {
                message: Vec::new(),
                delay: Duration::ZERO,
                initial_metadata: Vec::new(),
                trailing_metadata: Vec::new(),
            }
        );
    }

    #[test]
    fn the_client_request_carries_authority_chunks_and_trailers() {
        let request = Request {
            method: "POST".into(),
            path: "/up".into(),
            chunks: vec!["a".into(), "bc".into()],
            trailers: crate::Headers(vec![("x-t".into(), "1".into())]),
            ..Request::default()
        };
        let wire = client_request(&request);
        assert_eq!(
            wire.headers,
            vec![("host".to_string(), "example.com".to_string())]
        );
        assert_eq!(wire.chunks, Some(vec![b"a".to_vec(), b"bc".to_vec()]));
        assert_eq!(wire.body, b"abc");
        assert_eq!(wire.trailers, vec![("x-t".to_string(), "1".to_string())]);
    }
}
