//! CRI's RuntimeService over the daemon's zones and workloads: a pod sandbox is a zone, a container is a
//! workload in it. bulkhead-cri keeps no state: what CRI needs back is in the daemon's records.

use std::pin::Pin;
use std::time::Duration;

use bulkhead_api::control::v1 as pb;
use bulkhead_api::control::v1::image_service_client::ImageServiceClient;
use bulkhead_api::control::v1::workload_service_client::WorkloadServiceClient;
use bulkhead_api::control::v1::zone_service_client::ZoneServiceClient;
use k8s_cri::v1 as cri;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::container::{self, ContainerRecord};
use crate::daemon_error;
use crate::sandbox::{self, MANAGED_LABEL, SandboxDefaults, SandboxRecord};

/// The CRI API version this server implements.
const CRI_API_VERSION: &str = "v1";
/// SIGTERM and SIGKILL.
const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;
/// How long StopPodSandbox lets a zone power off before it is destroyed (kubelet stopped the containers).
const ZONE_STOP_GRACE_SECONDS: u32 = 10;
/// Largest stdout or stderr ExecSync collects (kubelet's gRPC message limit is 16 MiB).
const EXEC_SYNC_MAX_OUTPUT: usize = 8 << 20;

/// Settings of the runtime service.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Sizes and kernels of zones.
    pub defaults: SandboxDefaults,
    /// How long RunPodSandbox waits for a zone to become ready.
    pub boot_timeout: Duration,
    /// Where the pod network's CNI config and plugins are.
    pub cni: bulkhead_cni::CniConfig,
    /// Where pods' files (resolv.conf) are written, one directory per sandbox id.
    pub pods_dir: std::path::PathBuf,
}

