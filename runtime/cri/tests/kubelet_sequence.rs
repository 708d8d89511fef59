//! Kubelet's sequence of CRI calls over the real transports: a CRI client on bulkhead-cri's unix socket,
//! bulkhead-cri on the daemon's control socket, the daemon's real image store (busybox imported) and
//! workload manager, and zones that boot a scripted init on the in-memory hypervisor. The same sequence runs
//! against real Xen zones in the test bed.

use std::path::Path;
use std::time::Duration;

use bulkhead_oci::testing::root_or_skip;
use k8s_cri::v1 as cri;
use tonic::Code;

// The shared in-process node; the test without a pod network is network_ready.rs.
#[allow(dead_code)]
mod support;

use support::{Node, node};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn sandbox_config(logs: &Path, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        labels: [("app".to_owned(), name.to_owned())].into_iter().collect(),
        annotations: [("note".to_owned(), "kept".to_owned())].into_iter().collect(),
        ..Default::default()
    }
}

/// A container the scripted zone runs: it prints "out:<argv0>" and "err", then exits with the last argument
/// (or keeps running for "run").
fn container_config(name: &str, argv: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: "busybox:test".into(), ..Default::default() }),
        command: argv.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        labels: [("container".to_owned(), name.to_owned())].into_iter().collect(),
        ..Default::default()
    }
}

async fn status(node: &mut Node, id: &str) -> Result<cri::ContainerStatus, Box<dyn std::error::Error>> {
    let req = cri::ContainerStatusRequest { container_id: id.into(), verbose: false };
    Ok(node.runtime.container_status(req).await?.into_inner().status.ok_or("no status")?)
}

