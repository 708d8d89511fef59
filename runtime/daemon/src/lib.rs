//! bulkheadd, the node daemon: zone orchestration over Xen, persisted desired state, and the control API.
//!
//! The core never imports tonic: the API layer converts protobuf to the domain types here.

pub mod api;
pub mod config;
pub mod hypervisor;
pub mod link;
pub mod loopdev;
pub mod manager;
pub mod network;
pub mod workloads;
pub mod xen;
pub mod zone;
