//! PV disks of running domains: add, remove and list them through libxl
//! (`libxl_device_disk_add` / `_remove` / `_list`), plus the guest device
//! naming rules shared with domain creation.
//!
//! # libxl facts this module relies on (Xen 4.17, `libxl_disk.c`,
//! `libxl_device.c`)
//!
//! * **Add** checks, inside the xenstore transaction that writes the
//!   backend and frontend nodes, that no device with the same devid exists
//!   (`ERROR_DEVICE_EXISTS`), records the disk in the domain's saved
//!   configuration, waits (up to `LIBXL_INIT_TIMEOUT`, 10 s) for the backend
//!   driver (blkback) to reach InitWait and then runs the `block` hotplug
//!   script, which writes `physical-device`. It returns when the script has
//!   finished: blkback opens the block device *afterwards*, asynchronously,
//!   from its xenstore watch on `physical-device` (see
//!   [`blkback_has_opened`]).
//! * **A failed add is not rolled back by libxl**: once the xenstore nodes
//!   are written, a hotplug or InitWait failure leaves them (and the saved
//!   configuration entry) in place. [`Libxl::disk_add`] removes such a
//!   half-added disk itself.
//! * **Remove** asks the frontend to close, waits up to 10 s, then forces
//!   the removal if the guest did not cooperate; blkback closes the block
//!   device when its xenbus device goes away. A domain's disks are also
//!   removed when it is destroyed.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::Instant;

use bulkhead_xen_sys as sys;

use crate::domain::{DiskSpec, c_strdup, check_guest, path_problem};
use crate::error::{Error, LibxlError, Result};
use crate::libxl::{Idl, Libxl, LibxlWorker};

/// Longest disk-letter suffix accepted after `xvd` (`xvdzzz` is disk 18277).
pub const MAX_VDEV_LETTERS: usize = 3;

/// Major number of Xen's classic PV disk namespace (`xvd[a-p]` fit there).
const XVD_MAJOR: u32 = 202;

/// Why `vdev` is not an acceptable guest device name (`None`: it is).
/// Accepted: `xvd` followed by 1 to [`MAX_VDEV_LETTERS`] lowercase letters,
/// i.e. whole disks only (no partitions, no `hd`/`sd` names).
pub fn vdev_problem(vdev: &str) -> Option<String> {
    let suffix = vdev.strip_prefix("xvd").unwrap_or_default();
    if suffix.is_empty() || suffix.len() > MAX_VDEV_LETTERS || !suffix.bytes().all(|b| b.is_ascii_lowercase()) {
        return Some(format!("{vdev:?} is not of the form xvd[a-z]{{1,{MAX_VDEV_LETTERS}}}"));
    }
    None
}

/// The xenstore device id libxl gives guest disk `vdev` (what appears in
/// `/local/domain/0/backend/vbd/<domid>/<devid>` and in the guest's
/// `device/vbd/<devid>`), or `None` if `vdev` is not accepted (see
/// [`vdev_problem`]).
///
/// Same rule as libxl's `libxl__device_disk_dev_number`: the letters are a
/// bijective base-26 disk number (`a` = 0, `z` = 25, `aa` = 26); disks 0-15
/// use the classic encoding `202 << 8 | disk << 4`, later ones the extended
/// one `1 << 28 | disk << 8`.
pub fn vdev_devid(vdev: &str) -> Option<u32> {
    if vdev_problem(vdev).is_some() {
        return None;
    }
    let disk = vdev["xvd".len()..].bytes().fold(0u32, |n, b| n * 26 + u32::from(b - b'a') + 1) - 1;
    Some(if disk < 16 { (XVD_MAJOR << 8) | (disk << 4) } else { (1 << 28) | (disk << 8) })
}

/// dom0's xenstore directory of the blkback device serving `vdev` of
/// `domid` (holds `params`, `mode`, `state`, `physical-device`, ...).
pub fn backend_xenstore_path(domid: u32, vdev: &str) -> Option<String> {
    vdev_devid(vdev).map(|devid| format!("/local/domain/0/backend/vbd/{domid}/{devid}"))
}

