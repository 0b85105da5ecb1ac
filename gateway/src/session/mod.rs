//! One WebSocket connection, from the completed handshake to the close.
//!
//! The session task owns the socket. Two things run inside it, side by side:
//! - the **reader** decodes commands and handles them one at a time. A
//!   command that must wait (subscribe, publish) parks the reader until it
//!   is done, which bounds what one client can have in flight;
//! - the **writer** takes everything queued in the peer's outbox, writes it
//!   and flushes once, so a burst costs one syscall, not one per frame.
//!
//! Reading and writing never block each other: a client that does not read
//! fills its outbox and is closed with 4008 while its commands are still
//! read. Every way a session ends goes through [`End`], and the cleanup
//! (unsubscribe everywhere, leave the registry, give back the admission
//! ticket) runs in `Drop`, so it also runs if the task panics.
//!
//! Per connection, the session also enforces: authentication (a `connect`
//! within the handshake timeout, `token_expiring` ahead of the token's
//! expiry, close 4001 at expiry unless refreshed) and the frame rate (a
//! client sending faster than `--command-rate` is simply read more slowly).
//! The commands themselves, with their permission and limit checks, are in
//! `commands.rs`.

mod commands;

use std::collections::HashSet;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use broker_adapter::BrokerError;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use pubsub_proto::{ChannelName, Encoding, ErrorCode, ServerMessage, close, json, protobuf};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::auth::Identity;
use crate::limits::{Ticket, TokenBucket};
use crate::node::Node;
use crate::outbox::{CloseRequest, Outgoing, Taken};
use crate::peer::Peer;

/// How long a close handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;
type Stream<S> = SplitStream<WebSocketStream<S>>;

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
    /// The client broke the protocol: close with this code.
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

/// Runs one connection until it closes. `ticket` is its admission;
/// `identity` its token, if it authenticated at the upgrade.
pub async fn run<S>(
    ws: WebSocketStream<S>,
    encoding: Encoding,
    node: Arc<Node>,
    ticket: Ticket,
    identity: Option<Identity>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = Arc::new(Peer::new(
        node.next_session_id(),
        encoding,
        crate::outbox::Outbox::new(
            node.config.outbound_queue_bytes,
            node.config.outbound_queue_messages,
        ),
        node.epoch,
    ));
    node.registry.insert(peer.clone());
    node.metrics.connections.increment(1.0);
    node.metrics.connections_total.increment(1);
    // Upgraded just as the drain began (after its last sweep): leave too.
    if node.is_draining() {
        peer.outbox.close(crate::registry::drain_close());
    }
    tracing::debug!(peer = peer.id, ?encoding, "session started");

    let frames = (node.config.command_rate > 0).then(|| TokenBucket::per_second(node.config.command_rate));
    let publishes = (node.config.publish_rate > 0).then(|| TokenBucket::per_second(node.config.publish_rate));
    let mut session = Session {
        node,
        peer,
        subscriptions: HashSet::new(),
        connected: false,
        identity,
        auth_timer: None,
        frames,
        publishes,
        publish_refusals: (0, Instant::now()),
        _ticket: ticket,
    };
    session.auth_timer = session.next_auth_timer();
    let (mut sink, mut stream) = ws.split();
    // A bug in a session must not take the node down, and the client gets
    // a proper close (1011) rather than a dropped socket.
    let end = AssertUnwindSafe(session.serve(&mut sink, &mut stream))
        .catch_unwind()
        .await
        .unwrap_or(End::Panicked);
    session.finish(end, &mut sink, &mut stream).await;
}

