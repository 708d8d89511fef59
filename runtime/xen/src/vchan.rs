//! Byte-stream channels between two domains over libxenvchan.
//!
//! A vchan is a pair of rings in pages one side (the *server*) grants to the
//! other (the *client*), plus an event channel. The server allocates the
//! rings and publishes `<xs_path>/ring-ref` and `<xs_path>/event-channel`
//! (readable by the peer); the client reads them, maps the pages and binds
//! the event channel. Data flows in both directions; there is no
//! half-close: [`Vchan`]'s drop (`libxenvchan_close`) closes both directions,
//! and the peer can still read whatever was in its receive ring.
//!
//! [`Vchan`] is the non-blocking handle; [`AsyncVchan`] implements
//! `tokio::io::AsyncRead` + `AsyncWrite` over it.
//!
//! # Notifications
//!
//! One event channel carries every notification: "data written", "data
//! consumed" (space freed), "peer connected" and "peer closed".
//! libxenvchan only notifies when the receiving side asked for it (a request
//! bit in the shared page, set by `read`/`write` when they come up short and
//! by [`Vchan::data_ready`] / [`Vchan::buffer_space`]), and the request is
//! cleared by the notification. So a waiter must (re)arm with
//! `data_ready()`/`buffer_space()` and re-check *after* arming, before it
//! sleeps. Each delivered event leaves the port masked until
//! [`Vchan::wait`] consumes it: a reader of [`Vchan::fd`] that skips
//! `wait()` never sees another event. The fd can hold more than one
//! notification (a fresh client starts with one left over from the
//! bind), and the device only signals readiness when its queue goes from
//! empty to non-empty, so edge-triggered users must drain it
//! ([`Vchan::drain_events`]); [`AsyncVchan`] does.
//!
//! # Trust
//!
//! Everything in the shared page can be changed by the peer at any time.
//! libxenvchan bounds every ring index it uses (XSA-86): a garbage index
//! makes the ring look empty/full ("locks up") instead of reading or writing
//! out of bounds. This module never touches the shared memory itself; it
//! only calls libxenvchan, checks the counts it returns against the buffer
//! it passed, and bounds its own retry loops so a peer flipping indices
//! cannot spin a task forever.

use std::ffi::{CString, c_int};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker, ready};

use bulkhead_xen_sys as sys;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::asyncfd::{ForeignFd, register_readable};
use crate::error::{Error, Result, last_errno};
use crate::evtchn::poll_readable_now;
use crate::logger::TracingLogger;
use crate::xenstore::validate_path;

/// Largest ring libxenvchan accepts (`MAX_RING_SIZE`, 1 MiB); larger
/// `read_min`/`write_min` are refused.
pub const MAX_RING_SIZE: usize = 1 << 20;

/// Longest `xs_path` accepted. libxenvchan formats `"<xs_path>/ring-ref"`
/// and `"<xs_path>/event-channel"` into 64-byte stack buffers with
/// `snprintf` and would silently use a truncated path beyond this.
pub const MAX_XS_PATH: usize = 63 - "/event-channel".len();

/// Most queued notifications [`Vchan::drain_events`] consumes per call (a
/// peer can notify as fast as we consume).
pub const DRAIN_LIMIT: usize = 64;

/// Attempts per poll before an async operation yields: bounds the work a
/// peer that keeps flipping the shared indices can make us do per wakeup.
const SPIN_LIMIT: usize = 32;

/// What `libxenvchan_is_open` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VchanState {
    /// Both ends are connected.
    Open,
    /// The peer called `libxenvchan_close`, or its process or domain died
    /// (the unmap notification registered at setup clears the peer's live
    /// byte and fires the event channel). Data still in our receive ring can
    /// be read.
    PeerClosed,
    /// Server only: no client has connected yet. Writes are accepted (they
    /// wait in the ring for the client).
    WaitingForClient,
}

/// Map `libxenvchan_is_open`'s value: 0 closed, 1 open, 2 (server only)
/// waiting. The value is the peer's live byte in the shared page, so the
/// peer can write anything; libxenvchan treats every non-zero value as
/// open, and so do we (a client seeing 2 is told `Open`).
pub(crate) fn state_from_raw(raw: c_int, is_server: bool) -> VchanState {
    match raw {
        0 => VchanState::PeerClosed,
        2 if is_server => VchanState::WaitingForClient,
        _ => VchanState::Open,
    }
}

/// Which end of the vchan a handle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Allocated the rings ([`Vchan::server`]).
    Server,
    /// Mapped the server's rings ([`Vchan::client`]).
    Client,
}

/// Validate an `xs_path` for libxenvchan: a valid xenstore path, not a
/// special `@` path, short enough for libxenvchan's fixed buffers.
pub(crate) fn validate_vchan_path(path: &str) -> Result<CString> {
    let invalid = |reason| Error::XenstoreInvalidPath { path: path.chars().take(MAX_XS_PATH + 16).collect(), reason };
    if path.starts_with('@') {
        return Err(invalid("special paths cannot hold a vchan"));
    }
    if path.len() > MAX_XS_PATH {
        return Err(invalid("too long for libxenvchan (49 bytes max)"));
    }
    validate_path(path)
}

/// Reset `errno` before a C call that may fail without setting it.
fn clear_errno() {
    // SAFETY: __errno_location returns this thread's errno slot, always
    // valid for writes.
    unsafe { *libc::__errno_location() = 0 };
}

/// `errno` after a failed C call, or `what` if the library failed without
/// setting it (libxenvchan has such paths, e.g. a missing ring-ref that
/// parses as 0).
fn errno_or(what: &'static str) -> io::Error {
    let e = last_errno();
    if e.raw_os_error() == Some(0) { io::Error::other(what) } else { e }
}

