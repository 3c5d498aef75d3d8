//! Wasm filter images: building them in the formats Istio and other runtimes pull, and finding
//! the module in a pulled image. Pure data work; the registry traffic is in `registry.rs`.
//!
//! Formats (`wasmesh push --format`):
//!
//! - `oci`, the *Wasm OCI variant* (solo.io's "Wasm Artifact Image Specification", what `wasme`
//!   pushed and Istio reads): the runtime config `application/vnd.module.wasm.config.v1+json`
//!   (`type`, `abi_version`, `config.root_ids`) is both the manifest's config and its first layer,
//!   the module is the second layer, `application/vnd.module.wasm.content.layer.v1+wasm`. Istio
//!   requires exactly these two layers.
//! - `compat`, the *compat variant* as an OCI image: one `application/vnd.oci.image.layer.v1.tar+gzip`
//!   layer holding `plugin.wasm` (and `runtime-config.json`), an OCI image config, and the
//!   manifest annotation `module.wasm.image/variant: compat`.
//! - `compat-docker`, the same with Docker schema 2 media types (what `docker build` of
//!   `FROM scratch` + `COPY plugin.wasm` gives).
//! - `cncf`, the CNCF TAG Runtime Wasm OCI artifact layout (`application/vnd.wasm.config.v0+json`
//!   config, one `application/wasm` layer), read by wasmtime/wkg/Spin tooling. Istio cannot pull
//!   it (its fetcher knows only the first three).
//!
//! Images are reproducible: the same module, format and root ids give the same manifest digest.
//! Timestamps come from `SOURCE_DATE_EPOCH` (the reproducible-builds convention), else the Unix
//! epoch.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use wasmesh_harness::build::sha256_hex;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const WASM_RUNTIME_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
pub const WASM_CONTENT_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
pub const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_IMAGE_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const CNCF_WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const CNCF_WASM_LAYER: &str = "application/wasm";

/// Every manifest media type `pull` asks for.
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
];

/// The file name of the module inside a compat layer (Istio looks for this base name).
pub const COMPAT_MODULE_FILE: &str = "plugin.wasm";
const RUNTIME_CONFIG_FILE: &str = "runtime-config.json";
const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

/// Largest module (and layer) `pull` accepts: a bound against decompression bombs and runaway
/// downloads, far above any real filter.
pub const MAX_MODULE_BYTES: u64 = 256 * 1024 * 1024;

/// An image layout for a Wasm filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Wasm OCI variant: runtime config + `application/vnd.module.wasm.content.layer.v1+wasm`.
    #[value(name = "oci")]
    Oci,
    /// Compat variant, OCI manifest: one tar+gzip layer holding plugin.wasm.
    #[value(name = "compat")]
    Compat,
    /// Compat variant, Docker schema 2 manifest.
    #[value(name = "compat-docker")]
    CompatDocker,
    /// CNCF Wasm artifact: `application/vnd.wasm.config.v0+json` + `application/wasm`.
    #[value(name = "cncf")]
    Cncf,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Oci => "oci",
            Format::Compat => "compat",
            Format::CompatDocker => "compat-docker",
            Format::Cncf => "cncf",
        }
    }
}

/// What the Wasm OCI variant's runtime config says about the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The proxy-wasm ABI the module exports, e.g. `proxy_abi_version_0_2_1`.
    pub abi_version: String,
    /// Root ids the module serves (empty: any; wasmesh filters serve every root id).
    pub root_ids: Vec<String>,
}

/// A content-addressed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: &'static str,
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    fn new(media_type: &'static str, bytes: Vec<u8>) -> Self {
        Blob {
            media_type,
            digest: digest_of(&bytes),
            bytes,
        }
    }

    fn descriptor(&self, title: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: self.media_type.to_string(),
            digest: self.digest.clone(),
            size: self.bytes.len() as u64,
            annotations: title
                .map(|title| BTreeMap::from([(TITLE_ANNOTATION.to_string(), title.to_string())]))
                .unwrap_or_default(),
        }
    }
}

