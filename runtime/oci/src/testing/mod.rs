//! Test fixtures (feature `test-support`): a real OCI image layout around a static busybox, for the
//! daemon's and the CLI's tests, and a real registry to pull from ([`registry`]).

#[cfg(feature = "test-support")]
pub mod registry;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::layout::Compression;

/// Whether a test that needs root may run: true as root; false (with a note) when
/// `BULKHEAD_SKIP_ROOT_TESTS` is set; otherwise it panics, naming `why` root is needed, so that a
/// non-root run cannot pass by skipping silently.
pub fn root_or_skip(why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("BULKHEAD_SKIP_ROOT_TESTS").is_some() {
        eprintln!("skipping: needs root (BULKHEAD_SKIP_ROOT_TESTS is set)");
        return false;
    }
    panic!("this test needs root ({why}): run it as root, or set BULKHEAD_SKIP_ROOT_TESTS=1 to skip");
}

/// Every fixture entry's mtime.
pub const MTIME: u64 = 1_700_000_000;

/// What [`write_busybox_layout`] wrote.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// "sha256:..." of the manifest: the image id.
    pub manifest_digest: String,
    /// "sha256:..." of the config: the id a `docker save` of the same image gets.
    pub config_digest: String,
    /// The layer blobs, bottom first.
    pub layer_blobs: Vec<PathBuf>,
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

enum Item<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, u64, u64, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

fn tar_of(items: &[Item<'_>]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for item in items {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(MTIME);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        match item {
            Item::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                b.append_data(&mut h, p, io::empty())?;
            }
            Item::File(p, mode, uid, gid, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data)?;
            }
            Item::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                b.append_link(&mut h, p, target)?;
            }
            Item::Hardlink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o755);
                b.append_link(&mut h, p, target)?;
            }
        }
    }
    b.into_inner()
}

fn compress(tar: &[u8], c: Compression) -> io::Result<(Vec<u8>, &'static str)> {
    Ok(match c {
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar)?;
            (e.finish()?, "application/vnd.oci.image.layer.v1.tar+gzip")
        }
        Compression::Zstd => (zstd::encode_all(tar, 3)?, "application/vnd.oci.image.layer.v1.tar+zstd"),
        Compression::None | Compression::Detect => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
    })
}

fn write_blob(dir: &Path, bytes: &[u8]) -> io::Result<(String, PathBuf)> {
    let digest = sha(bytes);
    let path = dir.join("blobs/sha256").join(&digest["sha256:".len()..]);
    fs::write(&path, bytes)?;
    Ok((digest, path))
}

