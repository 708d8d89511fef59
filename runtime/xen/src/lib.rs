//! Safe wrappers over the Xen 4.17 toolstack libraries for Bulkhead.
//!
//! All `unsafe` code of the Xen integration lives here and in
//! `bulkhead-xen-sys`. C handles are RAII types that free themselves on drop;
//! C strings and arrays are copied into owned Rust values at the boundary.
//!
//! * [`libxl`]: the libxl context ([`Libxl`]), the IDL init/dispose guard
//!   ([`Idl`]) and the thread that owns the context ([`LibxlWorker`]).
//! * [`domain`]: [`DomainSpec`] and domain create / unpause / shutdown /
//!   destroy.
//! * [`disk`]: hot-plugging PV disks into running domains.
//! * [`info`]: version, physinfo and domain list read through libxl.
//! * [`xenstore`]: xenstore handle, transactions and watches.
//! * [`evtchn`]: event channels.
//! * [`gnttab`]: grant-table mappings.
//! * [`vchan`]: byte streams to another domain over libxenvchan, blocking-free
//!   ([`Vchan`]) or as tokio `AsyncRead`/`AsyncWrite` ([`AsyncVchan`]).
//!
//! Logging: the Xen libraries' messages are forwarded to `tracing` under the
//! target [`logger::TARGET`].

mod asyncfd;
mod cstr;
#[cfg(feature = "toolstack")]
pub mod disk;
#[cfg(feature = "toolstack")]
pub mod domain;
pub mod error;
pub mod evtchn;
pub mod gnttab;
#[cfg(feature = "toolstack")]
pub mod info;
#[cfg(feature = "toolstack")]
pub mod libxl;
pub mod logger;
#[cfg(feature = "toolstack")]
pub mod nic;
pub mod vchan;
pub mod xenstore;

#[cfg(feature = "toolstack")]
pub use disk::AttachedDisk;
#[cfg(feature = "toolstack")]
pub use domain::{DiskSpec, DomainKind, DomainSpec, ShutdownAction, SpecField};
pub use error::{Error, LibxlError, Result};
pub use evtchn::{AsyncEventChannels, EventChannels, Port};
pub use gnttab::{GrantMapping, GrantTable, SharedMem};
#[cfg(feature = "toolstack")]
pub use info::{DomainInfo, DomainState, DomainType, PhysCaps, PhysInfo, ShutdownReason, Uuid, VersionInfo};
#[cfg(feature = "toolstack")]
pub use libxl::{Idl, IdlType, Libxl, LibxlWorker};
pub use vchan::{AsyncVchan, Vchan, VchanState};
pub use xenstore::{AsyncWatcher, Transaction, Xenstore};
