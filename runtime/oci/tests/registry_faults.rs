//! A pull against registries that misbehave: a proxy in front of the real docker-registry that breaks
//! chosen blob requests (connection cut mid-body, 5xx, 404, 401), and a fake registry that serves an
//! oversized manifest. Transient failures must be retried and the pull must succeed; permanent ones must
//! fail at once; a huge manifest must be refused without being read.
//!
//! Needs /usr/bin/docker-registry (skips without it unless CI is set, like tests/registry.rs).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_oci::layout::{LayoutError, MAX_JSON_BYTES};
use bulkhead_oci::pull::{PullError, PullProgress, Registries, RegistryConfig, RegistryFailure, RetryPolicy};
use bulkhead_oci::testing::registry::{Registry, RegistryAuth, push_all, registry_available};
use bulkhead_oci::{ImageError, ImageStore, ImageStoreConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// What the proxy does to one blob request.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Forwards it, but closes the connection after the response's head and one byte of its body.
    Cut,
    /// Answers this status itself.
    Status(u16),
}

/// A proxy in front of a registry that applies scripted faults to blob requests, in order, and counts
/// them. Each connection carries one request (it asks the registry to close after answering), so every
/// request, retries included, passes through here.
struct FaultProxy {
    addr: String,
    blob_requests: Arc<AtomicUsize>,
}

impl FaultProxy {
    fn start(upstream: &str, faults: &[Fault]) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let script = Arc::new(Mutex::new(faults.iter().copied().collect::<VecDeque<_>>()));
        let blob_requests = Arc::new(AtomicUsize::new(0));
        let (upstream, count) = (upstream.to_owned(), blob_requests.clone());
        // The thread ends with the test process; it holds no resource a test checks.
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, script, count) = (upstream.clone(), script.clone(), count.clone());
                std::thread::spawn(move || {
                    let _ = serve(client, &upstream, &script, &count);
                });
            }
        });
        Ok(FaultProxy { addr, blob_requests })
    }

    fn blob_requests(&self) -> usize {
        self.blob_requests.load(Ordering::SeqCst)
    }
}

