//! Named network namespaces, as `ip netns` keeps them: a namespace held alive by a bind mount of its
//! nsfs file on `/run/netns/<name>`, so it outlives the thread that made it and every tool finds it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use crate::Error;

/// Where named namespaces live (iproute2's NETNS_RUN_DIR).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Checks a name for CNI's container id rules, which also keep it a plain file name: an alphanumeric,
/// then alphanumerics, `_`, `.` and `-`; at most 128 bytes.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    let mut bytes = name.bytes();
    match bytes.next() {
        None => Err("must not be empty"),
        Some(b) if !b.is_ascii_alphanumeric() => Err("must start with a letter or digit"),
        _ if name.len() > 128 => Err("must be at most 128 bytes"),
        _ if !bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) => {
            Err("must hold only letters, digits, '_', '.' and '-'")
        }
        _ => Ok(()),
    }
}

/// The path of the named namespace `name` (which need not exist).
pub fn path_of(name: &str) -> Result<PathBuf, Error> {
    check_name(name).map_err(|reason| Error::InvalidArgument {
        what: "network namespace name",
        value: name.to_owned(),
        reason,
    })?;
    Ok(Path::new(NETNS_RUN_DIR).join(name))
}

/// Creates the named namespace `name` and returns its path. Fails if one of that name exists.
pub fn create(name: &str) -> Result<PathBuf, Error> {
    let path = path_of(name)?;
    let err = |op, source| Error::Netns { path: path.clone(), op, source };
    fs::create_dir_all(NETNS_RUN_DIR).map_err(|e| err("creating /run/netns", e))?;
    make_run_dir_shared().map_err(|e| err("making /run/netns a shared mount", e))?;
    OpenOptions::new().write(true).create_new(true).open(&path).map_err(|e| err("creating the mount point", e))?;
    // A thread of its own enters a new namespace and pins it with the bind mount, then ends; the
    // namespace stays alive through the mount and no other thread ever changes namespace.
    let target = path.clone();
    let pinned = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
            Ok(())
        })
        .map_err(|e| err("starting a thread", e))?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the thread panicked")));
    if let Err(e) = pinned {
        // Leave nothing behind: the name stays free for a retry.
        let _ = fs::remove_file(&path);
        return Err(err("entering a new namespace and bind-mounting it", e));
    }
    tracing::debug!(netns = %path.display(), "network namespace created");
    Ok(path)
}

/// Deletes the namespace at `path` (its bind mount and mount point). Idempotent: a namespace that is
/// already gone is success. The namespace itself ends when its last user (process or open fd) goes.
pub fn delete(path: &Path) -> Result<(), Error> {
    let err = |op, source| Error::Netns { path: path.to_owned(), op, source };
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a half-made namespace); ENOENT: gone.
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(err("unmounting", e.into())),
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("removing the mount point", e)),
    }
    tracing::debug!(netns = %path.display(), "network namespace deleted");
    Ok(())
}

/// Opens the namespace at `path`, e.g. for `setns`. Fails if it is not a network namespace.
pub fn open(path: &Path) -> Result<File, Error> {
    let err = |op, source| Error::Netns { path: path.to_owned(), op, source };
    let file = File::open(path).map_err(|e| err("opening", e))?;
    let st = nix::sys::statfs::fstatfs(&file).map_err(|e| err("statfs", e.into()))?;
    if st.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(err("checking it", io::Error::other("not a namespace (is it still mounted?)")));
    }
    Ok(file)
}

/// Makes /run/netns a shared mount, as `ip netns add` does, so namespaces mounted later show in every
/// mount namespace (a container runtime's, a systemd service's private /run excepted).
fn make_run_dir_shared() -> io::Result<()> {
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, NETNS_RUN_DIR, None::<&str>, shared, None::<&str>) {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself, then retry.
        Err(Errno::EINVAL) => {
            mount(Some(NETNS_RUN_DIR), NETNS_RUN_DIR, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)?;
            Ok(mount(None::<&str>, NETNS_RUN_DIR, None::<&str>, shared, None::<&str>)?)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn names_stay_plain_file_names() -> TestResult {
        for ok in ["a", "0abc", "pod_1.2-3", &"x".repeat(128)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "-a", "_a", "a/b", "../etc", "a b", "é", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad}");
            assert!(path_of(bad).is_err(), "{bad}");
        }
        assert_eq!(path_of("pod")?, Path::new("/run/netns/pod"));
        Ok(())
    }

    #[test]
    fn deleting_what_is_not_there_is_fine() -> TestResult {
        let dir = tempfile::tempdir()?;
        delete(&dir.path().join("gone"))?;
        let plain = dir.path().join("plain");
        fs::write(&plain, "")?;
        delete(&plain)?;
        assert!(!plain.exists());
        Ok(())
    }

    #[test]
    fn open_refuses_a_plain_file() -> TestResult {
        let f = tempfile::NamedTempFile::new()?;
        assert!(open(f.path()).is_err());
        Ok(())
    }
}
