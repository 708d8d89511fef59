//! What the caller, the setup helper and the new process say to each other, over one `SOCK_SEQPACKET`
//! socket pair (the helper's stdin). Records keep their boundaries and carry descriptors (`SCM_RIGHTS`).
//!
//! Caller → helper: one header record (`u32` little-endian length of the postcard-encoded [`Request`], plus
//! the three stdio descriptors of a non-tty process), then the encoded request in chunks of at most
//! [`CHUNK`] bytes. Helper or process → caller: [`Report`] records, postcard-encoded; `PtyMaster` carries the
//! terminal's master descriptor. End of stream (every copy of the helper's end closed: the helper exited and
//! the process exec'd, since its copy is close-on-exec) ends the conversation.
//!
//! Both ends are the same binary, so the format is not versioned; it never leaves the zone. The caller does
//! not trust the sizes it receives anyway: reports are bounded by [`MAX_REPORT`].

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

use super::error::SetupStage;
use super::sys;

/// The largest request a helper accepts (argv and env are bounded by the wire protocol far below this).
pub(crate) const MAX_REQUEST: usize = 4 << 20;
/// The largest request chunk per record.
pub(crate) const CHUNK: usize = 32 << 10;
/// The largest report record.
pub(crate) const MAX_REPORT: usize = 4 << 10;
/// The most descriptors one record carries.
const MAX_FDS: usize = 3;

/// The process to start, as the helper receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Request {
    /// New namespaces around a root filesystem, or the namespaces of a running process.
    pub(crate) target: Target,
    /// The program and how it runs.
    pub(crate) process: ProcessConfig,
    /// The cgroup v2 directory the process starts in.
    pub(crate) cgroup: Option<PathBuf>,
}

/// Where the process runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Target {
    /// A new workload: new mount, pid, uts, ipc and cgroup namespaces, `rootfs` as its root.
    Workload {
        /// The prepared root filesystem (a mount point or a directory).
        rootfs: PathBuf,
        /// The UTS hostname, if it differs from the zone's.
        hostname: Option<String>,
        /// Volumes bound into the root, in order, before `pivot_root`.
        mounts: Vec<super::volumes::BindMount>,
    },
    /// An exec: the namespaces of the running process `pid`.
    Join {
        /// The workload's pid 1, as the caller sees it.
        pid: i32,
    },
}

/// The program and its process attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcessConfig {
    /// Program and arguments.
    pub(crate) argv: Vec<String>,
    /// `NAME=VALUE` entries.
    pub(crate) env: Vec<String>,
    /// Absolute working directory.
    pub(crate) cwd: String,
    /// User id.
    pub(crate) uid: u32,
    /// Group id.
    pub(crate) gid: u32,
    /// Supplementary groups.
    pub(crate) groups: Vec<u32>,
    /// A pseudo-terminal instead of pipes.
    pub(crate) tty: bool,
    /// Security settings (an exec has its workload's); `None`: the zone's defaults.
    pub(crate) security: Option<bulkhead_wire::Security>,
}

/// What the helper and the process report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Report {
    /// The helper cloned the process.
    Started {
        /// Its pid, as the caller sees it.
        pid: i32,
    },
    /// The terminal's master is attached to this record.
    PtyMaster,
    /// A setup step failed; the sender exits.
    Failed {
        /// The step.
        stage: SetupStage,
        /// The errno, if any.
        errno: Option<i32>,
        /// Details, at most [`MAX_DETAIL`] bytes.
        detail: String,
    },
}

/// The longest failure detail sent.
pub(crate) const MAX_DETAIL: usize = 1024;

impl Report {
    /// A failure report; the detail is cut to [`MAX_DETAIL`] bytes.
    pub(crate) fn failed(stage: SetupStage, errno: Option<Errno>, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        if detail.len() > MAX_DETAIL {
            let mut end = MAX_DETAIL;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
        }
        Report::Failed { stage, errno: errno.map(|e| e as i32), detail }
    }
}

fn send_record(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> Result<(), Errno> {
    let iov = [IoSlice::new(bytes)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) if n == bytes.len() => return Ok(()),
            // A seqpacket record is sent whole or not at all.
            Ok(_) => return Err(Errno::EMSGSIZE),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One record: its length (0 = end of stream) and the descriptors it carried, owned and close-on-exec.
fn recv_record(sock: BorrowedFd<'_>, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), RecvError> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(Errno::EINTR) => continue,
            r => break r.map_err(RecvError::Recv)?,
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(RecvError::Recv)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            fds.extend(raw.into_iter().map(sys::own_received_fd));
        }
    }
    if msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Err(RecvError::Truncated);
    }
    Ok((msg.bytes, fds))
}

/// Why a record could not be received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecvError {
    /// recvmsg failed.
    #[error("recvmsg")]
    Recv(#[source] Errno),
    /// The record or its descriptors did not fit, or it did not decode.
    #[error("truncated or undecodable record")]
    Truncated,
}

/// Sends `request` and the stdio descriptors (none, or stdin, stdout, stderr).
pub(crate) fn send_request(sock: BorrowedFd<'_>, encoded: &[u8], stdio: &[BorrowedFd<'_>]) -> Result<(), Errno> {
    let len = u32::try_from(encoded.len()).map_err(|_| Errno::EMSGSIZE)?;
    let raw: Vec<RawFd> = stdio.iter().map(AsRawFd::as_raw_fd).collect();
    send_record(sock, &len.to_le_bytes(), &raw)?;
    encoded.chunks(CHUNK).try_for_each(|chunk| send_record(sock, chunk, &[]))
}

