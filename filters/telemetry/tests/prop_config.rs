#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Malformed configuration, as a property: every mutation of the shipped `config.json` (any
//! value replaced by a value of another type or an extreme one, a field dropped, an unknown
//! field added, the document truncated) is either accepted or refused with an explanation,
//! never a panic, and the answer is deterministic. Also replays the corpus the `config_telemetry`
//! fuzz target kept (`fuzz/corpus/config_telemetry/`), so its findings stay checked without nightly.

use proptest::prelude::*;
use serde_json::{json, Value};
use wasmesh_sdk::adapter::configure;
use wasmesh_sdk::testing::MemoryHost;

type Filter = wasmesh_telemetry::Telemetry;

const SHIPPED: &str = include_str!("../config.json");

/// Configures the filter as `proxy_on_configure` does; `Err` carries the explanation.
fn outcome(bytes: &[u8]) -> Result<(), String> {
    let mut host = MemoryHost::new();
    configure::<Filter>(bytes, &mut host)
        .map(drop)
        .map_err(|error| error.to_string())
}

/// Every JSON pointer of `value` (objects and arrays, recursively), the root included.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                pointers(
                    child,
                    format!("{at}/{}", key.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{index}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

fn hostile_value() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        Value::Null,
        json!(true),
        json!(-1),
        json!(0),
        json!(4_294_967_296u64),
        json!(-9_223_372_036_854_775_808i64),
        json!(1e308),
        json!(0.5),
        json!(""),
        json!("x"),
        json!("-1s"),
        json!("315576000001s"),
        json!("1e9999s"),
        json!("[invalid regex("),
        json!("\u{0}"),
        json!("é".repeat(4096)),
        json!([]),
        json!([null]),
        json!({}),
        json!({"unknown_field": 1}),
        (0..64).fold(json!(1), |inner, _| json!([inner])),
    ])
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_configurations_are_accepted_or_explained(
        target in any::<prop::sample::Index>(),
        replacement in hostile_value(),
        edit in 0u8..4,
        cut in any::<prop::sample::Index>(),
    ) {
        let mut document: Value = serde_json::from_str(SHIPPED).unwrap();
        let mut all = Vec::new();
        pointers(&document, String::new(), &mut all);
        let pointer = target.get(&all).clone();
        let bytes = match edit {
            // Replace the value at the pointer.
            0 => {
                if pointer.is_empty() {
                    document = replacement;
                } else if let Some(slot) = document.pointer_mut(&pointer) {
                    *slot = replacement;
                }
                document.to_string().into_bytes()
            }
            // Drop it (object members only).
            1 => {
                let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", ""));
                if let Some(Value::Object(map)) = document.pointer_mut(parent) {
                    map.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
                document.to_string().into_bytes()
            }
            // Add an unknown field next to it.
            2 => {
                if let Some(Value::Object(map)) = document.pointer_mut(&pointer) {
                    map.insert("not_an_envoy_field".into(), replacement);
                }
                document.to_string().into_bytes()
            }
            // Truncate the text.
            _ => {
                let text = document.to_string().into_bytes();
                let end = cut.index(text.len().max(1));
                text.get(..end).unwrap_or_default().to_vec()
            }
        };
        let first = outcome(&bytes);
        if let Err(message) = &first {
            prop_assert!(!message.is_empty());
        }
        prop_assert_eq!(outcome(&bytes), first, "the same configuration gets the same answer");
    }
}

#[test]
fn the_shipped_configuration_is_accepted() {
    assert_eq!(outcome(SHIPPED.as_bytes()), Ok(()));
}

#[test]
fn the_fuzz_corpus_is_accepted_or_explained() {
    let directory = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/corpus/config_telemetry"
    );
    let Ok(entries) = std::fs::read_dir(directory) else {
        return; // The fuzz corpus is optional (e.g. a crate published on its own).
    };
    let mut replayed = 0;
    for entry in entries {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        if let Err(message) = outcome(&bytes) {
            assert!(!message.is_empty());
        }
        replayed += 1;
    }
    assert!(replayed > 0, "the corpus directory is empty");
}
