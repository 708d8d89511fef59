//! Image import end to end: a real OCI layout around the static busybox, imported as a directory, as a
//! tar and (converted by skopeo) as a `docker save` archive; the erofs images are mounted and checked, and
//! busybox runs from them in a chroot.
//!
//! Needs root (chown while unpacking, loop mounts), mkfs.erofs, a static /bin/busybox (busybox-static)
//! and skopeo: `ci/deps build` installs them. Without root the tests fail and say so; set
//! BULKHEAD_SKIP_ROOT_TESTS=1 to skip them deliberately.

mod imagecheck;

use std::path::{Path, PathBuf};
use std::process::Command;

use bulkhead_oci::layout::{Compression, LayoutError};
use bulkhead_oci::testing::{Fixture, tar_directory, write_busybox_layout};
use bulkhead_oci::{ImageError, ImageFormat, ImageStore, ImageStoreConfig};
use imagecheck::{BUSYBOX, check_root_image, check_static_busybox};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// False (after saying why) only when the run deliberately skips root tests; panics when root is missing.
fn privileged() -> bool {
    bulkhead_oci::testing::root_or_skip("chown, loop mounts")
}

struct Env {
    _tmp: tempfile::TempDir,
    layout: PathBuf,
    fixture: Fixture,
    state: PathBuf,
}

