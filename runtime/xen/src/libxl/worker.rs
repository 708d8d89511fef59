//! A dedicated thread that owns the libxl context.
//!
//! Callers never touch the `libxl_ctx` directly: they send a closure
//! `FnOnce(&mut Libxl) -> R` to the worker, which runs requests one at a time,
//! in order, on its own std thread, and sends the result back — over a tokio
//! oneshot for async callers ([`LibxlWorker::call`]) or a std channel for
//! blocking ones ([`LibxlWorker::call_blocking`]).
//!
//! Synchronous libxl operations (`ao_how == NULL`) run libxl's internal event
//! loop on the calling thread until they complete, so a long operation
//! (domain creation runs hotplug scripts) occupies the worker; queue depth is
//! visible only as latency. Each operation is a method on [`Libxl`] plus an
//! async convenience wrapper on [`LibxlWorker`] (see `info.rs` and
//! `domain.rs`).

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use super::Libxl;
use crate::error::{Error, Result};

type Job<S> = Box<dyn FnOnce(&mut S) + Send + 'static>;
type Reply<R> = std::result::Result<R, Box<dyn Any + Send + 'static>>;

/// Generic single-thread owner of some `!Send` state `S`. [`LibxlWorker`] is
/// this with `S = Libxl`; the generic form exists so the machinery can be
/// tested without Xen.
pub(crate) struct Worker<S: 'static> {
    tx: Option<mpsc::Sender<Job<S>>>,
    thread: Option<JoinHandle<()>>,
}

impl<S: 'static> Worker<S> {
    /// Start the thread, build the state on it with `init`, and wait until
    /// `init` has finished. An `init` error is returned here and the thread
    /// exits.
    pub(crate) fn spawn_with<F>(name: &str, init: F) -> Result<Self>
    where
        F: FnOnce() -> Result<S> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Job<S>>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<()>>(1);
        let thread = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut state = match init() {
                    Ok(s) => s,
                    Err(e) => {
                        // The spawner is blocked on ready_rx; if it vanished
                        // there is nobody left to tell.
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                drop(ready_tx);
                // Ends when every Sender (i.e. the Worker) is dropped.
                while let Ok(job) = rx.recv() {
                    job(&mut state);
                }
                tracing::debug!("worker thread shutting down");
                drop(state);
            })
            .map_err(Error::WorkerSpawn)?;
        let mut worker = Worker { tx: Some(tx), thread: Some(thread) };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(e)) => {
                worker.join();
                Err(e)
            }
            Err(_) => {
                // init panicked.
                worker.join();
                Err(Error::WorkerGone)
            }
        }
    }

    fn submit<R, F>(&self, f: F, reply: impl FnOnce(Reply<R>) + Send + 'static) -> Result<()>
    where
        R: Send + 'static,
        F: FnOnce(&mut S) -> R + Send + 'static,
    {
        let job: Job<S> = Box::new(move |state: &mut S| {
            // A panicking request must not take the context down with it:
            // catch it here and re-raise it in the caller.
            let r = catch_unwind(AssertUnwindSafe(|| f(state)));
            reply(r);
        });
        self.tx.as_ref().ok_or(Error::WorkerGone)?.send(job).map_err(|_| Error::WorkerGone)
    }

    pub(crate) fn call_blocking<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut S) -> R + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel::<Reply<R>>(1);
        self.submit(f, move |r| {
            let _ = tx.send(r);
        })?;
        match rx.recv() {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(panic)) => resume_unwind(panic),
            Err(_) => Err(Error::WorkerGone),
        }
    }

    pub(crate) async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut S) -> R + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Reply<R>>();
        self.submit(f, move |r| {
            // The caller may have stopped waiting (future dropped).
            let _ = tx.send(r);
        })?;
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(panic)) => resume_unwind(panic),
            Err(_) => Err(Error::WorkerGone),
        }
    }

    fn join(&mut self) {
        self.tx = None;
        if let Some(handle) = self.thread.take() {
            if handle.thread().id() == thread::current().id() {
                // Dropped from inside one of our own jobs: the loop ends
                // after this job returns; joining ourselves would deadlock.
                return;
            }
            if handle.join().is_err() {
                tracing::error!("worker thread panicked during shutdown");
            }
        }
    }
}

impl<S: 'static> Drop for Worker<S> {
    fn drop(&mut self) {
        self.join();
    }
}

/// Owns a [`Libxl`] context on a dedicated thread (`libxl-worker`) and runs
/// requests against it in FIFO order.
///
/// `Send + Sync`: share it (e.g. in an `Arc`) between tasks and threads.
/// Dropping it lets queued requests finish, frees the context on the worker
/// thread and joins the thread (this blocks for as long as the request in
/// flight takes).
///
/// ```no_run
/// # async fn demo() -> Result<(), bulkhead_xen::Error> {
/// let xl = bulkhead_xen::LibxlWorker::spawn()?;
/// let domains = xl.list_domains().await?;
/// let phys = xl.call(|ctx| ctx.physinfo()).await??;
/// # Ok(()) }
/// ```
pub struct LibxlWorker {
    inner: Worker<Libxl>,
}

