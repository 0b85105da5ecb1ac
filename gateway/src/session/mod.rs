//! One WebSocket connection, from the completed handshake to the close.
//!
//! A session is one tokio task that owns the socket. Its event loop
//! (`connection.rs`) does, side by side:
//! - **reading**: commands are decoded and handled one at a time
//!   (`commands.rs`); a command that must wait (subscribe, publish) stops
//!   reading until it is done, which bounds what one client can have in
//!   flight;
//! - **writing**: everything queued in the peer's outbox is handed to the
//!   socket and flushed once, so a burst costs one syscall, not one per frame.
//!
//! Reading and writing never block each other: a client that does not read
//! fills its outbox and is closed with 4008 while its commands are still read.
//! Every way a session ends goes through [`End`], and the cleanup
//! (unsubscribe everywhere, leave the registry, give back the admission
//! ticket) runs in `Drop`, so it also runs if the task panics.
//!
//! Per connection the session also enforces authentication (a `connect`
//! within the handshake timeout, `token_expiring` ahead of the token's
//! expiry, close 4001 at expiry unless refreshed) and the frame rate (a client
//! sending faster than `--command-rate` is simply read more slowly).

mod commands;
mod connection;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use broker_adapter::BrokerError;
use pubsub_proto::{ChannelName, Encoding, ErrorCode, ServerMessage, close, json, protobuf};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::auth::Identity;
use crate::limits::{Ticket, TokenBucket};
use crate::node::Node;
use crate::outbox::{CloseRequest, Outbox, Outgoing};
use crate::peer::Peer;

/// A command that is waiting for the hub or the broker.
type Pending = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// What a finished command leaves to do.
enum Outcome {
    /// Queue this reply.
    Reply(ServerMessage),
    /// Nothing: the hub already queued the reply.
    Done,
    /// The subscribe failed: forget the channel and queue the error.
    SubscribeFailed(ChannelName, ServerMessage),
}

/// What the reader wants after one inbound message.
enum Step {
    Continue,
    Wait(Pending),
    /// The client broke the protocol (or its token is bad): close with this code.
    Violation(u16, &'static str),
    ClientClosed,
}

/// Why the session loop ended.
enum End {
    /// A close was requested through the outbox and everything before it
    /// was written (drain).
    Requested(CloseRequest),
    /// A close that does not wait for the queue (slow consumer, stale).
    Killed(CloseRequest),
    Violation(u16, &'static str),
    ReadError(WsError),
    WriteError(WsError),
    ClientClosed,
    /// The TCP connection ended without a close frame.
    Gone,
    /// The session's code panicked.
    Panicked,
}

/// What the authentication timer waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthEvent {
    /// The client has not sent `connect` within the handshake timeout.
    ConnectDeadline,
    /// Time to send `token_expiring`.
    Expiring,
    /// The token expired.
    Expired,
}

struct AuthTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    event: AuthEvent,
}

/// The publish rate limit and its record of refusals.
struct PublishLimit {
    bucket: TokenBucket,
    /// Publishes refused since `since`.
    refused: u32,
    since: Instant,
}

/// Starts one connection: the returned future (spawn it as its own task)
/// runs it until it closes. `ticket` is its admission; `identity` its token,
/// if it authenticated at the upgrade.
pub fn start<S>(
    ws: WebSocketStream<S>,
    encoding: Encoding,
    node: Arc<Node>,
    ticket: Ticket,
    identity: Option<Box<Identity>>,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let outbox = Outbox::new(
        node.config.outbound_queue_bytes,
        node.config.outbound_queue_messages,
    );
    let peer = Arc::new(Peer::new(node.next_session_id(), encoding, outbox, node.epoch));
    node.registry.insert(peer.clone());
    node.metrics.connections.increment(1.0);
    node.metrics.connections_total.increment(1);
    // Upgraded just as the drain began (after its last sweep): leave too.
    if node.is_draining() {
        peer.outbox
            .close(crate::registry::drain_close(node.config.drain_reconnect_jitter));
    }
    tracing::debug!(peer = peer.id, ?encoding, "session started");
    let frames = (node.config.command_rate > 0).then(|| TokenBucket::per_second(node.config.command_rate));
    let publishes = (node.config.publish_rate > 0).then(|| {
        Box::new(PublishLimit {
            bucket: TokenBucket::per_second(node.config.publish_rate),
            refused: 0,
            since: Instant::now(),
        })
    });
    let mut session = Session {
        node,
        peer,
        subscriptions: HashSet::new(),
        connected: false,
        identity,
        auth_timer: None,
        frames,
        publishes,
        _ticket: ticket,
    };
    session.auth_timer = session.next_auth_timer();
    connection::Connection::new(ws, session)
}

