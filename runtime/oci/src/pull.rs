//! Pulling images from registries (distribution-spec), with `oci-client` as the HTTP and auth client.
//!
//! A pull resolves the reference to a manifest (choosing linux/[`host_arch`] from an image index or
//! Docker manifest list), then brings the config and every layer into the store's content-addressed blob
//! directory (`<images>/blobs/sha256/<hex>`). Each blob is streamed to a temporary file in `<images>/tmp/`
//! while its size and sha256 are checked against the descriptor; only a blob that matches is fsynced and
//! renamed into place, so the blob directory never holds a partial or unverified blob, and a failed pull
//! leaves none (the temporary file is removed, or at worst emptied from `tmp/` at the next start). Blobs
//! verified before a failure stay, for the next attempt.
//!
//! Each layer is applied from the blob directory as soon as it is there, while later layers download (a
//! few at once), exactly as an imported OCI layout's layers are (verified again on the way, with their
//! diff ids): a pulled image and an imported one go through the same unpacker and converter. A layer thus
//! streams from the network to disk and from disk to the unpacker; no layer is held in memory.
//!
//! Blobs already in the store are not downloaded again, and one download of a blob runs at a time: a second
//! pull of the same image waits for the first's download and then finds the blob in place.
//!
//! Registries are reached over HTTPS, except hosts configured `insecure`; a registry's `mirrors` are tried in
//! order before it (with the upstream name in the `ns` query parameter, as containerd does), and a mirror
//! that fails is logged and skipped.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

#[cfg(doc)]
use super::layout::host_arch;
use super::layout::{LayoutError, MAX_JSON_BYTES, Sha256Hex};
use super::reference::ImageName;

/// Media types a pull accepts for the manifest it resolves.
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    super::oci::DOCKER_LIST,
    super::oci::DOCKER_MANIFEST,
];

/// Connecting to a registry gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A read that brings nothing for this long fails the pull.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// `[registries."<host>"]` in the daemon's configuration: how to reach one registry.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RegistryConfig {
    /// Hosts (host\[:port\]) tried, in order, before this registry. Give a mirror its own entry to make it
    /// insecure or give it credentials.
    pub mirrors: Vec<String>,
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// User name for basic auth (or for the token service a bearer challenge names).
    pub username: Option<String>,
    /// Password or token for `username`.
    pub password: Option<String>,
}

impl fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("mirrors", &self.mirrors)
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl RegistryConfig {
    /// Checks the entry for `host`; the error says what to fix.
    pub fn validate(&self, host: &str) -> Result<(), String> {
        if !super::reference::valid_domain(host) {
            return Err(format!("registries.\"{host}\": not a host[:port]"));
        }
        if let Some(m) = self.mirrors.iter().find(|m| !super::reference::valid_domain(m)) {
            return Err(format!("registries.\"{host}\".mirrors: {m:?} is not a host[:port] (no scheme, no path)"));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(format!("registries.\"{host}\": give both username and password, or neither"));
        }
        Ok(())
    }

    fn auth(&self) -> RegistryAuth {
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            _ => RegistryAuth::Anonymous,
        }
    }
}

/// Credentials for one pull (a CRI `AuthConfig`), used instead of the configured ones for the image's
/// own registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// What a pull reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullProgress {
    /// The manifest is resolved: the image id and its layers (digest, size), bottom first.
    Resolved {
        /// "sha256:..." of the manifest.
        id: String,
        /// Layer blobs, bottom first.
        layers: Vec<(String, u64)>,
    },
    /// Layer `index` (0-based) has `done` of its `total` bytes in the store.
    Layer {
        /// Which layer.
        index: usize,
        /// Bytes in the store.
        done: u64,
        /// The blob's size.
        total: u64,
        /// True when the blob was in the store already (nothing was downloaded).
        cached: bool,
    },
    /// Every blob is here; the root image is being built.
    Building,
}

/// Why a registry request failed, as far as the caller can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryFailure {
    /// The repository, tag, manifest or blob does not exist.
    NotFound,
    /// The registry wants (other) credentials.
    Unauthorized,
    /// The registry could not be reached or failed.
    Unavailable,
}

