//! The JSON Schema editors use (`harness/scenario/scenario.schema.json`) is the one the format's
//! types generate.

use std::path::Path;

#[test]
fn the_committed_schema_is_the_generated_one() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenario.schema.json");
    let text = std::fs::read_to_string(&committed).unwrap();
    let committed: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        committed == wasmesh_scenario::schema(),
        "scenario.schema.json is stale: regenerate it with \
         `cargo run -p wasmesh-cli -- test --schema > harness/scenario/scenario.schema.json`"
    );
}

#[test]
fn the_schema_refuses_unknown_fields_where_the_parser_does() {
    let schema = wasmesh_scenario::schema();
    let defs = schema.get("$defs").unwrap();
    for name in [
        "Step",
        "Request",
        "Expect",
        "Answer",
        "Cluster",
        "UpstreamAnswer",
        "Connection",
        "ClientAction",
        "TcpUpstream",
        "TcpReply",
        "ConnectionExpect",
    ] {
        let definition = defs
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not defined"));
        assert_eq!(
            definition.get("additionalProperties"),
            Some(&serde_json::Value::Bool(false)),
            "{name}"
        );
    }
    assert_eq!(
        schema.get("additionalProperties"),
        Some(&serde_json::Value::Bool(false))
    );
}
