//! Domain lifecycle through libxl: a typed [`DomainSpec`], and create /
//! pause / unpause / shutdown / destroy on [`Libxl`] and [`LibxlWorker`].
//!
//! # libxl facts this module relies on (Xen 4.17)
//!
//! * **Pausing.** `libxl_domain_create_new` leaves the new domain *paused*:
//!   Xen creates every domain with a controller pause reference and libxl's
//!   create path never drops it (`xl create` calls `libxl_domain_unpause`
//!   itself unless `-p`). [`Libxl::domain_create`] therefore returns a
//!   paused domain; the daemon sets up the host-zone channel and then calls
//!   [`Libxl::domain_unpause`].
//! * **Failure cleanup.** If creation fails, libxl destroys the half-built
//!   domain itself before returning (only `ERROR_ABORTED`, impossible for a
//!   synchronous call, keeps it).
//! * **Shutdown actions are not executed by libxl.** `on_poweroff`,
//!   `on_reboot`, `on_crash`, ... are only stored with the domain's saved
//!   configuration (readable via `libxl_retrieve_domain_configuration`);
//!   nothing in libxl reads them. `xl` implements them in its own
//!   domain-death handler. A domain that shuts down or crashes therefore
//!   stays in the shut-down state (with its reason) until someone calls
//!   [`Libxl::domain_destroy`], and the daemon must apply the
//!   [`ShutdownAction`]s of its [`DomainSpec`] itself.
//! * **Graceful shutdown** (`libxl_domain_shutdown`) writes `poweroff` to
//!   the guest's xenstore `control/shutdown` node and then, when called
//!   synchronously as here, *waits up to 60 s for the guest to acknowledge*
//!   (clear the node), failing with `ERROR_TIMEDOUT` otherwise. The
//!   acknowledgement only means the guest's kernel saw the request; the
//!   domain shuts down some time later. A paused guest cannot acknowledge.
//! * **Ownership of config strings.** `libxl_domain_config_dispose` frees
//!   every string, the vCPU bitmap and the disk array with `free()`, so all
//!   of them are allocated here with libc (`strdup`/`calloc`), never by
//!   Rust.

use std::ffi::{CStr, CString, c_char};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bulkhead_xen_sys as sys;

use crate::error::{Error, LibxlError, Result};
use crate::info::Uuid;
use crate::libxl::{Idl, Libxl, LibxlWorker};

/// Most vCPUs accepted (`HVM_MAX_VCPUS` in Xen 4.17; PV allows more but a
/// zone never needs them).
pub const MAX_VCPUS: u32 = 128;
/// Smallest memory size accepted for a zone, in MiB (a PV Linux kernel does
/// not get through early boot with less).
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest memory size accepted, in MiB (1 TiB; keeps KiB arithmetic far
/// from overflow).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Longest domain name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest kernel command line accepted, in bytes (a PV guest's
/// `start_info.cmd_line` is `MAX_GUEST_CMDLINE` = 1024 bytes including the
/// NUL).
pub const MAX_CMDLINE_LEN: usize = 1023;
/// Longest path accepted for kernel, ramdisk and disk backends.
pub const MAX_PATH_LEN: usize = 4095;

/// Highest domid of a real domain; `DOMID_FIRST_RESERVED` (0x7FF0) and up
/// are special ids (`DOMID_SELF`, `DOMID_IO`, ...).
const DOMID_MAX: u32 = 0x7FEF;

/// How the guest is virtualized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DomainKind {
    /// Paravirtualized: the kernel runs in ring 3 under Xen's PV ABI.
    Pv,
    /// PVH: HVM container without device model, booted at the kernel's PVH
    /// entry point. Needs hardware virtualization (HAP); it is created fine
    /// under an emulated (TCG) Xen but the guest does not boot there.
    Pvh,
}

impl DomainKind {
    fn to_raw(self) -> sys::libxl_domain_type {
        match self {
            DomainKind::Pv => sys::LIBXL_DOMAIN_TYPE_PV,
            DomainKind::Pvh => sys::LIBXL_DOMAIN_TYPE_PVH,
        }
    }
}

/// What should happen when the domain shuts down for a given reason
/// (`libxl_action_on_shutdown`).
///
/// libxl records these with the domain but does not act on them (see the
/// module docs): the daemon's domain-death handler applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShutdownAction {
    /// Destroy the domain.
    Destroy,
    /// Destroy it and create it again from the same configuration.
    Restart,
    /// Keep the shut-down domain (its memory and state) around for
    /// inspection until it is destroyed explicitly.
    Preserve,
    /// Dump the domain's core, then destroy it.
    CoredumpDestroy,
    /// Dump the domain's core, then restart it.
    CoredumpRestart,
}

