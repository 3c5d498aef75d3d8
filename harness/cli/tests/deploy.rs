#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! `wasmesh envoy-config` and `wasmesh istio-config`: golden outputs, every filter's configuration
//! embedded exactly (checked through an independent YAML parser), refusal of invalid
//! configurations, and generated bootstraps running in a real Envoy.
//!
//! Regenerate the goldens after an intended change with
//! `WASMESH_UPDATE_GOLDEN=1 cargo test -p wasmesh-cli --test deploy`.

mod common;

use std::path::{Path, PathBuf};

use common::{failed, scratch_dir, stderr, succeeded, test_module_file, wasmesh, workspace_root};
use serde_json::Value;
use wasmesh_envoy::{
    self as envoy, BootstrapFormat, EnvoyBuilder, HttpRequest, HttpResponse, TestServer,
};
use wasmesh_harness::build::sha256_hex;
use yaml_rust2::{Yaml, YamlLoader};

const FILTERS: &[&str] = &[
    "fault",
    "header-filter",
    "jwt-authn",
    "policy",
    "rate-limit",
    "rbac",
    "telemetry",
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn golden_config(name: &str) -> String {
    golden_dir()
        .join("configs")
        .join(format!("{name}.json"))
        .to_str()
        .unwrap()
        .to_string()
}

/// The configuration a filter ships with.
fn shipped_config(filter: &str) -> PathBuf {
    let folder = if filter == "header-filter" {
        "examples"
    } else {
        "filters"
    };
    workspace_root()
        .join(folder)
        .join(filter)
        .join("config.json")
}

/// Parses YAML with an implementation independent of the generator, as JSON.
fn parse_yaml(text: &str) -> Value {
    let documents = YamlLoader::load_from_str(text).unwrap_or_else(|error| {
        panic!("generated YAML does not parse: {error}\n{text}");
    });
    assert_eq!(documents.len(), 1, "one document expected");
    to_json(&documents[0])
}

fn to_json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Real(text) => serde_json::from_str(text).unwrap(),
        Yaml::Integer(number) => Value::from(*number),
        Yaml::String(text) => Value::String(text.clone()),
        Yaml::Boolean(flag) => Value::Bool(*flag),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    let Yaml::String(key) = key else {
                        panic!("non-string key {key:?}");
                    };
                    (key.clone(), to_json(value))
                })
                .collect(),
        ),
        Yaml::Null => Value::Null,
        other => panic!("unexpected YAML node {other:?}"),
    }
}

/// The `envoy.filters.http.wasm` entry of a bootstrap.
fn wasm_filter(bootstrap: &Value) -> &Value {
    let filters = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"];
    let wasm = &filters[0];
    assert_eq!(wasm["name"], "envoy.filters.http.wasm");
    assert_eq!(filters[1]["name"], "envoy.filters.http.router");
    &wasm["typed_config"]["config"]
}

fn cluster<'a>(bootstrap: &'a Value, name: &str) -> &'a Value {
    bootstrap["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|cluster| cluster["name"] == name)
        .unwrap_or_else(|| panic!("no cluster {name} in {bootstrap:#}"))
}

/// Compares with (or, with WASMESH_UPDATE_GOLDEN=1, rewrites) a golden file. The test module's
/// sha256 is written as a placeholder, so the goldens do not depend on the WAT encoder.
fn assert_golden(name: &str, generated: &str, module_sha256: &str) {
    let normalized = generated.replace(module_sha256, "<sha256 of the test module>");
    let path = golden_dir().join(name);
    if std::env::var("WASMESH_UPDATE_GOLDEN").is_ok_and(|value| value == "1") {
        std::fs::write(&path, &normalized).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "{}: {error}; run with WASMESH_UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert!(
        normalized == expected,
        "{name} differs from the golden (WASMESH_UPDATE_GOLDEN=1 rewrites it):\n{normalized}"
    );
}

