//! One zone's host channel, from the daemon's side: the handshake, then frames both ways.
//!
//! Everything the zone sends is hostile. The codec bounds and validates every frame, and the first bad
//! frame ends the link (there is no resynchronising on garbage): the link reports a protocol error and the
//! manager fails the zone. Each link runs in its own two tasks (reader and writer), so a zone that stops
//! reading or floods the channel stalls only itself. Answers are routed by stream id to whoever subscribed to
//! that workload or exec; the reader waits for a slow subscriber (bounded queues), which pushes back on the
//! zone through the channel instead of growing the daemon's memory.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_wire::{HostCodec, HostToZone, InitStage, StreamId, ZoneToHost};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::hypervisor::ChannelStream;

/// Requests queued for one zone before senders wait.
const OUTGOING_QUEUE: usize = 256;
/// Messages queued for one subscriber before the link waits for it.
pub const SUBSCRIBER_QUEUE: usize = 256;

/// What happened on a link, for the zone manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The zone's init said hello and was welcomed.
    Connected(InitInfo),
    /// The zone's init could not come up.
    InitFailed {
        /// The stage that failed.
        stage: InitStage,
        /// Its reason.
        reason: String,
    },
    /// The zone broke the protocol; the link is closed.
    ProtocolError(String),
    /// The zone's init did not say hello in time.
    HelloTimeout(Duration),
    /// The channel closed (the zone powered off, or its init went away).
    Closed,
}

/// What the zone's init reported when it connected.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InitInfo {
    /// bulkhead-zone's version.
    pub version: String,
    /// The zone kernel's release.
    pub kernel_release: String,
    /// Milliseconds from kernel start to the hello.
    pub boot_time_ms: u64,
}

/// Runs between the zone's hello and the welcome: the zone sends nothing else until welcomed, so routes
/// subscribed here miss none of its messages (a zone reconnecting to a restarted daemon sends its workloads'
/// output right after the welcome).
pub type BeforeWelcome = Arc<dyn Fn(ZoneLink) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// How to greet the zone.
#[derive(Clone)]
pub struct LinkParams {
    /// The zone's id, sent in the welcome.
    pub zone_id: String,
    /// The zone's hostname, sent in the welcome.
    pub hostname: String,
    /// How long the zone's init has to say hello.
    pub hello_timeout: Duration,
    /// What to do before welcoming the zone.
    pub before_welcome: Option<BeforeWelcome>,
}

impl std::fmt::Debug for LinkParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkParams")
            .field("zone_id", &self.zone_id)
            .field("hostname", &self.hostname)
            .field("hello_timeout", &self.hello_timeout)
            .field("before_welcome", &self.before_welcome.is_some())
            .finish()
    }
}

type Routes = Arc<Mutex<HashMap<StreamId, mpsc::Sender<ZoneToHost>>>>;

/// A handle on a running link. Dropping every handle does not stop it; [`ZoneLink::close`] does.
#[derive(Debug, Clone)]
pub struct ZoneLink {
    outgoing: mpsc::Sender<HostToZone>,
    routes: Routes,
    cancel: CancellationToken,
}

/// The link is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the zone's host channel is closed")]
pub struct LinkClosed;

impl ZoneLink {
    /// Starts serving `io`: waits for the zone's hello, welcomes it, then passes frames. Events go to `events`.
    pub fn spawn(io: ChannelStream, params: LinkParams, events: mpsc::Sender<LinkEvent>) -> ZoneLink {
        let (outgoing, outgoing_rx) = mpsc::channel(OUTGOING_QUEUE);
        let link = ZoneLink { outgoing, routes: Routes::default(), cancel: CancellationToken::new() };
        tokio::spawn(run(io, params, events, outgoing_rx, link.clone()));
        link
    }

    /// Queues a request for the zone.
    pub async fn send(&self, msg: HostToZone) -> Result<(), LinkClosed> {
        self.outgoing.send(msg).await.map_err(|_| LinkClosed)
    }

