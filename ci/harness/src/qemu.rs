//! Boots QEMU -> Xen -> dom0 and follows one scenario to its end. Three kinds of machine: the test bed, whose
//! Xen and dom0 QEMU's multiboot loader starts directly ([`Machine::Multiboot`]), the node image, which
//! the firmware (SeaBIOS or OVMF) boots from its disk through its own GRUB ([`Machine::Disk`]), and the node
//! image's PXE bundle, which QEMU's multiboot loader starts with the bundle's own command lines, standing in
//! for iPXE ([`Machine::Bundle`]).
//!
//! Channels between the host and dom0 (dom0 is a Xen PV guest, but it owns the emulated PCI bus, so QEMU's
//! virtio-serial device works there): each is a QEMU chardev that connects, as a client, to a unix socket this
//! runner listens on before QEMU starts.
//! - `serial`: COM1, Xen's and dom0's console. Copied to `serial.log`; scanned for panics.
//! - `stdout`, `stderr`: virtio-serial ports `bulkhead.stdout`/`bulkhead.stderr`, the scenario's output, byte-clean.
//! - `status`: virtio-serial port `bulkhead.status`, line protocol from dom0's init (see [`StatusLine`]).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::outcome::{Outcome, StatusLine};

/// Lines on the serial console that mean the bed itself is dead, with what to tell the user.
const FATAL_SERIAL_PATTERNS: &[(&str, &str)] = &[
    ("Kernel panic - not syncing", "dom0's kernel panicked"),
    ("(XEN) Panic on CPU", "Xen panicked"),
    ("(XEN) Reboot in", "Xen is rebooting"),
    (
        "Initramfs unpacking failed",
        "dom0's root (its initramfs, in a tmpfs of half of dom0's 1 GiB) did not fit: --add less or strip binaries",
    ),
];

/// How long dom0 may take to power off after the scenario's status is in.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);
/// Extra time the host allows past the scenario timeout before it stops trusting dom0 to enforce it.
const TIMEOUT_BACKSTOP: Duration = Duration::from_secs(45);
/// How long to wait for QEMU to connect its chardevs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// What the emulated machine boots.
#[derive(Debug, Clone)]
pub enum Machine {
    /// QEMU's multiboot loader starts Xen with dom0's kernel and initramfs as modules (the test bed); the
    /// runner chooses Xen's and dom0's options.
    Multiboot {
        /// Xen, as the uncompressed multiboot ELF.
        xen: PathBuf,
        /// The dom0 kernel.
        dom0_kernel: PathBuf,
        /// dom0's initramfs (the base archive with the run's archive appended).
        initrd: PathBuf,
        /// Memory Xen gives dom0; the rest is for zones.
        dom0_memory_mib: u32,
        /// Extra Xen command-line options, appended after the defaults (diagnosis of the bed itself).
        xen_extra_args: Vec<String>,
    },
    /// The firmware boots a disk image (the node image), whose own boot loader and configuration start Xen
    /// and dom0. The image is opened with `snapshot=on`: a boot never changes it.
    Disk {
        /// The disk image: qcow2 when its name ends in `.qcow2`, else raw.
        image: PathBuf,
        /// A second disk for the scenario (the node image runs what it carries), attached read-only.
        run_disk: PathBuf,
        /// BIOS (SeaBIOS) or UEFI (OVMF).
        firmware: Firmware,
    },
    /// QEMU's multiboot loader starts Xen, dom0's kernel and initramfs (the node image's PXE bundle) with the
    /// command lines the bundle's boot script gives them: the runner adds nothing.
    Bundle {
        /// Xen, as the uncompressed multiboot ELF.
        xen: PathBuf,
        /// The dom0 kernel.
        dom0_kernel: PathBuf,
        /// dom0's initramfs (the whole root).
        initrd: PathBuf,
        /// Xen's command line.
        xen_cmdline: String,
        /// dom0's command line (no commas: it travels in QEMU's comma-separated module list).
        dom0_cmdline: String,
        /// The disk carrying the scenario, attached read-only.
        run_disk: PathBuf,
    },
}

