//! Powering the zone off: the only way PID 1 ends (if PID 1 exited, the kernel would panic).

use crate::say;

/// Syncs and powers the zone off with `reboot(RB_POWER_OFF)`. If the kernel refuses, says so on the console
/// and waits forever rather than exit.
///
/// In a Xen PV zone the kernel has no `pm_power_off` hook, so it prints "reboot: Power off not available:
/// System halted instead" and halts; Xen PV's halt is `SCHEDOP_shutdown(SHUTDOWN_poweroff)` all the same
/// (`xen_machine_halt` in `arch/x86/xen/enlighten_pv.c`), so the toolstack sees a power-off and applies
/// `on_poweroff`.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let err = match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    say!("power-off failed: {err}; halting here");
    loop {
        nix::unistd::pause();
    }
}
