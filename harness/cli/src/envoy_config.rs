//! `wasmesh envoy-config`: a ready-to-run Envoy bootstrap for one filter and its configuration.
//!
//! The bootstrap is the one `wasmesh_envoy::EnvoyBuilder` generates for the end-to-end
//! tests (listener, HTTP connection manager, `envoy.filters.http.wasm` with the V8 runtime, the
//! router), so what the tests run is what users deploy. Only what differs between a test and a
//! deployment is changed afterwards: fixed listener and admin addresses instead of port 0,
//! clusters that may name hosts (DNS, TLS) instead of test sockets, and remote code.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use wasmesh_envoy::{Cluster, EnvoyBuilder, FailurePolicy, WasmFilter};
use wasmesh_harness::build::sha256_hex;

use crate::filters::{self, FilterInfo};
use crate::oci;
use crate::run::FailurePolicyArg;
use crate::validate;
use crate::yaml::{self, Node};

/// Name of the cluster remote code is fetched through.
const CODE_CLUSTER: &str = "wasm_code";
/// Trust store for TLS clusters (Debian/Ubuntu, and the official Envoy images).
const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Arguments shared by `envoy-config` and `istio-config`.
#[derive(Debug, clap::Args)]
pub struct FilterConfigArgs {
    /// The filter (folder or package name, e.g. `rbac`). Its own parser checks the
    /// configuration before anything is generated.
    #[arg(long)]
    pub filter: String,

    /// The filter configuration (JSON).
    #[arg(long)]
    pub config: PathBuf,

    /// What the proxy does when the VM fails: `fail-closed` answers 503, `fail-open` skips the
    /// filter, `fail-reload` starts a new VM.
    #[arg(long, value_enum, default_value_t = FailurePolicyArg::Closed)]
    pub failure_policy: FailurePolicyArg,

    /// Generate even when the filter is unknown or rejects the configuration.
    #[arg(long)]
    pub no_validate: bool,

    /// Write the YAML here instead of stdout.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

/// A configuration read and checked for deployment.
pub struct CheckedConfig {
    /// The filter, when the CLI knows it.
    pub filter: Option<&'static FilterInfo>,
    /// The name to deploy under.
    pub name: String,
    /// The file's text, as written.
    pub text: String,
    /// The parsed document (key order kept).
    pub document: Node,
}

impl FilterConfigArgs {
    /// Reads the configuration and checks it with the filter's parser.
    pub fn checked_config(&self) -> Result<CheckedConfig> {
        let text = std::fs::read_to_string(&self.config)
            .with_context(|| format!("reading {}", self.config.display()))?;
        let document = if text.trim().is_empty() {
            Node::Object(Vec::new())
        } else {
            Node::parse_json(&text)
                .map_err(|error| anyhow!("{}: {error}", self.config.display()))?
        };
        let filter = match filters::lookup(&self.filter) {
            Ok(filter) => Some(filter),
            Err(error) if self.no_validate => {
                eprintln!("note: {error}; generating without checking the configuration");
                None
            }
            Err(error) => return Err(error.context("pass --no-validate for a filter of your own")),
        };
        if let Some(filter) = filter {
            let problems = validate::configuration_errors(filter, text.as_bytes());
            if !problems.is_empty() {
                for problem in &problems {
                    eprintln!("{}: {problem}", self.config.display());
                }
                if !self.no_validate {
                    bail!(
                        "{} is not a valid {} configuration; nothing generated",
                        self.config.display(),
                        filter.name
                    );
                }
                eprintln!("note: generating anyway (--no-validate)");
            }
        }
        let name = filter.map_or_else(|| self.filter.clone(), |filter| filter.name.to_string());
        Ok(CheckedConfig {
            filter,
            name,
            text,
            document,
        })
    }