struct Session {
    node: Arc<Node>,
    peer: Arc<Peer>,
    /// Channels subscribed, or being subscribed, by this session.
    subscriptions: HashSet<ChannelName>,
    connected: bool,
    /// Who the client is, once authenticated (authentication on).
    identity: Option<Identity>,
    /// The next authentication deadline, with authentication on.
    auth_timer: Option<AuthTimer>,
    /// Inbound frame rate (`--command-rate`).
    frames: Option<TokenBucket>,
    /// Publish rate (`--publish-rate`).
    publishes: Option<TokenBucket>,
    /// Publishes refused for rate since the window began.
    publish_refusals: (u32, Instant),
    /// The admission place; given back when the session ends.
    _ticket: Ticket,
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

impl Session {
    async fn serve<S>(&mut self, sink: &mut Sink<S>, stream: &mut Stream<S>) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (peer, node) = (self.peer.clone(), self.node.clone());
        let writer = write_loop(sink, &peer, &node);
        tokio::pin!(writer);
        let mut pending: Option<Pending> = None;
        // Set while the client sends faster than its frame rate.
        let mut throttle: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            tokio::select! {
                biased;
                close = peer.outbox.killed() => return End::Killed(close),
                end = &mut writer => return end,
                event = poll_fn(|cx| match self.auth_timer.as_mut() {
                    Some(timer) => timer.sleep.as_mut().poll(cx).map(|()| timer.event),
                    None => Poll::Pending,
                }), if self.auth_timer.is_some() => {
                    if let Some(end) = self.on_auth_event(event) {
                        return end;
                    }
                }
                outcome = poll_fn(|cx| match pending.as_mut() {
                    Some(command) => command.as_mut().poll(cx),
                    None => Poll::Pending,
                }), if pending.is_some() => {
                    pending = None;
                    self.apply(outcome);
                }
                () = poll_fn(|cx| match throttle.as_mut() {
                    Some(sleep) => sleep.as_mut().poll(cx),
                    None => Poll::Pending,
                }), if throttle.is_some() => throttle = None,
                inbound = stream.next(), if pending.is_none() && throttle.is_none() => match inbound {
                    None => return End::Gone,
                    Some(Err(error)) => return End::ReadError(error),
                    Some(Ok(message)) => {
                        self.peer.touch();
                        if let Some(bucket) = self.frames.as_mut()
                            && !bucket.try_take()
                        {
                            self.node.metrics.reject("command_rate");
                            throttle = Some(Box::pin(tokio::time::sleep(bucket.wait_time())));
                        }
                        match self.on_message(message) {
                            Step::Continue => {}
                            Step::Wait(command) => pending = Some(command),
                            Step::Violation(code, reason) => return End::Violation(code, reason),
                            Step::ClientClosed => return End::ClientClosed,
                        }
                    }
                },
            }
        }
    }

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

    /// Sends the close frame `end` calls for and waits (bounded) for the
    /// client's answer.
    async fn finish<S>(&self, end: End, sink: &mut Sink<S>, stream: &mut Stream<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (code, reason): (u16, &str) = match &end {
            End::Requested(close) | End::Killed(close) => (close.code, close.reason),
            End::Violation(code, reason) => (*code, reason),
            End::ReadError(error) => match read_error_close(error) {
                Some(close) => close,
                None => return self.log_end(&end),
            },
            End::ClientClosed => {
                // tungstenite queued the echo of the client's close; send it.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.flush()).await;
                return self.log_end(&end);
            }
            End::WriteError(_) | End::Gone => return self.log_end(&end),
            End::Panicked => (close::INTERNAL_ERROR, "internal error"),
        };
        if code == close::SLOW_CONSUMER {
            self.node.metrics.slow_consumer_disconnects.increment(1);
        }
        self.log_end(&end);
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from(reason),
        };
        let closed = tokio::time::timeout(CLOSE_TIMEOUT, async {
            // A violation may follow a reply that explains it (the error for a
            // bad token): write what is queued before the close frame.
            if matches!(end, End::Violation(..))
                && let Taken::Items(items) = self.peer.outbox.take()
            {
                for item in items {
                    sink.feed(item.into_message(self.peer.encoding)).await?;
                }
            }
            sink.send(Message::Close(Some(frame))).await?;
            // Read until the client answers the close (or goes away).
            while let Some(Ok(_)) = stream.next().await {}
            Ok::<(), WsError>(())
        })
        .await;
        if !matches!(closed, Ok(Ok(()))) {
            tracing::debug!(peer = self.peer.id, "close handshake did not complete");
        }
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

/// Writes whatever the outbox holds, one flush per batch, until a close is
/// requested or the socket fails.
async fn write_loop<S>(sink: &mut Sink<S>, peer: &Peer, node: &Node) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match peer.outbox.take() {
            Taken::Items(items) => {
                let mut publications = 0;
                for item in items {
                    publications +=
                        u64::from(matches!(&item, Outgoing::Publication(d) if d.is_publication()));
                    if let Err(error) = sink.feed(item.into_message(peer.encoding)).await {
                        return End::WriteError(error);
                    }
                }
                if let Err(error) = sink.flush().await {
                    return End::WriteError(error);
                }
                if publications > 0 {
                    node.metrics.delivered.increment(publications);
                }
            }
            Taken::Close(close) => return End::Requested(close),
            Taken::Empty => peer.outbox.ready().await,
        }
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
    }
}

/// Encodes a reply for a client using `encoding`.
pub fn encode(encoding: Encoding, message: &ServerMessage) -> Message {
    match encoding {
        Encoding::Json => Message::Text(Utf8Bytes::from(json::encode_reply(message))),
        Encoding::Protobuf => Message::Binary(protobuf::encode_reply(message).into()),
    }
}
