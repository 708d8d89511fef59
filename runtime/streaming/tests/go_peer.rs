//! Conformance with the real peer: client-go's remotecommand (SPDY and WebSocket executors) and
//! portforward (SPDY dialer, and SPDY tunnelled over WebSocket) drive this crate's server, through the Go
//! program in tests/peer built by ci/go-peer from Debian's golang-k8s-client-go-dev.
//!
//! Without the Go toolchain the tests skip with a message, except when CI is set: there they fail
//! (ci/deps installs Go, ci/go-peer builds the peer).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_streaming::{
    AttachRequest, Config, ExecRequest, Handle, PortForwardRequest, RuntimeError, Server, StreamIo, StreamingRuntime,
    TerminalSize,
};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const POD: &str = "pod-1";

/// Path of the built peer, or None (after saying why) when tests should skip.
fn peer() -> Option<PathBuf> {
    static PEER: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let found = PEER.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ci/go-peer");
        let out = std::process::Command::new(&script).arg("path").output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    });
    match found {
        Ok(p) => Some(p.clone()),
        Err(e) if std::env::var_os("CI").is_some() => panic!("the Go peer is needed in CI: {e}"),
        Err(e) => {
            eprintln!("skipping: no Go peer ({e})");
            None
        }
    }
}

/// The fake runtime: `exec` echoes stdin to stdout with a prefix, writes to stderr, reports the terminal
/// sizes it received, writes `big N` bytes on request, and exits with the code `cmd[1]`.
#[derive(Default)]
struct Fake {
    resizes: Mutex<Vec<TerminalSize>>,
}

impl StreamingRuntime for Fake {
    async fn exec(&self, req: ExecRequest, mut io: StreamIo) -> Result<i32, RuntimeError> {
        let mut input = Vec::new();
        if let Some(mut stdin) = io.stdin.take() {
            stdin.read_to_end(&mut input).await?;
        }
        let mut sizes = Vec::new();
        if let Some(rx) = io.resize.as_mut() {
            // The peer sends two sizes, then stops monitoring.
            while sizes.len() < 2 {
                match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                    Ok(Some(s)) => sizes.push(s),
                    _ => break,
                }
            }
            self.resizes.lock().unwrap_or_else(|e| e.into_inner()).extend(&sizes);
        }
        let mut stdout = io.stdout.take().ok_or("no stdout")?;
        match req.cmd.first().map(String::as_str) {
            Some("big") => {
                let n: usize = req.cmd.get(1).ok_or("big N")?.parse()?;
                let chunk = vec![b'x'; 8192];
                let mut left = n;
                while left > 0 {
                    let k = left.min(chunk.len());
                    stdout.write_all(&chunk[..k]).await?;
                    left -= k;
                }
            }
            Some("fail") => return Err("container c1 is not running".into()),
            _ => {
                stdout.write_all(b"out:").await?;
                stdout.write_all(&input).await?;
                let s: Vec<String> = sizes.iter().map(|s| format!("{}x{}", s.width, s.height)).collect();
                if !s.is_empty() {
                    stdout.write_all(format!(" sizes:{}", s.join(",")).as_bytes()).await?;
                }
            }
        }
        if let Some(mut stderr) = io.stderr.take() {
            stderr.write_all(b"err:oops").await?;
        }
        Ok(req.cmd.get(1).and_then(|c| c.parse().ok()).filter(|_| req.cmd[0] != "big").unwrap_or(0))
    }

    async fn attach(&self, _req: AttachRequest, mut io: StreamIo) -> Result<(), RuntimeError> {
        let mut input = Vec::new();
        if let Some(mut stdin) = io.stdin.take() {
            stdin.read_to_end(&mut input).await?;
        }
        if let Some(mut stdout) = io.stdout.take() {
            stdout.write_all(b"attached:").await?;
            stdout.write_all(&input).await?;
        }
        Ok(())
    }

    async fn port_forward(&self, pod: &str, port: u16, mut stream: DuplexStream) -> Result<(), RuntimeError> {
        if pod != POD {
            return Err(format!("no pod {pod}").into());
        }
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tokio::io::copy_bidirectional(&mut stream, &mut tcp).await?;
        Ok(())
    }
}

