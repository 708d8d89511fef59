//! A whole node in one process for bulkhead-cri's tests and benchmarks: the daemon's real image store
//! (busybox imported as `busybox:test`) and workload manager on the fake hypervisor, whose zones boot a
//! scripted init, served on a control socket; bulkhead-cri and its streaming server in front of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_oci::layout::Compression;
use bulkhead_oci::testing::write_busybox_layout;
use bulkhead_oci::{ImageStore, ImageStoreConfig};
use bulkhead_store::RecordStore;
use bulkheadd::hypervisor::fake::FakeHypervisor;
use bulkheadd::manager::{ManagerConfig, ZoneManager};
use bulkheadd::workloads::WorkloadManager;
use bulkheadd::zone::HostVirtCaps;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

pub struct Node {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
    /// The pod network's subnet, when the node has one.
    pub subnet: Option<String>,
    pub dir: tempfile::TempDir,
    _bridge: Option<bulkhead_cni::testing::Bridge>,
}

/// Nodes made by this process, for unique bridge names and subnets.
static NODES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The node's pod network: Debian's real bridge, host-local and loopback plugins, with a bridge and a
/// subnet of the node's own.
fn write_pod_network(dir: &Path) -> Result<(bulkhead_cni::testing::Bridge, String), Box<dyn std::error::Error>> {
    let n = NODES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 250;
    let bridge = bulkhead_cni::testing::Bridge(format!("bhc{}x{n}", std::process::id() % 100_000));
    let subnet = format!("10.233.{n}.0/24");
    bulkhead_cni::testing::write_bridge_network(&dir.join("cni"), &bridge.0, &subnet)?;
    Ok((bridge, subnet))
}

fn serve(routes: tonic::service::Routes, socket: &Path) -> std::io::Result<()> {
    let incoming = bulkheadd::api::bind_control_socket(socket)?;
    tokio::spawn(tonic::transport::Server::builder().add_routes(routes).serve_with_incoming(incoming));
    Ok(())
}

async fn connect(socket: PathBuf) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
}

/// A daemon with busybox imported as `busybox:test`, and bulkhead-cri in front of it, with a pod network
/// of real CNI plugins (which must be installed: `ci/deps build`).
pub async fn node() -> Result<Node, Box<dyn std::error::Error>> {
    node_with(true).await
}

/// [`node`] with no CNI config: the pod network is not ready.
pub async fn node_without_network() -> Result<Node, Box<dyn std::error::Error>> {
    node_with(false).await
}

async fn node_with(network: bool) -> Result<Node, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let hv = FakeHypervisor::new(HostVirtCaps { hvm: false, hap: false });
    hv.run_scripted_zones();
    let zones = Arc::new(
        ZoneManager::open(hv, RecordStore::open(dir.path().join("zones"))?, ManagerConfig::new("/k", "/i")).await?,
    );
    let store_dir = dir.path().join("images");
    let images = Arc::new(ImageStore::open(ImageStoreConfig::new(&store_dir)).await?);
    let layout = dir.path().join("layout");
    std::fs::create_dir_all(&layout)?;
    write_busybox_layout(&layout, Path::new("/bin/busybox"), Compression::Gzip)?;
    images.import(&layout, Some("busybox:test")).await?;
    let workloads = WorkloadManager::open(zones.clone(), images.clone(), dir.path())?;
    let control = dir.path().join("run/control.sock");
    serve(bulkheadd::api::services(zones, images, workloads), &control)?;

    let mut settings = bulkhead_cri::Settings { image_store: store_dir, ..Default::default() };
    settings.runtime.defaults.memory_mib = 64;
    settings.runtime.boot_timeout = Duration::from_secs(20);
    settings.runtime.pods_dir = dir.path().join("cri-pods");
    // The node's CNI config is the test's, under cni/.
    settings.runtime.cni.conf_dir = dir.path().join("cni/net.d");
    let (bridge, subnet) = if network {
        let (b, s) = write_pod_network(dir.path())?;
        (Some(b), Some(s))
    } else {
        settings.runtime.cni.bin_dirs = vec![dir.path().join("cni/bin")];
        (None, None)
    };
    let cri_socket = dir.path().join("run/cri.sock");
    let daemon = bulkhead_cri::daemon_channel(&control);
    let stop = tokio_util::sync::CancellationToken::new();
    let streams = bulkhead_cri::start_streaming(daemon.clone(), Default::default(), stop.clone()).await?;
    serve(bulkhead_cri::services(daemon, settings, streams), &cri_socket)?;
    let channel = connect(cri_socket).await?;
    Ok(Node {
        runtime: RuntimeServiceClient::new(channel.clone()),
        images: ImageServiceClient::new(channel),
        subnet,
        dir,
        _bridge: bridge,
    })
}
