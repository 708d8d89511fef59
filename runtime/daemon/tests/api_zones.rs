//! The zone API over its real transport: a tonic server on a unix socket, a tonic client, the core behind it
//! with the in-memory hypervisor. Checks conversions, status codes, idempotency, events and socket modes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_api::control::v1 as pb;
use bulkhead_api::control::v1::zone_service_client::ZoneServiceClient;
use bulkhead_api::control::v1::zone_service_server::ZoneServiceServer;
use bulkhead_store::RecordStore;
use bulkheadd::api::bind_control_socket;
use bulkheadd::api::zones::ZoneApi;
use bulkheadd::hypervisor::fake::FakeHypervisor;
use bulkheadd::manager::{ManagerConfig, ZoneManager};
use bulkheadd::zone::HostVirtCaps;
use tonic::Code;
use tonic::transport::Channel;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn connect(path: PathBuf) -> Result<ZoneServiceClient<Channel>, tonic::transport::Error> {
    Ok(ZoneServiceClient::new(bulkhead_api::client::connect_unix(&path).await?))
}

struct Daemon {
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn start_daemon(state: &Path) -> Result<Daemon, Box<dyn std::error::Error>> {
    let hv = FakeHypervisor::new(HostVirtCaps { hvm: true, hap: true });
    let cfg = ManagerConfig::new("/usr/lib/bulkhead/zone/kernel", "/usr/lib/bulkhead/zone/initrd");
    let manager = Arc::new(ZoneManager::open(hv, RecordStore::open(state.join("zones"))?, cfg).await?);
    let socket = state.join("run/control.sock");
    let incoming = bind_control_socket(&socket)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ZoneServiceServer::new(ZoneApi::new(manager)))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    Ok(Daemon { socket, stop: Some(stop), task })
}

fn spec(name: &str) -> pb::ZoneSpec {
    pb::ZoneSpec {
        name: name.into(),
        memory_mib: 64,
        vcpus: 1,
        labels: [("app".to_owned(), name.to_owned())].into_iter().collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn zone_lifecycle_over_the_control_socket() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut daemon = start_daemon(dir.path()).await?;
    assert_eq!(std::fs::metadata(&daemon.socket)?.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(dir.path().join("run"))?.permissions().mode() & 0o777, 0o700);
    let mut c = connect(daemon.socket.clone()).await?;
    let mut events = c.watch_events(pb::WatchEventsRequest { include_current: false }).await?.into_inner();

    // Invalid input is INVALID_ARGUMENT with a message naming the field.
    let mut bad = spec("web");
    bad.memory_mib = 1;
    let e = c.create_zone(pb::CreateZoneRequest { spec: Some(bad) }).await.err().ok_or("accepted memory_mib 1")?;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("memory_mib 1"), "{}", e.message());

    let created = c.create_zone(pb::CreateZoneRequest { spec: Some(spec("web")) }).await?.into_inner();
    let id = created.zone.ok_or("no zone")?.id;
    let dup = c.create_zone(pb::CreateZoneRequest { spec: Some(spec("web")) }).await.err().ok_or("duplicate")?;
    assert_eq!(dup.code(), Code::AlreadyExists);
    c.create_zone(pb::CreateZoneRequest { spec: Some(spec("db")) }).await?;

    // A pod network the daemon cannot use is refused before anything is built, naming the field.
    let net = pb::ZoneNetwork {
        netns: "pod-web".into(),
        interface: "eth0".into(),
        mac: "02:42:ac:11:00:02".into(),
        addresses: vec!["10.88.0.2/16".into()],
        gateway: "10.88.0.1".into(),
        routes: vec![pb::ZoneRoute { destination: "0.0.0.0/0".into(), gateway: String::new() }],
    };
    let bad_net = pb::ZoneNetwork { mac: "ff:ff:ff:ff:ff:ff".into(), ..net.clone() };
    let e = c.start_zone(pb::StartZoneRequest { zone: "web".into(), network: Some(bad_net) }).await.err();
    let e = e.ok_or("a broadcast MAC was accepted")?;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("network.mac"), "{}", e.message());

    let req = pb::StartZoneRequest { zone: "web".into(), network: Some(net.clone()) };
    let started = c.start_zone(req).await?.into_inner().zone.ok_or("zone")?;
    // The network it runs on, as recorded: the pod IP for PodSandboxStatus.
    assert_eq!(started.network, Some(net));
    assert_eq!(started.state(), pb::ZoneState::Starting);
    assert_ne!(started.domid, 0);
    assert_eq!(started.virt_mode(), pb::VirtMode::Pvh);
    assert_eq!(started.virt_mode_reason, "auto: the host has HVM with HAP");
    let again =
        c.start_zone(pb::StartZoneRequest { zone: id.clone(), network: None }).await.err().ok_or("started twice")?;
    assert_eq!(again.code(), Code::FailedPrecondition);

    let listed = c
        .list_zones(pb::ListZonesRequest { label_selector: [("app".into(), "web".into())].into_iter().collect() })
        .await?
        .into_inner()
        .zones;
    assert_eq!(listed.iter().map(|z| z.id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
    assert_eq!(c.list_zones(pb::ListZonesRequest::default()).await?.into_inner().zones.len(), 2);

    let stopped = c
        .stop_zone(pb::StopZoneRequest { zone: "web".into(), timeout_seconds: 5 })
        .await?
        .into_inner()
        .zone
        .ok_or("zone")?;
    assert_eq!((stopped.state(), stopped.domid), (pb::ZoneState::Stopped, 0));

    c.destroy_zone(pb::DestroyZoneRequest { zone: "web".into() }).await?;
    c.destroy_zone(pb::DestroyZoneRequest { zone: "web".into() }).await?; // idempotent
    let gone = c.get_zone(pb::GetZoneRequest { zone: id.clone() }).await.err().ok_or("still there")?;
    assert_eq!(gone.code(), Code::NotFound);
    assert!(gone.message().contains(&id));

    let mut states = Vec::new();
    while states.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(5), events.message()).await??.ok_or("stream ended")?;
        if let Some(pb::event::Kind::Zone(z)) = e.kind {
            assert_eq!(z.zone_id, id);
            states.push(z.state());
        }
    }
    assert_eq!(states, [pb::ZoneState::Starting, pb::ZoneState::Stopping, pb::ZoneState::Stopped]);

    if let Some(stop) = daemon.stop.take() {
        let _ = stop.send(());
    }
    drop(events);
    drop(c);
    tokio::time::timeout(Duration::from_secs(5), &mut daemon.task).await???;
    Ok(())
}

#[tokio::test]
async fn zones_survive_a_daemon_restart_through_the_api() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut first = start_daemon(dir.path()).await?;
    let mut c = connect(first.socket.clone()).await?;
    c.create_zone(pb::CreateZoneRequest { spec: Some(spec("keep")) }).await?;
    if let Some(stop) = first.stop.take() {
        let _ = stop.send(());
    }
    drop(c);
    tokio::time::timeout(Duration::from_secs(5), &mut first.task).await???;

    let second = start_daemon(dir.path()).await?;
    let mut c = connect(second.socket.clone()).await?;
    let z = c.get_zone(pb::GetZoneRequest { zone: "keep".into() }).await?.into_inner().zone.ok_or("zone")?;
    assert_eq!(z.state(), pb::ZoneState::Created);
    assert_eq!(z.spec.map(|s| s.memory_mib), Some(64));
    Ok(())
}
