//! Applying a workload's security settings in the new process, in runc's order: masked and read-only paths
//! right after the root is entered; before the user switch the bounding set is cut (dropping needs
//! CAP_SETPCAP, which root still holds) and permitted capabilities are kept across it; after it the
//! effective, permitted, inheritable and ambient sets are set, then no_new_privs, and the seccomp programs
//! last, right before execve. Without no_new_privs installing a filter needs CAP_SYS_ADMIN, so then the
//! filters go in before the user switch, as runc does (the remaining setup calls must pass them).
//!
//! Everything here was resolved on the host; the zone applies it as given.

use std::path::Path;

use bulkhead_wire::{Capabilities, Security};
use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sys::statvfs::{FsFlags, statvfs};

use super::error::SetupStage;
use super::protocol::Report;
use super::sys;

fn fail(stage: SetupStage, detail: impl Into<String>) -> impl FnOnce(Errno) -> Report {
    move |e| Report::failed(stage, Some(e), detail)
}

/// Hides each path: `/dev/null` over a file, an empty read-only tmpfs over a directory; missing paths are
/// skipped. Runs inside the new root.
pub(crate) fn mask_paths(paths: &[String]) -> Result<(), Report> {
    for p in paths {
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Report::failed(SetupStage::MaskPaths, e.raw_os_error().map(Errno::from_raw), p)),
        };
        if meta.is_dir() {
            mount(Some("tmpfs"), p.as_str(), Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=0"))
                .map_err(fail(SetupStage::MaskPaths, format!("tmpfs on {p}")))?;
        } else {
            mount(Some("/dev/null"), p.as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(fail(SetupStage::MaskPaths, format!("/dev/null on {p}")))?;
        }
    }
    Ok(())
}

/// Makes each path read-only (bound onto itself, remounted read-only with its other flags kept); missing
/// paths are skipped. Runs inside the new root.
pub(crate) fn readonly_paths(paths: &[String]) -> Result<(), Report> {
    for p in paths {
        let path = Path::new(p);
        match mount(Some(path), path, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>) {
            Ok(()) => {}
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(Report::failed(SetupStage::ReadonlyPaths, Some(e), format!("bind {p}"))),
        }
        let st = statvfs(path).map_err(fail(SetupStage::ReadonlyPaths, format!("statvfs {p}")))?;
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        for (have, keep) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ] {
            if st.flags().contains(have) {
                flags |= keep;
            }
        }
        mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
            .map_err(fail(SetupStage::ReadonlyPaths, format!("remount {p} read-only")))?;
    }
    Ok(())
}

/// Installs the seccomp programs in order.
pub(crate) fn install_seccomp(security: &Security) -> Result<(), Report> {
    for (i, program) in security.seccomp.iter().enumerate() {
        sys::install_seccomp(&program.0).map_err(fail(
            SetupStage::Seccomp,
            format!("program {} of {} ({} instructions)", i + 1, security.seccomp.len(), program.0.len()),
        ))?;
    }
    Ok(())
}

/// Before the user switch: filters that must go in while still privileged, the bounding set, and keeping
/// the permitted set across a change of uid.
pub(crate) fn before_user_switch(security: &Security) -> Result<(), Report> {
    if !security.no_new_privs {
        install_seccomp(security)?;
    }
    let bounding = security.capabilities.bounding;
    for cap in (0..=Capabilities::LAST).filter(|c| bounding & (1 << c) == 0) {
        match sys::drop_bounding(cap) {
            // A capability the kernel does not know is not in any set.
            Ok(()) | Err(Errno::EINVAL) => {}
            Err(e) => {
                return Err(Report::failed(
                    SetupStage::Capabilities,
                    Some(e),
                    format!("dropping {cap} from the bounding set"),
                ));
            }
        }
    }
    sys::set_keep_caps().map_err(fail(SetupStage::Capabilities, "PR_SET_KEEPCAPS"))
}

/// After the user switch, right before execve: the capability sets, no_new_privs, and the filters unless
/// they are in already.
pub(crate) fn before_exec(security: &Security) -> Result<(), Report> {
    let c = &security.capabilities;
    sys::capset(c.effective, c.permitted, c.inheritable).map_err(fail(
        SetupStage::Capabilities,
        format!("capset effective {:#x} permitted {:#x} inheritable {:#x}", c.effective, c.permitted, c.inheritable),
    ))?;
    sys::set_ambient(c.ambient).map_err(fail(SetupStage::Capabilities, format!("ambient {:#x}", c.ambient)))?;
    if security.no_new_privs {
        sys::set_no_new_privs().map_err(fail(SetupStage::NoNewPrivs, "PR_SET_NO_NEW_PRIVS"))?;
        install_seccomp(security)?;
    }
    Ok(())
}
