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
    pub dir: tempfile::TempDir,
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

/// A daemon with busybox imported as `busybox:test`, and bulkhead-cri in front of it.
pub async fn node() -> Result<Node, Box<dyn std::error::Error>> {
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
    // The node's CNI config is the test's: none until a test writes one under cni/.
    settings.runtime.cni.conf_dir = dir.path().join("cni/net.d");
    settings.runtime.cni.bin_dirs = vec![dir.path().join("cni/bin")];
    let cri_socket = dir.path().join("run/cri.sock");
    let daemon = bulkhead_cri::daemon_channel(&control);
    let stop = tokio_util::sync::CancellationToken::new();
    let streams = bulkhead_cri::start_streaming(daemon.clone(), Default::default(), stop.clone()).await?;
    serve(bulkhead_cri::services(daemon, settings, streams), &cri_socket)?;
    let channel = connect(cri_socket).await?;
    Ok(Node { runtime: RuntimeServiceClient::new(channel.clone()), images: ImageServiceClient::new(channel), dir })
}