/// An image ready to push: its blobs, then its manifest.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest: Vec<u8>,
    pub manifest_media_type: &'static str,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

impl Image {
    /// The manifest digest (`sha256:<hex>`): what `WasmPlugin.sha256` pins (without the prefix).
    pub fn digest(&self) -> String {
        digest_of(&self.manifest)
    }

    /// Every blob once (the Wasm OCI variant uses its config as a layer too).
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut blobs: Vec<&Blob> = Vec::new();
        for blob in std::iter::once(&self.config).chain(&self.layers) {
            if !blobs.iter().any(|known| known.digest == blob.digest) {
                blobs.push(blob);
            }
        }
        blobs
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// An image manifest (OCI or Docker schema 2; both share these fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Present only in an index or manifest list.
    #[serde(default, skip_serializing)]
    pub manifests: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A reference to a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Builds the image of `wasm` in `format`.
pub fn build(format: Format, wasm: &[u8], module: &ModuleInfo, epoch: u64) -> Result<Image> {
    let created = rfc3339(epoch);
    let runtime_config = serde_json::to_vec(&serde_json::json!({
        "type": "envoy_proxy",
        "abi_version": module.abi_version,
        "config": { "root_ids": module.root_ids },
    }))?;
    let (manifest_media_type, config, layers, annotations) = match format {
        Format::Oci => {
            let config = Blob::new(WASM_RUNTIME_CONFIG, runtime_config);
            let content = Blob::new(WASM_CONTENT_LAYER, wasm.to_vec());
            let annotations = BTreeMap::from([
                (
                    "module.wasm.runtime/type".to_string(),
                    "envoy_proxy".to_string(),
                ),
                (
                    "module.wasm.runtime/abi_version".to_string(),
                    module.abi_version.clone(),
                ),
            ]);
            let layers = vec![
                (config.clone(), Some(RUNTIME_CONFIG_FILE)),
                (content, Some(COMPAT_MODULE_FILE)),
            ];
            (
                OCI_MANIFEST,
                (config, Some(RUNTIME_CONFIG_FILE)),
                layers,
                annotations,
            )
        }
        Format::Compat | Format::CompatDocker => {
            let docker = format == Format::CompatDocker;
            let tar = compat_tar(wasm, &runtime_config, epoch)?;
            let diff_id = digest_of(&tar);
            let layer = Blob::new(
                if docker {
                    DOCKER_LAYER_TAR_GZIP
                } else {
                    OCI_LAYER_TAR_GZIP
                },
                gzip(&tar)?,
            );
            let image_config = serde_json::to_vec(&serde_json::json!({
                "architecture": "wasm",
                "os": "wasip1",
                "created": created,
                "config": {},
                "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            }))?;
            let config = Blob::new(
                if docker {
                    DOCKER_IMAGE_CONFIG
                } else {
                    OCI_IMAGE_CONFIG
                },
                image_config,
            );
            // The compat spec asks for the variant annotation on OCI manifests; Docker schema 2
            // has no annotations.
            let annotations = if docker {
                BTreeMap::new()
            } else {
                BTreeMap::from([(
                    "module.wasm.image/variant".to_string(),
                    "compat".to_string(),
                )])
            };
            (
                if docker {
                    DOCKER_MANIFEST
                } else {
                    OCI_MANIFEST
                },
                (config, None),
                vec![(layer, None)],
                annotations,
            )
        }
        Format::Cncf => {
            let layer = Blob::new(CNCF_WASM_LAYER, wasm.to_vec());
            let config = Blob::new(
                CNCF_WASM_CONFIG,
                serde_json::to_vec(&serde_json::json!({
                    "created": created,
                    "architecture": "wasm",
                    "os": "wasip1",
                    "layerDigests": [layer.digest],
                }))?,
            );
            (
                OCI_MANIFEST,
                (config, None),
                vec![(layer, Some(COMPAT_MODULE_FILE))],
                BTreeMap::new(),
            )
        }
    };
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(manifest_media_type.to_string()),
        manifests: None,
        config: Some(config.0.descriptor(config.1)),
        layers: layers
            .iter()
            .map(|(blob, title)| blob.descriptor(*title))
            .collect(),
        annotations,
    };
    Ok(Image {
        manifest: serde_json::to_vec(&manifest)?,
        manifest_media_type,
        config: config.0,
        layers: layers.into_iter().map(|(blob, _)| blob).collect(),
    })
}

/// The compat layer's tar: `plugin.wasm` and `runtime-config.json`, owned by root, mode 0644,
/// dated `epoch`, so the same module always gives the same bytes.
fn compat_tar(wasm: &[u8], runtime_config: &[u8], epoch: u64) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, contents) in [
        (COMPAT_MODULE_FILE, wasm),
        (RUNTIME_CONFIG_FILE, runtime_config),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_path(name)?;
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(epoch);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, contents)?;
    }
    Ok(builder.into_inner()?)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    // GzEncoder writes mtime 0 and no file name: the output depends on the input only.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

/// Where the module is in a pulled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLayer {
    pub format: Format,
    pub layer: Descriptor,
}

