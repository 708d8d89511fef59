//! Zone orchestration: records in the store, domains in the hypervisor, and the reconciler that makes the two
//! agree after a daemon restart or behind-the-back changes.
//!
//! Locking: the zone map's lock is held only while records change, never across a hypervisor call, so a slow
//! domain build does not stall `get`/`list` or other zones. A record changed by someone else during a call (for
//! example destroyed while its domain was being built) is detected afterwards and the new domain cleaned up.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Mutex, broadcast, mpsc};

use crate::hypervisor::{
    DomainKind, DomainRequest, DomainRunState, HostInfo, Hypervisor, HypervisorError, ShutdownKind, WaitOutcome,
    ZONE_CHANNEL_PATH,
};
use crate::link::{LinkEvent, LinkParams, ZoneLink};
use crate::network::ZoneNetwork;
use crate::zone::{
    InvalidTransition, Nanos, SpecError, VirtMode, ZoneRecord, ZoneSpec, ZoneState, now, resolve_virt_mode,
};
use bulkhead_store::{RecordStore, StoreError};

/// Prefix of the Xen domain names of zones: how the reconciler tells its domains from anyone else's.
pub const DOMAIN_NAME_PREFIX: &str = "bulkhead-";

/// Node-wide settings of the manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Kernel for zones that name none.
    pub default_kernel: PathBuf,
    /// Initramfs (the zone init) for zones that name none.
    pub default_initrd: PathBuf,
    /// The node's answer for `auto` (see [`resolve_virt_mode`]).
    pub auto_virt_mode: Option<VirtMode>,
    /// How long a zone's init has, from unpause, to connect over the channel before the zone is failed.
    pub hello_timeout: Duration,
}

impl ManagerConfig {
    /// Zones boot `kernel` and `initrd` unless they name their own; `auto` is detected from the host and
    /// inits get [`DEFAULT_HELLO_TIMEOUT`] to connect.
    pub fn new(kernel: impl Into<PathBuf>, initrd: impl Into<PathBuf>) -> Self {
        ManagerConfig {
            default_kernel: kernel.into(),
            default_initrd: initrd.into(),
            auto_virt_mode: None,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
        }
    }
}

/// The default [`ManagerConfig::hello_timeout`]: a zone's init connects about 3 s after boot under software
/// emulation; several zones booting at once on a loaded host take longer.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(120);

/// A zone's use of the host, from the hypervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneUsage {
    /// CPU time of all its vCPUs, nanoseconds.
    pub cpu_time_ns: u64,
    /// Memory its domain holds.
    pub memory_bytes: u64,
    /// Its vCPUs.
    pub vcpus: u32,
}

/// Orchestration failures; each maps to one gRPC code at the API edge.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// No zone with that id or name.
    #[error("no zone {0:?} (see the list of zones)")]
    NotFound(String),
    /// The name is taken.
    #[error("a zone named {0:?} exists already: pick another name or destroy that zone")]
    AlreadyExists(String),
    /// The spec is invalid.
    #[error("invalid zone spec: {0}")]
    InvalidSpec(SpecError),
    /// The zone has no domain to ask about.
    #[error("zone {zone} is {state:?}: only a running zone has statistics")]
    NotRunning {
        /// Zone name.
        zone: String,
        /// Its state.
        state: ZoneState,
    },
    /// The zone is in the wrong state for the operation.
    #[error("zone {zone}: {transition}")]
    WrongState {
        /// Zone name.
        zone: String,
        /// The refused change.
        transition: InvalidTransition,
    },
    /// The requested mode cannot run here.
    #[error("zone {zone}: {reason}")]
    VirtMode {
        /// Zone name.
        zone: String,
        /// Why.
        reason: String,
    },
    /// The hypervisor refused or failed.
    #[error("zone {zone}: {source}")]
    Hypervisor {
        /// Zone name.
        zone: String,
        /// Cause.
        source: HypervisorError,
    },
    /// State could not be persisted or loaded.
    #[error("zone state on disk")]
    Store(#[source] StoreError),
}

/// How many state changes a slow watcher may fall behind before it is cut off.
const EVENT_BACKLOG: usize = 1024;

/// A zone changed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneEvent {
    /// The zone's id.
    pub zone_id: String,
    /// Its new state.
    pub state: ZoneState,
    /// Why, for failures.
    pub reason: Option<String>,
    /// When.
    pub at: Nanos,
}

/// What a reconcile pass changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Zones marked failed, with the reason.
    pub failed: Vec<(String, String)>,
    /// Zones that finished stopping.
    pub stopped: Vec<String>,
    /// Domains of ours with no zone record, destroyed.
    pub orphans_destroyed: Vec<u32>,
}

/// The zone manager.
#[derive(Debug)]
pub struct ZoneManager<H> {
    hv: H,
    store: RecordStore<ZoneRecord>,
    zones: Mutex<BTreeMap<String, ZoneRecord>>,
    cfg: ManagerConfig,
    events: broadcast::Sender<ZoneEvent>,
    /// The host channel of each zone whose domain this daemon serves, by zone id.
    links: std::sync::Mutex<HashMap<String, ZoneLink>>,
    /// Runs when a zone's init connects, before it is welcomed (see [`ZoneManager::on_connect`]).
    on_connect: OnConnect,
}

#[derive(Default)]
struct OnConnect(std::sync::OnceLock<ConnectHook>);

impl std::fmt::Debug for OnConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "OnConnect(set)" } else { "OnConnect(unset)" })
    }
}

/// What runs when a zone's init connects, before it is welcomed: `(zone id, link)`.
pub type ConnectHook = Arc<dyn Fn(String, ZoneLink) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

impl<H: Hypervisor> ZoneManager<H> {
    /// Loads the persisted zones and reconciles them with what the hypervisor reports.
    pub async fn open(hv: H, store: RecordStore<ZoneRecord>, cfg: ManagerConfig) -> Result<Self, ManagerError> {
        let loaded = store.load_all().map_err(ManagerError::Store)?;
        for c in &loaded.corrupt {
            tracing::error!(key = %c.key, reason = ?c.reason, moved_to = %c.moved_to.display(), "zone record set aside");
        }
        let zones = loaded.records.into_iter().collect();
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let m = ZoneManager {
            hv,
            store,
            zones: Mutex::new(zones),
            cfg,
            events,
            links: Default::default(),
            on_connect: Default::default(),
        };
        let report = m.reconcile().await?;
        tracing::info!(?report, "reconciled zones with the hypervisor");
        Ok(m)
    }

