//! The libxl context.
//!
//! [`Libxl`] owns one `libxl_ctx`. It is deliberately `!Send` and `!Sync`:
//! libxl contexts carry per-context event-loop and child-process state, and
//! this crate's rule is that a context lives on exactly one thread. Daemons
//! should not create a `Libxl` themselves but use [`LibxlWorker`], which owns
//! the context on a dedicated thread and serves requests over a channel.
//!
//! Child processes: libxl forks helpers (hotplug scripts, device-model /
//! qdisk backends) during domain creation and device operations. A daemon
//! that also spawns its own children cannot let libxl reap *every* child, so
//! the context is switched to
//! `libxl_sigchld_owner_libxl_always_selective_reap`: libxl installs its
//! SIGCHLD handler right away (in `libxl_childproc_setmode`) and keeps it
//! until the context is freed, but only ever `waitpid()`s its own children;
//! the application reaps its children itself with `waitpid(pid, ..)` and must
//! not rely on SIGCHLD. See [`Libxl::new`] for the consequences.

mod idl;
mod worker;

use std::marker::PhantomData;
use std::ptr::NonNull;

use bulkhead_xen_sys as sys;

pub use idl::{Idl, IdlType};
pub use worker::LibxlWorker;

use crate::error::{Error, LibxlError, Result};
use crate::logger::TracingLogger;
use crate::xenstore::Xenstore;

/// Child-process hooks handed to `libxl_childproc_setmode`.
///
/// libxl does not copy the hooks ("The value *hooks is not copied and must
/// outlast the libxl_ctx", libxl_event.h), hence a `static`.
static CHILDPROC_HOOKS: sys::libxl_childproc_hooks = sys::libxl_childproc_hooks {
    chldowner: sys::libxl_sigchld_owner_libxl_always_selective_reap,
    fork_replacement: None,
    reaped_callback: None,
};

/// An owned libxl context (`libxl_ctx`), freed on drop.
///
/// `!Send`/`!Sync` by construction: create it on the thread that will use
/// it (which is what [`LibxlWorker`] does).
#[derive(Debug)]
pub struct Libxl {
    ctx: NonNull<sys::libxl_ctx>,
    // Declared after `ctx` and only dropped after `Drop::drop` has freed the
    // context, so the logger outlives every use libxl can make of it.
    _logger: Box<TracingLogger>,
    /// Xenstore connection opened on first use (reading what libxl records
    /// under `/libxl/<domid>`), see [`Libxl::xenstore`].
    xs: Option<Xenstore>,
    _single_thread: PhantomData<*mut sys::libxl_ctx>,
}

impl Libxl {
    /// Allocate a context logging to `tracing` and put it in
    /// `libxl_sigchld_owner_libxl_always_selective_reap` mode.
    ///
    /// Works without Xen only up to a point: `libxl_ctx_alloc` opens
    /// xenstore and the hypervisor interface, so on a host without Xen this
    /// returns [`Error::CtxAlloc`].
    ///
    /// SIGCHLD contract (libxl_fork.c, Xen 4.17): setmode installs libxl's
    /// SIGCHLD handler immediately and *asserts* that the previous
    /// disposition was `SIG_DFL`/`SIG_IGN` without `SA_SIGINFO`, i.e. the
    /// process must not have any other SIGCHLD handler installed when the
    /// first context is created (a tokio `process`/`signal` SIGCHLD
    /// listener installed earlier would make libxl abort). When the last
    /// context is freed libxl restores the saved disposition and asserts that
    /// its own handler was still installed, so nothing may replace the
    /// SIGCHLD handler while a context exists either.
    pub fn new() -> Result<Self> {
        let logger = TracingLogger::new();
        let mut raw: *mut sys::libxl_ctx = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; LIBXL_VERSION is the version
        // the bindings were generated for; flags must be 0 ("none currently
        // defined"); the logger pointer stays valid for the context's life
        // because the Box is stored in the returned Libxl and freed only
        // after libxl_ctx_free (see Drop).
        let rc = unsafe { sys::libxl_ctx_alloc(&mut raw, sys::LIBXL_VERSION as i32, 0, logger.as_ptr()) };
        if rc != 0 {
            // On failure libxl_ctx_alloc frees its partial context itself and
            // sets *pctx = NULL (libxl.c), so there is nothing to clean up.
            return Err(Error::CtxAlloc(LibxlError(rc)));
        }
        let ctx = NonNull::new(raw).ok_or(Error::CtxAlloc(LibxlError(sys::ERROR_FAIL)))?;
        // SAFETY: ctx is a freshly allocated context with no children yet
        // (setmode must be called before libxl spawns anything). The hooks
        // are a 'static, satisfying "must outlast the libxl_ctx".
        unsafe {
            sys::libxl_childproc_setmode(ctx.as_ptr(), &CHILDPROC_HOOKS, std::ptr::null_mut());
        }
        tracing::debug!("libxl context allocated (selective-reap SIGCHLD mode)");
        Ok(Libxl { ctx, _logger: logger, xs: None, _single_thread: PhantomData })
    }

    /// The raw context, for calls this crate does not wrap yet.
    ///
    /// The pointer is valid until `self` is dropped; it must only be used on
    /// the thread owning `self`.
    pub fn as_ptr(&self) -> *mut sys::libxl_ctx {
        self.ctx.as_ptr()
    }

    /// A xenstore connection owned by this context, opened on first use
    /// (`None`, with a debug log, if it cannot be opened). libxl's own
    /// xenstore handle is private, and some facts libxl records (such as a
    /// domain's real type) are only reachable through xenstore.
    pub(crate) fn xenstore(&mut self) -> Option<&Xenstore> {
        if self.xs.is_none() {
            match Xenstore::open() {
                Ok(xs) => self.xs = Some(xs),
                Err(e) => tracing::debug!(error = %e, "opening xenstore for the libxl context failed"),
            }
        }
        self.xs.as_ref()
    }
}

impl Drop for Libxl {
    fn drop(&mut self) {
        // SAFETY: ctx came from libxl_ctx_alloc and is freed exactly once,
        // here. Being !Send, we are on the thread that allocated it.
        let rc = unsafe { sys::libxl_ctx_free(self.ctx.as_ptr()) };
        if rc != 0 {
            tracing::warn!(error = %LibxlError(rc), "libxl_ctx_free failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn childproc_mode_is_selective_reap() {
        assert_eq!(CHILDPROC_HOOKS.chldowner, sys::libxl_sigchld_owner_libxl_always_selective_reap);
        assert!(CHILDPROC_HOOKS.fork_replacement.is_none());
        assert!(CHILDPROC_HOOKS.reaped_callback.is_none());
    }

    #[test]
    #[ignore = "needs xen"]
    fn ctx_alloc_and_free() -> anyhow::Result<()> {
        let ctx = Libxl::new()?;
        assert!(!ctx.as_ptr().is_null());
        drop(ctx);
        // A second context in the same process must also work (all contexts
        // use the same selective-reap mode).
        let _again = Libxl::new()?;
        Ok(())
    }
}
