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
//!
//! What a registry sends is bounded before it is buffered. oci-client reads a manifest's whole body into
//! memory, so manifests (and image indexes) are fetched here, with oci-client's authentication but our own
//! GET: a `Content-Length` over [`MAX_JSON_BYTES`] is refused before the body is read, and a body without
//! one is read only up to that bound. Configs are blobs whose descriptor size is checked first, and blobs
//! stream to disk. What still buffers unbounded, inside oci-client: the body of an error answer to a blob
//! request, and the token service's answer during a bearer-token exchange.
//!
//! A blob download that fails for a transient reason (connection refused or reset, a timeout, a 5xx or 429
//! answer) is retried with exponential backoff, [`RetryPolicy`]; a permanent failure (not found, refused
//! credentials, a digest or size mismatch) is not.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciEnvelope;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
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
/// The part of a registry's error answer kept for the message.
const MAX_ERROR_BODY: u64 = 64 << 10;

/// How often and how patiently a blob download is retried after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// The wait before the first retry; each further retry waits twice as long as the one before...
    pub first_delay: Duration,
    /// ...up to this.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, waiting 1 s, 2 s and 4 s in between: rides out a registry restart or a dropped
    /// connection, and gives up within seconds on a registry that stays down.
    fn default() -> Self {
        RetryPolicy { attempts: 4, first_delay: Duration::from_secs(1), max_delay: Duration::from_secs(8) }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

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
    /// Whether trying again may succeed: the connection failed, broke off or timed out, or the registry
    /// answered 5xx or 429. Not found, refused credentials and wrong content are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            PullError::Download { .. } => true,
            PullError::Registry { source, .. } => match source {
                OciDistributionError::RequestError(_) => true,
                OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
                OciDistributionError::RegistryError { envelope, .. } => {
                    envelope.errors.iter().any(|e| matches!(e.code, OciErrorCode::Toomanyrequests))
                }
                _ => false,
            },
            PullError::Content { .. } => false,
        }
    }

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

    fn insecure(&self, host: &str) -> bool {
        self.hosts.get(host).is_some_and(|c| c.insecure)
    }

    /// oci-client's client, and a plain HTTP client for the requests made here (manifests).
    fn clients(&self) -> Result<(Client, reqwest::Client), OciDistributionError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(USER_AGENT)
            .build()?;
        let insecure: Vec<String> = self.hosts.iter().filter(|(_, c)| c.insecure).map(|(h, _)| h.clone()).collect();
        let oci = Client::new(ClientConfig {
            protocol: if insecure.is_empty() { ClientProtocol::Https } else { ClientProtocol::HttpsExcept(insecure) },
            // Indexes are resolved here, from the raw manifest.
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        });
        Ok((oci, http))
    }
}

const USER_AGENT: &str = concat!("bulkhead/", env!("CARGO_PKG_VERSION"));

/// One registry (or mirror) session for one image: where requests go, and as whom.
pub struct Session {
    client: Client,
    http: reqwest::Client,
    /// Plain HTTP to `host`.
    insecure: bool,
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
        let (client, http) = registries.clients().map_err(|source| PullError::Registry {
            registry: name.domain.clone(),
            what: "the manifest".into(),
            kind: RegistryFailure::Unavailable,
            source,
        })?;
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
            let session = Session {
                client: client.clone(),
                http: http.clone(),
                insecure: registries.insecure(mirror),
                reference,
                auth,
                host: mirror.clone(),
            };
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
        let insecure = registries.insecure(&name.domain);
        let session = Session { client, http, insecure, reference: base, auth, host: name.domain.clone() };
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
        let bytes = self.get_manifest(&reference, what).await?;
        let content = |source| PullError::Content { registry: self.host.clone(), source };
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

