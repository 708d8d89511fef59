//! The HTTP/1.1 server: `/exec/<token>`, `/attach/<token>` and `/portforward/<token>`, each upgraded to
//! SPDY/3.1 or WebSocket, and the handle that issues those URLs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::cache::{Pending, RequestCache};
use crate::error::{RequestError, ServeError};
use crate::portforward;
use crate::remotecommand::{self, Command, Protocol};
use crate::runtime::{AttachRequest, ExecRequest, PortForwardRequest, StreamingRuntime};
use crate::spdy::Session;
use crate::websocket::{self, ByteStream};

/// The SPDY upgrade token.
const SPDY: &str = "SPDY/3.1";
/// The header carrying the SPDY subprotocol offers and choice.
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// The WebSocket subprotocol of SPDY tunnelled over WebSocket for port-forward.
const TUNNELED_PORTFORWARD: &str = "SPDY/3.1+portforward.k8s.io";

/// Settings of the streaming server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (port 0 picks one).
    pub listen: SocketAddr,
    /// The URL base handed out; None uses `http://<bound address>`. Set it when kubelet reaches the
    /// server by another address than the bound one.
    pub base_url: Option<Url>,
    /// How long an issued URL stays valid (kubelet: 1 minute).
    pub token_ttl: Duration,
    /// Most URLs waiting for their client (kubelet: 1000).
    pub max_pending: usize,
    /// Most connections served at once.
    pub max_connections: usize,
    /// How long a client may take to send its request headers, and to open a command's streams.
    pub stream_creation_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_url: None,
            token_ttl: Duration::from_secs(60),
            max_pending: 1000,
            max_connections: 256,
            stream_creation_timeout: remotecommand::STREAM_CREATION_TIMEOUT,
        }
    }
}

/// Issues streaming URLs. Cheap to clone; valid while the [`Server`] runs.
#[derive(Debug, Clone)]
pub struct Handle {
    base: Url,
    cache: Arc<RequestCache>,
}

impl Handle {
    /// Registers an exec and returns the URL the client streams it on.
    pub fn exec_url(&self, req: ExecRequest) -> Result<Url, RequestError> {
        if req.cmd.is_empty() {
            return Err(RequestError::Invalid("cmd must not be empty"));
        }
        check_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        self.issue("exec", Pending::Exec(req))
    }

    /// Registers an attach and returns its URL.
    pub fn attach_url(&self, req: AttachRequest) -> Result<Url, RequestError> {
        check_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        self.issue("attach", Pending::Attach(req))
    }

    /// Registers a port-forward and returns its URL.
    pub fn portforward_url(&self, req: PortForwardRequest) -> Result<Url, RequestError> {
        if req.pod_sandbox_id.is_empty() {
            return Err(RequestError::Invalid("pod sandbox id must not be empty"));
        }
        self.issue("portforward", Pending::PortForward(req))
    }

    fn issue(&self, kind: &str, req: Pending) -> Result<Url, RequestError> {
        let token = self.cache.insert(req)?;
        let mut url = self.base.clone();
        // The base was checked to be able to carry a path when the server was bound.
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(kind).push(&token);
        }
        Ok(url)
    }
}

// kubelet's rules (pkg/kubelet/cri/streaming/server.go).
fn check_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), RequestError> {
    if tty && stderr {
        return Err(RequestError::Invalid("tty and stderr cannot both be true"));
    }
    if !stdin && !stdout && !stderr {
        return Err(RequestError::Invalid("one of stdin, stdout, or stderr must be set"));
    }
    Ok(())
}

/// The streaming server, bound and ready to serve.
#[derive(Debug)]
pub struct Server<R> {
    listener: TcpListener,
    shared: Arc<Shared<R>>,
    handle: Handle,
}

#[derive(Debug)]
struct Shared<R> {
    runtime: Arc<R>,
    cache: Arc<RequestCache>,
    config: Config,
}

impl<R: StreamingRuntime> Server<R> {
    /// Binds the listening socket.
    pub async fn bind(config: Config, runtime: Arc<R>) -> Result<Self, ServeError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(ServeError::LocalAddr)?;
        let base = match &config.base_url {
            Some(u) => u.clone(),
            None => Url::parse(&format!("http://{addr}/")).map_err(|_| ServeError::BaseUrl(addr.to_string()))?,
        };
        if base.cannot_be_a_base() {
            return Err(ServeError::BaseUrl(base.to_string()));
        }
        let cache = Arc::new(RequestCache::new(config.token_ttl, config.max_pending));
        let handle = Handle { base, cache: cache.clone() };
        Ok(Self { listener, shared: Arc::new(Shared { runtime, cache, config }), handle })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, ServeError> {
        self.listener.local_addr().map_err(ServeError::LocalAddr)
    }

