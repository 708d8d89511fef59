//! What init does with the host's requests: workloads and execs through [`crate::workload`], their output
//! and exits back to the host.
//!
//! Ordering: all output of a process is sent before its `Exited`. When a process is reaped, whatever is left
//! in its pipes (or terminal) is read first, then its exit is reported. Output is read only while the
//! channel's backlog is small ([`Agent::wants_output`]), so a chatty workload waits in its pipe instead of
//! growing init's memory.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use bulkhead_wire::{
    EnvVar, ErrorCode, ExitStatus, HostToZone, MountSource, OutputFd, ResourceLimits, ResourceUsage, StreamId, User,
    WorkloadPhase, WorkloadSpec, ZoneToHost, limits::MAX_DATA_CHUNK,
};
use bytes::Bytes;
use nix::errno::Errno;
use nix::unistd::Pid;

use crate::console::chain;
use crate::reap::Reaped;
use crate::say;
use crate::workload::volumes::{self, BindMount};
use crate::workload::{self, ExecLaunch, Launch, Layout, Spawned, WorkloadError, cgroup, rootfs};

/// What the event loop must do after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Keep serving.
    Continue,
    /// Power the zone off, giving processes `grace_ms` after SIGTERM.
    Shutdown {
        /// Grace period in milliseconds.
        grace_ms: u32,
    },
}

/// Stdin bytes held for a process that is not reading, per process.
const MAX_PENDING_STDIN: usize = 1 << 20;
/// End-of-transmission: what closing stdin means on a terminal.
const TTY_EOF: u8 = 0x04;

#[derive(Debug, Clone, Copy)]
enum WorkloadState {
    Created,
    Running(Pid),
    Exited(Option<ExitStatus>),
}

#[derive(Debug)]
struct Workload {
    spec: WorkloadSpec,
    rootfs: PathBuf,
    cgroup: Option<PathBuf>,
    state: WorkloadState,
    /// The spec's volumes, resolved to their places in the zone.
    mounts: Vec<BindMount>,
}

/// A running workload or exec process and its stdio.
#[derive(Debug)]
struct Process {
    pid: Pid,
    /// The workload's cgroup, for the OOM check of a workload's main process.
    oom_cgroup: Option<PathBuf>,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    tty: bool,
    pending_stdin: Vec<u8>,
    close_stdin_when_flushed: bool,
    /// Set when reaped; reported once the output is drained.
    exit: Option<ExitStatus>,
}

impl Process {
    fn new(s: Spawned, oom_cgroup: Option<PathBuf>) -> Self {
        Process {
            pid: s.pid,
            oom_cgroup,
            stdin: s.stdin,
            stdout: Some(s.stdout),
            stderr: s.stderr,
            tty: s.pty_master,
            pending_stdin: Vec::new(),
            close_stdin_when_flushed: false,
            exit: None,
        }
    }

    /// Where input goes: the stdin pipe, or the terminal.
    fn input(&self) -> Option<BorrowedFd<'_>> {
        if self.tty { self.stdout.as_ref().map(AsFd::as_fd) } else { self.stdin.as_ref().map(AsFd::as_fd) }
    }

    /// Writes what the process will take now; keeps the rest.
    fn flush_stdin(&mut self) {
        while !self.pending_stdin.is_empty() {
            let Some(fd) = self.input() else {
                self.pending_stdin.clear();
                break;
            };
            match nix::unistd::write(fd, &self.pending_stdin) {
                Ok(0) | Err(Errno::EAGAIN) => break,
                Ok(n) => {
                    self.pending_stdin.drain(..n);
                }
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    // The reader is gone (EPIPE): its input no longer matters.
                    self.pending_stdin.clear();
                    self.stdin = None;
                }
            }
        }
        if self.pending_stdin.is_empty() && self.close_stdin_when_flushed {
            self.close_stdin_when_flushed = false;
            if self.tty {
                self.pending_stdin.push(TTY_EOF);
                // One more round writes it.
            } else {
                self.stdin = None;
            }
        }
    }
}

/// How long connecting to a port on the zone's loopback may take (it answers at once, or nothing listens).
const PORT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A TCP connection to a port on the zone's loopback, for the host's port-forward: bytes from the host go
/// to the port, bytes from the port to the host as stdout.
#[derive(Debug)]
struct Forward {
    socket: TcpStream,
    /// Bytes from the host the socket has not taken yet.
    pending: Vec<u8>,
    /// The host has no more to send: half-close once `pending` is written.
    close_when_flushed: bool,
    /// Writing failed or was shut down.
    write_closed: bool,
}