async fn wait_state(
    node: &mut Node,
    id: &str,
    state: cri::ContainerState,
) -> Result<cri::ContainerStatus, Box<dyn std::error::Error>> {
    for _ in 0..500 {
        let s = status(node, id).await?;
        if s.state() == state {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("container {id} never reached {state:?}").into())
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    match r {
        Ok(v) => (Code::Ok, format!("{v:?}")),
        Err(e) => (e.code(), e.message().to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubelets_sequence_runs_a_pod_of_two_containers_and_cleans_up_idempotently() -> TestResult {
    if !root_or_skip("the image import chowns") {
        return Ok(());
    }
    let mut node = node().await?;
    let logs = node.dir.path().join("pods/default_web");

    let version = node.runtime.version(cri::VersionRequest { version: "v1".into() }).await?.into_inner();
    assert_eq!((version.runtime_name.as_str(), version.runtime_api_version.as_str()), ("bulkhead", "v1"));
    let st = node.runtime.status(cri::StatusRequest { verbose: false }).await?.into_inner();
    let conditions = st.status.ok_or("no status")?.conditions;
    let ready = |t: &str| conditions.iter().find(|c| c.r#type == t).map(|c| (c.status, c.reason.clone()));
    assert_eq!(ready("RuntimeReady"), Some((true, String::new())));
    // The node's CNI config and plugins are there: the network is ready.
    assert_eq!(ready("NetworkReady"), Some((true, String::new())));

    // The image is there under its tag; an unknown one is absent, not an error.
    let spec = |i: &str| Some(cri::ImageSpec { image: i.into(), ..Default::default() });
    let img = node.images.image_status(cri::ImageStatusRequest { image: spec("busybox:test"), verbose: false }).await?;
    let image = img.into_inner().image.ok_or("busybox:test not found")?;
    assert!(image.id.starts_with("sha256:"), "{}", image.id);
    let none = node.images.image_status(cri::ImageStatusRequest { image: spec("nothere:1"), verbose: false }).await?;
    assert!(none.into_inner().image.is_none());
    let fs = node.images.image_fs_info(cri::ImageFsInfoRequest {}).await?.into_inner();
    assert!(fs.image_filesystems[0].used_bytes.as_ref().is_some_and(|u| u.value > 0));

    // Run the sandbox: it is READY when the call returns.
    let config = sandbox_config(&logs, "web");
    let run = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: "bulkhead".into() };
    let pod = node.runtime.run_pod_sandbox(run).await?.into_inner().pod_sandbox_id;
    let ps =
        node.runtime.pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false });
    let ps = ps.await?.into_inner().status.ok_or("no sandbox status")?;
    assert_eq!(ps.state(), cri::PodSandboxState::SandboxReady);
    assert_eq!(ps.metadata, config.metadata);
    assert_eq!(ps.annotations.get("note").map(String::as_str), Some("kept"));
    // The pod IP from the real bridge + host-local plugins, in the pod's own netns under its id.
    let ip = ps.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default();
    let subnet = node.subnet.clone().ok_or("the node has no pod network")?;
    assert!(ip.starts_with(subnet.trim_end_matches("0/24")), "pod IP {ip:?} is not in {subnet}");
    let netns = std::path::Path::new("/run/netns").join(&pod);
    assert!(netns.exists(), "no netns {}", netns.display());

    // Evented PLEG: kubelet watches container events from here on.
    let mut events = node.runtime.get_container_events(cri::GetEventsRequest {}).await?.into_inner();

    // Two containers: one exits 7, one keeps running.
    let create = |name: &str, argv: &[&str]| cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(container_config(name, argv)),
        sandbox_config: Some(config.clone()),
    };
    let job = node.runtime.create_container(create("job", &["/bin/job", "7"])).await?.into_inner().container_id;
    let app = node.runtime.create_container(create("app", &["/bin/app", "run"])).await?.into_inner().container_id;
    assert_eq!(status(&mut node, &job).await?.state(), cri::ContainerState::ContainerCreated);
    node.runtime.start_container(cri::StartContainerRequest { container_id: job.clone() }).await?;
    node.runtime.start_container(cri::StartContainerRequest { container_id: app.clone() }).await?;
    let done = wait_state(&mut node, &job, cri::ContainerState::ContainerExited).await?;
    assert_eq!((done.exit_code, done.reason.as_str()), (7, "Error"));
    assert!(done.created_at > 0 && done.started_at >= done.created_at && done.finished_at >= done.started_at);
    assert_eq!(done.log_path, logs.join("job/0.log").display().to_string());
    let running = wait_state(&mut node, &app, cri::ContainerState::ContainerRunning).await?;
    assert_eq!(running.labels.get("container").map(String::as_str), Some("app"));

    // The job's life as events, in order, each with its pod's status.
    let mut seen = Vec::new();
    while !seen.contains(&cri::ContainerEventType::ContainerStoppedEvent) {
        let e = tokio::time::timeout(Duration::from_secs(10), events.message()).await??.ok_or("events ended")?;
        assert!(e.pod_sandbox_status.as_ref().is_some_and(|p| p.id == pod), "{e:?}");
        assert!(e.created_at > 0);
        if e.container_id == job {
            seen.push(e.container_event_type());
        }
    }
    use cri::ContainerEventType::{ContainerCreatedEvent, ContainerStartedEvent, ContainerStoppedEvent};
    // A process that ends at once may be seen exited before its start is confirmed: no STARTED then.
    let full = [ContainerCreatedEvent, ContainerStartedEvent, ContainerStoppedEvent];
    assert!(seen == full || seen == [ContainerCreatedEvent, ContainerStoppedEvent], "{seen:?}");
    drop(events);

    // Logs on disk, in the CRI format, where kubelet looks.
    let log = std::fs::read_to_string(logs.join("job/0.log"))?;
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.iter().any(|l| l.ends_with(" stdout F out:/bin/job")), "{log}");
    assert!(lines.iter().any(|l| l.ends_with(" stderr F err")), "{log}");
    let stamp = lines[0].split(' ').next().unwrap_or_default();
    assert!(stamp.contains('T') && stamp.ends_with('Z'), "not RFC 3339: {stamp}");

    // Listing with filters.
    let list = |f: cri::ContainerFilter| cri::ListContainersRequest { filter: Some(f) };
    let running_only = cri::ContainerFilter {
        state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning.into() }),
        ..Default::default()
    };
    let l = node.runtime.list_containers(list(running_only)).await?.into_inner().containers;
    assert_eq!(l.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [app.as_str()]);
    let by_pod = cri::ContainerFilter { pod_sandbox_id: pod[..8].into(), ..Default::default() };
    assert_eq!(node.runtime.list_containers(list(by_pod)).await?.into_inner().containers.len(), 2);
    let pods = node.runtime.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await?.into_inner().items;
    assert_eq!(pods.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [pod.as_str()]);

    // Statistics: the container's from its cgroup in the zone, the pod's from Xen (the whole VM).
    let cs = node.runtime.container_stats(cri::ContainerStatsRequest { container_id: app.clone() }).await?;
    let cs = cs.into_inner().stats.ok_or("no container stats")?;
    assert_eq!(cs.cpu.and_then(|c| c.usage_core_nano_seconds).map(|v| v.value), Some(5_000_000));
    assert_eq!(cs.memory.and_then(|m| m.working_set_bytes).map(|v| v.value), Some(1 << 20));
    let ps = node.runtime.pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id: pod.clone() }).await?;
    let ps = ps.into_inner().stats.ok_or("no pod stats")?.linux.ok_or("no linux pod stats")?;
    assert_eq!(ps.memory.and_then(|m| m.usage_bytes).map(|v| v.value), Some(64 << 20), "the zone's memory");
    assert_eq!(ps.containers.len(), 1, "only the running container has statistics");
    let all = node.runtime.list_container_stats(cri::ListContainerStatsRequest { filter: None }).await?;
    assert_eq!(all.into_inner().stats.len(), 1);
    let pods = node.runtime.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None }).await?;
    assert_eq!(pods.into_inner().stats.len(), 1);

    // Metrics (kubelet's /metrics/cadvisor from CRI): the same figures, labelled, each one described.
    let described = node.runtime.list_metric_descriptors(cri::ListMetricDescriptorsRequest {}).await?.into_inner();
    let names: Vec<&str> = described.descriptors.iter().map(|d| d.name.as_str()).collect();
    let metrics = node.runtime.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {}).await?.into_inner();
    let [pm] = metrics.pod_metrics.as_slice() else { return Err(format!("{metrics:?}").into()) };
    assert_eq!(pm.pod_sandbox_id, pod);
    let value = |ms: &[cri::Metric], name: &str| ms.iter().find(|m| m.name == name).and_then(|m| m.value);
    assert_eq!(value(&pm.metrics, "bulkhead_zone_memory_bytes").map(|v| v.value), Some(64 << 20));
    let [cm] = pm.container_metrics.as_slice() else { return Err(format!("{pm:?}").into()) };
    assert_eq!(cm.container_id, app);
    assert_eq!(value(&cm.metrics, "container_memory_usage_bytes").map(|v| v.value), Some(1 << 20));
    for m in pm.metrics.iter().chain(&cm.metrics) {
        assert!(names.contains(&m.name.as_str()), "{} is not described", m.name);
    }

    // UpdateContainerResources: the zone's cgroup takes the new limits, and the status shows them.
    let resources = |memory: i64| cri::LinuxContainerResources {
        memory_limit_in_bytes: memory,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        ..Default::default()
    };
    let update = |id: &str, memory: i64| cri::UpdateContainerResourcesRequest {
        container_id: id.into(),
        linux: Some(resources(memory)),
        ..Default::default()
    };
    node.runtime.update_container_resources(update(&app, 96 << 20)).await?;
    let updated = status(&mut node, &app).await?.resources.and_then(|r| r.linux).ok_or("no resources in the status")?;
    assert_eq!((updated.memory_limit_in_bytes, updated.cpu_quota), (96 << 20, 50_000));
    assert_eq!(code(node.runtime.update_container_resources(update("nothere", 1 << 20)).await).0, Code::NotFound);
    assert_eq!(code(node.runtime.update_container_resources(update(&app, -1)).await).0, Code::InvalidArgument);
    assert_eq!(code(node.runtime.update_container_resources(update(&job, 1 << 20)).await).0, Code::FailedPrecondition);

    // ExecSync returns the command's output and exit code.
    let exec = cri::ExecSyncRequest { container_id: app.clone(), cmd: vec!["echo".into(), "hi".into()], timeout: 10 };
    let out = node.runtime.exec_sync(exec).await?.into_inner();
    assert_eq!((String::from_utf8_lossy(&out.stdout).as_ref(), out.exit_code), ("echo hi", 3));

    // Exec through the streaming server (its WebSocket protocol), and port-forward to the scripted zone's
    // echo server through the host-zone channel.
    let exec = cri::ExecRequest {
        container_id: app.clone(),
        cmd: vec!["ls".into(), "/".into()],
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let url = node.runtime.exec(exec).await?.into_inner().url.parse()?;
    let out = bulkhead_streaming::client::exec(&url, None).await?;
    assert_eq!((out.stdout.as_slice(), out.exit_code), (b"ls /".as_slice(), Some(3)));
    let forward = cri::PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![8080] };
    let url = node.runtime.port_forward(forward).await?.into_inner().url.parse()?;
    let echoed = bulkhead_streaming::client::port_forward(&url, b"hello zone", 10).await?;
    assert_eq!(echoed, b"hello zone");
    let bad = cri::PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![70000] };
    assert_eq!(code(node.runtime.port_forward(bad).await).0, Code::InvalidArgument);
    let exited =
        cri::ExecRequest { container_id: job.clone(), cmd: vec!["x".into()], stdout: true, ..Default::default() };
    assert_eq!(code(node.runtime.exec(exited).await).0, Code::FailedPrecondition);

    // Log rotation: kubelet renames the file, then asks for a new one.
    std::fs::rename(logs.join("app/0.log"), logs.join("app/0.log.1"))?;
    node.runtime.reopen_container_log(cri::ReopenContainerLogRequest { container_id: app.clone() }).await?;
    assert!(logs.join("app/0.log").exists());

    // Stop with the image's STOPSIGNAL (the fixture's is SIGQUIT: 128 + 3), remove, and every stop/remove again.
    node.runtime.stop_container(cri::StopContainerRequest { container_id: app.clone(), timeout: 5 }).await?;
    let stopped = status(&mut node, &app).await?;
    assert_eq!((stopped.state(), stopped.exit_code), (cri::ContainerState::ContainerExited, 131));
    for _ in 0..2 {
        for id in [&job, &app] {
            node.runtime.stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 0 }).await.ok();
            node.runtime.remove_container(cri::RemoveContainerRequest { container_id: id.clone() }).await?;
        }
        node.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
        // A stopped sandbox holds no network: CNI DEL ran and its netns is gone.
        assert!(!netns.exists(), "{} is left after StopPodSandbox", netns.display());
        node.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
    }
    assert!(
        node.runtime
            .list_containers(cri::ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers
            .is_empty()
    );
    assert!(
        node.runtime.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await?.into_inner().items.is_empty()
    );
    assert!(logs.join("job/0.log").exists(), "container logs are kubelet's to delete");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_ids_are_not_found_and_bad_configs_invalid_with_the_reason() -> TestResult {
    if !root_or_skip("the image import chowns") {
        return Ok(());
    }
    let mut node = node().await?;
    let logs = node.dir.path().join("pods");

    let (c, msg) = code(
        node.runtime
            .container_status(cri::ContainerStatusRequest { container_id: "nope".into(), verbose: false })
            .await,
    );
    assert_eq!(c, Code::NotFound, "{msg}");
    assert!(msg.contains("container \"nope\" not found"), "{msg}");
    let (c, msg) = code(
        node.runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: "nope".into(), verbose: false })
            .await,
    );
    assert_eq!(c, Code::NotFound, "{msg}");
    let (c, _) = code(node.runtime.start_container(cri::StartContainerRequest { container_id: "nope".into() }).await);
    assert_eq!(c, Code::NotFound);
    let (c, _) = code(
        node.runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: "nope".into(),
                config: Some(container_config("x", &["x"])),
                sandbox_config: None,
            })
            .await,
    );
    assert_eq!(c, Code::NotFound);
    // Stops and removes of what does not exist succeed.
    node.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: "nope".into() }).await?;
    node.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: "nope".into() }).await?;
    node.runtime.remove_container(cri::RemoveContainerRequest { container_id: "nope".into() }).await?;

    // hostNetwork is refused before anything is made.
    let mut host = sandbox_config(&logs, "host");
    host.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let run = cri::RunPodSandboxRequest { config: Some(host), runtime_handler: String::new() };
    let (c, msg) = code(node.runtime.run_pod_sandbox(run).await);
    assert_eq!(c, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("hostNetwork"), "{msg}");
    assert!(
        node.runtime.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await?.into_inner().items.is_empty()
    );

    // A container of an unknown image, or with a volume, is refused with the reason.
    let config = sandbox_config(&logs, "web");
    let run = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
    let pod = node.runtime.run_pod_sandbox(run).await?.into_inner().pod_sandbox_id;
    let mut unknown = container_config("a", &["x"]);
    unknown.image = Some(cri::ImageSpec { image: "nothere:1".into(), ..Default::default() });
    let create = |c: cri::ContainerConfig| cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(c),
        sandbox_config: Some(config.clone()),
    };
    let (c, msg) = code(node.runtime.create_container(create(unknown)).await);
    assert_eq!(c, Code::NotFound, "{msg}");
    assert!(msg.contains("nothere"), "{msg}");
    let mut volume = container_config("b", &["x"]);
    volume.mounts.push(cri::Mount { container_path: "/data".into(), host_path: "/srv".into(), ..Default::default() });
    let (c, msg) = code(node.runtime.create_container(create(volume)).await);
    assert_eq!(c, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("hostPath volumes cannot be shared into a zone"), "{msg}");
    let (c, msg) = code(node.runtime.checkpoint_container(cri::CheckpointContainerRequest::default()).await);
    assert_eq!(c, Code::Unimplemented, "{msg}");
    assert!(msg.contains("not supported by the bulkhead runtime"), "{msg}");
    Ok(())
}

