//! The update artefact `ci/image build` writes next to the image (`bulkhead-node_<version>.update`) and
//! `bulkhead node upgrade` reads: a tar whose first entry is `manifest.json` (format, version, the OS's
//! dm-verity root hash, and each file's size and sha256), whose second is `manifest.sig` (ed25519 over
//! the manifest's bytes, by the vendor's update key), followed by the files the manifest lists: the OS slot's
//! partition and hash tree (zstd) and the slot's boot files for the ESP.
//!
//! Nothing is trusted before the signature is checked, no entry is read past the size the signed manifest
//! gives it, and every file's hash is checked before [`unpack`] returns; only then may a caller write a slot.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// The manifest format this code reads.
pub const FORMAT: u32 = 1;
/// The first entry.
pub const MANIFEST: &str = "manifest.json";
/// The second entry.
pub const SIGNATURE: &str = "manifest.sig";
/// The OS partition image (zstd).
pub const ROOT: &str = "root.img.zst";
/// The OS partition's dm-verity hash tree (zstd).
pub const ROOT_VERITY: &str = "root-verity.img.zst";
/// The files every artefact carries after the manifest and its signature. The last four go to the slot's
/// directory on the ESP.
pub const FILES: [&str; 6] = [ROOT, ROOT_VERITY, "xen.gz", "vmlinuz", "initrd.img", "entry.cfg"];
/// The files that go to the slot's directory on the ESP.
pub const BOOT_FILES: [&str; 4] = ["xen.gz", "vmlinuz", "initrd.img", "entry.cfg"];

/// Bounds on what an artefact may make this node read and store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole artefact (and the sum of its files).
    pub artefact: u64,
    /// `manifest.json`.
    pub manifest: u64,
    /// Any one file.
    pub file: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { artefact: 4 << 30, manifest: 64 << 10, file: 3 << 30 }
    }
}

/// A file of the artefact, as the signed manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Its name in the tar (one of [`FILES`]).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its sha256, lower-case hex.
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The image's version (`IMAGE_VERSION` in its os-release).
    pub version: String,
    /// The OS partition's dm-verity root hash, 64 hex digits.
    pub roothash: String,
    /// Every file after the signature, in order.
    pub files: Vec<FileEntry>,
}

/// Why an artefact was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArtefactError {
    /// Reading the artefact failed.
    #[error("reading the update artefact failed")]
    Read(#[source] io::Error),
    /// Writing an unpacked file failed.
    #[error("writing {path} failed (is the state partition full?)")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The entries are not in the order the format fixes.
    #[error(
        "the artefact has {found:?} where {expected} belongs: it is not a Bulkhead update artefact (format {FORMAT})"
    )]
    Order {
        /// What belongs there.
        expected: &'static str,
        /// What was there.
        found: String,
    },
    /// Something is larger than its bound.
    #[error("{what} is {size} bytes, more than the {limit} allowed")]
    Oversize {
        /// What.
        what: String,
        /// Its size.
        size: u64,
        /// The bound.
        limit: u64,
    },
    /// The signature does not verify.
    #[error(
        "the update's signature does not verify with this node's update key: it was not signed by the key this image trusts, or it was changed after signing"
    )]
    Signature,
    /// The public key is not 32 bytes of hex.
    #[error("the update public key is not 64 hex digits of an ed25519 key")]
    Key,
    /// The manifest is not valid JSON of this format.
    #[error("the update manifest cannot be read")]
    Manifest(#[source] serde_json::Error),
    /// The manifest is signed but describes something this node cannot install.
    #[error("the update manifest is invalid: {0}")]
    Invalid(String),
    /// An entry the manifest does not list, or a listed file twice.
    #[error("the artefact holds {0:?}, which its manifest does not list (or lists once)")]
    Unexpected(String),
    /// A file's size differs from the manifest's.
    #[error("{name} is {actual} bytes, the manifest says {expected}: the artefact is damaged or was changed")]
    Size {
        /// The file.
        name: String,
        /// The manifest's size.
        expected: u64,
        /// The entry's size.
        actual: u64,
    },
    /// A file's hash differs from the manifest's.
    #[error("{0} does not match its sha256 in the signed manifest: the artefact is damaged or was changed")]
    Checksum(String),
    /// A file the manifest lists is not in the artefact.
    #[error("the artefact ends before {0}, which its manifest lists: it is truncated")]
    Missing(String),
}

/// Reads an update public key: 32 bytes as 64 hex digits (`/usr/lib/bulkhead/update-key.pub`).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, ArtefactError> {
    let bytes: [u8; 32] = hex::decode(text.trim()).ok().and_then(|b| b.try_into().ok()).ok_or(ArtefactError::Key)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| ArtefactError::Key)
}

