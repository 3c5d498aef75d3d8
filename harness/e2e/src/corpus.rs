//! The differential corpus: a JSON data file of groups of exchanges.
//!
//! ```json
//! {
//!   "format": 1,
//!   "filters": {"rbac": {"package": "wasmesh-rbac"}, "trap": {"wat": "trap.wat"}},
//!   "groups": [{
//!     "name": "rbac: allow policies",
//!     "filter": "rbac",
//!     "config": {"rules": {"action": "ALLOW", "policies": {}}},
//!     "requests": [{"name": "denied", "method": "GET", "path": "/", "headers": [["x-a", "1"]]}]
//!   }]
//! }
//! ```
//!
//! The expected verdict is implicit: whatever real Envoy does, the harness must do too. Strings
//! in configurations and requests may contain `${jwks}` (the key set of `tokens.json`, as JSON
//! text) and `${token:NAME}` (a token of `tokens.json`, made with PyJWT by `make_tokens.py`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde_json::Value;

use crate::E2eError;

/// Host header of requests that do not set one.
pub const DEFAULT_HOST: &str = "api.example.com";

/// The corpus file, relative to this crate.
pub const CORPUS_FILE: &str = "corpus/corpus.json";

/// The corpus of modules built by other toolchains (Go, AssemblyScript, Rust with the
/// `proxy-wasm` crate), relative to this crate.
pub const FOREIGN_CORPUS_FILE: &str = "corpus/foreign.json";

/// The tokens file, relative to this crate.
pub const TOKENS_FILE: &str = "corpus/tokens.json";

/// The whole corpus, placeholders resolved.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Corpus {
    /// Format version (1).
    pub format: u32,
    /// What the corpus is for (free text).
    #[serde(default)]
    pub description: String,
    /// Filter name (as groups refer to it) to where its wasm comes from.
    pub filters: BTreeMap<String, FilterSource>,
    /// The groups, each run in its own Envoy and its own harness plugin.
    pub groups: Vec<Group>,
}

/// Where a filter's wasm comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum FilterSource {
    /// A workspace package built for `wasm32-wasip1` (release) by `wasmesh_harness::build`.
    Package(String),
    /// A WAT file next to the corpus (a deliberately misbehaving module).
    Wat(String),
    /// A Go module (a folder relative to `harness/e2e`) built with Go's own `wasip1` target
    /// ([`crate::foreign::go_wasm`]).
    Go(String),
    /// An AssemblyScript module (a folder relative to `harness/e2e` with `assembly/index.ts` and
    /// a `package-lock.json`) built with its pinned `asc` ([`crate::foreign::assemblyscript_wasm`]).
    #[serde(rename = "assemblyscript")]
    AssemblyScript(String),
}

/// One filter configuration and the exchanges run through it, in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// What the group is about.
    pub name: String,
    /// Key of [`Corpus::filters`].
    #[serde(default)]
    pub filter: String,
    /// Instead of `filter`: run the same group once per filter of this list (modules that
    /// implement the same behaviour). Expanded at load time into groups named
    /// `<name> [<filter>]`.
    #[serde(default)]
    pub filters: Vec<String>,
    /// The plugin configuration: a JSON value (sent as its JSON text) or a string (sent as is).
    #[serde(default)]
    pub config: Option<Value>,
    /// The plugin configuration as a file, relative to the workspace root (a shipped sample).
    #[serde(default)]
    pub config_file: Option<String>,
    /// Envoy's `failure_policy` (and the harness's): `FAIL_CLOSED` (default), `FAIL_OPEN`,
    /// `FAIL_RELOAD`.
    #[serde(default)]
    pub failure_policy: FailurePolicyName,
    /// Response headers compared for presence only (their values depend on wall-clock time,
    /// which differs between Envoy and the harness's virtual clock).
    #[serde(default)]
    pub volatile_headers: Vec<String>,
    /// The exchanges.
    pub requests: Vec<Exchange>,
}

/// `failure_policy` as Envoy spells it: the scenario format's type, one definition.
pub use wasmesh_scenario::format::FailurePolicyName;