/// Parses a manifest and finds the layer holding the module, the way Istio's fetcher does
/// (Docker manifest: compat; last layer tar+gzip: compat; a Wasm content layer: the OCI variant),
/// plus the CNCF layout.
pub fn locate_module(manifest_bytes: &[u8]) -> Result<(Manifest, ModuleLayer)> {
    let manifest: Manifest =
        serde_json::from_slice(manifest_bytes).context("the manifest is not valid JSON")?;
    if manifest.schema_version != 2 {
        bail!(
            "unsupported manifest schemaVersion {} (only 2)",
            manifest.schema_version
        );
    }
    let media_type = manifest.media_type.as_deref().unwrap_or(OCI_MANIFEST);
    if manifest.manifests.is_some() || media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
    {
        bail!("the reference names an image index (several manifests); pull one of its manifests by digest");
    }
    let last = manifest.layers.last();
    let found = match last {
        Some(layer) if layer.media_type == DOCKER_LAYER_TAR_GZIP => Some(Format::CompatDocker),
        Some(layer) if layer.media_type == OCI_LAYER_TAR_GZIP => Some(Format::Compat),
        _ => None,
    };
    let module = if let (Some(format), Some(layer)) = (found, last) {
        ModuleLayer {
            format,
            layer: layer.clone(),
        }
    } else if let Some(layer) = manifest
        .layers
        .iter()
        .find(|layer| layer.media_type == WASM_CONTENT_LAYER)
    {
        ModuleLayer {
            format: Format::Oci,
            layer: layer.clone(),
        }
    } else if let [layer] = manifest.layers.as_slice() {
        if layer.media_type != CNCF_WASM_LAYER {
            bail!(unknown_layout(&manifest));
        }
        ModuleLayer {
            format: Format::Cncf,
            layer: layer.clone(),
        }
    } else {
        bail!(unknown_layout(&manifest));
    };
    if module.layer.size > MAX_MODULE_BYTES {
        bail!(
            "the module layer is {} bytes, more than the {MAX_MODULE_BYTES} this tool accepts",
            module.layer.size
        );
    }
    Ok((manifest, module))
}

fn unknown_layout(manifest: &Manifest) -> String {
    format!(
        "not a Wasm filter image: layers {:?} match none of the known layouts (a {WASM_CONTENT_LAYER} \
         layer, a tar+gzip layer holding {COMPAT_MODULE_FILE}, or a single {CNCF_WASM_LAYER} layer)",
        manifest
            .layers
            .iter()
            .map(|layer| layer.media_type.as_str())
            .collect::<Vec<_>>()
    )
}

/// The module from the bytes of its layer (already digest-checked).
pub fn extract_module(module: &ModuleLayer, layer_bytes: Vec<u8>) -> Result<Vec<u8>> {
    let wasm = match module.format {
        Format::Oci | Format::Cncf => layer_bytes,
        Format::Compat | Format::CompatDocker => module_from_tar_gz(&layer_bytes)?,
    };
    if !is_wasm(&wasm) {
        bail!("the image's module is not a WebAssembly binary (no \\0asm header)");
    }
    Ok(wasm)
}