/// The service.
#[derive(Debug, Clone)]
pub struct CriRuntime {
    zones: ZoneServiceClient<Channel>,
    workloads: WorkloadServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    settings: RuntimeSettings,
    /// Issues the streaming server's URLs.
    streams: bulkhead_streaming::Handle,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl CriRuntime {
    /// Serves the zones and workloads of the daemon behind `channel`; `streams` issues Exec, Attach and
    /// PortForward URLs.
    pub fn new(channel: Channel, settings: RuntimeSettings, streams: bulkhead_streaming::Handle) -> Self {
        CriRuntime {
            zones: ZoneServiceClient::new(channel.clone()),
            workloads: WorkloadServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            settings,
            streams,
        }
    }

    /// Releases the pod's network (CNI DEL, then its netns). Idempotent; with no netns left there is nothing
    /// to do even when the node's CNI config is gone by now.
    async fn release_network(&self, id: &str, record: &SandboxRecord) -> Result<(), Status> {
        let netns = bulkhead_cni::netns::path_of(id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !netns.exists() {
            return Ok(());
        }
        let net = crate::network::for_new_pod(self.settings.cni.clone()).await.map_err(|e| {
            Status::failed_precondition(format!("releasing the network of pod sandbox {id}: {}", e.message()))
        })?;
        let meta = record.config.metadata.clone().unwrap_or_default();
        crate::network::teardown(&net, id, &meta, None).await
    }

    /// Container `id`, which must be running (for Exec and Attach).
    async fn running(&self, id: &str, what: &str) -> Result<pb::WorkloadStatus, Status> {
        let (w, _) = self.container(id).await?;
        if w.state() != pb::WorkloadState::Running {
            return Err(Status::failed_precondition(format!(
                "{what}: container {id} is {:?}, not running",
                container::state(&w)
            )));
        }
        Ok(w)
    }

    /// Sandbox `id` with its record; NOT_FOUND for unknown ids and for zones that are not pods.
    async fn sandbox(&self, id: &str) -> Result<(pb::ZoneStatus, SandboxRecord), Status> {
        let not_found = || Status::not_found(format!("pod sandbox {id:?} not found"));
        if id.is_empty() {
            return Err(Status::invalid_argument("no pod sandbox id given"));
        }
        let zone = match self.zones.clone().get_zone(pb::GetZoneRequest { zone: id.to_owned() }).await {
            Ok(r) => r.into_inner().zone.ok_or_else(not_found)?,
            Err(e) if e.code() == Code::NotFound => return Err(not_found()),
            Err(e) => return Err(daemon_error(&format!("pod sandbox {id}"), e)),
        };
        // Zones are found by id or name; CRI ids are zone ids only.
        if zone.id != id {
            return Err(not_found());
        }
        let record = sandbox::record(&zone).ok_or_else(not_found)?;
        Ok((zone, record))
    }

    /// Every pod sandbox with its record.
    async fn sandboxes(&self) -> Result<Vec<(pb::ZoneStatus, SandboxRecord)>, Status> {
        let selector = [(MANAGED_LABEL.to_owned(), "sandbox".to_owned())].into_iter().collect();
        let zones = self
            .zones
            .clone()
            .list_zones(pb::ListZonesRequest { label_selector: selector })
            .await
            .map_err(|e| daemon_error("listing pod sandboxes", e))?
            .into_inner()
            .zones;
        Ok(zones.into_iter().filter_map(|z| sandbox::record(&z).map(|r| (z, r))).collect())
    }

    /// Container `id` with its record; NOT_FOUND for unknown ids and for workloads that are not containers.
    async fn container(&self, id: &str) -> Result<(pb::WorkloadStatus, ContainerRecord), Status> {
        let not_found = || Status::not_found(format!("container {id:?} not found"));
        if id.is_empty() {
            return Err(Status::invalid_argument("no container id given"));
        }
        let w = match self.workloads.clone().get_workload(pb::GetWorkloadRequest { workload_id: id.to_owned() }).await {
            Ok(r) => r.into_inner().workload.ok_or_else(not_found)?,
            Err(e) if e.code() == Code::NotFound => return Err(not_found()),
            Err(e) => return Err(daemon_error(&format!("container {id}"), e)),
        };
        if w.id != id {
            return Err(not_found());
        }
        let record = container::record(&w).ok_or_else(not_found)?;
        Ok((w, record))
    }

    /// Every container (of one sandbox, or all) with its record.
    async fn containers(&self, zone: &str) -> Result<Vec<(pb::WorkloadStatus, ContainerRecord)>, Status> {
        let selector = [(MANAGED_LABEL.to_owned(), "container".to_owned())].into_iter().collect();
        let req = pb::ListWorkloadsRequest { zone: zone.to_owned(), label_selector: selector };
        let workloads = match self.workloads.clone().list_workloads(req).await {
            Ok(r) => r.into_inner().workloads,
            Err(e) if e.code() == Code::NotFound && !zone.is_empty() => vec![],
            Err(e) => return Err(daemon_error("listing containers", e)),
        };
        Ok(workloads.into_iter().filter_map(|w| container::record(&w).map(|r| (w, r))).collect())
    }

    /// Waits until zone `id` is ready; its failure reason otherwise.
    async fn wait_ready(&self, id: &str, events: &mut tonic::Streaming<pb::Event>) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + self.settings.boot_timeout;
        loop {
            let zone = self.sandbox(id).await?.0;
            match zone.state() {
                pb::ZoneState::Ready => return Ok(()),
                pb::ZoneState::Starting | pb::ZoneState::Created => {}
                state => {
                    return Err(Status::unavailable(format!(
                        "the pod's zone did not come up: it is {state:?}: {}",
                        zone.failure_reason
                    )));
                }
            }
            // Any event may be this zone's: look again after each.
            match tokio::time::timeout_at(deadline, events.message()).await {
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) | Ok(Err(_)) => {
                    return Err(Status::unavailable("the daemon's event stream ended while the zone booted"));
                }
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "the pod's zone was not ready within {} s",
                        self.settings.boot_timeout.as_secs()
                    )));
                }
            }
        }
    }

    /// Signals container `id` and waits up to `timeout` for it to exit; true if it did.
    async fn signal_and_wait(&self, id: &str, signal: i32, timeout: Duration) -> Result<bool, Status> {
        let mut workloads = self.workloads.clone();
        match workloads.signal_workload(pb::SignalWorkloadRequest { workload_id: id.to_owned(), signal }).await {
            Ok(_) => {}
            // It exited meanwhile, or its zone is gone: nothing left to stop.
            Err(e) if matches!(e.code(), Code::FailedPrecondition | Code::Unavailable | Code::NotFound) => {
                return Ok(true);
            }
            Err(e) => return Err(daemon_error(&format!("stopping container {id}"), e)),
        }
        let wait = workloads.wait_workload(pb::WaitWorkloadRequest { workload_id: id.to_owned() });
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) if matches!(e.code(), Code::NotFound | Code::Unavailable) => Ok(true),
            Ok(Err(e)) => Err(daemon_error(&format!("waiting for container {id}"), e)),
            Err(_) => Ok(false),
        }
    }

    /// Stops a running container: its image's stop signal (else SIGTERM), then SIGKILL after `timeout`.
    async fn stop(&self, w: &pb::WorkloadStatus, timeout: Duration) -> Result<(), Status> {
        if w.state() != pb::WorkloadState::Running {
            return Ok(());
        }
        let signal = self.stop_signal(&w.image_digest).await;
        if signal != SIGKILL && !timeout.is_zero() && self.signal_and_wait(&w.id, signal, timeout).await? {
            return Ok(());
        }
        if self.signal_and_wait(&w.id, SIGKILL, Duration::from_secs(30)).await? {
            return Ok(());
        }
        Err(Status::deadline_exceeded(format!("container {} did not exit 30 s after SIGKILL", w.id)))
    }

    /// The image's STOPSIGNAL as a number; SIGTERM when unset or unknown.
    async fn stop_signal(&self, image: &str) -> i32 {
        let Ok(r) = self.images.clone().get_image(pb::GetImageRequest { image: image.to_owned() }).await else {
            return SIGTERM;
        };
        let name = r.into_inner().image.and_then(|i| i.config).map(|c| c.stop_signal).unwrap_or_default();
        signal_number(&name).unwrap_or(SIGTERM)
    }

    async fn sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus, Status> {
        let (zone, record) = self.sandbox(id).await?;
        Ok(sandbox::status_to_cri(&zone, &record))
    }

    async fn container_statuses(&self, zone: &str) -> Result<Vec<cri::ContainerStatus>, Status> {
        Ok(self.containers(zone).await?.iter().map(|(w, r)| container::status_to_cri(w, r)).collect())
    }
}

