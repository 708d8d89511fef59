//! Types shared by the message enums.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::{limits, validate};

/// Identifies a workload or an exec session inside one zone. Workloads and execs share one id space, allocated by
/// the host; stdin, output, resize and exit messages carry the id of the process they concern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamId(pub u64);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One environment variable, `name=value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    /// Non-empty, no `=`, no NUL, at most [`limits::MAX_ARG_LEN`] bytes.
    pub name: String,
    /// No NUL, at most [`limits::MAX_ARG_LEN`] bytes.
    pub value: String,
}

impl EnvVar {
    /// Splits `NAME=VALUE` at the first `=`; `None` without one. The result is not validated.
    pub fn parse(s: &str) -> Option<Self> {
        let (name, value) = s.split_once('=')?;
        Some(EnvVar { name: name.to_owned(), value: value.to_owned() })
    }

    fn validate(&self) -> Result<(), ValidationError> {
        validate::non_empty_string("env.name", &self.name, limits::MAX_ARG_LEN)?;
        if self.name.contains('=') {
            return Err(ValidationError::EnvNameContainsEquals);
        }
        validate::string("env.value", &self.value, limits::MAX_ARG_LEN)
    }
}

impl fmt::Display for EnvVar {
    /// `NAME=VALUE`, as passed to `execve`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.value)
    }
}

/// The identity a process runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids, at most [`limits::MAX_ADDITIONAL_GIDS`].
    #[serde(deserialize_with = "validate::de_gids")]
    pub additional_gids: Vec<u32>,
}

impl User {
    /// root:root with no supplementary groups.
    pub fn root() -> Self {
        User { uid: 0, gid: 0, additional_gids: Vec::new() }
    }

    fn validate(&self) -> Result<(), ValidationError> {
        validate::count("user.additional_gids", self.additional_gids.len(), limits::MAX_ADDITIONAL_GIDS)
    }
}

/// A CPU bandwidth limit (cgroup v2 `cpu.max`): `quota_us` of CPU time per `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuLimit {
    /// Microseconds of CPU time per period; at least 1000.
    pub quota_us: u64,
    /// Period length in microseconds, `1000..=1_000_000` (the kernel's bounds).
    pub period_us: u64,
}

/// Resource limits of a workload; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    /// Memory limit in bytes (cgroup `memory.max`); non-zero.
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth limit (cgroup `cpu.max`).
    pub cpu: Option<CpuLimit>,
    /// Maximum number of tasks (cgroup `pids.max`); non-zero.
    pub pids_max: Option<u64>,
}

impl ResourceLimits {
    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        if self.memory_bytes == Some(0) {
            return Err(ValidationError::LimitOutOfRange { field: "limits.memory_bytes" });
        }
        if self.pids_max == Some(0) {
            return Err(ValidationError::LimitOutOfRange { field: "limits.pids_max" });
        }
        if let Some(cpu) = self.cpu {
            if !(1_000..=1_000_000).contains(&cpu.period_us) {
                return Err(ValidationError::LimitOutOfRange { field: "limits.cpu.period_us" });
            }
            if cpu.quota_us < 1_000 {
                return Err(ValidationError::LimitOutOfRange { field: "limits.cpu.quota_us" });
            }
        }
        Ok(())
    }
}

/// Everything needed to create one workload (container) in a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Program and arguments; `argv[0]` is the program, looked up in `PATH` from `env` if it has no `/`.
    /// 1 to [`limits::MAX_ARGS`] entries, each without NUL and at most [`limits::MAX_ARG_LEN`] bytes; `argv[0]`
    /// is not empty.
    #[serde(deserialize_with = "validate::de_args")]
    pub argv: Vec<String>,
    /// Environment, at most [`limits::MAX_ENV`] entries.
    #[serde(deserialize_with = "validate::de_env")]
    pub env: Vec<EnvVar>,
    /// Absolute working directory inside the workload's root.
    pub cwd: String,
    /// The identity the process runs as.
    pub user: User,
    /// Allocate a pseudo-terminal: stdin/stdout/stderr are its slave, all output is reported as stdout.
    pub tty: bool,
    /// Resource limits.
    pub limits: ResourceLimits,
    /// Mount the workload's root filesystem read-only.
    pub readonly_rootfs: bool,
    /// The workload's hostname (UTS namespace); `None` keeps the zone's.
    pub hostname: Option<String>,
    /// The zone's block device (e.g. `xvdb`) holding the workload's root image, an erofs filesystem: 1 to
    /// [`limits::MAX_DEVICE_NAME_LEN`] ASCII lowercase letters and digits.
    pub root_device: String,
    /// The process's security settings, resolved on the host; execs inherit them. `None` runs it as the zone
    /// init runs its own children: every capability, no seccomp filter, nothing masked (what `bulkhead zone
    /// launch` asks for).
    pub security: Option<Box<Security>>,
    /// Volumes bound into the workload's root, in order (a later one may sit on an earlier one), at most
    /// [`limits::MAX_MOUNTS`]. A snapshot volume must have been sent (`HostToZone::VolumeData`) before.
    /// (`default`: records written before volumes existed have none.)
    #[serde(default, deserialize_with = "validate::de_mounts")]
    pub mounts: Vec<Mount>,
}

