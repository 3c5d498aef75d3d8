//! `wasmesh build`: builds filters to `dist/<name>.wasm` with a `.sha256` beside each.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use wasmesh_harness::build::{self, WasmBuild};

/// Workspace folders whose packages ship as wasm filters.
const FILTER_FOLDERS: &[&str] = &["filters", "examples"];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Filters to build: folder names under filters/ or examples/ (e.g. `header-filter`) or
    /// package names. All of them when omitted.
    filters: Vec<String>,

    /// Where to write the modules (default: <workspace>/dist).
    #[arg(long)]
    out_dir: Option<PathBuf>,

    /// Skip wasm-opt even when it is installed.
    #[arg(long)]
    no_opt: bool,
}

/// A workspace package that builds to a filter module.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Filter {
    /// Folder name, used for the artifact name (`dist/<name>.wasm`).
    name: String,
    /// Cargo package name.
    package: String,
}

pub fn run(args: &Args) -> Result<()> {
    let root = build::workspace_root().context("locating the wasmesh workspace")?;
    let available = workspace_filters(&root)?;
    let selected = select(&available, &args.filters)?;
    let out_dir = args.out_dir.clone().unwrap_or_else(|| root.join("dist"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    let wasm_opt = if args.no_opt {
        None
    } else {
        let found = build::find_wasm_opt();
        if found.is_none() {
            eprintln!("note: wasm-opt is not installed; modules are copied unoptimized");
        }
        found
    };

    for filter in selected {
        let built = WasmBuild::new(&filter.package)
            .workspace_root(&root)
            .show_progress(true)
            .run()
            .with_context(|| format!("building {}", filter.name))?;
        let output = out_dir.join(format!("{}.wasm", filter.name));
        match &wasm_opt {
            Some(wasm_opt) => build::optimize_with(wasm_opt, &built, &output)
                .with_context(|| format!("optimizing {}", filter.name))?,
            None => {
                std::fs::copy(&built, &output).with_context(|| {
                    format!("copying {} to {}", built.display(), output.display())
                })?;
            }
        }
        let summary = write_checksum(&output)?;
        println!(
            "{}\t{} bytes\tsha256:{}\t{}",
            filter.name,
            summary.size,
            summary.sha256,
            output.display()
        );
    }
    Ok(())
}

struct Summary {
    size: u64,
    sha256: String,
}

/// Writes `<module>.sha256` in `sha256sum` format, so `sha256sum -c` verifies a download.
fn write_checksum(module: &Path) -> Result<Summary> {
    let sha256 = build::sha256_file(module)?;
    let size = std::fs::metadata(module)
        .with_context(|| format!("reading {}", module.display()))?
        .len();
    let file_name = module
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let checksum_path = PathBuf::from(format!("{}.sha256", module.display()));
    std::fs::write(&checksum_path, format!("{sha256}  {file_name}\n"))
        .with_context(|| format!("writing {}", checksum_path.display()))?;
    Ok(Summary { size, sha256 })
}

/// The filters the user asked for, in the order asked; all filters when none was named.
fn select(available: &[Filter], requested: &[String]) -> Result<Vec<Filter>> {
    if requested.is_empty() {
        if available.is_empty() {
            bail!("the workspace has no filter packages under filters/ or examples/");
        }
        return Ok(available.to_vec());
    }
    requested
        .iter()
        .map(|wanted| {
            available
                .iter()
                .find(|filter| filter.name == *wanted || filter.package == *wanted)
                .cloned()
                .with_context(|| {
                    format!(
                        "unknown filter {wanted:?}; available: {}",
                        available
                            .iter()
                            .map(|filter| filter.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
        })
        .collect()
}

/// Packages with a cdylib target in the filter folders, sorted by name.
fn workspace_filters(root: &Path) -> Result<Vec<Filter>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .stdin(Stdio::null())
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing cargo metadata")?;
    let mut filters = filters_in_metadata(root, &metadata);
    filters.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(filters)
}

fn filters_in_metadata(root: &Path, metadata: &serde_json::Value) -> Vec<Filter> {
    let packages = metadata["packages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    packages
        .iter()
        .filter_map(|package| {
            let manifest = Path::new(package["manifest_path"].as_str()?);
            let folder = manifest.parent()?;
            let relative = folder.strip_prefix(root).ok()?;
            let mut components = relative.components();
            let parent = components.next()?.as_os_str().to_str()?;
            let name = components.next()?.as_os_str().to_str()?;
            let is_cdylib = package["targets"].as_array()?.iter().any(|target| {
                target["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|kind| kind == "cdylib"))
            });
            (FILTER_FOLDERS.contains(&parent) && components.next().is_none() && is_cdylib).then(
                || Filter {
                    name: name.to_string(),
                    package: package["name"].as_str().unwrap_or_default().to_string(),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, manifest: &str, kind: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name,
            "manifest_path": manifest,
            "targets": [{ "kind": [kind] }],
        })
    }

    #[test]
    fn filters_are_cdylibs_directly_under_the_filter_folders() {
        let metadata = serde_json::json!({ "packages": [
            package("wasmesh-sdk", "/w/sdk/Cargo.toml", "lib"),
            package("wasmesh-filter-rbac", "/w/filters/rbac/Cargo.toml", "cdylib"),
            package("helper", "/w/filters/rbac/helper/Cargo.toml", "cdylib"),
            package("logic-only", "/w/filters/logic/Cargo.toml", "lib"),
            package("wasmesh-example-header-filter", "/w/examples/header-filter/Cargo.toml", "cdylib"),
        ]});

        let filters = filters_in_metadata(Path::new("/w"), &metadata);

        let names: Vec<_> = filters
            .iter()
            .map(|f| (f.name.as_str(), f.package.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("rbac", "wasmesh-filter-rbac"),
                ("header-filter", "wasmesh-example-header-filter")
            ]
        );
    }

    #[test]
    fn selects_by_folder_or_package_name_and_rejects_unknown_names() {
        let available = vec![
            Filter {
                name: "rbac".into(),
                package: "wasmesh-filter-rbac".into(),
            },
            Filter {
                name: "fault".into(),
                package: "wasmesh-filter-fault".into(),
            },
        ];

        let chosen = select(&available, &["wasmesh-filter-fault".into(), "rbac".into()]).unwrap();
        assert_eq!(chosen, vec![available[1].clone(), available[0].clone()]);
        assert_eq!(select(&available, &[]).unwrap(), available);

        let error = select(&available, &["jwt".into()]).unwrap_err().to_string();
        assert!(
            error.contains("unknown filter \"jwt\"; available: rbac, fault"),
            "{error}"
        );
    }
}
