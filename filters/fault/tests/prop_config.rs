//! Malformed configuration, as a property (see `wasmesh_sdk::testing::config_properties`):
//! mutations of the shipped `config.json` are accepted or refused with an explanation, never a
//! panic; the fuzz target's corpus (`fuzz/corpus/config_fault/`) is replayed.

wasmesh_sdk::config_property_tests! {
    filter: wasmesh_fault::FaultFilter,
    seeds: [include_str!("../config.json")],
    corpus: "config_fault",
}
