//! The errors of the workload machinery, one variant per failed operation.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bulkhead_wire::ErrorCode;
use nix::errno::Errno;
use serde::{Deserialize, Serialize};

/// The step of a workload or exec process's setup that failed, as its helper or the process itself
/// reported it (see [`crate::workload::spawn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SetupStage {
    /// The helper reading its request from the caller.
    ReadRequest,
    /// Opening the workload's cgroup directory.
    OpenCgroup,
    /// Joining the namespaces of a running workload (exec).
    JoinNamespaces,
    /// `clone3` of the process.
    Clone,
    /// A new cgroup namespace.
    CgroupNamespace,
    /// Making every mount private in the new mount namespace.
    PrivateMounts,
    /// Mounting the root filesystem and /proc, /sys, /dev inside it.
    Mounts,
    /// Creating device nodes and links in the workload's /dev.
    DevNodes,
    /// `pivot_root` into the root filesystem and detaching the old root.
    PivotRoot,
    /// Setting the workload's hostname.
    Hostname,
    /// `setsid`.
    Session,
    /// Opening the pseudo-terminal and handing its master to the caller.
    Pty,
    /// Putting the stdio descriptors in place.
    Stdio,
    /// `setgroups`, `setgid` or `setuid`.
    User,
    /// Changing to the working directory.
    Cwd,
    /// Preparing the descriptor table for exec.
    CloseFds,
    /// `execve` of the program (not found, not executable, ...).
    Exec,
    /// Hiding the masked paths.
    MaskPaths,
    /// Making the read-only paths read-only.
    ReadonlyPaths,
    /// Setting the capability sets.
    Capabilities,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// Installing the seccomp filters.
    Seccomp,
    /// Binding volumes into the root.
    Volumes,
}

impl fmt::Display for SetupStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SetupStage::ReadRequest => "reading the setup request",
            SetupStage::OpenCgroup => "opening the cgroup",
            SetupStage::JoinNamespaces => "joining the workload's namespaces",
            SetupStage::Clone => "clone3",
            SetupStage::CgroupNamespace => "creating the cgroup namespace",
            SetupStage::PrivateMounts => "making mounts private",
            SetupStage::Mounts => "mounting the root filesystem",
            SetupStage::DevNodes => "populating /dev",
            SetupStage::PivotRoot => "pivot_root",
            SetupStage::Hostname => "setting the hostname",
            SetupStage::Session => "setsid",
            SetupStage::Pty => "allocating the terminal",
            SetupStage::Stdio => "setting up stdio",
            SetupStage::User => "switching user",
            SetupStage::Cwd => "changing to the working directory",
            SetupStage::CloseFds => "closing inherited descriptors",
            SetupStage::Exec => "exec",
            SetupStage::MaskPaths => "masking paths",
            SetupStage::ReadonlyPaths => "making paths read-only",
            SetupStage::Capabilities => "setting capabilities",
            SetupStage::NoNewPrivs => "setting no_new_privs",
            SetupStage::Seccomp => "installing the seccomp filter",
            SetupStage::Volumes => "binding volumes into the root",
        })
    }
}

