//! Property tests of a filter's configuration parser, shared by every filter's
//! `tests/prop_config.rs` (through [`config_property_tests!`](crate::config_property_tests)).
//!
//! Malformed configuration, as a property: every mutation of a seed configuration (any value
//! replaced by a value of another type or an extreme one, a field dropped, an unknown field added,
//! the document truncated) is either accepted or refused with an explanation, never a panic, and
//! the answer is deterministic. The seeds themselves are accepted, and the corpus the filter's
//! `config_<filter>` fuzz target kept (`fuzz/corpus/`) is replayed, so its findings stay checked
//! without nightly.
//!
//! Only with the `proptest` feature, which filters enable from their dev-dependencies: proptest
//! never reaches a wasm build. Each check returns what went wrong instead of panicking; the
//! generated `#[test]`s fail with it.

use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestError, TestRunner};
use serde_json::{json, Value};

use crate::adapter::{configure, HttpFilter};
use crate::testing::MemoryHost;

/// Mutations tried per seed configuration.
const CASES_PER_SEED: u32 = 256;

/// Configures filter `F` as `proxy_on_configure` does; `Err` carries the explanation.
pub fn outcome<F: HttpFilter>(bytes: &[u8]) -> Result<(), String> {
    let mut host = MemoryHost::new();
    configure::<F>(bytes, &mut host)
        .map(drop)
        .map_err(|error| error.to_string())
}

/// Every seed is accepted as it is.
pub fn check_seeds<F: HttpFilter>(seeds: &[&str]) -> Result<(), String> {
    if seeds.is_empty() {
        return Err("no seed configuration".to_string());
    }
    for (index, seed) in seeds.iter().enumerate() {
        outcome::<F>(seed.as_bytes()).map_err(|error| format!("seed {index} refused: {error}"))?;
    }
    Ok(())
}

/// Every mutation of a seed is accepted or refused with an explanation, the same way twice.
pub fn check_mutations<F: HttpFilter>(seeds: &[&str]) -> Result<(), String> {
    let documents = seeds
        .iter()
        .enumerate()
        .map(|(index, seed)| {
            serde_json::from_str::<Value>(seed)
                .map_err(|error| format!("seed {index} is not JSON: {error}"))
        })
        .collect::<Result<Vec<Value>, String>>()?;
    if documents.is_empty() {
        return Err("no seed configuration".to_string());
    }
    let cases = u32::try_from(documents.len())
        .unwrap_or(u32::MAX)
        .saturating_mul(CASES_PER_SEED);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let mutation = (
        any::<Index>(),
        any::<Index>(),
        hostile_value(),
        0u8..4,
        any::<Index>(),
    );
    runner
        .run(&mutation, |(seed, target, replacement, edit, cut)| {
            let bytes = mutate(seed.get(&documents), target, replacement, edit, cut);
            let first = outcome::<F>(&bytes);
            if let Err(message) = &first {
                prop_assert!(
                    !message.is_empty(),
                    "refused without a reason: {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            prop_assert_eq!(
                outcome::<F>(&bytes),
                first,
                "the same configuration gets the same answer: {}",
                String::from_utf8_lossy(&bytes)
            );
            Ok(())
        })
        .map_err(|error| match error {
            TestError::Abort(reason) => format!("aborted: {reason}"),
            TestError::Fail(reason, (seed, target, replacement, edit, cut)) => format!(
                "{reason}; minimal failing input: seed {seed:?}, target {target:?}, \
                 replacement {replacement}, edit {edit}, cut {cut:?}"
            ),
        })
}

/// Every configuration in `directory` (one per file) is accepted or refused with an
/// explanation. A missing directory is fine (the fuzz corpus is optional, e.g. for a crate
/// published on its own); an empty one is not.
pub fn check_corpus<F: HttpFilter>(directory: &Path) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return Ok(());
    };
    let mut replayed = 0;
    for entry in entries {
        let path = entry
            .map_err(|error| format!("{}: {error}", directory.display()))?
            .path();
        let bytes = std::fs::read(&path).map_err(|error| format!("{}: {error}", path.display()))?;
        if outcome::<F>(&bytes) == Err(String::new()) {
            return Err(format!("{}: refused without a reason", path.display()));
        }
        replayed += 1;
    }
    if replayed == 0 {
        return Err(format!(
            "{}: the corpus directory is empty",
            directory.display()
        ));
    }
    Ok(())
}

