//! The workload machinery on the build host, as root: real namespaces, overlayfs, erofs on a loop device,
//! cgroup v2, with a busybox-static root filesystem. The setup helper is the built `bulkhead-zone` binary.
//!
//! Every workload process is a child of this test process (`CLONE_PARENT`), reaped here with
//! `waitpid(pid)`. Tests that need something the host may lack (a writable cgroup2 hierarchy; its memory
//! controller) say so on stderr and skip, unless `BULKHEAD_REQUIRE_CGROUPS=1` makes that a failure. Everything
//! else needs root and fails loudly without it.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bulkhead_wire::{
    BpfInstruction, Capabilities, EnvVar, ExitStatus, ResourceLimits, SeccompProgram, Security, User, VolumeEntry,
    VolumeEntryKind, WorkloadSpec,
};
use bulkhead_zone::workload::{
    self, ExecLaunch, Launch, Layout, SetupStage, Spawned, WorkloadError, cgroup, rootfs, spawn_exec, spawn_workload,
};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead-zone");
const TIMEOUT: Duration = Duration::from_secs(20);
const APPLETS: [&str; 24] = [
    "sh", "echo", "cat", "sleep", "id", "hostname", "ls", "tty", "stty", "head", "tail", "dd", "touch", "test", "[",
    "true", "false", "env", "readlink", "pwd", "mkdir", "tr", "grep", "wc",
];

static NEXT: AtomicU64 = AtomicU64::new(1);

