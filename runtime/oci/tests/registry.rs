//! Pulls from a real registry: Debian's `docker-registry` (the CNCF distribution registry) served on
//! 127.0.0.1 by each test, with images the tests build and push themselves (the busybox fixture with gzip
//! and zstd layers, whiteouts, an opaque directory and hard links; a multi-arch OCI index; a Docker manifest
//! list with Docker media types). The pulled root images are mounted and checked as imported ones are.
//!
//! Auth is tested both ways a registry asks for it: basic auth (htpasswd) and bearer tokens from a token
//! service (a small one in the test harness, signing with openssl).
//!
//! Needs /usr/bin/docker-registry, htpasswd and openssl (`ci/deps build` installs docker-registry,
//! apache2-utils and openssl).
//! Without the registry the tests skip with a message, except when CI is set: there they fail. The tests that
//! mount need root, as in tests/images.rs.

mod imagecheck;

use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bulkhead_oci::layout::Compression;
use bulkhead_oci::layout::LayoutError;
use bulkhead_oci::layout::host_arch;
use bulkhead_oci::pull::{Credentials, PullError, PullProgress, Registries, RegistryConfig, RegistryFailure};
use bulkhead_oci::testing::registry::{Pusher, Registry, push_all, registry_available, sha};
use bulkhead_oci::testing::write_busybox_layout;
use bulkhead_oci::unpack::UnpackError;
use bulkhead_oci::{ImageError, ImageFormat, ImageStore, ImageStoreConfig, PruneReport};
use imagecheck::{BUSYBOX, TestResult, check_root_image};
use oci_client::secrets::RegistryAuth;

