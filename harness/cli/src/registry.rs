//! Talking to an OCI registry (push and pull of filter images) through the `oci-client` crate.
//!
//! `oci-client` is async; each command runs it on a current-thread tokio runtime of its own.
//! Credentials come from `--username` and `WASMESH_REGISTRY_PASSWORD` or `--password-stdin`; they
//! are never printed (errors name the registry and the status, not what was sent).

use std::io::Read;

use anyhow::{anyhow, bail, Context, Result};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use crate::oci::{self, Format, Image, ModuleLayer};

/// Environment variable holding the registry password (or token).
pub const PASSWORD_ENV: &str = "WASMESH_REGISTRY_PASSWORD";
/// Environment variable holding the registry user name (when `--username` is not given).
pub const USERNAME_ENV: &str = "WASMESH_REGISTRY_USERNAME";

/// How to reach a registry.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// User name for HTTP basic authentication (default: $WASMESH_REGISTRY_USERNAME). The
    /// password is read from $WASMESH_REGISTRY_PASSWORD or, with --password-stdin, from stdin.
    #[arg(long)]
    username: Option<String>,

    /// Read the password from stdin (one line) instead of $WASMESH_REGISTRY_PASSWORD.
    #[arg(long)]
    password_stdin: bool,

    /// Talk plain HTTP to the registry (a local or test registry without TLS).
    #[arg(long)]
    plain_http: bool,

    /// HTTPS without verifying the registry's certificate (self-signed registries).
    #[arg(long)]
    insecure: bool,
}

/// A reference as users write it: `oci://host[:port]/repository[:tag][@sha256:...]` (the
/// `oci://` prefix is optional, as in `WasmPlugin.url`).
pub fn parse_reference(text: &str) -> Result<Reference> {
    let bare = text.strip_prefix("oci://").unwrap_or(text);
    if bare.contains("://") {
        bail!("{text:?} is not an OCI reference: expected oci://host/repository:tag");
    }
    bare.parse::<Reference>()
        .map_err(|error| anyhow!("{text:?} is not a valid OCI reference: {error}"))
}

/// A connected registry client.
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
    runtime: tokio::runtime::Runtime,
    plain_http: bool,
}

/// What `pull` fetched.
#[derive(Debug)]
pub struct Pulled {
    /// The manifest digest (`sha256:<hex>`), verified against the manifest's bytes.
    pub digest: String,
    /// The layout the image uses.
    pub format: Format,
    /// The module.
    pub wasm: Vec<u8>,
}

