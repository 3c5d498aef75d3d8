//! `wasmesh`: build proxy-wasm filters, run HTTP exchanges through them off-proxy, check their
//! configurations, publish them to OCI registries and generate Envoy and Istio configs.
//!
//! Each subcommand lives in its own module with an `Args` struct (clap) and a `run` function;
//! a new subcommand is one more module and one more variant of [`Command`].

mod build;
mod envoy_config;
mod exchange;
mod filters;
mod istio_config;
mod oci;
mod pull;
mod push;
mod race;
mod registry;
mod run;
mod test;
mod validate;
mod yaml;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build, run, check, publish and deploy proxy-wasm filters.
#[derive(Debug, Parser)]
#[command(name = "wasmesh", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build filters to wasm32-wasip1 into dist/ (optimized with wasm-opt when installed).
    Build(build::Args),
    /// Run one HTTP exchange through a filter in the harness and print what happened as JSON.
    Run(run::Args),
    /// Run scenario files under the harness (and with --envoy, under a real Envoy too).
    Test(test::Args),
    /// Check a filter configuration with the filter's own parser (and, with --wasm, the module).
    Validate(validate::Args),
    /// Publish a filter module to an OCI registry; prints the manifest digest.
    Push(push::Args),
    /// Fetch a filter module from an OCI registry, verifying its digests.
    Pull(pull::Args),
    /// Generate a ready-to-run Envoy bootstrap for a filter and its configuration.
    EnvoyConfig(envoy_config::Args),
    /// Generate an Istio WasmPlugin for a filter and its configuration.
    IstioConfig(istio_config::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Test(args) => match test::run(&args) {
            // Failed scenarios were reported on stdout.
            Ok(false) => return ExitCode::FAILURE,
            other => other.map(drop),
        },
        Command::Build(args) => build::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Validate(args) => validate::run(&args),
        Command::Push(args) => push::run(&args),
        Command::Pull(args) => pull::run(&args),
        Command::EnvoyConfig(args) => envoy_config::run(&args),
        Command::IstioConfig(args) => istio_config::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole context chain on one line: "reading R.json: No such file".
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
