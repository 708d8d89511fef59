//! Leaving the initramfs: the kernel starts init on `rootfs`, the initramfs, which can never be unmounted
//! or pivoted away from (`pivot_root(2)` refuses it with EINVAL). Workloads get their root with
//! `pivot_root`, so init first moves the zone onto a tmpfs, the way `switch_root` does: a tmpfs holding
//! only init's binary is moved over `/`, init chroots into it and executes itself again, still PID 1.
//! The copy in the initramfs is deleted, so the zone does not keep two in RAM.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use nix::mount::{MsFlags, mount};

/// Present at the root once init runs from its tmpfs.
pub const MARKER: &str = "/.bulkhead-root";
/// Where the tmpfs is prepared before it is moved over `/`.
const STAGING: &str = "/newroot";
/// Init's path, in the initramfs and on the tmpfs.
const INIT: &str = "/init";
/// Directories init's mounts need on the new root.
const DIRS: [&str; 6] = ["dev", "proc", "sys", "run", "tmp", "root"];

/// Whether init still runs from the initramfs.
pub fn on_initramfs() -> bool {
    !Path::new(MARKER).exists()
}

/// Moves the zone onto a fresh tmpfs and re-executes init there. Returns only on failure.
pub fn switch_to_tmpfs() -> std::io::Error {
    match prepare() {
        // exec replaces this process (PID 1 stays PID 1); it returns only an error.
        Ok(()) => std::process::Command::new(INIT).exec(),
        Err(e) => e,
    }
}

fn prepare() -> std::io::Result<()> {
    let staging = Path::new(STAGING);
    std::fs::create_dir_all(staging)?;
    mount(Some("tmpfs"), staging, Some("tmpfs"), MsFlags::MS_NOSUID, Some("mode=0755"))
        .map_err(std::io::Error::from)?;
    for d in DIRS {
        std::fs::create_dir_all(staging.join(d))?;
    }
    std::fs::set_permissions(staging.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::set_permissions(staging.join("root"), std::fs::Permissions::from_mode(0o700))?;
    let new_init = staging.join(INIT.trim_start_matches('/'));
    std::fs::copy(INIT, &new_init)?;
    std::fs::set_permissions(&new_init, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(staging.join(MARKER.trim_start_matches('/')), b"")?;
    // The running binary stays mapped; its initramfs copy only costs RAM from here on.
    std::fs::remove_file(INIT)?;
    nix::unistd::chdir(staging).map_err(std::io::Error::from)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(std::io::Error::from)?;
    nix::unistd::chroot(".").map_err(std::io::Error::from)?;
    nix::unistd::chdir("/").map_err(std::io::Error::from)
}