    /// Every later message about `id` (answers, output, exit) goes to the returned receiver, until it is
    /// dropped or [`unsubscribe`](ZoneLink::unsubscribe) is called. A second subscription replaces the first.
    pub fn subscribe(&self, id: StreamId) -> mpsc::Receiver<ZoneToHost> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        if let Ok(mut routes) = self.routes.lock() {
            routes.insert(id, tx);
        }
        rx
    }

    /// Stops routing messages about `id`.
    pub fn unsubscribe(&self, id: StreamId) {
        if let Ok(mut routes) = self.routes.lock() {
            routes.remove(&id);
        }
    }

    /// Whether the link still runs.
    pub fn is_open(&self) -> bool {
        !self.cancel.is_cancelled() && !self.outgoing.is_closed()
    }

    /// Stops the link's tasks (the zone is going away).
    pub fn close(&self) {
        self.cancel.cancel();
    }
}

/// The stream a zone message is about, if any.
fn stream_of(msg: &ZoneToHost) -> Option<StreamId> {
    match msg {
        ZoneToHost::WorkloadCreated { id }
        | ZoneToHost::WorkloadStarted { id, .. }
        | ZoneToHost::WorkloadRemoved { id }
        | ZoneToHost::ExecStarted { exec_id: id, .. } => Some(*id),
        ZoneToHost::Output { stream_id, .. } | ZoneToHost::Exited { stream_id, .. } => Some(*stream_id),
        ZoneToHost::Error { request, .. } => *request,
        ZoneToHost::Stats { id, .. } => *id,
        ZoneToHost::WorkloadStatus { id, .. } => Some(*id),
        ZoneToHost::PortForwardConnected { stream_id } => Some(*stream_id),
        ZoneToHost::LimitsUpdated { id } => Some(*id),
        ZoneToHost::Hello { .. } | ZoneToHost::InitFailed { .. } | ZoneToHost::Pong { .. } => None,
    }
}

/// A short name for a message, for logs and errors (never the zone's payload).
pub(crate) fn kind_of(msg: &ZoneToHost) -> &'static str {
    match msg {
        ZoneToHost::Hello { .. } => "Hello",
        ZoneToHost::WorkloadCreated { .. } => "WorkloadCreated",
        ZoneToHost::WorkloadStarted { .. } => "WorkloadStarted",
        ZoneToHost::WorkloadRemoved { .. } => "WorkloadRemoved",
        ZoneToHost::Output { .. } => "Output",
        ZoneToHost::ExecStarted { .. } => "ExecStarted",
        ZoneToHost::Exited { .. } => "Exited",
        ZoneToHost::Error { .. } => "Error",
        ZoneToHost::InitFailed { .. } => "InitFailed",
        ZoneToHost::Pong { .. } => "Pong",
        ZoneToHost::Stats { .. } => "Stats",
        ZoneToHost::WorkloadStatus { .. } => "WorkloadStatus",
        ZoneToHost::PortForwardConnected { .. } => "PortForwardConnected",
        ZoneToHost::LimitsUpdated { .. } => "LimitsUpdated",
    }
}

async fn run(
    io: ChannelStream,
    params: LinkParams,
    events: mpsc::Sender<LinkEvent>,
    mut outgoing: mpsc::Receiver<HostToZone>,
    link: ZoneLink,
) {
    let ZoneLink { routes, cancel, .. } = link.clone();
    let zone = params.zone_id.clone();
    let (mut sink, mut stream) = Framed::new(io, HostCodec::new()).split();
    let first = tokio::select! {
        _ = cancel.cancelled() => return,
        first = tokio::time::timeout(params.hello_timeout, stream.next()) => first,
    };
    let event = match first {
        Err(_) => LinkEvent::HelloTimeout(params.hello_timeout),
        Ok(None) => LinkEvent::Closed,
        Ok(Some(Err(e))) => LinkEvent::ProtocolError(format!("bad first frame: {e}")),
        Ok(Some(Ok(ZoneToHost::Hello { init_version, kernel_release, boot_time_ms, .. }))) => {
            if let Some(prepare) = &params.before_welcome {
                prepare(link).await;
            }
            let welcome = HostToZone::Welcome { zone_id: params.zone_id, hostname: params.hostname };
            match sink.send(welcome).await {
                Ok(()) => LinkEvent::Connected(InitInfo { version: init_version, kernel_release, boot_time_ms }),
                Err(e) => LinkEvent::ProtocolError(format!("sending the welcome: {e}")),
            }
        }
        Ok(Some(Ok(ZoneToHost::InitFailed { stage, reason }))) => LinkEvent::InitFailed { stage, reason },
        Ok(Some(Ok(other))) => LinkEvent::ProtocolError(format!("expected Hello first, got {}", kind_of(&other))),
    };
    let connected = matches!(event, LinkEvent::Connected(_));
    let _ = events.send(event).await;
    if !connected {
        cancel.cancel();
        return;
    }
    tracing::info!(zone = %zone, "zone init connected");

    let writer = {
        let cancel = cancel.clone();
        async move {
            loop {
                let msg = tokio::select! {
                    _ = cancel.cancelled() => break,
                    msg = outgoing.recv() => msg,
                };
                let Some(msg) = msg else { break };
                if let Err(e) = sink.send(msg).await {
                    tracing::debug!(error = %e, "writing to the zone's channel failed");
                    break;
                }
            }
            // Requests queued after this point fail at once instead of waiting forever.
            outgoing.close();
        }
    };
    let reader = async {
        loop {
            let frame = tokio::select! {
                _ = cancel.cancelled() => return None,
                frame = stream.next() => frame,
            };
            match frame {
                None => return Some(LinkEvent::Closed),
                Some(Err(e)) => return Some(LinkEvent::ProtocolError(e.to_string())),
                Some(Ok(msg)) => {
                    if let Some(reason) = route(&routes, msg).await {
                        return Some(LinkEvent::ProtocolError(reason));
                    }
                }
            }
        }
    };
    let (_, ended) = tokio::join!(writer, async {
        let ended = reader.await;
        cancel.cancel();
        ended
    });
    if let Some(event) = ended {
        tracing::info!(zone = %zone, ?event, "zone channel ended");
        let _ = events.send(event).await;
    }
}