    /// Writes the generated document to `--output` or stdout.
    pub fn emit(&self, yaml: &str) -> Result<()> {
        match &self.output {
            Some(path) => {
                std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
            }
            None => {
                print!("{yaml}");
                Ok(())
            }
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: FilterConfigArgs,

    /// The filter module (dist/<name>.wasm): checked, and its sha256 pins remote code.
    #[arg(long)]
    wasm: PathBuf,

    /// Where Envoy reads the module (default: --wasm, made absolute).
    #[arg(long, conflicts_with = "code_url")]
    code_path: Option<String>,

    /// Envoy downloads the module from this http(s) URL instead, and checks its sha256.
    #[arg(long)]
    code_url: Option<String>,

    /// Route requests to this backend (HOST:PORT; a host name is resolved by DNS).
    #[arg(long, conflicts_with = "direct_response")]
    upstream: Option<String>,

    /// Answer every request itself, with this status (200 when not given); the default
    /// without --upstream.
    #[arg(long, num_args = 0..=1, default_missing_value = "200", value_name = "STATUS")]
    direct_response: Option<u16>,

    /// Listener address.
    #[arg(long, default_value = "0.0.0.0:10000")]
    listen: SocketAddr,

    /// Admin interface address.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,

    /// Root id handed to the module.
    #[arg(long, default_value = "")]
    root_id: String,

    /// A cluster for the filter's callouts: NAME=HOST:PORT[,tls][,http2] (repeatable). Clusters
    /// that the configuration names next to a URI (`http_uri`, `server_uri`) are added without it.
    #[arg(long = "cluster")]
    clusters: Vec<String>,

    /// CA bundle TLS clusters verify their peer with.
    #[arg(long, default_value = DEFAULT_CA_FILE)]
    ca_file: String,
}

pub fn run(args: &Args) -> Result<()> {
    let config = args.common.checked_config()?;
    let wasm =
        std::fs::read(&args.wasm).with_context(|| format!("reading {}", args.wasm.display()))?;
    if !oci::is_wasm(&wasm) {
        bail!("{} is not a WebAssembly binary", args.wasm.display());
    }
    let yaml = generate(args, &config, &sha256_hex(&wasm))?;
    args.common.emit(&yaml)
}

/// A cluster to add: where it points and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    name: String,
    host: String,
    port: u16,
    tls: bool,
    http2: bool,
}

fn generate(args: &Args, config: &CheckedConfig, wasm_sha256: &str) -> Result<String> {
    let code_path = match &args.code_path {
        Some(path) => PathBuf::from(path),
        None => std::path::absolute(&args.wasm).unwrap_or_else(|_| args.wasm.clone()),
    };
    let buffers_body = config
        .filter
        .is_some_and(|filter| filter.buffers_request_body);
    let failure_policy: FailurePolicy = args.common.failure_policy.into();
    let filter = WasmFilter::new(&code_path)
        .name(&config.name)
        .vm_id(&config.name)
        .root_id(&args.root_id)
        .configuration(&config.text)
        .failure_policy(failure_policy)
        .allow_on_headers_stop_iteration(buffers_body);
    let mut filter_json = filter.to_envoy_json();

    let mut endpoints = endpoints_named_in(&config.document)?;
    for spec in &args.clusters {
        let endpoint = parse_cluster(spec)?;
        endpoints.retain(|known| known.name != endpoint.name);
        endpoints.push(endpoint);
    }
    if let Some(url) = &args.code_url {
        let (host, port, tls) = parse_url(url)?;
        set_field(
            &mut filter_json,
            "/typed_config/config/vm_config",
            "code",
            json!({
                "remote": {
                    "http_uri": { "uri": url, "cluster": CODE_CLUSTER, "timeout": "30s" },
                    "sha256": wasm_sha256,
                    "retry_policy": { "num_retries": 3 },
                },
            }),
        )?;
        endpoints.retain(|known| known.name != CODE_CLUSTER);
        endpoints.push(Endpoint {
            name: CODE_CLUSTER.to_string(),
            host,
            port,
            tls,
            http2: false,
        });
    }
    warn_about_unknown_clusters(&config.document, &endpoints);

    // Cluster addresses are placeholders here and set below: the builder takes socket addresses
    // (test servers), a deployment also names hosts.
    let placeholder = SocketAddr::from(([127, 0, 0, 1], 1));
    let mut builder = EnvoyBuilder::new()
        // Response code details in a response header help tests, not clients.
        .report_response_code_details(false)
        .http_filter_json(filter_json);
    let upstream = match &args.upstream {
        Some(upstream) => {
            let (host, port) = parse_host_port(upstream)?;
            builder = builder.upstream(placeholder);
            Some(Endpoint {
                name: "upstream".to_string(),
                host,
                port,
                tls: false,
                http2: false,
            })
        }
        None => {
            builder = builder.direct_response(args.direct_response.unwrap_or(200), "ok\n");
            None
        }
    };
    for endpoint in &endpoints {
        let cluster = Cluster::new(&endpoint.name, placeholder);
        builder = builder.cluster(if endpoint.http2 {
            cluster.http2()
        } else {
            cluster
        });
    }

    let mut bootstrap = builder.bootstrap();
    set_field(
        &mut bootstrap,
        "",
        "node",
        json!({ "id": "wasmesh", "cluster": "wasmesh" }),
    )?;
    set_field(
        &mut bootstrap,
        "/admin",
        "address",
        socket_address(&args.admin.ip().to_string(), args.admin.port()),
    )?;
    set_field(
        &mut bootstrap,
        "/static_resources/listeners/0",
        "address",
        socket_address(&args.listen.ip().to_string(), args.listen.port()),
    )?;
    if let Some(clusters) = bootstrap
        .pointer_mut("/static_resources/clusters")
        .and_then(Value::as_array_mut)
    {
        for cluster in clusters {
            let name = cluster
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let endpoint = upstream
                .iter()
                .chain(&endpoints)
                .find(|endpoint| endpoint.name == name);
            if let Some(endpoint) = endpoint {
                point_cluster_at(cluster, endpoint, &args.ca_file)?;
            }
        }
    }

    let module = match &args.code_url {
        Some(url) => format!("downloaded from {url}"),
        None => format!("read from {}", code_path.display()),
    };
    let header = format!(
        "# Envoy bootstrap for the wasmesh {name} filter, generated by `wasmesh envoy-config`.\n\
         # The module ({module}) has sha256 {wasm_sha256}.\n\
         # `configuration.value` is {config} verbatim.\n\
         # Run: envoy -c <this file>\n",
        name = config.name,
        config = display_name(&args.common.config),
    );
    Ok(header + &yaml::to_yaml(&Node::from_value(&bootstrap)))
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn socket_address(host: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": host, "port_value": port } })
}

/// Sets field `key` of the object at JSON pointer `parent` (`""`: `document` itself). The
/// documents changed here come from `wasmesh_envoy`, so the object is there; were it
/// not, this is an error where `document[..][key] = value` would panic.
fn set_field(document: &mut Value, parent: &str, key: &str, value: Value) -> Result<()> {
    let object = document
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| {
            anyhow!("internal error: the generated bootstrap has no `{parent}` object")
        })?;
    object.insert(key.to_string(), value);
    Ok(())
}

/// Points a generated cluster at `endpoint`: DNS for host names, TLS when asked.
fn point_cluster_at(cluster: &mut Value, endpoint: &Endpoint, ca_file: &str) -> Result<()> {
    let is_ip = endpoint.host.parse::<IpAddr>().is_ok();
    set_field(
        cluster,
        "",
        "type",
        json!(if is_ip { "STATIC" } else { "STRICT_DNS" }),
    )?;
    if !is_ip {
        set_field(cluster, "", "dns_lookup_family", json!("V4_PREFERRED"))?;
    }
    set_field(
        cluster,
        "/load_assignment/endpoints/0/lb_endpoints/0/endpoint",
        "address",
        socket_address(&endpoint.host, endpoint.port),
    )?;
    if endpoint.tls {
        // Envoy checks the chain against the CA bundle, and the host name only when told to.
        let transport_socket = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": endpoint.host,
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": { "filename": ca_file },
                        "match_typed_subject_alt_names": [{
                            "san_type": if is_ip { "IP_ADDRESS" } else { "DNS" },
                            "matcher": { "exact": endpoint.host },
                        }],
                    },
                },
            },
        });
        set_field(cluster, "", "transport_socket", transport_socket)?;
    }
    Ok(())
}

