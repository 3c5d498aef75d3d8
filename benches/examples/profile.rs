//! Runs one benchmark scenario many times, for a profiler: callgrind counts instructions, which
//! stays stable on a noisy machine where wall-clock time does not.
//!
//! ```text
//! CARGO_PROFILE_RELEASE_STRIP=false cargo build --release -p wasmesh-benches --example profile
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*profile*measured*' \
//!     target/release/examples/profile wasm "no-op/pass" 1000
//! callgrind_annotate callgrind.out.<pid> | head -60
//! ```
//!
//! * `profile native|wasm <filter/case> <requests>`: 100 warm-up requests (caches fill, the
//!   module is compiled), then `<requests>` requests inside [`measured`], the function to give
//!   `--toggle-collect` so that only they are counted. A scenario id is `filter/case`, as the
//!   `filters` bench names it; `profile list` prints them all. `noop-native` and `noop-wasm`
//!   run the scenario's requests through the no-op filter instead (its baseline).
//! * `profile load <package> <times>`: loads the package's module from the harness's compile
//!   cache `<times>` times (inside [`measured`] too).
//! * `profile hostcalls <filter/case> <requests>`: the hostcalls the wasm module makes per
//!   request, by name (each one a VM exit in Envoy), after the warm-up requests.
//!
//! `WASMESH_PROFILE_MODULE=<path>` loads another build of the scenario's module, e.g. one built
//! with `CARGO_PROFILE_RELEASE_STRIP=false`, whose name section names the JIT frames in a
//! wasmtime perf map. `benches/instructions.sh` runs every scenario this way and prints the
//! instructions-per-request table of BENCHMARKS.md.

use std::path::Path;
use std::process::ExitCode;

use wasmesh_benches::{scenarios, BenchError, Verdict};

/// Loads this module instead of the package's release build.
const MODULE_OVERRIDE: &str = "WASMESH_PROFILE_MODULE";

/// Requests run before the measured ones.
const WARM_UP: usize = 100;

/// Runs `work` `times` times; the only code a `--toggle-collect='*profile*measured*'` profile
/// counts.
#[inline(never)]
fn measured(
    times: usize,
    mut work: impl FnMut() -> Result<(), BenchError>,
) -> Result<(), BenchError> {
    for _ in 0..times {
        work()?;
    }
    Ok(())
}

fn run(mode: &str, id: &str, requests: usize) -> Result<(), BenchError> {
    let all = scenarios::all()?;
    let Some(scenario) = all.iter().find(|scenario| scenario.id() == id) else {
        let ids: Vec<String> = all.iter().map(|scenario| scenario.id()).collect();
        return Err(BenchError(format!(
            "no scenario {id:?}; scenarios: {}",
            ids.join(", ")
        )));
    };
    // `noop-native` / `noop-wasm`: the scenario's requests through the no-op filter.
    let (mode, baseline) = match mode.strip_prefix("noop-") {
        Some(mode) => (mode, Some(scenarios::baseline(scenario))),
        None => (mode, None),
    };
    let scenario = baseline.as_ref().unwrap_or(scenario);
    let mut once: Box<dyn FnMut() -> Result<Verdict, BenchError>> = match mode {
        "native" => {
            let mut native = scenario.native()?;
            Box::new(move || Ok(native.run_once()))
        }
        "wasm" => {
            let mut wasm = match std::env::var_os(MODULE_OVERRIDE) {
                Some(path) => scenario.wasm_from(Path::new(&path))?,
                None => scenario.wasm()?,
            };
            Box::new(move || wasm.run_once())
        }
        other => {
            return Err(BenchError(format!(
                "mode must be native, wasm, noop-native, noop-wasm or load, not {other:?}"
            )))
        }
    };
    scenario.check(WARM_UP, &mut once)?;
    measured(requests, || scenario.check(1, &mut once))?;
    eprintln!(
        "{id} ({mode}): {requests} requests, every verdict {:?}",
        scenario.expect
    );
    Ok(())
}

/// Prints the hostcalls per request of the scenario's wasm module, by name.
fn hostcalls(id: &str, requests: usize) -> Result<(), BenchError> {
    let all = scenarios::all()?;
    let Some(scenario) = all.iter().find(|scenario| scenario.id() == id) else {
        return Err(BenchError(format!("no scenario {id:?}")));
    };
    let mut wasm = match std::env::var_os(MODULE_OVERRIDE) {
        Some(path) => scenario.wasm_from(Path::new(&path))?,
        None => scenario.wasm()?,
    };
    scenario.check(WARM_UP, || wasm.run_once())?;
    let total = wasm.hostcalls_per_request(requests)?;
    println!("{id}: {total:.2} hostcalls per request");
    for (name, count) in wasm.plugin().hostcall_counts() {
        println!("  {name}: {:.2}", count as f64 / requests.max(1) as f64);
    }
    Ok(())
}

/// Loads the release build of `package` `times` times from the harness's module cache.
fn load(package: &str, times: usize) -> Result<(), BenchError> {
    let bytes = std::fs::read(wasmesh_harness::build::wasm(package)?)?;
    wasmesh_harness::Harness::from_bytes(&bytes)?;
    measured(times, || {
        if wasmesh_harness::Harness::from_bytes(&bytes)?.from_cache() {
            Ok(())
        } else {
            Err(BenchError(format!("{package} was compiled again")))
        }
    })?;
    eprintln!("{package}: loaded {times} times from the cache");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [list] if list == "list" => scenarios::all().map(|all| {
            for scenario in all {
                println!("{}", scenario.id());
            }
        }),
        [mode, id, count] => match count.parse::<usize>() {
            Ok(count) if mode == "load" => load(id, count),
            Ok(count) if mode == "hostcalls" => hostcalls(id, count),
            Ok(count) => run(mode, id, count),
            Err(_) => Err(BenchError(format!("not a number: {count:?}"))),
        },
        _ => {
            eprintln!("usage: profile native|wasm|noop-native|noop-wasm <filter/case> <requests>");
            eprintln!("       profile load <package> <times>");
            eprintln!("       profile hostcalls <filter/case> <requests>");
            eprintln!("       profile list");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}