#[test]
fn generated_configs_match_the_goldens() {
    let dir = scratch_dir("goldens");
    let module = test_module_file(&dir, "golden");
    let module_sha256 = sha256_hex(&std::fs::read(&module).unwrap());
    let module = module.to_str().unwrap();
    let pinned = format!("sha256:{}", "ab".repeat(32));
    let header_filter = golden_config("header-filter");
    let jwt_authn = golden_config("jwt-authn");
    let policy = golden_config("policy");
    let rbac = golden_config("rbac");
    let telemetry = golden_config("telemetry");
    let jwt_image = format!(
        "registry.example.com/wasmesh/jwt-authn@sha256:{}",
        "cd".repeat(32)
    );
    // --no-validate: the goldens pin the generator's output; whether each filter accepts its
    // configuration is checked below with the configurations the filters ship.
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "envoy-header-filter.yaml",
            vec![
                "envoy-config",
                "--filter",
                "header-filter",
                "--config",
                &header_filter,
                "--wasm",
                module,
                "--code-path",
                "/etc/envoy/header-filter.wasm",
            ],
        ),
        (
            "envoy-jwt-authn.yaml",
            vec![
                "envoy-config",
                "--filter",
                "jwt-authn",
                "--config",
                &jwt_authn,
                "--wasm",
                module,
                "--code-path",
                "/etc/envoy/jwt-authn.wasm",
                "--upstream",
                "backend.internal:8080",
                "--failure-policy",
                "fail-open",
            ],
        ),
        (
            "envoy-policy-remote-code.yaml",
            vec![
                "envoy-config",
                "--filter",
                "policy",
                "--config",
                &policy,
                "--wasm",
                module,
                "--code-url",
                "https://filters.example.com/wasmesh/policy.wasm",
                "--upstream",
                "10.0.0.7:8080",
                "--cluster",
                "ratelimit=10.0.0.9:8081,http2",
                "--listen",
                "0.0.0.0:8443",
                "--admin",
                "127.0.0.1:19000",
                "--failure-policy",
                "fail-reload",
            ],
        ),
        (
            "istio-rbac.yaml",
            vec![
                "istio-config",
                "--filter",
                "rbac",
                "--config",
                &rbac,
                "--image",
                "oci://registry.example.com/wasmesh/rbac:0.1.0",
                "--sha256",
                &pinned,
                "--namespace",
                "shop",
                "--selector",
                "app=storefront",
                "--priority",
                "10",
                "--match-mode",
                "server",
                "--match-port",
                "8080",
            ],
        ),
        (
            "istio-jwt-authn.yaml",
            vec![
                "istio-config",
                "--filter",
                "jwt-authn",
                "--config",
                &jwt_authn,
                "--image",
                &jwt_image,
                "--namespace",
                "istio-system",
                "--selector",
                "istio=ingressgateway",
            ],
        ),
        (
            "istio-telemetry.yaml",
            vec![
                "istio-config",
                "--filter",
                "telemetry",
                "--config",
                &telemetry,
                "--image",
                "https://filters.example.com/wasmesh/telemetry.wasm",
                "--wasm",
                module,
                "--failure-policy",
                "fail-open",
                "--name",
                "istio-telemetry",
                "--image-pull-policy",
                "Always",
            ],
        ),
    ];
    for (golden, mut args) in cases {
        args.push("--no-validate");
        let output = wasmesh(&args);
        assert_golden(golden, &succeeded(&output), &module_sha256);
    }
}

