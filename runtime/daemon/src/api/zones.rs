//! `bulkhead.control.v1.ZoneService`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_api::control::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::hypervisor::Hypervisor;
use crate::manager::{ZoneEvent, ZoneManager};
use crate::network::ZoneNetwork;
use crate::workloads::{WorkloadEvent, WorkloadManager};
use crate::zone::{SpecError, VirtMode, ZoneName, ZoneRecord, ZoneSpec, ZoneState};

/// How long a stop waits for a graceful power-off when the request names no timeout.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest stop timeout accepted.
const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(3600);

/// Called with a zone's id after the zone was destroyed (the workload layer forgets its workloads).
pub type DestroyHook = Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Where the event stream takes workload events from: the workload manager.
pub trait WorkloadEvents: Send + Sync {
    /// Events from now on.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<WorkloadEvent>;
    /// One event per existing workload.
    fn current(&self) -> Pin<Box<dyn Future<Output = Vec<WorkloadEvent>> + Send + '_>>;
}

impl<H: Hypervisor> WorkloadEvents for WorkloadManager<H> {
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<WorkloadEvent> {
        WorkloadManager::subscribe(self)
    }

    fn current(&self) -> Pin<Box<dyn Future<Output = Vec<WorkloadEvent>> + Send + '_>> {
        Box::pin(self.current_events())
    }
}

/// The service, over a shared manager.
pub struct ZoneApi<H> {
    manager: Arc<ZoneManager<H>>,
    on_destroyed: Option<DestroyHook>,
    workload_events: Option<Arc<dyn WorkloadEvents>>,
}

impl<H> std::fmt::Debug for ZoneApi<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneApi").finish_non_exhaustive()
    }
}

impl<H> ZoneApi<H> {
    /// Serves `manager`.
    pub fn new(manager: Arc<ZoneManager<H>>) -> Self {
        ZoneApi { manager, on_destroyed: None, workload_events: None }
    }

    /// Also streams the workloads' events to watchers.
    pub fn with_workload_events(mut self, source: Arc<dyn WorkloadEvents>) -> Self {
        self.workload_events = Some(source);
        self
    }

    /// Also runs `hook` after each zone destruction.
    pub fn with_destroy_hook(mut self, hook: DestroyHook) -> Self {
        self.on_destroyed = Some(hook);
        self
    }
}

fn virt_mode_from_pb(v: i32) -> Result<VirtMode, Status> {
    match pb::VirtMode::try_from(v) {
        Ok(pb::VirtMode::Unspecified | pb::VirtMode::Auto) => Ok(VirtMode::Auto),
        Ok(pb::VirtMode::Pv) => Ok(VirtMode::Pv),
        Ok(pb::VirtMode::Pvh) => Ok(VirtMode::Pvh),
        Err(_) => Err(Status::invalid_argument(format!("virt_mode {v} is not a known mode: use auto, pv or pvh"))),
    }
}

pub(crate) fn virt_mode_to_pb(v: VirtMode) -> pb::VirtMode {
    match v {
        VirtMode::Auto => pb::VirtMode::Auto,
        VirtMode::Pv => pb::VirtMode::Pv,
        VirtMode::Pvh => pb::VirtMode::Pvh,
    }
}

fn state_to_pb(s: ZoneState) -> pb::ZoneState {
    match s {
        ZoneState::Created => pb::ZoneState::Created,
        ZoneState::Starting => pb::ZoneState::Starting,
        ZoneState::Ready => pb::ZoneState::Ready,
        ZoneState::Stopping => pb::ZoneState::Stopping,
        ZoneState::Stopped => pb::ZoneState::Stopped,
        ZoneState::Failed => pb::ZoneState::Failed,
    }
}

fn optional_path(s: String) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// Converts and checks the request's spec; the manager validates the rest.
pub fn spec_from_pb(s: Option<pb::ZoneSpec>) -> Result<ZoneSpec, Status> {
    let s = s.ok_or_else(|| Status::invalid_argument("spec is required"))?;
    let invalid = |e: SpecError| Status::invalid_argument(format!("invalid zone spec: {e}"));
    Ok(ZoneSpec {
        name: ZoneName::try_from(s.name).map_err(invalid)?,
        memory_mib: s.memory_mib,
        vcpus: s.vcpus,
        virt_mode: virt_mode_from_pb(s.virt_mode)?,
        kernel: optional_path(s.kernel),
        initrd: optional_path(s.initrd),
        kernel_args: s.kernel_args,
        hostname: (!s.hostname.is_empty()).then_some(s.hostname),
        labels: s.labels.into_iter().collect(),
        annotations: s.annotations.into_iter().collect(),
        client_state: s.client_state,
    })
}