    /// The hypervisor (for tests and diagnostics).
    pub fn hypervisor(&self) -> &H {
        &self.hv
    }

    /// Gives the hypervisor back, as when the daemon exits and its domains live on (for tests).
    pub fn into_hypervisor(self) -> H {
        self.hv
    }

    fn persist(&self, r: &ZoneRecord) -> Result<(), ManagerError> {
        self.store.put(&r.id, r).map_err(ManagerError::Store)
    }

    /// Applies `change` to a copy of `rec`, persists the copy, and only then replaces `rec`: memory never
    /// runs ahead of the disk. Unchanged records are not rewritten.
    fn update<E>(
        &self,
        rec: &mut ZoneRecord,
        change: impl FnOnce(&mut ZoneRecord) -> Result<(), E>,
    ) -> Result<Result<(), E>, ManagerError> {
        let mut next = rec.clone();
        if let Err(e) = change(&mut next) {
            return Ok(Err(e));
        }
        if next != *rec {
            self.persist(&next)?;
            let changed_state = next.state != rec.state;
            *rec = next;
            if changed_state {
                // No subscribers is fine: nobody is watching.
                let _ = self.events.send(ZoneEvent {
                    zone_id: rec.id.clone(),
                    state: rec.state,
                    reason: rec.failure_reason.clone(),
                    at: now(),
                });
            }
        }
        Ok(Ok(()))
    }

    /// The host, and the mode `auto` zones get on it with the reason (or why they cannot start).
    pub async fn host_info(&self) -> Result<(HostInfo, Result<(VirtMode, String), String>), HypervisorError> {
        let info = self.hv.host_info().await?;
        let auto = resolve_virt_mode(VirtMode::Auto, info.caps, self.cfg.auto_virt_mode);
        Ok((info, auto))
    }

    /// State changes from now on. A watcher more than a thousand changes behind gets `Lagged` and should
    /// re-list.
    pub fn subscribe(&self) -> broadcast::Receiver<ZoneEvent> {
        self.events.subscribe()
    }

    /// Records a new zone (not booted).
    pub async fn create(&self, spec: ZoneSpec) -> Result<ZoneRecord, ManagerError> {
        spec.validate().map_err(ManagerError::InvalidSpec)?;
        let mut zones = self.zones.lock().await;
        if zones.values().any(|z| z.spec.name == spec.name) {
            return Err(ManagerError::AlreadyExists(spec.name.to_string()));
        }
        let rec = ZoneRecord::new(uuid::Uuid::new_v4().to_string(), spec, now());
        self.persist(&rec)?;
        zones.insert(rec.id.clone(), rec.clone());
        tracing::info!(zone = %rec.spec.name, id = %rec.id, "zone created");
        Ok(rec)
    }

    /// A zone by id or name.
    pub async fn get(&self, zone: &str) -> Result<ZoneRecord, ManagerError> {
        let zones = self.zones.lock().await;
        find(&zones, zone).cloned().ok_or_else(|| ManagerError::NotFound(zone.to_owned()))
    }

    /// Every zone, by name.
    pub async fn list(&self) -> Vec<ZoneRecord> {
        let mut v: Vec<_> = self.zones.lock().await.values().cloned().collect();
        v.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        v
    }

    /// Builds the zone's domain (paused), serves its host channel, then lets it run. The zone is `Starting`
    /// until its init connects over the channel, then `Ready`.
    pub async fn start(self: &Arc<Self>, zone: &str) -> Result<ZoneRecord, ManagerError> {
        self.start_on(zone, None).await
    }

    /// [`start`](Self::start), joining the zone to a pod network before it runs: its NIC is there, with the
    /// network's MAC, and its init is told the address and routes on the kernel command line.
    pub async fn start_on(
        self: &Arc<Self>,
        zone: &str,
        network: Option<ZoneNetwork>,
    ) -> Result<ZoneRecord, ManagerError> {
        let caps =
            self.hv.host_caps().await.map_err(|source| ManagerError::Hypervisor { zone: zone.to_owned(), source })?;
        let (id, request) = {
            let mut zones = self.zones.lock().await;
            let rec = find_mut(&mut zones, zone).ok_or_else(|| ManagerError::NotFound(zone.to_owned()))?;
            let name = rec.spec.name.to_string();
            let (mode, why) = resolve_virt_mode(rec.spec.virt_mode, caps, self.cfg.auto_virt_mode)
                .map_err(|reason| ManagerError::VirtMode { zone: name.clone(), reason })?;
            self.update(rec, |r| {
                r.transition(ZoneState::Starting, now())?;
                r.virt_mode = Some((mode, why));
                r.network = network;
                Ok(())
            })?
            .map_err(|transition| ManagerError::WrongState { zone: name.clone(), transition })?;
            (rec.id.clone(), self.domain_request(rec, mode))
        };
        // Where a start's time goes, logged once the domain runs: the paused domain's build, then the pod NIC.
        let began = std::time::Instant::now();
        let created = self.hv.create_paused(&request).await;
        let built = began.elapsed();
        let mut zones = self.zones.lock().await;
        let domid = match created {
            Ok(domid) => domid,
            Err(source) => {
                if let Some(rec) = zones.get_mut(&id) {
                    let _ = self.update(rec, |r| r.fail(source.to_string(), now()))?;
                }
                return Err(ManagerError::Hypervisor { zone: zone.to_owned(), source });
            }
        };
        // Destroyed (or otherwise changed) while the domain was being built: the domain is nobody's.
        let Some(rec) = zones.get_mut(&id).filter(|r| r.state == ZoneState::Starting && r.domid.is_none()) else {
            drop(zones);
            let _ = self.hv.destroy(domid).await;
            return Err(ManagerError::NotFound(zone.to_owned()));
        };
        if let Err(e) = self.update(rec, |r| {
            r.domid = Some(domid);
            Ok::<(), InvalidTransition>(())
        }) {
            // Without the domid on disk a restarted daemon could not tell whose domain this is: undo.
            drop(zones);
            let _ = self.hv.destroy(domid).await;
            return Err(e);
        }
        let snapshot = rec.clone();
        drop(zones);
        let joined = match &snapshot.network {
            Some(net) => self.hv.attach_pod_nic(domid, net).await,
            None => Ok(()),
        };
        let nic_attached = began.elapsed();
        let served = match joined {
            Ok(()) => self.hv.serve_channel(domid).await,
            Err(e) => Err(e),
        };
        let unpaused = match served {
            Ok(io) => {
                self.attach_link(&snapshot, domid, io);
                self.hv.unpause(domid).await
            }
            Err(e) => Err(e),
        };
        if let Err(source) = unpaused {
            self.close_link(&id);
            let _ = self.hv.destroy(domid).await;
            let mut zones = self.zones.lock().await;
            if let Some(rec) = zones.get_mut(&id) {
                let _ = self.update(rec, |r| r.fail(source.to_string(), now()))?;
            }
            return Err(ManagerError::Hypervisor { zone: zone.to_owned(), source });
        }
        tracing::info!(
            zone = %snapshot.spec.name,
            domid,
            build_ms = built.as_millis(),
            nic_ms = (nic_attached - built).as_millis(),
            unpause_ms = (began.elapsed() - nic_attached).as_millis(),
            "zone domain running"
        );
        Ok(snapshot)
    }