impl ShutdownAction {
    fn to_raw(self) -> sys::libxl_action_on_shutdown {
        match self {
            ShutdownAction::Destroy => sys::LIBXL_ACTION_ON_SHUTDOWN_DESTROY,
            ShutdownAction::Restart => sys::LIBXL_ACTION_ON_SHUTDOWN_RESTART,
            ShutdownAction::Preserve => sys::LIBXL_ACTION_ON_SHUTDOWN_PRESERVE,
            ShutdownAction::CoredumpDestroy => sys::LIBXL_ACTION_ON_SHUTDOWN_COREDUMP_DESTROY,
            ShutdownAction::CoredumpRestart => sys::LIBXL_ACTION_ON_SHUTDOWN_COREDUMP_RESTART,
        }
    }

    /// Map a raw `libxl_action_on_shutdown` back (`None` for values this
    /// type does not model, e.g. `RESTART_RENAME`, `SOFT_RESET`).
    pub fn from_raw(raw: sys::libxl_action_on_shutdown) -> Option<Self> {
        match raw {
            sys::LIBXL_ACTION_ON_SHUTDOWN_DESTROY => Some(ShutdownAction::Destroy),
            sys::LIBXL_ACTION_ON_SHUTDOWN_RESTART => Some(ShutdownAction::Restart),
            sys::LIBXL_ACTION_ON_SHUTDOWN_PRESERVE => Some(ShutdownAction::Preserve),
            sys::LIBXL_ACTION_ON_SHUTDOWN_COREDUMP_DESTROY => Some(ShutdownAction::CoredumpDestroy),
            sys::LIBXL_ACTION_ON_SHUTDOWN_COREDUMP_RESTART => Some(ShutdownAction::CoredumpRestart),
            _ => None,
        }
    }
}

/// A PV block device backed by a dom0 block device (`phy` backend, raw
/// format, backend in dom0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// Absolute path of the backing block device in dom0, e.g.
    /// `/dev/vg0/zone-a-root`.
    pub backend_path: PathBuf,
    /// Guest device name: `xvd` followed by lowercase letters (`xvda`).
    pub vdev: String,
    /// Export the disk read-only.
    pub read_only: bool,
}

/// Everything needed to create a zone's domain. Owned, plain Rust; turned
/// into a `libxl_domain_config` only inside [`Libxl::domain_create`].
///
/// Defaults (from [`DomainSpec::new`]): 1 vCPU, 256 MiB, no ramdisk, empty
/// command line, no disks, `on_poweroff = Destroy`, `on_reboot = Destroy`
/// (a zone is never rebooted in place: the pod is recreated) and
/// `on_crash = Preserve`, so that a crashed zone stays visible as
/// "shut down, reason crash" until the daemon has recorded the crash and
/// destroys it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    /// Domain name (unique among running domains; libxl refuses duplicates).
    /// `[A-Za-z0-9._-]`, at most [`MAX_NAME_LEN`] bytes, not all digits.
    pub name: String,
    /// Domain UUID; `None` generates a random one (`libxl_uuid_generate`).
    pub uuid: Option<Uuid>,
    pub kind: DomainKind,
    /// Initial memory (`target_memkb`), MiB.
    pub memory_mib: u64,
    /// Memory ceiling the balloon may grow to (`max_memkb`), MiB; `None`
    /// means `memory_mib`.
    pub max_memory_mib: Option<u64>,
    /// Number of vCPUs, all online at boot.
    pub vcpus: u32,
    /// Absolute path (in dom0) of the guest kernel.
    pub kernel: PathBuf,
    /// Absolute path (in dom0) of the initramfs, if any.
    pub ramdisk: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    pub on_poweroff: ShutdownAction,
    pub on_reboot: ShutdownAction,
    /// Also recorded as the watchdog action.
    pub on_crash: ShutdownAction,
    pub disks: Vec<DiskSpec>,
}

/// The [`DomainSpec`] field an [`Error::InvalidDomainSpec`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecField {
    Name,
    Uuid,
    MemoryMib,
    MaxMemoryMib,
    Vcpus,
    Kernel,
    Ramdisk,
    Cmdline,
    /// `disks[i].backend_path`.
    DiskBackendPath(usize),
    /// `disks[i].vdev`.
    DiskVdev(usize),
}

impl fmt::Display for SpecField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecField::Name => f.write_str("name"),
            SpecField::Uuid => f.write_str("uuid"),
            SpecField::MemoryMib => f.write_str("memory_mib"),
            SpecField::MaxMemoryMib => f.write_str("max_memory_mib"),
            SpecField::Vcpus => f.write_str("vcpus"),
            SpecField::Kernel => f.write_str("kernel"),
            SpecField::Ramdisk => f.write_str("ramdisk"),
            SpecField::Cmdline => f.write_str("cmdline"),
            SpecField::DiskBackendPath(i) => write!(f, "disks[{i}].backend_path"),
            SpecField::DiskVdev(i) => write!(f, "disks[{i}].vdev"),
        }
    }
}

fn invalid(field: SpecField, reason: impl Into<String>) -> Error {
    Error::InvalidDomainSpec { field, reason: reason.into() }
}

