//! RAII for libxl IDL types.
//!
//! Every libxl IDL struct `libxl_foo` comes with `libxl_foo_init` (sets
//! defaults, never fails, needs no context) and `libxl_foo_dispose` (frees
//! everything the struct points to). [`Idl<T>`] pairs them: construction
//! runs `init`, `Drop` runs `dispose`, so no path can skip the dispose.

use std::mem::MaybeUninit;
use std::ops::Deref;

use bulkhead_xen_sys as sys;

/// A libxl IDL type with `init`/`dispose` functions.
///
/// # Safety
/// Implementors must name the matching `libxl_<type>_init` and
/// `libxl_<type>_dispose` for `Self`: `init` fully initialises any
/// (possibly uninitialised) storage without needing a context, and
/// `dispose` releases every allocation reachable from an initialised value.
pub unsafe trait IdlType: Sized {
    /// `libxl_<type>_init`.
    ///
    /// # Safety
    /// `p` must be valid for writes of `Self`.
    unsafe fn init(p: *mut Self);
    /// `libxl_<type>_dispose`.
    ///
    /// # Safety
    /// `p` must point to a value initialised by [`IdlType::init`] (and only
    /// modified in ways libxl allows) that is not used again afterwards
    /// except to be re-initialised.
    unsafe fn dispose(p: *mut Self);
}

macro_rules! idl_types {
    ($($ty:ident => $init:ident, $dispose:ident;)*) => {$(
        // SAFETY: the init/dispose pair named here is the one libxl's IDL
        // generates for this exact type (_libxl_types.h); IDL init functions
        // are memset-plus-defaults that need no ctx and cannot fail.
        unsafe impl IdlType for sys::$ty {
            unsafe fn init(p: *mut Self) {
                // SAFETY: forwarded from IdlType::init's contract.
                unsafe { sys::$init(p) }
            }
            unsafe fn dispose(p: *mut Self) {
                // SAFETY: forwarded from IdlType::dispose's contract.
                unsafe { sys::$dispose(p) }
            }
        }
    )*};
}

idl_types! {
    libxl_domain_config => libxl_domain_config_init, libxl_domain_config_dispose;
    libxl_domain_create_info => libxl_domain_create_info_init, libxl_domain_create_info_dispose;
    libxl_domain_build_info => libxl_domain_build_info_init, libxl_domain_build_info_dispose;
    libxl_dominfo => libxl_dominfo_init, libxl_dominfo_dispose;
    libxl_physinfo => libxl_physinfo_init, libxl_physinfo_dispose;
    libxl_version_info => libxl_version_info_init, libxl_version_info_dispose;
    libxl_device_disk => libxl_device_disk_init, libxl_device_disk_dispose;
    libxl_device_nic => libxl_device_nic_init, libxl_device_nic_dispose;
    libxl_device_vkb => libxl_device_vkb_init, libxl_device_vkb_dispose;
    libxl_device_vfb => libxl_device_vfb_init, libxl_device_vfb_dispose;
    libxl_device_channel => libxl_device_channel_init, libxl_device_channel_dispose;
    libxl_device_p9 => libxl_device_p9_init, libxl_device_p9_dispose;
    libxl_event => libxl_event_init, libxl_event_dispose;
}

/// An initialised libxl IDL value that is disposed on drop.
///
/// Reading is safe through `Deref` (raw pointer fields can be read but, as
/// always, only dereferenced in `unsafe` code). Mutation goes through
/// [`Idl::as_mut`] / [`Idl::as_mut_ptr`], which are `unsafe` because
/// `dispose` will `free()` whatever pointers the value holds.
pub struct Idl<T: IdlType> {
    value: T,
}

impl<T: IdlType> Idl<T> {
    /// `libxl_<type>_init` a new value.
    pub fn new() -> Self {
        let mut v = MaybeUninit::<T>::uninit();
        // SAFETY: v.as_mut_ptr() is valid for writes of T; IdlType::init
        // fully initialises it (IdlType's contract), which makes
        // assume_init sound.
        let value = unsafe {
            T::init(v.as_mut_ptr());
            v.assume_init()
        };
        Idl { value }
    }

    /// Pointer for libxl functions that only read the value.
    pub fn as_ptr(&self) -> *const T {
        &self.value
    }

