//! Safe application of tar streams (image layers, and the outer tar of an imported archive) to a directory.
//!
//! The input is hostile. Why this is safe, rule by rule:
//! - Entry paths are cleaned lexically: `.` and empty components are dropped, a leading `/` is resolved
//!   under the root, and any `..` is refused. So a path names something inside the root *lexically*.
//! - Nothing is ever resolved through a symlink in the target directory: every parent is opened with
//!   `openat(O_DIRECTORY | O_NOFOLLOW)` one component at a time from a descriptor of the root, so a
//!   symlink planted by an earlier entry or layer (`evil -> /etc`, then `evil/passwd`) makes the entry fail
//!   instead of writing through it. Final components are created with `O_CREAT | O_EXCL` (files),
//!   `mkdirat`, `symlinkat` and `linkat` without `AT_SYMLINK_FOLLOW`, none of which follow a symlink.
//!   Containerd instead resolves such symlinks *within* the root; we refuse them (no layer produced by
//!   diffing a snapshot contains them).
//! - Hard links are resolved with the same walk, so their targets are entries inside the root, never
//!   directories.
//! - Device nodes are skipped (a zone gets its `/dev` from devtmpfs); FIFOs are created in layers.
//! - Bounds: entries (counting extension headers), path length, regular-file bytes in total, and the size
//!   of GNU long-name and PAX extension records. The `tar` crate buffers those records whole without a
//!   limit, so entries are read in raw mode and the records are handled here, bounded. A PAX `size` that
//!   disagrees with the header is refused rather than guessed at (parser disagreement is an attack).
//!
//! The `tar` crate's own `unpack_in` is not used: it follows symlinks in parent directories created by
//! earlier entries only as far as its own checks go, cannot apply whiteouts, and gives no place for these
//! bounds. The target directory is private to the daemon (mode 0700), so only the archive can race us.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, UtimensatFlags, fchmod, fstatat, futimens, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, mkfifoat, symlinkat, unlinkat};
use tar::EntryType;

/// Longest GNU long-name or PAX extension record accepted.
pub const MAX_EXTENSION_BYTES: u64 = 64 << 10;
/// Longest symlink target (PATH_MAX - 1).
const MAX_LINK_TARGET: usize = 4095;
/// Largest single extended attribute value (the kernel's XATTR_SIZE_MAX).
const MAX_XATTR_VALUE: usize = 64 << 10;
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Bounds on what one import may unpack, across all of its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Regular-file bytes written, summed over all entries (overwritten files count too).
    pub max_total_bytes: u64,
    /// Tar headers read, summed over all layers.
    pub max_entries: u64,
    /// Longest entry path or hard-link target, in bytes.
    pub max_path_len: usize,
    /// Entry path bytes summed over all entries: bounds the memory kept per entry (whiteout bookkeeping,
    /// directory times), which entries × longest path would not.
    pub max_path_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_total_bytes: 32 << 30,
            max_entries: 2_000_000,
            max_path_len: 4096,
            max_path_bytes: 256 << 20,
        }
    }
}

/// What kind of stream is being applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// An image layer: whiteouts apply, ownership, modes, times and xattrs are kept.
    Layer,
    /// The outer tar of an OCI layout or `docker save` archive: only files and directories matter. Files
    /// and directories are private (0600/0700), owned by the daemon; symlinks with a relative target inside
    /// the archive become hard links (`docker save` links shared layers), other symlinks are skipped.
    Archive,
}