/// Firmware for [`Machine::Disk`].
#[derive(Debug, Clone)]
pub enum Firmware {
    /// QEMU's default SeaBIOS.
    Bios,
    /// OVMF: its code (read-only) and a private, writable copy of its variable store.
    Uefi {
        /// OVMF_CODE (read-only flash).
        code: PathBuf,
        /// A copy of OVMF_VARS for this run (writable flash).
        vars: PathBuf,
    },
}

/// Everything one boot needs.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// What the machine boots.
    pub machine: Machine,
    /// Memory of the emulated machine.
    pub memory_mib: u32,
    /// How long the scenario may run; dom0's init enforces it, the host backs it up.
    pub timeout: Duration,
    /// How long QEMU + Xen + dom0 may take to report ready.
    pub boot_timeout: Duration,
    /// Where sockets, `serial.log` and `outcome.json` go.
    pub run_dir: PathBuf,
    /// Copy the serial console to stderr as it arrives.
    pub echo_serial: bool,
    /// Further raw disks attached read-only after the machine's own (e.g. a NoCloud `CIDATA` disk).
    pub extra_disks: Vec<PathBuf>,
    /// Let the guest reboot (no `-no-reboot`): the scenario runs on every boot until one reports its exit,
    /// and `timeout` bounds the whole sequence from the first start (the node image's upgrade test).
    pub allow_reboots: bool,
}