    /// Sets what runs each time a zone's init connects, before it is welcomed: the workload manager routes
    /// the zone's workloads there, so that a zone reconnecting after a daemon restart loses no message. Set
    /// once, before [`resume`](ZoneManager::resume); later calls are ignored.
    pub fn on_connect(&self, hook: ConnectHook) {
        let _ = self.on_connect.0.set(hook);
    }

    /// Serves the host channel again for every zone whose domain runs, as after a daemon restart: each
    /// zone's init sees the new channel, reconnects and says hello again. A zone that does not within the
    /// hello timeout is failed like one that never connected.
    pub async fn resume(self: &Arc<Self>) {
        let running: Vec<(ZoneRecord, u32)> = {
            let zones = self.zones.lock().await;
            zones
                .values()
                .filter(|r| matches!(r.state, ZoneState::Starting | ZoneState::Ready))
                .filter_map(|r| r.domid.map(|d| (r.clone(), d)))
                .collect()
        };
        for (rec, domid) in running {
            if self.link(&rec.id).is_some() {
                continue;
            }
            match self.hv.serve_channel(domid).await {
                Ok(io) => {
                    self.attach_link(&rec, domid, io);
                    tracing::info!(zone = %rec.spec.name, domid, "serving the zone's channel again");
                }
                Err(e) => tracing::warn!(zone = %rec.spec.name, domid, error = %e,
                    "serving a running zone's channel failed; its workloads are unreachable until it restarts"),
            }
        }
    }