/// Whether dom0's blkback has opened the block device behind `vdev` of
/// `domid`.
///
/// blkback opens the device in its xenstore watch on `physical-device`
/// (written by the hotplug script) and only then creates the
/// `physical_device` attribute of its xenbus device
/// (`/sys/bus/xen-backend/devices/vbd-<domid>-<devid>/`), so the attribute
/// existing means the open has happened; it goes away with the device. The
/// guest plays no part in this.
pub fn blkback_has_opened(domid: u32, vdev: &str) -> bool {
    vdev_devid(vdev).is_some_and(|devid| {
        Path::new(&format!("/sys/bus/xen-backend/devices/vbd-{domid}-{devid}/physical_device")).exists()
    })
}

/// Initialise `*d` as a `phy`-backend, raw-format disk in dom0: block
/// device `path` exported to the guest as `vdev`. The one place a
/// [`DiskSpec`] becomes a `libxl_device_disk` (domain creation and hot-plug
/// both use it).
///
/// # Safety
/// `d` must be valid for writes of a `libxl_device_disk` and must not hold
/// an initialised disk that still owns allocations (they would leak). The
/// strings are `strdup`ed, so `*d` owns them and
/// `libxl_device_disk_dispose` frees them.
pub(crate) unsafe fn init_phy_disk(d: *mut sys::libxl_device_disk, path: &CStr, vdev: &CStr, read_only: bool) {
    // SAFETY: d is valid for writes (caller); init needs no context and
    // fully initialises the struct.
    unsafe { sys::libxl_device_disk_init(d) };
    // SAFETY: just initialised, and the caller gives us exclusive access.
    let d = unsafe { &mut *d };
    d.backend_domid = 0;
    d.pdev_path = c_strdup(path);
    d.vdev = c_strdup(vdev);
    d.backend = sys::LIBXL_DISK_BACKEND_PHY;
    d.format = sys::LIBXL_DISK_FORMAT_RAW;
    d.readwrite = i32::from(!read_only);
    d.removable = 0;
    d.is_cdrom = 0;
}

impl DiskSpec {
    /// A read-only disk: block device `backend_path` in dom0 exported as
    /// `vdev`.
    pub fn read_only(backend_path: impl Into<PathBuf>, vdev: impl Into<String>) -> Self {
        DiskSpec { backend_path: backend_path.into(), vdev: vdev.into(), read_only: true }
    }

    /// Check the backend path and the guest device name
    /// ([`Error::InvalidDisk`]). Does not touch the filesystem.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Error::InvalidDisk { vdev: self.vdev.clone(), reason };
        if let Some(reason) = vdev_problem(&self.vdev) {
            return Err(invalid(format!("vdev: {reason}")));
        }
        if let Some(reason) = path_problem(&self.backend_path) {
            return Err(invalid(format!("backend_path: {reason}")));
        }
        Ok(())
    }

    /// The disk as a `libxl_device_disk` (validated first).
    pub(crate) fn to_raw(&self) -> Result<Idl<sys::libxl_device_disk>> {
        self.validate()?;
        let nul = |what: &str| Error::InvalidDisk { vdev: self.vdev.clone(), reason: format!("{what} contains NUL") };
        let path = CString::new(self.backend_path.as_os_str().as_bytes()).map_err(|_| nul("backend_path"))?;
        let vdev = CString::new(self.vdev.as_bytes()).map_err(|_| nul("vdev"))?;
        let mut disk = Idl::<sys::libxl_device_disk>::new();
        // SAFETY: the Idl holds an initialised disk that owns nothing yet
        // (fresh libxl_device_disk_init), so re-initialising it leaks
        // nothing; init_phy_disk stores only strdup'ed strings, which the
        // Idl's dispose frees.
        unsafe { init_phy_disk(disk.as_mut_ptr(), &path, &vdev, self.read_only) };
        Ok(disk)
    }
}

/// A disk libxl knows to be attached to a domain (read back from xenstore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedDisk {
    /// Guest device name (`xvdb`).
    pub vdev: String,
    /// The backend's `params`: the dom0 block device for `phy` disks.
    pub backend_path: Option<PathBuf>,
    /// Exported read-only.
    pub read_only: bool,
    /// Domain running the backend (0 for dom0).
    pub backend_domid: u32,
    /// The backend is dom0's kernel blkback (`phy`), not QEMU.
    pub phy: bool,
}

