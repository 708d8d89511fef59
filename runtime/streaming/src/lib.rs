//! The CRI streaming server: the endpoint kubelet's Exec, Attach and PortForward URLs point to.
//!
//! The CRI server registers a request with a [`Handle`] ([`Handle::exec_url`], [`Handle::attach_url`],
//! [`Handle::portforward_url`]) and returns the URL; the client (kubelet's proxy, passing the API server's
//! or kubectl's upgrade through) connects to it within the token's lifetime and upgrades to:
//!
//! - SPDY/3.1 with `X-Stream-Protocol-Version` `v5`/`v4`/`v3`/`v2.channel.k8s.io` or `channel.k8s.io`
//!   (exec, attach) or `portforward.k8s.io`, as client-go's `remotecommand.NewSPDYExecutor` and
//!   `portforward.New` over `spdy.RoundTripperFor` speak it;
//! - WebSocket with subprotocol `v5`/`v4.channel.k8s.io` (exec, attach; client-go's
//!   `remotecommand.NewWebSocketExecutor`), or `SPDY/3.1+portforward.k8s.io` (port-forward tunnelled over
//!   WebSocket, client-go's `portforward.NewSPDYOverWebsocketDialer`).
//!
//! The work itself is the [`StreamingRuntime`]'s. Threads and trust: everything runs on the caller's tokio
//! runtime, one task per connection plus a reader and a writer per SPDY session; every byte from the client
//! is untrusted, and every size (frames, header blocks, buffered data, streams, pending tokens,
//! connections) is bounded.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn demo<R: bulkhead_streaming::StreamingRuntime>(rt: R) -> Result<(), Box<dyn std::error::Error>> {
//! use bulkhead_streaming::{Config, ExecRequest, Server};
//! let server = Server::bind(Config::default(), Arc::new(rt)).await?;
//! let urls = server.handle();
//! let stop = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(server.serve(stop.clone()));
//! let url = urls.exec_url(ExecRequest {
//!     container_id: "c1".into(), cmd: vec!["sh".into()], tty: true, stdin: true, stdout: true, stderr: false,
//! })?;
//! # let _ = url; Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod cache;
pub mod client;
pub mod error;
pub mod portforward;
pub mod remotecommand;
mod runtime;
mod server;
pub mod spdy;
pub mod websocket;

pub use error::{FrameError, RequestError, ServeError, SessionError};
pub use runtime::{
    AttachRequest, ExecRequest, Input, Output, PortForwardRequest, RuntimeError, StreamIo, StreamingRuntime,
    TerminalSize,
};
pub use server::{Config, Handle, Server};
