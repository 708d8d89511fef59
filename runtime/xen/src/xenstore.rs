//! Xenstore: reads, writes, directories, permissions, transactions and
//! watches over libxenstore.
//!
//! Bounds: every value read is checked against `XENSTORE_PAYLOAD_MAX`
//! (4096 bytes, the protocol limit), directory listings are capped at
//! [`MAX_DIRECTORY_ENTRIES`] and every string taken from libxenstore is
//! length-limited while it is copied. Paths are validated before they reach
//! C (no NUL, length limits, xenstore's character set).

use std::ffi::{CString, c_char, c_uint, c_void};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::str::FromStr;

use bulkhead_xen_sys as sys;
use tokio::io::unix::AsyncFd;

use crate::asyncfd::{ForeignFd, register_readable};
use crate::cstr::bounded_c_str;
use crate::error::{Error, Result, last_errno};

/// Largest value xenstore stores or returns (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = sys::XENSTORE_PAYLOAD_MAX as usize;
/// Longest absolute path (`XENSTORE_ABS_PATH_MAX`).
pub const ABS_PATH_MAX: usize = sys::XENSTORE_ABS_PATH_MAX as usize;
/// Longest relative path (`XENSTORE_REL_PATH_MAX`).
pub const REL_PATH_MAX: usize = sys::XENSTORE_REL_PATH_MAX as usize;
/// Most entries [`Xenstore::directory`] returns before failing with `E2BIG`.
pub const MAX_DIRECTORY_ENTRIES: usize = 65_536;
/// Most permission entries accepted from or sent to xenstore.
pub const MAX_PERMISSIONS: usize = 1024;
/// Longest watch token accepted.
pub const TOKEN_MAX: usize = 256;

/// Check a xenstore path and turn it into a C string.
///
/// Accepts absolute paths (`/local/domain/3/name`), paths relative to the
/// caller's domain home (`device/vif/0`) and the special watch paths
/// `@introduceDomain` / `@releaseDomain`. Rejects what xenstored's
/// `is_valid_nodename` rejects: empty paths, characters outside
/// `[A-Za-z0-9_@/-]` (so also NUL, `.`, `:`, spaces), `//`, a trailing `/`
/// (except the root `/`), plus paths over the protocol's length limits.
pub fn validate_path(path: &str) -> Result<CString> {
    let invalid = |reason| Error::XenstoreInvalidPath { path: path.chars().take(ABS_PATH_MAX).collect(), reason };
    if path.is_empty() {
        return Err(invalid("empty path"));
    }
    if path.starts_with('@') {
        return match path {
            "@introduceDomain" | "@releaseDomain" => CString::new(path).map_err(|_| invalid("contains NUL")),
            _ => Err(invalid("unknown special path")),
        };
    }
    let max = if path.starts_with('/') { ABS_PATH_MAX } else { REL_PATH_MAX };
    if path.len() > max {
        return Err(invalid("path too long"));
    }
    if !path.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'@')) {
        return Err(invalid("invalid character"));
    }
    if path.contains("//") {
        return Err(invalid("empty path component"));
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err(invalid("trailing slash"));
    }
    CString::new(path).map_err(|_| invalid("contains NUL"))
}

/// Join xenstore path components: `join("/local/domain/3", "device/vif")`.
pub fn join(base: &str, rel: &str) -> String {
    let base = base.trim_end_matches('/');
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        return if base.is_empty() { "/".into() } else { base.into() };
    }
    format!("{base}/{rel}")
}

fn validate_token(token: &str) -> Result<CString> {
    let invalid = |reason| Error::XenstoreInvalidPath { path: token.chars().take(TOKEN_MAX).collect(), reason };
    if token.len() > TOKEN_MAX {
        return Err(invalid("watch token too long"));
    }
    CString::new(token).map_err(|_| invalid("watch token contains NUL"))
}

/// Access granted by one xenstore permission entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`
    None,
    /// `r`
    Read,
    /// `w`
    Write,
    /// `b` (read and write)
    Both,
}

impl Access {
    fn bits(self) -> c_uint {
        match self {
            Access::None => sys::XS_PERM_NONE,
            Access::Read => sys::XS_PERM_READ,
            Access::Write => sys::XS_PERM_WRITE,
            Access::Both => sys::XS_PERM_READ | sys::XS_PERM_WRITE,
        }
    }

    fn from_bits(bits: c_uint) -> Self {
        match (bits & sys::XS_PERM_READ != 0, bits & sys::XS_PERM_WRITE != 0) {
            (false, false) => Access::None,
            (true, false) => Access::Read,
            (false, true) => Access::Write,
            (true, true) => Access::Both,
        }
    }

    fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }
}