    /// Starts serving the zone's channel and handling what happens on it.
    fn attach_link(self: &Arc<Self>, rec: &ZoneRecord, domid: u32, io: crate::hypervisor::ChannelStream) {
        let (tx, mut rx) = mpsc::channel(4);
        let before_welcome = self.on_connect.0.get().cloned().map(|hook| {
            let zone_id = rec.id.clone();
            Arc::new(move |link: ZoneLink| hook(zone_id.clone(), link)) as crate::link::BeforeWelcome
        });
        let params = LinkParams {
            zone_id: rec.id.clone(),
            hostname: rec.spec.effective_hostname().to_string(),
            hello_timeout: self.cfg.hello_timeout,
            before_welcome,
        };
        let link = ZoneLink::spawn(io, params, tx);
        if let Ok(mut links) = self.links.lock()
            && let Some(old) = links.insert(rec.id.clone(), link)
        {
            old.close();
        }
        let manager: Weak<Self> = Arc::downgrade(self);
        let id = rec.id.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let Some(m) = manager.upgrade() else { break };
                m.on_link_event(&id, domid, event).await;
            }
        });
    }

    fn close_link(&self, zone_id: &str) {
        if let Ok(mut links) = self.links.lock()
            && let Some(link) = links.remove(zone_id)
        {
            link.close();
        }
    }

    /// The host channel of a zone, while its init is connected.
    /// What zone `zone`'s domain uses now, as Xen accounts it (no agent in the zone involved).
    pub async fn usage(&self, zone: &str) -> Result<ZoneUsage, ManagerError> {
        let z = self.get(zone).await?;
        let not_running = || ManagerError::NotRunning { zone: z.spec.name.to_string(), state: z.state };
        let domid = z.domid.ok_or_else(not_running)?;
        let domains =
            self.hv.list().await.map_err(|e| ManagerError::Hypervisor { zone: z.spec.name.to_string(), source: e })?;
        let d = domains.into_iter().find(|d| d.domid == domid).ok_or_else(not_running)?;
        Ok(ZoneUsage {
            cpu_time_ns: d.cpu_time_ns,
            memory_bytes: d.memory_kib.saturating_mul(1024),
            vcpus: z.spec.vcpus,
        })
    }

    pub fn link(&self, zone_id: &str) -> Option<ZoneLink> {
        self.links.lock().ok()?.get(zone_id).filter(|l| l.is_open()).cloned()
    }

    /// What a zone's channel reported. Events of an older domain of the zone (restarted since) are ignored.
    async fn on_link_event(&self, id: &str, domid: u32, event: LinkEvent) {
        let failure = match event {
            LinkEvent::Connected(info) => {
                let mut zones = self.zones.lock().await;
                let Some(rec) = zones.get_mut(id).filter(|r| r.domid == Some(domid)) else { return };
                let name = rec.spec.name.to_string();
                let reconnected = rec.state == ZoneState::Ready;
                match self.update(rec, |r| {
                    if !reconnected {
                        r.transition(ZoneState::Ready, now())?;
                    }
                    r.init = Some(info.clone());
                    Ok::<(), InvalidTransition>(())
                }) {
                    Ok(Ok(())) if reconnected => tracing::info!(zone = %name, "zone reconnected"),
                    Ok(Ok(())) => tracing::info!(zone = %name, init = %info.version, kernel = %info.kernel_release,
                        boot_ms = info.boot_time_ms, "zone ready"),
                    Ok(Err(t)) => tracing::debug!(zone = %name, %t, "zone connected in a state that ignores it"),
                    Err(e) => tracing::error!(zone = %name, error = %e, "recording the zone as ready failed"),
                }
                return;
            }
            LinkEvent::Closed => {
                // The zone powered off or its init died: the domain's shutdown reaches the reconciler.
                self.close_link(id);
                return;
            }
            LinkEvent::InitFailed { stage, reason } => format!("the zone's init failed ({stage:?}): {reason}"),
            LinkEvent::ProtocolError(e) => format!("the zone broke the host channel protocol: {e}"),
            LinkEvent::HelloTimeout(t) => format!(
                "the zone's init did not connect within {} s (kernel or init stuck: see the zone's console)",
                t.as_secs()
            ),
        };
        self.close_link(id);
        {
            let mut zones = self.zones.lock().await;
            let Some(rec) = zones.get_mut(id).filter(|r| r.domid == Some(domid)) else { return };
            let name = rec.spec.name.to_string();
            tracing::warn!(zone = %name, domid, reason = %failure, "zone failed");
            if let Err(e) = self.update(rec, |r| r.fail(failure.clone(), now())) {
                tracing::error!(zone = %name, error = %e, "recording the zone's failure failed");
            }
        }
        // A failed zone has no domain: do not leave a broken or hostile guest running.
        if let Err(e) = self.hv.destroy(domid).await {
            tracing::warn!(domid, error = %e, "destroying a failed zone's domain failed; the reconciler retries");
        }
    }

    /// Asks the zone to power off and waits up to `timeout`; a zone still running then is destroyed. The zone
    /// ends `Stopped` (its record stays, so it can be started again).
    pub async fn stop(&self, zone: &str, timeout: Duration) -> Result<ZoneRecord, ManagerError> {
        let (id, name, domid) = {
            let mut zones = self.zones.lock().await;
            let rec = find_mut(&mut zones, zone).ok_or_else(|| ManagerError::NotFound(zone.to_owned()))?;
            let name = rec.spec.name.to_string();
            if rec.state == ZoneState::Stopped {
                return Ok(rec.clone());
            }
            self.update(rec, |r| r.transition(ZoneState::Stopping, now()))?
                .map_err(|transition| ManagerError::WrongState { zone: name.clone(), transition })?;
            (rec.id.clone(), name, rec.domid)
        };
        if let Some(domid) = domid {
            let hv_err = |source| ManagerError::Hypervisor { zone: name.clone(), source };
            let outcome = match self.hv.request_shutdown(domid).await {
                Ok(()) => self.hv.wait_shutdown(domid, timeout).await.map_err(hv_err)?,
                Err(e) => {
                    tracing::warn!(zone = %name, domid, error = %e, "shutdown request failed; destroying");
                    WaitOutcome::StillRunning
                }
            };
            if outcome == WaitOutcome::StillRunning {
                tracing::warn!(zone = %name, domid, ?timeout, "zone did not power off in time; destroying it");
            }
            self.hv.destroy(domid).await.map_err(hv_err)?;
        }
        self.close_link(&id);
        let mut zones = self.zones.lock().await;
        let rec = zones.get_mut(&id).ok_or_else(|| ManagerError::NotFound(zone.to_owned()))?;
        // The reconciler may have seen the power-off first and finished the stop itself.
        if rec.state != ZoneState::Stopped {
            self.update(rec, |r| r.transition(ZoneState::Stopped, now()))?
                .map_err(|transition| ManagerError::WrongState { zone: name.clone(), transition })?;
        }
        Ok(rec.clone())
    }

    /// Destroys the zone's domain at once and forgets the zone. Destroying an unknown zone is not an error.
    pub async fn destroy(&self, zone: &str) -> Result<(), ManagerError> {
        let rec = {
            let mut zones = self.zones.lock().await;
            let Some(id) = find(&zones, zone).map(|r| r.id.clone()) else { return Ok(()) };
            let Some(rec) = zones.remove(&id) else { return Ok(()) };
            rec
        };
        // The record goes last: a crash in between leaves a record whose domain the reconciler finds gone.
        for domid in self.domids_of(&rec).await {
            if let Err(source) = self.hv.destroy(domid).await {
                // Keep the zone so that a retry destroys the domain instead of reporting success.
                let name = rec.spec.name.to_string();
                self.zones.lock().await.insert(rec.id.clone(), rec);
                return Err(ManagerError::Hypervisor { zone: name, source });
            }
        }
        self.close_link(&rec.id);
        if let Err(e) = self.store.remove(&rec.id) {
            self.zones.lock().await.insert(rec.id.clone(), rec);
            return Err(ManagerError::Store(e));
        }
        tracing::info!(zone = %rec.spec.name, "zone destroyed");
        Ok(())
    }

    /// Every domain that belongs to `rec`: the recorded one, and any other with its uuid (a start that was
    /// interrupted after the domain was built but before the domid was persisted).
    async fn domids_of(&self, rec: &ZoneRecord) -> Vec<u32> {
        let mut ids: Vec<u32> = rec.domid.into_iter().collect();
        if let Ok(domains) = self.hv.list().await {
            ids.extend(domains.iter().filter(|d| d.uuid == rec.id && Some(d.domid) != rec.domid).map(|d| d.domid));
        }
        ids
    }

    /// Makes the records agree with the hypervisor: zones whose domain vanished or shut down are marked, shut
    /// down domains are destroyed, and domains of ours with no record are destroyed.
    pub async fn reconcile(&self) -> Result<ReconcileReport, ManagerError> {
        let domains =
            self.hv.list().await.map_err(|source| ManagerError::Hypervisor { zone: "(all)".into(), source })?;
        let mut report = ReconcileReport::default();
        let mut to_destroy = Vec::new();
        {
            let mut zones = self.zones.lock().await;
            for rec in zones.values_mut() {
                let dom = domains.iter().find(|d| d.uuid == rec.id);
                if !rec.state.has_domain() {
                    // A domain of a zone that should have none (e.g. the daemon died mid-stop).
                    to_destroy.extend(dom.map(|d| d.domid));
                    continue;
                }
                let name = rec.spec.name.to_string();
                match dom.map(|d| (d.domid, d.state)) {
                    Some((domid, DomainRunState::Alive)) => {
                        let _ = self.update(rec, |r| {
                            r.domid = Some(domid);
                            Ok::<(), InvalidTransition>(())
                        })?;
                    }
                    Some((_, DomainRunState::Dying)) => {}
                    Some((domid, DomainRunState::Shutdown(kind))) => {
                        to_destroy.push(domid);
                        match shutdown_outcome(rec.state, kind) {
                            Ok(()) => {
                                if self.update(rec, |r| r.transition(ZoneState::Stopped, now()))?.is_ok() {
                                    report.stopped.push(name);
                                }
                            }
                            Err(reason) => {
                                if self.update(rec, |r| r.fail(reason.clone(), now()))?.is_ok() {
                                    report.failed.push((name, reason));
                                }
                            }
                        }
                    }
                    None => {
                        let reason = "its domain vanished (destroyed outside Bulkhead, or the host restarted)";
                        if self.update(rec, |r| r.fail(reason, now()))?.is_ok() {
                            report.failed.push((name, reason.to_owned()));
                        }
                    }
                }
            }
            for rec in zones.values().filter(|r| !r.state.has_domain()) {
                self.close_link(&rec.id);
            }
            for d in &domains {
                if d.name.starts_with(DOMAIN_NAME_PREFIX) && !zones.contains_key(&d.uuid) {
                    to_destroy.push(d.domid);
                    report.orphans_destroyed.push(d.domid);
                }
            }
        }
        for domid in to_destroy {
            if let Err(e) = self.hv.destroy(domid).await {
                tracing::warn!(domid, error = %e, "destroying a leftover domain failed; will retry at the next reconcile");
            }
        }
        Ok(report)
    }

    fn domain_request(&self, rec: &ZoneRecord, mode: VirtMode) -> DomainRequest {
        let spec = &rec.spec;
        let mut cmdline = vec![
            "console=hvc0".to_owned(),
            "quiet".to_owned(),
            format!("bulkhead.zone={}", rec.id),
            format!("bulkhead.hostname={}", spec.effective_hostname()),
            format!("bulkhead.channel={ZONE_CHANNEL_PATH}"),
        ];
        cmdline.extend(rec.network.iter().flat_map(ZoneNetwork::kernel_args));
        cmdline.extend(spec.kernel_args.iter().cloned());
        DomainRequest {
            name: format!("{DOMAIN_NAME_PREFIX}{}", spec.name),
            uuid: rec.id.clone(),
            kind: if mode == VirtMode::Pvh { DomainKind::Pvh } else { DomainKind::Pv },
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            kernel: spec.kernel.clone().unwrap_or_else(|| self.cfg.default_kernel.clone()),
            initrd: Some(spec.initrd.clone().unwrap_or_else(|| self.cfg.default_initrd.clone())),
            cmdline: cmdline.join(" "),
        }
    }
}

