//! `wasmesh pull`: fetches a filter module from an OCI registry, verifying every digest.

use std::path::PathBuf;

use anyhow::{Context, Result};
use wasmesh_harness::build::sha256_hex;

use crate::registry::{self, ConnectionArgs, Registry};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image: oci://HOST[:PORT]/REPOSITORY:TAG (or @sha256:DIGEST to pin it).
    reference: String,

    /// Where to write the module.
    #[arg(short = 'o', long)]
    output: PathBuf,

    #[command(flatten)]
    connection: ConnectionArgs,
}

pub fn run(args: &Args) -> Result<()> {
    let reference = registry::parse_reference(&args.reference)?;
    let registry = Registry::connect(&args.connection)?;
    let pulled = registry.pull(&reference)?;

    // Written beside the target then renamed: a failed pull never leaves half a module.
    let partial = args.output.with_extension("wasm.partial");
    std::fs::write(&partial, &pulled.wasm)
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &args.output)
        .with_context(|| format!("moving {} to {}", partial.display(), args.output.display()))?;

    eprintln!(
        "pulled oci://{} ({} layout, manifest {}) to {} ({} bytes, sha256 {})",
        reference.whole(),
        pulled.format.name(),
        pulled.digest,
        args.output.display(),
        pulled.wasm.len(),
        sha256_hex(&pulled.wasm),
    );
    println!("{}", pulled.digest);
    Ok(())
}
