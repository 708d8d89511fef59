//! Bulkhead's CNI client: what a container runtime does with CNI (the Container Network Interface,
//! <https://www.cni.dev/docs/spec/>) to give a pod its network.
//!
//! - [`Network::load`] reads the node's network config like containerd: the lowest-sorted `*.conf`,
//!   `*.conflist` or `*.json` in a conf dir, its plugins found in the bin dirs.
//! - [`Network::add`], [`Network::del`] and [`Network::check`] run the plugin chain per the spec: env
//!   `CNI_COMMAND`/`CNI_CONTAINERID`/`CNI_NETNS`/`CNI_IFNAME`/`CNI_ARGS`/`CNI_PATH`, each plugin's config on stdin
//!   with `name`, `cniVersion` and the previous plugin's result as `prevResult`; stdout bounded, each call under a
//!   timeout, a plugin's error JSON turned into [`Error::Plugin`] with its `msg`.
//! - [`zone_link`] joins a zone's PV vif (netback's end in dom0) to the interface CNI made in the pod's
//!   netns with tc redirects both ways, so every CNI plugin works unchanged and no bridge or emulator is
//!   added per zone.
//! - [`netns`] creates and deletes the named network namespace (`/run/netns/<name>`) a pod's plugins work in.
//!
//! Plugins are trusted programs of the node (root installs them); their output is still bounded and parsed
//! strictly, so a broken plugin gives an error, never a hang or a huge allocation.

#![warn(missing_docs)]

mod config;
mod error;
mod exec;
pub mod netns;
mod result;
pub mod testing;
pub mod zone_link;

pub use config::{CniConfig, DEFAULT_BIN_DIRS, DEFAULT_CONF_DIR, Network, Plugin};
pub use error::Error;
pub use exec::{Command, RuntimeConf};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};

/// CNI versions whose configs and results this client understands (0.1/0.2 results have another shape).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
