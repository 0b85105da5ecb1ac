//! Everything before a request is routed: the listening socket, the accept
//! loop, the PROXY header (from trusted proxies, when enabled), the TLS
//! handshake, a first look at the first request (`sniff`), and hyper
//! serving HTTP/1.1 on the connection.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::router::{Surface, route};
use super::sniff::{self, First, Prefixed};
use crate::client_ip;
use crate::http_connection::HttpConnection;
use crate::limits::{PendingTicket, Refused};
use crate::node::Node;
use crate::transport::{http_stream, sse};

/// Connections the kernel queues for `accept` (capped by
/// `net.core.somaxconn`). tokio's default, 1,024, overflowed when thousands
/// of clients connect at once (a reconnect storm after a node failed): the
/// kernel then drops handshakes and clients retry a second later.
const ACCEPT_BACKLOG: u32 = 65_535;

/// Binds the listener with a deep accept queue.
pub(super) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
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

pub(super) async fn accept_loop(
    listener: TcpListener,
    node: Arc<Node>,
    mut stop: watch::Receiver<bool>,
    surface: Surface,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match surface {
                    Surface::Public => {
                        let trusted = client_ip::is_trusted(peer.ip(), &node.config.trusted_proxies);
                        // IPv6 clients are counted per prefix, as by the
                        // admission limits (one host holds a whole /64).
                        let key = client_ip::limit_key(peer.ip(), node.config.ipv6_limit_prefix);
                        match node.clients.pending.try_enter(key, trusted) {
                            Ok(ticket) => {
                                tokio::spawn(accept_connection(stream, peer.ip(), node.clone(), stop.clone(), ticket));
                            }
                            // Closed before anything is read: a flood of
                            // unfinished handshakes costs only this.
                            Err(refused) => {
                                node.metrics.reject(match refused {
                                    Refused::IpFull => "max_pending_per_ip",
                                    _ => "max_pending_connections",
                                });
                                drop(stream);
                            }
                        }
                    }
                    // Operators' listener: plain HTTP, no PROXY header, no TLS.
                    Surface::Admin => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(serve_connection(stream, peer.ip(), node.clone(), stop.clone(), Surface::Admin, None));
                    }
                },
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
/// `pending` holds the connection's place among the pending ones until
/// it ends, becomes a WebSocket (hyper's connection future ends then) or
/// carries an event stream (which takes it, see [`HttpConnection`]).
async fn accept_connection(
    mut stream: TcpStream,
    peer: IpAddr,
    node: Arc<Node>,
    stop: watch::Receiver<bool>,
    pending: PendingTicket,
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
    match &node.security.tls {
        None => serve_public(stream, remote, node, stop, pending).await,
        Some(tls) => match tokio::time::timeout(deadline, tls.accept(stream)).await {
            Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
                serve_http2(stream, remote, node, stop, pending).await
            }
            Ok(Ok(stream)) => serve_public(stream, remote, node, stop, pending).await,
            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        },
    }
}

/// A public connection: its first request decides whether hyper serves it
/// or, for a plain `GET /sse`, the event stream is written directly (see
/// [`sniff`]).
async fn serve_public<S>(
    mut stream: S,
    remote: IpAddr,
    node: Arc<Node>,
    stop: watch::Receiver<bool>,
    pending: PendingTicket,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match sniff::first_request(&mut stream, node.config.handshake_timeout).await {
        First::Sse(request) => {
            let open: sse::direct::OpenStream = if request.uri().path() == "/stream" {
                http_stream::open
            } else {
                sse::open
            };
            sse::direct::serve(node, stream, request, remote, pending, stop, open).await
        }
        First::Http(read) => {
            let stream = Prefixed::new(read, stream);
            serve_connection(stream, remote, node, stop, Surface::Public, Some(pending)).await
        }
        First::Gone => tracing::debug!(%remote, "connection closed before its first request"),
    }
}

/// An HTTP/2 connection (TLS with ALPN `h2`): every request, event streams
/// included, multiplexed on it by hyper. No WebSocket upgrades (RFC 8441 is
/// not offered, so browsers open their WebSockets on HTTP/1.1 connections).
/// HTTP/2 pings at the ping interval find clients that vanished.
async fn serve_http2<S>(
    stream: S,
    remote: IpAddr,
    node: Arc<Node>,
    mut stop: watch::Receiver<bool>,
    pending: PendingTicket,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let scope = Arc::new(HttpConnection::multiplexed(Some(pending)));
    let service_node = node.clone();
    let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        let node = service_node.clone();
        request.extensions_mut().insert(scope.clone());
        async move { Ok::<_, Infallible>(route(node, request, remote, Surface::Public).await) }
    });
    let connection = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(node.config.ping_interval)
        .keep_alive_timeout(node.config.ping_interval)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "HTTP/2 connection ended with an error");
            }
        }
        _ = stop.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
        }
    }
}

async fn serve_connection<S>(
    stream: S,
    remote: IpAddr,
    node: Arc<Node>,
    mut stop: watch::Receiver<bool>,
    surface: Surface,
    pending: Option<PendingTicket>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let scope = Arc::new(HttpConnection::new(pending));
    let service_node = node.clone();
    let service_scope = scope.clone();
    let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        let node = service_node.clone();
        request.extensions_mut().insert(service_scope.clone());
        async move { Ok::<_, Infallible>(route(node, request, remote, surface).await) }
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
        // An event stream was closed without waiting for its client
        // (slow consumer, stale): drop the connection even if the client
        // stopped reading and hyper cannot write.
        _ = scope.aborted() => {}
        _ = stop.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
        }
    }
}
