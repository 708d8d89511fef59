//! Starting workload and exec processes (caller side): [`spawn_workload`] and [`spawn_exec`].
//!
//! The caller (init) never forks and keeps running Rust. It starts the setup helper, a fresh copy of its own
//! binary (`<helper_exe> --workload-setup` or `--exec-setup`, see [`super::helper`]) with
//! `std::process::Command`, hands it the request and the stdio descriptors over a `SOCK_SEQPACKET` socket
//! pair (module `protocol`), and reads reports back until end of stream:
//!
//! - `Started { pid }` from the helper: the process exists, as a direct child of the caller (`CLONE_PARENT`),
//!   so the caller's SIGCHLD reaping sees its real exit status;
//! - `PtyMaster` (with the descriptor) from the process, for a tty;
//! - `Failed { stage, errno, detail }` from either: setup failed, e.g. the program was not found. The
//!   process has then exited 127 and is reaped here, so its exit never reaches the event loop;
//! - end of stream: the helper exited and the process exec'd (its copy of the socket is close-on-exec).
//!
//! So a successful return means the program is running; a setup failure is an `Err` with the reason. The
//! whole exchange is bounded by [`SETUP_TIMEOUT`]; on timeout helper and process are killed. The call blocks
//! the caller for as long as setup takes (a few milliseconds: mounts, no program code runs before exec).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_wire::{EnvVar, User, WorkloadSpec};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::error::WorkloadError;
use super::protocol::{MAX_REQUEST, ProcessConfig, Report, Request, Target, recv_report, send_request};

/// The helper executable in production: init's own binary.
pub const SELF_EXE: &str = "/proc/self/exe";
/// The argument that makes the binary the setup helper of a new workload.
pub const WORKLOAD_SETUP_ARG: &str = "--workload-setup";
/// The argument that makes the binary the setup helper of an exec.
pub const EXEC_SETUP_ARG: &str = "--exec-setup";
/// How long helper and process together may take to start the program.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A workload to start.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The workload's id (for messages).
    pub workload_id: u64,
    /// What to run; `spec.limits` and `spec.readonly_rootfs` are applied by [`super::cgroup::create`] and
    /// [`super::rootfs::prepare`] before this.
    pub spec: WorkloadSpec,
    /// The root filesystem from [`super::rootfs::prepare`].
    pub rootfs: PathBuf,
    /// The cgroup from [`super::cgroup::create`]; `None` leaves the process in the caller's cgroup (tests on
    /// hosts without a writable cgroup2 hierarchy).
    pub cgroup: Option<PathBuf>,
    /// The setup helper's executable, [`SELF_EXE`] in production (tests pass the built binary).
    pub helper_exe: PathBuf,
    /// Volumes bound into the root (see [`super::volumes`]), in order.
    pub mounts: Vec<super::volumes::BindMount>,
}

impl Launch {
    /// A launch with the production helper ([`SELF_EXE`]) and no volumes.
    pub fn new(workload_id: u64, spec: WorkloadSpec, rootfs: PathBuf, cgroup: Option<PathBuf>) -> Self {
        Launch { workload_id, spec, rootfs, cgroup, helper_exe: PathBuf::from(SELF_EXE), mounts: Vec::new() }
    }
}

/// A process to start inside a running workload.
#[derive(Debug, Clone)]
pub struct ExecLaunch {
    /// The workload's pid 1 (as init sees it): the process's namespaces are joined.
    pub target: Pid,
    /// The workload's cgroup (the process starts in it); `None` as in [`Launch::cgroup`].
    pub cgroup: Option<PathBuf>,
    /// Program and arguments; `argv[0]` without `/` is looked up in the `PATH` of `env`.
    pub argv: Vec<String>,
    /// The complete environment (the caller merges the workload's and the exec's own).
    pub env: Vec<EnvVar>,
    /// Absolute working directory inside the workload.
    pub cwd: String,
    /// Identity.
    pub user: User,
    /// A pseudo-terminal instead of pipes.
    pub tty: bool,
    /// The workload's security settings: an exec inherits them, as with runc.
    pub security: Option<bulkhead_wire::Security>,
    /// The setup helper's executable, as in [`Launch::helper_exe`].
    pub helper_exe: PathBuf,
}

