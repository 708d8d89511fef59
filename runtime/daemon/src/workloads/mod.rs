//! Workloads: containers inside zones. A workload's root image is attached to its zone as a read-only PV
//! disk (one per image per zone), the zone's init is asked over the host channel to create and start it,
//! and what the zone reports (output, exit) is recorded: output in a CRI-format log file, the rest in a
//! persisted record.
//!
//! Each workload has one route on its zone's link (see [`crate::link`]), drained by one pump task: answers to
//! requests go to the waiting caller (one request at a time per workload), output to the log and live
//! followers, the exit to the record and to waiters.

pub mod logs;
pub mod spec;
pub mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use bulkhead_wire::{
    EnvVar, ErrorCode, ExitStatus, HostToZone, ResourceLimits, ResourceUsage, StreamId, WorkloadPhase, WorkloadSpec,
    ZoneToHost,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, broadcast, mpsc, oneshot, watch};

use crate::hypervisor::Hypervisor;
use crate::link::{LinkClosed, ZoneLink};
use crate::manager::{ManagerError, ZoneManager};
use crate::zone::{Nanos, ZoneState, now};
use bulkhead_oci::{ImageError, ImageStore};
use bulkhead_store::{RecordStore, StoreError};
use logs::{LogEntry, LogWriter};
pub use spec::{SpecError, UserRequest, WorkloadRequest};

/// How long the zone has to answer a request.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a workload waits for its booting zone (longer than the zone's hello timeout, which fails it).
const READY_WAIT: Duration = Duration::from_secs(180);
/// Live output entries a follower may fall behind before it misses some.
const FOLLOW_BACKLOG: usize = 1024;
/// Guest device names for root images, in order of use (`xvda` is left free for a zone's own disk).
const DEVICE_LETTERS: &str = "bcdefghijklmnopqrstuvwxyz";

/// Where a workload is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadState {
    /// Created in the zone, not started.
    Created,
    /// Its process runs.
    Running,
    /// It ended (see the exit).
    Exited,
}

/// What the daemon keeps for a workload's client besides the spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadMeta {
    /// Labels (selectable).
    pub labels: BTreeMap<String, String>,
    /// The client's opaque record.
    pub client_state: String,
    /// Where to write the output log; `None` = the daemon's own log directory.
    pub log_path: Option<PathBuf>,
    /// What the process's stdin is.
    pub stdin: StdinMode,
}

/// What a workload's stdin is connected to (CRI's `stdin` and `stdin_once`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StdinMode {
    /// Nothing: the process reads end-of-file at once, as from `/dev/null` (a tty workload keeps its terminal
    /// open, as `docker run -t` without `-i` does).
    #[default]
    Closed,
    /// Attachments write to it; the end of an attachment's input leaves it open for the next one.
    Open,
    /// Open until the first attachment that sent input ends.
    Once,
}

/// The persisted record of one workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    /// Daemon-assigned id.
    pub id: String,
    /// Its zone's id.
    pub zone_id: String,
    /// Its stream id on the zone's channel.
    pub stream: u64,
    /// Name, unique within the zone.
    pub name: String,
    /// The image as the caller named it.
    pub image: String,
    /// The image's id (digest).
    pub image_id: String,
    /// What the zone runs.
    pub spec: WorkloadSpec,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The client's opaque record (see the API's `client_state`).
    #[serde(default)]
    pub client_state: String,
    /// The output log the client asked for; `None` = the daemon's own log directory.
    #[serde(default)]
    pub log_path: Option<PathBuf>,
    /// What the process's stdin is.
    #[serde(default)]
    pub stdin: StdinMode,
    /// State.
    pub state: WorkloadState,
    /// Pid inside the zone while running.
    pub pid: u32,
    /// How it ended.
    pub exit: Option<ExitStatus>,
    /// It ended because its zone went away, not by itself.
    pub zone_lost: bool,
    /// Times, Unix ns.
    pub created_at: Nanos,
    /// When started.
    pub started_at: Nanos,
    /// When it ended.
    pub finished_at: Nanos,
}

