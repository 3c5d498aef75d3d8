//! Builds wasm artifacts of workspace packages.
//!
//! Integration tests of every filter load the real `wasm32-wasip1` build of the filter, and
//! `cargo test --workspace` on a fresh clone must produce it by itself. [`wasm`] runs a nested
//! `cargo build --target wasm32-wasip1 --release -p <package>` once per process and returns the
//! path of the `.wasm` file:
//!
//! ```no_run
//! let wasm = wasmesh_harness::build::wasm("wasmesh-example-header-filter")?;
//! # Ok::<(), wasmesh_harness::build::BuildError>(())
//! ```
//!
//! Before the first build, [`ensure_wasm_target`] makes sure the toolchain has the
//! `wasm32-wasip1` target, running `rustup target add` itself when it is missing (rustup does not
//! install `rust-toolchain.toml`'s targets for an already-installed toolchain).
//!
//! The nested cargo uses its own target directory (`wasm-artifacts` inside the workspace's target
//! directory, usually `target/wasm-artifacts`): the outer `cargo test` may still hold the lock of
//! the main one, and sharing it would also make the two builds invalidate each other's
//! fingerprints. Environment variables of the outer cargo that would redirect or break the nested
//! build (`CARGO_TARGET_DIR`, `RUSTFLAGS`, `CARGO_BUILD_TARGET`, wrappers, jobserver) are removed.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};

mod target;

pub use target::{ensure_wasm_target, TargetStatus};

/// The target every filter is built for.
pub const WASM_TARGET: &str = "wasm32-wasip1";

/// Directory (under the workspace's `target/`) that holds the nested wasm builds.
pub const ARTIFACT_DIR_NAME: &str = "wasm-artifacts";

/// Flags passed to `wasm-opt`: shrink for size, and accept the wasm features that rustc enables by
/// default for `wasm32-wasip1` (binaryen rejects a module using a feature it was not told about).
pub const WASM_OPT_FLAGS: &[&str] = &[
    "-Oz",
    "--enable-bulk-memory",
    "--enable-sign-ext",
    "--enable-nontrapping-float-to-int",
    "--enable-mutable-globals",
];

/// Environment variables set by an outer cargo (or by the user for host builds) that would break
/// or redirect the nested wasm build.
const ENV_VARS_CLEARED_FOR_NESTED_BUILD: &[&str] = &[
    // Would point the nested build at the outer build's (locked) target directory.
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    // Would override `--target`.
    "CARGO_BUILD_TARGET",
    // Host flags (coverage instrumentation, sanitizers, `-C target-cpu=native`) are wrong for wasm.
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_BUILD_RUSTDOCFLAGS",
    // Set by `cargo clippy` / coverage tools to wrap rustc for workspace members only.
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    // Jobserver file descriptors of the outer cargo are not inherited by us.
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    // Per-crate variables the outer cargo sets for the crate under test.
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
];

/// Why a wasm artifact could not be produced.
///
/// `Debug` prints the same text as `Display`, so that a test's `unwrap()` shows cargo's compiler
/// errors as lines rather than as one escaped string.
#[derive(Clone, thiserror::Error)]
pub enum BuildError {
    /// No cargo workspace around the starting directory.
    #[error("cannot find the cargo workspace from {start}: {reason}")]
    WorkspaceNotFound {
        /// Directory the search started from.
        start: PathBuf,
        /// What `cargo locate-project` said.
        reason: String,
    },
    /// A program (cargo, wasm-opt) could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program that failed to start.
        program: String,
        /// The operating-system error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The toolchain lacks the [`WASM_TARGET`] standard library and it could not be added.
    #[error(
        "the {WASM_TARGET} target is not installed for the Rust toolchain at {}: {remedy}",
        sysroot.display()
    )]
    WasmTargetMissing {
        /// The toolchain's sysroot (`rustc --print sysroot`).
        sysroot: PathBuf,
        /// What to run to fix it.
        remedy: String,
    },
    /// `rustc --print sysroot` failed, so the target could not be checked.
    #[error("`{rustc} --print sysroot` failed ({status}): {stderr}")]
    SysrootUnknown {
        /// The rustc asked.
        rustc: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// `rustup target add` ran and failed.
    #[error("`{command}` failed ({status}); run it by hand to see why")]
    WasmTargetInstallFailed {
        /// The rustup command line.
        command: String,
        /// Exit status of rustup.
        status: String,
    },
    /// `cargo build` ran and failed.
    #[error("cargo build of {package} for {WASM_TARGET} failed ({status}):\n{stderr}")]
    CargoFailed {
        /// Package that was being built.
        package: String,
        /// Exit status of cargo.
        status: String,
        /// What cargo printed on stderr (compiler errors), empty when it went to the terminal.
        stderr: String,
    },
    /// The build succeeded but produced no `.wasm` file for the package.
    #[error("cargo built {package} but produced no .wasm file ({reason})")]
    ArtifactMissing {
        /// Package that was built.
        package: String,
        /// Why none of the artifacts qualified.
        reason: String,
    },
    /// `wasm-opt` is needed (by a test that checks optimized modules) and is not installed.
    #[error(
        "wasm-opt is not installed (looked at $WASM_OPT and PATH); install it with `cargo xtask \
         setup` (`cargo xtask test` sets up and runs every test) or `apt-get install binaryen`"
    )]
    WasmOptMissing,
    /// `wasm-opt` ran and failed.
    #[error("wasm-opt failed on {input} ({status}):\n{stderr}")]
    WasmOptFailed {
        /// Module being optimized.
        input: PathBuf,
        /// Exit status of wasm-opt.
        status: String,
        /// What wasm-opt printed on stderr.
        stderr: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: Arc<io::Error>,
    },
}