/// One volume bound into a workload's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// What is mounted.
    pub source: MountSource,
    /// Absolute path in the workload's root, without `..` components, at most [`limits::MAX_PATH_LEN`] bytes.
    /// Symlinks on the way are followed inside the root (never out of it); missing directories are created.
    pub destination: String,
    /// Bind it read-only.
    pub readonly: bool,
}

/// The zone-local volume a mount binds. Volumes live for the zone's life, shared by every workload naming
/// the same volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountSource {
    /// Content the host copied in with `HostToZone::VolumeData` (a file or a directory tree).
    Snapshot {
        /// The volume's name (see [`validate_volume_name`]).
        volume: String,
    },
    /// An empty directory (mode 0777) created on first use, on the zone's tmpfs.
    EmptyDir {
        /// The volume's name (see [`validate_volume_name`]).
        volume: String,
    },
}

impl MountSource {
    /// The volume's name.
    pub fn volume(&self) -> &str {
        match self {
            MountSource::Snapshot { volume } | MountSource::EmptyDir { volume } => volume,
        }
    }
}

/// One entry of a snapshot volume, by its path relative to the volume's root (`""` is the root itself: a
/// directory, or a file for a file volume). Parents come before their children.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeEntry {
    /// `/`-separated names, none empty, `.` or `..`, each at most [`limits::MAX_NAME_LEN`] bytes, at most
    /// [`limits::MAX_VOLUME_DEPTH`] of them; `""` for the root.
    pub path: String,
    /// What it is.
    pub kind: VolumeEntryKind,
}

/// What a volume entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeEntryKind {
    /// A directory with these permission bits (at most `0o777`).
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A chunk of a regular file: `offset` 0 creates the file (with `mode`, at most `0o777`), a later chunk
    /// writes at `offset` of the file an earlier chunk created.
    File {
        /// Permission bits.
        mode: u32,
        /// Where the chunk goes.
        offset: u64,
        /// At most [`limits::MAX_VOLUME_CHUNK`] bytes.
        data: bytes::Bytes,
    },
    /// A symbolic link. The target is relative and has no `..` component, so it (and any chain of such
    /// links) resolves below the link's own directory, inside the volume.
    Symlink {
        /// The link's target.
        target: String,
    },
}

/// Checks a volume name: 1 to [`limits::MAX_VOLUME_NAME_LEN`] ASCII lowercase letters, digits and `-`, not
/// starting with `-` (so it is always one plain path component).
pub fn validate_volume_name(field: &'static str, name: &str) -> Result<(), ValidationError> {
    validate::non_empty_string(field, name, limits::MAX_VOLUME_NAME_LEN)?;
    let ok = !name.starts_with('-') && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err(ValidationError::InvalidVolumeName { field }) }
}

/// Checks a volume entry's path (see [`VolumeEntry::path`]).
pub fn validate_volume_path(field: &'static str, path: &str) -> Result<(), ValidationError> {
    validate::string(field, path, limits::MAX_PATH_LEN)?;
    if path.is_empty() {
        return Ok(());
    }
    let bad = |reason| Err(ValidationError::InvalidVolumePath { field, reason });
    let mut depth = 0;
    for name in path.split('/') {
        depth += 1;
        if name.is_empty() || name == "." || name == ".." {
            return bad("empty, '.' or '..' component, or an absolute path");
        }
        if name.len() > limits::MAX_NAME_LEN {
            return bad("a component is longer than 255 bytes");
        }
    }
    if depth > limits::MAX_VOLUME_DEPTH { bad("deeper than 16 components") } else { Ok(()) }
}