/// What a shut-down domain means for a zone in `state`: `Ok` = a clean stop, `Err` = a failure and why.
fn shutdown_outcome(state: ZoneState, kind: ShutdownKind) -> Result<(), String> {
    match (state, kind) {
        (ZoneState::Stopping, ShutdownKind::Poweroff) => Ok(()),
        (_, ShutdownKind::Poweroff) => Err("the zone powered off by itself".into()),
        (_, ShutdownKind::Crash) => Err("the zone crashed (kernel panic or init died)".into()),
        (_, ShutdownKind::Reboot) => Err("the zone asked to reboot; zones are not rebooted".into()),
        (_, ShutdownKind::Watchdog) => Err("the zone's watchdog fired".into()),
        (_, ShutdownKind::Suspend) => Err("the zone suspended itself".into()),
        (_, ShutdownKind::Other(code)) => Err(format!("the zone shut down with unknown reason {code}")),
    }
}

fn find<'a>(zones: &'a BTreeMap<String, ZoneRecord>, key: &str) -> Option<&'a ZoneRecord> {
    zones.get(key).or_else(|| zones.values().find(|z| z.spec.name.as_str() == key))
}

fn find_mut<'a>(zones: &'a mut BTreeMap<String, ZoneRecord>, key: &str) -> Option<&'a mut ZoneRecord> {
    let id = find(zones, key)?.id.clone();
    zones.get_mut(&id)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hypervisor::fake::FakeHypervisor;
    use crate::zone::{HostVirtCaps, ZoneName};
    use bulkhead_wire::{HostToZone, InitStage, PROTOCOL_VERSION, ZoneCodec, ZoneToHost};
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::Framed;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const PV_ONLY: HostVirtCaps = HostVirtCaps { hvm: false, hap: false };

    fn cfg() -> ManagerConfig {
        ManagerConfig {
            hello_timeout: Duration::from_secs(5),
            ..ManagerConfig::new("/usr/lib/bulkhead/zone/kernel", "/usr/lib/bulkhead/zone/initrd")
        }
    }

    fn spec(name: &str) -> ZoneSpec {
        ZoneSpec {
            name: ZoneName::try_from(name.to_owned()).unwrap_or_else(|e| panic!("{e}")),
            memory_mib: 64,
            vcpus: 1,
            virt_mode: VirtMode::Auto,
            kernel: None,
            initrd: None,
            kernel_args: vec!["loglevel=3".into()],
            hostname: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            client_state: String::new(),
        }
    }

    async fn manager(
        dir: &std::path::Path,
        hv: FakeHypervisor,
    ) -> Result<Arc<ZoneManager<FakeHypervisor>>, ManagerError> {
        let store = RecordStore::open(dir.join("zones")).map_err(ManagerError::Store)?;
        ZoneManager::open(hv, store, cfg()).await.map(Arc::new)
    }

    #[tokio::test]
    async fn create_validates_and_refuses_duplicate_names() -> TestResult {
        let dir = tempfile::tempdir()?;
        let m = manager(dir.path(), FakeHypervisor::new(PV_ONLY)).await?;
        let z = m.create(spec("web")).await?;
        assert_eq!(z.state, ZoneState::Created);
        assert!(matches!(m.create(spec("web")).await, Err(ManagerError::AlreadyExists(n)) if n == "web"));
        let mut bad = spec("other");
        bad.vcpus = 0;
        assert!(matches!(m.create(bad).await, Err(ManagerError::InvalidSpec(SpecError::Vcpus(0)))));
        assert_eq!(m.get("web").await?.id, z.id);
        assert_eq!(m.get(&z.id).await?.spec.name.as_str(), "web");
        assert!(matches!(m.get("nope").await, Err(ManagerError::NotFound(_))));
        Ok(())
    }

    #[tokio::test]
    async fn start_builds_a_paused_domain_then_runs_it() -> TestResult {
        let dir = tempfile::tempdir()?;
        let m = manager(dir.path(), FakeHypervisor::new(PV_ONLY)).await?;
        let z = m.create(spec("web")).await?;
        let started = m.start("web").await?;
        assert_eq!(started.state, ZoneState::Starting);
        let domid = started.domid.ok_or("no domid")?;
        let d = m.hypervisor().domain(domid).ok_or("no domain")?;
        assert!(!d.paused);
        assert_eq!(d.request.name, "bulkhead-web");
        assert_eq!(d.request.uuid, z.id);
        assert_eq!(d.request.kind, DomainKind::Pv);
        assert_eq!(d.request.kernel, PathBuf::from("/usr/lib/bulkhead/zone/kernel"));
        assert_eq!(
            d.request.cmdline,
            format!(
                "console=hvc0 quiet bulkhead.zone={} bulkhead.hostname=web bulkhead.channel=bulkhead/channel loglevel=3",
                z.id
            )
        );
        assert_eq!(started.virt_mode, Some((VirtMode::Pv, "auto: the host has no HVM, using PV".into())));
        // Starting twice is a state error, not a second domain.
        assert!(matches!(m.start("web").await, Err(ManagerError::WrongState { .. })));
        assert_eq!(m.hypervisor().count(), 1);
        Ok(())
    }

    fn pod_network() -> Result<ZoneNetwork, crate::network::NetworkError> {
        ZoneNetwork::new(
            "pod-net",
            "eth0",
            "3a:5a:2b:77:1e:df",
            &["10.88.0.5/16".into()],
            "10.88.0.1",
            &[("0.0.0.0/0".into(), String::new())],
        )
    }

    #[tokio::test]
    async fn a_pod_network_is_joined_before_the_zone_runs_and_its_init_is_told() -> TestResult {
        let dir = tempfile::tempdir()?;
        let m = manager(dir.path(), FakeHypervisor::new(PV_ONLY)).await?;
        m.create(spec("web")).await?;
        let started = m.start_on("web", Some(pod_network()?)).await?;
        let d = m.hypervisor().domain(started.domid.ok_or("no domid")?).ok_or("no domain")?;
        // The fake refuses a NIC on a running domain: it was joined while paused.
        assert_eq!(d.nics, [pod_network()?]);
        assert!(
            d.request
                .cmdline
                .contains(" bulkhead.ip=10.88.0.5/16 bulkhead.gw=10.88.0.1 bulkhead.routes=0.0.0.0/0 loglevel=3"),
            "{}",
            d.request.cmdline
        );
        // Recorded, so status shows the pod IP after a daemon restart too.
        drop(m);
        let m = manager(dir.path(), FakeHypervisor::new(PV_ONLY)).await?;
        assert_eq!(m.get("web").await?.network, Some(pod_network()?));
        Ok(())
    }

    #[tokio::test]
    async fn a_network_that_cannot_be_joined_fails_the_zone_and_leaves_no_domain() -> TestResult {
        let dir = tempfile::tempdir()?;
        let hv = FakeHypervisor::new(PV_ONLY);
        hv.fail_next_nic("no such netns");
        let m = manager(dir.path(), hv).await?;
        m.create(spec("web")).await?;
        let e = m.start_on("web", Some(pod_network()?)).await.err().ok_or("start should fail")?;
        assert!(e.to_string().contains("pod network: no such netns"), "{e}");
        assert_eq!(m.hypervisor().count(), 0);
        let z = m.get("web").await?;
        assert_eq!(z.state, ZoneState::Failed);
        assert!(z.failure_reason.unwrap_or_default().contains("no such netns"));
        Ok(())
    }

    /// Waits until the zone reaches `state` (link events are handled by a task).
    async fn wait_for_state(
        m: &ZoneManager<FakeHypervisor>,
        zone: &str,
        state: ZoneState,
    ) -> Result<ZoneRecord, Box<dyn std::error::Error>> {
        for _ in 0..500 {
            let rec = m.get(zone).await?;
            if rec.state == state {
                return Ok(rec);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!("zone {zone} never became {state:?}: {:?}", m.get(zone).await?.state).into())
    }

    fn zone_end(
        m: &ZoneManager<FakeHypervisor>,
        domid: u32,
    ) -> Result<Framed<tokio::io::DuplexStream, ZoneCodec>, Box<dyn std::error::Error>> {
        let io = m.hypervisor().take_zone_end(domid).ok_or("the channel was not served")?;
        Ok(Framed::new(io, ZoneCodec::new()))
    }

    #[tokio::test]
    async fn the_zone_is_ready_when_its_init_says_hello() -> TestResult {
        let dir = tempfile::tempdir()?;
        let m = manager(dir.path(), FakeHypervisor::new(PV_ONLY)).await?;
        m.create(spec("web")).await?;
        let domid = m.start("web").await?.domid.ok_or("no domid")?;
        let mut zone = zone_end(&m, domid)?;
        zone.send(ZoneToHost::Hello {
            protocol_version: PROTOCOL_VERSION,
            init_version: "9.9.9".into(),
            kernel_release: "6.12.48-bulkhead".into(),
            boot_time_ms: 1200,
        })
        .await?;
        assert!(matches!(zone.next().await, Some(Ok(HostToZone::Welcome { .. }))));
        let rec = wait_for_state(&m, "web", ZoneState::Ready).await?;
        assert_eq!(rec.init.as_ref().map(|i| i.kernel_release.as_str()), Some("6.12.48-bulkhead"));
        assert!(rec.ready_at >= rec.started_at);
        assert!(m.link(&rec.id).is_some());
        Ok(())
    }

    #[tokio::test]
    async fn garbage_on_the_channel_fails_only_that_zone_and_destroys_its_domain() -> TestResult {
        let dir = tempfile::tempdir()?;
        let m = manager(dir.path(), FakeHypervisor::new(PV_ONLY)).await?;
        m.create(spec("hostile")).await?;
        m.create(spec("fine")).await?;
        let bad = m.start("hostile").await?.domid.ok_or("no domid")?;
        let good = m.start("fine").await?.domid.ok_or("no domid")?;
        let mut raw = m.hypervisor().take_zone_end(bad).ok_or("no channel")?;
        raw.write_all(&[0x42; 4096]).await?;
        let rec = wait_for_state(&m, "hostile", ZoneState::Failed).await?;
        assert!(rec.failure_reason.as_deref().unwrap_or_default().contains("protocol"), "{:?}", rec.failure_reason);
        assert!(m.hypervisor().domain(bad).is_none(), "the hostile zone's domain must be destroyed");
        // The other zone is unaffected and still connects.
        let mut zone = zone_end(&m, good)?;
        zone.send(ZoneToHost::Hello {
            protocol_version: PROTOCOL_VERSION,
            init_version: "1".into(),
            kernel_release: "k".into(),
            boot_time_ms: 1,
        })
        .await?;
        wait_for_state(&m, "fine", ZoneState::Ready).await?;
        Ok(())
    }

    #[tokio::test]
    async fn an_init_failure_or_silence_fails_the_zone_with_the_reason() -> TestResult {
        let dir = tempfile::tempdir()?;
        let m = manager(dir.path(), FakeHypervisor::new(PV_ONLY)).await?;
        m.create(spec("broken")).await?;
        let domid = m.start("broken").await?.domid.ok_or("no domid")?;
        let mut zone = zone_end(&m, domid)?;
        zone.send(ZoneToHost::InitFailed { stage: InitStage::Rootfs, reason: "no erofs on xvdb".into() }).await?;
        let rec = wait_for_state(&m, "broken", ZoneState::Failed).await?;
        assert!(rec.failure_reason.as_deref().unwrap_or_default().contains("no erofs on xvdb"));

        m.create(spec("silent")).await?;
        let domid = m.start("silent").await?.domid.ok_or("no domid")?;
        tokio::time::pause();
        let rec = wait_for_state(&m, "silent", ZoneState::Failed).await?;
        assert!(rec.failure_reason.as_deref().unwrap_or_default().contains("did not connect"));
        assert!(m.hypervisor().domain(domid).is_none());
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_build_marks_the_zone_failed_with_the_reason() -> TestResult {
        let dir = tempfile::tempdir()?;
        let hv = FakeHypervisor::new(PV_ONLY);
        hv.fail_next_create("not enough memory");
        let m = manager(dir.path(), hv).await?;
        m.create(spec("web")).await?;
        let e = m.start("web").await.err().ok_or("start should fail")?;
        assert!(e.to_string().contains("not enough memory"), "{e}");
        let z = m.get("web").await?;
        assert_eq!(z.state, ZoneState::Failed);
        assert!(z.failure_reason.unwrap_or_default().contains("not enough memory"));
        // It can be started again.
        assert_eq!(m.start("web").await?.state, ZoneState::Starting);
        Ok(())
    }

    #[tokio::test]
    async fn pvh_request_on_a_pv_only_host_is_refused_before_anything_is_built() -> TestResult {
        let dir = tempfile::tempdir()?;
        let m = manager(dir.path(), FakeHypervisor::new(PV_ONLY)).await?;
        let mut s = spec("web");
        s.virt_mode = VirtMode::Pvh;
        m.create(s).await?;
        assert!(matches!(m.start("web").await, Err(ManagerError::VirtMode { .. })));
        assert_eq!(m.get("web").await?.state, ZoneState::Created);
        assert_eq!(m.hypervisor().count(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn destroy_removes_domain_and_record_and_is_idempotent() -> TestResult {
        let dir = tempfile::tempdir()?;
        let m = manager(dir.path(), FakeHypervisor::new(PV_ONLY)).await?;
        m.create(spec("web")).await?;
        m.start("web").await?;
        m.destroy("web").await?;
        assert_eq!(m.hypervisor().count(), 0);
        assert!(matches!(m.get("web").await, Err(ManagerError::NotFound(_))));
        m.destroy("web").await?;
        assert_eq!(std::fs::read_dir(dir.path().join("zones"))?.count(), 0, "no state file left");
        Ok(())
    }

    #[tokio::test]
    async fn stop_powers_off_gracefully_or_forces_after_the_timeout() -> TestResult {
        let dir = tempfile::tempdir()?;
        let m = manager(dir.path(), FakeHypervisor::new(PV_ONLY)).await?;
        let mut events = m.subscribe();
        for n in ["polite", "hung"] {
            m.create(spec(n)).await?;
            m.start(n).await?;
        }
        let hung = m.get("hung").await?.domid.ok_or("domid")?;
        m.hypervisor().guest_ignores_shutdown(hung);
        let polite = m.stop("polite", Duration::from_secs(1)).await?;
        assert_eq!((polite.state, polite.domid), (ZoneState::Stopped, None));
        let forced = m.stop("hung", Duration::from_secs(1)).await?;
        assert_eq!(forced.state, ZoneState::Stopped);
        assert_eq!(m.hypervisor().count(), 0, "both domains are gone");
        // Stopping a stopped zone is a no-op; it can start again.
        assert_eq!(m.stop("polite", Duration::from_secs(1)).await?.state, ZoneState::Stopped);
        assert_eq!(m.start("polite").await?.state, ZoneState::Starting);
        let mut seen = Vec::new();
        while let Ok(e) = events.try_recv() {
            seen.push(e.state);
        }
        use ZoneState::*;
        assert_eq!(seen, [Starting, Starting, Stopping, Stopped, Stopping, Stopped, Starting]);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_that_the_reconciler_finished_first_still_succeeds() -> TestResult {
        let dir = tempfile::tempdir()?;
        let m = manager(dir.path(), FakeHypervisor::new(PV_ONLY)).await?;
        m.create(spec("web")).await?;
        m.start("web").await?;
        // As on a real host: the guest powers off on the request, and the domain-release watch makes the
        // reconciler finish the stop while `stop` is still waiting for the shutdown.
        let gate = m.hypervisor().gate_next_wait();
        let stopping = {
            let m = m.clone();
            tokio::spawn(async move { m.stop("web", Duration::from_secs(1)).await })
        };
        gate.entered.notified().await;
        assert_eq!(m.reconcile().await?.stopped, ["web"]);
        gate.resume.notify_one();
        let z = stopping.await??;
        assert_eq!(z.state, ZoneState::Stopped);
        assert_eq!(m.hypervisor().count(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_destroy_that_fails_can_be_retried() -> TestResult {
        let dir = tempfile::tempdir()?;
        let m = manager(dir.path(), FakeHypervisor::new(PV_ONLY)).await?;
        m.create(spec("web")).await?;
        let domid = m.start("web").await?.domid.ok_or("domid")?;
        m.hypervisor().fail_next_destroy("hypervisor busy");
        assert!(m.destroy("web").await.is_err());
        assert!(m.hypervisor().domain(domid).is_some());
        assert_eq!(m.get("web").await?.domid, Some(domid), "the zone is still known");
        m.destroy("web").await?;
        assert!(m.hypervisor().domain(domid).is_none());
        Ok(())
    }

    #[tokio::test]
    async fn state_survives_a_daemon_restart() -> TestResult {
        let dir = tempfile::tempdir()?;
        let m = manager(dir.path(), FakeHypervisor::new(PV_ONLY)).await?;
        m.create(spec("a")).await?;
        m.create(spec("b")).await?;
        let a = m.start("a").await?;
        let b = m.start("b").await?;
        // The daemon dies; the hypervisor (and its domains) live on.
        let ZoneManager { hv, .. } = Arc::try_unwrap(m).map_err(|_| "the manager is still shared")?;
        let m = manager(dir.path(), hv).await?;
        let zones = m.list().await;
        assert_eq!(
            zones.iter().map(|z| (z.spec.name.as_str(), z.state, z.domid)).collect::<Vec<_>>(),
            [("a", ZoneState::Starting, a.domid), ("b", ZoneState::Starting, b.domid)]
        );
        m.destroy("a").await?;
        assert_eq!(m.hypervisor().count(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn reconcile_reports_vanished_and_crashed_zones_and_removes_orphans() -> TestResult {
        let dir = tempfile::tempdir()?;
        let m = manager(dir.path(), FakeHypervisor::new(PV_ONLY)).await?;
        for n in ["gone", "crashed", "fine"] {
            m.create(spec(n)).await?;
            m.start(n).await?;
        }
        let gone = m.get("gone").await?.domid.ok_or("domid")?;
        let crashed = m.get("crashed").await?.domid.ok_or("domid")?;
        m.hypervisor().vanish(gone);
        m.hypervisor().guest_shuts_down(crashed, ShutdownKind::Crash);
        let orphan = m.hypervisor().add_foreign(DomainRequest {
            name: "bulkhead-leftover".into(),
            uuid: "00000000-0000-0000-0000-000000000001".into(),
            kind: DomainKind::Pv,
            memory_mib: 32,
            vcpus: 1,
            kernel: "/k".into(),
            initrd: None,
            cmdline: String::new(),
        });
        let foreign = m.hypervisor().add_foreign(DomainRequest {
            name: "someone-elses".into(),
            uuid: "00000000-0000-0000-0000-000000000002".into(),
            kind: DomainKind::Pv,
            memory_mib: 32,
            vcpus: 1,
            kernel: "/k".into(),
            initrd: None,
            cmdline: String::new(),
        });
        let r = m.reconcile().await?;
        let mut failed: Vec<_> = r.failed.iter().map(|(n, _)| n.as_str()).collect();
        failed.sort();
        assert_eq!(failed, ["crashed", "gone"]);
        assert_eq!(r.orphans_destroyed, [orphan]);
        let c = m.get("crashed").await?;
        assert_eq!(c.state, ZoneState::Failed);
        assert!(c.failure_reason.unwrap_or_default().contains("crashed"));
        assert!(m.get("gone").await?.failure_reason.unwrap_or_default().contains("vanished"));
        assert!(m.hypervisor().domain(crashed).is_none(), "the crashed domain is cleaned up");
        assert!(m.hypervisor().domain(foreign).is_some(), "other people's domains are left alone");
        assert_eq!(m.get("fine").await?.state, ZoneState::Starting);
        // A second pass changes nothing.
        assert_eq!(m.reconcile().await?, ReconcileReport::default());
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn five_zones_start_concurrently_and_all_are_destroyed() -> TestResult {
        let dir = tempfile::tempdir()?;
        let m = manager(dir.path(), FakeHypervisor::new(PV_ONLY)).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..5 {
            let m = m.clone();
            tasks.spawn(async move {
                let name = format!("z{i}");
                m.create(spec(&name)).await?;
                m.start(&name).await
            });
        }
        let mut domids = Vec::new();
        while let Some(r) = tasks.join_next().await {
            domids.push(r??.domid.ok_or("domid")?);
        }
        domids.sort();
        domids.dedup();
        assert_eq!(domids.len(), 5);
        for i in 0..5 {
            m.destroy(&format!("z{i}")).await?;
        }
        assert_eq!(m.hypervisor().count(), 0);
        assert!(m.list().await.is_empty());
        Ok(())
    }
}