/// Workload failures; each maps to one gRPC code at the API edge.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// No such workload.
    #[error("no workload {0:?} (see the list of workloads)")]
    NotFound(String),
    /// The name is taken in that zone.
    #[error("zone {zone} has a workload named {name:?} already: pick another name or remove it")]
    AlreadyExists {
        /// Zone name.
        zone: String,
        /// Workload name.
        name: String,
    },
    /// The zone is unknown or not in a state to run workloads.
    #[error(transparent)]
    Zone(#[from] ManagerError),
    /// The zone is not ready.
    #[error("zone {zone} is {state:?}, not ready: start it and wait until it is ready")]
    ZoneNotReady {
        /// Zone name.
        zone: String,
        /// Its state.
        state: ZoneState,
    },
    /// The zone failed.
    #[error("zone {zone} failed: {reason}")]
    ZoneFailed {
        /// Zone name.
        zone: String,
        /// Why it failed.
        reason: String,
    },
    /// The image is unknown or broken.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The request does not make a runnable workload.
    #[error("invalid workload: {0}")]
    Spec(#[from] SpecError),
    /// The workload is in the wrong state.
    #[error("workload {id} is {state:?}: {what}")]
    WrongState {
        /// Workload id.
        id: String,
        /// Its state.
        state: WorkloadState,
        /// What was refused.
        what: &'static str,
    },
    /// All guest device names of the zone are used by images.
    #[error("zone {0} has no free disk slot for another image: remove workloads of other images first")]
    NoDiskSlot(String),
    /// The hypervisor failed (attaching the image).
    #[error("attaching the image to zone {zone}: {reason}")]
    Attach {
        /// Zone name.
        zone: String,
        /// Why.
        reason: String,
    },
    /// The zone refused or failed the request.
    #[error("the zone refused: {message} ({code:?})")]
    Refused {
        /// The zone's code.
        code: ErrorCode,
        /// The zone's message.
        message: String,
    },
    /// The zone did not answer in time.
    #[error("the zone did not answer within {} s", CALL_TIMEOUT.as_secs())]
    Timeout,
    /// The zone's channel closed.
    #[error("the zone's host channel is closed (the zone stopped, or its init went away)")]
    ChannelClosed,
    /// The zone answered something unexpected.
    #[error("the zone answered {0} to a request")]
    UnexpectedAnswer(&'static str),
    /// State could not be persisted.
    #[error("workload state on disk")]
    Store(#[source] StoreError),
    /// A volume cannot be copied into the zone.
    #[error(transparent)]
    Volume(#[from] volumes::VolumeError),
    /// The log file.
    #[error("workload log {path}")]
    Log {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl From<LinkClosed> for WorkloadError {
    fn from(_: LinkClosed) -> Self {
        WorkloadError::ChannelClosed
    }
}

/// A running workload's live parts.
#[derive(Debug)]
struct Runtime {
    /// One request at a time per workload: the answer slot is single.
    calls: Mutex<()>,
    answer: std::sync::Mutex<Option<oneshot::Sender<ZoneToHost>>>,
    log: std::sync::Mutex<LogWriter>,
    output: broadcast::Sender<LogEntry>,
    exit: watch::Sender<Option<ExitStatus>>,
}

#[derive(Debug, Default)]
struct State {
    records: BTreeMap<String, WorkloadRecord>,
    runtimes: HashMap<String, Arc<Runtime>>,
    /// (zone id, domid, image id) -> guest device.
    disks: HashMap<(String, u32, String), String>,
}

/// What a follower of a workload's output gets: the history, then live entries until the exit.
#[derive(Debug)]
pub struct LogStream {
    /// What the log holds already.
    pub history: Vec<LogEntry>,
    /// Live output, if following and the workload may still print.
    pub live: Option<broadcast::Receiver<LogEntry>>,
    /// Becomes `Some` at the exit.
    pub exit: Option<watch::Receiver<Option<ExitStatus>>>,
}

/// A running exec.
#[derive(Debug)]
pub struct ExecSession {
    /// Its stream id.
    pub exec_id: StreamId,
    /// Its pid inside the zone.
    pub pid: u32,
    /// The zone's link, for stdin, resize and signals.
    pub link: ZoneLink,
    /// Output and the exit.
    pub messages: mpsc::Receiver<ZoneToHost>,
}

/// An exec request.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Added environment.
    pub env: Vec<EnvVar>,
    /// Working directory, `None` = the workload's.
    pub cwd: Option<String>,
    /// Identity, resolved in the workload's image; `None` = the workload's.
    pub user: Option<UserRequest>,
    /// Allocate a terminal.
    pub tty: bool,
}

/// The workload manager.
#[derive(Debug)]
pub struct WorkloadManager<H: Hypervisor> {
    zones: Arc<ZoneManager<H>>,
    images: Arc<ImageStore>,
    store: RecordStore<WorkloadRecord>,
    logs_dir: PathBuf,
    state: Mutex<State>,
    /// Woken when a zone reconnects and its workloads are routed again.
    reconnected: tokio::sync::Notify,
    /// Stream ids: start from the clock in microseconds, so ids stay unique across daemon restarts (a zone
    /// may still run execs started by the previous daemon).
    next_stream: std::sync::atomic::AtomicU64,
    /// Every change of a workload's state, for watchers (kubelet's evented PLEG through bulkhead-cri).
    events: broadcast::Sender<WorkloadEvent>,
}

/// A workload changed state, or was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadEvent {
    /// Its zone.
    pub zone_id: String,
    /// The workload.
    pub workload_id: String,
    /// Its state now (the last one, for a removal).
    pub state: WorkloadState,
    /// How it ended, once exited.
    pub exit: Option<ExitStatus>,
    /// It ended because its zone went away.
    pub zone_lost: bool,
    /// It is gone: removed, or forgotten with its zone.
    pub removed: bool,
    /// When.
    pub at: Nanos,
}

impl WorkloadEvent {
    fn of(r: &WorkloadRecord, removed: bool, at: Nanos) -> Self {
        WorkloadEvent {
            zone_id: r.zone_id.clone(),
            workload_id: r.id.clone(),
            state: r.state,
            exit: r.exit,
            zone_lost: r.zone_lost,
            removed,
            at,
        }
    }
}

/// Events a watcher may fall behind by before it is cut off.
const EVENT_BACKLOG: usize = 1024;

impl<H: Hypervisor> WorkloadManager<H> {
    /// Loads the persisted workloads. `state_dir` holds `workloads/` (records) and `logs/`.
    pub fn open(
        zones: Arc<ZoneManager<H>>,
        images: Arc<ImageStore>,
        state_dir: &std::path::Path,
    ) -> Result<Arc<Self>, WorkloadError> {
        let store = RecordStore::open(state_dir.join("workloads")).map_err(WorkloadError::Store)?;
        let logs_dir = state_dir.join("logs");
        std::fs::create_dir_all(&logs_dir).map_err(|source| WorkloadError::Log { path: logs_dir.clone(), source })?;
        let loaded = store.load_all().map_err(WorkloadError::Store)?;
        for c in &loaded.corrupt {
            tracing::error!(key = %c.key, reason = ?c.reason, "workload record set aside");
        }
        let records = loaded.records.into_iter().collect();
        let start = u64::try_from(now() / 1000).unwrap_or(1).max(1);
        let manager = Arc::new(WorkloadManager {
            zones,
            images,
            store,
            logs_dir,
            state: Mutex::new(State { records, ..State::default() }),
            reconnected: tokio::sync::Notify::new(),
            next_stream: std::sync::atomic::AtomicU64::new(start),
            events: broadcast::channel(EVENT_BACKLOG).0,
        });
        let weak = Arc::downgrade(&manager);
        manager.zones.on_connect(Arc::new(move |zone_id, link| {
            let weak = weak.clone();
            Box::pin(async move {
                if let Some(m) = weak.upgrade() {
                    m.reconnect_zone(&zone_id, link).await;
                }
            })
        }));
        Ok(manager)
    }

    /// A zone's init connected. After a daemon restart its workloads have records but no routes: route them
    /// on the new link (before the zone is welcomed, so none of its messages is missed), note their image
    /// disks again, and ask the zone where each one is, since what it reported while nobody listened is gone.
    async fn reconnect_zone(self: &Arc<Self>, zone_id: &str, link: ZoneLink) {
        let domid = match self.zones.get(zone_id).await {
            Ok(z) => z.domid,
            Err(_) => return,
        };
        let mut resumed = Vec::new();
        {
            let mut state = self.state.lock().await;
            let pending: Vec<WorkloadRecord> = state
                .records
                .values()
                .filter(|r| r.zone_id == zone_id && !state.runtimes.contains_key(&r.id))
                .cloned()
                .collect();
            for rec in pending {
                if let Some(domid) = domid {
                    state
                        .disks
                        .insert((rec.zone_id.clone(), domid, rec.image_id.clone()), rec.spec.root_device.clone());
                }
                if rec.state == WorkloadState::Exited {
                    continue;
                }
                let rt = match self.runtime(&rec) {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(workload = %rec.id, error = %e, "reopening a workload's log failed");
                        continue;
                    }
                };
                let messages = link.subscribe(StreamId(rec.stream));
                tokio::spawn(pump(Arc::downgrade(self), rec.id.clone(), rt.clone(), messages));
                state.runtimes.insert(rec.id.clone(), rt.clone());
                resumed.push((rec, rt));
            }
        }
        self.reconnected.notify_waiters();
        if resumed.is_empty() {
            return;
        }
        tracing::info!(zone = %zone_id, workloads = resumed.len(), "zone reconnected: resuming its workloads");
        // The queries go out after the welcome (the link sends queued requests only then): not awaited here.
        let manager = self.clone();
        tokio::spawn(async move {
            for (rec, rt) in resumed {
                manager.resync(&rec, &rt, &link).await;
            }
        });
    }

    /// Brings a resumed workload's record up to date with what its zone says.
    async fn resync(&self, rec: &WorkloadRecord, rt: &Runtime, link: &ZoneLink) {
        let phase = match call(rt, link, HostToZone::QueryWorkload { id: StreamId(rec.stream) }).await {
            Ok(ZoneToHost::WorkloadStatus { phase, .. }) => phase,
            Err(WorkloadError::Refused { code: ErrorCode::NotFound, .. }) => {
                // The zone never created it (the request was lost with the old daemon) or it is gone.
                tracing::warn!(workload = %rec.id, "the zone does not know this workload any more");
                if let Some(status) = self.record_exit(&rec.id, None).await {
                    let _ = rt.exit.send(Some(status));
                }
                return;
            }
            other => {
                tracing::warn!(workload = %rec.id, error = %unexpected(other), "asking the zone about a workload failed");
                return;
            }
        };
        match phase {
            WorkloadPhase::Created => {}
            WorkloadPhase::Running { pid } => {
                let mut state = self.state.lock().await;
                if let Some(r) = state.records.get_mut(&rec.id)
                    && r.state == WorkloadState::Created
                    // Started while the answer was lost with the old daemon.
                    && let Err(e) = self.record_running(r, pid)
                {
                    tracing::error!(workload = %rec.id, error = %e, "recording a workload as running failed");
                }
            }
            WorkloadPhase::Exited { status } => {
                if let Some(status) = self.record_exit(&rec.id, Some(status)).await {
                    let _ = rt.exit.send(Some(status));
                }
            }
        }
    }

    /// Records a created workload as running with `pid`: on disk first, then in `r`.
    fn record_running(&self, r: &mut WorkloadRecord, pid: u32) -> Result<(), WorkloadError> {
        let mut next = r.clone();
        next.state = WorkloadState::Running;
        next.pid = pid;
        next.started_at = now();
        self.persist(&next)?;
        self.emit(&next, false);
        *r = next;
        Ok(())
    }

    /// A fresh runtime for workload `rec`, appending to its log.
    fn runtime(&self, rec: &WorkloadRecord) -> Result<Arc<Runtime>, WorkloadError> {
        let log_path = self.log_path(rec);
        let log = LogWriter::open(&log_path).map_err(|source| WorkloadError::Log { path: log_path, source })?;
        Ok(Arc::new(Runtime {
            calls: Mutex::new(()),
            answer: std::sync::Mutex::new(None),
            log: std::sync::Mutex::new(log),
            output: broadcast::channel(FOLLOW_BACKLOG).0,
            exit: watch::channel(None).0,
        }))
    }

    fn stream_id(&self) -> StreamId {
        StreamId(self.next_stream.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    /// Where `rec`'s output log is: the client's path, or the daemon's own log directory.
    pub fn log_path(&self, rec: &WorkloadRecord) -> PathBuf {
        rec.log_path.clone().unwrap_or_else(|| self.logs_dir.join(format!("{}.log", rec.id)))
    }

    /// Deletes `rec`'s log if it is the daemon's own; a log at a client's path is the client's to delete
    /// (kubelet removes container logs itself).
    fn remove_own_log(&self, rec: &WorkloadRecord) {
        if rec.log_path.is_none() {
            let _ = std::fs::remove_file(self.log_path(rec));
        }
    }

    fn persist(&self, r: &WorkloadRecord) -> Result<(), WorkloadError> {
        self.store.put(&r.id, r).map_err(WorkloadError::Store)
    }

    fn emit(&self, r: &WorkloadRecord, removed: bool) {
        // No watchers is fine.
        let _ = self.events.send(WorkloadEvent::of(r, removed, now()));
    }

    /// Workload events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<WorkloadEvent> {
        self.events.subscribe()
    }

    /// One event per existing workload, with its current state (for watchers that start with a snapshot).
    pub async fn current_events(&self) -> Vec<WorkloadEvent> {
        let state = self.state.lock().await;
        let at = |r: &WorkloadRecord| r.finished_at.max(r.started_at).max(r.created_at);
        state.records.values().map(|r| WorkloadEvent::of(r, false, at(r))).collect()
    }

    /// Zone `zone`, if it is ready or still booting, with its domain.
    async fn live_zone(&self, zone: &str) -> Result<(crate::zone::ZoneRecord, u32), WorkloadError> {
        let z = self.zones.get(zone).await?;
        match (z.state, z.domid) {
            (ZoneState::Ready | ZoneState::Starting, Some(domid)) => Ok((z, domid)),
            _ => Err(not_ready(z)),
        }
    }

    /// Waits until zone `zone_id` (whose domain is `domid`) is ready; returns its link.
    async fn wait_until_ready(&self, zone_id: &str, domid: u32) -> Result<ZoneLink, WorkloadError> {
        let mut events = self.zones.subscribe();
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        loop {
            let z = self.zones.get(zone_id).await?;
            match z.state {
                ZoneState::Ready if z.domid == Some(domid) => {
                    return self.zones.link(&z.id).ok_or(WorkloadError::ChannelClosed);
                }
                ZoneState::Starting if z.domid == Some(domid) => {}
                _ => return Err(not_ready(z)),
            }
            // Any event (or a lagged receiver) means: look again.
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Ok(_) | Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return Err(not_ready(z)),
            }
        }
    }

    /// The guest device of `img` in zone `z` (domain `domid`), attaching the image if it is not yet.
    async fn image_device(
        &self,
        state: &mut State,
        z: &crate::zone::ZoneRecord,
        domid: u32,
        img: &bulkhead_oci::ImageRecord,
    ) -> Result<String, WorkloadError> {
        let key = (z.id.clone(), domid, img.id.clone());
        if let Some(d) = state.disks.get(&key) {
            return Ok(d.clone());
        }
        let zone_name = z.spec.name.to_string();
        let used: Vec<&String> =
            state.disks.iter().filter(|((zid, d, _), _)| *zid == z.id && *d == domid).map(|(_, v)| v).collect();
        let device = DEVICE_LETTERS
            .chars()
            .map(|c| format!("xvd{c}"))
            .find(|d| !used.contains(&d))
            .ok_or_else(|| WorkloadError::NoDiskSlot(zone_name.clone()))?;
        let path = self.images.erofs_path(img);
        self.zones
            .hypervisor()
            .attach_disk(domid, &path, &device)
            .await
            .map_err(|e| WorkloadError::Attach { zone: zone_name, reason: e.to_string() })?;
        state.disks.insert(key, device.clone());
        Ok(device)
    }

    /// Creates a workload in `zone` from `image`, attaching the image to the zone if it is not yet. A zone that
    /// is still booting is waited for. (Attaching while the zone boots, to overlap the hot-plug with the boot,
    /// made Xen's block hot-plug script fail or time out in the emulated test bed; it stays sequential.)
    pub async fn create(
        self: &Arc<Self>,
        zone: &str,
        name: &str,
        image: &str,
        req: WorkloadRequest,
        meta: WorkloadMeta,
    ) -> Result<WorkloadRecord, WorkloadError> {
        let (z, domid) = self.live_zone(zone).await?;
        let zone_name = z.spec.name.to_string();
        let img = self.images.get(image)?;
        // Read before anything is created: a volume over its bounds refuses the workload early.
        let started = std::time::Instant::now();
        let mount_requests = req.mounts.clone();
        let prepared = tokio::task::spawn_blocking(move || volumes::prepare(&mount_requests))
            .await
            .map_err(|_| WorkloadError::UnexpectedAnswer("a panic while reading volumes"))??;
        if !prepared.mounts.is_empty() {
            tracing::info!(
                zone = %zone_name, name, mounts = prepared.mounts.len(), bytes = prepared.bytes,
                messages = prepared.messages.len(), elapsed_ms = started.elapsed().as_millis() as u64,
                "volumes read"
            );
        }
        let name_taken = |state: &State| state.records.values().any(|r| r.zone_id == z.id && r.name == name);
        if name_taken(&*self.state.lock().await) {
            return Err(WorkloadError::AlreadyExists { zone: zone_name, name: name.to_owned() });
        }
        let link = self.wait_until_ready(&z.id, domid).await?;
        let mut state = self.state.lock().await;
        if name_taken(&state) {
            return Err(WorkloadError::AlreadyExists { zone: zone_name, name: name.to_owned() });
        }
        let device = self.image_device(&mut state, &z, domid, &img).await?;
        let mut wire_spec = spec::build(&req, &img.config, &img.accounts, &device)?;
        wire_spec.mounts = prepared.mounts;
        let stream = self.stream_id();
        let rec = WorkloadRecord {
            id: uuid::Uuid::new_v4().to_string(),
            zone_id: z.id.clone(),
            stream: stream.0,
            name: name.to_owned(),
            image: image.to_owned(),
            image_id: img.id.clone(),
            spec: wire_spec.clone(),
            labels: meta.labels,
            client_state: meta.client_state,
            log_path: meta.log_path,
            stdin: meta.stdin,
            state: WorkloadState::Created,
            pid: 0,
            exit: None,
            zone_lost: false,
            created_at: now(),
            started_at: 0,
            finished_at: 0,
        };
        let rt = self.runtime(&rec)?;
        let messages = link.subscribe(stream);
        tokio::spawn(pump(Arc::downgrade(self), rec.id.clone(), rt.clone(), messages));
        self.persist(&rec)?;
        state.records.insert(rec.id.clone(), rec.clone());
        state.runtimes.insert(rec.id.clone(), rt.clone());
        drop(state);

        // The volumes' data goes first, in order on the same channel; the zone reports a failure with it as
        // the answer to the CreateWorkload.
        let mut sent = Ok(());
        for msg in prepared.messages {
            sent = link.send(msg).await;
            if sent.is_err() {
                break;
            }
        }
        let answer = match sent {
            Ok(()) => call(&rt, &link, HostToZone::CreateWorkload { id: stream, spec: wire_spec }).await,
            Err(e) => Err(e.into()),
        };
        match answer {
            Ok(ZoneToHost::WorkloadCreated { .. }) => {
                tracing::info!(zone = %zone_name, workload = %rec.id, name, image, "workload created");
                self.emit(&rec, false);
                Ok(rec)
            }
            other => {
                // Nothing was created in the zone: forget the record.
                link.unsubscribe(stream);
                let mut state = self.state.lock().await;
                state.records.remove(&rec.id);
                state.runtimes.remove(&rec.id);
                let _ = self.store.remove(&rec.id);
                self.remove_own_log(&rec);
                Err(unexpected(other))
            }
        }
    }

    async fn runtime_and_link(&self, id: &str) -> Result<(WorkloadRecord, Arc<Runtime>, ZoneLink), WorkloadError> {
        let (rec, rt) = {
            let state = self.state.lock().await;
            let rec = find(&state.records, id).cloned().ok_or_else(|| WorkloadError::NotFound(id.to_owned()))?;
            let rt = state.runtimes.get(&rec.id).cloned().ok_or(WorkloadError::ChannelClosed)?;
            (rec, rt)
        };
        let link = self.zones.link(&rec.zone_id).ok_or(WorkloadError::ChannelClosed)?;
        Ok((rec, rt, link))
    }

    /// Starts a created workload.
    pub async fn start(&self, id: &str) -> Result<WorkloadRecord, WorkloadError> {
        let (rec, rt, link) = self.runtime_and_link(id).await?;
        if rec.state != WorkloadState::Created {
            return Err(WorkloadError::WrongState {
                id: rec.id,
                state: rec.state,
                what: "only a created workload starts",
            });
        }
        match call(&rt, &link, HostToZone::StartWorkload { id: StreamId(rec.stream) }).await {
            Ok(ZoneToHost::WorkloadStarted { pid, .. }) => {
                let mut state = self.state.lock().await;
                let r = state.records.get_mut(&rec.id).ok_or_else(|| WorkloadError::NotFound(rec.id.clone()))?;
                // The exit may have been recorded already (a process that ends at once).
                if r.state == WorkloadState::Created {
                    self.record_running(r, pid)?;
                } else if r.started_at == 0 {
                    r.started_at = r.finished_at;
                    r.pid = pid;
                    let snapshot = r.clone();
                    self.persist(&snapshot)?;
                }
                let rec = r.clone();
                drop(state);
                if rec.stdin == StdinMode::Closed && !rec.spec.tty {
                    // The zone gives every workload a stdin pipe: closing it now is what /dev/null would be.
                    link.send(HostToZone::CloseStdin { stream_id: StreamId(rec.stream) }).await?;
                }
                Ok(rec)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Where an attachment's input goes: the running workload's stream on its zone's link, and its stdin mode.
    pub async fn attach_input(&self, id: &str) -> Result<(StreamId, StdinMode, ZoneLink), WorkloadError> {
        let (rec, _rt, link) = self.runtime_and_link(id).await?;
        if rec.state != WorkloadState::Running {
            return Err(WorkloadError::WrongState {
                id: rec.id,
                state: rec.state,
                what: "attach needs a running workload",
            });
        }
        Ok((StreamId(rec.stream), rec.stdin, link))
    }

    /// Sends `signal` to the workload's process.
    pub async fn signal(&self, id: &str, signal: i32) -> Result<(), WorkloadError> {
        let (rec, _rt, link) = self.runtime_and_link(id).await?;
        if rec.state != WorkloadState::Running {
            return Err(WorkloadError::WrongState {
                id: rec.id,
                state: rec.state,
                what: "only a running workload gets signals",
            });
        }
        // Signals are answered only on failure; a failure arrives on the workload's route and is logged there.
        link.send(HostToZone::Signal { id: StreamId(rec.stream), signal }).await?;
        Ok(())
    }

    /// What workload `id`'s cgroup in the zone has used: CPU time and memory, as the zone reports them.
    pub async fn stats(&self, id: &str) -> Result<(WorkloadRecord, ResourceUsage), WorkloadError> {
        let (rec, rt, link) = self.runtime_and_link(id).await?;
        if rec.state == WorkloadState::Exited {
            return Err(WorkloadError::WrongState { id: rec.id, state: rec.state, what: "it has no cgroup any more" });
        }
        match call(&rt, &link, HostToZone::GetStats { id: Some(StreamId(rec.stream)) }).await {
            Ok(ZoneToHost::Stats { usage, .. }) => Ok((rec, usage)),
            other => Err(unexpected(other)),
        }
    }

    /// Replaces the workload's resource limits in its zone, then in its record.
    pub async fn update_limits(&self, id: &str, limits: ResourceLimits) -> Result<WorkloadRecord, WorkloadError> {
        let (rec, rt, link) = self.runtime_and_link(id).await?;
        if rec.state == WorkloadState::Exited {
            return Err(WorkloadError::WrongState { id: rec.id, state: rec.state, what: "it has no cgroup any more" });
        }
        match call(&rt, &link, HostToZone::UpdateLimits { id: StreamId(rec.stream), limits }).await {
            Ok(ZoneToHost::LimitsUpdated { .. }) => {}
            other => return Err(unexpected(other)),
        }
        let mut state = self.state.lock().await;
        let r = state.records.get_mut(&rec.id).ok_or_else(|| WorkloadError::NotFound(rec.id.clone()))?;
        let mut next = r.clone();
        next.spec.limits = limits;
        self.persist(&next)?;
        *r = next;
        Ok(r.clone())
    }

    /// Waits until the workload has exited; returns its record. A workload whose zone has not reconnected
    /// yet (after a daemon restart) is waited for up to the call timeout.
    pub async fn wait(&self, id: &str) -> Result<WorkloadRecord, WorkloadError> {
        let rt = loop {
            // Registered before looking, so a reconnect in between is not missed.
            let reconnected = self.reconnected.notified();
            let (rec, rt) = {
                let state = self.state.lock().await;
                let rec = find(&state.records, id).cloned().ok_or_else(|| WorkloadError::NotFound(id.to_owned()))?;
                let rt = state.runtimes.get(&rec.id).cloned();
                (rec, rt)
            };
            if rec.state == WorkloadState::Exited {
                return Ok(rec);
            }
            if let Some(rt) = rt {
                break (rec.id, rt);
            }
            tokio::time::timeout(CALL_TIMEOUT, reconnected).await.map_err(|_| WorkloadError::ChannelClosed)?;
        };
        let (id, rt) = rt;
        let mut exit = rt.exit.subscribe();
        // The watch ends with the runtime (zone lost): the record says so then.
        let _ = exit.wait_for(Option::is_some).await;
        self.get(&id).await
    }

    /// The id of zone `zone` (id or name).
    pub async fn zone_id(&self, zone: &str) -> Result<String, WorkloadError> {
        Ok(self.zones.get(zone).await?.id)
    }

    /// Whether any workload uses image `image_id` (images in use are not removed).
    pub fn uses_image(&self, image_id: &str) -> bool {
        self.state.try_lock().map_or(true, |s| s.records.values().any(|r| r.image_id == image_id))
    }

    /// A workload by id (or unique name).
    pub async fn get(&self, id: &str) -> Result<WorkloadRecord, WorkloadError> {
        let state = self.state.lock().await;
        find(&state.records, id).cloned().ok_or_else(|| WorkloadError::NotFound(id.to_owned()))
    }

    /// Workloads, of one zone (id) or all, oldest first.
    pub async fn list(&self, zone_id: Option<&str>) -> Vec<WorkloadRecord> {
        let state = self.state.lock().await;
        let mut v: Vec<_> =
            state.records.values().filter(|r| zone_id.is_none_or(|z| r.zone_id == z)).cloned().collect();
        v.sort_by_key(|r| r.created_at);
        v
    }

    /// Removes an exited (or never started) workload; a running one is refused.
    pub async fn remove(&self, id: &str) -> Result<(), WorkloadError> {
        let rec = match self.get(id).await {
            Ok(r) => r,
            Err(WorkloadError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if rec.state == WorkloadState::Running {
            return Err(WorkloadError::WrongState { id: rec.id, state: rec.state, what: "stop it before removing it" });
        }
        if let Ok((_, rt, link)) = self.runtime_and_link(&rec.id).await {
            match call(&rt, &link, HostToZone::RemoveWorkload { id: StreamId(rec.stream) }).await {
                Ok(ZoneToHost::WorkloadRemoved { .. }) | Err(WorkloadError::ChannelClosed) => {}
                Err(WorkloadError::Refused { code: ErrorCode::NotFound, .. }) => {}
                other => return Err(unexpected(other)),
            }
            link.unsubscribe(StreamId(rec.stream));
        }
        let mut state = self.state.lock().await;
        self.store.remove(&rec.id).map_err(WorkloadError::Store)?;
        state.records.remove(&rec.id);
        state.runtimes.remove(&rec.id);
        drop(state);
        self.emit(&rec, true);
        self.remove_own_log(&rec);
        tracing::info!(workload = %rec.id, "workload removed");
        Ok(())
    }

    /// The workload's output: history from the log, and live output with `follow`.
    pub async fn logs(
        &self,
        id: &str,
        follow: bool,
        tail_lines: usize,
        since: i64,
    ) -> Result<LogStream, WorkloadError> {
        let (rec, rt) = {
            let state = self.state.lock().await;
            let rec = find(&state.records, id).cloned().ok_or_else(|| WorkloadError::NotFound(id.to_owned()))?;
            (rec.clone(), state.runtimes.get(&rec.id).cloned())
        };
        let path = self.log_path(&rec);
        let read =
            |path: PathBuf| logs::read(&path, since, tail_lines).map_err(|source| WorkloadError::Log { path, source });
        match rt.filter(|_| follow && rec.state != WorkloadState::Exited) {
            Some(rt) => {
                // Under the writer's lock: no entry is both in the history and live, none is lost between.
                let guard = rt.log.lock().map_err(|_| WorkloadError::ChannelClosed)?;
                let live = rt.output.subscribe();
                let history = read(path)?;
                drop(guard);
                Ok(LogStream { history, live: Some(live), exit: Some(rt.exit.subscribe()) })
            }
            None => Ok(LogStream { history: read(path)?, live: None, exit: None }),
        }
    }

    /// Closes workload `id`'s output log and opens its path anew, creating the file: a log rotator (kubelet)
    /// has renamed the old one.
    pub async fn reopen_log(&self, id: &str) -> Result<(), WorkloadError> {
        let (rec, rt) = {
            let state = self.state.lock().await;
            let rec = find(&state.records, id).cloned().ok_or_else(|| WorkloadError::NotFound(id.to_owned()))?;
            let rt = state.runtimes.get(&rec.id).cloned();
            (rec, rt)
        };
        let rt = match (rec.state, rt) {
            (WorkloadState::Exited, _) => {
                return Err(WorkloadError::WrongState {
                    id: rec.id,
                    state: rec.state,
                    what: "it has exited, so nothing more is written to its log",
                });
            }
            (_, None) => return Err(WorkloadError::ChannelClosed),
            (_, Some(rt)) => rt,
        };
        let path = self.log_path(&rec);
        let fresh = LogWriter::open(&path).map_err(|source| WorkloadError::Log { path: path.clone(), source })?;
        *rt.log.lock().map_err(|_| WorkloadError::ChannelClosed)? = fresh;
        tracing::info!(workload = %rec.id, path = %path.display(), "workload log reopened");
        Ok(())
    }

    /// Starts an extra process in a running workload.
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecSession, WorkloadError> {
        let (rec, _rt, link) = self.runtime_and_link(id).await?;
        if rec.state != WorkloadState::Running {
            return Err(WorkloadError::WrongState {
                id: rec.id,
                state: rec.state,
                what: "exec needs a running workload",
            });
        }
        let user = match &req.user {
            Some(u) => {
                let img = self.images.get(&rec.image_id)?;
                Some(spec::user(u, &img.config, &img.accounts)?)
            }
            None => None,
        };
        let exec_id = self.stream_id();
        let mut messages = link.subscribe(exec_id);
        link.send(HostToZone::Exec {
            exec_id,
            workload_id: StreamId(rec.stream),
            argv: req.argv,
            env: req.env,
            cwd: req.cwd,
            tty: req.tty,
            user,
        })
        .await?;
        let first = tokio::time::timeout(CALL_TIMEOUT, messages.recv()).await.map_err(|_| WorkloadError::Timeout)?;
        match first {
            Some(ZoneToHost::ExecStarted { pid, .. }) => Ok(ExecSession { exec_id, pid, link, messages }),
            other => {
                link.unsubscribe(exec_id);
                Err(unexpected(other.ok_or(WorkloadError::ChannelClosed)))
            }
        }
    }

    /// Opens a TCP connection to `port` on zone `zone`'s loopback (kubelet's port-forward). The session's
    /// messages carry the port's bytes (stdout `Output`) and its end (`Exited`); `Stdin` and `CloseStdin`
    /// go to the port, a `Signal` resets the connection. The session's pid is 0.
    pub async fn port_forward(&self, zone: &str, port: u16) -> Result<ExecSession, WorkloadError> {
        let z = self.zones.get(zone).await?;
        if z.state != ZoneState::Ready {
            return Err(not_ready(z));
        }
        let link = self.zones.link(&z.id).ok_or(WorkloadError::ChannelClosed)?;
        let id = self.stream_id();
        let mut messages = link.subscribe(id);
        link.send(HostToZone::PortForward { stream_id: id, port }).await?;
        let first = tokio::time::timeout(CALL_TIMEOUT, messages.recv()).await.map_err(|_| WorkloadError::Timeout)?;
        match first {
            Some(ZoneToHost::PortForwardConnected { .. }) => Ok(ExecSession { exec_id: id, pid: 0, link, messages }),
            other => {
                link.unsubscribe(id);
                Err(unexpected(other.ok_or(WorkloadError::ChannelClosed)))
            }
        }
    }

    /// Forgets every workload of a destroyed zone: records, logs and disk slots.
    pub async fn forget_zone(&self, zone_id: &str) {
        let mut state = self.state.lock().await;
        let gone: Vec<WorkloadRecord> = state.records.values().filter(|r| r.zone_id == zone_id).cloned().collect();
        for rec in gone {
            if let Err(e) = self.store.remove(&rec.id) {
                tracing::warn!(workload = %rec.id, error = %e, "removing the record of a destroyed zone's workload failed");
                continue;
            }
            state.records.remove(&rec.id);
            state.runtimes.remove(&rec.id);
            self.emit(&rec, true);
            self.remove_own_log(&rec);
        }
        state.disks.retain(|(z, _, _), _| z != zone_id);
    }

    /// Records an exit reported by the zone (`None`: the loss of the zone), unless one is recorded already.
    /// Returns the workload's recorded exit, if it still exists.
    async fn record_exit(&self, id: &str, exit: Option<ExitStatus>) -> Option<ExitStatus> {
        let mut state = self.state.lock().await;
        let r = state.records.get_mut(id)?;
        if r.state == WorkloadState::Exited {
            return r.exit;
        }
        let mut next = r.clone();
        next.state = WorkloadState::Exited;
        next.finished_at = now();
        next.pid = 0;
        match exit {
            Some(status) => next.exit = Some(status),
            None => {
                next.zone_lost = true;
                next.exit = Some(ExitStatus::Signaled { signal: 9, core_dumped: false });
            }
        }
        if let Err(e) = self.persist(&next) {
            tracing::error!(workload = %id, error = %e, "recording a workload's exit failed");
        }
        tracing::info!(workload = %id, exit = ?next.exit, zone_lost = next.zone_lost, "workload exited");
        self.emit(&next, false);
        *r = next;
        r.exit
    }
}

/// The error for a workload request to zone `z`, which is not ready: with the reason if it failed.
fn not_ready(z: crate::zone::ZoneRecord) -> WorkloadError {
    let zone = z.spec.name.to_string();
    match (z.state, z.failure_reason) {
        (ZoneState::Failed, reason) => {
            WorkloadError::ZoneFailed { zone, reason: reason.unwrap_or_else(|| "no reason recorded".into()) }
        }
        (state, _) => WorkloadError::ZoneNotReady { zone, state },
    }
}

/// Sends `msg` and waits for the zone's answer on the workload's route.
async fn call(rt: &Runtime, link: &ZoneLink, msg: HostToZone) -> Result<ZoneToHost, WorkloadError> {
    let _one_at_a_time = rt.calls.lock().await;
    let (tx, rx) = oneshot::channel();
    if let Ok(mut slot) = rt.answer.lock() {
        *slot = Some(tx);
    }
    link.send(msg).await?;
    match tokio::time::timeout(CALL_TIMEOUT, rx).await {
        Err(_) => Err(WorkloadError::Timeout),
        Ok(Err(_)) => Err(WorkloadError::ChannelClosed),
        Ok(Ok(ZoneToHost::Error { code, message, .. })) => Err(WorkloadError::Refused { code, message }),
        Ok(Ok(answer)) => Ok(answer),
    }
}

/// The error for an answer that is not the expected one.
fn unexpected(answer: Result<ZoneToHost, WorkloadError>) -> WorkloadError {
    match answer {
        Err(e) => e,
        Ok(ZoneToHost::Error { code, message, .. }) => WorkloadError::Refused { code, message },
        Ok(m) => WorkloadError::UnexpectedAnswer(crate::link::kind_of(&m)),
    }
}

/// Drains a workload's route: answers to the caller, output to the log, the exit to the record.
async fn pump<H: Hypervisor>(
    manager: Weak<WorkloadManager<H>>,
    id: String,
    rt: Arc<Runtime>,
    mut messages: mpsc::Receiver<ZoneToHost>,
) {
    let mut exited = false;
    while let Some(msg) = messages.recv().await {
        match msg {
            ZoneToHost::Output { fd, data, .. } => {
                let Ok(mut log) = rt.log.lock() else { continue };
                match log.append(SystemTime::now(), fd, &data) {
                    Ok(entries) => {
                        for e in entries {
                            let _ = rt.output.send(e);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(workload = %id, path = %log.path().display(), error = %e, "writing the log failed")
                    }
                }
            }
            ZoneToHost::Exited { status, .. } => {
                if let Some(m) = manager.upgrade() {
                    m.record_exit(&id, Some(status)).await;
                }
                exited = true;
                let _ = rt.exit.send(Some(status));
            }
            answer => {
                let waiting = rt.answer.lock().ok().and_then(|mut slot| slot.take());
                match waiting {
                    Some(tx) => {
                        let _ = tx.send(answer);
                    }
                    None => tracing::warn!(workload = %id, ?answer, "zone message nobody waited for"),
                }
            }
        }
    }
    // The route closed: the zone's channel is gone. A workload that had not exited went down with its zone.
    if !exited
        && let Some(m) = manager.upgrade()
        && let Some(status) = m.record_exit(&id, None).await
    {
        let _ = rt.exit.send(Some(status));
    }
}

fn find<'a>(records: &'a BTreeMap<String, WorkloadRecord>, key: &str) -> Option<&'a WorkloadRecord> {
    records.get(key).or_else(|| {
        let mut by_name = records.values().filter(|r| r.name == key);
        match (by_name.next(), by_name.next()) {
            (Some(r), None) => Some(r),
            _ => None,
        }
    })
}
