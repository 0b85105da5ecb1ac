//! One client session, whatever carries it: the protocol state of a
//! connection from its accepted handshake to its end.
//!
//! A transport (`transport::websocket`, and the HTTP streams beside it)
//! owns the socket and drives a [`Session`] from its task:
//! - it hands each inbound message to [`Session::on_inbound`]; commands are
//!   decoded and handled one at a time (`commands.rs`); a command that must
//!   wait (subscribe, publish) is held in the session, and the transport
//!   reads nothing more until it is done ([`Session::ready_for_input`]),
//!   which bounds what one client can have in flight;
//! - it calls [`Session::poll_work`] to move the command in flight and the
//!   authentication timer, and to learn of a close that must not wait;
//! - it writes what the peer's outbox holds, in its own wire form.
//!
//! Every way a session ends is an [`End`], and the cleanup (unsubscribe
//! everywhere, leave the registry, give back the admission ticket) runs in
//! `Drop`, so it also runs if the task panics.
//!
//! Per connection the session also enforces authentication (a `connect`
//! within the handshake timeout, `token_expiring` ahead of the token's
//! expiry, close 4001 at expiry unless refreshed) and the inbound rate (a
//! client sending faster than `--command-rate` is simply read more
//! slowly).

mod commands;
mod orders;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use pubsub_proto::{ChannelName, Encoding, ErrorCode, ServerMessage, close, json, protobuf};

use crate::auth::Identity;
use crate::frame::CloseRequest;
use crate::hub::HubError;
use crate::limits::{Ticket, TokenBucket};
use crate::node::Node;
use crate::outbox::Outbox;
use crate::peer::Peer;

/// A command that is waiting for the hub or the broker.
type Pending = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// What a finished command leaves to do.
enum Outcome {
    /// Queue this reply.
    Reply(ServerMessage),
    /// Nothing: the hub already queued the reply.
    Done,
    /// The subscribe failed: forget the channel and queue the error (none
    /// for a server-side subscribe: nobody asked).
    SubscribeFailed(ChannelName, Option<ServerMessage>),
}