/// A started process and the caller's ends of its stdio, all non-blocking and close-on-exec.
///
/// Without a tty: `stdin` is the write end of the process's stdin pipe (drop it to close stdin), `stdout` and
/// `stderr` the read ends of its output pipes. With a tty (`pty_master`): `stdout` is the terminal's master,
/// which carries both directions (write stdin data to it; all output arrives on it); `stdin` and `stderr`
/// are `None`. Closing a terminal's input is writing the EOF character (`^D`, 0x04) to the master, and
/// [`super::resize`] takes the master.
#[derive(Debug)]
pub struct Spawned {
    /// The process, a direct child of the caller.
    pub pid: Pid,
    /// The stdin pipe's write end (`None` with a tty).
    pub stdin: Option<OwnedFd>,
    /// The stdout pipe's read end, or the terminal master.
    pub stdout: OwnedFd,
    /// The stderr pipe's read end (`None` with a tty).
    pub stderr: Option<OwnedFd>,
    /// `stdout` is a terminal master.
    pub pty_master: bool,
}

/// Starts a workload: new mount, pid, uts, ipc and cgroup namespaces, `launch.rootfs` as its root, its pid
/// the pid 1 of its pid namespace and a direct child of the caller. See the module docs for the protocol.
pub fn spawn_workload(launch: &Launch) -> Result<Spawned, WorkloadError> {
    let spec = &launch.spec;
    let request = Request {
        target: Target::Workload {
            rootfs: launch.rootfs.clone(),
            hostname: spec.hostname.clone(),
            mounts: launch.mounts.clone(),
        },
        process: process_config(
            &spec.argv,
            &spec.env,
            &spec.cwd,
            &spec.user,
            spec.tty,
            spec.security.as_deref().cloned(),
        )?,
        cgroup: launch.cgroup.clone(),
    };
    run_setup(&launch.helper_exe, WORKLOAD_SETUP_ARG, &request)
}

/// Starts a process in the namespaces (ipc, uts, cgroup, pid, mount) and cgroup of the running workload
/// `exec.target`, as a direct child of the caller.
pub fn spawn_exec(exec: &ExecLaunch) -> Result<Spawned, WorkloadError> {
    let request = Request {
        target: Target::Join { pid: exec.target.as_raw() },
        process: process_config(&exec.argv, &exec.env, &exec.cwd, &exec.user, exec.tty, exec.security.clone())?,
        cgroup: exec.cgroup.clone(),
    };
    run_setup(&exec.helper_exe, EXEC_SETUP_ARG, &request)
}

fn process_config(
    argv: &[String],
    env: &[EnvVar],
    cwd: &str,
    user: &User,
    tty: bool,
    security: Option<bulkhead_wire::Security>,
) -> Result<ProcessConfig, WorkloadError> {
    if argv.first().is_none_or(String::is_empty) {
        return Err(WorkloadError::InvalidProcess { reason: "argv is empty or argv[0] is empty" });
    }
    if !cwd.starts_with('/') {
        return Err(WorkloadError::InvalidProcess { reason: "the working directory is not absolute" });
    }
    Ok(ProcessConfig {
        argv: argv.to_vec(),
        env: env.iter().map(ToString::to_string).collect(),
        cwd: cwd.to_owned(),
        uid: user.uid,
        gid: user.gid,
        groups: user.additional_gids.clone(),
        tty,
        security,
    })
}

fn pipe(what: &'static str) -> Result<(OwnedFd, OwnedFd), WorkloadError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|errno| WorkloadError::Channel { what, errno })
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), WorkloadError> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(WorkloadError::NonBlocking)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(WorkloadError::NonBlocking).map(drop)
}

/// The caller's ends and the process's ends of the three stdio pipes.
struct Pipes {
    ours: [OwnedFd; 3],
    theirs: [OwnedFd; 3],
}

impl Pipes {
    fn new() -> Result<Self, WorkloadError> {
        let (stdin_r, stdin_w) = pipe("stdin pipe")?;
        let (stdout_r, stdout_w) = pipe("stdout pipe")?;
        let (stderr_r, stderr_w) = pipe("stderr pipe")?;
        let ours = [stdin_w, stdout_r, stderr_r];
        ours.iter().try_for_each(set_nonblocking)?;
        Ok(Pipes { ours, theirs: [stdin_r, stdout_w, stderr_w] })
    }
}

/// What the reports said, up to end of stream, timeout or a receive error.
#[derive(Default)]
struct Collected {
    pid: Option<Pid>,
    master: Option<OwnedFd>,
    failure: Option<WorkloadError>,
    /// Why collecting stopped early (timeout, receive error, protocol violation); `None` at end of stream.
    broken: Option<WorkloadError>,
}

