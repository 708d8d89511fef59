//! What the streaming server asks of the runtime: the trait the CRI server implements, and its types.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;

/// An error of the runtime. Its `Display` text reaches the client (kubectl prints it), so it should say
/// what failed for which container, and nothing internal.
pub type RuntimeError = Box<dyn std::error::Error + Send + Sync>;

/// A command to run in a container (CRI `ExecRequest`, validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// The container.
    pub container_id: String,
    /// The command and its arguments.
    pub cmd: Vec<String>,
    /// Run it on a terminal (stdout and stderr are then one stream: stderr must be false).
    pub tty: bool,
    /// Stream the client's stdin.
    pub stdin: bool,
    /// Stream stdout.
    pub stdout: bool,
    /// Stream stderr.
    pub stderr: bool,
}

/// An attach to a running container (CRI `AttachRequest`, validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    /// The container.
    pub container_id: String,
    /// Attach on the container's terminal.
    pub tty: bool,
    /// Stream the client's stdin.
    pub stdin: bool,
    /// Stream stdout.
    pub stdout: bool,
    /// Stream stderr.
    pub stderr: bool,
}

/// A port-forward into a pod (CRI `PortForwardRequest`). The ports a client asks for come with each of its
/// connections (kubelet does the same); `ports` is kept for the runtime's information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    /// The pod sandbox.
    pub pod_sandbox_id: String,
    /// The ports named in the CRI request (may be empty).
    pub ports: Vec<u16>,
}

/// A terminal size, as client-go's `remotecommand.TerminalSize` sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The client's stdin. EOF when the client closes it.
#[derive(Debug)]
pub struct Input(pub(crate) DuplexStream);

/// An output to the client. Dropping it (or `shutdown`) is the client's EOF.
#[derive(Debug)]
pub struct Output(pub(crate) DuplexStream);

impl AsyncRead for Input {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Output {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The streams of one exec or attach, as the client opened them.
#[derive(Debug)]
pub struct StreamIo {
    /// The client's stdin, if requested.
    pub stdin: Option<Input>,
    /// Stdout, if requested (with `tty`, the terminal's output).
    pub stdout: Option<Output>,
    /// Stderr, if requested (never with `tty`).
    pub stderr: Option<Output>,
    /// Whether the process runs on a terminal.
    pub tty: bool,
    /// Terminal size changes, the first one as soon as the client knows its size (only with `tty`, and
    /// only on protocol versions that carry them).
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
}

/// The runtime behind the streaming server: bulkhead-cri implements it over the daemon's API.
///
/// Each method runs for the whole session and owns its streams: returning (or dropping an [`Output`])
/// is the client's EOF, so a method returns only after the process's output has been written.
/// The futures must be `Send`; implementations may simply write `async fn`.
pub trait StreamingRuntime: Send + Sync + 'static {
    /// Runs `req.cmd` in the container and returns its exit code (0 to 255; 128 + signal for a signal
    /// death). An error means the command could not be run at all.
    fn exec(&self, req: ExecRequest, io: StreamIo) -> impl Future<Output = Result<i32, RuntimeError>> + Send;

    /// Attaches `io` to the container's main process until it exits or the client leaves.
    fn attach(&self, req: AttachRequest, io: StreamIo) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Connects `stream` to `port` inside the pod: bytes read from it go to the port, bytes from the port
    /// are written to it. Return when either side is done; the error's text is shown to the client.
    fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
        stream: DuplexStream,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
}