/// Receives the request and its stdio descriptors (helper side).
pub(crate) fn recv_request(sock: BorrowedFd<'_>) -> Result<(Request, Vec<OwnedFd>), Report> {
    let fail = |errno: Option<Errno>, what: &str| Report::failed(SetupStage::ReadRequest, errno, what);
    let recv_fail = |e: RecvError| match e {
        RecvError::Recv(errno) => fail(Some(errno), "receiving the request"),
        RecvError::Truncated => fail(None, "a request record was truncated"),
    };
    let mut header = [0u8; 4];
    let (n, fds) = recv_record(sock, &mut header).map_err(recv_fail)?;
    if n != header.len() {
        return Err(fail(None, "short request header"));
    }
    let len = usize::try_from(u32::from_le_bytes(header)).unwrap_or(usize::MAX);
    if len > MAX_REQUEST {
        return Err(fail(None, "request too large"));
    }
    let mut encoded = vec![0u8; len];
    let mut have = 0;
    while have < len {
        let end = (have + CHUNK).min(len);
        let (n, extra) = recv_record(sock, &mut encoded[have..end]).map_err(recv_fail)?;
        if n == 0 || !extra.is_empty() {
            return Err(fail(None, "request ended early or carried descriptors in a chunk"));
        }
        have += n;
    }
    let request = postcard::from_bytes(&encoded).map_err(|_| fail(None, "undecodable request"))?;
    Ok((request, fds))
}

/// Sends one report, with the terminal master for [`Report::PtyMaster`].
pub(crate) fn send_report(sock: BorrowedFd<'_>, report: &Report, fd: Option<BorrowedFd<'_>>) -> Result<(), Errno> {
    let bytes = postcard::to_allocvec(report).map_err(|_| Errno::EINVAL)?;
    let raw: Vec<RawFd> = fd.iter().map(|f| f.as_fd().as_raw_fd()).collect();
    send_record(sock, &bytes, &raw)
}

/// Receives one report; `None` at end of stream.
pub(crate) fn recv_report(sock: BorrowedFd<'_>) -> Result<Option<(Report, Vec<OwnedFd>)>, RecvError> {
    let mut buf = vec![0u8; MAX_REPORT];
    let (n, fds) = recv_record(sock, &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    let report = postcard::from_bytes(&buf[..n]).map_err(|_| RecvError::Truncated)?;
    Ok(Some((report, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

    fn pair() -> Result<(OwnedFd, OwnedFd), Errno> {
        socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
    }

    fn request(argv_len: usize) -> Request {
        Request {
            target: Target::Workload {
                rootfs: "/run/r".into(),
                hostname: Some("h".into()),
                mounts: vec![super::super::volumes::BindMount {
                    source: "/run/bulkhead/volumes/s-1".into(),
                    destination: "/etc/hosts".into(),
                    readonly: true,
                }],
            },
            process: ProcessConfig {
                argv: vec!["x".repeat(argv_len), "b".into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                uid: 1,
                gid: 2,
                groups: vec![3],
                tty: false,
                security: None,
            },
            cgroup: Some("/sys/fs/cgroup/workloads/1".into()),
        }
    }

    #[test]
    fn a_request_larger_than_a_chunk_arrives_whole_with_its_descriptors() -> Result<(), Box<dyn std::error::Error>> {
        let (a, b) = pair()?;
        let (r, w) = nix::unistd::pipe()?;
        let req = request(3 * CHUNK + 17);
        let encoded = postcard::to_allocvec(&req)?;
        // A sender thread: the request is bigger than the socket buffer may hold.
        let sender = std::thread::spawn(move || send_request(a.as_fd(), &encoded, &[r.as_fd(), w.as_fd(), r.as_fd()]));
        let got = recv_request(b.as_fd());
        sender.join().map_err(|_| "sender panicked")??;
        let (got, fds) = got.map_err(|r| format!("{r:?}"))?;
        assert_eq!(got, req);
        assert_eq!(fds.len(), 3);
        Ok(())
    }

    #[test]
    fn reports_round_trip_and_end_of_stream_is_none() -> Result<(), Box<dyn std::error::Error>> {
        let (a, b) = pair()?;
        send_report(a.as_fd(), &Report::Started { pid: 42 }, None)?;
        let failed = Report::failed(SetupStage::Exec, Some(Errno::ENOENT), "é".repeat(MAX_DETAIL));
        send_report(a.as_fd(), &failed, None)?;
        drop(a);
        assert_eq!(recv_report(b.as_fd())?.map(|(r, _)| r), Some(Report::Started { pid: 42 }));
        let Some((Report::Failed { stage, errno, detail }, _)) = recv_report(b.as_fd())? else {
            return Err("expected a failure".into());
        };
        assert_eq!((stage, errno), (SetupStage::Exec, Some(Errno::ENOENT as i32)));
        assert!(detail.len() <= MAX_DETAIL && detail.starts_with('é'));
        assert!(recv_report(b.as_fd())?.is_none());
        Ok(())
    }

    #[test]
    fn a_short_or_lying_header_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let (a, b) = pair()?;
        send_record(a.as_fd(), &u32::MAX.to_le_bytes(), &[])?;
        assert!(matches!(recv_request(b.as_fd()), Err(Report::Failed { stage: SetupStage::ReadRequest, .. })));
        send_record(a.as_fd(), &[1, 2], &[])?;
        assert!(matches!(recv_request(b.as_fd()), Err(Report::Failed { stage: SetupStage::ReadRequest, .. })));
        Ok(())
    }
}