fn invalid_input(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Map the result of `libxenvchan_read`/`_write` for a `len`-byte buffer:
/// `Ok(Some(n))` for a count, `Ok(None)` for `-1`, and an error for a count
/// the buffer cannot hold (which libxenvchan never returns; checked anyway
/// because the count derives from shared-ring indices).
fn count(r: c_int, len: usize) -> std::result::Result<Option<usize>, io::Error> {
    match usize::try_from(r) {
        Ok(n) if n <= len => Ok(Some(n)),
        Ok(n) => Err(io::Error::other(format!("libxenvchan returned {n} for a {len}-byte buffer"))),
        Err(_) => Ok(None),
    }
}

/// Convert an error for `AsyncRead`/`AsyncWrite`, keeping the
/// `io::ErrorKind` (peer closed on write = `BrokenPipe`).
pub(crate) fn to_io_error(e: Error) -> io::Error {
    let kind = match &e {
        Error::VchanPeerClosed => io::ErrorKind::BrokenPipe,
        Error::VchanRead(s) | Error::VchanWrite(s) | Error::VchanWait(s) | Error::VchanFd(s) => s.kind(),
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// One end of a vchan, closed on drop (`libxenvchan_close`: marks our end
/// dead in the shared page, notifies the peer, unmaps/unshares the rings
/// and, for the server, removes `xs_path` from xenstore).
///
/// Always non-blocking: [`read`](Vchan::read) and [`write`](Vchan::write)
/// move what they can and return 0 when they cannot; wait for [`fd`]
/// readability and call [`wait`] / [`drain_events`] (or use
/// [`AsyncVchan`]).
///
/// `Send` but not `Sync`: libxenvchan does no locking and every call
/// (including the `&self` queries, which set notification-request bits)
/// updates the control structure and the shared page.
///
/// [`fd`]: Vchan::fd
/// [`wait`]: Vchan::wait
/// [`drain_events`]: Vchan::drain_events
pub struct Vchan {
    ctrl: NonNull<sys::libxenvchan>,
    role: Role,
    // Dropped after Drop::drop closed the vchan (its evtchn/gnttab/gntshr
    // handles log through it).
    _logger: Box<TracingLogger>,
}

// SAFETY: the control structure is heap memory owned by this value plus
// xenevtchn/xengnttab/xengntshr handles (fds and bookkeeping) and mappings
// of the shared pages; nothing in it is tied to the creating thread (no
// thread-locals, no thread-affine resources) and the logger only forwards
// to `tracing`, which is thread-safe. It is not Sync: libxenvchan has no
// locking and even the query functions write the shared notify bits and
// the event channel, so all calls must come from one thread at a time —
// which `!Sync` plus `&self` methods guarantee.
unsafe impl Send for Vchan {}

impl fmt::Debug for Vchan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vchan").field("ctrl", &self.ctrl).field("role", &self.role).finish()
    }
}

impl Vchan {
    /// Create the server end for `peer_domid`: allocate a receive ring of at
    /// least `read_min` and a send ring of at least `write_min` bytes
    /// (rounded up to a power of two; both at most [`MAX_RING_SIZE`]; small
    /// rings, <= 1024 and <= 2048 bytes, live in the control page itself),
    /// grant them to the peer and write `<xs_path>/ring-ref` and
    /// `<xs_path>/event-channel`, readable by the peer. The whole `xs_path`
    /// subtree is removed when the server is dropped, so give each vchan its
    /// own path (the conventional one is
    /// `/local/domain/<server>/data/vchan/<client>/<port>`), at most
    /// [`MAX_XS_PATH`] bytes.
    ///
    /// Note: libxenvchan 4.17's own failure path after the grant device was
    /// opened (event channel or page sharing failing) frees an
    /// uninitialised field; creation is expected to succeed wherever
    /// `/dev/xen/{evtchn,gntalloc}` work.
    pub fn server(peer_domid: u32, xs_path: &str, read_min: usize, write_min: usize) -> Result<Self> {
        let path = validate_vchan_path(xs_path)?;
        let fail = |source| Error::VchanServerInit { peer_domid, path: xs_path.to_owned(), source };
        let domain = c_int::try_from(peer_domid).map_err(|_| fail(invalid_input("domain id out of range")))?;
        if read_min > MAX_RING_SIZE || write_min > MAX_RING_SIZE {
            return Err(fail(invalid_input("ring size over libxenvchan's 1 MiB limit")));
        }
        let logger = TracingLogger::new();
        clear_errno();
        // SAFETY: logger is a valid xentoollog_logger that outlives the
        // vchan (stored alongside it and dropped after close); path is a
        // NUL-terminated string short enough for libxenvchan's 64-byte
        // formatting buffers (validated), only read during the call (the
        // library keeps its own strdup); the ring sizes are within the
        // library's limit. Returns a fresh malloc'd control structure or
        // NULL.
        let p = unsafe { sys::libxenvchan_server_init(logger.as_ptr(), domain, path.as_ptr(), read_min, write_min) };
        let ctrl = NonNull::new(p).ok_or_else(|| fail(errno_or("libxenvchan_server_init failed")))?;
        Ok(Self::adopt(ctrl, Role::Server, logger))
    }

    /// Connect to the server end in `server_domid` whose ring-ref and
    /// event-channel are under `xs_path`. Only one client may connect to a
    /// server (libxenvchan does no locking).
    pub fn client(server_domid: u32, xs_path: &str) -> Result<Self> {
        let path = validate_vchan_path(xs_path)?;
        let fail = |source| Error::VchanClientInit { server_domid, path: xs_path.to_owned(), source };
        let domain = c_int::try_from(server_domid).map_err(|_| fail(invalid_input("domain id out of range")))?;
        let logger = TracingLogger::new();
        clear_errno();
        // SAFETY: as in `server`: valid logger outliving the vchan, valid
        // bounded path only read during the call. The ring orders it reads
        // from the server's page are range-checked by libxenvchan before
        // use.
        let p = unsafe { sys::libxenvchan_client_init(logger.as_ptr(), domain, path.as_ptr()) };
        let ctrl = NonNull::new(p).ok_or_else(|| fail(errno_or("libxenvchan_client_init failed")))?;
        Ok(Self::adopt(ctrl, Role::Client, logger))
    }

    fn adopt(ctrl: NonNull<sys::libxenvchan>, role: Role, logger: Box<TracingLogger>) -> Self {
        // SAFETY: ctrl is the valid control structure the init call just
        // returned, owned by us and not yet used by anyone else. The init
        // functions malloc it and never set `blocking`, so it must be set
        // before any read/write; the bitfield's byte is fully initialised
        // (init read-modify-wrote it to set is_server). The raw setter
        // writes through the pointer without creating a reference to the
        // partly uninitialised struct.
        unsafe { sys::libxenvchan::set_blocking_raw(ctrl.as_ptr(), 0) };
        Vchan { ctrl, role, _logger: logger }
    }

    fn raw(&self) -> *mut sys::libxenvchan {
        self.ctrl.as_ptr()
    }

    /// Which end this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Read what is available, up to `buf.len()` bytes.
    ///
    /// `Ok(0)`: nothing available now (or `buf` is empty).
    /// `Err(Error::VchanPeerClosed)`: the peer has closed and everything it
    /// sent has been read (end of stream).
    pub fn read(&self, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        clear_errno();
        // SAFETY: ctrl valid (owned); buf is writable for buf.len() bytes and
        // libxenvchan_read copies at most that many (min of the size and the
        // bounds-checked amount ready) and keeps no pointer to it.
        let r = unsafe { sys::libxenvchan_read(self.raw(), buf.as_mut_ptr().cast(), buf.len()) };
        match count(r, buf.len()).map_err(Error::VchanRead)? {
            Some(n) => Ok(n),
            // -1 with nothing ready means "closed"; otherwise the event
            // channel notify after consuming failed (the bytes are gone).
            None if self.is_open() == VchanState::PeerClosed => Err(Error::VchanPeerClosed),
            None => Err(Error::VchanRead(errno_or("libxenvchan_read failed"))),
        }
    }

    /// Write as much of `data` as fits in the send ring; `Ok(0)` if the ring
    /// is full. `Err(Error::VchanPeerClosed)` once the peer has closed.
    ///
    /// If the event channel notify after copying fails, libxenvchan reports
    /// an error although the bytes are already in the ring.
    pub fn write(&self, data: &[u8]) -> Result<usize> {
        clear_errno();
        // SAFETY: ctrl valid; data is readable for data.len() bytes and
        // libxenvchan_write copies at most that many (min of the size and
        // the bounds-checked free space) without keeping the pointer.
        let r = unsafe { sys::libxenvchan_write(self.raw(), data.as_ptr().cast(), data.len()) };
        match count(r, data.len()).map_err(Error::VchanWrite)? {
            Some(n) => Ok(n),
            None if self.is_open() == VchanState::PeerClosed => Err(Error::VchanPeerClosed),
            None => Err(Error::VchanWrite(errno_or("libxenvchan_write failed"))),
        }
    }

    /// Bytes ready to read. Also asks the peer to notify us when it writes
    /// more (so checking this after an empty read and before sleeping
    /// cannot miss data).
    pub fn data_ready(&self) -> usize {
        // SAFETY: ctrl valid; the function reads the shared indices and
        // returns 0 when they are inconsistent.
        let r = unsafe { sys::libxenvchan_data_ready(self.raw()) };
        usize::try_from(r).unwrap_or(0)
    }

    /// Free space in the send ring. Also asks the peer to notify us when it
    /// consumes data.
    pub fn buffer_space(&self) -> usize {
        // SAFETY: ctrl valid; reads the shared indices, 0 when inconsistent.
        let r = unsafe { sys::libxenvchan_buffer_space(self.raw()) };
        usize::try_from(r).unwrap_or(0)
    }

    /// Connection state (see [`VchanState`]).
    pub fn is_open(&self) -> VchanState {
        // SAFETY: ctrl valid; reads the peer's live byte in the shared page.
        let r = unsafe { sys::libxenvchan_is_open(self.raw()) };
        state_from_raw(r, self.role == Role::Server)
    }

    /// The event channel fd: readable when an event (data, space, connect,
    /// close) is pending; then call [`wait`](Vchan::wait).
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: ctrl valid; returns the fd of the vchan's xenevtchn handle.
        let fd = unsafe { sys::libxenvchan_fd_for_select(self.raw()) };
        // SAFETY: the fd stays open until libxenvchan_close in Drop, which
        // cannot run while this borrow of self is alive.
        unsafe { BorrowedFd::borrow_raw(fd) }
    }

    /// Consume the pending event notification and unmask the port.
    ///
    /// **Blocks** until an event arrives if none is pending: call it only
    /// after [`fd`](Vchan::fd) polled readable (or use
    /// [`try_wait`](Vchan::try_wait)). It does not say what happened; re-check
    /// `read`/`write`/`is_open` afterwards.
    pub fn wait(&self) -> Result<()> {
        clear_errno();
        // SAFETY: ctrl valid; xenevtchn_pending + unmask on its own handle.
        let r = unsafe { sys::libxenvchan_wait(self.raw()) };
        if r < 0 { Err(Error::VchanWait(errno_or("libxenvchan_wait failed"))) } else { Ok(()) }
    }

    /// [`wait`](Vchan::wait) if an event is pending (zero-timeout poll of
    /// the fd first), never blocking. True if one was consumed.
    pub fn try_wait(&self) -> Result<bool> {
        if poll_readable_now(self.fd()).map_err(Error::VchanWait)? { self.wait().map(|()| true) } else { Ok(false) }
    }

    /// Consume every queued notification until the fd is no longer
    /// readable (at most [`DRAIN_LIMIT`] per call). Returns how many were
    /// consumed and whether the fd is now drained (`false`: more are
    /// queued, call again).
    ///
    /// Needed with edge-triggered readiness (epoll `EPOLLET`, tokio): the fd
    /// can hold more than one notification. A client's queue starts with
    /// the event Xen raises when the channel is bound, which
    /// `libxenvchan_client_init` unmasks without consuming, and the next
    /// notification queues behind it. The evtchn device signals readiness
    /// only when its queue goes from empty to non-empty, so a consumer that
    /// takes one notification per wakeup leaves one behind and is never
    /// woken again.
    pub fn drain_events(&self) -> Result<(usize, bool)> {
        for n in 0..DRAIN_LIMIT {
            if !self.try_wait()? {
                return Ok((n, true));
            }
        }
        Ok((DRAIN_LIMIT, !poll_readable_now(self.fd()).map_err(Error::VchanWait)?))
    }
}

