//! `bulkhead-cri smoke-test`: kubelet's sequence of CRI calls against a running CRI endpoint, with a real pod
//! and its containers, then a second pod that reaches the first over the pod network, checking each answer.
//! It proves a node can run pods (the test bed and the image boot tests run it) and measures pod start latency.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// What the smoke test is given.
#[derive(Debug, Clone)]
pub struct SmokeTest {
    /// The CRI socket.
    pub socket: PathBuf,
    /// An image with busybox's `sh`, `echo` and `sleep`; pulled unless present.
    pub image: String,
    /// Where the pod's container logs go (kubelet's /var/log/pods/...).
    pub log_dir: PathBuf,
}

/// Figures measured on the way.
#[derive(Debug, Clone, Copy)]
pub struct SmokeFigures {
    /// RunPodSandbox to the sandbox being ready.
    pub run_sandbox: Duration,
    /// RunPodSandbox + CreateContainer + StartContainer to the container's first output in its log.
    pub pod_to_first_output: Duration,
    /// CreateContainer of a container with a 1 MiB configMap (plus etc-hosts, a token and an emptyDir).
    pub create_with_1mib_volume: Duration,
    /// CreateContainer of a container with only etc-hosts and an emptyDir, for comparison.
    pub create_with_small_volumes: Duration,
}

/// A gRPC channel to the CRI server on `socket`.
pub(crate) async fn connect(socket: &Path) -> anyhow::Result<Channel> {
    let socket = socket.to_owned();
    let what = format!("connecting to {}", socket.display());
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .context(what)
}

/// Runs the sequence; the first wrong answer is the error. Everything it made is removed at the end, also
/// when a step fails.
pub async fn run(t: &SmokeTest) -> anyhow::Result<SmokeFigures> {
    let channel = connect(&t.socket).await?;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);

    let v = rt.version(cri::VersionRequest { version: "v1".into() }).await.context("Version")?.into_inner();
    ensure!(v.runtime_api_version == "v1", "Version: runtime API {:?}, not v1", v.runtime_api_version);
    let status = rt.status(cri::StatusRequest { verbose: false }).await.context("Status")?.into_inner();
    let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
    ensure!(
        conditions.iter().any(|c| c.r#type == "RuntimeReady" && c.status),
        "Status: the runtime is not ready: {conditions:?}"
    );

    let spec = Some(cri::ImageSpec { image: t.image.clone(), ..Default::default() });
    let present = images
        .image_status(cri::ImageStatusRequest { image: spec.clone(), verbose: false })
        .await
        .context("ImageStatus")?
        .into_inner()
        .image;
    let image_ref = match present {
        Some(i) => i.id,
        None => {
            let pull = cri::PullImageRequest { image: spec, auth: None, sandbox_config: None };
            images.pull_image(pull).await.context("PullImage")?.into_inner().image_ref
        }
    };
    ensure!(image_ref.starts_with("sha256:"), "the image's id {image_ref:?} is not a digest");

    let config = pod_config("smoke", &t.log_dir);
    let started = Instant::now();
    let run = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: "bulkhead".into() };
    let pod = rt.run_pod_sandbox(run).await.context("RunPodSandbox")?.into_inner().pod_sandbox_id;
    let run_sandbox = started.elapsed();
    let result = with_pod(&mut rt, &config, &pod, &image_ref, started).await;
    let cleanup = cleanup(&mut rt, &pod).await;
    let (pod_to_first_output, (create_with_1mib_volume, create_with_small_volumes)) = result?;
    cleanup?;
    Ok(SmokeFigures { run_sandbox, pod_to_first_output, create_with_1mib_volume, create_with_small_volumes })
}

