//! What the OCI and `docker save` readers share: the input directory (opened without following symlinks),
//! sha256 digests and a verifying reader, the plan of an image (config and layers), and their errors.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use oci_spec::image::ImageConfiguration;
use sha2::{Digest as _, Sha256};

use super::ImageConfig;

/// Largest JSON document (index, manifest, config, `manifest.json`) read into memory.
pub const MAX_JSON_BYTES: u64 = 4 << 20;

/// Problems with the imported image itself (all INVALID_ARGUMENT at the API).
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Neither an OCI layout nor a `docker save` archive.
    #[error("not an OCI image layout (oci-layout + index.json) nor a docker save archive (manifest.json)")]
    UnknownFormat,
    /// A file the format requires is missing or unreadable.
    #[error("reading {file}")]
    Read {
        /// Path inside the image.
        file: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A path inside the image is unusable (absolute, `..`, through a symlink, not a regular file).
    #[error("{file}: {reason}")]
    BadFile {
        /// Path inside the image.
        file: String,
        /// Why.
        reason: String,
    },
    /// JSON that does not parse as what it should be.
    #[error("parsing {what}: {message}")]
    Json {
        /// Which document.
        what: String,
        /// The parser's message.
        message: String,
    },
    /// A digest that is not "sha256:" and 64 lowercase hex digits.
    #[error("{what}: unsupported digest {digest:?} (only sha256 is accepted)")]
    BadDigest {
        /// Which object.
        what: String,
        /// The digest.
        digest: String,
    },
    /// Content does not hash to its digest.
    #[error("{what}: content has digest sha256:{actual}, expected sha256:{expected}")]
    DigestMismatch {
        /// Which object.
        what: String,
        /// The digest from the descriptor.
        expected: String,
        /// What the content hashes to.
        actual: String,
    },
    /// Content is larger or smaller than its descriptor says.
    #[error("{what}: content is {actual} bytes, the descriptor says {expected}")]
    SizeMismatch {
        /// Which object.
        what: String,
        /// Size from the descriptor.
        expected: u64,
        /// Bytes read (a lower bound when larger).
        actual: u64,
    },
    /// A document or blob is larger than this importer reads.
    #[error("{what} is {size} bytes, more than the {limit} accepted")]
    TooLarge {
        /// Which object.
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A media type this importer does not handle.
    #[error("{what}: unsupported media type {media_type}")]
    MediaType {
        /// Which object.
        what: String,
        /// The type.
        media_type: String,
    },
    /// The image cannot be chosen, or is for another platform, or is inconsistent.
    #[error("{0}")]
    Unusable(String),
}

/// A sha256 digest, validated: 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    /// Parses "sha256:<64 hex>".
    pub fn parse(digest: &str, what: &str) -> Result<Self, LayoutError> {
        digest
            .strip_prefix("sha256:")
            .and_then(Sha256Hex::from_hex)
            .ok_or_else(|| LayoutError::BadDigest { what: what.to_owned(), digest: digest.to_owned() })
    }

    /// Accepts exactly 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Option<Self> {
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| Sha256Hex(hex.to_owned()))
    }

    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Sha256Hex(hex::encode(Sha256::digest(bytes)))
    }

    /// The hex digits.
    pub fn hex(&self) -> &str {
        &self.0
    }

    /// "sha256:<hex>".
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.0)
    }
}

/// Hashes and counts what passes through, and fails a read once more than `limit` bytes came by.
#[derive(Debug)]
pub struct DigestReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
}

impl<R: Read> DigestReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, limit: u64) -> Self {
        DigestReader { inner, hasher: Sha256::new(), count: 0, limit }
    }

    /// Reads the rest of the stream, then returns its digest and length.
    pub fn finish(mut self) -> io::Result<(Sha256Hex, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Sha256Hex(hex::encode(self.hasher.finalize())), self.count))
    }
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("stream is longer than the {} bytes expected", self.limit),
            ));
        }
        Ok(n)
    }
}

/// The directory of an image (a layout or unpacked archive), opened once; files are opened beneath it one
/// component at a time without following symlinks.
#[derive(Debug)]
pub struct InputDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl InputDir {
    /// Opens `path` (which may itself be reached through symlinks: the caller named it).
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd =
            openat(nix::fcntl::AT_FDCWD, path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        Ok(InputDir { fd, path: path.to_owned() })
    }