/// Errors that stop a boot before there is an outcome to report.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A path QEMU receives in a comma-separated option contains a comma.
    #[error("path {0} contains a comma, which QEMU's option syntax cannot carry: move it")]
    CommaInPath(PathBuf),
    /// dom0's command line contains a comma, which QEMU's multiboot module list cannot carry.
    #[error("dom0's command line [{0}] contains a comma, which QEMU's multiboot module list cannot carry")]
    CommaInCmdline(String),
    /// A socket for one of the channels could not be created.
    #[error("creating the {name} socket at {path}")]
    Bind {
        /// Channel name.
        name: &'static str,
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// QEMU could not be started.
    #[error("starting {0}: is qemu-system-x86 installed (ci/deps testbed)?")]
    Spawn(PathBuf, #[source] io::Error),
    /// The serial log could not be created.
    #[error("creating the serial log {0}")]
    SerialLog(PathBuf, #[source] io::Error),
}

/// The channels, in the order QEMU's command line names them.
const CHANNELS: [&str; 4] = ["serial", "stdout", "stderr", "status"];

fn socket_path(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.sock"))
}

/// QEMU's arguments for `cfg`. Pure, so the command line is unit-tested.
pub fn qemu_args(cfg: &BootConfig) -> Result<Vec<OsString>, BootError> {
    let mut paths = vec![&cfg.run_dir];
    match &cfg.machine {
        Machine::Multiboot { xen, dom0_kernel, initrd, .. } => paths.extend([xen, dom0_kernel, initrd]),
        Machine::Bundle { xen, dom0_kernel, initrd, run_disk, dom0_cmdline, .. } => {
            if dom0_cmdline.contains(',') {
                return Err(BootError::CommaInCmdline(dom0_cmdline.clone()));
            }
            paths.extend([xen, dom0_kernel, initrd, run_disk]);
        }
        Machine::Disk { image, run_disk, firmware } => {
            paths.extend([image, run_disk]);
            if let Firmware::Uefi { code, vars } = firmware {
                paths.extend([code, vars]);
            }
        }
    }
    paths.extend(&cfg.extra_disks);
    if let Some(p) = paths.into_iter().find(|p| p.to_string_lossy().contains(',')) {
        return Err(BootError::CommaInPath(p.clone()));
    }
    let mut args: Vec<OsString> = [
        "-accel", "tcg", "-cpu", "max", "-machine", "pc", "-smp", "2", "-display", "none", "-monitor", "none", "-nic",
        "none",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if !cfg.allow_reboots {
        // A reboot is a crash unless the run expects it: QEMU exits instead, and the run ends.
        args.push("-no-reboot".into());
    }
    args.push("-m".into());
    args.push(cfg.memory_mib.to_string().into());
    match &cfg.machine {
        Machine::Multiboot { xen, dom0_kernel, initrd, dom0_memory_mib, xen_extra_args } => {
            // spec-ctrl=eager-fpu: Xen switches every vCPU's FPU/SSE/AVX state on each context switch instead
            // of lazily (CR0.TS + #NM), its default on the AMD CPU QEMU's TCG `-cpu max` presents. With lazy
            // switching, dom0 processes had their registers corrupted while other domains ran (segfaults, GP
            // faults, glibc heap aborts, wrong sha256sums; ci/scenarios/concurrent-pv-boots.sh measures it).
            // Emulated machines only: lazy switching with XSAVE corrupted (also without AVX, XSAVEOPT or
            // XGETBV1), lazy switching on a CPU without XSAVE (FXSAVE) did not, so TCG's XSAVE/XRSTOR under
            // CR0.TS is the suspect. Real hardware needs nothing. (The node image sets it in image/boot.conf.)
            let xen_args = format!(
                "console=com1 com1=115200,8n1 dom0_mem={m}M,max:{m}M dom0_max_vcpus=1 noreboot spec-ctrl=eager-fpu",
                m = dom0_memory_mib
            );
            let xen_args =
                std::iter::once(xen_args).chain(xen_extra_args.iter().cloned()).collect::<Vec<_>>().join(" ");
            // Multiboot module lines are comma-separated, so dom0's arguments must not contain commas. Xen
            // strips the first word of each module line (it stands for the file name).
            let dom0_args =
                format!("console=hvc0 earlyprintk=xen quiet loglevel=4 bulkhead.timeout={}", cfg.timeout.as_secs());
            let modules = format!("{} {},{}", dom0_kernel.display(), dom0_args, initrd.display());
            args.push("-kernel".into());
            args.push(xen.clone().into_os_string());
            args.push("-append".into());
            args.push(xen_args.into());
            args.push("-initrd".into());
            args.push(modules.into());
        }
        Machine::Bundle { xen, dom0_kernel, initrd, xen_cmdline, dom0_cmdline, run_disk } => {
            // Xen strips the first word of each module line (the file name, as iPXE's `module` passes it).
            args.push("-kernel".into());
            args.push(xen.clone().into_os_string());
            args.push("-append".into());
            args.push(xen_cmdline.into());
            args.push("-initrd".into());
            args.push(format!("{} {},{}", dom0_kernel.display(), dom0_cmdline, initrd.display()).into());
            args.push("-drive".into());
            args.push(format!("if=none,id=run,format=raw,readonly=on,file={}", run_disk.display()).into());
            args.push("-device".into());
            args.push("virtio-blk-pci,drive=run".into());
        }
        Machine::Disk { image, run_disk, firmware } => {
            if let Firmware::Uefi { code, vars } = firmware {
                args.push("-drive".into());
                args.push(format!("if=pflash,format=raw,unit=0,readonly=on,file={}", code.display()).into());
                args.push("-drive".into());
                args.push(format!("if=pflash,format=raw,unit=1,file={}", vars.display()).into());
            }
            // virtio-blk: both firmwares boot from it and dom0's initramfs has the driver. The image is
            // opened as a snapshot (writes go to a temporary overlay), so every boot is a first boot.
            // A qcow2 (e.g. an overlay with a larger virtual disk over the raw image) or a raw image.
            let format = if image.extension().is_some_and(|e| e == "qcow2") { "qcow2" } else { "raw" };
            args.push("-drive".into());
            args.push(format!("if=none,id=os,format={format},snapshot=on,file={}", image.display()).into());
            args.push("-device".into());
            args.push("virtio-blk-pci,drive=os,bootindex=0".into());
            args.push("-drive".into());
            args.push(format!("if=none,id=run,format=raw,readonly=on,file={}", run_disk.display()).into());
            args.push("-device".into());
            args.push("virtio-blk-pci,drive=run".into());
        }
    }
    for (i, disk) in cfg.extra_disks.iter().enumerate() {
        args.push("-drive".into());
        args.push(format!("if=none,id=extra{i},format=raw,readonly=on,file={}", disk.display()).into());
        args.push("-device".into());
        args.push(format!("virtio-blk-pci,drive=extra{i}").into());
    }
    for name in CHANNELS {
        args.push("-chardev".into());
        args.push(format!("socket,id={name},path={}", socket_path(&cfg.run_dir, name).display()).into());
    }
    args.push("-serial".into());
    args.push("chardev:serial".into());
    args.push("-device".into());
    args.push("virtio-serial-pci,id=vser".into());
    for name in &CHANNELS[1..] {
        args.push("-device".into());
        args.push(format!("virtserialport,bus=vser.0,chardev={name},name=bulkhead.{name}").into());
    }
    Ok(args)
}

/// Removes the channel sockets however the run ends.
struct SocketFiles(Vec<PathBuf>);

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What the pump threads tell the main loop.
#[derive(Debug)]
enum Event {
    Status(StatusLine),
    Fatal(String),
}

/// Phases of a run, for deadlines and the summary.
#[derive(Debug, Default)]
struct Timeline {
    ready: Option<Instant>,
    started: Option<Instant>,
    ended: Option<Instant>,
}

/// Boots, follows the scenario and returns how it ended. Never leaves QEMU running.
pub fn run(cfg: &BootConfig) -> Result<Outcome, BootError> {
    let args = qemu_args(cfg)?;
    let mut listeners = Vec::new();
    let mut sockets = SocketFiles(Vec::new());
    for name in CHANNELS {
        let path = socket_path(&cfg.run_dir, name);
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).map_err(|source| BootError::Bind { name, path: path.clone(), source })?;
        sockets.0.push(path);
        listeners.push(l);
    }
    let serial_log_path = cfg.run_dir.join("serial.log");
    let serial_log = File::create(&serial_log_path).map_err(|e| BootError::SerialLog(serial_log_path.clone(), e))?;

    let t0 = Instant::now();
    let mut cmd = Command::new(&cfg.qemu);
    cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is async-signal-safe;
    // it touches no memory of the parent. PR_SET_PDEATHSIG makes the kernel kill QEMU if this runner dies,
    // so no QEMU outlives a killed test run.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| BootError::Spawn(cfg.qemu.clone(), e))?;
    let qemu_stderr = collect_stderr(&mut child);

    let (tx, rx) = mpsc::channel();
    let streams = match accept_all(&listeners, &mut child) {
        Ok(s) => s,
        Err(reason) => {
            kill(&mut child);
            let detail = qemu_stderr.join().unwrap_or_default();
            return Ok(Outcome::BedFailure { reason: format!("{reason}; QEMU said: {}", detail.trim()) });
        }
    };
    let [serial, stdout, stderr, status] = streams;
    let pumps = vec![
        spawn_serial_pump(serial, serial_log, cfg.echo_serial, tx.clone()),
        spawn_copy(stdout, io::stdout()),
        spawn_copy(stderr, io::stderr()),
        spawn_status_pump(status, tx),
    ];

    let mut timeline = Timeline::default();
    let outcome = follow(cfg, &mut child, &rx, t0, &mut timeline);

    // The outcome is known; give dom0 its moment to power off, then make sure QEMU is gone.
    wait_or_kill(&mut child, POWEROFF_GRACE);
    for p in pumps {
        let _ = p.join();
    }
    let qemu_err = qemu_stderr.join().unwrap_or_default();
    let outcome = match outcome {
        Outcome::BedFailure { reason } if !qemu_err.trim().is_empty() => {
            Outcome::BedFailure { reason: format!("{reason}; QEMU said: {}", qemu_err.trim()) }
        }
        o => o,
    };
    drop(sockets);
    summarize(&timeline, t0, &outcome, &serial_log_path);
    Ok(outcome)
}

/// The main loop: deadlines, status lines, QEMU's death.
fn follow(cfg: &BootConfig, child: &mut Child, rx: &Receiver<Event>, t0: Instant, tl: &mut Timeline) -> Outcome {
    loop {
        let deadline = match tl.started {
            None => t0 + cfg.boot_timeout,
            Some(s) => s + cfg.timeout + TIMEOUT_BACKSTOP,
        };
        let now = Instant::now();
        if now >= deadline {
            return match tl.started {
                None => Outcome::BedFailure {
                    reason: format!(
                        "dom0 did not report ready within {}s (boot timeout; set BULKHEAD_TESTBED_BOOT_TIMEOUT to change)",
                        cfg.boot_timeout.as_secs()
                    ),
                },
                Some(_) => Outcome::TimedOut { after_secs: cfg.timeout.as_secs() },
            };
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(250))) {
            Ok(Event::Status(StatusLine::Ready)) => tl.ready = Some(Instant::now()),
            // With reboots, every boot starts the scenario again; the timeout counts from the first start.
            Ok(Event::Status(StatusLine::Started)) => {
                tl.started.get_or_insert_with(Instant::now);
            }
            Ok(Event::Status(StatusLine::Exit(code))) => {
                tl.ended = Some(Instant::now());
                return Outcome::Exited { code };
            }
            Ok(Event::Status(StatusLine::Timeout(after_secs))) => {
                tl.ended = Some(Instant::now());
                return Outcome::TimedOut { after_secs };
            }
            Ok(Event::Status(StatusLine::Error(msg))) => {
                return Outcome::BedFailure { reason: format!("dom0 init: {msg}") };
            }
            Ok(Event::Fatal(what)) => {
                return Outcome::BedFailure { reason: what };
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        }
        if let Ok(Some(st)) = child.try_wait() {
            // Status lines may still be queued behind QEMU's exit.
            while let Ok(ev) = rx.try_recv() {
                match ev {
                    Event::Status(StatusLine::Exit(code)) => return Outcome::Exited { code },
                    Event::Status(StatusLine::Timeout(after_secs)) => return Outcome::TimedOut { after_secs },
                    _ => {}
                }
            }
            return Outcome::BedFailure {
                reason: format!("QEMU exited ({st}) before the scenario reported its exit status"),
            };
        }
    }
}

/// Accepts QEMU's connection on each listener, in order, while QEMU is alive.
fn accept_all(listeners: &[UnixListener], child: &mut Child) -> Result<[UnixStream; 4], String> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut out = Vec::with_capacity(listeners.len());
    for (l, name) in listeners.iter().zip(CHANNELS) {
        l.set_nonblocking(true).map_err(|e| format!("setting up the {name} socket: {e}"))?;
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).map_err(|e| format!("setting up the {name} socket: {e}"))?;
                    out.push(s);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Ok(Some(st)) = child.try_wait() {
                        return Err(format!("QEMU exited ({st}) while starting"));
                    }
                    if Instant::now() > deadline {
                        return Err(format!("QEMU did not connect its {name} channel within {CONNECT_TIMEOUT:?}"));
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("accepting QEMU's {name} channel: {e}")),
            }
        }
    }
    out.try_into().map_err(|_| "internal: wrong number of channels".to_owned())
}

