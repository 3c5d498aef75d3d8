//! Runs one benchmark scenario many times, for a profiler (callgrind counts instructions, which
//! stays stable on a noisy machine where wall-clock time does not):
//!
//! ```text
//! cargo build --release -p wasmesh-benches --example profile
//! valgrind --tool=callgrind --callgrind-out-file=callgrind.out \
//!     target/release/examples/profile wasm "no-op/pass" 10000
//! callgrind_annotate callgrind.out | head -60
//! ```
//!
//! `profile load <package> <times>` loads a module from the harness's compile cache instead.
//!
//! Arguments: `native` or `wasm`, a scenario id (`filter/case`, as `cargo bench` names it), and
//! the number of requests (after 100 warm-up requests, also run under the profiler: use
//! `--collect-atstart=no --toggle-collect='*WasmRun*run_once*'` to count only the requests, on
//! a build with symbols: `CARGO_PROFILE_RELEASE_STRIP=false`). `WASMESH_PROFILE_MODULE=<path>`
//! loads another build of the module (one that keeps its name section, for JIT frame names).

use std::process::ExitCode;

use wasmesh_benches::{scenarios, BenchError, Verdict};

/// Loads this module instead of the package's release build: e.g. one built with
/// `CARGO_PROFILE_RELEASE_STRIP=false`, whose name section gives JIT frames their function names
/// (with a wasmtime perf map).
const MODULE_OVERRIDE: &str = "WASMESH_PROFILE_MODULE";

fn run(mode: &str, id: &str, requests: usize) -> Result<(), BenchError> {
    let all = scenarios::all()?;
    let Some(scenario) = all.iter().find(|scenario| scenario.id() == id) else {
        let ids: Vec<String> = all.iter().map(|scenario| scenario.id()).collect();
        return Err(BenchError(format!(
            "no scenario {id:?}; scenarios: {}",
            ids.join(", ")
        )));
    };
    let mut once: Box<dyn FnMut() -> Result<Verdict, BenchError>> = match mode {
        "native" => {
            let mut native = scenario.native()?;
            Box::new(move || Ok(native.run_once()))
        }
        "wasm" => {
            let mut wasm = match std::env::var_os(MODULE_OVERRIDE) {
                Some(path) => scenario.wasm_from(std::path::Path::new(&path))?,
                None => scenario.wasm()?,
            };
            Box::new(move || wasm.run_once())
        }
        other => {
            return Err(BenchError(format!(
                "mode must be native or wasm, not {other:?}"
            )))
        }
    };
    scenario.check(100, &mut once)?;
    scenario.check(requests, &mut once)?;
    eprintln!(
        "{id} ({mode}): {requests} requests, every verdict {:?}",
        scenario.expect
    );
    Ok(())
}

/// Loads the release build of `package` `times` times from the harness's module cache.
fn load(package: &str, times: usize) -> Result<(), BenchError> {
    let bytes = std::fs::read(wasmesh_harness::build::wasm(package)?)?;
    wasmesh_harness::Harness::from_bytes(&bytes)?;
    for _ in 0..times {
        if !wasmesh_harness::Harness::from_bytes(&bytes)?.from_cache() {
            return Err(BenchError(format!("{package} was compiled again")));
        }
    }
    eprintln!("{package}: loaded {times} times from the cache");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, id, requests] = args.as_slice() else {
        eprintln!("usage: profile native|wasm <filter/case> <requests>");
        eprintln!("       profile load <package> <times>");
        return ExitCode::from(2);
    };
    let Ok(requests) = requests.parse::<usize>() else {
        eprintln!("requests must be a number, not {requests:?}");
        return ExitCode::from(2);
    };
    let result = match mode.as_str() {
        "load" => load(id, requests),
        _ => run(mode, id, requests),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}
