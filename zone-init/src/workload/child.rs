//! The new process between `clone3` and `execve`: it sets itself up inside its namespaces, then execs the
//! program. Like runc's and crun's container init: for a new workload, a private mount tree, the root
//! filesystem with `/proc`, `/sys` (read-only), `/sys/fs/cgroup` (its own cgroup namespace, read-only) and a
//! fresh `/dev`, `pivot_root`, the hostname; for every process, a new session, stdio (pipes, or a terminal
//! allocated in the workload's own devpts whose master goes back to the caller), the user, the working
//! directory, default signal dispositions and an empty signal mask, close-on-exec for every inherited
//! descriptor, and the program looked up in the `PATH` of its own environment. Any failure is reported to
//! the caller as [`Report::Failed`] and the process exits 127.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::SigSet;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::unistd::{Gid, Uid};

use super::error::SetupStage;
use super::protocol::{ProcessConfig, Report, Request, Target, send_report};
use super::volumes::{self, BindMount};
use super::{security, sys};

/// The `PATH` used when the environment has none (the one runc and Docker use).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Sets up and execs; on failure reports and exits 127. Never returns.
pub(crate) fn run(sock: BorrowedFd<'_>, request: &Request, stdio: Option<[OwnedFd; 3]>) -> ! {
    let report = match setup_and_exec(sock, request, stdio) {
        Ok(never) => match never {},
        Err(report) => report,
    };
    // If the caller is gone there is nobody left to tell.
    let _ = send_report(sock, &report, None);
    std::process::exit(127)
}

fn fail(stage: SetupStage, detail: impl Into<String>) -> impl FnOnce(Errno) -> Report {
    move |e| Report::failed(stage, Some(e), detail)
}

fn io_fail(stage: SetupStage, detail: impl Into<String>) -> impl FnOnce(std::io::Error) -> Report {
    move |e| Report::failed(stage, e.raw_os_error().map(Errno::from_raw), detail)
}

fn c_strings(list: &[String], what: &str) -> Result<Vec<CString>, Report> {
    list.iter()
        .map(|s| CString::new(s.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| Report::failed(SetupStage::Exec, None, format!("{what} contains a NUL byte")))
}

fn setup_and_exec(sock: BorrowedFd<'_>, request: &Request, stdio: Option<[OwnedFd; 3]>) -> Result<Infallible, Report> {
    let process = &request.process;
    let argv = c_strings(&process.argv, "argv")?;
    let env = c_strings(&process.env, "env")?;
    if let Target::Workload { rootfs, hostname, mounts } = &request.target {
        unshare(CloneFlags::CLONE_NEWCGROUP).map_err(fail(SetupStage::CgroupNamespace, ""))?;
        let privileged = process.security.as_ref().is_some_and(|s| s.privileged);
        enter_rootfs(rootfs, privileged, mounts)?;
        if let Some(name) = hostname {
            nix::unistd::sethostname(name).map_err(fail(SetupStage::Hostname, name.clone()))?;
        }
        // An exec joins the workload's mount namespace, where these are in place already.
        if let Some(sec) = &process.security {
            security::mask_paths(&sec.masked_paths)?;
            security::readonly_paths(&sec.readonly_paths)?;
        }
    }
    nix::unistd::setsid().map_err(fail(SetupStage::Session, ""))?;
    match stdio {
        None => attach_terminal(sock, process)?,
        Some([stdin, stdout, stderr]) => {
            nix::unistd::dup2_stdin(&stdin)
                .and_then(|()| nix::unistd::dup2_stdout(&stdout))
                .and_then(|()| nix::unistd::dup2_stderr(&stderr))
                .map_err(fail(SetupStage::Stdio, "dup2"))?;
        }
    }
    if let Some(sec) = &process.security {
        security::before_user_switch(sec)?;
    }
    switch_user(process)?;
    nix::unistd::chdir(process.cwd.as_str()).map_err(fail(SetupStage::Cwd, process.cwd.clone()))?;
    sys::reset_signal_dispositions();
    SigSet::empty().thread_set_mask().map_err(fail(SetupStage::CloseFds, "clearing the signal mask"))?;
    sys::cloexec_from(3).map_err(fail(SetupStage::CloseFds, "close_range"))?;
    if let Some(sec) = &process.security {
        security::before_exec(sec)?;
    }
    Err(exec(process, &argv, &env))
}

/// One filesystem mounted inside the new root, relative to it.
struct InnerMount {
    target: &'static str,
    source: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
    /// Skip it when the mount point does not exist (it cannot be created on read-only sysfs).
    optional: bool,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

/// The mounts inside every workload root, in order (each target lies on an earlier one or on the root).
const INNER_MOUNTS: [InnerMount; 6] = [
    InnerMount {
        target: "proc",
        source: "proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        optional: false,
    },
    InnerMount {
        target: "sys",
        source: "sysfs",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC.union(MsFlags::MS_RDONLY),
        data: None,
        optional: false,
    },
    InnerMount {
        target: "sys/fs/cgroup",
        source: "cgroup2",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC.union(MsFlags::MS_RDONLY),
        data: None,
        optional: true,
    },
    InnerMount {
        target: "dev",
        source: "tmpfs",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_STRICTATIME),
        data: Some("mode=755,size=65536k"),
        optional: false,
    },
    InnerMount {
        target: "dev/pts",
        source: "devpts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620"),
        optional: false,
    },
    InnerMount {
        target: "dev/shm",
        source: "shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=1777,size=65536k"),
        optional: false,
    },
];