fn spec_to_pb(s: &ZoneSpec) -> pb::ZoneSpec {
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    pb::ZoneSpec {
        name: s.name.to_string(),
        memory_mib: s.memory_mib,
        vcpus: s.vcpus,
        virt_mode: virt_mode_to_pb(s.virt_mode).into(),
        kernel: path(&s.kernel),
        initrd: path(&s.initrd),
        kernel_args: s.kernel_args.clone(),
        hostname: s.hostname.clone().unwrap_or_default(),
        labels: s.labels.clone().into_iter().collect(),
        annotations: s.annotations.clone().into_iter().collect(),
        client_state: s.client_state.clone(),
    }
}

/// The status clients see for a record.
pub fn status_to_pb(r: &ZoneRecord) -> pb::ZoneStatus {
    let (mode, why) = r.virt_mode.clone().map(|(m, w)| (virt_mode_to_pb(m), w)).unwrap_or_default();
    pb::ZoneStatus {
        id: r.id.clone(),
        spec: Some(spec_to_pb(&r.spec)),
        state: state_to_pb(r.state).into(),
        domid: r.domid.unwrap_or(0),
        virt_mode: mode.into(),
        virt_mode_reason: why,
        failure_reason: r.failure_reason.clone().unwrap_or_default(),
        created_at: r.created_at,
        started_at: r.started_at,
        ready_at: r.ready_at,
        finished_at: r.finished_at,
        init_version: r.init.as_ref().map(|i| i.version.clone()).unwrap_or_default(),
        kernel_release: r.init.as_ref().map(|i| i.kernel_release.clone()).unwrap_or_default(),
        network: r.network.as_ref().map(network_to_pb),
    }
}

fn network_to_pb(n: &ZoneNetwork) -> pb::ZoneNetwork {
    pb::ZoneNetwork {
        netns: n.netns.clone(),
        interface: n.interface.clone(),
        mac: crate::network::format_mac(n.mac),
        addresses: vec![n.address.to_string()],
        gateway: n.gateway.map(|g| g.to_string()).unwrap_or_default(),
        routes: n
            .routes
            .iter()
            .map(|r| pb::ZoneRoute {
                destination: r.destination.to_string(),
                gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
            })
            .collect(),
    }
}

