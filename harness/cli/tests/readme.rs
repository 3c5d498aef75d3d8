#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The documentation's promises about itself.
//!
//! Every shipped Envoy bootstrap and Istio `WasmPlugin` (`examples/envoy/<filter>.yaml`,
//! `examples/istio/<filter>.yaml`, which other tests run in Envoy and check against each filter's
//! `config.json`) is quoted verbatim in its filter's README (`filters/<filter>/README.md` or
//! `examples/<filter>/README.md`), so what a reader copies is what the tests proved. The root
//! README stays a page a newcomer scans: at most [`README_MAX_LINES`] lines.

use std::path::{Path, PathBuf};

/// The root README's length limit.
const README_MAX_LINES: usize = 300;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The README of the filter called `name`: under `filters/`, else under `examples/`.
fn filter_readme(name: &str) -> PathBuf {
    let root = root();
    let filter = root.join("filters").join(name).join("README.md");
    if filter.is_file() {
        filter
    } else {
        root.join("examples").join(name).join("README.md")
    }
}

#[test]
fn each_filter_readme_quotes_its_shipped_configurations_verbatim() {
    let root = root();
    let mut quoted = 0;
    for kind in ["envoy", "istio"] {
        let dir = root.join("examples").join(kind);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|ext| ext != "yaml") {
                continue;
            }
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let relative = format!("examples/{kind}/{name}.yaml");
            let readme_path = filter_readme(&name);
            let readme = std::fs::read_to_string(&readme_path).unwrap_or_else(|error| {
                panic!("{relative} has no filter README at {readme_path:?}: {error}")
            });
            let shown = readme_path.strip_prefix(&root).unwrap_or(&readme_path);
            assert!(
                readme.contains(&format!("<code>{relative}</code>")),
                "{} does not name {relative}",
                shown.display()
            );
            assert!(
                readme.contains(&format!("```yaml\n{text}```")),
                "{} does not quote {relative} verbatim: update its copy there",
                shown.display()
            );
            quoted += 1;
        }
    }
    assert_eq!(quoted, 16, "eight filters, an Envoy and an Istio file each");
}

#[test]
fn the_readme_is_a_page_a_newcomer_scans() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, at most {README_MAX_LINES}: move details to the filter, \
         harness or CLI READMEs"
    );
}