impl std::fmt::Debug for BuildError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, formatter)
    }
}

impl BuildError {
    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }

    fn spawn(program: &Path, source: io::Error) -> Self {
        Self::Spawn {
            program: program.display().to_string(),
            source: Arc::new(source),
        }
    }
}

/// Builds `package` for [`WASM_TARGET`] in release mode and returns the path of its `.wasm`.
///
/// Memoized per process and package: every test of a test binary can call it, the first caller
/// builds (later ones wait for it) and all get the same result, including the same error.
pub fn wasm(package: &str) -> Result<PathBuf, BuildError> {
    type Slot = Arc<OnceLock<Result<PathBuf, BuildError>>>;
    static BUILDS: OnceLock<Mutex<HashMap<String, Slot>>> = OnceLock::new();

    let slot: Slot = {
        let mut builds = BUILDS
            .get_or_init(Default::default)
            .lock()
            // A panic while holding this lock cannot leave the map inconsistent.
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(builds.entry(package.to_string()).or_default())
    };
    // The map lock is released here, so builds of different packages do not wait on each other.
    slot.get_or_init(|| WasmBuild::new(package).run()).clone()
}

/// A configurable, non-memoized wasm build of one workspace package.
#[derive(Debug, Clone)]
pub struct WasmBuild {
    package: String,
    workspace_root: Option<PathBuf>,
    target_dir: Option<PathBuf>,
    show_progress: bool,
}

impl WasmBuild {
    /// A build of `package` (a package name of the workspace, e.g. `wasmesh-example-header-filter`).
    pub fn new(package: &str) -> Self {
        Self {
            package: package.to_string(),
            workspace_root: None,
            target_dir: None,
            show_progress: false,
        }
    }