/// One `(domid, access)` pair of a node's permission list.
///
/// In a list, the **first** entry names the node's owner (who always has
/// full access) and the access for every domain not listed later; the
/// following entries grant access to specific domains. Formats as in
/// `xenstore-chmod`/`xenstore-ls -p`: `n0`, `r5`, `b3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Permission {
    pub domid: u32,
    pub access: Access,
}

impl Permission {
    pub fn new(domid: u32, access: Access) -> Self {
        Permission { domid, access }
    }

    fn to_raw(self) -> sys::xs_permissions {
        sys::xs_permissions { id: self.domid, perms: self.access.bits() }
    }

    fn from_raw(raw: &sys::xs_permissions) -> Self {
        Permission { domid: raw.id, access: Access::from_bits(raw.perms) }
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid)
    }
}

/// Why a permission string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid xenstore permission {0:?} (expected n|r|w|b followed by a domid)")]
pub struct ParsePermissionError(pub String);

impl FromStr for Permission {
    type Err = ParsePermissionError;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let err = || ParsePermissionError(s.to_owned());
        let mut chars = s.chars();
        let access = match chars.next() {
            Some('n') => Access::None,
            Some('r') => Access::Read,
            Some('w') => Access::Write,
            Some('b') => Access::Both,
            _ => return Err(err()),
        };
        let rest = chars.as_str();
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let domid = rest.parse().map_err(|_| err())?;
        Ok(Permission { domid, access })
    }
}

/// A fired watch: the path that changed and the token given to
/// [`Xenstore::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

/// An open xenstore connection (`xs_open`), closed on drop.
///
/// `Send` but not `Sync`: move it to the thread or task that uses it, or
/// open one per user (connections are cheap). Use a dedicated handle for
/// watches ([`AsyncWatcher`]).
#[derive(Debug)]
pub struct Xenstore {
    h: NonNull<sys::xs_handle>,
}

// SAFETY: an xs_handle is not tied to the thread that opened it: libxenstore
// (built with pthreads on Debian) guards its socket, request and watch state
// with internal mutexes, so using a handle from another thread is fine.
// Xenstore is !Sync, so it is still used from one thread at a time.
unsafe impl Send for Xenstore {}

/// Owned `char*`/`void*`/array from libxenstore, `free()`d on drop.
struct Malloced(*mut c_void);

impl Drop for Malloced {
    fn drop(&mut self) {
        // SAFETY: libxenstore returns malloc'd buffers that the caller must
        // free() exactly once (xenstore.h: "Call free() after use."); NULL is
        // a no-op.
        unsafe { libc::free(self.0) }
    }
}

impl Xenstore {
    /// Connect to xenstored (socket or /dev/xen/xenbus, whichever works).
    pub fn open() -> Result<Self> {
        Self::open_flags(0)
    }

    /// Connect read-only.
    pub fn open_readonly() -> Result<Self> {
        Self::open_flags(sys::XS_OPEN_READONLY as std::ffi::c_ulong)
    }

    fn open_flags(flags: std::ffi::c_ulong) -> Result<Self> {
        // SAFETY: xs_open takes only flags and returns a new handle or NULL.
        let h = unsafe { sys::xs_open(flags) };
        NonNull::new(h).map(|h| Xenstore { h }).ok_or_else(|| Error::XenstoreOpen(last_errno()))
    }

    fn raw(&self) -> *mut sys::xs_handle {
        self.h.as_ptr()
    }

    // ----- operations shared with Transaction (t = XBT_NULL outside one) -----

    fn read_in(&self, t: sys::xs_transaction_t, path: &str) -> Result<Vec<u8>> {
        let c = validate_path(path)?;
        let mut len: c_uint = 0;
        // SAFETY: handle valid (owned by self), c is a NUL-terminated path,
        // len a valid out-pointer. Returns a malloc'd buffer of len bytes (+
        // NUL) or NULL with errno set.
        let p = unsafe { sys::xs_read(self.raw(), t, c.as_ptr(), &mut len) };
        if p.is_null() {
            return Err(Error::XenstoreRead { path: path.into(), source: last_errno() });
        }
        let buf = Malloced(p);
        let len = len as usize;
        if len > PAYLOAD_MAX {
            return Err(Error::XenstoreRead {
                path: path.into(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("value of {len} bytes exceeds {PAYLOAD_MAX}"),
                ),
            });
        }
        // SAFETY: xs_read returned a buffer of at least len bytes; len is
        // bounded above; buf frees it after we copied.
        Ok(unsafe { std::slice::from_raw_parts(buf.0.cast::<u8>(), len) }.to_vec())
    }

