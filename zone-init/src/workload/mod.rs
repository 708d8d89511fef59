//! Workloads (containers) inside the zone: their root filesystems, cgroups and processes.
//!
//! The event loop (in [`crate::init`]) drives a workload through these calls:
//!
//! ```text
//! CreateWorkload  image = rootfs::mount_image(&layout, "xvdb")?            erofs, read-only, idempotent
//!                 root  = rootfs::prepare(&layout, id, &image, spec.readonly_rootfs)?
//!                 cg    = cgroup::create(&layout, id, &spec.limits)?
//! StartWorkload   spawned = spawn_workload(&Launch::new(id, spec, root, Some(cg)))?
//!                 -> Spawned { pid, stdin, stdout, stderr, pty_master }   (caller-side fds: non-blocking)
//! Exec            spawn_exec(&ExecLaunch { target: workload pid, cgroup, argv, env, cwd, user, tty, .. })?
//! Resize/Signal   resize(spawned.stdout.as_fd(), rows, cols)?; signal(pid, signo)?
//! SIGCHLD         for r in reap_all()?: exit_status(r.status, cgroup::oom_killed(&cg))  (workload pids)
//! RemoveWorkload  cgroup::remove(&cg)?; rootfs::remove(&layout, id)?
//! ```
//!
//! Process model: init stays single-threaded and never forks to run Rust. [`spawn_workload`] and
//! [`spawn_exec`] run a fresh copy of init's binary as a setup helper (`--workload-setup` /
//! `--exec-setup`, dispatched in `main.rs` before anything else; see [`helper`]), which `clone3`s the
//! process with `CLONE_PARENT`: every workload and exec process is a direct child of init, reaped by init's
//! SIGCHLD handling ([`crate::reap`]) with its real exit status. A workload is pid 1 of its own pid
//! namespace; when it exits the kernel kills the rest of that namespace, execs included. Setup failures
//! (program not found, bad working directory, ...) come back as [`WorkloadError::Setup`] with the failed
//! stage and errno, never as a silent exit 127; the failed process is reaped by the spawn call itself.
//!
//! The paths are in a [`Layout`], so that tests can use temporary directories.

pub mod cgroup;
mod child;
pub mod error;
pub mod helper;
mod protocol;
pub mod rootfs;
mod security;
pub mod spawn;
pub(crate) mod sys;
pub mod volumes;

use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use bulkhead_wire::ExitStatus;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

pub use child::{DEFAULT_PATH, exec_candidates, search_path};
pub use error::{SetupStage, WorkloadError};
pub use helper::{HelperKind, helper_main};
pub use spawn::{
    EXEC_SETUP_ARG, ExecLaunch, Launch, SELF_EXE, Spawned, WORKLOAD_SETUP_ARG, spawn_exec, spawn_workload,
};

/// Where workload state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Where image block devices are (`/dev`).
    pub dev_dir: PathBuf,
    /// Bulkhead's directory on the zone's tmpfs (`/run/bulkhead`): images and workload roots.
    pub run_dir: PathBuf,
    /// The cgroup2 mount (`/sys/fs/cgroup`); workload cgroups are under `workloads/`.
    pub cgroup_root: PathBuf,
}

impl Layout {
    /// The zone's paths.
    pub fn zone() -> Self {
        Layout {
            dev_dir: PathBuf::from("/dev"),
            run_dir: PathBuf::from("/run/bulkhead"),
            cgroup_root: PathBuf::from(crate::cgroup::CGROUP_ROOT),
        }
    }

    /// Where image `device` is mounted: `<run_dir>/images/<device>`.
    pub fn image_dir(&self, device: &str) -> PathBuf {
        self.run_dir.join("images").join(device)
    }

    /// Workload `id`'s directory: `<run_dir>/workloads/<id>` (its `upper`, `work` and `rootfs`).
    pub fn workload_dir(&self, id: u64) -> PathBuf {
        self.run_dir.join("workloads").join(id.to_string())
    }

    /// Workload `id`'s merged root: `<run_dir>/workloads/<id>/rootfs`.
    pub fn rootfs_dir(&self, id: u64) -> PathBuf {
        self.workload_dir(id).join("rootfs")
    }

    /// The parent of all workload cgroups: `<cgroup_root>/workloads`.
    pub fn workloads_cgroup(&self) -> PathBuf {
        self.cgroup_root.join("workloads")
    }

    /// Workload `id`'s cgroup: `<cgroup_root>/workloads/<id>`.
    pub fn cgroup_dir(&self, id: u64) -> PathBuf {
        self.workloads_cgroup().join(id.to_string())
    }
}

impl Default for Layout {
    fn default() -> Self {
        Layout::zone()
    }
}