/// One mutation of `document`: `edit` 0 replaces the value at `target` (one of its JSON
/// pointers), 1 drops it (object members only), 2 adds an unknown field next to it, 3 truncates
/// the text at `cut`.
fn mutate(document: &Value, target: Index, replacement: Value, edit: u8, cut: Index) -> Vec<u8> {
    let mut document = document.clone();
    let mut all = Vec::new();
    pointers(&document, String::new(), &mut all);
    // `all` holds at least the root pointer: `get` has something to pick.
    let pointer = target.get(&all).clone();
    match edit {
        0 => {
            if pointer.is_empty() {
                document = replacement;
            } else if let Some(slot) = document.pointer_mut(&pointer) {
                *slot = replacement;
            }
            document.to_string().into_bytes()
        }
        1 => {
            let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", ""));
            if let Some(Value::Object(map)) = document.pointer_mut(parent) {
                map.remove(&key.replace("~1", "/").replace("~0", "~"));
            }
            document.to_string().into_bytes()
        }
        2 => {
            if let Some(Value::Object(map)) = document.pointer_mut(&pointer) {
                map.insert("not_an_envoy_field".into(), replacement);
            }
            document.to_string().into_bytes()
        }
        _ => {
            let text = document.to_string().into_bytes();
            let end = cut.index(text.len().max(1));
            text.get(..end).unwrap_or_default().to_vec()
        }
    }
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

/// Values of the wrong type, out of range, malformed or deeply nested.
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

/// The configuration property tests of one filter: `filter` is its [`HttpFilter`] type, `seeds`
/// the configurations the mutations start from (texts, e.g. `include_str!("../config.json")`),
/// `corpus` the folder of its fuzz target's corpus under `fuzz/corpus/` (e.g. `"config_rbac"`).
/// Expands to three `#[test]`s; the crate needs `wasmesh-sdk` with the `proptest` feature in its
/// dev-dependencies.
///
/// ```ignore
/// wasmesh_sdk::config_property_tests! {
///     filter: wasmesh_rbac::RbacFilter,
///     seeds: [include_str!("../config.json")],
///     corpus: "config_rbac",
/// }
/// ```
#[macro_export]
macro_rules! config_property_tests {
    (filter: $filter:ty, seeds: [$($seed:expr),+ $(,)?], corpus: $corpus:literal $(,)?) => {
        #[test]
        fn mutated_configurations_are_accepted_or_explained() {
            let outcome = $crate::testing::config_properties::check_mutations::<$filter>(&[$($seed),+]);
            ::std::assert_eq!(outcome, Ok(()));
        }

        #[test]
        fn the_seed_configurations_are_accepted() {
            let outcome = $crate::testing::config_properties::check_seeds::<$filter>(&[$($seed),+]);
            ::std::assert_eq!(outcome, Ok(()));
        }

        #[test]
        fn the_fuzz_corpus_is_accepted_or_explained() {
            let directory = ::std::path::Path::new(::std::env!("CARGO_MANIFEST_DIR"))
                .join("../../fuzz/corpus")
                .join($corpus);
            let outcome = $crate::testing::config_properties::check_corpus::<$filter>(&directory);
            ::std::assert_eq!(outcome, Ok(()));
        }
    };
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::prelude::*;

    /// A filter whose configuration is `{"limit": <1 to 10>, "flaky": <bool>}`; a flaky one
    /// refuses every other configuration it is given.
    struct Probe;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ProbeConfig {
        limit: u32,
        #[serde(default)]
        flaky: bool,
    }

    impl Validate for ProbeConfig {
        fn validate(&self) -> Result<(), ConfigError> {
            if (1..=10).contains(&self.limit) {
                Ok(())
            } else {
                Err(ConfigError::new("limit", "must be 1 to 10"))
            }
        }
    }

    impl HttpFilter for Probe {
        const NAME: &'static str = "probe";
        type Config = ProbeConfig;
        type Stream = ();

        fn new(config: ProbeConfig, _host: &mut dyn Host) -> Result<Self, Error> {
            thread_local! {
                static CALLS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
            }
            let calls = CALLS.with(|calls| calls.replace(calls.get().wrapping_add(1)));
            if config.flaky && calls % 2 == 1 {
                Err(Error::Config(ConfigError::new(
                    "flaky",
                    "refused this time",
                )))
            } else {
                Ok(Probe)
            }
        }

        fn on_request_headers(
            &self,
            _stream: &mut (),
            _request: &mut dyn Request,
            _host: &mut dyn Host,
        ) -> Decision {
            Decision::Continue
        }
    }

    #[test]
    fn seeds_must_be_accepted() {
        assert_eq!(check_seeds::<Probe>(&[r#"{"limit": 3}"#]), Ok(()));
        assert!(
            check_seeds::<Probe>(&[r#"{"limit": 3}"#, r#"{"limit": 0}"#])
                .unwrap_err()
                .starts_with("seed 1 refused: ")
        );
        assert!(check_seeds::<Probe>(&[]).is_err());
    }

    #[test]
    fn mutations_are_checked() {
        assert_eq!(check_mutations::<Probe>(&[r#"{"limit": 3}"#]), Ok(()));
        let flaky = check_mutations::<Probe>(&[r#"{"limit": 3, "flaky": true}"#]).unwrap_err();
        assert!(
            flaky.contains("the same configuration gets the same answer"),
            "{flaky}"
        );
        assert!(check_mutations::<Probe>(&["{"])
            .unwrap_err()
            .starts_with("seed 0 is not JSON"));
        assert!(check_mutations::<Probe>(&[]).is_err());
    }

    #[test]
    fn the_corpus_is_optional_but_not_empty() {
        let missing = Path::new(env!("CARGO_MANIFEST_DIR")).join("no-such-corpus");
        assert_eq!(check_corpus::<Probe>(&missing), Ok(()));
        let empty =
            std::env::temp_dir().join(format!("wasmesh-empty-corpus-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let outcome = check_corpus::<Probe>(&empty);
        std::fs::remove_dir_all(&empty).unwrap();
        assert!(outcome
            .unwrap_err()
            .ends_with("the corpus directory is empty"));
    }
}
