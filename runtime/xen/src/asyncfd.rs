//! Registering fds owned by Xen library handles with tokio's reactor.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// An fd owned by some C handle, registered for readiness only. Dropping it
/// deregisters but does not close the fd.
#[derive(Debug)]
pub(crate) struct ForeignFd(RawFd);

impl AsRawFd for ForeignFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Register `fd` with the current tokio runtime for readability.
///
/// Fails (instead of panicking) when called outside a runtime.
///
/// # Safety
/// `fd` must be open and must stay open, referring to the same file
/// description, until the returned `AsyncFd` is dropped.
pub(crate) unsafe fn register_readable(fd: RawFd) -> io::Result<AsyncFd<ForeignFd>> {
    tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    // SAFETY: the caller guarantees fd stays open and unchanged for the
    // AsyncFd's lifetime; a runtime is current (checked above).
    unsafe { AsyncFd::register_with_interest(ForeignFd(fd), Interest::READABLE) }.map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_runtime_is_an_error_not_a_panic() {
        let (r, _w) = std::io::pipe().map_or((None, None), |(r, w)| (Some(r), Some(w)));
        let Some(r) = r else { return };
        // SAFETY: r stays open for the duration of the call.
        let e = unsafe { register_readable(r.as_raw_fd()) };
        assert!(e.is_err());
    }

    #[test]
    fn readiness_is_reported() -> std::io::Result<()> {
        use std::io::Write;
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
        let (r, mut w) = std::io::pipe()?;
        rt.block_on(async {
            // SAFETY: r outlives the AsyncFd (dropped at the end of this block).
            let afd = unsafe { register_readable(r.as_raw_fd()) }?;
            w.write_all(b"x")?;
            let guard = afd.readable().await?;
            drop(guard);
            Ok(())
        })
    }
}