impl Forward {
    /// Writes what the socket takes now; half-closes when the host asked and all is written.
    fn flush(&mut self) {
        while !self.pending.is_empty() && !self.write_closed {
            match (&self.socket).write(&self.pending) {
                Ok(0) => break,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // The port reset the connection: what the host sends no longer matters.
                    self.pending.clear();
                    self.write_closed = true;
                }
            }
        }
        if self.pending.is_empty() && self.close_when_flushed && !self.write_closed {
            let _ = self.socket.shutdown(Shutdown::Write);
            self.write_closed = true;
        }
    }
}

/// Reads what is available from `fd` (non-blocking) into output messages. Returns false at end of file.
fn read_available(
    fd: BorrowedFd<'_>,
    stream_id: StreamId,
    which: OutputFd,
    buf: &mut [u8],
    out: &mut Vec<ZoneToHost>,
) -> bool {
    // Bounded per call so one process cannot monopolise the loop; the rest is read on the next wakeup.
    for _ in 0..16 {
        match nix::unistd::read(fd, buf) {
            Ok(0) => return false,
            Ok(n) => out.push(ZoneToHost::Output { stream_id, fd: which, data: Bytes::copy_from_slice(&buf[..n]) }),
            Err(Errno::EAGAIN) => return true,
            Err(Errno::EINTR) => continue,
            // EIO: a terminal whose other side is closed.
            Err(_) => return false,
        }
    }
    true
}

/// The request handler's state.
#[derive(Debug)]
pub struct Agent {
    layout: Layout,
    welcomed: bool,
    workloads: BTreeMap<StreamId, Workload>,
    processes: BTreeMap<StreamId, Process>,
    forwards: BTreeMap<StreamId, Forward>,
    /// Output is read through this one buffer (one wire chunk), not a fresh one per read.
    read_buf: Vec<u8>,
    /// Snapshot volumes a workload mounts: later data for them is ignored (the pod shares the first copy).
    sealed_volumes: BTreeSet<String>,
    /// Snapshot volumes whose data failed, with the reason, for the `CreateWorkload` that mounts them.
    failed_volumes: BTreeMap<String, String>,
}

impl Default for Agent {
    fn default() -> Self {
        Agent::new(Layout::zone())
    }
}

impl Agent {
    /// A fresh agent, before the host's welcome.
    pub fn new(layout: Layout) -> Self {
        Agent {
            layout,
            welcomed: false,
            workloads: BTreeMap::new(),
            processes: BTreeMap::new(),
            forwards: BTreeMap::new(),
            read_buf: vec![0u8; MAX_DATA_CHUNK],
            sealed_volumes: BTreeSet::new(),
            failed_volumes: BTreeMap::new(),
        }
    }

    /// Whether the host has answered our hello.
    pub fn welcomed(&self) -> bool {
        self.welcomed
    }

    /// The host went away. Exec sessions end with the host that ran them (nobody is left to talk to them);
    /// workloads carry on, their output waiting in their pipes for the next host.
    pub fn on_disconnect(&mut self) {
        self.welcomed = false;
        self.forwards.clear();
        for (id, p) in &self.processes {
            if !self.workloads.contains_key(id) && p.exit.is_none() {
                let _ = workload::signal(p.pid, libc::SIGKILL);
            }
        }
    }