    /// The URL issuer.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Serves until `shutdown` is cancelled; then stops accepting and aborts open sessions.
    pub async fn serve(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.shared.config.max_connections));
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                a = self.listener.accept() => a,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a streaming connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "too many streaming connections; refusing one");
                continue;
            };
            let shared = self.shared.clone();
            conns.spawn(async move {
                let service = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, std::convert::Infallible>(route(shared, req)) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades();
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "streaming connection ended with an error");
                }
                drop(permit);
            });
        }
        conns.abort_all();
    }
}

fn reply(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r
}

fn route<R: StreamingRuntime>(shared: Arc<Shared<R>>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != http::Method::GET && req.method() != http::Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST");
    }
    let mut parts = req.uri().path().trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let pending = match shared.cache.consume(token) {
        Some(p) => p,
        None => return reply(StatusCode::NOT_FOUND, "unknown or expired streaming token"),
    };
    let task = match (kind, pending) {
        ("exec", Pending::Exec(r)) => Target::Command(Command::Exec(r)),
        ("attach", Pending::Attach(r)) => Target::Command(Command::Attach(r)),
        ("portforward", Pending::PortForward(r)) => Target::PortForward(r),
        _ => return reply(StatusCode::NOT_FOUND, "unknown or expired streaming token"),
    };
    if websocket::is_upgrade(req.headers()) {
        upgrade_websocket(shared, req, task)
    } else if is_spdy_upgrade(req.headers()) {
        upgrade_spdy(shared, req, task)
    } else {
        reply(StatusCode::BAD_REQUEST, "expected an upgrade to SPDY/3.1 or WebSocket")
    }
}

enum Target {
    Command(Command),
    PortForward(PortForwardRequest),
}

/// What a WebSocket carries.
enum WsMode {
    Command(Protocol),
    /// SPDY frames in binary messages (client-go's port-forward dialer).
    Tunnel,
    /// kubelet's channel-framed port-forward, for these ports.
    Channels(Vec<u16>),
}

/// The subprotocol of kubelet's channel-framed WebSocket port-forward.
const CHANNEL_PORTFORWARD: &str = "v4.channel.k8s.io";

/// The ports of a channel-framed WebSocket port-forward: the `port` query parameters (repeated or
/// comma-separated, as kubelet reads them), else the CRI request's.
fn websocket_ports(uri: &http::Uri, req: &PortForwardRequest) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (k, v) in url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        if k != "port" {
            continue;
        }
        for p in v.split(',') {
            match p.trim().parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => return Err(format!("bad port {p:?}")),
            }
        }
    }
    if ports.is_empty() {
        ports = req.ports.clone();
    }
    if ports.is_empty() || ports.len() > portforward::MAX_WEBSOCKET_PORTS || ports.contains(&0) {
        return Err(format!("1 to {} ports are needed, got {ports:?}", portforward::MAX_WEBSOCKET_PORTS));
    }
    Ok(ports)
}

fn is_spdy_upgrade(h: &http::HeaderMap) -> bool {
    let upgrade = h.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case(SPDY));
    let connection = websocket::list_header(h, header::CONNECTION.as_str());
    upgrade && connection.iter().any(|c| c.eq_ignore_ascii_case("upgrade"))
}

/// The first of the client's offers this end speaks (client order decides, as in apimachinery).
fn negotiate<'a, T: Copy>(offers: &[String], ours: &'a [(&'a str, T)]) -> Option<(&'a str, T)> {
    offers.iter().find_map(|o| ours.iter().find(|(name, _)| name == o).copied())
}

fn upgrade_spdy<R: StreamingRuntime>(
    shared: Arc<Shared<R>>,
    mut req: Request<Incoming>,
    target: Target,
) -> Response<Full<Bytes>> {
    let offers = websocket::list_header(req.headers(), PROTOCOL_HEADER);
    const PF: [(&str, ()); 1] = [(portforward::PROTOCOL, ())];
    // A client offering nothing gets the oldest protocol, as kubelet does.
    let chosen = match &target {
        Target::Command(_) if offers.is_empty() => Some(("", Protocol::V1)),
        Target::Command(_) => negotiate(&offers, &Protocol::SPDY),
        Target::PortForward(_) if offers.is_empty() => Some(("", Protocol::V1)),
        Target::PortForward(_) => negotiate(&offers, &PF).map(|(n, ())| (n, Protocol::V1)),
    };
    let Some((name, proto)) = chosen else {
        return reply(StatusCode::FORBIDDEN, &format!("none of the offered protocols {offers:?} is supported"));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => return tracing::debug!(error = %e, "SPDY upgrade failed"),
        };
        let session = Session::start(io);
        let timeout = shared.config.stream_creation_timeout;
        match target {
            Target::Command(cmd) => {
                if let Err(e) = remotecommand::serve_spdy(shared.runtime.clone(), session, proto, cmd, timeout).await {
                    tracing::debug!(error = %e, "remote command session failed");
                }
            }
            Target::PortForward(pf) => {
                portforward::serve_spdy(shared.runtime.clone(), session, pf.pod_sandbox_id, timeout).await
            }
        }
    });
    let mut r = reply(StatusCode::SWITCHING_PROTOCOLS, "");
    *r.body_mut() = Full::new(Bytes::new());
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(SPDY));
    if !name.is_empty() {
        h.insert(PROTOCOL_HEADER, HeaderValue::from_static(name));
    }
    r
}