    /// The directory's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the regular file `rel` beneath the directory.
    pub fn open_file(&self, rel: &str) -> Result<File, LayoutError> {
        let bad = |reason: &str| LayoutError::BadFile { file: rel.to_owned(), reason: reason.to_owned() };
        let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
        if rel.starts_with('/') || comps.is_empty() || comps.contains(&"..") {
            return Err(bad("must be a relative path inside the image without '..'"));
        }
        let mut cur = self.fd.try_clone().map_err(|source| LayoutError::Read { file: rel.to_owned(), source })?;
        let last = comps.len() - 1;
        for (i, c) in comps.iter().enumerate() {
            let flags = if i == last {
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
            } else {
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
            };
            cur = match openat(&cur, *c, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ELOOP) => return Err(bad("is or goes through a symlink")),
                Err(Errno::ENOTDIR) => return Err(bad("a parent is not a directory")),
                Err(e) => {
                    return Err(LayoutError::Read {
                        file: rel.to_owned(),
                        source: io::Error::from_raw_os_error(e as i32),
                    });
                }
            };
        }
        let f = File::from(cur);
        let meta = f.metadata().map_err(|source| LayoutError::Read { file: rel.to_owned(), source })?;
        if !meta.is_file() {
            return Err(bad("is not a regular file"));
        }
        Ok(f)
    }

    /// True when `rel` names a regular file beneath the directory.
    pub fn has_file(&self, rel: &str) -> bool {
        self.open_file(rel).is_ok()
    }

    /// Reads the whole of `rel`, refusing more than `max` bytes.
    pub fn read_small(&self, rel: &str, max: u64) -> Result<Vec<u8>, LayoutError> {
        let f = self.open_file(rel)?;
        let mut v = Vec::new();
        f.take(max + 1).read_to_end(&mut v).map_err(|source| LayoutError::Read { file: rel.to_owned(), source })?;
        if v.len() as u64 > max {
            return Err(LayoutError::TooLarge { what: rel.to_owned(), size: v.len() as u64, limit: max });
        }
        Ok(v)
    }

    /// Reads the blob `digest` of `size` bytes (at most [`MAX_JSON_BYTES`]) and checks both.
    pub fn read_blob(&self, what: &str, digest: &Sha256Hex, size: u64) -> Result<Vec<u8>, LayoutError> {
        if size > MAX_JSON_BYTES {
            return Err(LayoutError::TooLarge { what: what.to_owned(), size, limit: MAX_JSON_BYTES });
        }
        let rel = blob_path(digest);
        let f = self.open_file(&rel)?;
        let mut v = Vec::new();
        f.take(size + 1).read_to_end(&mut v).map_err(|source| LayoutError::Read { file: rel.clone(), source })?;
        if v.len() as u64 != size {
            return Err(LayoutError::SizeMismatch { what: what.to_owned(), expected: size, actual: v.len() as u64 });
        }
        verify(what, digest, &Sha256Hex::of(&v))?;
        Ok(v)
    }
}

/// Where a blob lives in an OCI layout.
pub fn blob_path(d: &Sha256Hex) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Checks that `actual` is `expected`.
pub fn verify(what: &str, expected: &Sha256Hex, actual: &Sha256Hex) -> Result<(), LayoutError> {
    if expected == actual {
        Ok(())
    } else {
        Err(LayoutError::DigestMismatch {
            what: what.to_owned(),
            expected: expected.hex().to_owned(),
            actual: actual.hex().to_owned(),
        })
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
    /// Unknown from metadata: look at the magic number (`docker save` layers).
    Detect,
}

/// One layer to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    /// The file inside the input directory.
    pub path: String,
    /// Its compression.
    pub compression: Compression,
    /// The blob's digest and size from its descriptor, when the format has one (OCI).
    pub blob: Option<(Sha256Hex, u64)>,
    /// The digest of the uncompressed tar, from the image config (`rootfs.diff_ids`).
    pub diff_id: Sha256Hex,
}

/// Everything needed to build an image: checked metadata, and layers still to be verified while applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePlan {
    /// The image id (see [`super::ImageStore`] for what it is per format).
    pub id: Sha256Hex,
    /// Run configuration.
    pub config: ImageConfig,
    /// Layers, bottom first.
    pub layers: Vec<LayerPlan>,
    /// References named by the image itself (annotations, `RepoTags`), not yet normalised.
    pub references: Vec<String>,
}