/// The client's network, validated; a bad one is INVALID_ARGUMENT naming the field.
fn network_from_pb(n: &pb::ZoneNetwork) -> Result<ZoneNetwork, Status> {
    let routes: Vec<(String, String)> = n.routes.iter().map(|r| (r.destination.clone(), r.gateway.clone())).collect();
    ZoneNetwork::new(&n.netns, &n.interface, &n.mac, &n.addresses, &n.gateway, &routes)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

fn event_to_pb(e: ZoneEvent) -> pb::Event {
    pb::Event {
        timestamp: e.at,
        kind: Some(pb::event::Kind::Zone(pb::ZoneEvent {
            zone_id: e.zone_id,
            state: state_to_pb(e.state).into(),
            reason: e.reason.unwrap_or_default(),
        })),
    }
}

fn matches_labels(r: &ZoneRecord, selector: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| r.spec.labels.get(k) == Some(v))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl<H: Hypervisor> pb::zone_service_server::ZoneService for ZoneApi<H> {
    async fn create_zone(
        &self,
        req: Request<pb::CreateZoneRequest>,
    ) -> Result<Response<pb::CreateZoneResponse>, Status> {
        let spec = spec_from_pb(req.into_inner().spec)?;
        let rec = self.manager.create(spec).await?;
        Ok(Response::new(pb::CreateZoneResponse { zone: Some(status_to_pb(&rec)) }))
    }

    async fn start_zone(&self, req: Request<pb::StartZoneRequest>) -> Result<Response<pb::StartZoneResponse>, Status> {
        let req = req.into_inner();
        let network = req.network.as_ref().map(network_from_pb).transpose()?;
        let rec = self.manager.start_on(&req.zone, network).await?;
        Ok(Response::new(pb::StartZoneResponse { zone: Some(status_to_pb(&rec)) }))
    }

    async fn stop_zone(&self, req: Request<pb::StopZoneRequest>) -> Result<Response<pb::StopZoneResponse>, Status> {
        let req = req.into_inner();
        let timeout = match req.timeout_seconds {
            0 => DEFAULT_STOP_TIMEOUT,
            s => Duration::from_secs(u64::from(s)).min(MAX_STOP_TIMEOUT),
        };
        let rec = self.manager.stop(&req.zone, timeout).await?;
        Ok(Response::new(pb::StopZoneResponse { zone: Some(status_to_pb(&rec)) }))
    }

    async fn destroy_zone(
        &self,
        req: Request<pb::DestroyZoneRequest>,
    ) -> Result<Response<pb::DestroyZoneResponse>, Status> {
        let zone = req.into_inner().zone;
        let id = self.manager.get(&zone).await.ok().map(|z| z.id);
        self.manager.destroy(&zone).await?;
        if let (Some(id), Some(hook)) = (id, &self.on_destroyed) {
            hook(id).await;
        }
        Ok(Response::new(pb::DestroyZoneResponse {}))
    }

    async fn get_zone(&self, req: Request<pb::GetZoneRequest>) -> Result<Response<pb::GetZoneResponse>, Status> {
        let rec = self.manager.get(&req.into_inner().zone).await?;
        Ok(Response::new(pb::GetZoneResponse { zone: Some(status_to_pb(&rec)) }))
    }

    async fn list_zones(&self, req: Request<pb::ListZonesRequest>) -> Result<Response<pb::ListZonesResponse>, Status> {
        let selector: BTreeMap<String, String> = req.into_inner().label_selector.into_iter().collect();
        let zones =
            self.manager.list().await.iter().filter(|r| matches_labels(r, &selector)).map(status_to_pb).collect();
        Ok(Response::new(pb::ListZonesResponse { zones }))
    }

    async fn get_zone_stats(
        &self,
        req: Request<pb::GetZoneStatsRequest>,
    ) -> Result<Response<pb::GetZoneStatsResponse>, Status> {
        let usage = self.manager.usage(&req.into_inner().zone).await?;
        Ok(Response::new(pb::GetZoneStatsResponse {
            timestamp: crate::zone::now(),
            cpu_usage_ns: usage.cpu_time_ns,
            memory_bytes: usage.memory_bytes,
            vcpus: usage.vcpus,
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        // Subscribe before taking the snapshot: a change in between is seen twice, never missed.
        let mut zones = self.manager.subscribe();
        let mut workloads = self.workload_events.as_ref().map(|w| w.subscribe());
        let mut current: Vec<pb::Event> = Vec::new();
        if req.into_inner().include_current {
            current.extend(self.manager.list().await.into_iter().map(|r| {
                event_to_pb(ZoneEvent {
                    zone_id: r.id,
                    state: r.state,
                    reason: r.failure_reason,
                    at: r.finished_at.max(r.ready_at).max(r.started_at).max(r.created_at),
                })
            }));
            if let Some(w) = &self.workload_events {
                current.extend(w.current().await.into_iter().map(super::workloads::event_to_pb));
            }
        }
        let lagged = |n: u64| {
            Status::data_loss(format!(
                "this watcher fell {n} events behind and was cut off: list the zones and workloads and watch again"
            ))
        };
        let stream = async_stream::stream! {
            for e in current {
                yield Ok(e);
            }
            loop {
                let next_workload = async {
                    match workloads.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    z = zones.recv() => match z {
                        Ok(e) => yield Ok(event_to_pb(e)),
                        Err(RecvError::Lagged(n)) => { yield Err(lagged(n)); break; }
                        Err(RecvError::Closed) => break,
                    },
                    w = next_workload => match w {
                        Ok(e) => yield Ok(super::workloads::event_to_pb(e)),
                        Err(RecvError::Lagged(n)) => { yield Err(lagged(n)); break; }
                        // The workload layer went away; zone events go on.
                        Err(RecvError::Closed) => workloads = None,
                    },
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_virt_modes_are_invalid_arguments() {
        assert_eq!(virt_mode_from_pb(0).ok(), Some(VirtMode::Auto));
        assert_eq!(virt_mode_from_pb(3).ok(), Some(VirtMode::Pvh));
        assert_eq!(virt_mode_from_pb(9).err().map(|s| s.code()), Some(tonic::Code::InvalidArgument));
    }

    #[test]
    fn spec_round_trips_through_protobuf() -> Result<(), Status> {
        let pb_spec = pb::ZoneSpec {
            name: "web".into(),
            memory_mib: 64,
            vcpus: 2,
            virt_mode: pb::VirtMode::Pv.into(),
            kernel: "/k".into(),
            initrd: String::new(),
            kernel_args: vec!["loglevel=3".into()],
            hostname: String::new(),
            labels: [("app".to_owned(), "web".to_owned())].into_iter().collect(),
            annotations: Default::default(),
            client_state: r#"{"pod":"web"}"#.into(),
        };
        let spec = spec_from_pb(Some(pb_spec.clone()))?;
        assert_eq!(spec.kernel, Some(PathBuf::from("/k")));
        assert_eq!(spec.initrd, None);
        assert_eq!(spec.hostname, None);
        assert_eq!(spec_to_pb(&spec), pb_spec);
        Ok(())
    }

    #[test]
    fn missing_spec_and_bad_names_say_what_is_wrong() {
        let e = spec_from_pb(None).err().map(|s| s.message().to_owned()).unwrap_or_default();
        assert_eq!(e, "spec is required");
        let bad = pb::ZoneSpec { name: "Bad_Name".into(), ..Default::default() };
        let s = spec_from_pb(Some(bad)).err();
        assert_eq!(s.as_ref().map(|s| s.code()), Some(tonic::Code::InvalidArgument));
        assert!(s.map(|s| s.message().contains("Bad_Name")).unwrap_or(false));
    }
}