fn upgrade_websocket<R: StreamingRuntime>(
    shared: Arc<Shared<R>>,
    mut req: Request<Incoming>,
    target: Target,
) -> Response<Full<Bytes>> {
    let Some(accept) = websocket::accept_key(req.headers()) else {
        return reply(StatusCode::BAD_REQUEST, "not a WebSocket version 13 handshake");
    };
    let offers = websocket::offered_protocols(req.headers());
    const PF: [(&str, bool); 2] = [(TUNNELED_PORTFORWARD, true), (CHANNEL_PORTFORWARD, false)];
    let chosen = match &target {
        Target::Command(_) => negotiate(&offers, &Protocol::WEBSOCKET).map(|(n, p)| (n, WsMode::Command(p))),
        // A client offering nothing gets kubelet's channel framing, as kubelet does.
        Target::PortForward(pf) => match negotiate(&offers, &PF).or(offers.is_empty().then_some(("", false))) {
            Some((n, true)) => Some((n, WsMode::Tunnel)),
            Some((n, false)) => match websocket_ports(req.uri(), pf) {
                Ok(ports) => Some((n, WsMode::Channels(ports))),
                Err(e) => return reply(StatusCode::BAD_REQUEST, &e),
            },
            None => None,
        },
    };
    let Some((name, mode)) = chosen else {
        return reply(StatusCode::FORBIDDEN, &format!("none of the offered subprotocols {offers:?} is supported"));
    };
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        return reply(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => return tracing::debug!(error = %e, "WebSocket upgrade failed"),
        };
        let ws = websocket::server_socket(io).await;
        let runtime = shared.runtime.clone();
        match (target, mode) {
            (Target::Command(cmd), WsMode::Command(proto)) => {
                remotecommand::serve_websocket(runtime, ws, proto, cmd).await;
            }
            (Target::PortForward(pf), WsMode::Tunnel) => {
                let session = Session::start(ByteStream::new(ws));
                let timeout = shared.config.stream_creation_timeout;
                portforward::serve_spdy(runtime, session, pf.pod_sandbox_id, timeout).await;
            }
            (Target::PortForward(pf), WsMode::Channels(ports)) => {
                portforward::serve_websocket(runtime, ws, pf.pod_sandbox_id, ports).await;
            }
            // Negotiation pairs each target with its own modes only.
            (Target::Command(_), _) | (Target::PortForward(_), WsMode::Command(_)) => {}
        }
    });
    let mut r = reply(StatusCode::SWITCHING_PROTOCOLS, "");
    *r.body_mut() = Full::new(Bytes::new());
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if !name.is_empty() {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(name));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_order_decides() {
        let offers = vec!["v4.channel.k8s.io".to_owned(), "v5.channel.k8s.io".to_owned()];
        assert_eq!(negotiate(&offers, &Protocol::SPDY).map(|(_, p)| p), Some(Protocol::V4));
        assert_eq!(negotiate(&["v9".to_owned()], &Protocol::SPDY), None);
    }

    #[test]
    fn websocket_ports_come_from_the_query_or_the_request() -> Result<(), String> {
        let req = PortForwardRequest { pod_sandbox_id: "p".into(), ports: vec![80] };
        let uri = |s: &str| s.parse::<http::Uri>().map_err(|e| e.to_string());
        assert_eq!(websocket_ports(&uri("/portforward/t?port=8080,9090&port=22")?, &req)?, vec![8080, 9090, 22]);
        assert_eq!(websocket_ports(&uri("/portforward/t")?, &req)?, vec![80]);
        for bad in ["/p/t?port=0", "/p/t?port=x", "/p/t?port=70000"] {
            assert!(websocket_ports(&uri(bad)?, &req).is_err(), "{bad}");
        }
        let none = PortForwardRequest { ports: vec![], ..req };
        assert!(websocket_ports(&uri("/p/t")?, &none).is_err());
        Ok(())
    }

    #[test]
    fn kubelets_request_rules() {
        assert!(check_streams(true, true, true, true).is_err());
        assert!(check_streams(false, false, false, false).is_err());
        assert!(check_streams(true, true, true, false).is_ok());
    }
}
