//! The example configs every filter ships, read back by its tests.
//!
//! Each filter ships an Envoy bootstrap (`examples/envoy/<filter>.yaml`) and an Istio
//! `WasmPlugin` (`examples/istio/<filter>.yaml`) that embed its sample configuration verbatim,
//! so that a change to the sample must be made in the shipped configs too. Every filter's tests
//! check that ([`ShippedExample`]) and run the Envoy bootstrap as written, with only the module
//! path and the ports pointed at the test's own ([`ShippedBootstrap`]).
//!
//! ```no_run
//! use wasmesh_envoy::{self as envoy, ShippedBootstrap, ShippedExample, TestServer};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let examples = std::path::Path::new("examples");
//! let shipped = ShippedExample::read(examples, "header-filter")?;
//! assert_eq!(shipped.envoy_filter_config()?.trim(), std::fs::read_to_string("config.json")?.trim());
//!
//! if !envoy::skip_requested() {
//!     let upstream = TestServer::echo()?;
//!     let envoy = ShippedBootstrap::read(examples, "header-filter")?
//!         .shipped_wasm("target/release.wasm".as_ref(), "target/tmp".as_ref())?
//!         .upstream(upstream.addr())
//!         .start()?;
//!     # drop(envoy);
//! }
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{BootstrapFormat, Envoy, EnvoyBuilder, EnvoyError};
use wasmesh_harness::build::{self, BuildError};

/// Listener port of every shipped Envoy bootstrap.
pub const SHIPPED_LISTENER_PORT: u16 = 10000;
/// Admin port of every shipped Envoy bootstrap.
pub const SHIPPED_ADMIN_PORT: u16 = 9901;
/// Port of the upstream cluster of every shipped Envoy bootstrap.
pub const SHIPPED_UPSTREAM_PORT: u16 = 8080;

