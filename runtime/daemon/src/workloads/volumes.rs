//! Volumes of a workload: the node's files a zone cannot see, read here and copied into the zone.
//!
//! A zone shares no filesystem with the node and runs no emulator that could serve one, so kubelet-managed
//! content (etc-hosts, the termination log, projected, configMap, secret and downwardAPI volumes) is read
//! when the workload is created and sent over the zone's channel (`HostToZone::VolumeData`); an emptyDir is
//! only named, the zone makes it. Each volume's name in the zone is derived from its host path, so the
//! containers of a pod naming the same path share one copy.
//!
//! The reader never follows a symlink: directories and files are opened with `O_NOFOLLOW` relative to their
//! parent's descriptor, and the type is checked on the opened descriptor (no swap between check and use).
//! Symlinks are copied as symlinks when their target is relative without `..` (kubelet's `..data` layout);
//! any other link (`evil -> /etc/shadow`, `x -> ../../y`) is dropped and logged, as are FIFOs, sockets and
//! device nodes. Everything is bounded per workload ([`MAX_SNAPSHOT_BYTES`], [`MAX_SNAPSHOT_ENTRIES`],
//! [`limits::MAX_VOLUME_DEPTH`]); a volume over a bound is refused with the volume and the limit named.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use bulkhead_wire::{HostToZone, Mount, MountSource, VolumeEntry, VolumeEntryKind, limits};
use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};
use sha2::{Digest, Sha256};

/// Most bytes of snapshot content (file data and symlink targets) per workload, all its volumes together:
/// kubelet caps a configMap or secret at 1 MiB, and a pod's projected token, CA bundle and namespace are a
/// few KiB, so 4 MiB holds a few full-size configMaps while keeping what a pod's creation copies into the
/// zone's memory small.
pub const MAX_SNAPSHOT_BYTES: u64 = 4 << 20;

/// Most entries (files, directories, symlinks) per workload, all its snapshot volumes together.
pub const MAX_SNAPSHOT_ENTRIES: usize = 1024;

/// Payload budget of one `VolumeData` message, well below the frame limit (entry overheads included).
const MESSAGE_BUDGET: usize = 768 << 10;

/// What a mount is, as the client decided from the host path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// Copy the host path's content into the zone.
    Snapshot,
    /// An empty directory in the zone.
    EmptyDir,
}

/// One mount as the API asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRequest {
    /// Absolute path on the node.
    pub host_path: PathBuf,
    /// Absolute path in the workload's root.
    pub container_path: String,
    /// Read-only.
    pub readonly: bool,
    /// What it is.
    pub kind: MountKind,
}

/// Why a workload's volumes cannot be prepared.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A path that must be absolute is not, or is not clean.
    #[error("mount of {host_path:?} at {container_path:?}: {reason}")]
    InvalidMount {
        /// Host path.
        host_path: PathBuf,
        /// Container path.
        container_path: String,
        /// Which rule.
        reason: &'static str,
    },
    /// Opening or reading something in the volume failed.
    #[error("volume {volume:?}: reading {path:?}: {errno}")]
    Read {
        /// The volume's host path.
        volume: PathBuf,
        /// The entry.
        path: String,
        /// Cause.
        errno: Errno,
    },
    /// The volume's root is neither a regular file nor a directory (or is a symlink).
    #[error("volume {volume:?} is not a regular file or a directory (symlinks are not followed)")]
    Unsupported {
        /// The volume's host path.
        volume: PathBuf,
    },
    /// The workload's snapshots are over the byte limit.
    #[error(
        "volume {volume:?}: the container's volumes exceed {} MiB of content, the limit of what is copied into a zone",
        MAX_SNAPSHOT_BYTES >> 20
    )]
    TooLarge {
        /// The volume's host path.
        volume: PathBuf,
    },
    /// The workload's snapshots have too many entries.
    #[error(
        "volume {volume:?}: the container's volumes have more than {MAX_SNAPSHOT_ENTRIES} files, directories and links"
    )]
    TooManyEntries {
        /// The volume's host path.
        volume: PathBuf,
    },
    /// A path in the volume is too deep or its name too long or not UTF-8.
    #[error("volume {volume:?}: entry {path:?}: {reason}")]
    BadEntry {
        /// The volume's host path.
        volume: PathBuf,
        /// The entry.
        path: String,
        /// Which limit.
        reason: String,
    },
    /// The mounts are too many.
    #[error("{count} mounts: at most {} per container", limits::MAX_MOUNTS)]
    TooManyMounts {
        /// How many were asked for.
        count: usize,
    },
}