fn module_from_tar_gz(bytes: &[u8]) -> Result<Vec<u8>> {
    // Bounded: a small layer must not inflate into gigabytes.
    let decoder = flate2::read::MultiGzDecoder::new(bytes).take(MAX_MODULE_BYTES * 2);
    let mut archive = tar::Archive::new(decoder);
    for entry in archive.entries().context("reading the layer as tar")? {
        let mut entry = entry.context("reading the layer as tar")?;
        let path = entry
            .path()
            .context("reading a tar entry name")?
            .into_owned();
        let is_module = path
            .file_name()
            .is_some_and(|name| name == COMPAT_MODULE_FILE);
        if is_module && entry.header().entry_type().is_file() {
            if entry.size() > MAX_MODULE_BYTES {
                bail!("{COMPAT_MODULE_FILE} is larger than {MAX_MODULE_BYTES} bytes");
            }
            let mut wasm = Vec::new();
            entry
                .read_to_end(&mut wasm)
                .with_context(|| format!("reading {COMPAT_MODULE_FILE} from the layer"))?;
            return Ok(wasm);
        }
    }
    Err(anyhow!("the layer has no {COMPAT_MODULE_FILE}"))
}

/// True for a WebAssembly binary (magic and version 1).
pub fn is_wasm(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm\x01\0\0\0")
}

/// The creation time images carry: `SOURCE_DATE_EPOCH`, else 0.
pub fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={text:?} is not a number of seconds")),
        Err(_) => Ok(0),
    }
}