/// Checks a symlink target of a volume (see [`VolumeEntryKind::Symlink`]).
pub fn validate_symlink_target(field: &'static str, target: &str) -> Result<(), ValidationError> {
    validate::non_empty_string(field, target, limits::MAX_PATH_LEN)?;
    if target.starts_with('/') {
        return Err(ValidationError::InvalidVolumePath { field, reason: "an absolute symlink target" });
    }
    if target.split('/').any(|c| c == "..") {
        return Err(ValidationError::InvalidVolumePath { field, reason: "a symlink target with '..'" });
    }
    Ok(())
}

impl VolumeEntry {
    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        validate_volume_path("volume.entry.path", &self.path)?;
        match &self.kind {
            VolumeEntryKind::Dir { mode } | VolumeEntryKind::File { mode, .. } if *mode & !0o777 != 0 => {
                Err(ValidationError::InvalidMode { mode: *mode })
            }
            VolumeEntryKind::File { data, .. } if data.len() > limits::MAX_VOLUME_CHUNK => {
                Err(ValidationError::TooLong {
                    field: "volume.entry.data",
                    len: data.len(),
                    max: limits::MAX_VOLUME_CHUNK,
                })
            }
            VolumeEntryKind::Symlink { .. } if self.path.is_empty() => {
                Err(ValidationError::InvalidVolumePath { field: "volume.entry.path", reason: "the root is a symlink" })
            }
            VolumeEntryKind::Symlink { target } => validate_symlink_target("volume.entry.target", target),
            VolumeEntryKind::Dir { .. } | VolumeEntryKind::File { .. } => Ok(()),
        }
    }
}

impl Mount {
    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        validate_volume_name("mount.volume", self.source.volume())?;
        validate::absolute_path("mount.destination", &self.destination)?;
        if self.destination.split('/').any(|c| c == "..") {
            return Err(ValidationError::InvalidVolumePath { field: "mount.destination", reason: "a '..' component" });
        }
        Ok(())
    }
}

/// The security settings of a workload, resolved on the host into what the zone applies as given (the zone
/// init makes no policy decisions): the zone is the boundary to the node, these settings protect a pod's
/// containers from each other and the zone's kernel from its containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// The capability sets the program starts with.
    pub capabilities: Capabilities,
    /// Set `PR_SET_NO_NEW_PRIVS`: execve never grants privileges (setuid bits, file capabilities).
    pub no_new_privs: bool,
    /// Paths hidden from the workload: `/dev/null` bound over files, an empty read-only tmpfs over
    /// directories; missing ones are skipped. Absolute, at most [`limits::MAX_SECURITY_PATHS`].
    #[serde(deserialize_with = "validate::de_security_paths")]
    pub masked_paths: Vec<String>,
    /// Paths made read-only (bound onto themselves, remounted read-only); missing ones are skipped. Absolute,
    /// at most [`limits::MAX_SECURITY_PATHS`].
    #[serde(deserialize_with = "validate::de_security_paths")]
    pub readonly_paths: Vec<String>,
    /// Classic BPF seccomp programs, installed in order right before the program runs (empty: none); the
    /// kernel applies the most restrictive verdict of all of them. At most [`limits::MAX_SECCOMP_PROGRAMS`]
    /// programs of [`limits::MAX_SECCOMP_INSTRUCTIONS`] instructions in all; none is empty.
    #[serde(deserialize_with = "validate::de_seccomp_programs")]
    pub seccomp: Vec<SeccompProgram>,
    /// Privileged within the zone: `/sys` is mounted writable. (Capabilities, seccomp and paths say the rest;
    /// nothing of the node is ever reachable from a zone.)
    pub privileged: bool,
}

impl Security {
    /// Checks the rules and limits documented on the fields (also checked on encode and decode).
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.capabilities.validate()?;
        for (field, paths) in
            [("security.masked_paths", &self.masked_paths), ("security.readonly_paths", &self.readonly_paths)]
        {
            validate::count(field, paths.len(), limits::MAX_SECURITY_PATHS)?;
            paths.iter().try_for_each(|p| validate::absolute_path(field, p))?;
        }
        validate::count("security.seccomp", self.seccomp.len(), limits::MAX_SECCOMP_PROGRAMS)?;
        if self.seccomp.iter().any(|p| p.0.is_empty()) {
            return Err(ValidationError::Empty { field: "security.seccomp" });
        }
        let instructions = self.seccomp.iter().map(|p| p.0.len()).sum();
        validate::count("security.seccomp instructions", instructions, limits::MAX_SECCOMP_INSTRUCTIONS)
    }
}