    /// GETs the manifest `reference` names, authenticated as oci-client would, reading at most
    /// [`MAX_JSON_BYTES`] of it (oci-client's own manifest requests buffer whatever the registry sends).
    async fn get_manifest(&self, reference: &Reference, what: &str) -> Result<bytes::Bytes, PullError> {
        let err = |source| self.registry_err(what, source);
        // Trades the credentials for a token when the registry wants one (oci-client keeps it for the blob
        // requests that follow); `None` means no token: basic credentials, if any, go with each request.
        let token = self.client.auth(reference, &self.auth, RegistryOperation::Pull).await.map_err(err)?;
        let url = format!(
            "{scheme}://{registry}/v2/{repository}/manifests/{tag_or_digest}{ns}",
            scheme = if self.insecure { "http" } else { "https" },
            registry = reference.resolve_registry(),
            repository = reference.repository(),
            tag_or_digest = reference.digest().or(reference.tag()).unwrap_or("latest"),
            ns = reference.namespace().map(|ns| format!("?ns={ns}")).unwrap_or_default(),
        );
        let mut request = self.http.get(&url).header(reqwest::header::ACCEPT, ACCEPTED_MANIFESTS.join(", "));
        request = match (token, &self.auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        };
        let mut response = request.send().await.map_err(|e| err(e.into()))?;
        let status = response.status();
        if !status.is_success() {
            let body =
                read_bounded(&mut response, MAX_ERROR_BODY).await.map_err(|e| err(e.into()))?.unwrap_or_default();
            return Err(err(error_answer(status, &body, &url)));
        }
        let too_large = |size| PullError::Content {
            registry: self.host.clone(),
            source: LayoutError::TooLarge { what: what.to_owned(), size, limit: MAX_JSON_BYTES },
        };
        if let Some(size) = response.content_length().filter(|&n| n > MAX_JSON_BYTES) {
            return Err(too_large(size));
        }
        // No (or a false) Content-Length: the bound holds while reading.
        read_bounded(&mut response, MAX_JSON_BYTES)
            .await
            .map_err(|e| err(e.into()))?
            .ok_or_else(|| too_large(MAX_JSON_BYTES + 1))
    }

    fn registry_err(&self, what: &str, source: OciDistributionError) -> PullError {
        PullError::Registry { registry: self.host.clone(), what: what.to_owned(), kind: classify(&source), source }
    }
}

/// Reads `response`'s body up to `limit` bytes: `None` when it is longer (the rest is not read).
async fn read_bounded(response: &mut reqwest::Response, limit: u64) -> Result<Option<bytes::Bytes>, reqwest::Error> {
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// The error a registry's non-success answer means, classified as oci-client classifies its own answers.
fn error_answer(status: reqwest::StatusCode, body: &[u8], url: &str) -> OciDistributionError {
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return OciDistributionError::UnauthorizedError { url: url.to_owned() };
    }
    match serde_json::from_slice::<OciEnvelope>(body) {
        Ok(envelope) if status.is_client_error() => {
            OciDistributionError::RegistryError { envelope, url: url.to_owned() }
        }
        _ => OciDistributionError::ServerError {
            code: status.as_u16(),
            url: url.to_owned(),
            message: String::from_utf8_lossy(body).into_owned(),
        },
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
    fn retries_back_off_exponentially_up_to_the_cap() {
        let p = RetryPolicy::default();
        let delays: Vec<u64> = (1..=6).map(|r| p.delay(r).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 8, 8]);
        assert_eq!(p.delay(u32::MAX), p.max_delay);
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let registry = |code| PullError::Registry {
            registry: "r".into(),
            what: "w".into(),
            kind: RegistryFailure::Unavailable,
            source: OciDistributionError::ServerError { code, url: "u".into(), message: String::new() },
        };
        assert!(registry(503).is_transient() && registry(500).is_transient() && registry(429).is_transient());
        assert!(!registry(404).is_transient() && !registry(400).is_transient());
        let broke = PullError::Download {
            registry: "r".into(),
            what: "w".into(),
            done: 1,
            size: 2,
            source: std::io::ErrorKind::ConnectionReset.into(),
        };
        assert!(broke.is_transient());
        let mismatch = PullError::Content { registry: "r".into(), source: LayoutError::UnknownFormat };
        assert!(!mismatch.is_transient());
        let unauthorized = PullError::Registry {
            registry: "r".into(),
            what: "w".into(),
            kind: RegistryFailure::Unauthorized,
            source: OciDistributionError::UnauthorizedError { url: "u".into() },
        };
        assert!(!unauthorized.is_transient());
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