/// Unpacking failures. [`UnpackError::is_bad_input`] tells the image's fault from the node's.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The tar stream is malformed or could not be read.
    #[error("reading the tar stream")]
    Read(#[source] io::Error),
    /// A path has a `..` component.
    #[error("entry {path:?} has a '..' component")]
    PathEscape {
        /// The entry's path.
        path: String,
    },
    /// A path or link target is too long or not usable.
    #[error("entry {path:?}: {reason}")]
    BadEntry {
        /// The entry's path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A parent component is a symlink.
    #[error("entry {path:?} goes through the symlink {component:?}")]
    ThroughSymlink {
        /// The entry's path.
        path: String,
        /// The symlink.
        component: String,
    },
    /// A parent component exists and is not a directory.
    #[error("entry {path:?}: {component:?} is not a directory")]
    NotADirectory {
        /// The entry's path.
        path: String,
        /// The component.
        component: String,
    },
    /// A hard link names a target that is not an existing non-directory inside the root.
    #[error("hard link {path:?} -> {target:?}: the target is not a file earlier in the image")]
    HardlinkTarget {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// Too many entries.
    #[error("more than {limit} tar entries: refusing what looks like a tar bomb")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// Too many bytes.
    #[error("more than {limit} bytes of file content: refusing what looks like a tar bomb")]
    TooManyBytes {
        /// The limit.
        limit: u64,
    },
    /// The entry paths are too long in total.
    #[error("entry paths add up to more than {limit} bytes: refusing what looks like a tar bomb")]
    TooManyPathBytes {
        /// The limit.
        limit: u64,
    },
    /// An entry path is too long.
    #[error("an entry path is {len} bytes long, more than the {limit} allowed")]
    PathTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A GNU long-name or PAX record is too large.
    #[error("a tar extension record of {size} bytes exceeds the {MAX_EXTENSION_BYTES} allowed")]
    ExtensionTooLarge {
        /// Its size.
        size: u64,
    },
    /// The entry type is not supported.
    #[error("entry {path:?} has unsupported tar entry type {kind:?}")]
    UnsupportedType {
        /// The entry's path.
        path: String,
        /// The type byte.
        kind: char,
    },
    /// A local filesystem operation failed: the node's fault, not the image's.
    #[error("{op} {path:?} in {root}")]
    Local {
        /// What was being done.
        op: &'static str,
        /// The entry's path.
        path: String,
        /// The target directory.
        root: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

impl UnpackError {
    /// True when the archive is at fault (INVALID_ARGUMENT), false when the node is (INTERNAL).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, UnpackError::Local { .. })
    }
}

/// Counts of what was applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar headers read.
    pub entries: u64,
    /// Regular-file bytes written (overwritten and whited-out files included).
    pub bytes: u64,
    /// Entry path bytes read.
    pub path_bytes: u64,
    /// Device nodes left out.
    pub skipped_devices: u64,
}

/// Extension data that applies to the next real entry.
#[derive(Debug, Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
    size: Option<u64>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Applies tar streams, in order, to one directory.
#[derive(Debug)]
pub struct Unpacker {
    root: OwnedFd,
    root_path: PathBuf,
    limits: UnpackLimits,
    mode: StreamKind,
    preserve_owner: bool,
    stats: UnpackStats,
    /// Directory mtimes, applied at [`Unpacker::finish`] (creating children changes them).
    dir_times: HashMap<Vec<Vec<u8>>, i64>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn join(comps: &[Vec<u8>]) -> String {
    comps.iter().map(|c| lossy(c)).collect::<Vec<_>>().join("/")
}

/// Splits `path` into components under the root: drops `.`, empty components and a leading `/`, refuses `..`.
pub fn clean_path(path: &[u8], max_len: usize) -> Result<Vec<Vec<u8>>, UnpackError> {
    if path.len() > max_len {
        return Err(UnpackError::PathTooLong { len: path.len(), limit: max_len });
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(UnpackError::PathEscape { path: lossy(path) }),
            c if c.len() > 255 => {
                return Err(UnpackError::BadEntry {
                    path: lossy(path),
                    reason: "a component exceeds 255 bytes".into(),
                });
            }
            c if c.contains(&0) => {
                return Err(UnpackError::BadEntry { path: lossy(path), reason: "NUL byte in the path".into() });
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn mtime_spec(t: i64) -> TimeSpec {
    TimeSpec::new(t, 0)
}

fn os(c: &[u8]) -> &OsStr {
    OsStr::from_bytes(c)
}

fn stat_at(dir: &OwnedFd, name: &[u8]) -> Result<Option<FileStat>, Errno> {
    match fstatat(dir, os(name), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(s) => Ok(Some(s)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_dir(s: &FileStat) -> bool {
    SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

impl Unpacker {
    /// Targets the existing directory `root` (opened once, without following a symlink).
    pub fn new(root: &Path, limits: UnpackLimits, mode: StreamKind, preserve_owner: bool) -> io::Result<Self> {
        let fd = openat(
            nix::fcntl::AT_FDCWD,
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err)?;
        Ok(Unpacker {
            root: fd,
            root_path: root.to_owned(),
            limits,
            mode,
            preserve_owner,
            stats: UnpackStats::default(),
            dir_times: HashMap::new(),
        })
    }

    fn local(&self, op: &'static str, path: &[Vec<u8>], e: Errno) -> UnpackError {
        UnpackError::Local { op, path: join(path), root: self.root_path.clone(), source: io_err(e) }
    }

    /// Opens the directory `comps` under the root, one component at a time, never through a symlink;
    /// missing components are created (0755) when `create`, else `Ok(None)`.
    fn open_dir(&self, comps: &[Vec<u8>], full: &[Vec<u8>], create: bool) -> Result<Option<OwnedFd>, UnpackError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut cur = self.root.try_clone().map_err(|e| UnpackError::Local {
            op: "duplicating the root descriptor",
            path: join(full),
            root: self.root_path.clone(),
            source: e,
        })?;
        for (i, c) in comps.iter().enumerate() {
            let next = match openat(&cur, os(c), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    match mkdirat(&cur, os(c), Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(self.local("creating parent directory of", full, e)),
                    }
                    openat(&cur, os(c), flags, Mode::empty())
                        .map_err(|e| self.local("opening parent directory of", full, e))?
                }
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let component = join(&comps[..=i]);
                    let symlink = stat_at(&cur, c)
                        .ok()
                        .flatten()
                        .is_some_and(|s| SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK);
                    return Err(if symlink {
                        UnpackError::ThroughSymlink { path: join(full), component }
                    } else {
                        UnpackError::NotADirectory { path: join(full), component }
                    });
                }
                Err(e) => return Err(self.local("opening parent directory of", full, e)),
            };
            cur = next;
        }
        Ok(Some(cur))
    }

    /// Removes whatever is at `name` in `dir` (recursively for a directory, never following symlinks).
    fn remove_existing(&self, dir: &OwnedFd, name: &[u8], full: &[Vec<u8>]) -> Result<bool, UnpackError> {
        let Some(st) = stat_at(dir, name).map_err(|e| self.local("inspecting", full, e))? else {
            return Ok(false);
        };
        if is_dir(&st) {
            // Every parent of `full` was just opened as a real directory (no symlinks) and nothing else
            // writes here, so this path names that directory; remove_dir_all does not follow symlinks.
            let p = self.root_path.join(full.iter().map(|c| os(c)).collect::<PathBuf>());
            std::fs::remove_dir_all(&p).map_err(|source| UnpackError::Local {
                op: "removing",
                path: join(full),
                root: self.root_path.clone(),
                source,
            })?;
        } else {
            unlinkat(dir, os(name), UnlinkatFlags::NoRemoveDir).map_err(|e| self.local("removing", full, e))?;
        }
        Ok(true)
    }

    fn count_entry(&mut self) -> Result<(), UnpackError> {
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(UnpackError::TooManyEntries { limit: self.limits.max_entries });
        }
        Ok(())
    }

    /// Applies one tar stream (reads it to its end-of-archive marker).
    pub fn apply<R: Read>(&mut self, reader: R) -> Result<(), UnpackError> {
        let mut archive = tar::Archive::new(reader);
        let mut created: BTreeSet<Vec<Vec<u8>>> = BTreeSet::new();
        let mut pending = Pending::default();
        for entry in archive.entries().map_err(UnpackError::Read)?.raw(true) {
            let mut entry = entry.map_err(UnpackError::Read)?;
            self.count_entry()?;
            let kind = entry.header().entry_type();
            match kind {
                EntryType::GNULongName => pending.path = Some(read_extension(&mut entry)?),
                EntryType::GNULongLink => pending.link = Some(read_extension(&mut entry)?),
                EntryType::XHeader => parse_pax(&read_extension(&mut entry)?, &mut pending),
                EntryType::XGlobalHeader => {
                    read_extension(&mut entry)?;
                }
                _ => {
                    let ext = std::mem::take(&mut pending);
                    self.apply_entry(entry, ext, &mut created)?;
                }
            }
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        ext: Pending,
        created: &mut BTreeSet<Vec<Vec<u8>>>,
    ) -> Result<(), UnpackError> {
        let header = entry.header().clone();
        let raw_path = ext.path.clone().unwrap_or_else(|| header.path_bytes().into_owned());
        let raw_path: Vec<u8> = strip_nuls(raw_path);
        self.stats.path_bytes += raw_path.len() as u64;
        if self.stats.path_bytes > self.limits.max_path_bytes {
            return Err(UnpackError::TooManyPathBytes { limit: self.limits.max_path_bytes });
        }
        let comps = clean_path(&raw_path, self.limits.max_path_len)?;
        let size = entry.size();
        if let Some(pax_size) = ext.size
            && pax_size != size
        {
            return Err(UnpackError::BadEntry {
                path: lossy(&raw_path),
                reason: format!("PAX size {pax_size} disagrees with the header's {size}"),
            });
        }
        let kind = header.entry_type();
        let Some((name, parent)) = comps.split_last() else {
            // The root itself ("./"): its mode stays 0755, owned by root.
            return Ok(());
        };
        let name = name.clone();
        let parent = parent.to_vec();

        if self.mode == StreamKind::Layer && name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.apply_whiteout(&parent, &name, &comps, created);
        }

        let uid = ext.uid.or_else(|| header.uid().ok()).unwrap_or(0);
        let gid = ext.gid.or_else(|| header.gid().ok()).unwrap_or(0);
        let mtime = ext.mtime.or_else(|| header.mtime().ok().and_then(|t| i64::try_from(t).ok())).unwrap_or(0);
        let perm = header.mode().unwrap_or(0o644) & 0o7777;
        let meta = Meta { uid, gid, mtime, perm, xattrs: ext.xattrs };

        match kind {
            EntryType::Regular | EntryType::Continuous => {
                if self.stats.bytes.saturating_add(size) > self.limits.max_total_bytes {
                    return Err(UnpackError::TooManyBytes { limit: self.limits.max_total_bytes });
                }
                let dir = self.parent(&parent, &comps)?;
                self.remove_existing(&dir, &name, &comps)?;
                let fd = openat(
                    &dir,
                    os(&name),
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| self.local("creating", &comps, e))?;
                let mut file = File::from(fd);
                let copied = io::copy(&mut (&mut entry).take(size), &mut file).map_err(UnpackError::Read)?;
                if copied != size {
                    return Err(UnpackError::Read(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} ends after {copied} of {size} bytes", lossy(&raw_path)),
                    )));
                }
                self.stats.bytes += size;
                self.finish_fd(file.as_fd(), &meta, &comps, true)?;
            }
            EntryType::Directory => {
                let dir = self.parent(&parent, &comps)?;
                match stat_at(&dir, &name).map_err(|e| self.local("inspecting", &comps, e))? {
                    Some(st) if is_dir(&st) => {}
                    Some(_) => {
                        self.remove_existing(&dir, &name, &comps)?;
                        self.mkdir(&dir, &name, &comps)?;
                    }
                    None => self.mkdir(&dir, &name, &comps)?,
                }
                let fd = openat(
                    &dir,
                    os(&name),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.local("opening", &comps, e))?;
                self.finish_fd(fd.as_fd(), &meta, &comps, false)?;
                self.dir_times.insert(comps.clone(), mtime);
            }
            EntryType::Symlink => {
                let target = strip_nuls(
                    ext.link
                        .clone()
                        .unwrap_or_else(|| header.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default()),
                );
                if target.is_empty() || target.len() > MAX_LINK_TARGET {
                    return Err(UnpackError::BadEntry {
                        path: lossy(&raw_path),
                        reason: format!("symlink target of {} bytes", target.len()),
                    });
                }
                if self.mode == StreamKind::Archive {
                    return self.archive_symlink(&parent, &name, &comps, &target, created);
                }
                let dir = self.parent(&parent, &comps)?;
                self.remove_existing(&dir, &name, &comps)?;
                symlinkat(os(&target), &dir, os(&name)).map_err(|e| self.local("creating symlink", &comps, e))?;
                if self.preserve_owner {
                    fchownat(
                        &dir,
                        os(&name),
                        Some(Uid::from_raw(id32(uid))),
                        Some(Gid::from_raw(id32(gid))),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| self.local("setting the owner of", &comps, e))?;
                }
                let t = mtime_spec(mtime);
                utimensat(&dir, os(&name), &t, &t, UtimensatFlags::NoFollowSymlink)
                    .map_err(|e| self.local("setting the times of", &comps, e))?;
            }
            EntryType::Link => {
                let target = strip_nuls(
                    ext.link
                        .clone()
                        .unwrap_or_else(|| header.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default()),
                );
                let tcomps = clean_path(&target, self.limits.max_path_len)?;
                self.hardlink(&parent, &name, &comps, &tcomps, &target)?;
            }
            EntryType::Char | EntryType::Block => {
                self.stats.skipped_devices += 1;
                tracing::debug!(path = %lossy(&raw_path), "skipping a device node in an image layer");
                return Ok(());
            }
            EntryType::Fifo => {
                if self.mode == StreamKind::Archive {
                    return Ok(());
                }
                let dir = self.parent(&parent, &comps)?;
                self.remove_existing(&dir, &name, &comps)?;
                mkfifoat(&dir, os(&name), Mode::from_bits_truncate(0o600))
                    .map_err(|e| self.local("creating FIFO", &comps, e))?;
                let fd = openat(&dir, os(&name), OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
                    .map_err(|e| self.local("opening", &comps, e))?;
                // fchmod/fchown do not work on O_PATH descriptors: go through /proc/self/fd, which names
                // exactly this inode.
                let proc = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
                if self.preserve_owner {
                    std::os::unix::fs::chown(&proc, Some(id32(uid)), Some(id32(gid)))
                        .map_err(|e| self.local_io("setting the owner of", &comps, e))?;
                }
                std::fs::set_permissions(&proc, std::os::unix::fs::PermissionsExt::from_mode(perm))
                    .map_err(|e| self.local_io("setting the mode of", &comps, e))?;
            }
            other => {
                return Err(UnpackError::UnsupportedType { path: lossy(&raw_path), kind: char::from(other.as_byte()) });
            }
        }
        created.insert(comps);
        Ok(())
    }

    fn local_io(&self, op: &'static str, path: &[Vec<u8>], source: io::Error) -> UnpackError {
        UnpackError::Local { op, path: join(path), root: self.root_path.clone(), source }
    }

    fn parent(&self, parent: &[Vec<u8>], full: &[Vec<u8>]) -> Result<OwnedFd, UnpackError> {
        self.open_dir(parent, full, true)?.ok_or_else(|| self.local("opening parent directory of", full, Errno::ENOENT))
    }

    fn mkdir(&self, dir: &OwnedFd, name: &[u8], full: &[Vec<u8>]) -> Result<(), UnpackError> {
        let mode = if self.mode == StreamKind::Archive { 0o700 } else { 0o755 };
        mkdirat(dir, os(name), Mode::from_bits_truncate(mode)).map_err(|e| self.local("creating directory", full, e))
    }

    /// Owner, mode (after the owner: chown clears set-id bits), xattrs and mtime of a file or directory.
    fn finish_fd(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        m: &Meta,
        full: &[Vec<u8>],
        file: bool,
    ) -> Result<(), UnpackError> {
        if self.mode == StreamKind::Archive {
            return Ok(());
        }
        if self.preserve_owner {
            fchown(fd, Some(Uid::from_raw(id32(m.uid))), Some(Gid::from_raw(id32(m.gid))))
                .map_err(|e| self.local("setting the owner of", full, e))?;
        }
        fchmod(fd, Mode::from_bits_truncate(m.perm)).map_err(|e| self.local("setting the mode of", full, e))?;
        for (k, v) in &m.xattrs {
            set_xattr(fd, k, v).map_err(|e| self.local_io("setting an extended attribute of", full, e))?;
        }
        if file {
            let t = mtime_spec(m.mtime);
            futimens(fd, &t, &t).map_err(|e| self.local("setting the times of", full, e))?;
        }
        Ok(())
    }

    fn apply_whiteout(
        &mut self,
        parent: &[Vec<u8>],
        name: &[u8],
        full: &[Vec<u8>],
        created: &BTreeSet<Vec<Vec<u8>>>,
    ) -> Result<(), UnpackError> {
        // A whiteout hides what lower layers put there, never what this layer adds (OCI image spec,
        // layer.md "Whiteouts"). Without its parent there is nothing to hide.
        let Some(dir) = self.open_dir(parent, full, false)? else { return Ok(()) };
        if name == OPAQUE_MARKER.as_bytes() {
            drop(dir);
            return self.hide_lower(parent, full, created);
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        if target.is_empty() || target.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // `.wh..wh.*` other than the opaque marker are aufs bookkeeping: nothing to do.
            return Ok(());
        }
        let mut hidden = parent.to_vec();
        hidden.push(target.to_vec());
        if !created_at_or_under(created, &hidden) {
            self.remove_existing(&dir, target, &hidden)?;
            self.dir_times.retain(|k, _| !k.starts_with(&hidden));
        }
        Ok(())
    }

    /// Applies an opaque marker: removes everything beneath `dir` that this layer did not create, descending
    /// into directories that hold something of this layer's. Iterative, one directory open at a time.
    fn hide_lower(
        &mut self,
        dir: &[Vec<u8>],
        full: &[Vec<u8>],
        created: &BTreeSet<Vec<Vec<u8>>>,
    ) -> Result<(), UnpackError> {
        let mut todo = vec![dir.to_vec()];
        while let Some(path) = todo.pop() {
            let Some(fd) = self.open_dir(&path, full, false)? else { continue };
            let dup = fd.try_clone().map_err(|e| self.local_io("listing", &path, e))?;
            let mut listing = nix::dir::Dir::from_fd(dup).map_err(|e| self.local("listing", &path, e))?;
            let mut names = Vec::new();
            for ent in listing.iter() {
                let ent = ent.map_err(|e| self.local("listing", &path, e))?;
                let n = ent.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(n.to_vec());
                }
            }
            for n in names {
                let mut child = path.clone();
                child.push(n.clone());
                if !created_at_or_under(created, &child) {
                    self.remove_existing(&fd, &n, &child)?;
                    self.dir_times.retain(|k, _| !k.starts_with(&child));
                } else if stat_at(&fd, &n)
                    .map_err(|e| self.local("inspecting", &child, e))?
                    .is_some_and(|st| is_dir(&st))
                {
                    todo.push(child);
                }
            }
        }
        Ok(())
    }

    fn hardlink(
        &mut self,
        parent: &[Vec<u8>],
        name: &[u8],
        full: &[Vec<u8>],
        tcomps: &[Vec<u8>],
        raw_target: &[u8],
    ) -> Result<(), UnpackError> {
        let bad = || UnpackError::HardlinkTarget { path: join(full), target: lossy(raw_target) };
        let Some((tname, tparent)) = tcomps.split_last() else { return Err(bad()) };
        let Some(tdir) = self.open_dir(tparent, full, false)? else { return Err(bad()) };
        match stat_at(&tdir, tname).map_err(|e| self.local("inspecting", tcomps, e))? {
            Some(st) if !is_dir(&st) => {}
            _ => return Err(bad()),
        }
        if tcomps == full {
            return Ok(());
        }
        let dir = self.parent(parent, full)?;
        self.remove_existing(&dir, name, full)?;
        linkat(&tdir, os(tname), &dir, os(name), AtFlags::empty())
            .map_err(|e| self.local("creating hard link", full, e))
    }

    /// In an outer archive, a relative symlink to a file inside it becomes a hard link to that file.
    fn archive_symlink(
        &mut self,
        parent: &[Vec<u8>],
        name: &[u8],
        full: &[Vec<u8>],
        target: &[u8],
        created: &mut BTreeSet<Vec<Vec<u8>>>,
    ) -> Result<(), UnpackError> {
        if target.starts_with(b"/") {
            return Ok(());
        }
        let mut resolved: Vec<Vec<u8>> = parent.to_vec();
        for c in target.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => {
                    if resolved.pop().is_none() {
                        return Ok(());
                    }
                }
                c => resolved.push(c.to_vec()),
            }
        }
        match self.hardlink(parent, name, full, &resolved, target) {
            Ok(()) => {
                created.insert(full.to_vec());
                Ok(())
            }
            Err(UnpackError::HardlinkTarget { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets the directory mtimes recorded while unpacking, and returns the counts.
    pub fn finish(self) -> Result<UnpackStats, UnpackError> {
        for (comps, mtime) in &self.dir_times {
            let Some((name, parent)) = comps.split_last() else { continue };
            let Some(dir) = self.open_dir(parent, comps, false)? else { continue };
            let t = mtime_spec(*mtime);
            match utimensat(&dir, os(name), &t, &t, UtimensatFlags::NoFollowSymlink) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(self.local("setting the times of", comps, e)),
            }
        }
        Ok(self.stats)
    }
}

/// True when this layer created `path` or anything beneath it (what a whiteout must leave alone).
fn created_at_or_under(created: &BTreeSet<Vec<Vec<u8>>>, path: &[Vec<u8>]) -> bool {
    created.range(path.to_vec()..).next().is_some_and(|p| p.starts_with(path))
}

#[derive(Debug)]
struct Meta {
    uid: u64,
    gid: u64,
    mtime: i64,
    perm: u32,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Ids above u32 cannot exist on Linux; they map to the overflow id, "nobody".
fn id32(id: u64) -> u32 {
    u32::try_from(id).unwrap_or(65534)
}

fn strip_nuls(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

fn read_extension<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<u8>, UnpackError> {
    let size = entry.size();
    if size > MAX_EXTENSION_BYTES {
        return Err(UnpackError::ExtensionTooLarge { size });
    }
    let mut v = Vec::new();
    entry.take(MAX_EXTENSION_BYTES).read_to_end(&mut v).map_err(UnpackError::Read)?;
    Ok(strip_nuls(v))
}

/// Which xattrs images may set: file capabilities and the user namespace. `trusted.*` (overlayfs
/// bookkeeping) and `security.selinux` of a foreign system are dropped.
fn xattr_allowed(key: &[u8]) -> bool {
    key == b"security.capability" || key.starts_with(b"user.")
}

fn parse_pax(data: &[u8], p: &mut Pending) {
    for ext in tar::PaxExtensions::new(data) {
        let Ok(ext) = ext else { continue };
        let key = ext.key_bytes();
        let value = ext.value_bytes();
        let num = || std::str::from_utf8(value).ok().and_then(|s| s.split('.').next()?.parse::<i64>().ok());
        match key {
            b"path" => p.path = Some(value.to_vec()),
            b"linkpath" => p.link = Some(value.to_vec()),
            b"uid" => p.uid = num().and_then(|n| u64::try_from(n).ok()),
            b"gid" => p.gid = num().and_then(|n| u64::try_from(n).ok()),
            b"mtime" => p.mtime = num(),
            b"size" => p.size = num().and_then(|n| u64::try_from(n).ok()).or(Some(u64::MAX)),
            k => {
                if let Some(name) = k.strip_prefix(b"SCHILY.xattr.")
                    && xattr_allowed(name)
                    && value.len() <= MAX_XATTR_VALUE
                {
                    p.xattrs.push((name.to_vec(), value.to_vec()));
                }
            }
        }
    }
}

fn set_xattr(fd: std::os::fd::BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    let key = CString::new(key).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `fd` is a live descriptor borrowed for this call; `key` is a NUL-terminated string that lives
    // across the call; `value` points at `value.len()` initialised bytes. fsetxattr reads only those.
    let rc = unsafe { libc::fsetxattr(fd.as_raw_fd(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// One tar entry for tests.
    pub(crate) enum E<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str),
        Sym(&'a str, &'a str),
        Link(&'a str, &'a str),
        Char(&'a str),
    }

    /// A tar of `entries`, written with raw headers so hostile paths get through unchanged.
    pub(crate) fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            let (path, data): (&str, &[u8]) = match e {
                E::File(p, d, mode) => {
                    h.set_entry_type(EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(d.len() as u64);
                    (p, d)
                }
                E::Dir(p) => {
                    h.set_entry_type(EntryType::Directory);
                    h.set_mode(0o755);
                    (p, &[])
                }
                E::Sym(p, t) | E::Link(p, t) => {
                    h.set_entry_type(if matches!(e, E::Sym(..)) { EntryType::Symlink } else { EntryType::Link });
                    h.set_mode(0o777);
                    set_raw(&mut h.as_old_mut().linkname, t);
                    (p, &[])
                }
                E::Char(p) => {
                    h.set_entry_type(EntryType::Char);
                    h.set_mode(0o666);
                    (p, &[])
                }
            };
            set_raw(&mut h.as_old_mut().name, path);
            h.set_mtime(1_700_000_000);
            h.set_uid(1000);
            h.set_gid(1000);
            h.set_cksum();
            b.append(&h, data).unwrap_or_else(|e| panic!("building test tar: {e}"));
        }
        b.into_inner().unwrap_or_else(|e| panic!("building test tar: {e}"))
    }

    fn set_raw(field: &mut [u8], s: &str) {
        field.fill(0);
        field[..s.len()].copy_from_slice(s.as_bytes());
    }

    fn unpack(layers: &[Vec<u8>], limits: UnpackLimits) -> Result<(tempfile::TempDir, UnpackStats), UnpackError> {
        let dir = tempfile::tempdir().map_err(UnpackError::Read)?;
        let mut u = Unpacker::new(dir.path(), limits, StreamKind::Layer, nix::unistd::geteuid().is_root())
            .map_err(UnpackError::Read)?;
        for l in layers {
            u.apply(&l[..])?;
        }
        let stats = u.finish()?;
        Ok((dir, stats))
    }

    #[test]
    fn files_dirs_symlinks_and_hardlinks_are_created_with_their_metadata() -> TestResult {
        let t = tar_of(&[
            E::Dir("./bin/"),
            E::File("./bin/tool", b"#!/bin/sh\n", 0o4755),
            E::Sym("./bin/alias", "tool"),
            E::Link("./bin/again", "bin/tool"),
            E::File("/abs/file", b"x", 0o640),
            E::Char("dev/null"),
        ]);
        let (d, stats) = unpack(&[t], UnpackLimits::default())?;
        let tool = std::fs::metadata(d.path().join("bin/tool"))?;
        assert_eq!(tool.permissions().mode() & 0o7777, 0o4755);
        assert_eq!(tool.mtime(), 1_700_000_000);
        if nix::unistd::geteuid().is_root() {
            assert_eq!((tool.uid(), tool.gid()), (1000, 1000));
        }
        assert_eq!(std::fs::read_link(d.path().join("bin/alias"))?, PathBuf::from("tool"));
        assert_eq!(std::fs::metadata(d.path().join("bin/again"))?.ino(), tool.ino());
        assert_eq!(std::fs::read(d.path().join("abs/file"))?, b"x", "absolute paths land under the root");
        assert!(!d.path().join("dev/null").exists(), "device nodes are skipped");
        assert_eq!(stats.skipped_devices, 1);
        assert_eq!(std::fs::metadata(d.path().join("bin"))?.mtime(), 1_700_000_000, "dir mtimes are restored");
        Ok(())
    }

    #[test]
    fn dot_dot_is_refused() {
        let r = unpack(&[tar_of(&[E::File("a/../../x", b"x", 0o644)])], UnpackLimits::default());
        assert!(matches!(r, Err(UnpackError::PathEscape { .. })), "{r:?}");
        let r = unpack(&[tar_of(&[E::Link("l", "../etc/passwd")])], UnpackLimits::default());
        assert!(matches!(r, Err(UnpackError::PathEscape { .. })), "{r:?}");
    }

    #[test]
    fn writing_through_a_symlink_is_refused_in_the_same_and_in_later_layers() -> TestResult {
        let outside = tempfile::tempdir()?;
        let target = outside.path().to_str().ok_or("path")?;
        let same = tar_of(&[E::Sym("evil", target), E::File("evil/passwd", b"owned", 0o644)]);
        let r = unpack(&[same], UnpackLimits::default());
        assert!(matches!(r, Err(UnpackError::ThroughSymlink { ref component, .. }) if component == "evil"), "{r:?}");
        let rel = tar_of(&[E::Sym("up", "../../../../../../../../tmp")]);
        let r = unpack(&[rel, tar_of(&[E::File("up/x", b"owned", 0o644)])], UnpackLimits::default());
        assert!(matches!(r, Err(UnpackError::ThroughSymlink { .. })), "{r:?}");
        assert_eq!(std::fs::read_dir(outside.path())?.count(), 0, "nothing was written outside");
        Ok(())
    }

    #[test]
    fn hardlinks_must_point_at_files_inside_the_root() -> TestResult {
        let outside = tempfile::NamedTempFile::new()?;
        let abs = outside.path().to_str().ok_or("path")?;
        // An absolute target is resolved under the root, where it does not exist.
        let r = unpack(&[tar_of(&[E::Link("l", abs)])], UnpackLimits::default());
        assert!(matches!(r, Err(UnpackError::HardlinkTarget { .. })), "{r:?}");
        // Through a symlink to the outside.
        let dir = outside.path().parent().ok_or("parent")?.to_str().ok_or("path")?;
        let name = outside.path().file_name().ok_or("name")?.to_str().ok_or("name")?;
        let t = tar_of(&[E::Sym("out", dir), E::Link("l", &format!("out/{name}"))]);
        let r = unpack(&[t], UnpackLimits::default());
        assert!(matches!(r, Err(UnpackError::ThroughSymlink { .. })), "{r:?}");
        // To a directory.
        let r = unpack(&[tar_of(&[E::Dir("d"), E::Link("l", "d")])], UnpackLimits::default());
        assert!(matches!(r, Err(UnpackError::HardlinkTarget { .. })), "{r:?}");
        Ok(())
    }

    #[test]
    fn whiteouts_hide_lower_layers_only() -> TestResult {
        let lower = tar_of(&[
            E::File("etc/keep", b"k", 0o644),
            E::File("etc/gone", b"g", 0o644),
            E::Dir("var/cache"),
            E::File("var/cache/a", b"a", 0o644),
            E::File("var/cache/sub/b", b"b", 0o644),
            E::File("tree/deep/x", b"x", 0o644),
            E::File("opaque/sub/lower", b"l", 0o644),
            E::File("opaque/lower", b"l", 0o644),
        ]);
        let upper = tar_of(&[
            E::File("etc/.wh.gone", b"", 0o644),
            E::File("var/cache/new", b"n", 0o644),
            E::File("var/cache/.wh..wh..opq", b"", 0o644),
            E::File(".wh.tree", b"", 0o644),
            E::File("same", b"s", 0o644),
            E::File(".wh.same", b"", 0o644),
            E::File("nothing/.wh.here", b"", 0o644),
            E::File("opaque/sub/mine", b"m", 0o644),
            E::File("opaque/.wh..wh..opq", b"", 0o644),
        ]);
        let (d, _) = unpack(&[lower, upper], UnpackLimits::default())?;
        assert!(d.path().join("etc/keep").exists());
        assert!(!d.path().join("etc/gone").exists());
        assert!(!d.path().join("etc/.wh.gone").exists(), "whiteout files are not created");
        let mut cache: Vec<_> = std::fs::read_dir(d.path().join("var/cache"))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        cache.sort();
        assert_eq!(cache, ["new"], "the opaque dir keeps only this layer's entries, even those before the marker");
        assert!(!d.path().join("tree").exists());
        assert!(d.path().join("same").exists(), "a whiteout does not hide its own layer's file");
        assert!(!d.path().join("nothing").exists(), "a whiteout creates no parent");
        assert!(d.path().join("opaque/sub/mine").exists(), "an opaque marker keeps what this layer put beneath");
        assert!(!d.path().join("opaque/sub/lower").exists() && !d.path().join("opaque/lower").exists());
        Ok(())
    }

    #[test]
    fn later_layers_replace_entries_of_any_type() -> TestResult {
        let lower = tar_of(&[E::Dir("a"), E::File("a/f", b"1", 0o644), E::File("b", b"1", 0o644), E::Sym("c", "x")]);
        let upper = tar_of(&[E::File("a", b"2", 0o644), E::Dir("b"), E::File("c", b"3", 0o644)]);
        let (d, _) = unpack(&[lower, upper], UnpackLimits::default())?;
        assert_eq!(std::fs::read(d.path().join("a"))?, b"2");
        assert!(d.path().join("b").is_dir());
        assert_eq!(std::fs::read(d.path().join("c"))?, b"3");
        Ok(())
    }

    #[test]
    fn bounds_stop_tar_bombs() {
        let many = tar_of(&[E::File("a", b"", 0o644), E::File("b", b"", 0o644), E::File("c", b"", 0o644)]);
        let r = unpack(&[many], UnpackLimits { max_entries: 2, ..UnpackLimits::default() });
        assert!(matches!(r, Err(UnpackError::TooManyEntries { limit: 2 })), "{r:?}");
        let big = tar_of(&[E::File("a", &[7; 600], 0o644), E::File("b", &[7; 600], 0o644)]);
        let r = unpack(&[big], UnpackLimits { max_total_bytes: 1000, ..UnpackLimits::default() });
        assert!(matches!(r, Err(UnpackError::TooManyBytes { limit: 1000 })), "{r:?}");
        let long = tar_of(&[E::File("aaaaaaaaaa/bbbbbbbbbb/c", b"", 0o644)]);
        let r = unpack(&[long], UnpackLimits { max_path_len: 16, ..UnpackLimits::default() });
        assert!(matches!(r, Err(UnpackError::PathTooLong { len: 23, limit: 16 })), "{r:?}");
        let names = tar_of(&[E::File("aaaaaaaaaa", b"", 0o644), E::File("bbbbbbbbbb", b"", 0o644)]);
        let r = unpack(&[names], UnpackLimits { max_path_bytes: 15, ..UnpackLimits::default() });
        assert!(matches!(r, Err(UnpackError::TooManyPathBytes { limit: 15 })), "{r:?}");
    }

    #[test]
    fn oversized_extension_records_are_refused_before_buffering() {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::GNULongName);
        h.set_size(MAX_EXTENSION_BYTES + 1);
        set_raw(&mut h.as_old_mut().name, "././@LongLink");
        h.set_cksum();
        let mut data = h.as_bytes().to_vec();
        data.resize(data.len() + 1024, b'a');
        let r = unpack(&[data], UnpackLimits::default());
        assert!(matches!(r, Err(UnpackError::ExtensionTooLarge { .. })), "{r:?}");
    }

    #[test]
    fn outer_archives_keep_only_files_and_links_inside() -> TestResult {
        let t = tar_of(&[
            E::File("a/layer.tar", b"layer", 0o755),
            E::Sym("b/layer.tar", "../a/layer.tar"),
            E::Sym("c", "/etc/passwd"),
            E::Sym("d", "../../outside"),
            E::Char("e"),
        ]);
        let dir = tempfile::tempdir()?;
        let mut u = Unpacker::new(dir.path(), UnpackLimits::default(), StreamKind::Archive, false)?;
        u.apply(&t[..])?;
        u.finish()?;
        let a = std::fs::metadata(dir.path().join("a/layer.tar"))?;
        assert_eq!(a.permissions().mode() & 0o777, 0o600, "archive files are private");
        assert_eq!(std::fs::symlink_metadata(dir.path().join("b/layer.tar"))?.ino(), a.ino());
        for absent in ["c", "d", "e"] {
            assert!(std::fs::symlink_metadata(dir.path().join(absent)).is_err(), "{absent}");
        }
        Ok(())
    }

    #[test]
    fn a_pax_size_that_disagrees_with_the_header_is_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let record = b"12 size=100\n";
        let mut x = tar::Header::new_ustar();
        x.set_entry_type(EntryType::XHeader);
        x.set_size(record.len() as u64);
        x.set_path("PaxHeaders/f").unwrap_or_else(|e| panic!("{e}"));
        x.set_cksum();
        b.append(&x, &record[..]).unwrap_or_else(|e| panic!("{e}"));
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_size(4);
        h.set_path("f").unwrap_or_else(|e| panic!("{e}"));
        h.set_cksum();
        b.append(&h, &b"abcd"[..]).unwrap_or_else(|e| panic!("{e}"));
        let t = b.into_inner().unwrap_or_else(|e| panic!("{e}"));
        let r = unpack(&[t], UnpackLimits::default());
        assert!(matches!(r, Err(UnpackError::BadEntry { ref reason, .. }) if reason.contains("PAX size 100")), "{r:?}");
    }

    #[test]
    fn gnu_long_names_and_pax_paths_are_honoured() -> TestResult {
        let long = format!("{}/file", "d".repeat(150));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"hi"[..])?;
        let (d, _) = unpack(&[b.into_inner()?], UnpackLimits::default())?;
        assert_eq!(std::fs::read(d.path().join(&long))?, b"hi");
        Ok(())
    }

    /// Writes the seed corpus of the `layer_unpack` fuzz target (fuzz/seeds/layer_unpack): the layers these
    /// tests use, hostile ones included, each plain and gzipped. Run it when the unpacker learns new entry
    /// kinds: `cargo test -p bulkhead-oci --lib write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes into the source tree"]
    fn write_fuzz_seeds() -> TestResult {
        use std::io::Write as _;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/layer_unpack");
        std::fs::create_dir_all(&dir)?;
        let seeds = [
            (
                "tree",
                tar_of(&[
                    E::Dir("etc"),
                    E::File("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644),
                    E::Sym("etc/link", "passwd"),
                    E::Link("etc/hard", "etc/passwd"),
                    E::Char("dev-null"),
                ]),
            ),
            (
                "whiteouts",
                tar_of(&[E::Dir("d"), E::File("d/.wh..wh..opq", b"", 0o644), E::File(".wh.gone", b"", 0o644)]),
            ),
            ("dotdot", tar_of(&[E::File("../escaped", b"x", 0o644)])),
            ("symlink-escape", tar_of(&[E::Sym("up", ".."), E::File("up/escaped", b"x", 0o644)])),
            ("absolute-symlink", tar_of(&[E::Sym("etc", "/etc"), E::File("etc/escaped", b"x", 0o644)])),
            ("hardlink-escape", tar_of(&[E::Link("h", "../../etc/passwd")])),
            ("compressible", tar_of(&[E::File("zeros", &[0; 4096], 0o644), E::File("zeros", &[0; 4096], 0o644)])),
        ];
        for (name, tar) in seeds {
            std::fs::write(dir.join(name), &tar)?;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&tar)?;
            std::fs::write(dir.join(format!("{name}.gz")), gz.finish()?)?;
        }
        Ok(())
    }
}