/// A workload operation failed. Each variant names the operation; the cause is in `source()`.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// An image device name that is not a Xen PV disk (`xvd` and one or two lowercase letters).
    #[error("invalid image device name {device:?}: expected xvd followed by one or two lowercase letters")]
    InvalidDevice {
        /// The name as given.
        device: String,
    },
    /// A path that cannot be an overlayfs layer (overlayfs options cannot carry `,`, `:` or `\`).
    #[error("{path} cannot be an overlay layer: it contains ',', ':' or '\\'")]
    InvalidLayerPath {
        /// The path.
        path: PathBuf,
    },
    /// A process description the zone cannot run (the wire protocol's validation rules out these).
    #[error("invalid process: {reason}")]
    InvalidProcess {
        /// What is wrong.
        reason: &'static str,
    },
    /// Creating a directory.
    #[error("creating directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Looking at a path (to see whether something is mounted there).
    #[error("inspecting {path}")]
    Stat {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Mounting an image device (erofs).
    #[error("mounting image {device} (erofs, read-only) on {target}")]
    MountImage {
        /// The block device.
        device: PathBuf,
        /// The mount point.
        target: PathBuf,
        /// The cause.
        #[source]
        errno: Errno,
    },
    /// Mounting a workload's root overlay.
    #[error("mounting the overlay root of workload {workload_id} on {target}")]
    MountOverlay {
        /// The workload.
        workload_id: u64,
        /// The mount point.
        target: PathBuf,
        /// The cause.
        #[source]
        errno: Errno,
    },
    /// Unmounting.
    #[error("unmounting {target}")]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// The cause.
        #[source]
        errno: Errno,
    },
    /// Removing a workload's directory tree.
    #[error("removing {path}")]
    RemoveDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading a cgroup file.
    #[error("reading {path}")]
    ReadCgroup {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing a cgroup file (a limit, `cgroup.subtree_control`, `cgroup.kill`).
    #[error("writing {value:?} to {path}")]
    WriteCgroup {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A limit was asked for but its controller is not enabled for the workload cgroup.
    #[error("cannot apply the limit: {file} does not exist in {cgroup} (controller not available)")]
    LimitUnsupported {
        /// The limit's file, e.g. `memory.max`.
        file: &'static str,
        /// The workload cgroup.
        cgroup: PathBuf,
    },
    /// Removing a cgroup that still has processes; they were sent SIGKILL through `cgroup.kill`, retry once
    /// they are reaped.
    #[error("cgroup {path} still has processes (killed them; retry after reaping)")]
    CgroupBusy {
        /// The cgroup.
        path: PathBuf,
    },
    /// Removing a cgroup directory.
    #[error("removing cgroup {path}")]
    RemoveCgroup {
        /// The cgroup.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Creating the socket or pipes that connect the caller to the helper and the process.
    #[error("creating the {what}")]
    Channel {
        /// Which one.
        what: &'static str,
        /// The cause.
        #[source]
        errno: Errno,
    },
    /// Starting the setup helper (`<exe> --workload-setup`).
    #[error("starting the setup helper {exe}")]
    StartHelper {
        /// The helper executable.
        exe: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Encoding the request for the helper.
    #[error("encoding the setup request")]
    EncodeRequest(#[source] postcard::Error),
    /// The request is larger than the helper accepts.
    #[error("the setup request is {len} bytes, more than the {max} a helper accepts")]
    RequestTooLarge {
        /// Its encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Sending the request to the helper.
    #[error("sending the setup request to the helper")]
    SendRequest(#[source] Errno),
    /// Receiving a report from the helper or the new process.
    #[error("receiving the setup report")]
    ReceiveReport(#[source] Errno),
    /// A report that does not decode or does not fit the protocol.
    #[error("malformed setup report: {reason}")]
    BadReport {
        /// What was wrong.
        reason: &'static str,
    },
    /// The helper and the process did not finish setup in time; both were killed.
    #[error("workload setup did not finish within {after:?}")]
    SetupTimeout {
        /// The limit.
        after: Duration,
    },
    /// The helper ended without reporting the new process.
    #[error("the setup helper exited ({status}) without starting the process")]
    HelperFailed {
        /// How the helper ended.
        status: String,
    },
    /// Waiting for the helper to exit.
    #[error("waiting for the setup helper")]
    WaitHelper(#[source] std::io::Error),
    /// The helper or the new process reported a failed setup step.
    #[error("workload setup failed at {stage}: {detail}")]
    Setup {
        /// The step.
        stage: SetupStage,
        /// What it was doing (paths, program names).
        detail: String,
        /// The system error, if there was one.
        #[source]
        errno: Option<Errno>,
    },
    /// Making a caller-side descriptor non-blocking.
    #[error("making the workload's stdio non-blocking")]
    NonBlocking(#[source] Errno),
    /// A signal number that is not a signal.
    #[error("{signal} is not a signal number")]
    InvalidSignal {
        /// The number.
        signal: i32,
    },
    /// Sending a signal.
    #[error("sending signal {signal} to pid {pid}")]
    Kill {
        /// The process.
        pid: i32,
        /// The signal.
        signal: i32,
        /// The cause.
        #[source]
        errno: Errno,
    },
    /// Setting a terminal's window size.
    #[error("resizing the terminal")]
    Resize(#[source] Errno),
}

impl WorkloadError {
    /// The code to report to the host for this error.
    pub fn code(&self) -> ErrorCode {
        use WorkloadError as E;
        match self {
            E::InvalidDevice { .. }
            | E::InvalidLayerPath { .. }
            | E::InvalidSignal { .. }
            | E::InvalidProcess { .. } => ErrorCode::InvalidRequest,
            E::LimitUnsupported { .. } => ErrorCode::Unsupported,
            E::Setup { stage: SetupStage::Exec | SetupStage::Cwd | SetupStage::User, .. } => ErrorCode::SpawnFailed,
            E::Kill { errno: Errno::ESRCH, .. } => ErrorCode::NotFound,
            E::Setup { errno: Some(e), .. }
            | E::Channel { errno: e, .. }
            | E::MountOverlay { errno: e, .. }
            | E::MountImage { errno: e, .. }
                if resource_exhausted(*e) =>
            {
                ErrorCode::ResourceExhausted
            }
            _ => ErrorCode::Internal,
        }
    }
}

fn resource_exhausted(e: Errno) -> bool {
    matches!(e, Errno::ENOMEM | Errno::EAGAIN | Errno::EMFILE | Errno::ENFILE | Errno::ENOSPC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_failures_are_spawn_failures_and_bad_input_is_invalid() {
        let setup = |stage, errno| WorkloadError::Setup { stage, detail: String::new(), errno };
        assert_eq!(setup(SetupStage::Exec, Some(Errno::ENOENT)).code(), ErrorCode::SpawnFailed);
        assert_eq!(setup(SetupStage::Cwd, Some(Errno::ENOENT)).code(), ErrorCode::SpawnFailed);
        assert_eq!(setup(SetupStage::Clone, Some(Errno::EAGAIN)).code(), ErrorCode::ResourceExhausted);
        assert_eq!(setup(SetupStage::Mounts, Some(Errno::EPERM)).code(), ErrorCode::Internal);
        assert_eq!(WorkloadError::InvalidDevice { device: "sda".into() }.code(), ErrorCode::InvalidRequest);
        assert_eq!(WorkloadError::Kill { pid: 5, signal: 9, errno: Errno::ESRCH }.code(), ErrorCode::NotFound);
    }

    #[test]
    fn the_cause_is_in_the_source_not_the_message() {
        let e = WorkloadError::Setup { stage: SetupStage::Exec, detail: "nope".into(), errno: Some(Errno::ENOENT) };
        assert_eq!(e.to_string(), "workload setup failed at exec: nope");
        assert!(std::error::Error::source(&e).is_some());
    }
}