/// The capability sets of a process, one bit per capability (bit `n` is capability number `n`, as in
/// `/proc/<pid>/status`), all within [`Capabilities::ALL`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The bounding set: what the process and its descendants can ever gain.
    pub bounding: u64,
    /// The effective set; a subset of `permitted`.
    pub effective: u64,
    /// The permitted set; a subset of `bounding`.
    pub permitted: u64,
    /// The inheritable set.
    pub inheritable: u64,
    /// The ambient set; a subset of both `permitted` and `inheritable`.
    pub ambient: u64,
}

impl Capabilities {
    /// The highest capability number the protocol knows (`CAP_CHECKPOINT_RESTORE`, Linux 5.9).
    pub const LAST: u32 = 40;
    /// Every capability up to [`Capabilities::LAST`].
    pub const ALL: u64 = (1 << (Self::LAST + 1)) - 1;

    fn validate(&self) -> Result<(), ValidationError> {
        let sets = [self.bounding, self.effective, self.permitted, self.inheritable, self.ambient];
        if sets.iter().any(|s| s & !Self::ALL != 0) {
            return Err(ValidationError::InvalidCapabilities { reason: "a capability number is out of range" });
        }
        if self.effective & !self.permitted != 0 || self.permitted & !self.bounding != 0 {
            return Err(ValidationError::InvalidCapabilities {
                reason: "effective must be within permitted, permitted within bounding",
            });
        }
        if self.ambient & !(self.permitted & self.inheritable) != 0 {
            return Err(ValidationError::InvalidCapabilities {
                reason: "ambient must be within both permitted and inheritable",
            });
        }
        Ok(())
    }
}

/// One classic BPF instruction (`struct sock_filter` of `linux/filter.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfInstruction {
    /// Operation.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

impl BpfInstruction {
    /// `struct sock_filter`'s size: the control API carries programs as these, little-endian.
    pub const SIZE: usize = 8;

    /// The instruction as `struct sock_filter` lays it out, little-endian.
    pub fn to_le_bytes(self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[..2].copy_from_slice(&self.code.to_le_bytes());
        b[2] = self.jt;
        b[3] = self.jf;
        b[4..].copy_from_slice(&self.k.to_le_bytes());
        b
    }

    /// The inverse of [`to_le_bytes`](Self::to_le_bytes).
    pub fn from_le_bytes(b: [u8; Self::SIZE]) -> Self {
        BpfInstruction {
            code: u16::from_le_bytes([b[0], b[1]]),
            jt: b[2],
            jf: b[3],
            k: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// A seccomp filter: a classic BPF program over `struct seccomp_data`, checked by the kernel when installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SeccompProgram(#[serde(deserialize_with = "validate::de_bpf")] pub Vec<BpfInstruction>);

impl SeccompProgram {
    /// The program as the control API carries it: its instructions' bytes, one after the other.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|i| i.to_le_bytes()).collect()
    }

    /// The inverse of [`to_bytes`](Self::to_bytes); `None` unless `bytes` is whole instructions. Bounds and
    /// content are checked where programs are validated, not here.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let chunks = bytes.chunks_exact(BpfInstruction::SIZE);
        if !chunks.remainder().is_empty() {
            return None;
        }
        Some(SeccompProgram(
            chunks
                .map(|c| {
                    let mut b = [0u8; BpfInstruction::SIZE];
                    b.copy_from_slice(c);
                    BpfInstruction::from_le_bytes(b)
                })
                .collect(),
        ))
    }
}

impl WorkloadSpec {
    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        validate_process(&self.argv, &self.env)?;
        validate::absolute_path("spec.cwd", &self.cwd)?;
        self.user.validate()?;
        self.limits.validate()?;
        if let Some(h) = &self.hostname {
            validate::hostname("spec.hostname", h)?;
        }
        validate::device_name("spec.root_device", &self.root_device)?;
        self.security.as_deref().map_or(Ok(()), Security::validate)?;
        validate::count("spec.mounts", self.mounts.len(), limits::MAX_MOUNTS)?;
        self.mounts.iter().try_for_each(Mount::validate)
    }
}

