//! Signals as events: init blocks the signals it handles and reads them from a signalfd, so nothing runs
//! in a signal handler and no SIGCHLD is lost between checks.
//!
//! A blocked signal is queued even for PID 1 (the kernel drops only signals whose disposition is default
//! for init), so SIGTERM/SIGPWR sent inside the zone reach this loop. Children spawned with
//! `std::process::Command` start with an empty signal mask (std resets it).

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::error::InitError;
use crate::reap::{Reaped, reap_all};

/// The signals init handles.
pub const HANDLED: [Signal; 4] = [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGPWR];

/// What the event loop saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Children terminated (possibly none: SIGCHLD also comes for stopped children).
    Reaped(Vec<Reaped>),
    /// A request to power off: SIGTERM, SIGPWR, or SIGINT (Ctrl-Alt-Del, which `xl reboot` sends).
    Shutdown(Signal),
}

/// What a signal means to init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// Reap children.
    Reap,
    /// Power off.
    Shutdown,
    /// Not one of [`HANDLED`].
    Ignore,
}

/// What `signal` means to init.
pub fn meaning(signal: Signal) -> Meaning {
    match signal {
        Signal::SIGCHLD => Meaning::Reap,
        Signal::SIGTERM | Signal::SIGINT | Signal::SIGPWR => Meaning::Shutdown,
        _ => Meaning::Ignore,
    }
}

/// Blocked signals and the signalfd that delivers them.
#[derive(Debug)]
pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks [`HANDLED`] and opens a signalfd for them. Also turns Ctrl-Alt-Del into SIGINT for init.
    pub fn new() -> Result<Self, InitError> {
        let mut mask = SigSet::empty();
        for s in HANDLED {
            mask.add(s);
        }
        mask.thread_block().map_err(InitError::BlockSignals)?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(InitError::CreateSignalFd)?;
        nix::sys::reboot::set_cad_enabled(false).map_err(InitError::DisableCad)?;
        Ok(Signals { fd })
    }

    /// The signalfd: readable when a handled signal is pending; then call [`pending`](Signals::pending).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Every event that is pending now, without blocking: one `Reaped` with all exited children if any
    /// SIGCHLD arrived, and one `Shutdown` per shutdown signal.
    pub fn pending(&mut self) -> Result<Vec<Event>, InitError> {
        let mut events = Vec::new();
        let mut reap = false;
        loop {
            let info = match self.fd.read_signal() {
                Ok(Some(info)) => info,
                Ok(None) | Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(InitError::ReadSignalFd(e)),
            };
            let Some(signal) = i32::try_from(info.ssi_signo).ok().and_then(|n| Signal::try_from(n).ok()) else {
                continue;
            };
            match meaning(signal) {
                Meaning::Reap => reap = true,
                Meaning::Shutdown => events.push(Event::Shutdown(signal)),
                Meaning::Ignore => {}
            }
        }
        if reap {
            events.insert(0, Event::Reaped(reap_all().map_err(InitError::Reap)?));
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_handled_signal_means_something_and_others_are_ignored() {
        for s in HANDLED {
            assert_ne!(meaning(s), Meaning::Ignore, "{s}");
        }
        assert_eq!(meaning(Signal::SIGCHLD), Meaning::Reap);
        assert_eq!(meaning(Signal::SIGPWR), Meaning::Shutdown);
        assert_eq!(meaning(Signal::SIGHUP), Meaning::Ignore);
    }
}
