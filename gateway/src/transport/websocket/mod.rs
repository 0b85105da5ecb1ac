//! The WebSocket transport (RFC 6455, with permessage-deflate from
//! RFC 7692): the opening handshake on `GET /ws` ([`upgrade`]), the
//! protocol on the upgraded stream ([`socket`], framing in [`wire`],
//! compression negotiation in [`deflate`]), and the connection's task
//! ([`connection`]), which reads messages into the session and writes the
//! outbox as frames.
//!
//! The gateway speaks WebSocket itself rather than through a library: a
//! publication's frame (compressed or not) is then the same bytes for
//! every subscriber, and an idle connection holds nothing but its small
//! read buffer (docs/architecture.md has the measurements behind the
//! choice). The rest of the gateway speaks in
//! [`Frame`](crate::frame::Frame)s and [`Inbound`](crate::session::Inbound)
//! messages.

mod connection;
mod deflate;
mod socket;
mod upgrade;
mod wire;

pub use socket::{Incoming, Socket, SocketError};
pub use upgrade::{Upgrade, handle};