/// The character devices of every workload's `/dev`: name, major, minor (`Documentation/admin-guide/devices.txt`).
const DEVICES: [(&str, u64, u64); 6] =
    [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

/// The symlinks of every workload's `/dev`.
const DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// Binds volume `m` into `rootfs` (runc's order: after the root's own mounts, before `pivot_root`; the
/// masked and read-only paths are applied after, so they still win). The destination is resolved inside
/// the root, its missing directories and the mount point (a file for a file volume) created; the bind is
/// `nosuid,nodev`, and read-only when asked.
fn bind_volume(rootfs: &Path, m: &BindMount) -> Result<(), Report> {
    let detail = || format!("volume at {}", m.destination);
    let source_is_dir = std::fs::metadata(&m.source).map_err(io_fail(SetupStage::Volumes, detail()))?.is_dir();
    let target = volumes::resolve_in_root(rootfs, &m.destination).map_err(fail(SetupStage::Volumes, detail()))?;
    if source_is_dir {
        std::fs::create_dir_all(&target).map_err(io_fail(SetupStage::Volumes, detail()))?;
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_fail(SetupStage::Volumes, detail()))?;
        }
        if std::fs::symlink_metadata(&target).is_err() {
            std::fs::File::options()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&target)
                .map_err(io_fail(SetupStage::Volumes, detail()))?;
        }
    }
    mount(Some(&m.source), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(fail(SetupStage::Volumes, format!("bind on {}", m.destination)))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if m.readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, &target, None::<&str>, flags, None::<&str>)
        .map_err(fail(SetupStage::Volumes, format!("remount of {}", m.destination)))
}

/// Enters the root; `privileged` mounts `/sys` writable (privileged within the zone).
fn enter_rootfs(rootfs: &Path, privileged: bool, mounts: &[BindMount]) -> Result<(), Report> {
    // Nothing mounted from here on may propagate back into the zone's mount namespace.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(fail(SetupStage::PrivateMounts, "/"))?;
    // pivot_root needs the new root to be a mount point; a bind mount makes any directory one and keeps
    // the flags (read-only) of a mount that is one already.
    mount(Some(rootfs), rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(fail(SetupStage::Mounts, format!("bind {}", rootfs.display())))?;
    for m in &INNER_MOUNTS {
        let target = rootfs.join(m.target);
        if !target.is_dir() {
            if m.optional {
                continue;
            }
            std::fs::create_dir_all(&target).map_err(io_fail(SetupStage::Mounts, target.display().to_string()))?;
        }
        let flags = if privileged && m.target == "sys" { m.flags.difference(MsFlags::MS_RDONLY) } else { m.flags };
        mount(Some(m.source), &target, Some(m.fstype), flags, m.data)
            .map_err(fail(SetupStage::Mounts, format!("{} on {}", m.fstype, target.display())))?;
    }
    populate_dev(&rootfs.join("dev"))?;
    for m in mounts {
        bind_volume(rootfs, m)?;
    }
    nix::unistd::chdir(rootfs).map_err(fail(SetupStage::PivotRoot, rootfs.display().to_string()))?;
    // pivot_root(".", ".") stacks the old root on the new one; unmounting "." then drops the old root
    // (pivot_root(2), "NOTES").
    nix::unistd::pivot_root(".", ".").map_err(fail(SetupStage::PivotRoot, rootfs.display().to_string()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(fail(SetupStage::PivotRoot, "detaching the old root"))?;
    nix::unistd::chdir("/").map_err(fail(SetupStage::PivotRoot, "/"))
}

fn populate_dev(dev: &Path) -> Result<(), Report> {
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        let mode = Mode::from_bits_truncate(0o666);
        mknod(&path, SFlag::S_IFCHR, mode, makedev(major, minor))
            .map_err(fail(SetupStage::DevNodes, path.display().to_string()))?;
        // mknod applies the umask; the nodes are world-readable and writable like everywhere.
        nix::sys::stat::fchmodat(nix::fcntl::AT_FDCWD, &path, mode, nix::sys::stat::FchmodatFlags::FollowSymlink)
            .map_err(fail(SetupStage::DevNodes, path.display().to_string()))?;
    }
    for (name, target) in DEV_LINKS {
        let path = dev.join(name);
        std::os::unix::fs::symlink(target, &path).map_err(io_fail(SetupStage::DevNodes, path.display().to_string()))?;
    }
    Ok(())
}

/// Opens a terminal in the process's own `/dev/pts`, sends the master to the caller, makes the slave the
/// controlling terminal and stdin, stdout and stderr. The caller must be a session leader.
fn attach_terminal(sock: BorrowedFd<'_>, process: &ProcessConfig) -> Result<(), Report> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(fail(SetupStage::Pty, "/dev/ptmx"))?;
    nix::pty::grantpt(&master).map_err(fail(SetupStage::Pty, "grantpt"))?;
    nix::pty::unlockpt(&master).map_err(fail(SetupStage::Pty, "unlockpt"))?;
    let name = nix::pty::ptsname_r(&master).map_err(fail(SetupStage::Pty, "ptsname"))?;
    let slave = std::fs::File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&name)
        .map_err(io_fail(SetupStage::Pty, name.clone()))?;
    std::os::unix::fs::fchown(&slave, Some(process.uid), None).map_err(io_fail(SetupStage::Pty, name.clone()))?;
    send_report(sock, &Report::PtyMaster, Some(master.as_fd())).map_err(fail(SetupStage::Pty, "sending the master"))?;
    drop(master);
    sys::set_controlling_terminal(slave.as_fd()).map_err(fail(SetupStage::Pty, "TIOCSCTTY"))?;
    nix::unistd::dup2_stdin(&slave)
        .and_then(|()| nix::unistd::dup2_stdout(&slave))
        .and_then(|()| nix::unistd::dup2_stderr(&slave))
        .map_err(fail(SetupStage::Stdio, "dup2 of the terminal"))
}

fn switch_user(process: &ProcessConfig) -> Result<(), Report> {
    let groups: Vec<Gid> = process.groups.iter().copied().map(Gid::from_raw).collect();
    nix::unistd::setgroups(&groups).map_err(fail(SetupStage::User, format!("setgroups {:?}", process.groups)))?;
    nix::unistd::setgid(Gid::from_raw(process.gid))
        .map_err(fail(SetupStage::User, format!("setgid {}", process.gid)))?;
    nix::unistd::setuid(Uid::from_raw(process.uid)).map_err(fail(SetupStage::User, format!("setuid {}", process.uid)))
}

/// The `PATH` of `env` (`NAME=VALUE` entries; the first `PATH` wins, as with `getenv`), or [`DEFAULT_PATH`].
pub fn search_path(env: &[String]) -> &str {
    env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH)
}

