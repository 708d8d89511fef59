//! The PID 1 sequence: mounts, configuration, hostname, cgroups, then the event loop.
//!
//! Single-threaded by design (style.md §4): init starts children only by fork+exec (`std::process::Command`),
//! never by forking and running more Rust.

use std::convert::Infallible;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::{Duration, Instant};

use bulkhead_wire::{PROTOCOL_VERSION, ZoneToHost};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::agent::{Action, Agent};
use crate::cgroup;
use crate::channel::{Channel, ChannelError, ServerProbe, Unsent};
use crate::cmdline::{self, Selftest, ZoneConfig};
use crate::error::InitError;
use crate::power::{power_off, shutdown};
use crate::say;
use crate::signals::{Event, Signals};
use crate::uptime::parse_uptime_ms;
use crate::workload::Layout;

/// The argument that makes the binary the self-test child instead of init.
pub const SELFTEST_CHILD_ARG: &str = "--selftest-child";
/// The self-test child's exit code.
pub const SELFTEST_CHILD_CODE: i32 = 7;
/// The argument that makes the binary ask init (PID 1) to power off, by SIGPWR. The kernel runs
/// `/init --request-poweroff` as its `poweroff_cmd` when the toolstack asks for a shutdown (`xl shutdown`:
/// Xen's `control/shutdown=poweroff` makes the kernel call `orderly_poweroff`, which runs that command).
pub const POWEROFF_REQUEST_ARG: &str = "--request-poweroff";
/// The sysctl holding the command the kernel runs for an orderly power-off.
const POWEROFF_CMD_SYSCTL: &str = "/proc/sys/kernel/poweroff_cmd";

/// The `poweroff_cmd` value that routes the kernel's orderly power-off to init.
pub fn poweroff_cmd(exe: &Path) -> String {
    format!("{} {POWEROFF_REQUEST_ARG}", exe.display())
}

fn read(path: &str) -> Result<String, InitError> {
    std::fs::read_to_string(path).map_err(|source| InitError::ReadFile { path: PathBuf::from(path), source })
}

/// The one line that says the zone is up.
pub fn ready_line(config: &ZoneConfig, controllers: &[String], psi: bool, boot_ms: u64) -> String {
    format!(
        "ready zone={} hostname={} cgroup-controllers={} psi={} boot_ms={boot_ms}",
        config.zone,
        config.hostname,
        controllers.join(","),
        if psi { "yes" } else { "no" },
    )
}

/// Runs init. Returns only on a fatal error; the caller reports it and powers off.
pub fn run() -> Result<Infallible, InitError> {
    // Signals first: nothing that arrives from here on is lost.
    let mut signals = Signals::new()?;
    crate::mounts::mount_all()?;
    let exe = std::env::current_exe().map_err(InitError::SetPoweroffCmd)?;
    std::fs::write(POWEROFF_CMD_SYSCTL, poweroff_cmd(&exe)).map_err(InitError::SetPoweroffCmd)?;

    let cmdline = cmdline::parse(&read("/proc/cmdline")?).map_err(InitError::ParseCmdline)?;
    for key in &cmdline.unknown {
        say!("warning: unknown kernel parameter {key} ignored");
    }
    let config = cmdline.config;
    nix::unistd::sethostname(config.hostname.as_str())
        .map_err(|source| InitError::SetHostname { hostname: config.hostname.to_string(), source })?;
    // The pod's servers listen on the zone's loopback; port-forward connects to them there.
    crate::workload::sys::set_interface_up("lo").map_err(InitError::Loopback)?;
    if let Some(net) = &config.network {
        configure_pod_network(net)?;
    }

    let controllers = cgroup::enable_controllers(Path::new(cgroup::CGROUP_ROOT))?;
    let psi = cgroup::psi_available();
    let uptime = read("/proc/uptime")?;
    let boot_ms = parse_uptime_ms(&uptime).ok_or_else(|| InitError::ParseUptime { text: uptime.clone() })?;
    say!("{}", ready_line(&config, &controllers, psi, boot_ms));

    let selftest_child = match config.selftest {
        Some(Selftest::PowerOff) => {
            let child =
                Command::new("/proc/self/exe").arg(SELFTEST_CHILD_ARG).spawn().map_err(InitError::SpawnSelftest)?;
            // Reaped through the SIGCHLD path below, not with Child::wait. Pids fit in i32 (pid_max <= 2^22).
            Some(nix::unistd::Pid::from_raw(child.id() as i32))
        }
        Some(Selftest::ChannelGarbage) | None => None,
    };

    let mut host = config.channel.as_ref().map(|path| Host::connect(path.as_str(), boot_ms)).transpose()?;
    if config.selftest == Some(Selftest::ChannelGarbage)
        && let Some(ch) = host.as_mut().and_then(|h| h.channel.as_mut())
    {
        say!("selftest: writing garbage to the host channel");
        ch.queue_garbage(GARBAGE_LEN);
    }
    let mut agent = Agent::new(Layout::zone());
    loop {
        // Workload output is read only with a host to send it to, and only while it keeps up. (It may go out
        // before the welcome: the daemon routes a reconnecting zone's workloads before it reads past the hello.)
        let read_output = host.as_ref().is_some_and(Host::wants_output);
        let timeout = host.as_ref().map_or(PollTimeout::NONE, Host::until_probe);
        wait_for_events(&signals, host.as_ref(), if read_output { agent.poll_fds() } else { Vec::new() }, timeout)?;
        for event in signals.pending()? {
            match event {
                Event::Reaped(reaped) => {
                    for r in &reaped {
                        if Some(r.pid) == selftest_child {
                            say!("selftest child exited {}", r.code);
                            power_off();
                        }
                    }
                    agent.on_reaped(&reaped);
                }
                Event::Shutdown(signal) => {
                    say!("{signal} received: powering off");
                    shutdown(SIGNAL_SHUTDOWN_GRACE);
                }
            }
        }
        let Some(h) = host.as_mut() else { continue };
        if h.channel.is_none() && Instant::now() >= h.next_probe {
            h.follow_server(&mut agent);
        }
        let Some(ch) = h.channel.as_mut() else { continue };
        let mut outgoing = Vec::new();
        if read_output {
            agent.collect(&mut outgoing);
        }
        match serve(ch, &mut agent, outgoing) {
            Ok(Action::Continue) => {}
            Ok(Action::Shutdown { grace_ms }) => {
                say!("host asked to power off (grace {grace_ms} ms)");
                shutdown(Duration::from_millis(u64::from(grace_ms)));
            }
            Err(e) => {
                // Workloads keep running (their output waits in their pipes) until a restarted bulkheadd
                // serves the channel again.
                say!("host channel lost: {}", crate::console::chain(&e));
                h.lose(&mut agent);
            }
        }
    }
}