/// Why a shipped example could not be read, rewritten or started.
#[derive(Debug, thiserror::Error)]
pub enum ShippedError {
    /// A shipped file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },
    /// No line of the document contains the marker.
    #[error("no line contains {marker:?}")]
    MarkerMissing {
        /// What was looked for.
        marker: String,
    },
    /// A text to rewrite does not occur exactly once in the shipped bootstrap, so the rewrite
    /// would miss or be ambiguous.
    #[error("{from:?} occurs {found} times in the shipped bootstrap, not once")]
    NotOnce {
        /// The text to rewrite.
        from: String,
        /// How many times it occurs.
        found: usize,
    },
    /// The module could not be built the way `wasmesh build` ships it.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Envoy did not start with the bootstrap.
    #[error(transparent)]
    Envoy(#[from] EnvoyError),
}

fn read(path: PathBuf) -> Result<String, ShippedError> {
    std::fs::read_to_string(&path).map_err(|source| ShippedError::Io { path, source })
}

/// Indentation of a line, in bytes of leading white space.
fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The text nested under the first line containing `marker` (the lines indented deeper than it,
/// blank lines included), dedented by their common indentation: a YAML block scalar such as the
/// JSON under `value: |`, or a nested mapping such as an Istio `pluginConfig:`.
pub fn block_under(text: &str, marker: &str) -> Result<String, ShippedError> {
    let mut lines = text.lines().skip_while(|line| !line.contains(marker));
    let header = lines.next().ok_or_else(|| ShippedError::MarkerMissing {
        marker: marker.to_string(),
    })?;
    let depth = indentation(header);
    let block: Vec<&str> = lines
        .take_while(|line| line.trim().is_empty() || indentation(line) > depth)
        .collect();
    let indent = block
        .iter()
        .filter(|line| !line.trim().is_empty())
        .map(|line| indentation(line))
        .min()
        .unwrap_or(0);
    Ok(block
        .iter()
        .map(|line| line.get(indent..).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The two configs a filter ships, as written.
#[derive(Debug, Clone)]
pub struct ShippedExample {
    /// `examples/envoy/<filter>.yaml`.
    pub envoy_yaml: String,
    /// `examples/istio/<filter>.yaml`.
    pub istio_yaml: String,
}

impl ShippedExample {
    /// Reads `envoy/<filter>.yaml` and `istio/<filter>.yaml` under `examples_dir`.
    pub fn read(examples_dir: &Path, filter: &str) -> Result<Self, ShippedError> {
        Ok(Self {
            envoy_yaml: read(examples_dir.join("envoy").join(format!("{filter}.yaml")))?,
            istio_yaml: read(examples_dir.join("istio").join(format!("{filter}.yaml")))?,
        })
    }

    /// The filter configuration embedded in the Envoy bootstrap (the block under `value: |`).
    pub fn envoy_filter_config(&self) -> Result<String, ShippedError> {
        block_under(&self.envoy_yaml, "value: |")
    }

    /// The `pluginConfig` of the Istio `WasmPlugin` (JSON is YAML: the same document as the
    /// sample configuration when it is embedded verbatim).
    pub fn istio_plugin_config(&self) -> Result<String, ShippedError> {
        block_under(&self.istio_yaml, "pluginConfig:")
    }
}

/// Writes what `wasmesh build` ships for `filter` (the release build `release_wasm` through
/// `wasm-opt`, or a plain copy where `wasm-opt` is not installed) to `<out_dir>/<filter>.wasm`.
pub fn shipped_wasm(
    release_wasm: &Path,
    out_dir: &Path,
    filter: &str,
) -> Result<PathBuf, BuildError> {
    let shipped = out_dir.join(format!("{filter}.wasm"));
    build::optimize(release_wasm, &shipped)?;
    Ok(shipped)
}

/// A filter's shipped Envoy bootstrap, rewritten to run in a test: each rewrite replaces a text
/// that must occur exactly once in the shipped file, so that everything else runs as written.
///
/// [`read`](Self::read) already frees the listener and admin ports (port 0, read back from the
/// admin interface); [`wasm`](Self::wasm), [`upstream`](Self::upstream) and
/// [`replace`](Self::replace) add the rest.
#[derive(Debug, Clone)]
pub struct ShippedBootstrap {
    filter: String,
    shipped: String,
    replacements: Vec<(String, String)>,
}

impl ShippedBootstrap {
    /// Reads `envoy/<filter>.yaml` under `examples_dir`.
    pub fn read(examples_dir: &Path, filter: &str) -> Result<Self, ShippedError> {
        let shipped = read(examples_dir.join("envoy").join(format!("{filter}.yaml")))?;
        Ok(Self {
            filter: filter.to_string(),
            shipped,
            replacements: Vec::new(),
        }
        .port(SHIPPED_LISTENER_PORT, 0)
        .port(SHIPPED_ADMIN_PORT, 0))
    }

    /// The bootstrap as shipped.
    pub fn shipped(&self) -> &str {
        &self.shipped
    }

    /// Loads `wasm` instead of the shipped `/etc/envoy/<filter>.wasm`.
    pub fn wasm(self, wasm: &Path) -> Self {
        let from = format!("filename: /etc/envoy/{}.wasm", self.filter);
        self.replace(from, format!("filename: {}", wasm.display()))
    }

    /// Loads what `wasmesh build` ships (see [`shipped_wasm`]), made from `release_wasm` in
    /// `out_dir`, instead of the shipped `/etc/envoy/<filter>.wasm`.
    pub fn shipped_wasm(self, release_wasm: &Path, out_dir: &Path) -> Result<Self, ShippedError> {
        let wasm = shipped_wasm(release_wasm, out_dir, &self.filter)?;
        Ok(self.wasm(&wasm))
    }

    /// Sends the upstream cluster's traffic to `upstream` (its port; every shipped address is
    /// 127.0.0.1).
    pub fn upstream(self, upstream: SocketAddr) -> Self {
        self.port(SHIPPED_UPSTREAM_PORT, upstream.port())
    }

    /// Replaces the shipped `port_value: <shipped>` with `port_value: <port>`.
    pub fn port(self, shipped: u16, port: u16) -> Self {
        self.replace(
            format!("port_value: {shipped}"),
            format!("port_value: {port}"),
        )
    }

    /// Replaces `from`, which must occur once in the shipped bootstrap, with `to`.
    pub fn replace(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.replacements.push((from.into(), to.into()));
        self
    }

    /// The rewritten bootstrap.
    pub fn bootstrap(&self) -> Result<String, ShippedError> {
        let mut bootstrap = self.shipped.clone();
        for (from, to) in &self.replacements {
            let found = self.shipped.matches(from.as_str()).count();
            if found != 1 {
                return Err(ShippedError::NotOnce {
                    from: from.clone(),
                    found,
                });
            }
            bootstrap = bootstrap.replace(from.as_str(), to);
        }
        Ok(bootstrap)
    }

    /// Starts Envoy with the rewritten bootstrap.
    pub fn start(&self) -> Result<Envoy, ShippedError> {
        Ok(EnvoyBuilder::new().start_with_bootstrap(&self.bootstrap()?, BootstrapFormat::Yaml)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOTSTRAP: &str = "\
static_resources:
  listeners:
  - address:
      socket_address: { address: 127.0.0.1, port_value: 10000 }
    config:
      configuration:
        value: |
          {
            \"deny\": [\"/admin\"]
          }
      vm_config:
        code: { local: { filename: /etc/envoy/f.wasm } }
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: 9901 } }
clusters:
- address: { socket_address: { address: 127.0.0.1, port_value: 8080 } }
";

    fn bootstrap() -> ShippedBootstrap {
        ShippedBootstrap {
            filter: "f".to_string(),
            shipped: BOOTSTRAP.to_string(),
            replacements: Vec::new(),
        }
        .port(SHIPPED_LISTENER_PORT, 0)
        .port(SHIPPED_ADMIN_PORT, 0)
    }

    #[test]
    fn block_under_dedents_the_nested_block_and_stops_at_the_outdent() {
        let block = block_under(BOOTSTRAP, "value: |").unwrap();
        assert_eq!(block, "{\n  \"deny\": [\"/admin\"]\n}");
        assert!(matches!(
            block_under(BOOTSTRAP, "pluginConfig:"),
            Err(ShippedError::MarkerMissing { .. })
        ));
    }

    #[test]
    fn the_bootstrap_points_the_module_and_ports_at_the_test() {
        let rewritten = bootstrap()
            .wasm(Path::new("/tmp/built.wasm"))
            .upstream(SocketAddr::from(([127, 0, 0, 1], 4242)))
            .bootstrap()
            .unwrap();
        assert!(rewritten.contains("filename: /tmp/built.wasm"));
        assert_eq!(rewritten.matches("port_value: 0").count(), 2);
        assert!(rewritten.contains("port_value: 4242"));
        assert!(!rewritten.contains("/etc/envoy"));
    }

    #[test]
    fn a_rewrite_that_misses_or_is_ambiguous_is_an_error() {
        let missing = bootstrap().replace("port_value: 8443", "x").bootstrap();
        assert!(matches!(
            missing,
            Err(ShippedError::NotOnce { found: 0, .. })
        ));
        let ambiguous = bootstrap().replace("address: 127.0.0.1", "x").bootstrap();
        assert!(matches!(
            ambiguous,
            Err(ShippedError::NotOnce { found: 3, .. })
        ));
    }
}
