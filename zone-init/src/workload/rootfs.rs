//! Workload root filesystems: image devices mounted read-only (erofs), and per workload an overlayfs whose
//! writable layer lives on the zone's tmpfs `/run`.
//!
//! ```text
//! /run/bulkhead/images/<device>            erofs image, read-only        (mount_image)
//! /run/bulkhead/workloads/<id>/upper       the workload's writes          (prepare)
//! /run/bulkhead/workloads/<id>/work        overlayfs's work directory
//! /run/bulkhead/workloads/<id>/rootfs      the merged root it runs in
//! ```
//!
//! A read-only workload gets no upper layer: its overlay has two lower layers, `upper` (holding only the
//! mount points `/proc`, `/sys` and `/dev`, which an image may lack) over the image. A writable one gets the
//! same mount points created in `upper`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::Layout;
use super::error::WorkloadError;
use super::volumes::{BindMount, resolve_in_root};

/// The mount points the process needs in its root (the process mounts on them).
pub const MOUNT_POINTS: [&str; 3] = ["proc", "sys", "dev"];

/// Checks that `device` names a Xen PV disk: `xvd` and one or two lowercase letters (`xvdb`, `xvdaa`).
pub fn validate_device(device: &str) -> Result<(), WorkloadError> {
    let letters = device.strip_prefix("xvd").unwrap_or("");
    if (1..=2).contains(&letters.len()) && letters.bytes().all(|b| b.is_ascii_lowercase()) {
        Ok(())
    } else {
        Err(WorkloadError::InvalidDevice { device: device.to_owned() })
    }
}

fn create_dir(path: &Path) -> Result<(), WorkloadError> {
    std::fs::create_dir_all(path).map_err(|source| WorkloadError::CreateDir { path: path.to_path_buf(), source })
}

/// Whether something is mounted on the directory `path`: it is on another device than its parent (or it is
/// `/`). Enough for the mounts made here, which never bind a filesystem onto itself.
pub fn is_mount_point(path: &Path) -> Result<bool, WorkloadError> {
    let stat = |p: &Path| std::fs::metadata(p).map_err(|source| WorkloadError::Stat { path: p.to_path_buf(), source });
    let here = stat(path)?;
    let parent = stat(&path.join(".."))?;
    Ok(here.dev() != parent.dev() || here.ino() == parent.ino())
}

/// Mounts the erofs filesystem on block device `device` read-only (also `nodev`, `nosuid`) on `target`.
pub fn mount_erofs(device: &Path, target: &Path) -> Result<(), WorkloadError> {
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    mount(Some(device), target, Some("erofs"), flags, None::<&str>).map_err(|errno| WorkloadError::MountImage {
        device: device.to_path_buf(),
        target: target.to_path_buf(),
        errno,
    })
}

/// Mounts the image on `<dev_dir>/<device>` at `<run_dir>/images/<device>` (see [`mount_erofs`]) and returns
/// that directory. Idempotent: when something is mounted there already, returns it as is.
pub fn mount_image(layout: &Layout, device: &str) -> Result<PathBuf, WorkloadError> {
    validate_device(device)?;
    let target = layout.image_dir(device);
    create_dir(&target)?;
    if !is_mount_point(&target)? {
        mount_erofs(&layout.dev_dir.join(device), &target)?;
    }
    Ok(target)
}

/// The overlayfs options for a root over `image`: writable with `upper` and `work`, or read-only with
/// `upper` as a second lower layer. overlayfs options cannot carry `,`, `:` or `\` in paths unescaped;
/// such paths are refused rather than escaped.
pub fn overlay_options(image: &Path, upper: &Path, work: &Path, readonly: bool) -> Result<String, WorkloadError> {
    for p in [image, upper, work] {
        let s = p.to_str().unwrap_or(",");
        if s.contains([',', ':', '\\']) {
            return Err(WorkloadError::InvalidLayerPath { path: p.to_path_buf() });
        }
    }
    let (image, upper, work) = (image.display(), upper.display(), work.display());
    Ok(if readonly {
        format!("lowerdir={upper}:{image}")
    } else {
        format!("lowerdir={image},upperdir={upper},workdir={work}")
    })
}

/// Builds workload `workload_id`'s root over `image_root` (see the module docs) and returns the merged
/// directory. Idempotent: when the root is mounted already, returns it as is (whatever `readonly` says).
pub fn prepare(layout: &Layout, workload_id: u64, image_root: &Path, readonly: bool) -> Result<PathBuf, WorkloadError> {
    let dir = layout.workload_dir(workload_id);
    let (upper, work, rootfs) = (dir.join("upper"), dir.join("work"), dir.join("rootfs"));
    for d in [&upper, &work, &rootfs] {
        create_dir(d)?;
    }
    if is_mount_point(&rootfs)? {
        return Ok(rootfs);
    }
    for m in MOUNT_POINTS {
        create_dir(&upper.join(m))?;
    }
    let options = overlay_options(image_root, &upper, &work, readonly)?;
    let flags = if readonly { MsFlags::MS_RDONLY } else { MsFlags::empty() };
    mount(Some("overlay"), &rootfs, Some("overlay"), flags, Some(options.as_str()))
        .map_err(|errno| WorkloadError::MountOverlay { workload_id, target: rootfs.clone(), errno })?;
    Ok(rootfs)
}

