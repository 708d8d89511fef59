//! Bulkhead's images: pulls from registries and imports of an OCI image layout (directory or tar) or a
//! `docker save` archive, each becoming a read-only erofs root image that zones mount as a PV block device.
//! Knows nothing of Xen, zones or the daemon's API: the daemon maps its errors and asks whether an image is
//! in use.
//!
//! On disk, under `<state-dir>/images/`:
//! - `<hex>.erofs`: one root image per image, named by the hex of its id;
//! - `records/<hex>.json`: its [`ImageRecord`] (a [`RecordStore`]);
//! - `blobs/sha256/<hex>`: content-addressed blobs (manifests, configs, layers) of pulled images, each
//!   verified before it is renamed in (see [`pull`]);
//! - `tmp/`: work directories of imports in progress (unpacked archive, staging tree, image being built)
//!   and blobs being downloaded; emptied when the store opens.
//!
//! Ids: an image from an OCI layout or a registry is named by its manifest digest; one from a `docker save`
//! archive by the digest of its config file (Docker's image ID; the archive has no manifest, see [`docker`]).
//!
//! An import: open the input (a tar is first unpacked into `tmp/` with the same safe unpacker as layers,
//! see [`unpack`]), read and verify its metadata ([`oci`], [`docker`]), then, unless the image is here
//! already, apply each layer to a staging tree while hashing the blob (against the manifest's digest and
//! size) and the uncompressed tar (against the config's diff id), read the tree's users and groups
//! (see [`accounts`]), run `mkfs.erofs` into `tmp/`, fsync, rename to `<hex>.erofs`, fsync the directory,
//! and write the record. A crash leaves at worst a work directory (removed at the next start) or an image
//! file without a record (removed at the next start).
//!
//! A pull ([`ImageStore::pull`], see [`pull`]) downloads the manifest, config and layers into `blobs/`
//! (verified while streaming), then builds from there exactly as an import builds from a layout.
//!
//! References are unique: tagging an image with a reference another image has moves it. All blocking
//! work runs on `spawn_blocking`; [`ImageStore::get`] and [`ImageStore::list`] only read memory.

pub mod accounts;
pub mod docker;
pub mod erofs;
pub mod layout;
pub mod oci;
pub mod pull;
pub mod reference;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod unpack;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use serde::{Deserialize, Serialize};

use accounts::Accounts;
use bulkhead_store::{Nanos, RecordStore, StoreError, now};
use layout::{Compression, DigestReader, ImagePlan, InputDir, LayerPlan, LayoutError, MAX_JSON_BYTES, Sha256Hex};
use pull::{Credentials, PullError, PullProgress, Registries, RetryPolicy, Session};
use reference::{ImageName, ReferenceError};
use unpack::{StreamKind, UnpackError, UnpackLimits, Unpacker};

/// Shortest id prefix accepted for lookups.
pub const MIN_ID_PREFIX: usize = 12;

/// How a zone should run the image (from the image config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// ENTRYPOINT.
    pub entrypoint: Vec<String>,
    /// CMD.
    pub cmd: Vec<String>,
    /// ENV, in order, split at the first '='.
    pub env: Vec<(String, String)>,
    /// WORKDIR ("" = /).
    pub working_dir: String,
    /// USER ("" = root).
    pub user: String,
    /// STOPSIGNAL ("" = SIGTERM).
    pub stop_signal: String,
    /// EXPOSE, e.g. "80/tcp", sorted.
    pub exposed_ports: Vec<String>,
    /// LABEL.
    pub labels: BTreeMap<String, String>,
}

/// What the image was imported from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageFormat {
    /// An OCI image layout.
    Oci,
    /// A `docker save` archive.
    DockerArchive,
    /// Pulled from a registry.
    Registry,
}

/// An imported image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// "sha256:<hex>": the manifest digest (OCI) or the config digest (docker archive).
    pub id: String,
    /// Normalised references (see [`reference::normalize`]), sorted.
    pub references: Vec<String>,
    /// Bytes of regular-file content in the root image (hard links counted once).
    pub size_bytes: u64,
    /// When it was imported (ns since the epoch).
    pub created_at: Nanos,
    /// How to run it.
    pub config: ImageConfig,
    /// Where it came from.
    pub format: ImageFormat,
    /// The blobs in `blobs/` it was built from ("sha256:..."; manifest, config and layers of a pulled
    /// image; none for an import). [`ImageStore::prune`] keeps these.
    #[serde(default)]
    pub blobs: Vec<String>,
    /// The users and groups of its tree (`/etc/passwd`, `/etc/group`), to resolve user names against:
    /// read when the tree is built, since the root image is not mounted on the node afterwards. Records
    /// written before they were kept have none (such an image resolves numeric users only; importing or
    /// pulling it again after removing it fills them).
    #[serde(default)]
    pub accounts: Accounts,
}

impl ImageRecord {
    /// The record of an image just built from `plan`, before references are added.
    fn built(plan: &ImagePlan, tree: Tree, format: ImageFormat, blobs: Vec<String>) -> Self {
        ImageRecord {
            id: plan.id.digest(),
            references: Vec::new(),
            size_bytes: tree.size_bytes,
            created_at: now(),
            config: plan.config.clone(),
            format,
            blobs,
            accounts: tree.accounts,
        }
    }

    /// The hex part of the id (the file and record names).
    pub fn hex(&self) -> &str {
        self.id.strip_prefix("sha256:").unwrap_or(&self.id)
    }
}

/// What [`Inner::build`] learnt of an image's tree before packing it.
struct Tree {
    /// Bytes of file content.
    size_bytes: u64,
    /// Its users and groups.
    accounts: Accounts,
}