/// Writes an OCI image layout into `dir` (created), tagged "test", from the static `busybox`:
/// - layer 1: `/bin/busybox` (0755), `/bin/sh -> busybox`, hard link `/bin/busybox-link`, `/tmp` (1777),
///   `/etc/hostname`, `/etc/remove-me`, `/usr/share/doomed/old`;
/// - layer 2: whiteout of `/etc/remove-me`, `/etc/added` (0640, 1000:1000), opaque
///   `/usr/share/doomed/` with `new`.
///
/// Both layers use `compression`.
pub fn write_busybox_layout(dir: &Path, busybox: &Path, compression: Compression) -> io::Result<Fixture> {
    let bb = fs::read(busybox)?;
    let lower = tar_of(&[
        Item::Dir("bin", 0o755),
        Item::File("bin/busybox", 0o755, 0, 0, &bb),
        Item::Symlink("bin/sh", "busybox"),
        Item::Hardlink("bin/busybox-link", "bin/busybox"),
        Item::Dir("etc", 0o755),
        Item::File("etc/hostname", 0o644, 0, 0, b"busybox\n"),
        Item::File("etc/remove-me", 0o644, 0, 0, b"gone soon\n"),
        Item::Dir("tmp", 0o1777),
        Item::Dir("usr", 0o755),
        Item::Dir("usr/share", 0o755),
        Item::Dir("usr/share/doomed", 0o755),
        Item::File("usr/share/doomed/old", 0o644, 0, 0, b"old\n"),
    ])?;
    let upper = tar_of(&[
        Item::File("etc/.wh.remove-me", 0o644, 0, 0, b""),
        Item::File("etc/added", 0o640, 1000, 1000, b"added\n"),
        Item::File("usr/share/doomed/.wh..wh..opq", 0o644, 0, 0, b""),
        Item::File("usr/share/doomed/new", 0o644, 0, 0, b"new\n"),
    ])?;
    let config = serde_json::json!({
        "Env": ["PATH=/bin", "GREETING=hello=world"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo ok"],
        "WorkingDir": "/tmp",
        "User": "1000:1000",
        "StopSignal": "SIGQUIT",
        "ExposedPorts": { "8080/tcp": {}, "53/udp": {} },
        "Labels": { "org.example.test": "yes" }
    });
    write_image(dir, &[lower, upper], config, compression)
}

/// Writes an OCI image layout into `dir` (created), tagged "test", of one layer per tar in `tars` (bottom
/// first, each compressed with `compression`) and the image config's `config` section.
fn write_image(
    dir: &Path,
    tars: &[Vec<u8>],
    config: serde_json::Value,
    compression: Compression,
) -> io::Result<Fixture> {
    fs::create_dir_all(dir.join("blobs/sha256"))?;
    let mut layers = Vec::new();
    let mut layer_blobs = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in tars {
        let (blob, media_type) = compress(tar, compression)?;
        let (digest, path) = write_blob(dir, &blob)?;
        layers.push(serde_json::json!({ "mediaType": media_type, "digest": digest, "size": blob.len() }));
        layer_blobs.push(path);
        diff_ids.push(sha(tar));
    }
    let history: Vec<serde_json::Value> =
        tars.iter().map(|_| serde_json::json!({ "created_by": "bulkhead test fixture" })).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": super::layout::host_arch(),
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": history
    }))?;
    let (config_digest, _) = write_blob(dir, &config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": layers
    }))?;
    let (manifest_digest, _) = write_blob(dir, &manifest)?;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": "test" }
        }]
    }))?;
    fs::write(dir.join("index.json"), index)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(Fixture { manifest_digest, config_digest, layer_blobs })
}

/// What an image's `/etc/passwd` is (see [`write_accounts_layout`]).
#[derive(Debug, Clone, Copy)]
pub enum EtcFile<'a> {
    /// A file with this content.
    Content(&'a str),
    /// A symlink to this target.
    Symlink(&'a str),
}

/// Writes an OCI image layout into `dir` (created), tagged "test", whose tree has users and groups and whose
/// config says `USER <user>`, with no program to run (for the image store's tests; nothing boots it):
/// - layer 1: `/etc/passwd` = `passwd`, `/etc/group` with only root;
/// - layer 2: `/etc/group` = `group`, so the accounts must be read from the finished tree, not a layer.
pub fn write_accounts_layout(dir: &Path, passwd: EtcFile<'_>, group: &str, user: &str) -> io::Result<Fixture> {
    let passwd = match passwd {
        EtcFile::Content(c) => Item::File("etc/passwd", 0o644, 0, 0, c.as_bytes()),
        EtcFile::Symlink(target) => Item::Symlink("etc/passwd", target),
    };
    let lower = tar_of(&[Item::Dir("etc", 0o755), passwd, Item::File("etc/group", 0o644, 0, 0, b"root:x:0:\n")])?;
    let upper = tar_of(&[Item::File("etc/group", 0o644, 0, 0, group.as_bytes())])?;
    let config = serde_json::json!({ "Cmd": ["/bin/true"], "User": user });
    write_image(dir, &[lower, upper], config, Compression::Gzip)
}

/// Writes `dir` as a tar file `out` (what `tar -C dir -cf out .` would), deterministically: fixed mtimes,
/// owners and modes, so the same directory gives the same tar (the node image bakes one in and is rebuilt
/// only when its inputs change).
pub fn tar_directory(dir: &Path, out: &Path) -> io::Result<()> {
    let mut b = tar::Builder::new(fs::File::create(out)?);
    b.mode(tar::HeaderMode::Deterministic);
    b.follow_symlinks(false);
    b.append_dir_all(".", dir)?;
    b.into_inner()?.sync_all()
}
