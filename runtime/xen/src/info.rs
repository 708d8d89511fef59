//! Read-only host and domain information from libxl, copied into owned Rust
//! types at the boundary.

use std::fmt;
use std::ptr::NonNull;

use bulkhead_xen_sys as sys;

use crate::cstr::bounded_c_str;
use crate::error::{Error, LibxlError, Result};
use crate::libxl::{Idl, Libxl, LibxlWorker};

/// Xen page size (x86: 4 KiB; `XC_PAGE_SIZE`).
pub const PAGE_SIZE: u64 = sys::XC_PAGE_SIZE as u64;

/// Longest string copied out of `libxl_version_info` (Xen's command line is
/// limited to 1024 bytes; the other fields are far shorter).
const VERSION_STRING_MAX: usize = 4096;

/// Hypervisor build information (`libxl_version_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub major: i32,
    pub minor: i32,
    /// e.g. `".7"` or `"-unstable"`.
    pub extra: String,
    pub compiler: String,
    pub compile_by: String,
    pub compile_domain: String,
    pub compile_date: String,
    /// Space-separated guest ABIs, e.g. `"xen-3.0-x86_64 hvm-3.0-x86_32 ..."`.
    pub capabilities: String,
    pub changeset: String,
    pub virt_start: u64,
    pub pagesize: i32,
    /// Xen's own command line.
    pub commandline: String,
    pub build_id: String,
}

impl VersionInfo {
    /// `"4.17.7"`-style version string.
    pub fn version(&self) -> String {
        format!("{}.{}{}", self.major, self.minor, self.extra)
    }

    /// Copy out of libxl's struct.
    ///
    /// # Safety
    /// Every `char *` field of `raw` must be NULL or a valid NUL-terminated
    /// string for the duration of the call.
    unsafe fn from_raw(raw: &sys::libxl_version_info) -> Self {
        // SAFETY: forwarded from this function's contract.
        let s = |p| unsafe { bounded_c_str(p, VERSION_STRING_MAX) }.unwrap_or_default();
        VersionInfo {
            major: raw.xen_version_major,
            minor: raw.xen_version_minor,
            extra: s(raw.xen_version_extra),
            compiler: s(raw.compiler),
            compile_by: s(raw.compile_by),
            compile_domain: s(raw.compile_domain),
            compile_date: s(raw.compile_date),
            capabilities: s(raw.capabilities),
            changeset: s(raw.changeset),
            virt_start: raw.virt_start,
            pagesize: raw.pagesize,
            commandline: s(raw.commandline),
            build_id: s(raw.build_id),
        }
    }
}

/// Host capability flags from `libxl_physinfo` (Xen 4.17 set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhysCaps {
    /// HVM guests supported.
    pub hvm: bool,
    /// PV guests supported (Xen built with CONFIG_PV).
    pub pv: bool,
    /// Direct I/O (PCI passthrough) for HVM guests.
    pub hvm_directio: bool,
    /// Hardware-assisted paging (EPT/NPT).
    pub hap: bool,
    /// Shadow paging available.
    pub shadow: bool,
    /// IOMMU shares page tables with HAP.
    pub iommu_hap_pt_share: bool,
    /// Processor trace for guests.
    pub vmtrace: bool,
    /// Virtual PMU.
    pub vpmu: bool,
    /// Grant table v1 available.
    pub gnttab_v1: bool,
    /// Grant table v2 available.
    pub gnttab_v2: bool,
}

impl PhysCaps {
    /// Names of the set flags, in declaration order, e.g. `["hvm", "pv"]`.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.hvm, "hvm"),
            (self.pv, "pv"),
            (self.hvm_directio, "hvm_directio"),
            (self.hap, "hap"),
            (self.shadow, "shadow"),
            (self.iommu_hap_pt_share, "iommu_hap_pt_share"),
            (self.vmtrace, "vmtrace"),
            (self.vpmu, "vpmu"),
            (self.gnttab_v1, "gnttab_v1"),
            (self.gnttab_v2, "gnttab_v2"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }
}

/// Host physical information (`libxl_physinfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysInfo {
    pub threads_per_core: u32,
    pub cores_per_socket: u32,
    pub max_cpu_id: u32,
    /// Online physical CPUs.
    pub nr_cpus: u32,
    pub cpu_khz: u32,
    pub total_pages: u64,
    pub free_pages: u64,
    pub scrub_pages: u64,
    pub outstanding_pages: u64,
    pub sharing_freed_pages: u64,
    pub sharing_used_frames: u64,
    pub max_possible_mfn: u64,
    pub nr_nodes: u32,
    /// Raw `hw_cap` words (CPUID feature leaves as Xen reports them).
    pub hw_cap: [u32; 8],
    pub caps: PhysCaps,
}