/// Settings of the store.
#[derive(Debug, Clone)]
pub struct ImageStoreConfig {
    /// `<state-dir>/images`.
    pub dir: PathBuf,
    /// Bounds on one import.
    pub limits: UnpackLimits,
    /// The mkfs.erofs program.
    pub mkfs_erofs: PathBuf,
    /// How to reach registries (mirrors, plain HTTP, credentials).
    pub registries: Registries,
    /// Retries of blob downloads that failed for a transient reason.
    pub retry: RetryPolicy,
}

impl ImageStoreConfig {
    /// Defaults for the images directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ImageStoreConfig {
            dir: dir.into(),
            limits: UnpackLimits::default(),
            mkfs_erofs: erofs::MKFS_EROFS.into(),
            registries: Registries::default(),
            retry: RetryPolicy::default(),
        }
    }
}

/// Failures of the image store; the API maps each to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No image matches.
    #[error("no image {0:?} (see `bulkhead image list`)")]
    NotFound(String),
    /// An id prefix matches several images.
    #[error("image id prefix {prefix:?} matches {count} images: give more digits")]
    Ambiguous {
        /// The prefix.
        prefix: String,
        /// How many match.
        count: usize,
    },
    /// A malformed reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The import path is relative (the daemon has no useful working directory).
    #[error("the image path {0:?} must be absolute")]
    RelativePath(PathBuf),
    /// The import path cannot be opened.
    #[error("opening {path}")]
    OpenInput {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The image is malformed, inconsistent or fails verification.
    #[error("importing {path}")]
    Invalid {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: LayoutError,
    },
    /// A layer (or the outer archive) could not be applied.
    #[error("importing {path}: {what}")]
    Unpack {
        /// The path.
        path: PathBuf,
        /// Which layer or archive.
        what: String,
        /// Cause.
        #[source]
        source: UnpackError,
    },
    /// Pulling from a registry failed. No partial or unverified blob and no root image of it is kept
    /// (blobs verified before the failure stay in the store for the next pull).
    #[error("pulling {reference}")]
    Pull {
        /// The normalised reference.
        reference: String,
        /// Cause (boxed: it is large, and rare next to the other variants).
        #[source]
        source: Box<PullError>,
    },
    /// A workload uses the image.
    #[error("image {id} is in use by a workload: remove the workload first")]
    InUse {
        /// The image.
        id: String,
    },
    /// mkfs.erofs failed or is missing.
    #[error("building the root image of {id}")]
    Build {
        /// The image.
        id: String,
        /// Cause.
        #[source]
        source: erofs::ErofsError,
    },
    /// A local file operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Records could not be read or written.
    #[error("image records")]
    Store(#[source] StoreError),
    /// The blocking task died.
    #[error("the image task failed: {0}")]
    Task(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Io { op, path: path.to_owned(), source }
}

/// The images of this node.
#[derive(Debug, Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: ImageStoreConfig,
    tmp: PathBuf,
    records: RecordStore<ImageRecord>,
    /// By hex id. Held only to read or swap entries, never across I/O.
    images: Mutex<BTreeMap<String, ImageRecord>>,
    /// Serialises record writes and removals (held across their I/O, only on blocking threads), so the
    /// records on disk change in the same order as the map.
    commit: Mutex<()>,
    /// One download per blob at a time, by hex digest.
    blob_locks: KeyedLocks,
    /// One build per image at a time, by hex id.
    build_locks: KeyedLocks,
    /// Pulls hold it shared, [`ImageStore::prune`] exclusively.
    gc: tokio::sync::RwLock<()>,
}

/// What [`ImageStore::prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Images without references that no workload used, by id.
    pub images: Vec<String>,
    /// Blobs no image record lists.
    pub blobs: u64,
    /// Bytes freed (root images and blobs).
    pub bytes: u64,
}

/// Async locks by name, created on demand and dropped when nobody holds or waits for them.
#[derive(Debug, Default)]
struct KeyedLocks(Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>);

impl KeyedLocks {
    async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = lock(&self.0);
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_owned(), Arc::downgrade(&m));
                    m
                }
            }
        };
        m.lock_owned().await
    }
}

/// Layers of one pull downloaded at once.
const PARALLEL_DOWNLOADS: usize = 3;

/// At most this often (in bytes) a download reports progress.
const PROGRESS_STEP: u64 = 256 << 10;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the map consistent (entries are swapped whole).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ImageError::Task(e.to_string()))?
}

impl ImageStore {
    /// Opens (creating) the store in `cfg.dir`, loads the records, and removes leftovers of interrupted
    /// imports: work directories, and image files without a record.
    pub async fn open(cfg: ImageStoreConfig) -> Result<Self, ImageError> {
        blocking(move || Inner::open(cfg).map(|inner| ImageStore { inner: Arc::new(inner) })).await
    }

    /// Imports the image at `path` (absolute: an OCI layout directory or tar, or a `docker save` tar),
    /// tagging it with `reference` and the references the image names itself. Importing an image that is
    /// here already only adds the references.
    pub async fn import(&self, path: &Path, reference: Option<&str>) -> Result<ImageRecord, ImageError> {
        if !path.is_absolute() {
            return Err(ImageError::RelativePath(path.to_owned()));
        }
        let wanted = reference.map(str::to_owned);
        let normalized = reference.map(reference::normalize).transpose()?;
        let inner = self.inner.clone();
        let path = path.to_owned();
        blocking(move || inner.import(&path, wanted.as_deref(), normalized)).await
    }