    fn write_in(&self, t: sys::xs_transaction_t, path: &str, value: &[u8]) -> Result<()> {
        let c = validate_path(path)?;
        check_value_len(path, value.len())?;
        // SAFETY: handle valid; c NUL-terminated; value points to len bytes
        // (len <= PAYLOAD_MAX fits c_uint); libxenstore copies the data.
        let ok = unsafe { sys::xs_write(self.raw(), t, c.as_ptr(), value.as_ptr().cast(), value.len() as c_uint) };
        if ok { Ok(()) } else { Err(Error::XenstoreWrite { path: path.into(), source: last_errno() }) }
    }

    fn mkdir_in(&self, t: sys::xs_transaction_t, path: &str) -> Result<()> {
        let c = validate_path(path)?;
        // SAFETY: handle valid; c NUL-terminated.
        let ok = unsafe { sys::xs_mkdir(self.raw(), t, c.as_ptr()) };
        if ok { Ok(()) } else { Err(Error::XenstoreMkdir { path: path.into(), source: last_errno() }) }
    }

    fn rm_in(&self, t: sys::xs_transaction_t, path: &str) -> Result<()> {
        let c = validate_path(path)?;
        // SAFETY: handle valid; c NUL-terminated.
        let ok = unsafe { sys::xs_rm(self.raw(), t, c.as_ptr()) };
        if ok { Ok(()) } else { Err(Error::XenstoreRm { path: path.into(), source: last_errno() }) }
    }

    fn directory_in(&self, t: sys::xs_transaction_t, path: &str) -> Result<Vec<String>> {
        let c = validate_path(path)?;
        let mut num: c_uint = 0;
        // SAFETY: handle valid; c NUL-terminated; num a valid out-pointer.
        // Returns one malloc'd block holding `num` char* followed by the
        // strings they point to, or NULL with errno set.
        let p = unsafe { sys::xs_directory(self.raw(), t, c.as_ptr(), &mut num) };
        if p.is_null() {
            return Err(Error::XenstoreDirectory { path: path.into(), source: last_errno() });
        }
        let block = Malloced(p.cast());
        let num = num as usize;
        if num > MAX_DIRECTORY_ENTRIES {
            return Err(Error::XenstoreDirectory {
                path: path.into(),
                source: io::Error::from_raw_os_error(libc::E2BIG),
            });
        }
        // SAFETY: the block starts with num valid char* entries (see above),
        // num is bounded; block outlives this slice.
        let entries = unsafe { std::slice::from_raw_parts(block.0.cast::<*const c_char>(), num) };
        Ok(entries
            .iter()
            // SAFETY: each entry is a NUL-terminated node name inside the
            // block; bounded_c_str never reads past the NUL or the bound.
            .filter_map(|&e| unsafe { bounded_c_str(e, ABS_PATH_MAX) })
            .collect())
    }

    fn get_permissions_in(&self, t: sys::xs_transaction_t, path: &str) -> Result<Vec<Permission>> {
        let c = validate_path(path)?;
        let mut num: c_uint = 0;
        // SAFETY: handle valid; c NUL-terminated; num valid out-pointer.
        // Returns a malloc'd array of num xs_permissions or NULL.
        let p = unsafe { sys::xs_get_permissions(self.raw(), t, c.as_ptr(), &mut num) };
        if p.is_null() {
            return Err(Error::XenstoreGetPermissions { path: path.into(), source: last_errno() });
        }
        let block = Malloced(p.cast());
        let num = num as usize;
        if num > MAX_PERMISSIONS {
            return Err(Error::XenstoreGetPermissions {
                path: path.into(),
                source: io::Error::from_raw_os_error(libc::E2BIG),
            });
        }
        // SAFETY: block holds num initialised xs_permissions (bounded).
        let perms = unsafe { std::slice::from_raw_parts(block.0.cast::<sys::xs_permissions>(), num) };
        Ok(perms.iter().map(Permission::from_raw).collect())
    }

    fn set_permissions_in(&self, t: sys::xs_transaction_t, path: &str, perms: &[Permission]) -> Result<()> {
        let c = validate_path(path)?;
        if perms.is_empty() || perms.len() > MAX_PERMISSIONS {
            return Err(Error::XenstoreSetPermissions {
                path: path.into(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "need 1..=1024 permission entries (owner first)"),
            });
        }
        let mut raw: Vec<sys::xs_permissions> = perms.iter().map(|p| p.to_raw()).collect();
        // SAFETY: handle valid; c NUL-terminated; raw is a live array of
        // raw.len() (bounded, fits c_uint) entries that libxenstore only
        // reads during the call.
        let ok = unsafe { sys::xs_set_permissions(self.raw(), t, c.as_ptr(), raw.as_mut_ptr(), raw.len() as c_uint) };
        if ok { Ok(()) } else { Err(Error::XenstoreSetPermissions { path: path.into(), source: last_errno() }) }
    }