/// Clusters the configuration names next to a URI, as Envoy's `HttpUri` (`{uri, cluster}`):
/// jwt-authn's `remote_jwks.http_uri`, policy's `http_service.server_uri`.
fn endpoints_named_in(document: &Node) -> Result<Vec<Endpoint>> {
    let mut found: Vec<(String, String)> = Vec::new();
    document.walk(&mut |node| {
        if let (Some(Node::String(uri)), Some(Node::String(cluster))) =
            (node.get("uri"), node.get("cluster"))
        {
            found.push((cluster.clone(), uri.clone()));
        }
    });
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (cluster, uri) in found {
        let (host, port, tls) = parse_url(&uri)
            .with_context(|| format!("the URI of cluster {cluster:?} in the configuration"))?;
        let endpoint = Endpoint {
            name: cluster,
            host,
            port,
            tls,
            http2: false,
        };
        match endpoints.iter().find(|known| known.name == endpoint.name) {
            Some(known)
                if (&known.host, known.port, known.tls)
                    != (&endpoint.host, endpoint.port, endpoint.tls) =>
            {
                bail!(
                    "the configuration uses cluster {:?} for both {}:{} and {}:{}; give it with --cluster",
                    endpoint.name, known.host, known.port, endpoint.host, endpoint.port
                )
            }
            Some(_) => {}
            None => endpoints.push(endpoint),
        }
    }
    Ok(endpoints)
}