fn collect_reports(sock: BorrowedFd<'_>, deadline: Instant) -> Collected {
    let mut got = Collected::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(sock, PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => {
                got.broken = Some(WorkloadError::SetupTimeout { after: SETUP_TIMEOUT });
                return got;
            }
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => {
                got.broken = Some(WorkloadError::ReceiveReport(e));
                return got;
            }
        }
        let (report, mut fds) = match recv_report(sock) {
            Ok(Some(r)) => r,
            // ECONNRESET: the helper exited without reading all of the request (it is no helper, or it died).
            Ok(None) | Err(super::protocol::RecvError::Recv(Errno::ECONNRESET)) => return got,
            Err(e) => {
                got.broken = Some(match e {
                    super::protocol::RecvError::Recv(errno) => WorkloadError::ReceiveReport(errno),
                    super::protocol::RecvError::Truncated => WorkloadError::BadReport { reason: "truncated record" },
                });
                return got;
            }
        };
        match report {
            Report::Started { pid } if got.pid.is_none() && pid > 0 && fds.is_empty() => {
                got.pid = Some(Pid::from_raw(pid));
            }
            Report::PtyMaster if got.master.is_none() && fds.len() == 1 => got.master = fds.pop(),
            Report::Failed { stage, errno, detail } if fds.is_empty() => {
                let errno = errno.map(Errno::from_raw);
                got.failure.get_or_insert(WorkloadError::Setup { stage, detail, errno });
            }
            _ => {
                got.broken = Some(WorkloadError::BadReport { reason: "unexpected report" });
                return got;
            }
        }
    }
}

/// Kills and reaps a process this call started that will not be handed to the caller.
fn discard(pid: Pid) {
    // It may have exited already (setup failure); ESRCH is fine then, and waitpid reaps it either way.
    let _ = kill(pid, Signal::SIGKILL);
    while waitpid(pid, None) == Err(Errno::EINTR) {}
}

fn run_setup(helper_exe: &std::path::Path, arg: &str, request: &Request) -> Result<Spawned, WorkloadError> {
    let encoded = postcard::to_allocvec(request).map_err(WorkloadError::EncodeRequest)?;
    if encoded.len() > MAX_REQUEST {
        return Err(WorkloadError::RequestTooLarge { len: encoded.len(), max: MAX_REQUEST });
    }
    let tty = request.process.tty;
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|errno| WorkloadError::Channel { what: "setup socket", errno })?;
    let pipes = if tty { None } else { Some(Pipes::new()?) };
    let deadline = Instant::now() + SETUP_TIMEOUT;
    // The Command (and with it the caller's copy of `theirs`) is dropped right after the spawn, so that end
    // of stream comes as soon as helper and process are done with the socket.
    let mut helper = Command::new(helper_exe)
        .arg(arg)
        .env_clear()
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| WorkloadError::StartHelper { exe: helper_exe.to_path_buf(), source })?;
    let sent = {
        let stdio: Vec<BorrowedFd<'_>> = pipes.iter().flat_map(|p| p.theirs.iter().map(AsFd::as_fd)).collect();
        send_request(ours.as_fd(), &encoded, &stdio)
    };
    let ours_stdio = pipes.map(|Pipes { ours, theirs }| {
        drop(theirs);
        ours
    });
    let mut got = collect_reports(ours.as_fd(), deadline);
    if got.broken.is_some() {
        // Timeout or a broken conversation: neither helper nor process may linger.
        let _ = helper.kill();
    }
    let helper_status = helper.wait().map_err(WorkloadError::WaitHelper);
    let error = got.failure.take().or(got.broken.take()).or_else(|| sent.err().map(WorkloadError::SendRequest));
    let pid = match (error, got.pid) {
        (Some(e), pid) => {
            if let Some(pid) = pid {
                discard(pid);
            }
            return Err(e);
        }
        (None, Some(pid)) => pid,
        (None, None) => {
            let status = helper_status?;
            return Err(WorkloadError::HelperFailed { status: status.to_string() });
        }
    };
    match (ours_stdio, got.master) {
        (Some([stdin, stdout, stderr]), None) => {
            Ok(Spawned { pid, stdin: Some(stdin), stdout, stderr: Some(stderr), pty_master: false })
        }
        (None, Some(master)) => match set_nonblocking(&master) {
            Ok(()) => Ok(Spawned { pid, stdin: None, stdout: master, stderr: None, pty_master: true }),
            Err(e) => {
                discard(pid);
                Err(e)
            }
        },
        _ => {
            discard(pid);
            Err(WorkloadError::BadReport { reason: "a terminal master without a tty, or none with one" })
        }
    }
}
