//! The gRPC edge: one file per service converts protobuf to the core's types and back, and maps core
//! errors to gRPC status codes on purpose. Served on a unix socket that only root can reach.

pub mod host;
pub mod images;
pub mod workloads;
pub mod zones;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use bulkhead_api::control::v1::host_service_server::HostServiceServer;
use bulkhead_api::control::v1::image_service_server::ImageServiceServer;
use bulkhead_api::control::v1::workload_service_server::WorkloadServiceServer;
use bulkhead_api::control::v1::zone_service_server::ZoneServiceServer;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::Status;

use crate::hypervisor::Hypervisor;
use crate::manager::{ManagerError, ZoneManager};
use crate::workloads::WorkloadManager;
use bulkhead_oci::ImageStore;

/// The user-facing message of an error: its own text and its causes, on one line.
pub(crate) fn message_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}

impl From<ManagerError> for Status {
    fn from(e: ManagerError) -> Status {
        let msg = message_chain(&e);
        match e {
            ManagerError::NotFound(_) => Status::not_found(msg),
            ManagerError::AlreadyExists(_) => Status::already_exists(msg),
            ManagerError::InvalidSpec(_) => Status::invalid_argument(msg),
            ManagerError::WrongState { .. } | ManagerError::VirtMode { .. } | ManagerError::NotRunning { .. } => {
                Status::failed_precondition(msg)
            }
            ManagerError::Hypervisor { .. } => Status::unavailable(msg),
            ManagerError::Store(_) => Status::internal(msg),
        }
    }
}

/// Binds the control socket at `path`, replacing a stale one. Its directory is made 0700 first, so there
/// is no moment when another user could connect; the socket itself is 0600.
pub fn bind_control_socket(path: &Path) -> io::Result<UnixListenerStream> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(UnixListenerStream::new(listener))
}

/// Every service of the control API over the daemon's core, wired to each other: an image a workload uses
/// cannot be removed, and a destroyed zone's workloads are forgotten.
pub fn services<H: Hypervisor>(
    zones: Arc<ZoneManager<H>>,
    images: Arc<ImageStore>,
    workloads: Arc<WorkloadManager<H>>,
) -> tonic::service::Routes {
    let in_use: images::InUseCheck = {
        let workloads = workloads.clone();
        Arc::new(move |image| workloads.uses_image(&image.id))
    };
    let destroy_hook: zones::DestroyHook = {
        let workloads = workloads.clone();
        Arc::new(move |zone_id| {
            let workloads = workloads.clone();
            Box::pin(async move { workloads.forget_zone(&zone_id).await })
        })
    };
    let host_api = host::HostApi::new(zones.clone());
    let zone_api = zones::ZoneApi::new(zones).with_destroy_hook(destroy_hook).with_workload_events(workloads.clone());
    tonic::service::Routes::new(ZoneServiceServer::new(zone_api))
        .add_service(HostServiceServer::new(host_api))
        .add_service(ImageServiceServer::new(images::ImageApi::with_in_use(images, in_use)))
        .add_service(WorkloadServiceServer::new(workloads::WorkloadApi::new(workloads)))
}
