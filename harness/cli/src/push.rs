//! `wasmesh push`: publishes a filter module to an OCI registry.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use wasmesh_harness::build::sha256_hex;
use wasmesh_harness::{AbiVersion, Harness};

use crate::oci::{self, Format, ModuleInfo};
use crate::registry::{self, ConnectionArgs, Registry};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The filter module (e.g. dist/rbac.wasm).
    wasm: PathBuf,

    /// Where to push it: oci://HOST[:PORT]/REPOSITORY:TAG.
    reference: String,

    /// Image layout: `oci` (Wasm OCI variant) and `compat`/`compat-docker` (one tar.gz layer
    /// holding plugin.wasm) are what Istio pulls; `cncf` is the CNCF Wasm artifact layout.
    #[arg(long, value_enum, default_value_t = Format::Oci)]
    format: Format,

    /// Root id the module serves, recorded in the runtime config (repeatable; none by default:
    /// wasmesh filters serve any root id).
    #[arg(long = "root-id")]
    root_ids: Vec<String>,

    #[command(flatten)]
    connection: ConnectionArgs,
}

pub fn run(args: &Args) -> Result<()> {
    let wasm =
        std::fs::read(&args.wasm).with_context(|| format!("reading {}", args.wasm.display()))?;
    if !oci::is_wasm(&wasm) {
        bail!("{} is not a WebAssembly binary", args.wasm.display());
    }
    // Loading it in the harness proves it is a proxy-wasm module and tells its ABI.
    let abi = Harness::from_bytes(&wasm)
        .with_context(|| {
            format!(
                "{} is not a loadable proxy-wasm module",
                args.wasm.display()
            )
        })?
        .abi_version();
    let module = ModuleInfo {
        abi_version: match abi {
            AbiVersion::V0_2_0 => "proxy_abi_version_0_2_0",
            AbiVersion::V0_2_1 => "proxy_abi_version_0_2_1",
        }
        .to_string(),
        root_ids: args.root_ids.clone(),
    };
    let reference = registry::parse_reference(&args.reference)?;
    if reference.digest().is_some() {
        bail!("push to a tag (oci://host/repository:tag), not to a digest");
    }
    let image = oci::build(args.format, &wasm, &module, oci::source_date_epoch()?)?;
    let registry = Registry::connect(&args.connection)?;
    let digest = registry.push(&reference, &image)?;

    let hex = digest.strip_prefix("sha256:").unwrap_or(&digest);
    eprintln!(
        "pushed {} ({} bytes, module sha256 {}, {}) as oci://{}",
        args.wasm.display(),
        wasm.len(),
        sha256_hex(&wasm),
        match args.format {
            Format::Oci => "Wasm OCI variant",
            Format::Compat => "compat variant, OCI manifest",
            Format::CompatDocker => "compat variant, Docker manifest",
            Format::Cncf => "CNCF Wasm artifact; Istio cannot pull this layout",
        },
        reference.whole(),
    );
    eprintln!("manifest digest {digest}; in a WasmPlugin: sha256: {hex}");
    // stdout carries the digest alone, for scripts: `--sha256 "$(wasmesh push ...)"`.
    println!("{digest}");
    Ok(())
}