/// Failures of a pull (wrapped in [`super::ImageError::Pull`] with the reference).
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// A request to the registry failed.
    #[error("{}", registry_message(.registry, .what, *.kind))]
    Registry {
        /// The host that was asked.
        registry: String,
        /// What was being fetched.
        what: String,
        /// The failure's class.
        kind: RegistryFailure,
        /// Cause.
        #[source]
        source: OciDistributionError,
    },
    /// A blob's download broke off or did not match its descriptor; nothing was kept.
    #[error("downloading {what} from {registry} ({done} of {size} bytes received)")]
    Download {
        /// The host.
        registry: String,
        /// Which blob.
        what: String,
        /// Bytes received.
        done: u64,
        /// Bytes expected.
        size: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// What the registry sent is malformed, does not match its digest, or is not usable here.
    #[error("the image from {registry} is not usable")]
    Content {
        /// The host.
        registry: String,
        /// What is wrong.
        #[source]
        source: LayoutError,
    },
}

fn registry_message(registry: &str, what: &str, kind: RegistryFailure) -> String {
    match kind {
        RegistryFailure::NotFound => format!("{what} not found at {registry}: check the name, tag or digest"),
        RegistryFailure::Unauthorized => format!(
            "{registry} refused access to {what}: check the credentials in [registries.\"{registry}\"] of the \
             daemon's configuration"
        ),
        RegistryFailure::Unavailable => format!("fetching {what} from {registry}"),
    }
}

impl PullError {
    /// How the caller should treat the failure, when it came from the registry's answer.
    pub fn registry_failure(&self) -> Option<RegistryFailure> {
        match self {
            PullError::Registry { kind, .. } => Some(*kind),
            PullError::Download { .. } => Some(RegistryFailure::Unavailable),
            PullError::Content { .. } => None,
        }
    }
}

fn classify(e: &OciDistributionError) -> RegistryFailure {
    match e {
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            RegistryFailure::Unauthorized
        }
        OciDistributionError::ImageManifestNotFoundError(_) => RegistryFailure::NotFound,
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                RegistryFailure::Unauthorized
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                RegistryFailure::NotFound
            } else {
                RegistryFailure::Unavailable
            }
        }
        OciDistributionError::ServerError { code: 401 | 403, .. } => RegistryFailure::Unauthorized,
        OciDistributionError::ServerError { code: 404, .. } => RegistryFailure::NotFound,
        _ => RegistryFailure::Unavailable,
    }
}

/// The registries this node knows how to reach, from the daemon's configuration.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    hosts: BTreeMap<String, RegistryConfig>,
}

impl Registries {
    /// From `[registries]`, keyed by host\[:port\] as references name them ("docker.io" for Docker Hub).
    pub fn new(hosts: BTreeMap<String, RegistryConfig>) -> Self {
        Registries { hosts }
    }

    fn get(&self, host: &str) -> Option<&RegistryConfig> {
        self.hosts.get(host)
    }