    // ----- public API outside transactions -----

    /// Read a node's value. Missing nodes fail with `ENOENT` in the source.
    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.read_in(sys::XBT_NULL, path)
    }

    /// Read a node, mapping "does not exist" to `None`.
    pub fn try_read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        not_found_to_none(self.read(path))
    }

    /// Read a node as UTF-8 text (invalid UTF-8 is an `InvalidData` error).
    pub fn read_string(&self, path: &str) -> Result<String> {
        bytes_to_string(path, self.read(path)?)
    }

    /// Write a value (creating the node and missing parents).
    pub fn write(&self, path: &str, value: impl AsRef<[u8]>) -> Result<()> {
        self.write_in(sys::XBT_NULL, path, value.as_ref())
    }

    /// Create an empty node (and parents); succeeds if it exists.
    pub fn mkdir(&self, path: &str) -> Result<()> {
        self.mkdir_in(sys::XBT_NULL, path)
    }

    /// Remove a node and everything below it; succeeds if it is absent.
    pub fn rm(&self, path: &str) -> Result<()> {
        self.rm_in(sys::XBT_NULL, path)
    }

    /// Names (not full paths) of a node's children.
    pub fn directory(&self, path: &str) -> Result<Vec<String>> {
        self.directory_in(sys::XBT_NULL, path)
    }

    /// A node's permission list (owner first).
    pub fn get_permissions(&self, path: &str) -> Result<Vec<Permission>> {
        self.get_permissions_in(sys::XBT_NULL, path)
    }

    /// Replace a node's permission list; `perms[0]` is the owner and the
    /// default for unlisted domains (see [`Permission`]).
    pub fn set_permissions(&self, path: &str, perms: &[Permission]) -> Result<()> {
        self.set_permissions_in(sys::XBT_NULL, path, perms)
    }

    /// `/local/domain/<domid>` as xenstored reports it.
    pub fn get_domain_path(&self, domid: u32) -> Result<String> {
        // SAFETY: handle valid. Returns a malloc'd string or NULL.
        let p = unsafe { sys::xs_get_domain_path(self.raw(), domid) };
        if p.is_null() {
            return Err(Error::XenstoreDomainPath { domid, source: last_errno() });
        }
        let s = Malloced(p.cast());
        // SAFETY: p is a NUL-terminated path; bounded by ABS_PATH_MAX.
        unsafe { bounded_c_str(s.0.cast(), ABS_PATH_MAX) }
            .ok_or_else(|| Error::XenstoreDomainPath { domid, source: io::Error::from(io::ErrorKind::InvalidData) })
    }

    /// Start a transaction. Dropping the returned value without calling
    /// [`Transaction::commit`] aborts it.
    pub fn transaction(&self) -> Result<Transaction<'_>> {
        // SAFETY: handle valid. Returns a transaction id, 0 (XBT_NULL) on
        // failure with errno set.
        let t = unsafe { sys::xs_transaction_start(self.raw()) };
        if t == sys::XBT_NULL {
            return Err(Error::XenstoreTransactionStart(last_errno()));
        }
        Ok(Transaction { xs: self, t, finished: false })
    }

    /// Run `f` in a transaction and commit, redoing the whole thing when the
    /// commit conflicts (`EAGAIN`), at most `attempts` times.
    pub fn transact<R>(&self, attempts: usize, mut f: impl FnMut(&Transaction<'_>) -> Result<R>) -> Result<R> {
        let mut left = attempts.max(1);
        loop {
            let tx = self.transaction()?;
            let r = f(&tx)?;
            match tx.commit() {
                Ok(()) => return Ok(r),
                Err(Error::XenstoreTransactionConflict) if left > 1 => {
                    left -= 1;
                    tracing::debug!(attempts_left = left, "xenstore transaction conflict, retrying");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Register a watch on `path` (and everything below it). xenstored fires
    /// it once immediately after registration, then on every change.
    pub fn watch(&self, path: &str, token: &str) -> Result<()> {
        let c = validate_path(path)?;
        let tok = validate_token(token)?;
        // SAFETY: handle valid; both strings NUL-terminated and copied by
        // libxenstore.
        let ok = unsafe { sys::xs_watch(self.raw(), c.as_ptr(), tok.as_ptr()) };
        if ok {
            Ok(())
        } else {
            Err(Error::XenstoreWatch { path: path.into(), token: token.into(), source: last_errno() })
        }
    }

    /// Remove a watch registered with the same path and token.
    pub fn unwatch(&self, path: &str, token: &str) -> Result<()> {
        let c = validate_path(path)?;
        let tok = validate_token(token)?;
        // SAFETY: as for watch.
        let ok = unsafe { sys::xs_unwatch(self.raw(), c.as_ptr(), tok.as_ptr()) };
        if ok {
            Ok(())
        } else {
            Err(Error::XenstoreUnwatch { path: path.into(), token: token.into(), source: last_errno() })
        }
    }

    /// Block until a watch fires.
    pub fn read_watch(&self) -> Result<WatchEvent> {
        let mut num: c_uint = 0;
        // SAFETY: handle valid; num valid out-pointer. Returns a malloc'd
        // vector of num strings (path, token, ...) or NULL.
        let p = unsafe { sys::xs_read_watch(self.raw(), &mut num) };
        // SAFETY: p is NULL or such a vector with at least num entries.
        unsafe { watch_event_from_raw(p, num as usize) }
    }

    /// A fired watch if one is queued, without blocking (`xs_check_watch`).
    pub fn check_watch(&self) -> Result<Option<WatchEvent>> {
        // SAFETY: handle valid. Returns NULL with errno EAGAIN when nothing
        // is pending, NULL with another errno on error, or a malloc'd
        // vector whose [XS_WATCH_PATH] and [XS_WATCH_TOKEN] are valid.
        let p = unsafe { sys::xs_check_watch(self.raw()) };
        if p.is_null() {
            let e = last_errno();
            return if e.raw_os_error() == Some(libc::EAGAIN) { Ok(None) } else { Err(Error::XenstoreReadWatch(e)) };
        }
        // SAFETY: non-NULL result has (at least) the two documented entries.
        unsafe { watch_event_from_raw(p, 2) }.map(Some)
    }

    /// The fd that becomes readable when a watch fires (`xs_fileno`). Owned
    /// by the handle.
    pub fn watch_fd(&self) -> Result<BorrowedFd<'_>> {
        // SAFETY: handle valid. Returns an fd owned by the handle (a pipe
        // when libxenstore runs its reader thread), or -1.
        let fd = unsafe { sys::xs_fileno(self.raw()) };
        if fd < 0 {
            return Err(Error::XenstoreWatchFd(last_errno()));
        }
        // SAFETY: fd is open and owned by the handle, which outlives the
        // returned borrow ('_ ties it to &self).
        Ok(unsafe { BorrowedFd::borrow_raw(fd) })
    }
}

impl Drop for Xenstore {
    fn drop(&mut self) {
        // SAFETY: handle from xs_open, closed exactly once; no Transaction
        // can outlive it (they borrow self).
        unsafe { sys::xs_close(self.raw()) }
    }
}

/// Decode an `xs_read_watch`/`xs_check_watch` vector and free it.
///
/// # Safety
/// `p` must be NULL or a malloc'd vector from libxenstore with at least
/// `num` valid NUL-terminated string pointers.
unsafe fn watch_event_from_raw(p: *mut *mut c_char, num: usize) -> Result<WatchEvent> {
    if p.is_null() {
        return Err(Error::XenstoreReadWatch(last_errno()));
    }
    let v = Malloced(p.cast());
    let path_i = sys::XS_WATCH_PATH as usize;
    let token_i = sys::XS_WATCH_TOKEN as usize;
    if num <= path_i.max(token_i) {
        return Err(Error::XenstoreReadWatch(io::Error::new(io::ErrorKind::InvalidData, "short watch event")));
    }
    // SAFETY: v holds at least num > max(index) valid pointers (contract).
    let (path, token) = unsafe {
        let arr = v.0.cast::<*const c_char>();
        (bounded_c_str(*arr.add(path_i), ABS_PATH_MAX), bounded_c_str(*arr.add(token_i), TOKEN_MAX))
    };
    match (path, token) {
        (Some(path), Some(token)) => Ok(WatchEvent { path, token }),
        _ => Err(Error::XenstoreReadWatch(io::Error::new(io::ErrorKind::InvalidData, "NULL entry in watch event"))),
    }
}

fn check_value_len(path: &str, len: usize) -> Result<()> {
    if len > PAYLOAD_MAX {
        return Err(Error::XenstoreWrite {
            path: path.into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, format!("value of {len} bytes exceeds {PAYLOAD_MAX}")),
        });
    }
    Ok(())
}

fn not_found_to_none<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::XenstoreRead { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn bytes_to_string(path: &str, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes)
        .map_err(|e| Error::XenstoreRead { path: path.into(), source: io::Error::new(io::ErrorKind::InvalidData, e) })
}

/// An open xenstore transaction. Aborted on drop unless committed.
#[derive(Debug)]
pub struct Transaction<'a> {
    xs: &'a Xenstore,
    t: sys::xs_transaction_t,
    finished: bool,
}

impl Transaction<'_> {
    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.xs.read_in(self.t, path)
    }
    pub fn try_read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        not_found_to_none(self.read(path))
    }
    pub fn read_string(&self, path: &str) -> Result<String> {
        bytes_to_string(path, self.read(path)?)
    }
    pub fn write(&self, path: &str, value: impl AsRef<[u8]>) -> Result<()> {
        self.xs.write_in(self.t, path, value.as_ref())
    }
    pub fn mkdir(&self, path: &str) -> Result<()> {
        self.xs.mkdir_in(self.t, path)
    }
    pub fn rm(&self, path: &str) -> Result<()> {
        self.xs.rm_in(self.t, path)
    }
    pub fn directory(&self, path: &str) -> Result<Vec<String>> {
        self.xs.directory_in(self.t, path)
    }
    pub fn get_permissions(&self, path: &str) -> Result<Vec<Permission>> {
        self.xs.get_permissions_in(self.t, path)
    }
    pub fn set_permissions(&self, path: &str, perms: &[Permission]) -> Result<()> {
        self.xs.set_permissions_in(self.t, path, perms)
    }

    /// Commit. [`Error::XenstoreTransactionConflict`] means another writer
    /// raced us and the transaction must be redone from the start (see
    /// [`Xenstore::transact`]).
    pub fn commit(mut self) -> Result<()> {
        self.end(false)
    }

    /// Abort explicitly (dropping does the same, but ignores errors).
    pub fn abort(mut self) -> Result<()> {
        self.end(true)
    }

    fn end(&mut self, abort: bool) -> Result<()> {
        self.finished = true;
        // SAFETY: handle valid (borrowed for 'a); t is a live transaction of
        // this handle, ended exactly once (finished guards Drop).
        let ok = unsafe { sys::xs_transaction_end(self.xs.raw(), self.t, abort) };
        if ok {
            return Ok(());
        }
        let e = last_errno();
        if !abort && e.raw_os_error() == Some(libc::EAGAIN) {
            Err(Error::XenstoreTransactionConflict)
        } else {
            Err(Error::XenstoreTransactionEnd(e))
        }
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Err(e) = self.end(true) {
            tracing::warn!(error = %e, "aborting xenstore transaction failed");
        }
    }
}

