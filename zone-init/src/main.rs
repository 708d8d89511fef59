//! `bulkhead-zone`: PID 1 of a zone (installed as `/init` in the zone's initramfs).
//!
//! `bulkhead-zone --selftest-child` exits 7 at once: the boot self-test (`bulkhead.selftest=poweroff`) runs
//! init's own binary that way, since the initramfs holds nothing else. `bulkhead-zone --request-poweroff`
//! sends SIGPWR to PID 1; init installs it as the kernel's `poweroff_cmd`. `bulkhead-zone --workload-setup`
//! and `--exec-setup` are the setup helpers init starts for each workload or exec process
//! (`bulkhead_zone::workload::helper`); they read their request from stdin and exit once the process runs.

use bulkhead_zone::init::{self, POWEROFF_REQUEST_ARG, SELFTEST_CHILD_ARG, SELFTEST_CHILD_CODE};
use bulkhead_zone::power::power_off;
use bulkhead_zone::say;
use bulkhead_zone::workload::{self, EXEC_SETUP_ARG, HelperKind, WORKLOAD_SETUP_ARG};

/// Prints `FATAL <stage>: <error chain>` and powers off: PID 1 never exits.
fn fatal(stage: &str, err: &anyhow::Error) -> ! {
    say!("FATAL {stage}: {err:#}");
    power_off();
}

/// Whether `/proc/1/exe` and `/proc/self/exe` are the same file.
fn pid1_is_this_binary() -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata("/proc/1/exe"), std::fs::metadata("/proc/self/exe")) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

fn main() {
    let first = std::env::args_os().nth(1);
    if first.as_deref() == Some(SELFTEST_CHILD_ARG.as_ref()) {
        std::process::exit(SELFTEST_CHILD_CODE);
    }
    if first.as_deref() == Some(WORKLOAD_SETUP_ARG.as_ref()) {
        std::process::exit(workload::helper_main(HelperKind::Workload));
    }
    if first.as_deref() == Some(EXEC_SETUP_ARG.as_ref()) {
        std::process::exit(workload::helper_main(HelperKind::Exec));
    }
    if first.as_deref() == Some(POWEROFF_REQUEST_ARG.as_ref()) {
        // Run by the kernel as poweroff_cmd: init does the power-off. Only if PID 1 is this very binary,
        // so that running it by hand outside a zone does not signal the host's init.
        if !pid1_is_this_binary() {
            say!("refusing {POWEROFF_REQUEST_ARG}: PID 1 is not bulkhead-zone");
            std::process::exit(1);
        }
        let sent = nix::sys::signal::kill(nix::unistd::Pid::from_raw(1), nix::sys::signal::Signal::SIGPWR);
        std::process::exit(if sent.is_ok() { 0 } else { 1 });
    }
    let pid = std::process::id();
    if pid != 1 {
        // Outside a zone this binary would mount over the host's /dev and /proc and power the machine off.
        say!("refusing to run as pid {pid}: bulkhead-zone is the zone's PID 1 (/init in its initramfs)");
        std::process::exit(2);
    }
    if bulkhead_zone::root::on_initramfs() {
        let e = bulkhead_zone::root::switch_to_tmpfs();
        fatal("root", &anyhow::Error::new(e).context("moving the zone from its initramfs to a tmpfs"));
    }
    std::panic::set_hook(Box::new(|info| {
        say!("FATAL panic: {info}");
        power_off();
    }));
    match init::run() {
        Ok(never) => match never {},
        Err(e) => fatal(e.stage(), &anyhow::Error::new(e)),
    }
}
