//! The streaming runtime behind kubelet's Exec, Attach and PortForward URLs: each session is one of the
//! daemon's streams (Exec, Attach, PortForward), with the client's bytes copied in and the zone's out.

use bulkhead_api::control::v1 as pb;
use bulkhead_api::control::v1::workload_service_client::WorkloadServiceClient;
use bulkhead_streaming::{AttachRequest, ExecRequest, Output, RuntimeError, StreamIo, StreamingRuntime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Bytes read from a client per message to the daemon.
const CHUNK: usize = 32 << 10;
/// Requests queued for the daemon per session: a client faster than the zone waits here.
const QUEUE: usize = 16;

/// The daemon's streams as a [`StreamingRuntime`].
#[derive(Debug, Clone)]
pub struct DaemonStreams {
    workloads: WorkloadServiceClient<Channel>,
}

impl DaemonStreams {
    /// Streams through the daemon behind `channel`.
    pub fn new(channel: Channel) -> Self {
        DaemonStreams { workloads: WorkloadServiceClient::new(channel) }
    }
}

fn failed(what: &str, e: tonic::Status) -> RuntimeError {
    format!("{what}: {}", e.message()).into()
}

/// Copies `input` to the daemon as `data` messages, then `close` at its end.
fn pump_input<M: Send + 'static>(
    mut input: impl AsyncRead + Unpin + Send + 'static,
    tx: mpsc::Sender<M>,
    data: fn(Vec<u8>) -> M,
    close: M,
) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match input.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(data(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(close).await;
    });
}

/// Copies the client's terminal sizes to the daemon as `resize` messages.
fn forward_resizes<M: Send + 'static>(
    mut sizes: mpsc::Receiver<bulkhead_streaming::TerminalSize>,
    tx: mpsc::Sender<M>,
    resize: fn(pb::TerminalSize) -> M,
) {
    tokio::spawn(async move {
        while let Some(s) = sizes.recv().await {
            let size = pb::TerminalSize { rows: u32::from(s.height), cols: u32::from(s.width) };
            if tx.send(resize(size)).await.is_err() {
                return;
            }
        }
    });
}

async fn write(out: &mut Option<Output>, data: &[u8]) {
    if let Some(o) = out
        && o.write_all(data).await.is_err()
    {
        // The client closed this stream: the rest of its output has nowhere to go.
        *out = None;
    }
}

async fn finish(outs: [&mut Option<Output>; 2]) {
    for out in outs {
        if let Some(o) = out.as_mut() {
            let _ = o.shutdown().await;
        }
    }
}

