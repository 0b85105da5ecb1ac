//! One HTTP connection as its request handlers see it (a request
//! extension set by `server::listener`): what a long-lived response needs
//! to change about the connection that carries it.

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::limits::PendingTicket;

/// One HTTP connection as its handlers see it (a request extension): the
/// long-lived responses of the event streams take its place among the
/// pending connections (they are admitted clients now, counted by the
/// connection limits instead) and can end it.
pub struct HttpConnection {
    pending: Mutex<Option<PendingTicket>>,
    abort: Notify,
    /// HTTP/2: the connection carries other requests too, so one stream's
    /// end must not abort it.
    multiplexed: bool,
}

impl HttpConnection {
    /// An HTTP/1.1 connection holding `pending`, its place among the
    /// pending ones.
    pub fn new(pending: Option<PendingTicket>) -> HttpConnection {
        HttpConnection {
            pending: Mutex::new(pending),
            abort: Notify::new(),
            multiplexed: false,
        }
    }

    /// An HTTP/2 connection: [`HttpConnection::abort`] does nothing (a
    /// stalled stream's client is found by HTTP/2 keep-alive pings instead,
    /// or when it reads again).
    pub fn multiplexed(pending: Option<PendingTicket>) -> HttpConnection {
        HttpConnection {
            multiplexed: true,
            ..HttpConnection::new(pending)
        }
    }

    /// Resolves when a handler aborted the connection.
    pub async fn aborted(&self) {
        self.abort.notified().await
    }

    /// The connection carries a client session from now on: it no longer
    /// counts as pending.
    pub fn release_pending(&self) {
        drop(self.pending.lock().take());
    }

    /// Ends the connection at once, whatever it is doing (HTTP/1.1 only).
    pub fn abort(&self) {
        if !self.multiplexed {
            self.abort.notify_one();
        }
    }
}
