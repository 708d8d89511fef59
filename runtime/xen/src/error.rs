//! The crate's single error type.
//!
//! Every variant is named for the operation that failed and carries the
//! arguments that identify the failing call (path, domid, port, ...) plus the
//! underlying cause: a [`LibxlError`] for libxl calls, or the `errno` captured
//! right after the C call as an [`std::io::Error`] for the thin libraries.

#[cfg(feature = "toolstack")]
use std::ffi::CStr;
use std::fmt;
use std::io;

#[cfg(feature = "toolstack")]
use bulkhead_xen_sys as sys;

/// Result alias used throughout this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A libxl error code (`libxl_error`, always negative; `0` is success).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LibxlError(pub i32);

impl LibxlError {
    /// `ERROR_DEVICE_EXISTS`: a device with this id is already attached.
    pub const DEVICE_EXISTS: LibxlError = LibxlError(-17);
    /// `ERROR_DOMAIN_NOTFOUND`.
    pub const DOMAIN_NOTFOUND: LibxlError = LibxlError(-21);

    /// Map a libxl return code to `Ok(())` (`rc == 0`) or an error.
    pub fn check(rc: i32) -> Result<(), LibxlError> {
        if rc == 0 { Ok(()) } else { Err(LibxlError(rc)) }
    }

    /// The raw code, e.g. `-3` for `ERROR_FAIL`.
    pub fn code(self) -> i32 {
        self.0
    }

    /// libxl's name for the code (`"fail"`, `"domain_notfound"`, ...), if it
    /// knows it. Always `None` in a guest-only build (no libxl linked).
    #[cfg(not(feature = "toolstack"))]
    pub fn name(self) -> Option<&'static str> {
        None
    }

    /// libxl's name for the code (`"fail"`, `"domain_notfound"`, ...), if it
    /// knows it.
    #[cfg(feature = "toolstack")]
    pub fn name(self) -> Option<&'static str> {
        // SAFETY: libxl_error_to_string is a pure lookup in libxl's static
        // enum string table; it accepts any integer and returns either NULL
        // or a pointer to a static NUL-terminated string (libxl IDL
        // generated code, _libxl_types.c), so the 'static borrow is valid.
        let p = unsafe { sys::libxl_error_to_string(self.0) };
        if p.is_null() {
            return None;
        }
        // SAFETY: p is non-NULL and points at a static NUL-terminated string
        // (see above).
        unsafe { CStr::from_ptr(p) }.to_str().ok()
    }
}

impl fmt::Display for LibxlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "libxl error {} (ERROR_{})", self.0, name.to_ascii_uppercase()),
            None => write!(f, "libxl error {}", self.0),
        }
    }
}

impl std::error::Error for LibxlError {}

