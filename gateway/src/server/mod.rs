//! The node's lifecycle: bind, accept, route, drain.
//!
//! [`Gateway::start`] binds the listener and starts the node; every
//! accepted TCP connection is served by hyper (`listener`), each request is
//! routed to its handler (`router`), and `GET /ws` upgrades to a WebSocket
//! connection. [`Gateway::drain`] is the graceful shutdown: readiness fails
//! at once, new connections are refused, existing clients are closed with
//! 1012 spread over the drain window, then the listener stops.

mod listener;
mod router;
mod sniff;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::node::Node;

/// How long drained sessions get to finish their close handshakes.
const SESSION_EXIT_GRACE: Duration = Duration::from_secs(5);

/// A running gateway node.
pub struct Gateway {
    node: Arc<Node>,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    grpc_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
    admin: Option<JoinHandle<()>>,
    grpc: Option<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Binds `config.listen` and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Gateway> {
        let listener = listener::bind(config.listen)?;
        let local_addr = listener.local_addr()?;
        let admin_listener = config.admin_listen.map(listener::bind).transpose()?;
        let admin_addr = admin_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let grpc_listener = config.grpc_listen.map(crate::grpc::bind).transpose()?;
        let grpc_addr = grpc_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        if config.api_keys.is_empty() {
            tracing::warn!(
                "no --api-key configured: the HTTP publish API is open to anyone who can reach it"
            );
        }
        let (node, mut background) = Node::start(config).map_err(|e| anyhow::anyhow!(e))?;
        // The node's entry in the registry `GET /api/info` reads.
        background.push(tokio::spawn(crate::http_api::announce_loop(node.clone())));
        // Server-side operations addressed to this node.
        if let Some(inbox) = node.hub.take_node_inbox() {
            background.push(tokio::spawn(crate::control::run(node.clone(), inbox)));
        }
        let (stop, stopped) = watch::channel(false);
        let accept = tokio::spawn(listener::accept_loop(
            listener,
            node.clone(),
            stopped.clone(),
            router::Surface::Public,
        ));
        let grpc =
            grpc_listener.map(|grpc| tokio::spawn(crate::grpc::serve(node.clone(), grpc, stopped.clone())));
        let admin = admin_listener.map(|admin| {
            tokio::spawn(listener::accept_loop(
                admin,
                node.clone(),
                stopped,
                router::Surface::Admin,
            ))
        });
        if let Some(addr) = grpc_addr {
            tracing::info!(%addr, tls = node.security.tls.is_some(), "gRPC listening (pubsub.api.v1.GatewayApi)");
        }
        if let Some(addr) = admin_addr {
            tracing::info!(%addr, "admin listening (/healthz, /readyz, /metrics)");
        }
        tracing::info!(
            addr = %local_addr,
            node = %node.config.node_id,
            broker = node.hub.broker_kind(),
            tls = node.security.tls.is_some(),
            auth = node.security.auth.is_some(),
            "gateway listening"
        );
        if node.security.auth.is_none() {
            tracing::warn!(
                "no --jwt-secret or --jwt-public-key configured: WebSocket clients connect without authentication"
            );
        }
        Ok(Gateway {
            node,
            local_addr,
            admin_addr,
            grpc_addr,
            stop,
            accept,
            admin,
            grpc,
            background,
        })
    }

    /// The admin listener's address, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The gRPC listener's address, with `--grpc-listen`.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reloads the TLS certificate and key files (SIGHUP). Open connections
    /// keep their certificate; new handshakes get the new one.
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.node.security.tls {
            Some(tls) => tls.reload(),
            None => Err("TLS is not configured".into()),
        }
    }

    /// Reads the token keys again (SIGHUP): the secret and public key
    /// files, and a JWKS fetch. Returns how many file keys are in use.
    pub fn reload_auth(&self) -> Result<usize, String> {
        match &self.node.security.auth {
            Some(auth) => auth.reload(),
            None => Err("token authentication is not configured".into()),
        }
    }

    /// The node's shared state.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Graceful shutdown: see the module docs. Returns when every session
    /// has ended (or the grace period ran out) and the listener is closed.
    pub async fn drain(self) {
        self.node.lifecycle.set_draining();
        let config = &self.node.config;
        let registry = &self.node.clients.registry;
        registry.drain(config.drain, config.drain_reconnect_jitter).await;
        if tokio::time::timeout(SESSION_EXIT_GRACE, registry.wait_empty())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = registry.len(),
                "sessions still open after the grace period"
            );
        }
        self.shutdown().await;
        tracing::info!("drained");
    }

    /// Stops at once: closes the listener and the HTTP connections, stops
    /// the hub's and the broker's tasks, without draining clients (their
    /// sockets close when the runtime stops).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.accept.await;
        if let Some(admin) = self.admin {
            let _ = admin.await;
        }
        if let Some(mut grpc) = self.grpc {
            // In-flight calls finish first; a client holding its HTTP/2
            // connection open does not hold up the exit.
            if tokio::time::timeout(SESSION_EXIT_GRACE, &mut grpc).await.is_err() {
                tracing::warn!("gRPC connections still open after the grace period");
                grpc.abort();
            }
        }
        for task in self.background {
            task.abort();
        }
        self.node.hub.close().await;
    }
}