/// Why `p` cannot be handed to libxl as a kernel, ramdisk or disk path
/// (`None`: it can).
pub(crate) fn path_problem(p: &Path) -> Option<String> {
    let bytes = p.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Some("must not be empty".into());
    }
    if !p.is_absolute() {
        return Some("must be an absolute path".into());
    }
    if bytes.contains(&0) {
        return Some("must not contain NUL bytes".into());
    }
    if bytes.len() > MAX_PATH_LEN {
        return Some(format!("longer than {MAX_PATH_LEN} bytes"));
    }
    None
}

fn validate_path(field: SpecField, p: &Path) -> Result<()> {
    path_problem(p).map_or(Ok(()), |reason| Err(invalid(field, reason)))
}

impl DomainSpec {
    /// A spec with the documented defaults.
    pub fn new(name: impl Into<String>, kind: DomainKind, kernel: impl Into<PathBuf>) -> Self {
        DomainSpec {
            name: name.into(),
            uuid: None,
            kind,
            memory_mib: 256,
            max_memory_mib: None,
            vcpus: 1,
            kernel: kernel.into(),
            ramdisk: None,
            cmdline: String::new(),
            on_poweroff: ShutdownAction::Destroy,
            on_reboot: ShutdownAction::Destroy,
            on_crash: ShutdownAction::Preserve,
            disks: Vec::new(),
        }
    }

    /// `max_memory_mib`, defaulted to `memory_mib`.
    pub fn effective_max_memory_mib(&self) -> u64 {
        self.max_memory_mib.unwrap_or(self.memory_mib)
    }

    /// Check every field; the error names the first offending field
    /// ([`Error::InvalidDomainSpec`]). Does not touch the filesystem (the
    /// kernel path is checked by libxl when the domain is built).
    pub fn validate(&self) -> Result<()> {
        let name = &self.name;
        if name.is_empty() {
            return Err(invalid(SpecField::Name, "must not be empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(invalid(SpecField::Name, format!("longer than {MAX_NAME_LEN} bytes")));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err(invalid(SpecField::Name, "may only contain ASCII letters, digits, '.', '_' and '-'"));
        }
        if name.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(SpecField::Name, "must not be all digits (it would read as a domid)"));
        }
        if name == "Domain-0" {
            return Err(invalid(SpecField::Name, "is reserved for dom0"));
        }
        if self.uuid.is_some_and(|u| u.0 == [0; 16]) {
            return Err(invalid(SpecField::Uuid, "must not be the nil UUID (use None to generate one)"));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(invalid(
                SpecField::MemoryMib,
                format!("{} MiB is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB", self.memory_mib),
            ));
        }
        if let Some(max) = self.max_memory_mib {
            if max > MAX_MEMORY_MIB {
                return Err(invalid(SpecField::MaxMemoryMib, format!("{max} MiB exceeds {MAX_MEMORY_MIB} MiB")));
            }
            if max < self.memory_mib {
                return Err(invalid(
                    SpecField::MaxMemoryMib,
                    format!("{max} MiB is below memory_mib ({} MiB)", self.memory_mib),
                ));
            }
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(invalid(SpecField::Vcpus, format!("{} is outside 1..={MAX_VCPUS}", self.vcpus)));
        }
        validate_path(SpecField::Kernel, &self.kernel)?;
        if let Some(rd) = &self.ramdisk {
            validate_path(SpecField::Ramdisk, rd)?;
        }
        if self.cmdline.len() > MAX_CMDLINE_LEN {
            return Err(invalid(SpecField::Cmdline, format!("longer than {MAX_CMDLINE_LEN} bytes")));
        }
        if self.cmdline.contains('\0') {
            return Err(invalid(SpecField::Cmdline, "must not contain NUL bytes"));
        }
        for (i, d) in self.disks.iter().enumerate() {
            validate_path(SpecField::DiskBackendPath(i), &d.backend_path)?;
            if let Some(reason) = crate::disk::vdev_problem(&d.vdev) {
                return Err(invalid(SpecField::DiskVdev(i), reason));
            }
            if self.disks[..i].iter().any(|o| o.vdev == d.vdev) {
                return Err(invalid(SpecField::DiskVdev(i), format!("{:?} is used by an earlier disk", d.vdev)));
            }
        }
        Ok(())
    }
}

/// `strdup` into libc's heap (what `*_dispose` frees), aborting like any
/// Rust allocation failure if libc is out of memory.
pub(crate) fn c_strdup(s: &CStr) -> *mut c_char {
    // SAFETY: s is a valid NUL-terminated string; strdup returns a malloc'd
    // copy or NULL.
    let p = unsafe { libc::strdup(s.as_ptr()) };
    if p.is_null() {
        std::alloc::handle_alloc_error(
            std::alloc::Layout::array::<u8>(s.to_bytes_with_nul().len()).unwrap_or(std::alloc::Layout::new::<u8>()),
        );
    }
    p
}

