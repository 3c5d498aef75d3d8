//! `wasmesh`: build proxy-wasm filters and run HTTP exchanges through them off-proxy.
//!
//! Each subcommand lives in its own module with an `Args` struct (clap) and a `run` function;
//! a new subcommand (bench, validate, push/pull, envoy-config) is one more module and one more
//! variant of [`Command`].

mod build;
mod exchange;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build proxy-wasm filters and run HTTP exchanges through them off-proxy.
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(args) => build::run(&args),
        Command::Run(args) => run::run(&args),
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
