#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Experiments change without a rebuild: Envoy receives a new filter configuration (here through
//! ECDS from a watched file, as a control plane would push it) and the new experiment applies to
//! the next requests. Set `WASMESH_SKIP_ENVOY=1` to skip.

mod common;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use wasmesh_envoy::{self as envoy, Envoy, EnvoyBuilder, HttpRequest, TestServer, WasmFilter};

const WAIT: Duration = Duration::from_secs(30);

/// Writes the ECDS resource for the fault filter with `config`, atomically (Envoy watches the
/// file for moves into place).
fn publish(path: &Path, version: u32, config: &str) {
    let filter = WasmFilter::new(common::wasm())
        .name("fault")
        .configuration(config)
        .to_envoy_json();
    let resource = json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": "fault",
            "typed_config": filter["typed_config"],
        }],
    });
    let staging = path.with_extension("tmp");
    std::fs::write(&staging, resource.to_string()).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

fn status(envoy: &Envoy) -> u16 {
    envoy
        .send(&HttpRequest::get("/checkout").header("host", "shop"))
        .unwrap()
        .status
}

fn until_status(envoy: &Envoy, expected: u16) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = status(envoy);
        if got == expected {
            return;
        }
        assert!(Instant::now() < deadline, "still {got}, never {expected}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_new_plugin_configuration_takes_effect_without_a_rebuild() {
    if envoy::skip_requested() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fault-ecds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let resource = dir.join("fault.json");
    publish(
        &resource,
        1,
        r#"{"abort": {"http_status": 503, "percentage": {"numerator": 100}}}"#,
    );
    let upstream = TestServer::echo().unwrap();
    let envoy = EnvoyBuilder::new()
        .http_filter_json(json!({
            "name": "fault",
            "config_discovery": {
                "config_source": { "path_config_source": { "path": resource.display().to_string() } },
                "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"],
            },
        }))
        .upstream(upstream.addr())
        .start()
        .unwrap();
    until_status(&envoy, 503);

    // The chaos run changes: a different status, then off.
    publish(
        &resource,
        2,
        r#"{"abort": {"http_status": 429, "percentage": {"numerator": 100}}}"#,
    );
    until_status(&envoy, 429);
    publish(&resource, 3, r#"{}"#);
    until_status(&envoy, 200);
    for _ in 0..5 {
        assert_eq!(status(&envoy), 200);
    }

    // A bad configuration is refused and the running experiment stays in place.
    publish(&resource, 4, r#"{"abort": {"http_status": 700}}"#);
    let deadline = Instant::now() + WAIT;
    while !envoy
        .log()
        .contains("abort.http_status: must be in [200, 600), got 700")
    {
        assert!(
            Instant::now() < deadline,
            "the bad configuration was never considered"
        );
        thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..5 {
        assert_eq!(status(&envoy), 200);
    }
    publish(
        &resource,
        5,
        r#"{"abort": {"http_status": 418, "percentage": {"numerator": 100}}}"#,
    );
    until_status(&envoy, 418);
    let _ = std::fs::remove_dir_all(&dir);
}
