//! One module per command group.

pub mod check;
pub mod check_host;
pub mod check_node;
pub mod image;
pub mod node;
pub mod node_artefact;
pub mod node_bootenv;
pub mod workload;
pub mod zone;

/// A failed call's user-facing line: what was asked, and the daemon's message (which names the object and,
/// where it can, what to do).
pub(crate) fn rpc_error(what: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", status.message())
}
