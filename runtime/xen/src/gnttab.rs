//! Grant-table mappings over libxengnttab (`/dev/xen/gntdev`).
//!
//! [`GrantTable::map_grant_ref`] and friends map pages another domain has
//! granted to us and return a [`GrantMapping`] that unmaps on drop. The
//! mapping is exposed as a bounded [`SharedMem`] region: memory the other
//! domain can change at any time, so it is only ever accessed through
//! volatile reads/writes or atomics, never through plain references.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64};

use bulkhead_xen_sys as sys;

use crate::error::{Error, Result, last_errno};
use crate::logger::TracingLogger;

/// Size of one grant (Xen page).
pub const GRANT_PAGE_SIZE: usize = sys::XC_PAGE_SIZE as usize;
/// Most pages one map call accepts here (16 MiB); the gntdev default limit
/// per handle is lower on some kernels, see [`GrantTable::set_max_grants`].
pub const MAX_MAP_PAGES: usize = 4096;

/// A grant reference (`grant_ref_t`).
pub type GrantRef = u32;

struct Handle {
    h: NonNull<sys::xengnttab_handle>,
    // Dropped after Drop::drop closed the handle.
    _logger: Box<TracingLogger>,
}

// SAFETY: on Linux the handle is {logger, fd, toolcore registration}; map
// and unmap are an ioctl plus mmap/munmap with call-local buffers
// (tools/libs/gnttab/linux.c), so concurrent use from several threads is
// fine and nothing is tied to the opening thread. The logger only forwards
// to `tracing`, which is thread-safe.
unsafe impl Send for Handle {}
// SAFETY: see above.
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: handle from xengnttab_open, closed once. Every mapping
        // holds an Arc<Handle>, so none is still mapped at this point.
        let r = unsafe { sys::xengnttab_close(self.h.as_ptr()) };
        if r < 0 {
            tracing::warn!(error = %last_errno(), "xengnttab_close failed");
        }
    }
}

/// An open grant-table device. Cheap to clone (shared handle); the handle
/// closes when the last clone and the last mapping are gone.
#[derive(Clone)]
pub struct GrantTable {
    inner: Arc<Handle>,
}

impl std::fmt::Debug for GrantTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantTable").field("handle", &self.inner.h).finish()
    }
}

impl GrantTable {
    /// Open `/dev/xen/gntdev`.
    pub fn open() -> Result<Self> {
        let logger = TracingLogger::new();
        // SAFETY: logger outlives the handle (stored with it and dropped
        // after close); flags 0 = defaults.
        let h = unsafe { sys::xengnttab_open(logger.as_ptr(), 0) };
        let h = NonNull::new(h).ok_or_else(|| Error::GnttabOpen(last_errno()))?;
        Ok(GrantTable { inner: Arc::new(Handle { h, _logger: logger }) })
    }

    /// Raise the number of grants this handle may map at once (no-op on
    /// current Linux kernels, which size this dynamically).
    pub fn set_max_grants(&self, count: u32) -> Result<()> {
        // SAFETY: handle valid while self holds the Arc.
        let r = unsafe { sys::xengnttab_set_max_grants(self.inner.h.as_ptr(), count) };
        if r < 0 { Err(Error::GnttabSetMaxGrants { count, source: last_errno() }) } else { Ok(()) }
    }

    /// Map one page granted by `domid`.
    pub fn map_grant_ref(&self, domid: u32, gref: GrantRef, writable: bool) -> Result<GrantMapping> {
        // SAFETY: handle valid; returns a fresh mapping of one page or NULL.
        let p = unsafe { sys::xengnttab_map_grant_ref(self.inner.h.as_ptr(), domid, gref, prot(writable)) };
        self.finish_map(p, 1, domid, gref, writable)
    }