impl Manifest {
    /// Checks the signature over `bytes`, then parses and validates them.
    pub fn verify(
        bytes: &[u8],
        signature: &[u8],
        key: &VerifyingKey,
        limits: Limits,
    ) -> Result<Manifest, ArtefactError> {
        let sig = Signature::from_slice(signature).map_err(|_| ArtefactError::Signature)?;
        key.verify_strict(bytes, &sig).map_err(|_| ArtefactError::Signature)?;
        let m: Manifest = serde_json::from_slice(bytes).map_err(ArtefactError::Manifest)?;
        m.validate(limits)?;
        Ok(m)
    }

    fn validate(&self, limits: Limits) -> Result<(), ArtefactError> {
        let invalid = |s: String| Err(ArtefactError::Invalid(s));
        if self.format != FORMAT {
            return invalid(format!("format {} (this node reads format {FORMAT}; upgrade in steps)", self.format));
        }
        let version_ok = (1..=64).contains(&self.version.len())
            && self.version.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !version_ok {
            return invalid(format!("version {:?} is not 1-64 of A-Z a-z 0-9 . _ -", self.version));
        }
        if self.roothash.len() != 64 || !self.roothash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return invalid(format!("root hash {:?} is not 64 hex digits", self.roothash));
        }
        let names: Vec<&str> = self.files.iter().map(|f| f.name.as_str()).collect();
        if names != FILES {
            return invalid(format!("files {names:?}, expected {FILES:?}"));
        }
        let mut total = 0u64;
        for f in &self.files {
            if f.size > limits.file {
                return Err(ArtefactError::Oversize { what: f.name.clone(), size: f.size, limit: limits.file });
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return invalid(format!("the sha256 of {} is not 64 hex digits", f.name));
            }
            total = total.saturating_add(f.size);
        }
        if total > limits.artefact {
            return Err(ArtefactError::Oversize {
                what: "the artefact's files".into(),
                size: total,
                limit: limits.artefact,
            });
        }
        Ok(())
    }
}

/// A verified artefact, unpacked into a directory.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The signed manifest.
    pub manifest: Manifest,
    /// Where the files are.
    pub dir: PathBuf,
}

