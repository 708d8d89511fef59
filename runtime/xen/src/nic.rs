//! Network interfaces of guests: a Xen PV vif (netfront in the guest, netback in dom0's kernel) added and
//! removed through libxl (`libxl_device_nic_add` / `_remove` / `_list`). No QEMU and no bridge: netback's
//! end is a plain dom0 interface named by [`NicSpec::ifname`], which the caller wires up (Bulkhead moves it
//! into the pod's network namespace). libxl runs [`NicSpec::script`] as the hotplug script; it must write
//! `connected` to `$XENBUS_PATH/hotplug-status` on `online`, since netback waits for that before it
//! connects (Xen's own vif-* scripts do the same after plugging the vif into a bridge or routes).

use std::ffi::{CString, c_int};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::time::Instant;

use bulkhead_xen_sys as sys;

use crate::domain::{c_strdup, check_guest, path_problem};
use crate::error::{Error, LibxlError, Result};
use crate::libxl::{Idl, Libxl, LibxlWorker};

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// A PV network interface to add to a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    /// The guest's MAC address (unicast).
    pub mac: [u8; 6],
    /// dom0's name for netback's end (at most 15 bytes of `[A-Za-z0-9_.-]`).
    pub ifname: String,
    /// The hotplug script libxl runs in dom0 (absolute path).
    pub script: PathBuf,
}

/// A network interface libxl has recorded for a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedNic {
    /// Its device id (the guest's `eth<devid>` for the first ones).
    pub devid: i32,
    /// The guest's MAC address.
    pub mac: [u8; 6],
    // No ifname: libxl 4.17's list does not read the vifname back (the caller knows the name it gave).
}

impl NicSpec {
    /// Checks the name, the MAC and the script path ([`Error::InvalidNic`]); touches nothing.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Error::InvalidNic { ifname: self.ifname.clone(), reason };
        let name_ok = !self.ifname.is_empty()
            && self.ifname.len() <= MAX_IFNAME
            && !self.ifname.starts_with(['-', '.'])
            && self.ifname.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !name_ok {
            return Err(invalid(format!("ifname must be 1 to {MAX_IFNAME} bytes of letters, digits, _ . -")));
        }
        if self.mac[0] & 1 != 0 {
            return Err(invalid("mac must be a unicast address".into()));
        }
        if let Some(reason) = path_problem(&self.script) {
            return Err(invalid(format!("script: {reason}")));
        }
        Ok(())
    }

    fn to_raw(&self) -> Result<Idl<sys::libxl_device_nic>> {
        self.validate()?;
        let nul = || Error::InvalidNic { ifname: self.ifname.clone(), reason: "contains NUL".into() };
        let ifname = CString::new(self.ifname.as_bytes()).map_err(|_| nul())?;
        let script = CString::new(self.script.as_os_str().as_bytes()).map_err(|_| nul())?;
        let mut nic = Idl::<sys::libxl_device_nic>::new();
        // SAFETY: the Idl holds an initialised nic that owns nothing yet; only strdup'ed strings are stored
        // in it, which its dispose frees, and plain values.
        let n = unsafe { nic.as_mut() };
        n.backend_domid = 0;
        n.devid = -1; // the next free one
        n.mac = self.mac;
        n.ifname = c_strdup(&ifname);
        n.script = c_strdup(&script);
        n.nictype = sys::LIBXL_NIC_TYPE_VIF;
        Ok(nic)
    }
}

impl AttachedNic {
    fn from_raw(n: &sys::libxl_device_nic) -> Self {
        AttachedNic { devid: n.devid, mac: n.mac }
    }
}

/// The array `libxl_device_nic_list` returns, freed with `libxl_device_nic_list_free`.
struct NicList {
    ptr: NonNull<sys::libxl_device_nic>,
    len: usize,
}

impl NicList {
    fn as_slice(&self) -> &[sys::libxl_device_nic] {
        // SAFETY: ptr points to len initialised nics owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for NicList {
    fn drop(&mut self) {
        let n = c_int::try_from(self.len).unwrap_or(0);
        // SAFETY: ptr/len are exactly what libxl_device_nic_list returned; list_free disposes every element
        // and frees the array, once.
        unsafe { sys::libxl_device_nic_list_free(self.ptr.as_ptr(), n) };
    }
}

impl Libxl {
    /// The network interfaces libxl has recorded for `domid`.
    pub fn nic_list(&mut self, domid: u32) -> Result<Vec<AttachedNic>> {
        let mut n: c_int = 0;
        // SAFETY: ctx valid (owned by self, used on its thread); n is a valid out-pointer.
        let p = unsafe { sys::libxl_device_nic_list(self.as_ptr(), domid, &mut n) };
        let len = usize::try_from(n).unwrap_or(0);
        let Some(ptr) = NonNull::new(p) else {
            return if n <= 0 { Ok(Vec::new()) } else { Err(Error::NicList { domid }) };
        };
        let list = NicList { ptr, len };
        Ok(list.as_slice().iter().map(AttachedNic::from_raw).collect())
    }