/// Creates the mount points of `mounts` that `image_root` lacks in the workload's `upper` directory, for
/// a read-only root (nothing can be created in it once it is mounted; `upper` is its top lower layer).
/// Each destination is resolved in the image first, so a mount point below an image's symlink (Debian's
/// `/var/run -> /run`) is made where the link leads and the link keeps working. Call before [`prepare`].
pub fn create_mount_points(
    layout: &Layout,
    workload_id: u64,
    image_root: &Path,
    mounts: &[BindMount],
) -> Result<(), WorkloadError> {
    let upper = layout.workload_dir(workload_id).join("upper");
    for m in mounts {
        let in_image = resolve_in_root(image_root, &m.destination).map_err(|errno| WorkloadError::CreateDir {
            path: PathBuf::from(&m.destination),
            source: std::io::Error::from_raw_os_error(errno as i32),
        })?;
        if std::fs::symlink_metadata(&in_image).is_ok() {
            continue;
        }
        let Ok(rel) = in_image.strip_prefix(image_root) else { continue };
        let target = upper.join(rel);
        if std::fs::metadata(&m.source).is_ok_and(|md| md.is_dir()) {
            create_dir(&target)?;
        } else {
            if let Some(parent) = target.parent() {
                create_dir(parent)?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&target)
                .map_err(|source| WorkloadError::CreateDir { path: target.clone(), source })?;
        }
    }
    Ok(())
}

/// Unmounts workload `workload_id`'s root (lazily: a process still inside keeps it alive) and deletes its
/// directory with the writable layer. Idempotent: a workload without a root is fine.
pub fn remove(layout: &Layout, workload_id: u64) -> Result<(), WorkloadError> {
    let dir = layout.workload_dir(workload_id);
    let rootfs = dir.join("rootfs");
    match umount2(&rootfs, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point; ENOENT: no such directory.
        Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
        Err(errno) => return Err(WorkloadError::Unmount { target: rootfs, errno }),
    }
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(WorkloadError::RemoveDir { path: dir, source: e }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_xen_pv_disk_names_are_image_devices() {
        for good in ["xvda", "xvdb", "xvdz", "xvdaa", "xvdzz"] {
            assert!(validate_device(good).is_ok(), "{good}");
        }
        for bad in ["", "xvd", "xvdaaa", "xvdA", "xvd1", "sda", "xvda1", "../xvda", "xvd/a", "vda", " xvda"] {
            assert!(matches!(validate_device(bad), Err(WorkloadError::InvalidDevice { .. })), "{bad:?}");
        }
    }

    #[test]
    fn overlay_options_for_writable_and_read_only_roots() -> Result<(), WorkloadError> {
        let (i, u, w) = (Path::new("/i"), Path::new("/w/1/upper"), Path::new("/w/1/work"));
        assert_eq!(overlay_options(i, u, w, false)?, "lowerdir=/i,upperdir=/w/1/upper,workdir=/w/1/work");
        assert_eq!(overlay_options(i, u, w, true)?, "lowerdir=/w/1/upper:/i");
        for bad in ["/a,b", "/a:b", "/a\\b"] {
            assert!(matches!(
                overlay_options(Path::new(bad), u, w, false),
                Err(WorkloadError::InvalidLayerPath { .. })
            ));
        }
        Ok(())
    }

    #[test]
    fn removing_a_workload_that_has_no_root_is_fine() -> Result<(), Box<dyn std::error::Error>> {
        let run = std::env::temp_dir().join(format!("bulkhead-zone-rootfs-{}", std::process::id()));
        let layout = Layout { run_dir: run.clone(), ..Layout::zone() };
        remove(&layout, 7)?;
        std::fs::create_dir_all(layout.workload_dir(7).join("upper/x"))?;
        remove(&layout, 7)?;
        assert!(!layout.workload_dir(7).exists());
        std::fs::remove_dir_all(run)?;
        Ok(())
    }

    #[test]
    fn the_root_directory_is_a_mount_point_and_a_plain_directory_is_not() -> Result<(), WorkloadError> {
        assert!(is_mount_point(Path::new("/"))?);
        let dir = std::env::temp_dir().join(format!("bulkhead-zone-mp-{}", std::process::id()));
        create_dir(&dir)?;
        let plain = is_mount_point(&dir);
        let _ = std::fs::remove_dir(&dir);
        assert!(!plain?);
        Ok(())
    }
}