    /// Pulls `reference` from its registry (see [`pull`]) and builds its root image, reporting to `progress`
    /// as it goes. `credentials` replace the configured ones for the image's registry. Pulling an image
    /// that is here already only adds the reference; blobs already in the store are not downloaded again.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<&Credentials>,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<ImageRecord, ImageError> {
        let name = reference::parse(reference)?;
        // Blobs this pull fetches belong to no record until it commits: prune waits.
        let _gc = self.inner.gc.read().await;
        let wrap = |source| ImageError::Pull { reference: name.normalized(), source: Box::new(source) };
        let (session, top) = Session::open(&self.inner.cfg.registries, &name, credentials).await.map_err(wrap)?;
        let content = |source| wrap(PullError::Content { registry: session.host().to_owned(), source });
        let manifest = self.platform_manifest(&name, &session, top).await?;
        let parsed = oci::parse_manifest(&manifest.bytes).map_err(content)?;
        let (config_digest, config_size) = oci::config_descriptor(&parsed).map_err(content)?;
        if config_size > MAX_JSON_BYTES {
            return Err(content(LayoutError::TooLarge {
                what: "the image config".into(),
                size: config_size,
                limit: MAX_JSON_BYTES,
            }));
        }
        self.fetch_blob(&name, &session, "the image config", &config_digest, config_size, &|_, _| {}).await?;
        let input = InputDir::open(&self.inner.cfg.dir).map_err(io_err("opening", &self.inner.cfg.dir))?;
        let config_bytes = input.read_blob("the image config", &config_digest, config_size).map_err(content)?;
        let (config, diff_ids) = layout::parse_config(&config_bytes, parsed.layers().len()).map_err(content)?;
        let layers = oci::layer_plans(&parsed, diff_ids).map_err(content)?;
        self.put_blob(&manifest.bytes, &manifest.digest).await?;
        let plan = ImagePlan { id: manifest.digest.clone(), config, layers, references: Vec::new() };
        let blobs: Vec<String> = [manifest.digest.digest(), config_digest.digest()]
            .into_iter()
            .chain(plan.layers.iter().filter_map(|l| l.blob.as_ref().map(|(d, _)| d.digest())))
            .collect();
        progress(PullProgress::Resolved {
            id: plan.id.digest(),
            layers: plan.layers.iter().filter_map(|l| l.blob.as_ref().map(|(d, s)| (d.digest(), *s))).collect(),
        });