/// One request a client sends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    /// What the exchange checks.
    pub name: String,
    /// Method (default `GET`).
    #[serde(default = "default_method")]
    pub method: String,
    /// Path with query, sent as is (no normalization on the way).
    pub path: String,
    /// Headers in order (`[["name", "value"], ...]`); `host` defaults to [`DEFAULT_HOST`].
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Request body (sent with `content-length` when not empty).
    #[serde(default)]
    pub body: String,
    /// Repeat `body` this many times (large bodies), at load time.
    #[serde(default)]
    pub body_repeat: Option<usize>,
    /// Send the body with `transfer-encoding: chunked` (one chunk) instead of `content-length`.
    #[serde(default)]
    pub chunked: bool,
    /// What the upstream answers instead of echoing the request (the client's body is then
    /// compared too).
    #[serde(default)]
    pub upstream_answer: Option<UpstreamAnswer>,
    /// Set when Envoy and the harness are known to differ on this exchange: the anchor of the
    /// README's DIVERGENCES entry that explains why. The test requires such an exchange to
    /// still differ, so the documentation cannot go stale.
    #[serde(default)]
    pub divergence: Option<String>,
    /// A divergence note for some filters only of a group run over several (`filters`): filter
    /// name to note, taking precedence over `divergence`.
    #[serde(default)]
    pub divergence_by_filter: BTreeMap<String, String>,
}

/// An upstream answer given in the corpus.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAnswer {
    /// Status (default 200).
    #[serde(default = "default_status")]
    pub status: u16,
    /// Headers besides the framing (default `content-type: text/plain`).
    #[serde(default = "default_answer_headers")]
    pub headers: Vec<(String, String)>,
    /// Body.
    #[serde(default)]
    pub body: String,
    /// Repeat `body` this many times (large bodies), at load time.
    #[serde(default)]
    pub body_repeat: Option<usize>,
}

fn default_status() -> u16 {
    200
}

fn default_answer_headers() -> Vec<(String, String)> {
    vec![("content-type".to_string(), "text/plain".to_string())]
}

fn default_method() -> String {
    "GET".to_string()
}

impl Exchange {
    /// The `host` the client sends.
    pub fn host(&self) -> &str {
        self.headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("host"))
            .map_or(DEFAULT_HOST, |(_, value)| value.as_str())
    }

    /// Headers other than `host`, in order.
    pub fn headers_without_host(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("host"))
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }
}

/// The key set and tokens placeholders refer to.
#[derive(Debug, Clone, Deserialize)]
pub struct Tokens {
    /// What made them.
    #[serde(default)]
    pub generator: String,
    /// The JWKS document.
    pub jwks: Value,
    /// Token name to compact JWT.
    pub tokens: BTreeMap<String, String>,
}

impl Tokens {
    /// Reads `corpus/tokens.json`.
    pub fn load() -> Result<Self, E2eError> {
        let path = crate::crate_dir().join(TOKENS_FILE);
        parse_json(&path, &read(&path)?)
    }

    /// The key set as JSON text.
    pub fn jwks_text(&self) -> String {
        self.jwks.to_string()
    }