/// Delivers one message to its subscriber. Returns a protocol violation, if the message is one.
async fn route(routes: &Routes, msg: ZoneToHost) -> Option<String> {
    match &msg {
        ZoneToHost::Hello { .. } => return Some("a second Hello".into()),
        ZoneToHost::InitFailed { stage, reason } => {
            return Some(format!("init failed after connecting ({stage:?}): {reason}"));
        }
        ZoneToHost::Pong { .. } => return None,
        _ => {}
    }
    let Some(id) = stream_of(&msg) else {
        tracing::debug!(kind = kind_of(&msg), "zone message about no stream dropped");
        return None;
    };
    let subscriber = routes.lock().ok().and_then(|r| r.get(&id).cloned());
    match subscriber {
        Some(tx) => {
            if tx.send(msg).await.is_err()
                && let Ok(mut r) = routes.lock()
            {
                r.remove(&id);
            }
        }
        None => tracing::debug!(stream = %id, kind = kind_of(&msg), "zone message for an unknown stream dropped"),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_wire::{ExitStatus, PROTOCOL_VERSION, ZoneCodec};
    use tokio::io::{AsyncWriteExt, DuplexStream};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn params(timeout_ms: u64) -> LinkParams {
        LinkParams {
            zone_id: "z1".into(),
            hostname: "web".into(),
            hello_timeout: Duration::from_millis(timeout_ms),
            before_welcome: None,
        }
    }

    fn hello() -> ZoneToHost {
        ZoneToHost::Hello {
            protocol_version: PROTOCOL_VERSION,
            init_version: "0.1.0".into(),
            kernel_release: "6.12.0".into(),
            boot_time_ms: 900,
        }
    }

    fn start(timeout_ms: u64) -> (ZoneLink, mpsc::Receiver<LinkEvent>, Framed<DuplexStream, ZoneCodec>) {
        let (daemon, zone) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = mpsc::channel(8);
        let link = ZoneLink::spawn(Box::new(daemon), params(timeout_ms), tx);
        (link, rx, Framed::new(zone, ZoneCodec::new()))
    }

    #[tokio::test]
    async fn hello_is_welcomed_and_answers_reach_their_subscriber() -> TestResult {
        let (link, mut events, mut zone) = start(5_000);
        zone.send(hello()).await?;
        let welcome = zone.next().await.ok_or("no welcome")??;
        assert_eq!(welcome, HostToZone::Welcome { zone_id: "z1".into(), hostname: "web".into() });
        assert!(matches!(events.recv().await, Some(LinkEvent::Connected(i)) if i.kernel_release == "6.12.0"));

        let mut sub = link.subscribe(StreamId(3));
        link.send(HostToZone::StartWorkload { id: StreamId(3) }).await?;
        assert_eq!(zone.next().await.ok_or("no request")??, HostToZone::StartWorkload { id: StreamId(3) });
        // A message for nobody is dropped; the subscriber's arrive in order.
        zone.send(ZoneToHost::WorkloadStarted { id: StreamId(9), pid: 1 }).await?;
        zone.send(ZoneToHost::WorkloadStarted { id: StreamId(3), pid: 7 }).await?;
        zone.send(ZoneToHost::Exited { stream_id: StreamId(3), status: ExitStatus::Code(7) }).await?;
        assert_eq!(sub.recv().await, Some(ZoneToHost::WorkloadStarted { id: StreamId(3), pid: 7 }));
        assert_eq!(sub.recv().await, Some(ZoneToHost::Exited { stream_id: StreamId(3), status: ExitStatus::Code(7) }));
        assert!(link.is_open());
        Ok(())
    }

    #[tokio::test]
    async fn routes_set_up_before_the_welcome_get_what_the_zone_sends_right_after_it() -> TestResult {
        let (daemon, zone) = tokio::io::duplex(64 * 1024);
        let (tx, mut events) = mpsc::channel(8);
        let (subs_tx, mut subs) = mpsc::unbounded_channel();
        let mut p = params(5_000);
        p.before_welcome = Some(Arc::new(move |link: ZoneLink| {
            let subs_tx = subs_tx.clone();
            Box::pin(async move {
                // Slow on purpose: the welcome must wait for this.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = subs_tx.send(link.subscribe(StreamId(4)));
            })
        }));
        let _link = ZoneLink::spawn(Box::new(daemon), p, tx);
        let mut zone = Framed::new(zone, ZoneCodec::new());
        zone.send(hello()).await?;
        assert!(matches!(zone.next().await.ok_or("no welcome")??, HostToZone::Welcome { .. }));
        zone.send(ZoneToHost::Output { stream_id: StreamId(4), fd: bulkhead_wire::OutputFd::Stdout, data: "x".into() })
            .await?;
        let mut sub = subs.recv().await.ok_or("the hook did not run")?;
        assert!(matches!(sub.recv().await, Some(ZoneToHost::Output { stream_id: StreamId(4), .. })));
        assert!(matches!(events.recv().await, Some(LinkEvent::Connected(_))));
        Ok(())
    }

    #[tokio::test]
    async fn garbage_ends_the_link_with_a_protocol_error() -> TestResult {
        let (link, mut events, zone) = start(5_000);
        let mut zone = zone.into_inner();
        zone.write_all(b"this is not a frame at all, just noise from a hostile zone").await?;
        assert!(matches!(events.recv().await, Some(LinkEvent::ProtocolError(_))));
        // Requests fail instead of hanging once the link is down.
        tokio::time::timeout(Duration::from_secs(5), async {
            while link.send(HostToZone::Ping { nonce: 1 }).await.is_ok() {
                tokio::task::yield_now().await;
            }
        })
        .await?;
        assert!(!link.is_open());
        Ok(())
    }

    #[tokio::test]
    async fn garbage_after_the_hello_ends_the_link_too() -> TestResult {
        let (_link, mut events, mut zone) = start(5_000);
        zone.send(hello()).await?;
        assert!(matches!(events.recv().await, Some(LinkEvent::Connected(_))));
        let mut raw = zone.into_inner();
        raw.write_all(&[0xff; 64]).await?;
        assert!(matches!(events.recv().await, Some(LinkEvent::ProtocolError(_))));
        Ok(())
    }

    #[tokio::test]
    async fn silence_is_a_hello_timeout_and_init_failure_is_reported() -> TestResult {
        let (_link, mut events, _zone) = start(50);
        assert_eq!(events.recv().await, Some(LinkEvent::HelloTimeout(Duration::from_millis(50))));

        let (_link, mut events, mut zone) = start(5_000);
        zone.send(ZoneToHost::InitFailed { stage: InitStage::Rootfs, reason: "no xvdb".into() }).await?;
        assert_eq!(
            events.recv().await,
            Some(LinkEvent::InitFailed { stage: InitStage::Rootfs, reason: "no xvdb".into() })
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_closed_channel_is_reported() -> TestResult {
        let (_link, mut events, mut zone) = start(5_000);
        zone.send(hello()).await?;
        assert!(matches!(events.recv().await, Some(LinkEvent::Connected(_))));
        drop(zone);
        assert_eq!(events.recv().await, Some(LinkEvent::Closed));
        Ok(())
    }
}
