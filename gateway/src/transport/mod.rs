//! Transports: how sessions reach clients.
//!
//! A transport accepts a client through the shared checks
//! (`crate::handshake`), creates a [`Session`](crate::session::Session),
//! and then, from one task per connection, hands inbound messages to the
//! session and writes what the peer's outbox holds in its own wire form.
//! Everything below the transport (sessions, hub, broker) is the same for
//! every transport; everything about a wire format stays in its folder:
//! - [`websocket`]: RFC 6455 on `GET /ws`;
//! - [`sse`]: Server-Sent Events for simple consumers on `GET /sse`;
//! - [`http_stream`]: a session over a chunked response (`GET /stream`)
//!   with its commands POSTed to any node (`POST /stream/commands`).
//!
//! A new transport goes in a folder of its own here, consumes the same
//! outbox (`crate::outbox`, `crate::frame`) and the same encoded
//! publication bytes (`crate::delivery`), and is routed by
//! `server::router`.

pub mod http_stream;
pub mod sse;
pub mod websocket;