    /// The fds whose readiness should wake the loop: every process's output, and stdin with data pending.
    pub fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, bool)> {
        let mut fds = Vec::new();
        for p in self.processes.values() {
            for fd in [&p.stdout, &p.stderr].into_iter().flatten() {
                fds.push((fd.as_fd(), false));
            }
            if !p.pending_stdin.is_empty()
                && let Some(fd) = p.input()
            {
                fds.push((fd, true));
            }
        }
        for f in self.forwards.values() {
            fds.push((f.socket.as_fd(), false));
            if !f.pending.is_empty() && !f.write_closed {
                fds.push((f.socket.as_fd(), true));
            }
        }
        fds
    }

    /// Handles one request; answers go to `out`.
    pub fn handle(&mut self, msg: HostToZone, out: &mut Vec<ZoneToHost>) -> Action {
        match msg {
            HostToZone::Welcome { zone_id, hostname } => {
                say!("host channel up: zone {zone_id} ({hostname})");
                self.welcomed = true;
            }
            HostToZone::Ping { nonce } => out.push(ZoneToHost::Pong { nonce }),
            HostToZone::Shutdown { grace_ms } => return Action::Shutdown { grace_ms },
            HostToZone::CreateWorkload { id, spec } => {
                out.push(self.create(id, spec).unwrap_or_else(|e| e.into_message(id)));
            }
            HostToZone::StartWorkload { id } => out.push(self.start(id).unwrap_or_else(|e| e.into_message(id))),
            HostToZone::RemoveWorkload { id } => out.push(self.remove(id).unwrap_or_else(|e| e.into_message(id))),
            HostToZone::Signal { id, .. } if self.forwards.contains_key(&id) => {
                // A reset: the connection goes at once.
                self.forwards.remove(&id);
                out.push(ZoneToHost::Exited { stream_id: id, status: ExitStatus::Code(0) });
            }
            HostToZone::Signal { id, signal } => {
                if let Err(e) = self.signal(id, signal) {
                    out.push(e.into_message(id));
                }
            }
            HostToZone::Exec { exec_id, workload_id, argv, env, cwd, tty, user } => {
                let exec = ExecRequest { workload_id, argv, env, cwd, tty, user };
                out.push(self.exec(exec_id, exec).unwrap_or_else(|e| e.into_message(exec_id)));
            }
            HostToZone::PortForward { stream_id, port } => {
                out.push(self.port_forward(stream_id, port).unwrap_or_else(|e| e.into_message(stream_id)));
            }
            HostToZone::Stdin { stream_id, data } => {
                if let Err(e) = self.stdin(stream_id, &data) {
                    out.push(e.into_message(stream_id));
                }
            }
            HostToZone::CloseStdin { stream_id } => {
                if let Some(f) = self.forwards.get_mut(&stream_id) {
                    f.close_when_flushed = true;
                    f.flush();
                } else if let Some(p) = self.processes.get_mut(&stream_id) {
                    p.close_stdin_when_flushed = true;
                    p.flush_stdin();
                } else {
                    out.push(Failure::not_found(stream_id).into_message(stream_id));
                }
            }
            HostToZone::Resize { stream_id, rows, cols } => {
                if let Err(e) = self.resize(stream_id, rows, cols) {
                    out.push(e.into_message(stream_id));
                }
            }
            HostToZone::GetStats { id } => out.push(self.stats(id)),
            HostToZone::UpdateLimits { id, limits } => match self.update_limits(id, &limits) {
                Ok(()) => out.push(ZoneToHost::LimitsUpdated { id }),
                Err(e) => out.push(e.into_message(id)),
            },
            HostToZone::QueryWorkload { id } => out.push(self.phase(id)),
            HostToZone::VolumeData { volume, entries } => self.volume_data(volume, &entries),
        }
        Action::Continue
    }

    /// Writes snapshot data (see `HostToZone::VolumeData`); a failure is kept for the `CreateWorkload`.
    fn volume_data(&mut self, volume: String, entries: &[bulkhead_wire::VolumeEntry]) {
        if self.sealed_volumes.contains(&volume) {
            return;
        }
        let dir = volumes::volumes_dir(&self.layout.run_dir);
        if entries.first().is_some_and(|e| e.path.is_empty()) {
            // A volume sent afresh (an earlier create failed half-way): start from nothing.
            self.failed_volumes.remove(&volume);
            if let Err(e) = volumes::remove(&dir, &volume) {
                self.failed_volumes.insert(volume, chain(&e));
                return;
            }
        }
        if self.failed_volumes.contains_key(&volume) {
            return;
        }
        if let Err(e) = volumes::write_entries(&dir, &volume, entries) {
            say!("volume {volume}: {}", chain(&e));
            self.failed_volumes.insert(volume, chain(&e));
        }
    }

    /// The zone paths of a workload's volumes; seals its snapshot volumes, creates its emptyDirs.
    fn resolve_mounts(&mut self, spec: &WorkloadSpec) -> Result<Vec<BindMount>, Failure> {
        let dir = volumes::volumes_dir(&self.layout.run_dir);
        let mut out = Vec::with_capacity(spec.mounts.len());
        for m in &spec.mounts {
            let source = match &m.source {
                MountSource::Snapshot { volume } => {
                    if let Some(reason) = self.failed_volumes.get(volume) {
                        return Err(Failure::new(ErrorCode::InvalidRequest, reason.clone()));
                    }
                    let path = dir.join(volume);
                    if std::fs::symlink_metadata(&path).is_err() {
                        return Err(Failure::new(
                            ErrorCode::FailedPrecondition,
                            format!("volume {volume} (for {}) was not sent before the workload", m.destination),
                        ));
                    }
                    self.sealed_volumes.insert(volume.clone());
                    path
                }
                MountSource::EmptyDir { volume } => {
                    volumes::ensure_empty_dir(&dir, volume).map_err(|e| Failure::new(ErrorCode::Internal, chain(&e)))?
                }
            };
            out.push(BindMount { source, destination: m.destination.clone(), readonly: m.readonly });
        }
        Ok(out)
    }

    /// Whether `id` names a workload, process or forward already.
    fn in_use(&self, id: StreamId) -> bool {
        self.workloads.contains_key(&id) || self.processes.contains_key(&id) || self.forwards.contains_key(&id)
    }

    fn create(&mut self, id: StreamId, spec: WorkloadSpec) -> Result<ZoneToHost, Failure> {
        if self.in_use(id) {
            return Err(Failure::new(ErrorCode::AlreadyExists, format!("id {id} is in use")));
        }
        let mounts = self.resolve_mounts(&spec)?;
        let image = rootfs::mount_image(&self.layout, &spec.root_device)?;
        if spec.readonly_rootfs {
            rootfs::create_mount_points(&self.layout, id.0, &image, &mounts)?;
        }
        let root = rootfs::prepare(&self.layout, id.0, &image, spec.readonly_rootfs)?;
        let cgroup = match cgroup::create(&self.layout, id.0, &spec.limits) {
            Ok(cg) => Some(cg),
            Err(e) => {
                let _ = rootfs::remove(&self.layout, id.0);
                return Err(e.into());
            }
        };
        self.workloads.insert(id, Workload { spec, rootfs: root, cgroup, state: WorkloadState::Created, mounts });
        Ok(ZoneToHost::WorkloadCreated { id })
    }

    fn start(&mut self, id: StreamId) -> Result<ZoneToHost, Failure> {
        let w = self.workloads.get_mut(&id).ok_or_else(|| Failure::not_found(id))?;
        if !matches!(w.state, WorkloadState::Created) {
            return Err(Failure::new(ErrorCode::FailedPrecondition, format!("workload {id} was started already")));
        }
        let launch = Launch {
            mounts: w.mounts.clone(),
            ..Launch::new(id.0, w.spec.clone(), w.rootfs.clone(), w.cgroup.clone())
        };
        let spawned = workload::spawn_workload(&launch)?;
        let pid = spawned.pid;
        w.state = WorkloadState::Running(pid);
        self.processes.insert(id, Process::new(spawned, w.cgroup.clone()));
        Ok(ZoneToHost::WorkloadStarted { id, pid: pid.as_raw().unsigned_abs() })
    }

    fn remove(&mut self, id: StreamId) -> Result<ZoneToHost, Failure> {
        let w = self.workloads.get(&id).ok_or_else(|| Failure::not_found(id))?;
        if matches!(w.state, WorkloadState::Running(_)) {
            return Err(Failure::new(
                ErrorCode::FailedPrecondition,
                format!("workload {id} is running: stop it (signal) before removing it"),
            ));
        }
        if let Some(cg) = &w.cgroup {
            cgroup::remove(cg)?;
        }
        rootfs::remove(&self.layout, id.0)?;
        self.workloads.remove(&id);
        Ok(ZoneToHost::WorkloadRemoved { id })
    }

    fn signal(&mut self, id: StreamId, signal: i32) -> Result<(), Failure> {
        let p = self.processes.get(&id).filter(|p| p.exit.is_none()).ok_or_else(|| Failure::not_running(id))?;
        workload::signal(p.pid, signal).map_err(Failure::from)
    }

    fn exec(&mut self, exec_id: StreamId, req: ExecRequest) -> Result<ZoneToHost, Failure> {
        if self.in_use(exec_id) {
            return Err(Failure::new(ErrorCode::AlreadyExists, format!("id {exec_id} is in use")));
        }
        let w = self.workloads.get(&req.workload_id).ok_or_else(|| Failure::not_found(req.workload_id))?;
        let WorkloadState::Running(target) = w.state else {
            return Err(Failure::not_running(req.workload_id));
        };
        let launch = ExecLaunch {
            target,
            cgroup: w.cgroup.clone(),
            argv: req.argv,
            env: merge_env(&w.spec.env, req.env),
            cwd: req.cwd.unwrap_or_else(|| w.spec.cwd.clone()),
            user: req.user.unwrap_or_else(|| w.spec.user.clone()),
            tty: req.tty,
            security: w.spec.security.as_deref().cloned(),
            helper_exe: PathBuf::from(workload::SELF_EXE),
        };
        let spawned = workload::spawn_exec(&launch)?;
        let pid = spawned.pid;
        self.processes.insert(exec_id, Process::new(spawned, None));
        Ok(ZoneToHost::ExecStarted { exec_id, pid: pid.as_raw().unsigned_abs() })
    }

    fn port_forward(&mut self, id: StreamId, port: u16) -> Result<ZoneToHost, Failure> {
        if self.in_use(id) {
            return Err(Failure::new(ErrorCode::AlreadyExists, format!("id {id} is in use")));
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let socket = TcpStream::connect_timeout(&addr, PORT_CONNECT_TIMEOUT).map_err(|e| {
            Failure::new(ErrorCode::FailedPrecondition, format!("connecting to port {port} in the zone: {e}"))
        })?;
        socket
            .set_nonblocking(true)
            .map_err(|e| Failure::new(ErrorCode::Internal, format!("port {port}: non-blocking socket: {e}")))?;
        self.forwards
            .insert(id, Forward { socket, pending: Vec::new(), close_when_flushed: false, write_closed: false });
        Ok(ZoneToHost::PortForwardConnected { stream_id: id })
    }

    fn stdin(&mut self, id: StreamId, data: &[u8]) -> Result<(), Failure> {
        if let Some(f) = self.forwards.get_mut(&id) {
            if f.close_when_flushed || f.write_closed {
                return Err(Failure::new(
                    ErrorCode::FailedPrecondition,
                    format!("{id}'s connection is closed for writing"),
                ));
            }
            if f.pending.len() + data.len() > MAX_PENDING_STDIN {
                return Err(Failure::new(
                    ErrorCode::ResourceExhausted,
                    format!(
                        "port-forward {id}: the port is not reading; {MAX_PENDING_STDIN} bytes are waiting already"
                    ),
                ));
            }
            f.pending.extend_from_slice(data);
            f.flush();
            return Ok(());
        }
        let p = self.processes.get_mut(&id).ok_or_else(|| Failure::not_found(id))?;
        if p.input().is_none() {
            return Err(Failure::new(ErrorCode::FailedPrecondition, format!("{id}'s stdin is closed")));
        }
        if p.pending_stdin.len() + data.len() > MAX_PENDING_STDIN {
            return Err(Failure::new(
                ErrorCode::ResourceExhausted,
                format!("{id} is not reading its stdin; {MAX_PENDING_STDIN} bytes are waiting already"),
            ));
        }
        p.pending_stdin.extend_from_slice(data);
        p.flush_stdin();
        Ok(())
    }

    fn resize(&mut self, id: StreamId, rows: u16, cols: u16) -> Result<(), Failure> {
        let p = self.processes.get(&id).ok_or_else(|| Failure::not_found(id))?;
        match (&p.stdout, p.tty) {
            (Some(master), true) => workload::resize(master.as_fd(), rows, cols).map_err(Failure::from),
            _ => Err(Failure::new(ErrorCode::FailedPrecondition, format!("{id} has no terminal"))),
        }
    }

    /// Where workload `id` is. A reaped workload whose exit has not been sent yet is still running as far as
    /// the host is concerned: its last output and its `Exited` are on their way.
    fn phase(&self, id: StreamId) -> ZoneToHost {
        let Some(w) = self.workloads.get(&id) else { return Failure::not_found(id).into_message(id) };
        let phase = match (w.state, self.processes.get(&id)) {
            (WorkloadState::Created, _) => WorkloadPhase::Created,
            (_, Some(p)) => WorkloadPhase::Running { pid: p.pid.as_raw().unsigned_abs() },
            (WorkloadState::Running(pid), None) => WorkloadPhase::Running { pid: pid.as_raw().unsigned_abs() },
            (WorkloadState::Exited(Some(status)), None) => WorkloadPhase::Exited { status },
            // An exit status the kernel reported in a form we do not know: the process is gone all the same.
            (WorkloadState::Exited(None), None) => {
                WorkloadPhase::Exited { status: ExitStatus::Signaled { signal: libc::SIGKILL, core_dumped: false } }
            }
        };
        ZoneToHost::WorkloadStatus { id, phase }
    }

    fn update_limits(&self, id: StreamId, limits: &ResourceLimits) -> Result<(), Failure> {
        let w = self.workloads.get(&id).ok_or_else(|| Failure::not_found(id))?;
        let dir = w.cgroup.as_deref().ok_or_else(|| {
            Failure::new(ErrorCode::FailedPrecondition, format!("workload {id} has no cgroup any more"))
        })?;
        Ok(cgroup::update(dir, limits)?)
    }

    fn stats(&self, id: Option<StreamId>) -> ZoneToHost {
        let dir = match id {
            None => Some(self.layout.cgroup_root.clone()),
            Some(id) => self.workloads.get(&id).and_then(|w| w.cgroup.clone()),
        };
        let Some(dir) = dir else {
            let id = id.unwrap_or(StreamId(0));
            return Failure::not_found(id).into_message(id);
        };
        let memory_bytes = std::fs::read_to_string(dir.join("memory.current"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .or_else(zone_memory_used)
            .unwrap_or(0);
        let cpu_usage_ns = std::fs::read_to_string(dir.join("cpu.stat"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.trim().parse::<u64>().ok()))
            })
            .map_or(0, |us| us.saturating_mul(1000));
        ZoneToHost::Stats { id, usage: ResourceUsage { cpu_usage_ns, memory_bytes } }
    }

    /// Processes reaped by init: records exits of ours (reported once their output is drained).
    pub fn on_reaped(&mut self, reaped: &[Reaped]) {
        for r in reaped {
            let Some((&id, p)) = self.processes.iter_mut().find(|(_, p)| p.pid == r.pid && p.exit.is_none()) else {
                continue;
            };
            let oom = p.oom_cgroup.as_deref().is_some_and(cgroup::oom_killed);
            p.exit = workload::exit_status(r.status, oom);
            if let Some(w) = self.workloads.get_mut(&id) {
                w.state = WorkloadState::Exited(p.exit);
            }
        }
    }

    /// Whether output should be read now: only while the channel keeps up.
    pub fn wants_output(backlog: usize) -> bool {
        backlog < OUTPUT_BACKLOG_LIMIT
    }

    /// Reads available output, flushes pending stdin, and reports finished processes.
    pub fn collect(&mut self, out: &mut Vec<ZoneToHost>) {
        let mut finished = Vec::new();
        for (&id, p) in self.processes.iter_mut() {
            p.flush_stdin();
            let which = [(OutputFd::Stdout, &mut p.stdout), (OutputFd::Stderr, &mut p.stderr)];
            for (fd_kind, slot) in which {
                if let Some(fd) = slot.as_ref()
                    && !read_available(fd.as_fd(), id, fd_kind, &mut self.read_buf, out)
                {
                    *slot = None;
                }
            }
            if let Some(status) = p.exit {
                // Reaped: what is left in the pipes was read above; do not wait for grandchildren that may hold
                // them open.
                finished.push((id, status));
            }
        }
        for (id, status) in finished {
            self.processes.remove(&id);
            out.push(ZoneToHost::Exited { stream_id: id, status });
        }
        // A forward ends when the port closes its side (or resets): the host's stream ends with it.
        let mut closed = Vec::new();
        for (&id, f) in self.forwards.iter_mut() {
            f.flush();
            if !read_available(f.socket.as_fd(), id, OutputFd::Stdout, &mut self.read_buf, out) {
                closed.push(id);
            }
        }
        for id in closed {
            self.forwards.remove(&id);
            out.push(ZoneToHost::Exited { stream_id: id, status: ExitStatus::Code(0) });
        }
    }
}

