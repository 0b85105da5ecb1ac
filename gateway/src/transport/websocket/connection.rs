//! One WebSocket connection's task, written as one explicit state machine.
//!
//! An idle connection is this struct and nothing else: the session, the
//! WebSocket, and at most a command in flight and a throttle timer inside
//! the session. One `poll` does, in a loop until nothing moves:
//! 1. the session's work: a close that must not wait ends the connection,
//!    the authentication timer, the command in flight;
//! 2. read one message (when the session is ready for input);
//! 3. write: take what the outbox holds, hand it to the socket, flush.
//!
//! Every path that returns `Pending` has registered the task's waker with
//! whatever it waits on: the socket (read and write), the outbox, the
//! command or a timer.
//!
//! The connection *is* its task's future (no async wrapper around it): the
//! task holds exactly this state while the connection is open, and the close
//! path's state is allocated only when the connection ends. Written with
//! async/await, the same loop kept every branch's future and moved-from
//! values side by side and cost about 1 KiB more per connection.
//!
//! This is where the gateway's [`Frame`]s become WebSocket messages and
//! WebSocket messages become [`Inbound`] ones.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, StreamExt};
use pubsub_proto::{Encoding, close};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::frame::Frame;
use crate::outbox::Taken;
use crate::session::{End, Inbound, Session};

/// How long a close handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Rounds of the loop in one poll before yielding to other tasks.
const BUDGET: usize = 64;
/// Frames handed to the socket in one poll before flushing and yielding.
const WRITE_BUDGET: usize = 1024;

/// A connection's task: open, then closing.
///
/// `Open` is held inline, not boxed: it is the state every idle connection
/// sits in, and boxing it would add an allocation per connection.
#[allow(clippy::large_enum_variant)]
pub(super) enum Connection<S> {
    Open(Open<S>),
    /// Sending the close frame and waiting for the client's.
    Closing(Pin<Box<dyn Future<Output = ()> + Send>>),
    Done,
}

/// An open connection.
pub(super) struct Open<S> {
    session: Session,
    ws: WebSocketStream<S>,
    /// Taken from the outbox, not yet handed to the socket.
    outgoing: VecDeque<Frame>,
    /// Frames handed to the socket and not yet flushed.
    flushing: bool,
    /// With `--write-delay`: armed when frames arrive at an idle writer;
    /// the frames queued until it fires go out in one write.
    gather: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Connection<S> {
    pub(super) fn new(ws: WebSocketStream<S>, session: Session) -> Connection<S> {
        Connection::Open(Open {
            session,
            ws,
            outgoing: VecDeque::new(),
            flushing: false,
            gather: None,
        })
    }
}

impl<S> Future for Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this {
                Connection::Open(open) => {
                    // A bug in a session must not take the node down, and the
                    // client gets a proper close (1011), not a dropped socket.
                    let end = match std::panic::catch_unwind(AssertUnwindSafe(|| open.poll_serve(cx))) {
                        Ok(Poll::Pending) => return Poll::Pending,
                        Ok(Poll::Ready(end)) => end,
                        Err(_) => End::Panicked,
                    };
                    let Connection::Open(open) = std::mem::replace(this, Connection::Done) else {
                        unreachable!("matched Open above");
                    };
                    *this = Connection::Closing(Box::pin(open.finish(end)));
                }
                Connection::Closing(closing) => {
                    let done = closing.as_mut().poll(cx);
                    if done.is_ready() {
                        *this = Connection::Done;
                    }
                    return done;
                }
                Connection::Done => return Poll::Ready(()),
            }
        }
    }
}