fn container(name: &str, image: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

async fn container_status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> anyhow::Result<cri::ContainerStatus> {
    let req = cri::ContainerStatusRequest { container_id: id.into(), verbose: false };
    rt.container_status(req).await.context("ContainerStatus")?.into_inner().status.context("ContainerStatus: no status")
}

/// Polls until `f` gives a value, for at most `limit`.
async fn poll<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until container `id` has exited, for at most `limit`; returns its status.
async fn exited(
    rt: &RuntimeServiceClient<Channel>,
    id: &str,
    limit: Duration,
    what: &str,
) -> anyhow::Result<cri::ContainerStatus> {
    poll(limit, what, || {
        let mut rt = rt.clone();
        async move {
            let s = container_status(&mut rt, id).await?;
            Ok((s.state() == cri::ContainerState::ContainerExited).then_some(s))
        }
    })
    .await
}

/// A pod sandbox config of a check's own pod: `name` in namespace `bulkhead-<name>`, with a uid unique to
/// this process and its logs under `log_dir/<uid>`.
pub(crate) fn pod_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    let uid = format!("{name}-{}", std::process::id());
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: uid.clone(),
            namespace: format!("bulkhead-{name}"),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.join(&uid).display().to_string(),
        labels: [("bulkhead.dev/check".to_owned(), name.to_owned())].into_iter().collect(),
        ..Default::default()
    }
}

/// Reads a CRI log, checking each line's format; returns (stream, text) pairs.
fn read_cri_log(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let (time, stream, tag, rest) = (parts.next(), parts.next(), parts.next(), parts.next());
            match (time, stream, tag) {
                (Some(time), Some(stream @ ("stdout" | "stderr")), Some("F" | "P"))
                    if time.contains('T') && time.ends_with('Z') =>
                {
                    Ok((stream.to_owned(), rest.unwrap_or_default().to_owned()))
                }
                _ => bail!("{}: not a CRI log line: {line:?}", path.display()),
            }
        })
        .collect()
}