/// A validated string/path as a C string (validation rules out NULs; the
/// field is named anyway in case this is reached unvalidated).
fn c_string(field: SpecField, bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| invalid(field, "must not contain NUL bytes"))
}

/// `calloc` an `n`-element array for a config field that dispose `free()`s.
fn c_calloc<T>(n: usize) -> *mut T {
    // SAFETY: calloc has no preconditions; it returns zeroed memory or NULL.
    let p = unsafe { libc::calloc(n.max(1), std::mem::size_of::<T>()) }.cast::<T>();
    if p.is_null() {
        std::alloc::handle_alloc_error(std::alloc::Layout::new::<T>());
    }
    p
}

/// Build the `libxl_domain_config` for `spec` (validated first). Needs no
/// libxl context: the vCPU bitmap is allocated exactly as
/// `libxl_bitmap_alloc` would (`calloc` of `(n+7)/8` bytes) so it can be
/// built and inspected without Xen.
pub(crate) fn build_config(spec: &DomainSpec) -> Result<Idl<sys::libxl_domain_config>> {
    spec.validate()?;
    // Convert everything that can fail before touching the config.
    let name = c_string(SpecField::Name, spec.name.as_bytes())?;
    let kernel = c_string(SpecField::Kernel, spec.kernel.as_os_str().as_bytes())?;
    let ramdisk = spec.ramdisk.as_ref().map(|r| c_string(SpecField::Ramdisk, r.as_os_str().as_bytes())).transpose()?;
    let cmdline = c_string(SpecField::Cmdline, spec.cmdline.as_bytes())?;
    let disks = spec
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            Ok((
                c_string(SpecField::DiskBackendPath(i), d.backend_path.as_os_str().as_bytes())?,
                c_string(SpecField::DiskVdev(i), d.vdev.as_bytes())?,
                d.read_only,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let vcpus = usize::try_from(spec.vcpus).map_err(|_| invalid(SpecField::Vcpus, "out of range"))?;
    let vcpus_c = i32::try_from(spec.vcpus).map_err(|_| invalid(SpecField::Vcpus, "out of range"))?;
    let bitmap_bytes = vcpus.div_ceil(8);
    let bitmap_size = u32::try_from(bitmap_bytes).map_err(|_| invalid(SpecField::Vcpus, "out of range"))?;

    let mut cfg = Idl::<sys::libxl_domain_config>::new();
    // SAFETY: every pointer stored below is freshly allocated by libc
    // (strdup/calloc via c_strdup/c_calloc) and owned solely by the config,
    // which libxl_domain_config_dispose frees with free(); the disk array
    // is fully initialised (libxl_device_disk_init) before it and its count
    // are stored, and the bitmap size matches its allocation.
    unsafe {
        let c = cfg.as_mut();

        c.c_info.type_ = spec.kind.to_raw();
        c.c_info.name = c_strdup(&name);
        match spec.uuid {
            Some(u) => c.c_info.uuid.uuid = u.0,
            // libxl_uuid_generate (libuuid's uuid_generate) needs no ctx.
            None => sys::libxl_uuid_generate(&mut c.c_info.uuid),
        }

        // Selects the union member and sets its defaults; the config is
        // fresh, so b_info.type is still INVALID as init_type asserts.
        sys::libxl_domain_build_info_init_type(&mut c.b_info, spec.kind.to_raw());
        let b = &mut c.b_info;
        b.max_vcpus = vcpus_c;
        b.avail_vcpus.map = c_calloc::<u8>(bitmap_bytes);
        b.avail_vcpus.size = bitmap_size;
        for cpu in 0..vcpus_c {
            sys::libxl_bitmap_set(&mut b.avail_vcpus, cpu);
        }
        // Validated to at most MAX_MEMORY_MIB, so the KiB values fit.
        b.target_memkb = spec.memory_mib * 1024;
        b.max_memkb = spec.effective_max_memory_mib() * 1024;
        // The non-deprecated top-level fields (b_info.u.pv.kernel & co. are
        // only copied here by libxl when these are NULL); the same fields
        // serve PV and PVH direct kernel boot.
        b.kernel = c_strdup(&kernel);
        if let Some(rd) = &ramdisk {
            b.ramdisk = c_strdup(rd);
        }
        b.cmdline = c_strdup(&cmdline);

        c.on_poweroff = spec.on_poweroff.to_raw();
        c.on_reboot = spec.on_reboot.to_raw();
        c.on_crash = spec.on_crash.to_raw();
        c.on_watchdog = spec.on_crash.to_raw();
        // xl's default: a guest-requested soft reset is honoured.
        c.on_soft_reset = sys::LIBXL_ACTION_ON_SHUTDOWN_SOFT_RESET;

        if !disks.is_empty() {
            let n = disks.len();
            let arr = c_calloc::<sys::libxl_device_disk>(n);
            for (i, (path, vdev, read_only)) in disks.iter().enumerate() {
                crate::disk::init_phy_disk(arr.add(i), path, vdev, *read_only);
            }
            c.disks = arr;
            // n <= disks of a validated spec; vdev names bound it far below
            // i32::MAX (26^3 + 26^2 + 26).
            c.num_disks = i32::try_from(n).unwrap_or(i32::MAX);
        }
    }
    Ok(cfg)
}

/// Refuse dom0 and the reserved domids for operations that only make sense
/// on guests (libxl would happily start tearing down dom0's devices).
pub(crate) fn check_guest(domid: u32, op: &'static str) -> Result<()> {
    if domid == 0 || domid > DOMID_MAX {
        return Err(Error::NotAGuestDomain { domid, op });
    }
    Ok(())
}

impl Libxl {
    /// Create the domain described by `spec` and return its domid. The
    /// domain is left **paused**; call [`Libxl::domain_unpause`] to start
    /// it.
    ///
    /// Synchronous: blocks while libxl builds the domain (loads the kernel,
    /// runs hotplug scripts for disks). On failure libxl has already
    /// destroyed whatever it had created. libxl collapses most causes into
    /// `ERROR_FAIL` (a missing kernel file, a name already in use, a
    /// hotplug script timing out); the reason is in the libxl log
    /// (`tracing` target [`crate::logger::TARGET`]).
    pub fn domain_create(&mut self, spec: &DomainSpec) -> Result<u32> {
        let mut cfg = build_config(spec)?;
        let mut domid: u32 = u32::MAX; // INVALID_DOMID
        let start = Instant::now();
        // SAFETY: ctx valid (owned by self, used on its thread); cfg is an
        // initialised config holding only libc-allocated pointers, which
        // libxl may fill in further (defaults) and which cfg's Drop
        // disposes; domid is a valid out-pointer; ao_how = NULL makes the
        // call synchronous and aop_console_how = NULL requests no console
        // progress callback.
        let rc = unsafe {
            sys::libxl_domain_create_new(
                self.as_ptr(),
                cfg.as_mut_ptr(),
                &mut domid,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        let elapsed = start.elapsed();
        LibxlError::check(rc).map_err(|code| Error::DomainCreate { name: spec.name.clone(), code })?;
        tracing::info!(domid, name = %spec.name, kind = ?spec.kind, ?elapsed, "domain created (paused)");
        Ok(domid)
    }

    /// Unpause a domain (start a freshly created one). An unknown domid
    /// gives [`Error::DomainUnpause`] with `ERROR_FAIL`.
    pub fn domain_unpause(&mut self, domid: u32) -> Result<()> {
        check_guest(domid, "unpause")?;
        // SAFETY: ctx valid; ao_how = NULL (synchronous).
        let rc = unsafe { sys::libxl_domain_unpause(self.as_ptr(), domid, std::ptr::null()) };
        LibxlError::check(rc).map_err(|code| Error::DomainUnpause { domid, code })
    }

    /// Pause a running domain.
    pub fn domain_pause(&mut self, domid: u32) -> Result<()> {
        check_guest(domid, "pause")?;
        // SAFETY: ctx valid; ao_how = NULL (synchronous).
        let rc = unsafe { sys::libxl_domain_pause(self.as_ptr(), domid, std::ptr::null()) };
        LibxlError::check(rc).map_err(|code| Error::DomainPause { domid, code })
    }

    /// Ask the guest to power off (`control/shutdown = "poweroff"` in
    /// xenstore). Returns once the guest kernel has acknowledged the
    /// request; fails with `ERROR_TIMEDOUT` after 60 s without
    /// acknowledgement (e.g. the domain is paused or its kernel has no
    /// xenbus). The domain itself shuts down later: watch
    /// [`Libxl::domain_info`]. An unknown domid gives
    /// [`Error::DomainShutdown`] with `ERROR_FAIL`.
    ///
    /// What the guest does with the request is up to its kernel: Linux
    /// runs `/sbin/poweroff` through a usermode helper once booted (a zone
    /// init that wants to honour it must provide that, or set
    /// `kernel.poweroff_cmd`), and forces the power-off itself only while
    /// still booting. A `reboot` request instead becomes SIGINT to init
    /// (Ctrl-Alt-Del).
    pub fn domain_shutdown(&mut self, domid: u32) -> Result<()> {
        check_guest(domid, "shut down")?;
        // SAFETY: ctx valid; ao_how = NULL (synchronous).
        let rc = unsafe { sys::libxl_domain_shutdown(self.as_ptr(), domid, std::ptr::null()) };
        LibxlError::check(rc).map_err(|code| Error::DomainShutdown { domid, code })
    }

    /// Destroy a domain immediately (whatever its state) and remove its
    /// devices and xenstore entries. An unknown domid gives
    /// [`Error::DomainDestroy`] with `ERROR_DOMAIN_NOTFOUND`; dom0 and the
    /// reserved ids are refused with [`Error::NotAGuestDomain`] (libxl would
    /// start removing dom0's devices before Xen refused).
    pub fn domain_destroy(&mut self, domid: u32) -> Result<()> {
        check_guest(domid, "destroy")?;
        // SAFETY: ctx valid; ao_how = NULL (synchronous).
        let rc = unsafe { sys::libxl_domain_destroy(self.as_ptr(), domid, std::ptr::null()) };
        LibxlError::check(rc).map_err(|code| Error::DomainDestroy { domid, code })
    }
}

impl LibxlWorker {
    /// [`Libxl::domain_create`] on the worker. The domain is left paused.
    pub async fn domain_create(&self, spec: DomainSpec) -> Result<u32> {
        self.call(move |ctx| ctx.domain_create(&spec)).await?
    }

    /// [`Libxl::domain_unpause`] on the worker.
    pub async fn domain_unpause(&self, domid: u32) -> Result<()> {
        self.call(move |ctx| ctx.domain_unpause(domid)).await?
    }

    /// [`Libxl::domain_pause`] on the worker.
    pub async fn domain_pause(&self, domid: u32) -> Result<()> {
        self.call(move |ctx| ctx.domain_pause(domid)).await?
    }

    /// [`Libxl::domain_shutdown`] on the worker (occupies the worker until
    /// the guest acknowledges, up to 60 s).
    pub async fn domain_shutdown(&self, domid: u32) -> Result<()> {
        self.call(move |ctx| ctx.domain_shutdown(domid)).await?
    }

    /// [`Libxl::domain_destroy`] on the worker.
    pub async fn domain_destroy(&self, domid: u32) -> Result<()> {
        self.call(move |ctx| ctx.domain_destroy(domid)).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DomainSpec {
        DomainSpec {
            memory_mib: 64,
            cmdline: "console=hvc0".into(),
            ..DomainSpec::new("zone-a", DomainKind::Pv, "/usr/lib/bulkhead/zone/kernel")
        }
    }

    fn field_of(r: Result<()>) -> Option<SpecField> {
        match r {
            Err(Error::InvalidDomainSpec { field, .. }) => Some(field),
            _ => None,
        }
    }

    /// Read a config string field back (NULL -> None).
    fn cs(p: *const c_char) -> Option<String> {
        // SAFETY: config string fields are NULL or strdup'd NUL-terminated
        // strings owned by the config, which outlives this call.
        unsafe { crate::cstr::bounded_c_str(p, 8192) }
    }

    #[test]
    fn defaults_are_documented_ones() {
        let d = DomainSpec::new("z", DomainKind::Pvh, "/k");
        assert_eq!((d.vcpus, d.memory_mib, d.max_memory_mib), (1, 256, None));
        assert_eq!(d.on_poweroff, ShutdownAction::Destroy);
        assert_eq!(d.on_reboot, ShutdownAction::Destroy);
        assert_eq!(d.on_crash, ShutdownAction::Preserve);
        assert!(d.uuid.is_none() && d.ramdisk.is_none() && d.disks.is_empty());
        assert_eq!(d.effective_max_memory_mib(), 256);
        assert!(d.validate().is_ok());
    }

    type Mutation = Box<dyn Fn(&mut DomainSpec)>;

    #[test]
    fn validation_names_the_field() {
        use SpecField::*;
        let cases: Vec<(Mutation, SpecField)> = vec![
            (Box::new(|s| s.name = String::new()), Name),
            (Box::new(|s| s.name = "a b".into()), Name),
            (Box::new(|s| s.name = "zone/1".into()), Name),
            (Box::new(|s| s.name = "12".into()), Name),
            (Box::new(|s| s.name = "Domain-0".into()), Name),
            (Box::new(|s| s.name = "x".repeat(MAX_NAME_LEN + 1)), Name),
            (Box::new(|s| s.uuid = Some(crate::Uuid([0; 16]))), SpecField::Uuid),
            (Box::new(|s| s.memory_mib = 0), MemoryMib),
            (Box::new(|s| s.memory_mib = MIN_MEMORY_MIB - 1), MemoryMib),
            (Box::new(|s| s.memory_mib = MAX_MEMORY_MIB + 1), MemoryMib),
            (Box::new(|s| s.max_memory_mib = Some(32)), MaxMemoryMib),
            (Box::new(|s| s.max_memory_mib = Some(u64::MAX)), MaxMemoryMib),
            (Box::new(|s| s.vcpus = 0), Vcpus),
            (Box::new(|s| s.vcpus = MAX_VCPUS + 1), Vcpus),
            (Box::new(|s| s.kernel = PathBuf::new()), Kernel),
            (Box::new(|s| s.kernel = "vmlinux".into()), Kernel),
            (Box::new(|s| s.ramdisk = Some("initrd".into())), Ramdisk),
            (Box::new(|s| s.cmdline = "a\0b".into()), Cmdline),
            (Box::new(|s| s.cmdline = "x".repeat(MAX_CMDLINE_LEN + 1)), Cmdline),
            (
                Box::new(|s| {
                    s.disks = vec![DiskSpec { backend_path: "dev/x".into(), vdev: "xvda".into(), read_only: false }]
                }),
                DiskBackendPath(0),
            ),
            (
                Box::new(|s| {
                    s.disks = vec![
                        DiskSpec { backend_path: "/dev/a".into(), vdev: "xvda".into(), read_only: false },
                        DiskSpec { backend_path: "/dev/b".into(), vdev: "sda".into(), read_only: false },
                    ]
                }),
                DiskVdev(1),
            ),
            (
                Box::new(|s| {
                    s.disks = vec![
                        DiskSpec { backend_path: "/dev/a".into(), vdev: "xvdb".into(), read_only: false },
                        DiskSpec { backend_path: "/dev/b".into(), vdev: "xvdb".into(), read_only: true },
                    ]
                }),
                DiskVdev(1),
            ),
            (
                Box::new(|s| {
                    s.disks = vec![DiskSpec { backend_path: "/dev/a".into(), vdev: "xvd".into(), read_only: false }]
                }),
                DiskVdev(0),
            ),
        ];
        for (i, (mutate, want)) in cases.iter().enumerate() {
            let mut s = spec();
            mutate(&mut s);
            assert_eq!(field_of(s.validate()), Some(*want), "case {i}: {s:?}");
            assert!(build_config(&s).is_err(), "case {i}: build_config must validate");
        }
        let mut ok = spec();
        ok.max_memory_mib = Some(64);
        ok.vcpus = MAX_VCPUS;
        ok.name = "zone-1.a_b".into();
        ok.disks = vec![DiskSpec { backend_path: "/dev/a".into(), vdev: "xvdaa".into(), read_only: true }];
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn validation_error_message() {
        let mut s = spec();
        s.vcpus = 0;
        let e = s.validate().err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("invalid domain spec: vcpus: 0 is outside 1..=128"));
        assert_eq!(SpecField::DiskVdev(2).to_string(), "disks[2].vdev");
    }

    #[test]
    fn pv_config_fields_read_back() -> anyhow::Result<()> {
        let mut s = spec();
        s.uuid = Some(Uuid([0xab; 16]));
        s.vcpus = 11;
        s.max_memory_mib = Some(128);
        s.ramdisk = Some("/usr/lib/bulkhead/zone/initrd".into());
        s.on_poweroff = ShutdownAction::Destroy;
        s.on_reboot = ShutdownAction::Restart;
        s.on_crash = ShutdownAction::CoredumpDestroy;
        let cfg = build_config(&s)?;
        let c = &cfg.c_info;
        assert_eq!(c.type_, sys::LIBXL_DOMAIN_TYPE_PV);
        assert_eq!(cs(c.name).as_deref(), Some("zone-a"));
        assert_eq!(c.uuid.uuid, [0xab; 16]);
        let b = &cfg.b_info;
        assert_eq!(b.type_, sys::LIBXL_DOMAIN_TYPE_PV);
        assert_eq!(b.max_vcpus, 11);
        assert_eq!(b.avail_vcpus.size, 2, "11 bits round up to 2 bytes");
        for bit in 0..16 {
            // SAFETY: the bitmap is allocated with `size` bytes; bits past
            // size*8 are not queried (libxl_bitmap_test also bounds-checks).
            let set = unsafe { sys::libxl_bitmap_test(&b.avail_vcpus, bit) } != 0;
            assert_eq!(set, bit < 11, "vcpu bit {bit}");
        }
        // SAFETY: as above.
        assert_eq!(unsafe { sys::libxl_bitmap_count_set(&b.avail_vcpus) }, 11);
        assert_eq!(b.target_memkb, 64 * 1024);
        assert_eq!(b.max_memkb, 128 * 1024);
        assert_eq!(cs(b.kernel).as_deref(), Some("/usr/lib/bulkhead/zone/kernel"));
        assert_eq!(cs(b.ramdisk).as_deref(), Some("/usr/lib/bulkhead/zone/initrd"));
        assert_eq!(cs(b.cmdline).as_deref(), Some("console=hvc0"));
        // The deprecated PV copies stay unset.
        // SAFETY: type is PV, so `u.pv` is the active union member.
        let pv = unsafe { &b.u.pv };
        assert!(pv.kernel.is_null() && pv.ramdisk.is_null() && pv.cmdline.is_null());
        // init_type(PV) defaulted slack_memkb to LIBXL_MEMKB_DEFAULT.
        assert_eq!(pv.slack_memkb, u64::MAX);
        assert_eq!(cfg.on_poweroff, sys::LIBXL_ACTION_ON_SHUTDOWN_DESTROY);
        assert_eq!(cfg.on_reboot, sys::LIBXL_ACTION_ON_SHUTDOWN_RESTART);
        assert_eq!(cfg.on_crash, sys::LIBXL_ACTION_ON_SHUTDOWN_COREDUMP_DESTROY);
        assert_eq!(cfg.on_watchdog, sys::LIBXL_ACTION_ON_SHUTDOWN_COREDUMP_DESTROY);
        assert_eq!(cfg.on_soft_reset, sys::LIBXL_ACTION_ON_SHUTDOWN_SOFT_RESET);
        assert_eq!(cfg.num_disks, 0);
        assert!(cfg.disks.is_null());
        Ok(())
    }

    #[test]
    fn pvh_config_and_generated_uuid() -> anyhow::Result<()> {
        let mut s = spec();
        s.kind = DomainKind::Pvh;
        s.cmdline = String::new();
        let a = build_config(&s)?;
        let b = build_config(&s)?;
        assert_eq!(a.c_info.type_, sys::LIBXL_DOMAIN_TYPE_PVH);
        assert_eq!(a.b_info.type_, sys::LIBXL_DOMAIN_TYPE_PVH);
        assert_ne!(a.c_info.uuid.uuid, [0; 16], "uuid generated");
        assert_ne!(a.c_info.uuid.uuid, b.c_info.uuid.uuid, "a fresh uuid per config");
        // SAFETY: the uuid is a plain value inside the config.
        assert_eq!(unsafe { sys::libxl_uuid_is_nil(&a.c_info.uuid) }, 0);
        // SAFETY: type is PVH, so `u.pvh` is the active union member.
        let pvh = unsafe { &a.b_info.u.pvh };
        assert!(pvh.pvshim_path.is_null());
        assert_eq!(cs(a.b_info.cmdline).as_deref(), Some(""));
        assert!(a.b_info.ramdisk.is_null());
        assert_eq!(a.b_info.avail_vcpus.size, 1);
        assert_eq!(a.on_crash, sys::LIBXL_ACTION_ON_SHUTDOWN_PRESERVE);
        Ok(())
    }

    #[test]
    fn disks_are_built_and_disposed() -> anyhow::Result<()> {
        let mut s = spec();
        s.disks = vec![
            DiskSpec { backend_path: "/dev/vg/zone-a-root".into(), vdev: "xvda".into(), read_only: true },
            DiskSpec { backend_path: "/dev/vg/zone-a-data".into(), vdev: "xvdb".into(), read_only: false },
        ];
        let cfg = build_config(&s)?;
        assert_eq!(cfg.num_disks, 2);
        // SAFETY: disks points to num_disks initialised entries.
        let disks = unsafe { std::slice::from_raw_parts(cfg.disks, 2) };
        assert_eq!(cs(disks[0].pdev_path).as_deref(), Some("/dev/vg/zone-a-root"));
        assert_eq!(cs(disks[0].vdev).as_deref(), Some("xvda"));
        assert_eq!(disks[0].readwrite, 0);
        assert_eq!(cs(disks[1].vdev).as_deref(), Some("xvdb"));
        assert_eq!(disks[1].readwrite, 1);
        for d in disks {
            assert_eq!(d.backend, sys::LIBXL_DISK_BACKEND_PHY);
            assert_eq!(d.format, sys::LIBXL_DISK_FORMAT_RAW);
            assert_eq!(d.backend_domid, 0);
            assert_eq!(d.is_cdrom, 0);
            assert!(d.script.is_null());
        }
        drop(cfg); // dispose frees both disks' strings and the array
        Ok(())
    }

    #[test]
    fn shutdown_action_round_trips() {
        use ShutdownAction::*;
        for a in [Destroy, Restart, Preserve, CoredumpDestroy, CoredumpRestart] {
            assert_eq!(ShutdownAction::from_raw(a.to_raw()), Some(a));
            // SAFETY: libxl's enum-to-string lookup; returns a static string
            // or NULL.
            let name = cs(unsafe { sys::libxl_action_on_shutdown_to_string(a.to_raw()) });
            assert!(name.is_some(), "{a:?} is a valid libxl action");
        }
        assert_eq!(ShutdownAction::from_raw(sys::LIBXL_ACTION_ON_SHUTDOWN_SOFT_RESET), None);
        assert_eq!(ShutdownAction::from_raw(0), None);
    }

    #[test]
    fn dom0_and_reserved_ids_are_refused() {
        assert!(matches!(check_guest(0, "destroy"), Err(Error::NotAGuestDomain { domid: 0, op: "destroy" })));
        assert!(matches!(check_guest(0x7FF0, "pause"), Err(Error::NotAGuestDomain { .. })));
        assert!(matches!(check_guest(u32::MAX, "pause"), Err(Error::NotAGuestDomain { .. })));
        assert!(check_guest(1, "pause").is_ok());
        assert!(check_guest(DOMID_MAX, "pause").is_ok());
        let e = Error::NotAGuestDomain { domid: 0, op: "destroy" };
        assert_eq!(e.to_string(), "refusing to destroy domain 0: not a guest domain");
    }
}

#[cfg(test)]
pub(crate) mod live_tests;