impl PhysInfo {
    /// Total host memory in KiB.
    pub fn total_memory_kib(&self) -> u64 {
        self.total_pages.saturating_mul(PAGE_SIZE / 1024)
    }

    /// Memory not allocated to any domain (what a new zone can get), in KiB.
    pub fn free_memory_kib(&self) -> u64 {
        self.free_pages.saturating_mul(PAGE_SIZE / 1024)
    }

    fn from_raw(raw: &sys::libxl_physinfo) -> Self {
        PhysInfo {
            threads_per_core: raw.threads_per_core,
            cores_per_socket: raw.cores_per_socket,
            max_cpu_id: raw.max_cpu_id,
            nr_cpus: raw.nr_cpus,
            cpu_khz: raw.cpu_khz,
            total_pages: raw.total_pages,
            free_pages: raw.free_pages,
            scrub_pages: raw.scrub_pages,
            outstanding_pages: raw.outstanding_pages,
            sharing_freed_pages: raw.sharing_freed_pages,
            sharing_used_frames: raw.sharing_used_frames,
            max_possible_mfn: raw.max_possible_mfn,
            nr_nodes: raw.nr_nodes,
            hw_cap: raw.hw_cap,
            caps: PhysCaps {
                hvm: raw.cap_hvm,
                pv: raw.cap_pv,
                hvm_directio: raw.cap_hvm_directio,
                hap: raw.cap_hap,
                shadow: raw.cap_shadow,
                iommu_hap_pt_share: raw.cap_iommu_hap_pt_share,
                vmtrace: raw.cap_vmtrace,
                vpmu: raw.cap_vpmu,
                gnttab_v1: raw.cap_gnttab_v1,
                gnttab_v2: raw.cap_gnttab_v2,
            },
        }
    }
}

/// A domain UUID (`libxl_uuid`, big-endian octets).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(pub [u8; 16]);

impl fmt::Display for Uuid {
    /// `LIBXL_UUID_FMT`: `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}

/// Why a domain shut down (`libxl_shutdown_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShutdownReason {
    Poweroff,
    Reboot,
    Suspend,
    Crash,
    Watchdog,
    SoftReset,
    /// `LIBXL_SHUTDOWN_REASON_UNKNOWN` or a code this crate does not know.
    Unknown(i32),
}

impl ShutdownReason {
    pub fn from_raw(raw: sys::libxl_shutdown_reason) -> Self {
        match raw {
            sys::LIBXL_SHUTDOWN_REASON_POWEROFF => Self::Poweroff,
            sys::LIBXL_SHUTDOWN_REASON_REBOOT => Self::Reboot,
            sys::LIBXL_SHUTDOWN_REASON_SUSPEND => Self::Suspend,
            sys::LIBXL_SHUTDOWN_REASON_CRASH => Self::Crash,
            sys::LIBXL_SHUTDOWN_REASON_WATCHDOG => Self::Watchdog,
            sys::LIBXL_SHUTDOWN_REASON_SOFT_RESET => Self::SoftReset,
            other => Self::Unknown(other),
        }
    }
}

/// Scheduling / lifecycle state flags of a domain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DomainState {
    pub running: bool,
    pub blocked: bool,
    pub paused: bool,
    pub shutdown: bool,
    pub dying: bool,
    /// Domain must never be stopped (xenstore stub domain).
    pub never_stop: bool,
    /// Set only when `shutdown` is.
    pub shutdown_reason: Option<ShutdownReason>,
}

impl DomainState {
    fn from_raw(raw: &sys::libxl_dominfo) -> Self {
        DomainState {
            running: raw.running,
            blocked: raw.blocked,
            paused: raw.paused,
            shutdown: raw.shutdown,
            dying: raw.dying,
            never_stop: raw.never_stop,
            shutdown_reason: raw.shutdown.then(|| ShutdownReason::from_raw(raw.shutdown_reason)),
        }
    }