async fn with_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    config: &cri::PodSandboxConfig,
    pod: &str,
    image: &str,
    started: Instant,
) -> anyhow::Result<(Duration, (Duration, Duration))> {
    let status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.into(), verbose: false })
        .await
        .context("PodSandboxStatus")?
        .into_inner()
        .status
        .context("PodSandboxStatus: no status")?;
    ensure!(
        status.state() == cri::PodSandboxState::SandboxReady,
        "the sandbox is {:?} after RunPodSandbox",
        status.state()
    );

    let create = |c: cri::ContainerConfig| cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(c),
        sandbox_config: Some(config.clone()),
    };
    let log_dir = PathBuf::from(&config.log_directory);
    let app = create(container("app", image, "echo ready; while true; do sleep 1; echo tick; done"));
    let app = rt.create_container(app).await.context("CreateContainer app")?.into_inner().container_id;
    rt.start_container(cri::StartContainerRequest { container_id: app.clone() }).await.context("StartContainer app")?;
    let app_log = log_dir.join("app/0.log");
    poll(Duration::from_secs(60), "the app container's first output", || async {
        Ok(app_log.exists().then(|| read_cri_log(&app_log)).transpose()?.filter(|l| !l.is_empty()))
    })
    .await?;
    let first_output = started.elapsed();
    let lines = read_cri_log(&app_log)?;
    ensure!(lines.first().map(|(s, t)| (s.as_str(), t.as_str())) == Some(("stdout", "ready")), "app's log: {lines:?}");

    // A container without stdin reads end-of-file (as from /dev/null): `read` fails instead of blocking.
    let job = create(container("job", image, "echo out; echo err >&2; read x || exit 7"));
    let job = rt.create_container(job).await.context("CreateContainer job")?.into_inner().container_id;
    rt.start_container(cri::StartContainerRequest { container_id: job.clone() }).await.context("StartContainer job")?;
    let done = exited(rt, &job, Duration::from_secs(60), "the job container's exit").await?;
    ensure!(
        done.exit_code == 7 && done.reason == "Error",
        "job exited {} ({}), not 7 (Error)",
        done.exit_code,
        done.reason
    );
    let mut lines = read_cri_log(&log_dir.join("job/0.log"))?;
    lines.sort();
    let want = [("stderr".to_owned(), "err".to_owned()), ("stdout".to_owned(), "out".to_owned())];
    ensure!(lines == want, "job's log: {lines:?}");

    let exec = cri::ExecSyncRequest {
        container_id: app.clone(),
        cmd: vec!["/bin/sh".into(), "-c".into(), "echo hi; echo oops >&2; exit 3".into()],
        timeout: 30,
    };
    let out = rt.exec_sync(exec).await.context("ExecSync")?.into_inner();
    ensure!(
        (out.stdout.as_slice(), out.stderr.as_slice(), out.exit_code) == (b"hi\n".as_slice(), b"oops\n".as_slice(), 3),
        "ExecSync gave {out:?}"
    );

    streaming(rt, &app, pod, image, &create, &log_dir).await?;

    let cs =
        rt.container_stats(cri::ContainerStatsRequest { container_id: app.clone() }).await.context("ContainerStats")?;
    let cs = cs.into_inner().stats.context("ContainerStats: no stats")?;
    let cpu = cs.cpu.and_then(|c| c.usage_core_nano_seconds).map_or(0, |v| v.value);
    let mem = cs.memory.and_then(|m| m.working_set_bytes).map_or(0, |v| v.value);
    ensure!(cpu > 0 && mem > 0, "ContainerStats of the running app: cpu {cpu} ns, memory {mem} bytes");
    let ps = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id: pod.into() })
        .await
        .context("PodSandboxStats")?;
    let ps = ps.into_inner().stats.and_then(|s| s.linux).context("PodSandboxStats: no stats")?;
    let cpu = ps.cpu.and_then(|c| c.usage_core_nano_seconds).map_or(0, |v| v.value);
    let mem = ps.memory.and_then(|m| m.usage_bytes).map_or(0, |v| v.value);
    ensure!(
        cpu > 0 && mem > 0 && !ps.containers.is_empty(),
        "PodSandboxStats: cpu {cpu} ns, memory {mem} bytes, {} containers",
        ps.containers.len()
    );

    let list = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter { pod_sandbox_id: pod.into(), ..Default::default() }),
        })
        .await
        .context("ListContainers")?
        .into_inner()
        .containers;
    ensure!(list.len() == 4, "ListContainers of the pod: {} containers, not 4", list.len());

    rt.stop_container(cri::StopContainerRequest { container_id: app.clone(), timeout: 5 })
        .await
        .context("StopContainer")?;
    let stopped = container_status(rt, &app).await?;
    ensure!(
        stopped.state() == cri::ContainerState::ContainerExited,
        "app is {:?} after StopContainer",
        stopped.state()
    );

    // Wrong ids are NOT_FOUND, bad configs INVALID_ARGUMENT.
    let e = rt.container_status(cri::ContainerStatusRequest { container_id: "no-such".into(), verbose: false }).await;
    ensure!(e.as_ref().err().map(|e| e.code()) == Some(Code::NotFound), "status of an unknown container: {e:?}");
    let mut bad = container("bad", image, "true");
    bad.mounts.push(cri::Mount { container_path: "/x".into(), host_path: "/tmp".into(), ..Default::default() });
    let e = rt.create_container(create(bad)).await;
    ensure!(e.as_ref().err().map(|e| e.code()) == Some(Code::InvalidArgument), "a container with a hostPath: {e:?}");
    let uid = config.metadata.as_ref().map(|m| m.uid.clone()).unwrap_or_default();
    let figures = volumes(rt, &uid, image, &create).await.context("volumes")?;
    Ok((first_output, figures))
}

/// A kubelet pod directory made for the smoke test, removed when dropped.
struct PodDir(PathBuf);

impl Drop for PodDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const HOSTS: &str = "127.0.0.1\tlocalhost\n10.1.2.3\tsmoke\n";
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.smoke-token";