fn privileged() -> bool {
    bulkhead_oci::testing::root_or_skip("chown while unpacking, loop mounts")
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
    let pushed = push_all(&reg.addr, RegistryAuth::Anonymous, Path::new(BUSYBOX)).await?;
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
    let pushed = push_all(&reg.addr, RegistryAuth::Anonymous, Path::new(BUSYBOX)).await?;
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
    let pushed = push_all(&reg.addr, RegistryAuth::Anonymous, Path::new(BUSYBOX)).await?;
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
    let pushed = push_all(&reg.addr, RegistryAuth::Basic("puller".into(), "s3cret".into()), Path::new(BUSYBOX)).await?;
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
async fn bearer_token_auth_trades_the_credentials_for_a_token() -> TestResult {
    if !registry_available() || !privileged() {
        return Ok(());
    }
    let reg = Registry::start_with_token_auth("puller", "s3cret")?;
    let pushed = push_all(&reg.addr, RegistryAuth::Basic("puller".into(), "s3cret".into()), Path::new(BUSYBOX)).await?;
    let reference = format!("{}/test/busybox:zstd", reg.addr);
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
    for (name, user) in [("anonymous", None), ("wrong", Some(("puller", "wrong")))] {
        let s = store(&tmp.path().join(name), with(user)).await?;
        let r = s.pull(&reference, None, &no_progress).await;
        assert!(
            matches!(&r, Err(ImageError::Pull { source, .. }) if source.registry_failure() == Some(RegistryFailure::Unauthorized)),
            "{name}: {r:?}"
        );
    }
    let s = store(&tmp.path().join("right"), with(Some(("puller", "s3cret")))).await?;
    let rec = s.pull(&reference, None, &no_progress).await?;
    assert_eq!(rec.id, pushed.zstd);
    check_root_image(&s, &rec)?;
    assert!(reg.log().contains("\"GET /v2/test/busybox/manifests/zstd HTTP/1.1\" 200"), "{}", reg.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mirrors_are_tried_first_and_plain_http_needs_configuring() -> TestResult {
    if !registry_available() || !privileged() {
        return Ok(());
    }
    let reg = Registry::start(None)?;
    let pushed = push_all(&reg.addr, RegistryAuth::Anonymous, Path::new(BUSYBOX)).await?;
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
async fn prune_removes_unreferenced_images_and_unlisted_blobs_only() -> TestResult {
    if !registry_available() || !privileged() {
        return Ok(());
    }
    let reg = Registry::start(None)?;
    push_all(&reg.addr, RegistryAuth::Anonymous, Path::new(BUSYBOX)).await?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("images");
    let s = store(&dir, insecure(&[&reg.addr])).await?;
    let blobs = || std::fs::read_dir(dir.join("blobs/sha256")).map(|d| d.count());

    let pulled = s.pull(&format!("{}/test/busybox:gzip", reg.addr), None, &no_progress).await?;
    assert_eq!(pulled.blobs.len(), 4, "manifest, config and two layers: {:?}", pulled.blobs);
    assert_eq!(blobs()?, 4);
    // An import without a reference (the fixture's bare ref.name tag names nothing) is dangling.
    let layout = tmp.path().join("layout");
    write_busybox_layout(&layout, Path::new(BUSYBOX), Compression::Zstd)?;
    let dangling = s.import(&layout, None).await?;
    assert!(dangling.references.is_empty());

    let r = s.prune(|_| true).await?;
    assert_eq!(r, PruneReport::default(), "an image a workload uses stays, and so do its blobs");
    let r = s.prune(|_| false).await?;
    assert_eq!((r.images.as_slice(), r.blobs), (std::slice::from_ref(&dangling.id), 0));
    assert!(r.bytes > 0);
    assert!(!s.erofs_path(&dangling).exists());
    assert_eq!(s.get(&pulled.id)?.id, pulled.id, "a referenced image stays");
    assert_eq!(blobs()?, 4, "its blobs stay");

    // Removing an image leaves its blobs to the next prune.
    s.remove(&pulled.id, |_| false).await?;
    assert_eq!(blobs()?, 4);
    let r = s.prune(|_| false).await?;
    assert_eq!((r.images.len(), r.blobs), (0, 4));
    assert_eq!(blobs()?, 0);
    Ok(())
}

/// A one-layer image whose layer writes `../../escaped`, pushed as `test/evil:v1`.
async fn push_escaping_image(addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(4);
    h.set_mode(0o644);
    let name = b"../../escaped";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_cksum();
    b.append(&h, &b"evil"[..])?;
    let layer = b.into_inner()?;
    let p = Pusher::new(addr, RegistryAuth::Anonymous);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": host_arch(), "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [sha(&layer)] }
    }))?;
    let config_digest = p.blob("test/evil", config.clone()).await?;
    let layer_digest = p.blob("test/evil", layer.clone()).await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len() }]
    });
    p.manifest("test/evil", "v1", serde_json::to_vec(&manifest)?, "application/vnd.oci.image.manifest.v1+json").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_layer_from_a_registry_is_refused_and_writes_nothing_outside() -> TestResult {
    if !registry_available() {
        return Ok(());
    }
    let reg = Registry::start(None)?;
    push_escaping_image(&reg.addr).await?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("images");
    let s = store(&dir, insecure(&[&reg.addr])).await?;
    let r = s.pull(&format!("{}/test/evil:v1", reg.addr), None, &no_progress).await;
    match &r {
        Err(ImageError::Unpack { source: UnpackError::PathEscape { path }, .. }) => assert_eq!(path, "../../escaped"),
        other => return Err(format!("expected a path escape, got {other:?}").into()),
    }
    // The daemon maps bad input to InvalidArgument: a hostile layer is the image's fault, not the node's.
    assert!(matches!(&r, Err(ImageError::Unpack { source, .. }) if source.is_bad_input()));
    assert_nothing_left(&dir, &s, &[])?;
    for p in [tmp.path().join("escaped"), dir.join("escaped"), dir.join("tmp/escaped")] {
        assert!(!p.exists(), "{} was written", p.display());
    }
    Ok(())
}

#[tokio::test]
async fn a_crash_mid_pull_leaves_only_verified_blobs() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("images");
    let s = store(&dir, Registries::default()).await?;
    // What a daemon killed mid-pull leaves: a half-written blob and a build's work directory in tmp/, next
    // to blobs that were verified and renamed in before.
    let kept = sha(b"verified");
    std::fs::write(dir.join("blobs/sha256").join(&kept["sha256:".len()..]), b"verified")?;
    std::fs::write(dir.join("tmp/blob-partial"), b"half of a la")?;
    std::fs::create_dir_all(dir.join("tmp/pull-1234/rootfs/etc"))?;
    std::fs::write(dir.join("tmp/pull-1234/rootfs/etc/hostname"), b"x")?;
    drop(s);
    let s = store(&dir, Registries::default()).await?;
    assert_eq!(std::fs::read_dir(dir.join("tmp"))?.count(), 0, "the next start empties tmp/");
    assert!(s.list().is_empty());
    assert_eq!(std::fs::read(dir.join("blobs/sha256").join(&kept["sha256:".len()..]))?, b"verified");
    // Nothing lists that blob: prune collects it.
    assert_eq!(s.prune(|_| false).await?.blobs, 1);
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