    /// Replaces every `${jwks}` and `${token:NAME}` in `text`.
    pub fn expand(&self, text: &str) -> Result<String, E2eError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| E2eError::Corpus(format!("unterminated placeholder in {text:?}")))?;
            let name = &after[..end];
            if name == "jwks" {
                out.push_str(&self.jwks_text());
            } else if let Some(token) = name.strip_prefix("token:") {
                let value = self.tokens.get(token).ok_or_else(|| {
                    E2eError::Corpus(format!("unknown token {token:?} (see {TOKENS_FILE})"))
                })?;
                out.push_str(value);
            } else {
                return Err(E2eError::Corpus(format!(
                    "unknown placeholder ${{{name}}} in {text:?}"
                )));
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn expand_value(&self, value: &mut Value) -> Result<(), E2eError> {
        match value {
            Value::String(text) => *text = self.expand(text)?,
            Value::Array(items) => {
                for item in items {
                    self.expand_value(item)?;
                }
            }
            Value::Object(fields) => {
                for field in fields.values_mut() {
                    self.expand_value(field)?;
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
        Ok(())
    }
}

impl Corpus {
    /// Reads `corpus/corpus.json` and resolves its placeholders with `corpus/tokens.json`.
    pub fn load() -> Result<Self, E2eError> {
        Self::load_file(CORPUS_FILE)
    }

    /// Reads a corpus file (relative to this crate), resolves its placeholders with
    /// `corpus/tokens.json` and expands groups run over several filters.
    pub fn load_file(file: &str) -> Result<Self, E2eError> {
        let path = crate::crate_dir().join(file);
        let mut corpus: Corpus = parse_json(&path, &read(&path)?)?;
        corpus.resolve(&Tokens::load()?)?;
        corpus.expand()?;
        corpus.validate()?;
        Ok(corpus)
    }

    /// One group per filter of each group's `filters`, with that filter's divergence notes.
    fn expand(&mut self) -> Result<(), E2eError> {
        let mut groups = Vec::with_capacity(self.groups.len());
        for group in std::mem::take(&mut self.groups) {
            if group.filters.is_empty() {
                groups.push(group);
                continue;
            }
            if !group.filter.is_empty() {
                return Err(E2eError::Corpus(format!(
                    "group {:?}: `filter` and `filters` are exclusive",
                    group.name
                )));
            }
            for exchange in &group.requests {
                if let Some(filter) = exchange
                    .divergence_by_filter
                    .keys()
                    .find(|filter| !group.filters.contains(filter))
                {
                    return Err(E2eError::Corpus(format!(
                        "group {:?}, exchange {:?}: divergence for {filter:?}, which the group \
                         does not run",
                        group.name, exchange.name
                    )));
                }
            }
            for filter in &group.filters {
                let mut one = group.clone();
                one.name = format!("{} [{filter}]", group.name);
                one.filter = filter.clone();
                one.filters = Vec::new();
                for exchange in &mut one.requests {
                    if let Some(note) = exchange.divergence_by_filter.get(filter) {
                        exchange.divergence = Some(note.clone());
                    }
                    exchange.divergence_by_filter.clear();
                }
                groups.push(one);
            }
        }
        self.groups = groups;
        Ok(())
    }

    fn resolve(&mut self, tokens: &Tokens) -> Result<(), E2eError> {
        for group in &mut self.groups {
            if let Some(config) = &mut group.config {
                tokens.expand_value(config)?;
            }
            for exchange in &mut group.requests {
                exchange.path = tokens.expand(&exchange.path)?;
                exchange.body = tokens.expand(&exchange.body)?;
                if let Some(times) = exchange.body_repeat.take() {
                    exchange.body = exchange.body.repeat(times);
                }
                if let Some(answer) = &mut exchange.upstream_answer {
                    if let Some(times) = answer.body_repeat.take() {
                        answer.body = answer.body.repeat(times);
                    }
                }
                for (_, value) in &mut exchange.headers {
                    *value = tokens.expand(value)?;
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), E2eError> {
        if self.format != 1 {
            return Err(E2eError::Corpus(format!(
                "format {} is not supported (1 is)",
                self.format
            )));
        }
        for group in &self.groups {
            if !self.filters.contains_key(&group.filter) {
                return Err(E2eError::Corpus(format!(
                    "group {:?}: unknown filter {:?}",
                    group.name, group.filter
                )));
            }
            if group.config.is_some() && group.config_file.is_some() {
                return Err(E2eError::Corpus(format!(
                    "group {:?}: `config` and `config_file` are exclusive",
                    group.name
                )));
            }
            for exchange in &group.requests {
                if let Some(filter) = exchange
                    .divergence_by_filter
                    .keys()
                    .find(|filter| !self.filters.contains_key(*filter))
                {
                    return Err(E2eError::Corpus(format!(
                        "group {:?}, exchange {:?}: divergence for unknown filter {filter:?}",
                        group.name, exchange.name
                    )));
                }
            }
            if group.requests.is_empty() {
                return Err(E2eError::Corpus(format!(
                    "group {:?}: no requests",
                    group.name
                )));
            }
        }
        Ok(())
    }

    /// Number of exchanges over all groups.
    pub fn exchange_count(&self) -> usize {
        self.groups.iter().map(|group| group.requests.len()).sum()
    }
}

impl Group {
    /// The plugin configuration text.
    pub fn config_text(&self) -> Result<String, E2eError> {
        match (&self.config, &self.config_file) {
            (Some(Value::String(text)), _) => Ok(text.clone()),
            (Some(value), _) => Ok(value.to_string()),
            (None, Some(file)) => read(&crate::workspace_root().join(file)),
            (None, None) => Ok(String::new()),
        }
    }
}

impl FilterSource {
    /// The `.wasm` file to load: builds the package, or compiles the WAT into `scratch`.
    pub fn wasm(&self, scratch: &Path) -> Result<PathBuf, E2eError> {
        match self {
            Self::Package(package) => Ok(wasmesh_harness::build::wasm(package)?),
            Self::Go(dir) => crate::foreign::go_wasm(dir),
            Self::AssemblyScript(dir) => crate::foreign::assemblyscript_wasm(dir),
            Self::Wat(file) => {
                let source = crate::crate_dir().join("corpus").join(file);
                let text = read(&source)?;
                let bytes = wat::parse_str(&text)
                    .map_err(|error| E2eError::Corpus(format!("{}: {error}", source.display())))?;
                std::fs::create_dir_all(scratch).map_err(|source| E2eError::Io {
                    path: scratch.to_path_buf(),
                    source,
                })?;
                let wasm = scratch.join(Path::new(file).with_extension("wasm"));
                // Several groups (threads) load the same module: write a private file and
                // rename it into place, so no reader ever sees a half-written module.
                static NEXT: AtomicU64 = AtomicU64::new(0);
                let private = scratch.join(format!(
                    "{file}.{}.{}.tmp",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&private, bytes)
                    .and_then(|()| std::fs::rename(&private, &wasm))
                    .map_err(|source| E2eError::Io {
                        path: wasm.clone(),
                        source,
                    })?;
                Ok(wasm)
            }
        }
    }
}

fn read(path: &Path) -> Result<String, E2eError> {
    std::fs::read_to_string(path).map_err(|source| E2eError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, E2eError> {
    serde_json::from_str(text)
        .map_err(|error| E2eError::Corpus(format!("{}: {error}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens {
            generator: String::new(),
            jwks: serde_json::json!({"keys": []}),
            tokens: BTreeMap::from([("a".to_string(), "x.y.z".to_string())]),
        }
    }

    #[test]
    fn placeholders_expand_to_the_key_set_and_tokens() {
        assert_eq!(
            tokens().expand("Bearer ${token:a}; ${jwks}").unwrap(),
            r#"Bearer x.y.z; {"keys":[]}"#
        );
        assert_eq!(tokens().expand("$ {plain}").unwrap(), "$ {plain}");
    }

    #[test]
    fn unknown_or_broken_placeholders_are_errors() {
        assert!(tokens().expand("${token:b}").is_err());
        assert!(tokens().expand("${other}").is_err());
        assert!(tokens().expand("${jwks").is_err());
    }

    #[test]
    fn a_group_over_several_filters_expands_with_each_filter_s_notes() {
        let mut corpus: Corpus = serde_json::from_str(
            r#"{"format": 1,
                "filters": {"a": {"wat": "a.wat"}, "b": {"go": "modules/go/b"}},
                "groups": [{"name": "g", "filters": ["a", "b"], "requests": [
                    {"name": "x", "path": "/", "divergence": "both"},
                    {"name": "y", "path": "/", "divergence_by_filter": {"b": "only b"}}]}]}"#,
        )
        .unwrap();
        corpus.expand().unwrap();
        corpus.validate().unwrap();
        let names: Vec<(&str, &str)> = corpus
            .groups
            .iter()
            .map(|g| (g.name.as_str(), g.filter.as_str()))
            .collect();
        assert_eq!(names, [("g [a]", "a"), ("g [b]", "b")]);
        let notes = |group: usize| -> Vec<Option<&str>> {
            corpus.groups[group]
                .requests
                .iter()
                .map(|e| e.divergence.as_deref())
                .collect()
        };
        assert_eq!(notes(0), [Some("both"), None]);
        assert_eq!(notes(1), [Some("both"), Some("only b")]);
    }

    #[test]
    fn a_note_for_a_filter_the_group_does_not_run_is_an_error() {
        let mut corpus: Corpus = serde_json::from_str(
            r#"{"format": 1, "filters": {"a": {"wat": "a.wat"}},
                "groups": [{"name": "g", "filters": ["a"], "requests": [
                    {"name": "y", "path": "/", "divergence_by_filter": {"c": "?"}}]}]}"#,
        )
        .unwrap();
        assert!(corpus.expand().is_err());
    }

    #[test]
    fn the_foreign_corpus_loads_with_its_large_bodies() {
        let corpus = Corpus::load_file(FOREIGN_CORPUS_FILE).unwrap();
        assert!(corpus.groups.len() >= 6, "{}", corpus.groups.len());
        let largest = corpus
            .groups
            .iter()
            .flat_map(|g| &g.requests)
            .filter_map(|e| e.upstream_answer.as_ref())
            .map(|answer| answer.body.len())
            .max();
        assert_eq!(largest, Some(2 << 20));
    }

    #[test]
    fn the_corpus_loads_and_is_large_enough() {
        let corpus = Corpus::load().unwrap();
        assert!(corpus.exchange_count() >= 50, "{}", corpus.exchange_count());
        for group in &corpus.groups {
            group.config_text().unwrap();
        }
    }
}