impl StreamingRuntime for DaemonStreams {
    async fn exec(&self, req: ExecRequest, io: StreamIo) -> Result<i32, RuntimeError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let start = pb::ExecStart {
            workload_id: req.container_id.clone(),
            command: req.cmd,
            tty: req.tty,
            stdin: io.stdin.is_some(),
            ..Default::default()
        };
        tx.send(pb::ExecRequest { kind: Some(pb::exec_request::Kind::Start(start)) })
            .await
            .map_err(|_| "the exec request queue closed")?;
        let what = format!("exec in container {}", req.container_id);
        let mut replies =
            self.workloads.clone().exec(ReceiverStream::new(rx)).await.map_err(|e| failed(&what, e))?.into_inner();
        if let Some(stdin) = io.stdin {
            pump_input(
                stdin,
                tx.clone(),
                |d| pb::ExecRequest { kind: Some(pb::exec_request::Kind::Stdin(d)) },
                pb::ExecRequest { kind: Some(pb::exec_request::Kind::CloseStdin(true)) },
            );
        }
        if let Some(sizes) = io.resize {
            forward_resizes(sizes, tx.clone(), |size| pb::ExecRequest {
                kind: Some(pb::exec_request::Kind::Resize(size)),
            });
        }
        let (mut stdout, mut stderr) = (io.stdout, io.stderr);
        while let Some(msg) = replies.message().await.map_err(|e| failed(&what, e))? {
            match msg.kind {
                Some(pb::exec_response::Kind::Output(o)) if o.fd() == pb::OutputFd::Stderr && stderr.is_some() => {
                    write(&mut stderr, &o.data).await;
                }
                Some(pb::exec_response::Kind::Output(o)) => write(&mut stdout, &o.data).await,
                Some(pb::exec_response::Kind::Exited(exit)) => {
                    finish([&mut stdout, &mut stderr]).await;
                    return Ok(exit.code);
                }
                _ => {}
            }
        }
        Err(format!("{what}: the zone's stream ended before the command exited").into())
    }

    async fn attach(&self, req: AttachRequest, io: StreamIo) -> Result<(), RuntimeError> {
        let what = format!("attach to container {}", req.container_id);
        let (tx, rx) = mpsc::channel(QUEUE);
        let first = pb::AttachRequest { kind: Some(pb::attach_request::Kind::WorkloadId(req.container_id.clone())) };
        tx.send(first).await.map_err(|_| "the attach request queue closed")?;
        let mut replies =
            self.workloads.clone().attach(ReceiverStream::new(rx)).await.map_err(|e| failed(&what, e))?.into_inner();
        if let Some(stdin) = io.stdin {
            pump_input(
                stdin,
                tx.clone(),
                |d| pb::AttachRequest { kind: Some(pb::attach_request::Kind::Stdin(d)) },
                pb::AttachRequest { kind: Some(pb::attach_request::Kind::CloseStdin(true)) },
            );
        }
        if let Some(sizes) = io.resize {
            forward_resizes(sizes, tx.clone(), |size| pb::AttachRequest {
                kind: Some(pb::attach_request::Kind::Resize(size)),
            });
        }
        let (mut stdout, mut stderr) = (io.stdout, io.stderr);
        while let Some(msg) = replies.message().await.map_err(|e| failed(&what, e))? {
            match msg.kind {
                Some(pb::attach_response::Kind::Output(o)) if o.fd() == pb::OutputFd::Stderr && stderr.is_some() => {
                    write(&mut stderr, &o.data).await;
                }
                Some(pb::attach_response::Kind::Output(o)) => write(&mut stdout, &o.data).await,
                Some(pb::attach_response::Kind::Exited(_)) => break,
                None => {}
            }
        }
        finish([&mut stdout, &mut stderr]).await;
        Ok(())
    }

    async fn port_forward(&self, pod_sandbox_id: &str, port: u16, stream: DuplexStream) -> Result<(), RuntimeError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let start = pb::PortForwardStart { zone: pod_sandbox_id.to_owned(), port: u32::from(port) };
        tx.send(pb::PortForwardRequest { kind: Some(pb::port_forward_request::Kind::Start(start)) })
            .await
            .map_err(|_| "the port-forward request queue closed")?;
        let what = format!("port-forward to port {port} of pod sandbox {pod_sandbox_id}");
        let mut replies = self
            .workloads
            .clone()
            .port_forward(ReceiverStream::new(rx))
            .await
            .map_err(|e| failed(&what, e))?
            .into_inner();
        let (reader, mut writer) = tokio::io::split(stream);
        pump_input(
            reader,
            tx,
            |d| pb::PortForwardRequest { kind: Some(pb::port_forward_request::Kind::Data(d)) },
            pb::PortForwardRequest { kind: Some(pb::port_forward_request::Kind::CloseWrite(true)) },
        );
        while let Some(msg) = replies.message().await.map_err(|e| failed(&what, e))? {
            match msg.kind {
                Some(pb::port_forward_response::Kind::Data(d)) => {
                    if writer.write_all(&d).await.is_err() {
                        // The client is gone: dropping the daemon's stream resets the connection.
                        return Ok(());
                    }
                }
                Some(pb::port_forward_response::Kind::Closed(_)) => break,
                Some(pb::port_forward_response::Kind::Connected(_)) | None => {}
            }
        }
        let _ = writer.shutdown().await;
        Ok(())
    }
}
