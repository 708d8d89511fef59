//! Event channels over libxenevtchn (`/dev/xen/evtchn`).
//!
//! Typical use with a zone: the zone (or the toolstack on its behalf)
//! allocates an unbound port for dom0, we bind to it with
//! [`EventChannels::bind_interdomain`], then [`EventChannels::notify`] to
//! kick the other side and wait for kicks with
//! [`AsyncEventChannels::next_pending`] (or the blocking calls), unmasking
//! the port after each one.
//!
//! libxenevtchn warns that setting its fd non-blocking "may not work"
//! (`xenevtchn_pending` may still block), so readiness is always confirmed
//! with a zero-timeout `poll()` right before each `xenevtchn_pending`; the fd
//! itself stays blocking.

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use bulkhead_xen_sys as sys;
use tokio::io::unix::AsyncFd;

use crate::asyncfd::{ForeignFd, register_readable};
use crate::error::{Error, Result, last_errno};
use crate::logger::TracingLogger;

/// A local event channel port number (`evtchn_port_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(pub u32);

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Map a `xenevtchn_port_or_error_t` (port, or -1 with errno) to a port.
fn port_or_errno(r: sys::xenevtchn_port_or_error_t) -> std::result::Result<Port, std::io::Error> {
    u32::try_from(r).map(Port).map_err(|_| last_errno())
}

/// An open `xenevtchn` handle, closed on drop (which also unbinds every
/// port bound through it).
///
/// `Send` but not `Sync`: libxenevtchn documents that sharing one handle's
/// pending queue between threads does not work.
#[derive(Debug)]
pub struct EventChannels {
    h: NonNull<sys::xenevtchn_handle>,
    // Dropped after Drop::drop has closed the handle.
    _logger: Box<TracingLogger>,
}

// SAFETY: the handle is an fd plus immutable bookkeeping; nothing ties it to
// the opening thread. !Sync keeps use to one thread at a time, as
// libxenevtchn requires for xenevtchn_pending.
unsafe impl Send for EventChannels {}

impl EventChannels {
    /// Open `/dev/xen/evtchn` (close-on-exec).
    pub fn open() -> Result<Self> {
        let logger = TracingLogger::new();
        // SAFETY: logger is a valid xentoollog_logger that outlives the
        // handle (stored alongside it, dropped after close); flags 0 =
        // defaults (CLOEXEC set).
        let h = unsafe { sys::xenevtchn_open(logger.as_ptr(), 0) };
        let h = NonNull::new(h).ok_or_else(|| Error::EvtchnOpen(last_errno()))?;
        Ok(EventChannels { h, _logger: logger })
    }

    fn raw(&self) -> *mut sys::xenevtchn_handle {
        self.h.as_ptr()
    }

    /// Allocate a new port that `remote_domid` can bind to (it learns the
    /// port number out of band, usually via xenstore).
    pub fn bind_unbound_port(&self, remote_domid: u32) -> Result<Port> {
        // SAFETY: handle valid (owned by self).
        let r = unsafe { sys::xenevtchn_bind_unbound_port(self.raw(), remote_domid) };
        port_or_errno(r).map_err(|source| Error::EvtchnBindUnbound { remote_domid, source })
    }

    /// Connect to `remote_port`, an unbound port of `remote_domid` allocated
    /// for us; returns our local end.
    pub fn bind_interdomain(&self, remote_domid: u32, remote_port: Port) -> Result<Port> {
        // SAFETY: handle valid.
        let r = unsafe { sys::xenevtchn_bind_interdomain(self.raw(), remote_domid, remote_port.0) };
        port_or_errno(r).map_err(|source| Error::EvtchnBindInterdomain {
            remote_domid,
            remote_port: remote_port.0,
            source,
        })
    }

    /// Signal the remote end of a local port.
    pub fn notify(&self, port: Port) -> Result<()> {
        // SAFETY: handle valid.
        let r = unsafe { sys::xenevtchn_notify(self.raw(), port.0) };
        if r < 0 { Err(Error::EvtchnNotify { port: port.0, source: last_errno() }) } else { Ok(()) }
    }

    /// Unbind a port.
    pub fn unbind(&self, port: Port) -> Result<()> {
        // SAFETY: handle valid.
        let r = unsafe { sys::xenevtchn_unbind(self.raw(), port.0) };
        if r < 0 { Err(Error::EvtchnUnbind { port: port.0, source: last_errno() }) } else { Ok(()) }
    }

    /// Re-enable delivery on a port after handling a [`pending`] event.
    ///
    /// [`pending`]: EventChannels::pending_blocking
    pub fn unmask(&self, port: Port) -> Result<()> {
        // SAFETY: handle valid.
        let r = unsafe { sys::xenevtchn_unmask(self.raw(), port.0) };
        if r < 0 { Err(Error::EvtchnUnmask { port: port.0, source: last_errno() }) } else { Ok(()) }
    }

