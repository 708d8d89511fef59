//! Pulls from a real registry: Debian's `docker-registry` (the CNCF distribution registry) served on
//! 127.0.0.1 by each test, with images the tests build and push themselves (the busybox fixture with gzip
//! and zstd layers, whiteouts, an opaque directory and hard links; a multi-arch OCI index; a Docker manifest
//! list with Docker media types). The pulled root images are mounted and checked as imported ones are.
//!
//! Needs /usr/bin/docker-registry and htpasswd (`ci/deps build` installs docker-registry and apache2-utils).
//! Without the registry the tests skip with a message, except when CI is set: there they fail. The tests that
//! mount need root, as in tests/images.rs.

mod imagecheck;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkheadd::images::layout::{Compression, LayoutError, host_arch};
use bulkheadd::images::pull::{Credentials, PullError, PullProgress, Registries, RegistryConfig, RegistryFailure};
use bulkheadd::images::testing::write_busybox_layout;
use bulkheadd::images::{ImageError, ImageFormat, ImageStore, ImageStoreConfig};
use imagecheck::{BUSYBOX, TestResult, check_root_image};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};

const REGISTRY: &str = "/usr/bin/docker-registry";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

fn privileged() -> bool {
    bulkheadd::images::testing::root_or_skip("chown while unpacking, loop mounts")
}

