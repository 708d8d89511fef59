//! The unsafe bottom of the workload machinery: the few system calls nix does not wrap safely. Everything
//! above this module is safe code; each block here says which invariant makes it sound.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// Mirrors `struct clone_args` of `include/uapi/linux/sched.h` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`, 88
/// bytes, Linux 5.7). Every field is a `__aligned_u64`.
#[repr(C)]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (`include/uapi/linux/sched.h`): start the child in the cgroup `clone_args.cgroup`
/// refers to. Only clone3 takes it (the bit does not fit the flags of `clone(2)`).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Which side of a [`clone3`] this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forked {
    /// The new process.
    Child,
    /// The calling process; the new process has this pid (in the caller's pid namespace).
    Parent(Pid),
}

/// `clone3(2)` with fork semantics (no new stack, no shared memory): both processes return from this call.
/// With `CLONE_PARENT` in `flags` the child is a sibling of the caller (a child of the caller's parent), and
/// the child's exit signal is the caller's own, as the kernel requires (`exit_signal` must be 0 then);
/// otherwise the child reports SIGCHLD to the caller. With `cgroup`, the child starts in that cgroup v2
/// directory (`CLONE_INTO_CGROUP`), so it never runs a single instruction outside it.
///
/// # Safety
///
/// The calling process must be single-threaded. The child is a copy of the caller's only thread; had other
/// threads existed, locks they held (in malloc, stdio, Rust's std) would stay locked forever in the child.
/// The child must also leave through `execve` or process exit, never by returning to code that assumes the
/// caller's pid (glibc's cached thread id is not updated by a raw clone3).
pub(crate) unsafe fn clone3(flags: CloneFlags, cgroup: Option<BorrowedFd<'_>>) -> Result<Forked, Errno> {
    // CloneFlags holds non-negative c_int bits.
    let mut bits = u64::from(flags.bits().unsigned_abs());
    let exit_signal = if flags.contains(CloneFlags::CLONE_PARENT) { 0 } else { libc::SIGCHLD.unsigned_abs() };
    let mut args = CloneArgs { exit_signal: u64::from(exit_signal), ..CloneArgs::default() };
    if let Some(fd) = cgroup {
        bits |= CLONE_INTO_CGROUP;
        args.cgroup = u64::from(fd.as_raw_fd().unsigned_abs());
    }
    args.flags = bits;
    // SAFETY: `args` is a valid, initialised `struct clone_args` and the size passed is its size; it is read
    // by the kernel only during the call. No stack is given, so the child runs on a copy of this stack in a
    // copy of this address space, exactly like fork(2); this function's caller guarantees there is no other
    // thread whose state the copy could catch half-updated.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &mut args as *mut CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(Forked::Child),
        pid => i32::try_from(pid).map(|p| Forked::Parent(Pid::from_raw(p))).map_err(|_| Errno::EOVERFLOW),
    }
}

/// Marks every file descriptor from `first` up as close-on-exec (`close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`,
/// Linux 5.11), so that nothing the process inherited by accident reaches the program it execs, while the fds
/// it still needs until then stay open.
pub(crate) fn cloexec_from(first: u32) -> Result<(), Errno> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2; // include/uapi/linux/close_range.h
    // SAFETY: close_range takes plain integers and only changes fd flags; no memory is passed or aliased.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC) };
    Errno::result(ret).map(drop)
}

/// Makes the terminal `fd` the controlling terminal of the calling session (`ioctl(TIOCSCTTY, 0)`); the
/// caller must be a session leader without one (right after `setsid`).
pub(crate) fn set_controlling_terminal(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal from another session); no memory is passed.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0 as libc::c_int) };
    Errno::result(ret).map(drop)
}

/// Sets the window size of the terminal `fd` (`ioctl(TIOCSWINSZ)`); the kernel sends SIGWINCH to the
/// terminal's foreground process group when it changes.
pub(crate) fn set_window_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> Result<(), Errno> {
    let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `struct winsize` through the pointer, which points at `size`, alive and
    // initialised for the whole call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size as *const libc::winsize) };
    Errno::result(ret).map(drop)
}

/// Sets network interface `name` up (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS` with `IFF_UP`), as `ip link set
/// NAME up` does.
pub(crate) fn set_interface_up(name: &str) -> Result<(), Errno> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid (empty) value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= req.ifr_name.len() {
        return Err(Errno::EINVAL);
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: both ioctls read and write one `struct ifreq` through the pointer, which points at `req`, alive
    // and initialised (NUL-terminated name) for the whole call.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req as *mut libc::ifreq) })?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union, which is the one read here.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req as *const libc::ifreq) }).map(drop)
}