/// Output is not read while more than this is queued for the host.
const OUTPUT_BACKLOG_LIMIT: usize = 1 << 20;

/// The zone's memory in use, from /proc/meminfo (the root cgroup has no memory.current).
fn zone_memory_used() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()))
    };
    Some(kib("MemTotal:")?.saturating_sub(kib("MemAvailable:")?).saturating_mul(1024))
}

/// The exec's environment: the workload's, with the exec's entries added or overriding by name.
fn merge_env(base: &[EnvVar], extra: Vec<EnvVar>) -> Vec<EnvVar> {
    let mut env: Vec<EnvVar> = base.iter().filter(|b| !extra.iter().any(|e| e.name == b.name)).cloned().collect();
    env.extend(extra);
    env
}

struct ExecRequest {
    workload_id: StreamId,
    argv: Vec<String>,
    env: Vec<EnvVar>,
    cwd: Option<String>,
    tty: bool,
    user: Option<User>,
}

/// A failed request, as reported to the host.
#[derive(Debug)]
struct Failure {
    code: ErrorCode,
    message: String,
}

impl Failure {
    fn new(code: ErrorCode, message: String) -> Self {
        Failure { code, message }
    }

    fn not_found(id: StreamId) -> Self {
        Failure::new(ErrorCode::NotFound, format!("no workload or exec {id} in this zone"))
    }