/// A xenstore handle dedicated to watches, awaitable from async code.
///
/// ```no_run
/// # async fn demo() -> Result<(), bulkhead_xen::Error> {
/// use bulkhead_xen::xenstore::{AsyncWatcher, Xenstore};
/// let w = AsyncWatcher::new(Xenstore::open()?)?;
/// w.watch("@releaseDomain", "release")?;
/// let ev = w.next().await?; // fires once right away, then on changes
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AsyncWatcher {
    // Field order matters: the reactor registration must go before the
    // handle that owns the fd is closed.
    fd: AsyncFd<ForeignFd>,
    xs: Xenstore,
}

impl AsyncWatcher {
    /// Wrap a handle. Must be called inside a tokio runtime with IO enabled.
    pub fn new(xs: Xenstore) -> Result<Self> {
        let raw = xs.watch_fd()?.as_raw_fd();
        // The fd is deliberately left blocking: libxenstore itself does a
        // blocking read on it to drain its wakeup pipe and would spin on a
        // non-blocking one. We never read it ourselves, we only wait for
        // readability and then call xs_check_watch, which does not block.
        // SAFETY: the fd belongs to `xs`, which is stored next to the
        // AsyncFd in the returned value and declared after it, so the
        // registration is dropped before xs_close closes the fd.
        let fd = unsafe { register_readable(raw) }.map_err(Error::XenstoreWatchFd)?;
        Ok(AsyncWatcher { fd, xs })
    }