impl AttachedDisk {
    fn from_raw(d: &sys::libxl_device_disk) -> Self {
        // SAFETY: libxl disk strings are NULL or NUL-terminated strings owned
        // by the disk, which outlives these calls.
        let vdev = unsafe { crate::cstr::bounded_c_str(d.vdev, 64) }.unwrap_or_default();
        // SAFETY: as above.
        let path = unsafe { crate::cstr::bounded_c_str(d.pdev_path, crate::domain::MAX_PATH_LEN + 1) };
        AttachedDisk {
            vdev,
            backend_path: path.map(PathBuf::from),
            read_only: d.readwrite == 0,
            backend_domid: d.backend_domid,
            phy: d.backend == sys::LIBXL_DISK_BACKEND_PHY,
        }
    }
}

/// The array `libxl_device_disk_list` returns, freed with
/// `libxl_device_disk_list_free`.
struct DiskList {
    ptr: NonNull<sys::libxl_device_disk>,
    len: usize,
}

impl DiskList {
    fn as_slice(&self) -> &[sys::libxl_device_disk] {
        // SAFETY: ptr points to len initialised disks owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for DiskList {
    fn drop(&mut self) {
        // len came from the c_int libxl returned, so it fits.
        let n = i32::try_from(self.len).unwrap_or(0);
        // SAFETY: ptr/len are exactly what libxl_device_disk_list returned;
        // list_free disposes every element and frees the array, once.
        unsafe { sys::libxl_device_disk_list_free(self.ptr.as_ptr(), n) };
    }
}

impl Libxl {
    /// The disks libxl has recorded for `domid` (empty for a domain without
    /// disks or one that does not exist).
    pub fn disk_list(&mut self, domid: u32) -> Result<Vec<AttachedDisk>> {
        let mut n: std::ffi::c_int = 0;
        // SAFETY: ctx valid (owned by self, used on its thread); n is a
        // valid out-pointer.
        let p = unsafe { sys::libxl_device_disk_list(self.as_ptr(), domid, &mut n) };
        let len = usize::try_from(n).unwrap_or(0);
        let Some(ptr) = NonNull::new(p) else {
            return if n <= 0 { Ok(Vec::new()) } else { Err(Error::DiskList { domid }) };
        };
        let list = DiskList { ptr, len };
        Ok(list.as_slice().iter().map(AttachedDisk::from_raw).collect())
    }

    /// Hot-plug `disk` into the running (or paused) guest `domid` through
    /// dom0's blkback (`phy` backend: `disk.backend_path` must be a block
    /// device in dom0; no QEMU is involved).
    ///
    /// Synchronous: returns once the hotplug script has run (see the module
    /// docs: blkback opens the device a moment later, [`blkback_has_opened`]).
    /// On failure nothing is left behind: a disk libxl had already written
    /// to xenstore is destroyed again. `ERROR_DEVICE_EXISTS` means the guest
    /// already has a disk `disk.vdev` (left untouched).
    pub fn disk_add(&mut self, domid: u32, disk: &DiskSpec) -> Result<()> {
        check_guest(domid, "attach a disk to")?;
        let mut raw = disk.to_raw()?;
        let start = Instant::now();
        // SAFETY: ctx valid; raw is an initialised disk holding only
        // libc-allocated strings (libxl may fill in defaults, raw's Drop
        // disposes it); ao_how = NULL makes the call synchronous: it runs
        // libxl's event loop, and the hotplug script child it forks, on this
        // thread, exactly as domain_create does.
        let rc = unsafe { sys::libxl_device_disk_add(self.as_ptr(), domid, raw.as_mut_ptr(), std::ptr::null()) };
        let elapsed = start.elapsed();
        if let Err(code) = LibxlError::check(rc) {
            if code.0 != sys::ERROR_DEVICE_EXISTS {
                self.destroy_half_added(domid, disk);
            }
            return Err(Error::DiskAdd { domid, vdev: disk.vdev.clone(), code });
        }
        tracing::info!(domid, vdev = %disk.vdev, backend = %disk.backend_path.display(), ?elapsed, "disk attached");
        Ok(())
    }

