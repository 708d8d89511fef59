//! `bulkhead-cri overhead-check`: is a RuntimeClass's pod overhead honest on this node? It runs a real pod
//! with a memory limit and that overhead, the way kubelet passes them, and checks both sides of the promise:
//! the pod's containers can use their whole limit (the zone's MemAvailable covers it), and the node pays no
//! more than limit + overhead for the pod (Xen's free memory drop plus dom0's used memory growth).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use bulkhead_api::control::v1 as pb;
use bulkhead_api::control::v1::host_service_client::HostServiceClient;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;

use crate::smoke::connect;

const KIB: i64 = 1024;
const MIB: i64 = 1 << 20;

/// What the check is given.
#[derive(Debug, Clone)]
pub struct OverheadCheck {
    /// The CRI socket.
    pub socket: PathBuf,
    /// bulkheadd's control socket (Xen's free memory comes from its host service).
    pub daemon_socket: PathBuf,
    /// An image with /bin/busybox.
    pub image: String,
    /// The RuntimeClass's `overhead.podFixed.memory`, MiB.
    pub overhead_mib: u32,
    /// The pod's memory limit, MiB.
    pub limit_mib: u32,
    /// Where the pod's logs go.
    pub log_dir: PathBuf,
}

/// What the pod cost, KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverheadFigures {
    /// Xen's free memory drop (the zone's memory and Xen's own per-domain memory).
    pub xen_kib: i64,
    /// dom0's used memory growth (bulkheadd, blkback, the channel).
    pub dom0_kib: i64,
    /// The zone's MemAvailable with the pod's container running.
    pub zone_available_kib: i64,
}

impl OverheadFigures {
    /// Checks the figures against the pod's limit and overhead; the error says which side is broken.
    pub fn check(&self, limit_mib: u32, overhead_mib: u32) -> anyhow::Result<()> {
        let limit_kib = i64::from(limit_mib) * KIB;
        ensure!(
            self.zone_available_kib >= limit_kib,
            "the pod's containers cannot use their {limit_mib} MiB limit: the zone has {} KiB available; \
             raise the RuntimeClass overhead (the zone gets limit + overhead - bulkhead-cri's \
             --zone-host-overhead-mib)",
            self.zone_available_kib
        );
        let paid = self.xen_kib + self.dom0_kib;
        let promised = limit_kib + i64::from(overhead_mib) * KIB;
        ensure!(
            paid <= promised,
            "the node pays {paid} KiB for the pod (Xen {} KiB, dom0 {} KiB), more than its limit + overhead \
             ({promised} KiB): raise the RuntimeClass overhead and bulkhead-cri's --zone-host-overhead-mib",
            self.xen_kib,
            self.dom0_kib
        );
        Ok(())
    }
}

/// dom0's used memory (MemTotal - MemAvailable), KiB.
fn dom0_used_kib() -> anyhow::Result<i64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    Ok(meminfo_kib(&text, "MemTotal")? - meminfo_kib(&text, "MemAvailable")?)
}

/// A field of a /proc/meminfo text, KiB.
fn meminfo_kib(text: &str, field: &str) -> anyhow::Result<i64> {
    text.lines()
        .find_map(|l| {
            let (name, rest) = l.split_once(':')?;
            (name == field).then(|| rest.trim().trim_end_matches("kB").trim().parse().ok())?
        })
        .with_context(|| format!("no {field} in /proc/meminfo"))
}

async fn xen_free_kib(host: &mut HostServiceClient<tonic::transport::Channel>) -> anyhow::Result<i64> {
    let info = host.get_host_info(pb::GetHostInfoRequest {}).await.context("bulkheadd GetHostInfo")?.into_inner();
    Ok(i64::try_from(info.free_memory_bytes / 1024).unwrap_or(i64::MAX))
}

/// Runs the pod, measures, removes it, then checks.
pub async fn run(c: &OverheadCheck) -> anyhow::Result<OverheadFigures> {
    let mut rt = RuntimeServiceClient::new(connect(&c.socket).await?);
    let mut host = HostServiceClient::new(bulkhead_cri::daemon_channel(&c.daemon_socket));
    let memory = |mib: u32| {
        Some(cri::LinuxContainerResources { memory_limit_in_bytes: i64::from(mib) * MIB, ..Default::default() })
    };
    let config = cri::PodSandboxConfig {
        linux: Some(cri::LinuxPodSandboxConfig {
            resources: memory(c.limit_mib),
            overhead: memory(c.overhead_mib),
            ..Default::default()
        }),
        ..crate::smoke::pod_config("overhead", &c.log_dir)
    };
    let (xen0, dom0_0) = (xen_free_kib(&mut host).await?, dom0_used_kib()?);
    let run = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: "bulkhead".into() };
    let pod = rt.run_pod_sandbox(run).await.context("RunPodSandbox")?.into_inner().pod_sandbox_id;
    let measured = async {
        let container = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: "idle".into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: c.image.clone(), ..Default::default() }),
            command: vec!["/bin/busybox".into(), "sleep".into(), "3600".into()],
            log_path: "idle/0.log".into(),
            linux: Some(cri::LinuxContainerConfig { resources: memory(c.limit_mib), security_context: None }),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container),
            sandbox_config: Some(config.clone()),
        };
        let id = rt.create_container(req).await.context("CreateContainer")?.into_inner().container_id;
        rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.context("StartContainer")?;
        // The zone's init and the first exec settle (page cache filled and freed) before anything is read.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let exec = cri::ExecSyncRequest {
            container_id: id,
            cmd: vec!["/bin/busybox".into(), "cat".into(), "/proc/meminfo".into()],
            timeout: 30,
        };
        let out = rt.exec_sync(exec).await.context("ExecSync cat /proc/meminfo")?.into_inner();
        ensure!(out.exit_code == 0, "cat /proc/meminfo in the zone exited {}", out.exit_code);
        let zone_available_kib = meminfo_kib(&String::from_utf8_lossy(&out.stdout), "MemAvailable")?;
        let (xen1, dom0_1) = (xen_free_kib(&mut host).await?, dom0_used_kib()?);
        Ok(OverheadFigures { xen_kib: xen0 - xen1, dom0_kib: dom0_1 - dom0_0, zone_available_kib })
    }
    .await;
    let stop = rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await;
    let remove = rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await;
    let figures = measured?;
    stop.context("StopPodSandbox")?;
    remove.context("RemovePodSandbox")?;
    figures.check(c.limit_mib, c.overhead_mib)?;
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_parse_and_a_missing_one_is_an_error() -> anyhow::Result<()> {
        let text = "MemTotal:         230512 kB\nMemFree:          200000 kB\nMemAvailable:     210000 kB\n";
        assert_eq!(meminfo_kib(text, "MemTotal")?, 230_512);
        assert_eq!(meminfo_kib(text, "MemAvailable")?, 210_000);
        assert!(meminfo_kib(text, "Shmem").is_err());
        Ok(())
    }

    #[test]
    fn each_broken_promise_is_named() {
        let ok = OverheadFigures { xen_kib: 100 * 1024, dom0_kib: 1024, zone_available_kib: 70 * 1024 };
        assert!(ok.check(64, 40).is_ok());
        let starved = OverheadFigures { zone_available_kib: 60 * 1024, ..ok };
        let e = starved.check(64, 40).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("cannot use their 64 MiB limit"), "{e}");
        let costly = OverheadFigures { xen_kib: 110 * 1024, ..ok };
        let e = costly.check(64, 40).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("more than its limit + overhead"), "{e}");
    }
}
