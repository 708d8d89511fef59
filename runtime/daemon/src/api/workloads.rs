//! `bulkhead.control.v1.WorkloadService`.

use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bulkhead_api::control::v1 as pb;
use bulkhead_wire::{
    Capabilities, EnvVar, ErrorCode, ExitStatus, HostToZone, OutputFd, SeccompProgram, Security, StreamId, ZoneToHost,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::message_chain;
use crate::hypervisor::Hypervisor;
use crate::workloads::logs::LogEntry;
use crate::workloads::spec::{self, UserRequest, WorkloadRequest};
use crate::workloads::volumes;
use crate::workloads::{
    ExecRequest, StdinMode, WorkloadError, WorkloadEvent, WorkloadManager, WorkloadMeta, WorkloadRecord, WorkloadState,
};
use crate::zone::MAX_CLIENT_STATE_LEN;

/// The service, over a shared workload manager.
#[derive(Debug)]
pub struct WorkloadApi<H: Hypervisor> {
    workloads: Arc<WorkloadManager<H>>,
}

impl<H: Hypervisor> WorkloadApi<H> {
    /// Serves `workloads`.
    pub fn new(workloads: Arc<WorkloadManager<H>>) -> Self {
        WorkloadApi { workloads }
    }

    fn status(&self, r: &WorkloadRecord) -> pb::WorkloadStatus {
        status_to_pb(r, &self.workloads.log_path(r))
    }
}

impl From<WorkloadError> for Status {
    fn from(e: WorkloadError) -> Status {
        let msg = message_chain(&e);
        match e {
            WorkloadError::NotFound(_) => Status::not_found(msg),
            WorkloadError::AlreadyExists { .. } => Status::already_exists(msg),
            WorkloadError::Zone(z) => Status::from(z),
            WorkloadError::Image(i) => super::images::image_status(i),
            WorkloadError::Spec(_) | WorkloadError::Volume(_) => Status::invalid_argument(msg),
            WorkloadError::ZoneNotReady { .. }
            | WorkloadError::ZoneFailed { .. }
            | WorkloadError::WrongState { .. }
            | WorkloadError::NoDiskSlot(_) => Status::failed_precondition(msg),
            WorkloadError::Refused { code, .. } => match code {
                ErrorCode::InvalidRequest => Status::invalid_argument(msg),
                ErrorCode::NotFound => Status::not_found(msg),
                ErrorCode::AlreadyExists => Status::already_exists(msg),
                ErrorCode::FailedPrecondition | ErrorCode::SpawnFailed => Status::failed_precondition(msg),
                ErrorCode::ResourceExhausted => Status::resource_exhausted(msg),
                ErrorCode::Unsupported => Status::unimplemented(msg),
                ErrorCode::Internal => Status::internal(msg),
            },
            WorkloadError::Timeout | WorkloadError::ChannelClosed | WorkloadError::Attach { .. } => {
                Status::unavailable(msg)
            }
            WorkloadError::UnexpectedAnswer(_) | WorkloadError::Store(_) | WorkloadError::Log { .. } => {
                Status::internal(msg)
            }
        }
    }
}

/// The API's user: `uid` or `name` (not both), `gid` the group; `None` when the message is absent or
/// empty (the image's user for a workload, the workload's for an exec). Resolved later, in the image.
fn user_from_pb(u: Option<pb::User>) -> Result<Option<UserRequest>, Status> {
    let Some(u) = u else { return Ok(None) };
    let user = match (u.uid, u.name) {
        (Some(_), name) if !name.is_empty() => {
            return Err(Status::invalid_argument(format!(
                "user: give uid {} or name {name:?}, not both",
                u.uid.unwrap_or_default()
            )));
        }
        (Some(uid), _) => Some(uid.to_string()),
        (None, name) => (!name.is_empty()).then_some(name),
    };
    let req = UserRequest { user, group: u.gid.map(|g| g.to_string()), additional_gids: u.additional_gids };
    Ok((req != UserRequest::default()).then_some(req))
}

fn client_state(s: String) -> Result<String, Status> {
    if s.len() > MAX_CLIENT_STATE_LEN {
        return Err(Status::invalid_argument(format!(
            "client_state takes {} bytes; at most {MAX_CLIENT_STATE_LEN} are kept",
            s.len()
        )));
    }
    Ok(s)
}

/// A client's log path: absolute and plain (no `..`), so it names what it seems to.
fn log_path(s: String) -> Result<Option<PathBuf>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    let p = PathBuf::from(s);
    let plain = p.is_absolute() && p.components().all(|c| !matches!(c, Component::ParentDir | Component::CurDir));
    if !plain || p.file_name().is_none() {
        return Err(Status::invalid_argument(format!(
            "log_path {} must be an absolute path to a file, without . or .. components",
            p.display()
        )));
    }
    Ok(Some(p))
}

