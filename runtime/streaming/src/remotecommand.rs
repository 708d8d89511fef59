//! Exec and attach: the `channel.k8s.io` family of subprotocols, over SPDY streams or WebSocket channels.
//!
//! Versions: v1 (`channel.k8s.io`) and v2 carry stdin, stdout, stderr and an error stream with the failure
//! text; v3 adds a `resize` stream of JSON terminal sizes; v4 writes a `metav1.Status` JSON on the error
//! stream (with the exit code as an `ExitCode` cause); v5 is v4 plus, over WebSocket, a close signal for
//! stdin (channel 255).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::error::SessionError;
use crate::runtime::{
    AttachRequest, ExecRequest, Input, Output, RuntimeError, StreamIo, StreamingRuntime, TerminalSize,
};
use crate::spdy::{Session, SpdyStream};

/// A remote command protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// `channel.k8s.io`.
    V1,
    /// `v2.channel.k8s.io`.
    V2,
    /// `v3.channel.k8s.io`.
    V3,
    /// `v4.channel.k8s.io`.
    V4,
    /// `v5.channel.k8s.io`.
    V5,
}

impl Protocol {
    /// Every version, by name, as offered over SPDY.
    pub const SPDY: [(&'static str, Protocol); 5] = [
        ("v5.channel.k8s.io", Protocol::V5),
        ("v4.channel.k8s.io", Protocol::V4),
        ("v3.channel.k8s.io", Protocol::V3),
        ("v2.channel.k8s.io", Protocol::V2),
        ("channel.k8s.io", Protocol::V1),
    ];
    /// The versions served over WebSocket (binary framing; the older base64 text variants are not).
    pub const WEBSOCKET: [(&'static str, Protocol); 2] =
        [("v5.channel.k8s.io", Protocol::V5), ("v4.channel.k8s.io", Protocol::V4)];

    fn resizes(self) -> bool {
        self >= Protocol::V3
    }
}

/// The exec or attach a connection serves.
#[derive(Debug, Clone)]
pub enum Command {
    /// An exec.
    Exec(ExecRequest),
    /// An attach.
    Attach(AttachRequest),
}

/// Which streams a command has.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Command {
    pub(crate) fn options(&self) -> Options {
        let (stdin, stdout, stderr, tty) = match self {
            Command::Exec(r) => (r.stdin, r.stdout, r.stderr, r.tty),
            Command::Attach(r) => (r.stdin, r.stdout, r.stderr, r.tty),
        };
        // On a terminal stderr is stdout: client-go opens no stderr stream then.
        Options { stdin, stdout, stderr: stderr && !tty, tty }
    }
}

/// How a command ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Exited(i32),
    Failed(RuntimeError),
}

/// Runs `cmd` on the runtime.
pub(crate) async fn run<R: StreamingRuntime>(runtime: &R, cmd: Command, io: StreamIo) -> Outcome {
    match cmd {
        Command::Exec(req) => match runtime.exec(req, io).await {
            Ok(code) => Outcome::Exited(code),
            Err(e) => Outcome::Failed(e),
        },
        Command::Attach(req) => match runtime.attach(req, io).await {
            Ok(()) => Outcome::Exited(0),
            Err(e) => Outcome::Failed(e),
        },
    }
}

/// The bytes of the error stream for `outcome`, or None when nothing is written (success before v4).
pub(crate) fn status_message(proto: Protocol, outcome: &Outcome) -> Option<Vec<u8>> {
    if proto < Protocol::V4 {
        return match outcome {
            Outcome::Exited(0) => None,
            Outcome::Exited(code) => Some(format!("command terminated with exit code {code}").into_bytes()),
            Outcome::Failed(e) => Some(e.to_string().into_bytes()),
        };
    }
    let status = match outcome {
        Outcome::Exited(0) => Status { status: "Success", ..Status::default() },
        Outcome::Exited(code) => Status {
            status: "Failure",
            message: Some(format!("command terminated with non-zero exit code: exit status {code}")),
            reason: Some("NonZeroExitCode"),
            details: Some(Details { causes: vec![Cause { reason: Some("ExitCode"), message: code.to_string() }] }),
            ..Status::default()
        },
        Outcome::Failed(e) => Status {
            status: "Failure",
            message: Some(e.to_string()),
            reason: Some("InternalError"),
            details: Some(Details { causes: vec![Cause { reason: None, message: e.to_string() }] }),
            code: Some(500),
            ..Status::default()
        },
    };
    // Serializing these plain structs cannot fail; an empty message would read as success, so say so.
    Some(serde_json::to_vec(&status).unwrap_or_else(|_| br#"{"status":"Failure","message":"status"}"#.to_vec()))
}

/// `metav1.Status`, the fields client-go's v4 decoder reads.
#[derive(Debug, Default, Serialize)]
struct Status {
    metadata: Empty,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

#[derive(Debug, Default, Serialize)]
struct Empty {}

#[derive(Debug, Serialize)]
struct Details {
    causes: Vec<Cause>,
}

/// `metav1.StatusCause`: its Go field `Type` is `reason` in JSON.
#[derive(Debug, Serialize)]
struct Cause {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    message: String,
}

/// Bytes of a stream's pipe between the protocol side and the runtime.
const PIPE: usize = 64 * 1024;
/// Largest partial resize message kept: one is about 30 bytes.
const MAX_RESIZE_PENDING: usize = 4096;

/// The protocol side's ends of a command's streams.
#[derive(Debug, Default)]
pub(crate) struct Ends {
    pub stdin: Option<DuplexStream>,
    pub stdout: Option<DuplexStream>,
    pub stderr: Option<DuplexStream>,
    pub resize: Option<mpsc::Sender<TerminalSize>>,
}

/// Makes the runtime's [`StreamIo`] and the protocol's ends of the same pipes.
pub(crate) fn wire(opts: Options, proto: Protocol) -> (StreamIo, Ends) {
    fn pipe(on: bool) -> (Option<DuplexStream>, Option<DuplexStream>) {
        if !on {
            return (None, None);
        }
        let (a, b) = tokio::io::duplex(PIPE);
        (Some(a), Some(b))
    }
    let (stdin_rt, stdin) = pipe(opts.stdin);
    let (stdout_rt, stdout) = pipe(opts.stdout);
    let (stderr_rt, stderr) = pipe(opts.stderr);
    let (resize, resize_rx) = if opts.tty && proto.resizes() {
        let (tx, rx) = mpsc::channel(16);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let io = StreamIo {
        stdin: stdin_rt.map(Input),
        stdout: stdout_rt.map(Output),
        stderr: stderr_rt.map(Output),
        tty: opts.tty,
        resize: resize_rx,
    };
    (io, Ends { stdin, stdout, stderr, resize })
}

/// Splits a stream of concatenated JSON terminal sizes (how client-go writes them) into sizes.
#[derive(Debug, Default)]
pub(crate) struct ResizeDecoder {
    buf: Vec<u8>,
}

impl ResizeDecoder {
    /// Adds `data` and returns the sizes it completes. An error ends the resize stream.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<TerminalSize>, serde_json::Error> {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TerminalSize>();
        let used = loop {
            match it.next() {
                Some(Ok(s)) => sizes.push(s),
                Some(Err(e)) if e.is_eof() => break it.byte_offset(),
                Some(Err(e)) => return Err(e),
                None => break it.byte_offset(),
            }
        };
        self.buf.drain(..used);
        if self.buf.len() > MAX_RESIZE_PENDING {
            return Err(serde::de::Error::custom("resize message too long"));
        }
        Ok(sizes)
    }
}

/// How long the client may take to open all of a command's streams (kubelet's default).
pub(crate) const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The SPDY streams of one command.
#[derive(Debug, Default)]
struct Streams {
    error: Option<SpdyStream>,
    stdin: Option<SpdyStream>,
    stdout: Option<SpdyStream>,
    stderr: Option<SpdyStream>,
    resize: Option<SpdyStream>,
}

impl Streams {
    fn slot(&mut self, ty: &str, opts: Options, proto: Protocol) -> Option<&mut Option<SpdyStream>> {
        match ty {
            "error" => Some(&mut self.error),
            "stdin" if opts.stdin => Some(&mut self.stdin),
            "stdout" if opts.stdout => Some(&mut self.stdout),
            "stderr" if opts.stderr => Some(&mut self.stderr),
            "resize" if opts.tty && proto.resizes() => Some(&mut self.resize),
            _ => None,
        }
    }

    fn complete(&self, opts: Options, proto: Protocol) -> bool {
        self.error.is_some()
            && self.stdin.is_some() == opts.stdin
            && self.stdout.is_some() == opts.stdout
            && self.stderr.is_some() == opts.stderr
            && self.resize.is_some() == (opts.tty && proto.resizes())
    }
}

async fn accept_streams(session: &mut Session, opts: Options, proto: Protocol) -> Result<Streams, SessionError> {
    let mut streams = Streams::default();
    while !streams.complete(opts, proto) {
        let mut s = session.accept().await.ok_or(SessionError::Closed)?;
        let ty = s.header("streamtype").unwrap_or_default().to_owned();
        match streams.slot(&ty, opts, proto) {
            Some(slot) if slot.is_none() => *slot = Some(s),
            _ => {
                s.writer.reset().await;
                return Err(SessionError::BadStreams(format!("unexpected or duplicate stream type {ty:?}")));
            }
        }
    }
    Ok(streams)
}

/// Serves one exec or attach on a SPDY session.
pub(crate) async fn serve_spdy<R: StreamingRuntime>(
    runtime: Arc<R>,
    mut session: Session,
    proto: Protocol,
    cmd: Command,
    creation_timeout: Duration,
) -> Result<(), SessionError> {
    let opts = cmd.options();
    let streams = tokio::time::timeout(creation_timeout, accept_streams(&mut session, opts, proto))
        .await
        .map_err(|_| SessionError::StreamTimeout)??;
    session.stop_accepting();
    let (io, ends) = wire(opts, proto);
    let mut inputs = JoinSet::new();
    let mut outputs = JoinSet::new();
    // This end's side of the client-written streams stays open until the command ends: client-go closes its
    // stdin stream as soon as it sees our FIN on it, even while its copy of stdin is still under way, and the
    // bytes not yet sent are then lost (kubelet never half-closes it either).
    let mut kept = Vec::new();
    if let (Some(s), Some(pipe)) = (streams.stdin, ends.stdin) {
        inputs.spawn(async move { s.reader.copy_to(pipe).await });
        kept.push(s.writer);
    }
    if let (Some(mut s), Some(tx)) = (streams.resize, ends.resize) {
        kept.push(s.writer);
        inputs.spawn(async move {
            let mut dec = ResizeDecoder::default();
            while let Some(b) = s.reader.recv().await {
                let Ok(sizes) = dec.push(&b) else { break };
                for size in sizes {
                    if tx.send(size).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        });
    }
    for (s, pipe) in [(streams.stdout, ends.stdout), (streams.stderr, ends.stderr)] {
        if let (Some(s), Some(pipe)) = (s, pipe) {
            outputs.spawn(s.writer.copy_from(pipe));
        }
    }
    let outcome = run(&*runtime, cmd, io).await;
    // All output reaches the client before the status: client-go reads the error stream last.
    while outputs.join_next().await.is_some() {}
    if let Some(mut err) = streams.error {
        if let Some(msg) = status_message(proto, &outcome) {
            let _ = err.writer.write(Bytes::from(msg)).await;
        }
        let _ = err.writer.finish().await;
    }
    inputs.abort_all();
    for mut w in kept {
        let _ = w.finish().await;
    }
    session.close().await;
    Ok(())
}

/// Serves one exec or attach on a WebSocket, channel-framed: the first byte of each binary message is
/// the channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; 255 is v5's close signal).
pub(crate) async fn serve_websocket<R, S>(runtime: Arc<R>, ws: S, proto: Protocol, cmd: Command)
where
    R: StreamingRuntime,
    S: crate::websocket::Socket,
{
    use futures_util::StreamExt;

    use crate::websocket::{Writer, channel_message, next_channel_message};

    let (sink, mut source) = ws.split();
    let opts = cmd.options();
    let (io, mut ends) = wire(opts, proto);
    let writer = Writer::spawn(sink);
    let tx = writer.sender();
    let mut outputs = JoinSet::new();
    for (ch, pipe) in [(1u8, ends.stdout.take()), (2u8, ends.stderr.take())] {
        if let Some(mut pipe) = pipe {
            let tx = tx.clone();
            outputs.spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    let n = pipe.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    if tx.send(channel_message(ch, &buf[..n])).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
    let mut stdin = ends.stdin.take();
    let resize = ends.resize.take();
    let reader = tokio::spawn(async move {
        let mut dec = ResizeDecoder::default();
        while let Some((ch, payload)) = next_channel_message(&mut source).await {
            match ch {
                0 => {
                    if let Some(pipe) = stdin.as_mut()
                        && pipe.write_all(&payload).await.is_err()
                    {
                        stdin = None;
                    }
                }
                4 => {
                    if let Some(tx) = &resize {
                        for size in dec.push(&payload).unwrap_or_default() {
                            let _ = tx.send(size).await;
                        }
                    }
                }
                255 if proto >= Protocol::V5 && payload.first() == Some(&0) => {
                    // Dropping the pipe is the runtime's EOF on stdin.
                    stdin = None;
                }
                _ => {}
            }
        }
    });
    let outcome = run(&*runtime, cmd, io).await;
    while outputs.join_next().await.is_some() {}
    if let Some(msg) = status_message(proto, &outcome) {
        let _ = tx.send(channel_message(3, &msg)).await;
    }
    drop(tx);
    writer.close().await;
    // Give the client a moment to answer the close, then stop reading.
    let mut reader = reader;
    if tokio::time::timeout(Duration::from_secs(5), &mut reader).await.is_err() {
        reader.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Writes "ready" as soon as it runs, then echoes stdin to stdout.
    struct EchoAfterReady;

    impl StreamingRuntime for EchoAfterReady {
        async fn exec(&self, _req: ExecRequest, _io: StreamIo) -> Result<i32, RuntimeError> {
            Err("exec is not used here".into())
        }

        async fn attach(&self, _req: AttachRequest, mut io: StreamIo) -> Result<(), RuntimeError> {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (Some(mut stdin), Some(mut stdout)) = (io.stdin.take(), io.stdout.take()) else {
                return Err("stdin and stdout are needed".into());
            };
            stdout.write_all(b"ready").await?;
            let mut input = Vec::new();
            stdin.read_to_end(&mut input).await?;
            stdout.write_all(&input).await?;
            Ok(())
        }

        async fn port_forward(&self, _pod: &str, _port: u16, _stream: DuplexStream) -> Result<(), RuntimeError> {
            Err("port-forward is not used here".into())
        }
    }

    // client-go closes its stdin stream as soon as the server half-closes it, even with stdin bytes still
    // to send. So no FIN may reach the client on stdin while the command runs: the runtime's "ready" on
    // stdout proves it runs, and the session's frames arrive in order.
    #[tokio::test]
    async fn stdin_stays_open_while_the_command_runs() -> TestResult {
        use futures_util::{SinkExt, StreamExt};
        use tokio_util::codec::{FramedRead, FramedWrite};

        use crate::spdy::frame::{FLAG_FIN, Frame, FrameDecoder, FrameEncoder};

        let (server_io, client_io) = tokio::io::duplex(1 << 20);
        let (rd, wr) = tokio::io::split(client_io);
        let (mut rd, mut wr) =
            (FramedRead::new(rd, FrameDecoder::default()), FramedWrite::new(wr, FrameEncoder::default()));
        let cmd = Command::Attach(AttachRequest {
            container_id: "c".into(),
            tty: false,
            stdin: true,
            stdout: true,
            stderr: false,
        });
        let server = tokio::spawn(serve_spdy(
            Arc::new(EchoAfterReady),
            Session::start(server_io),
            Protocol::V4,
            cmd,
            Duration::from_secs(5),
        ));
        let (error, stdin, stdout) = (1, 3, 5);
        for (id, ty) in [(error, "error"), (stdin, "stdin"), (stdout, "stdout")] {
            let headers = vec![("streamtype".to_owned(), ty.to_owned())];
            wr.send(Frame::SynStream { stream_id: id, associated_to: 0, priority: 0, flags: 0, headers }).await?;
        }
        let mut out = Vec::new();
        while !out.starts_with(b"ready") {
            match rd.next().await.ok_or("the session ended before the command ran")?? {
                Frame::Data { stream_id, flags, .. } if stream_id == stdin && flags & FLAG_FIN != 0 => {
                    return Err("the server half-closed stdin before the command ran".into());
                }
                Frame::Data { stream_id, data, .. } if stream_id == stdout => out.extend_from_slice(&data),
                _ => {}
            }
        }
        wr.send(Frame::Data { stream_id: stdin, flags: FLAG_FIN, data: Bytes::from_static(b"in") }).await?;
        while let Some(frame) = rd.next().await {
            match frame? {
                Frame::Data { stream_id, data, .. } if stream_id == stdout => out.extend_from_slice(&data),
                Frame::GoAway { .. } => break,
                _ => {}
            }
        }
        drop((rd, wr));
        server.await??;
        assert_eq!(String::from_utf8_lossy(&out), "readyin");
        Ok(())
    }

    #[test]
    fn v4_statuses_parse_as_client_go_expects() -> TestResult {
        let ok = status_message(Protocol::V4, &Outcome::Exited(0)).ok_or("no status")?;
        let v: serde_json::Value = serde_json::from_slice(&ok)?;
        assert_eq!(v["status"], "Success");
        let three = status_message(Protocol::V5, &Outcome::Exited(3)).ok_or("no status")?;
        let v: serde_json::Value = serde_json::from_slice(&three)?;
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let failed = status_message(Protocol::V4, &Outcome::Failed("no such container".into())).ok_or("no status")?;
        let v: serde_json::Value = serde_json::from_slice(&failed)?;
        assert_eq!(v["message"], "no such container");
        assert_ne!(v["reason"], "NonZeroExitCode");
        Ok(())
    }

    #[test]
    fn older_versions_write_text_on_failure_only() {
        assert_eq!(status_message(Protocol::V2, &Outcome::Exited(0)), None);
        assert_eq!(
            status_message(Protocol::V3, &Outcome::Exited(2)).as_deref(),
            Some(&b"command terminated with exit code 2"[..])
        );
    }

    #[test]
    fn resize_messages_split_anywhere() -> TestResult {
        let wire = br#"{"Width":80,"Height":24}{"Width":100,"Height":30}"#;
        for cut in 0..wire.len() {
            let mut d = ResizeDecoder::default();
            let mut got = d.push(&wire[..cut])?;
            got.extend(d.push(&wire[cut..])?);
            assert_eq!(
                got,
                vec![TerminalSize { width: 80, height: 24 }, TerminalSize { width: 100, height: 30 }],
                "cut at {cut}"
            );
        }
        Ok(())
    }

    #[test]
    fn resize_garbage_and_endless_messages_are_errors() {
        assert!(ResizeDecoder::default().push(br#"{"Width":"wide"}"#).is_err());
        let mut d = ResizeDecoder::default();
        let long = format!("{{\"Width\":1{}", " ".repeat(MAX_RESIZE_PENDING));
        assert!(d.push(long.as_bytes()).is_err());
    }

    #[test]
    fn tty_has_no_stderr() {
        let cmd = Command::Exec(ExecRequest {
            container_id: "c".into(),
            cmd: vec!["sh".into()],
            tty: true,
            stdin: true,
            stdout: true,
            stderr: true,
        });
        let (io, ends) = wire(cmd.options(), Protocol::V4);
        assert!(io.stderr.is_none() && ends.stderr.is_none());
        assert!(io.resize.is_some());
        let (io, _) = wire(cmd.options(), Protocol::V2);
        assert!(io.resize.is_none(), "v2 carries no resize stream");
    }
}