impl Registry {
    pub fn connect(args: &ConnectionArgs) -> Result<Registry> {
        let auth = credentials(args)?;
        let config = ClientConfig {
            protocol: if args.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: args.insecure,
            ..ClientConfig::default()
        };
        // The TLS stack is built without a default crypto provider; an error only means one is
        // installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::try_from(config).context("creating the registry client")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        Ok(Registry {
            client,
            auth,
            runtime,
            plain_http: args.plain_http,
        })
    }

    /// Pushes `image` (blobs the registry lacks, then the manifest) and returns the manifest
    /// digest the registry now serves for `reference`.
    pub fn push(&self, reference: &Reference, image: &Image) -> Result<String> {
        self.runtime.block_on(async {
            self.client
                .auth(reference, &self.auth, RegistryOperation::Push)
                .await
                .map_err(|error| self.explain(error, reference, "authenticating"))?;
            for blob in image.blobs() {
                let exists = self
                    .client
                    .blob_exists(reference, &blob.digest)
                    .await
                    .map_err(|error| self.explain(error, reference, "checking a blob"))?;
                if !exists {
                    self.client
                        .push_blob(reference, blob.bytes.clone(), &blob.digest)
                        .await
                        .map_err(|error| {
                            self.explain(error, reference, &format!("uploading {}", blob.digest))
                        })?;
                }
            }
            let content_type = image
                .manifest_media_type
                .parse()
                .context("manifest media type")?;
            self.client
                .push_manifest_raw(reference, image.manifest.clone(), content_type)
                .await
                .map_err(|error| self.explain(error, reference, "uploading the manifest"))?;
            // Read back what the registry serves now: it must be exactly the manifest pushed.
            let (served, served_digest) = self
                .client
                .pull_manifest_raw(reference, &self.auth, &[image.manifest_media_type])
                .await
                .map_err(|error| self.explain(error, reference, "reading the manifest back"))?;
            let digest = image.digest();
            if served_digest != digest || served.as_ref() != image.manifest.as_slice() {
                bail!(
                    "the registry serves {served_digest} for {} after the push of {digest}",
                    reference.whole()
                );
            }
            Ok(digest)
        })
    }

    /// Pulls the filter module of `reference`, in any of the known layouts, verifying the
    /// manifest digest (against the reference's digest when it has one, and the registry's
    /// `Docker-Content-Digest`) and every blob's digest and size.
    pub fn pull(&self, reference: &Reference) -> Result<Pulled> {
        self.runtime.block_on(async {
            let (manifest_bytes, digest) = self
                .client
                .pull_manifest_raw(reference, &self.auth, oci::ACCEPTED_MANIFESTS)
                .await
                .map_err(|error| self.explain(error, reference, "fetching the manifest"))?;
            // oci-client checked the bytes against the registry's digest header and the
            // reference's digest; check them once more against what we report.
            let computed = oci::digest_of(&manifest_bytes);
            if computed != digest {
                bail!(tampered("the manifest", &digest, &computed));
            }
            if let Some(pinned) = reference.digest() {
                if pinned != computed {
                    bail!(tampered("the manifest", pinned, &computed));
                }
            }
            let (manifest, module) = oci::locate_module(&manifest_bytes)
                .with_context(|| format!("reading the manifest of {}", reference.whole()))?;
            if let Some(config) = &manifest.config {
                // Small, and part of the image the digest pins: verify it too.
                if config.size <= oci::MAX_MODULE_BYTES {
                    self.fetch_blob(reference, config).await?;
                }
            }
            let layer = self.fetch_blob(reference, &module.layer).await?;
            let wasm = oci::extract_module(&module, layer)
                .with_context(|| format!("extracting the module of {}", reference.whole()))?;
            let ModuleLayer { format, .. } = module;
            Ok(Pulled {
                digest,
                format,
                wasm,
            })
        })
    }

    /// Downloads a blob, checking its size and digest.
    async fn fetch_blob(
        &self,
        reference: &Reference,
        descriptor: &oci::Descriptor,
    ) -> Result<Vec<u8>> {
        let oci_descriptor = OciDescriptor {
            media_type: descriptor.media_type.clone(),
            digest: descriptor.digest.clone(),
            size: i64::try_from(descriptor.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let mut bytes: Vec<u8> = Vec::new();
        self.client
            .pull_blob(reference, &oci_descriptor, &mut bytes)
            .await
            .map_err(|error| {
                self.explain(error, reference, &format!("fetching {}", descriptor.digest))
            })?;
        let computed = oci::digest_of(&bytes);
        if computed != descriptor.digest {
            bail!(tampered(
                &format!("blob {}", descriptor.digest),
                &descriptor.digest,
                &computed
            ));
        }
        if bytes.len() as u64 != descriptor.size {
            bail!(
                "blob {} is {} bytes, the manifest says {}: the image in the registry is corrupt",
                descriptor.digest,
                bytes.len(),
                descriptor.size
            );
        }
        Ok(bytes)
    }

    /// Turns a client error into a message that says what went wrong and what to do, without
    /// repeating anything secret.
    fn explain(
        &self,
        error: OciDistributionError,
        reference: &Reference,
        doing: &str,
    ) -> anyhow::Error {
        let registry = reference.resolve_registry();
        let repository = reference.repository();
        let unauthorized = || {
            anyhow!(
                "{doing}: the registry {registry} refused the request (401 Unauthorized) for \
                 {repository}: {}",
                match &self.auth {
                    RegistryAuth::Anonymous => format!(
                        "it needs credentials; pass --username and the password in ${PASSWORD_ENV} \
                         or with --password-stdin"
                    ),
                    _ => "the user name or password is wrong".to_string(),
                }
            )
        };
        match error {
            OciDistributionError::UnauthorizedError { .. } => unauthorized(),
            OciDistributionError::AuthenticationFailure(_) => unauthorized(),
            OciDistributionError::RequestError(ref request)
                if request.status().map(|status| status.as_u16()) == Some(401) =>
            {
                unauthorized()
            }
            OciDistributionError::RegistryError { ref envelope, .. }
                if envelope
                    .errors
                    .iter()
                    .any(|e| e.code == OciErrorCode::Unauthorized) =>
            {
                unauthorized()
            }
            OciDistributionError::RegistryError { ref envelope, .. }
                if envelope
                    .errors
                    .iter()
                    .any(|e| e.code == OciErrorCode::Denied) =>
            {
                anyhow!("{doing}: the registry {registry} denied access to {repository} (403)")
            }
            OciDistributionError::RegistryError { ref envelope, .. }
                if envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
                    )
                }) =>
            {
                anyhow!(
                    "{doing}: {} does not exist in the registry {registry}",
                    reference.whole()
                )
            }
            OciDistributionError::DigestError(
                oci_client::errors::DigestError::VerificationError { expected, actual },
            ) => anyhow!("{doing}: {}", tampered("the content", &expected, &actual)),
            OciDistributionError::RequestError(request) => {
                let mut message =
                    format!("{doing}: cannot reach the registry {registry}: {request}");
                let mut source = std::error::Error::source(&request);
                while let Some(cause) = source {
                    message.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                if !self.plain_http {
                    message.push_str(" (if the registry serves plain HTTP, pass --plain-http)");
                }
                anyhow!(message)
            }
            other => anyhow!("{doing}: {registry}: {other}"),
        }
    }
}