fn spawn_copy(mut from: UnixStream, mut to: impl Write + Send + 'static) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).and_then(|_| to.flush()).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

fn spawn_serial_pump(from: UnixStream, mut log: File, echo: bool, tx: Sender<Event>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let _ = log.write_all(&line);
                    if echo {
                        let _ = io::stderr().write_all(&line);
                    }
                    let text = String::from_utf8_lossy(&line);
                    if let Some((_, why)) = FATAL_SERIAL_PATTERNS.iter().find(|(p, _)| text.contains(p)) {
                        let _ = tx.send(Event::Fatal(format!("{why} ({})", text.trim())));
                    }
                }
            }
        }
        let _ = log.flush();
    })
}

fn spawn_status_pump(from: UnixStream, tx: Sender<Event>) -> JoinHandle<()> {
    thread::spawn(move || {
        // Bounded: a status line is a few words; a longer one is noise.
        let mut reader = BufReader::new(from.take(1 << 20));
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => match StatusLine::parse(line.trim_end_matches('\n')) {
                    Some(s) => {
                        if tx.send(Event::Status(s)).is_err() {
                            break;
                        }
                    }
                    None => {
                        let _ = writeln!(io::stderr(), "testbed: ignoring unexpected status line {:?}", line.trim());
                    }
                },
            }
        }
    })
}