    /// The six-character state column of `xl list`: `r` running,
    /// `b` blocked, `p` paused, `s` shut down (not crashed), `c` crashed,
    /// `d` dying; `-` for unset.
    pub fn xl_flags(&self) -> String {
        let crashed = self.shutdown_reason == Some(ShutdownReason::Crash);
        [
            (self.running, 'r'),
            (self.blocked, 'b'),
            (self.paused, 'p'),
            (self.shutdown && !crashed, 's'),
            (self.shutdown && crashed, 'c'),
            (self.dying, 'd'),
        ]
        .into_iter()
        .map(|(set, c)| if set { c } else { '-' })
        .collect()
    }
}

impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.xl_flags())
    }
}

/// PV, HVM or PVH (`libxl_domain_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DomainType {
    Pv,
    Hvm,
    Pvh,
    /// `LIBXL_DOMAIN_TYPE_INVALID` or unknown.
    Other(i32),
}

impl DomainType {
    pub fn from_raw(raw: sys::libxl_domain_type) -> Self {
        match raw {
            sys::LIBXL_DOMAIN_TYPE_PV => Self::Pv,
            sys::LIBXL_DOMAIN_TYPE_HVM => Self::Hvm,
            sys::LIBXL_DOMAIN_TYPE_PVH => Self::Pvh,
            other => Self::Other(other),
        }
    }

    /// Parse libxl's name for a type (`libxl_domain_type_to_string`: `"pv"`,
    /// `"hvm"`, `"pvh"`), as libxl writes it to `/libxl/<domid>/type`.
    pub fn from_libxl_name(name: &[u8]) -> Option<Self> {
        match name {
            b"pv" => Some(Self::Pv),
            b"hvm" => Some(Self::Hvm),
            b"pvh" => Some(Self::Pvh),
            _ => None,
        }
    }
}

/// One domain, as listed by `libxl_list_domain` (+ its name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    pub domid: u32,
    pub uuid: Uuid,
    /// From xenstore (`/local/domain/<id>/name`); `None` if the domain has
    /// no name entry (e.g. it vanished between listing and lookup).
    pub name: Option<String>,
    pub domain_type: DomainType,
    pub state: DomainState,
    pub current_memkb: u64,
    pub max_memkb: u64,
    pub outstanding_memkb: u64,
    pub shared_memkb: u64,
    pub paged_memkb: u64,
    /// Total CPU time consumed, in nanoseconds.
    pub cpu_time_ns: u64,
    /// Online vCPUs.
    pub vcpus_online: u32,
    /// Highest vCPU id (vCPU count - 1).
    pub vcpu_max_id: u32,
    pub cpupool: u32,
    pub ssidref: u32,
}

impl DomainInfo {
    /// Copy the plain fields out of a `libxl_dominfo` (no pointers are read).
    pub fn from_raw(raw: &sys::libxl_dominfo, name: Option<String>) -> Self {
        DomainInfo {
            domid: raw.domid,
            uuid: Uuid(raw.uuid.uuid),
            name,
            domain_type: DomainType::from_raw(raw.domain_type),
            state: DomainState::from_raw(raw),
            current_memkb: raw.current_memkb,
            max_memkb: raw.max_memkb,
            outstanding_memkb: raw.outstanding_memkb,
            shared_memkb: raw.shared_memkb,
            paged_memkb: raw.paged_memkb,
            cpu_time_ns: raw.cpu_time,
            vcpus_online: raw.vcpu_online,
            vcpu_max_id: raw.vcpu_max_id,
            cpupool: raw.cpupool,
            ssidref: raw.ssidref,
        }
    }
}

/// `libxl_list_domain`'s array, freed with `libxl_dominfo_list_free` on drop.
struct DominfoList {
    ptr: NonNull<sys::libxl_dominfo>,
    len: usize,
}

impl DominfoList {
    fn as_slice(&self) -> &[sys::libxl_dominfo] {
        // SAFETY: ptr/len come from a successful libxl_list_domain: an array
        // of len initialised libxl_dominfo owned by us until Drop.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for DominfoList {
    fn drop(&mut self) {
        // len was converted from the c_int libxl returned, so it fits.
        let n = i32::try_from(self.len).unwrap_or(i32::MAX);
        // SAFETY: the array and its count are exactly what libxl_list_domain
        // returned; freed once, here.
        unsafe { sys::libxl_dominfo_list_free(self.ptr.as_ptr(), n) }
    }
}

impl Libxl {
    /// Hypervisor version and build information.
    pub fn version_info(&mut self) -> Result<VersionInfo> {
        // SAFETY: the ctx is valid (owned by self). The returned struct is
        // cached inside the ctx and stays valid until the ctx is freed; we
        // copy it out before returning and never free it.
        let p = unsafe { sys::libxl_get_version_info(self.as_ptr()) };
        // SAFETY: p is NULL or points to the ctx-owned, fully initialised
        // libxl_version_info (see above).
        let raw = unsafe { p.as_ref() }.ok_or(Error::VersionInfo)?;
        // SAFETY: libxl fills the string fields with strdup'd strings or
        // NULL.
        Ok(unsafe { VersionInfo::from_raw(raw) })
    }