/// A workload's volumes, ready for the zone: the spec's mounts and the data to send before the workload.
#[derive(Debug, Default)]
pub struct Prepared {
    /// For `WorkloadSpec::mounts`.
    pub mounts: Vec<Mount>,
    /// `VolumeData` messages, in order.
    pub messages: Vec<HostToZone>,
    /// Bytes of snapshot content read.
    pub bytes: u64,
}

/// The zone's name for the volume at `host_path`: `s-` (snapshot) or `e-` (emptyDir) and 32 hex digits of
/// the path's SHA-256. The same path always gives the same name, so a pod's containers share it.
pub fn volume_name(kind: MountKind, host_path: &Path) -> String {
    let digest = Sha256::digest(host_path.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let prefix = match kind {
        MountKind::Snapshot => "s",
        MountKind::EmptyDir => "e",
    };
    format!("{prefix}-{hex}")
}

/// Reads every snapshot volume of `mounts` (blocking: call it off the async runtime) and builds what the
/// zone needs. A host path named twice is read once.
pub fn prepare(mounts: &[MountRequest]) -> Result<Prepared, VolumeError> {
    if mounts.len() > limits::MAX_MOUNTS {
        return Err(VolumeError::TooManyMounts { count: mounts.len() });
    }
    let mut budget = Budget { bytes: MAX_SNAPSHOT_BYTES, entries: MAX_SNAPSHOT_ENTRIES };
    let mut out = Prepared::default();
    let mut read: Vec<String> = Vec::new();
    for m in mounts {
        let invalid = |reason| VolumeError::InvalidMount {
            host_path: m.host_path.clone(),
            container_path: m.container_path.clone(),
            reason,
        };
        if !m.host_path.is_absolute() {
            return Err(invalid("the host path is not absolute"));
        }
        if !m.container_path.starts_with('/') || m.container_path.split('/').any(|c| c == "..") {
            return Err(invalid("the container path must be absolute, without '..'"));
        }
        let name = volume_name(m.kind, &m.host_path);
        let source = match m.kind {
            MountKind::Snapshot => {
                if !read.contains(&name) {
                    let before = budget.bytes;
                    let entries = read_snapshot(&m.host_path, &mut budget)?;
                    out.bytes += before - budget.bytes;
                    out.messages.extend(messages(&name, entries));
                    read.push(name.clone());
                }
                MountSource::Snapshot { volume: name }
            }
            MountKind::EmptyDir => MountSource::EmptyDir { volume: name },
        };
        out.mounts.push(Mount { source, destination: m.container_path.clone(), readonly: m.readonly });
    }
    Ok(out)
}

/// What a workload's snapshots may still take.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Bytes of content left.
    pub bytes: u64,
    /// Entries left.
    pub entries: usize,
}

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY.union(OFlag::O_NOFOLLOW).union(OFlag::O_RDONLY).union(OFlag::O_CLOEXEC);
const FILE_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_NOFOLLOW).union(OFlag::O_NONBLOCK).union(OFlag::O_CLOEXEC);

fn file_type(mode: u32) -> SFlag {
    SFlag::from_bits_truncate(mode) & SFlag::S_IFMT
}

struct Reader<'a> {
    volume: &'a Path,
    budget: &'a mut Budget,
    entries: Vec<VolumeEntry>,
}

