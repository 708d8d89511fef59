//! `bulkhead.control.v1.WorkloadService`.

use std::pin::Pin;
use std::sync::Arc;

use bulkhead_api::control::v1 as pb;
use bulkhead_wire::{EnvVar, ErrorCode, ExitStatus, HostToZone, OutputFd, StreamId, User, ZoneToHost};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::message_chain;
use crate::hypervisor::Hypervisor;
use crate::workloads::spec::{self, WorkloadRequest};
use crate::workloads::{ExecRequest, WorkloadError, WorkloadManager, WorkloadRecord, WorkloadState};

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
}

impl From<WorkloadError> for Status {
    fn from(e: WorkloadError) -> Status {
        let msg = message_chain(&e);
        match e {
            WorkloadError::NotFound(_) => Status::not_found(msg),
            WorkloadError::AlreadyExists { .. } => Status::already_exists(msg),
            WorkloadError::Zone(z) => Status::from(z),
            WorkloadError::Image(i) => super::images::image_status(i),
            WorkloadError::Spec(_) => Status::invalid_argument(msg),
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

fn user_from_pb(u: Option<pb::User>) -> Result<Option<User>, Status> {
    let Some(u) = u else { return Ok(None) };
    match (u.uid, u.gid, u.name.is_empty()) {
        (None, None, true) => Ok(None),
        (Some(uid), gid, true) => Ok(Some(User { uid, gid: gid.unwrap_or(uid), additional_gids: u.additional_gids })),
        _ => Err(Status::invalid_argument("user names are not resolved yet: give a numeric uid (and gid)".to_owned())),
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

/// The status clients see for a record.
pub fn status_to_pb(r: &WorkloadRecord) -> pb::WorkloadStatus {
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
            stdin: false,
            limits: Some(pb::ResourceLimits {
                memory_bytes: s.limits.memory_bytes.unwrap_or(0),
                cpu_quota_us: s.limits.cpu.map_or(0, |c| c.quota_us),
                cpu_period_us: s.limits.cpu.map_or(0, |c| c.period_us),
                pids_max: s.limits.pids_max.unwrap_or(0),
            }),
            readonly_rootfs: s.readonly_rootfs,
            labels: r.labels.clone().into_iter().collect(),
        }),
        state: match r.state {
            WorkloadState::Created => pb::WorkloadState::Created,
            WorkloadState::Running => pb::WorkloadState::Running,
            WorkloadState::Exited => pb::WorkloadState::Exited,
        }
        .into(),
        pid: r.pid,
        exit: r.exit.as_ref().map(|e| exit_to_pb(e, r.zone_lost)),
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        image_digest: r.image_id.clone(),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

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
        let l = s.limits.unwrap_or_default();
        let limits = spec::limits(l.memory_bytes, l.cpu_quota_us, l.cpu_period_us, l.pids_max)
            .map_err(|e| Status::invalid_argument(format!("invalid limits: {e}")))?;
        let request = WorkloadRequest {
            command: s.command,
            args: s.args,
            env: env_from_pb(s.env),
            working_dir: s.working_dir,
            user: user_from_pb(s.user)?,
            tty: s.tty,
            limits,
            readonly_rootfs: s.readonly_rootfs,
        };
        let rec = self.workloads.create(&req.zone, &s.name, &s.image, request, s.labels.into_iter().collect()).await?;
        Ok(Response::new(pb::CreateWorkloadResponse { workload: Some(status_to_pb(&rec)) }))
    }

    async fn start_workload(
        &self,
        req: Request<pb::StartWorkloadRequest>,
    ) -> Result<Response<pb::StartWorkloadResponse>, Status> {
        let rec = self.workloads.start(&req.into_inner().workload_id).await?;
        Ok(Response::new(pb::StartWorkloadResponse { workload: Some(status_to_pb(&rec)) }))
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
        Ok(Response::new(pb::WaitWorkloadResponse { workload: Some(status_to_pb(&rec)) }))
    }

    async fn get_workload(
        &self,
        req: Request<pb::GetWorkloadRequest>,
    ) -> Result<Response<pb::GetWorkloadResponse>, Status> {
        let rec = self.workloads.get(&req.into_inner().workload_id).await?;
        Ok(Response::new(pb::GetWorkloadResponse { workload: Some(status_to_pb(&rec)) }))
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
            .map(status_to_pb)
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
        tokio::spawn(async move {
            while let Ok(Some(msg)) = input.message().await {
                let to_zone = match msg.kind {
                    Some(pb::exec_request::Kind::Stdin(data)) => {
                        for chunk in data.chunks(bulkhead_wire::MAX_DATA_CHUNK) {
                            let m =
                                HostToZone::Stdin { stream_id: exec_id, data: bytes::Bytes::copy_from_slice(chunk) };
                            if link.send(m).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    Some(pb::exec_request::Kind::CloseStdin(true)) => HostToZone::CloseStdin { stream_id: exec_id },
                    Some(pb::exec_request::Kind::Resize(size)) => resize(exec_id, &size),
                    _ => continue,
                };
                if link.send(to_zone).await.is_err() {
                    return;
                }
            }
        });
        let pid = session.pid;
        let mut messages = session.messages;
        let output = async_stream::stream! {
            yield Ok(pb::ExecResponse { kind: Some(pb::exec_response::Kind::StartedPid(pid)) });
            while let Some(m) = messages.recv().await {
                match m {
                    ZoneToHost::Output { fd, data, .. } => {
                        let out = pb::Output { fd: fd_to_pb(fd).into(), data: data.to_vec() };
                        yield Ok(pb::ExecResponse { kind: Some(pb::exec_response::Kind::Output(out)) });
                    }
                    ZoneToHost::Exited { status, .. } => {
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

    type AttachStream = BoxStream<pb::AttachResponse>;

    async fn attach(
        &self,
        _req: Request<Streaming<pb::AttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        Err(Status::unimplemented("attach is not implemented yet: use logs --follow and exec"))
    }

    type LogsStream = BoxStream<pb::LogsResponse>;

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
        let (live, exit) = (logs.live, logs.exit);
        let follow = async_stream::stream! {
            let (Some(mut live), Some(mut exit)) = (live, exit) else { return };
            loop {
                if exit.borrow().is_some() {
                    // Exited: drain what was printed before the exit, then end.
                    while let Ok(e) = live.try_recv() {
                        yield Ok(entry(e));
                    }
                    return;
                }
                tokio::select! {
                    e = live.recv() => match e {
                        Ok(e) => yield Ok(entry(e)),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::debug!(skipped = n, "a log follower fell behind");
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    changed = exit.changed() => if changed.is_err() { return },
                }
            }
        };
        Ok(Response::new(Box::pin(history.chain(follow))))
    }
}

fn resize(stream_id: StreamId, size: &pb::TerminalSize) -> HostToZone {
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    HostToZone::Resize { stream_id, rows: clamp(size.rows), cols: clamp(size.cols) }
}
