//! The two message enums, one per direction.
//!
//! Variant order and field order are part of the wire format (postcard encodes the variant index and the fields in
//! declaration order, with no names): append new variants at the end and bump
//! [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) for any change. The `golden_*` tests pin the encoding.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::frame::{Direction, Message};
use crate::types::{
    EnvVar, ErrorCode, ExitStatus, InitStage, OutputFd, ResourceLimits, ResourceUsage, StreamId, User, VolumeEntry,
    WorkloadPhase, WorkloadSpec, validate_exec_overrides, validate_process,
};
use crate::{PROTOCOL_VERSION, limits, validate};

/// Messages from bulkheadd (dom0) to the zone's init.
///
/// The zone answers each workload request with the matching success message or with `ZoneToHost::Error` naming
/// the id; `Signal`, `Stdin`, `CloseStdin` and `Resize` get an answer only when they fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostToZone {
    /// Answer to `ZoneToHost::Hello`: the zone may now proceed.
    Welcome {
        /// The zone's (pod sandbox's) id, printable ASCII without spaces, 1 to
        /// [`limits::MAX_SHORT_STRING_LEN`] bytes.
        zone_id: String,
        /// The hostname the zone sets (RFC 1123, at most [`limits::MAX_HOSTNAME_LEN`] bytes).
        hostname: String,
    },
    /// Create (but do not start) a workload. Answer: `WorkloadCreated`.
    CreateWorkload {
        /// New id; must not be in use.
        id: StreamId,
        /// What to run.
        spec: WorkloadSpec,
    },
    /// Start a created workload. Answer: `WorkloadStarted`, later `Exited`.
    StartWorkload {
        /// The workload.
        id: StreamId,
    },
    /// Send a signal to a workload's or exec's process.
    Signal {
        /// The workload or exec.
        id: StreamId,
        /// Signal number, `1..=`[`limits::MAX_SIGNAL`].
        signal: i32,
    },
    /// Remove an exited (or never started) workload and free its resources. Answer: `WorkloadRemoved`.
    RemoveWorkload {
        /// The workload.
        id: StreamId,
    },
    /// Run an extra process in a running workload's namespaces and cgroup. Answer: `ExecStarted`, later
    /// `Exited { stream_id: exec_id }`.
    Exec {
        /// New id, from the same space as workload ids.
        exec_id: StreamId,
        /// The workload to run in.
        workload_id: StreamId,
        /// Program and arguments, as in [`WorkloadSpec::argv`].
        #[serde(deserialize_with = "validate::de_args")]
        argv: Vec<String>,
        /// Environment, as in [`WorkloadSpec::env`] (added to the workload's).
        #[serde(deserialize_with = "validate::de_env")]
        env: Vec<EnvVar>,
        /// Absolute working directory; `None` uses the workload's.
        cwd: Option<String>,
        /// Allocate a pseudo-terminal.
        tty: bool,
        /// Identity; `None` uses the workload's.
        user: Option<User>,
    },
    /// Data for a process's stdin (or its tty).
    Stdin {
        /// The workload or exec.
        stream_id: StreamId,
        /// At most [`limits::MAX_DATA_CHUNK`] bytes.
        data: Bytes,
    },
    /// Close a process's stdin (end of input).
    CloseStdin {
        /// The workload or exec.
        stream_id: StreamId,
    },
    /// Resize a process's tty.
    Resize {
        /// The workload or exec.
        stream_id: StreamId,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Ask for resource usage. Answer: `Stats`.
    GetStats {
        /// The workload, or `None` for the whole zone.
        id: Option<StreamId>,
    },
    /// Power the zone off: signal every process with SIGTERM, wait up to `grace_ms`, SIGKILL what is left, sync,
    /// power off. The channel closes with the zone.
    Shutdown {
        /// Grace period in milliseconds.
        grace_ms: u32,
    },
    /// Liveness probe. Answer: `Pong` with the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Where a workload is now. Answer: `WorkloadStatus`. A host that reconnects (after a daemon restart)
    /// asks this for each workload it knows, since what the zone sent while nobody listened is gone.
    QueryWorkload {
        /// The workload.
        id: StreamId,
    },
    /// Open a TCP connection to `port` on the zone's loopback (where the pod's servers listen; kubelet's
    /// port-forward). Answer: `PortForwardConnected`. Then the connection is a stream like a process's stdio:
    /// `Stdin` carries bytes to the port, `Output` (stdout) bytes from it, `CloseStdin` half-closes it, and
    /// `Exited` with code 0 ends the stream once both directions are closed. `Signal` (any signal) resets it.
    PortForward {
        /// New id, from the same space as workload ids.
        stream_id: StreamId,
        /// The port, not 0.
        port: u16,
    },
    /// Replace a created or running workload's resource limits (CRI UpdateContainerResources): `None`
    /// lifts that limit. Answer: `LimitsUpdated`.
    UpdateLimits {
        /// The workload.
        id: StreamId,
        /// The new limits, whole.
        limits: ResourceLimits,
    },
    /// Content of snapshot volume `volume`, written below the zone's volume directory. A volume arrives as
    /// one or more of these, entries in order, before the `CreateWorkload` that mounts it; a message whose
    /// first entry is the root (path `""`) starts the volume afresh, unless a workload mounts it already
    /// (then the data is ignored: a pod's containers share the first copy). No answer: a failure is kept and
    /// reported as the answer to the `CreateWorkload` that mounts the volume.
    VolumeData {
        /// The volume's name (see [`crate::validate_volume_name`]).
        volume: String,
        /// 1 to [`limits::MAX_VOLUME_ENTRIES`] entries.
        #[serde(deserialize_with = "validate::de_volume_entries")]
        entries: Vec<VolumeEntry>,
    },
}