    fn not_running(id: StreamId) -> Self {
        Failure::new(ErrorCode::FailedPrecondition, format!("{id} is not running"))
    }

    fn into_message(self, id: StreamId) -> ZoneToHost {
        // The wire bounds messages; keep the start, which names the failed operation.
        let mut message = self.message;
        if message.len() > bulkhead_wire::limits::MAX_MESSAGE_LEN {
            let mut cut = bulkhead_wire::limits::MAX_MESSAGE_LEN;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        ZoneToHost::Error { request: Some(id), code: self.code, message }
    }
}

impl From<WorkloadError> for Failure {
    fn from(e: WorkloadError) -> Self {
        Failure::new(e.code(), chain(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Agent {
        Agent::new(Layout {
            dev_dir: "/nonexistent/dev".into(),
            run_dir: "/nonexistent/run".into(),
            cgroup_root: "/nonexistent/cgroup".into(),
        })
    }

    #[test]
    fn a_volume_that_failed_or_never_came_fails_the_workload_that_mounts_it() {
        use bulkhead_wire::{Mount, VolumeEntry, VolumeEntryKind};
        let run = std::env::temp_dir().join(format!("bulkhead-zone-agent-vol-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run);
        let mut agent = Agent::new(Layout { run_dir: run.clone(), ..Layout::zone() });
        let mut out = Vec::new();
        let dir = VolumeEntry { path: String::new(), kind: VolumeEntryKind::Dir { mode: 0o755 } };
        // A chunk for a file no earlier chunk created: the volume fails, silently for now.
        let orphan = VolumeEntry {
            path: "f".into(),
            kind: VolumeEntryKind::File { mode: 0o644, offset: 9, data: Bytes::from_static(b"x") },
        };
        agent.handle(HostToZone::VolumeData { volume: "s-bad".into(), entries: vec![dir.clone(), orphan] }, &mut out);
        assert!(out.is_empty(), "VolumeData has no answer: {out:?}");
        let create = |volume: &str| {
            let spec = WorkloadSpec {
                argv: vec!["sh".into()],
                env: Vec::new(),
                cwd: "/".into(),
                user: User::root(),
                tty: false,
                limits: ResourceLimits::default(),
                readonly_rootfs: false,
                hostname: None,
                root_device: "xvdb".into(),
                security: None,
                mounts: vec![Mount {
                    source: MountSource::Snapshot { volume: volume.into() },
                    destination: "/v".into(),
                    readonly: true,
                }],
            };
            HostToZone::CreateWorkload { id: StreamId(1), spec }
        };
        agent.handle(create("s-bad"), &mut out);
        assert!(
            matches!(&out[..], [ZoneToHost::Error { request: Some(StreamId(1)), code: ErrorCode::InvalidRequest, message }] if message.contains("s-bad")),
            "{out:?}"
        );
        out.clear();
        agent.handle(create("s-never"), &mut out);
        assert!(
            matches!(&out[..], [ZoneToHost::Error { code: ErrorCode::FailedPrecondition, message, .. }] if message.contains("was not sent")),
            "{out:?}"
        );
        // Sent afresh (root first), the volume is good again.
        out.clear();
        agent.handle(HostToZone::VolumeData { volume: "s-bad".into(), entries: vec![dir] }, &mut out);
        assert!(run.join("volumes/s-bad").is_dir() && !agent.failed_volumes.contains_key("s-bad"));
        let _ = std::fs::remove_dir_all(&run);
    }

    #[test]
    fn ping_is_answered_with_the_same_nonce_and_shutdown_ends_the_loop() {
        let mut agent = agent();
        let mut out = Vec::new();
        assert_eq!(agent.handle(HostToZone::Ping { nonce: 42 }, &mut out), Action::Continue);
        assert_eq!(out, [ZoneToHost::Pong { nonce: 42 }]);
        assert_eq!(agent.handle(HostToZone::Shutdown { grace_ms: 5 }, &mut out), Action::Shutdown { grace_ms: 5 });
        assert!(!agent.welcomed());
        agent.handle(HostToZone::Welcome { zone_id: "z".into(), hostname: "h".into() }, &mut out);
        assert!(agent.welcomed());
    }

    #[test]
    fn requests_about_unknown_ids_are_answered_with_not_found() {
        let mut agent = agent();
        let mut out = Vec::new();
        agent.handle(HostToZone::StartWorkload { id: StreamId(4) }, &mut out);
        agent.handle(HostToZone::Signal { id: StreamId(5), signal: 9 }, &mut out);
        agent.handle(HostToZone::Resize { stream_id: StreamId(6), rows: 1, cols: 1 }, &mut out);
        let codes: Vec<_> = out
            .iter()
            .map(|m| match m {
                ZoneToHost::Error { request, code, .. } => (request.map(|r| r.0), *code),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            codes,
            [(Some(4), ErrorCode::NotFound), (Some(5), ErrorCode::FailedPrecondition), (Some(6), ErrorCode::NotFound)]
        );
    }

    /// Collects until `done` holds for what came out, for at most 5 s.
    fn collect_until(agent: &mut Agent, out: &mut Vec<ZoneToHost>, done: impl Fn(&[ZoneToHost]) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !done(out) && std::time::Instant::now() < deadline {
            agent.collect(out);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn stdout_of(out: &[ZoneToHost], id: StreamId) -> Vec<u8> {
        out.iter()
            .filter_map(|m| match m {
                ZoneToHost::Output { stream_id, fd: OutputFd::Stdout, data } if *stream_id == id => Some(data.to_vec()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// A loopback TCP port that is bound but not listening: connecting to it is refused for as long as the
    /// returned socket lives.
    fn closed_port() -> std::io::Result<(std::os::fd::OwnedFd, u16)> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, getsockname, socket};
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(127, 0, 0, 1, 0))?;
        let addr: SockaddrIn = getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
        Ok((fd, addr.port()))
    }

    #[test]
    fn a_port_forward_carries_bytes_both_ways_half_closes_and_ends_with_the_port() -> std::io::Result<()> {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let mut agent = agent();
        let mut out = Vec::new();
        let id = StreamId(9);
        agent.handle(HostToZone::PortForward { stream_id: id, port }, &mut out);
        assert_eq!(out, [ZoneToHost::PortForwardConnected { stream_id: id }]);
        let (mut server, _) = listener.accept()?;

        // Host -> port, then the host half-closes: the server reads everything and EOF.
        agent.handle(HostToZone::Stdin { stream_id: id, data: Bytes::from_static(b"ping") }, &mut out);
        agent.handle(HostToZone::CloseStdin { stream_id: id }, &mut out);
        let mut got = Vec::new();
        server.read_to_end(&mut got)?;
        assert_eq!(got, b"ping");
        // Port -> host still flows after the half-close; closing the port ends the stream.
        server.write_all(b"pong")?;
        drop(server);
        let ended =
            |o: &[ZoneToHost]| o.iter().any(|m| matches!(m, ZoneToHost::Exited { stream_id, .. } if *stream_id == id));
        collect_until(&mut agent, &mut out, ended);
        assert_eq!(stdout_of(&out, id), b"pong");
        assert!(matches!(out.last(), Some(ZoneToHost::Exited { status: ExitStatus::Code(0), .. })), "{out:?}");

        // Nothing listening: the request fails with the reason; the id is free again. The port stays bound
        // (without listen) so that no other test can take it and answer in the meantime.
        drop(listener);
        let closed = closed_port()?;
        out.clear();
        agent.handle(HostToZone::PortForward { stream_id: id, port: closed.1 }, &mut out);
        match &out[..] {
            [ZoneToHost::Error { request: Some(r), code: ErrorCode::FailedPrecondition, message }] => {
                assert_eq!(*r, id);
                assert!(message.contains(&format!("port {}", closed.1)), "{message}");
            }
            other => panic!("{other:?}"),
        }
        Ok(())
    }

    #[test]
    fn a_reset_port_forward_ends_at_once() -> std::io::Result<()> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let mut agent = agent();
        let mut out = Vec::new();
        let id = StreamId(3);
        agent.handle(HostToZone::PortForward { stream_id: id, port: listener.local_addr()?.port() }, &mut out);
        agent.handle(HostToZone::Signal { id, signal: 9 }, &mut out);
        assert_eq!(out.last(), Some(&ZoneToHost::Exited { stream_id: id, status: ExitStatus::Code(0) }));
        assert!(agent.poll_fds().is_empty());
        Ok(())
    }

    #[test]
    fn exec_env_overrides_the_workloads_by_name() {
        let e = |n: &str, v: &str| EnvVar { name: n.into(), value: v.into() };
        let merged = merge_env(&[e("PATH", "/bin"), e("A", "1")], vec![e("A", "2"), e("B", "3")]);
        assert_eq!(merged, [e("PATH", "/bin"), e("A", "2"), e("B", "3")]);
    }

    #[test]
    fn error_messages_are_cut_to_the_wire_limit() {
        let long = "é".repeat(bulkhead_wire::limits::MAX_MESSAGE_LEN);
        match Failure::new(ErrorCode::Internal, long).into_message(StreamId(1)) {
            ZoneToHost::Error { message, .. } => assert!(message.len() <= bulkhead_wire::limits::MAX_MESSAGE_LEN),
            other => panic!("{other:?}"),
        }
    }
}
