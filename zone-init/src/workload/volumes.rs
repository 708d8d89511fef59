//! Zone-local volumes: snapshot content the host sent (`HostToZone::VolumeData`) and emptyDirs, each one
//! file or directory `<run_dir>/volumes/<name>` on the zone's tmpfs, shared by every workload that mounts it.
//!
//! The writer trusts nothing it is given beyond the wire's validation: every entry is created below the
//! volume with `openat`/`mkdirat`/`symlinkat` relative to directory descriptors opened with `O_NOFOLLOW`, so
//! neither a `..` nor a symlink planted by an earlier entry (or by a workload writing into a mounted volume)
//! can move a write outside the volume. New files are created with `O_EXCL`; a later chunk of a file only
//! writes into a regular file that is already there.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use bulkhead_wire::{VolumeEntry, VolumeEntryKind};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, mkdirat};

/// Most bytes one snapshot volume may hold in the zone (the host bounds a container's snapshots far below).
pub const MAX_VOLUME_BYTES: u64 = 64 << 20;

/// Why writing a volume entry failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeWriteError {
    /// A system call on an entry failed (`ELOOP`/`ENOTDIR`: a symlink or file where a directory must be).
    #[error("volume {volume}: {op} {path:?}: {errno}")]
    Sys {
        /// The volume.
        volume: String,
        /// What was done.
        op: &'static str,
        /// The entry's path in the volume.
        path: String,
        /// The error.
        errno: Errno,
    },
    /// An entry that does not fit the volume built so far.
    #[error("volume {volume}: entry {path:?}: {reason}")]
    Invalid {
        /// The volume.
        volume: String,
        /// The entry's path in the volume.
        path: String,
        /// Which rule.
        reason: &'static str,
    },
}

/// The directory holding every volume: `<run_dir>/volumes`.
pub fn volumes_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("volumes")
}

/// Opens (creating it, mode 0700) the directory holding every volume.
fn open_volumes_dir(dir: &Path, volume: &str) -> Result<OwnedFd, VolumeWriteError> {
    let sys = |op, errno| VolumeWriteError::Sys { volume: volume.to_owned(), op, path: String::new(), errno };
    match std::fs::create_dir_all(dir) {
        Ok(()) => {}
        Err(e) => return Err(sys("creating the volumes directory", Errno::from_raw(e.raw_os_error().unwrap_or(0)))),
    }
    openat(nix::fcntl::AT_FDCWD, dir, OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| sys("opening the volumes directory", e))
}

/// Removes volume `volume` (file or tree; symlinks inside are removed, never followed). Missing is fine.
pub fn remove(dir: &Path, volume: &str) -> Result<(), VolumeWriteError> {
    let path = dir.join(volume);
    let r = match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
        _ => std::fs::remove_file(&path),
    };
    r.map_err(|e| VolumeWriteError::Sys {
        volume: volume.to_owned(),
        op: "removing",
        path: String::new(),
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
    })
}

/// Writes `entries` into volume `volume` below `dir`, in order. A root entry (path `""`) must come first in a
/// new volume; the caller removes an old copy before sending a volume's root again.
pub fn write_entries(dir: &Path, volume: &str, entries: &[VolumeEntry]) -> Result<(), VolumeWriteError> {
    let top = open_volumes_dir(dir, volume)?;
    for e in entries {
        write_entry(&top, volume, e)?;
    }
    Ok(())
}

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY.union(OFlag::O_NOFOLLOW).union(OFlag::O_RDONLY).union(OFlag::O_CLOEXEC);

fn write_entry(top: &OwnedFd, volume: &str, e: &VolumeEntry) -> Result<(), VolumeWriteError> {
    let sys = |op: &'static str| {
        let path = e.path.clone();
        move |errno| VolumeWriteError::Sys { volume: volume.to_owned(), op, path, errno }
    };
    let invalid = |reason| VolumeWriteError::Invalid { volume: volume.to_owned(), path: e.path.clone(), reason };
    // Checked on decode already; checked again since this is what keeps writes inside the volume.
    bulkhead_wire::validate_volume_path("volume entry", &e.path).map_err(|_| invalid("not a plain relative path"))?;
    // The parent directory and the entry's name in it. The root's parent is the volumes directory.
    let (parent, name): (OwnedFd, &str) = if e.path.is_empty() {
        (
            top.try_clone()
                .map_err(|err| sys("duplicating a descriptor")(Errno::from_raw(err.raw_os_error().unwrap_or(0))))?,
            volume,
        )
    } else {
        let mut fd = openat(top, volume, DIR_FLAGS, Mode::empty()).map_err(sys("opening the volume's root"))?;
        let mut parts = e.path.split('/').peekable();
        let mut last = "";
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                last = part;
                break;
            }
            fd = openat(&fd, part, DIR_FLAGS, Mode::empty()).map_err(sys("opening a parent directory"))?;
        }
        (fd, last)
    };
    match &e.kind {
        VolumeEntryKind::Dir { mode } => {
            mkdirat(&parent, name, Mode::from_bits_truncate(0o700)).map_err(sys("mkdir"))?;
            let d = openat(&parent, name, DIR_FLAGS, Mode::empty()).map_err(sys("opening the new directory"))?;
            // mkdir applies the umask: set the mode the host asked for.
            fchmod(&d, Mode::from_bits_truncate(*mode & 0o777)).map_err(sys("chmod"))
        }
        VolumeEntryKind::File { mode, offset, data } => {
            let end = offset.checked_add(data.len() as u64).filter(|end| *end <= MAX_VOLUME_BYTES);
            if end.is_none() {
                return Err(invalid("the file would exceed the zone's volume size limit"));
            }
            let base = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
            let f = if *offset == 0 {
                let f = openat(&parent, name, base | OFlag::O_CREAT | OFlag::O_EXCL, Mode::from_bits_truncate(0o600))
                    .map_err(sys("creating"))?;
                fchmod(&f, Mode::from_bits_truncate(*mode & 0o777)).map_err(sys("chmod"))?;
                f
            } else {
                let f = openat(&parent, name, base, Mode::empty()).map_err(sys("opening for the next chunk"))?;
                let st = fstat(&f).map_err(sys("stat"))?;
                if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
                    return Err(invalid("a later chunk of something that is not a regular file"));
                }
                f
            };
            write_all_at(f.as_fd(), data, *offset).map_err(sys("writing"))
        }
        VolumeEntryKind::Symlink { target } => {
            bulkhead_wire::validate_symlink_target("symlink target", target)
                .map_err(|_| invalid("a symlink target that could leave the volume"))?;
            nix::unistd::symlinkat(target.as_str(), &parent, name).map_err(sys("symlink"))
        }
    }
}