/// How a workload or exec process ended, for `ZoneToHost::Exited`: the code of an exit; the signal of a
/// signal death (its shell-style code is 128 + signal, see [`ExitStatus::exit_code`]); `OomKilled` for a
/// SIGKILL death when its cgroup recorded an OOM kill (`oom_killed`, from [`cgroup::oom_killed`]). `None` for
/// statuses that are not a termination (stopped, continued, still alive).
pub fn exit_status(status: WaitStatus, oom_killed: bool) -> Option<ExitStatus> {
    match status {
        // waitpid gives the low 8 bits of the exit code, so this never truncates.
        WaitStatus::Exited(_, code) => Some(ExitStatus::Code(u8::try_from(code & 0xff).unwrap_or(u8::MAX))),
        WaitStatus::Signaled(_, Signal::SIGKILL, _) if oom_killed => Some(ExitStatus::OomKilled),
        WaitStatus::Signaled(_, signal, core_dumped) => {
            Some(ExitStatus::Signaled { signal: signal as i32, core_dumped })
        }
        _ => None,
    }
}

/// Sends signal number `signal` (as the host gives it) to `pid`.
///
/// A workload's process is the init of its pid namespace, and the kernel drops signals sent to such an init
/// for which it installed no handler, even from the zone's namespace, with the exception of SIGKILL (and
/// SIGSTOP). So SIGTERM stops only workloads that handle it, as with any container runtime: a stop request
/// escalates to SIGKILL after its grace period.
pub fn signal(pid: Pid, signal: i32) -> Result<(), WorkloadError> {
    let sig = Signal::try_from(signal).map_err(|_| WorkloadError::InvalidSignal { signal })?;
    nix::sys::signal::kill(pid, sig).map_err(|errno| WorkloadError::Kill { pid: pid.as_raw(), signal, errno })
}

/// Sets the window size of a workload's terminal (`pty_master`: [`Spawned::stdout`] of a tty process).
pub fn resize(pty_master: BorrowedFd<'_>, rows: u16, cols: u16) -> Result<(), WorkloadError> {
    sys::set_window_size(pty_master, rows, cols).map_err(WorkloadError::Resize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_keep_their_code_and_signals_their_number() {
        let p = Pid::from_raw(5);
        assert_eq!(exit_status(WaitStatus::Exited(p, 0), false), Some(ExitStatus::Code(0)));
        assert_eq!(exit_status(WaitStatus::Exited(p, 7), true), Some(ExitStatus::Code(7)));
        assert_eq!(exit_status(WaitStatus::Exited(p, 255), false), Some(ExitStatus::Code(255)));
        let killed = exit_status(WaitStatus::Signaled(p, Signal::SIGKILL, false), false);
        assert_eq!(killed, Some(ExitStatus::Signaled { signal: 9, core_dumped: false }));
        assert_eq!(killed.map(|s| s.exit_code()), Some(137));
        let segv = exit_status(WaitStatus::Signaled(p, Signal::SIGSEGV, true), true);
        assert_eq!(segv, Some(ExitStatus::Signaled { signal: 11, core_dumped: true }));
    }

    #[test]
    fn a_sigkill_with_an_oom_kill_recorded_is_an_oom_kill() {
        let p = Pid::from_raw(5);
        let oom = exit_status(WaitStatus::Signaled(p, Signal::SIGKILL, false), true);
        assert_eq!(oom, Some(ExitStatus::OomKilled));
        assert_eq!(oom.map(|s| s.exit_code()), Some(137));
    }

    #[test]
    fn non_terminations_have_no_status() {
        let p = Pid::from_raw(5);
        assert_eq!(exit_status(WaitStatus::StillAlive, false), None);
        assert_eq!(exit_status(WaitStatus::Stopped(p, Signal::SIGSTOP), false), None);
    }

    #[test]
    fn signal_numbers_are_checked() {
        assert!(matches!(signal(Pid::from_raw(1), 0), Err(WorkloadError::InvalidSignal { signal: 0 })));
        assert!(matches!(signal(Pid::from_raw(1), 99), Err(WorkloadError::InvalidSignal { signal: 99 })));
    }

    #[test]
    fn the_zone_layout_has_the_documented_paths() {
        let l = Layout::zone();
        assert_eq!(l.image_dir("xvdb"), PathBuf::from("/run/bulkhead/images/xvdb"));
        assert_eq!(l.rootfs_dir(3), PathBuf::from("/run/bulkhead/workloads/3/rootfs"));
        assert_eq!(l.cgroup_dir(3), PathBuf::from("/sys/fs/cgroup/workloads/3"));
    }
}