    /// Host CPUs, memory and virtualization capabilities.
    pub fn physinfo(&mut self) -> Result<PhysInfo> {
        let mut raw = Idl::<sys::libxl_physinfo>::new();
        // SAFETY: ctx valid; raw is an initialised libxl_physinfo that libxl
        // fills in and that is disposed by Idl's Drop.
        let rc = unsafe { sys::libxl_get_physinfo(self.as_ptr(), raw.as_mut_ptr()) };
        LibxlError::check(rc).map_err(Error::Physinfo)?;
        Ok(PhysInfo::from_raw(&raw))
    }

    /// The domain's name from xenstore, if it has one.
    pub fn domid_to_name(&mut self, domid: u32) -> Option<String> {
        // SAFETY: ctx valid. Returns a malloc'd string or NULL.
        let p = unsafe { sys::libxl_domid_to_name(self.as_ptr(), domid) };
        if p.is_null() {
            return None;
        }
        // SAFETY: p is a NUL-terminated string read from xenstore, hence at
        // most XENSTORE_PAYLOAD_MAX bytes.
        let name = unsafe { bounded_c_str(p, 4096) };
        // SAFETY: p was malloc'd by libxl for the caller to free; freed once.
        unsafe { libc::free(p.cast()) };
        name
    }

    /// All domains (including dom0), sorted by domid, with names.
    pub fn list_domains(&mut self) -> Result<Vec<DomainInfo>> {
        let mut n: std::ffi::c_int = -1;
        // SAFETY: ctx valid, n is a valid out-pointer.
        let p = unsafe { sys::libxl_list_domain(self.as_ptr(), &mut n) };
        let list = match (NonNull::new(p), usize::try_from(n)) {
            (Some(ptr), Ok(len)) => DominfoList { ptr, len },
            // libxl returns NULL with *nb set to 0 when there is nothing.
            (None, Ok(0)) => return Ok(Vec::new()),
            (Some(ptr), Err(_)) => {
                // Should not happen; free what we were given.
                drop(DominfoList { ptr, len: 0 });
                return Err(Error::DomainList);
            }
            (None, _) => return Err(Error::DomainList),
        };
        let mut out: Vec<DomainInfo> = list.as_slice().iter().map(|raw| DomainInfo::from_raw(raw, None)).collect();
        drop(list);
        for d in &mut out {
            d.name = self.domid_to_name(d.domid);
            self.refine_domain_type(d);
        }
        out.sort_by_key(|d| d.domid);
        Ok(out)
    }

    /// One domain's information ([`Error::DomainInfo`] with
    /// `ERROR_DOMAIN_NOTFOUND` if it does not exist).
    pub fn domain_info(&mut self, domid: u32) -> Result<DomainInfo> {
        let mut raw = Idl::<sys::libxl_dominfo>::new();
        // SAFETY: ctx valid; raw is an initialised libxl_dominfo disposed by
        // Idl's Drop (which frees ssid_label).
        let rc = unsafe { sys::libxl_domain_info(self.as_ptr(), raw.as_mut_ptr(), domid) };
        LibxlError::check(rc).map_err(|code| Error::DomainInfo { domid, code })?;
        let name = self.domid_to_name(domid);
        let mut info = DomainInfo::from_raw(&raw, name);
        self.refine_domain_type(&mut info);
        Ok(info)
    }