    /// Builds in the workspace at `root` instead of [`current_workspace`].
    pub fn workspace_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.workspace_root = Some(root.into());
        self
    }

    /// Uses this target directory instead of the workspace's `<target>/wasm-artifacts`.
    pub fn target_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.target_dir = Some(dir.into());
        self
    }

    /// Lets cargo's progress and diagnostics go to this process's stderr (for a CLI) instead of
    /// capturing them into the error (for tests).
    pub fn show_progress(mut self, show: bool) -> Self {
        self.show_progress = show;
        self
    }

    /// Runs cargo and returns the path of the package's `.wasm`.
    pub fn run(&self) -> Result<PathBuf, BuildError> {
        let workspace = match &self.workspace_root {
            Some(root) => locate_workspace(root)?,
            None => current_workspace()?,
        };
        let root = workspace.root;
        ensure_wasm_target(&root)?;
        let target_dir = self
            .target_dir
            .clone()
            .unwrap_or_else(|| workspace.target_dir.join(ARTIFACT_DIR_NAME));
        let cargo = cargo_program();

        let mut command = Command::new(&cargo);
        command
            .current_dir(&root)
            .arg("build")
            .arg("--release")
            .arg("--target")
            .arg(WASM_TARGET)
            .arg("-p")
            .arg(&self.package)
            .arg("--message-format=json-render-diagnostics")
            .arg("--target-dir")
            .arg(&target_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if self.show_progress {
                Stdio::inherit()
            } else {
                Stdio::piped()
            });
        for name in nested_build_env_to_clear() {
            command.env_remove(name);
        }

        let output = command
            .output()
            .map_err(|source| BuildError::spawn(&cargo, source))?;
        if !output.status.success() {
            return Err(BuildError::CargoFailed {
                package: self.package.clone(),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        find_wasm_artifact(&self.package, &String::from_utf8_lossy(&output.stdout))
    }
}

/// Names of the environment variables removed before running the nested cargo.
fn nested_build_env_to_clear() -> Vec<OsString> {
    let mut names: Vec<OsString> = ENV_VARS_CLEARED_FOR_NESTED_BUILD
        .iter()
        .map(OsString::from)
        .collect();
    // Cargo-internal switches (e.g. `__CARGO_FIX_PLZ`) change what a nested cargo does.
    names.extend(
        std::env::vars_os()
            .map(|(name, _)| name)
            .filter(|name| name.to_string_lossy().starts_with("__CARGO")),
    );
    names
}

/// The cargo that runs us (`CARGO` is set by cargo for tests and `cargo run`), else `cargo`.
fn cargo_program() -> PathBuf {
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("cargo"))
}

/// Picks the package's `.wasm` among the `compiler-artifact` messages cargo printed.
fn find_wasm_artifact(package: &str, cargo_json: &str) -> Result<PathBuf, BuildError> {
    // Cargo names a library target after its package with `-` turned into `_`, unless
    // `[lib] name` overrides it; then the single cdylib of the build is the package's.
    let expected_target_name = package.replace('-', "_");
    let mut candidates: Vec<(String, PathBuf)> = Vec::new();
    for line in cargo_json.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message.get("reason").and_then(serde_json::Value::as_str) != Some("compiler-artifact") {
            continue;
        }
        let is_cdylib = message
            .pointer("/target/kind")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|kinds| kinds.iter().any(|kind| kind == "cdylib"));
        if !is_cdylib {
            continue;
        }
        let target_name = message
            .pointer("/target/name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string();
        let wasm_files = message
            .get("filenames")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|name| name.as_str())
            .filter(|name| name.ends_with(".wasm"))
            .map(PathBuf::from);
        candidates.extend(wasm_files.map(|path| (target_name.clone(), path)));
    }

    if let Some((_, path)) = candidates
        .iter()
        .find(|(name, _)| *name == expected_target_name)
    {
        return Ok(path.clone());
    }
    match candidates.as_slice() {
        [(_, path)] => Ok(path.clone()),
        [] => Err(BuildError::ArtifactMissing {
            package: package.to_string(),
            reason: "no cdylib target: add `crate-type = [\"cdylib\"]` under [lib]".to_string(),
        }),
        several => Err(BuildError::ArtifactMissing {
            package: package.to_string(),
            reason: format!(
                "several cdylib targets and none named {expected_target_name}: {}",
                several
                    .iter()
                    .map(|(name, _)| name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// A cargo workspace: where it is and where cargo puts build outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// Directory of the workspace's root `Cargo.toml`.
    pub root: PathBuf,
    /// Cargo's target directory for it (`target/`, or what `CARGO_TARGET_DIR` or
    /// `build.target-dir` say). Wasm builds go to its [`ARTIFACT_DIR_NAME`] subdirectory.
    pub target_dir: PathBuf,
}

/// The cargo workspace this process works in.
///
/// Starts from `CARGO_MANIFEST_DIR` when cargo runs us (tests, `cargo run`), else from the current
/// directory, and asks `cargo metadata`, which understands nested packages, `workspace.exclude`,
/// `package.workspace` and target-directory settings exactly as cargo does.
pub fn current_workspace() -> Result<Workspace, BuildError> {
    let start = match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_dir().map_err(|source| BuildError::io(Path::new("."), source))?,
    };
    locate_workspace(&start)
}

/// The root directory of [`current_workspace`].
pub fn workspace_root() -> Result<PathBuf, BuildError> {
    current_workspace().map(|workspace| workspace.root)
}

/// The cargo workspace that contains `start`.
pub fn locate_workspace(start: &Path) -> Result<Workspace, BuildError> {
    let cargo = cargo_program();
    let output = Command::new(&cargo)
        .current_dir(start)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BuildError::spawn(&cargo, source))?;
    let not_found = |reason: String| BuildError::WorkspaceNotFound {
        start: start.to_path_buf(),
        reason,
    };
    if !output.status.success() {
        return Err(not_found(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|error| not_found(format!("unreadable cargo metadata: {error}")))?;
    let path = |field: &str| {
        metadata
            .get(field)
            .and_then(serde_json::Value::as_str)
            .map(PathBuf::from)
            .ok_or_else(|| not_found(format!("cargo metadata has no `{field}`")))
    };
    Ok(Workspace {
        root: path("workspace_root")?,
        target_dir: path("target_directory")?,
    })
}

/// What [`optimize`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Optimization {
    /// `wasm-opt` (at this path) rewrote the module.
    Optimized {
        /// The `wasm-opt` that ran.
        wasm_opt: PathBuf,
    },
    /// `wasm-opt` is not installed; the module was copied unchanged.
    CopiedUnoptimized,
}

/// Finds `wasm-opt`: `$WASM_OPT` if set, else `wasm-opt` on `PATH`.
pub fn find_wasm_opt() -> Option<PathBuf> {
    if let Some(explicit) = std::env::var_os("WASM_OPT") {
        let explicit = PathBuf::from(explicit);
        return explicit.is_file().then_some(explicit);
    }
    find_on_path("wasm-opt")
}

/// [`find_wasm_opt`] for callers that cannot do without it (tests of optimized modules): a
/// missing `wasm-opt` is an error naming the install command, not a silent skip.
pub fn require_wasm_opt() -> Result<PathBuf, BuildError> {
    find_wasm_opt().ok_or(BuildError::WasmOptMissing)
}

/// Finds an executable by name in the directories of `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Writes an optimized copy of `input` to `output` with `wasm-opt` ([`WASM_OPT_FLAGS`]), or a plain
/// copy when `wasm-opt` is not installed (the result tells which).
pub fn optimize(input: &Path, output: &Path) -> Result<Optimization, BuildError> {
    let Some(wasm_opt) = find_wasm_opt() else {
        std::fs::copy(input, output).map_err(|source| BuildError::io(output, source))?;
        return Ok(Optimization::CopiedUnoptimized);
    };
    optimize_with(&wasm_opt, input, output)?;
    Ok(Optimization::Optimized { wasm_opt })
}

/// Runs this `wasm-opt` binary on `input`, writing `output`.
pub fn optimize_with(wasm_opt: &Path, input: &Path, output: &Path) -> Result<(), BuildError> {
    let result = Command::new(wasm_opt)
        .args(WASM_OPT_FLAGS)
        .arg(input)
        .arg("-o")
        .arg(output)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BuildError::spawn(wasm_opt, source))?;
    if !result.status.success() {
        return Err(BuildError::WasmOptFailed {
            input: input.to_path_buf(),
            status: result.status.to_string(),
            stderr: String::from_utf8_lossy(&result.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Lower-case hex SHA-256 of `bytes` (the digest format of OCI and `sha256sum`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Lower-case hex SHA-256 of the file at `path`.
pub fn sha256_file(path: &Path) -> Result<String, BuildError> {
    let bytes = std::fs::read(path).map_err(|source| BuildError::io(path, source))?;
    Ok(sha256_hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(kind: &str, name: &str, file: &str) -> String {
        serde_json::json!({
            "reason": "compiler-artifact",
            "target": { "kind": [kind], "name": name },
            "filenames": [file],
        })
        .to_string()
    }

    #[test]
    fn picks_the_cdylib_named_after_the_package() {
        let messages = [
            artifact("lib", "serde", "/t/libserde.rlib"),
            artifact("cdylib", "other_filter", "/t/other_filter.wasm"),
            artifact("cdylib", "my_filter", "/t/my_filter.wasm"),
            r#"{"reason":"build-finished","success":true}"#.to_string(),
        ]
        .join("\n");
        assert_eq!(
            find_wasm_artifact("my-filter", &messages).unwrap(),
            PathBuf::from("/t/my_filter.wasm")
        );
    }

    #[test]
    fn accepts_a_single_cdylib_with_a_renamed_lib() {
        let messages = artifact("cdylib", "renamed", "/t/renamed.wasm");
        assert_eq!(
            find_wasm_artifact("my-filter", &messages).unwrap(),
            PathBuf::from("/t/renamed.wasm")
        );
    }

    #[test]
    fn reports_a_package_without_cdylib() {
        let messages = artifact("lib", "my_filter", "/t/libmy_filter.rlib");
        let error = find_wasm_artifact("my-filter", &messages).unwrap_err();
        assert!(
            matches!(&error, BuildError::ArtifactMissing { reason, .. } if reason.contains("cdylib")),
            "{error}"
        );
    }

    #[test]
    fn reports_ambiguous_cdylibs() {
        let messages = [
            artifact("cdylib", "a", "/t/a.wasm"),
            artifact("cdylib", "b", "/t/b.wasm"),
        ]
        .join("\n");
        let error = find_wasm_artifact("my-filter", &messages).unwrap_err();
        assert!(error.to_string().contains("a, b"), "{error}");
    }

    #[test]
    fn sha256_matches_the_standard_test_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
