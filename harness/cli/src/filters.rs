//! The filters the CLI knows by name: ONE table mapping a filter's name to its own configuration
//! parser (compiled natively from the filter crate) and to how it is deployed.
//!
//! `validate`, `envoy-config` and `istio-config` read this table and nothing else, so adding a
//! filter is one line in [`FILTERS`] (and one dependency of this crate).

use serde::Deserialize;
use wasmesh_sdk::adapter::{configure, HttpFilter};
use wasmesh_sdk::config::{load, ConfigError, Validate};
use wasmesh_sdk::error::Error;
use wasmesh_sdk::testing::MemoryHost;

/// Where Istio inserts a `WasmPlugin` in the filter chain (`WasmPlugin.phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IstioPhase {
    /// End of the chain, right before the router (`UNSPECIFIED_PHASE`).
    #[value(name = "unspecified")]
    Unspecified,
    /// Before Istio's authentication filters.
    #[value(name = "authn")]
    Authn,
    /// After authentication, before Istio's authorization filters.
    #[value(name = "authz")]
    Authz,
    /// After authorization, before Istio's stats filters.
    #[value(name = "stats")]
    Stats,
}

impl IstioPhase {
    /// The enum value in a `WasmPlugin`; `None` for the default (the field is then omitted).
    pub fn as_istio_str(self) -> Option<&'static str> {
        match self {
            Self::Unspecified => None,
            Self::Authn => Some("AUTHN"),
            Self::Authz => Some("AUTHZ"),
            Self::Stats => Some("STATS"),
        }
    }
}

/// Why a filter refused a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The configuration is invalid at a JSON path (as the filter logs it in `on_configure`).
    Config(ConfigError),
    /// The configuration parsed, but the filter could not be built from it.
    Other(String),
}

/// A filter the CLI knows.
#[derive(Debug, Clone, Copy)]
pub struct FilterInfo {
    /// The filter's folder name under `filters/` or `examples/`, as `wasmesh build` names it.
    pub name: &'static str,
    /// Its cargo package.
    pub package: &'static str,
    /// The `WasmPlugin.phase` it belongs in by default.
    pub istio_phase: IstioPhase,
    /// Whether Envoy must keep feeding it the body while it holds the request headers
    /// (`allow_on_headers_stop_iteration`): filters that buffer the body before deciding.
    pub buffers_request_body: bool,
    /// Exactly what the filter's `on_configure` does: parse, validate, build the filter.
    pub check: fn(&[u8]) -> Result<(), Rejection>,
    /// Only the parsing (JSON syntax, field names, types, per-value rules), without the
    /// whole-document `Validate` checks: `validate` finds every parse error by skipping the bad
    /// values one by one.
    pub structure: fn(&[u8]) -> Result<(), ConfigError>,
}

/// Every filter of the workspace.
pub const FILTERS: &[FilterInfo] = &[
    entry::<wasmesh_fault::FaultFilter>("fault", "wasmesh-fault", IstioPhase::Unspecified, false),
    entry::<wasmesh_example_header_filter::HeaderFilter>(
        "header-filter",
        "wasmesh-example-header-filter",
        IstioPhase::Authz,
        false,
    ),
    entry::<wasmesh_jwt_authn::JwtAuthn>(
        "jwt-authn",
        "wasmesh-jwt-authn",
        IstioPhase::Authn,
        false,
    ),
    entry::<wasmesh_policy::Policy>("policy", "wasmesh-policy", IstioPhase::Authz, true),
    entry::<wasmesh_rate_limit::RateLimitFilter>(
        "rate-limit",
        "wasmesh-rate-limit",
        IstioPhase::Authz,
        false,
    ),
    entry::<wasmesh_rbac::RbacFilter>("rbac", "wasmesh-rbac", IstioPhase::Authz, false),
    entry::<wasmesh_telemetry::Telemetry>(
        "telemetry",
        "wasmesh-telemetry",
        IstioPhase::Stats,
        false,
    ),
];

const fn entry<F: HttpFilter>(
    name: &'static str,
    package: &'static str,
    istio_phase: IstioPhase,
    buffers_request_body: bool,
) -> FilterInfo {
    FilterInfo {
        name,
        package,
        istio_phase,
        buffers_request_body,
        check: check::<F>,
        structure: structure::<F::Config>,
    }
}

/// The filter's own configuration path: `wasmesh_sdk::adapter::configure`, which the glue's
/// `on_configure` calls, against an in-memory host.
fn check<F: HttpFilter>(bytes: &[u8]) -> Result<(), Rejection> {
    let mut host = MemoryHost::new();
    match configure::<F>(bytes, &mut host) {
        Ok(_) => Ok(()),
        Err(Error::Config(error)) => Err(Rejection::Config(error)),
        Err(other) => Err(Rejection::Other(other.to_string())),
    }
}

/// The configuration type without its semantic checks, loaded by the SDK's own loader so that
/// messages and paths read exactly as the filter's.
#[derive(Deserialize)]
#[serde(transparent)]
struct Structure<T>(#[allow(dead_code)] T);

impl<T> Validate for Structure<T> {}

fn structure<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<(), ConfigError> {
    load::<Structure<T>>(bytes).map(drop)
}

/// The filter called `name` (folder or package name).
pub fn find(name: &str) -> Option<&'static FilterInfo> {
    FILTERS
        .iter()
        .find(|filter| filter.name == name || filter.package == name)
}

/// The filter called `name`, or an error listing the known names.
pub fn lookup(name: &str) -> anyhow::Result<&'static FilterInfo> {
    find(name).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown filter {name:?}; known filters: {}",
            FILTERS
                .iter()
                .map(|filter| filter.name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_package_of_the_workspace_is_in_the_table() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .nth(2)
            .unwrap()
            .to_path_buf();
        let mut folders: Vec<String> = std::fs::read_dir(root.join("filters"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| root.join("filters").join(name).join("Cargo.toml").is_file())
            .collect();
        folders.push("header-filter".to_string());
        folders.sort();
        let names: Vec<&str> = FILTERS.iter().map(|filter| filter.name).collect();
        assert_eq!(names, folders);
    }

    #[test]
    fn check_runs_the_filters_own_parser_with_json_paths() {
        let header_filter = lookup("header-filter").unwrap();
        assert_eq!(
            (header_filter.check)(br#"{"deny": [{"prefix": "/admin"}]}"#),
            Ok(())
        );
        let Err(Rejection::Config(error)) = (header_filter.check)(br#"{"deny_status": 99}"#) else {
            panic!("a status below 200 must be rejected");
        };
        assert_eq!(error.path(), "deny_status");

        // The structural pass skips the whole-document checks, not the types.
        assert_eq!((header_filter.structure)(br#"{"deny_status": 99}"#), Ok(()));
        let error = (header_filter.structure)(br#"{"deny": [{"prefix": 7}]}"#).unwrap_err();
        assert_eq!(error.path(), "deny[0].prefix");
    }

    #[test]
    fn lookup_accepts_folder_and_package_names_and_lists_known_ones() {
        assert_eq!(lookup("wasmesh-rbac").unwrap().name, "rbac");
        let error = lookup("rbca").unwrap_err().to_string();
        assert!(
            error.contains(
                "unknown filter \"rbca\"; known filters: fault, header-filter, jwt-authn"
            ),
            "{error}"
        );
    }
}