impl CriRuntime {
    /// A container's statistics: its cgroup's CPU time and memory in the zone, while it runs.
    async fn stats_of(&self, w: &pb::WorkloadStatus, record: &ContainerRecord) -> Result<cri::ContainerStats, Status> {
        let attributes = Some(cri::ContainerAttributes {
            id: w.id.clone(),
            metadata: record.config.metadata.clone(),
            labels: record.config.labels.clone(),
            annotations: record.config.annotations.clone(),
        });
        if w.state() != pb::WorkloadState::Running {
            return Ok(cri::ContainerStats { attributes, ..Default::default() });
        }
        let req = pb::GetWorkloadStatsRequest { workload_id: w.id.clone() };
        let usage = match self.workloads.clone().get_workload_stats(req).await {
            Ok(r) => r.into_inner(),
            // It exited meanwhile.
            Err(e) if e.code() == Code::FailedPrecondition => {
                return Ok(cri::ContainerStats { attributes, ..Default::default() });
            }
            Err(e) => return Err(daemon_error(&format!("statistics of container {}", w.id), e)),
        };
        Ok(cri::ContainerStats {
            attributes,
            cpu: Some(cpu(usage.timestamp, usage.cpu_usage_ns)),
            memory: Some(memory(usage.timestamp, usage.memory_bytes)),
            writable_layer: None,
            swap: None,
        })
    }

    /// A pod's statistics: its zone's CPU time and memory as Xen accounts them (the VM's whole cost, guest
    /// kernel included), and its containers'.
    async fn pod_stats_of(
        &self,
        zone: &pb::ZoneStatus,
        record: &SandboxRecord,
    ) -> Result<cri::PodSandboxStats, Status> {
        let usage = self
            .zones
            .clone()
            .get_zone_stats(pb::GetZoneStatsRequest { zone: zone.id.clone() })
            .await
            .map_err(|e| daemon_error(&format!("statistics of pod sandbox {}", zone.id), e))?
            .into_inner();
        let mut containers = Vec::new();
        for (w, r) in self.containers(&zone.id).await? {
            if w.state() == pb::WorkloadState::Running {
                containers.push(self.stats_of(&w, &r).await?);
            }
        }
        Ok(cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: zone.id.clone(),
                metadata: record.config.metadata.clone(),
                labels: record.config.labels.clone(),
                annotations: record.config.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cpu(usage.timestamp, usage.cpu_usage_ns)),
                memory: Some(memory(usage.timestamp, usage.memory_bytes)),
                network: None,
                process: None,
                containers,
            }),
            windows: None,
        })
    }
}

