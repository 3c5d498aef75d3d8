#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! `wasmesh push` and `wasmesh pull` against a real registry (Debian's `docker-registry`,
//! plain HTTP, no authentication; one per test binary): every image format, digests, tampering.

mod common;

use std::sync::OnceLock;

use common::{failed, scratch_dir, succeeded, test_module_file, wasmesh, Registry};
use serde_json::Value;
use wasmesh_envoy::{send, HttpRequest};

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::anonymous)
}

/// What the registry itself serves for a manifest (read with a plain HTTP client, not ours).
fn served_manifest(repository: &str, reference: &str) -> (Value, String, String) {
    let response = send(
        registry().address(),
        &HttpRequest::get(format!("/v2/{repository}/manifests/{reference}")).header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json",
        ),
    )
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let digest = response
        .header("docker-content-digest")
        .unwrap()
        .to_string();
    let content_type = response.header("content-type").unwrap().to_string();
    (response.json().unwrap(), digest, content_type)
}

fn layer_types(manifest: &Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| layer["mediaType"].as_str().unwrap().to_string())
        .collect()
}

/// `wasmesh pull <reference> -o <output> --plain-http`.
fn pull(reference: &str, output: &std::path::Path) -> std::process::Output {
    wasmesh(&[
        "pull",
        reference,
        "-o",
        output.to_str().unwrap(),
        "--plain-http",
    ])
}

fn push(wasm: &std::path::Path, reference: &str, format: &str) -> String {
    let output = wasmesh(&[
        "push",
        wasm.to_str().unwrap(),
        reference,
        "--format",
        format,
        "--plain-http",
    ]);
    succeeded(&output).trim().to_string()
}

#[test]
fn every_format_round_trips_with_the_layout_istio_expects() {
    let dir = scratch_dir("round-trip");
    let wasm = test_module_file(&dir, "round-trip");
    let original = std::fs::read(&wasm).unwrap();
    let cases = [
        (
            "oci",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.module.wasm.config.v1+json",
            vec![
                "application/vnd.module.wasm.config.v1+json",
                "application/vnd.module.wasm.content.layer.v1+wasm",
            ],
        ),
        (
            "compat",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
            vec!["application/vnd.oci.image.layer.v1.tar+gzip"],
        ),
        (
            "compat-docker",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
            vec!["application/vnd.docker.image.rootfs.diff.tar.gzip"],
        ),
        (
            "cncf",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.wasm.config.v0+json",
            vec!["application/wasm"],
        ),
    ];
    for (format, manifest_type, config_type, layers) in cases {
        let repository = format!("wasmesh/round-trip-{format}");
        let reference = registry().reference(&format!("{repository}:1.0.0"));
        let digest = push(&wasm, &reference, format);
        assert!(
            digest.starts_with("sha256:") && digest.len() == 71,
            "{digest}"
        );

        // The registry serves exactly that manifest under the tag, in the layout of the format.
        let (manifest, served_digest, content_type) = served_manifest(&repository, "1.0.0");
        assert_eq!(served_digest, digest, "{format}");
        assert_eq!(content_type, manifest_type, "{format}");
        assert_eq!(manifest["config"]["mediaType"], config_type, "{format}");
        assert_eq!(layer_types(&manifest), layers, "{format}");

        // Pulled back, by tag and by digest, it is the same module, and the same digest.
        for source in [
            reference.clone(),
            registry().reference(&format!("{repository}@{digest}")),
        ] {
            let output_path = dir.join(format!("{format}.pulled.wasm"));
            let output = pull(&source, &output_path);
            assert_eq!(succeeded(&output).trim(), digest, "{format} from {source}");
            assert_eq!(std::fs::read(&output_path).unwrap(), original, "{format}");
            std::fs::remove_file(&output_path).unwrap();
        }
    }
}

#[test]
fn pushing_the_same_module_twice_gives_the_same_digest() {
    let dir = scratch_dir("reproducible");
    let wasm = test_module_file(&dir, "reproducible");
    for format in ["oci", "compat"] {
        let first = push(
            &wasm,
            &registry().reference("wasmesh/reproducible:a"),
            format,
        );
        let second = push(
            &wasm,
            &registry().reference("wasmesh/reproducible:b"),
            format,
        );
        assert_eq!(
            first, second,
            "{format}: a WasmPlugin pin must survive a re-push"
        );
    }
}

