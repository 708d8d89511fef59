//! WebSocket: the upgrade handshake (RFC 6455 section 4.2.2) done inside hyper, and a byte-stream view of
//! a socket for SPDY tunnelled over WebSocket (client-go's port-forward dialer since Kubernetes 1.30:
//! subprotocol `SPDY/3.1+portforward.k8s.io`, SPDY frames carried in binary messages).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Largest WebSocket message and frame accepted: client-go writes at most 32 KiB of payload per message.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// A server-side WebSocket the handlers can split into a sink and a stream.
pub trait Socket:
    Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Send + Unpin + 'static
{
}

impl<T> Socket for T where
    T: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Send + Unpin + 'static
{
}

/// Whether `headers` ask for a WebSocket upgrade.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The `Sec-WebSocket-Accept` value for the request's key, or None when the request is no valid
/// version-13 handshake.
pub fn accept_key(headers: &HeaderMap) -> Option<String> {
    let version = headers.get(http::header::SEC_WEBSOCKET_VERSION)?;
    if version.as_bytes() != b"13" {
        return None;
    }
    let key = headers.get(http::header::SEC_WEBSOCKET_KEY)?;
    Some(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// The subprotocols the client offers, in its order.
pub fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    list_header(headers, http::header::SEC_WEBSOCKET_PROTOCOL.as_str())
}

/// Values of a header that may repeat and may hold comma-separated lists.
pub(crate) fn list_header(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Wraps an upgraded connection as the server end of a WebSocket.
pub async fn server_socket<T>(io: T) -> WebSocketStream<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
    WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await
}

/// A WebSocket read and written as bytes: reads concatenate binary messages, each write is one message.
#[derive(Debug)]
pub struct ByteStream<S> {
    ws: S,
    pending: Bytes,
}

impl<S> ByteStream<S> {
    /// Wraps `ws`.
    pub fn new(ws: S) -> Self {
        Self { ws, pending: Bytes::new() }
    }
}

fn io_err(e: WsError) -> std::io::Error {
    std::io::Error::other(e)
}

impl<S: Socket> AsyncRead for ByteStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => self.pending = b,
                // A close, or the end of the connection, is EOF.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io_err(e))),
            }
        }
    }
}

impl<S: Socket> AsyncWrite for ByteStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_err)?;
        Pin::new(&mut self.ws).start_send(Message::Binary(Bytes::copy_from_slice(buf))).map_err(io_err)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_err)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(io_err)
    }
}

/// A binary message on channel `ch` (the channel.k8s.io framing: one leading channel byte).
pub(crate) fn channel_message(ch: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(ch);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// The sending side of a socket, run by its own task so several producers can queue messages.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: tokio::sync::mpsc::Sender<Message>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Spawns the task that owns `sink`.
    pub fn spawn<K>(mut sink: K) -> Self
    where
        K: Sink<Message, Error = WsError> + Send + Unpin + 'static,
    {
        use futures_util::SinkExt;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(64);
        let task = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        Self { tx, task }
    }

    /// A producer's handle.
    pub fn sender(&self) -> tokio::sync::mpsc::Sender<Message> {
        self.tx.clone()
    }

    /// Sends a normal closure after everything queued (how client-go learns all channels ended), and
    /// waits a bounded time for it to go out.
    pub async fn close(self) {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        let _ = self.tx.send(Message::Close(Some(close))).await;
        drop(self.tx);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await;
    }
}

/// The next channel-framed message from the client: its channel and payload. None at the client's close,
/// the end of the connection, or an error. Pings are answered by the library; text messages (the base64
/// protocol variants) are not spoken and are skipped, as are empty messages.
pub(crate) async fn next_channel_message<T>(source: &mut T) -> Option<(u8, Bytes)>
where
    T: Stream<Item = Result<Message, WsError>> + Unpin,
{
    use futures_util::StreamExt;
    loop {
        match source.next().await?.ok()? {
            Message::Binary(mut data) if !data.is_empty() => {
                let ch = data[0];
                data.advance(1);
                return Some((ch, data));
            }
            Message::Close(_) => return None,
            _ => {}
        }
    }
}
