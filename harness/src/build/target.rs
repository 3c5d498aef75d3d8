//! Making sure the [`WASM_TARGET`] standard library is installed before a wasm build.
//!
//! `rust-toolchain.toml` lists the target, but rustup only adds a toolchain's listed targets
//! when it installs the toolchain itself. With the toolchain already installed (the usual case
//! on a fresh clone) or with automatic installs off (`RUSTUP_AUTO_INSTALL=0`), the target is
//! missing and the first wasm build fails after minutes of host compilation with "can't find
//! crate for `std`". So, as wasm-pack does for its target, the build checks first and runs
//! `rustup target add` itself, saying so on stderr.
//!
//! The check asks `rustc --print sysroot` from the workspace directory, so it sees the toolchain
//! that rustup's override (`rust-toolchain.toml`, `RUSTUP_TOOLCHAIN`) selects for the nested
//! build, and adds the target to that toolchain by name.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::{BuildError, WASM_TARGET};

/// What [`ensure_wasm_target`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetStatus {
    /// The target was already installed.
    AlreadyInstalled,
    /// The target was missing and `rustup target add` installed it for this toolchain.
    Added {
        /// The rustup toolchain name (e.g. `stable-x86_64-unknown-linux-gnu`).
        toolchain: String,
    },
}

/// The decision taken from a sysroot and the presence of rustup.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// The target's standard library is in the sysroot.
    Ready,
    /// Missing, and rustup manages this toolchain: add it.
    RustupAdd { rustup: PathBuf, toolchain: String },
    /// Missing, and nothing here can add it: the user has to (`remedy` says how).
    Unfixable { remedy: String },
}

/// The tools the check uses, taken from the environment in production and faked in tests.
#[derive(Debug, Clone)]
struct Tools {
    /// The rustc that cargo will run (`$RUSTC`, else `rustc` from `PATH`).
    rustc: PathBuf,
    /// `PATH`, where rustup is looked up.
    path: Option<OsString>,
}

impl Tools {
    fn from_env() -> Self {
        Tools {
            rustc: std::env::var_os("RUSTC")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("rustc")),
            path: std::env::var_os("PATH"),
        }
    }
}

/// Makes sure the toolchain that builds in `dir` has the [`WASM_TARGET`] standard library,
/// adding it with `rustup target add` when it is missing and rustup manages the toolchain.
///
/// Checked once per process and directory; later calls return the first result (including
/// the same error). [`super::wasm`] and [`super::WasmBuild::run`] call it before building.
pub fn ensure_wasm_target(dir: &Path) -> Result<TargetStatus, BuildError> {
    type Checks = HashMap<PathBuf, Result<TargetStatus, BuildError>>;
    static CHECKS: OnceLock<Mutex<Checks>> = OnceLock::new();

    // Held during the check: parallel builds of one test binary must not run rustup twice.
    let mut checks = CHECKS
        .get_or_init(Default::default)
        .lock()
        // A panic while holding this lock cannot leave the map inconsistent.
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(result) = checks.get(dir) {
        return result.clone();
    }
    let result = ensure_with(&Tools::from_env(), dir);
    checks.insert(dir.to_path_buf(), result.clone());
    result
}

/// [`ensure_wasm_target`] without memoization, with the tools given.
fn ensure_with(tools: &Tools, dir: &Path) -> Result<TargetStatus, BuildError> {
    let sysroot = sysroot(tools, dir)?;
    let rustup = tools
        .path
        .as_deref()
        .and_then(|path| find_in_path(path, "rustup"));
    match plan(&sysroot, rustup) {
        Plan::Ready => Ok(TargetStatus::AlreadyInstalled),
        Plan::Unfixable { remedy } => Err(BuildError::WasmTargetMissing { sysroot, remedy }),
        Plan::RustupAdd { rustup, toolchain } => {
            let command = format!("rustup target add {WASM_TARGET} --toolchain {toolchain}");
            // Straight to the stderr handle: libtest captures `eprintln!` of passing tests, and
            // a change to the user's toolchain must never go unannounced.
            let _ = writeln!(
                std::io::stderr().lock(),
                "info: the {WASM_TARGET} target is not installed for toolchain {toolchain}; \
                 installing it: {command}"
            );
            let status = Command::new(&rustup)
                .current_dir(dir)
                .args(["target", "add", WASM_TARGET, "--toolchain", &toolchain])
                .stdin(Stdio::null())
                // rustup's progress goes to stderr; its stdout must not mix into ours (the CLI
                // prints results there).
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .status()
                .map_err(|source| BuildError::spawn(&rustup, source))?;
            if !status.success() {
                return Err(BuildError::WasmTargetInstallFailed {
                    command,
                    status: status.to_string(),
                });
            }
            // rustup said yes; make sure it was this sysroot that got the target.
            if !target_libdir(&sysroot).is_dir() {
                return Err(BuildError::WasmTargetMissing {
                    remedy: format!(
                        "`{command}` succeeded but {} still does not exist",
                        target_libdir(&sysroot).display()
                    ),
                    sysroot,
                });
            }
            let _ = writeln!(
                std::io::stderr().lock(),
                "info: installed the {WASM_TARGET} target for toolchain {toolchain}"
            );
            Ok(TargetStatus::Added { toolchain })
        }
    }
}

