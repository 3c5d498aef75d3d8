//! `wasmesh istio-config`: an Istio `WasmPlugin` for one filter and its configuration.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use wasmesh_harness::build::sha256_hex;

use crate::envoy_config::FilterConfigArgs;
use crate::filters::IstioPhase;
use crate::oci;
use crate::registry;
use crate::run::FailurePolicyArg;
use crate::yaml::{self, Node};

/// Integers beyond this lose precision in `pluginConfig`, a protobuf `Struct` of doubles.
const LARGEST_EXACT_INTEGER: u64 = 1 << 53;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: FilterConfigArgs,

    /// The module's URL: an OCI image (`oci://host/repo:tag`, or `@sha256:...`; the default
    /// scheme), or `https://`, `http://`, `file://` for a plain .wasm.
    #[arg(long)]
    image: String,

    /// The pin Istio checks: for an OCI image the manifest digest `wasmesh push` printed
    /// (`sha256:<hex>` or `<hex>`); for a plain .wasm its sha256 (or give --wasm).
    #[arg(long)]
    sha256: Option<String>,

    /// The module, to compute the sha256 of a plain .wasm URL (not of an OCI image: Istio checks
    /// the manifest digest there).
    #[arg(long)]
    wasm: Option<PathBuf>,

    /// metadata.name (default: the filter name).
    #[arg(long)]
    name: Option<String>,

    /// metadata.namespace (omitted by default: kubectl's current namespace). In Istio's root
    /// namespace (istio-system) without --selector, the plugin applies to every workload.
    #[arg(long)]
    namespace: Option<String>,

    /// Workload label the plugin applies to, KEY=VALUE (repeatable; default: every workload
    /// of the namespace).
    #[arg(long = "selector")]
    selectors: Vec<String>,

    /// Where in the filter chain (default: the filter's usual place).
    #[arg(long, value_enum)]
    phase: Option<IstioPhase>,

    /// Order among plugins of the same phase (higher runs first).
    #[arg(long)]
    priority: Option<i32>,

    /// Traffic the plugin applies to: client (outbound), server (inbound) or both.
    #[arg(long, value_enum)]
    match_mode: Option<MatchMode>,

    /// Port the plugin applies to (repeatable).
    #[arg(long = "match-port")]
    match_ports: Vec<u16>,

    /// imagePullPolicy.
    #[arg(long, value_enum, default_value_t = PullPolicy::IfNotPresent)]
    image_pull_policy: PullPolicy,

    /// imagePullSecret: a docker-registry Secret in the plugin's namespace.
    #[arg(long)]
    image_pull_secret: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MatchMode {
    #[value(name = "client")]
    Client,
    #[value(name = "server")]
    Server,
    #[value(name = "client-and-server")]
    ClientAndServer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PullPolicy {
    #[value(name = "IfNotPresent")]
    IfNotPresent,
    #[value(name = "Always")]
    Always,
}

pub fn run(args: &Args) -> Result<()> {
    let config = args.common.checked_config()?;
    let (url, sha256) = url_and_sha256(args)?;
    if sha256.is_none() {
        eprintln!(
            "warning: no sha256: Istio will run whatever {url} points to at pull time; pass \
             --sha256 with the digest `wasmesh push` printed"
        );
    }
    if !matches!(config.document, Node::Object(_)) {
        bail!(
            "{}: Istio's pluginConfig is a JSON object (a protobuf Struct); this configuration is not one",
            args.common.config.display()
        );
    }
    warn_about_inexact_numbers(&config.document);

    let mut metadata = vec![(
        "name".to_string(),
        Node::String(args.name.clone().unwrap_or_else(|| config.name.clone())),
    )];
    if let Some(namespace) = &args.namespace {
        metadata.push(("namespace".to_string(), Node::String(namespace.clone())));
    }

    let mut spec: Vec<(String, Node)> = Vec::new();
    if !args.selectors.is_empty() {
        let labels = args
            .selectors
            .iter()
            .map(|selector| {
                let (key, value) = selector
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--selector {selector:?}: expected KEY=VALUE"))?;
                Ok((key.to_string(), Node::String(value.to_string())))
            })
            .collect::<Result<Vec<_>>>()?;
        spec.push((
            "selector".to_string(),
            Node::Object(vec![("matchLabels".to_string(), Node::Object(labels))]),
        ));
    }
    spec.push(("url".to_string(), Node::String(url)));
    if let Some(sha256) = sha256 {
        spec.push(("sha256".to_string(), Node::String(sha256)));
    }
    spec.push((
        "imagePullPolicy".to_string(),
        Node::String(
            match args.image_pull_policy {
                PullPolicy::IfNotPresent => "IfNotPresent",
                PullPolicy::Always => "Always",
            }
            .to_string(),
        ),
    ));
    if let Some(secret) = &args.image_pull_secret {
        spec.push(("imagePullSecret".to_string(), Node::String(secret.clone())));
    }
    let phase = args
        .phase
        .or(config.filter.map(|filter| filter.istio_phase))
        .unwrap_or(IstioPhase::Unspecified);
    if let Some(phase) = phase.as_istio_str() {
        spec.push(("phase".to_string(), Node::String(phase.to_string())));
    }
    if let Some(priority) = args.priority {
        spec.push(("priority".to_string(), Node::Number(priority.into())));
    }
    spec.push((
        "failStrategy".to_string(),
        Node::String(
            match args.common.failure_policy {
                FailurePolicyArg::Closed => "FAIL_CLOSE",
                FailurePolicyArg::Open => "FAIL_OPEN",
                // Istio 1.27 and later.
                FailurePolicyArg::Reload => "FAIL_RELOAD",
            }
            .to_string(),
        ),
    ));
    if args.match_mode.is_some() || !args.match_ports.is_empty() {
        let mut rule = Vec::new();
        if let Some(mode) = args.match_mode {
            let mode = match mode {
                MatchMode::Client => "CLIENT",
                MatchMode::Server => "SERVER",
                MatchMode::ClientAndServer => "CLIENT_AND_SERVER",
            };
            rule.push(("mode".to_string(), Node::String(mode.to_string())));
        }
        if !args.match_ports.is_empty() {
            let ports = args
                .match_ports
                .iter()
                .map(|port| {
                    Node::Object(vec![("number".to_string(), Node::Number((*port).into()))])
                })
                .collect();
            rule.push(("ports".to_string(), Node::Array(ports)));
        }
        spec.push(("match".to_string(), Node::Array(vec![Node::Object(rule)])));
    }
    if matches!(&config.document, Node::Object(entries) if !entries.is_empty()) {
        spec.push(("pluginConfig".to_string(), config.document.clone()));
    }
    if config
        .filter
        .is_some_and(|filter| filter.buffers_request_body)
    {
        eprintln!(
            "note: a WasmPlugin cannot set Envoy's allow_on_headers_stop_iteration: options that \
             buffer the request body before deciding do not work through Istio"
        );
    }

    let resource = Node::Object(vec![
        (
            "apiVersion".to_string(),
            Node::String("extensions.istio.io/v1alpha1".to_string()),
        ),
        ("kind".to_string(), Node::String("WasmPlugin".to_string())),
        ("metadata".to_string(), Node::Object(metadata)),
        ("spec".to_string(), Node::Object(spec)),
    ]);
    let header = format!(
        "# Istio WasmPlugin for the wasmesh {} filter, generated by `wasmesh istio-config`.\n\
         # pluginConfig is {}; Istio hands it to the filter as JSON.\n\
         # Apply: kubectl apply -f <this file>\n",
        config.name,
        args.common
            .config
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    args.common.emit(&(header + &yaml::to_yaml(&resource)))
}

/// The URL to put in the resource and the sha256 Istio checks it against (hex, no prefix).
fn url_and_sha256(args: &Args) -> Result<(String, Option<String>)> {
    let given = args.sha256.as_deref().map(normalize_sha256).transpose()?;
    let is_plain = ["https://", "http://", "file://"]
        .iter()
        .any(|scheme| args.image.starts_with(scheme));
    if is_plain {
        let from_file = match &args.wasm {
            Some(path) => {
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                if !oci::is_wasm(&bytes) {
                    bail!("{} is not a WebAssembly binary", path.display());
                }
                Some(sha256_hex(&bytes))
            }
            None => None,
        };
        if let (Some(given), Some(computed)) = (&given, &from_file) {
            if given != computed {
                bail!("--sha256 {given} is not the sha256 of the module given with --wasm ({computed})");
            }
        }
        return Ok((args.image.clone(), given.or(from_file)));
    }

    let reference = registry::parse_reference(&args.image)?;
    if args.wasm.is_some() {
        bail!(
            "for an OCI image, WasmPlugin.sha256 is the manifest digest (what `wasmesh push` \
             prints), not the module's sha256: pass --sha256 instead of --wasm"
        );
    }
    let pinned = reference.digest().map(normalize_sha256).transpose()?;
    if let (Some(given), Some(pinned)) = (&given, &pinned) {
        if given != pinned {
            bail!("--sha256 {given} differs from the digest in --image ({pinned})");
        }
    }
    let url = format!(
        "oci://{}",
        args.image.strip_prefix("oci://").unwrap_or(&args.image)
    );
    Ok((url, given.or(pinned)))
}

/// `sha256:<hex>` or `<hex>` to lower-case `<hex>`, checked.
fn normalize_sha256(text: &str) -> Result<String> {
    let hex = text
        .strip_prefix("sha256:")
        .unwrap_or(text)
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        bail!("{text:?} is not a sha256 digest (64 hex digits, optionally prefixed with sha256:)");
    }
    Ok(hex)
}

fn warn_about_inexact_numbers(document: &Node) {
    document.walk(&mut |node| {
        if let Node::Number(number) = node {
            let too_large = number
                .as_u64()
                .map(|value| value > LARGEST_EXACT_INTEGER)
                .or_else(|| {
                    number
                        .as_i64()
                        .map(|value| value.unsigned_abs() > LARGEST_EXACT_INTEGER)
                })
                .unwrap_or(false);
            if too_large {
                eprintln!(
                    "warning: {number} cannot be represented exactly in pluginConfig (a protobuf \
                     Struct holds doubles); write it as a string if the filter accepts one"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_digests_are_normalized() {
        let hex = "AB".repeat(32);
        assert_eq!(
            normalize_sha256(&format!("sha256:{hex}")).unwrap(),
            "ab".repeat(32)
        );
        assert!(normalize_sha256("sha256:abc").is_err());
        assert!(normalize_sha256(&"g".repeat(64)).is_err());
    }
}