    /// After a failed add: destroy the disk if libxl got as far as
    /// recording it (the same vdev and backend path: a disk that existed
    /// before would have failed the add with `ERROR_DEVICE_EXISTS`).
    fn destroy_half_added(&mut self, domid: u32, disk: &DiskSpec) {
        let ours = match self.disk_list(domid) {
            Ok(list) => {
                list.into_iter().any(|d| d.vdev == disk.vdev && d.backend_path.as_ref() == Some(&disk.backend_path))
            }
            Err(_) => false,
        };
        if !ours {
            return;
        }
        tracing::warn!(domid, vdev = %disk.vdev, "disk add failed half-way; destroying what libxl left");
        let Ok(mut raw) = disk.to_raw() else { return };
        // SAFETY: as in disk_add; libxl_device_disk_destroy only needs the
        // vdev and backend kind/domid to find the device, and forces its
        // removal without waiting for the guest.
        let rc = unsafe { sys::libxl_device_disk_destroy(self.as_ptr(), domid, raw.as_mut_ptr(), std::ptr::null()) };
        if let Err(code) = LibxlError::check(rc) {
            tracing::error!(domid, vdev = %disk.vdev, error = %code, "destroying a half-added disk failed");
        }
    }

    /// Unplug disk `vdev` from `domid` and return what it was. The guest is
    /// asked to release it first; if it does not within libxl's 10 s, the
    /// removal is forced (the guest then sees I/O errors). Blocks until the
    /// backend is gone, which closes the block device.
    /// [`Error::DiskNotFound`] if the domain has no such disk.
    pub fn disk_remove(&mut self, domid: u32, vdev: &str) -> Result<AttachedDisk> {
        check_guest(domid, "detach a disk from")?;
        if let Some(reason) = vdev_problem(vdev) {
            return Err(Error::InvalidDisk { vdev: vdev.to_owned(), reason });
        }
        let Some(found) = self.disk_list(domid)?.into_iter().find(|d| d.vdev == vdev) else {
            return Err(Error::DiskNotFound { domid, vdev: vdev.to_owned() });
        };
        let c_vdev = CString::new(vdev)
            .map_err(|_| Error::InvalidDisk { vdev: vdev.to_owned(), reason: "contains NUL".into() })?;
        let mut raw = Idl::<sys::libxl_device_disk>::new();
        // SAFETY: ctx valid; c_vdev is NUL-terminated; raw is a fresh disk
        // that owns nothing, which libxl_vdev_to_device_disk re-initialises
        // and fills from xenstore with malloc'd strings (disposed by raw's
        // Drop).
        let rc = unsafe { sys::libxl_vdev_to_device_disk(self.as_ptr(), domid, c_vdev.as_ptr(), raw.as_mut_ptr()) };
        LibxlError::check(rc).map_err(|code| Error::DiskRemove { domid, vdev: vdev.to_owned(), code })?;
        let start = Instant::now();
        // SAFETY: ctx valid; raw is the disk as libxl recorded it (backend
        // kind and domid set, as libxl__device_from_disk needs); ao_how =
        // NULL: synchronous on this thread, as in disk_add.
        let rc = unsafe { sys::libxl_device_disk_remove(self.as_ptr(), domid, raw.as_mut_ptr(), std::ptr::null()) };
        LibxlError::check(rc).map_err(|code| Error::DiskRemove { domid, vdev: vdev.to_owned(), code })?;
        tracing::info!(domid, vdev, elapsed = ?start.elapsed(), "disk detached");
        Ok(found)
    }
}

impl LibxlWorker {
    /// [`Libxl::disk_add`] on the worker.
    pub async fn disk_add(&self, domid: u32, disk: DiskSpec) -> Result<()> {
        self.call(move |ctx| ctx.disk_add(domid, &disk)).await?
    }

    /// [`Libxl::disk_remove`] on the worker.
    pub async fn disk_remove(&self, domid: u32, vdev: String) -> Result<AttachedDisk> {
        self.call(move |ctx| ctx.disk_remove(domid, &vdev)).await?
    }