/// Clusters named by `cluster_name` (gRPC services) must be given with --cluster.
fn warn_about_unknown_clusters(document: &Node, endpoints: &[Endpoint]) {
    document.walk(&mut |node| {
        if let Some(Node::String(name)) = node.get("cluster_name") {
            if !endpoints.iter().any(|endpoint| &endpoint.name == name) {
                eprintln!(
                    "note: the configuration calls cluster {name:?}; add it with \
                     --cluster {name}=HOST:PORT,http2"
                );
            }
        }
    });
}

/// `NAME=HOST:PORT[,tls][,http2]`.
fn parse_cluster(spec: &str) -> Result<Endpoint> {
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| anyhow!("--cluster {spec:?}: expected NAME=HOST:PORT[,tls][,http2]"))?;
    let mut parts = rest.split(',');
    let (host, port) = parse_host_port(parts.next().unwrap_or_default())
        .with_context(|| format!("--cluster {spec:?}"))?;
    let mut endpoint = Endpoint {
        name: name.to_string(),
        host,
        port,
        tls: false,
        http2: false,
    };
    for option in parts {
        match option {
            "tls" => endpoint.tls = true,
            "http2" => endpoint.http2 = true,
            other => bail!("--cluster {spec:?}: unknown option {other:?} (tls, http2)"),
        }
    }
    if name.is_empty() {
        bail!("--cluster {spec:?}: the cluster needs a name");
    }
    Ok(endpoint)
}

/// `host:port` or `[v6]:port`.
fn parse_host_port(text: &str) -> Result<(String, u16)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or_else(|| anyhow!("{text:?}: expected [IPv6]:PORT"))?;
        (host, port)
    } else {
        text.rsplit_once(':')
            .ok_or_else(|| anyhow!("{text:?}: expected HOST:PORT"))?
    };
    if host.is_empty() {
        bail!("{text:?}: the host is empty");
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| anyhow!("{text:?}: {port:?} is not a port number"))?;
    Ok((host.to_string(), port))
}

/// Host, port (default by scheme) and TLS of an `http://` or `https://` URL.
fn parse_url(url: &str) -> Result<(String, u16, bool)> {
    let (rest, tls, default_port) = if let Some(rest) = url.strip_prefix("https://") {
        (rest, true, 443)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (rest, false, 80)
    } else {
        bail!("{url:?} is not an http:// or https:// URL");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        bail!("{url:?}: credentials in URLs are not supported");
    }
    let has_port = match authority.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => authority.contains(':'),
    };
    if has_port {
        let (host, port) = parse_host_port(authority)?;
        Ok((host, port, tls))
    } else {
        let host = authority.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            bail!("{url:?}: no host");
        }
        Ok((host.to_string(), default_port, tls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_host_ports() {
        assert_eq!(
            parse_url("https://issuer.example.com/.well-known/jwks.json").unwrap(),
            ("issuer.example.com".to_string(), 443, true)
        );
        assert_eq!(
            parse_url("http://authz.internal:8181").unwrap(),
            ("authz.internal".to_string(), 8181, false)
        );
        assert_eq!(
            parse_url("http://[::1]:9000/x").unwrap(),
            ("::1".to_string(), 9000, false)
        );
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("https://user:pw@host/").is_err());
        assert_eq!(
            parse_host_port("backend:8080").unwrap(),
            ("backend".to_string(), 8080)
        );
        assert!(parse_host_port("backend").is_err());
        assert!(parse_host_port("backend:http").is_err());
    }

    #[test]
    fn cluster_specs() {
        assert_eq!(
            parse_cluster("authz=10.0.0.5:9001,http2").unwrap(),
            Endpoint {
                name: "authz".into(),
                host: "10.0.0.5".into(),
                port: 9001,
                tls: false,
                http2: true
            }
        );
        assert!(parse_cluster("authz=10.0.0.5:9001,h3").is_err());
        assert!(parse_cluster("10.0.0.5:9001").is_err());
    }

    #[test]
    fn clusters_come_from_http_uris_in_the_configuration() {
        let document = Node::parse_json(
            r#"{"providers": {"a": {"remote_jwks": {"http_uri":
                {"uri": "https://issuer.example.com/jwks", "cluster": "jwks", "timeout": "5s"}}}}}"#,
        )
        .unwrap();
        assert_eq!(
            endpoints_named_in(&document).unwrap(),
            [Endpoint {
                name: "jwks".into(),
                host: "issuer.example.com".into(),
                port: 443,
                tls: true,
                http2: false
            }]
        );
        let conflicting = Node::parse_json(
            r#"[{"uri": "http://a:1", "cluster": "c"}, {"uri": "http://b:1", "cluster": "c"}]"#,
        )
        .unwrap();
        assert!(endpoints_named_in(&conflicting).is_err());
    }
}