/// Waits until the container's CRI log has a line ending with `tail`; returns the whole log.
async fn wait_log_line(path: &Path, tail: &str) -> Result<String, Box<dyn std::error::Error>> {
    for _ in 0..500 {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.lines().any(|l| l.ends_with(tail)) {
            return Ok(log);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("{} never got a line ending with {tail:?}", path.display()).into())
}

#[tokio::test(flavor = "multi_thread")]
async fn container_stdin_is_closed_kept_open_or_closed_once_as_configured() -> TestResult {
    if !root_or_skip("the image import chowns") {
        return Ok(());
    }
    let mut node = node().await?;
    let logs = node.dir.path().join("pods/default_stdin");
    let config = sandbox_config(&logs, "stdin");
    let run = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: "bulkhead".into() };
    let pod = node.runtime.run_pod_sandbox(run).await?.into_inner().pod_sandbox_id;
    let mut start = async |name: &str, stdin: bool, stdin_once: bool| -> Result<String, Box<dyn std::error::Error>> {
        let mut c = container_config(name, &["/bin/cat", "run"]);
        (c.stdin, c.stdin_once) = (stdin, stdin_once);
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(c),
            sandbox_config: Some(config.clone()),
        };
        let id = node.runtime.create_container(req).await?.into_inner().container_id;
        node.runtime.start_container(cri::StartContainerRequest { container_id: id.clone() }).await?;
        Ok(id)
    };
    let none = start("none", false, false).await?;
    let open = start("open", true, false).await?;
    let once = start("once", true, true).await?;

    // Without stdin the process reads end-of-file at once, as from /dev/null.
    wait_log_line(&logs.join("none/0.log"), " stderr F stdin closed").await?;

    let attach = |id: &str, stdin: bool| cri::AttachRequest {
        container_id: id.into(),
        stdin,
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let e = node.runtime.attach(attach(&none, true)).await;
    let (c, message) = code(e);
    assert_eq!(c, Code::InvalidArgument, "{message}");
    assert!(message.contains("without stdin"), "{message}");

    // An attachment's input reaches the process; its end leaves a plain stdin open for the next one ...
    for (round, id) in [(1, &open), (2, &open), (1, &once)] {
        let url = node.runtime.attach(attach(id, true)).await?.into_inner().url.parse()?;
        let input = format!("line {round}\n");
        let out = bulkhead_streaming::client::attach(&url, Some(input.as_bytes()), input.len()).await?;
        assert_eq!(String::from_utf8_lossy(&out.stdout), input);
    }
    // ... and closes a stdin-once one.
    wait_log_line(&logs.join("once/0.log"), " stderr F stdin closed").await?;
    let open_log = std::fs::read_to_string(logs.join("open/0.log"))?;
    assert!(open_log.lines().any(|l| l.ends_with(" stdout F line 2")), "{open_log}");
    assert!(!open_log.contains("stdin closed"), "{open_log}");
    Ok(())
}

