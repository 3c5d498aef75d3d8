#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Replays the corpus kept by the `hostcalls` fuzz target (`fuzz/corpus/hostcalls/`) with the
//! fuzzer's own interpreter module and driver (`fuzz/src/hostcalls.rs`), so that every program
//! the fuzzer found interesting keeps running in `cargo test` (stable toolchain, no libFuzzer):
//! hostcalls with arbitrary pointers, lengths and values from every callback must end in typed
//! errors, never a host panic or hang.

// Only part of the fuzzer support is used here.
#[allow(dead_code)]
#[path = "../../fuzz/src/hostcalls.rs"]
mod hostcalls;

#[test]
fn every_program_of_the_hostcall_fuzz_corpus_runs_without_crashing_the_host() {
    let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/hostcalls");
    let mut programs: Vec<_> = std::fs::read_dir(directory)
        .expect("the hostcall fuzz corpus is committed")
        .map(|entry| entry.unwrap().path())
        .collect();
    programs.sort();
    assert!(!programs.is_empty());
    for program in &programs {
        hostcalls::run_program(&std::fs::read(program).unwrap());
    }
}

#[test]
fn the_interpreter_module_imports_every_hostcall_and_loads() {
    // One import per hostcall of the harness (plus a missing one, answered by the stub).
    assert_eq!(hostcalls::IMPORTS.len(), 65);
    assert_eq!(hostcalls::ops(), 65 + hostcalls::EXTRA_OPS);
    let plugin = wasmesh_harness::Harness::from_bytes(hostcalls::module_bytes())
        .unwrap()
        .start()
        .unwrap();
    assert!(plugin.vm_failure(0).is_none());
    // An empty program (no configuration) is a valid plugin that does nothing.
    hostcalls::run_program(&[]);
}
