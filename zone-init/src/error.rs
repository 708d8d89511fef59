//! The errors of zone-init's setup, one variant per failed operation.

use std::path::PathBuf;

use nix::errno::Errno;

/// A setup step of init failed. Each variant names the operation; the cause is in `source()`.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Blocking the signals init handles.
    #[error("blocking signals")]
    BlockSignals(#[source] Errno),
    /// Creating the signalfd.
    #[error("creating the signalfd")]
    CreateSignalFd(#[source] Errno),
    /// Reading the signalfd.
    #[error("reading the signalfd")]
    ReadSignalFd(#[source] Errno),
    /// Disabling Ctrl-Alt-Del (so that it reaches init as SIGINT).
    #[error("disabling ctrl-alt-del reboot")]
    DisableCad(#[source] Errno),
    /// Creating a mount point or other directory.
    #[error("creating directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A mount.
    #[error("mounting {fstype} on {target}")]
    Mount {
        /// The filesystem type.
        fstype: &'static str,
        /// The mount point.
        target: &'static str,
        /// The cause.
        source: Errno,
    },
    /// Replacing `/dev/ptmx` with a symlink to the devpts instance's `ptmx`.
    #[error("linking /dev/ptmx to pts/ptmx")]
    LinkPtmx(#[source] std::io::Error),
    /// Reading a file (`/proc/cmdline`, `/proc/uptime`, cgroup files).
    #[error("reading {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The kernel command line's `bulkhead.*` parameters.
    #[error("parsing the kernel command line")]
    ParseCmdline(#[source] crate::cmdline::CmdlineError),
    /// `/proc/uptime` did not parse.
    #[error("parsing /proc/uptime {text:?}")]
    ParseUptime {
        /// What it held.
        text: String,
    },
    /// `sethostname`.
    #[error("setting the hostname to {hostname}")]
    SetHostname {
        /// The name.
        hostname: String,
        /// The cause.
        source: Errno,
    },
    /// Setting the loopback interface up.
    #[error("setting the loopback interface up")]
    Loopback(#[source] Errno),
    /// Configuring the pod network's interface.
    #[error("configuring the pod network")]
    PodNetwork(#[source] crate::net::NetError),
    /// Writing the root cgroup's `cgroup.subtree_control`.
    #[error("enabling cgroup controllers {controllers:?} in the root cgroup")]
    EnableControllers {
        /// What was written.
        controllers: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Pointing the kernel's `poweroff_cmd` at init (so `xl shutdown` reaches it).
    #[error("setting /proc/sys/kernel/poweroff_cmd")]
    SetPoweroffCmd(#[source] std::io::Error),
    /// Reaping children.
    #[error("reaping children (waitpid)")]
    Reap(#[source] Errno),
    /// Waiting for events (`poll`).
    #[error("waiting for events (poll)")]
    Poll(#[source] Errno),
    /// The host channel.
    #[error("host channel")]
    Channel(#[source] crate::channel::ChannelError),
    /// Starting the self-test child.
    #[error("spawning the self-test child /proc/self/exe --selftest-child")]
    SpawnSelftest(#[source] std::io::Error),
}

impl InitError {
    /// The stage of init that failed, for the console's `FATAL <stage>` line.
    pub fn stage(&self) -> &'static str {
        match self {
            InitError::BlockSignals(_) | InitError::CreateSignalFd(_) | InitError::DisableCad(_) => "signals",
            InitError::ReadSignalFd(_) | InitError::Reap(_) | InitError::Poll(_) => "event-loop",
            InitError::Channel(_) => "channel",
            InitError::CreateDir { .. } | InitError::Mount { .. } | InitError::LinkPtmx(_) => "mount",
            InitError::ParseCmdline(_) => "cmdline",
            InitError::ReadFile { .. } | InitError::ParseUptime { .. } => "read",
            InitError::SetHostname { .. } => "hostname",
            InitError::Loopback(_) | InitError::PodNetwork(_) => "network",
            InitError::SetPoweroffCmd(_) => "sysctl",
            InitError::EnableControllers { .. } => "cgroup",
            InitError::SpawnSelftest(_) => "selftest",
        }
    }
}