    /// Map several pages, each `(domid, ref)`, contiguously. All or nothing.
    pub fn map_grant_refs(&self, grants: &[(u32, GrantRef)], writable: bool) -> Result<GrantMapping> {
        let (first_domid, first_ref) = grants.first().copied().unwrap_or((0, 0));
        let count = check_count(grants.len(), first_domid, first_ref)?;
        let mut domids: Vec<u32> = grants.iter().map(|g| g.0).collect();
        let mut refs: Vec<u32> = grants.iter().map(|g| g.1).collect();
        // SAFETY: handle valid; domids and refs each hold `count` entries
        // and are only read during the call.
        let p = unsafe {
            sys::xengnttab_map_grant_refs(
                self.inner.h.as_ptr(),
                count,
                domids.as_mut_ptr(),
                refs.as_mut_ptr(),
                prot(writable),
            )
        };
        self.finish_map(p, count, first_domid, first_ref, writable)
    }

    /// Map several pages all granted by `domid`, contiguously.
    pub fn map_domain_grant_refs(&self, domid: u32, refs: &[GrantRef], writable: bool) -> Result<GrantMapping> {
        let first_ref = refs.first().copied().unwrap_or(0);
        let count = check_count(refs.len(), domid, first_ref)?;
        let mut refs = refs.to_vec();
        // SAFETY: handle valid; refs holds `count` entries, only read.
        let p = unsafe {
            sys::xengnttab_map_domain_grant_refs(self.inner.h.as_ptr(), count, domid, refs.as_mut_ptr(), prot(writable))
        };
        self.finish_map(p, count, domid, first_ref, writable)
    }

    fn finish_map(
        &self,
        p: *mut c_void,
        pages: u32,
        first_domid: u32,
        first_ref: u32,
        writable: bool,
    ) -> Result<GrantMapping> {
        let addr = NonNull::new(p).ok_or_else(|| Error::GnttabMap {
            count: pages as usize,
            first_domid,
            first_ref,
            source: last_errno(),
        })?;
        Ok(GrantMapping { gt: self.inner.clone(), addr, pages, writable })
    }
}

fn prot(writable: bool) -> i32 {
    if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ }
}

fn check_count(n: usize, first_domid: u32, first_ref: u32) -> Result<u32> {
    if n == 0 || n > MAX_MAP_PAGES {
        return Err(Error::GnttabMap {
            count: n,
            first_domid,
            first_ref,
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("need 1..={MAX_MAP_PAGES} grants")),
        });
    }
    // n <= MAX_MAP_PAGES fits in u32.
    Ok(n as u32)
}

/// Pages of another domain mapped into our address space; unmapped on drop.
///
/// `Send` but not `Sync` (accessors take `&self` and write through volatile
/// stores; keep concurrent access to one thread, or use the atomics).
pub struct GrantMapping {
    gt: Arc<Handle>,
    addr: NonNull<c_void>,
    pages: u32,
    writable: bool,
}

// SAFETY: the mapping is plain process memory plus a handle that is itself
// Send + Sync; unmapping from another thread is fine. Not Sync, see above.
unsafe impl Send for GrantMapping {}

impl std::fmt::Debug for GrantMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantMapping")
            .field("addr", &self.addr)
            .field("pages", &self.pages)
            .field("writable", &self.writable)
            .finish()
    }
}

impl GrantMapping {
    /// Number of mapped pages.
    pub fn pages(&self) -> usize {
        self.pages as usize
    }

    /// Mapped length in bytes.
    pub fn len(&self) -> usize {
        self.pages() * GRANT_PAGE_SIZE
    }

    /// Always false: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// Whether the pages were mapped writable.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The mapped region, with bounds-checked volatile/atomic accessors.
    pub fn mem(&self) -> SharedMem<'_> {
        // SAFETY: addr..addr+len() is mapped (read, and write iff writable)
        // until Drop unmaps it, which cannot happen while the returned
        // borrow of self is alive.
        unsafe { SharedMem::from_raw_parts(self.addr.cast(), self.len(), self.writable) }
    }
}

