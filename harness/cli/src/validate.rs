//! `wasmesh validate`: checks a filter configuration before it reaches a proxy, with the filter's
//! own parser compiled natively and, optionally, with the real module in the harness.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use wasmesh_harness::{Harness, HarnessError, LogLevel};
use wasmesh_sdk::config::ConfigError;

use crate::filters::{self, FilterInfo, Rejection};

/// More errors than this in one file are not worth listing one by one.
const MAX_ERRORS: usize = 50;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The filter the configuration is for (folder or package name, e.g. `rbac`): its own
    /// parser checks the file. Optional with --wasm.
    #[arg(long, required_unless_present = "wasm")]
    filter: Option<String>,

    /// The plugin configuration (JSON), as Envoy or Istio will hand it to the filter.
    #[arg(long)]
    config: PathBuf,

    /// Also load this module in the harness and run on_vm_start and on_configure with the
    /// configuration: the module itself must accept it.
    #[arg(long)]
    wasm: Option<PathBuf>,

    /// Root id (with --wasm).
    #[arg(long, default_value = "")]
    root_id: String,

    /// VM configuration file handed to on_vm_start (with --wasm).
    #[arg(long)]
    vm_config: Option<PathBuf>,
}

pub fn run(args: &Args) -> Result<()> {
    let config = std::fs::read(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let shown = args.config.display().to_string();
    let mut failures = Vec::new();

    if let Some(name) = &args.filter {
        let filter = filters::lookup(name)?;
        let errors = configuration_errors(filter, &config);
        if errors.is_empty() {
            println!("{shown}: valid {} configuration", filter.name);
        } else {
            for error in &errors {
                eprintln!("{shown}: {error}");
            }
            let structural = errors.iter().any(|error| error.structural);
            failures.push(format!(
                "{shown} is not a valid {} configuration ({} error{}{})",
                filter.name,
                errors.len(),
                if errors.len() == 1 { "" } else { "s" },
                if structural {
                    "; whole-document checks run once every value parses"
                } else {
                    ""
                }
            ));
        }
    }

    if let Some(wasm) = &args.wasm {
        match module_accepts(wasm, &config, args) {
            Ok(()) => println!(
                "{shown}: accepted by {} (on_vm_start and on_configure returned true)",
                wasm.display()
            ),
            Err(error) => {
                eprintln!("{shown}: {error:#}");
                failures.push(format!("{} refused {shown}", wasm.display()));
            }
        }
    }

    match failures.len() {
        0 => Ok(()),
        _ => bail!("{}", failures.join("; ")),
    }
}

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// JSON path (empty for the document, or when the filter gave none).
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// Found while parsing values (field names, types, per-value rules), as opposed to a check
    /// of the whole parsed document (`Validate`).
    pub structural: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            formatter.write_str(&self.message)
        } else {
            write!(formatter, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem of `config` for `filter`, empty when the filter accepts it.
///
/// The first problem is exactly what the filter itself reports (and logs in `on_configure`).
/// Parsing stops at the first bad value, so the problems found while parsing (unknown or
/// misspelt fields, wrong types, values a field's own parser refuses) are collected by removing
/// each bad value and parsing again. Such a problem belongs to the value at its path, so what is
/// found after a removal is a real, independent problem; what a removal itself causes (a
/// required field now missing) is not reported. Whole-document checks (`Validate`: ranges across
/// fields, cross references) run only once every value parses, and report their first problem:
/// on a document with values removed they would report problems the file does not have.
pub fn configuration_errors(filter: &FilterInfo, config: &[u8]) -> Vec<Problem> {
    let first = match (filter.check)(config) {
        Ok(()) => return Vec::new(),
        Err(Rejection::Config(error)) => error,
        Err(Rejection::Other(message)) => {
            return vec![Problem {
                path: String::new(),
                message,
                structural: false,
            }]
        }
    };
    let structural = (filter.structure)(config).is_err();
    let mut problems = vec![problem(&first, structural)];
    if structural {
        for error in structural_errors(filter.structure, config) {
            let found = problem(&error, true);
            if !problems.contains(&found) {
                problems.push(found);
            }
        }
    }
    problems
}

fn problem(error: &ConfigError, structural: bool) -> Problem {
    Problem {
        path: error.path().to_string(),
        message: error.message().to_string(),
        structural,
    }
}

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Structural errors of `config` found by removing each bad value in turn; paths refer to the
/// original document.
fn structural_errors(
    structure: fn(&[u8]) -> Result<(), ConfigError>,
    config: &[u8],
) -> Vec<ConfigError> {
    let Ok(mut document) = serde_json::from_slice::<Value>(config) else {
        // Not even JSON: the syntax error (with line and column) is all there is.
        return Vec::new();
    };
    let mut removed: Vec<Vec<Step>> = Vec::new();
    let mut errors = Vec::new();
    while errors.len() < MAX_ERRORS {
        let Ok(bytes) = serde_json::to_vec(&document) else {
            break;
        };
        let Err(error) = structure(&bytes) else {
            break;
        };
        let Some(current) = resolve(&document, error.path()) else {
            // A path that does not name a value of the document (an enum or flattened field):
            // nothing to skip, stop here.
            break;
        };
        let original = original_steps(&current, &removed);
        // At (or above) a value already removed: a consequence of the removal, not a problem
        // of the file. Skip that value too, silently.
        let consequence = removed.iter().any(|gone| gone.starts_with(&original));
        if !consequence {
            errors.push(ConfigError::new(render(&original), error.message()));
        }
        if current.is_empty() || !remove(&mut document, &current) {
            break;
        }
        removed.push(original);
    }
    errors
}

/// The steps that `path` (as the SDK renders it: `a.b[0].c`) names in `document`.
fn resolve(document: &Value, path: &str) -> Option<Vec<Step>> {
    if path.is_empty() {
        return Some(Vec::new());
    }
    match document {
        Value::Array(items) => {
            let rest = path.strip_prefix('[')?;
            let (digits, rest) = rest.split_once(']')?;
            let index: usize = digits.parse().ok()?;
            let rest = rest.strip_prefix('.').unwrap_or(rest);
            let mut steps = vec![Step::Index(index)];
            steps.extend(resolve(items.get(index)?, rest)?);
            Some(steps)
        }
        Value::Object(map) => {
            // Longest key first: `a.b` as one key beats `a` followed by `b`.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by_key(|key| std::cmp::Reverse(key.len()));
            keys.into_iter().find_map(|key| {
                let rest = path.strip_prefix(key.as_str())?;
                let rest = if rest.is_empty() || rest.starts_with('[') {
                    rest
                } else {
                    rest.strip_prefix('.')?
                };
                let mut steps = vec![Step::Key(key.clone())];
                steps.extend(resolve(map.get(key.as_str())?, rest)?);
                Some(steps)
            })
        }
        _ => None,
    }
}

/// Removes the value at `steps`; false when there is none.
fn remove(document: &mut Value, steps: &[Step]) -> bool {
    let Some((last, parents)) = steps.split_last() else {
        return false;
    };
    let mut value = document;
    for step in parents {
        let next = match (step, value) {
            (Step::Key(key), Value::Object(map)) => map.get_mut(key.as_str()),
            (Step::Index(index), Value::Array(items)) => items.get_mut(*index),
            _ => None,
        };
        match next {
            Some(next) => value = next,
            None => return false,
        }
    }
    match (last, value) {
        (Step::Key(key), Value::Object(map)) => map.remove(key.as_str()).is_some(),
        (Step::Index(index), Value::Array(items)) if *index < items.len() => {
            items.remove(*index);
            true
        }
        _ => false,
    }
}

/// Maps steps in the current document (array elements removed) back to the original document.
fn original_steps(current: &[Step], removed: &[Vec<Step>]) -> Vec<Step> {
    let mut original: Vec<Step> = Vec::with_capacity(current.len());
    for step in current {
        let mapped = match step {
            Step::Key(key) => Step::Key(key.clone()),
            Step::Index(index) => {
                // The index-th element still present, counting the removed ones back in.
                let gone: Vec<usize> = removed
                    .iter()
                    .filter(|path| path.len() == original.len() + 1 && path.starts_with(&original))
                    .filter_map(|path| match path.last() {
                        Some(Step::Index(gone)) => Some(*gone),
                        _ => None,
                    })
                    .collect();
                let position = (0..)
                    .filter(|candidate| !gone.contains(candidate))
                    .nth(*index)
                    .unwrap_or(*index);
                Step::Index(position)
            }
        };
        original.push(mapped);
    }
    original
}

fn render(steps: &[Step]) -> String {
    let mut path = String::new();
    for step in steps {
        match step {
            Step::Key(key) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Step::Index(index) => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

/// Loads the module in the harness with the configuration; Ok when on_vm_start and on_configure
/// both return true.
fn module_accepts(wasm: &Path, config: &[u8], args: &Args) -> Result<()> {
    let mut builder = Harness::load(wasm)
        .with_context(|| format!("loading {}", wasm.display()))?
        .config(config.to_vec())
        .root_id(&args.root_id)
        .log_level(LogLevel::Info);
    if let Some(path) = &args.vm_config {
        let vm_config =
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        builder = builder.vm_config(vm_config);
    }
    match builder.start() {
        Ok(_) => Ok(()),
        Err(HarnessError::ConfigRejected { logs }) => Err(anyhow!(
            "{} returned false from on_configure{}",
            wasm.display(),
            quoted_logs(&logs)
        )),
        Err(HarnessError::VmStartRejected { logs }) => Err(anyhow!(
            "{} returned false from on_vm_start{}",
            wasm.display(),
            quoted_logs(&logs)
        )),
        Err(other) => {
            Err(anyhow::Error::new(other).context(format!("starting {}", wasm.display())))
        }
    }
}

fn quoted_logs(logs: &[wasmesh_harness::LogEntry]) -> String {
    if logs.is_empty() {
        return " (it logged nothing)".to_string();
    }
    let lines: String = logs
        .iter()
        .map(|entry| {
            format!(
                "\n  [{}] {}",
                crate::run::level_name(entry.level),
                entry.message
            )
        })
        .collect();
    format!("; it logged:{lines}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(problems: &[Problem]) -> Vec<String> {
        problems
            .iter()
            .map(|problem| problem.path.clone())
            .collect()
    }

    #[test]
    fn reports_every_structural_error_with_its_path_in_the_original_document() {
        let filter = filters::lookup("header-filter").unwrap();
        // Three independent mistakes: a typo'd field in the second list entry, a wrong type in
        // the fourth (indices must survive the removal of earlier entries), a bad status type.
        let config = br#"{
            "deny": [
                {"prefix": "/a"},
                {"prefx": "/b"},
                {"prefix": "/c"},
                {"prefix": 4}
            ],
            "deny_status": "forbidden"
        }"#;
        let problems = configuration_errors(filter, config);
        let mut found = paths(&problems);
        found.sort();
        assert_eq!(
            found,
            ["deny[1].prefx", "deny[3].prefix", "deny_status"],
            "{problems:?}"
        );
        assert!(problems.iter().all(|problem| problem.structural));
        // The first is what the filter itself reports (document order).
        assert_eq!(problems[0].path, "deny[1].prefx");
        assert!(
            problems[0].message.contains("unknown field `prefx`"),
            "{problems:?}"
        );
    }

    #[test]
    fn consequences_of_a_removal_are_not_reported() {
        let filter = filters::lookup("header-filter").unwrap();
        // `prefix` has the wrong type; removing it leaves an entry with no matcher at all,
        // which must not be reported as a second problem.
        let problems = configuration_errors(filter, br#"{"deny": [{"prefix": 5}]}"#);
        assert_eq!(paths(&problems), ["deny[0].prefix"], "{problems:?}");
    }

    #[test]
    fn a_whole_document_check_is_reported_alone() {
        let filter = filters::lookup("header-filter").unwrap();
        let problems = configuration_errors(filter, br#"{"deny_status": 99, "deny": []}"#);
        assert_eq!(paths(&problems), ["deny_status"]);
        assert!(!problems[0].structural);
        assert!(configuration_errors(filter, br#"{"deny": [{"prefix": "/x"}]}"#).is_empty());
    }

    #[test]
    fn a_syntax_error_has_a_position() {
        let filter = filters::lookup("header-filter").unwrap();
        let problems = configuration_errors(filter, b"{\"deny\": [\n}");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("line 2"), "{problems:?}");
    }

    #[test]
    fn indices_map_back_past_removed_elements() {
        let removed = vec![
            vec![Step::Key("a".into()), Step::Index(0)],
            vec![Step::Key("a".into()), Step::Index(2)],
        ];
        // Current [1] is original [3]: 0 and 2 are gone, so present are 1, 3, 4...
        let current = [Step::Key("a".into()), Step::Index(1), Step::Key("b".into())];
        assert_eq!(render(&original_steps(&current, &removed)), "a[3].b");
    }

    #[test]
    fn resolves_keys_containing_dots() {
        let document: Value = serde_json::json!({"a.b": {"c": [1, {"d": 2}]}, "a": {}});
        let steps = resolve(&document, "a.b.c[1].d").unwrap();
        assert_eq!(render(&steps), "a.b.c[1].d");
        assert!(resolve(&document, "a.x").is_none());
    }
}