    fn client(&self) -> Client {
        let insecure: Vec<String> = self.hosts.iter().filter(|(_, c)| c.insecure).map(|(h, _)| h.clone()).collect();
        Client::new(ClientConfig {
            protocol: if insecure.is_empty() { ClientProtocol::Https } else { ClientProtocol::HttpsExcept(insecure) },
            // Indexes are resolved here, from the raw manifest.
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: concat!("bulkhead/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        })
    }
}

/// One registry (or mirror) session for one image: where requests go, and as whom.
pub struct Session {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
    /// The host requests go to (a mirror, or the image's registry).
    host: String,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("reference", &self.reference.whole()).field("host", &self.host).finish()
    }
}

/// A manifest as a registry served it, checked against the digest it was asked by (if any).
#[derive(Debug)]
pub struct RawManifest {
    /// The bytes.
    pub bytes: bytes::Bytes,
    /// Their digest.
    pub digest: Sha256Hex,
}

impl Session {
    /// Resolves `name` (by its digest when it has one, else its tag) to its top-level manifest, trying the
    /// registry's mirrors first. `credentials` replace the configured ones for the image's own registry.
    pub async fn open(
        registries: &Registries,
        name: &ImageName,
        credentials: Option<&Credentials>,
    ) -> Result<(Session, RawManifest), PullError> {
        let client = registries.client();
        let base = match (&name.digest, &name.tag) {
            (Some(d), _) => Reference::with_digest(name.domain.clone(), name.path.clone(), d.clone()),
            (None, Some(t)) => Reference::with_tag(name.domain.clone(), name.path.clone(), t.clone()),
            (None, None) => Reference::with_tag(name.domain.clone(), name.path.clone(), "latest".into()),
        };
        let own = registries.get(&name.domain);
        let mut last_err = None;
        for mirror in own.map(|c| c.mirrors.as_slice()).unwrap_or_default() {
            let mut reference = base.clone();
            reference.set_mirror_registry(mirror.clone());
            let auth = registries.get(mirror).map(RegistryConfig::auth).unwrap_or(RegistryAuth::Anonymous);
            let session = Session { client: client.clone(), reference, auth, host: mirror.clone() };
            match session.manifest(name.digest.as_deref(), "the manifest").await {
                Ok(m) => return Ok((session, m)),
                Err(e) => {
                    tracing::warn!(mirror = %mirror, image = %name.normalized(), error = &e as &dyn std::error::Error, "a registry mirror failed; trying the next source");
                    last_err = Some(e);
                }
            }
        }
        let auth = match (credentials, own) {
            (Some(c), _) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            (None, Some(c)) => c.auth(),
            (None, None) => RegistryAuth::Anonymous,
        };
        let session = Session { client, reference: base, auth, host: name.domain.clone() };
        match session.manifest(name.digest.as_deref(), "the manifest").await {
            Ok(m) => Ok((session, m)),
            // The upstream's own failure is the useful one, unless it is only "not reachable" after a mirror
            // said something more specific.
            Err(e) => match last_err {
                Some(m) if e.registry_failure() == Some(RegistryFailure::Unavailable) => Err(m),
                _ => Err(e),
            },
        }
    }

    /// The host requests go to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Fetches the manifest named by this session's reference, or by `digest` when given, and checks it
    /// against that digest.
    pub async fn manifest(&self, digest: Option<&str>, what: &str) -> Result<RawManifest, PullError> {
        let reference = match digest {
            Some(d) => self.reference.clone_with_digest(d.to_owned()),
            None => self.reference.clone(),
        };
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&reference, &self.auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(|source| self.registry_err(what, source))?;
        let content = |source| PullError::Content { registry: self.host.clone(), source };
        if bytes.len() as u64 > MAX_JSON_BYTES {
            return Err(content(LayoutError::TooLarge {
                what: what.to_owned(),
                size: bytes.len() as u64,
                limit: MAX_JSON_BYTES,
            }));
        }
        let actual = Sha256Hex::of(&bytes);
        if let Some(d) = digest {
            let expected = Sha256Hex::parse(d, what).map_err(content)?;
            super::layout::verify(what, &expected, &actual).map_err(content)?;
        }
        Ok(RawManifest { bytes, digest: actual })
    }

    /// Opens the download of blob `digest` (`size` bytes).
    pub async fn blob(
        &self,
        what: &str,
        digest: &Sha256Hex,
        size: u64,
    ) -> Result<oci_client::client::SizedStream, PullError> {
        let desc = OciDescriptor {
            digest: digest.digest(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        self.client.pull_blob_stream(&self.reference, &desc).await.map_err(|source| self.registry_err(what, source))
    }

    fn registry_err(&self, what: &str, source: OciDistributionError) -> PullError {
        PullError::Registry { registry: self.host.clone(), what: what.to_owned(), kind: classify(&source), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_entries_are_checked_and_passwords_never_printed() {
        let ok = RegistryConfig {
            mirrors: vec!["mirror.example:5000".into()],
            username: Some("u".into()),
            password: Some("hunter2".into()),
            ..RegistryConfig::default()
        };
        assert_eq!(ok.validate("docker.io"), Ok(()));
        assert!(!format!("{ok:?}").contains("hunter2"));
        let creds = Credentials { username: "u".into(), password: "hunter2".into() };
        assert!(!format!("{creds:?}").contains("hunter2"));
        let half = RegistryConfig { username: Some("u".into()), ..RegistryConfig::default() };
        assert!(half.validate("docker.io").is_err_and(|e| e.contains("both username and password")));
        let url = RegistryConfig { mirrors: vec!["https://m.example".into()], ..RegistryConfig::default() };
        assert!(url.validate("docker.io").is_err_and(|e| e.contains("no scheme")));
        assert!(RegistryConfig::default().validate("bad host").is_err());
    }

    #[test]
    fn registry_answers_are_classified() {
        let unauthorized = OciDistributionError::UnauthorizedError { url: "u".into() };
        assert_eq!(classify(&unauthorized), RegistryFailure::Unauthorized);
        let gone = OciDistributionError::ServerError { code: 404, url: "u".into(), message: String::new() };
        assert_eq!(classify(&gone), RegistryFailure::NotFound);
        let down = OciDistributionError::ServerError { code: 503, url: "u".into(), message: String::new() };
        assert_eq!(classify(&down), RegistryFailure::Unavailable);
        let e = PullError::Registry {
            registry: "r.example".into(),
            what: "x".into(),
            kind: RegistryFailure::Unauthorized,
            source: unauthorized,
        };
        assert!(e.to_string().contains("[registries.\"r.example\"]"), "{e}");
    }
}
