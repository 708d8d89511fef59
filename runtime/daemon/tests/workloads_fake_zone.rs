//! The workload manager against a scripted zone init on the fake hypervisor's in-memory channel: routing of
//! answers, output into the CRI log and to followers, exit codes, exec, removal and a zone that goes away.
//! The image store is real (a busybox layout imported to erofs), so this needs root like the image tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_oci::layout::Compression;
use bulkhead_oci::testing::{EtcFile, write_accounts_layout, write_busybox_layout};
use bulkhead_oci::{ImageStore, ImageStoreConfig};
use bulkhead_store::RecordStore;
use bulkhead_wire::{ExitStatus, HostToZone, OutputFd, StreamId, WorkloadPhase, ZoneCodec, ZoneToHost};
use bulkheadd::hypervisor::fake::{FakeHypervisor, scripted_zone};
use bulkheadd::manager::{ManagerConfig, ZoneManager};
use bulkheadd::workloads::{
    ExecRequest, SpecError, UserRequest, WorkloadError, WorkloadManager, WorkloadMeta, WorkloadRequest, WorkloadState,
};
use bulkheadd::zone::{HostVirtCaps, VirtMode, ZoneName, ZoneSpec, ZoneState};
use futures_util::{SinkExt, StreamExt};
use tokio_util::codec::Framed;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn privileged() -> bool {
    bulkhead_oci::testing::root_or_skip("the image import chowns")
}

struct Node {
    zones: Arc<ZoneManager<FakeHypervisor>>,
    workloads: Arc<WorkloadManager<FakeHypervisor>>,
    _dir: tempfile::TempDir,
}

