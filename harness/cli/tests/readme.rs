#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The README's "Filters" section quotes every shipped Envoy bootstrap and Istio `WasmPlugin`
//! (`examples/envoy/*.yaml`, `examples/istio/*.yaml`, which other tests run in Envoy and check
//! against each filter's `config.json`): each must appear there verbatim, so what a reader
//! copies from the README is what the tests proved.

use std::path::Path;

#[test]
fn the_readme_quotes_every_shipped_configuration_verbatim() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut quoted = 0;
    for kind in ["envoy", "istio"] {
        let dir = root.join("examples").join(kind);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|ext| ext != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let relative = format!(
                "examples/{kind}/{}",
                path.file_name().unwrap().to_string_lossy()
            );
            assert!(
                readme.contains(&format!("<code>{relative}</code>")),
                "README.md does not name {relative}"
            );
            assert!(
                readme.contains(&format!("```yaml\n{text}```")),
                "README.md does not quote {relative} verbatim: update its copy in the Filters section"
            );
            quoted += 1;
        }
    }
    assert_eq!(quoted, 14, "seven filters, an Envoy and an Istio file each");
}
