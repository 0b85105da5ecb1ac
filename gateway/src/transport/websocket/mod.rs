//! The WebSocket transport (RFC 6455): the opening handshake on `GET /ws`
//! ([`upgrade`]) and the connection's task ([`connection`]), which reads
//! frames into the session and writes the outbox as frames.
//!
//! This folder is the only place that knows the WebSocket library; the
//! rest of the gateway speaks in [`Frame`](crate::frame::Frame)s and
//! [`Inbound`](crate::session::Inbound) messages.

mod connection;
mod upgrade;

pub use upgrade::handle;