async fn node_with_ready_zone(zone: &str) -> Result<Node, Box<dyn std::error::Error>> {
    let node = node_with_booting_zone(zone).await?;
    let domid = node.zones.get(zone).await?.domid.ok_or("no domid")?;
    let io = node.zones.hypervisor().take_zone_end(domid).ok_or("no channel")?;
    tokio::spawn(scripted_zone::run(io));
    for _ in 0..500 {
        if node.zones.get(zone).await?.state == ZoneState::Ready {
            return Ok(node);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err("the zone never became ready".into())
}

/// A node with zone `zone` started, whose init has not connected yet.
async fn node_with_booting_zone(zone: &str) -> Result<Node, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let cfg = ManagerConfig::new("/k", "/i");
    let hv = FakeHypervisor::new(HostVirtCaps { hvm: false, hap: false });
    let zones = Arc::new(ZoneManager::open(hv, RecordStore::open(dir.path().join("zones"))?, cfg).await?);
    let images = Arc::new(ImageStore::open(ImageStoreConfig::new(dir.path().join("images"))).await?);
    let layout = dir.path().join("layout");
    std::fs::create_dir_all(&layout)?;
    write_busybox_layout(&layout, std::path::Path::new("/bin/busybox"), Compression::Gzip)?;
    images.import(&layout, Some("busybox:test")).await?;
    // An image whose USER is a name, resolved in its /etc/passwd and /etc/group.
    let nginx = dir.path().join("nginx-layout");
    let passwd = "root:x:0:0::/root:/bin/sh\nnginx:x:101:101::/:/bin/false\napp:x:1000:1000::/app:/bin/sh\n";
    let group = "root:x:0:\nnginx:x:101:\nwww-data:x:33:nginx,app\n";
    write_accounts_layout(&nginx, EtcFile::Content(passwd), group, "nginx")?;
    images.import(&nginx, Some("nginx:test")).await?;
    let workloads = WorkloadManager::open(zones.clone(), images, dir.path())?;

    zones.create(zone_spec(zone)?).await?;
    zones.start(zone).await?;
    Ok(Node { zones, workloads, _dir: dir })
}

fn zone_spec(zone: &str) -> Result<ZoneSpec, Box<dyn std::error::Error>> {
    Ok(ZoneSpec {
        name: ZoneName::try_from(zone.to_owned())?,
        memory_mib: 48,
        vcpus: 1,
        virt_mode: VirtMode::Auto,
        kernel: None,
        initrd: None,
        kernel_args: vec![],
        hostname: None,
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        client_state: String::new(),
    })
}

fn command(argv: &[&str]) -> WorkloadRequest {
    WorkloadRequest { command: argv.iter().map(|s| s.to_string()).collect(), ..WorkloadRequest::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn output_and_exit_codes_reach_the_log_and_waiters() -> TestResult {
    if !privileged() {
        return Ok(());
    }
    let node = node_with_ready_zone("web").await?;
    let w = node
        .workloads
        .create("web", "main", "busybox:test", command(&["/bin/echo", "7"]), WorkloadMeta::default())
        .await?;
    assert_eq!(w.state, WorkloadState::Created);
    assert_eq!(w.spec.root_device, "xvdb");
    let domid = node.zones.get("web").await?.domid.ok_or("no domid")?;
    let disks = node.zones.hypervisor().domain(domid).ok_or("no domain")?.disks;
    assert_eq!(disks.keys().collect::<Vec<_>>(), ["xvdb"], "the image is attached once");
    // The image's config fills what the request leaves out.
    assert_eq!((w.spec.user.uid, w.spec.cwd.as_str()), (1000, "/tmp"));

    node.workloads.start(&w.id).await?;
    let done = node.workloads.wait(&w.id).await?;
    assert_eq!(done.state, WorkloadState::Exited);
    assert_eq!(done.exit, Some(ExitStatus::Code(7)));
    let logs = node.workloads.logs(&w.id, false, 0, 0).await?;
    let text: Vec<(OutputFd, String)> =
        logs.history.iter().map(|e| (e.fd, String::from_utf8_lossy(&e.data).into_owned())).collect();
    assert!(text.contains(&(OutputFd::Stdout, "out:/bin/echo\n".to_owned())), "{text:?}");
    assert!(text.contains(&(OutputFd::Stderr, "err\n".to_owned())), "{text:?}");

    // A second workload of the same image shares the disk; names are unique per zone.
    let again = node.workloads.create("web", "main", "busybox:test", command(&["x"]), WorkloadMeta::default()).await;
    assert!(again.is_err(), "duplicate name accepted");
    let w2 =
        node.workloads.create("web", "side", "busybox:test", command(&["x", "run"]), WorkloadMeta::default()).await?;
    assert_eq!(w2.spec.root_device, "xvdb");
    node.workloads.start(&w2.id).await?;
    assert_eq!(node.workloads.get(&w2.id).await?.state, WorkloadState::Running);

    // Exec: output and exit come back on the session.
    let mut exec =
        node.workloads.exec(&w2.id, ExecRequest { argv: vec!["ls".into(), "/".into()], ..Default::default() }).await?;
    assert_eq!(exec.pid, 2);
    let mut seen = Vec::new();
    while let Some(m) = exec.messages.recv().await {
        let done = matches!(m, ZoneToHost::Exited { .. });
        seen.push(m);
        if done {
            break;
        }
    }
    assert!(matches!(seen.last(), Some(ZoneToHost::Exited { status: ExitStatus::Code(3), .. })), "{seen:?}");

    // Removing a running workload is refused; signalled, it exits 128 + 9 and can go.
    assert!(node.workloads.remove(&w2.id).await.is_err());
    node.workloads.signal(&w2.id, 9).await?;
    assert_eq!(node.workloads.wait(&w2.id).await?.exit.map(|e| e.exit_code()), Some(137));
    node.workloads.remove(&w2.id).await?;
    assert!(node.workloads.get(&w2.id).await.is_err());

    // Destroying the zone forgets the rest.
    let zone_id = node.zones.get("web").await?.id;
    node.zones.destroy("web").await?;
    node.workloads.forget_zone(&zone_id).await;
    assert!(node.workloads.list(None).await.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_log_path_is_written_reopened_after_rotation_and_left_to_the_client() -> TestResult {
    if !privileged() {
        return Ok(());
    }
    let node = node_with_ready_zone("web").await?;
    let logs = tempfile::tempdir()?;
    let path = logs.path().join("main").join("0.log");
    std::fs::create_dir_all(path.parent().ok_or("no parent")?)?;
    let meta = WorkloadMeta { client_state: "{}".into(), log_path: Some(path.clone()), ..WorkloadMeta::default() };
    let w = node.workloads.create("web", "main", "busybox:test", command(&["/bin/top", "run"]), meta).await?;
    assert_eq!(node.workloads.log_path(&w), path);
    node.workloads.start(&w.id).await?;
    // The scripted zone prints two lines when the workload starts: wait for both in the CRI format.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&path)?;
        if text.lines().count() >= 2 || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(text.lines().any(|l| l.ends_with(" stdout F out:/bin/top")), "{text}");
    assert!(text.lines().any(|l| l.ends_with(" stderr F err")), "{text}");

    // A rotator renames the file; reopening creates it anew at the same path.
    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated)?;
    node.workloads.reopen_log(&w.id).await?;
    assert_eq!(std::fs::read_to_string(&path)?, "");

    // Once exited there is nothing to reopen; removal leaves the client's files alone.
    node.workloads.signal(&w.id, 9).await?;
    node.workloads.wait(&w.id).await?;
    assert!(node.workloads.reopen_log(&w.id).await.is_err());
    node.workloads.remove(&w.id).await?;
    assert!(path.exists() && rotated.exists());
    assert!(node.workloads.reopen_log(&w.id).await.is_err(), "a removed workload is unknown");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_for_a_booting_zone_is_created_once_the_zone_is_ready() -> TestResult {
    if !privileged() {
        return Ok(());
    }
    let node = node_with_booting_zone("early").await?;
    let domid = node.zones.get("early").await?.domid.ok_or("no domid")?;
    let workloads = node.workloads.clone();
    let create = tokio::spawn(async move {
        workloads.create("early", "main", "busybox:test", command(&["x", "run"]), WorkloadMeta::default()).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(node.zones.get("early").await?.state, ZoneState::Starting);
    assert!(!create.is_finished(), "the workload was created before the zone was ready");
    let io = node.zones.hypervisor().take_zone_end(domid).ok_or("no channel")?;
    tokio::spawn(scripted_zone::run(io));
    let w = tokio::time::timeout(Duration::from_secs(10), create).await???;
    assert_eq!((w.state, w.spec.root_device.as_str()), (WorkloadState::Created, "xvdb"));

    // A zone that fails while booting fails the workload creation with the zone's reason.
    let other =
        node.zones.create(ZoneSpec { name: ZoneName::try_from("doomed".to_owned())?, ..zone_spec("x")? }).await?;
    node.zones.start(&other.id).await?;
    let workloads = node.workloads.clone();
    let create = tokio::spawn(async move {
        workloads.create("doomed", "main", "busybox:test", command(&["x"]), WorkloadMeta::default()).await
    });
    let doomed = node.zones.get("doomed").await?.domid.ok_or("no domid")?;
    let io = node.zones.hypervisor().take_zone_end(doomed).ok_or("no channel")?;
    let mut zone = Framed::new(io, ZoneCodec::new());
    zone.send(ZoneToHost::InitFailed { stage: bulkhead_wire::InitStage::Rootfs, reason: "no root".into() }).await?;
    let err = tokio::time::timeout(Duration::from_secs(10), create).await??.err().ok_or("created in a failed zone")?;
    assert!(err.to_string().contains("no root"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn user_names_resolve_in_the_workloads_image() -> TestResult {
    if !privileged() {
        return Ok(());
    }
    let node = node_with_ready_zone("named").await?;
    let create = |name: &'static str, user: UserRequest| {
        let workloads = node.workloads.clone();
        let req = WorkloadRequest { user, ..command(&["x", "run"]) };
        async move { workloads.create("named", name, "nginx:test", req, WorkloadMeta::default()).await }
    };
    let ids = |u: &bulkhead_wire::User| (u.uid, u.gid, u.additional_gids.clone());
    // The image's USER nginx: its passwd entry and the groups that list it.
    let w = create("main", UserRequest::default()).await?;
    assert_eq!(ids(&w.spec.user), (101, 101, vec![33]));
    // A group alone keeps the image's user; a name from the request is looked up too.
    let group = UserRequest { group: Some("www-data".into()), ..UserRequest::default() };
    assert_eq!(ids(&create("grouped", group).await?.spec.user), (101, 33, vec![]));
    let app = UserRequest { user: Some("app".into()), additional_gids: vec![5], ..UserRequest::default() };
    assert_eq!(ids(&create("app", app).await?.spec.user), (1000, 1000, vec![33, 5]));
    // A name the image lacks is refused before anything is created, saying what to do.
    let www = UserRequest { user: Some("www".into()), ..UserRequest::default() };
    let err = create("www", www).await.err().ok_or("an unknown user was accepted")?;
    assert!(matches!(err, WorkloadError::Spec(SpecError::User(_))), "{err:?}");
    assert!(err.to_string().contains("give a numeric uid or add the user to the image"), "{err}");

    // An exec's user resolves in the workload's image too.
    node.workloads.start(&w.id).await?;
    let exec = |user: &str| ExecRequest {
        argv: vec!["id".into()],
        user: Some(UserRequest { user: Some(user.into()), ..UserRequest::default() }),
        ..Default::default()
    };
    let err = node.workloads.exec(&w.id, exec("www")).await.err().ok_or("an unknown exec user was accepted")?;
    assert!(matches!(err, WorkloadError::Spec(SpecError::User(_))), "{err:?}");
    let mut session = node.workloads.exec(&w.id, exec("app")).await?;
    while let Some(m) = session.messages.recv().await {
        if matches!(m, ZoneToHost::Exited { .. }) {
            break;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_on_a_zone_that_goes_away_is_reported_lost() -> TestResult {
    if !privileged() {
        return Ok(());
    }
    let node = node_with_ready_zone("gone").await?;
    let w =
        node.workloads.create("gone", "main", "busybox:test", command(&["x", "run"]), WorkloadMeta::default()).await?;
    node.workloads.start(&w.id).await?;
    node.zones.stop("gone", Duration::from_secs(1)).await?;
    let done = tokio::time::timeout(Duration::from_secs(10), node.workloads.wait(&w.id)).await??;
    assert!(done.zone_lost, "{done:?}");
    assert_eq!(done.state, WorkloadState::Exited);
    Ok(())
}

/// A zone init reconnecting to a restarted daemon: says hello again and at once sends the output it held
/// (`carried`), then answers queries from what it knows (`phases`), signals with the signal's exit, and creates.
async fn reconnecting_zone(
    io: tokio::io::DuplexStream,
    carried: Vec<ZoneToHost>,
    phases: BTreeMap<StreamId, WorkloadPhase>,
) {
    let mut zone = Framed::new(io, ZoneCodec::new());
    for m in std::iter::once(scripted_zone::hello()).chain(carried) {
        if zone.send(m).await.is_err() {
            return;
        }
    }
    while let Some(Ok(msg)) = zone.next().await {
        let reply = match msg {
            HostToZone::QueryWorkload { id } => match phases.get(&id) {
                Some(&phase) => ZoneToHost::WorkloadStatus { id, phase },
                None => ZoneToHost::Error {
                    request: Some(id),
                    code: bulkhead_wire::ErrorCode::NotFound,
                    message: "no such workload".into(),
                },
            },
            HostToZone::Signal { id, signal } => {
                ZoneToHost::Exited { stream_id: id, status: ExitStatus::Signaled { signal, core_dumped: false } }
            }
            HostToZone::CreateWorkload { id, .. } => ZoneToHost::WorkloadCreated { id },
            _ => continue,
        };
        if zone.send(reply).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn workloads_survive_a_daemon_restart_and_catch_up_with_their_zone() -> TestResult {
    if !privileged() {
        return Ok(());
    }
    let node = node_with_ready_zone("keep").await?;
    let create = |name: &'static str, argv: &'static [&'static str]| {
        let workloads = node.workloads.clone();
        async move {
            let w = workloads.create("keep", name, "busybox:test", command(argv), WorkloadMeta::default()).await?;
            workloads.start(&w.id).await?;
            Ok::<_, Box<dyn std::error::Error>>(w)
        }
    };
    let runs = create("runs", &["x", "run"]).await?;
    let done = create("done", &["/bin/echo", "5"]).await?;
    assert_eq!(node.workloads.wait(&done.id).await?.exit, Some(ExitStatus::Code(5)));
    let ends_meanwhile = create("ends-meanwhile", &["x", "run"]).await?;
    let never_created = create("lost", &["x", "run"]).await?;
    let domid = node.zones.get("keep").await?.domid.ok_or("no domid")?;

    // The daemon dies (its zone's init is cut off); the hypervisor and the domain live on.
    let Node { zones, workloads, _dir: dir } = node;
    drop(workloads);
    let mut zones = Some(zones);
    let hv = loop {
        match Arc::try_unwrap(zones.take().ok_or("gone")?) {
            Ok(m) => break m.into_hypervisor(),
            Err(shared) => {
                zones = Some(shared);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let zones = Arc::new(
        ZoneManager::open(hv, RecordStore::open(dir.path().join("zones"))?, ManagerConfig::new("/k", "/i")).await?,
    );
    let images = Arc::new(ImageStore::open(ImageStoreConfig::new(dir.path().join("images"))).await?);
    let workloads = WorkloadManager::open(zones.clone(), images, dir.path())?;
    zones.resume().await;
    let io = zones.hypervisor().take_zone_end(domid).ok_or("the channel was not served again")?;
    let phases = BTreeMap::from([
        (StreamId(runs.stream), WorkloadPhase::Running { pid: 1 }),
        (StreamId(done.stream), WorkloadPhase::Exited { status: ExitStatus::Code(5) }),
        (StreamId(ends_meanwhile.stream), WorkloadPhase::Exited { status: ExitStatus::Code(4) }),
    ]);
    let carried =
        vec![ZoneToHost::Output { stream_id: StreamId(runs.stream), fd: OutputFd::Stdout, data: "held\n".into() }];
    tokio::spawn(reconnecting_zone(io, carried, phases));

    let wait = |id: String| {
        let workloads = workloads.clone();
        async move { tokio::time::timeout(Duration::from_secs(10), workloads.wait(&id)).await }
    };
    // What ended while nobody listened is caught up with; what the zone never heard of is reported lost.
    assert_eq!(wait(ends_meanwhile.id.clone()).await??.exit, Some(ExitStatus::Code(4)));
    assert!(wait(never_created.id.clone()).await??.zone_lost);
    assert_eq!(zones.get("keep").await?.state, ZoneState::Ready);
    // The running one kept its log, got the output held during the restart, and is still controllable.
    assert_eq!(workloads.get(&runs.id).await?.state, WorkloadState::Running);
    workloads.signal(&runs.id, 9).await?;
    assert_eq!(wait(runs.id.clone()).await??.exit.map(|e| e.exit_code()), Some(137));
    let text: String = workloads
        .logs(&runs.id, false, 0, 0)
        .await?
        .history
        .iter()
        .map(|e| String::from_utf8_lossy(&e.data).into_owned())
        .collect();
    assert!(text.contains("out:x\n") && text.contains("held\n"), "{text:?}");
    assert_eq!(workloads.get(&done.id).await?.exit, Some(ExitStatus::Code(5)));
    // The image disk is known again: a new workload of the same image reuses it.
    let again =
        workloads.create("keep", "again", "busybox:test", command(&["x", "run"]), WorkloadMeta::default()).await?;
    assert_eq!(again.spec.root_device, runs.spec.root_device);
    Ok(())
}
