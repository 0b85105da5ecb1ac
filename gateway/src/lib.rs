//! pubsub-gateway node as a library, so tests (and embedders) can start one
//! in-process. The `gateway` binary is a thin `main` around [`Gateway`].
//!
//! Module map, in the order data flows:
//! - [`server`]: accept loop, routing, lifecycle (start, drain);
//! - `upgrade`: the WebSocket handshake on `GET /ws`;
//! - `session`: one connection: decode commands, write the outbox;
//! - `hub`: channels, local subscribers, fan-out, broker subscriptions;
//! - `outbox`, `delivery`, `peer`: per-connection queue, encode-once frames,
//!   the handle others hold on a connection;
//! - `registry`: every session, for heartbeat and drain;
//! - `http_api`: publish API; `probes`: health, readiness, metrics; `demo`:
//!   the demo page; [`config`], [`metrics`], `logging`;
//! - [`healthcheck`]: the `--healthcheck` client for container images.

mod access;
mod auth;
mod client_ip;
pub mod config;
mod delivery;
mod demo;
pub mod healthcheck;
mod http_api;
mod hub;
mod limits;
pub mod logging;
pub mod metrics;
pub mod namespaces;
mod node;
mod outbox;
mod peer;
mod probes;
mod registry;
pub mod server;
mod session;
mod tls;
mod upgrade;

pub use config::Config;
pub use server::Gateway;
