#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::time::Instant;
use wasmesh_benches::scenarios;
#[test]
fn timing() {
    for scenario in scenarios::all().unwrap() {
        let t = Instant::now();
        let _ = wasmesh_harness::build::wasm(scenario.package).unwrap();
        let t_build = t.elapsed();
        let t = Instant::now();
        let mut native = scenario.native().unwrap();
        let t_nconf = t.elapsed();
        let t = Instant::now();
        scenario.check(4, || Ok(native.run_once())).unwrap();
        let t_native = t.elapsed();
        let t = Instant::now();
        let mut wasm = scenario.wasm().unwrap();
        let t_start = t.elapsed();
        let t = Instant::now();
        scenario.check(4, || wasm.run_once()).unwrap();
        let t_wasm = t.elapsed();
        eprintln!("{:50} build {:?} nconf {:?} native {:?} start {:?} wasm {:?}", scenario.id(), t_build, t_nconf, t_native, t_start, t_wasm);
    }
}