impl Drop for Vchan {
    fn drop(&mut self) {
        // SAFETY: ctrl came from a successful init and is closed exactly
        // once; no borrow (fd, AsyncFd registration) outlives self.
        unsafe { sys::libxenvchan_close(self.raw()) };
    }
}

/// Direction of an [`AsyncVchan`] operation waiting for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Read = 0,
    Write = 1,
}

impl Dir {
    fn other(self) -> Dir {
        match self {
            Dir::Read => Dir::Write,
            Dir::Write => Dir::Read,
        }
    }
}

/// The wakers of a pending read and a pending write.
///
/// Both directions wait on readability of the same fd, but tokio keeps only
/// one waker per direction of an `AsyncFd` for the `poll_*` API, so a read
/// half and a write half polled from two tasks (`tokio::io::split`) would
/// overwrite each other's waker and one would never wake. Instead tokio is
/// always given the waker of this struct, which wakes both.
#[derive(Debug, Default)]
struct WakerPair {
    slots: Mutex<[Option<Waker>; 2]>,
}

impl WakerPair {
    fn lock(&self) -> MutexGuard<'_, [Option<Waker>; 2]> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn register(&self, dir: Dir, waker: &Waker) {
        let mut slots = self.lock();
        let slot = &mut slots[dir as usize];
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    fn forget(&self, dir: Dir) {
        self.lock()[dir as usize] = None;
    }

