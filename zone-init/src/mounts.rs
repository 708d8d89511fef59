//! The filesystems every zone has, mounted by init before anything else runs.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};

use crate::error::InitError;

/// One mount init performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    /// The mount source (a name for pseudo filesystems).
    pub source: &'static str,
    /// The mount point; created first (mode 0755) if missing.
    pub target: &'static str,
    /// The filesystem type.
    pub fstype: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// Filesystem options.
    pub data: Option<&'static str>,
    /// Whether `EBUSY` means "already mounted" (devtmpfs, which the kernel may have mounted itself).
    pub busy_ok: bool,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);
const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

/// The mounts, in order (each target lies on a filesystem mounted before it).
pub const MOUNTS: [MountSpec; 8] = [
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        busy_ok: false,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        busy_ok: false,
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
        busy_ok: true,
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620"),
        busy_ok: false,
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
        busy_ok: false,
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=0755"),
        busy_ok: false,
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
        busy_ok: false,
    },
    MountSpec {
        source: "cgroup2",
        target: crate::cgroup::CGROUP_ROOT,
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("nsdelegate"),
        busy_ok: false,
    },
];

/// Whether a mount's result counts as success.
pub fn mount_ok(spec: &MountSpec, result: Result<(), Errno>) -> Result<(), Errno> {
    match result {
        Err(Errno::EBUSY) if spec.busy_ok => Ok(()),
        r => r,
    }
}

fn mount_one(spec: &MountSpec) -> Result<(), InitError> {
    let target = Path::new(spec.target);
    if !target.is_dir() {
        std::fs::create_dir_all(target)
            .map_err(|source| InitError::CreateDir { path: target.to_path_buf(), source })?;
    }
    let r = mount(Some(spec.source), target, Some(spec.fstype), spec.flags, spec.data);
    mount_ok(spec, r).map_err(|source| InitError::Mount { fstype: spec.fstype, target: spec.target, source })
}

/// Mounts [`MOUNTS`] and points `/dev/ptmx` at the private devpts instance.
pub fn mount_all() -> Result<(), InitError> {
    for spec in &MOUNTS {
        mount_one(spec)?;
    }
    // devtmpfs has a /dev/ptmx node for the initial devpts instance; with `newinstance` the zone's ptys
    // live in /dev/pts, whose ptmx is the one to use.
    match std::fs::remove_file("/dev/ptmx") {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(InitError::LinkPtmx(e)),
    }
    std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx").map_err(InitError::LinkPtmx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_sits_on_an_earlier_mount_or_the_root() {
        for (i, m) in MOUNTS.iter().enumerate() {
            let parent = Path::new(m.target).parent().and_then(|p| p.to_str()).unwrap_or("/");
            let covered = parent == "/" || MOUNTS[..i].iter().any(|e| parent.starts_with(e.target));
            assert!(covered, "{} is mounted before its parent", m.target);
        }
    }

    #[test]
    fn only_devtmpfs_tolerates_ebusy() {
        for m in &MOUNTS {
            assert_eq!(mount_ok(m, Err(Errno::EBUSY)).is_ok(), m.fstype == "devtmpfs", "{}", m.target);
            assert_eq!(mount_ok(m, Err(Errno::EPERM)), Err(Errno::EPERM));
            assert_eq!(mount_ok(m, Ok(())), Ok(()));
        }
    }

    #[test]
    fn devpts_is_a_private_instance_and_cgroup2_delegates() {
        let find = |t: &str| MOUNTS.iter().find(|m| m.target == t).map(|m| m.data);
        assert_eq!(find("/dev/pts"), Some(Some("newinstance,ptmxmode=0666,mode=0620")));
        assert_eq!(find("/sys/fs/cgroup"), Some(Some("nsdelegate")));
    }
}
