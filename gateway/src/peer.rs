//! The shared handle of one WebSocket connection.
//!
//! The session task owns the socket; everything else that must reach the
//! connection (the hub's fan-out, the registry's heartbeat and drain) holds
//! an `Arc<Peer>` and talks to it only through its [`Outbox`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use pubsub_proto::Encoding;

use crate::outbox::Outbox;

/// One connected client as seen from outside its session.
pub struct Peer {
    /// Unique within this node's lifetime.
    pub id: u64,
    /// The subprotocol's encoding, fixed at the handshake.
    pub encoding: Encoding,
    pub outbox: Outbox,
    /// Milliseconds since `epoch` when the client last sent anything.
    last_seen_ms: AtomicU64,
    epoch: Instant,
}

impl Peer {
    pub fn new(id: u64, encoding: Encoding, outbox: Outbox, epoch: Instant) -> Peer {
        let peer = Peer {
            id,
            encoding,
            outbox,
            last_seen_ms: AtomicU64::new(0),
            epoch,
        };
        peer.touch();
        peer
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
