//! The shared handle of one client connection, whatever its transport.
//!
//! The connection's task owns the socket; everything else that must reach
//! the connection (the hub's fan-out, the registry's heartbeat and drain)
//! holds an `Arc<Peer>` and talks to it only through its [`Outbox`]. The
//! peer also says who the client is: its client id from the start, and its
//! user and connection info once it connected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use pubsub_proto::{Encoding, ServerMessage, json, protobuf};

use crate::frame::Frame;
use crate::outbox::{Outbox, Push};

/// Who a connected client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// The token's `sub`; empty without authentication or for an anonymous
    /// token.
    pub user: Box<str>,
    /// The connection's info (the token's `info` claim), if any.
    pub info: Option<Bytes>,
}

/// One connected client as seen from outside its connection's task.
pub struct Peer {
    /// Unique within this node's lifetime.
    pub id: u64,
    /// `<node>-<boot>-`, shared by every peer of the node: with `id`, the
    /// client id (see [`Peer::client`]).
    client_prefix: Arc<str>,
    /// The subprotocol's encoding, fixed at the handshake.
    pub encoding: Encoding,
    pub outbox: Outbox,
    /// Set once, when the client connects (boxed: most of the time only
    /// the pointer is kept per connection).
    who: OnceLock<Box<Who>>,
    /// Milliseconds since `epoch` when the client last sent anything.
    last_seen_ms: AtomicU64,
    epoch: Instant,
}

impl Peer {
    pub fn new(id: u64, client_prefix: Arc<str>, encoding: Encoding, outbox: Outbox, epoch: Instant) -> Peer {
        let peer = Peer {
            id,
            client_prefix,
            encoding,
            outbox,
            who: OnceLock::new(),
            last_seen_ms: AtomicU64::new(0),
            epoch,
        };
        peer.touch();
        peer
    }

    /// Records who the client is (its first `connect`); later calls keep
    /// the first answer.
    pub fn set_who(&self, who: Who) {
        let _ = self.who.set(Box::new(who));
    }

    /// Who the client is, once connected.
    pub fn who(&self) -> Option<&Who> {
        self.who.get().map(|who| &**who)
    }

    /// The client id: unique across nodes and restarts,
    /// `<node>-<boot>-<id>`.
    pub fn client(&self) -> String {
        format!("{}{}", self.client_prefix, self.id)
    }

    /// Queues a reply or notice for this client, in its encoding.
    pub fn reply(&self, message: &ServerMessage) -> Push {
        self.outbox.push(Frame::Message(encode(self.encoding, message)))
    }

    /// Records that the client sent something (a frame of any kind).
    pub fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_seen_ms.store(now, Ordering::Relaxed);
    }

    /// Milliseconds since the client last sent anything.
    pub fn idle_ms(&self) -> u64 {
        let now = self.epoch.elapsed().as_millis() as u64;
        now.saturating_sub(self.last_seen_ms.load(Ordering::Relaxed))
    }
}

/// Encodes a reply for a client using `encoding`.
pub fn encode(encoding: Encoding, message: &ServerMessage) -> Bytes {
    match encoding {
        Encoding::Json => Bytes::from(json::encode_reply(message)),
        Encoding::Protobuf => Bytes::from(protobuf::encode_reply(message)),
    }
}