fn env(compression: Compression) -> Result<Env, Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let layout = tmp.path().join("layout");
    let fixture = write_busybox_layout(&layout, Path::new(BUSYBOX), compression)?;
    let state = tmp.path().join("state/images");
    Ok(Env { _tmp: tmp, layout, fixture, state })
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_directory_tar_and_docker_archive_become_bootable_root_images() -> TestResult {
    if !privileged() {
        return Ok(());
    }
    check_static_busybox()?;
    let e = env(Compression::Gzip)?;
    let store = ImageStore::open(ImageStoreConfig::new(&e.state)).await?;

    // As a directory.
    let rec = store.import(&e.layout, Some("busybox:test")).await?;
    assert_eq!(rec.id, e.fixture.manifest_digest, "an OCI image is named by its manifest digest");
    assert_eq!(rec.references, ["docker.io/library/busybox:test"]);
    assert_eq!(rec.format, ImageFormat::Oci);
    let bb_len = std::fs::metadata(BUSYBOX)?.len();
    // What the tree holds: whited-out and hidden files do not count, the hard link counts once.
    assert_eq!(rec.size_bytes, bb_len + "busybox\n".len() as u64 + "added\n".len() as u64 + "new\n".len() as u64);
    let c = &rec.config;
    assert_eq!(c.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(c.cmd, ["echo ok"]);
    assert_eq!(c.env, [("PATH".to_owned(), "/bin".to_owned()), ("GREETING".to_owned(), "hello=world".to_owned())]);
    assert_eq!((c.working_dir.as_str(), c.user.as_str(), c.stop_signal.as_str()), ("/tmp", "1000:1000", "SIGQUIT"));
    assert_eq!(c.exposed_ports, ["53/udp", "8080/tcp"]);
    assert_eq!(c.labels.get("org.example.test").map(String::as_str), Some("yes"));
    check_root_image(&store, &rec)?;

    // Again: idempotent, nothing rebuilt.
    let image_mtime = std::fs::metadata(store.erofs_path(&rec))?.modified()?;
    let again = store.import(&e.layout, None).await?;
    assert_eq!(again, rec);
    assert_eq!(std::fs::metadata(store.erofs_path(&rec))?.modified()?, image_mtime);

    // As a tar of the layout: same image, one more reference.
    let tar = e._tmp.path().join("layout.tar");
    tar_directory(&e.layout, &tar)?;
    let from_tar = store.import(&tar, Some("example.com/tools/busybox:tar")).await?;
    assert_eq!(from_tar.id, rec.id);
    assert_eq!(from_tar.references, ["docker.io/library/busybox:test", "example.com/tools/busybox:tar"]);
    assert_eq!(from_tar.created_at, rec.created_at);
    assert_eq!(store.get("busybox:test")?.id, rec.id);
    assert_eq!(store.get(&rec.id["sha256:".len()..][..12])?.id, rec.id);

    // As a gzip-compressed tar (docker save | gzip): the same image again.
    let gz = e._tmp.path().join("layout.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz)?, flate2::Compression::fast());
    std::io::copy(&mut std::fs::File::open(&tar)?, &mut enc)?;
    enc.finish()?.sync_all()?;
    assert_eq!(store.import(&gz, None).await?.id, rec.id);

    // Lookups and leftovers.
    assert!(matches!(store.get("busybox"), Err(ImageError::NotFound(_))));
    let tmp_entries = std::fs::read_dir(e.state.join("tmp"))?.count();
    assert_eq!(tmp_entries, 0, "work directories are removed");

    // As a docker save archive written by skopeo.
    if which("skopeo") {
        let archive = e._tmp.path().join("busybox-docker.tar");
        let st = Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:test", e.layout.display()))
            .arg(format!("docker-archive:{}:busybox:docker", archive.display()))
            .status()?;
        assert!(st.success(), "skopeo copy failed: {st}");
        let docker = store.import(&archive, None).await?;
        assert_eq!(docker.format, ImageFormat::DockerArchive);
        assert_eq!(docker.id, e.fixture.config_digest, "a docker archive's image is named by its config digest");
        assert_eq!(docker.references, ["docker.io/library/busybox:docker"]);
        assert_eq!(docker.config, rec.config);
        check_root_image(&store, &docker)?;
        // Moving a reference: tagging the docker import "busybox:test" takes the tag from the OCI import.
        let moved = store.import(&archive, Some("busybox:test")).await?;
        assert!(moved.references.contains(&"docker.io/library/busybox:test".to_owned()));
        assert!(!store.get(&rec.id)?.references.contains(&"docker.io/library/busybox:test".to_owned()));
    } else {
        eprintln!("skipping the docker-archive import: skopeo is not installed (ci/deps build installs it)");
    }

    // Removal: refused while in use, then done, then idempotent; the records survive a reopen.
    let in_use = store.remove(&rec.id, |_| true).await;
    assert!(matches!(in_use, Err(ImageError::InUse { .. })), "{in_use:?}");
    let removed = store.remove("example.com/tools/busybox:tar", |_| false).await?;
    assert_eq!(removed.map(|r| r.id), Some(rec.id.clone()));
    assert!(!store.erofs_path(&rec).exists());
    assert_eq!(store.remove(&rec.id, |_| false).await?, None);
    let kept = store.list();
    drop(store);
    let reopened = ImageStore::open(ImageStoreConfig::new(&e.state)).await?;
    assert_eq!(reopened.list(), kept);
    Ok(())
}

fn which(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn zstd_and_uncompressed_layers_import_too() -> TestResult {
    if !privileged() {
        return Ok(());
    }
    for c in [Compression::Zstd, Compression::None] {
        let e = env(c)?;
        let store = ImageStore::open(ImageStoreConfig::new(&e.state)).await?;
        let rec = store.import(&e.layout, None).await?;
        assert_eq!(rec.id, e.fixture.manifest_digest);
        assert!(rec.references.is_empty(), "a bare ref.name tag is not a reference: {:?}", rec.references);
        check_root_image(&store, &rec)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_layer_is_refused_and_leaves_nothing_behind() -> TestResult {
    let e = env(Compression::Gzip)?;
    // Flip one byte inside the compressed data of the upper layer, keeping its name (= claimed digest).
    let blob = &e.fixture.layer_blobs[1];
    let mut bytes = std::fs::read(blob)?;
    let i = bytes.len() / 2;
    bytes[i] ^= 0xff;
    std::fs::write(blob, &bytes)?;
    let store = ImageStore::open(ImageStoreConfig::new(&e.state)).await?;
    let r = store.import(&e.layout, Some("busybox:bad")).await;
    match r {
        Err(ImageError::Invalid { source: LayoutError::DigestMismatch { ref what, .. }, .. }) => {
            assert!(what.starts_with("layer 2"), "{what}");
        }
        other => return Err(format!("expected a digest mismatch, got {other:?}").into()),
    }
    assert!(store.list().is_empty());
    assert_eq!(std::fs::read_dir(e.state.join("tmp"))?.count(), 0);
    let images: Vec<_> = std::fs::read_dir(&e.state)?
        .filter_map(|d| d.ok())
        .filter(|d| d.file_name().to_string_lossy().ends_with(".erofs"))
        .collect();
    assert!(images.is_empty());

    // A truncated blob: the size no longer matches the descriptor.
    let e = env(Compression::Gzip)?;
    let blob = &e.fixture.layer_blobs[0];
    let bytes = std::fs::read(blob)?;
    std::fs::write(blob, &bytes[..bytes.len() - 10])?;
    let store = ImageStore::open(ImageStoreConfig::new(&e.state)).await?;
    let r = store.import(&e.layout, None).await;
    assert!(matches!(r, Err(ImageError::Invalid { source: LayoutError::SizeMismatch { .. }, .. })), "{r:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_inputs_say_what_is_wrong() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = ImageStore::open(ImageStoreConfig::new(tmp.path().join("images"))).await?;
    let r = store.import(Path::new("relative/dir"), None).await;
    assert!(matches!(r, Err(ImageError::RelativePath(_))), "{r:?}");
    let r = store.import(&tmp.path().join("absent"), None).await;
    assert!(matches!(r, Err(ImageError::OpenInput { .. })), "{r:?}");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty)?;
    let r = store.import(&empty, None).await;
    assert!(matches!(r, Err(ImageError::Invalid { source: LayoutError::UnknownFormat, .. })), "{r:?}");
    let r = store.import(&empty, Some("Not A Reference")).await;
    assert!(matches!(r, Err(ImageError::Reference(_))), "{r:?}");
    Ok(())
}