    /// `libxl_dominfo.domain_type` comes from Xen's domctl flags, which only
    /// say "HVM container or not": a PVH guest is reported as HVM. libxl
    /// records the configured type at `/libxl/<domid>/type` when it creates
    /// a domain; use that to tell PVH from HVM (domains libxl did not
    /// create keep the domctl answer).
    fn refine_domain_type(&mut self, info: &mut DomainInfo) {
        if info.domain_type != DomainType::Hvm {
            return;
        }
        let path = format!("/libxl/{}/type", info.domid);
        let Some(xs) = self.xenstore() else { return };
        match xs.try_read(&path) {
            Ok(Some(v)) => {
                if let Some(t) = DomainType::from_libxl_name(&v) {
                    info.domain_type = t;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, %path, "reading the libxl domain type failed"),
        }
    }
}

impl LibxlWorker {
    /// [`Libxl::version_info`] on the worker.
    pub async fn version_info(&self) -> Result<VersionInfo> {
        self.call(|ctx| ctx.version_info()).await?
    }

    /// [`Libxl::physinfo`] on the worker.
    pub async fn physinfo(&self) -> Result<PhysInfo> {
        self.call(|ctx| ctx.physinfo()).await?
    }

    /// [`Libxl::list_domains`] on the worker.
    pub async fn list_domains(&self) -> Result<Vec<DomainInfo>> {
        self.call(|ctx| ctx.list_domains()).await?
    }