    fn wake_dir(&self, dir: Dir) {
        let w = self.lock()[dir as usize].take();
        if let Some(w) = w {
            w.wake();
        }
    }

    fn wake_all(&self) {
        let [r, w] = std::mem::take(&mut *self.lock());
        for w in [r, w].into_iter().flatten() {
            w.wake();
        }
    }
}

impl Wake for WakerPair {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

/// A [`Vchan`] as a tokio byte stream (`AsyncRead` + `AsyncWrite`).
///
/// * Reads return what is available; end of stream once the peer has
///   closed and its data is drained.
/// * Writes are partial; `Pending` while the ring is full, until the peer
///   consumes. After the peer closed they fail with `BrokenPipe`.
/// * `poll_flush` is a no-op (written bytes are already in the shared
///   ring). `poll_shutdown` is a no-op too: a vchan has no half-close, so
///   it would otherwise cut the other direction; drop the stream (all
///   halves) to close.
///
/// Works with `tokio::io::split`, read and write halves in different tasks.
#[derive(Debug)]
pub struct AsyncVchan {
    // Registration first: dropped (deregistered) before the vchan closes
    // the fd.
    afd: AsyncFd<ForeignFd>,
    vchan: Vchan,
    wakers: Arc<WakerPair>,
    fan_out: Waker,
}

impl AsyncVchan {
    /// Wrap a vchan. Must be called inside a tokio runtime with IO enabled.
    pub fn new(vchan: Vchan) -> Result<Self> {
        let raw = vchan.fd().as_raw_fd();
        // SAFETY: the fd belongs to `vchan`, stored in the returned value
        // after `afd`, so the registration is dropped before
        // libxenvchan_close closes the fd (into_inner drops it first too).
        let afd = unsafe { register_readable(raw) }.map_err(Error::VchanFd)?;
        let wakers = Arc::new(WakerPair::default());
        let fan_out = Waker::from(wakers.clone());
        Ok(AsyncVchan { afd, vchan, wakers, fan_out })
    }

    /// The wrapped vchan (state and ring queries). Reading or writing
    /// through it directly is fine; calling its `wait` is not (it would
    /// block or steal the readiness this stream waits for).
    pub fn get_ref(&self) -> &Vchan {
        &self.vchan
    }

    /// Unregister from the reactor and return the vchan.
    pub fn into_inner(self) -> Vchan {
        let AsyncVchan { afd, vchan, .. } = self;
        drop(afd);
        vchan
    }