fn cpu(timestamp: i64, used_ns: u64) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp,
        usage_core_nano_seconds: Some(cri::UInt64Value { value: used_ns }),
        usage_nano_cores: None,
    }
}

fn memory(timestamp: i64, bytes: u64) -> cri::MemoryUsage {
    // The zone reports what its cgroup uses; kubelet's eviction reads the working set.
    cri::MemoryUsage {
        timestamp,
        working_set_bytes: Some(cri::UInt64Value { value: bytes }),
        usage_bytes: Some(cri::UInt64Value { value: bytes }),
        ..Default::default()
    }
}

/// A signal's number from its name as images give it ("SIGQUIT", "QUIT" or "3").
fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = name.strip_prefix("SIG").unwrap_or(name);
    nix::sys::signal::Signal::iterator().find(|s| s.as_str().strip_prefix("SIG") == Some(name)).map(|s| s as i32)
}

fn streaming_error(e: bulkhead_streaming::RequestError) -> Status {
    Status::invalid_argument(format!("streaming request: {e}"))
}

fn unimplemented(rpc: &str, why: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not supported by the bulkhead runtime: {why}"))
}

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for CriRuntime {
    async fn version(&self, _req: Request<cri::VersionRequest>) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: sandbox::RUNTIME_HANDLER.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_API_VERSION.into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| Status::invalid_argument("no pod sandbox config given"))?;
        let spec = sandbox::zone_spec(&config, &req.runtime_handler, &self.settings.defaults)?;
        let meta = config.metadata.clone().unwrap_or_default();
        let net = crate::network::for_new_pod(self.settings.cni.clone()).await?;
        let name = spec.name.clone();
        let mut zones = self.zones.clone();
        // Where a sandbox's start time goes, logged when it is ready: the zone's creation (domain built,
        // paused), CNI ADD, and the start (NIC hotplug, unpause, boot to the init's first report).
        let began = std::time::Instant::now();
        // Subscribe before starting, so no state change is missed.
        let mut events = zones
            .watch_events(pb::WatchEventsRequest { include_current: false })
            .await
            .map_err(|e| daemon_error("watching zone events", e))?
            .into_inner();
        let zone = zones
            .create_zone(pb::CreateZoneRequest { spec: Some(spec) })
            .await
            .map_err(|e| daemon_error(&format!("creating zone {name} for the pod"), e))?
            .into_inner()
            .zone
            .ok_or_else(|| Status::internal("the daemon created a zone but returned none"))?;
        // The network is made for the zone's id (CNI's container id and the netns name are the sandbox id),
        // and is in place before the zone runs.
        let created = began.elapsed();
        let pod_net = crate::network::setup(&net, &zone.id, &meta).await;
        let network_added = began.elapsed();
        let started = match pod_net.and_then(|p| crate::network::zone_network(&p)) {
            Ok(network) => {
                let req = pb::StartZoneRequest { zone: zone.id.clone(), network: Some(network) };
                match zones.start_zone(req).await {
                    Ok(_) => self.wait_ready(&zone.id, &mut events).await,
                    Err(e) => Err(daemon_error(&format!("starting zone {name}"), e)),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            // A sandbox that did not come up is not left behind: kubelet makes a new attempt.
            if let Err(d) = zones.destroy_zone(pb::DestroyZoneRequest { zone: zone.id.clone() }).await {
                tracing::warn!(zone = %zone.id, error = %d, "destroying a zone that failed to start failed");
            }
            if let Err(d) = crate::network::teardown(&net, &zone.id, &meta, None).await {
                tracing::warn!(zone = %zone.id, error = %d, "tearing down the network of a failed pod failed");
            }
            return Err(e);
        }
        let ready = began.elapsed();
        tracing::info!(
            zone = %zone.id,
            name,
            create_ms = created.as_millis(),
            cni_add_ms = (network_added - created).as_millis(),
            start_ms = (ready - network_added).as_millis(),
            "pod sandbox ready"
        );
        Ok(Response::new(cri::RunPodSandboxResponse { pod_sandbox_id: zone.id }))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        // Stopping what is gone already succeeds (kubelet retries stops).
        let (zone, record) = match self.sandbox(&id).await {
            Ok(found) => found,
            Err(e) if e.code() == Code::NotFound => return Ok(Response::new(cri::StopPodSandboxResponse {})),
            Err(e) => return Err(e),
        };
        if matches!(zone.state(), pb::ZoneState::Starting | pb::ZoneState::Ready | pb::ZoneState::Stopping) {
            let req = pb::StopZoneRequest { zone: id.clone(), timeout_seconds: ZONE_STOP_GRACE_SECONDS };
            match self.zones.clone().stop_zone(req).await {
                Ok(_) => {}
                Err(e) if matches!(e.code(), Code::NotFound | Code::FailedPrecondition) => {}
                Err(e) => return Err(daemon_error(&format!("stopping pod sandbox {id}"), e)),
            }
        }
        // Kubelet expects a stopped sandbox to hold no network resources (its IP goes back to the pool).
        self.release_network(&id, &record).await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        let record = match self.sandbox(&id).await {
            Ok((_, record)) => record,
            Err(e) if e.code() == Code::NotFound => return Ok(Response::new(cri::RemovePodSandboxResponse {})),
            Err(e) => return Err(e),
        };
        // Removal without a stop first (allowed by CRI) still releases the network.
        self.release_network(&id, &record).await?;
        // Destroying the zone forgets its workloads too; their logs stay for kubelet to remove.
        self.zones
            .clone()
            .destroy_zone(pb::DestroyZoneRequest { zone: id.clone() })
            .await
            .map_err(|e| daemon_error(&format!("removing pod sandbox {id}"), e))?;
        if let Some(dir) = crate::network::resolv_conf_path(&self.settings.pods_dir, &id).parent() {
            match tokio::fs::remove_dir_all(dir).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(sandbox = %id, dir = %dir.display(), error = %e, "removing the pod's files failed")
                }
                _ => {}
            }
        }
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let req = req.into_inner();
        let (zone, record) = self.sandbox(&req.pod_sandbox_id).await?;
        let info = if req.verbose {
            [("zone".to_owned(), format!("{zone:?}"))].into_iter().collect()
        } else {
            Default::default()
        };
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(sandbox::status_to_cri(&zone, &record)),
            info,
            containers_statuses: if req.verbose { self.container_statuses(&zone.id).await? } else { vec![] },
            timestamp: crate::now_nanos(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let filter = req.into_inner().filter;
        let items = self
            .sandboxes()
            .await?
            .iter()
            .map(|(z, r)| sandbox::to_cri(z, r))
            .filter(|p| sandbox::matches(p, filter.as_ref()))
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| Status::invalid_argument("no container config given"))?;
        let (zone, record) = self.sandbox(&req.pod_sandbox_id).await?;
        // The sandbox's config as run is authoritative; kubelet sends it again for convenience.
        let dns = record.config.dns_config.as_ref();
        let resolv_conf = crate::network::write_resolv_conf(&self.settings.pods_dir, &zone.id, dns).await?;
        let spec = container::workload_spec(&config, &record.config, resolv_conf.as_deref())?;
        if let Some(dir) = std::path::Path::new(&spec.log_path).parent().filter(|_| !spec.log_path.is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| Status::internal(format!("creating the log directory {}: {e}", dir.display())))?;
        }
        let name = spec.name.clone();
        let w = self
            .workloads
            .clone()
            .create_workload(pb::CreateWorkloadRequest { zone: zone.id.clone(), spec: Some(spec) })
            .await
            .map_err(|e| daemon_error(&format!("creating container {name} in pod sandbox {}", zone.id), e))?
            .into_inner()
            .workload
            .ok_or_else(|| Status::internal("the daemon created a workload but returned none"))?;
        Ok(Response::new(cri::CreateContainerResponse { container_id: w.id }))
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        self.container(&id).await?;
        self.workloads
            .clone()
            .start_workload(pb::StartWorkloadRequest { workload_id: id.clone() })
            .await
            .map_err(|e| daemon_error(&format!("starting container {id}"), e))?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let req = req.into_inner();
        let (w, _) = self.container(&req.container_id).await?;
        let timeout = Duration::from_secs(u64::try_from(req.timeout).unwrap_or(0));
        self.stop(&w, timeout).await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        let w = match self.container(&id).await {
            Ok((w, _)) => w,
            Err(e) if e.code() == Code::NotFound => return Ok(Response::new(cri::RemoveContainerResponse {})),
            Err(e) => return Err(e),
        };
        // A running container is removed by force.
        self.stop(&w, Duration::ZERO).await?;
        match self.workloads.clone().remove_workload(pb::RemoveWorkloadRequest { workload_id: id.clone() }).await {
            Ok(_) => Ok(Response::new(cri::RemoveContainerResponse {})),
            Err(e) if e.code() == Code::NotFound => Ok(Response::new(cri::RemoveContainerResponse {})),
            Err(e) => Err(daemon_error(&format!("removing container {id}"), e)),
        }
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let filter = req.into_inner().filter;
        // Sandbox ids may be prefixes (crictl's short ids): matched here, not by the daemon.
        let containers = self
            .containers("")
            .await?
            .iter()
            .map(|(w, r)| container::to_cri(w, r))
            .filter(|c| container::matches(c, filter.as_ref()))
            .collect();
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let req = req.into_inner();
        let (w, record) = self.container(&req.container_id).await?;
        let info = if req.verbose {
            [("workload".to_owned(), format!("{w:?}"))].into_iter().collect()
        } else {
            Default::default()
        };
        Ok(Response::new(cri::ContainerStatusResponse { status: Some(container::status_to_cri(&w, &record)), info }))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let req = req.into_inner();
        let id = req.container_id;
        self.container(&id).await?;
        // Nothing for Linux: nothing to change (Windows resources do not apply to a Linux zone).
        let Some(limits) = container::limits(req.linux.as_ref())? else {
            return Ok(Response::new(cri::UpdateContainerResourcesResponse {}));
        };
        self.workloads
            .clone()
            .update_workload_limits(pb::UpdateWorkloadLimitsRequest { workload_id: id.clone(), limits: Some(limits) })
            .await
            .map_err(|e| daemon_error(&format!("updating the resources of container {id}"), e))?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let id = req.into_inner().container_id;
        self.container(&id).await?;
        self.workloads
            .clone()
            .reopen_workload_log(pb::ReopenWorkloadLogRequest { workload_id: id.clone() })
            .await
            .map_err(|e| daemon_error(&format!("reopening the log of container {id}"), e))?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let req = req.into_inner();
        self.container(&req.container_id).await?;
        if req.cmd.is_empty() {
            return Err(Status::invalid_argument("ExecSync needs a command"));
        }
        let start = pb::ExecRequest {
            kind: Some(pb::exec_request::Kind::Start(pb::ExecStart {
                workload_id: req.container_id.clone(),
                command: req.cmd,
                ..Default::default()
            })),
        };
        // No stdin: the stream ends after the start.
        let outbound = tokio_stream::iter([start]);
        let what = format!("exec in container {}", req.container_id);
        let run = async {
            let mut replies =
                self.workloads.clone().exec(outbound).await.map_err(|e| daemon_error(&what, e))?.into_inner();
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            while let Some(msg) = replies.message().await.map_err(|e| daemon_error(&what, e))? {
                match msg.kind {
                    Some(pb::exec_response::Kind::Output(out)) => {
                        let buf = if out.fd() == pb::OutputFd::Stderr { &mut stderr } else { &mut stdout };
                        let room = EXEC_SYNC_MAX_OUTPUT.saturating_sub(buf.len());
                        buf.extend_from_slice(&out.data[..out.data.len().min(room)]);
                    }
                    Some(pb::exec_response::Kind::Exited(exit)) => {
                        return Ok(cri::ExecSyncResponse { stdout, stderr, exit_code: exit.code });
                    }
                    _ => {}
                }
            }
            Err(Status::unavailable(format!("{what}: the stream ended before the command exited")))
        };
        let timeout = u64::try_from(req.timeout).ok().filter(|t| *t > 0).map(Duration::from_secs);
        let result = match timeout {
            // Dropping the exec stream ends the process in the zone.
            Some(t) => tokio::time::timeout(t, run).await.map_err(|_| {
                Status::deadline_exceeded(format!("{what}: the command did not exit within {} s", t.as_secs()))
            })?,
            None => run.await,
        };
        Ok(Response::new(result?))
    }

    async fn exec(&self, req: Request<cri::ExecRequest>) -> Result<Response<cri::ExecResponse>, Status> {
        let req = req.into_inner();
        self.running(&req.container_id, "Exec").await?;
        let url = self
            .streams
            .exec_url(bulkhead_streaming::ExecRequest {
                container_id: req.container_id,
                cmd: req.cmd,
                tty: req.tty,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
            })
            .map_err(streaming_error)?;
        Ok(Response::new(cri::ExecResponse { url: url.to_string() }))
    }

    async fn attach(&self, req: Request<cri::AttachRequest>) -> Result<Response<cri::AttachResponse>, Status> {
        let req = req.into_inner();
        let w = self.running(&req.container_id, "Attach").await?;
        if req.stdin && !w.spec.is_some_and(|s| s.stdin) {
            return Err(Status::invalid_argument(format!(
                "Attach: container {} was created without stdin (stdin: true in its spec); attach without -i",
                req.container_id
            )));
        }
        let url = self
            .streams
            .attach_url(bulkhead_streaming::AttachRequest {
                container_id: req.container_id,
                tty: req.tty,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
            })
            .map_err(streaming_error)?;
        Ok(Response::new(cri::AttachResponse { url: url.to_string() }))
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let req = req.into_inner();
        let (zone, _) = self.sandbox(&req.pod_sandbox_id).await?;
        if zone.state() != pb::ZoneState::Ready {
            return Err(Status::failed_precondition(format!(
                "PortForward: pod sandbox {} is {:?}, not ready",
                zone.id,
                zone.state()
            )));
        }
        let ports = req
            .port
            .iter()
            .map(|p| {
                u16::try_from(*p)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| Status::invalid_argument(format!("port {p} is not a TCP port (1 to 65535)")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let url = self
            .streams
            .portforward_url(bulkhead_streaming::PortForwardRequest { pod_sandbox_id: zone.id, ports })
            .map_err(streaming_error)?;
        Ok(Response::new(cri::PortForwardResponse { url: url.to_string() }))
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let (w, record) = self.container(&req.into_inner().container_id).await?;
        Ok(Response::new(cri::ContainerStatsResponse { stats: Some(self.stats_of(&w, &record).await?) }))
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let filter = req.into_inner().filter.map(|f| cri::ContainerFilter {
            id: f.id,
            pod_sandbox_id: f.pod_sandbox_id,
            state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning.into() }),
            label_selector: f.label_selector,
        });
        let running = cri::ContainerFilter {
            state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning.into() }),
            ..Default::default()
        };
        let filter = filter.unwrap_or(running);
        let mut stats = Vec::new();
        for (w, r) in self.containers("").await? {
            if container::matches(&container::to_cri(&w, &r), Some(&filter)) {
                stats.push(self.stats_of(&w, &r).await?);
            }
        }
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let (zone, record) = self.sandbox(&req.into_inner().pod_sandbox_id).await?;
        Ok(Response::new(cri::PodSandboxStatsResponse { stats: Some(self.pod_stats_of(&zone, &record).await?) }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let filter = req.into_inner().filter;
        let mut stats = Vec::new();
        for (zone, record) in self.sandboxes().await? {
            let pod = sandbox::to_cri(&zone, &record);
            let wanted = filter.as_ref().is_none_or(|f| {
                pod.id.starts_with(&f.id) && f.label_selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
            });
            if wanted && zone.state() == pb::ZoneState::Ready {
                stats.push(self.pod_stats_of(&zone, &record).await?);
            }
        }
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(
        &self,
        _req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        // Kubelet sends the node's pod CIDR; the CNI config (the network add-on's) decides addresses, as with
        // containerd, so there is nothing to configure.
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(&self, req: Request<cri::StatusRequest>) -> Result<Response<cri::StatusResponse>, Status> {
        // The runtime is ready when the daemon answers.
        let daemon = self.zones.clone().list_zones(pb::ListZonesRequest::default()).await;
        let runtime = cri::RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: daemon.is_ok(),
            reason: if daemon.is_ok() { String::new() } else { "DaemonUnreachable".into() },
            message: daemon
                .as_ref()
                .err()
                .map(|e| format!("bulkheadd does not answer: {}", e.message()))
                .unwrap_or_default(),
        };
        let cni = crate::network::load(self.settings.cni.clone()).await;
        let network = crate::network::condition(&cni);
        let info = if req.into_inner().verbose {
            [
                ("daemon".to_owned(), format!("{:?}", daemon.map(|_| "reachable"))),
                ("cni".to_owned(), crate::network::describe(&cni)),
            ]
            .into_iter()
            .collect()
        } else {
            Default::default()
        };
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions: vec![runtime, network] }),
            info,
            runtime_handlers: vec![cri::RuntimeHandler {
                name: sandbox::RUNTIME_HANDLER.into(),
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            }],
            features: Some(cri::RuntimeFeatures { supplemental_groups_policy: false }),
        }))
    }

    async fn checkpoint_container(
        &self,
        _req: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(unimplemented(
            "CheckpointContainer",
            "a container's processes live in a VM's kernel, which CRIU on the node cannot reach",
        ))
    }

    type GetContainerEventsStream = BoxStream<cri::ContainerEventResponse>;

    async fn get_container_events(
        &self,
        _req: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let events = self
            .zones
            .clone()
            .watch_events(pb::WatchEventsRequest { include_current: false })
            .await
            .map_err(|e| daemon_error("watching events", e))?
            .into_inner();
        let me = self.clone();
        let stream = events.filter_map(|e| e.ok()).then(move |event| {
            let me = me.clone();
            async move { me.container_event(event).await }
        });
        let stream = stream.filter_map(|e| e.map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse { descriptors: crate::metrics::descriptors() }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        let mut pod_metrics = Vec::new();
        for (zone, record) in self.sandboxes().await? {
            if zone.state() == pb::ZoneState::Ready {
                pod_metrics.push(crate::metrics::pod_metrics(&self.pod_stats_of(&zone, &record).await?));
            }
        }
        Ok(Response::new(cri::ListPodSandboxMetricsResponse { pod_metrics }))
    }

    async fn runtime_config(
        &self,
        _req: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        // The node runs systemd: kubelet manages its own cgroups through it (zones have their own kernels).
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration { cgroup_driver: cri::CgroupDriver::Systemd.into() }),
        }))
    }
}