#[test]
fn golden_envoy_bootstraps_pass_envoys_own_validation() {
    if envoy::skip_requested() {
        return;
    }
    let binary = envoy::find_envoy().unwrap();
    let dir = scratch_dir("envoy-validate");
    let module = test_module_file(&dir, "envoy-validate");
    let mut checked = 0;
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("envoy-") && name.ends_with(".yaml")) {
            continue;
        }
        // Envoy reads local code while validating: point it at a module that exists here.
        let text = std::fs::read_to_string(&path).unwrap();
        let local = text
            .lines()
            .find_map(|line| line.trim().strip_prefix("filename: /etc/envoy/"))
            .map(|file| format!("/etc/envoy/{file}"));
        let text = match local {
            Some(local) => text.replace(&local, module.to_str().unwrap()),
            None => text,
        };
        let bootstrap = dir.join(&name);
        std::fs::write(&bootstrap, text).unwrap();
        let output = std::process::Command::new(&binary)
            .args([
                "--mode",
                "validate",
                "--disable-hot-restart",
                "-l",
                "warning",
                "-c",
            ])
            .arg(&bootstrap)
            .output()
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "Envoy rejects {name}:\n{log}");
        assert!(log.contains("OK"), "{name}: {log}");
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn every_filter_config_is_embedded_exactly_in_envoy_and_istio_configs() {
    let dir = scratch_dir("embedded");
    let module = test_module_file(&dir, "embedded");
    let module_sha256 = sha256_hex(&std::fs::read(&module).unwrap());
    for filter in FILTERS {
        let config_path = shipped_config(filter);
        let config_text = std::fs::read_to_string(&config_path).unwrap();
        let config_path = config_path.to_str().unwrap();

        let output = wasmesh(&[
            "envoy-config",
            "--filter",
            filter,
            "--config",
            config_path,
            "--wasm",
            module.to_str().unwrap(),
            "--code-url",
            "https://filters.example.com/f.wasm",
        ]);
        let bootstrap = parse_yaml(&succeeded(&output));
        let wasm = wasm_filter(&bootstrap);
        assert_eq!(
            wasm["configuration"]["value"].as_str().unwrap(),
            config_text,
            "{filter}: the configuration must be embedded byte for byte"
        );
        assert_eq!(wasm["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
        assert_eq!(wasm["failure_policy"], "FAIL_CLOSED");
        assert_eq!(
            wasm["vm_config"]["code"]["remote"]["sha256"],
            module_sha256.as_str()
        );
        // Every cluster the configuration names next to a URI exists.
        let document: Value = serde_json::from_str(&config_text).unwrap();
        for name in http_uri_clusters(&document) {
            let cluster = cluster(&bootstrap, &name);
            assert_eq!(cluster["type"], "STRICT_DNS", "{filter}: {name}");
        }

        let output = wasmesh(&[
            "istio-config",
            "--filter",
            filter,
            "--config",
            config_path,
            "--image",
            "oci://registry.example.com/wasmesh/f:1",
        ]);
        let resource = parse_yaml(&succeeded(&output));
        assert_eq!(resource["kind"], "WasmPlugin");
        assert_eq!(
            resource["spec"]["url"],
            "oci://registry.example.com/wasmesh/f:1"
        );
        assert_eq!(resource["spec"]["failStrategy"], "FAIL_CLOSE");
        assert_eq!(
            resource["spec"]["pluginConfig"], document,
            "{filter}: pluginConfig must be the configuration"
        );
        assert!(
            stderr(&output).contains("no sha256"),
            "{filter}: an unpinned image deserves a warning"
        );
    }
}

fn http_uri_clusters(value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    match value {
        Value::Object(map) => {
            if let (Some(Value::String(_)), Some(Value::String(cluster))) =
                (map.get("uri"), map.get("cluster"))
            {
                found.push(cluster.clone());
            }
            map.values()
                .for_each(|value| found.extend(http_uri_clusters(value)));
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| found.extend(http_uri_clusters(item))),
        _ => {}
    }
    found
}

#[test]
fn invalid_configurations_are_refused_before_anything_is_generated() {
    let dir = scratch_dir("refused");
    let module = test_module_file(&dir, "refused");
    let config = dir.join("rbac.json");
    std::fs::write(
        &config,
        r#"{"rules": {"action": "ALLOW", "policies": {}}, "shadow": 1}"#,
    )
    .unwrap();
    let output_file = dir.join("envoy.yaml");
    for command in ["envoy-config", "istio-config"] {
        let mut args = vec![
            command,
            "--filter",
            "rbac",
            "--config",
            config.to_str().unwrap(),
            "-o",
            output_file.to_str().unwrap(),
        ];
        if command == "envoy-config" {
            args.extend(["--wasm", module.to_str().unwrap()]);
        } else {
            args.extend(["--image", "oci://r.example.com/rbac:1"]);
        }
        let output = wasmesh(&args);
        let error = failed(&output);
        assert!(
            error.contains("rbac.json: shadow: unknown field `shadow`"),
            "{error}"
        );
        assert!(error.contains("nothing generated"), "{error}");
        assert!(
            !output_file.exists(),
            "{command} must not write a config it refused"
        );
    }
    let output = wasmesh(&[
        "envoy-config",
        "--filter",
        "no-such-filter",
        "--config",
        config.to_str().unwrap(),
        "--wasm",
        module.to_str().unwrap(),
    ]);
    let error = failed(&output);
    assert!(
        error.contains("unknown filter \"no-such-filter\""),
        "{error}"
    );
    assert!(error.contains("--no-validate"), "{error}");
}

#[test]
fn istio_pins_oci_images_by_manifest_digest() {
    let dir = scratch_dir("istio-pins");
    let module = test_module_file(&dir, "istio-pins");
    let config = shipped_config("header-filter");
    let config = config.to_str().unwrap();
    let istio = |extra: &[&str]| {
        let mut args = vec![
            "istio-config",
            "--filter",
            "header-filter",
            "--config",
            config,
        ];
        args.extend_from_slice(extra);
        wasmesh(&args)
    };
    // The module's own sha256 is not what Istio checks for an OCI image.
    let error = failed(&istio(&[
        "--image",
        "oci://r.example.com/f:1",
        "--wasm",
        module.to_str().unwrap(),
    ]));
    assert!(error.contains("manifest digest"), "{error}");

    // A digest in the reference is the pin.
    let digest = "ef".repeat(32);
    let resource = parse_yaml(&succeeded(&istio(&[
        "--image",
        &format!("r.example.com/f@sha256:{digest}"),
    ])));
    assert_eq!(resource["spec"]["sha256"], digest.as_str());
    assert_eq!(
        resource["spec"]["url"],
        format!("oci://r.example.com/f@sha256:{digest}")
    );

    let error = failed(&istio(&[
        "--image",
        &format!("r.example.com/f@sha256:{digest}"),
        "--sha256",
        &"01".repeat(32),
    ]));
    assert!(
        error.contains("differs from the digest in --image"),
        "{error}"
    );

    // A plain .wasm URL is pinned by the module's sha256.
    let resource = parse_yaml(&succeeded(&istio(&[
        "--image",
        "https://filters.example.com/f.wasm",
        "--wasm",
        module.to_str().unwrap(),
    ])));
    assert_eq!(
        resource["spec"]["sha256"],
        sha256_hex(&std::fs::read(&module).unwrap()).as_str()
    );
}

/// Generates a bootstrap for the real header filter with ports chosen by the OS.
fn header_filter_bootstrap(extra: &[&str]) -> (String, PathBuf) {
    let wasm = wasmesh_harness::build::wasm("wasmesh-example-header-filter").unwrap();
    let config = shipped_config("header-filter");
    let mut args = vec![
        "envoy-config",
        "--filter",
        "header-filter",
        "--config",
        config.to_str().unwrap(),
        "--wasm",
        wasm.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    (succeeded(&wasmesh(&args)), wasm)
}

#[test]
fn a_generated_bootstrap_runs_the_filter_in_real_envoy() {
    if envoy::skip_requested() {
        return;
    }
    let upstream = TestServer::echo().unwrap();
    let (bootstrap, _) = header_filter_bootstrap(&["--upstream", &upstream.addr().to_string()]);
    let envoy = EnvoyBuilder::new()
        .start_with_bootstrap(&bootstrap, BootstrapFormat::Yaml)
        .unwrap();

    let denied = envoy.send(&HttpRequest::get("/admin/users")).unwrap();
    assert_eq!(denied.status, 403);
    assert_eq!(denied.text(), "Forbidden by wasmesh header-filter\n");

    let allowed = envoy.send(&HttpRequest::get("/catalog")).unwrap();
    assert_eq!(allowed.status, 200);
    let received = allowed.json().unwrap();
    assert_eq!(received["path"], "/catalog", "{received}");
    assert!(
        received.to_string().contains("x-wasmesh-filtered"),
        "the filter's request header must reach the upstream: {received}"
    );
    assert_eq!(
        upstream.requests().len(),
        1,
        "the denied request never reached the upstream"
    );
}

#[test]
fn remote_code_is_downloaded_and_checked_by_real_envoy() {
    if envoy::skip_requested() {
        return;
    }
    let wasm = wasmesh_harness::build::wasm("wasmesh-example-header-filter").unwrap();
    let bytes = std::fs::read(&wasm).unwrap();
    let code_server = TestServer::start(move |_| HttpResponse::new(200, bytes.clone())).unwrap();
    let url = format!("http://{}/header-filter.wasm", code_server.addr());
    let (bootstrap, _) = header_filter_bootstrap(&["--code-url", &url, "--direct-response", "204"]);
    assert!(bootstrap.contains("remote:"), "{bootstrap}");
    let envoy = EnvoyBuilder::new()
        .start_with_bootstrap(&bootstrap, BootstrapFormat::Yaml)
        .unwrap();

    assert!(
        !code_server.requests().is_empty(),
        "Envoy fetched the module"
    );
    assert_eq!(envoy.send(&HttpRequest::get("/admin")).unwrap().status, 403);
    assert_eq!(envoy.send(&HttpRequest::get("/shop")).unwrap().status, 204);
}
