//! The zone console: the only place in zone-init that writes output.
//!
//! For PID 1, stdin, stdout and stderr are the kernel's `/dev/console` (here the Xen PV console, hvc0), opened
//! by the kernel before it runs `/init` (the node comes from the kernel's built-in default initramfs, which
//! every external initramfs is unpacked over; without it Rust's runtime would abort before `main`, since it
//! reopens missing standard fds from `/dev/null`). Every line is prefixed `bulkhead-zone: ` and written with one
//! `write` call to stderr (unbuffered), so lines from init and from its children do not interleave mid-line.

use std::fmt;
use std::io::Write;

/// The prefix of every line zone-init writes.
pub const PREFIX: &str = "bulkhead-zone: ";

/// The text of one console line (prefix, message, newline).
pub fn format_line(args: fmt::Arguments<'_>) -> String {
    format!("{PREFIX}{args}\n")
}

/// Writes one line to the console. Errors are dropped: there is nowhere else to report them.
pub fn say(args: fmt::Arguments<'_>) {
    let line = format_line(args);
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// An error and its causes on one line, `outer: inner: root`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

/// `say!("...", args)`: [`say`] with `format!` syntax.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::say(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_the_prefix_and_one_newline() {
        assert_eq!(format_line(format_args!("ready zone={}", "t1")), "bulkhead-zone: ready zone=t1\n");
    }
}