/// Reads up to the end of an HTTP head ("\r\n\r\n"); returns the head and whatever came after it.
fn read_head(s: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 || buf.len() > 64 << 10 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn serve(
    mut client: TcpStream,
    upstream: &str,
    script: &Mutex<VecDeque<Fault>>,
    count: &AtomicUsize,
) -> std::io::Result<()> {
    let (head, _) = read_head(&mut client)?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let is_blob = text.lines().next().is_some_and(|l| l.contains("/blobs/sha256:"));
    let fault = if is_blob {
        count.fetch_add(1, Ordering::SeqCst);
        script.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    } else {
        None
    };
    if let Some(Fault::Status(code)) = fault {
        let answer = format!("HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return client.write_all(answer.as_bytes());
    }
    // One request per connection: the registry is asked to close after its answer.
    let mut forwarded: String = text
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    forwarded.push_str("Connection: close\r\n\r\n");
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(forwarded.as_bytes())?;
    if let Some(Fault::Cut) = fault {
        let (head, body) = read_head(&mut up)?;
        client.write_all(&head)?;
        client.write_all(&body[..body.len().min(1)])?;
        if body.is_empty() {
            let mut one = [0u8; 1];
            let n = up.read(&mut one)?;
            client.write_all(&one[..n])?;
        }
        client.flush()?;
        return client.shutdown(Shutdown::Both);
    }
    std::io::copy(&mut up, &mut client)?;
    Ok(())
}

fn store_config(dir: &Path, host: &str, retry: RetryPolicy) -> ImageStoreConfig {
    let registries =
        Registries::new([(host.to_owned(), RegistryConfig { insecure: true, ..RegistryConfig::default() })].into());
    ImageStoreConfig { registries, retry, ..ImageStoreConfig::new(dir) }
}

/// Quick retries, so the tests take milliseconds per retry, not seconds.
const QUICK: RetryPolicy =
    RetryPolicy { attempts: 4, first_delay: Duration::from_millis(20), max_delay: Duration::from_millis(100) };

fn no_progress(_: PullProgress) {}

fn privileged() -> bool {
    bulkhead_oci::testing::root_or_skip("chown while unpacking")
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_blob_failures_are_retried_and_the_pull_succeeds() -> TestResult {
    if !registry_available() || !privileged() {
        return Ok(());
    }
    let reg = Registry::start(None)?;
    let pushed = push_all(&reg.addr, RegistryAuth::Anonymous, Path::new("/bin/busybox")).await?;
    // Three blobs (config, two layers): the first request is cut mid-body, the next answered 503, then one
    // more cut; each is retried.
    let proxy = FaultProxy::start(&reg.addr, &[Fault::Cut, Fault::Status(503), Fault::Cut])?;
    let tmp = tempfile::tempdir()?;
    let store = ImageStore::open(store_config(tmp.path(), &proxy.addr, QUICK)).await?;
    let rec = store.pull(&format!("{}/test/busybox:gzip", proxy.addr), None, &no_progress).await?;
    assert_eq!(rec.id, pushed.gzip);
    assert_eq!(proxy.blob_requests(), 3 + 3, "three blobs, three retries");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn permanent_blob_failures_are_not_retried() -> TestResult {
    if !registry_available() {
        return Ok(());
    }
    let reg = Registry::start(None)?;
    push_all(&reg.addr, RegistryAuth::Anonymous, Path::new("/bin/busybox")).await?;
    for (status, kind) in [(404, RegistryFailure::NotFound), (401, RegistryFailure::Unauthorized)] {
        let proxy = FaultProxy::start(&reg.addr, &[Fault::Status(status)])?;
        let tmp = tempfile::tempdir()?;
        let store = ImageStore::open(store_config(tmp.path(), &proxy.addr, QUICK)).await?;
        let r = store.pull(&format!("{}/test/busybox:gzip", proxy.addr), None, &no_progress).await;
        match r {
            Err(ImageError::Pull { source, .. }) => assert_eq!(source.registry_failure(), Some(kind), "{source}"),
            other => return Err(format!("{status}: expected a failed pull, got {other:?}").into()),
        }
        assert_eq!(proxy.blob_requests(), 1, "{status} is not retried");
        assert!(store.list().is_empty());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_stays_down_is_given_up_after_the_configured_attempts() -> TestResult {
    if !registry_available() {
        return Ok(());
    }
    let reg = Registry::start(None)?;
    push_all(&reg.addr, RegistryAuth::Anonymous, Path::new("/bin/busybox")).await?;
    let proxy = FaultProxy::start(&reg.addr, &[Fault::Status(503); 8])?;
    let tmp = tempfile::tempdir()?;
    let retry = RetryPolicy { attempts: 3, ..QUICK };
    let store = ImageStore::open(store_config(tmp.path(), &proxy.addr, retry)).await?;
    let r = store.pull(&format!("{}/test/busybox:gzip", proxy.addr), None, &no_progress).await;
    match r {
        Err(ImageError::Pull { source, .. }) => {
            assert_eq!(source.registry_failure(), Some(RegistryFailure::Unavailable), "{source}")
        }
        other => return Err(format!("expected a failed pull, got {other:?}").into()),
    }
    assert_eq!(proxy.blob_requests(), 3);
    Ok(())
}

/// A fake registry whose every manifest is `size` bytes of spaces, announced with a Content-Length or
/// not; counts the bytes it managed to send before the client hung up.
fn huge_manifest_registry(size: u64, announce: bool) -> std::io::Result<(String, Arc<AtomicU64>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let counter = counter.clone();
            std::thread::spawn(move || {
                let Ok((head, _)) = read_head(&mut s) else { return };
                let head = String::from_utf8_lossy(&head).into_owned();
                if !head.contains("/manifests/") {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
                    return;
                }
                let length = if announce { format!("Content-Length: {size}\r\n") } else { String::new() };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n{length}\
                     Connection: close\r\n\r\n"
                );
                if s.write_all(answer.as_bytes()).is_err() {
                    return;
                }
                let chunk = [b' '; 64 << 10];
                let mut left = size;
                while left > 0 {
                    let n = left.min(chunk.len() as u64);
                    if s.write_all(&chunk[..n as usize]).is_err() {
                        return;
                    }
                    counter.fetch_add(n, Ordering::SeqCst);
                    left -= n;
                }
            });
        }
    });
    Ok((addr, sent))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_manifest_is_refused_without_being_read() -> TestResult {
    let size = 1 << 30;
    for announce in [true, false] {
        let (addr, sent) = huge_manifest_registry(size, announce)?;
        let tmp = tempfile::tempdir()?;
        let store = ImageStore::open(store_config(tmp.path(), &addr, QUICK)).await?;
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            store.pull(&format!("{addr}/test/huge:v1"), None, &no_progress),
        )
        .await?;
        match r {
            Err(ImageError::Pull { source, .. }) => match *source {
                PullError::Content { source: LayoutError::TooLarge { limit, .. }, .. } => {
                    assert_eq!(limit, MAX_JSON_BYTES)
                }
                other => return Err(format!("expected TooLarge, got {other:?}").into()),
            },
            other => return Err(format!("expected a failed pull, got {other:?}").into()),
        }
        // What the server got out before the client hung up: at most the bound plus what the sockets'
        // buffers held, far from the gigabyte offered.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let got_out = sent.load(Ordering::SeqCst);
        assert!(got_out < MAX_JSON_BYTES + (32 << 20), "announce={announce}: {got_out} bytes were taken");
    }
    Ok(())
}