    /// Wait for an event on behalf of `dir`. `Ready(Ok)` means an event (or
    /// a stale readiness) was handled: retry the operation.
    fn poll_event(&mut self, cx: &mut Context<'_>, dir: Dir) -> Poll<io::Result<()>> {
        self.wakers.register(dir, cx.waker());
        let mut fan_cx = Context::from_waker(&self.fan_out);
        let mut guard = ready!(self.afd.poll_read_ready(&mut fan_cx))?;
        // Consume the queued notifications: that unmasks the port and
        // empties the device's queue, which signals readiness (a new edge
        // for the reactor) only when it goes from empty to non-empty. The
        // zero-timeout polls inside keep a stale readiness from blocking in
        // xenevtchn_pending.
        let drained = self.vchan.drain_events();
        if matches!(drained, Ok((_, true))) {
            guard.clear_ready();
        }
        // Otherwise (a peer notifying as fast as we consume, or an error)
        // the readiness stays set and the next poll comes straight back.
        self.wakers.forget(dir);
        // The event may have been meant for the other direction (space
        // freed vs data written): let its waiter re-check.
        self.wakers.wake_dir(dir.other());
        drained.map_err(to_io_error)?;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for AsyncVchan {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        for _ in 0..SPIN_LIMIT {
            match this.vchan.read(buf.initialize_unfilled()) {
                Ok(0) => {}
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // End of stream: nothing filled.
                Err(Error::VchanPeerClosed) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(to_io_error(e))),
            }
            if this.poll_event(cx, Dir::Read)?.is_pending() {
                // Registered with the reactor. data_ready() re-arms the
                // peer's notify-on-write and re-reads the index: data that
                // arrived before the arming is seen here, data after it
                // raises an event that wakes us. A close always notifies.
                if this.vchan.data_ready() > 0 || this.vchan.is_open() == VchanState::PeerClosed {
                    continue;
                }
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl AsyncWrite for AsyncVchan {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        for _ in 0..SPIN_LIMIT {
            match this.vchan.write(data) {
                Ok(0) => {}
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) => return Poll::Ready(Err(to_io_error(e))),
            }
            if this.poll_event(cx, Dir::Write)?.is_pending() {
                // As in poll_read: buffer_space() re-arms the peer's
                // notify-on-consume before re-reading the index.
                if this.vchan.buffer_space() > 0 || this.vchan.is_open() == VchanState::PeerClosed {
                    continue;
                }
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn is_open_values() {
        assert_eq!(state_from_raw(0, true), VchanState::PeerClosed);
        assert_eq!(state_from_raw(0, false), VchanState::PeerClosed);
        assert_eq!(state_from_raw(1, true), VchanState::Open);
        assert_eq!(state_from_raw(1, false), VchanState::Open);
        assert_eq!(state_from_raw(2, true), VchanState::WaitingForClient);
        // A client never waits; a hostile server may still write 2 (or
        // anything) into its live byte: libxenvchan calls it open.
        assert_eq!(state_from_raw(2, false), VchanState::Open);
        assert_eq!(state_from_raw(0x7f, true), VchanState::Open);
        assert_eq!(state_from_raw(-1, false), VchanState::Open);
    }

    #[test]
    fn path_limits() {
        assert_eq!(MAX_XS_PATH, 49);
        let ok = format!("/{}", "a".repeat(MAX_XS_PATH - 1));
        assert!(validate_vchan_path(&ok).is_ok());
        assert!(validate_vchan_path("data/vchan/3/1").is_ok());
        let long = format!("/{}", "a".repeat(MAX_XS_PATH));
        assert!(matches!(
            validate_vchan_path(&long),
            Err(Error::XenstoreInvalidPath { reason: "too long for libxenvchan (49 bytes max)", .. })
        ));
        assert!(matches!(validate_vchan_path("@releaseDomain"), Err(Error::XenstoreInvalidPath { .. })));
        assert!(matches!(validate_vchan_path("/a b"), Err(Error::XenstoreInvalidPath { .. })));
        assert!(matches!(validate_vchan_path("/a\0b"), Err(Error::XenstoreInvalidPath { .. })));
        assert!(matches!(validate_vchan_path(""), Err(Error::XenstoreInvalidPath { .. })));
    }

    /// Arguments libxenvchan would refuse (or misuse) are rejected before
    /// any Xen device is touched, so this runs anywhere.
    #[test]
    fn bad_arguments_fail_before_c() {
        let e = Vchan::server(1, "/local/domain/0/data/v", MAX_RING_SIZE + 1, 4096).err();
        match e {
            Some(Error::VchanServerInit { peer_domid: 1, ref path, ref source }) => {
                assert_eq!(path, "/local/domain/0/data/v");
                assert_eq!(source.kind(), io::ErrorKind::InvalidInput);
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = Vchan::server(u32::MAX, "/local/domain/0/data/v", 4096, 4096).err();
        assert!(
            matches!(e, Some(Error::VchanServerInit { ref source, .. }) if source.kind() == io::ErrorKind::InvalidInput)
        );
        let e = Vchan::client(u32::MAX, "/local/domain/0/data/v").err();
        assert!(
            matches!(e, Some(Error::VchanClientInit { ref source, .. }) if source.kind() == io::ErrorKind::InvalidInput)
        );
        let e = Vchan::client(0, &format!("/{}", "x".repeat(60))).err();
        assert!(matches!(e, Some(Error::XenstoreInvalidPath { .. })));
    }

    #[test]
    fn counts_are_bounded_by_the_buffer() {
        assert_eq!(count(0, 10).ok(), Some(Some(0)));
        assert_eq!(count(10, 10).ok(), Some(Some(10)));
        assert_eq!(count(-1, 10).ok(), Some(None));
        assert!(count(11, 10).is_err());
    }

    #[test]
    fn errno_or_falls_back_when_errno_is_unset() {
        clear_errno();
        let e = errno_or("thing failed");
        assert_eq!(e.raw_os_error(), None);
        assert_eq!(e.to_string(), "thing failed");
        // SAFETY: setting errno for this thread is always allowed.
        unsafe { *libc::__errno_location() = libc::ENOENT };
        assert_eq!(errno_or("thing failed").raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn error_messages_and_io_kinds() {
        let e = Error::VchanServerInit {
            peer_domid: 3,
            path: "/local/domain/0/data/vchan/3/1".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(e.to_string(), "libxenvchan_server_init for peer domain 3 at /local/domain/0/data/vchan/3/1 failed");
        let e = Error::VchanClientInit {
            server_domid: 0,
            path: "/local/domain/0/data/vchan/3/1".into(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(
            e.to_string(),
            "libxenvchan_client_init to server domain 0 at /local/domain/0/data/vchan/3/1 failed"
        );
        assert!(std::error::Error::source(&e).is_some());

        let io = to_io_error(Error::VchanPeerClosed);
        assert_eq!(io.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(io.to_string(), "the vchan peer has closed the channel");
        let io = to_io_error(Error::VchanRead(io::Error::from_raw_os_error(libc::EINVAL)));
        assert_eq!(io.kind(), io::ErrorKind::InvalidInput);
        let io = to_io_error(Error::VchanWait(io::Error::from_raw_os_error(libc::EBADF)));
        assert_eq!(io.to_string(), "libxenvchan_wait failed");
        let io = to_io_error(Error::WorkerGone);
        assert_eq!(io.kind(), io::ErrorKind::Other);
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn waker_pair_wakes_both_directions() {
        let pair = Arc::new(WakerPair::default());
        let fan = Waker::from(pair.clone());
        let (r, w) = (Arc::new(CountingWaker::default()), Arc::new(CountingWaker::default()));
        pair.register(Dir::Read, &Waker::from(r.clone()));
        pair.register(Dir::Write, &Waker::from(w.clone()));
        fan.wake_by_ref();
        assert_eq!((r.0.load(Ordering::SeqCst), w.0.load(Ordering::SeqCst)), (1, 1));
        // Woken wakers are consumed: a second wake needs new registrations.
        fan.wake_by_ref();
        assert_eq!((r.0.load(Ordering::SeqCst), w.0.load(Ordering::SeqCst)), (1, 1));

        pair.register(Dir::Read, &Waker::from(r.clone()));
        pair.register(Dir::Write, &Waker::from(w.clone()));
        pair.wake_dir(Dir::Read.other());
        assert_eq!((r.0.load(Ordering::SeqCst), w.0.load(Ordering::SeqCst)), (1, 2));
        pair.forget(Dir::Read);
        fan.wake();
        assert_eq!((r.0.load(Ordering::SeqCst), w.0.load(Ordering::SeqCst)), (1, 2));
    }

    #[test]
    fn async_vchan_is_send() {
        fn send<T: Send>() {}
        send::<Vchan>();
        send::<AsyncVchan>();
        send::<tokio::io::ReadHalf<AsyncVchan>>();
    }

    // ----- needs xen: loopback in dom0 (server for domain 0, client to
    // domain 0, both in this process) -----

    static PATHS: AtomicUsize = AtomicUsize::new(0);

    /// A fresh xenstore path per vchan; libxenvchan removes it when the
    /// server closes.
    fn test_path() -> String {
        let p = format!(
            "/local/domain/0/data/bulkhead-test/{}-{}",
            std::process::id(),
            PATHS.fetch_add(1, Ordering::SeqCst)
        );
        assert!(p.len() <= MAX_XS_PATH, "{p}");
        p
    }

    /// Consume one event if one arrives within `timeout`.
    fn wait_event(v: &Vchan, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if v.try_wait()? {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Consume every pending event (and re-deliveries after unmask).
    fn settle_events(v: &Vchan) -> Result<()> {
        while wait_event(v, Duration::from_millis(50))? {}
        Ok(())
    }

    fn read_exactly(v: &Vchan, len: usize) -> Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while got < len {
            let n = v.read(&mut out[got..])?;
            got += n;
            if n == 0 {
                assert!(Instant::now() < deadline, "timed out after {got} of {len} bytes");
                v.try_wait()?;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(out)
    }

    #[test]
    #[ignore = "needs xen"]
    fn loopback_round_trip() -> anyhow::Result<()> {
        let path = test_path();
        let srv = Vchan::server(0, &path, 4096, 8192)?;
        assert_eq!(srv.role(), Role::Server);
        assert_eq!(srv.is_open(), VchanState::WaitingForClient);

        // What the server published, readable by the peer.
        let xs = crate::Xenstore::open()?;
        let perms = xs.get_permissions(&format!("{path}/ring-ref"))?;
        assert_eq!(perms.first().map(|p| p.access), Some(crate::xenstore::Access::None), "{perms:?}");
        assert!(perms.iter().skip(1).any(|p| p.domid == 0 && p.access == crate::xenstore::Access::Read), "{perms:?}");
        assert!(xs.read_string(&format!("{path}/event-channel"))?.parse::<u32>()? > 0);

        // Writes before the client connects wait in the ring.
        assert_eq!(srv.write(b"early")?, 5);
        let mut buf = [0u8; 64];
        assert_eq!(srv.read(&mut buf)?, 0);

        settle_events(&srv)?;
        let cli = Vchan::client(0, &path)?;
        assert_eq!(cli.role(), Role::Client);
        assert_eq!(cli.is_open(), VchanState::Open);
        assert_eq!(srv.is_open(), VchanState::Open);
        assert!(wait_event(&srv, Duration::from_secs(5))?, "client connect did not notify the server");

        // read_min is the server's receive ring, write_min its send ring.
        assert_eq!(srv.buffer_space(), 8192 - 5);
        assert_eq!(cli.buffer_space(), 4096);
        assert_eq!(cli.data_ready(), 5);
        assert_eq!(read_exactly(&cli, 5)?, b"early");
        assert_eq!(cli.read(&mut buf)?, 0);

        for i in 0..5 {
            let ping = format!("ping {i}");
            assert_eq!(srv.write(ping.as_bytes())?, ping.len());
            assert_eq!(read_exactly(&cli, ping.len())?, ping.as_bytes());
            let pong = format!("pong {i} from the client");
            assert_eq!(cli.write(pong.as_bytes())?, pong.len());
            assert_eq!(read_exactly(&srv, pong.len())?, pong.as_bytes());
        }

        // A write the peer asked to hear about raises an event.
        settle_events(&cli)?;
        assert_eq!(cli.data_ready(), 0);
        srv.write(b"x")?;
        assert!(wait_event(&cli, Duration::from_secs(5))?, "write did not notify");
        assert_eq!(read_exactly(&cli, 1)?, b"x");

        // Partial writes: the client's send ring is 4096 bytes.
        let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(cli.write(&big)?, 4096);
        assert_eq!(cli.write(&big[4096..])?, 0);
        assert_eq!(cli.buffer_space(), 0);
        // Consuming raises the "space" event the short write asked for.
        settle_events(&cli)?;
        let mut sink = vec![0u8; 10_000];
        assert_eq!(srv.read(&mut sink)?, 4096);
        assert_eq!(&sink[..4096], &big[..4096]);
        assert!(wait_event(&cli, Duration::from_secs(5))?, "consume did not notify");
        assert_eq!(cli.buffer_space(), 4096);
        // Wraps around the ring end.
        assert_eq!(cli.write(&big[4096..8000])?, 3904);
        assert_eq!(read_exactly(&srv, 3904)?, &big[4096..8000]);
        Ok(())
    }

    #[test]
    #[ignore = "needs xen"]
    fn loopback_close_gives_eof() -> anyhow::Result<()> {
        // Server closes first.
        let path = test_path();
        let srv = Vchan::server(0, &path, 4096, 4096)?;
        let cli = Vchan::client(0, &path)?;
        assert_eq!(srv.write(b"bye")?, 3);
        settle_events(&cli)?;
        drop(srv);
        assert!(wait_event(&cli, Duration::from_secs(5))?, "close did not notify");
        assert_eq!(cli.is_open(), VchanState::PeerClosed);
        // Data sent before the close is still there, then end of stream.
        assert_eq!(cli.data_ready(), 3);
        assert_eq!(read_exactly(&cli, 3)?, b"bye");
        assert!(matches!(cli.read(&mut [0u8; 8]), Err(Error::VchanPeerClosed)));
        assert!(matches!(cli.write(b"late"), Err(Error::VchanPeerClosed)));
        // The server removed its xenstore path.
        let xs = crate::Xenstore::open()?;
        assert_eq!(xs.try_read(&format!("{path}/ring-ref"))?, None);
        drop(cli);

        // Client closes first.
        let path = test_path();
        let srv = Vchan::server(0, &path, 4096, 4096)?;
        let cli = Vchan::client(0, &path)?;
        assert_eq!(cli.write(b"last words")?, 10);
        settle_events(&srv)?;
        drop(cli);
        assert!(wait_event(&srv, Duration::from_secs(5))?, "close did not notify");
        assert_eq!(srv.is_open(), VchanState::PeerClosed);
        assert_eq!(read_exactly(&srv, 10)?, b"last words");
        assert!(matches!(srv.read(&mut [0u8; 8]), Err(Error::VchanPeerClosed)));
        assert!(matches!(srv.write(b"late"), Err(Error::VchanPeerClosed)));
        Ok(())
    }

    fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()
    }

    #[test]
    #[ignore = "needs xen"]
    fn loopback_async_close_wakes_reader_and_writer() -> anyhow::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        runtime()?.block_on(async {
            let path = test_path();
            let srv = AsyncVchan::new(Vchan::server(0, &path, 4096, 4096)?)?;
            let cli = AsyncVchan::new(Vchan::client(0, &path)?)?;
            let (mut sr, mut sw) = tokio::io::split(srv);
            // A reader parked on an empty ring and a writer parked on a full
            // one, both in their own tasks.
            let reader = tokio::spawn(async move {
                let mut all = Vec::new();
                sr.read_to_end(&mut all).await.map(|_| all)
            });
            let writer = tokio::spawn(async move { sw.write_all(&vec![7u8; 64 * 1024]).await });
            let mut cli = cli;
            cli.write_all(b"hello then goodbye").await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!reader.is_finished() && !writer.is_finished());
            drop(cli);
            let got = tokio::time::timeout(Duration::from_secs(10), reader).await???;
            assert_eq!(got, b"hello then goodbye");
            let w = tokio::time::timeout(Duration::from_secs(10), writer).await??;
            assert_eq!(w.err().map(|e| e.kind()), Some(io::ErrorKind::BrokenPipe));
            anyhow::Ok(())
        })
    }

    /// 64-bit FNV-1a, to compare the streams.
    fn fnv(h: u64, data: &[u8]) -> u64 {
        data.iter().fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    }
    const FNV_INIT: u64 = 0xcbf2_9ce4_8422_2325;

    /// Deterministic pseudo-random stream (xorshift64*).
    fn fill(state: &mut u64, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            *state ^= *state >> 12;
            *state ^= *state << 25;
            *state ^= *state >> 27;
            let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    async fn send_stream(
        mut w: impl tokio::io::AsyncWrite + Unpin,
        seed: u64,
        total: usize,
        progress: Arc<AtomicUsize>,
    ) -> io::Result<u64> {
        use tokio::io::AsyncWriteExt;
        let mut state = seed;
        let mut sum = FNV_INIT;
        // Odd chunk size so writes straddle the ring end in varying places.
        let mut buf = vec![0u8; 12_345];
        let mut sent = 0;
        while sent < total {
            let n = buf.len().min(total - sent);
            fill(&mut state, &mut buf[..n]);
            w.write_all(&buf[..n]).await?;
            sum = fnv(sum, &buf[..n]);
            sent += n;
            progress.store(sent, Ordering::Relaxed);
        }
        w.flush().await?;
        Ok(sum)
    }

    async fn recv_stream(
        mut r: impl tokio::io::AsyncRead + Unpin,
        total: usize,
        progress: Arc<AtomicUsize>,
    ) -> io::Result<u64> {
        use tokio::io::AsyncReadExt;
        let mut sum = FNV_INIT;
        let mut buf = vec![0u8; 16 * 1024];
        let mut got = 0;
        while got < total {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("EOF after {got} bytes")));
            }
            sum = fnv(sum, &buf[..n]);
            got += n;
            progress.store(got, Ordering::Relaxed);
        }
        Ok(sum)
    }

    /// Print straight to the stderr handle: libtest captures `eprintln!` of
    /// passing tests, and these figures are wanted in the CI log.
    fn report(msg: std::fmt::Arguments<'_>) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{msg}");
    }

    /// Push `total` bytes each way through a fresh loopback vchan with
    /// `ring`-byte rings, both directions at once, four tasks; returns the
    /// elapsed seconds after checking both streams' checksums.
    async fn bulk_both_ways(total: usize, ring: usize, limit: Duration) -> anyhow::Result<f64> {
        let path = test_path();
        let srv = AsyncVchan::new(Vchan::server(0, &path, ring, ring)?)?;
        let cli = AsyncVchan::new(Vchan::client(0, &path)?)?;
        assert_eq!(srv.get_ref().buffer_space(), ring);
        assert_eq!(cli.get_ref().buffer_space(), ring);
        let fds = [srv.get_ref().fd().as_raw_fd(), cli.get_ref().fd().as_raw_fd()];
        let (sr, sw) = tokio::io::split(srv);
        let (cr, cw) = tokio::io::split(cli);
        let progress: [Arc<AtomicUsize>; 4] = Default::default();
        let start = Instant::now();
        // Four tasks: each half parks and wakes independently.
        let s2c = tokio::spawn(send_stream(sw, 0x5eed_0001, total, progress[0].clone()));
        let c2s = tokio::spawn(send_stream(cw, 0x5eed_0002, total, progress[1].clone()));
        let at_cli = tokio::spawn(recv_stream(cr, total, progress[2].clone()));
        let at_srv = tokio::spawn(recv_stream(sr, total, progress[3].clone()));
        let all = async { Ok::<_, anyhow::Error>((s2c.await??, c2s.await??, at_cli.await??, at_srv.await??)) };
        let shown = progress.clone();
        let monitor = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let [a, b, c, d] = shown.each_ref().map(|p| p.load(Ordering::Relaxed));
                report(format_args!(
                    "  vchan bulk progress at {:.0?}: srv sent {a}, cli got {c}; cli sent {b}, srv got {d}",
                    start.elapsed()
                ));
            }
        });
        let res = tokio::time::timeout(limit, all).await;
        monitor.abort();
        let [a, b, c, d] = progress.each_ref().map(|p| p.load(Ordering::Relaxed));
        let Ok(res) = res else {
            let readable = fds.map(|fd| {
                // SAFETY: the fds belong to the vchans, still alive in the
                // (timed out, not yet dropped) tasks.
                poll_readable_now(unsafe { BorrowedFd::borrow_raw(fd) }).unwrap_or(false)
            });
            anyhow::bail!(
                "timed out: srv sent {a}, cli got {c}; cli sent {b}, srv got {d} of {total}; fd readable (srv, cli): \
                 {readable:?}"
            );
        };
        let (sent_s2c, sent_c2s, got_cli, got_srv) = res?;
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(sent_s2c, got_cli, "server->client stream differs");
        assert_eq!(sent_c2s, got_srv, "client->server stream differs");
        let mib = total as f64 / f64::from(1 << 20);
        report(format_args!(
            "vchan dom0 loopback, {ring}-byte rings: {mib} MiB each way at once in {secs:.2} s = {:.1} MiB/s per \
             direction, {:.1} MiB/s total",
            mib / secs,
            2.0 * mib / secs
        ));
        Ok(secs)
    }

    #[test]
    #[ignore = "needs xen"]
    fn loopback_async_8mib_both_directions() -> anyhow::Result<()> {
        runtime()?.block_on(async {
            // Warm-up probe, so a slow run shows its rate before the big one.
            bulk_both_ways(256 << 10, 4096, Duration::from_secs(20)).await?;
            bulk_both_ways(8 << 20, 4096, Duration::from_secs(300)).await?;
            // For comparison: the same with 64 KiB rings (fewer events).
            bulk_both_ways(8 << 20, 64 << 10, Duration::from_secs(300)).await?;
            anyhow::Ok(())
        })
    }

    /// Block in poll() on the vchan fd for up to `timeout`.
    fn poll_fd(v: &Vchan, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd { fd: v.fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: pfd is a valid array of one pollfd for the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        r > 0
    }

    /// Diagnostic: how long one notification takes, write to fd readable.
    #[test]
    #[ignore = "needs xen"]
    fn loopback_notification_queue_and_latency() -> anyhow::Result<()> {
        let path = test_path();
        let srv = Vchan::server(0, &path, 4096, 4096)?;
        let cli = Vchan::client(0, &path)?;
        // The client asked for data notifications at connect time.
        srv.write(b"x")?;
        std::thread::sleep(Duration::from_millis(50));
        let (queued, drained) = cli.drain_events()?;
        report(format_args!(
            "vchan dom0 loopback: client fd held {queued} notification(s) after connect + one write (drained: \
             {drained})"
        ));
        assert!(queued >= 1 && drained);
        let mut buf = [0u8; 8];
        assert_eq!(cli.read(&mut buf)?, 1);
        settle_events(&srv)?;
        settle_events(&cli)?;
        let n = 200;
        let start = Instant::now();
        for _ in 0..n {
            assert_eq!(cli.data_ready(), 0);
            srv.write(b"p")?;
            assert!(poll_fd(&cli, Duration::from_secs(5)), "no event");
            cli.wait()?;
            assert_eq!(cli.read(&mut buf)?, 1);
            assert_eq!(srv.data_ready(), 0);
            cli.write(b"q")?;
            assert!(poll_fd(&srv, Duration::from_secs(5)), "no event");
            srv.wait()?;
            assert_eq!(srv.read(&mut buf)?, 1);
        }
        let per = start.elapsed() / (2 * n);
        report(format_args!("vchan dom0 loopback: one notification + wakeup (sync, poll) takes {per:?}"));
        Ok(())
    }
}