/// True when the registry binary is here; false (with a note) when it is not and CI is unset; in CI a
/// missing registry fails the test.
fn registry_available() -> bool {
    if Path::new(REGISTRY).is_file() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{REGISTRY} is missing and CI is set: run ci/deps build (it installs docker-registry)");
    }
    eprintln!("skipping: {REGISTRY} is not installed (apt-get install docker-registry, or ci/deps build)");
    false
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A docker-registry on a free 127.0.0.1 port with its own storage, killed on drop.
struct Registry {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; with `user`, it wants basic auth from an htpasswd file.
    fn start(user: Option<(&str, &str)>) -> Result<Registry, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let auth = match user {
            Some((name, password)) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", name, password])
                    .output()
                    .map_err(|e| format!("running htpasswd: {e} (apt-get install apache2-utils, or ci/deps build)"))?;
                if !out.status.success() {
                    return Err(format!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr)).into());
                }
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout)?;
                format!("auth:\n  htpasswd:\n    realm: bulkhead-test\n    path: {}\n", file.display())
            }
            None => String::new(),
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: {addr}\n{auth}",
                dir.path().join("storage").display()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut reg = Registry { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&reg.addr).is_err() {
            if let Some(st) = reg.child.try_wait()? {
                return Err(format!("docker-registry exited ({st}): {}", reg.log()).into());
            }
            if Instant::now() > deadline {
                return Err(format!("docker-registry did not listen on {} within 20 s: {}", reg.addr, reg.log()).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(reg)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The registry's own file for blob `digest` ("sha256:...").
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = &digest["sha256:".len()..];
        self.dir.path().join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    /// How many times the registry served blob `digest` with a body.
    fn blob_gets(&self, digest: &str) -> usize {
        self.log().lines().filter(|l| l.contains("\"GET ") && l.contains(&format!("/blobs/{digest} "))).count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes blobs and manifests with oci-client's push API.
struct Pusher {
    client: Client,
    addr: String,
    auth: RegistryAuth,
}

impl Pusher {
    fn new(addr: &str, auth: RegistryAuth) -> Pusher {
        let client = Client::new(ClientConfig { protocol: ClientProtocol::Http, ..ClientConfig::default() });
        Pusher { client, addr: addr.to_owned(), auth }
    }

    async fn reference(&self, repo: &str, tag: &str) -> Result<Reference, Box<dyn std::error::Error>> {
        let r = Reference::with_tag(self.addr.clone(), repo.to_owned(), tag.to_owned());
        self.client.auth(&r, &self.auth, RegistryOperation::Push).await?;
        Ok(r)
    }

    async fn blob(&self, repo: &str, bytes: Vec<u8>) -> Result<String, Box<dyn std::error::Error>> {
        let r = self.reference(repo, "unused").await?;
        let digest = sha(&bytes);
        self.client.push_blob(&r, bytes, &digest).await?;
        Ok(digest)
    }

    /// Pushes a manifest under `tag` (a tag, or its own digest) and returns its digest.
    async fn manifest(
        &self,
        repo: &str,
        tag: &str,
        bytes: Vec<u8>,
        media_type: &str,
    ) -> Result<String, Box<dyn std::error::Error>> {
        let digest = sha(&bytes);
        let r = self.reference(repo, "unused").await?;
        let r = if tag.starts_with("sha256:") {
            Reference::with_digest(r.registry().to_owned(), repo.to_owned(), digest.clone())
        } else {
            Reference::with_tag(r.registry().to_owned(), repo.to_owned(), tag.to_owned())
        };
        self.client.push_manifest_raw(&r, bytes, http::HeaderValue::from_str(media_type)?).await?;
        Ok(digest)
    }

    /// Pushes the image of an OCI layout written by `write_busybox_layout` (its manifest `digest`) under
    /// `tag`, with the manifest as it is (or rewritten by `rewrite`, e.g. to Docker media types).
    async fn layout(
        &self,
        repo: &str,
        tag: &str,
        layout: &Path,
        digest: &str,
        rewrite: impl Fn(&mut serde_json::Value),
    ) -> Result<(String, Vec<u8>), Box<dyn std::error::Error>> {
        let blob = |d: &str| std::fs::read(layout.join("blobs/sha256").join(&d["sha256:".len()..]));
        let mut manifest: serde_json::Value = serde_json::from_slice(&blob(digest)?)?;
        let config = manifest["config"]["digest"].as_str().unwrap_or_default().to_owned();
        self.blob(repo, blob(&config)?).await?;
        let layers: Vec<String> = manifest["layers"]
            .as_array()
            .map(|a| a.iter().filter_map(|l| l["digest"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        for l in &layers {
            self.blob(repo, blob(l)?).await?;
        }
        rewrite(&mut manifest);
        let media_type = manifest["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_owned();
        let bytes = serde_json::to_vec(&manifest)?;
        let digest = self.manifest(repo, tag, bytes.clone(), &media_type).await?;
        Ok((digest, bytes))
    }
}

/// What the registry holds after [`push_all`].
struct Pushed {
    _layouts: tempfile::TempDir,
    /// test/busybox:gzip (OCI manifest, gzip layers).
    gzip: String,
    /// The layer blobs of `gzip`.
    gzip_layers: Vec<String>,
    /// test/busybox:zstd.
    zstd: String,
    /// test/multi:v1 is an OCI index; this is its manifest for this node.
    multi_native: String,
    /// test/docker:v1 is a Docker manifest list; this is its Docker manifest for this node.
    docker_native: String,
}

/// Builds and pushes every test image (see [`Pushed`]).
async fn push_all(addr: &str, auth: RegistryAuth) -> Result<Pushed, Box<dyn std::error::Error>> {
    let layouts = tempfile::tempdir()?;
    let p = Pusher::new(addr, auth);
    let gz = layouts.path().join("gzip");
    let f = write_busybox_layout(&gz, Path::new(BUSYBOX), Compression::Gzip)?;
    let (gzip, gzip_manifest) = p.layout("test/busybox", "gzip", &gz, &f.manifest_digest, |_| {}).await?;
    assert_eq!(gzip, f.manifest_digest, "pushed unchanged");
    let gzip_layers = f.layer_blobs.iter().map(|b| std::fs::read(b).map(|b| sha(&b))).collect::<Result<_, _>>()?;

    let zs = layouts.path().join("zstd");
    let f = write_busybox_layout(&zs, Path::new(BUSYBOX), Compression::Zstd)?;
    let (zstd, _) = p.layout("test/busybox", "zstd", &zs, &f.manifest_digest, |_| {}).await?;

    // A multi-arch index: another architecture first (same layers, its own config), then this node's.
    let (multi_native, _) = p.layout("test/multi", "native", &gz, &f_digest(&gz)?, |_| {}).await?;
    let mut foreign_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(gz.join("blobs/sha256").join(config_hex(&gzip_manifest)?))?)?;
    let other_arch = if host_arch() == "s390x" { "amd64" } else { "s390x" };
    foreign_config["architecture"] = other_arch.into();
    let foreign_config = serde_json::to_vec(&foreign_config)?;
    let foreign_config_digest = p.blob("test/multi", foreign_config.clone()).await?;
    let mut foreign: serde_json::Value = serde_json::from_slice(&gzip_manifest)?;
    foreign["config"]["digest"] = foreign_config_digest.into();
    foreign["config"]["size"] = foreign_config.len().into();
    let foreign = serde_json::to_vec(&foreign)?;
    let foreign_digest = p.manifest("test/multi", "sha256:", foreign.clone(), OCI_MANIFEST).await?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            { "mediaType": OCI_MANIFEST, "digest": foreign_digest, "size": foreign.len(),
              "platform": { "os": "linux", "architecture": other_arch } },
            { "mediaType": OCI_MANIFEST, "digest": multi_native, "size": gzip_manifest.len(),
              "platform": { "os": "linux", "architecture": host_arch() } },
        ]
    });
    p.manifest("test/multi", "v1", serde_json::to_vec(&index)?, OCI_INDEX).await?;

    // Docker media types: a schema 2 manifest in a manifest list.
    let (docker_native, docker_manifest) = p
        .layout("test/docker", "sha256:", &gz, &f_digest(&gz)?, |m| {
            m["mediaType"] = DOCKER_MANIFEST.into();
            m["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json".into();
            if let Some(layers) = m["layers"].as_array_mut() {
                for l in layers {
                    l["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip".into();
                }
            }
        })
        .await?;
    let list = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{ "mediaType": DOCKER_MANIFEST, "digest": docker_native, "size": docker_manifest.len(),
                        "platform": { "os": "linux", "architecture": host_arch() } }]
    });
    p.manifest("test/docker", "v1", serde_json::to_vec(&list)?, DOCKER_LIST).await?;
    Ok(Pushed { _layouts: layouts, gzip, gzip_layers, zstd, multi_native, docker_native })
}

/// The manifest digest of the layout in `dir` (its index.json's only manifest).
fn f_digest(dir: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    Ok(index["manifests"][0]["digest"].as_str().unwrap_or_default().to_owned())
}

fn config_hex(manifest: &[u8]) -> Result<String, Box<dyn std::error::Error>> {
    let m: serde_json::Value = serde_json::from_slice(manifest)?;
    Ok(m["config"]["digest"].as_str().unwrap_or_default().trim_start_matches("sha256:").to_owned())
}

fn insecure(hosts: &[&str]) -> Registries {
    Registries::new(
        hosts.iter().map(|h| (h.to_string(), RegistryConfig { insecure: true, ..RegistryConfig::default() })).collect(),
    )
}

async fn store(dir: &Path, registries: Registries) -> Result<ImageStore, ImageError> {
    ImageStore::open(ImageStoreConfig { registries, ..ImageStoreConfig::new(dir) }).await
}

/// Progress events of one pull.
#[derive(Default, Clone)]
struct Events(Arc<Mutex<Vec<PullProgress>>>);

impl Events {
    fn sink(&self) -> impl Fn(PullProgress) + Send + Sync + 'static {
        let v = self.0.clone();
        move |p| v.lock().unwrap_or_else(|e| e.into_inner()).push(p)
    }

    fn take(&self) -> Vec<PullProgress> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn no_progress(_: PullProgress) {}

/// Nothing of a failed pull is in the store: no record, no root image, no work file, none of `blobs`.
fn assert_nothing_left(dir: &Path, store: &ImageStore, blobs: &[String]) -> TestResult {
    assert!(store.list().is_empty(), "{:?}", store.list());
    assert_eq!(std::fs::read_dir(dir.join("tmp"))?.count(), 0, "work files are removed");
    let erofs =
        std::fs::read_dir(dir)?.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "erofs"));
    assert_eq!(erofs.count(), 0);
    for b in blobs {
        assert!(!dir.join("blobs/sha256").join(&b["sha256:".len()..]).exists(), "{b} must not be kept");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_by_tag_and_digest_in_oci_and_docker_formats() -> TestResult {
    if !registry_available() || !privileged() {
        return Ok(());
    }
    imagecheck::check_static_busybox()?;
    let reg = Registry::start(None)?;
    let pushed = push_all(&reg.addr, RegistryAuth::Anonymous).await?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("images");
    let s = store(&dir, insecure(&[&reg.addr])).await?;
    let a = &reg.addr;

    // By tag, with progress: the manifest, then every layer to its full size, then the build.
    let events = Events::default();
    let rec = s.pull(&format!("{a}/test/busybox:gzip"), None, &events.sink()).await?;
    assert_eq!(rec.id, pushed.gzip);
    assert_eq!(rec.format, ImageFormat::Registry);
    assert_eq!(rec.references, [format!("{a}/test/busybox:gzip")]);
    assert_eq!(rec.config.entrypoint, ["/bin/sh", "-c"]);
    check_root_image(&s, &rec)?;
    let ev = events.take();
    match ev.first() {
        Some(PullProgress::Resolved { id, layers }) => {
            assert_eq!(id, &pushed.gzip);
            assert_eq!(layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(), pushed.gzip_layers);
        }
        other => return Err(format!("expected Resolved first, got {other:?}").into()),
    }
    for i in 0..2 {
        let last = ev.iter().rev().find_map(|e| match e {
            PullProgress::Layer { index, done, total, cached } if *index == i => Some((*done, *total, *cached)),
            _ => None,
        });
        assert!(matches!(last, Some((d, t, false)) if d == t), "layer {i}: {last:?}");
    }
    assert_eq!(ev.last(), Some(&PullProgress::Building));

    // By digest: the same image, one more reference, nothing downloaded again.
    let gets = reg.blob_gets(&pushed.gzip_layers[0]);
    let by_digest = s.pull(&format!("{a}/test/busybox@{}", pushed.gzip), None, &no_progress).await?;
    assert_eq!(by_digest.id, rec.id);
    assert_eq!(by_digest.references, [format!("{a}/test/busybox:gzip"), format!("{a}/test/busybox@{}", rec.id)]);
    assert_eq!(reg.blob_gets(&pushed.gzip_layers[0]), gets, "a present image is not downloaded again");
    assert_eq!(s.get(&format!("{a}/test/busybox@{}", rec.id))?.id, rec.id);

    // zstd layers.
    let z = s.pull(&format!("{a}/test/busybox:zstd"), None, &no_progress).await?;
    assert_eq!(z.id, pushed.zstd);
    check_root_image(&s, &z)?;

    // A multi-arch OCI index: this node's manifest is chosen; its layers are in the store already.
    let events = Events::default();
    let m = s.pull(&format!("{a}/test/multi:v1"), None, &events.sink()).await?;
    assert_eq!(m.id, pushed.multi_native);
    assert!(
        events.take().iter().all(|e| !matches!(e, PullProgress::Layer { cached: false, .. })),
        "layers shared with an earlier pull are not downloaded again"
    );

    // A Docker manifest list with Docker media types.
    let d = s.pull(&format!("{a}/test/docker:v1"), None, &no_progress).await?;
    assert_eq!(d.id, pushed.docker_native);
    check_root_image(&s, &d)?;
    assert_eq!(std::fs::read_dir(dir.join("tmp"))?.count(), 0, "work files are removed");

    // The store keeps the records across a reopen.
    let kept = s.list();
    drop(s);
    assert_eq!(store(&dir, Registries::default()).await?.list(), kept);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_of_one_image_download_each_blob_once() -> TestResult {
    if !registry_available() || !privileged() {
        return Ok(());
    }
    let reg = Registry::start(None)?;
    let pushed = push_all(&reg.addr, RegistryAuth::Anonymous).await?;
    let tmp = tempfile::tempdir()?;
    let s = store(&tmp.path().join("images"), insecure(&[&reg.addr])).await?;
    let by_tag = format!("{}/test/busybox:gzip", reg.addr);
    let by_digest = format!("{}/test/busybox@{}", reg.addr, pushed.gzip);
    let (a, b) = tokio::join!(s.pull(&by_tag, None, &no_progress), s.pull(&by_digest, None, &no_progress));
    let (a, b) = (a?, b?);
    assert_eq!(a.id, b.id);
    assert_eq!(s.list().len(), 1);
    assert_eq!(s.get(&by_tag)?.references.len(), 2, "both references end up on the one image");
    for layer in &pushed.gzip_layers {
        assert_eq!(reg.blob_gets(layer), 1, "{layer} downloaded once:\n{}", reg.log());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_digests_and_tampered_blobs_fail_and_leave_nothing() -> TestResult {
    if !registry_available() {
        return Ok(());
    }
    let reg = Registry::start(None)?;
    let pushed = push_all(&reg.addr, RegistryAuth::Anonymous).await?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("images");
    let s = store(&dir, insecure(&[&reg.addr])).await?;

    // A digest the registry does not have.
    let absent = format!("{}/test/busybox@sha256:{}", reg.addr, "0".repeat(64));
    match s.pull(&absent, None, &no_progress).await {
        Err(ImageError::Pull { source, .. }) => {
            assert_eq!(source.registry_failure(), Some(RegistryFailure::NotFound), "{source:?}")
        }
        other => return Err(format!("expected not found, got {other:?}").into()),
    }
    assert_nothing_left(&dir, &s, &[])?;

    // The upper layer truncated in the registry's storage.
    let upper = &pushed.gzip_layers[1];
    let file = reg.blob_file(upper);
    let good = std::fs::read(&file)?;
    std::fs::write(&file, &good[..good.len() / 2])?;
    let r = s.pull(&format!("{}/test/busybox:gzip", reg.addr), None, &no_progress).await;
    assert!(
        matches!(&r, Err(ImageError::Pull { source, .. }) if matches!(**source, PullError::Download { done, size, .. } if done < size)),
        "{r:?}"
    );
    assert_nothing_left(&dir, &s, &pushed.gzip_layers[1..])?;

    // The same size, one byte flipped: the digest does not match.
    let mut bad = good.clone();
    let i = bad.len() / 2;
    bad[i] ^= 0xff;
    std::fs::write(&file, &bad)?;
    let r = s.pull(&format!("{}/test/busybox:gzip", reg.addr), None, &no_progress).await;
    match r.as_ref().map_err(|e| match e {
        ImageError::Pull { source, .. } => Some(&**source),
        _ => None,
    }) {
        Err(Some(PullError::Content { source: LayoutError::DigestMismatch { what, .. }, .. })) => {
            assert!(what.starts_with("layer 2"), "{what}")
        }
        _ => return Err(format!("expected a digest mismatch, got {r:?}").into()),
    }
    assert_nothing_left(&dir, &s, &pushed.gzip_layers[1..])?;

    // Repaired, the same store pulls the image.
    std::fs::write(&file, &good)?;
    if privileged() {
        let rec = s.pull(&format!("{}/test/busybox:gzip", reg.addr), None, &no_progress).await?;
        assert_eq!(rec.id, pushed.gzip);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_uses_configured_or_given_credentials() -> TestResult {
    if !registry_available() || !privileged() {
        return Ok(());
    }
    let reg = Registry::start(Some(("puller", "s3cret")))?;
    let pushed = push_all(&reg.addr, RegistryAuth::Basic("puller".into(), "s3cret".into())).await?;
    let reference = format!("{}/test/busybox:gzip", reg.addr);
    let tmp = tempfile::tempdir()?;
    let with = |user: Option<(&str, &str)>| {
        let entry = RegistryConfig {
            insecure: true,
            username: user.map(|u| u.0.to_owned()),
            password: user.map(|u| u.1.to_owned()),
            ..RegistryConfig::default()
        };
        Registries::new([(reg.addr.clone(), entry)].into_iter().collect())
    };

    let s = store(&tmp.path().join("anonymous"), with(None)).await?;
    match s.pull(&reference, None, &no_progress).await {
        Err(ImageError::Pull { source, .. }) => {
            assert_eq!(source.registry_failure(), Some(RegistryFailure::Unauthorized), "{source:?}");
            assert!(source.to_string().contains(&format!("[registries.\"{}\"]", reg.addr)), "{source}");
        }
        other => return Err(format!("expected unauthorized, got {other:?}").into()),
    }
    let s = store(&tmp.path().join("wrong"), with(Some(("puller", "wrong")))).await?;
    let r = s.pull(&reference, None, &no_progress).await;
    assert!(
        matches!(&r, Err(ImageError::Pull { source, .. }) if source.registry_failure() == Some(RegistryFailure::Unauthorized)),
        "{r:?}"
    );
    // Credentials given with the pull (as CRI passes them) replace the configured ones.
    let given = Credentials { username: "puller".into(), password: "s3cret".into() };
    assert_eq!(s.pull(&reference, Some(&given), &no_progress).await?.id, pushed.gzip);

    let s = store(&tmp.path().join("configured"), with(Some(("puller", "s3cret")))).await?;
    assert_eq!(s.pull(&reference, None, &no_progress).await?.id, pushed.gzip);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mirrors_are_tried_first_and_plain_http_needs_configuring() -> TestResult {
    if !registry_available() || !privileged() {
        return Ok(());
    }
    let reg = Registry::start(None)?;
    let pushed = push_all(&reg.addr, RegistryAuth::Anonymous).await?;
    let tmp = tempfile::tempdir()?;

    // Not configured insecure: HTTPS is tried, and the plain-HTTP registry cannot answer it.
    let s = store(&tmp.path().join("https"), Registries::default()).await?;
    let r = s.pull(&format!("{}/test/busybox:gzip", reg.addr), None, &no_progress).await;
    assert!(
        matches!(&r, Err(ImageError::Pull { source, .. }) if source.registry_failure() == Some(RegistryFailure::Unavailable)),
        "{r:?}"
    );
    assert_nothing_left(&tmp.path().join("https"), &s, &[])?;

    // A registry that does not exist, mirrored by ours (first a dead mirror, which is skipped).
    let dead = format!("127.0.0.1:{}", TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    let mut hosts = std::collections::BTreeMap::new();
    hosts.insert(
        "registry.invalid".to_owned(),
        RegistryConfig { mirrors: vec![dead.clone(), reg.addr.clone()], ..RegistryConfig::default() },
    );
    for h in [&dead, &reg.addr] {
        hosts.insert(h.clone(), RegistryConfig { insecure: true, ..RegistryConfig::default() });
    }
    let s = store(&tmp.path().join("mirror"), Registries::new(hosts)).await?;
    let rec = s.pull("registry.invalid/test/busybox:gzip", None, &no_progress).await?;
    assert_eq!(rec.id, pushed.gzip);
    assert_eq!(rec.references, ["registry.invalid/test/busybox:gzip"], "the image keeps its upstream name");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_over_the_control_api_streams_progress_then_the_image() -> TestResult {
    use bulkhead_api::control::v1 as pb;
    use bulkhead_api::control::v1::image_service_client::ImageServiceClient;
    use bulkhead_api::control::v1::image_service_server::ImageServiceServer;
    use bulkhead_api::control::v1::pull_image_response::Event;

    if !registry_available() || !privileged() {
        return Ok(());
    }
    let reg = Registry::start(Some(("puller", "s3cret")))?;
    let pushed = push_all(&reg.addr, RegistryAuth::Basic("puller".into(), "s3cret".into())).await?;
    let tmp = tempfile::tempdir()?;
    let s = Arc::new(store(&tmp.path().join("images"), insecure(&[&reg.addr])).await?);
    let socket = tmp.path().join("control.sock");
    let incoming = bulkheadd::api::bind_control_socket(&socket)?;
    let api = bulkheadd::api::images::ImageApi::new(s);
    tokio::spawn(
        tonic::transport::Server::builder().add_service(ImageServiceServer::new(api)).serve_with_incoming(incoming),
    );
    let mut c = ImageServiceClient::new(bulkhead_api::client::connect_unix(&socket).await?);

    let reference = format!("{}/test/busybox:gzip", reg.addr);
    let credentials = Some(pb::RegistryCredentials { username: "puller".into(), password: "s3cret".into() });
    let req = pb::PullImageRequest { reference: reference.clone(), credentials };
    let mut stream = c.pull_image(req).await?.into_inner();
    let mut events = Vec::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(120), stream.message()).await?? {
        events.push(m.event.ok_or("a message without an event")?);
    }
    match events.first() {
        Some(Event::Resolved(r)) => {
            assert_eq!(r.id, pushed.gzip);
            assert_eq!(r.layers.len(), 2);
        }
        other => return Err(format!("expected Resolved first, got {other:?}").into()),
    }
    assert!(events.iter().any(|e| matches!(e, Event::Layer(l) if l.index == 1 && l.done_bytes == l.total_bytes)));
    assert!(matches!(events[events.len() - 2], Event::Building(_)), "{events:?}");
    match events.last() {
        Some(Event::Image(i)) => {
            assert_eq!(i.id, pushed.gzip);
            assert_eq!(i.references, [reference.as_str()]);
        }
        other => return Err(format!("expected the image last, got {other:?}").into()),
    }

    // Failures are statuses a client can act on: no credentials, an absent tag, a malformed reference.
    let req = pb::PullImageRequest { reference: reference.replace(":gzip", ":zstd"), credentials: None };
    let status = match c.pull_image(req).await {
        Ok(r) => r.into_inner().message().await.err(),
        Err(s) => Some(s),
    };
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::PermissionDenied));
    let credentials = Some(pb::RegistryCredentials { username: "puller".into(), password: "s3cret".into() });
    let req = pb::PullImageRequest { reference: reference.replace(":gzip", ":absent"), credentials };
    let status = match c.pull_image(req).await {
        Ok(r) => r.into_inner().message().await.err(),
        Err(s) => Some(s),
    };
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::NotFound));
    let r = c.pull_image(pb::PullImageRequest { reference: "Bad Ref".into(), credentials: None }).await;
    assert_eq!(r.err().map(|s| s.code()), Some(tonic::Code::InvalidArgument));
    Ok(())
}

#[tokio::test]
async fn malformed_references_fail_before_any_request() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let s = store(tmp.path(), Registries::default()).await?;
    let r = s.pull("Not/A Reference", None, &no_progress).await;
    assert!(matches!(r, Err(ImageError::Reference(_))), "{r:?}");
    Ok(())
}
