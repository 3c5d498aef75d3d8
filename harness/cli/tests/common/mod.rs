//! Support shared by the `wasmesh` integration tests: running the binary, test modules, and a
//! real OCI registry (Debian's `docker-registry`, the CNCF distribution server).
// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// A fresh scratch directory under the test target dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How to run `wasmesh` once.
#[derive(Default)]
pub struct Invocation<'a> {
    pub env: Vec<(&'a str, &'a str)>,
    pub stdin: Option<&'a str>,
}

/// Runs `wasmesh` from the workspace root, with no registry credentials in its environment
/// unless given.
pub fn wasmesh(args: &[&str]) -> Output {
    wasmesh_with(args, &Invocation::default())
}

pub fn wasmesh_with(args: &[&str], invocation: &Invocation<'_>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasmesh"));
    command
        .args(args)
        .current_dir(workspace_root())
        .env_remove("WASMESH_REGISTRY_USERNAME")
        .env_remove("WASMESH_REGISTRY_PASSWORD")
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(if invocation.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in &invocation.env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    if let Some(input) = invocation.stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "wasmesh failed ({}):\n{}",
        output.status,
        stderr(output)
    );
    stdout(output)
}

/// Asserts failure with exit status 1 and returns stderr.
pub fn failed(output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected a failure; stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
    stderr(output)
}

/// A minimal proxy-wasm module (ABI 0.2.1) whose bytes depend on `tag`, so tests that tamper with
/// a registry's blobs never share them with other tests.
pub fn test_module(tag: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
             (memory (export "memory") 1)
             (func (export "proxy_abi_version_0_2_1"))
             (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
             (data (i32.const 0) "wasmesh test module {tag}"))"#
    ))
    .unwrap()
}

/// Writes a test module to a scratch file.
pub fn test_module_file(dir: &Path, tag: &str) -> PathBuf {
    let path = dir.join(format!("{tag}.wasm"));
    std::fs::write(&path, test_module(tag)).unwrap();
    path
}

/// A `docker-registry` serving 127.0.0.1 on a port of its choosing, with filesystem storage in a
/// scratch directory. It is stopped, and its storage removed, when this value is dropped or when
/// the test process exits, whichever comes first: a shell wrapper waits for its stdin (a pipe
/// from this process) to close, which the kernel does on exit, even after a crash.
pub struct Registry {
    address: SocketAddr,
    storage: PathBuf,
    wrapper: Child,
    log: Arc<Mutex<String>>,
}

/// Credentials of the registry started with [`Registry::with_basic_auth`].
pub const USERNAME: &str = "deployer";
pub const PASSWORD: &str = "s3cret-Pa55";

impl Registry {
    /// A registry without authentication.
    pub fn anonymous() -> Registry {
        Registry::start(None)
    }

    /// A registry requiring HTTP basic authentication as [`USERNAME`] / [`PASSWORD`] (a bcrypt
    /// htpasswd file, as the registry requires).
    pub fn with_basic_auth() -> Registry {
        Registry::start(Some((USERNAME, PASSWORD)))
    }

    fn start(credentials: Option<(&str, &str)>) -> Registry {
        let binary = ["/usr/bin/docker-registry", "/usr/local/bin/docker-registry"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
            .expect(
                "docker-registry is not installed: the OCI push/pull tests run against it. \
                 Install it with `cargo xtask setup` (`cargo xtask test` sets up and runs every \
                 test) or `apt-get install docker-registry`",
            );
        let dir = scratch_dir("registry");
        let storage = dir.join("storage");
        let auth = match credentials {
            Some((user, password)) => {
                let hash = bcrypt::hash(password, 4).unwrap();
                let htpasswd = dir.join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: wasmesh-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:0\n  secret: wasmesh-test\n\
                 {auth}",
                storage.display()
            ),
        )
        .unwrap();

        let script = r#"
            "$1" serve "$2" 2>&1 &
            registry=$!
            # Returns when the test process closes its end of the pipe (drop, or exit).
            cat >/dev/null
            kill "$registry" 2>/dev/null
            wait "$registry" 2>/dev/null
            rm -rf "$3"
        "#;
        let mut wrapper = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("registry-wrapper")
            .arg(&binary)
            .arg(&config)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(wrapper.stdout.take().unwrap()).lines();
        let mut log = String::new();
        // The registry picks its port (addr :0) and logs it; no polling needed.
        let address = loop {
            let Some(Ok(line)) = lines.next() else {
                panic!("docker-registry exited during startup:\n{log}");
            };
            log.push_str(&line);
            log.push('\n');
            if let Some(rest) = line.split("listening on ").nth(1) {
                let address = rest.split(['"', ' ']).next().unwrap();
                break address.parse::<SocketAddr>().unwrap();
            }
        };
        let log = Arc::new(Mutex::new(log));
        {
            // Keep reading so the registry never blocks on a full pipe.
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        Registry {
            address,
            storage,
            wrapper,
            log,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `oci://127.0.0.1:PORT/<repository>`.
    pub fn reference(&self, repository_and_tag: &str) -> String {
        format!("oci://{}/{repository_and_tag}", self.address)
    }

    /// The file holding blob `digest` (`sha256:...`) in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Closing stdin makes the wrapper stop the registry and remove its files.
        drop(self.wrapper.stdin.take());
        let _ = self.wrapper.wait();
    }
}