/// Lays out a pod directory as kubelet does: etc-hosts, a projected service-account volume (`..data`
/// symlinks, plus a link pointing out that must not be copied), a 1 MiB configMap and an emptyDir.
fn kubelet_pod_dir(uid: &str) -> anyhow::Result<PodDir> {
    let dir = PathBuf::from(bulkhead_cri::volumes::KUBELET_PODS_DIR).join(uid);
    let pod = PodDir(dir.clone());
    let vol = |plugin: &str, name: &str| dir.join("volumes").join(format!("kubernetes.io~{plugin}")).join(name);
    let io = |what: &str| format!("laying out the pod directory {}: {what}", dir.display());
    std::fs::create_dir_all(&dir).with_context(|| io("mkdir"))?;
    std::fs::write(dir.join("etc-hosts"), HOSTS).with_context(|| io("etc-hosts"))?;
    let token = vol("projected", "kube-api-access-smoke");
    let ts = token.join("..2026_11_23_07_00_00.000000001");
    std::fs::create_dir_all(&ts).with_context(|| io("projected"))?;
    std::fs::write(ts.join("token"), TOKEN).with_context(|| io("token"))?;
    std::fs::write(ts.join("namespace"), "bulkhead-smoke-test").with_context(|| io("namespace"))?;
    std::os::unix::fs::symlink("..2026_11_23_07_00_00.000000001", token.join("..data"))
        .with_context(|| io("..data"))?;
    for f in ["token", "namespace"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), token.join(f)).with_context(|| io(f))?;
    }
    std::os::unix::fs::symlink("/etc/shadow", token.join("evil")).with_context(|| io("evil"))?;
    let cfg = vol("configmap", "big");
    std::fs::create_dir_all(&cfg).with_context(|| io("configmap"))?;
    std::fs::write(cfg.join("big.json"), vec![b'x'; 1 << 20]).with_context(|| io("big.json"))?;
    std::fs::create_dir_all(vol("empty-dir", "cache")).with_context(|| io("emptyDir"))?;
    Ok(pod)
}

/// Two containers with kubelet's kinds of volumes, checked through ExecSync: etc-hosts, the token through
/// its `..data` links (read-only: a write fails with EROFS), a 1 MiB configMap, and an emptyDir one
/// container writes and the other reads. Returns CreateContainer's time with and without the 1 MiB volume.
async fn volumes(
    rt: &mut RuntimeServiceClient<Channel>,
    uid: &str,
    image: &str,
    create: &impl Fn(cri::ContainerConfig) -> cri::CreateContainerRequest,
) -> anyhow::Result<(Duration, Duration)> {
    let pod = kubelet_pod_dir(uid)?;
    let path = |rel: &str| pod.0.join(rel).display().to_string();
    let mount = |host: String, container: &str, readonly| cri::Mount {
        host_path: host,
        container_path: container.into(),
        readonly,
        ..Default::default()
    };
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let mut a = container("vol-a", image, "while true; do sleep 1; done");
    a.mounts = vec![
        mount(path("etc-hosts"), "/etc/hosts", false),
        mount(path("volumes/kubernetes.io~projected/kube-api-access-smoke"), sa, true),
        mount(path("volumes/kubernetes.io~configmap/big"), "/config", true),
        mount(path("volumes/kubernetes.io~empty-dir/cache"), "/cache", false),
    ];
    let mut b = container("vol-b", image, "while true; do sleep 1; done");
    b.mounts = vec![
        mount(path("etc-hosts"), "/etc/hosts", false),
        mount(path("volumes/kubernetes.io~empty-dir/cache"), "/shared", false),
    ];
    let t = Instant::now();
    let a = rt.create_container(create(a)).await.context("CreateContainer vol-a")?.into_inner().container_id;
    let with_1mib = t.elapsed();
    let t = Instant::now();
    let b = rt.create_container(create(b)).await.context("CreateContainer vol-b")?.into_inner().container_id;
    let small = t.elapsed();
    for id in [&a, &b] {
        rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.context("StartContainer")?;
    }
    let exec = |id: &str, script: &str| {
        let mut rt = rt.clone();
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout: 30,
        };
        let script = script.to_owned();
        async move {
            let out = rt.exec_sync(req).await.with_context(|| format!("ExecSync {script:?}"))?.into_inner();
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            anyhow::Ok((text(&out.stdout), text(&out.stderr), out.exit_code))
        }
    };
    let hosts = exec(&a, "cat /etc/hosts").await?;
    ensure!(hosts == (HOSTS.into(), String::new(), 0), "/etc/hosts in vol-a: {hosts:?}");
    let token = exec(&a, &format!("cat {sa}/token")).await?;
    ensure!(token == (TOKEN.into(), String::new(), 0), "the token through ..data: {token:?}");
    let listing = exec(&a, &format!("ls -a {sa}")).await?;
    ensure!(
        listing.0.contains("..data") && !listing.0.contains("evil"),
        "the service-account volume: {listing:?} (..data kept, the escaping link dropped)"
    );
    let write = exec(&a, &format!("echo x > {sa}/new")).await?;
    ensure!(write.2 != 0 && write.1.contains("Read-only file system"), "a write into the read-only volume: {write:?}");
    let size = exec(&a, "wc -c < /config/big.json").await?;
    ensure!(size.0.trim() == "1048576" && size.2 == 0, "the 1 MiB configMap: {size:?}");
    let wrote = exec(&a, "echo from-vol-a > /cache/shared").await?;
    ensure!(wrote.2 == 0, "writing the emptyDir in vol-a: {wrote:?}");
    let read = exec(&b, "cat /shared/shared; cat /etc/hosts").await?;
    ensure!(
        read == (format!("from-vol-a\n{HOSTS}"), String::new(), 0),
        "vol-b reading the emptyDir vol-a wrote, and the shared etc-hosts: {read:?}"
    );
    Ok((with_1mib, small))
}