fn collect_stderr(child: &mut Child) -> JoinHandle<String> {
    let pipe = child.stderr.take();
    thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let _ = p.by_ref().take(64 * 1024).read_to_string(&mut s);
        }
        s
    })
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_or_kill(child: &mut Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = writeln!(io::stderr(), "testbed: QEMU did not power off within {grace:?}; killing it");
    kill(child);
}

fn summarize(tl: &Timeline, t0: Instant, outcome: &Outcome, serial_log: &Path) {
    let secs = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64();
    let mut parts = Vec::new();
    if let Some(r) = tl.ready {
        parts.push(format!("dom0 ready after {:.1}s", secs(t0, r)));
    }
    if let (Some(s), Some(e)) = (tl.started, tl.ended) {
        parts.push(format!("scenario ran {:.1}s", secs(s, e)));
    }
    let verdict = match outcome {
        Outcome::Exited { code } => format!("scenario exited {code}"),
        Outcome::TimedOut { after_secs } => format!("scenario killed after its {after_secs}s timeout (exit 124)"),
        Outcome::BedFailure { reason } => format!("TEST BED FAILURE (exit 125): {reason}"),
    };
    parts.push(verdict);
    let _ = writeln!(io::stderr(), "testbed: {}; serial log: {}", parts.join("; "), serial_log.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BootConfig {
        BootConfig {
            qemu: "qemu-system-x86_64".into(),
            machine: Machine::Multiboot {
                xen: "/c/xen".into(),
                dom0_kernel: "/c/vmlinuz".into(),
                initrd: "/r/initrd.cpio".into(),
                dom0_memory_mib: 1024,
                xen_extra_args: Vec::new(),
            },
            memory_mib: 2048,
            timeout: Duration::from_secs(60),
            boot_timeout: Duration::from_secs(300),
            run_dir: "/r".into(),
            echo_serial: false,
            extra_disks: Vec::new(),
            allow_reboots: false,
        }
    }

    fn disk_cfg(firmware: Firmware) -> BootConfig {
        BootConfig {
            machine: Machine::Disk { image: "/i/node.raw".into(), run_disk: "/r/run.img".into(), firmware },
            memory_mib: 1536,
            ..cfg()
        }
    }

    fn joined(args: &[OsString]) -> String {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn command_line_boots_xen_with_dom0_as_a_module() {
        let args = qemu_args(&cfg()).unwrap_or_default();
        let s = joined(&args);
        assert!(s.contains("-kernel /c/xen"), "{s}");
        assert!(s.contains("dom0_mem=1024M,max:1024M"), "{s}");
        assert!(s.contains("spec-ctrl=eager-fpu"), "{s}");
        assert!(s.contains("-m 2048"), "{s}");
        let initrd = args.iter().position(|a| a == "-initrd").map(|i| args[i + 1].to_string_lossy().into_owned());
        let initrd = initrd.unwrap_or_default();
        // Exactly two modules: the dom0 kernel line and the ramdisk.
        let modules: Vec<&str> = initrd.split(',').collect();
        assert_eq!(modules.len(), 2, "{initrd}");
        assert!(modules[0].starts_with("/c/vmlinuz console=hvc0"), "{initrd}");
        assert!(modules[0].contains("bulkhead.timeout=60"), "{initrd}");
        assert_eq!(modules[1], "/r/initrd.cpio");
    }

    #[test]
    fn every_channel_has_a_chardev_and_a_device() {
        let s = joined(&qemu_args(&cfg()).unwrap_or_default());
        for name in CHANNELS {
            assert!(s.contains(&format!("socket,id={name},path=/r/{name}.sock")), "{s}");
        }
        assert!(s.contains("-serial chardev:serial"), "{s}");
        for port in ["stdout", "stderr", "status"] {
            assert!(s.contains(&format!("chardev={port},name=bulkhead.{port}")), "{s}");
        }
        assert!(s.contains("-nic none"), "test VMs get no network: {s}");
        assert!(s.contains("-no-reboot"), "a reboot ends the run: {s}");
        let s = joined(&qemu_args(&BootConfig { allow_reboots: true, ..cfg() }).unwrap_or_default());
        assert!(!s.contains("-no-reboot"), "the guest may reboot: {s}");
    }

    #[test]
    fn commas_in_paths_are_refused() {
        let mut c = cfg();
        if let Machine::Multiboot { initrd, .. } = &mut c.machine {
            *initrd = "/r/a,b.cpio".into();
        }
        assert!(matches!(qemu_args(&c), Err(BootError::CommaInPath(_))));
        let c = disk_cfg(Firmware::Uefi { code: "/o/code.fd".into(), vars: "/r/va,rs.fd".into() });
        assert!(matches!(qemu_args(&c), Err(BootError::CommaInPath(_))));
    }

    #[test]
    fn a_disk_machine_boots_its_image_from_firmware_with_the_run_disk_read_only() {
        let s = joined(&qemu_args(&disk_cfg(Firmware::Bios)).unwrap_or_default());
        assert!(!s.contains("-kernel"), "the image's own boot loader starts Xen: {s}");
        assert!(!s.contains("pflash"), "BIOS needs no flash: {s}");
        assert!(s.contains("if=none,id=os,format=raw,snapshot=on,file=/i/node.raw"), "{s}");
        assert!(s.contains("virtio-blk-pci,drive=os,bootindex=0"), "{s}");
        assert!(s.contains("if=none,id=run,format=raw,readonly=on,file=/r/run.img"), "{s}");
        assert!(s.contains("-m 1536"), "{s}");
        let overlay = BootConfig {
            machine: Machine::Disk {
                image: "/r/node.qcow2".into(),
                run_disk: "/r/run.img".into(),
                firmware: Firmware::Bios,
            },
            ..cfg()
        };
        let o = joined(&qemu_args(&overlay).unwrap_or_default());
        assert!(o.contains("if=none,id=os,format=qcow2,snapshot=on,file=/r/node.qcow2"), "{o}");
        assert!(s.contains("chardev=status,name=bulkhead.status"), "the same channels as the bed: {s}");
        let s = joined(
            &qemu_args(&disk_cfg(Firmware::Uefi { code: "/o/code.fd".into(), vars: "/r/vars.fd".into() }))
                .unwrap_or_default(),
        );
        assert!(s.contains("if=pflash,format=raw,unit=0,readonly=on,file=/o/code.fd"), "{s}");
        assert!(s.contains("if=pflash,format=raw,unit=1,file=/r/vars.fd"), "{s}");
    }

    #[test]
    fn a_bundle_boots_with_its_own_command_lines_and_extra_disks_are_read_only() {
        let c = BootConfig {
            machine: Machine::Bundle {
                xen: "/p/xen".into(),
                dom0_kernel: "/p/vmlinuz".into(),
                initrd: "/p/root.cpio.zst".into(),
                xen_cmdline: "console=com1 com1=115200,8n1 dom0_mem=2048M,max:2048M".into(),
                dom0_cmdline: "console=hvc0 bulkhead.boot=pxe".into(),
                run_disk: "/r/run.img".into(),
            },
            extra_disks: vec!["/r/cidata.img".into()],
            ..cfg()
        };
        let args = qemu_args(&c).unwrap_or_default();
        let s = joined(&args);
        assert!(
            s.contains("-kernel /p/xen -append console=com1 com1=115200,8n1 dom0_mem=2048M,max:2048M -initrd"),
            "{s}"
        );
        assert!(!s.contains("bulkhead.timeout"), "the runner adds nothing to the bundle's lines: {s}");
        let initrd = args.iter().position(|a| a == "-initrd").map(|i| args[i + 1].to_string_lossy().into_owned());
        assert_eq!(initrd.as_deref(), Some("/p/vmlinuz console=hvc0 bulkhead.boot=pxe,/p/root.cpio.zst"));
        assert!(s.contains("if=none,id=run,format=raw,readonly=on,file=/r/run.img"), "{s}");
        assert!(s.contains("if=none,id=extra0,format=raw,readonly=on,file=/r/cidata.img"), "{s}");
        assert!(s.contains("virtio-blk-pci,drive=extra0"), "{s}");
        let mut comma = c.clone();
        if let Machine::Bundle { dom0_cmdline, .. } = &mut comma.machine {
            *dom0_cmdline = "console=hvc0,x".into();
        }
        assert!(matches!(qemu_args(&comma), Err(BootError::CommaInCmdline(_))));
        let bad = BootConfig { extra_disks: vec!["/r/a,b.img".into()], ..cfg() };
        assert!(matches!(qemu_args(&bad), Err(BootError::CommaInPath(_))));
    }
}
