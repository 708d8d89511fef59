//! A `xentoollog_logger` implemented in Rust that forwards the Xen libraries'
//! log messages (libxl, libxenctrl, libxenevtchn, libxengnttab) to `tracing`.
//!
//! The C side calls `vmessage(logger, level, errno, context, format, va_list)`.
//! Stable Rust cannot walk a `va_list`, so the message is rendered with the C
//! library's `vsnprintf` into a fixed-size buffer (longer messages are
//! truncated and marked as such) and then emitted as a `tracing` event with
//! target [`TARGET`].

use std::ffi::{c_char, c_int, c_ulong};
use std::io;

use bulkhead_xen_sys as sys;

use crate::cstr::bounded_c_str;

/// `tracing` target of every event this logger emits.
pub const TARGET: &str = "bulkhead_xen::xtl";

/// Maximum rendered length of one message, in bytes (including the NUL).
pub(crate) const MESSAGE_BUF: usize = 2048;

const TRUNCATED_MARK: &str = " [...truncated]";

/// Severity buckets a `xentoollog_level` maps onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Severity {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Map xentoollog's levels onto `tracing` levels.
///
/// libxl is very chatty at `XTL_DEBUG`/`XTL_VERBOSE` (every xenstore write
/// during domain build), so those go to TRACE; `XTL_DETAIL` to DEBUG;
/// `XTL_PROGRESS`/`XTL_INFO`/`XTL_NOTICE` to INFO; `XTL_WARN` to WARN and
/// `XTL_ERROR`/`XTL_CRITICAL` (and anything unknown above them) to ERROR.
pub(crate) fn severity(level: sys::xentoollog_level) -> Severity {
    match level {
        sys::XTL_NONE | sys::XTL_DEBUG | sys::XTL_VERBOSE => Severity::Trace,
        sys::XTL_DETAIL => Severity::Debug,
        sys::XTL_PROGRESS | sys::XTL_INFO | sys::XTL_NOTICE => Severity::Info,
        sys::XTL_WARN => Severity::Warn,
        _ => Severity::Error,
    }
}

fn enabled(sev: Severity) -> bool {
    match sev {
        Severity::Trace => tracing::enabled!(target: TARGET, tracing::Level::TRACE),
        Severity::Debug => tracing::enabled!(target: TARGET, tracing::Level::DEBUG),
        Severity::Info => tracing::enabled!(target: TARGET, tracing::Level::INFO),
        Severity::Warn => tracing::enabled!(target: TARGET, tracing::Level::WARN),
        Severity::Error => tracing::enabled!(target: TARGET, tracing::Level::ERROR),
    }
}

/// Emit one already-rendered message. `errnoval` follows xentoollog's
/// convention: `-1` (any negative value) means "no errno".
pub(crate) fn emit(sev: Severity, context: &str, errnoval: i32, msg: &str) {
    let os_error = (errnoval >= 0).then(|| io::Error::from_raw_os_error(errnoval).to_string());
    let os_error = os_error.as_deref().unwrap_or("");
    macro_rules! ev {
        ($mac:ident) => {
            if errnoval >= 0 {
                tracing::$mac!(target: TARGET, context, errno = errnoval, os_error, "{msg}")
            } else {
                tracing::$mac!(target: TARGET, context, "{msg}")
            }
        };
    }
    match sev {
        Severity::Trace => ev!(trace),
        Severity::Debug => ev!(debug),
        Severity::Info => ev!(info),
        Severity::Warn => ev!(warn),
        Severity::Error => ev!(error),
    }
}

/// Turn the bytes `vsnprintf` wrote plus its return value (the length the
/// full message would have had) into the text to log.
pub(crate) fn render(buf: &[u8], wanted: c_int) -> String {
    let Ok(wanted) = usize::try_from(wanted) else {
        return "<xentoollog: message formatting failed>".to_owned();
    };
    let written = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let mut s = String::from_utf8_lossy(&buf[..written]).into_owned();
    // Xen's format strings conventionally carry no trailing newline, but a
    // few do; tracing adds its own.
    while s.ends_with('\n') {
        s.pop();
    }
    if wanted > written {
        s.push_str(TRUNCATED_MARK);
    }
    s
}

