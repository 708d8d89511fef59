//! Powering the zone off: the only way PID 1 ends (if PID 1 exited, the kernel would panic).

use crate::say;

/// Asks every process to end (SIGTERM), gives them `grace` to do so while reaping them, kills what is left
/// (SIGKILL), then powers off. As PID 1, `kill(-1, ..)` reaches every process but init itself.
pub fn shutdown(grace: std::time::Duration) -> ! {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let all = Pid::from_raw(-1);
    if kill(all, Signal::SIGTERM).is_ok() {
        let deadline = std::time::Instant::now() + grace;
        // ESRCH/ECHILD: nobody left. Poll with a short sleep: the signalfd loop is not running any more.
        while std::time::Instant::now() < deadline {
            let _ = crate::reap::reap_all();
            if kill(all, None).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = kill(all, Signal::SIGKILL);
    }
    power_off();
}

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