struct Session {
    node: Arc<Node>,
    peer: Arc<Peer>,
    /// Channels subscribed, or being subscribed, by this session.
    subscriptions: HashSet<ChannelName>,
    connected: bool,
    /// Who the client is, once authenticated (authentication on).
    identity: Option<Box<Identity>>,
    /// The next authentication deadline, with authentication on.
    auth_timer: Option<AuthTimer>,
    /// Inbound frame rate (`--command-rate`).
    frames: Option<TokenBucket>,
    /// Publish rate (`--publish-rate`).
    publishes: Option<Box<PublishLimit>>,
    /// The admission place; given back when the session ends.
    _ticket: Ticket,
}

impl Session {
    fn on_message(&mut self, message: Message) -> Step {
        match (message, self.peer.encoding) {
            (Message::Text(text), Encoding::Json) => self.on_command(json::decode_command(&text)),
            (Message::Binary(bytes), Encoding::Protobuf) => self.on_command(protobuf::decode_command(bytes)),
            (Message::Binary(_), Encoding::Json) => Step::Violation(
                close::UNSUPPORTED_DATA,
                "binary frames are not part of pubsub.v1.json",
            ),
            (Message::Text(_), Encoding::Protobuf) => Step::Violation(
                close::UNSUPPORTED_DATA,
                "text frames are not part of pubsub.v1.proto",
            ),
            // tungstenite answers pings itself; either way the client is alive.
            (Message::Ping(_) | Message::Pong(_) | Message::Frame(_), _) => Step::Continue,
            (Message::Close(_), _) => Step::ClientClosed,
        }
    }

    fn apply(&mut self, outcome: Outcome) {
        // While a command waited, the client's frames (pongs included) were
        // not read: it must not look silent because of that.
        self.peer.touch();
        match outcome {
            Outcome::Done => {}
            Outcome::Reply(reply) => self.reply(reply),
            Outcome::SubscribeFailed(channel, reply) => {
                self.subscriptions.remove(&channel);
                self.reply(reply);
            }
        }
    }

    fn reply(&self, message: ServerMessage) {
        self.peer
            .outbox
            .push(Outgoing::Frame(encode(self.peer.encoding, &message)));
    }

    fn log_end(&self, end: &End) {
        let peer = self.peer.id;
        match end {
            End::Requested(c) | End::Killed(c) => {
                tracing::debug!(peer, code = c.code, reason = c.reason, "closing")
            }
            End::Violation(code, reason) => tracing::debug!(peer, code, reason, "protocol violation"),
            End::ReadError(e) => tracing::debug!(peer, error = %e, "read failed"),
            End::WriteError(e) => tracing::debug!(peer, error = %e, "write failed"),
            End::ClientClosed => tracing::debug!(peer, "client closed"),
            End::Gone => tracing::debug!(peer, "connection dropped"),
            End::Panicked => tracing::error!(peer, "session panicked; closed with 1011"),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for channel in self.subscriptions.drain() {
            self.node.hub.unsubscribe(&channel, self.peer.id);
        }
        self.node.registry.remove(self.peer.id);
        self.node.metrics.connections.decrement(1.0);
    }
}

/// The close code for a read error, or `None` when the connection is gone
/// and no close frame can be sent.
fn read_error_close(error: &WsError) -> Option<(u16, &'static str)> {
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            Some((close::MESSAGE_TOO_BIG, "message over the size limit"))
        }
        WsError::Capacity(_) => Some((close::MESSAGE_TOO_BIG, "message over a size limit")),
        WsError::Utf8(_) => Some((close::INVALID_PAYLOAD, "text frame is not valid UTF-8")),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some((close::PROTOCOL_ERROR, "WebSocket protocol violation")),
        _ => None,
    }
}

/// The error code a client gets for a broker failure.
fn broker_error_code(error: &BrokerError) -> ErrorCode {
    match error {
        BrokerError::Unavailable(_) => ErrorCode::Unavailable,
        BrokerError::Internal(_) => ErrorCode::Internal,
        BrokerError::Partial(_, error) => broker_error_code(error),
    }
}

/// Encodes a reply for a client using `encoding`.
pub fn encode(encoding: Encoding, message: &ServerMessage) -> Message {
    match encoding {
        Encoding::Json => Message::Text(Utf8Bytes::from(json::encode_reply(message))),
        Encoding::Protobuf => Message::Binary(protobuf::encode_reply(message).into()),
    }
}