/// The logger object handed to the Xen libraries.
///
/// `repr(C)` with the vtable as the first field, so the `xentoollog_logger*`
/// the C code passes back to our callbacks is also a pointer to this struct.
/// Always heap-allocated ([`TracingLogger::new`] returns a `Box`) so its
/// address is stable for as long as the owning handle keeps the box alive.
#[repr(C)]
#[derive(Debug)]
pub struct TracingLogger {
    vtable: sys::xentoollog_logger,
}

impl TracingLogger {
    /// A new heap-allocated logger.
    pub fn new() -> Box<Self> {
        Box::new(TracingLogger {
            vtable: sys::xentoollog_logger {
                vmessage: Some(vmessage),
                progress: Some(progress),
                destroy: Some(destroy),
            },
        })
    }

    /// The pointer to pass to `libxl_ctx_alloc`, `xenevtchn_open`, ...
    ///
    /// The callbacks never write through it; it is `*mut` only because the
    /// C prototypes are not const-correct. The pointer is valid as long as
    /// the `Box` this was called on is alive and not moved out of.
    pub fn as_ptr(&self) -> *mut sys::xentoollog_logger {
        std::ptr::from_ref(&self.vtable).cast_mut()
    }
}

/// `xentoollog_logger::vmessage`.
unsafe extern "C" fn vmessage(
    _logger: *mut sys::xentoollog_logger,
    level: sys::xentoollog_level,
    errnoval: c_int,
    context: *const c_char,
    format: *const c_char,
    al: *mut sys::__va_list_tag,
) {
    let sev = severity(level);
    if format.is_null() || !enabled(sev) {
        // Not consuming the va_list is fine: the caller va_end()s it.
        return;
    }
    let mut buf = [0u8; MESSAGE_BUF];
    // SAFETY: buf is a writable MESSAGE_BUF-byte buffer and vsnprintf writes
    // at most that many bytes including the NUL. format and al come straight
    // from xentoollog's xtl_logv, which guarantees (format attribute on the
    // vmessage prototype) that al matches format and is not yet consumed.
    let wanted = unsafe { sys::vsnprintf(buf.as_mut_ptr().cast::<c_char>(), MESSAGE_BUF as c_ulong, format, al) };
    let msg = render(&buf, wanted);
    // SAFETY: context is NULL or a NUL-terminated string owned by the caller
    // for the duration of this call (xentoollog.h: `const char *context /*
    // eg "xc", "xl", may be 0 */`).
    let context = unsafe { bounded_c_str(context, 64) };
    emit(sev, context.as_deref().unwrap_or(""), errnoval, &msg);
}

/// `xentoollog_logger::progress`: long-running operations (domain save /
/// restore, memory scrubbing) report progress through this.
unsafe extern "C" fn progress(
    _logger: *mut sys::xentoollog_logger,
    context: *const c_char,
    doing_what: *const c_char,
    percent: c_int,
    done: std::ffi::c_ulong,
    total: std::ffi::c_ulong,
) {
    if !tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
        return;
    }
    // SAFETY: both are NULL or NUL-terminated strings valid for the call
    // (xentoollog.h progress prototype).
    let context = unsafe { bounded_c_str(context, 64) };
    // SAFETY: as above.
    let doing_what = unsafe { bounded_c_str(doing_what, MESSAGE_BUF) };
    tracing::debug!(
        target: TARGET,
        context = context.as_deref().unwrap_or(""),
        percent,
        done,
        total,
        "{}",
        doing_what.as_deref().unwrap_or("")
    );
}