/// Exec (with and without a terminal), attach and port-forward through the streaming server's URLs, with
/// its WebSocket protocols.
async fn streaming(
    rt: &mut RuntimeServiceClient<Channel>,
    app: &str,
    pod: &str,
    image: &str,
    create: &impl Fn(cri::ContainerConfig) -> cri::CreateContainerRequest,
    log_dir: &Path,
) -> anyhow::Result<()> {
    use bulkhead_streaming::client;
    let url = |u: String| u.parse::<url::Url>().with_context(|| format!("the runtime gave a bad URL {u:?}"));
    let exec = |cmd: &str, tty: bool| cri::ExecRequest {
        container_id: app.into(),
        cmd: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
        tty,
        stdin: false,
        stdout: true,
        stderr: !tty,
    };
    let u = url(rt.exec(exec("echo streamed; echo warn >&2; exit 4", false)).await.context("Exec")?.into_inner().url)?;
    let out = client::exec(&u, None).await.context("exec through the streaming server")?;
    ensure!(
        (out.stdout.as_slice(), out.stderr.as_slice(), out.exit_code)
            == (b"streamed\n".as_slice(), b"warn\n".as_slice(), Some(4)),
        "exec gave {out:?}"
    );
    let u = url(rt.exec(exec("tty", true)).await.context("Exec with a terminal")?.into_inner().url)?;
    let out = client::exec(&u, None).await.context("exec with a terminal")?;
    ensure!(out.stdout.starts_with(b"/dev/pts/") && out.exit_code == Some(0), "exec with a terminal gave {out:?}");

    let attach = cri::AttachRequest { container_id: app.into(), stdin: false, tty: false, stdout: true, stderr: true };
    let u = url(rt.attach(attach).await.context("Attach")?.into_inner().url)?;
    let out = tokio::time::timeout(Duration::from_secs(30), client::attach(&u, None, 5))
        .await
        .context("attach: no output within 30 s")?
        .context("attach through the streaming server")?;
    ensure!(out.stdout.starts_with(b"tick\n"), "attach gave {out:?}");

    // Container stdin: attach writes to `cat`, whose echo comes back; closing the input of a stdin-once
    // container ends it (cat reads end-of-file and exits 0).
    let mut reader = container("reader", image, "exec cat");
    (reader.stdin, reader.stdin_once) = (true, true);
    let reader = rt.create_container(create(reader)).await.context("CreateContainer reader")?.into_inner().container_id;
    rt.start_container(cri::StartContainerRequest { container_id: reader.clone() })
        .await
        .context("StartContainer reader")?;
    let attach =
        cri::AttachRequest { container_id: reader.clone(), stdin: true, tty: false, stdout: true, stderr: true };
    let u = url(rt.attach(attach).await.context("Attach with stdin")?.into_inner().url)?;
    let input = b"through the container's stdin\n";
    let out = tokio::time::timeout(Duration::from_secs(30), client::attach(&u, Some(input), input.len()))
        .await
        .context("attach with stdin: no echo within 30 s")?
        .context("attach with stdin through the streaming server")?;
    ensure!(out.stdout == input, "attach with stdin gave {out:?}");
    let what = "the stdin-once container's exit after its input closed";
    let done = exited(rt, &reader, Duration::from_secs(30), what).await?;
    ensure!(done.exit_code == 0, "the stdin-once container exited {} ({})", done.exit_code, done.reason);
    let attach = cri::AttachRequest { container_id: app.into(), stdin: true, tty: false, stdout: true, stderr: true };
    let e = rt.attach(attach).await;
    ensure!(
        e.as_ref().err().map(|e| e.code()) == Some(Code::InvalidArgument),
        "attach with stdin to a container without stdin: {e:?}"
    );

    // An echo server in a fourth container, reached through the host-zone channel.
    let echo = create(container("echo", image, "exec nc -ll -p 8080 -e /bin/busybox cat"));
    let echo = rt.create_container(echo).await.context("CreateContainer echo")?.into_inner().container_id;
    rt.start_container(cri::StartContainerRequest { container_id: echo }).await.context("StartContainer echo")?;
    let message = b"hello through the host-zone channel";
    let last_error = std::sync::Mutex::new(String::new());
    let echoed = poll(Duration::from_secs(30), "port-forward to the echo server", || async {
        let req = cri::PortForwardRequest { pod_sandbox_id: pod.into(), port: vec![8080] };
        let u = url(rt.clone().port_forward(req).await.context("PortForward")?.into_inner().url)?;
        // Until the server listens, the zone refuses the connection: try again.
        match client::port_forward(&u, message, message.len()).await {
            Ok(got) if !got.is_empty() => Ok(Some(got)),
            Ok(_) => Ok(None),
            Err(e) => {
                *last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                Ok(None)
            }
        }
    })
    .await
    .with_context(|| {
        let log = std::fs::read_to_string(log_dir.join("echo/0.log")).unwrap_or_default();
        format!(
            "last error: {}; the echo container's log: {log:?}",
            last_error.lock().unwrap_or_else(|p| p.into_inner())
        )
    })?;
    ensure!(echoed == message, "port-forward echoed {:?}", String::from_utf8_lossy(&echoed));
    let ip = pod_network(rt, pod).await?;
    let logs_root = log_dir.parent().context("the pod's log directory has no parent")?;
    pod_to_pod(rt, image, ip, logs_root).await
}