struct Running {
    urls: Handle,
    fake: Arc<Fake>,
    addr: std::net::SocketAddr,
    _stop: tokio_util::sync::DropGuard,
}

async fn start() -> Result<Running, Box<dyn std::error::Error + Send + Sync>> {
    let fake = Arc::new(Fake::default());
    let server = Server::bind(Config::default(), fake.clone()).await?;
    let addr = server.local_addr()?;
    let urls = server.handle();
    let stop = CancellationToken::new();
    tokio::spawn(server.serve(stop.clone()));
    Ok(Running { urls, fake, addr, _stop: stop.drop_guard() })
}

/// Runs the peer with `args` and parses its JSON report.
async fn run_peer<T: for<'de> Deserialize<'de>>(
    peer: &Path,
    args: &[&str],
) -> Result<T, Box<dyn std::error::Error + Send + Sync>> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(peer).args(args).kill_on_drop(true).output(),
    )
    .await??;
    if !out.status.success() {
        return Err(format!("peer {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[derive(Debug, Deserialize)]
struct ExecSeen {
    stdout: String,
    stderr: String,
    exit_code: i32,
    error: String,
}

fn exec(cmd: &[&str], tty: bool, stdin: bool) -> ExecRequest {
    ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

async fn exec_case(transport: &str) -> TestResult {
    let Some(peer) = peer() else { return Ok(()) };
    let rt = start().await?;

    // Exit code 3, stdin echoed, stderr separate.
    let url = rt.urls.exec_url(exec(&["code", "3"], false, true))?;
    let seen: ExecSeen = run_peer(&peer, &["exec", transport, url.as_str(), "0", "hello"]).await?;
    assert_eq!(seen.stdout, "out:hello", "{seen:?}");
    assert_eq!(seen.stderr, "err:oops", "{seen:?}");
    assert_eq!(seen.exit_code, 3, "{seen:?}");
    assert!(seen.error.contains("exit code 3"), "{seen:?}");

    // Success is no error at all.
    let url = rt.urls.exec_url(exec(&["code", "0"], false, true))?;
    let seen: ExecSeen = run_peer(&peer, &["exec", transport, url.as_str(), "0", "x"]).await?;
    assert_eq!((seen.exit_code, seen.error.as_str(), seen.stdout.as_str()), (0, "", "out:x"), "{seen:?}");

    // A terminal: no stderr, and both resizes arrive in order.
    let url = rt.urls.exec_url(exec(&["code", "0"], true, true))?;
    let seen: ExecSeen = run_peer(&peer, &["exec", transport, url.as_str(), "1", "tty"]).await?;
    assert_eq!(seen.stdout, "out:tty sizes:80x24,100x30", "{seen:?}");
    assert_eq!(seen.exit_code, 0, "{seen:?}");
    assert_eq!(
        *rt.fake.resizes.lock().unwrap_or_else(|e| e.into_inner()),
        vec![TerminalSize { width: 80, height: 24 }, TerminalSize { width: 100, height: 30 }]
    );

    // Far more output than SPDY's initial 64 KiB window: the peer keeps no windows, so none may stall it.
    let url = rt.urls.exec_url(exec(&["big", "3000000"], false, false))?;
    let seen: ExecSeen = run_peer(&peer, &["exec", transport, url.as_str(), "0", "-"]).await?;
    assert_eq!(seen.stdout.len(), 3_000_000, "{}", seen.error);
    assert!(seen.stdout.bytes().all(|b| b == b'x'));

    // A runtime failure reaches the client as the message, without an exit code.
    let url = rt.urls.exec_url(exec(&["fail"], false, false))?;
    let seen: ExecSeen = run_peer(&peer, &["exec", transport, url.as_str(), "0", "-"]).await?;
    assert!(seen.error.contains("container c1 is not running"), "{seen:?}");
    assert_eq!(seen.exit_code, -1, "{seen:?}");

    // A URL works once.
    let seen: ExecSeen = run_peer(&peer, &["exec", transport, url.as_str(), "0", "-"]).await?;
    assert!(seen.error.contains("unknown or expired streaming token"), "{seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_spdy_as_client_go_sees_it() -> TestResult {
    exec_case("spdy").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_websocket_as_client_go_sees_it() -> TestResult {
    exec_case("ws").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_over_spdy_and_websocket() -> TestResult {
    let Some(peer) = peer() else { return Ok(()) };
    let rt = start().await?;
    for transport in ["spdy", "ws"] {
        let req = AttachRequest { container_id: "c1".into(), tty: false, stdin: true, stdout: true, stderr: true };
        let url = rt.urls.attach_url(req)?;
        let seen: ExecSeen = run_peer(&peer, &["exec", transport, url.as_str(), "0", "in"]).await?;
        assert_eq!((seen.stdout.as_str(), seen.exit_code, seen.error.as_str()), ("attached:in", 0, ""), "{seen:?}");
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct ForwardSeen {
    echoes: Vec<String>,
    errors: String,
}

/// A TCP server that answers each connection with "echo:", then echoes what it reads until EOF.
async fn echo_server() -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = c.into_split();
                if wr.write_all(b"echo:").await.is_ok() {
                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                }
            });
        }
    });
    Ok(port)
}

async fn portforward_case(transport: &str) -> TestResult {
    let Some(peer) = peer() else { return Ok(()) };
    let rt = start().await?;
    let port = echo_server().await?;
    let url = rt.urls.portforward_url(PortForwardRequest { pod_sandbox_id: POD.into(), ports: vec![port] })?;
    let port_arg = port.to_string();
    let seen: ForwardSeen = run_peer(&peer, &["portforward", transport, url.as_str(), &port_arg, "ping", "3"]).await?;
    assert_eq!(seen.echoes, vec!["echo:ping #0", "echo:ping #1", "echo:ping #2"], "{seen:?}");
    assert_eq!(seen.errors, "", "{seen:?}");

    // A port nothing listens on: the runtime's error reaches the client on the error stream.
    let closed = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let url = rt.urls.portforward_url(PortForwardRequest { pod_sandbox_id: POD.into(), ports: vec![] })?;
    let closed_arg = closed.to_string();
    let seen = run_peer::<ForwardSeen>(&peer, &["portforward", transport, url.as_str(), &closed_arg, "x", "1"]).await;
    // client-go prints the error and drops the connection: the echo is empty, or the peer reports it.
    match seen {
        Ok(seen) => assert!(seen.echoes.iter().all(String::is_empty), "{seen:?}"),
        Err(e) => assert!(e.to_string().contains("error forwarding port"), "{e}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portforward_over_spdy_as_client_go_sees_it() -> TestResult {
    portforward_case("spdy").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portforward_tunnelled_over_websocket_as_client_go_sees_it() -> TestResult {
    portforward_case("ws").await
}

/// Unknown tokens are 404, before any upgrade (needs no Go).
#[tokio::test]
async fn unknown_tokens_are_not_found() -> TestResult {
    let rt = start().await?;
    let mut c = TcpStream::connect(rt.addr).await?;
    c.write_all(b"POST /exec/0123456789abcdef HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 256];
    let n = c.read(&mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    Ok(())
}

#[derive(Debug, Deserialize)]
struct ChannelsSeen {
    subprotocol: String,
    opened: Vec<String>,
    data: String,
    errors: String,
}

/// kubelet's own WebSocket port-forward: channels 0 (data) and 1 (error) opened with the port, which
/// comes from the URL's query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portforward_over_websocket_channels_as_kubelet_frames_it() -> TestResult {
    let Some(peer) = peer() else { return Ok(()) };
    let rt = start().await?;
    let port = echo_server().await?;
    let url = rt.urls.portforward_url(PortForwardRequest { pod_sandbox_id: POD.into(), ports: vec![] })?;
    let port_arg = port.to_string();
    let seen: ChannelsSeen =
        run_peer(&peer, &["portforward", "channels", url.as_str(), &port_arg, "over channels", "1"]).await?;
    assert_eq!(seen.subprotocol, "v4.channel.k8s.io", "{seen:?}");
    assert_eq!(seen.opened, vec![format!("0:{port}"), format!("1:{port}")], "{seen:?}");
    assert_eq!(seen.data, "echo:over channels", "{seen:?}");
    assert_eq!(seen.errors, "", "{seen:?}");
    Ok(())
}