impl Drop for GrantMapping {
    fn drop(&mut self) {
        // SAFETY: addr/pages are exactly what a successful map call on this
        // handle returned; the handle is alive (we hold an Arc); unmapped
        // once. No SharedMem borrow can outlive self.
        let r = unsafe { sys::xengnttab_unmap(self.gt.h.as_ptr(), self.addr.as_ptr(), self.pages) };
        if r < 0 {
            tracing::warn!(error = %last_errno(), pages = self.pages, "xengnttab_unmap failed");
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// Plain integers that can be read/written volatilely in [`SharedMem`].
pub trait Scalar: sealed::Sealed + Copy {}

macro_rules! scalars {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Scalar for $t {}
    )*};
}
scalars!(u8, u16, u32, u64, i8, i16, i32, i64);

/// A bounded view of memory shared with another domain.
///
/// Every access is bounds- and alignment-checked and goes through
/// `read_volatile`/`write_volatile` or atomics; no Rust reference to the
/// bytes themselves is ever handed out (the other side may change them at
/// any time).
pub struct SharedMem<'a> {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
    // Borrows the mapping; !Sync and !Send like a &Cell.
    _borrow: PhantomData<&'a std::cell::Cell<u8>>,
}

impl std::fmt::Debug for SharedMem<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMem").field("len", &self.len).field("writable", &self.writable).finish()
    }
}