fn run(cmd: &mut Command) -> Result<String, Box<dyn std::error::Error>> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {} {}", out.status, String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A busybox root filesystem in `dir`.
fn build_image(dir: &Path) -> TestResult {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "home/user"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    Ok(())
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

fn require_cgroups() -> bool {
    std::env::var("BULKHEAD_REQUIRE_CGROUPS").is_ok_and(|v| v == "1")
}

/// A test's private world: a tmpfs as run dir, a busybox image directory, a cgroup subtree if possible.
struct Host {
    dir: PathBuf,
    image: PathBuf,
    layout: Layout,
    cgroups: bool,
    loop_dev: Option<String>,
}

impl Host {
    fn new(name: &str) -> Result<Host, Box<dyn std::error::Error>> {
        assert!(nix::unistd::geteuid().is_root(), "these tests need root (namespaces, mounts, cgroups)");
        let dir = std::env::temp_dir().join(format!("bulkhead-wl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let run_dir = dir.join("run");
        std::fs::create_dir_all(&run_dir)?;
        std::fs::create_dir_all(dir.join("dev"))?;
        // Like the zone's /run: overlayfs needs its upper layer on a filesystem that supports it.
        nix::mount::mount(Some("tmpfs"), &run_dir, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("mode=0755"))?;
        let image = dir.join("image");
        build_image(&image)?;
        let (cgroup_root, cgroups) = match cgroup2_mount() {
            Some(mnt) => {
                let root = mnt.join(format!("bulkhead-test-{name}-{}", std::process::id()));
                match std::fs::create_dir(&root) {
                    Ok(()) => {
                        // Delegate whatever the hierarchy offers (init does this for the zone's root).
                        let _ = bulkhead_zone::cgroup::enable_controllers(&root);
                        (root, true)
                    }
                    Err(e) => (PathBuf::from(format!("/nonexistent-cgroup ({e})")), false),
                }
            }
            None => (PathBuf::from("/nonexistent-cgroup"), false),
        };
        let layout = Layout { dev_dir: dir.join("dev"), run_dir, cgroup_root };
        Ok(Host { dir, image, layout, cgroups, loop_dev: None })
    }

    /// The workload cgroup for `id` if this host has a writable cgroup2 hierarchy.
    fn cgroup(&self, id: u64, limits: &ResourceLimits) -> Result<Option<PathBuf>, WorkloadError> {
        if self.cgroups { cgroup::create(&self.layout, id, limits).map(Some) } else { Ok(None) }
    }

    fn launch(&self, spec: WorkloadSpec) -> Result<(u64, Launch), Box<dyn std::error::Error>> {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let root = rootfs::prepare(&self.layout, id, &self.image, spec.readonly_rootfs)?;
        let cg = self.cgroup(id, &spec.limits)?;
        let mut launch = Launch::new(id, spec, root, cg);
        launch.helper_exe = PathBuf::from(BIN);
        Ok((id, launch))
    }

    fn start(&self, spec: WorkloadSpec) -> Result<Spawned, Box<dyn std::error::Error>> {
        let (_, launch) = self.launch(spec)?;
        Ok(spawn_workload(&launch)?)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Detaching the tmpfs takes the overlays and images mounted below it along.
        let _ = nix::mount::umount2(&self.layout.run_dir, nix::mount::MntFlags::MNT_DETACH);
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
        if self.cgroups {
            let workloads = self.layout.workloads_cgroup();
            // A failed test may have left workloads running: kill them, wait for them to leave.
            let dirs: Vec<PathBuf> = std::fs::read_dir(&workloads)
                .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
                .unwrap_or_default();
            for dir in &dirs {
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            }
            for dir in &dirs {
                let deadline = Instant::now() + Duration::from_secs(2);
                while std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let _ = std::fs::remove_dir(&workloads);
            let _ = std::fs::remove_dir(&self.layout.cgroup_root);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spec(argv: &[&str]) -> WorkloadSpec {
    WorkloadSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![EnvVar { name: "PATH".into(), value: "/bin".into() }],
        cwd: "/".into(),
        user: User::root(),
        tty: false,
        limits: ResourceLimits::default(),
        readonly_rootfs: false,
        hostname: None,
        root_device: "xvdb".into(),
        security: None,
        mounts: Vec::new(),
    }
}

fn sh(script: &str) -> WorkloadSpec {
    spec(&["sh", "-c", script])
}

/// Reads a non-blocking fd until end of file (EIO for a terminal master whose slave is closed).
fn read_all(fd: BorrowedFd<'_>) -> Result<String, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + TIMEOUT;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(Instant::now()).ok_or("timed out reading output")?;
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::try_from(left)?)?;
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) | Err(Errno::EIO) => return Ok(String::from_utf8(out)?),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads until `want` appears (for processes that keep running).
fn read_until(fd: BorrowedFd<'_>, want: &str) -> Result<String, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + TIMEOUT;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains(want) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .ok_or_else(|| format!("timed out waiting for {want:?}; got {:?}", String::from_utf8_lossy(&out)))?;
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::try_from(left)?)?;
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) | Err(Errno::EIO) => {
                return Err(format!("EOF before {want:?}: {:?}", String::from_utf8_lossy(&out)).into());
            }
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(String::from_utf8(out)?)
}

fn write_all(fd: BorrowedFd<'_>, data: &[u8]) -> TestResult {
    let mut left = data;
    while !left.is_empty() {
        let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
        poll(&mut fds, PollTimeout::try_from(TIMEOUT)?)?;
        match nix::unistd::write(fd, left) {
            Ok(n) => left = &left[n..],
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Waits for `pid` (a child of this process) to end, with a deadline.
fn wait(pid: Pid) -> Result<WaitStatus, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG))? {
            WaitStatus::StillAlive if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            WaitStatus::StillAlive => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                return Err(format!("pid {pid} did not exit in time").into());
            }
            status => return Ok(status),
        }
    }
}

fn status(pid: Pid) -> Result<ExitStatus, Box<dyn std::error::Error>> {
    workload::exit_status(wait(pid)?, false).ok_or_else(|| "not a termination".into())
}

/// Runs a piped workload to its end: (stdout, stderr, status).
fn run_to_end(s: &Spawned) -> Result<(String, String, ExitStatus), Box<dyn std::error::Error>> {
    let out = read_all(s.stdout.as_fd())?;
    let err = match &s.stderr {
        Some(fd) => read_all(fd.as_fd())?,
        None => String::new(),
    };
    Ok((out, err, status(s.pid)?))
}

#[test]
fn echo_hello_prints_on_stdout_and_exits_0() -> TestResult {
    let host = Host::new("echo")?;
    let s = host.start(sh("echo hello; echo oops >&2"))?;
    assert!(!s.pty_master && s.stdin.is_some());
    assert_eq!(run_to_end(&s)?, ("hello\n".into(), "oops\n".into(), ExitStatus::Code(0)));
    Ok(())
}

#[test]
fn exit_codes_come_through_waitpid() -> TestResult {
    let host = Host::new("exit7")?;
    let s = host.start(sh("exit 7"))?;
    let (_, _, st) = run_to_end(&s)?;
    assert_eq!((st, st.exit_code()), (ExitStatus::Code(7), 7));
    Ok(())
}

#[test]
fn a_killed_workload_reports_the_signal() -> TestResult {
    let host = Host::new("kill")?;
    let s = host.start(spec(&["sleep", "100"]))?;
    workload::signal(s.pid, 9)?;
    let st = status(s.pid)?;
    assert_eq!(st, ExitStatus::Signaled { signal: 9, core_dumped: false });
    assert_eq!(st.exit_code(), 137);
    Ok(())
}

#[test]
fn stdin_reaches_the_workload_and_closing_it_is_eof() -> TestResult {
    let host = Host::new("stdin")?;
    let mut s = host.start(spec(&["cat"]))?;
    let stdin = s.stdin.take().ok_or("no stdin")?;
    write_all(stdin.as_fd(), b"through the pipe\n")?;
    drop(stdin);
    assert_eq!(run_to_end(&s)?, ("through the pipe\n".into(), String::new(), ExitStatus::Code(0)));
    Ok(())
}

#[test]
fn the_workload_is_pid_1_of_its_own_pid_namespace() -> TestResult {
    let host = Host::new("pidns")?;
    let s = host.start(sh("echo $$; ls /proc | grep -c '^[0-9]'"))?;
    // Itself and the one child running ls (grep is a builtin-less applet: also a process).
    let (out, _, st) = run_to_end(&s)?;
    assert_eq!(st, ExitStatus::Code(0));
    assert_eq!(out.lines().next(), Some("1"), "{out}");
    let count: u32 = out.lines().nth(1).ok_or("no count")?.parse()?;
    assert!(count <= 3, "the workload sees {count} processes: {out}");
    Ok(())
}

#[test]
fn the_hostname_is_set_in_the_workloads_own_uts_namespace() -> TestResult {
    let host = Host::new("uts")?;
    let before = nix::unistd::gethostname()?;
    let mut s = sh("hostname");
    s.hostname = Some("web-0".into());
    let spawned = host.start(s)?;
    assert_eq!(run_to_end(&spawned)?.0, "web-0\n");
    assert_eq!(nix::unistd::gethostname()?, before);
    Ok(())
}

#[test]
fn the_process_runs_as_the_given_user_and_groups() -> TestResult {
    let host = Host::new("user")?;
    let mut s = sh("id -u; id -g; id -G; pwd");
    s.user = User { uid: 1000, gid: 1001, additional_gids: vec![10, 20] };
    s.cwd = "/home/user".into();
    let spawned = host.start(s)?;
    let (out, err, st) = run_to_end(&spawned)?;
    assert_eq!(st, ExitStatus::Code(0), "{err}");
    assert_eq!(out, "1000\n1001\n1001 10 20\n/home/user\n");
    Ok(())
}

#[test]
fn the_root_has_proc_a_read_only_sys_and_a_private_dev() -> TestResult {
    let host = Host::new("mounts")?;
    let s = host.start(sh("ls /dev; echo x > /dev/null && echo null-ok; touch /sys/x 2>/dev/null || echo sys-ro; \
         readlink /dev/ptmx; cat /proc/self/cgroup"))?;
    let (out, _, st) = run_to_end(&s)?;
    assert_eq!(st, ExitStatus::Code(0), "{out}");
    let dev: Vec<&str> = out.lines().take_while(|l| *l != "null-ok").collect();
    for node in
        ["fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero"]
    {
        assert!(dev.contains(&node), "/dev lacks {node}: {dev:?}");
    }
    assert_eq!(dev.len(), 13, "/dev has more than expected: {dev:?}");
    assert!(out.contains("null-ok\nsys-ro\npts/ptmx\n"), "{out}");
    // Its own cgroup namespace: it sees its cgroup as the root.
    assert!(out.ends_with("0::/\n"), "{out}");
    Ok(())
}

#[test]
fn a_tty_workload_gets_a_terminal_its_size_and_its_input() -> TestResult {
    let host = Host::new("tty")?;
    let mut s = sh("tty; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-ttys; read line; stty size; echo got=$line");
    s.tty = true;
    let spawned = host.start(s)?;
    assert!(spawned.pty_master && spawned.stdin.is_none() && spawned.stderr.is_none());
    let master = spawned.stdout.as_fd();
    let first = read_until(master, "all-ttys")?;
    assert!(first.starts_with("/dev/pts/0\r\n"), "{first:?}");
    workload::resize(master, 33, 99)?;
    write_all(master, b"abc\n")?;
    let rest = read_all(master)?;
    assert!(rest.contains("33 99\r\n"), "{rest:?}");
    assert!(rest.contains("got=abc\r\n"), "{rest:?}");
    assert_eq!(status(spawned.pid)?, ExitStatus::Code(0));
    Ok(())
}

#[test]
fn a_read_only_root_refuses_writes_and_a_writable_one_keeps_them_in_its_upper_layer() -> TestResult {
    let host = Host::new("ro")?;
    let mut s = sh("touch /new 2>/dev/null && echo wrote || echo refused");
    s.readonly_rootfs = true;
    let (_, launch) = host.launch(s.clone())?;
    let spawned = spawn_workload(&launch)?;
    assert_eq!(run_to_end(&spawned)?.0, "refused\n");

    s.readonly_rootfs = false;
    let (id, launch) = host.launch(s)?;
    let spawned = spawn_workload(&launch)?;
    assert_eq!(run_to_end(&spawned)?.0, "wrote\n");
    assert!(host.layout.workload_dir(id).join("upper/new").exists());
    assert!(!host.image.join("new").exists());
    rootfs::remove(&host.layout, id)?;
    assert!(!host.layout.workload_dir(id).exists());
    rootfs::remove(&host.layout, id)?;
    Ok(())
}

#[test]
fn setup_failures_come_back_with_their_stage_and_errno() -> TestResult {
    let host = Host::new("fail")?;
    let expect = |s: WorkloadSpec, stage: SetupStage, errno: Errno, detail: &str| -> TestResult {
        match host.start(s) {
            Err(e) => match e.downcast_ref::<WorkloadError>() {
                Some(WorkloadError::Setup { stage: got, errno: Some(got_errno), detail: got_detail })
                    if *got == stage && *got_errno == errno && got_detail.contains(detail) =>
                {
                    Ok(())
                }
                _ => Err(format!("expected {stage:?}/{errno}, got {e:#}").into()),
            },
            Ok(s) => Err(format!("started pid {}", s.pid).into()),
        }
    };
    expect(spec(&["no-such-program"]), SetupStage::Exec, Errno::ENOENT, "no-such-program: not found in PATH=/bin")?;
    expect(spec(&["/bin/nope"]), SetupStage::Exec, Errno::ENOENT, "/bin/nope")?;
    expect(spec(&["/etc/passwd"]), SetupStage::Exec, Errno::EACCES, "/etc/passwd")?;
    let mut bad_cwd = spec(&["true"]);
    bad_cwd.cwd = "/no/such/dir".into();
    expect(bad_cwd, SetupStage::Cwd, Errno::ENOENT, "/no/such/dir")?;
    Ok(())
}

#[test]
fn exec_joins_a_running_workloads_namespaces() -> TestResult {
    let host = Host::new("exec")?;
    let mut s = spec(&["sleep", "100"]);
    s.hostname = Some("exec-target".into());
    let (id, launch) = host.launch(s)?;
    let w = spawn_workload(&launch)?;
    let exec = ExecLaunch {
        target: w.pid,
        cgroup: launch.cgroup.clone(),
        argv: vec![
            "sh".into(),
            "-c".into(),
            "hostname; tr '\\0' ' ' < /proc/1/cmdline; echo; echo $$ $FOO; pwd".into(),
        ],
        env: vec![
            EnvVar { name: "PATH".into(), value: "/bin".into() },
            EnvVar { name: "FOO".into(), value: "bar".into() },
        ],
        cwd: "/tmp".into(),
        user: User::root(),
        tty: false,
        security: None,
        helper_exe: PathBuf::from(BIN),
    };
    let e = spawn_exec(&exec)?;
    let (out, err, st) = run_to_end(&e)?;
    assert_eq!(st, ExitStatus::Code(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "exec-target");
    assert_eq!(lines[1].trim_end(), "sleep 100");
    let (pid_in_ns, foo) = lines[2].split_once(' ').ok_or("no pid line")?;
    assert_ne!(pid_in_ns, "1");
    assert!(pid_in_ns.parse::<i32>()? < 10, "the exec is not in the workload's pid namespace: {pid_in_ns}");
    assert_eq!((foo, lines[3]), ("bar", "/tmp"));

    // A tty exec gets the workload's devpts.
    let tty_exec = ExecLaunch { argv: vec!["tty".into()], tty: true, ..exec.clone() };
    let t = spawn_exec(&tty_exec)?;
    assert!(read_all(t.stdout.as_fd())?.starts_with("/dev/pts/"));
    assert_eq!(status(t.pid)?, ExitStatus::Code(0));

    // An exec failure is reported like a workload's.
    let missing = ExecLaunch { argv: vec!["nope".into()], ..exec };
    assert!(matches!(spawn_exec(&missing), Err(WorkloadError::Setup { stage: SetupStage::Exec, .. })));

    // A pid namespace's init ignores signals it has no handler for, SIGTERM included; SIGKILL always works.
    workload::signal(w.pid, 15)?;
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(waitpid(w.pid, Some(WaitPidFlag::WNOHANG))?, WaitStatus::StillAlive);
    workload::signal(w.pid, 9)?;
    assert_eq!(status(w.pid)?, ExitStatus::Signaled { signal: 9, core_dumped: false });
    if let Some(cg) = &launch.cgroup {
        cgroup::remove(cg)?;
        assert!(!cg.exists());
    }
    rootfs::remove(&host.layout, id)?;
    Ok(())
}

#[test]
fn a_workload_starts_inside_its_cgroup() -> TestResult {
    let host = Host::new("cgroup")?;
    if !host.cgroups {
        assert!(!require_cgroups(), "BULKHEAD_REQUIRE_CGROUPS=1 but no writable cgroup2 hierarchy");
        bulkhead_zone::say!("SKIP a_workload_starts_inside_its_cgroup: no writable cgroup2 hierarchy on this host");
        return Ok(());
    }
    let (id, launch) = host.launch(spec(&["sleep", "100"]))?;
    let w = spawn_workload(&launch)?;
    let seen = std::fs::read_to_string(format!("/proc/{}/cgroup", w.pid))?;
    let cg = launch.cgroup.clone().ok_or("no cgroup")?;
    let procs = std::fs::read_to_string(cg.join("cgroup.procs"))?;
    workload::signal(w.pid, 9)?;
    status(w.pid)?;
    assert_eq!(procs.trim(), w.pid.to_string());
    let relative = cg.strip_prefix(cgroup2_mount().ok_or("no cgroup2")?)?;
    assert!(seen.contains(&format!("0::/{}\n", relative.display())), "{seen}");
    cgroup::remove(&cg)?;
    cgroup::remove(&cg)?;
    assert!(!host.layout.cgroup_dir(id).exists());
    Ok(())
}

#[test]
fn a_workload_over_its_memory_limit_is_oom_killed() -> TestResult {
    let host = Host::new("oom")?;
    let memory = std::fs::read_to_string(host.layout.cgroup_root.join("cgroup.subtree_control"))
        .map(|c| c.split_whitespace().any(|c| c == "memory"))
        .unwrap_or(false);
    if !host.cgroups || !memory {
        assert!(!require_cgroups(), "BULKHEAD_REQUIRE_CGROUPS=1 but cgroup2 has no memory controller here");
        bulkhead_zone::say!(
            "SKIP a_workload_over_its_memory_limit_is_oom_killed: no writable cgroup2 hierarchy with the memory \
             controller on this host (cgroup2 at {:?})",
            cgroup2_mount()
        );
        return Ok(());
    }
    let mut s = spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    s.limits.memory_bytes = Some(16 << 20);
    let (_, launch) = host.launch(s)?;
    let cg = launch.cgroup.clone().ok_or("no cgroup")?;
    assert_eq!(std::fs::read_to_string(cg.join("memory.max"))?.trim(), (16u64 << 20).to_string());
    let w = spawn_workload(&launch)?;
    let _ = read_all(w.stdout.as_fd())?;
    let st = workload::exit_status(wait(w.pid)?, cgroup::oom_killed(&cg)).ok_or("no status")?;
    assert_eq!(st, ExitStatus::OomKilled);
    cgroup::remove(&cg)?;
    Ok(())
}

#[test]
fn an_erofs_image_on_a_device_is_mounted_once_and_runs_workloads() -> TestResult {
    let mut host = Host::new("erofs")?;
    let file = host.dir.join("image.erofs");
    run(Command::new("mkfs.erofs").arg("--quiet").arg(&file).arg(&host.image))?;
    let dev = run(Command::new("losetup").args(["-f", "--show", "-r"]).arg(&file))?.trim().to_owned();
    host.loop_dev = Some(dev.clone());
    std::os::unix::fs::symlink(&dev, host.layout.dev_dir.join("xvdb"))?;

    assert!(matches!(rootfs::mount_image(&host.layout, "sdb"), Err(WorkloadError::InvalidDevice { .. })));
    let image = rootfs::mount_image(&host.layout, "xvdb")?;
    assert_eq!(image, host.layout.image_dir("xvdb"));
    assert!(rootfs::is_mount_point(&image)?);
    // Idempotent: the second call finds the mount (a second erofs mount would stack on the first).
    assert_eq!(rootfs::mount_image(&host.layout, "xvdb")?, image);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert_eq!(mounts.lines().filter(|l| l.contains(&format!(" {} ", image.display()))).count(), 1);
    assert!(matches!(rootfs::mount_image(&host.layout, "xvdc"), Err(WorkloadError::MountImage { .. })));

    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let root = rootfs::prepare(&host.layout, id, &image, false)?;
    assert_eq!(rootfs::prepare(&host.layout, id, &image, false)?, root);
    let mut launch = Launch::new(id, sh("echo from-erofs > /f; cat /f"), root, None);
    launch.helper_exe = PathBuf::from(BIN);
    let s = spawn_workload(&launch)?;
    assert_eq!(run_to_end(&s)?, ("from-erofs\n".into(), String::new(), ExitStatus::Code(0)));
    rootfs::remove(&host.layout, id)?;
    Ok(())
}

#[test]
fn a_missing_helper_is_an_error_not_a_hang() -> TestResult {
    let host = Host::new("nohelper")?;
    let (_, mut launch) = host.launch(sh("true"))?;
    launch.helper_exe = PathBuf::from("/nonexistent/bulkhead-zone");
    assert!(matches!(spawn_workload(&launch), Err(WorkloadError::StartHelper { .. })));
    // A helper that is not a helper (exits at once): the caller learns it from the end of stream.
    launch.helper_exe = PathBuf::from("/bin/true");
    let got = spawn_workload(&launch);
    assert!(matches!(got, Err(WorkloadError::HelperFailed { .. } | WorkloadError::SendRequest(_))), "{got:?}");
    Ok(())
}

/// A seccomp program by hand: x86_64 only (anything else is killed), mkdir (83) fails with EPERM, the rest runs.
fn deny_mkdir() -> SeccompProgram {
    let i = |code, jt, jf, k| BpfInstruction { code, jt, jf, k };
    SeccompProgram(vec![
        i(0x20, 0, 0, 4),           // ld [4]: arch
        i(0x15, 1, 0, 0xc000_003e), // jeq AUDIT_ARCH_X86_64
        i(0x06, 0, 0, 0x8000_0000), // ret KILL_PROCESS
        i(0x20, 0, 0, 0),           // ld [0]: nr
        i(0x15, 0, 1, 83),          // jeq mkdir
        i(0x06, 0, 0, 0x0005_0001), // ret ERRNO(EPERM)
        i(0x06, 0, 0, 0x7fff_0000), // ret ALLOW
    ])
}

fn restricted() -> Security {
    let net_bind_service = 1 << 10;
    Security {
        capabilities: Capabilities {
            bounding: net_bind_service,
            effective: net_bind_service,
            permitted: net_bind_service,
            inheritable: 0,
            ambient: 0,
        },
        no_new_privs: true,
        masked_paths: vec!["/proc/kallsyms".into(), "/proc/no-such-file".into(), "/sys/kernel".into()],
        readonly_paths: vec!["/proc/sys".into()],
        seccomp: vec![deny_mkdir()],
        privileged: false,
    }
}

/// The checks, run by the workload and by an exec into it: each prints a line that must be there.
const SECURITY_SCRIPT: &str = "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
    mkdir /made 2>/dev/null && echo mkdir-allowed || echo mkdir-denied; \
    echo kallsyms=$(cat /proc/kallsyms | wc -c) sys-kernel=$(ls /sys/kernel | wc -l); \
    grep -q ' /proc/sys proc ro,' /proc/self/mounts && echo proc-sys-ro";

fn assert_restricted(out: &str) {
    for want in [
        "CapEff:\t0000000000000400",
        "CapBnd:\t0000000000000400",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "mkdir-denied",
        "kallsyms=0 sys-kernel=0",
        "proc-sys-ro",
    ] {
        assert!(out.contains(want), "{want:?} missing in {out:?}");
    }
}

#[test]
fn security_settings_hold_in_the_workload_and_in_its_execs() -> TestResult {
    let host = Host::new("security")?;
    let mut s = sh(SECURITY_SCRIPT);
    s.security = Some(Box::new(restricted()));
    let (out, err, st) = run_to_end(&host.start(s)?)?;
    assert_eq!(st, ExitStatus::Code(0), "{err}");
    assert_restricted(&out);

    // An exec inherits the workload's settings.
    let mut s = spec(&["sleep", "100"]);
    s.security = Some(Box::new(restricted()));
    let (_, launch) = host.launch(s.clone())?;
    let w = spawn_workload(&launch)?;
    let exec = ExecLaunch {
        target: w.pid,
        cgroup: launch.cgroup.clone(),
        argv: vec!["sh".into(), "-c".into(), SECURITY_SCRIPT.into()],
        env: s.env.clone(),
        cwd: "/".into(),
        user: User::root(),
        tty: false,
        security: s.security.as_deref().cloned(),
        helper_exe: PathBuf::from(BIN),
    };
    let (out, err, st) = run_to_end(&spawn_exec(&exec)?)?;
    let _ = nix::sys::signal::kill(w.pid, nix::sys::signal::Signal::SIGKILL);
    let _ = wait(w.pid);
    assert_eq!(st, ExitStatus::Code(0), "{err}");
    assert_restricted(&out);
    Ok(())
}

#[test]
fn a_non_root_user_starts_without_capabilities_and_privileged_gets_them_all() -> TestResult {
    let host = Host::new("caps")?;
    // Every capability this test process holds (a build host's sandbox may lack some; the zone has all).
    let status = std::fs::read_to_string("/proc/self/status")?;
    let bounding = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).ok_or("no CapBnd")?.trim();
    let held = u64::from_str_radix(bounding, 16)? & Capabilities::ALL;
    let all = Capabilities { bounding: held, effective: held, permitted: held, inheritable: 0, ambient: 0 };
    let privileged = Security {
        capabilities: all,
        no_new_privs: false,
        masked_paths: vec![],
        readonly_paths: vec![],
        seccomp: vec![],
        privileged: true,
    };
    let script = "grep -E '^(CapEff|Seccomp):' /proc/self/status; grep ' /sys sysfs ' /proc/self/mounts";
    let mut s = sh(script);
    s.security = Some(Box::new(privileged.clone()));
    let (out, err, st) = run_to_end(&host.start(s)?)?;
    assert_eq!(st, ExitStatus::Code(0), "{err}");
    let full = format!("CapEff:\t{held:016x}");
    assert!(out.contains(&full) && out.contains("Seccomp:\t0") && out.contains(" sysfs rw,"), "{out:?}");
    // A non-root program gets nothing from execve, whatever the sets before it (as with runc).
    let mut s = sh("grep -E '^(CapEff|CapPrm):' /proc/self/status");
    s.user = User { uid: 1000, gid: 1000, additional_gids: vec![] };
    s.security = Some(Box::new(Security { privileged: false, ..privileged }));
    let (out, err, st) = run_to_end(&host.start(s)?)?;
    assert_eq!(st, ExitStatus::Code(0), "{err}");
    assert!(out.contains("CapEff:\t0000000000000000") && out.contains("CapPrm:\t0000000000000000"), "{out:?}");
    Ok(())
}

#[test]
fn a_filter_the_kernel_refuses_is_a_seccomp_setup_failure() -> TestResult {
    let host = Host::new("bad-filter")?;
    let mut s = sh("true");
    let mut security = restricted();
    // A jump past the end of the program.
    security.seccomp = vec![SeccompProgram(vec![BpfInstruction { code: 0x05, jt: 0, jf: 0, k: 10 }])];
    s.security = Some(Box::new(security));
    match host.start(s) {
        Err(e) => {
            let e = e.downcast::<WorkloadError>().map_err(|e| format!("not a workload error: {e}"))?;
            assert!(matches!(*e, WorkloadError::Setup { stage: SetupStage::Seccomp, .. }), "{e:?}");
        }
        Ok(_) => return Err("an invalid filter was installed".into()),
    }
    Ok(())
}

#[test]
fn volumes_are_bound_in_order_read_only_when_asked_and_emptydirs_are_shared() -> TestResult {
    use bulkhead_zone::workload::volumes::{self, BindMount};
    let host = Host::new("volumes")?;
    let dir = volumes::volumes_dir(&host.layout.run_dir);
    let e = |path: &str, kind| VolumeEntry { path: path.into(), kind };
    let file =
        |data: &'static [u8]| VolumeEntryKind::File { mode: 0o644, offset: 0, data: bytes::Bytes::from_static(data) };
    volumes::write_entries(&dir, "s-hosts", &[e("", file(b"10.0.0.7 web\n"))])?;
    volumes::write_entries(
        &dir,
        "s-token",
        &[
            e("", VolumeEntryKind::Dir { mode: 0o755 }),
            e("..2026_11_23", VolumeEntryKind::Dir { mode: 0o755 }),
            e("..2026_11_23/token", file(b"secret-token")),
            e("..data", VolumeEntryKind::Symlink { target: "..2026_11_23".into() }),
            e("token", VolumeEntryKind::Symlink { target: "..data/token".into() }),
        ],
    )?;
    let empty = volumes::ensure_empty_dir(&dir, "e-cache")?;
    // The image links /var/run to /run, as Debian's do: the volume must land in /run, inside the root.
    std::fs::create_dir_all(host.image.join("var"))?;
    std::fs::create_dir_all(host.image.join("run"))?;
    std::os::unix::fs::symlink("/run", host.image.join("var/run"))?;
    let mounts = vec![
        BindMount { source: dir.join("s-hosts"), destination: "/etc/hosts".into(), readonly: false },
        BindMount {
            source: dir.join("s-token"),
            destination: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
            readonly: true,
        },
        BindMount { source: empty.clone(), destination: "/cache".into(), readonly: false },
    ];
    let script = "cat /etc/hosts; cat /var/run/secrets/kubernetes.io/serviceaccount/token; echo; \
        ls /run/secrets/kubernetes.io/serviceaccount; \
        echo x > /var/run/secrets/kubernetes.io/serviceaccount/new 2>/dev/null && echo wrote || echo read-only; \
        echo from-one > /cache/shared && echo shared";
    let (_, mut launch) = host.launch(sh(script))?;
    launch.mounts = mounts.clone();
    let out = run_to_end(&spawn_workload(&launch)?)?;
    assert_eq!(out.0, "10.0.0.7 web\nsecret-token\ntoken\nread-only\nshared\n", "stderr: {}", out.1);
    // A second workload mounting the same emptyDir sees what the first wrote.
    let (_, mut launch) = host.launch(sh("cat /data/shared"))?;
    launch.mounts = vec![BindMount { source: empty, destination: "/data".into(), readonly: true }];
    assert_eq!(run_to_end(&spawn_workload(&launch)?)?.0, "from-one\n");
    // A read-only root gets its mount points in its upper layer, where the image's links lead.
    let mut ro =
        sh("cat /var/run/secrets/kubernetes.io/serviceaccount/token; cat /etc/hosts; touch /x 2>/dev/null || echo ro");
    ro.readonly_rootfs = true;
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    rootfs::create_mount_points(&host.layout, id, &host.image, &mounts[..2])?;
    let root = rootfs::prepare(&host.layout, id, &host.image, true)?;
    let mut launch = Launch::new(id, ro, root, host.cgroup(id, &ResourceLimits::default())?);
    launch.helper_exe = PathBuf::from(BIN);
    launch.mounts = mounts[..2].to_vec();
    let out = run_to_end(&spawn_workload(&launch)?)?;
    assert_eq!(out.0, "secret-token10.0.0.7 web\nro\n", "stderr: {}", out.1);
    assert!(host.layout.workload_dir(id).join("upper/run/secrets/kubernetes.io/serviceaccount").is_dir());
    assert!(!host.image.join("run/secrets").exists(), "the image is untouched");
    // Nothing was mounted or created outside the roots.
    assert!(!Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").exists());
    Ok(())
}