/// Messages from the zone's init to bulkheadd. The zone is untrusted: everything here is validated on decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ZoneToHost {
    /// The zone's first message. Answer: `HostToZone::Welcome`.
    Hello {
        /// Must equal [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) (the frame header carries it too).
        protocol_version: u8,
        /// bulkhead-zone's version, at most [`limits::MAX_SHORT_STRING_LEN`] bytes.
        init_version: String,
        /// `uname -r` of the zone kernel, at most [`limits::MAX_SHORT_STRING_LEN`] bytes.
        kernel_release: String,
        /// Milliseconds from kernel start to this message (`CLOCK_BOOTTIME`).
        boot_time_ms: u64,
    },
    /// A workload was created.
    WorkloadCreated {
        /// The workload.
        id: StreamId,
    },
    /// A workload's process is running.
    WorkloadStarted {
        /// The workload.
        id: StreamId,
        /// Its pid inside the zone.
        pid: u32,
    },
    /// A workload was removed.
    WorkloadRemoved {
        /// The workload.
        id: StreamId,
    },
    /// Output of a process. All output of a process is sent before its `Exited`.
    Output {
        /// The workload or exec.
        stream_id: StreamId,
        /// Which stream.
        fd: OutputFd,
        /// At most [`limits::MAX_DATA_CHUNK`] bytes.
        data: Bytes,
    },
    /// An exec process is running.
    ExecStarted {
        /// The exec.
        exec_id: StreamId,
        /// Its pid inside the zone.
        pid: u32,
    },
    /// A workload or exec process ended; the last message about that stream except `WorkloadRemoved`.
    Exited {
        /// The workload or exec.
        stream_id: StreamId,
        /// How it ended.
        status: ExitStatus,
    },
    /// A request failed.
    Error {
        /// The workload or exec the failed request concerned, if any.
        request: Option<StreamId>,
        /// What kind of failure.
        code: ErrorCode,
        /// Human-readable detail, at most [`limits::MAX_MESSAGE_LEN`] bytes.
        message: String,
    },
    /// Zone init failed; the zone powers off after sending this.
    InitFailed {
        /// The stage that failed.
        stage: InitStage,
        /// Human-readable detail, at most [`limits::MAX_MESSAGE_LEN`] bytes.
        reason: String,
    },
    /// Answer to `HostToZone::Ping`.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// Answer to `HostToZone::GetStats`.
    Stats {
        /// The workload, or `None` for the whole zone.
        id: Option<StreamId>,
        /// The usage.
        usage: ResourceUsage,
    },
    /// Answer to `HostToZone::QueryWorkload`.
    WorkloadStatus {
        /// The workload.
        id: StreamId,
        /// Its phase.
        phase: WorkloadPhase,
    },
    /// Answer to `HostToZone::PortForward`: the connection is open.
    PortForwardConnected {
        /// The port-forward stream.
        stream_id: StreamId,
    },
    /// Answer to `HostToZone::UpdateLimits`: the workload's cgroup has the new limits.
    LimitsUpdated {
        /// The workload.
        id: StreamId,
    },
}