impl<'a> SharedMem<'a> {
    /// # Safety
    /// `ptr..ptr+len` must be mapped and readable (and writable if
    /// `writable`) for `'a`, and must not be accessed through Rust
    /// references while any `SharedMem` over it exists.
    pub(crate) unsafe fn from_raw_parts(ptr: NonNull<u8>, len: usize, writable: bool) -> Self {
        SharedMem { ptr, len, writable, _borrow: PhantomData }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length region.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Validate `[offset, offset+len)` and alignment; return the address.
    fn check(&self, offset: usize, len: usize, align: usize) -> Result<*mut u8> {
        let err = || Error::SharedMemAccess { offset, len, size: self.len, align };
        let end = offset.checked_add(len).ok_or_else(err)?;
        if end > self.len {
            return Err(err());
        }
        // SAFETY: offset <= self.len, so the result stays within (or one
        // past the end of) the mapped region.
        let p = unsafe { self.ptr.as_ptr().add(offset) };
        if (p as usize) % align != 0 {
            return Err(err());
        }
        Ok(p)
    }

    fn check_writable(&self, offset: usize) -> Result<()> {
        if self.writable { Ok(()) } else { Err(Error::SharedMemReadOnly { offset }) }
    }

    /// Volatile read of a naturally aligned integer at `offset`.
    pub fn read<T: Scalar>(&self, offset: usize) -> Result<T> {
        let p = self.check(offset, size_of::<T>(), align_of::<T>())?;
        // SAFETY: p is in bounds and aligned for T (checked), the region is
        // readable for 'a (from_raw_parts contract); every bit pattern is a
        // valid T (Scalar is only implemented for integers).
        Ok(unsafe { p.cast::<T>().read_volatile() })
    }

    /// Volatile write of a naturally aligned integer at `offset`.
    pub fn write<T: Scalar>(&self, offset: usize, value: T) -> Result<()> {
        self.check_writable(offset)?;
        let p = self.check(offset, size_of::<T>(), align_of::<T>())?;
        // SAFETY: in bounds, aligned, and writable (all checked above).
        unsafe { p.cast::<T>().write_volatile(value) };
        Ok(())
    }

    /// Copy `buf.len()` bytes starting at `offset` out of the region
    /// (byte-wise volatile reads).
    pub fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        let p = self.check(offset, buf.len(), 1)?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: p+i is within [offset, offset+buf.len()), checked above.
            *b = unsafe { p.add(i).read_volatile() };
        }
        Ok(())
    }

    /// Copy `data` into the region at `offset` (byte-wise volatile writes).
    pub fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check_writable(offset)?;
        let p = self.check(offset, data.len(), 1)?;
        for (i, b) in data.iter().enumerate() {
            // SAFETY: p+i in bounds and writable, checked above.
            unsafe { p.add(i).write_volatile(*b) };
        }
        Ok(())
    }

    /// An atomic view of the aligned `u16` at `offset` (writable regions
    /// only), e.g. for ring indexes shared with the other domain.
    pub fn atomic_u16(&self, offset: usize) -> Result<&'a AtomicU16> {
        self.check_writable(offset)?;
        let p = self.check(offset, 2, align_of::<AtomicU16>())?;
        // SAFETY: in bounds, aligned for AtomicU16, writable, valid for 'a;
        // the location is only accessed atomically or volatilely by us and
        // by the other domain's CPU instructions, never through a plain
        // Rust reference.
        Ok(unsafe { AtomicU16::from_ptr(p.cast()) })
    }

    /// An atomic view of the aligned `u32` at `offset` (writable regions
    /// only).
    pub fn atomic_u32(&self, offset: usize) -> Result<&'a AtomicU32> {
        self.check_writable(offset)?;
        let p = self.check(offset, 4, align_of::<AtomicU32>())?;
        // SAFETY: as for atomic_u16.
        Ok(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    /// An atomic view of the aligned `u64` at `offset` (writable regions
    /// only).
    pub fn atomic_u64(&self, offset: usize) -> Result<&'a AtomicU64> {
        self.check_writable(offset)?;
        let p = self.check(offset, 8, align_of::<AtomicU64>())?;
        // SAFETY: as for atomic_u16.
        Ok(unsafe { AtomicU64::from_ptr(p.cast()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// Page-aligned heap buffer standing in for a grant mapping.
    struct Page(NonNull<u8>, std::alloc::Layout);

    impl Page {
        fn new(len: usize) -> Option<Self> {
            let layout = std::alloc::Layout::from_size_align(len, GRANT_PAGE_SIZE).ok()?;
            // SAFETY: layout has non-zero size.
            let p = unsafe { std::alloc::alloc_zeroed(layout) };
            NonNull::new(p).map(|p| Page(p, layout))
        }
        fn mem(&self, writable: bool) -> SharedMem<'_> {
            // SAFETY: the buffer is allocated, zeroed and live for the
            // borrow of self; nothing else references it.
            unsafe { SharedMem::from_raw_parts(self.0, self.1.size(), writable) }
        }
    }

    impl Drop for Page {
        fn drop(&mut self) {
            // SAFETY: allocated in new() with this layout.
            unsafe { std::alloc::dealloc(self.0.as_ptr(), self.1) }
        }
    }

    fn page() -> Page {
        Page::new(GRANT_PAGE_SIZE).unwrap_or_else(|| panic!("allocation failed"))
    }

    #[test]
    fn scalar_read_write_roundtrip() -> Result<()> {
        let pg = page();
        let m = pg.mem(true);
        assert_eq!(m.len(), GRANT_PAGE_SIZE);
        m.write::<u32>(8, 0xdead_beef)?;
        assert_eq!(m.read::<u32>(8)?, 0xdead_beef);
        assert_eq!(m.read::<u8>(8)?, 0xef); // little endian
        m.write::<u64>(GRANT_PAGE_SIZE - 8, u64::MAX)?;
        assert_eq!(m.read::<i64>(GRANT_PAGE_SIZE - 8)?, -1);
        Ok(())
    }

    #[test]
    fn out_of_bounds_and_misaligned_are_errors() {
        let pg = page();
        let m = pg.mem(true);
        assert!(matches!(
            m.read::<u32>(GRANT_PAGE_SIZE - 2),
            Err(Error::SharedMemAccess { offset, len: 4, size: GRANT_PAGE_SIZE, align: 4 })
                if offset == GRANT_PAGE_SIZE - 2
        ));
        assert!(matches!(m.read::<u16>(3), Err(Error::SharedMemAccess { align: 2, .. })));
        assert!(matches!(m.write::<u8>(GRANT_PAGE_SIZE, 1), Err(Error::SharedMemAccess { .. })));
        assert!(matches!(m.read_bytes(usize::MAX, &mut [0u8; 2]), Err(Error::SharedMemAccess { .. })));
        assert!(matches!(m.atomic_u64(4), Err(Error::SharedMemAccess { align: 8, .. })));
        let e = m.read::<u32>(GRANT_PAGE_SIZE).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some(
                "shared memory access of 4 byte(s) at offset 4096 is invalid for a 4096-byte region \
                 (needs alignment 4)"
            )
        );
    }

    #[test]
    fn read_only_regions_refuse_writes_and_atomics() -> Result<()> {
        let pg = page();
        let m = pg.mem(false);
        assert_eq!(m.read::<u64>(0)?, 0);
        assert!(matches!(m.write::<u8>(0, 1), Err(Error::SharedMemReadOnly { offset: 0 })));
        assert!(matches!(m.write_bytes(16, b"x"), Err(Error::SharedMemReadOnly { offset: 16 })));
        assert!(matches!(m.atomic_u32(0), Err(Error::SharedMemReadOnly { .. })));
        Ok(())
    }

    #[test]
    fn byte_copies() -> Result<()> {
        let pg = page();
        let m = pg.mem(true);
        m.write_bytes(100, b"hello zone")?;
        let mut buf = [0u8; 10];
        m.read_bytes(100, &mut buf)?;
        assert_eq!(&buf, b"hello zone");
        m.read_bytes(GRANT_PAGE_SIZE, &mut [])?; // empty at the end is fine
        Ok(())
    }

    #[test]
    fn atomics_alias_the_region() -> Result<()> {
        let pg = page();
        let m = pg.mem(true);
        let prod = m.atomic_u32(0)?;
        prod.store(41, Ordering::Release);
        assert_eq!(prod.fetch_add(1, Ordering::AcqRel), 41);
        assert_eq!(m.read::<u32>(0)?, 42);
        m.atomic_u64(8)?.store(7, Ordering::SeqCst);
        assert_eq!(m.read::<u64>(8)?, 7);
        m.atomic_u16(2)?.store(3, Ordering::SeqCst);
        assert_eq!(m.read::<u16>(2)?, 3);
        Ok(())
    }

    #[test]
    fn map_count_limits() {
        assert!(matches!(check_count(0, 1, 2), Err(Error::GnttabMap { count: 0, first_domid: 1, first_ref: 2, .. })));
        assert!(matches!(check_count(MAX_MAP_PAGES + 1, 1, 2), Err(Error::GnttabMap { .. })));
        assert_eq!(check_count(3, 1, 2).ok(), Some(3));
        assert_eq!(prot(false), libc::PROT_READ);
        assert_eq!(prot(true), libc::PROT_READ | libc::PROT_WRITE);
    }

    /// Loopback: dom0 grants itself a page through gntalloc (xengntshr) and
    /// maps it back through gntdev.
    #[test]
    #[ignore = "needs xen"]
    fn loopback_map() -> anyhow::Result<()> {
        // SAFETY: NULL logger = libxengnttab's default; flags 0.
        let shr = unsafe { sys::xengntshr_open(std::ptr::null_mut(), 0) };
        anyhow::ensure!(!shr.is_null(), "xengntshr_open: {}", last_errno());
        let mut gref = 0u32;
        // SAFETY: shr valid; gref receives one ref; share one writable page.
        let shared = unsafe { sys::xengntshr_share_pages(shr, 0, 1, &mut gref, 1) };
        anyhow::ensure!(!shared.is_null(), "xengntshr_share_pages: {}", last_errno());
        // SAFETY: shared is one writable page we own.
        unsafe { shared.cast::<u32>().write_volatile(0x1234_5678) };
        let result = (|| -> anyhow::Result<()> {
            let gt = GrantTable::open()?;
            let map = gt.map_grant_ref(0, gref, true)?;
            assert_eq!(map.len(), GRANT_PAGE_SIZE);
            assert_eq!(map.mem().read::<u32>(0)?, 0x1234_5678);
            map.mem().write::<u32>(4, 9)?;
            drop(map);
            let map = gt.map_domain_grant_refs(0, &[gref], false)?;
            assert_eq!(map.mem().read::<u32>(4)?, 9);
            Ok(())
        })();
        // SAFETY: unshare the page shared above and close the handle, once.
        unsafe {
            sys::xengntshr_unshare(shr, shared, 1);
            sys::xengntshr_close(shr);
        }
        result
    }
}