/// The sysroot of the rustc that builds in `dir`.
fn sysroot(tools: &Tools, dir: &Path) -> Result<PathBuf, BuildError> {
    let mut command = Command::new(&tools.rustc);
    command
        .current_dir(dir)
        .args(["--print", "sysroot"])
        .stdin(Stdio::null());
    if let Some(path) = &tools.path {
        command.env("PATH", path);
    }
    let output = command
        .output()
        .map_err(|source| BuildError::spawn(&tools.rustc, source))?;
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || sysroot.is_empty() {
        return Err(BuildError::SysrootUnknown {
            rustc: tools.rustc.display().to_string(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(PathBuf::from(sysroot))
}

/// Where the target's standard library lives in a sysroot.
fn target_libdir(sysroot: &Path) -> PathBuf {
    sysroot
        .join("lib")
        .join("rustlib")
        .join(WASM_TARGET)
        .join("lib")
}

/// The rustup toolchain name of a sysroot (`<RUSTUP_HOME>/toolchains/<name>`), if rustup
/// installed it.
fn rustup_toolchain(sysroot: &Path) -> Option<String> {
    let parent = sysroot.parent()?;
    if parent.file_name() != Some(OsStr::new("toolchains")) {
        return None;
    }
    sysroot
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
}

/// Decides what to do from the sysroot's contents and the rustup found on `PATH`.
fn plan(sysroot: &Path, rustup: Option<PathBuf>) -> Plan {
    if target_libdir(sysroot).is_dir() {
        return Plan::Ready;
    }
    match (rustup, rustup_toolchain(sysroot)) {
        (Some(rustup), Some(toolchain)) => Plan::RustupAdd { rustup, toolchain },
        (None, Some(toolchain)) => Plan::Unfixable {
            remedy: format!(
                "rustup is not on PATH; run `rustup target add {WASM_TARGET} --toolchain \
                 {toolchain}`"
            ),
        },
        (_, None) => Plan::Unfixable {
            remedy: format!(
                "this Rust toolchain is not managed by rustup; install its {WASM_TARGET} \
                 standard library, or install rustup (https://rustup.rs) and run `rustup target \
                 add {WASM_TARGET}`"
            ),
        },
    }
}

/// Finds an executable file by name in the directories of a `PATH` value.
fn find_in_path(path: &OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory unique to this test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir()
            .join(format!("wasmesh-target-check-{}", std::process::id()))
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A sysroot laid out as rustup lays it out, with or without the wasm target.
    fn fake_rustup_sysroot(root: &Path, with_target: bool) -> PathBuf {
        let sysroot = root
            .join("rustup-home")
            .join("toolchains")
            .join("stable-x86_64-unknown-linux-gnu");
        std::fs::create_dir_all(sysroot.join("lib/rustlib/x86_64-unknown-linux-gnu/lib")).unwrap();
        if with_target {
            std::fs::create_dir_all(target_libdir(&sysroot)).unwrap();
        }
        sysroot
    }

    #[cfg(unix)]
    fn executable(path: &Path, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn an_installed_target_needs_nothing() {
        let root = scratch("installed");
        let sysroot = fake_rustup_sysroot(&root, true);
        assert_eq!(plan(&sysroot, None), Plan::Ready);
        assert_eq!(plan(&sysroot, Some("/bin/rustup".into())), Plan::Ready);
    }

    #[test]
    fn a_missing_target_of_a_rustup_toolchain_is_added_to_that_toolchain() {
        let root = scratch("missing-rustup");
        let sysroot = fake_rustup_sysroot(&root, false);
        assert_eq!(
            plan(&sysroot, Some("/opt/bin/rustup".into())),
            Plan::RustupAdd {
                rustup: "/opt/bin/rustup".into(),
                toolchain: "stable-x86_64-unknown-linux-gnu".into()
            }
        );
    }

    #[test]
    fn without_rustup_the_remedy_names_the_command() {
        let root = scratch("missing-no-rustup");
        let sysroot = fake_rustup_sysroot(&root, false);
        let Plan::Unfixable { remedy } = plan(&sysroot, None) else {
            panic!("expected Unfixable");
        };
        assert!(
            remedy.contains(
                "rustup target add wasm32-wasip1 --toolchain stable-x86_64-unknown-linux-gnu"
            ),
            "{remedy}"
        );
    }

    #[test]
    fn a_toolchain_outside_rustup_is_not_handed_to_rustup() {
        // A distribution's rustc (/usr/lib/rust, say): `rustup target add` would install into
        // some other toolchain and the build would still fail.
        let root = scratch("distro");
        let sysroot = root.join("usr");
        std::fs::create_dir_all(sysroot.join("lib/rustlib")).unwrap();
        let Plan::Unfixable { remedy } = plan(&sysroot, Some("/bin/rustup".into())) else {
            panic!("expected Unfixable");
        };
        assert!(remedy.contains("not managed by rustup"), "{remedy}");
        assert!(
            remedy.contains("rustup target add wasm32-wasip1"),
            "{remedy}"
        );
    }

    #[test]
    fn finds_rustup_on_a_path_value() {
        let root = scratch("path");
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("rustup"), "").unwrap();
        let path = std::env::join_paths([root.join("empty"), bin.clone()]).unwrap();
        assert_eq!(find_in_path(&path, "rustup"), Some(bin.join("rustup")));
        assert_eq!(find_in_path(&path, "cargo"), None);
    }

    /// The whole flow with a fake rustc (printing a fake sysroot) and a fake rustup (creating
    /// the target directory and recording its arguments); the real toolchain is not touched.
    #[cfg(unix)]
    #[test]
    fn adds_the_target_with_rustup_then_checks_it_is_there() {
        let root = scratch("flow");
        let sysroot = fake_rustup_sysroot(&root, false);
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let calls = root.join("rustup-calls");
        executable(&bin.join("rustc"), &format!("echo '{}'", sysroot.display()));
        executable(
            &bin.join("rustup"),
            &format!(
                "echo \"$@\" >> '{}'\nmkdir -p '{}'",
                calls.display(),
                target_libdir(&sysroot).display()
            ),
        );
        let tools = Tools {
            rustc: bin.join("rustc"),
            path: Some(bin.clone().into_os_string()),
        };

        assert_eq!(
            ensure_with(&tools, &root).unwrap(),
            TargetStatus::Added {
                toolchain: "stable-x86_64-unknown-linux-gnu".into()
            }
        );
        assert_eq!(
            std::fs::read_to_string(&calls).unwrap(),
            "target add wasm32-wasip1 --toolchain stable-x86_64-unknown-linux-gnu\n"
        );
        // Now present: rustup is not run again.
        assert_eq!(
            ensure_with(&tools, &root).unwrap(),
            TargetStatus::AlreadyInstalled
        );
        assert_eq!(std::fs::read_to_string(&calls).unwrap().lines().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn a_failing_rustup_is_a_typed_error_naming_the_command() {
        let root = scratch("rustup-fails");
        let sysroot = fake_rustup_sysroot(&root, false);
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        executable(&bin.join("rustc"), &format!("echo '{}'", sysroot.display()));
        executable(&bin.join("rustup"), "exit 1");
        let tools = Tools {
            rustc: bin.join("rustc"),
            path: Some(bin.into_os_string()),
        };

        let error = ensure_with(&tools, &root).unwrap_err();
        assert!(
            matches!(&error, BuildError::WasmTargetInstallFailed { command, .. }
                if command == "rustup target add wasm32-wasip1 --toolchain stable-x86_64-unknown-linux-gnu"),
            "{error}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn without_rustup_the_error_tells_what_to_run() {
        let root = scratch("no-rustup");
        let sysroot = fake_rustup_sysroot(&root, false);
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        executable(&bin.join("rustc"), &format!("echo '{}'", sysroot.display()));
        let tools = Tools {
            rustc: bin.join("rustc"),
            path: Some(bin.into_os_string()),
        };

        let error = ensure_with(&tools, &root).unwrap_err().to_string();
        assert!(
            error.contains("wasm32-wasip1 target is not installed"),
            "{error}"
        );
        assert!(
            error.contains(
                "rustup target add wasm32-wasip1 --toolchain stable-x86_64-unknown-linux-gnu"
            ),
            "{error}"
        );
    }

    /// The real toolchain, read-only: whatever its state, the check agrees with the sysroot.
    #[test]
    fn the_real_toolchain_is_judged_by_its_sysroot() {
        let tools = Tools::from_env();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let sysroot = sysroot(&tools, &dir).unwrap();
        assert!(sysroot.join("lib").join("rustlib").is_dir(), "{sysroot:?}");
        assert_eq!(
            plan(&sysroot, None) == Plan::Ready,
            target_libdir(&sysroot).is_dir()
        );
    }
}