impl crate::frame::sealed::Sealed for HostToZone {}
impl crate::frame::sealed::Sealed for ZoneToHost {}

impl Message for HostToZone {
    const DIRECTION: Direction = Direction::HostToZone;

    fn validate(&self) -> Result<(), ValidationError> {
        match self {
            HostToZone::Welcome { zone_id, hostname } => {
                validate::non_empty_string("welcome.zone_id", zone_id, limits::MAX_SHORT_STRING_LEN)?;
                if !zone_id.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(ValidationError::InvalidZoneId);
                }
                validate::hostname("welcome.hostname", hostname)
            }
            HostToZone::CreateWorkload { spec, .. } => spec.validate(),
            HostToZone::Signal { signal, .. } => validate::signal(*signal),
            HostToZone::Exec { argv, env, cwd, user, .. } => {
                validate_process(argv, env)?;
                validate_exec_overrides(cwd.as_deref(), user.as_ref())
            }
            HostToZone::Stdin { data, .. } => validate::chunk("stdin.data", data),
            HostToZone::PortForward { port: 0, .. } => Err(ValidationError::PortZero),
            HostToZone::UpdateLimits { limits, .. } => limits.validate(),
            HostToZone::VolumeData { volume, entries } => {
                crate::types::validate_volume_name("volume_data.volume", volume)?;
                if entries.is_empty() {
                    return Err(ValidationError::Empty { field: "volume_data.entries" });
                }
                validate::count("volume_data.entries", entries.len(), limits::MAX_VOLUME_ENTRIES)?;
                entries.iter().try_for_each(VolumeEntry::validate)
            }
            HostToZone::StartWorkload { .. }
            | HostToZone::RemoveWorkload { .. }
            | HostToZone::CloseStdin { .. }
            | HostToZone::Resize { .. }
            | HostToZone::GetStats { .. }
            | HostToZone::Shutdown { .. }
            | HostToZone::Ping { .. }
            | HostToZone::QueryWorkload { .. }
            | HostToZone::PortForward { .. } => Ok(()),
        }
    }
}

impl Message for ZoneToHost {
    const DIRECTION: Direction = Direction::ZoneToHost;

    fn validate(&self) -> Result<(), ValidationError> {
        match self {
            ZoneToHost::Hello { protocol_version, init_version, kernel_release, .. } => {
                if *protocol_version != PROTOCOL_VERSION {
                    return Err(ValidationError::HelloVersionMismatch { found: *protocol_version });
                }
                validate::string("hello.init_version", init_version, limits::MAX_SHORT_STRING_LEN)?;
                validate::string("hello.kernel_release", kernel_release, limits::MAX_SHORT_STRING_LEN)
            }
            ZoneToHost::Output { data, .. } => validate::chunk("output.data", data),
            ZoneToHost::Exited { status, .. }
            | ZoneToHost::WorkloadStatus { phase: WorkloadPhase::Exited { status }, .. } => status.validate(),
            ZoneToHost::Error { message, .. } => validate::string("error.message", message, limits::MAX_MESSAGE_LEN),
            ZoneToHost::InitFailed { reason, .. } => {
                validate::string("init_failed.reason", reason, limits::MAX_MESSAGE_LEN)
            }
            ZoneToHost::WorkloadCreated { .. }
            | ZoneToHost::WorkloadStarted { .. }
            | ZoneToHost::WorkloadRemoved { .. }
            | ZoneToHost::ExecStarted { .. }
            | ZoneToHost::Pong { .. }
            | ZoneToHost::Stats { .. }
            | ZoneToHost::WorkloadStatus { .. }
            | ZoneToHost::PortForwardConnected { .. }
            | ZoneToHost::LimitsUpdated { .. } => Ok(()),
        }
    }
}