impl CriRuntime {
    /// The container event for a daemon event, with the pod's status as evented PLEG wants it; `None` for
    /// events that are not about containers.
    async fn container_event(&self, event: pb::Event) -> Option<cri::ContainerEventResponse> {
        let pb::event::Kind::Workload(w) = event.kind? else { return None };
        let kind = match w.state() {
            _ if w.removed => cri::ContainerEventType::ContainerDeletedEvent,
            pb::WorkloadState::Created => cri::ContainerEventType::ContainerCreatedEvent,
            pb::WorkloadState::Running => cri::ContainerEventType::ContainerStartedEvent,
            pb::WorkloadState::Exited => cri::ContainerEventType::ContainerStoppedEvent,
            pb::WorkloadState::Unspecified => return None,
        };
        // Only containers bulkhead-cri made (a removed one can no longer be checked, and is reported).
        match self.container(&w.workload_id).await {
            Ok(_) => {}
            Err(e) if e.code() == Code::NotFound && kind == cri::ContainerEventType::ContainerDeletedEvent => {}
            Err(_) => return None,
        }
        let pod = self.sandbox_status(&w.zone_id).await.ok()?;
        let containers = self.container_statuses(&w.zone_id).await.unwrap_or_default();
        Some(cri::ContainerEventResponse {
            container_id: w.workload_id,
            container_event_type: kind.into(),
            created_at: event.timestamp,
            pod_sandbox_status: Some(pod),
            containers_statuses: containers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_are_read_as_images_write_them() {
        assert_eq!(signal_number("SIGQUIT"), Some(3));
        assert_eq!(signal_number("QUIT"), Some(3));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("SIGRTMAX+1"), None);
        assert_eq!(signal_number(""), None);
    }
}
