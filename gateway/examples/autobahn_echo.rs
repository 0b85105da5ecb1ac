//! An echo server on the gateway's own WebSocket stack, for the RFC 6455 /
//! RFC 7692 conformance run with Autobahn|Testsuite (`.ci/autobahn.sh`):
//! the same upgrade checks, permessage-deflate negotiation, frame handling,
//! limits and compression the gateway's `/ws` uses, with an echo where the
//! gateway has its sessions. It is a test tool, not part of the binary.
//!
//! ```sh
//! cargo run --example autobahn_echo -- 127.0.0.1:9001
//! ```
//!
//! The one setting that differs from a gateway's defaults is the message
//! size limit, 32 MiB instead of 64 KiB: Autobahn's cases 9.x echo
//! messages of up to 16 MiB.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use gateway::websocket::{Deflater, Incoming, Socket, SocketError, Upgrade};
use http::{Request, Response};
use hyper::body::Incoming as Body;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const MAX_MESSAGE: usize = 32 << 20;
/// The gateway's defaults for compression.
const LEVEL: u32 = 6;
const MIN_SIZE: usize = 256;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9001)));
    let listener = TcpListener::bind(addr).await?;
    let deflater = Deflater::new(LEVEL, metrics::Counter::noop());
    eprintln!("autobahn echo listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let deflater = deflater.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let deflater = deflater.clone();
                async move { Ok::<_, Infallible>(upgrade(request, deflater)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn upgrade(mut request: Request<Body>, deflater: Arc<Deflater>) -> Response<gateway_body::Body> {
    let upgrade = match Upgrade::check(request.headers(), Some(&deflater)) {
        Ok(upgrade) => upgrade,
        Err(refusal) => return refusal,
    };
    let response = upgrade.response(None);
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let socket = Socket::new(TokioIo::new(upgraded), MAX_MESSAGE, upgrade.compression);
            echo(socket).await;
        }
    });
    response
}

async fn echo<S>(mut socket: Socket<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| socket.poll_read(cx)).await {
            Ok(Incoming::Text(text)) => {
                socket.queue_data(true, &text, MIN_SIZE);
            }
            Ok(Incoming::Binary(bytes)) => {
                socket.queue_data(false, &bytes, MIN_SIZE);
            }
            Ok(Incoming::Heartbeat) => {}
            Ok(Incoming::Close(_)) => {
                let _ = std::future::poll_fn(|cx| socket.poll_shutdown(cx)).await;
                return;
            }
            Err(SocketError::Protocol(code, reason)) => {
                // As the gateway's connections do: send the close, wait
                // (bounded) for the client's, then close the connection.
                socket.queue_close(code, reason);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
                    std::future::poll_fn(|cx| socket.poll_flush(cx)).await?;
                    while !socket.closed_by_client() {
                        if std::future::poll_fn(|cx| socket.poll_read(cx)).await.is_err() {
                            break;
                        }
                    }
                    std::future::poll_fn(|cx| socket.poll_shutdown(cx)).await
                })
                .await;
                return;
            }
            Err(SocketError::Io(_)) => return,
        }
        if std::future::poll_fn(|cx| socket.poll_flush(cx)).await.is_err() {
            return;
        }
    }
}

/// The response body type the gateway's handshake answers with.
mod gateway_body {
    pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, std::convert::Infallible>;
}