    /// Block until a port fires and return it (it is now masked).
    pub fn pending_blocking(&self) -> Result<Port> {
        // SAFETY: handle valid; may block in read(2) on the handle's fd.
        let r = unsafe { sys::xenevtchn_pending(self.raw()) };
        port_or_errno(r).map_err(Error::EvtchnPending)
    }

    /// A fired port if one is queued, without blocking.
    pub fn try_pending(&self) -> Result<Option<Port>> {
        if poll_readable_now(self.fd()).map_err(Error::EvtchnPending)? {
            self.pending_blocking().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The fd to poll for readability (`xenevtchn_fd`), owned by the handle.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: handle valid; xenevtchn_fd returns the handle's open fd.
        let fd = unsafe { sys::xenevtchn_fd(self.raw()) };
        // SAFETY: the fd stays open until xenevtchn_close in Drop, which
        // cannot happen while this borrow of self is alive.
        unsafe { BorrowedFd::borrow_raw(fd) }
    }
}

impl Drop for EventChannels {
    fn drop(&mut self) {
        // SAFETY: handle from xenevtchn_open, closed exactly once.
        let r = unsafe { sys::xenevtchn_close(self.raw()) };
        if r < 0 {
            tracing::warn!(error = %last_errno(), "xenevtchn_close failed");
        }
    }
}

/// `poll()` the fd with a zero timeout; true if it is readable now.
pub(crate) fn poll_readable_now(fd: BorrowedFd<'_>) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: pfd is a valid array of one pollfd; timeout 0 never blocks.
        let r = unsafe { libc::poll(&mut pfd, 1, 0) };
        if r >= 0 {
            return Ok(r > 0 && pfd.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// [`EventChannels`] whose pending events can be awaited.
#[derive(Debug)]
pub struct AsyncEventChannels {
    // Registration first: dropped before the handle closes the fd.
    afd: AsyncFd<ForeignFd>,
    ch: EventChannels,
}

impl AsyncEventChannels {
    /// Wrap a handle. Must be called inside a tokio runtime with IO enabled.
    pub fn new(ch: EventChannels) -> Result<Self> {
        let raw = ch.fd().as_raw_fd();
        // SAFETY: the fd belongs to `ch`, stored in the returned value after
        // `afd`, so the registration is dropped before the fd is closed.
        let afd = unsafe { register_readable(raw) }.map_err(Error::EvtchnFd)?;
        Ok(AsyncEventChannels { afd, ch })
    }

    /// The wrapped handle (bind, notify, unmask, ...).
    pub fn channels(&self) -> &EventChannels {
        &self.ch
    }

    /// Wait until a port fires and return it (masked; unmask when done).
    pub async fn next_pending(&self) -> Result<Port> {
        loop {
            let mut guard = self.afd.readable().await.map_err(Error::EvtchnFd)?;
            // Confirm level readiness so xenevtchn_pending cannot block.
            if let Some(port) = self.ch.try_pending()? {
                return Ok(port);
            }
            guard.clear_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_or_errno_maps_negative_to_errno() {
        assert_eq!(port_or_errno(17).ok(), Some(Port(17)));
        // SAFETY: setting errno for this thread is always allowed.
        unsafe { *libc::__errno_location() = libc::EINVAL };
        let e = port_or_errno(-1).err();
        assert_eq!(e.and_then(|e| e.raw_os_error()), Some(libc::EINVAL));
    }

    #[test]
    fn poll_now_reports_pipe_readiness() -> std::io::Result<()> {
        use std::io::Write;
        use std::os::fd::AsFd;
        let (r, mut w) = std::io::pipe()?;
        assert!(!poll_readable_now(r.as_fd())?);
        w.write_all(b"x")?;
        assert!(poll_readable_now(r.as_fd())?);
        Ok(())
    }

    #[test]
    fn port_display() {
        assert_eq!(Port(5).to_string(), "5");
    }

    /// Loopback: allocate a port for dom0 (ourselves), bind to it, notify
    /// and receive.
    #[test]
    #[ignore = "needs xen"]
    fn loopback_notify() -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
        rt.block_on(async {
            let a = EventChannels::open()?;
            let b = AsyncEventChannels::new(EventChannels::open()?)?;
            let unbound = a.bind_unbound_port(0)?;
            let local = b.channels().bind_interdomain(0, unbound)?;
            // Xen sets the new local port pending on bind_interdomain so that a notification sent
            // before the bind is not lost: drain that one event first.
            if let Some(p) = b.channels().try_pending()? {
                assert_eq!(p, local);
                b.channels().unmask(local)?;
            }
            assert_eq!(b.channels().try_pending()?, None);
            a.notify(unbound)?;
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), b.next_pending()).await??;
            assert_eq!(got, local);
            b.channels().unmask(local)?;
            b.channels().notify(local)?;
            assert_eq!(a.pending_blocking()?, unbound);
            a.unmask(unbound)?;
            b.channels().unbind(local)?;
            a.unbind(unbound)?;
            Ok(())
        })
    }
}
