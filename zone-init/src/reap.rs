//! Reaping children as PID 1: every orphan of the zone ends up here.
//!
//! On each SIGCHLD, [`reap_all`] calls `waitpid(-1, WNOHANG)` until no exited child is left (several exits
//! can share one SIGCHLD), and [`exit_code`] turns each status into a shell-style exit code: the code for
//! `Exited`, 128 + signal number for `Signaled` (never only `WIFEXITED`: style.md §7 item 6). Each
//! [`Reaped`] also keeps the full [`WaitStatus`], so the event loop can tell a workload's exit code from a
//! signal death and map it with [`crate::workload::exit_status`].

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// A child that has terminated, with its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    /// The child's pid.
    pub pid: Pid,
    /// Its exit code: the code it exited with, or 128 + the number of the signal that killed it.
    pub code: i32,
    /// The status `waitpid` returned (always `Exited` or `Signaled`).
    pub status: WaitStatus,
}

/// The exit code of a terminated child, or `None` for statuses that are not a termination (stopped,
/// continued, still alive).
pub fn exit_code(status: WaitStatus) -> Option<(Pid, i32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid, code)),
        WaitStatus::Signaled(pid, signal, _core_dumped) => Some((pid, 128 + signal as i32)),
        _ => None,
    }
}

/// Reaps every child that has terminated, without blocking. Having no children at all is not an error.
pub fn reap_all() -> Result<Vec<Reaped>, Errno> {
    let mut reaped = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(reaped),
            Ok(status) => {
                if let Some((pid, code)) = exit_code(status) {
                    reaped.push(Reaped { pid, code, status });
                }
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn exits_keep_their_code() {
        let p = Pid::from_raw(42);
        assert_eq!(exit_code(WaitStatus::Exited(p, 0)), Some((p, 0)));
        assert_eq!(exit_code(WaitStatus::Exited(p, 7)), Some((p, 7)));
        assert_eq!(exit_code(WaitStatus::Exited(p, 255)), Some((p, 255)));
    }

    #[test]
    fn signal_deaths_are_128_plus_signo() {
        let p = Pid::from_raw(9);
        assert_eq!(exit_code(WaitStatus::Signaled(p, Signal::SIGKILL, false)), Some((p, 137)));
        assert_eq!(exit_code(WaitStatus::Signaled(p, Signal::SIGTERM, false)), Some((p, 143)));
        assert_eq!(exit_code(WaitStatus::Signaled(p, Signal::SIGSEGV, true)), Some((p, 139)));
    }

    #[test]
    fn non_terminations_have_no_code() {
        let p = Pid::from_raw(3);
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
        assert_eq!(exit_code(WaitStatus::Stopped(p, Signal::SIGSTOP)), None);
        assert_eq!(exit_code(WaitStatus::Continued(p)), None);
    }
}