        let mut references = Vec::new();
        if name.tag.is_some() {
            references.push(ImageName { digest: None, ..name.clone() }.normalized());
        }
        if name.digest.is_some() {
            references.push(ImageName { tag: None, ..name.clone() }.normalized());
        }
        let hex = plan.id.hex().to_owned();
        let _build = self.inner.build_locks.lock(&hex).await;
        if self.inner.is_present(&hex) {
            tracing::info!(image = %plan.id.digest(), "image already present; adding the reference");
            let inner = self.inner.clone();
            return blocking(move || inner.commit(None, &hex, references)).await;
        }
        // The build starts now and applies each layer as soon as its blob is in the store, while later
        // layers download (a few at once): unpacking overlaps the network, and every layer is still
        // verified before it is used.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<bool>();
        let inner = self.inner.clone();
        let label = PathBuf::from(name.normalized());
        let layers = plan.layers.clone();
        let build = tokio::task::spawn_blocking(move || {
            let input = InputDir::open(&inner.cfg.dir).map_err(io_err("opening", &inner.cfg.dir))?;
            let work = tempfile::Builder::new()
                .prefix("pull-")
                .tempdir_in(&inner.tmp)
                .map_err(io_err("creating a work directory in", &inner.tmp))?;
            // Downloads report in layer order: one `true` per layer, or `false` when one failed.
            let mut wait_for_layer = |_| match ready_rx.recv() {
                Ok(true) => Ok(()),
                Ok(false) | Err(_) => Err(ImageError::Task("stopped: a layer download failed".into())),
            };
            let tree = inner.build(&label, &input, &plan, work.path(), &mut wait_for_layer)?;
            let rec = ImageRecord::built(&plan, tree, ImageFormat::Registry, blobs);
            let rec = inner.commit(Some(rec), &hex, references)?;
            tracing::info!(image = %rec.id, references = ?rec.references, size_bytes = rec.size_bytes, "pulled an image");
            Ok(rec)
        });
        let (name_ref, session_ref) = (&name, &session);
        let mut downloads = futures_util::stream::iter(layers.into_iter().enumerate())
            .map(|(index, layer)| async move {
                let Some((digest, size)) = layer.blob else { return Ok(()) };
                let what = format!("layer {} ({})", index + 1, digest.digest());
                let report = |done, cached| progress(PullProgress::Layer { index, done, total: size, cached });
                self.fetch_blob(name_ref, session_ref, &what, &digest, size, &report).await
            })
            .buffered(PARALLEL_DOWNLOADS);
        let mut build_ended = false;
        while let Some(done) = downloads.next().await {
            if let Err(e) = done {
                let _ = ready_tx.send(false);
                // The build stops at its next layer and removes its work directory before we return.
                let _ = build.await;
                return Err(e);
            }
            if ready_tx.send(true).is_err() {
                // The build ended early: it refused a layer. Its error is the pull's.
                build_ended = true;
                break;
            }
        }
        if !build_ended {
            progress(PullProgress::Building);
        }
        build.await.map_err(|e| ImageError::Task(e.to_string()))?
    }

    /// The manifest for this node's platform: `top` itself, or the one an index or manifest list names.
    async fn platform_manifest(
        &self,
        name: &ImageName,
        session: &Session,
        top: pull::RawManifest,
    ) -> Result<pull::RawManifest, ImageError> {
        let wrap = |source| ImageError::Pull { reference: name.normalized(), source: Box::new(source) };
        let content = |source| wrap(PullError::Content { registry: session.host().to_owned(), source });
        let probe: serde_json::Value = serde_json::from_slice(&top.bytes)
            .map_err(|e| content(LayoutError::Json { what: "the manifest".into(), message: e.to_string() }))?;
        if probe.get("manifests").is_none() {
            return Ok(top);
        }
        let index = oci_spec::image::ImageIndex::from_reader(&top.bytes[..])
            .map_err(|e| content(LayoutError::Json { what: "the image index".into(), message: e.to_string() }))?;
        let chosen = index
            .manifests()
            .iter()
            .find(|d| oci::is_manifest(d.media_type()) && oci::platform_matches(d))
            .ok_or_else(|| {
                let offered: Vec<String> = index
                    .manifests()
                    .iter()
                    .filter_map(|d| d.platform().as_ref().map(|p| format!("{}/{}", p.os(), p.architecture())))
                    .collect();
                content(LayoutError::Unusable(format!(
                    "the image index offers no image for linux/{} (it offers {offered:?}): pull an image built for \
                     this platform",
                    layout::host_arch()
                )))
            })?;
        let digest = oci::descriptor_digest("the platform's manifest", chosen).map_err(content)?;
        let m = session.manifest(Some(&digest.digest()), "the platform's manifest").await.map_err(wrap)?;
        if m.bytes.len() as u64 != chosen.size() {
            return Err(content(LayoutError::SizeMismatch {
                what: "the platform's manifest".into(),
                expected: chosen.size(),
                actual: m.bytes.len() as u64,
            }));
        }
        Ok(m)
    }

    /// Stores `bytes` (already hashed to `digest`) as a blob, unless it is there.
    async fn put_blob(&self, bytes: &[u8], digest: &Sha256Hex) -> Result<(), ImageError> {
        let inner = self.inner.clone();
        let bytes = bytes.to_vec();
        let digest = digest.clone();
        let _blob = self.inner.blob_locks.lock(digest.hex()).await;
        blocking(move || {
            let dest = inner.blob_path(&digest);
            if dest.is_file() {
                return Ok(());
            }
            let mut tmp = tempfile::Builder::new()
                .prefix("blob-")
                .tempfile_in(&inner.tmp)
                .map_err(io_err("creating a file in", &inner.tmp))?;
            io::Write::write_all(&mut tmp, &bytes).map_err(io_err("writing", tmp.path()))?;
            tmp.as_file().sync_all().map_err(io_err("syncing", tmp.path()))?;
            tmp.persist(&dest).map_err(|e| io_err("moving a blob to", &dest)(e.error))?;
            let parent = dest.parent().unwrap_or(&inner.cfg.dir);
            sync_dir(parent).map_err(io_err("syncing", parent))
        })
        .await
    }

    /// Downloads blob `digest` of `size` bytes into the store unless it is there, checking size and digest
    /// as it streams; `report(done, cached)` hears of the bytes in place.
    async fn fetch_blob(
        &self,
        name: &ImageName,
        session: &Session,
        what: &str,
        digest: &Sha256Hex,
        size: u64,
        report: &(dyn Fn(u64, bool) + Send + Sync),
    ) -> Result<(), ImageError> {
        let wrap = |source| ImageError::Pull { reference: name.normalized(), source: Box::new(source) };
        let content = |source| wrap(PullError::Content { registry: session.host().to_owned(), source });
        let dest = self.inner.blob_path(digest);
        let _blob = self.inner.blob_locks.lock(digest.hex()).await;
        if fs::metadata(&dest).is_ok_and(|m| m.is_file() && m.len() == size) {
            report(size, true);
            return Ok(());
        }
        let limit = self.inner.cfg.limits.max_total_bytes;
        if size > limit {
            return Err(content(LayoutError::TooLarge { what: what.to_owned(), size, limit }));
        }
        let policy = self.inner.cfg.retry;
        let mut attempt = 1;
        loop {
            match self.download_blob(name, session, what, digest, size, report).await {
                Err(ImageError::Pull { source, .. }) if source.is_transient() && attempt < policy.attempts => {
                    let delay = policy.delay(attempt);
                    tracing::warn!(
                        blob = %digest.digest(), registry = session.host(), attempt, ?delay,
                        error = &*source as &dyn std::error::Error, "a blob download failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    /// One attempt at [`ImageStore::fetch_blob`]'s download, which holds the blob's lock: streams the blob
    /// into a temporary file, checks it, and moves it into place.
    async fn download_blob(
        &self,
        name: &ImageName,
        session: &Session,
        what: &str,
        digest: &Sha256Hex,
        size: u64,
        report: &(dyn Fn(u64, bool) + Send + Sync),
    ) -> Result<(), ImageError> {
        let wrap = |source| ImageError::Pull { reference: name.normalized(), source: Box::new(source) };
        let content = |source| wrap(PullError::Content { registry: session.host().to_owned(), source });
        let dest = self.inner.blob_path(digest);
        let mut stream = session.blob(what, digest, size).await.map_err(wrap)?;
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&self.inner.tmp)
            .map_err(io_err("creating a file in", &self.inner.tmp))?;
        let (file, tmp_path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        let mut reported = 0u64;
        report(0, false);
        // oci-client checks the digest too, failing the stream's end: with every byte here, our own check
        // says what is wrong more plainly than its error would.
        let mut broken = None;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            };
            done += chunk.len() as u64;
            if done > size {
                return Err(content(LayoutError::SizeMismatch { what: what.to_owned(), expected: size, actual: done }));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io_err("writing", &tmp_path))?;
            if done - reported >= PROGRESS_STEP || done == size {
                report(done, false);
                reported = done;
            }
        }
        let actual = Sha256Hex::from_hex(&hex::encode(hasher.finalize()))
            .ok_or_else(|| ImageError::Task("sha256 gave no 64-digit hex".into()))?;
        if done == size {
            layout::verify(what, digest, &actual).map_err(content)?;
        }
        if let Some(source) = broken {
            let registry = session.host().to_owned();
            return Err(wrap(PullError::Download { registry, what: what.to_owned(), done, size, source }));
        }
        if done != size {
            return Err(content(LayoutError::SizeMismatch { what: what.to_owned(), expected: size, actual: done }));
        }
        file.sync_all().await.map_err(io_err("syncing", &tmp_path))?;
        drop(file);
        let parent = self.inner.cfg.dir.join("blobs/sha256");
        blocking(move || {
            tmp_path.persist(&dest).map_err(|e| io_err("moving a blob to", &dest)(e.error))?;
            sync_dir(&parent).map_err(io_err("syncing", &parent))
        })
        .await
    }

    /// Removes images that have no reference and that `in_use` says no workload uses (their root images
    /// too), then every blob no remaining image lists (pulled images' manifests, configs and layers, and
    /// blobs left by failed pulls). Waits for pulls in progress to finish.
    pub async fn prune(
        &self,
        in_use: impl Fn(&ImageRecord) -> bool + Send + 'static,
    ) -> Result<PruneReport, ImageError> {
        let _gc = self.inner.gc.write().await;
        let inner = self.inner.clone();
        blocking(move || inner.prune(in_use)).await
    }

    /// Every image, by id.
    pub fn list(&self) -> Vec<ImageRecord> {
        lock(&self.inner.images).values().cloned().collect()
    }

    /// Resolves `image`: an id ("sha256:<hex>" or the hex), a reference ("busybox" is
    /// "docker.io/library/busybox:latest"), or an id prefix of at least [`MIN_ID_PREFIX`] hex digits.
    pub fn get(&self, image: &str) -> Result<ImageRecord, ImageError> {
        resolve(&lock(&self.inner.images), image).cloned()
    }

    /// The root image of `image`, to attach read-only to a zone.
    pub fn erofs_path(&self, image: &ImageRecord) -> PathBuf {
        self.inner.erofs_path(image.hex())
    }

    /// Removes `image` and its root image. Removing an image that is not here succeeds with `None`
    /// (idempotent, as CRI's RemoveImage). Refuses with [`ImageError::InUse`] when `in_use` says a workload
    /// uses it: the workload layer passes its check here. `in_use` runs under the store's commit lock, so
    /// no import or removal interleaves; a zone that already has the file open keeps it (an unlinked
    /// file lives on), so the workload layer only has to make its own check and its use atomic.
    pub async fn remove(
        &self,
        image: &str,
        in_use: impl Fn(&ImageRecord) -> bool + Send + 'static,
    ) -> Result<Option<ImageRecord>, ImageError> {
        let inner = self.inner.clone();
        let image = image.to_owned();
        blocking(move || inner.remove(&image, in_use)).await
    }
}

fn resolve<'a>(images: &'a BTreeMap<String, ImageRecord>, image: &str) -> Result<&'a ImageRecord, ImageError> {
    let hexpart = image.strip_prefix("sha256:").unwrap_or(image);
    let is_hex = !hexpart.is_empty() && hexpart.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if is_hex && hexpart.len() == 64 {
        return images.get(hexpart).ok_or_else(|| ImageError::NotFound(image.to_owned()));
    }
    if let Ok(r) = reference::normalize(image)
        && let Some(rec) = images.values().find(|i| i.references.contains(&r))
    {
        return Ok(rec);
    }
    if is_hex && hexpart.len() >= MIN_ID_PREFIX {
        let mut matches = images.range(hexpart.to_owned()..).take_while(|(k, _)| k.starts_with(hexpart));
        return match (matches.next(), matches.next()) {
            (Some((_, rec)), None) => Ok(rec),
            (None, _) => Err(ImageError::NotFound(image.to_owned())),
            (Some(_), Some(_)) => Err(ImageError::Ambiguous {
                prefix: image.to_owned(),
                count: images.keys().filter(|k| k.starts_with(hexpart)).count(),
            }),
        };
    }
    Err(ImageError::NotFound(image.to_owned()))
}