impl std::fmt::Debug for LibxlWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibxlWorker").field("running", &self.inner.tx.is_some()).finish()
    }
}

impl LibxlWorker {
    /// Start the worker thread and allocate the context on it
    /// ([`Libxl::new`]). Blocks until the context is ready (or failed).
    pub fn spawn() -> Result<Self> {
        Ok(LibxlWorker { inner: Worker::spawn_with("libxl-worker", Libxl::new)? })
    }

    /// Run `f` on the worker thread and wait (blocking this thread) for its
    /// result. Do not call from async code; use [`LibxlWorker::call`].
    ///
    /// A panic inside `f` is caught on the worker (the context survives) and
    /// resumed on the calling thread.
    pub fn call_blocking<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Libxl) -> R + Send + 'static,
    {
        self.inner.call_blocking(f)
    }

    /// Run `f` on the worker thread and await its result.
    ///
    /// Cancel-safe in the sense that dropping the future does not cancel the
    /// request: it still runs on the worker, its result is discarded.
    /// A panic inside `f` is resumed in the awaiting task.
    pub async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Libxl) -> R + Send + 'static,
    {
        self.inner.call(f).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// `!Send` state, like a libxl ctx.
    struct Counter {
        n: Rc<Cell<u32>>,
        dropped: Arc<AtomicBool>,
    }

    impl Drop for Counter {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    fn counter_worker(dropped: &Arc<AtomicBool>) -> Result<Worker<Counter>> {
        let dropped = dropped.clone();
        Worker::spawn_with("test-worker", move || Ok(Counter { n: Rc::new(Cell::new(0)), dropped }))
    }

    #[test]
    fn requests_run_in_order_on_one_thread() -> anyhow::Result<()> {
        let dropped = Arc::new(AtomicBool::new(false));
        let w = counter_worker(&dropped)?;
        let t1 = w.call_blocking(|c| {
            c.n.set(c.n.get() + 1);
            thread::current().id()
        })?;
        let t2 = w.call_blocking(|c| {
            c.n.set(c.n.get() + 1);
            thread::current().id()
        })?;
        assert_eq!(t1, t2);
        assert_ne!(t1, thread::current().id());
        assert_eq!(w.call_blocking(|c| c.n.get())?, 2);
        assert_eq!(w.call_blocking(|_| thread::current().name().map(str::to_owned))?, Some("test-worker".to_owned()));
        drop(w);
        assert!(dropped.load(Ordering::SeqCst), "state dropped on shutdown");
        Ok(())
    }

    #[test]
    fn init_error_is_returned_from_spawn() {
        let r = Worker::<Counter>::spawn_with("test-worker", || Err(Error::CtxAlloc(crate::LibxlError(-3))));
        assert!(matches!(r, Err(Error::CtxAlloc(_))));
    }

    #[test]
    fn panicking_request_is_resumed_in_caller_and_worker_survives() -> anyhow::Result<()> {
        let dropped = Arc::new(AtomicBool::new(false));
        let w = counter_worker(&dropped)?;
        let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _ = w.call_blocking(|_| -> u32 { panic!("boom") });
        }));
        assert!(caught.is_err());
        assert_eq!(w.call_blocking(|c| c.n.get() + 7)?, 7);
        Ok(())
    }

    #[test]
    fn async_call_works_from_a_runtime() -> anyhow::Result<()> {
        let dropped = Arc::new(AtomicBool::new(false));
        let w = Arc::new(counter_worker(&dropped)?);
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let sum = rt.block_on(async {
            let mut sum = 0;
            for i in 0..10u32 {
                sum += w
                    .call(move |c| {
                        c.n.set(c.n.get() + i);
                        c.n.get()
                    })
                    .await?;
            }
            Ok::<_, Error>(sum)
        })?;
        assert_eq!(sum, (0..10u32).map(|i| (0..=i).sum::<u32>()).sum());
        Ok(())
    }

    #[test]
    fn dropping_from_inside_a_job_does_not_deadlock() -> anyhow::Result<()> {
        let dropped = Arc::new(AtomicBool::new(false));
        let w = Arc::new(counter_worker(&dropped)?);
        let w2 = w.clone();
        let (tx, rx) = mpsc::channel::<()>();
        // The job blocks until we have dropped our reference, then drops the
        // last one on the worker thread itself.
        w.submit(
            move |_| {
                let _ = rx.recv();
                drop(w2);
            },
            |_: Reply<()>| {},
        )?;
        drop(w);
        tx.send(())?;
        for _ in 0..500 {
            if dropped.load(Ordering::SeqCst) {
                return Ok(());
            }
            thread::sleep(std::time::Duration::from_millis(10));
        }
        anyhow::bail!("worker state was not dropped after self-drop")
    }

    #[test]
    #[ignore = "needs xen"]
    fn libxl_worker_serves_requests() -> anyhow::Result<()> {
        let xl = LibxlWorker::spawn()?;
        let v = xl.call_blocking(|ctx| ctx.version_info())??;
        assert!(v.major >= 4);
        Ok(())
    }
}