    /// The handle, e.g. for reads in reaction to an event.
    pub fn xenstore(&self) -> &Xenstore {
        &self.xs
    }

    /// See [`Xenstore::watch`].
    pub fn watch(&self, path: &str, token: &str) -> Result<()> {
        self.xs.watch(path, token)
    }

    /// See [`Xenstore::unwatch`].
    pub fn unwatch(&self, path: &str, token: &str) -> Result<()> {
        self.xs.unwatch(path, token)
    }

    /// Wait for the next watch event.
    pub async fn next(&self) -> Result<WatchEvent> {
        loop {
            if let Some(ev) = self.xs.check_watch()? {
                return Ok(ev);
            }
            let mut guard = self.fd.readable().await.map_err(Error::XenstoreWatchFd)?;
            match self.xs.check_watch()? {
                Some(ev) => return Ok(ev),
                // Drained: only now is it correct to wait for a new edge.
                None => guard.clear_ready(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_paths() {
        for p in [
            "/",
            "/local/domain/0/name",
            "device/vif/0/state",
            "/vm/12345678-9abc-def0-0123-456789abcdef/name",
            "/local/domain/3/data/bulkhead_zone-id@1",
            "@introduceDomain",
            "@releaseDomain",
        ] {
            assert!(validate_path(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn invalid_paths_say_why() {
        for (p, why) in [
            ("", "empty path"),
            ("/a//b", "empty path component"),
            ("/a/b/", "trailing slash"),
            ("/a b", "invalid character"),
            ("/zone.id", "invalid character"),
            ("/a:b", "invalid character"),
            ("/a\0b", "invalid character"),
            ("/ä", "invalid character"),
            ("@watchAll", "unknown special path"),
        ] {
            match validate_path(p) {
                Err(Error::XenstoreInvalidPath { reason, .. }) => assert_eq!(reason, why, "{p:?}"),
                other => panic!("{p:?}: {other:?}"),
            }
        }
        let long = format!("/{}", "a".repeat(ABS_PATH_MAX));
        assert!(matches!(validate_path(&long), Err(Error::XenstoreInvalidPath { reason: "path too long", .. })));
        let rel = "a".repeat(REL_PATH_MAX + 1);
        assert!(matches!(validate_path(&rel), Err(Error::XenstoreInvalidPath { reason: "path too long", .. })));
        assert!(validate_path(&"a".repeat(REL_PATH_MAX)).is_ok());
    }

    #[test]
    fn invalid_path_error_message() {
        let e = validate_path("/a b").err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("invalid xenstore path \"/a b\": invalid character"));
    }

    #[test]
    fn tokens() {
        assert!(validate_token("zone-3").is_ok());
        assert!(validate_token("a\0b").is_err());
        assert!(validate_token(&"t".repeat(TOKEN_MAX + 1)).is_err());
    }

    #[test]
    fn join_paths() {
        assert_eq!(join("/local/domain/3", "device/vif"), "/local/domain/3/device/vif");
        assert_eq!(join("/local/domain/3/", "/name"), "/local/domain/3/name");
        assert_eq!(join("/", "local"), "/local");
        assert_eq!(join("/a", ""), "/a");
        assert_eq!(join("", ""), "/");
    }

    #[test]
    fn permission_format_and_parse() {
        let perms = [
            Permission::new(0, Access::None),
            Permission::new(5, Access::Read),
            Permission::new(7, Access::Write),
            Permission::new(3, Access::Both),
        ];
        let text: Vec<String> = perms.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["n0", "r5", "w7", "b3"]);
        for (p, s) in perms.iter().zip(&text) {
            assert_eq!(s.parse::<Permission>().ok(), Some(*p));
        }
        for bad in ["", "x1", "r", "r-1", "r1a", "b99999999999"] {
            assert!(bad.parse::<Permission>().is_err(), "{bad}");
        }
        assert_eq!(
            "q".parse::<Permission>().err().map(|e| e.to_string()).as_deref(),
            Some("invalid xenstore permission \"q\" (expected n|r|w|b followed by a domid)")
        );
    }

    #[test]
    fn permission_raw_round_trip() {
        for access in [Access::None, Access::Read, Access::Write, Access::Both] {
            let p = Permission::new(9, access);
            let raw = p.to_raw();
            assert_eq!(raw.id, 9);
            assert_eq!(Permission::from_raw(&raw), p);
        }
        assert_eq!(Access::Both.bits(), sys::XS_PERM_READ | sys::XS_PERM_WRITE);
        // Internal flag bits (XS_PERM_OWNER etc.) do not change the access.
        assert_eq!(Access::from_bits(sys::XS_PERM_READ | sys::XS_PERM_OWNER), Access::Read);
    }

    #[test]
    fn watch_event_decoding() {
        // Build a vector the way libxenstore does: one malloc'd block.
        let strs = [c"/local/domain/3/state", c"tok"];
        // SAFETY: allocate room for 2 pointers plus both strings; fill it
        // as libxenstore would; watch_event_from_raw frees it.
        unsafe {
            let ptrs = 2 * std::mem::size_of::<*mut c_char>();
            let total = ptrs + strs.iter().map(|s| s.to_bytes_with_nul().len()).sum::<usize>();
            let block = libc::malloc(total).cast::<u8>();
            assert!(!block.is_null());
            let mut off = ptrs;
            for (i, s) in strs.iter().enumerate() {
                let b = s.to_bytes_with_nul();
                std::ptr::copy_nonoverlapping(b.as_ptr(), block.add(off), b.len());
                *block.cast::<*mut c_char>().add(i) = block.add(off).cast();
                off += b.len();
            }
            let ev = watch_event_from_raw(block.cast(), 2);
            assert!(matches!(&ev, Ok(WatchEvent { path, token }) if path == "/local/domain/3/state" && token == "tok"));
        }
    }

    #[test]
    fn short_or_null_watch_events_are_errors() {
        // SAFETY: NULL is allowed by the contract.
        assert!(matches!(unsafe { watch_event_from_raw(std::ptr::null_mut(), 0) }, Err(Error::XenstoreReadWatch(_))));
        // SAFETY: a malloc'd block of one NULL pointer; num = 1 is short.
        unsafe {
            let block = libc::calloc(1, std::mem::size_of::<*mut c_char>()).cast::<*mut c_char>();
            assert!(!block.is_null());
            assert!(matches!(watch_event_from_raw(block, 1), Err(Error::XenstoreReadWatch(_))));
        }
    }

    #[test]
    fn enoent_maps_to_none() {
        let r: Result<Vec<u8>> =
            Err(Error::XenstoreRead { path: "/x".into(), source: io::Error::from_raw_os_error(libc::ENOENT) });
        assert!(matches!(not_found_to_none(r), Ok(None)));
        let r: Result<Vec<u8>> =
            Err(Error::XenstoreRead { path: "/x".into(), source: io::Error::from_raw_os_error(libc::EACCES) });
        assert!(not_found_to_none(r).is_err());
        assert!(matches!(not_found_to_none(Ok(vec![1u8])), Ok(Some(v)) if v == [1]));
    }

    #[test]
    fn utf8_is_checked() {
        assert_eq!(bytes_to_string("/p", b"ok".to_vec()).ok().as_deref(), Some("ok"));
        assert!(matches!(bytes_to_string("/p", vec![0xff]), Err(Error::XenstoreRead { .. })));
    }

    #[test]
    fn oversized_write_rejected_before_c() {
        assert!(check_value_len("/x", PAYLOAD_MAX).is_ok());
        let e = check_value_len("/x", PAYLOAD_MAX + 1).err();
        assert!(matches!(&e, Some(Error::XenstoreWrite { path, source })
            if path == "/x" && source.kind() == io::ErrorKind::InvalidInput));
    }

    const TEST_ROOT: &str = "/local/domain/0/bulkhead-xen-test";

    #[test]
    #[ignore = "needs xen"]
    fn read_write_rm_roundtrip() -> anyhow::Result<()> {
        let xs = Xenstore::open()?;
        assert_eq!(xs.get_domain_path(0)?, "/local/domain/0");
        assert_eq!(xs.read_string("/local/domain/0/name")?, "Domain-0");
        let p = join(TEST_ROOT, "rw");
        xs.rm(TEST_ROOT)?;
        xs.write(&p, b"hello")?;
        assert_eq!(xs.read(&p)?, b"hello");
        assert_eq!(xs.directory(TEST_ROOT)?, ["rw"]);
        xs.mkdir(&join(TEST_ROOT, "dir"))?;
        xs.set_permissions(&p, &[Permission::new(0, Access::None), Permission::new(5, Access::Read)])?;
        assert_eq!(xs.get_permissions(&p)?, [Permission::new(0, Access::None), Permission::new(5, Access::Read)]);
        xs.rm(TEST_ROOT)?;
        assert_eq!(xs.try_read(&p)?, None);
        Ok(())
    }

    #[test]
    #[ignore = "needs xen"]
    fn transactions_commit_and_abort() -> anyhow::Result<()> {
        let xs = Xenstore::open()?;
        let p = join(TEST_ROOT, "tx");
        xs.rm(TEST_ROOT)?;
        {
            let tx = xs.transaction()?;
            tx.write(&p, "aborted")?;
            // dropped: aborted
        }
        assert_eq!(xs.try_read(&p)?, None);
        xs.transact(5, |tx| tx.write(&p, "committed"))?;
        assert_eq!(xs.read_string(&p)?, "committed");
        let tx = xs.transaction()?;
        tx.rm(&p)?;
        tx.abort()?;
        assert_eq!(xs.read_string(&p)?, "committed");
        xs.rm(TEST_ROOT)?;
        Ok(())
    }

    #[test]
    #[ignore = "needs xen"]
    fn async_watch_fires() -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
        rt.block_on(async {
            let writer = Xenstore::open()?;
            let p = join(TEST_ROOT, "watched");
            writer.write(&p, "0")?;
            let w = AsyncWatcher::new(Xenstore::open()?)?;
            w.watch(&p, "t1")?;
            // Initial event on registration.
            let ev = tokio::time::timeout(std::time::Duration::from_secs(5), w.next()).await??;
            assert_eq!((ev.path.as_str(), ev.token.as_str()), (p.as_str(), "t1"));
            writer.write(&p, "1")?;
            let ev = tokio::time::timeout(std::time::Duration::from_secs(5), w.next()).await??;
            assert_eq!(ev.token, "t1");
            w.unwatch(&p, "t1")?;
            writer.rm(TEST_ROOT)?;
            Ok(())
        })
    }
}