/// The WebSocket message of a frame for a client using `encoding`.
fn message(frame: Frame, encoding: Encoding) -> Message {
    let bytes = match frame {
        Frame::Publication(delivery) => delivery.encoded(encoding),
        Frame::Message(bytes) => bytes,
        Frame::Ping => return Message::Ping(Bytes::new()),
    };
    match encoding {
        // JSON frames are made from Rust strings; the check cannot fail.
        Encoding::Json => match Utf8Bytes::try_from(bytes) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Close(Some(CloseFrame {
                code: CloseCode::from(close::INTERNAL_ERROR),
                reason: Utf8Bytes::from_static("internal error"),
            })),
        },
        Encoding::Protobuf => Message::Binary(bytes),
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

/// How a read error ends the session.
fn read_error(error: WsError) -> End {
    match read_error_close(&error) {
        Some((code, reason)) => End::Violation(code, reason),
        None => End::Gone(format!("read failed: {error}")),
    }
}

impl<S> Open<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        for _ in 0..BUDGET {
            let mut progress = match self.session.poll_work(cx) {
                Ok(progress) => progress,
                Err(end) => return Poll::Ready(end),
            };
            if self.session.ready_for_input(cx) {
                match self.ws.poll_next_unpin(cx) {
                    Poll::Ready(None) => return Poll::Ready(End::Gone("connection closed".into())),
                    Poll::Ready(Some(Err(error))) => return Poll::Ready(read_error(error)),
                    Poll::Ready(Some(Ok(message))) => {
                        progress = true;
                        let inbound = match message {
                            Message::Text(text) => Inbound::Text(text.into()),
                            Message::Binary(bytes) => Inbound::Binary(bytes),
                            // tungstenite answers pings itself; either way the
                            // client is alive.
                            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Inbound::Heartbeat,
                            Message::Close(_) => return Poll::Ready(End::ClientClosed),
                        };
                        if let Some(end) = self.session.on_inbound(inbound) {
                            return Poll::Ready(end);
                        }
                    }
                    Poll::Pending => {}
                }
            }
            if let Poll::Ready(end) = self.poll_writes(cx) {
                return Poll::Ready(end);
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Busy client: let other tasks run, then carry on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Moves queued frames to the socket and flushes. `Ready` ends the
    /// session (a requested close once everything is written, or an error).
    fn poll_writes(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        if self.poll_gather(cx).is_pending() {
            return Poll::Pending;
        }
        let encoding = self.session.peer().encoding;
        let write_failed = |error: WsError| End::Gone(format!("write failed: {error}"));
        let mut delivered = 0;
        let mut handed = 0;
        let result = loop {
            if handed >= WRITE_BUDGET {
                // A steady stream of frames: flush what was handed over, let
                // other tasks run, then carry on.
                if self.flushing {
                    match Pin::new(&mut self.ws).poll_flush(cx) {
                        Poll::Ready(Ok(())) => self.flushing = false,
                        Poll::Ready(Err(error)) => break Poll::Ready(write_failed(error)),
                        Poll::Pending => break Poll::Pending,
                    }
                }
                cx.waker().wake_by_ref();
                break Poll::Pending;
            }
            if self.outgoing.is_empty() {
                match self.session.peer().outbox.take() {
                    Taken::Items(items) => self.outgoing = items,
                    Taken::Close(close) if !self.flushing => break Poll::Ready(End::Requested(close)),
                    Taken::Close(_) | Taken::Empty if self.flushing => {
                        match Pin::new(&mut self.ws).poll_flush(cx) {
                            Poll::Ready(Ok(())) => {
                                self.flushing = false;
                                continue;
                            }
                            Poll::Ready(Err(error)) => break Poll::Ready(write_failed(error)),
                            Poll::Pending => break Poll::Pending,
                        }
                    }
                    Taken::Close(_) | Taken::Empty => break Poll::Pending,
                }
            }
            // Hand over everything the socket takes; one flush for the lot.
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => break Poll::Ready(write_failed(error)),
                Poll::Pending => break Poll::Pending,
            }
            let Some(frame) = self.outgoing.pop_front() else {
                continue;
            };
            delivered += u64::from(frame.is_publication());
            if let Err(error) = Pin::new(&mut self.ws).start_send(message(frame, encoding)) {
                break Poll::Ready(write_failed(error));
            }
            self.flushing = true;
            handed += 1;
            if self.outgoing.is_empty() {
                // Give the batch's memory back; an idle connection holds none.
                self.outgoing = VecDeque::new();
            }
        };
        if delivered > 0 {
            self.session.node().metrics.delivered.increment(delivered);
        }
        result
    }

    /// `--write-delay`: when frames arrive at an idle writer, waits that long
    /// before writing so that what is published meanwhile shares the write
    /// (one syscall, one TCP segment) instead of one write per frame. Only
    /// a close that must not wait skips the delay.
    fn poll_gather(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let delay = self.session.node().config.write_delay;
        if delay.is_zero() {
            return Poll::Ready(());
        }
        let outbox = &self.session.peer().outbox;
        if self.gather.is_none() {
            let idle = self.outgoing.is_empty() && !self.flushing;
            if !idle || !outbox.has_items() {
                return Poll::Ready(());
            }
            self.gather = Some(Box::pin(tokio::time::sleep(delay)));
        }
        let Some(timer) = self.gather.as_mut() else {
            return Poll::Ready(());
        };
        if timer.as_mut().poll(cx).is_pending() && outbox.kill_request().is_none() {
            return Poll::Pending;
        }
        self.gather = None;
        Poll::Ready(())
    }

    /// Sends the close frame `end` calls for and waits (bounded) for the
    /// client's answer.
    async fn finish(mut self, end: End) {
        self.session.log_end(&end);
        let (code, reason): (u16, Cow<'static, str>) = match &end {
            End::Requested(close) | End::Killed(close) => (close.code, close.reason_text()),
            End::Violation(code, reason) => (*code, Cow::Borrowed(*reason)),
            End::ClientClosed => {
                // tungstenite queued the echo of the client's close; send it.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.flush()).await;
                return;
            }
            End::Gone(_) => return,
            End::Panicked => (close::INTERNAL_ERROR, Cow::Borrowed("internal error")),
        };
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: match reason {
                Cow::Borrowed(text) => Utf8Bytes::from_static(text),
                Cow::Owned(text) => Utf8Bytes::from(text),
            },
        };
        let encoding = self.session.peer().encoding;
        // A violation may follow a reply that explains it (the error for a
        // bad token): write what is queued before the close frame.
        let explanation = match &end {
            End::Violation(..) => match self.session.peer().outbox.take() {
                Taken::Items(items) => items,
                _ => VecDeque::new(),
            },
            _ => VecDeque::new(),
        };
        let ws = &mut self.ws;
        let closed = tokio::time::timeout(CLOSE_TIMEOUT, async {
            for frame in explanation {
                ws.feed(message(frame, encoding)).await?;
            }
            ws.send(Message::Close(Some(frame))).await?;
            // Read until the client answers the close (or goes away).
            while let Some(Ok(_)) = ws.next().await {}
            Ok::<(), WsError>(())
        })
        .await;
        if !matches!(closed, Ok(Ok(()))) {
            tracing::debug!(peer = self.session.peer().id, "close handshake did not complete");
        }
    }
}