/// Bytes of regular-file content beneath `root`, each inode once. Never follows symlinks; the tree is the
/// daemon's own staging directory.
fn tree_size(root: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                let m = entry.metadata()?;
                if m.nlink() == 1 || seen.insert(m.ino()) {
                    total += m.len();
                }
            }
        }
    }
    Ok(total)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Picks the decompressor for a layer from its magic number.
fn sniff(r: &mut impl BufRead) -> io::Result<Compression> {
    let head = r.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    })
}

/// The decompressed stream of a layer compressed with `c` (`None` and `Detect` pass it through: callers sniff
/// first). Public for the fuzz target, which must exercise the decoders layers go through.
pub fn decompress<'a, R: BufRead + 'a>(r: R, c: Compression) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None | Compression::Detect => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
    })
}

impl Inner {
    fn open(cfg: ImageStoreConfig) -> Result<Inner, ImageError> {
        let dir = cfg.dir.clone();
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io_err("creating", &dir))?;
        let tmp = dir.join("tmp");
        match fs::remove_dir_all(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing leftovers in", &tmp)(e)),
        }
        fs::DirBuilder::new().mode(0o700).create(&tmp).map_err(io_err("creating", &tmp))?;
        let blobs = dir.join("blobs/sha256");
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&blobs).map_err(io_err("creating", &blobs))?;
        let records = RecordStore::<ImageRecord>::open(dir.join("records")).map_err(ImageError::Store)?;
        let report = records.load_all().map_err(ImageError::Store)?;
        for c in &report.corrupt {
            tracing::warn!(key = %c.key, reason = ?c.reason, moved_to = %c.moved_to.display(), "set aside an unreadable image record");
        }
        let mut images = BTreeMap::new();
        for (key, rec) in report.records {
            let file = dir.join(format!("{key}.erofs"));
            if rec.hex() != key || !file.is_file() {
                tracing::warn!(image = %rec.id, "dropping an image record without its root image; import the image again");
                records.remove(&key).map_err(ImageError::Store)?;
                continue;
            }
            images.insert(key, rec);
        }
        for entry in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let entry = entry.map_err(io_err("listing", &dir))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".erofs")) else { continue };
            if !images.contains_key(hex) {
                tracing::info!(file = %entry.path().display(), "removing a root image left by an interrupted import");
                fs::remove_file(entry.path()).map_err(io_err("removing", &entry.path()))?;
            }
        }
        Ok(Inner {
            cfg,
            tmp,
            records,
            images: Mutex::new(images),
            commit: Mutex::new(()),
            blob_locks: KeyedLocks::default(),
            build_locks: KeyedLocks::default(),
            gc: tokio::sync::RwLock::new(()),
        })
    }

    fn blob_path(&self, digest: &Sha256Hex) -> PathBuf {
        self.cfg.dir.join(layout::blob_path(digest))
    }

    fn is_present(&self, hex: &str) -> bool {
        lock(&self.images).contains_key(hex) && self.erofs_path(hex).is_file()
    }

    fn erofs_path(&self, hex: &str) -> PathBuf {
        self.cfg.dir.join(format!("{hex}.erofs"))
    }

    fn import(&self, path: &Path, wanted: Option<&str>, reference: Option<String>) -> Result<ImageRecord, ImageError> {
        let meta = fs::metadata(path).map_err(|source| ImageError::OpenInput { path: path.to_owned(), source })?;
        let work = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(&self.tmp)
            .map_err(io_err("creating a work directory in", &self.tmp))?;
        let input_path = if meta.is_dir() {
            path.to_owned()
        } else if meta.is_file() {
            let extracted = work.path().join("input");
            self.extract_archive(path, &extracted)?;
            extracted
        } else {
            return Err(ImageError::OpenInput {
                path: path.to_owned(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a directory or a tar file"),
            });
        };
        let input =
            InputDir::open(&input_path).map_err(|source| ImageError::OpenInput { path: path.to_owned(), source })?;
        let invalid = |source| ImageError::Invalid { path: path.to_owned(), source };
        let (plan, format) = if oci::is_layout(&input) {
            (oci::read(&input, wanted).map_err(invalid)?, ImageFormat::Oci)
        } else if docker::is_archive(&input) {
            (docker::read(&input, wanted).map_err(invalid)?, ImageFormat::DockerArchive)
        } else {
            return Err(invalid(LayoutError::UnknownFormat));
        };
        let mut references: Vec<String> = Vec::new();
        for r in plan.references.iter() {
            match reference::normalize(r) {
                Ok(n) => references.push(n),
                Err(e) => tracing::warn!(error = %e, "ignoring a reference the image names"),
            }
        }
        references.extend(reference);

        let hex = plan.id.hex().to_owned();
        let present = lock(&self.images).contains_key(&hex) && self.erofs_path(&hex).is_file();
        if present {
            tracing::info!(image = %plan.id.digest(), "image already present; adding its references");
            return self.commit(None, &hex, references);
        }
        let tree = self.build(path, &input, &plan, work.path(), &mut |_| Ok(()))?;
        let rec = ImageRecord::built(&plan, tree, format, Vec::new());
        let rec = self.commit(Some(rec), &hex, references)?;
        tracing::info!(image = %rec.id, references = ?rec.references, size_bytes = rec.size_bytes, "imported an image");
        Ok(rec)
        // `work` (the unpacked archive and the staging tree) is removed here.
    }

    /// Unpacks the outer tar (optionally gzip-compressed) of an imported archive into `dest`.
    fn extract_archive(&self, path: &Path, dest: &Path) -> Result<(), ImageError> {
        let unpack_err = |source| ImageError::Unpack { path: path.to_owned(), what: "the archive".into(), source };
        fs::DirBuilder::new().mode(0o700).create(dest).map_err(io_err("creating", dest))?;
        let file = File::open(path).map_err(|source| ImageError::OpenInput { path: path.to_owned(), source })?;
        let mut r = BufReader::new(file);
        let c = sniff(&mut r).map_err(|e| unpack_err(UnpackError::Read(e)))?;
        let stream = decompress(r, c).map_err(|e| unpack_err(UnpackError::Read(e)))?;
        let mut u =
            Unpacker::new(dest, self.cfg.limits, StreamKind::Archive, false).map_err(io_err("opening", dest))?;
        u.apply(stream).map_err(unpack_err)?;
        u.finish().map_err(unpack_err)?;
        Ok(())
    }

    /// Applies the layers to a staging tree in `work`, builds the root image and moves it in place.
    /// Returns the bytes of file content in the finished tree and its users and groups.
    /// `wait_for_layer(i)` returns once layer `i` (0-based) can be read, or fails to stop the build.
    fn build(
        &self,
        path: &Path,
        input: &InputDir,
        plan: &ImagePlan,
        work: &Path,
        wait_for_layer: &mut dyn FnMut(usize) -> Result<(), ImageError>,
    ) -> Result<Tree, ImageError> {
        let staging = work.join("rootfs");
        fs::DirBuilder::new().mode(0o755).create(&staging).map_err(io_err("creating", &staging))?;
        // The root inode's mode comes from here; the umask must not narrow it.
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))
            .map_err(io_err("setting the mode of", &staging))?;
        let preserve_owner = nix::unistd::geteuid().is_root();
        if !preserve_owner {
            tracing::warn!("not running as root: files in the image will be owned by the daemon's user");
        }
        let mut u = Unpacker::new(&staging, self.cfg.limits, StreamKind::Layer, preserve_owner)
            .map_err(io_err("opening", &staging))?;
        for (i, layer) in plan.layers.iter().enumerate() {
            wait_for_layer(i)?;
            self.apply_layer(path, input, i + 1, layer, &mut u)?;
        }
        let stats = u.finish().map_err(|source| ImageError::Unpack {
            path: path.to_owned(),
            what: "the layers".into(),
            source,
        })?;
        let size = tree_size(&staging).map_err(io_err("measuring", &staging))?;
        // Read now: once packed, the tree is only an erofs image that the node never mounts.
        let accounts = Accounts::read(&staging).map_err(io_err("reading the users and groups in", &staging))?;
        if stats.skipped_devices > 0 {
            tracing::info!(image = %plan.id.digest(), count = stats.skipped_devices, "left device nodes out of the image");
        }
        let built = work.join("image.erofs");
        erofs::build(&self.cfg.mkfs_erofs, &staging, &built)
            .map_err(|source| ImageError::Build { id: plan.id.digest(), source })?;
        File::open(&built).and_then(|f| f.sync_all()).map_err(io_err("syncing", &built))?;
        let dest = self.erofs_path(plan.id.hex());
        fs::set_permissions(&built, fs::Permissions::from_mode(0o600))
            .map_err(io_err("setting the mode of", &built))?;
        fs::rename(&built, &dest).map_err(io_err("moving the root image to", &dest))?;
        sync_dir(&self.cfg.dir).map_err(io_err("syncing", &self.cfg.dir))?;
        Ok(Tree { size_bytes: size, accounts })
    }

    /// Applies one layer while verifying its blob (digest and size) and its uncompressed tar (diff id).
    fn apply_layer(
        &self,
        path: &Path,
        input: &InputDir,
        n: usize,
        layer: &LayerPlan,
        u: &mut Unpacker,
    ) -> Result<(), ImageError> {
        let what = format!("layer {n} ({})", layer.path);
        let invalid = |source| ImageError::Invalid { path: path.to_owned(), source };
        let read_err = |source| invalid(LayoutError::Read { file: layer.path.clone(), source });
        let file = input.open_file(&layer.path).map_err(invalid)?;
        let expected_size = layer.blob.as_ref().map(|(_, s)| *s);
        let mut blob = BufReader::new(DigestReader::new(file, expected_size.unwrap_or(u64::MAX)));
        let compression = match layer.compression {
            Compression::Detect => sniff(&mut blob).map_err(read_err)?,
            c => c,
        };
        let limits = self.cfg.limits;
        // The tar stream is file content plus headers and padding; bound it too, so trailing garbage after
        // the end-of-archive marker cannot keep us decompressing forever.
        let tar_limit =
            limits.max_total_bytes.saturating_add(limits.max_entries.saturating_mul(1536)).saturating_add(1 << 20);
        let applied = {
            let stream = decompress(&mut blob, compression).map_err(read_err)?;
            let mut tar = DigestReader::new(stream, tar_limit);
            u.apply(&mut tar).map(|()| tar.finish())
        };
        // A bad blob is reported as such, even when it also broke the tar stream.
        let (blob_digest, blob_size) = blob.into_inner().finish().map_err(read_err)?;
        if let Some((digest, size)) = &layer.blob {
            if blob_size != *size {
                return Err(invalid(LayoutError::SizeMismatch { what, expected: *size, actual: blob_size }));
            }
            layout::verify(&what, digest, &blob_digest).map_err(invalid)?;
        }
        let (diff_id, _) = applied
            .map_err(|source| ImageError::Unpack { path: path.to_owned(), what: what.clone(), source })?
            .map_err(read_err)?;
        layout::verify(&format!("{what} uncompressed"), &layer.diff_id, &diff_id).map_err(invalid)
    }

    /// Records `new` (or, when `None` or already present, the existing record of `hex`) with `references`
    /// added, taking them from any other image that had them.
    fn commit(&self, new: Option<ImageRecord>, hex: &str, references: Vec<String>) -> Result<ImageRecord, ImageError> {
        let _commit = lock(&self.commit);
        let (mut rec, mut others) = {
            let images = lock(&self.images);
            let rec = match (images.get(hex), new) {
                (Some(r), _) => r.clone(),
                (None, Some(n)) => n,
                (None, None) => return Err(ImageError::NotFound(format!("sha256:{hex}"))),
            };
            let others: Vec<ImageRecord> = images
                .values()
                .filter(|o| o.hex() != hex && o.references.iter().any(|r| references.contains(r)))
                .cloned()
                .collect();
            (rec, others)
        };
        for r in references {
            if !rec.references.contains(&r) {
                rec.references.push(r);
            }
        }
        rec.references.sort();
        for o in &mut others {
            o.references.retain(|r| !rec.references.contains(r));
            self.records.put(o.hex(), o).map_err(ImageError::Store)?;
        }
        self.records.put(hex, &rec).map_err(ImageError::Store)?;
        let mut images = lock(&self.images);
        for o in others {
            images.insert(o.hex().to_owned(), o);
        }
        images.insert(hex.to_owned(), rec.clone());
        Ok(rec)
    }

    fn prune(&self, in_use: impl Fn(&ImageRecord) -> bool) -> Result<PruneReport, ImageError> {
        let mut report = PruneReport::default();
        let dangling: Vec<ImageRecord> =
            lock(&self.images).values().filter(|r| r.references.is_empty()).cloned().collect();
        for rec in dangling {
            let size = fs::metadata(self.erofs_path(rec.hex())).map(|m| m.len()).unwrap_or(0);
            // remove() refuses under the commit lock, so an image an import tagged meanwhile stays too.
            match self.remove(&rec.id, |r| !r.references.is_empty() || in_use(r)) {
                Ok(Some(r)) => {
                    report.images.push(r.id);
                    report.bytes += size;
                }
                Ok(None) | Err(ImageError::InUse { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let keep: std::collections::HashSet<String> = lock(&self.images)
            .values()
            .flat_map(|r| r.blobs.iter().filter_map(|d| d.strip_prefix("sha256:").map(str::to_owned)))
            .collect();
        let dir = self.cfg.dir.join("blobs/sha256");
        for entry in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let entry = entry.map_err(io_err("listing", &dir))?;
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| keep.contains(n)) {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(entry.path()).map_err(io_err("removing", &entry.path()))?;
            report.blobs += 1;
            report.bytes += size;
        }
        sync_dir(&dir).map_err(io_err("syncing", &dir))?;
        tracing::info!(
            images = report.images.len(),
            blobs = report.blobs,
            bytes = report.bytes,
            "pruned the image store"
        );
        Ok(report)
    }

    fn remove(&self, image: &str, in_use: impl Fn(&ImageRecord) -> bool) -> Result<Option<ImageRecord>, ImageError> {
        let _commit = lock(&self.commit);
        let rec = match resolve(&lock(&self.images), image) {
            Ok(r) => r.clone(),
            Err(ImageError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if in_use(&rec) {
            return Err(ImageError::InUse { id: rec.id });
        }
        // Record first: a crash after this leaves a file without a record, which open() removes.
        self.records.remove(rec.hex()).map_err(ImageError::Store)?;
        lock(&self.images).remove(rec.hex());
        let file = self.erofs_path(rec.hex());
        match fs::remove_file(&file) {
            Ok(()) => sync_dir(&self.cfg.dir).map_err(io_err("syncing", &self.cfg.dir))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &file)(e)),
        }
        tracing::info!(image = %rec.id, "removed an image");
        Ok(Some(rec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(hex: &str, refs: &[&str]) -> ImageRecord {
        ImageRecord {
            id: format!("sha256:{hex}"),
            references: refs.iter().map(|s| s.to_string()).collect(),
            size_bytes: 1,
            created_at: 0,
            config: ImageConfig::default(),
            format: ImageFormat::Oci,
            blobs: Vec::new(),
            accounts: Accounts::default(),
        }
    }

    #[test]
    fn records_written_before_blobs_were_tracked_still_load() -> Result<(), serde_json::Error> {
        let mut v = serde_json::to_value(rec(&"a".repeat(64), &["docker.io/library/busybox:latest"]))?;
        v.as_object_mut().map(|o| (o.remove("blobs"), o.remove("accounts")));
        let old: ImageRecord = serde_json::from_value(v)?;
        assert!(old.blobs.is_empty());
        assert_eq!(old.accounts, Accounts::default(), "and before accounts were");
        Ok(())
    }

    #[test]
    fn lookup_by_id_reference_and_unique_prefix() {
        let a = format!("abcdef012345{}", "0".repeat(52));
        let b = format!("abcdef012345{}", "1".repeat(52));
        let c = format!("123456789abc{}", "2".repeat(52));
        let mut m = BTreeMap::new();
        m.insert(a.clone(), rec(&a, &["docker.io/library/busybox:latest"]));
        m.insert(b.clone(), rec(&b, &[]));
        m.insert(c.clone(), rec(&c, &["ghcr.io/x/y:1"]));
        let id = |r: Result<&ImageRecord, ImageError>| r.map(|r| r.hex().to_owned()).map_err(|e| e.to_string());
        assert_eq!(id(resolve(&m, &format!("sha256:{a}"))), Ok(a.clone()));
        assert_eq!(id(resolve(&m, &b)), Ok(b.clone()));
        assert_eq!(id(resolve(&m, "busybox")), Ok(a.clone()));
        assert_eq!(id(resolve(&m, "ghcr.io/x/y:1")), Ok(c.clone()));
        assert_eq!(id(resolve(&m, "123456789abc")), Ok(c.clone()));
        assert_eq!(id(resolve(&m, "sha256:123456789abc2")), Ok(c.clone()));
        assert!(matches!(resolve(&m, "abcdef012345"), Err(ImageError::Ambiguous { count: 2, .. })));
        assert!(matches!(resolve(&m, "123456789ab"), Err(ImageError::NotFound(_))), "prefixes need 12 digits");
        assert!(matches!(resolve(&m, "alpine"), Err(ImageError::NotFound(_))));
        assert!(matches!(resolve(&m, &"f".repeat(64)), Err(ImageError::NotFound(_))));
    }
}