/// Checks argv (non-empty, bounded) and env of a workload or exec.
pub(crate) fn validate_process(argv: &[String], env: &[EnvVar]) -> Result<(), ValidationError> {
    match argv.first() {
        None => return Err(ValidationError::Empty { field: "argv" }),
        Some(program) if program.is_empty() => return Err(ValidationError::Empty { field: "argv[0]" }),
        Some(_) => {}
    }
    validate::count("argv", argv.len(), limits::MAX_ARGS)?;
    for a in argv {
        validate::string("argv", a, limits::MAX_ARG_LEN)?;
    }
    validate::count("env", env.len(), limits::MAX_ENV)?;
    env.iter().try_for_each(EnvVar::validate)
}

/// Checks the optional working directory and user of an exec.
pub(crate) fn validate_exec_overrides(cwd: Option<&str>, user: Option<&User>) -> Result<(), ValidationError> {
    if let Some(cwd) = cwd {
        validate::absolute_path("exec.cwd", cwd)?;
    }
    user.map_or(Ok(()), User::validate)
}

/// Which output stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutputFd {
    /// File descriptor 1 (and all output of a tty).
    Stdout,
    /// File descriptor 2.
    Stderr,
}

/// Where a workload is in its life, as its zone sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadPhase {
    /// Created, not started.
    Created,
    /// Its process runs.
    Running {
        /// Its pid inside the zone.
        pid: u32,
    },
    /// It ended (its output was all sent before).
    Exited {
        /// How.
        status: ExitStatus,
    },
}

/// How a workload or exec process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Code(u8),
    /// A signal killed it.
    Signaled {
        /// The signal number, `1..=`[`limits::MAX_SIGNAL`].
        signal: i32,
        /// A core dump was written.
        core_dumped: bool,
    },
    /// The kernel's OOM killer killed it (reported instead of `Signaled { signal: SIGKILL }` when the workload's
    /// cgroup recorded an OOM kill).
    OomKilled,
}

impl ExitStatus {
    /// The shell-style exit code: the code itself, 128 + signal number for a signal death, 137 (128 + SIGKILL)
    /// for an OOM kill. This is what CRI reports as the container's exit code.
    pub fn exit_code(&self) -> i32 {
        match *self {
            ExitStatus::Code(c) => i32::from(c),
            ExitStatus::Signaled { signal, .. } => 128 + signal,
            ExitStatus::OomKilled => 128 + 9,
        }
    }

    /// Whether the process exited normally with code 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }

    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        match *self {
            ExitStatus::Signaled { signal, .. } => validate::signal(signal),
            ExitStatus::Code(_) | ExitStatus::OomKilled => Ok(()),
        }
    }
}

/// Why the zone refused or failed a request; the host maps it to a gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed or contradicts itself (InvalidArgument).
    InvalidRequest,
    /// The workload or exec id is unknown (NotFound).
    NotFound,
    /// The id is already in use (AlreadyExists).
    AlreadyExists,
    /// The request does not fit the object's state, e.g. starting a workload twice (FailedPrecondition).
    FailedPrecondition,
    /// The zone ran out of memory, pids, fds or similar (ResourceExhausted).
    ResourceExhausted,
    /// The process could not be spawned: no such program, permission denied, bad working directory (the exec
    /// failed; CRI reports it as a container start failure).
    SpawnFailed,
    /// The zone does not support what was asked (Unimplemented).
    Unsupported,
    /// A bug or unexpected failure inside the zone (Internal).
    Internal,
}

/// The zone init stage that failed (see `ZoneToHost::InitFailed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InitStage {
    /// Mounting /proc, /sys, /dev, /run and friends.
    EarlyMounts,
    /// Assembling the root filesystem from the devices named on the kernel command line.
    Rootfs,
    /// Setting up cgroups and controllers.
    Cgroups,
    /// Configuring network interfaces, routes and DNS.
    Network,
    /// Setting the hostname.
    Hostname,
    /// Opening or handshaking on the host channel.
    Channel,
}