/// The files `execvp` would try for `program`: the program itself if it contains a `/`, otherwise each
/// `PATH` entry joined with it (an empty entry is the working directory).
pub fn exec_candidates(program: &str, path: &str) -> Vec<PathBuf> {
    if program.contains('/') {
        return vec![PathBuf::from(program)];
    }
    path.split(':').map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(program)).collect()
}

/// Tries each candidate like `execvp`: on to the next one after ENOENT, ENOTDIR or EACCES (reported as EACCES
/// if no candidate is found), stopping at any other error. Returns only on failure.
fn exec(process: &ProcessConfig, argv: &[CString], env: &[CString]) -> Report {
    let program = process.argv.first().map(String::as_str).unwrap_or_default();
    let path = search_path(&process.env);
    let mut denied = false;
    for candidate in exec_candidates(program, path) {
        let Ok(c_path) = CString::new(candidate.as_os_str().as_bytes()) else { continue };
        match nix::unistd::execve(&c_path, argv, env) {
            Ok(never) => match never {},
            Err(Errno::ENOENT | Errno::ENOTDIR) => {}
            Err(Errno::EACCES) => denied = true,
            Err(e) => return Report::failed(SetupStage::Exec, Some(e), candidate.display().to_string()),
        }
    }
    let (errno, what) = if denied { (Errno::EACCES, "not executable") } else { (Errno::ENOENT, "not found") };
    let detail =
        if program.contains('/') { format!("{program}: {what}") } else { format!("{program}: {what} in PATH={path}") };
    Report::failed(SetupStage::Exec, Some(errno), detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_with_a_slash_are_not_searched() {
        assert_eq!(exec_candidates("./run", "/bin"), [PathBuf::from("./run")]);
        assert_eq!(exec_candidates("/bin/sh", "/x:/y"), [PathBuf::from("/bin/sh")]);
    }

    #[test]
    fn bare_names_are_searched_in_path_order_and_empty_entries_mean_cwd() {
        assert_eq!(
            exec_candidates("sh", "/usr/bin::/bin"),
            [PathBuf::from("/usr/bin/sh"), PathBuf::from("./sh"), PathBuf::from("/bin/sh")]
        );
    }

    #[test]
    fn the_first_path_in_the_environment_wins_and_there_is_a_default() {
        let env = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(search_path(&env(&["HOME=/", "PATH=/a:/b", "PATH=/c"])), "/a:/b");
        assert_eq!(search_path(&env(&["HOME=/", "XPATH=/c"])), DEFAULT_PATH);
        assert_eq!(search_path(&[]), DEFAULT_PATH);
    }

    #[test]
    fn inner_mounts_sit_on_earlier_ones() {
        for (i, m) in INNER_MOUNTS.iter().enumerate() {
            let parent = Path::new(m.target).parent().unwrap_or(Path::new(""));
            let covered =
                parent.as_os_str().is_empty() || INNER_MOUNTS[..i].iter().any(|e| parent.starts_with(e.target));
            assert!(covered, "{} is mounted before its parent", m.target);
        }
    }
}
