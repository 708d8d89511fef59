//! The setup helper: `bulkhead-zone --workload-setup` or `--exec-setup`, started by [`super::spawn`] with
//! `std::process::Command` (fork+exec), so it is a fresh, single-threaded process in which cloning is safe.
//!
//! It reads its request from fd 0 (the caller's `SOCK_SEQPACKET` socket), opens the cgroup, joins a
//! running workload's namespaces (exec only), then `clone3`s the process with `CLONE_PARENT` (the process
//! becomes a child of the caller, not of the helper) and, for a new workload, `CLONE_NEWNS | CLONE_NEWPID |
//! CLONE_NEWUTS | CLONE_NEWIPC`, starting it directly in its cgroup (`CLONE_INTO_CGROUP`). It reports the
//! pid and exits; the process sets itself up (module `child`) and execs. Failures go back to the caller as
//! `Report::Failed`; the helper writes nothing to its stdout (`/dev/null`) and only says on its stderr (the
//! console) when it cannot even reach the caller.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sched::{CloneFlags, setns};

use super::error::SetupStage;
use super::protocol::{Report, Target, recv_request, send_report};
use super::sys::{self, Forked};
use crate::say;

/// Which helper the binary was started as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelperKind {
    /// `--workload-setup`: a new workload in new namespaces.
    Workload,
    /// `--exec-setup`: a process in a running workload's namespaces.
    Exec,
}

/// Runs the helper; returns its exit code (0: the process was started and reported).
pub fn helper_main(kind: HelperKind) -> i32 {
    let sock = match take_socket() {
        Ok(sock) => sock,
        Err(e) => {
            say!("workload setup helper: fd 0 is not usable: {e}");
            return 2;
        }
    };
    match run(sock.as_fd(), kind) {
        Ok(()) => 0,
        Err(report) => {
            if let Err(e) = send_report(sock.as_fd(), &report, None) {
                say!("workload setup helper: cannot report {report:?} to the caller: {e}");
            }
            1
        }
    }
}

/// Moves the caller's socket off fd 0 (to a close-on-exec descriptor) and puts `/dev/null` on fd 0, so
/// that no descriptor the process does not expect stays open across its exec.
fn take_socket() -> std::io::Result<OwnedFd> {
    let sock = std::io::stdin().as_fd().try_clone_to_owned()?;
    let null = File::options().read(true).write(true).open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    Ok(sock)
}

/// The namespaces an exec joins, in order: the mount namespace last, because joining it changes the root
/// under which `/proc/<pid>/ns` would be looked up (all are opened first anyway).
const JOINED: [(&str, CloneFlags); 5] = [
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// The clone flags for a new workload (its cgroup namespace is created by the process itself, once it is in
/// its cgroup: a cgroup namespace made by clone would be rooted at the helper's cgroup).
pub(crate) const NEW_WORKLOAD_FLAGS: CloneFlags = CloneFlags::CLONE_PARENT
    .union(CloneFlags::CLONE_NEWNS)
    .union(CloneFlags::CLONE_NEWPID)
    .union(CloneFlags::CLONE_NEWUTS)
    .union(CloneFlags::CLONE_NEWIPC);

fn join_namespaces(pid: i32) -> Result<(), Report> {
    let mut files = Vec::with_capacity(JOINED.len());
    for (name, flag) in JOINED {
        let path = format!("/proc/{pid}/ns/{name}");
        let file = File::open(&path).map_err(|e| {
            Report::failed(SetupStage::JoinNamespaces, e.raw_os_error().map(nix::errno::Errno::from_raw), path)
        })?;
        files.push((name, flag, file));
    }
    for (name, flag, file) in files {
        setns(file.as_fd(), flag)
            .map_err(|e| Report::failed(SetupStage::JoinNamespaces, Some(e), format!("setns {name} of pid {pid}")))?;
    }
    Ok(())
}

fn run(sock: BorrowedFd<'_>, kind: HelperKind) -> Result<(), Report> {
    let (request, fds) = recv_request(sock)?;
    let bad = |what: &str| Report::failed(SetupStage::ReadRequest, None, what);
    match (&request.target, kind) {
        (Target::Workload { .. }, HelperKind::Workload) | (Target::Join { .. }, HelperKind::Exec) => {}
        _ => return Err(bad("the request does not match the helper's mode")),
    }
    let stdio: Option<[OwnedFd; 3]> = match (request.process.tty, fds.len()) {
        (true, 0) => None,
        (false, 3) => Some(fds.try_into().map_err(|_| bad("stdio descriptors"))?),
        _ => return Err(bad("a tty process takes no stdio descriptors, a piped one exactly three")),
    };
    let cgroup = match &request.cgroup {
        Some(dir) => Some(File::open(dir).map_err(|e| {
            Report::failed(
                SetupStage::OpenCgroup,
                e.raw_os_error().map(nix::errno::Errno::from_raw),
                dir.display().to_string(),
            )
        })?),
        None => None,
    };
    let flags = match request.target {
        Target::Workload { .. } => NEW_WORKLOAD_FLAGS,
        Target::Join { pid } => {
            // The kernel lets a process start a child in a cgroup only if both its own cgroup and the target
            // are inside its cgroup namespace's root; once the workload's cgroup namespace is joined the
            // helper's cgroup (the zone's) is not (clone3 fails with ENOENT). So the helper moves into the
            // workload's cgroup first, while the path still resolves in the zone's mount namespace.
            if let Some(dir) = &request.cgroup {
                let procs = dir.join("cgroup.procs");
                std::fs::write(&procs, b"0").map_err(|e| {
                    Report::failed(
                        SetupStage::OpenCgroup,
                        e.raw_os_error().map(nix::errno::Errno::from_raw),
                        procs.display().to_string(),
                    )
                })?;
            }
            join_namespaces(pid)?;
            CloneFlags::CLONE_PARENT
        }
    };
    // SAFETY: the helper is a process of its own, started by exec, that never starts a thread, so it is
    // single-threaded here; the child leaves only by exec or exit (`child::run` returns `!`).
    match unsafe { sys::clone3(flags, cgroup.as_ref().map(AsFd::as_fd)) } {
        Err(e) => Err(Report::failed(SetupStage::Clone, Some(e), format!("flags {flags:?}"))),
        Ok(Forked::Child) => super::child::run(sock, &request, stdio),
        Ok(Forked::Parent(pid)) => send_report(sock, &Report::Started { pid: pid.as_raw() }, None)
            .map_err(|e| Report::failed(SetupStage::Clone, Some(e), "reporting the pid")),
    }
}