/// CPU and memory use of a workload or of the whole zone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceUsage {
    /// Total CPU time used, in nanoseconds (cgroup `cpu.stat` `usage_usec` × 1000).
    pub cpu_usage_ns: u64,
    /// Current memory use in bytes (cgroup `memory.current`).
    pub memory_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HostToZone, Message, ZoneToHost};

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), String::new()],
            env: vec![EnvVar { name: "PATH".into(), value: "/bin".into() }],
            cwd: "/srv".into(),
            user: User { uid: 1000, gid: 1000, additional_gids: vec![10, 20] },
            tty: true,
            limits: ResourceLimits {
                memory_bytes: Some(64 << 20),
                cpu: Some(CpuLimit { quota_us: 50_000, period_us: 100_000 }),
                pids_max: Some(100),
            },
            readonly_rootfs: false,
            hostname: Some("web-0.example".into()),
            root_device: "xvdb".into(),
            security: Some(Box::new(Security {
                capabilities: Capabilities {
                    bounding: 0x400,
                    effective: 0x400,
                    permitted: 0x400,
                    inheritable: 0,
                    ambient: 0,
                },
                no_new_privs: true,
                masked_paths: vec!["/proc/kcore".into()],
                readonly_paths: vec!["/proc/sys".into()],
                seccomp: vec![SeccompProgram(vec![BpfInstruction { code: 6, jt: 0, jf: 0, k: 0x7fff_0000 }])],
                privileged: false,
            })),
            mounts: vec![
                Mount {
                    source: MountSource::Snapshot { volume: "s-0a1b".into() },
                    destination: "/etc/hosts".into(),
                    readonly: false,
                },
                Mount {
                    source: MountSource::EmptyDir { volume: "e-9".into() },
                    destination: "/cache".into(),
                    readonly: false,
                },
            ],
        }
    }

    fn security(edit: impl FnOnce(&mut Security)) -> Result<(), ValidationError> {
        check(|s| {
            if let Some(sec) = s.security.as_mut() {
                edit(sec);
            }
        })
    }

    #[test]
    fn security_rules() {
        use ValidationError as V;
        assert_eq!(check(|s| s.security = None), Ok(()));
        assert!(matches!(security(|s| s.capabilities.bounding = 1 << 41), Err(V::InvalidCapabilities { .. })));
        assert!(matches!(security(|s| s.capabilities.effective = 0x401), Err(V::InvalidCapabilities { .. })));
        assert!(matches!(security(|s| s.capabilities.permitted = 0x800), Err(V::InvalidCapabilities { .. })));
        assert!(matches!(security(|s| s.capabilities.ambient = 0x400), Err(V::InvalidCapabilities { .. })));
        assert_eq!(
            security(|s| {
                s.capabilities.inheritable = 0x400;
                s.capabilities.ambient = 0x400;
            }),
            Ok(())
        );
        assert_eq!(
            security(|s| s.capabilities = Capabilities {
                bounding: Capabilities::ALL,
                effective: Capabilities::ALL,
                permitted: Capabilities::ALL,
                inheritable: 0,
                ambient: 0
            }),
            Ok(())
        );
        assert_eq!(
            security(|s| s.masked_paths.push("proc/x".into())),
            Err(V::NotAbsolute { field: "security.masked_paths" })
        );
        assert!(matches!(
            security(|s| s.readonly_paths = vec!["/p".into(); limits::MAX_SECURITY_PATHS + 1]),
            Err(V::TooMany { field: "security.readonly_paths", .. })
        ));
        assert_eq!(
            security(|s| s.seccomp.push(SeccompProgram(Vec::new()))),
            Err(V::Empty { field: "security.seccomp" })
        );
        let insn = BpfInstruction { code: 6, jt: 0, jf: 0, k: 0 };
        assert!(matches!(
            security(|s| s.seccomp = vec![SeccompProgram(vec![insn; 3000]), SeccompProgram(vec![insn; 3000])]),
            Err(V::TooMany { field: "security.seccomp instructions", .. })
        ));
        assert!(matches!(
            security(|s| s.seccomp = vec![SeccompProgram(vec![insn]); limits::MAX_SECCOMP_PROGRAMS + 1]),
            Err(V::TooMany { field: "security.seccomp", .. })
        ));
    }

    fn check(edit: impl FnOnce(&mut WorkloadSpec)) -> Result<(), ValidationError> {
        let mut s = spec();
        edit(&mut s);
        HostToZone::CreateWorkload { id: StreamId(1), spec: s }.validate()
    }

    #[test]
    fn valid_spec() {
        assert_eq!(check(|_| {}), Ok(()));
    }

    #[test]
    fn spec_rules() {
        use ValidationError as V;
        assert_eq!(check(|s| s.argv.clear()), Err(V::Empty { field: "argv" }));
        assert_eq!(check(|s| s.argv[0].clear()), Err(V::Empty { field: "argv[0]" }));
        assert_eq!(check(|s| s.argv[1] = "a\0b".into()), Err(V::ContainsNul { field: "argv" }));
        assert_eq!(
            check(|s| s.argv = vec!["x".into(); limits::MAX_ARGS + 1]),
            Err(V::TooMany { field: "argv", count: limits::MAX_ARGS + 1, max: limits::MAX_ARGS })
        );
        assert!(matches!(
            check(|s| s.argv[1] = "x".repeat(limits::MAX_ARG_LEN + 1)),
            Err(V::TooLong { field: "argv", .. })
        ));
        assert_eq!(check(|s| s.env[0].name = "A=B".into()), Err(V::EnvNameContainsEquals));
        assert_eq!(check(|s| s.env[0].name.clear()), Err(V::Empty { field: "env.name" }));
        assert_eq!(check(|s| s.env[0].value = "\0".into()), Err(V::ContainsNul { field: "env.value" }));
        assert!(matches!(
            check(|s| s.env = vec![EnvVar { name: "A".into(), value: String::new() }; limits::MAX_ENV + 1]),
            Err(V::TooMany { field: "env", .. })
        ));
        assert_eq!(check(|s| s.cwd = "srv".into()), Err(V::NotAbsolute { field: "spec.cwd" }));
        assert_eq!(check(|s| s.cwd.clear()), Err(V::Empty { field: "spec.cwd" }));
        for bad in ["../sda", "xvd/b", "XVDB", "xvdb "] {
            assert_eq!(check(|s| s.root_device = bad.into()), Err(V::InvalidDeviceName { field: "spec.root_device" }));
        }
        assert_eq!(check(|s| s.root_device.clear()), Err(V::Empty { field: "spec.root_device" }));
        assert!(matches!(check(|s| s.root_device = "x".repeat(16)), Err(V::TooLong { .. })));
        assert!(matches!(
            check(|s| s.user.additional_gids = vec![0; limits::MAX_ADDITIONAL_GIDS + 1]),
            Err(V::TooMany { field: "user.additional_gids", .. })
        ));
        assert_eq!(
            check(|s| s.limits.memory_bytes = Some(0)),
            Err(V::LimitOutOfRange { field: "limits.memory_bytes" })
        );
        assert_eq!(check(|s| s.limits.pids_max = Some(0)), Err(V::LimitOutOfRange { field: "limits.pids_max" }));
        assert_eq!(
            check(|s| s.limits.cpu = Some(CpuLimit { quota_us: 10_000, period_us: 999 })),
            Err(V::LimitOutOfRange { field: "limits.cpu.period_us" })
        );
        assert_eq!(
            check(|s| s.limits.cpu = Some(CpuLimit { quota_us: 999, period_us: 100_000 })),
            Err(V::LimitOutOfRange { field: "limits.cpu.quota_us" })
        );
        for bad in ["", "-a", "a-", "a..b", "a_b", "ä", &"a".repeat(65), &format!("{}.b", "a".repeat(64))] {
            assert!(check(|s| s.hostname = Some(bad.to_owned())).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mount_rules() {
        use ValidationError as V;
        assert!(matches!(check(|s| s.mounts[0].destination = "etc/hosts".into()), Err(V::NotAbsolute { .. })));
        assert!(matches!(check(|s| s.mounts[0].destination = "/a/../etc".into()), Err(V::InvalidVolumePath { .. })));
        for bad in ["", "-a", "A", "a/b", "a.b", &"a".repeat(limits::MAX_VOLUME_NAME_LEN + 1)] {
            assert!(check(|s| s.mounts[1].source = MountSource::EmptyDir { volume: bad.into() }).is_err(), "{bad:?}");
        }
        let m = spec().mounts[0].clone();
        assert!(matches!(check(|s| s.mounts = vec![m; limits::MAX_MOUNTS + 1]), Err(V::TooMany { .. })));
    }

    #[test]
    fn volume_paths_stay_inside_their_volume() {
        for good in ["", "a", "..data", "..2026_11_23_07_00_00.123/token", "a/b/c", "...", "a b"] {
            assert_eq!(validate_volume_path("p", good), Ok(()), "{good:?}");
        }
        for bad in ["/a", "a/", "a//b", ".", "..", "a/../b", "./a", "a/."] {
            assert!(validate_volume_path("p", bad).is_err(), "{bad:?}");
        }
        for good in ["..data/token", "a", "b/c", "..data"] {
            assert_eq!(validate_symlink_target("t", good), Ok(()), "{good:?}");
        }
        for bad in ["", "/etc/shadow", "../../etc/shadow", "a/../b", "..", "a\0b"] {
            assert!(validate_symlink_target("t", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn message_rules() {
        use ValidationError as V;
        let welcome =
            |zone_id: &str, hostname: &str| HostToZone::Welcome { zone_id: zone_id.into(), hostname: hostname.into() };
        assert_eq!(welcome("pod-1", "web").validate(), Ok(()));
        assert_eq!(welcome("pod 1", "web").validate(), Err(V::InvalidZoneId));
        assert_eq!(welcome("", "web").validate(), Err(V::Empty { field: "welcome.zone_id" }));
        assert_eq!(welcome("p", "we b").validate(), Err(V::InvalidHostname { field: "welcome.hostname" }));
        for signal in [0, -1, limits::MAX_SIGNAL + 1] {
            assert_eq!(HostToZone::Signal { id: StreamId(1), signal }.validate(), Err(V::InvalidSignal { signal }));
        }
        let exec = |cwd: Option<&str>| HostToZone::Exec {
            exec_id: StreamId(2),
            workload_id: StreamId(1),
            argv: vec!["ls".into()],
            env: Vec::new(),
            cwd: cwd.map(str::to_owned),
            tty: false,
            user: None,
        };
        assert_eq!(exec(None).validate(), Ok(()));
        assert_eq!(exec(Some("tmp")).validate(), Err(V::NotAbsolute { field: "exec.cwd" }));
        let error = ZoneToHost::Error {
            request: None,
            code: ErrorCode::Internal,
            message: "x".repeat(limits::MAX_MESSAGE_LEN + 1),
        };
        assert!(matches!(error.validate(), Err(V::TooLong { field: "error.message", .. })));
        let exited = |status| ZoneToHost::Exited { stream_id: StreamId(1), status };
        assert_eq!(
            exited(ExitStatus::Signaled { signal: 65, core_dumped: false }).validate(),
            Err(V::InvalidSignal { signal: 65 })
        );
        assert_eq!(exited(ExitStatus::OomKilled).validate(), Ok(()));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ExitStatus::Code(0).exit_code(), 0);
        assert_eq!(ExitStatus::Code(255).exit_code(), 255);
        assert_eq!(ExitStatus::Signaled { signal: 9, core_dumped: false }.exit_code(), 137);
        assert_eq!(ExitStatus::Signaled { signal: 15, core_dumped: false }.exit_code(), 143);
        assert_eq!(ExitStatus::Signaled { signal: 6, core_dumped: true }.exit_code(), 134);
        assert_eq!(ExitStatus::OomKilled.exit_code(), 137);
        assert!(ExitStatus::Code(0).success());
        assert!(!ExitStatus::Code(1).success());
    }

    #[test]
    fn seccomp_programs_travel_as_sock_filter_bytes() {
        let p = SeccompProgram(vec![BpfInstruction { code: 0x15, jt: 1, jf: 2, k: 0x7fff_0000 }]);
        assert_eq!(p.to_bytes(), [0x15, 0x00, 0x01, 0x02, 0x00, 0x00, 0xff, 0x7f]);
        assert_eq!(SeccompProgram::from_bytes(&p.to_bytes()), Some(p));
        assert_eq!(SeccompProgram::from_bytes(&[0; 9]), None, "not whole instructions");
    }

    #[test]
    fn env_var_text() {
        assert_eq!(EnvVar::parse("A=b=c"), Some(EnvVar { name: "A".into(), value: "b=c".into() }));
        assert_eq!(EnvVar::parse("A"), None);
        assert_eq!(EnvVar { name: "A".into(), value: "b".into() }.to_string(), "A=b");
    }
}
