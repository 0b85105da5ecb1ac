//! The server API over gRPC (`--grpc-listen`, off by default): service
//! `pubsub.api.v1.GatewayApi` from `proto/pubsub/v1/api.proto`, on its own
//! listener, HTTP/2 only, TLS (ALPN `h2`) with the node's certificate when
//! the node has TLS (reloaded on SIGHUP with it). The calls themselves are
//! in `service.rs`.

mod service;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::node::Node;

/// The generated messages, server and client (the client for tests and
/// Rust backends).
pub mod pb {
    tonic::include_proto!("pubsub.api.v1");
}

/// TLS handshakes waiting for the server to take them.
const HANDSHAKES_QUEUED: usize = 64;

/// Binds `addr` for gRPC.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = std::net::TcpListener::bind(addr)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket)
}

/// Serves gRPC on `listener` until `stop` turns true.
pub async fn serve(node: Arc<Node>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let service = pb::gateway_api_server::GatewayApiServer::new(service::Service { node: node.clone() })
        .max_decoding_message_size(node.config.max_body_size)
        .max_encoding_message_size(usize::MAX);
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let server = tonic::transport::Server::builder().add_service(service);
    let result = match node.security.tls.as_ref().map(|tls| tls.acceptor_for(&[b"h2"])) {
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            server.serve_with_incoming_shutdown(incoming, stopped).await
        }
        Some(Err(error)) => {
            tracing::error!(%error, "gRPC TLS configuration failed; gRPC is off");
            return;
        }
        Some(Ok(acceptor)) => {
            let (sender, receiver) = mpsc::channel(HANDSHAKES_QUEUED);
            let timeout = node.config.handshake_timeout;
            let handshakes = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let (acceptor, sender) = (acceptor.clone(), sender.clone());
                    // Each handshake in its own task, bounded in time: one
                    // slow client holds up nobody else.
                    tokio::spawn(async move {
                        if let Ok(Ok(tls)) = tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            let _ = sender.send(Ok::<_, std::io::Error>(tls)).await;
                        }
                    });
                }
            });
            let result = server
                .serve_with_incoming_shutdown(ReceiverStream::new(receiver), stopped)
                .await;
            handshakes.abort();
            result
        }
    };
    if let Err(error) = result {
        tracing::error!(%error, "the gRPC server stopped");
    }
}