/// The security policy as the zone takes it; INVALID_ARGUMENT for one it would refuse.
fn security_from_pb(p: Option<pb::SecurityPolicy>) -> Result<Option<Security>, Status> {
    let Some(p) = p else { return Ok(None) };
    let seccomp = p
        .seccomp_programs
        .iter()
        .map(|bytes| {
            SeccompProgram::from_bytes(bytes).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "security.seccomp_programs: {} bytes is not a whole number of 8-byte BPF instructions",
                    bytes.len()
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let security = Security {
        capabilities: Capabilities {
            bounding: p.cap_bounding,
            effective: p.cap_effective,
            permitted: p.cap_permitted,
            inheritable: p.cap_inheritable,
            ambient: p.cap_ambient,
        },
        no_new_privs: p.no_new_privs,
        masked_paths: p.masked_paths,
        readonly_paths: p.readonly_paths,
        seccomp,
        privileged: p.privileged,
    };
    security.validate().map_err(|e| Status::invalid_argument(format!("invalid security policy: {e}")))?;
    Ok(Some(security))
}

fn security_to_pb(s: &Security) -> pb::SecurityPolicy {
    let c = &s.capabilities;
    pb::SecurityPolicy {
        cap_bounding: c.bounding,
        cap_effective: c.effective,
        cap_permitted: c.permitted,
        cap_inheritable: c.inheritable,
        cap_ambient: c.ambient,
        no_new_privs: s.no_new_privs,
        masked_paths: s.masked_paths.clone(),
        readonly_paths: s.readonly_paths.clone(),
        seccomp_programs: s.seccomp.iter().map(SeccompProgram::to_bytes).collect(),
        privileged: s.privileged,
    }
}

fn env_from_pb(env: Vec<pb::EnvVar>) -> Vec<EnvVar> {
    env.into_iter().map(|e| EnvVar { name: e.name, value: e.value }).collect()
}

fn exit_to_pb(exit: &ExitStatus, zone_lost: bool) -> pb::ExitStatus {
    let (signal, reason) = match exit {
        _ if zone_lost => (0, pb::ExitReason::ZoneLost),
        ExitStatus::Code(0) => (0, pb::ExitReason::Completed),
        ExitStatus::Code(_) => (0, pb::ExitReason::Error),
        ExitStatus::Signaled { signal, .. } => (*signal, pb::ExitReason::Signaled),
        ExitStatus::OomKilled => (9, pb::ExitReason::OomKilled),
    };
    pb::ExitStatus { code: exit.exit_code(), signal, reason: reason.into() }
}

fn fd_to_pb(fd: OutputFd) -> pb::OutputFd {
    match fd {
        OutputFd::Stdout => pb::OutputFd::Stdout,
        OutputFd::Stderr => pb::OutputFd::Stderr,
    }
}

/// The status clients see for a record whose log is at `log_path`.
pub fn status_to_pb(r: &WorkloadRecord, log_path: &Path) -> pb::WorkloadStatus {
    let s = &r.spec;
    pb::WorkloadStatus {
        id: r.id.clone(),
        zone_id: r.zone_id.clone(),
        spec: Some(pb::WorkloadSpec {
            name: r.name.clone(),
            image: r.image.clone(),
            command: s.argv.clone(),
            args: vec![],
            env: s.env.iter().map(|e| pb::EnvVar { name: e.name.clone(), value: e.value.clone() }).collect(),
            working_dir: s.cwd.clone(),
            user: Some(pb::User {
                uid: Some(s.user.uid),
                gid: Some(s.user.gid),
                name: String::new(),
                additional_gids: s.user.additional_gids.clone(),
            }),
            tty: s.tty,
            stdin: r.stdin != StdinMode::Closed,
            stdin_once: r.stdin == StdinMode::Once,
            limits: Some(pb::ResourceLimits {
                memory_bytes: s.limits.memory_bytes.unwrap_or(0),
                cpu_quota_us: s.limits.cpu.map_or(0, |c| c.quota_us),
                cpu_period_us: s.limits.cpu.map_or(0, |c| c.period_us),
                pids_max: s.limits.pids_max.unwrap_or(0),
            }),
            readonly_rootfs: s.readonly_rootfs,
            labels: r.labels.clone().into_iter().collect(),
            client_state: r.client_state.clone(),
            log_path: r.log_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            security: s.security.as_deref().map(security_to_pb),
            // The zone's side of each mount; the node's paths are not kept in the record.
            mounts: s
                .mounts
                .iter()
                .map(|m| pb::Mount {
                    host_path: String::new(),
                    container_path: m.destination.clone(),
                    readonly: m.readonly,
                    kind: match m.source {
                        bulkhead_wire::MountSource::Snapshot { .. } => pb::MountKind::Snapshot,
                        bulkhead_wire::MountSource::EmptyDir { .. } => pb::MountKind::EmptyDir,
                    }
                    .into(),
                })
                .collect(),
        }),
        state: state_to_pb(r.state).into(),
        pid: r.pid,
        exit: r.exit.as_ref().map(|e| exit_to_pb(e, r.zone_lost)),
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        image_digest: r.image_id.clone(),
        log_path: log_path.display().to_string(),
    }
}

fn state_to_pb(state: WorkloadState) -> pb::WorkloadState {
    match state {
        WorkloadState::Created => pb::WorkloadState::Created,
        WorkloadState::Running => pb::WorkloadState::Running,
        WorkloadState::Exited => pb::WorkloadState::Exited,
    }
}

/// A workload event as watchers of the zone service's event stream see it.
pub fn event_to_pb(e: WorkloadEvent) -> pb::Event {
    pb::Event {
        timestamp: e.at,
        kind: Some(pb::event::Kind::Workload(pb::WorkloadEvent {
            zone_id: e.zone_id,
            workload_id: e.workload_id,
            state: state_to_pb(e.state).into(),
            exit: e.exit.as_ref().map(|x| exit_to_pb(x, e.zone_lost)),
            removed: e.removed,
        })),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Ends a stream session in the zone when its client goes away first: kills the exec's process or resets
/// the port-forward's connection (a SIGKILL either way), and drops the route. Disarmed once the zone has
/// reported the end.
struct SessionGuard {
    link: crate::link::ZoneLink,
    id: StreamId,
    ended: bool,
}

impl SessionGuard {
    /// The zone reported the end: nothing to kill.
    fn disarm(&mut self) {
        self.ended = true;
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.link.unsubscribe(self.id);
        if !self.ended {
            let (link, id) = (self.link.clone(), self.id);
            tokio::spawn(async move {
                let _ = link.send(HostToZone::Signal { id, signal: libc::SIGKILL }).await;
            });
        }
    }
}

/// A mount as the API gives it.
fn mount_from_pb(m: pb::Mount) -> Result<volumes::MountRequest, Status> {
    let kind = match pb::MountKind::try_from(m.kind) {
        Ok(pb::MountKind::Snapshot) => volumes::MountKind::Snapshot,
        Ok(pb::MountKind::EmptyDir) => volumes::MountKind::EmptyDir,
        _ => {
            return Err(Status::invalid_argument(format!(
                "mount of {:?}: kind must be MOUNT_KIND_SNAPSHOT or MOUNT_KIND_EMPTY_DIR",
                m.host_path
            )));
        }
    };
    Ok(volumes::MountRequest {
        host_path: PathBuf::from(m.host_path),
        container_path: m.container_path,
        readonly: m.readonly,
        kind,
    })
}

/// The API's zero-means-unlimited limits, checked.
fn limits_from_pb(l: Option<pb::ResourceLimits>) -> Result<bulkhead_wire::ResourceLimits, Status> {
    let l = l.unwrap_or_default();
    spec::limits(l.memory_bytes, l.cpu_quota_us, l.cpu_period_us, l.pids_max)
        .map_err(|e| Status::invalid_argument(format!("invalid limits: {e}")))
}

#[tonic::async_trait]
impl<H: Hypervisor> pb::workload_service_server::WorkloadService for WorkloadApi<H> {
    async fn create_workload(
        &self,
        req: Request<pb::CreateWorkloadRequest>,
    ) -> Result<Response<pb::CreateWorkloadResponse>, Status> {
        let req = req.into_inner();
        let s = req.spec.ok_or_else(|| Status::invalid_argument("spec is required"))?;
        if s.name.is_empty() || s.image.is_empty() {
            return Err(Status::invalid_argument("a workload needs a name and an image"));
        }
        let limits = limits_from_pb(s.limits)?;
        let request = WorkloadRequest {
            command: s.command,
            args: s.args,
            env: env_from_pb(s.env),
            working_dir: s.working_dir,
            user: user_from_pb(s.user)?.unwrap_or_default(),
            tty: s.tty,
            limits,
            readonly_rootfs: s.readonly_rootfs,
            security: security_from_pb(s.security)?,
            mounts: s.mounts.into_iter().map(mount_from_pb).collect::<Result<_, _>>()?,
        };
        let meta = WorkloadMeta {
            labels: s.labels.into_iter().collect(),
            client_state: client_state(s.client_state)?,
            log_path: log_path(s.log_path)?,
            stdin: match (s.stdin, s.stdin_once) {
                (false, _) => StdinMode::Closed,
                (true, false) => StdinMode::Open,
                (true, true) => StdinMode::Once,
            },
        };
        let rec = self.workloads.create(&req.zone, &s.name, &s.image, request, meta).await?;
        Ok(Response::new(pb::CreateWorkloadResponse { workload: Some(self.status(&rec)) }))
    }

    async fn start_workload(
        &self,
        req: Request<pb::StartWorkloadRequest>,
    ) -> Result<Response<pb::StartWorkloadResponse>, Status> {
        let rec = self.workloads.start(&req.into_inner().workload_id).await?;
        Ok(Response::new(pb::StartWorkloadResponse { workload: Some(self.status(&rec)) }))
    }

    async fn signal_workload(
        &self,
        req: Request<pb::SignalWorkloadRequest>,
    ) -> Result<Response<pb::SignalWorkloadResponse>, Status> {
        let req = req.into_inner();
        if !(1..=bulkhead_wire::limits::MAX_SIGNAL).contains(&req.signal) {
            return Err(Status::invalid_argument(format!("signal {} is not 1 to 64", req.signal)));
        }
        self.workloads.signal(&req.workload_id, req.signal).await?;
        Ok(Response::new(pb::SignalWorkloadResponse {}))
    }

    async fn wait_workload(
        &self,
        req: Request<pb::WaitWorkloadRequest>,
    ) -> Result<Response<pb::WaitWorkloadResponse>, Status> {
        let rec = self.workloads.wait(&req.into_inner().workload_id).await?;
        Ok(Response::new(pb::WaitWorkloadResponse { workload: Some(self.status(&rec)) }))
    }

    async fn get_workload(
        &self,
        req: Request<pb::GetWorkloadRequest>,
    ) -> Result<Response<pb::GetWorkloadResponse>, Status> {
        let rec = self.workloads.get(&req.into_inner().workload_id).await?;
        Ok(Response::new(pb::GetWorkloadResponse { workload: Some(self.status(&rec)) }))
    }

    async fn list_workloads(
        &self,
        req: Request<pb::ListWorkloadsRequest>,
    ) -> Result<Response<pb::ListWorkloadsResponse>, Status> {
        let req = req.into_inner();
        let zone_id = if req.zone.is_empty() { None } else { Some(self.workloads.zone_id(&req.zone).await?) };
        let workloads = self
            .workloads
            .list(zone_id.as_deref())
            .await
            .iter()
            .filter(|r| req.label_selector.iter().all(|(k, v)| r.labels.get(k) == Some(v)))
            .map(|r| self.status(r))
            .collect();
        Ok(Response::new(pb::ListWorkloadsResponse { workloads }))
    }

    async fn remove_workload(
        &self,
        req: Request<pb::RemoveWorkloadRequest>,
    ) -> Result<Response<pb::RemoveWorkloadResponse>, Status> {
        self.workloads.remove(&req.into_inner().workload_id).await?;
        Ok(Response::new(pb::RemoveWorkloadResponse {}))
    }

    type ExecStream = BoxStream<pb::ExecResponse>;

    async fn exec(&self, req: Request<Streaming<pb::ExecRequest>>) -> Result<Response<Self::ExecStream>, Status> {
        let mut input = req.into_inner();
        let first = input.message().await?.and_then(|m| m.kind);
        let Some(pb::exec_request::Kind::Start(start)) = first else {
            return Err(Status::invalid_argument("the first exec message must be start"));
        };
        if start.command.is_empty() {
            return Err(Status::invalid_argument("exec needs a command"));
        }
        let request = ExecRequest {
            argv: start.command,
            env: env_from_pb(start.env),
            cwd: (!start.working_dir.is_empty()).then_some(start.working_dir),
            user: user_from_pb(start.user)?,
            tty: start.tty,
        };
        let session = self.workloads.exec(&start.workload_id, request).await?;
        let (exec_id, link) = (session.exec_id, session.link.clone());
        if let (true, Some(size)) = (start.tty, start.size) {
            let _ = link.send(resize(exec_id, &size)).await;
        }
        if !start.stdin {
            let _ = link.send(HostToZone::CloseStdin { stream_id: exec_id }).await;
        }
        // Client input to the zone until the client closes its side.
        tokio::spawn(forward_input(input, link, exec_id, EndOfInput::Close, |m: pb::ExecRequest| {
            Some(match m.kind? {
                pb::exec_request::Kind::Stdin(data) => ClientInput::Stdin(data),
                pb::exec_request::Kind::CloseStdin(true) => ClientInput::CloseStdin,
                pb::exec_request::Kind::Resize(size) => ClientInput::Resize(size),
                _ => return None,
            })
        }));
        let pid = session.pid;
        let mut messages = session.messages;
        let mut guard = SessionGuard { link: session.link, id: exec_id, ended: false };
        let output = async_stream::stream! {
            yield Ok(pb::ExecResponse { kind: Some(pb::exec_response::Kind::StartedPid(pid)) });
            while let Some(m) = messages.recv().await {
                match m {
                    ZoneToHost::Output { fd, data, .. } => {
                        let out = pb::Output { fd: fd_to_pb(fd).into(), data: data.to_vec() };
                        yield Ok(pb::ExecResponse { kind: Some(pb::exec_response::Kind::Output(out)) });
                    }
                    ZoneToHost::Exited { status, .. } => {
                        guard.disarm();
                        let exit = exit_to_pb(&status, false);
                        yield Ok(pb::ExecResponse { kind: Some(pb::exec_response::Kind::Exited(exit)) });
                        return;
                    }
                    ZoneToHost::Error { message, .. } => {
                        tracing::debug!(%message, "exec request failed in the zone");
                    }
                    _ => {}
                }
            }
            yield Err(Status::unavailable("the zone's host channel closed before the exec ended"));
        };
        Ok(Response::new(Box::pin(output)))
    }

    type PortForwardStream = BoxStream<pb::PortForwardResponse>;

    async fn port_forward(
        &self,
        req: Request<Streaming<pb::PortForwardRequest>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        let mut input = req.into_inner();
        let first = input.message().await?.and_then(|m| m.kind);
        let Some(pb::port_forward_request::Kind::Start(start)) = first else {
            return Err(Status::invalid_argument("the first port-forward message must be start"));
        };
        let port = u16::try_from(start.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Status::invalid_argument(format!("port {} is not a TCP port (1 to 65535)", start.port)))?;
        let session = self.workloads.port_forward(&start.zone, port).await?;
        let (id, link) = (session.exec_id, session.link.clone());
        // Client bytes to the port until the client closes its side.
        tokio::spawn(async move {
            while let Ok(Some(msg)) = input.message().await {
                let to_zone = match msg.kind {
                    Some(pb::port_forward_request::Kind::Data(data)) => {
                        for chunk in data.chunks(bulkhead_wire::MAX_DATA_CHUNK) {
                            let m = HostToZone::Stdin { stream_id: id, data: bytes::Bytes::copy_from_slice(chunk) };
                            if link.send(m).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    Some(pb::port_forward_request::Kind::CloseWrite(true)) => HostToZone::CloseStdin { stream_id: id },
                    _ => continue,
                };
                if link.send(to_zone).await.is_err() {
                    return;
                }
            }
        });
        let mut messages = session.messages;
        let mut guard = SessionGuard { link: session.link, id, ended: false };
        let output = async_stream::stream! {
            yield Ok(pb::PortForwardResponse { kind: Some(pb::port_forward_response::Kind::Connected(true)) });
            while let Some(m) = messages.recv().await {
                match m {
                    ZoneToHost::Output { data, .. } => {
                        yield Ok(pb::PortForwardResponse { kind: Some(pb::port_forward_response::Kind::Data(data.to_vec())) });
                    }
                    ZoneToHost::Exited { .. } => {
                        guard.disarm();
                        yield Ok(pb::PortForwardResponse { kind: Some(pb::port_forward_response::Kind::Closed(true)) });
                        return;
                    }
                    ZoneToHost::Error { message, .. } => {
                        tracing::debug!(%message, "a port-forward request failed in the zone");
                    }
                    _ => {}
                }
            }
            yield Err(Status::unavailable("the zone's host channel closed during the port-forward"));
        };
        Ok(Response::new(Box::pin(output)))
    }

    type AttachStream = BoxStream<pb::AttachResponse>;

    async fn attach(&self, req: Request<Streaming<pb::AttachRequest>>) -> Result<Response<Self::AttachStream>, Status> {
        let mut input = req.into_inner();
        let Some(pb::attach_request::Kind::WorkloadId(id)) = input.message().await?.and_then(|m| m.kind) else {
            return Err(Status::invalid_argument("the first attach message must be the workload id"));
        };
        let rec = self.workloads.get(&id).await?;
        let (stream, stdin, link) = self.workloads.attach_input(&rec.id).await?;
        let end = match stdin {
            StdinMode::Closed => EndOfInput::Ignore,
            StdinMode::Open => EndOfInput::KeepOpen,
            StdinMode::Once => EndOfInput::Close,
        };
        tokio::spawn(forward_input(input, link, stream, end, |m: pb::AttachRequest| {
            Some(match m.kind? {
                pb::attach_request::Kind::Stdin(data) => ClientInput::Stdin(data),
                pb::attach_request::Kind::CloseStdin(true) => ClientInput::CloseStdin,
                pb::attach_request::Kind::Resize(size) => ClientInput::Resize(size),
                _ => return None,
            })
        }));
        // The attachment is the output from now on, then the exit.
        let logs = self.workloads.logs(&rec.id, true, 0, crate::zone::now()).await?;
        let exit = logs.exit.clone();
        let output = live_entries(logs.live, logs.exit).map(|e| {
            let out = pb::Output { fd: fd_to_pb(e.fd).into(), data: e.data.to_vec() };
            Ok(pb::AttachResponse { kind: Some(pb::attach_response::Kind::Output(out)) })
        });
        let last = async_stream::stream! {
            if let Some(status) = exit.and_then(|e| *e.borrow()) {
                yield Ok(pb::AttachResponse { kind: Some(pb::attach_response::Kind::Exited(exit_to_pb(&status, false))) });
            }
        };
        Ok(Response::new(Box::pin(output.chain(last))))
    }

    type LogsStream = BoxStream<pb::LogsResponse>;

    async fn get_workload_stats(
        &self,
        req: Request<pb::GetWorkloadStatsRequest>,
    ) -> Result<Response<pb::GetWorkloadStatsResponse>, Status> {
        let (_, usage) = self.workloads.stats(&req.into_inner().workload_id).await?;
        Ok(Response::new(pb::GetWorkloadStatsResponse {
            timestamp: crate::zone::now(),
            cpu_usage_ns: usage.cpu_usage_ns,
            memory_bytes: usage.memory_bytes,
        }))
    }

    async fn update_workload_limits(
        &self,
        req: Request<pb::UpdateWorkloadLimitsRequest>,
    ) -> Result<Response<pb::UpdateWorkloadLimitsResponse>, Status> {
        let req = req.into_inner();
        let rec = self.workloads.update_limits(&req.workload_id, limits_from_pb(req.limits)?).await?;
        Ok(Response::new(pb::UpdateWorkloadLimitsResponse { workload: Some(self.status(&rec)) }))
    }

    async fn reopen_workload_log(
        &self,
        req: Request<pb::ReopenWorkloadLogRequest>,
    ) -> Result<Response<pb::ReopenWorkloadLogResponse>, Status> {
        self.workloads.reopen_log(&req.into_inner().workload_id).await?;
        Ok(Response::new(pb::ReopenWorkloadLogResponse {}))
    }

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let req = req.into_inner();
        let tail = usize::try_from(req.tail_lines).unwrap_or(usize::MAX);
        let logs = self.workloads.logs(&req.workload_id, req.follow, tail, req.since).await?;
        let entry = |e: crate::workloads::logs::LogEntry| pb::LogsResponse {
            timestamp: e.timestamp,
            fd: fd_to_pb(e.fd).into(),
            data: e.data.to_vec(),
        };
        let history = tokio_stream::iter(logs.history.into_iter().map(move |e| Ok(entry(e))));
        let follow = live_entries(logs.live, logs.exit).map(move |e| Ok(entry(e)));
        Ok(Response::new(Box::pin(history.chain(follow))))
    }
}

/// A workload's output as it is printed, until it exits (what was printed before the exit included).
fn live_entries(
    live: Option<tokio::sync::broadcast::Receiver<LogEntry>>,
    exit: Option<tokio::sync::watch::Receiver<Option<ExitStatus>>>,
) -> impl Stream<Item = LogEntry> + Send {
    async_stream::stream! {
        let (Some(mut live), Some(mut exit)) = (live, exit) else { return };
        loop {
            if exit.borrow().is_some() {
                // Exited: drain what was printed before the exit, then end.
                while let Ok(e) = live.try_recv() {
                    yield e;
                }
                return;
            }
            tokio::select! {
                e = live.recv() => match e {
                    Ok(e) => yield e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(skipped = n, "a log follower fell behind");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                changed = exit.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// One message of a client's input to a process (exec or attach).
enum ClientInput {
    Stdin(Vec<u8>),
    CloseStdin,
    Resize(pb::TerminalSize),
}

/// What the end of a client's input does to the process's stdin.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EndOfInput {
    /// Closes it (exec; an attachment to a stdin-once workload).
    Close,
    /// Leaves it open for the next attachment.
    KeepOpen,
    /// The process has no stdin: input is dropped, resizes still go.
    Ignore,
}

/// Forwards a client's input to process `stream_id` in the zone until the client ends its side or the link
/// closes. Stdin is cut into wire-sized chunks.
async fn forward_input<M>(
    mut input: Streaming<M>,
    link: crate::link::ZoneLink,
    stream_id: StreamId,
    end: EndOfInput,
    classify: impl Fn(M) -> Option<ClientInput>,
) {
    let (mut sent_input, mut closed) = (false, false);
    while let Ok(Some(msg)) = input.message().await {
        let to_zone = match classify(msg) {
            Some(ClientInput::Stdin(_) | ClientInput::CloseStdin) if end == EndOfInput::Ignore || closed => {
                tracing::debug!(stream = stream_id.0, "input for a process without (or after its) stdin dropped");
                continue;
            }
            Some(ClientInput::Stdin(data)) => {
                sent_input = true;
                for chunk in data.chunks(bulkhead_wire::MAX_DATA_CHUNK) {
                    let m = HostToZone::Stdin { stream_id, data: bytes::Bytes::copy_from_slice(chunk) };
                    if link.send(m).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Some(ClientInput::CloseStdin) if end == EndOfInput::KeepOpen => continue,
            Some(ClientInput::CloseStdin) => {
                closed = true;
                HostToZone::CloseStdin { stream_id }
            }
            Some(ClientInput::Resize(size)) => resize(stream_id, &size),
            None => continue,
        };
        if link.send(to_zone).await.is_err() {
            return;
        }
    }
    // The client went away without closing its input: a stdin-once attachment that wrote ends it anyway.
    if end == EndOfInput::Close && sent_input && !closed {
        let _ = link.send(HostToZone::CloseStdin { stream_id }).await;
    }
}

fn resize(stream_id: StreamId, size: &pb::TerminalSize) -> HostToZone {
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    HostToZone::Resize { stream_id, rows: clamp(size.rows), cols: clamp(size.cols) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_wire::BpfInstruction;

    #[test]
    fn users_are_a_uid_or_a_name_with_a_group() -> Result<(), Status> {
        let pb_user = |uid: Option<u32>, gid: Option<u32>, name: &str| pb::User {
            uid,
            gid,
            name: name.into(),
            additional_gids: vec![],
        };
        let ask = |user: Option<&str>, group: Option<&str>| UserRequest {
            user: user.map(str::to_owned),
            group: group.map(str::to_owned),
            additional_gids: vec![],
        };
        assert_eq!(user_from_pb(None)?, None);
        assert_eq!(user_from_pb(Some(pb_user(None, None, "")))?, None, "empty: the image's (or workload's) user");
        assert_eq!(user_from_pb(Some(pb_user(Some(1000), None, "")))?, Some(ask(Some("1000"), None)));
        assert_eq!(user_from_pb(Some(pb_user(None, Some(5), "nginx")))?, Some(ask(Some("nginx"), Some("5"))));
        assert_eq!(user_from_pb(Some(pb_user(None, Some(5), "")))?, Some(ask(None, Some("5"))));
        let gids = pb::User { additional_gids: vec![7], ..pb_user(None, None, "") };
        assert_eq!(user_from_pb(Some(gids))?.map(|u| u.additional_gids), Some(vec![7]));
        let both = user_from_pb(Some(pb_user(Some(1), None, "nginx"))).map_err(|e| e.code());
        assert_eq!(both, Err(tonic::Code::InvalidArgument));
        Ok(())
    }

    #[test]
    fn security_policies_map_both_ways_and_bad_ones_are_invalid_arguments() -> Result<(), Status> {
        let policy = pb::SecurityPolicy {
            cap_bounding: 0x400,
            cap_effective: 0x400,
            cap_permitted: 0x400,
            no_new_privs: true,
            masked_paths: vec!["/proc/kcore".into()],
            readonly_paths: vec!["/proc/sys".into()],
            // BPF_RET | BPF_K, SECCOMP_RET_ALLOW.
            seccomp_programs: vec![vec![0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0x7f]],
            ..Default::default()
        };
        let security = security_from_pb(Some(policy.clone()))?.ok_or_else(|| Status::internal("no policy"))?;
        assert_eq!(security.seccomp[0].0, [BpfInstruction { code: 6, jt: 0, jf: 0, k: 0x7fff_0000 }]);
        assert_eq!(security_to_pb(&security), policy);
        assert_eq!(security_from_pb(None)?, None);
        let torn = pb::SecurityPolicy { seccomp_programs: vec![vec![0; 7]], ..policy.clone() };
        assert_eq!(security_from_pb(Some(torn)).map_err(|e| e.code()), Err(tonic::Code::InvalidArgument));
        let wider = pb::SecurityPolicy { cap_effective: 0x401, ..policy };
        let err = security_from_pb(Some(wider)).err().map(|e| e.message().to_owned()).unwrap_or_default();
        assert!(err.contains("effective must be within permitted"), "{err}");
        Ok(())
    }
}