/// How long the host's NIC may take to appear: netfront registers it while the kernel probes xenbus, which
/// normally ends before init runs.
const NIC_APPEAR_TIMEOUT: Duration = Duration::from_secs(10);

/// Configures the pod network's interface before any workload runs: a pod must not start without its network.
fn configure_pod_network(net: &crate::net::InterfaceConfig) -> Result<(), InitError> {
    let sys = Path::new("/sys/class/net").join(&net.name);
    let deadline = Instant::now() + NIC_APPEAR_TIMEOUT;
    while !sys.exists() {
        if Instant::now() >= deadline {
            return Err(InitError::PodNetwork(crate::net::NetError::Invalid(format!(
                "{} did not appear within {NIC_APPEAR_TIMEOUT:?}: the zone has no PV NIC (is xen-netfront built in?)",
                net.name
            ))));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    crate::net::configure(net).map_err(InitError::PodNetwork)?;
    say!("network {} {}/{} up", net.name, net.address.0, net.address.1);
    Ok(())
}

/// The host side: the channel to bulkheadd while connected, and the watch that finds a restarted one.
#[derive(Debug)]
struct Host {
    path: String,
    hello: ZoneToHost,
    channel: Option<Channel>,
    /// What a lost channel had not sent: it goes to the next server.
    unsent: Option<Unsent>,
    /// `None` if xenstore could not be opened: then a lost channel stays lost.
    probe: Option<ServerProbe>,
    /// When to look for a restarted bulkheadd next, while the channel is lost.
    next_probe: Instant,
}

/// How often init looks for a restarted bulkheadd while it has none. While connected it does not look: a
/// daemon that dies, even by SIGKILL, clears the vchan's liveness flag and the channel reports it closed.
const PROBE_WHILE_LOST: Duration = Duration::from_millis(250);

impl Host {
    /// Connects to bulkheadd and says hello; the welcome arrives through the event loop. A failure here is
    /// fatal: bulkheadd serves the channel before the zone runs, so it must be there.
    fn connect(path: &str, boot_ms: u64) -> Result<Host, InitError> {
        let kernel_release =
            nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        let hello = ZoneToHost::Hello {
            protocol_version: PROTOCOL_VERSION,
            init_version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel_release,
            boot_time_ms: boot_ms,
        };
        let mut probe = ServerProbe::new(path);
        let probe = match probe.connecting().map(|()| probe) {
            Ok(p) => Some(p),
            Err(e) => {
                say!("warning: {}: the zone cannot reconnect after a bulkheadd restart", crate::console::chain(&e));
                None
            }
        };
        let mut ch = Channel::reconnect(&mut None, path, &hello).map_err(InitError::Channel)?;
        ch.flush().map_err(InitError::Channel)?;
        say!("host channel: hello sent on {path}");
        let next_probe = Instant::now();
        Ok(Host { path: path.to_owned(), hello, channel: Some(ch), unsent: None, probe, next_probe })
    }

    fn wants_output(&self) -> bool {
        self.channel.as_ref().is_some_and(|c| Agent::wants_output(c.backlog()))
    }

    /// The channel failed: keep its unsent frames for the next server, and look for one soon.
    fn lose(&mut self, agent: &mut Agent) {
        if let Some(ch) = self.channel.take() {
            self.unsent = Some(ch.into_unsent());
        }
        agent.on_disconnect();
        self.next_probe = Instant::now() + PROBE_WHILE_LOST;
    }

    /// How long the event loop may sleep before the next probe.
    fn until_probe(&self) -> PollTimeout {
        if self.probe.is_none() || self.channel.is_some() {
            return PollTimeout::NONE;
        }
        let ms = self.next_probe.saturating_duration_since(Instant::now()).as_millis();
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
    }

    /// If a new server is published, moves to it.
    fn follow_server(&mut self, agent: &mut Agent) {
        let Some(probe) = self.probe.as_mut() else { return };
        let outcome =
            probe.new_server().and_then(|new| if new { probe.connecting().map(|()| true) } else { Ok(false) });
        self.next_probe = Instant::now() + PROBE_WHILE_LOST;
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                // The old end goes first: nothing of it may touch a ring once the new one is mapped.
                self.lose(agent);
                match Channel::reconnect(&mut self.unsent, &self.path, &self.hello)
                    .and_then(|mut ch| ch.flush().map(|()| ch))
                {
                    Ok(ch) => {
                        say!("host channel: bulkheadd restarted; hello sent again on {}", self.path);
                        self.channel = Some(ch);
                    }
                    Err(e) => {
                        say!("host channel: reconnecting failed (trying again): {}", crate::console::chain(&e));
                        if let Some(probe) = self.probe.as_mut() {
                            probe.forget();
                        }
                    }
                }
            }
            Err(e) => say!("host channel: {}", crate::console::chain(&e)),
        }
    }
}