/// The pod network end to end: the node reaches the same echo server at the pod IP (CNI's bridge, the tc
/// redirects between the pod's eth0 and the zone's vif, netfront in the zone). Returns the pod IP.
async fn pod_network(rt: &mut RuntimeServiceClient<Channel>, pod: &str) -> anyhow::Result<std::net::IpAddr> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let req = cri::PodSandboxStatusRequest { pod_sandbox_id: pod.into(), verbose: false };
    let status = rt.pod_sandbox_status(req).await.context("PodSandboxStatus")?.into_inner().status;
    let ip = status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default();
    let ip: std::net::IpAddr = ip.parse().with_context(|| format!("PodSandboxStatus gave no pod IP ({ip:?})"))?;
    let message = b"hello through the pod network";
    let echoed = poll(Duration::from_secs(30), "the echo server at the pod IP", || async {
        let Ok(Ok(mut conn)) =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect((ip, 8080))).await
        else {
            return Ok(None);
        };
        conn.write_all(message).await.context("writing to the pod IP")?;
        conn.shutdown().await.context("half-closing the connection to the pod IP")?;
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got))
            .await
            .context("no echo from the pod IP within 10 s")?
            .context("reading from the pod IP")?;
        Ok(Some(got))
    })
    .await
    .with_context(|| format!("connecting to {ip}:8080 from the node"))?;
    ensure!(echoed == message, "the pod IP echoed {:?}", String::from_utf8_lossy(&echoed));
    Ok(ip)
}