/// A pod directory laid out as kubelet does, removed on drop (kubelet's own directory is not touched).
struct KubeletPod(std::path::PathBuf);

impl KubeletPod {
    fn new(uid: &str) -> Result<Self, Box<dyn std::error::Error>> {
        let dir = Path::new(bulkhead_cri::volumes::KUBELET_PODS_DIR).join(uid);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(KubeletPod(dir))
    }
}

impl Drop for KubeletPod {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubelets_volumes_reach_the_zone_and_oversized_ones_are_refused_with_the_limit() -> TestResult {
    if !root_or_skip("the image import chowns, and kubelet's pod directory is under /var/lib") {
        return Ok(());
    }
    let mut node = node().await?;
    let logs = node.dir.path().join("pods/default_vol");
    let pod_dir = KubeletPod::new(&format!("bulkhead-test-{}", std::process::id()))?;
    let p = &pod_dir.0;
    std::fs::write(p.join("etc-hosts"), "127.0.0.1 localhost\n10.0.0.7 vol\n")?;
    let token = p.join("volumes/kubernetes.io~projected/kube-api-access-x7k2q");
    let ts = token.join("..2026_11_23_07_00_00.1");
    std::fs::create_dir_all(&ts)?;
    std::fs::write(ts.join("token"), "tok")?;
    std::os::unix::fs::symlink("..2026_11_23_07_00_00.1", token.join("..data"))?;
    std::os::unix::fs::symlink("..data/token", token.join("token"))?;
    std::os::unix::fs::symlink("/etc/shadow", token.join("evil"))?;
    let cache = p.join("volumes/kubernetes.io~empty-dir/cache");
    std::fs::create_dir_all(&cache)?;

