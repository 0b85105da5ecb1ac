//! pubsub-gateway node as a library, so tests (and embedders) can start one
//! in-process. The `gateway` binary is a thin `main` around [`Gateway`].
//!
//! Module map, in the order data flows:
//! - [`server`]: listener, accept loop, routing, lifecycle (start, drain);
//! - `handshake`: the checks every transport makes before accepting a
//!   client (draining, Origin, token, limits);
//! - `transport`: how sessions reach clients (`transport/websocket/`);
//! - `session`: one client's protocol state: commands, authentication,
//!   rate limits, whatever the transport;
//! - `hub`: channels, local subscribers, fan-out, broker subscriptions;
//! - `outbox`, `frame`, `delivery`, `peer`: per-connection queue, the
//!   gateway's own outgoing frames, encode-once publications, the handle
//!   others hold on a connection (and who the client is);
//! - `registry`: every session, for heartbeat and drain;
//! - `http_api`: publish and history API; `probes`: health, readiness,
//!   metrics; `demo`: the demo page; `response`: the HTTP answer types
//!   they share;
//! - `auth`, `access`, `origin`, `client_ip`, `limits`, `tls`: who may do
//!   what; [`config`], [`metrics`], `logging`, `node` (what is shared);
//! - [`healthcheck`]: the `--healthcheck` client for container images.

mod access;
mod auth;
mod calls;
mod client_ip;
mod compression;
pub mod config;
mod control;
mod delivery;
mod demo;
mod frame;
pub mod grpc;
mod handshake;
pub mod healthcheck;
mod http_api;
mod http_connection;
mod hub;
mod limits;
pub mod logging;
pub mod metrics;
mod node;
mod openapi;
mod order;
mod origin;
mod outbox;
mod peer;
mod probes;
mod registry;
mod response;
pub mod server;
mod session;
mod streams;
mod tls;
mod transport;

/// The gateway's WebSocket protocol on its own: the handshake, frame
/// handling and compression every `/ws` connection uses, exposed so that
/// the RFC 6455 / RFC 7692 conformance run (Autobahn|Testsuite against
/// `examples/autobahn_echo.rs`) exercises exactly that code.
pub mod websocket {
    pub use crate::compression::Deflater;
    pub use crate::transport::websocket::{Incoming, Socket, SocketError, Upgrade};
}

pub use config::Config;
pub use server::Gateway;
