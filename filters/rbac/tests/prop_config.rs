//! Malformed configuration, as a property (see `wasmesh_sdk::testing::config_properties`):
//! mutations of the shipped `config.json` and of the Istio-format `istio-policies.json` are
//! accepted or refused with an explanation, never a panic; the fuzz target's corpus
//! (`fuzz/corpus/config_rbac/`) is replayed.

wasmesh_sdk::config_property_tests! {
    filter: wasmesh_rbac::RbacFilter,
    seeds: [
        include_str!("../config.json"),
        include_str!("../istio-policies.json"),
    ],
    corpus: "config_rbac",
}