fn tampered(what: &str, expected: &str, actual: &str) -> String {
    format!(
        "digest mismatch for {what}: expected {expected}, the registry served content hashing to \
         {actual}; the image in the registry is corrupt or was tampered with"
    )
}

fn credentials(args: &ConnectionArgs) -> Result<RegistryAuth> {
    let username = args.username.clone().or_else(|| {
        std::env::var(USERNAME_ENV)
            .ok()
            .filter(|name| !name.is_empty())
    });
    let password = if args.password_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the password from stdin")?;
        Some(text.trim_end_matches(['\n', '\r']).to_string())
    } else {
        std::env::var(PASSWORD_ENV)
            .ok()
            .filter(|password| !password.is_empty())
    };
    match (username, password) {
        (Some(username), Some(password)) => Ok(RegistryAuth::Basic(username, password)),
        (Some(_), None) => {
            bail!("--username needs a password: set ${PASSWORD_ENV} or pass --password-stdin")
        }
        (None, Some(_)) if args.password_stdin => {
            bail!("--password-stdin needs --username (or ${USERNAME_ENV})")
        }
        // A password in the environment without a user name: anonymous, as the user asked.
        (None, _) => Ok(RegistryAuth::Anonymous),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_take_an_optional_oci_scheme() {
        let reference = parse_reference("oci://127.0.0.1:5000/wasmesh/rbac:0.1.0").unwrap();
        assert_eq!(reference.resolve_registry(), "127.0.0.1:5000");
        assert_eq!(reference.repository(), "wasmesh/rbac");
        assert_eq!(reference.tag(), Some("0.1.0"));
        let pinned =
            parse_reference(&format!("registry.example.com/f@sha256:{}", "a".repeat(64))).unwrap();
        assert_eq!(
            pinned.digest(),
            Some(format!("sha256:{}", "a".repeat(64)).as_str())
        );
        assert!(parse_reference("https://example.com/x.wasm")
            .unwrap_err()
            .to_string()
            .contains("not an OCI reference"));
    }
}