/// Everything that can go wrong in this crate.
///
/// libxl failures carry the [`LibxlError`] code inside the message (it is
/// not repeated as `source()`); the thin libraries' failures carry `errno`
/// as the `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ----- libxl context and worker -----
    /// `libxl_ctx_alloc` failed.
    #[error("libxl_ctx_alloc failed: {0}")]
    CtxAlloc(LibxlError),
    /// The libxl worker thread could not be started.
    #[error("failed to spawn the libxl worker thread")]
    WorkerSpawn(#[source] io::Error),
    /// The libxl worker thread is gone (its context failed or it was shut
    /// down), so the request could not be served.
    #[error("the libxl worker thread is not running")]
    WorkerGone,

    // ----- libxl read operations -----
    /// `libxl_get_version_info` returned NULL.
    #[error("libxl_get_version_info returned no data")]
    VersionInfo,
    /// `libxl_get_physinfo` failed.
    #[error("libxl_get_physinfo failed: {0}")]
    Physinfo(LibxlError),
    /// `libxl_list_domain` failed.
    #[error("libxl_list_domain failed")]
    DomainList,
    /// `libxl_domain_info` failed for one domain.
    #[error("libxl_domain_info for domain {domid} failed: {code}")]
    DomainInfo { domid: u32, code: LibxlError },

    // ----- domain lifecycle -----
    /// A [`DomainSpec`](crate::DomainSpec) field is invalid (nothing was
    /// handed to libxl).
    #[error("invalid domain spec: {field}: {reason}")]
    #[cfg(feature = "toolstack")]
    InvalidDomainSpec { field: crate::domain::SpecField, reason: String },
    /// `libxl_domain_create_new` failed (libxl has already destroyed any
    /// half-created domain).
    #[error("libxl_domain_create_new for domain {name:?} failed: {code}")]
    DomainCreate { name: String, code: LibxlError },
    /// `libxl_domain_unpause` failed.
    #[error("libxl_domain_unpause of domain {domid} failed: {code}")]
    DomainUnpause { domid: u32, code: LibxlError },
    /// `libxl_domain_pause` failed.
    #[error("libxl_domain_pause of domain {domid} failed: {code}")]
    DomainPause { domid: u32, code: LibxlError },
    /// `libxl_domain_shutdown` failed (`ERROR_TIMEDOUT`: the guest did not
    /// acknowledge the request within 60 s).
    #[error("libxl_domain_shutdown of domain {domid} failed: {code}")]
    DomainShutdown { domid: u32, code: LibxlError },
    /// `libxl_domain_destroy` failed.
    #[error("libxl_domain_destroy of domain {domid} failed: {code}")]
    DomainDestroy { domid: u32, code: LibxlError },
    // ----- disk hot-plug -----
    /// A [`DiskSpec`](crate::DiskSpec) (or a guest device name) is invalid;
    /// nothing was handed to libxl.
    #[error("invalid disk {vdev}: {reason}")]
    InvalidDisk { vdev: String, reason: String },
    /// `libxl_device_disk_add` failed (`ERROR_DEVICE_EXISTS`: the guest
    /// already has a disk with this name). Whatever libxl had set up was
    /// removed again.
    #[error("libxl_device_disk_add of {vdev} to domain {domid} failed: {code}")]
    DiskAdd { domid: u32, vdev: String, code: LibxlError },
    /// `libxl_device_disk_remove` (or reading the disk back from xenstore
    /// before it) failed.
    #[error("libxl_device_disk_remove of {vdev} from domain {domid} failed: {code}")]
    DiskRemove { domid: u32, vdev: String, code: LibxlError },
    /// The domain has no disk with this name.
    #[error("domain {domid} has no disk {vdev}")]
    DiskNotFound { domid: u32, vdev: String },
    /// `libxl_device_disk_list` failed.
    #[error("libxl_device_disk_list for domain {domid} failed")]
    DiskList { domid: u32 },
    /// A guest-only operation was asked for dom0 or a reserved domid; it was
    /// refused before reaching libxl.
    #[error("refusing to {op} domain {domid}: not a guest domain")]
    NotAGuestDomain { domid: u32, op: &'static str },

    // ----- xenstore -----
    /// `xs_open` failed (xenstored not running, no /dev/xen/xenbus, ...).
    #[error("xs_open failed")]
    XenstoreOpen(#[source] io::Error),
    /// A path or watch token was rejected before reaching xenstore.
    #[error("invalid xenstore path {path:?}: {reason}")]
    XenstoreInvalidPath { path: String, reason: &'static str },
    /// `xs_read` failed.
    #[error("xenstore read of {path} failed")]
    XenstoreRead { path: String, source: io::Error },
    /// `xs_write` failed (or the value exceeded the xenstore payload limit).
    #[error("xenstore write of {path} failed")]
    XenstoreWrite { path: String, source: io::Error },
    /// `xs_mkdir` failed.
    #[error("xenstore mkdir of {path} failed")]
    XenstoreMkdir { path: String, source: io::Error },
    /// `xs_rm` failed.
    #[error("xenstore rm of {path} failed")]
    XenstoreRm { path: String, source: io::Error },
    /// `xs_directory` failed.
    #[error("xenstore directory listing of {path} failed")]
    XenstoreDirectory { path: String, source: io::Error },
    /// `xs_get_permissions` failed.
    #[error("xenstore get_permissions of {path} failed")]
    XenstoreGetPermissions { path: String, source: io::Error },
    /// `xs_set_permissions` failed.
    #[error("xenstore set_permissions of {path} failed")]
    XenstoreSetPermissions { path: String, source: io::Error },
    /// `xs_get_domain_path` failed.
    #[error("xs_get_domain_path for domain {domid} failed")]
    XenstoreDomainPath { domid: u32, source: io::Error },
    /// `xs_transaction_start` failed.
    #[error("xs_transaction_start failed")]
    XenstoreTransactionStart(#[source] io::Error),
    /// `xs_transaction_end(commit)` failed with `EAGAIN`: another writer
    /// raced us, the whole transaction must be redone.
    #[error("xenstore transaction conflicted with a concurrent update (retry it)")]
    XenstoreTransactionConflict,
    /// `xs_transaction_end` failed for another reason.
    #[error("xs_transaction_end failed")]
    XenstoreTransactionEnd(#[source] io::Error),
    /// `xs_watch` failed.
    #[error("xs_watch on {path} (token {token:?}) failed")]
    XenstoreWatch { path: String, token: String, source: io::Error },
    /// `xs_unwatch` failed.
    #[error("xs_unwatch on {path} (token {token:?}) failed")]
    XenstoreUnwatch { path: String, token: String, source: io::Error },
    /// `xs_read_watch` / `xs_check_watch` failed or returned a malformed
    /// event.
    #[error("reading a xenstore watch event failed")]
    XenstoreReadWatch(#[source] io::Error),
    /// Registering the xenstore watch fd with the async reactor failed.
    #[error("registering the xenstore watch fd with tokio failed")]
    XenstoreWatchFd(#[source] io::Error),

    // ----- event channels -----
    /// `xenevtchn_open` failed.
    #[error("xenevtchn_open failed")]
    EvtchnOpen(#[source] io::Error),
    /// `xenevtchn_bind_unbound_port` failed.
    #[error("xenevtchn_bind_unbound_port for remote domain {remote_domid} failed")]
    EvtchnBindUnbound { remote_domid: u32, source: io::Error },
    /// `xenevtchn_bind_interdomain` failed.
    #[error("xenevtchn_bind_interdomain to domain {remote_domid} port {remote_port} failed")]
    EvtchnBindInterdomain { remote_domid: u32, remote_port: u32, source: io::Error },
    /// `xenevtchn_notify` failed.
    #[error("xenevtchn_notify on port {port} failed")]
    EvtchnNotify { port: u32, source: io::Error },
    /// `xenevtchn_pending` failed.
    #[error("xenevtchn_pending failed")]
    EvtchnPending(#[source] io::Error),
    /// `xenevtchn_unmask` failed.
    #[error("xenevtchn_unmask on port {port} failed")]
    EvtchnUnmask { port: u32, source: io::Error },
    /// `xenevtchn_unbind` failed.
    #[error("xenevtchn_unbind of port {port} failed")]
    EvtchnUnbind { port: u32, source: io::Error },
    /// Making the event channel fd non-blocking / registering it with the
    /// async reactor failed.
    #[error("registering the event channel fd with tokio failed")]
    EvtchnFd(#[source] io::Error),

    // ----- grant tables -----
    /// `xengnttab_open` failed.
    #[error("xengnttab_open failed")]
    GnttabOpen(#[source] io::Error),
    /// `xengnttab_set_max_grants` failed.
    #[error("xengnttab_set_max_grants({count}) failed")]
    GnttabSetMaxGrants { count: u32, source: io::Error },
    /// `xengnttab_map_grant_ref(s)` failed (or was asked for no pages / too
    /// many pages).
    #[error("mapping {count} grant ref(s) (first: domain {first_domid} ref {first_ref}) failed")]
    GnttabMap { count: usize, first_domid: u32, first_ref: u32, source: io::Error },
    /// A write or atomic access to a region that was mapped read-only.
    #[error("shared memory region is mapped read-only (access at offset {offset})")]
    SharedMemReadOnly { offset: usize },
    /// An access to a shared memory region was out of bounds or misaligned.
    #[error(
        "shared memory access of {len} byte(s) at offset {offset} is invalid for a \
         {size}-byte region (needs alignment {align})"
    )]
    SharedMemAccess { offset: usize, len: usize, size: usize, align: usize },

    // ----- vchan -----
    /// `libxenvchan_server_init` failed, or the call was refused before
    /// reaching C (domid or ring size out of range; `InvalidInput`).
    #[error("libxenvchan_server_init for peer domain {peer_domid} at {path} failed")]
    VchanServerInit { peer_domid: u32, path: String, source: io::Error },
    /// `libxenvchan_client_init` failed (no server at the path, grant map
    /// or event channel bind refused, malformed ring page, ...).
    #[error("libxenvchan_client_init to server domain {server_domid} at {path} failed")]
    VchanClientInit { server_domid: u32, path: String, source: io::Error },
    /// `libxenvchan_read` failed while the peer was still open.
    #[error("libxenvchan_read failed")]
    VchanRead(#[source] io::Error),
    /// `libxenvchan_write` failed while the peer was still open.
    #[error("libxenvchan_write failed")]
    VchanWrite(#[source] io::Error),
    /// `libxenvchan_wait` (consuming the event notification) failed.
    #[error("libxenvchan_wait failed")]
    VchanWait(#[source] io::Error),
    /// The peer has closed the vchan (or crashed): writes are refused and
    /// reads return this once all data it sent has been consumed.
    #[error("the vchan peer has closed the channel")]
    VchanPeerClosed,
    /// Registering the vchan's event channel fd with the async reactor
    /// failed.
    #[error("registering the vchan event fd with tokio failed")]
    VchanFd(#[source] io::Error),

    // ----- network interfaces (appended) -----
    /// A [`NicSpec`](crate::nic::NicSpec) is invalid; nothing was handed to libxl.
    #[error("invalid network interface {ifname}: {reason}")]
    InvalidNic { ifname: String, reason: String },
    /// `libxl_device_nic_add` failed (the hotplug script failed or timed out, or the name is taken).
    #[error("libxl_device_nic_add of {ifname} to domain {domid} failed: {code}")]
    NicAdd { domid: u32, ifname: String, code: LibxlError },
    /// `libxl_device_nic_remove` (or reading the interface back before it) failed.
    #[error("libxl_device_nic_remove of interface {devid} from domain {domid} failed: {code}")]
    NicRemove { domid: u32, devid: i32, code: LibxlError },
    /// `libxl_device_nic_list` failed.
    #[error("libxl_device_nic_list for domain {domid} failed")]
    NicList { domid: u32 },
}

/// Capture `errno` right after a failed C call.
pub(crate) fn last_errno() -> io::Error {
    io::Error::last_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "toolstack")]
    fn libxl_error_names_come_from_libxl() {
        let e = LibxlError(sys::ERROR_FAIL);
        assert_eq!(e.code(), -3);
        assert_eq!(e.name(), Some("fail"));
        assert_eq!(e.to_string(), "libxl error -3 (ERROR_FAIL)");
        assert_eq!(LibxlError(sys::ERROR_DOMAIN_NOTFOUND).to_string(), "libxl error -21 (ERROR_DOMAIN_NOTFOUND)");
        assert_eq!(LibxlError::DEVICE_EXISTS, LibxlError(sys::ERROR_DEVICE_EXISTS));
        assert_eq!(LibxlError::DOMAIN_NOTFOUND, LibxlError(sys::ERROR_DOMAIN_NOTFOUND));
    }

    #[test]
    fn unknown_libxl_error_has_no_name() {
        let e = LibxlError(-9999);
        assert_eq!(e.name(), None);
        assert_eq!(e.to_string(), "libxl error -9999");
    }

    #[test]
    fn libxl_check_maps_zero_to_ok() {
        assert_eq!(LibxlError::check(0), Ok(()));
        assert_eq!(LibxlError::check(-6), Err(LibxlError(-6)));
    }

    #[test]
    #[cfg(feature = "toolstack")]
    fn error_messages_name_the_operation_and_arguments() {
        let e = Error::XenstoreRead {
            path: "/local/domain/0/name".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(e.to_string(), "xenstore read of /local/domain/0/name failed");
        let src = std::error::Error::source(&e).map(|s| s.to_string());
        assert!(src.is_some_and(|s| s.contains("No such file")));

        let e = Error::DomainInfo { domid: 7, code: LibxlError(sys::ERROR_DOMAIN_NOTFOUND) };
        assert_eq!(e.to_string(), "libxl_domain_info for domain 7 failed: libxl error -21 (ERROR_DOMAIN_NOTFOUND)");

        let e = Error::EvtchnBindInterdomain {
            remote_domid: 3,
            remote_port: 12,
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert_eq!(e.to_string(), "xenevtchn_bind_interdomain to domain 3 port 12 failed");

        let e = Error::CtxAlloc(LibxlError(sys::ERROR_NOMEM));
        assert_eq!(e.to_string(), "libxl_ctx_alloc failed: libxl error -5 (ERROR_NOMEM)");
    }
}