/// Resets every catchable signal (1 to 64, standard and real-time) to its default disposition. Ignored
/// signals stay ignored across `execve` (Rust's runtime ignores SIGPIPE, for one), so a workload would
/// otherwise inherit them.
pub(crate) fn reset_signal_dispositions() {
    for signo in 1..=64 {
        if signo == libc::SIGKILL || signo == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL installs no handler, so no Rust code can run in signal context; numbers the kernel
        // does not know (or reserves for glibc) just fail with EINVAL, which is ignored.
        unsafe {
            libc::signal(signo, libc::SIG_DFL);
        }
    }
}

/// `prctl(option, arg2)` with the unused arguments zero.
fn prctl(option: libc::c_int, arg2: libc::c_ulong) -> Result<(), Errno> {
    // SAFETY: the options used here (PR_CAPBSET_DROP, PR_SET_KEEPCAPS, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT)
    // take integers only; no memory is passed.
    let ret = unsafe { libc::prctl(option, arg2, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    Errno::result(ret).map(drop)
}

/// Removes capability `cap` from the bounding set (needs CAP_SETPCAP).
pub(crate) fn drop_bounding(cap: u32) -> Result<(), Errno> {
    prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap))
}

/// Keeps the permitted capabilities across a switch away from uid 0 (`PR_SET_KEEPCAPS`).
pub(crate) fn set_keep_caps() -> Result<(), Errno> {
    prctl(libc::PR_SET_KEEPCAPS, 1)
}

/// Sets `PR_SET_NO_NEW_PRIVS`: execve grants no privileges from now on, for this process and its children.
pub(crate) fn set_no_new_privs() -> Result<(), Errno> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)
}

/// Empties the ambient set, then raises each capability of `ambient` in it.
pub(crate) fn set_ambient(ambient: u64) -> Result<(), Errno> {
    // SAFETY: PR_CAP_AMBIENT takes integers only.
    let ret = unsafe {
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0 as libc::c_ulong, 0, 0)
    };
    Errno::result(ret)?;
    for cap in (0..64u32).filter(|c| ambient & (1 << c) != 0) {
        // SAFETY: as above.
        let ret = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                libc::c_ulong::from(cap),
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        Errno::result(ret)?;
    }
    Ok(())
}

/// `_LINUX_CAPABILITY_VERSION_3` (`include/uapi/linux/capability.h`): 64-bit sets in two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets the calling thread's effective, permitted and inheritable capabilities (`capset`).
pub(crate) fn capset(effective: u64, permitted: u64, inheritable: u64) -> Result<(), Errno> {
    let header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    // Low halves first, as the kernel reads them; the casts keep exactly 32 bits each.
    let half = |v: u64, hi: bool| if hi { (v >> 32) as u32 } else { v as u32 };
    let data = [false, true].map(|hi| CapData {
        effective: half(effective, hi),
        permitted: half(permitted, hi),
        inheritable: half(inheritable, hi),
    });
    // SAFETY: `header` and the two `data` entries are valid, initialised `struct __user_cap_header_struct`
    // and `struct __user_cap_data_struct` (version 3 takes two), alive for the whole call, which only reads them.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    Errno::result(ret).map(drop)
}

/// Installs one seccomp filter, a classic BPF program (`prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)`); without
/// no_new_privs the caller needs CAP_SYS_ADMIN. The kernel checks the program.
pub(crate) fn install_seccomp(program: &[bulkhead_wire::BpfInstruction]) -> Result<(), Errno> {
    let filter: Vec<libc::sock_filter> =
        program.iter().map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect();
    let len = u16::try_from(filter.len()).map_err(|_| Errno::EINVAL)?;
    let prog = libc::sock_fprog { len, filter: filter.as_ptr().cast_mut() };
    // SAFETY: `prog` points at `filter`, `len` valid instructions alive for the whole call; the kernel copies
    // the program and never writes through the pointer.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    Errno::result(ret).map(drop)
}

/// Takes ownership of a descriptor received in an `SCM_RIGHTS` control message.
pub(crate) fn own_received_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed `fd` in this process's table while delivering the message, and nothing
    // else in the process knows its number yet, so this is its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_args_has_the_kernels_ver2_size() {
        assert_eq!(std::mem::size_of::<CloneArgs>(), 88);
    }

    #[test]
    fn window_size_needs_a_terminal() -> Result<(), Box<dyn std::error::Error>> {
        let file = std::fs::File::open("/dev/null")?;
        use std::os::fd::AsFd;
        assert_eq!(set_window_size(file.as_fd(), 24, 80), Err(Errno::ENOTTY));
        Ok(())
    }
}