/// Pod to pod: a second pod (a second zone on the same bridge) reaches the first pod's echo server at its
/// IP, as Kubernetes' network model requires. The peer pod is removed also when the check fails.
async fn pod_to_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    image: &str,
    server: std::net::IpAddr,
    logs_root: &Path,
) -> anyhow::Result<()> {
    // Small, as a real pod declares it: the node images' test machines leave room for the smoke pod and
    // about 230 MiB more, not for a second default-sized zone.
    let memory = Some(cri::LinuxContainerResources { memory_limit_in_bytes: 64 << 20, ..Default::default() });
    let config = cri::PodSandboxConfig {
        linux: Some(cri::LinuxPodSandboxConfig { resources: memory.clone(), overhead: memory, ..Default::default() }),
        ..pod_config("smoke-peer", logs_root)
    };
    let run = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: "bulkhead".into() };
    let peer = rt.run_pod_sandbox(run).await.context("RunPodSandbox of the peer pod")?.into_inner().pod_sandbox_id;
    let checked = peer_reaches(rt, &config, &peer, image, server).await;
    let cleaned = cleanup(rt, &peer).await.context("removing the peer pod");
    checked.and(cleaned)
}

async fn peer_reaches(
    rt: &mut RuntimeServiceClient<Channel>,
    config: &cri::PodSandboxConfig,
    peer: &str,
    image: &str,
    server: std::net::IpAddr,
) -> anyhow::Result<()> {
    const MESSAGE: &str = "hello from the peer pod";
    // The server may still be taking the node's connection; a refused or dropped connection is retried.
    let script =
        format!("for i in $(seq 30); do echo '{MESSAGE}' | nc -w 3 {server} 8080 && exit 0; sleep 1; done; exit 1");
    let client = cri::CreateContainerRequest {
        pod_sandbox_id: peer.into(),
        config: Some(container("client", image, &script)),
        sandbox_config: Some(config.clone()),
    };
    let client =
        rt.create_container(client).await.context("CreateContainer in the peer pod")?.into_inner().container_id;
    rt.start_container(cri::StartContainerRequest { container_id: client.clone() })
        .await
        .context("StartContainer in the peer pod")?;
    let log = Path::new(&config.log_directory).join("client/0.log");
    let echoed = poll(Duration::from_secs(60), "the echo server's answer in the peer pod's log", || async {
        let lines = if log.exists() { read_cri_log(&log)? } else { Vec::new() };
        Ok(lines.iter().any(|(stream, text)| stream == "stdout" && text == MESSAGE).then_some(()))
    })
    .await;
    echoed.with_context(|| {
        let lines = std::fs::read_to_string(&log).unwrap_or_default();
        format!("the peer pod did not reach {server}:8080; its log: {lines:?}")
    })
}

/// Stops and removes the pod's containers and the pod, twice: the second round must succeed as well.
async fn cleanup(rt: &mut RuntimeServiceClient<Channel>, pod: &str) -> anyhow::Result<()> {
    let filter = Some(cri::ContainerFilter { pod_sandbox_id: pod.into(), ..Default::default() });
    let ids: Vec<String> = rt
        .list_containers(cri::ListContainersRequest { filter })
        .await
        .context("ListContainers")?
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    for round in ["", " (again)"] {
        for id in &ids {
            rt.stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 0 })
                .await
                .or_else(|e| {
                    if e.code() == Code::NotFound {
                        Ok(tonic::Response::new(cri::StopContainerResponse {}))
                    } else {
                        Err(e)
                    }
                })
                .with_context(|| format!("StopContainer{round}"))?;
            rt.remove_container(cri::RemoveContainerRequest { container_id: id.clone() })
                .await
                .with_context(|| format!("RemoveContainer{round}"))?;
        }
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.into() })
            .await
            .with_context(|| format!("StopPodSandbox{round}"))?;
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.into() })
            .await
            .with_context(|| format!("RemovePodSandbox{round}"))?;
    }
    let left = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter { id: pod.into(), ..Default::default() }),
        })
        .await
        .context("ListPodSandbox")?
        .into_inner()
        .items;
    ensure!(left.is_empty(), "the pod is still listed after RemovePodSandbox");
    Ok(())
}