    let mut config = sandbox_config(&logs, "vol");
    // Kubelet's DNS config (dnsPolicy ClusterFirst): the runtime writes the pod's resolv.conf.
    config.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let resolv_conf = "nameserver 10.96.0.10\nsearch default.svc.cluster.local\noptions ndots:5\n";
    let run = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
    let pod = node.runtime.run_pod_sandbox(run).await?.into_inner().pod_sandbox_id;
    let mount = |host: &Path, container: &str, readonly| cri::Mount {
        host_path: host.display().to_string(),
        container_path: container.into(),
        readonly,
        ..Default::default()
    };
    let mut c = container_config("app", &["/bin/app", "0"]);
    c.mounts = vec![
        mount(&p.join("etc-hosts"), "/etc/hosts", false),
        mount(&token, "/var/run/secrets/kubernetes.io/serviceaccount", true),
        mount(&cache, "/cache", false),
    ];
    let create = |c: cri::ContainerConfig| cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(c),
        sandbox_config: Some(config.clone()),
    };
    let id = node.runtime.create_container(create(c.clone())).await?.into_inner().container_id;
    node.runtime.start_container(cri::StartContainerRequest { container_id: id.clone() }).await?;
    let done = wait_state(&mut node, &id, cri::ContainerState::ContainerExited).await?;
    assert_eq!(done.exit_code, 0);
    assert_eq!(done.mounts, c.mounts, "ContainerStatus reports kubelet's mounts");
    // The scripted zone got each snapshot before the workload (etc-hosts: 33 bytes; the token: 3, the
    // escaping link dropped) and the emptyDir by name.
    let log = std::fs::read_to_string(logs.join("app/0.log"))?;
    let resolv_mount = format!("mount:/etc/resolv.conf:{}", resolv_conf.len());
    for want in [
        "mount:/etc/hosts:33",
        "mount:/var/run/secrets/kubernetes.io/serviceaccount:3",
        "mount:/cache:emptydir",
        &resolv_mount,
    ] {
        assert!(log.contains(want), "{want} not in {log}");
    }

    // Over the per-container bound: refused at CreateContainer, naming the volume and the limit.
    let big = p.join("volumes/kubernetes.io~configmap/big");
    std::fs::create_dir_all(&big)?;
    std::fs::write(big.join("a"), vec![b'x'; 3 << 20])?;
    std::fs::write(big.join("b"), vec![b'x'; 2 << 20])?;
    let mut c = container_config("big", &["/bin/big", "0"]);
    c.mounts = vec![mount(&big, "/cfg", true)];
    let (code_, msg) = code(node.runtime.create_container(create(c)).await);
    assert_eq!(code_, Code::InvalidArgument, "{msg}");
    assert!(msg.contains(&big.display().to_string()) && msg.contains("4 MiB"), "{msg}");
    // A hostPath is refused with the reason.
    let mut c = container_config("host", &["/bin/host", "0"]);
    c.mounts = vec![mount(Path::new("/var/log"), "/logs", true)];
    let (code_, msg) = code(node.runtime.create_container(create(c)).await);
    assert_eq!(code_, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("hostPath volumes cannot be shared into a zone"), "{msg}");
    Ok(())
}