impl Reader<'_> {
    fn read_err(&self, path: &str) -> impl FnOnce(Errno) -> VolumeError + use<> {
        let (volume, path) = (self.volume.to_path_buf(), path.to_owned());
        move |errno| VolumeError::Read { volume, path, errno }
    }

    fn take_entry(&mut self) -> Result<(), VolumeError> {
        self.budget.entries = self
            .budget
            .entries
            .checked_sub(1)
            .ok_or_else(|| VolumeError::TooManyEntries { volume: self.volume.into() })?;
        Ok(())
    }

    fn take_bytes(&mut self, n: u64) -> Result<(), VolumeError> {
        self.budget.bytes =
            self.budget.bytes.checked_sub(n).ok_or_else(|| VolumeError::TooLarge { volume: self.volume.into() })?;
        Ok(())
    }

    /// Reads the regular file `fd` (at `path`) whole, within the budget.
    fn file(&mut self, fd: OwnedFd, path: &str, mode: u32) -> Result<(), VolumeError> {
        self.take_entry()?;
        let mut data = Vec::new();
        // One byte more than allowed tells "too large" from "exactly the limit".
        let mut f = std::fs::File::from(fd).take(self.budget.bytes + 1);
        f.read_to_end(&mut data).map_err(|e| (self.read_err(path))(io_errno(&e)))?;
        self.take_bytes(data.len() as u64)?;
        self.entries.push(VolumeEntry {
            path: path.to_owned(),
            kind: VolumeEntryKind::File { mode: mode & 0o777, offset: 0, data: Bytes::from(data) },
        });
        Ok(())
    }

    /// Reads the directory `dir` (at `path`, `depth` components below the root) and everything below it.
    fn dir(&mut self, dir: OwnedFd, path: &str, depth: usize, mode: u32) -> Result<(), VolumeError> {
        self.take_entry()?;
        self.entries.push(VolumeEntry { path: path.to_owned(), kind: VolumeEntryKind::Dir { mode: mode & 0o777 } });
        let listing = dir.try_clone().map_err(|e| (self.read_err(path))(io_errno(&e)))?;
        let mut names: Vec<String> = Vec::new();
        let mut d = nix::dir::Dir::from_fd(listing).map_err(self.read_err(path))?;
        for ent in d.iter() {
            let ent = ent.map_err(self.read_err(path))?;
            let raw = ent.file_name().to_bytes();
            if raw == b"." || raw == b".." {
                continue;
            }
            let Ok(name) = std::str::from_utf8(raw) else {
                tracing::warn!(volume = %self.volume.display(), dir = path, "skipping an entry whose name is not UTF-8");
                continue;
            };
            if names.len() >= self.budget.entries {
                return Err(VolumeError::TooManyEntries { volume: self.volume.into() });
            }
            names.push(name.to_owned());
        }
        names.sort();
        for name in names {
            let child = if path.is_empty() { name.clone() } else { format!("{path}/{name}") };
            if depth + 1 > limits::MAX_VOLUME_DEPTH {
                return Err(VolumeError::BadEntry {
                    volume: self.volume.into(),
                    path: child,
                    reason: format!("deeper than {} levels", limits::MAX_VOLUME_DEPTH),
                });
            }
            let st = match fstatat(&dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue, // gone since the listing
                Err(e) => return Err((self.read_err(&child))(e)),
            };
            match file_type(st.st_mode) {
                SFlag::S_IFDIR => {
                    let fd = openat(&dir, name.as_str(), DIR_FLAGS, Mode::empty()).map_err(self.read_err(&child))?;
                    let st = fstat(&fd).map_err(self.read_err(&child))?;
                    self.dir(fd, &child, depth + 1, st.st_mode)?;
                }
                SFlag::S_IFREG => {
                    let fd = openat(&dir, name.as_str(), FILE_FLAGS, Mode::empty()).map_err(self.read_err(&child))?;
                    // The type of what was opened, not of what was listed: it may have been swapped.
                    let st = fstat(&fd).map_err(self.read_err(&child))?;
                    if file_type(st.st_mode) != SFlag::S_IFREG {
                        self.skip(&child, "no longer a regular file");
                        continue;
                    }
                    self.file(fd, &child, st.st_mode)?;
                }
                SFlag::S_IFLNK => {
                    let target = nix::fcntl::readlinkat(&dir, name.as_str()).map_err(self.read_err(&child))?;
                    let Some(target) = target.to_str().map(str::to_owned) else {
                        self.skip(&child, "a symlink target that is not UTF-8");
                        continue;
                    };
                    if bulkhead_wire::validate_symlink_target("symlink", &target).is_err() {
                        self.skip(&child, "a symlink that could point out of the volume (absolute or with '..')");
                        continue;
                    }
                    self.take_entry()?;
                    self.take_bytes(target.len() as u64)?;
                    self.entries.push(VolumeEntry { path: child, kind: VolumeEntryKind::Symlink { target } });
                }
                _ => self.skip(&child, "not a regular file, directory or symlink"),
            }
        }
        Ok(())
    }

    fn skip(&self, path: &str, why: &str) {
        tracing::warn!(volume = %self.volume.display(), entry = path, why, "volume entry not copied into the zone");
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Reads the volume at `host_path` (a regular file or a directory tree), taking from `budget`. The entries
/// come parents first, names sorted, file data whole (see [`messages`] for the chunks).
pub fn read_snapshot(host_path: &Path, budget: &mut Budget) -> Result<Vec<VolumeEntry>, VolumeError> {
    let mut r = Reader { volume: host_path, budget, entries: Vec::new() };
    let fd = open(host_path, FILE_FLAGS, Mode::empty()).map_err(|e| match e {
        Errno::ELOOP => VolumeError::Unsupported { volume: host_path.into() },
        e => (r.read_err(""))(e),
    })?;
    let st = fstat(&fd).map_err(r.read_err(""))?;
    match file_type(st.st_mode) {
        SFlag::S_IFREG => r.file(fd, "", st.st_mode)?,
        SFlag::S_IFDIR => r.dir(fd, "", 0, st.st_mode)?,
        _ => return Err(VolumeError::Unsupported { volume: host_path.into() }),
    }
    Ok(r.entries)
}

/// Splits a volume's entries into `VolumeData` messages that fit a frame: files in chunks of at most
/// [`limits::MAX_VOLUME_CHUNK`], at most [`limits::MAX_VOLUME_ENTRIES`] entries and about
/// [`MESSAGE_BUDGET`] bytes per message. The first message starts with the root, which tells the zone to
/// start the volume afresh.
pub fn messages(volume: &str, entries: Vec<VolumeEntry>) -> Vec<HostToZone> {
    let mut out = Vec::new();
    let mut batch: Vec<VolumeEntry> = Vec::new();
    let mut size = 0usize;
    let mut push = |e: VolumeEntry, out: &mut Vec<HostToZone>| {
        let cost = e.path.len()
            + 32
            + match &e.kind {
                VolumeEntryKind::File { data, .. } => data.len(),
                VolumeEntryKind::Symlink { target } => target.len(),
                VolumeEntryKind::Dir { .. } => 0,
            };
        if !batch.is_empty() && (size + cost > MESSAGE_BUDGET || batch.len() == limits::MAX_VOLUME_ENTRIES) {
            out.push(HostToZone::VolumeData { volume: volume.to_owned(), entries: std::mem::take(&mut batch) });
            size = 0;
        }
        size += cost;
        batch.push(e);
    };
    for e in entries {
        match e.kind {
            VolumeEntryKind::File { mode, data, .. } if data.len() > limits::MAX_VOLUME_CHUNK => {
                let mut offset = 0usize;
                while offset < data.len() {
                    let end = (offset + limits::MAX_VOLUME_CHUNK).min(data.len());
                    let kind = VolumeEntryKind::File { mode, offset: offset as u64, data: data.slice(offset..end) };
                    push(VolumeEntry { path: e.path.clone(), kind }, &mut out);
                    offset = end;
                }
            }
            kind => push(VolumeEntry { path: e.path, kind }, &mut out),
        }
    }
    if !batch.is_empty() {
        out.push(HostToZone::VolumeData { volume: volume.to_owned(), entries: batch });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn budget() -> Budget {
        Budget { bytes: MAX_SNAPSHOT_BYTES, entries: MAX_SNAPSHOT_ENTRIES }
    }

    /// A projected service-account volume as kubelet's atomic writer lays it out.
    fn projected(dir: &Path) -> TestResult {
        let ts = dir.join("..2026_11_23_07_00_00.123456789");
        std::fs::create_dir_all(&ts)?;
        std::fs::write(ts.join("token"), "eyJhbGciOi.token")?;
        std::fs::write(ts.join("ca.crt"), "-----BEGIN CERTIFICATE-----\n")?;
        std::fs::write(ts.join("namespace"), "default")?;
        symlink("..2026_11_23_07_00_00.123456789", dir.join("..data"))?;
        for f in ["token", "ca.crt", "namespace"] {
            symlink(format!("..data/{f}"), dir.join(f))?;
        }
        Ok(())
    }

    fn paths(entries: &[VolumeEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn a_projected_volume_keeps_its_data_symlinks() -> TestResult {
        let t = tempfile::tempdir()?;
        projected(t.path())?;
        let mut b = budget();
        let entries = read_snapshot(t.path(), &mut b)?;
        assert_eq!(
            paths(&entries),
            [
                "",
                "..2026_11_23_07_00_00.123456789",
                "..2026_11_23_07_00_00.123456789/ca.crt",
                "..2026_11_23_07_00_00.123456789/namespace",
                "..2026_11_23_07_00_00.123456789/token",
                "..data",
                "ca.crt",
                "namespace",
                "token"
            ]
        );
        assert!(
            matches!(&entries[5].kind, VolumeEntryKind::Symlink { target } if target == "..2026_11_23_07_00_00.123456789")
        );
        assert!(matches!(&entries[8].kind, VolumeEntryKind::Symlink { target } if target == "..data/token"));
        assert!(matches!(&entries[4].kind, VolumeEntryKind::File { data, .. } if data.as_ref() == b"eyJhbGciOi.token"));
        assert_eq!(b.entries, MAX_SNAPSHOT_ENTRIES - 9);
        Ok(())
    }

    #[test]
    fn escaping_symlinks_fifos_and_devices_are_dropped_and_a_symlinked_root_refused() -> TestResult {
        let t = tempfile::tempdir()?;
        projected(t.path())?;
        symlink("/etc/shadow", t.path().join("evil"))?;
        symlink("../../etc/shadow", t.path().join("up"))?;
        symlink("..data/../../x", t.path().join("sneaky"))?;
        nix::unistd::mkfifo(&t.path().join("fifo"), Mode::from_bits_truncate(0o644))?;
        std::os::unix::net::UnixListener::bind(t.path().join("sock"))?;
        let entries = read_snapshot(t.path(), &mut budget())?;
        for gone in ["evil", "up", "sneaky", "fifo", "sock"] {
            assert!(!paths(&entries).contains(&gone), "{gone} was copied");
        }
        assert!(paths(&entries).contains(&"token"));
        // Devices are skipped too (creating one needs root).
        if nix::unistd::geteuid().is_root() {
            let d = tempfile::tempdir()?;
            nix::sys::stat::mknod(
                &d.path().join("null"),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 3),
            )?;
            assert_eq!(paths(&read_snapshot(d.path(), &mut budget())?), [""]);
        }
        // The volume itself must not be a symlink: it is not followed.
        let link = t.path().join("..data");
        assert!(matches!(read_snapshot(&link, &mut budget()), Err(VolumeError::Unsupported { .. })));
        let fifo = t.path().join("fifo");
        assert!(matches!(read_snapshot(&fifo, &mut budget()), Err(VolumeError::Unsupported { .. })));
        Ok(())
    }

    #[test]
    fn a_file_volume_is_one_entry() -> TestResult {
        let t = tempfile::tempdir()?;
        let hosts = t.path().join("etc-hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n")?;
        let entries = read_snapshot(&hosts, &mut budget())?;
        assert_eq!(entries.len(), 1);
        assert!(matches!(&entries[0].kind, VolumeEntryKind::File { data, .. } if data.len() == 20));
        Ok(())
    }

    #[test]
    fn bounds_are_per_workload_and_name_the_volume() -> TestResult {
        let t = tempfile::tempdir()?;
        let big = t.path().join("big");
        std::fs::create_dir(&big)?;
        std::fs::write(big.join("a"), vec![0u8; MAX_SNAPSHOT_BYTES as usize])?;
        // Exactly the limit fits; one more byte anywhere in the same workload does not.
        let mut b = budget();
        read_snapshot(&big, &mut b)?;
        assert_eq!(b.bytes, 0);
        let small = t.path().join("small");
        std::fs::write(&small, "x")?;
        let err = read_snapshot(&small, &mut b).err().ok_or("accepted over the limit")?;
        assert!(matches!(&err, VolumeError::TooLarge { volume } if volume == &small));
        assert!(err.to_string().contains("4 MiB"), "{err}");

        let many = t.path().join("many");
        std::fs::create_dir(&many)?;
        for i in 0..MAX_SNAPSHOT_ENTRIES {
            std::fs::write(many.join(i.to_string()), "")?;
        }
        assert!(matches!(read_snapshot(&many, &mut budget()), Err(VolumeError::TooManyEntries { .. })));

        let deep = t.path().join("deep");
        let mut d = deep.clone();
        for _ in 0..=limits::MAX_VOLUME_DEPTH {
            d = d.join("d");
        }
        std::fs::create_dir_all(&d)?;
        assert!(matches!(read_snapshot(&deep, &mut budget()), Err(VolumeError::BadEntry { .. })));
        Ok(())
    }

    #[test]
    fn messages_fit_frames_and_chunks_keep_their_offsets() -> TestResult {
        let t = tempfile::tempdir()?;
        let data: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i % 251) as u8).collect();
        std::fs::write(t.path().join("blob"), &data)?;
        projected(t.path())?;
        let entries = read_snapshot(t.path(), &mut budget())?;
        let msgs = messages("s-1", entries);
        assert!(msgs.len() >= 4, "{} messages", msgs.len());
        let mut rebuilt = vec![0u8; data.len()];
        for (i, m) in msgs.iter().enumerate() {
            // Every message encodes (limits and frame size) and the first starts with the root.
            bulkhead_wire::encode(m)?;
            let HostToZone::VolumeData { entries, .. } = m else { return Err("not VolumeData".into()) };
            if i == 0 {
                assert_eq!(entries[0].path, "");
            }
            for e in entries {
                if let (VolumeEntryKind::File { offset, data: chunk, .. }, "blob") = (&e.kind, e.path.as_str()) {
                    let at = usize::try_from(*offset)?;
                    rebuilt[at..at + chunk.len()].copy_from_slice(chunk);
                }
            }
        }
        assert_eq!(rebuilt, data);
        Ok(())
    }

    #[test]
    fn a_path_named_twice_is_read_once_and_names_are_stable() -> TestResult {
        let t = tempfile::tempdir()?;
        std::fs::write(t.path().join("hosts"), "x")?;
        let m = |c: &str, kind| MountRequest {
            host_path: t.path().join("hosts"),
            container_path: c.into(),
            readonly: false,
            kind,
        };
        let p = prepare(&[m("/etc/hosts", MountKind::Snapshot), m("/etc/hosts2", MountKind::Snapshot)])?;
        assert_eq!(p.messages.len(), 1);
        assert_eq!(p.mounts[0].source, p.mounts[1].source);
        assert_eq!(p.bytes, 1);
        let name = volume_name(MountKind::Snapshot, &t.path().join("hosts"));
        assert!(name.starts_with("s-") && name.len() == 34);
        bulkhead_wire::validate_volume_name("v", &name)?;
        assert_ne!(volume_name(MountKind::EmptyDir, &t.path().join("hosts")), name);
        assert!(matches!(prepare(&[m("relative", MountKind::EmptyDir)]), Err(VolumeError::InvalidMount { .. })));
        Ok(())
    }

    /// Not an assert: how long reading and framing a 1 MiB volume takes (`--nocapture` prints it).
    #[test]
    fn snapshot_time_of_a_1_mib_volume() -> TestResult {
        let t = tempfile::tempdir()?;
        projected(t.path())?;
        std::fs::write(t.path().join("config.json"), vec![b'x'; 1 << 20])?;
        let start = std::time::Instant::now();
        let p = prepare(&[MountRequest {
            host_path: t.path().into(),
            container_path: "/cfg".into(),
            readonly: true,
            kind: MountKind::Snapshot,
        }])?;
        let frames: usize =
            p.messages.iter().map(|m| bulkhead_wire::encode(m).map(|f| f.len())).sum::<Result<_, _>>()?;
        eprintln!(
            "snapshot of 1 MiB: {:?} to read and frame ({} messages, {frames} bytes)",
            start.elapsed(),
            p.messages.len()
        );
        assert!(frames > 1 << 20);
        Ok(())
    }
}