    /// [`Libxl::disk_list`] on the worker.
    pub async fn disk_list(&self, domid: u32) -> Result<Vec<AttachedDisk>> {
        self.call(move |ctx| ctx.disk_list(domid)).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vdev_names_map_to_libxl_devids() {
        // Classic encoding: 202 << 8 | disk << 4.
        assert_eq!(vdev_devid("xvda"), Some(51712));
        assert_eq!(vdev_devid("xvdb"), Some(51728));
        assert_eq!(vdev_devid("xvdp"), Some(51952));
        // Extended encoding from the 17th disk on.
        assert_eq!(vdev_devid("xvdq"), Some((1 << 28) | (16 << 8)));
        assert_eq!(vdev_devid("xvdz"), Some((1 << 28) | (25 << 8)));
        assert_eq!(vdev_devid("xvdaa"), Some((1 << 28) | (26 << 8)));
        assert_eq!(vdev_devid("xvdzzz"), Some((1 << 28) | (18277 << 8)));
    }

    #[test]
    fn only_whole_xvd_disks_are_accepted() {
        for bad in ["", "xvd", "xvdA", "xvda1", "sda", "hda", "xvdaaaa", "xvd-", "xvdé", " xvda"] {
            assert!(vdev_problem(bad).is_some(), "{bad:?}");
            assert_eq!(vdev_devid(bad), None, "{bad:?}");
        }
        assert_eq!(vdev_problem("xvdb"), None);
        assert_eq!(vdev_problem("sda").as_deref(), Some("\"sda\" is not of the form xvd[a-z]{1,3}"));
    }

    #[test]
    fn backend_paths_name_the_devid() {
        assert_eq!(backend_xenstore_path(7, "xvdb").as_deref(), Some("/local/domain/0/backend/vbd/7/51728"));
        assert_eq!(backend_xenstore_path(7, "sdb"), None);
        assert!(!blkback_has_opened(7, "sdb"));
    }

    #[test]
    fn disk_spec_validation() {
        assert!(DiskSpec::read_only("/dev/loop3", "xvdb").validate().is_ok());
        let e = DiskSpec::read_only("/dev/loop3", "sdb").validate().err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("invalid disk sdb: vdev: \"sdb\" is not of the form xvd[a-z]{1,3}"));
        let e = DiskSpec::read_only("dev/loop3", "xvdb").validate().err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("invalid disk xvdb: backend_path: must be an absolute path"));
        assert!(DiskSpec::read_only("", "xvdb").validate().is_err());
    }

    #[test]
    fn read_only_phy_disk_reads_back() -> anyhow::Result<()> {
        let raw = DiskSpec::read_only("/dev/loop3", "xvdb").to_raw()?;
        // SAFETY: strings owned by raw, NULL or NUL-terminated.
        let path = unsafe { crate::cstr::bounded_c_str(raw.pdev_path, 64) };
        // SAFETY: as above.
        let vdev = unsafe { crate::cstr::bounded_c_str(raw.vdev, 64) };
        assert_eq!((path.as_deref(), vdev.as_deref()), (Some("/dev/loop3"), Some("xvdb")));
        assert_eq!((raw.backend, raw.format), (sys::LIBXL_DISK_BACKEND_PHY, sys::LIBXL_DISK_FORMAT_RAW));
        assert_eq!((raw.readwrite, raw.is_cdrom, raw.removable, raw.backend_domid), (0, 0, 0, 0));
        assert!(raw.script.is_null());
        let back = AttachedDisk::from_raw(&raw);
        assert_eq!(
            back,
            AttachedDisk {
                vdev: "xvdb".into(),
                backend_path: Some("/dev/loop3".into()),
                read_only: true,
                backend_domid: 0,
                phy: true
            }
        );
        let rw = DiskSpec { read_only: false, ..DiskSpec::read_only("/dev/vg/x", "xvdc") }.to_raw()?;
        assert_eq!(rw.readwrite, 1);
        Ok(())
    }

    #[test]
    fn hotplug_refuses_dom0_and_bad_names_before_libxl() {
        // No context is needed to see these refusals: check them through
        // the helpers the methods call first.
        assert!(matches!(check_guest(0, "attach a disk to"), Err(Error::NotAGuestDomain { domid: 0, .. })));
        assert!(DiskSpec::read_only("/dev/loop0", "xvda1").to_raw().is_err());
    }
}

#[cfg(test)]
mod live_tests;
