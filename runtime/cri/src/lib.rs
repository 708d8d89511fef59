//! bulkhead-cri: the Container Runtime Interface (v1) that kubelet speaks, served on a unix socket as a client
//! of bulkheadd's control API. A pod sandbox is a zone (a Xen VM); its containers are workloads in it. The
//! daemon owns all state: what CRI needs back (metadata, labels, annotations, log paths) travels in the
//! records' `client_state`, so this server can restart at any time.

pub mod container;
pub mod images;
pub mod metrics;
pub mod network;
pub mod runtime;
pub mod sandbox;
pub mod security;
pub mod streams;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tonic::Status;
use tonic::transport::Channel;

pub use images::CriImages;
pub use runtime::{CriRuntime, RuntimeSettings};
pub use sandbox::SandboxDefaults;

/// Where kubelet finds the runtime.
pub const DEFAULT_SOCKET: &str = "/run/bulkhead/cri.sock";
/// Where the daemon listens.
pub const DEFAULT_DAEMON_SOCKET: &str = "/run/bulkhead/control.sock";
/// The daemon's image store (ImageFsInfo reports its disk use).
pub const DEFAULT_IMAGE_STORE: &str = "/var/lib/bulkhead/images";

/// A daemon error as CRI returns it: the daemon's code (NOT_FOUND, INVALID_ARGUMENT, ... are chosen on
/// purpose there) and its message, after what was being done.
pub(crate) fn daemon_error(what: &str, e: Status) -> Status {
    let msg = if e.code() == tonic::Code::Unavailable && e.message().contains("transport") {
        format!("{what}: bulkheadd is not reachable ({}); is it running?", e.message())
    } else {
        format!("{what}: {}", e.message())
    };
    Status::new(e.code(), msg)
}

pub(crate) fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// Settings of the whole server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The runtime service's.
    pub runtime: RuntimeSettings,
    /// The daemon's image store directory.
    pub image_store: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            runtime: RuntimeSettings {
                defaults: SandboxDefaults {
                    memory_mib: 256,
                    vcpus: 1,
                    host_overhead_mib: sandbox::HOST_OVERHEAD_MIB,
                    kernels_dir: PathBuf::from("/usr/lib/bulkhead/zone/kernels"),
                },
                boot_timeout: Duration::from_secs(180),
                cni: bulkhead_cni::CniConfig::default(),
                pods_dir: PathBuf::from("/run/bulkhead-cri/pods"),
            },
            image_store: PathBuf::from(DEFAULT_IMAGE_STORE),
        }
    }
}

/// Both CRI services over the daemon behind `daemon`, ready to serve; `streams` issues the streaming URLs.
pub fn services(daemon: Channel, settings: Settings, streams: bulkhead_streaming::Handle) -> tonic::service::Routes {
    let runtime = CriRuntime::new(daemon.clone(), settings.runtime, streams);
    tonic::service::Routes::new(RuntimeServiceServer::new(runtime))
        .add_service(ImageServiceServer::new(CriImages::new(daemon, settings.image_store)))
}

/// Starts the streaming server kubelet's Exec, Attach and PortForward URLs point to, over the daemon behind
/// `daemon`, until `stop`; returns what issues its URLs.
pub async fn start_streaming(
    daemon: Channel,
    config: bulkhead_streaming::Config,
    stop: tokio_util::sync::CancellationToken,
) -> Result<bulkhead_streaming::Handle, bulkhead_streaming::ServeError> {
    let server =
        bulkhead_streaming::Server::bind(config, std::sync::Arc::new(streams::DaemonStreams::new(daemon))).await?;
    let handle = server.handle();
    tokio::spawn(server.serve(stop));
    Ok(handle)
}

/// The daemon's control socket as a lazily (re)connecting channel.
pub fn daemon_channel(socket: &Path) -> Channel {
    bulkhead_api::client::connect_unix_lazy(socket)
}