/// The Go architecture name of this node, as image configs spell it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// Parses an image config (OCI and Docker share the schema), checks it runs here and has one diff id per
/// layer, and returns the run configuration and the diff ids.
pub fn parse_config(bytes: &[u8], layers: usize) -> Result<(ImageConfig, Vec<Sha256Hex>), LayoutError> {
    let cfg = ImageConfiguration::from_reader(bytes)
        .map_err(|e| LayoutError::Json { what: "the image config".into(), message: e.to_string() })?;
    let os = cfg.os().to_string();
    let arch = cfg.architecture().to_string();
    if os != "linux" || arch != host_arch() {
        return Err(LayoutError::Unusable(format!(
            "the image is for {os}/{arch}; this node runs linux/{}: import an image for this platform",
            host_arch()
        )));
    }
    let diff_ids = cfg
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| Sha256Hex::parse(d, "a diff id in the image config"))
        .collect::<Result<Vec<_>, _>>()?;
    if diff_ids.len() != layers {
        return Err(LayoutError::Unusable(format!(
            "the image has {layers} layers but its config lists {} diff ids",
            diff_ids.len()
        )));
    }
    let c = cfg.config().clone().unwrap_or_default();
    let env = c
        .env()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv, String::new()),
        })
        .collect();
    let mut exposed_ports = c.exposed_ports().clone().unwrap_or_default();
    exposed_ports.sort();
    let config = ImageConfig {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env,
        working_dir: c.working_dir().clone().unwrap_or_default(),
        user: c.user().clone().unwrap_or_default(),
        stop_signal: c.stop_signal().clone().unwrap_or_default(),
        exposed_ports,
        labels: c.labels().clone().unwrap_or_default().into_iter().collect::<BTreeMap<_, _>>(),
    };
    Ok((config, diff_ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_validated() {
        let h = "a".repeat(64);
        assert!(Sha256Hex::parse(&format!("sha256:{h}"), "x").is_ok());
        for bad in [format!("sha512:{h}"), format!("sha256:{}", "A".repeat(64)), "sha256:abc".into(), h.clone()] {
            assert!(matches!(Sha256Hex::parse(&bad, "x"), Err(LayoutError::BadDigest { .. })), "{bad}");
        }
        assert_eq!(Sha256Hex::of(b"").hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn digest_reader_stops_past_its_limit() {
        let mut r = DigestReader::new(&[0u8; 10][..], 9);
        assert!(io::copy(&mut r, &mut io::sink()).is_err());
        let r = DigestReader::new(&b"abc"[..], 3);
        let (d, n) = r.finish().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((d, n), (Sha256Hex::of(b"abc"), 3));
    }

    #[test]
    fn configs_for_other_platforms_or_with_missing_diff_ids_are_refused() {
        let cfg = |arch: &str, ids: usize| {
            let ids: Vec<String> =
                (0..ids).map(|i| format!("sha256:{}", format!("{i:x}").repeat(64)[..64].to_owned())).collect();
            serde_json::to_vec(&serde_json::json!({
                "architecture": arch, "os": "linux", "rootfs": { "type": "layers", "diff_ids": ids }
            }))
            .unwrap_or_default()
        };
        let e = parse_config(&cfg("s390x", 1), 1).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("the image is for linux/s390x") && e.contains("import an image for this platform"), "{e}");
        let e = parse_config(&cfg(host_arch(), 1), 2).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("2 layers but its config lists 1 diff ids"), "{e}");
        assert!(parse_config(&cfg(host_arch(), 2), 2).is_ok());
        assert!(matches!(parse_config(b"{", 0), Err(LayoutError::Json { .. })));
    }

    #[test]
    fn blobs_are_checked_against_digest_and_size() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("blobs/sha256"))?;
        let good = Sha256Hex::of(b"{}");
        std::fs::write(dir.path().join(blob_path(&good)), b"{}")?;
        let lying = Sha256Hex::of(b"something else");
        std::fs::write(dir.path().join(blob_path(&lying)), b"{}")?;
        let input = InputDir::open(dir.path())?;
        assert_eq!(input.read_blob("config", &good, 2)?, b"{}");
        let e = input.read_blob("config", &good, 3);
        assert!(matches!(e, Err(LayoutError::SizeMismatch { expected: 3, actual: 2, .. })), "{e:?}");
        let e = input.read_blob("config", &lying, 2);
        assert!(matches!(e, Err(LayoutError::DigestMismatch { .. })), "{e:?}");
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("blobs/sha256/link"))?;
        assert!(matches!(input.open_file("blobs/sha256/link"), Err(LayoutError::BadFile { .. })));
        assert!(matches!(input.open_file("../x"), Err(LayoutError::BadFile { .. })));
        Ok(())
    }
}