/// `epoch` (Unix seconds) as RFC 3339 UTC, e.g. `1970-01-01T00:00:00Z`.
fn rfc3339(epoch: u64) -> String {
    // Whole days of a `u64` of seconds always fit an `i64`.
    let days = i64::try_from(epoch / 86_400).unwrap_or(i64::MAX);
    let seconds = epoch % 86_400;
    let (year, month, day) = wasmesh_sdk::clock::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3_600,
        seconds % 3_600 / 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const WASM: &[u8] = b"\0asm\x01\0\0\0 pretend module";

    fn info() -> ModuleInfo {
        ModuleInfo {
            abi_version: "proxy_abi_version_0_2_1".to_string(),
            root_ids: vec!["root".to_string()],
        }
    }

    fn manifest_json(image: &Image) -> serde_json::Value {
        serde_json::from_slice(&image.manifest).unwrap()
    }

    #[test]
    fn wasm_oci_variant_has_the_runtime_config_and_content_layers() {
        let image = build(Format::Oci, WASM, &info(), 0).unwrap();
        let manifest = manifest_json(&image);
        assert_eq!(manifest["mediaType"], OCI_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], WASM_RUNTIME_CONFIG);
        let layers: Vec<&str> = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|layer| layer["mediaType"].as_str().unwrap())
            .collect();
        assert_eq!(layers, [WASM_RUNTIME_CONFIG, WASM_CONTENT_LAYER]);
        let runtime: serde_json::Value = serde_json::from_slice(&image.config.bytes).unwrap();
        assert_eq!(
            runtime,
            serde_json::json!({"type": "envoy_proxy", "abi_version": "proxy_abi_version_0_2_1",
                               "config": {"root_ids": ["root"]}})
        );
        assert_eq!(image.layers[1].bytes, WASM);
        assert_eq!(image.layers[1].digest, digest_of(WASM));
        // The config doubles as a layer: pushed once.
        assert_eq!(image.blobs().len(), 2);
    }

    #[test]
    fn compat_variants_wrap_plugin_wasm_in_one_tar_gz_layer() {
        for (format, manifest_type, layer_type, config_type) in [
            (
                Format::Compat,
                OCI_MANIFEST,
                OCI_LAYER_TAR_GZIP,
                OCI_IMAGE_CONFIG,
            ),
            (
                Format::CompatDocker,
                DOCKER_MANIFEST,
                DOCKER_LAYER_TAR_GZIP,
                DOCKER_IMAGE_CONFIG,
            ),
        ] {
            let image = build(format, WASM, &info(), 0).unwrap();
            let manifest = manifest_json(&image);
            assert_eq!(manifest["mediaType"], manifest_type);
            assert_eq!(manifest["config"]["mediaType"], config_type);
            assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
            assert_eq!(manifest["layers"][0]["mediaType"], layer_type);
            assert_eq!(
                manifest["annotations"]["module.wasm.image/variant"],
                if format == Format::Compat {
                    serde_json::json!("compat")
                } else {
                    serde_json::Value::Null
                }
            );
            let (_, module) = locate_module(&image.manifest).unwrap();
            assert_eq!(module.format, format);
            let wasm = extract_module(&module, image.layers[0].bytes.clone()).unwrap();
            assert_eq!(wasm, WASM);
            // diff_ids name the uncompressed tar, as image configs require.
            let config: serde_json::Value = serde_json::from_slice(&image.config.bytes).unwrap();
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(image.layers[0].bytes.as_slice())
                .read_to_end(&mut tar)
                .unwrap();
            assert_eq!(config["rootfs"]["diff_ids"][0], digest_of(&tar));
        }
    }

    #[test]
    fn cncf_layout_is_one_application_wasm_layer() {
        let image = build(Format::Cncf, WASM, &info(), 0).unwrap();
        let manifest = manifest_json(&image);
        assert_eq!(manifest["config"]["mediaType"], CNCF_WASM_CONFIG);
        assert_eq!(manifest["layers"][0]["mediaType"], CNCF_WASM_LAYER);
        let config: serde_json::Value = serde_json::from_slice(&image.config.bytes).unwrap();
        assert_eq!(config["layerDigests"][0], digest_of(WASM));
        assert_eq!(config["created"], "1970-01-01T00:00:00Z");
        let (_, module) = locate_module(&image.manifest).unwrap();
        assert_eq!(module.format, Format::Cncf);
    }

    #[test]
    fn images_are_reproducible() {
        for format in [
            Format::Oci,
            Format::Compat,
            Format::CompatDocker,
            Format::Cncf,
        ] {
            let first = build(format, WASM, &info(), 1_700_000_000).unwrap();
            let second = build(format, WASM, &info(), 1_700_000_000).unwrap();
            assert_eq!(first.digest(), second.digest(), "{format:?}");
            let other_time = build(format, WASM, &info(), 1).unwrap();
            if format != Format::Oci {
                assert_ne!(
                    first.digest(),
                    other_time.digest(),
                    "{format:?} carries a date"
                );
            }
        }
    }

    #[test]
    fn unknown_layouts_and_indexes_are_refused_with_the_reason() {
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": OCI_IMAGE_CONFIG, "digest": "sha256:00", "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:11", "size": 3}],
        });
        let error = locate_module(manifest.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a Wasm filter image"), "{error}");
        assert!(
            error.contains("application/vnd.oci.image.layer.v1.tar"),
            "{error}"
        );

        let index =
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []});
        let error = locate_module(index.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(error.contains("image index"), "{error}");
    }

    #[test]
    fn a_compat_layer_without_plugin_wasm_is_refused() {
        let tar = {
            let mut builder = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_ustar();
            header.set_path("other.wasm").unwrap();
            header.set_size(4);
            header.set_cksum();
            builder.append(&header, &b"\0asm"[..]).unwrap();
            builder.into_inner().unwrap()
        };
        let module = ModuleLayer {
            format: Format::Compat,
            layer: image_descriptor(),
        };
        let error = extract_module(&module, gzip(&tar).unwrap())
            .unwrap_err()
            .to_string();
        assert!(error.contains("has no plugin.wasm"), "{error}");
    }

    fn image_descriptor() -> Descriptor {
        Descriptor {
            media_type: OCI_LAYER_TAR_GZIP.to_string(),
            digest: "sha256:00".to_string(),
            size: 1,
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
