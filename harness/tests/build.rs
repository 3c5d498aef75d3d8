#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The wasm build helper, exercised on small fixture workspaces (so these tests depend on no
//! filter) and on the workspace itself.

use std::path::{Path, PathBuf};

use wasmesh_harness::build::{self, BuildError, Optimization, WasmBuild, ARTIFACT_DIR_NAME};

const WASM_MAGIC: &[u8] = b"\0asm";

/// Writes a one-crate workspace named `name` with the given `[lib]` section and source, and
/// returns its root. The `[workspace]` table keeps cargo from attaching it to the enclosing
/// wasmesh workspace (it lives under wasmesh's `target/`).
fn fixture(name: &str, lib_section: &str, source: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("build-fixtures")
        .join(name);
    std::fs::create_dir_all(root.join("src")).unwrap();
    write_if_changed(
        &root.join("Cargo.toml"),
        &format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             {lib_section}\n\n[workspace]\n"
        ),
    );
    write_if_changed(&root.join("src/lib.rs"), source);
    root
}

/// Several tests share a fixture and build it concurrently: rewriting a file cargo is reading
/// could show it a truncated file, and would needlessly invalidate the build.
fn write_if_changed(path: &Path, contents: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(contents) {
        std::fs::write(path, contents).unwrap();
    }
}

fn cdylib_fixture() -> PathBuf {
    fixture(
        "fixture-cdylib",
        "[lib]\ncrate-type = [\"cdylib\"]",
        "#[no_mangle]\npub extern \"C\" fn answer(x: i32) -> i32 { x.wrapping_mul(42) }\n",
    )
}

#[test]
fn builds_a_cdylib_package_into_its_own_target_dir() {
    let root = cdylib_fixture();

    let wasm = WasmBuild::new("fixture-cdylib")
        .workspace_root(&root)
        .run()
        .unwrap();

    assert_eq!(
        wasm,
        root.join("target")
            .join(ARTIFACT_DIR_NAME)
            .join("wasm32-wasip1/release/fixture_cdylib.wasm")
    );
    let bytes = std::fs::read(&wasm).unwrap();
    assert!(bytes.starts_with(WASM_MAGIC));
}

#[test]
fn reports_compiler_errors_with_cargo_stderr() {
    let root = fixture(
        "fixture-broken",
        "[lib]\ncrate-type = [\"cdylib\"]",
        "pub fn broken() -> i32 { undefined_name_in_fixture }\n",
    );

    let error = WasmBuild::new("fixture-broken")
        .workspace_root(&root)
        .run()
        .unwrap_err();

    let BuildError::CargoFailed {
        package, stderr, ..
    } = &error
    else {
        panic!("expected a cargo failure, got {error}");
    };
    assert_eq!(package, "fixture-broken");
    assert!(stderr.contains("undefined_name_in_fixture"), "{stderr}");
    assert!(error.to_string().contains("undefined_name_in_fixture"));
}

#[test]
fn reports_a_package_that_is_not_a_cdylib() {
    let root = fixture("fixture-rlib", "[lib]", "pub fn f() {}\n");

    let error = WasmBuild::new("fixture-rlib")
        .workspace_root(&root)
        .run()
        .unwrap_err();

    assert!(
        matches!(&error, BuildError::ArtifactMissing { package, .. } if package == "fixture-rlib"),
        "{error}"
    );
}

#[test]
fn reports_an_unknown_package() {
    let root = cdylib_fixture();

    let error = WasmBuild::new("no-such-package")
        .workspace_root(&root)
        .run()
        .unwrap_err();

    let BuildError::CargoFailed { stderr, .. } = &error else {
        panic!("expected a cargo failure, got {error}");
    };
    assert!(stderr.contains("no-such-package"), "{stderr}");
}

#[test]
fn finds_the_workspace_root() {
    let harness_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let expected = harness_dir.parent().unwrap();

    // From the package cargo runs us for, and from a nested directory of another workspace.
    assert_eq!(build::workspace_root().unwrap(), expected);
    let root = cdylib_fixture();
    let fixture = build::locate_workspace(&root.join("src")).unwrap();
    assert_eq!(fixture.root, root);
    if !target_dir_overridden_by_env() {
        assert_eq!(fixture.target_dir, root.join("target"));
    }
}

/// Whether the user runs the tests with a target directory set in the environment, which cargo
/// (and so the build helper) applies to every workspace.
fn target_dir_overridden_by_env() -> bool {
    std::env::var_os("CARGO_TARGET_DIR").is_some()
        || std::env::var_os("CARGO_BUILD_TARGET_DIR").is_some()
}

#[test]
fn builds_into_the_target_dir_cargo_is_configured_with() {
    let root = fixture(
        "fixture-target-dir",
        "[lib]\ncrate-type = [\"cdylib\"]",
        "#[no_mangle]\npub extern \"C\" fn seven() -> i32 { 7 }\n",
    );
    std::fs::create_dir_all(root.join(".cargo")).unwrap();
    write_if_changed(
        &root.join(".cargo/config.toml"),
        "[build]\ntarget-dir = \"elsewhere\"\n",
    );

    let wasm = WasmBuild::new("fixture-target-dir")
        .workspace_root(&root)
        .run()
        .unwrap();

    if target_dir_overridden_by_env() {
        eprintln!("the environment sets the target directory: nothing to check");
        return;
    }
    assert!(
        wasm.starts_with(root.join("elsewhere").join(ARTIFACT_DIR_NAME)),
        "{}",
        wasm.display()
    );
}

#[test]
fn reports_a_directory_outside_any_workspace() {
    let error = build::locate_workspace(Path::new("/")).unwrap_err();

    assert!(
        matches!(error, BuildError::WorkspaceNotFound { .. }),
        "{error}"
    );
}

#[test]
fn optimizes_with_wasm_opt_when_installed() {
    let root = cdylib_fixture();
    let wasm = WasmBuild::new("fixture-cdylib")
        .workspace_root(&root)
        .run()
        .unwrap();
    let output = root.join("optimized.wasm");

    let result = build::optimize(&wasm, &output).unwrap();

    let original = std::fs::read(&wasm).unwrap();
    let optimized = std::fs::read(&output).unwrap();
    assert!(optimized.starts_with(WASM_MAGIC));
    match (build::find_wasm_opt(), result) {
        (Some(found), Optimization::Optimized { wasm_opt }) => {
            assert_eq!(wasm_opt, found);
            assert!(optimized.len() < original.len());
        }
        (None, Optimization::CopiedUnoptimized) => assert_eq!(optimized, original),
        (found, result) => panic!("wasm-opt {found:?} but optimize returned {result:?}"),
    }
}

#[test]
fn reports_wasm_opt_failures() {
    // `cargo xtask test` installs wasm-opt; without it this fails naming the install command.
    let wasm_opt = build::require_wasm_opt().unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("build-fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let not_wasm = dir.join("not-a-module.wasm");
    std::fs::write(&not_wasm, b"this is not wasm").unwrap();

    let error = build::optimize_with(&wasm_opt, &not_wasm, &dir.join("out.wasm")).unwrap_err();

    assert!(
        matches!(&error, BuildError::WasmOptFailed { input, .. } if *input == not_wasm),
        "{error}"
    );
}

#[test]
fn hashes_files_as_sha256_hex() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("build-fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("empty.bin");
    std::fs::write(&file, b"").unwrap();

    assert_eq!(
        build::sha256_file(&file).unwrap(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert!(matches!(
        build::sha256_file(&dir.join("missing.bin")),
        Err(BuildError::Io { .. })
    ));
}