fn write_all_at(fd: std::os::fd::BorrowedFd<'_>, mut data: &[u8], mut offset: u64) -> Result<(), Errno> {
    while !data.is_empty() {
        let off = i64::try_from(offset).map_err(|_| Errno::EFBIG)?;
        match nix::sys::uio::pwrite(fd, data, off) {
            Ok(0) => return Err(Errno::ENOSPC),
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates emptyDir volume `volume` (mode 0777, like kubelet's) if it does not exist, and returns its path.
pub fn ensure_empty_dir(dir: &Path, volume: &str) -> Result<PathBuf, VolumeWriteError> {
    let top = open_volumes_dir(dir, volume)?;
    let sys = |op| move |errno| VolumeWriteError::Sys { volume: volume.to_owned(), op, path: String::new(), errno };
    match mkdirat(&top, volume, Mode::from_bits_truncate(0o700)) {
        Ok(()) => {
            let d = openat(&top, volume, DIR_FLAGS, Mode::empty()).map_err(sys("opening"))?;
            fchmod(&d, Mode::from_bits_truncate(0o777)).map_err(sys("chmod"))?;
        }
        Err(Errno::EEXIST) => {
            // Must be a directory, not something else of that name.
            openat(&top, volume, DIR_FLAGS, Mode::empty()).map_err(sys("opening"))?;
        }
        Err(e) => return Err(sys("mkdir")(e)),
    }
    Ok(dir.join(volume))
}

/// A volume bound into a workload's root, as the setup helper receives it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BindMount {
    /// The volume in the zone (a file or a directory).
    pub source: PathBuf,
    /// Absolute path in the workload's root.
    pub destination: String,
    /// Bind it read-only.
    pub readonly: bool,
}

/// Most symlinks followed while resolving one path (Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// Resolves `path` inside `root` the way a process chrooted there would see it, without ever leaving
/// `root`: symlinks are followed with `root` as `/`, and `..` stops at `root` (like runc's securejoin).
/// Missing components are kept as named. Only for a root no process runs in yet (nothing can swap a
/// component for a symlink between this check and its use).
pub fn resolve_in_root(root: &Path, path: &str) -> Result<PathBuf, Errno> {
    use std::collections::VecDeque;
    let parts = |p: &str| -> VecDeque<String> {
        p.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_owned).collect()
    };
    let mut pending = parts(path);
    let mut resolved: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let candidate: PathBuf = root.join(resolved.join("/")).join(&c);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Errno::ELOOP);
                }
                let target = std::fs::read_link(&candidate)
                    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
                let target = target.to_str().ok_or(Errno::EINVAL)?;
                if target.starts_with('/') {
                    resolved.clear();
                }
                let mut next = parts(target);
                next.extend(pending);
                pending = next;
            }
            _ => resolved.push(c),
        }
    }
    Ok(root.join(resolved.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bulkhead-zone-vol-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn entry(path: &str, kind: VolumeEntryKind) -> VolumeEntry {
        VolumeEntry { path: path.into(), kind }
    }

    fn file(data: &'static [u8], offset: u64) -> VolumeEntryKind {
        VolumeEntryKind::File { mode: 0o644, offset, data: Bytes::from_static(data) }
    }

    fn dir() -> VolumeEntryKind {
        VolumeEntryKind::Dir { mode: 0o755 }
    }

    #[test]
    fn a_projected_volume_is_written_with_its_symlinks() -> Result<(), Box<dyn std::error::Error>> {
        let d = tmp("projected");
        let entries = [
            entry("", dir()),
            entry("..2026_11_23", dir()),
            entry("..2026_11_23/token", file(b"tok", 0)),
            entry("..2026_11_23/token", file(b"en", 3)),
            entry("..data", VolumeEntryKind::Symlink { target: "..2026_11_23".into() }),
            entry("token", VolumeEntryKind::Symlink { target: "..data/token".into() }),
        ];
        write_entries(&d, "s-1", &entries)?;
        assert_eq!(std::fs::read_to_string(d.join("s-1/token"))?, "token");
        let mode = std::fs::metadata(d.join("s-1/..2026_11_23/token"))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        // A file volume: the root is the file.
        write_entries(&d, "s-2", &[entry("", file(b"127.0.0.1 localhost\n", 0))])?;
        assert_eq!(std::fs::read_to_string(d.join("s-2"))?, "127.0.0.1 localhost\n");
        remove(&d, "s-1")?;
        remove(&d, "s-2")?;
        assert!(!d.join("s-1").exists() && !d.join("s-2").exists());
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }

    #[test]
    fn nothing_escapes_through_dotdot_absolute_paths_or_planted_symlinks() -> Result<(), Box<dyn std::error::Error>> {
        let d = tmp("escape");
        let outside = d.join("outside");
        std::fs::create_dir_all(&outside)?;
        write_entries(&d, "v", &[entry("", dir())])?;
        // Paths the wire refuses are refused here too.
        for bad in ["../outside/x", "/etc/x", "a/../../outside/x", "a//b"] {
            assert!(write_entries(&d, "v", &[entry(bad, file(b"x", 0))]).is_err(), "{bad}");
        }
        // A symlink planted earlier (by an entry or a workload) is never followed: not as a parent...
        std::os::unix::fs::symlink(&outside, d.join("v/link"))?;
        assert!(matches!(
            write_entries(&d, "v", &[entry("link/x", file(b"x", 0))]),
            Err(VolumeWriteError::Sys { errno: Errno::ELOOP | Errno::ENOTDIR, .. })
        ));
        // ...nor as the file itself, for a first chunk or a later one.
        std::os::unix::fs::symlink(outside.join("f"), d.join("v/f"))?;
        std::fs::write(outside.join("f"), "keep")?;
        assert!(write_entries(&d, "v", &[entry("f", file(b"x", 0))]).is_err());
        assert!(write_entries(&d, "v", &[entry("f", file(b"x", 1))]).is_err());
        // A symlinked volume root is not followed either.
        std::os::unix::fs::symlink(&outside, d.join("w"))?;
        assert!(write_entries(&d, "w", &[entry("x", file(b"x", 0))]).is_err());
        // An escaping symlink target is refused even if it slipped past decoding.
        let evil = entry("evil", VolumeEntryKind::Symlink { target: "../../etc/shadow".into() });
        assert!(write_entries(&d, "v", &[evil]).is_err());
        assert_eq!(std::fs::read_dir(&outside)?.count(), 1, "nothing new outside");
        assert_eq!(std::fs::read_to_string(outside.join("f"))?, "keep");
        // A later chunk must land in a regular file, within the size bound.
        write_entries(&d, "v", &[entry("sub", dir())])?;
        assert!(write_entries(&d, "v", &[entry("sub", file(b"x", 1))]).is_err());
        assert!(write_entries(&d, "v", &[entry("big", file(b"x", MAX_VOLUME_BYTES))]).is_err());
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }

    #[test]
    fn an_empty_dir_is_created_once_world_writable_and_must_be_a_directory() -> Result<(), Box<dyn std::error::Error>> {
        let d = tmp("empty");
        let p = ensure_empty_dir(&d, "e-1")?;
        std::fs::write(p.join("shared"), "x")?;
        assert_eq!(ensure_empty_dir(&d, "e-1")?, p);
        assert!(p.join("shared").exists(), "kept across workloads");
        assert_eq!(std::fs::metadata(&p)?.permissions().mode() & 0o777, 0o777);
        std::os::unix::fs::symlink("/", d.join("e-2"))?;
        assert!(ensure_empty_dir(&d, "e-2").is_err());
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }

    #[test]
    fn destinations_resolve_inside_the_root_whatever_the_image_links_to() -> Result<(), Box<dyn std::error::Error>> {
        let root = tmp("resolve");
        std::fs::create_dir_all(root.join("run"))?;
        std::fs::create_dir_all(root.join("var"))?;
        std::os::unix::fs::symlink("/run", root.join("var/run"))?;
        std::os::unix::fs::symlink("../../../../etc", root.join("up"))?;
        std::os::unix::fs::symlink("loop", root.join("loop"))?;
        let r = |p: &str| resolve_in_root(&root, p);
        assert_eq!(r("/var/run/secrets/kubernetes.io")?, root.join("run/secrets/kubernetes.io"));
        assert_eq!(r("/up/hosts")?, root.join("etc/hosts"));
        assert_eq!(r("/../../etc/passwd")?, root.join("etc/passwd"));
        assert_eq!(r("/etc/hosts")?, root.join("etc/hosts"));
        assert_eq!(r("/loop/x"), Err(Errno::ELOOP));
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }
}
