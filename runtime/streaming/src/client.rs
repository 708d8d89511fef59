//! A small WebSocket client for the streaming protocols, written from the protocol descriptions rather than
//! from this crate's server code: exec with `v5.channel.k8s.io` and kubelet's WebSocket port-forward. The
//! CRI smoke test and tests use it against a running server; conformance with kubelet's and kubectl's own
//! clients is tested with client-go itself.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use url::Url;

/// Most bytes a client call collects per stream.
const MAX_COLLECT: usize = 16 << 20;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL has no host or port.
    #[error("streaming URL {0} has no host and port")]
    Url(Url),
    /// Connecting or the WebSocket handshake failed.
    #[error("connecting to {url}: {source}")]
    Connect {
        /// The URL.
        url: Url,
        /// Cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server broke the protocol.
    #[error("the streaming server broke the protocol: {0}")]
    Protocol(String),
}

/// What an exec gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Everything on stdout.
    pub stdout: Vec<u8>,
    /// Everything on stderr.
    pub stderr: Vec<u8>,
    /// The exit code the status carried (0 for Success); `None` when the call stopped early.
    pub exit_code: Option<i32>,
}

async fn connect(url: &Url, protocol: &str) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, ClientError> {
    let addr = match (url.host_str(), url.port_or_known_default()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        _ => return Err(ClientError::Url(url.clone())),
    };
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| ClientError::Connect { url: url.clone(), source: e };
    let tcp = TcpStream::connect(&addr).await.map_err(|e| fail(e.into()))?;
    let ws_url = url.as_str().replacen("http", "ws", 1);
    let mut req = ws_url.into_client_request().map_err(|e| fail(e.into()))?;
    req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocol).map_err(|e| fail(e.into()))?);
    let (ws, _) = tokio_tungstenite::client_async(req, tcp).await.map_err(|e| fail(e.into()))?;
    Ok(ws)
}

/// The exit code in a remote command status: 0 for Success, the `ExitCode` cause for a non-zero exit.
fn exit_code(status: &[u8]) -> Result<i32, ClientError> {
    let v: serde_json::Value =
        serde_json::from_slice(status).map_err(|e| ClientError::Protocol(format!("status is not JSON: {e}")))?;
    match v.get("status").and_then(|s| s.as_str()) {
        Some("Success") => Ok(0),
        _ => v
            .pointer("/details/causes")
            .and_then(|c| c.as_array())
            .and_then(|causes| causes.iter().find(|c| c.get("reason").and_then(|r| r.as_str()) == Some("ExitCode")))
            .and_then(|c| c.get("message")?.as_str()?.parse().ok())
            .ok_or_else(|| ClientError::Protocol(format!("failure without an exit code: {v}"))),
    }
}

/// Runs an exec URL over WebSocket (`v5.channel.k8s.io`): sends `stdin` (if any) and closes it, collects
/// stdout and stderr until the server closes, and returns them with the exit code.
pub async fn exec(url: &Url, stdin: Option<&[u8]>) -> Result<ExecOutput, ClientError> {
    remote_command(url, stdin, None).await
}

/// Attaches through an attach URL (`v5.channel.k8s.io`), sends `stdin` (if any) and closes it, and
/// collects output until stdout has `stdout_bytes` bytes, then leaves (the container keeps running).
pub async fn attach(url: &Url, stdin: Option<&[u8]>, stdout_bytes: usize) -> Result<ExecOutput, ClientError> {
    remote_command(url, stdin, Some(stdout_bytes)).await
}

async fn remote_command(url: &Url, stdin: Option<&[u8]>, stop_at: Option<usize>) -> Result<ExecOutput, ClientError> {
    let mut ws = connect(url, "v5.channel.k8s.io").await?;
    let send_err = |e: tokio_tungstenite::tungstenite::Error| ClientError::Protocol(format!("sending: {e}"));
    if let Some(data) = stdin {
        let mut frame = vec![0u8];
        frame.extend_from_slice(data);
        ws.send(Message::Binary(frame.into())).await.map_err(send_err)?;
        // v5's close signal: channel 255 naming stdin.
        ws.send(Message::Binary(vec![255u8, 0].into())).await.map_err(send_err)?;
    }
    let (mut stdout, mut stderr, mut status) = (Vec::new(), Vec::new(), None);
    while let Some(msg) = ws.next().await {
        let data = match msg {
            Ok(Message::Binary(d)) => d,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let Some((&channel, rest)) = data.split_first() else { continue };
        let buf = match channel {
            1 => &mut stdout,
            2 => &mut stderr,
            3 => status.get_or_insert_with(Vec::new),
            _ => continue,
        };
        if buf.len() + rest.len() > MAX_COLLECT {
            return Err(ClientError::Protocol(format!("more than {MAX_COLLECT} bytes on channel {channel}")));
        }
        buf.extend_from_slice(rest);
        if stop_at.is_some_and(|n| stdout.len() >= n) {
            let _ = ws.close(None).await;
            return Ok(ExecOutput { stdout, stderr, exit_code: None });
        }
    }
    let status = status.ok_or_else(|| ClientError::Protocol("the connection closed without a status".into()))?;
    Ok(ExecOutput { stdout, stderr, exit_code: Some(exit_code(&status)?) })
}

/// Sends `data` through a port-forward URL of one port (kubelet's WebSocket form, `v4.channel.k8s.io`) and
/// collects what comes back until `want` bytes have arrived or the server closes; an error the server
/// reports on the port's error channel fails the call.
pub async fn port_forward(url: &Url, data: &[u8], want: usize) -> Result<Vec<u8>, ClientError> {
    let mut ws = connect(url, "v4.channel.k8s.io").await?;
    let mut frame = vec![0u8];
    frame.extend_from_slice(data);
    ws.send(Message::Binary(frame.into())).await.map_err(|e| ClientError::Protocol(format!("sending: {e}")))?;
    // Each channel's first frame is the port number (2 bytes, little-endian).
    let mut seen_port = [false, false];
    let (mut got, mut error) = (Vec::new(), Vec::new());
    while got.len() < want {
        let data = match ws.next().await {
            Some(Ok(Message::Binary(d))) => d,
            Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            Some(Ok(_)) => continue,
        };
        let Some((&channel, rest)) = data.split_first() else { continue };
        let Some(first) = seen_port.get_mut(usize::from(channel)) else { continue };
        let rest = if *first {
            rest
        } else {
            *first = true;
            rest.get(2..).ok_or_else(|| ClientError::Protocol("a channel's first frame lacks the port".into()))?
        };
        let buf = if channel == 0 { &mut got } else { &mut error };
        if buf.len() + rest.len() > MAX_COLLECT {
            return Err(ClientError::Protocol(format!("more than {MAX_COLLECT} bytes on channel {channel}")));
        }
        buf.extend_from_slice(rest);
        if !error.is_empty() {
            return Err(ClientError::Protocol(format!("port-forward error: {}", String::from_utf8_lossy(&error))));
        }
    }
    let _ = ws.close(None).await;
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_read_from_the_status() -> Result<(), ClientError> {
        assert_eq!(exit_code(br#"{"metadata":{},"status":"Success"}"#)?, 0);
        let failure = br#"{"status":"Failure","reason":"NonZeroExitCode",
            "details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(exit_code(failure)?, 3);
        assert!(exit_code(br#"{"status":"Failure","message":"boom"}"#).is_err());
        Ok(())
    }
}