    /// Adds a PV network interface to the guest `domid` (paused or running) and returns its devid.
    /// Synchronous: returns once the hotplug script has run; netfront in the guest connects on its own.
    pub fn nic_add(&mut self, domid: u32, nic: &NicSpec) -> Result<i32> {
        check_guest(domid, "add a network interface to")?;
        let mut raw = nic.to_raw()?;
        let start = Instant::now();
        // SAFETY: ctx valid; raw is an initialised nic holding only libc-allocated strings (libxl fills in
        // defaults and the devid, raw's Drop disposes it); ao_how = NULL makes the call synchronous on this
        // thread, including the hotplug script child, as disk_add does.
        let rc = unsafe { sys::libxl_device_nic_add(self.as_ptr(), domid, raw.as_mut_ptr(), std::ptr::null()) };
        LibxlError::check(rc).map_err(|code| Error::NicAdd { domid, ifname: nic.ifname.clone(), code })?;
        let devid = raw.devid;
        tracing::info!(domid, devid, ifname = %nic.ifname, elapsed = ?start.elapsed(), "network interface added");
        Ok(devid)
    }

    /// Removes interface `devid` from `domid`: the guest is asked to release it, then the backend (and its
    /// dom0 interface) goes. Blocks until it is gone.
    pub fn nic_remove(&mut self, domid: u32, devid: i32) -> Result<()> {
        check_guest(domid, "remove a network interface from")?;
        let mut raw = Idl::<sys::libxl_device_nic>::new();
        // SAFETY: ctx valid; raw is a fresh nic that owns nothing, which libxl re-initialises and fills from
        // xenstore with malloc'd strings (disposed by raw's Drop).
        let rc = unsafe { sys::libxl_devid_to_device_nic(self.as_ptr(), domid, devid, raw.as_mut_ptr()) };
        LibxlError::check(rc).map_err(|code| Error::NicRemove { domid, devid, code })?;
        // SAFETY: ctx valid; raw is the nic as libxl recorded it; ao_how = NULL: synchronous on this thread.
        let rc = unsafe { sys::libxl_device_nic_remove(self.as_ptr(), domid, raw.as_mut_ptr(), std::ptr::null()) };
        LibxlError::check(rc).map_err(|code| Error::NicRemove { domid, devid, code })?;
        tracing::info!(domid, devid, "network interface removed");
        Ok(())
    }
}

impl LibxlWorker {
    /// [`Libxl::nic_add`] on the worker.
    pub async fn nic_add(&self, domid: u32, nic: NicSpec) -> Result<i32> {
        self.call(move |ctx| ctx.nic_add(domid, &nic)).await?
    }

    /// [`Libxl::nic_remove`] on the worker.
    pub async fn nic_remove(&self, domid: u32, devid: i32) -> Result<()> {
        self.call(move |ctx| ctx.nic_remove(domid, devid)).await?
    }

    /// [`Libxl::nic_list`] on the worker.
    pub async fn nic_list(&self, domid: u32) -> Result<Vec<AttachedNic>> {
        self.call(move |ctx| ctx.nic_list(domid)).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NicSpec {
        NicSpec { mac: [0x02, 0, 0, 0, 0, 1], ifname: "bhvif1".into(), script: "/usr/lib/bulkhead/vif-pod".into() }
    }

    #[test]
    fn valid_specs_pass() {
        assert!(spec().validate().is_ok());
        assert!(NicSpec { ifname: "a".repeat(15), ..spec() }.validate().is_ok());
    }

    #[test]
    fn bad_names_macs_and_scripts_are_refused() {
        for bad in [
            NicSpec { ifname: String::new(), ..spec() },
            NicSpec { ifname: "a".repeat(16), ..spec() },
            NicSpec { ifname: "a/b".into(), ..spec() },
            NicSpec { ifname: "-x".into(), ..spec() },
            NicSpec { ifname: "eth 0".into(), ..spec() },
            NicSpec { mac: [0x01, 0, 0, 0, 0, 1], ..spec() },
            NicSpec { script: "vif-pod".into(), ..spec() },
        ] {
            assert!(matches!(bad.validate(), Err(Error::InvalidNic { .. })), "{bad:?}");
        }
    }

    #[test]
    fn nics_are_refused_for_dom0() {
        // check_guest runs before libxl is touched: no context needed to see the refusal.
        assert!(matches!(check_guest(0, "add a network interface to"), Err(Error::NotAGuestDomain { .. })));
    }
}

#[cfg(test)]
mod live_tests;