    /// Pointer for libxl functions that fill in the value (e.g.
    /// `libxl_get_physinfo`). Valid while `self` is alive and not moved.
    ///
    /// Safe to obtain; writing through it is `unsafe` and must leave the
    /// value in a state `libxl_<type>_dispose` can handle.
    pub fn as_mut_ptr(&mut self) -> *mut T {
        &mut self.value
    }

    /// Mutable access to the raw value.
    ///
    /// # Safety
    /// Every pointer stored into the value must be NULL or allocated with
    /// `malloc` (libxl frees them with `free()` in dispose), must not be
    /// shared with another owner, and array pointers must agree with their
    /// `num_*` counts.
    pub unsafe fn as_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

// SAFETY: libxl IDL values exclusively own everything they point to (that is
// what dispose frees) and have no thread affinity, so moving one to another
// thread (e.g. building a domain config on a caller thread and handing it to
// the LibxlWorker) is sound. Not Sync: no shared access is needed.
unsafe impl<T: IdlType> Send for Idl<T> {}

impl<T: IdlType> Default for Idl<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: IdlType> Deref for Idl<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: IdlType> Drop for Idl<T> {
    fn drop(&mut self) {
        // SAFETY: value was initialised by T::init in new() and only mutated
        // through the unsafe accessors whose contracts keep it disposable;
        // it is never used after this.
        unsafe { T::dispose(&mut self.value) }
    }
}

impl<T: IdlType> std::fmt::Debug for Idl<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idl").field("type", &std::any::type_name::<T>()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_config_init_and_dispose_without_ctx() {
        let cfg = Idl::<sys::libxl_domain_config>::new();
        assert_eq!(cfg.num_disks, 0);
        assert!(cfg.disks.is_null());
        assert_eq!(cfg.num_nics, 0);
        assert!(cfg.c_info.name.is_null());
        assert_eq!(cfg.c_info.type_, sys::LIBXL_DOMAIN_TYPE_INVALID);
        drop(cfg);
    }

    #[test]
    fn dispose_frees_owned_strings() {
        let mut cfg = Idl::<sys::libxl_domain_config>::new();
        // SAFETY: strdup returns a malloc'd copy (or NULL), exactly what
        // dispose expects to free(); nothing else owns it.
        unsafe {
            let cfg = cfg.as_mut();
            cfg.c_info.name = libc::strdup(c"zone-test".as_ptr());
            cfg.b_info.cmdline = libc::strdup(c"console=hvc0".as_ptr());
        }
        assert!(!cfg.c_info.name.is_null());
        // Dropping runs libxl_domain_config_dispose, which frees both. Under
        // valgrind/ASan a missing dispose shows up as a leak.
        drop(cfg);
    }

    #[test]
    fn every_listed_type_round_trips() {
        drop(Idl::<sys::libxl_domain_create_info>::new());
        drop(Idl::<sys::libxl_domain_build_info>::new());
        drop(Idl::<sys::libxl_dominfo>::new());
        drop(Idl::<sys::libxl_physinfo>::new());
        drop(Idl::<sys::libxl_version_info>::new());
        drop(Idl::<sys::libxl_device_disk>::new());
        drop(Idl::<sys::libxl_device_nic>::new());
        drop(Idl::<sys::libxl_device_vkb>::new());
        drop(Idl::<sys::libxl_device_vfb>::new());
        drop(Idl::<sys::libxl_device_channel>::new());
        drop(Idl::<sys::libxl_device_p9>::new());
        drop(Idl::<sys::libxl_event>::new());
    }

    #[test]
    fn idl_values_can_move_to_the_worker_thread() {
        fn assert_send<S: Send>(_: &S) {}
        let cfg = Idl::<sys::libxl_domain_config>::new();
        assert_send(&cfg);
        let h = std::thread::spawn(move || cfg.num_disks);
        assert_eq!(h.join().ok(), Some(0));
    }

    #[test]
    fn dominfo_defaults() {
        let info = Idl::<sys::libxl_dominfo>::default();
        assert_eq!(info.domid, 0);
        assert!(!info.running);
        assert!(info.ssid_label.is_null());
        assert!(format!("{info:?}").contains("libxl_dominfo"));
    }
}
