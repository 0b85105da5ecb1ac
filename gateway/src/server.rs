//! The node's lifecycle: bind, accept, route, drain.
//!
//! [`Gateway::start`] binds the listener and starts the node; every accepted
//! TCP connection is served by hyper (HTTP/1.1), and `GET /ws` upgrades to a
//! WebSocket session. [`Gateway::drain`] is the graceful shutdown: readiness
//! fails at once, new upgrades are refused, existing clients are closed with
//! 1012 spread over the drain window, then the listener stops.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::http_api::{self, Body, error_response};
use crate::node::Node;
use crate::{client_ip, demo, probes, upgrade};

/// How long drained sessions get to finish their close handshakes.
const SESSION_EXIT_GRACE: Duration = Duration::from_secs(5);

/// A running gateway node.
pub struct Gateway {
    node: Arc<Node>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Binds `config.listen` and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Gateway> {
        let listener = listen(config.listen)?;
        let local_addr = listener.local_addr()?;
        if config.api_keys.is_empty() {
            tracing::warn!(
                "no --api-key configured: the HTTP publish API is open to anyone who can reach it"
            );
        }
        let (node, background) = Node::start(config).map_err(|e| anyhow::anyhow!(e))?;
        let (stop, stopped) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, node.clone(), stopped));
        tracing::info!(
            addr = %local_addr,
            node = %node.config.node_id,
            broker = node.hub.broker_kind(),
            tls = node.tls.is_some(),
            auth = node.auth.is_some(),
            "gateway listening"
        );
        if node.auth.is_none() {
            tracing::warn!(
                "no --jwt-secret or --jwt-public-key configured: WebSocket clients connect without authentication"
            );
        }
        Ok(Gateway {
            node,
            local_addr,
            stop,
            accept,
            background,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reloads the TLS certificate and key files (SIGHUP). Open connections
    /// keep their certificate; new handshakes get the new one.
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.node.tls {
            Some(tls) => tls.reload(),
            None => Err("TLS is not configured".into()),
        }
    }

    /// The node's shared state.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Graceful shutdown: see the module docs. Returns when every session
    /// has ended (or the grace period ran out) and the listener is closed.
    pub async fn drain(self) {
        self.node.set_draining();
        let config = &self.node.config;
        self.node
            .registry
            .drain(config.drain, config.drain_reconnect_jitter)
            .await;
        let deadline = tokio::time::Instant::now() + SESSION_EXIT_GRACE;
        while !self.node.registry.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !self.node.registry.is_empty() {
            tracing::warn!(
                sessions = self.node.registry.len(),
                "sessions still open after the grace period"
            );
        }
        self.shutdown().await;
        tracing::info!("drained");
    }

    /// Stops at once: closes the listener and the HTTP connections, without
    /// draining WebSocket clients (their sockets close when the runtime
    /// stops).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.accept.await;
        for task in self.background {
            task.abort();
        }
    }
}

/// Connections the kernel queues for `accept` (capped by
/// `net.core.somaxconn`). tokio's default, 1,024, overflowed when thousands
/// of clients connect at once (a reconnect storm after a node failed): the
/// kernel then drops handshakes and clients retry a second later.
const ACCEPT_BACKLOG: u32 = 65_535;

/// Binds the listener with a deep accept queue.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Restarting on the same port while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

async fn accept_loop(listener: TcpListener, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(accept_connection(stream, peer.ip(), node.clone(), stop.clone()));
                }
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Everything before HTTP: the PROXY header (from trusted proxies, when
/// enabled) and the TLS handshake, both within the handshake timeout.
async fn accept_connection(
    mut stream: TcpStream,
    peer: IpAddr,
    node: Arc<Node>,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let deadline = node.config.handshake_timeout;
    let mut remote = peer;
    if node.config.proxy_protocol && client_ip::is_trusted(peer, &node.config.trusted_proxies) {
        match tokio::time::timeout(deadline, client_ip::read_proxy_header(&mut stream)).await {
            Ok(Ok(source)) => remote = source.unwrap_or(peer),
            Ok(Err(error)) => return tracing::debug!(%peer, %error, "dropping connection"),
            Err(_) => return tracing::debug!(%peer, "no PROXY header in time"),
        }
    }
    match &node.tls {
        None => serve_connection(stream, remote, node, stop).await,
        Some(tls) => match tokio::time::timeout(deadline, tls.accept(stream)).await {
            Ok(Ok(stream)) => serve_connection(stream, remote, node, stop).await,
            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        },
    }
}

async fn serve_connection<S>(stream: S, remote: IpAddr, node: Arc<Node>, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service_node = node.clone();
    let service = service_fn(move |request| {
        let node = service_node.clone();
        async move { Ok::<_, Infallible>(route(node, request, remote).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(node.config.handshake_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        }
        _ = stop.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
        }
    }
}

/// `remote`: where the connection comes from (after PROXY protocol).
async fn route(node: Arc<Node>, request: Request<Incoming>, remote: IpAddr) -> Response<Body> {
    let path = request.uri().path();
    let demo = node.config.demo && (path == "/demo" || path.starts_with("/demo/"));
    let allowed: &'static str = match path {
        "/ws" | "/healthz" | "/readyz" | "/metrics" | "/api/history" => "GET",
        _ if demo => "GET",
        "/api/publish" | "/api/broadcast" | "/api/batch" => "POST",
        _ => {
            return error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no route for {path}"),
            );
        }
    };
    let method_ok =
        request.method().as_str() == allowed || (allowed == "GET" && request.method() == Method::HEAD);
    if !method_ok {
        let mut response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{path} accepts {allowed}"),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allowed));
        return response;
    }
    match path {
        "/ws" => upgrade::handle(&node, request, remote),
        "/healthz" => probes::healthz(),
        "/readyz" => probes::readyz(&node),
        "/metrics" => probes::metrics(&node),
        "/api/publish" => http_api::publish(node, request).await,
        "/api/history" => http_api::history(node, request).await,
        "/api/batch" => http_api::batch(node, request).await,
        _ if demo => demo::serve(path),
        _ => http_api::broadcast(node, request).await,
    }
}