#[test]
fn the_wasm_oci_variant_records_the_abi_and_root_ids() {
    let dir = scratch_dir("runtime-config");
    let wasm = test_module_file(&dir, "runtime-config");
    let reference = registry().reference("wasmesh/runtime-config:1");
    let output = wasmesh(&[
        "push",
        wasm.to_str().unwrap(),
        &reference,
        "--root-id",
        "edge",
        "--plain-http",
    ]);
    succeeded(&output);
    let (manifest, _, _) = served_manifest("wasmesh/runtime-config", "1");
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config: Value =
        serde_json::from_slice(&std::fs::read(registry().blob_file(config_digest)).unwrap())
            .unwrap();
    assert_eq!(
        config,
        serde_json::json!({"type": "envoy_proxy", "abi_version": "proxy_abi_version_0_2_1",
                           "config": {"root_ids": ["edge"]}})
    );
}

#[test]
fn a_tampered_layer_is_detected_and_nothing_is_written() {
    let dir = scratch_dir("tampered-layer");
    let wasm = test_module_file(&dir, "tampered-layer");
    let reference = registry().reference("wasmesh/tampered-layer:1");
    push(&wasm, &reference, "oci");
    let (manifest, _, _) = served_manifest("wasmesh/tampered-layer", "1");
    let layer_digest = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();

    // Flip one byte of the module in the registry's storage (same size: only the digest can tell).
    let blob = registry().blob_file(&layer_digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    std::fs::write(&blob, &bytes).unwrap();

    let output_path = dir.join("pulled.wasm");
    let output = pull(&reference, &output_path);
    let error = failed(&output);
    assert!(error.contains("digest mismatch"), "{error}");
    assert!(error.contains(&layer_digest), "{error}");
    assert!(error.contains("corrupt or was tampered with"), "{error}");
    assert!(
        !output_path.exists(),
        "a corrupt module must not be written"
    );
}

#[test]
fn a_tampered_manifest_is_detected() {
    let dir = scratch_dir("tampered-manifest");
    let wasm = test_module_file(&dir, "tampered-manifest");
    let reference = registry().reference("wasmesh/tampered-manifest:1");
    let digest = push(&wasm, &reference, "compat");

    // Change the layer size in the stored manifest: still valid JSON, served under the old digest.
    let blob = registry().blob_file(&digest);
    let text = std::fs::read_to_string(&blob).unwrap();
    let manifest: Value = serde_json::from_str(&text).unwrap();
    let size = manifest["layers"][0]["size"].as_u64().unwrap();
    let tampered = text.replace(
        &format!("\"size\":{size}"),
        &format!("\"size\":{}", size + 1),
    );
    assert_ne!(tampered, text);
    std::fs::write(&blob, tampered).unwrap();

    let output_path = dir.join("pulled.wasm");
    let output = pull(&reference, &output_path);
    let error = failed(&output);
    assert!(error.contains("digest mismatch"), "{error}");
    assert!(error.contains(&digest), "{error}");
    assert!(!output_path.exists());
}

#[test]
fn the_real_filter_survives_the_round_trip_and_accepts_its_config() {
    let built = wasmesh_harness::build::wasm("wasmesh-example-header-filter").unwrap();
    let dir = scratch_dir("real-filter");
    let reference = registry().reference("wasmesh/header-filter:0.1.0");
    let digest = push(&built, &reference, "oci");
    let pulled = dir.join("header-filter.wasm");
    let output = pull(&reference, &pulled);
    assert_eq!(succeeded(&output).trim(), digest);
    assert_eq!(
        std::fs::read(&pulled).unwrap(),
        std::fs::read(&built).unwrap()
    );

    let output = wasmesh(&[
        "validate",
        "--filter",
        "header-filter",
        "--config",
        "examples/header-filter/config.json",
        "--wasm",
        pulled.to_str().unwrap(),
    ]);
    let report = succeeded(&output);
    assert!(
        report.contains("valid header-filter configuration"),
        "{report}"
    );
    assert!(
        report.contains("on_vm_start and on_configure returned true"),
        "{report}"
    );
}

#[test]
fn connection_problems_say_what_to_do() {
    let dir = scratch_dir("usage");
    let wasm = test_module_file(&dir, "usage");
    let reference = registry().reference("wasmesh/usage:1");

    // HTTPS to a plain-HTTP registry.
    let output = wasmesh(&["push", wasm.to_str().unwrap(), &reference]);
    let error = failed(&output);
    assert!(error.contains("pass --plain-http"), "{error}");

    // An image that is not there.
    let output = pull(
        &registry().reference("wasmesh/missing:1"),
        &dir.join("x.wasm"),
    );
    let error = failed(&output);
    assert!(error.contains("does not exist in the registry"), "{error}");

    // Not a module at all.
    let text = dir.join("config.json");
    std::fs::write(&text, "{}").unwrap();
    let output = wasmesh(&["push", text.to_str().unwrap(), &reference, "--plain-http"]);
    let error = failed(&output);
    assert!(error.contains("is not a WebAssembly binary"), "{error}");
}
