//! `bulkhead.control.v1.HostService`: what the node is, for `bulkhead check` and operators.

use std::sync::Arc;

use bulkhead_api::control::v1 as pb;
use tonic::{Request, Response, Status};

use super::message_chain;
use super::zones::virt_mode_to_pb;
use crate::hypervisor::Hypervisor;
use crate::manager::ZoneManager;

/// The service, over the zone manager (which owns the hypervisor and the node's `auto` setting).
pub struct HostApi<H> {
    zones: Arc<ZoneManager<H>>,
}

impl<H> std::fmt::Debug for HostApi<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostApi").finish_non_exhaustive()
    }
}

impl<H> HostApi<H> {
    /// Serves `zones`' host.
    pub fn new(zones: Arc<ZoneManager<H>>) -> Self {
        HostApi { zones }
    }
}

#[tonic::async_trait]
impl<H: Hypervisor> pb::host_service_server::HostService for HostApi<H> {
    async fn get_host_info(
        &self,
        _req: Request<pb::GetHostInfoRequest>,
    ) -> Result<Response<pb::GetHostInfoResponse>, Status> {
        let (info, auto) = self.zones.host_info().await.map_err(|e| {
            Status::unavailable(format!("asking the hypervisor about the host failed: {}", message_chain(&e)))
        })?;
        // A node whose `auto` cannot start zones says why, in place of the mode.
        let (mode, reason) = match auto {
            Ok((mode, why)) => (virt_mode_to_pb(mode), why),
            Err(why) => (pb::VirtMode::Unspecified, why),
        };
        Ok(Response::new(pb::GetHostInfoResponse {
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            hypervisor: info.hypervisor,
            hypervisor_version: info.version,
            pv_capable: info.pv,
            pvh_capable: info.caps.hvm && info.caps.hap,
            auto_virt_mode: mode.into(),
            auto_virt_mode_reason: reason,
            total_memory_bytes: info.total_memory_bytes,
            free_memory_bytes: info.free_memory_bytes,
            cpus: info.cpus,
        }))
    }
}