/// `xentoollog_logger::destroy`: only called via `xtl_logger_destroy`, which
/// this crate never does; the Rust owner frees the box.
unsafe extern "C" fn destroy(_logger: *mut sys::xentoollog_logger) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().map_err(|_| io::Error::other("poisoned"))?.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn text(&self) -> String {
            let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
            String::from_utf8_lossy(&guard).into_owned()
        }
    }

    fn subscriber(cap: &Capture) -> impl tracing::Subscriber + Send + Sync {
        let cap = cap.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .without_time()
            .with_writer(move || cap.clone())
            .finish()
    }

    #[test]
    fn level_mapping() {
        assert_eq!(severity(sys::XTL_DEBUG), Severity::Trace);
        assert_eq!(severity(sys::XTL_VERBOSE), Severity::Trace);
        assert_eq!(severity(sys::XTL_DETAIL), Severity::Debug);
        assert_eq!(severity(sys::XTL_PROGRESS), Severity::Info);
        assert_eq!(severity(sys::XTL_INFO), Severity::Info);
        assert_eq!(severity(sys::XTL_NOTICE), Severity::Info);
        assert_eq!(severity(sys::XTL_WARN), Severity::Warn);
        assert_eq!(severity(sys::XTL_ERROR), Severity::Error);
        assert_eq!(severity(sys::XTL_CRITICAL), Severity::Error);
        assert_eq!(severity(sys::XTL_NUM_LEVELS + 3), Severity::Error);
    }

    #[test]
    fn render_marks_truncation_and_strips_newlines() {
        assert_eq!(render(b"hello\n\0junk", 6), "hello");
        assert_eq!(render(b"abc", 10), "abc [...truncated]");
        assert!(render(b"", -1).contains("formatting failed"));
    }

    /// Drive the logger through libxentoollog's own variadic `xtl_log`, the
    /// same entry point libxl uses, so the va_list path is exercised for real.
    #[test]
    fn xtl_log_reaches_tracing() {
        let cap = Capture::default();
        let logger = TracingLogger::new();
        tracing::subscriber::with_default(subscriber(&cap), || {
            let ctx = c"libxl";
            let fmt = c"domain %d: %s (%u%%)";
            let arg = c"building";
            // SAFETY: logger.as_ptr() is a valid logger for the life of
            // `logger`; fmt is a printf format whose conversions match the
            // (int, char*, unsigned) arguments passed.
            unsafe {
                sys::xtl_log(
                    logger.as_ptr(),
                    sys::XTL_ERROR,
                    libc::ENOENT,
                    ctx.as_ptr(),
                    fmt.as_ptr(),
                    7 as c_int,
                    arg.as_ptr(),
                    42 as std::ffi::c_uint,
                );
            }
            // SAFETY: as above, with a %s argument list of one string.
            unsafe {
                sys::xtl_log(
                    logger.as_ptr(),
                    sys::XTL_WARN,
                    -1,
                    std::ptr::null(),
                    c"plain %s".as_ptr(),
                    c"warning".as_ptr(),
                );
            }
        });
        let out = cap.text();
        assert!(out.contains("ERROR"), "{out}");
        assert!(out.contains("domain 7: building (42%)"), "{out}");
        assert!(out.contains("context=\"libxl\""), "{out}");
        assert!(out.contains("errno=2"), "{out}");
        assert!(out.contains("No such file or directory"), "{out}");
        assert!(out.contains("WARN"), "{out}");
        assert!(out.contains("plain warning"), "{out}");
    }

    #[test]
    fn long_messages_are_truncated_not_overflowed() {
        let cap = Capture::default();
        let logger = TracingLogger::new();
        let long = CString::new("x".repeat(MESSAGE_BUF * 3)).unwrap_or_default();
        tracing::subscriber::with_default(subscriber(&cap), || {
            // SAFETY: valid logger; "%s" matches the single string argument.
            unsafe {
                sys::xtl_log(logger.as_ptr(), sys::XTL_INFO, -1, c"t".as_ptr(), c"%s".as_ptr(), long.as_ptr());
            }
        });
        let out = cap.text();
        assert!(out.contains(TRUNCATED_MARK.trim()), "{out}");
        assert!(out.len() < MESSAGE_BUF + 512, "len {}", out.len());
    }

    #[test]
    fn progress_reaches_tracing() {
        let cap = Capture::default();
        let logger = TracingLogger::new();
        tracing::subscriber::with_default(subscriber(&cap), || {
            // SAFETY: valid logger and NUL-terminated strings.
            unsafe {
                sys::xtl_progress(logger.as_ptr(), c"xc".as_ptr(), c"scrubbing".as_ptr(), 0, 100);
            }
        });
        let out = cap.text();
        assert!(out.contains("scrubbing"), "{out}");
    }
}