impl Verified {
    /// The unpacked file `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Reads an artefact from `reader`, checks its signature with `key` and unpacks its files into `dir` (which
/// must exist), checking each against the signed manifest. On error `dir` may hold partial files.
pub fn unpack(reader: impl Read, key: &VerifyingKey, dir: &Path, limits: Limits) -> Result<Verified, ArtefactError> {
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive.entries().map_err(ArtefactError::Read)?;
    let mut next = |expected: &'static str| -> Result<Option<tar::Entry<'_, _>>, ArtefactError> {
        match entries.next() {
            None => Ok(None),
            Some(e) => {
                let e = e.map_err(ArtefactError::Read)?;
                if !e.header().entry_type().is_file() {
                    let found = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                    return Err(ArtefactError::Order { expected, found });
                }
                Ok(Some(e))
            }
        }
    };
    let name_of = |e: &tar::Entry<'_, _>| String::from_utf8_lossy(&e.path_bytes()).into_owned();

    let manifest_bytes = {
        let e = next(MANIFEST)?.ok_or(ArtefactError::Missing(MANIFEST.into()))?;
        if name_of(&e) != MANIFEST {
            return Err(ArtefactError::Order { expected: MANIFEST, found: name_of(&e) });
        }
        read_bounded(e, MANIFEST, limits.manifest)?
    };
    let signature = {
        let e = next(SIGNATURE)?.ok_or(ArtefactError::Missing(SIGNATURE.into()))?;
        if name_of(&e) != SIGNATURE {
            return Err(ArtefactError::Order { expected: SIGNATURE, found: name_of(&e) });
        }
        read_bounded(e, SIGNATURE, 1024)?
    };
    let manifest = Manifest::verify(&manifest_bytes, &signature, key, limits)?;
    tracing::debug!(version = %manifest.version, "update manifest signature verified");

    let mut seen = HashSet::new();
    while let Some(mut e) = next("a file the manifest lists")? {
        let name = name_of(&e);
        let Some(want) = manifest.files.iter().find(|f| f.name == name) else {
            return Err(ArtefactError::Unexpected(name));
        };
        if !seen.insert(want.name.clone()) {
            return Err(ArtefactError::Unexpected(name));
        }
        let actual = e.header().size().map_err(ArtefactError::Read)?;
        if actual != want.size {
            return Err(ArtefactError::Size { name, expected: want.size, actual });
        }
        let path = dir.join(&want.name);
        let write_err = |source| ArtefactError::Write { path: path.clone(), source };
        let mut out = File::create(&path).map_err(write_err)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut copied = 0u64;
        let mut body = (&mut e).take(want.size);
        loop {
            let n = body.read(&mut buf).map_err(ArtefactError::Read)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(write_err)?;
            copied += n as u64;
        }
        if copied != want.size {
            return Err(ArtefactError::Missing(want.name.clone()));
        }
        out.sync_all().map_err(write_err)?;
        if hex::encode(hasher.finalize()) != want.sha256.to_ascii_lowercase() {
            return Err(ArtefactError::Checksum(want.name.clone()));
        }
    }
    if let Some(missing) = manifest.files.iter().find(|f| !seen.contains(&f.name)) {
        return Err(ArtefactError::Missing(missing.name.clone()));
    }
    Ok(Verified { manifest, dir: dir.to_owned() })
}

fn read_bounded(e: impl Read, what: &str, limit: u64) -> Result<Vec<u8>, ArtefactError> {
    let mut buf = Vec::new();
    e.take(limit + 1).read_to_end(&mut buf).map_err(ArtefactError::Read)?;
    if buf.len() as u64 > limit {
        return Err(ArtefactError::Oversize { what: what.into(), size: buf.len() as u64, limit });
    }
    Ok(buf)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    type R = Result<(), Box<dyn std::error::Error>>;

    pub(crate) fn signing_key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    /// The files of a small artefact: partition images of 8 KiB and 4 KiB, and boot files.
    pub(crate) fn files() -> Vec<(&'static str, Vec<u8>)> {
        let zst = |len: usize, byte: u8| zstd::encode_all(&vec![byte; len][..], 1).unwrap_or_default();
        vec![
            (ROOT, zst(8192, 0xe5)),
            (ROOT_VERITY, zst(4096, 0x5a)),
            ("xen.gz", b"xen".to_vec()),
            ("vmlinuz", b"kernel".to_vec()),
            ("initrd.img", b"initrd".to_vec()),
            ("entry.cfg", b"menuentry \"test\" {}\n".to_vec()),
        ]
    }

    pub(crate) fn manifest_for(files: &[(&str, Vec<u8>)]) -> Manifest {
        Manifest {
            format: FORMAT,
            version: "1.2.3-b".into(),
            roothash: "ab".repeat(32),
            files: files
                .iter()
                .map(|(n, d)| FileEntry {
                    name: (*n).into(),
                    size: d.len() as u64,
                    sha256: hex::encode(Sha256::digest(d)),
                })
                .collect(),
        }
    }

    /// A tar of `manifest` (as JSON), its signature by `key`, and `files`, in that order.
    pub(crate) fn artefact(manifest: &Manifest, key: &SigningKey, files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let json = serde_json::to_vec(manifest).unwrap_or_default();
        let sig = key.sign(&json).to_bytes().to_vec();
        tar_of(
            &[(MANIFEST, json), (SIGNATURE, sig)]
                .into_iter()
                .chain(files.iter().map(|(n, d)| (*n, d.clone())))
                .collect::<Vec<_>>(),
        )
    }

    pub(crate) fn tar_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            if b.append_data(&mut h, name, &data[..]).is_err() {
                return Vec::new();
            }
        }
        b.into_inner().unwrap_or_default()
    }

    fn unpack_bytes(bytes: &[u8], limits: Limits) -> Result<(Verified, tempfile::TempDir), ArtefactError> {
        let dir = tempfile::tempdir().map_err(ArtefactError::Read)?;
        let v = unpack(bytes, &signing_key().verifying_key(), dir.path(), limits)?;
        Ok((v, dir))
    }

    #[test]
    fn a_signed_artefact_unpacks_with_every_file_checked() -> R {
        let files = files();
        let m = manifest_for(&files);
        let (v, _dir) = unpack_bytes(&artefact(&m, &signing_key(), &files), Limits::default())?;
        assert_eq!(v.manifest, m);
        for (name, data) in &files {
            assert_eq!(&std::fs::read(v.path(name))?, data, "{name}");
        }
        Ok(())
    }

    #[test]
    fn the_public_key_file_is_hex() -> R {
        let hexkey = hex::encode(signing_key().verifying_key().to_bytes());
        assert_eq!(parse_public_key(&format!("{hexkey}\n"))?, signing_key().verifying_key());
        assert!(matches!(parse_public_key("abcd"), Err(ArtefactError::Key)));
        assert!(matches!(parse_public_key(&"zz".repeat(32)), Err(ArtefactError::Key)));
        Ok(())
    }

    #[test]
    fn a_changed_file_fails_its_checksum() {
        let mut files = files();
        let m = manifest_for(&files);
        files[3].1 = b"kernfl".to_vec(); // same size, other bytes
        let r = unpack_bytes(&artefact(&m, &signing_key(), &files), Limits::default());
        assert!(matches!(r, Err(ArtefactError::Checksum(ref n)) if n == "vmlinuz"), "{r:?}");
    }

    #[test]
    fn another_key_or_a_changed_manifest_fails_the_signature() {
        let files = files();
        let m = manifest_for(&files);
        let other = SigningKey::from_bytes(&[9u8; 32]);
        let r = unpack_bytes(&artefact(&m, &other, &files), Limits::default());
        assert!(matches!(r, Err(ArtefactError::Signature)), "{r:?}");
        // Signed, then changed: the version in the manifest is edited after signing.
        let json = serde_json::to_vec(&m).unwrap_or_default();
        let sig = signing_key().sign(&json).to_bytes().to_vec();
        let edited = String::from_utf8_lossy(&json).replace("1.2.3-b", "9.9.9-x").into_bytes();
        let mut entries = vec![(MANIFEST, edited), (SIGNATURE, sig)];
        entries.extend(files.iter().map(|(n, d)| (*n, d.clone())));
        let r = unpack_bytes(&tar_of(&entries), Limits::default());
        assert!(matches!(r, Err(ArtefactError::Signature)), "{r:?}");
    }

    #[test]
    fn sizes_are_bounded_before_anything_is_read() {
        let files = files();
        let m = manifest_for(&files);
        let art = artefact(&m, &signing_key(), &files);
        let small = Limits { file: 10, ..Limits::default() };
        let r = unpack_bytes(&art, small);
        assert!(matches!(r, Err(ArtefactError::Oversize { ref what, .. }) if what == ROOT), "{r:?}");
        let r = unpack_bytes(&art, Limits { manifest: 100, ..Limits::default() });
        assert!(matches!(r, Err(ArtefactError::Oversize { ref what, .. }) if what == MANIFEST), "{r:?}");
        let r = unpack_bytes(&art, Limits { artefact: 50, ..Limits::default() });
        assert!(matches!(r, Err(ArtefactError::Oversize { .. })), "{r:?}");
        // An entry larger than the manifest says is refused before its bytes are read.
        let mut big = files.clone();
        big[2].1 = vec![0; 4096];
        let r = unpack_bytes(&artefact(&m, &signing_key(), &big), Limits::default());
        assert!(
            matches!(r, Err(ArtefactError::Size { ref name, expected: 3, actual: 4096 }) if name == "xen.gz"),
            "{r:?}"
        );
    }

    #[test]
    fn entries_out_of_order_unlisted_or_missing_are_refused() {
        let files = files();
        let m = manifest_for(&files);
        let json = serde_json::to_vec(&m).unwrap_or_default();
        let sig = signing_key().sign(&json).to_bytes().to_vec();
        let r = unpack_bytes(&tar_of(&[(SIGNATURE, sig.clone()), (MANIFEST, json.clone())]), Limits::default());
        assert!(matches!(r, Err(ArtefactError::Order { expected: MANIFEST, .. })), "{r:?}");
        let mut extra = files.clone();
        extra.push(("evil.sh", b"rm -rf /".to_vec()));
        let r = unpack_bytes(&artefact(&m, &signing_key(), &extra), Limits::default());
        assert!(matches!(r, Err(ArtefactError::Unexpected(ref n)) if n == "evil.sh"), "{r:?}");
        let r = unpack_bytes(&artefact(&m, &signing_key(), &files[..5]), Limits::default());
        assert!(matches!(r, Err(ArtefactError::Missing(ref n)) if n == "entry.cfg"), "{r:?}");
        let r = unpack_bytes(&tar_of(&[(MANIFEST, json)]), Limits::default());
        assert!(matches!(r, Err(ArtefactError::Missing(ref n)) if n == SIGNATURE), "{r:?}");
    }

    #[test]
    fn signed_manifests_of_another_format_or_with_bad_fields_are_refused() {
        let files = files();
        for edit in [
            (|m: &mut Manifest| m.format = 2) as fn(&mut Manifest),
            |m| m.version = "1 2".into(),
            |m| m.roothash = "xyz".into(),
            |m| m.files.swap(0, 1),
        ] {
            let mut m = manifest_for(&files);
            edit(&mut m);
            let r = unpack_bytes(&artefact(&m, &signing_key(), &files), Limits::default());
            assert!(matches!(r, Err(ArtefactError::Invalid(_))), "{r:?}");
        }
    }
}
