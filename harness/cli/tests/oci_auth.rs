#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! `wasmesh push`/`pull` against a registry with HTTP basic authentication (htpasswd, bcrypt):
//! credentials from the environment or stdin work, missing or wrong ones are reported clearly,
//! and the password never appears in the output.

mod common;

use std::sync::OnceLock;

use common::{
    failed, scratch_dir, stdout, succeeded, test_module_file, wasmesh_with, Invocation, Registry,
    PASSWORD, USERNAME,
};

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::with_basic_auth)
}

#[test]
fn credentials_from_the_environment_or_stdin_push_and_pull() {
    let dir = scratch_dir("auth-ok");
    let wasm = test_module_file(&dir, "auth-ok");
    let reference = registry().reference("private/filter:1");

    let from_env = Invocation {
        env: vec![("WASMESH_REGISTRY_PASSWORD", PASSWORD)],
        ..Invocation::default()
    };
    let output = wasmesh_with(
        &[
            "push",
            wasm.to_str().unwrap(),
            &reference,
            "--plain-http",
            "--username",
            USERNAME,
        ],
        &from_env,
    );
    let digest = succeeded(&output).trim().to_string();
    assert!(!common::stderr(&output).contains(PASSWORD));

    let from_stdin = Invocation {
        stdin: Some(&format!("{PASSWORD}\n")),
        ..Invocation::default()
    };
    let pulled = dir.join("pulled.wasm");
    let output = wasmesh_with(
        &[
            "pull",
            &reference,
            "-o",
            pulled.to_str().unwrap(),
            "--plain-http",
            "--username",
            USERNAME,
            "--password-stdin",
        ],
        &from_stdin,
    );
    assert_eq!(succeeded(&output).trim(), digest);
    assert_eq!(
        std::fs::read(&pulled).unwrap(),
        std::fs::read(&wasm).unwrap()
    );
    assert!(!stdout(&output).contains(PASSWORD));
    assert!(!common::stderr(&output).contains(PASSWORD));
}

#[test]
fn missing_credentials_are_reported_clearly() {
    let dir = scratch_dir("auth-missing");
    let wasm = test_module_file(&dir, "auth-missing");
    let output = wasmesh_with(
        &[
            "push",
            wasm.to_str().unwrap(),
            &registry().reference("private/filter:anonymous"),
            "--plain-http",
        ],
        &Invocation::default(),
    );
    let error = failed(&output);
    assert!(error.contains("401 Unauthorized"), "{error}");
    assert!(error.contains("it needs credentials"), "{error}");
    assert!(error.contains("--username"), "{error}");
}

#[test]
fn a_wrong_password_is_reported_without_repeating_it() {
    let dir = scratch_dir("auth-wrong");
    let wasm = test_module_file(&dir, "auth-wrong");
    let wrong = "not-the-Pa55word";
    let invocation = Invocation {
        env: vec![("WASMESH_REGISTRY_PASSWORD", wrong)],
        ..Invocation::default()
    };
    let reference = registry().reference("private/filter:wrong");
    let pulled = dir.join("pulled.wasm");
    let push = [
        "push",
        wasm.to_str().unwrap(),
        &reference,
        "--plain-http",
        "--username",
        USERNAME,
    ];
    let pull = [
        "pull",
        &reference,
        "-o",
        pulled.to_str().unwrap(),
        "--plain-http",
        "--username",
        USERNAME,
    ];
    for args in [&push[..], &pull[..]] {
        let output = wasmesh_with(args, &invocation);
        let error = failed(&output);
        assert!(error.contains("401 Unauthorized"), "{}: {error}", args[0]);
        assert!(
            error.contains("the user name or password is wrong"),
            "{}: {error}",
            args[0]
        );
        assert!(
            !error.contains(wrong),
            "{}: the password leaked: {error}",
            args[0]
        );
        assert!(!stdout(&output).contains(wrong));
    }
    assert!(!pulled.exists());
}

#[test]
fn a_user_name_without_a_password_is_a_usage_error() {
    let dir = scratch_dir("auth-usage");
    let wasm = test_module_file(&dir, "auth-usage");
    let output = wasmesh_with(
        &[
            "push",
            wasm.to_str().unwrap(),
            &registry().reference("private/filter:usage"),
            "--plain-http",
            "--username",
            USERNAME,
        ],
        &Invocation::default(),
    );
    let error = failed(&output);
    assert!(error.contains("--username needs a password"), "{error}");
}
