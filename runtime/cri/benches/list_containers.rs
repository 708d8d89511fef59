//! ListContainers and ListPodSandbox latency with 50 pods of one running container each, over the CRI
//! socket (kubelet's relist asks this every second). Zones are the fake hypervisor's scripted ones: listing
//! never reaches a zone, so the figure is the CRI server's, the daemon's and their sockets' cost.
//!
//! `cargo bench -p bulkhead-cri --bench list_containers` (as root: the image store's import chowns).

use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;

#[path = "../tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

const PODS: usize = 50;
const ROUNDS: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / u32::try_from(samples.len().max(1)).unwrap_or(1);
    println!(
        "figure: {what} with {PODS} pods: p50 {:.2} ms, p95 {:.2} ms, mean {:.2} ms ({} calls)",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.95).as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3,
        samples.len()
    );
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut node = support::node().await?;
    let logs = node.dir.path().join("pods");
    let image = Some(cri::ImageSpec { image: "busybox:test".into(), ..Default::default() });
    let status = node.images.image_status(cri::ImageStatusRequest { image, verbose: false }).await?;
    assert!(status.into_inner().image.is_some(), "the pods' image is in the store");
    for i in 0..PODS {
        let name = format!("pod-{i}");
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.clone(),
                uid: format!("uid-{i}"),
                namespace: "bench".into(),
                attempt: 0,
            }),
            log_directory: logs.join(&name).display().to_string(),
            labels: [("app".to_owned(), name.clone())].into_iter().collect(),
            ..Default::default()
        };
        let run = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: "bulkhead".into() };
        let pod = node.runtime.run_pod_sandbox(run).await?.into_inner().pod_sandbox_id;
        let container = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: "main".into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: "busybox:test".into(), ..Default::default() }),
            command: vec!["/bin/main".into(), "run".into()],
            log_path: "main/0.log".into(),
            ..Default::default()
        };
        let create =
            cri::CreateContainerRequest { pod_sandbox_id: pod, config: Some(container), sandbox_config: Some(config) };
        let id = node.runtime.create_container(create).await?.into_inner().container_id;
        node.runtime.start_container(cri::StartContainerRequest { container_id: id }).await?;
    }
    let mut containers = Vec::with_capacity(ROUNDS);
    let mut pods = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let n = node.runtime.list_containers(cri::ListContainersRequest { filter: None }).await?.into_inner();
        containers.push(t.elapsed());
        assert_eq!(n.containers.len(), PODS, "every pod's container is listed");
        let t = Instant::now();
        let n = node.runtime.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await?.into_inner();
        pods.push(t.elapsed());
        assert_eq!(n.items.len(), PODS, "every pod is listed");
    }
    report("ListContainers", containers);
    report("ListPodSandbox", pods);
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !bulkhead_oci::testing::root_or_skip("the image import chowns") {
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run())
}