/// Bytes of garbage the channel fault injection writes (several ring fills).
const GARBAGE_LEN: usize = 256 * 1024;

/// How long processes get after SIGTERM when init itself is told to power off by a signal.
const SIGNAL_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Sleeps until a signal is pending, the host channel has an event, a workload fd is ready (`(fd, true)`: for
/// writing), or `timeout` passes.
fn wait_for_events(
    signals: &Signals,
    host: Option<&Host>,
    workload_fds: Vec<(BorrowedFd<'_>, bool)>,
    timeout: PollTimeout,
) -> Result<(), InitError> {
    let mut fds = vec![PollFd::new(signals.fd(), PollFlags::POLLIN)];
    if let Some(ch) = host.and_then(|h| h.channel.as_ref()) {
        fds.push(PollFd::new(ch.fd(), PollFlags::POLLIN));
    }
    for (fd, write) in workload_fds {
        fds.push(PollFd::new(fd, if write { PollFlags::POLLOUT } else { PollFlags::POLLIN }));
    }
    match poll(&mut fds, timeout) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(InitError::Poll(e)),
    }
}

/// Sends `outgoing`, moves the channel's bytes and handles every request that arrived, until a pump brings
/// no new request. The host is dom0 (trusted to stop sending), so this is not bounded by rounds: stopping
/// early would leave data in the ring with its notification already consumed.
fn serve(ch: &mut Channel, agent: &mut Agent, outgoing: Vec<ZoneToHost>) -> Result<Action, ChannelError> {
    for m in &outgoing {
        ch.queue(m)?;
    }
    let mut answers = Vec::new();
    loop {
        let requests = ch.pump()?;
        if requests.is_empty() {
            return Ok(Action::Continue);
        }
        for msg in requests {
            if let Action::Shutdown { grace_ms } = agent.handle(msg, &mut answers) {
                return Ok(Action::Shutdown { grace_ms });
            }
        }
        for a in answers.drain(..) {
            ch.queue(&a)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::{Hostname, ZoneId};

    #[test]
    fn the_ready_line_has_the_documented_fields() -> Result<(), &'static str> {
        let config = ZoneConfig {
            zone: ZoneId::parse("t1")?,
            hostname: Hostname::parse("zone-t1")?,
            selftest: None,
            channel: None,
            network: None,
        };
        let controllers = ["cpuset", "cpu", "memory"].map(String::from);
        assert_eq!(
            ready_line(&config, &controllers, true, 1234),
            "ready zone=t1 hostname=zone-t1 cgroup-controllers=cpuset,cpu,memory psi=yes boot_ms=1234"
        );
        assert!(ready_line(&config, &[], false, 0).contains("cgroup-controllers= psi=no boot_ms=0"));
        Ok(())
    }

    #[test]
    fn the_kernel_poweroff_command_reruns_init_with_the_request_argument() {
        assert_eq!(poweroff_cmd(Path::new("/init")), "/init --request-poweroff");
    }
}