    /// [`Libxl::domain_info`] on the worker.
    pub async fn domain_info(&self, domid: u32) -> Result<DomainInfo> {
        self.call(move |ctx| ctx.domain_info(domid)).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_dominfo() -> Idl<sys::libxl_dominfo> {
        let mut raw = Idl::<sys::libxl_dominfo>::new();
        // SAFETY: only scalar fields are written; no pointers are stored.
        let r = unsafe { raw.as_mut() };
        r.domid = 5;
        r.uuid.uuid = [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        r.running = false;
        r.blocked = true;
        r.current_memkb = 262_144;
        r.max_memkb = 263_168;
        r.vcpu_online = 2;
        r.vcpu_max_id = 1;
        r.cpu_time = 1_500_000_000;
        r.domain_type = sys::LIBXL_DOMAIN_TYPE_PV;
        raw
    }

    #[test]
    fn uuid_formats_like_libxl() {
        let u = Uuid([0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
        assert_eq!(u.to_string(), "12345678-9abc-def0-0123-456789abcdef");
        assert_eq!(Uuid::default().to_string(), "00000000-0000-0000-0000-000000000000");
        assert_eq!(format!("{u:?}"), "Uuid(12345678-9abc-def0-0123-456789abcdef)");
    }

    #[test]
    fn dominfo_conversion() {
        let raw = raw_dominfo();
        let d = DomainInfo::from_raw(&raw, Some("zone-a".into()));
        assert_eq!(d.domid, 5);
        assert_eq!(d.name.as_deref(), Some("zone-a"));
        assert_eq!(d.uuid.to_string(), "12345678-9abc-def0-0123-456789abcdef");
        assert_eq!(d.domain_type, DomainType::Pv);
        assert_eq!(d.current_memkb, 262_144);
        assert_eq!(d.vcpus_online, 2);
        assert_eq!(d.cpu_time_ns, 1_500_000_000);
        assert!(d.state.blocked);
        assert_eq!(d.state.shutdown_reason, None);
        assert_eq!(d.state.xl_flags(), "-b----");
    }

    #[test]
    fn shutdown_reason_only_when_shut_down() {
        let mut raw = raw_dominfo();
        // SAFETY: scalar fields only.
        let r = unsafe { raw.as_mut() };
        r.shutdown_reason = sys::LIBXL_SHUTDOWN_REASON_CRASH;
        assert_eq!(DomainState::from_raw(r).shutdown_reason, None);
        r.shutdown = true;
        let st = DomainState::from_raw(r);
        assert_eq!(st.shutdown_reason, Some(ShutdownReason::Crash));
        assert_eq!(st.xl_flags(), "-b--c-");
        r.shutdown_reason = sys::LIBXL_SHUTDOWN_REASON_POWEROFF;
        r.dying = true;
        r.blocked = false;
        let st = DomainState::from_raw(r);
        assert_eq!(st.to_string(), "---s-d");
    }

    #[test]
    fn shutdown_reason_mapping() {
        use ShutdownReason::*;
        for (raw, want) in [
            (sys::LIBXL_SHUTDOWN_REASON_POWEROFF, Poweroff),
            (sys::LIBXL_SHUTDOWN_REASON_REBOOT, Reboot),
            (sys::LIBXL_SHUTDOWN_REASON_SUSPEND, Suspend),
            (sys::LIBXL_SHUTDOWN_REASON_CRASH, Crash),
            (sys::LIBXL_SHUTDOWN_REASON_WATCHDOG, Watchdog),
            (sys::LIBXL_SHUTDOWN_REASON_SOFT_RESET, SoftReset),
            (sys::LIBXL_SHUTDOWN_REASON_UNKNOWN, Unknown(-1)),
            (42, Unknown(42)),
        ] {
            assert_eq!(ShutdownReason::from_raw(raw), want);
        }
    }

    #[test]
    fn domain_type_from_libxl_names() {
        assert_eq!(DomainType::from_libxl_name(b"pvh"), Some(DomainType::Pvh));
        assert_eq!(DomainType::from_libxl_name(b"hvm"), Some(DomainType::Hvm));
        assert_eq!(DomainType::from_libxl_name(b"pv"), Some(DomainType::Pv));
        assert_eq!(DomainType::from_libxl_name(b"PVH"), None);
        assert_eq!(DomainType::from_libxl_name(b""), None);
    }

    #[test]
    fn xl_flags_all_set() {
        let st = DomainState {
            running: true,
            blocked: true,
            paused: true,
            shutdown: true,
            dying: true,
            never_stop: false,
            shutdown_reason: Some(ShutdownReason::Reboot),
        };
        assert_eq!(st.xl_flags(), "rbps-d");
        assert_eq!(DomainState::default().xl_flags(), "------");
    }

    #[test]
    fn physinfo_conversion_and_memory() {
        let mut raw = Idl::<sys::libxl_physinfo>::new();
        // SAFETY: scalar fields only.
        let r = unsafe { raw.as_mut() };
        r.nr_cpus = 2;
        r.total_pages = 262_144; // 1 GiB
        r.free_pages = 1024; // 4 MiB
        r.cap_pv = true;
        r.cap_hap = true;
        r.cap_hvm_directio = true;
        r.cap_gnttab_v1 = true;
        let p = PhysInfo::from_raw(r);
        assert_eq!(p.nr_cpus, 2);
        assert_eq!(p.total_memory_kib(), 1024 * 1024);
        assert_eq!(p.free_memory_kib(), 4096);
        assert!(p.caps.pv && p.caps.hap && p.caps.hvm_directio);
        assert!(!p.caps.hvm);
        assert_eq!(p.caps.names(), ["pv", "hvm_directio", "hap", "gnttab_v1"]);
    }

    #[test]
    fn version_info_conversion_tolerates_null_strings() {
        let mut raw = Idl::<sys::libxl_version_info>::new();
        // SAFETY: strdup'd (malloc) strings, freed by dispose; scalars.
        unsafe {
            let r = raw.as_mut();
            r.xen_version_major = 4;
            r.xen_version_minor = 17;
            r.xen_version_extra = libc::strdup(c".7".as_ptr());
            r.capabilities = libc::strdup(c"xen-3.0-x86_64 hvm-3.0-x86_64".as_ptr());
        }
        // SAFETY: fields are NULL or strdup'd strings.
        let v = unsafe { VersionInfo::from_raw(&raw) };
        assert_eq!(v.version(), "4.17.7");
        assert_eq!(v.capabilities, "xen-3.0-x86_64 hvm-3.0-x86_64");
        assert_eq!(v.compiler, "");
    }

    #[test]
    #[ignore = "needs xen"]
    fn read_host_and_domains() -> anyhow::Result<()> {
        let mut xl = Libxl::new()?;
        let v = xl.version_info()?;
        assert_eq!((v.major, v.minor), (4, 17));
        let p = xl.physinfo()?;
        assert!(p.nr_cpus >= 1);
        assert!(p.total_pages >= p.free_pages);
        let doms = xl.list_domains()?;
        let dom0 = doms.iter().find(|d| d.domid == 0);
        assert!(dom0.is_some_and(|d| d.name.as_deref() == Some("Domain-0")));
        let d0 = xl.domain_info(0)?;
        assert_eq!(d0.domid, 0);
        assert!(matches!(xl.domain_info(32_000), Err(Error::DomainInfo { domid: 32_000, .. })));
        Ok(())
    }

    #[test]
    #[ignore = "needs xen"]
    fn worker_reads() -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let xl = LibxlWorker::spawn()?;
        rt.block_on(async {
            let v = xl.version_info().await?;
            let p = xl.physinfo().await?;
            let d = xl.list_domains().await?;
            assert!(v.major >= 4 && p.nr_cpus >= 1 && !d.is_empty());
            Ok(())
        })
    }
}
