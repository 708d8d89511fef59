//! Port-forward, subprotocol `portforward.k8s.io`: per forwarded connection the client opens an error
//! stream and a data stream, both with headers `port` and `requestID`. This end pairs them, hands the data
//! side to the runtime, and on failure writes the reason on the error stream (client-go prints it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::runtime::StreamingRuntime;
use crate::spdy::{Session, SpdyStream};

/// The subprotocol name.
pub const PROTOCOL: &str = "portforward.k8s.io";
/// Bytes buffered between a data stream and the runtime, each way.
const PIPE: usize = 64 * 1024;
/// How long the remaining forwards of a closed session get to end before they are aborted.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Pair {
    error: Option<SpdyStream>,
    data: Option<SpdyStream>,
}

/// Serves a port-forward session for `pod` until the client closes it.
pub(crate) async fn serve_spdy<R: StreamingRuntime>(
    runtime: Arc<R>,
    mut session: Session,
    pod: String,
    creation_timeout: Duration,
) {
    let mut pairs: HashMap<String, (Instant, Pair)> = HashMap::new();
    let mut forwards = JoinSet::new();
    while let Some(mut s) = session.accept().await {
        // Half-made pairs older than the creation timeout are dropped, which resets their streams.
        pairs.retain(|_, (t, _)| t.elapsed() < creation_timeout);
        while forwards.try_join_next().is_some() {}
        let (Some(id), Some(ty)) = (s.header("requestid"), s.header("streamtype")) else {
            s.writer.reset().await;
            continue;
        };
        let (id, ty) = (id.to_owned(), ty.to_owned());
        let entry = pairs.entry(id.clone()).or_insert_with(|| (Instant::now(), Pair::default()));
        let slot = match ty.as_str() {
            "error" => &mut entry.1.error,
            "data" => &mut entry.1.data,
            _ => {
                s.writer.reset().await;
                continue;
            }
        };
        if slot.is_some() {
            s.writer.reset().await;
            continue;
        }
        *slot = Some(s);
        if let (Some(_), Some(_)) = (&entry.1.error, &entry.1.data)
            && let Some((_, Pair { error: Some(error), data: Some(data) })) = pairs.remove(&id)
        {
            forwards.spawn(forward(runtime.clone(), pod.clone(), error, data));
        }
    }
    if tokio::time::timeout(DRAIN, async { while forwards.join_next().await.is_some() {} }).await.is_err() {
        forwards.abort_all();
    }
    session.close().await;
}

async fn forward<R: StreamingRuntime>(runtime: Arc<R>, pod: String, mut error: SpdyStream, data: SpdyStream) {
    let port = data.header("port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p != 0);
    // The client writes nothing on the error stream; closing our reading side costs nothing.
    let Some(port) = port else {
        let msg = format!("invalid port {:?}", data.header("port").unwrap_or_default());
        let _ = error.writer.write(msg.into()).await;
        let _ = error.writer.finish().await;
        return;
    };
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let (our_rd, our_wr) = tokio::io::split(ours);
    let inbound = tokio::spawn(data.reader.copy_to(our_wr));
    let outbound = tokio::spawn(data.writer.copy_from(our_rd));
    let result = runtime.port_forward(&pod, port, theirs).await;
    // The runtime dropped its end: the outbound copy reaches EOF and sends FIN.
    let _ = outbound.await;
    inbound.abort();
    if let Err(e) = result {
        tracing::debug!(pod = %pod, port, error = %e, "port-forward failed");
        let msg = format!("error forwarding port {port} to pod {pod}: {e}");
        let _ = error.writer.write(msg.into()).await;
    }
    let _ = error.writer.finish().await;
}

/// Most ports one WebSocket port-forward may name: two channels each, and channel numbers are one byte.
pub const MAX_WEBSOCKET_PORTS: usize = 64;

/// Serves kubelet's channel-framed WebSocket port-forward (subprotocol `v4.channel.k8s.io`, or none): one
/// forwarded connection per port, port `i` on data channel `2i` and error channel `2i+1`, each channel
/// opened by this end writing the port as a little-endian u16. Nothing signals a half-close here: the
/// client's EOF is the end of the WebSocket, and this end closes it when every forward is over.
pub(crate) async fn serve_websocket<R, S>(runtime: Arc<R>, ws: S, pod: String, ports: Vec<u16>)
where
    R: StreamingRuntime,
    S: crate::websocket::Socket,
{
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::websocket::{Writer, channel_message as framed, next_channel_message};

    let (sink, mut source) = ws.split();
    let writer = Writer::spawn(sink);
    let tx = writer.sender();
    let mut inbound = Vec::new();
    let mut forwards = JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        // MAX_WEBSOCKET_PORTS keeps 2i + 1 within a byte.
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        for ch in [data_ch, err_ch] {
            let _ = tx.send(framed(ch, &port.to_le_bytes())).await;
        }
        let (ours, theirs) = tokio::io::duplex(PIPE);
        let (mut our_rd, our_wr) = tokio::io::split(ours);
        inbound.push(Some(our_wr));
        let (runtime, pod, tx) = (runtime.clone(), pod.clone(), tx.clone());
        forwards.spawn(async move {
            let out_tx = tx.clone();
            let outbound = tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                while let Ok(n) = our_rd.read(&mut buf).await {
                    if n == 0 || out_tx.send(framed(data_ch, &buf[..n])).await.is_err() {
                        break;
                    }
                }
            });
            let result = runtime.port_forward(&pod, port, theirs).await;
            let _ = outbound.await;
            if let Err(e) = result {
                tracing::debug!(pod = %pod, port, error = %e, "port-forward failed");
                let msg = format!("error forwarding port {port} to pod {pod}: {e}");
                let _ = tx.send(framed(err_ch, msg.as_bytes())).await;
            }
        });
    }
    let reader = tokio::spawn(async move {
        while let Some((ch, payload)) = next_channel_message(&mut source).await {
            // Only data channels (even) carry client bytes; a forward whose runtime ended stops taking them.
            if ch % 2 == 0
                && let Some(slot) = inbound.get_mut(usize::from(ch / 2))
                && let Some(pipe) = slot.as_mut()
                && pipe.write_all(&payload).await.is_err()
            {
                *slot = None;
            }
        }
        // Each forward's EOF. (Dropping a split write half is not: the read half keeps the pipe open.)
        for mut pipe in inbound.into_iter().flatten() {
            let _ = pipe.shutdown().await;
        }
    });
    while forwards.join_next().await.is_some() {}
    drop(tx);
    writer.close().await;
    reader.abort();
}