/// What the reader wants after one inbound message.
enum Step {
    Continue,
    Wait(Pending),
    /// The client broke the protocol (or its token is bad): close with this code.
    Violation(u16, &'static str),
}

/// One inbound message, as a transport received it.
pub enum Inbound {
    /// A text message (JSON commands).
    Text(Bytes),
    /// A binary message (protobuf commands).
    Binary(Bytes),
    /// A transport-level sign of life (a WebSocket ping or pong): counts
    /// as traffic and against the inbound rate, carries no command.
    Heartbeat,
}

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    /// A close was requested through the outbox and everything before it
    /// was written (drain).
    Requested(CloseRequest),
    /// A close that does not wait for the queue (slow consumer, stale).
    Killed(CloseRequest),
    /// The client broke the protocol, or must leave (bad token): close
    /// with this code and reason.
    Violation(u16, &'static str),
    /// The client closed the session.
    ClientClosed,
    /// The connection ended or failed without a close (reset, I/O error);
    /// nothing can be sent any more.
    Gone(String),
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

/// One client's protocol state.
pub struct Session {
    node: Arc<Node>,
    peer: Arc<Peer>,
    /// Channels subscribed, or being subscribed, by this session.
    subscriptions: HashSet<ChannelName>,
    connected: bool,
    /// Who the client is, once authenticated (authentication on).
    identity: Option<Box<Identity>>,
    /// The next authentication deadline, with authentication on.
    auth_timer: Option<AuthTimer>,
    /// A command waiting for the hub or the broker.
    pending: Option<Pending>,
    /// Inbound message rate (`--command-rate`).
    frames: Option<TokenBucket>,
    /// Set while the client sends faster than its inbound rate.
    throttle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Publish rate (`--publish-rate`).
    publishes: Option<Box<PublishLimit>>,
    /// Subscribe rate (`--subscribe-rate`, bursts of `--max-subscriptions`).
    subscribes: Option<TokenBucket>,
    /// The admission place; given back when the session ends.
    _ticket: Ticket,
}

impl Session {
    /// A new session for a client admitted with `ticket` (and `identity`,
    /// if it authenticated at the handshake): registers its peer, which
    /// others use to reach it.
    pub fn new(
        node: Arc<Node>,
        encoding: Encoding,
        ticket: Ticket,
        identity: Option<Box<Identity>>,
    ) -> Session {
        let config = &node.config;
        let outbox = Outbox::new(config.outbound_queue_bytes, config.outbound_queue_messages);
        let id = node.clients.next_id();
        let peer = Arc::new(Peer::new(
            id,
            node.clients.client_prefix(),
            encoding,
            outbox,
            node.clients.epoch,
        ));
        node.clients.registry.insert(peer.clone());
        node.metrics.connections.increment(1.0);
        node.metrics.connections_total.increment(1);
        // Admitted just as the drain began (after its last sweep): leave too.
        if node.lifecycle.is_draining() {
            peer.outbox
                .close(crate::registry::drain_close(config.drain_reconnect_jitter));
        }
        // Authenticated at the handshake: it is someone already, whether or
        // not it sends `connect` (presence shows who).
        if let Some(identity) = &identity {
            peer.set_who(crate::peer::Who {
                user: identity.user.as_str().into(),
                info: identity.info.clone(),
            });
        }
        tracing::debug!(peer = peer.id, ?encoding, "session started");
        let frames = (config.command_rate > 0).then(|| TokenBucket::per_second(config.command_rate));
        let publishes = (config.publish_rate > 0).then(|| {
            Box::new(PublishLimit {
                bucket: TokenBucket::per_second(config.publish_rate),
                refused: 0,
                since: Instant::now(),
            })
        });
        let subscribes = (config.subscribe_rate > 0)
            .then(|| TokenBucket::with_burst(config.subscribe_rate, config.max_subscriptions));
        let mut session = Session {
            node,
            peer,
            subscriptions: HashSet::new(),
            connected: false,
            identity,
            auth_timer: None,
            pending: None,
            frames,
            throttle: None,
            publishes,
            subscribes,
            _ticket: ticket,
        };
        session.auth_timer = session.next_auth_timer();
        session
    }

    /// The handle the hub and the registry hold on this client.
    pub fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }

    /// The node this session runs on.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Moves what the session waits on: a close that must not wait (which
    /// ends it), the authentication timer, the command in flight. Registers
    /// the task's waker with the outbox first, so a push or close after
    /// this wakes the task. `Ok(true)`: something moved.
    pub fn poll_work(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        self.peer.outbox.register(cx.waker());
        if let Some(close) = self.peer.outbox.kill_request() {
            return Err(End::Killed(close));
        }
        let mut progress = false;
        if let Some(timer) = self.auth_timer.as_mut()
            && timer.sleep.as_mut().poll(cx).is_ready()
        {
            let event = timer.event;
            self.auth_timer = None;
            if let Some(end) = self.on_auth_event(event) {
                return Err(end);
            }
            progress = true;
        }
        // Server-side orders run between the client's own commands.
        if self.pending.is_none()
            && let Some(order) = self.peer.outbox.take_order()
        {
            self.on_order(order);
            progress = true;
        }
        if let Some(command) = self.pending.as_mut()
            && let Poll::Ready(outcome) = command.as_mut().poll(cx)
        {
            self.pending = None;
            self.apply(outcome);
            progress = true;
        }
        Ok(progress)
    }

    /// True when the transport may hand over the next inbound message: no
    /// command is in flight and the inbound rate allows it. When false,
    /// the task is woken once that changes.
    pub fn ready_for_input(&mut self, cx: &mut Context<'_>) -> bool {
        if self.pending.is_some() {
            return false;
        }
        let Some(sleep) = self.throttle.as_mut() else {
            return true;
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.throttle = None;
        true
    }

    /// One inbound message: rate accounting, then the command it carries.
    /// `Some(end)`: the session must end.
    pub fn on_inbound(&mut self, inbound: Inbound) -> Option<End> {
        self.peer.touch();
        if let Some(bucket) = self.frames.as_mut() {
            let wait = bucket.take_or_owe();
            if !wait.is_zero() {
                self.node.metrics.reject("command_rate");
                self.throttle = Some(Box::pin(tokio::time::sleep(wait)));
            }
        }
        let step = match (inbound, self.peer.encoding) {
            (Inbound::Text(text), Encoding::Json) => match std::str::from_utf8(&text) {
                Ok(text) => self.on_command(json::decode_command(text)),
                Err(_) => Step::Violation(close::INVALID_PAYLOAD, "text is not valid UTF-8"),
            },
            (Inbound::Binary(bytes), Encoding::Protobuf) => self.on_command(protobuf::decode_command(bytes)),
            (Inbound::Binary(_), Encoding::Json) => Step::Violation(
                close::UNSUPPORTED_DATA,
                "binary frames are not part of pubsub.v1.json",
            ),
            (Inbound::Text(_), Encoding::Protobuf) => Step::Violation(
                close::UNSUPPORTED_DATA,
                "text frames are not part of pubsub.v1.proto",
            ),
            (Inbound::Heartbeat, _) => Step::Continue,
        };
        match step {
            Step::Continue => None,
            Step::Wait(command) => {
                self.pending = Some(command);
                None
            }
            Step::Violation(code, reason) => Some(End::Violation(code, reason)),
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
                if let Some(reply) = reply {
                    self.reply(reply);
                }
            }
        }
    }

    fn reply(&self, message: ServerMessage) {
        self.peer.reply(&message);
    }

    /// Logs how the session ended and counts slow-consumer closes.
    pub fn log_end(&self, end: &End) {
        let peer = self.peer.id;
        match end {
            End::Requested(c) | End::Killed(c) => {
                if c.code == close::SLOW_CONSUMER {
                    self.node.metrics.slow_consumer_disconnects.increment(1);
                }
                tracing::debug!(peer, code = c.code, reason = c.reason, "closing")
            }
            End::Violation(code, reason) => tracing::debug!(peer, code, reason, "protocol violation"),
            End::ClientClosed => tracing::debug!(peer, "client closed"),
            End::Gone(detail) => tracing::debug!(peer, %detail, "connection dropped"),
            End::Panicked => tracing::error!(peer, "session panicked; closed with 1011"),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for channel in self.subscriptions.drain() {
            self.node.hub.unsubscribe(&channel, self.peer.id);
        }
        self.node.clients.registry.remove(self.peer.id);
        self.node.metrics.connections.decrement(1.0);
    }
}

/// The error code a client gets for a hub failure.
fn error_code(error: &HubError) -> ErrorCode {
    match error {
        HubError::TooLarge { .. } => ErrorCode::TooLarge,
        HubError::Unavailable(_) => ErrorCode::Unavailable,
        HubError::Internal(_) => ErrorCode::Internal,
        HubError::NotAvailable(_) => ErrorCode::NotAvailable,
        HubError::LimitExceeded(_) => ErrorCode::LimitExceeded,
    }
}
