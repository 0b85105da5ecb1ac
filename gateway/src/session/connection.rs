//! The session's event loop, written as one explicit state machine.
//!
//! An idle connection is this struct and nothing else: the session state,
//! the WebSocket, and at most a command in flight and a throttle timer. One
//! `poll` does, in a loop until nothing moves:
//! 1. end the session if the outbox carries a close that must not wait;
//! 2. fire the authentication timer if it is due;
//! 3. poll the command in flight;
//! 4. read one message (when no command is in flight and not throttled);
//! 5. write: take what the outbox holds, hand it to the socket, flush.
//!
//! Every path that returns `Pending` has registered the task's waker with
//! whatever it waits on: the socket (read and write), the outbox, the command
//! or a timer.
//!
//! The connection *is* its task's future (no async wrapper around it): the
//! task holds exactly this state while the connection is open, and the close
//! path's state is allocated only when the connection ends. Written with
//! async/await, the same loop kept every branch's future and moved-from
//! values side by side and cost about 1 KiB more per connection.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, SinkExt, StreamExt};
use pubsub_proto::close;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::{End, Pending, Session, Step, read_error_close};
use crate::outbox::{Outgoing, Taken};

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
    /// A command waiting for the hub or the broker.
    pending: Option<Pending>,
    /// Set while the client sends faster than its frame rate.
    throttle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Taken from the outbox, not yet handed to the socket.
    outgoing: VecDeque<Outgoing>,
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
            pending: None,
            throttle: None,
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

impl<S> Open<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        for _ in 0..BUDGET {
            // Register before looking: a push or close after this wakes us.
            self.session.peer.outbox.register(cx.waker());
            if let Some(close) = self.session.peer.outbox.kill_request() {
                return Poll::Ready(End::Killed(close));
            }
            let mut progress = false;
            if let Some(timer) = self.session.auth_timer.as_mut()
                && timer.sleep.as_mut().poll(cx).is_ready()
            {
                let event = timer.event;
                self.session.auth_timer = None;
                if let Some(end) = self.session.on_auth_event(event) {
                    return Poll::Ready(end);
                }
                progress = true;
            }
            if let Some(command) = self.pending.as_mut()
                && let Poll::Ready(outcome) = command.as_mut().poll(cx)
            {
                self.pending = None;
                self.session.apply(outcome);
                progress = true;
            }
            if self.pending.is_none() && !self.throttled(cx) {
                match self.ws.poll_next_unpin(cx) {
                    Poll::Ready(None) => return Poll::Ready(End::Gone),
                    Poll::Ready(Some(Err(error))) => return Poll::Ready(End::ReadError(error)),
                    Poll::Ready(Some(Ok(message))) => {
                        progress = true;
                        if let Some(end) = self.on_inbound(message) {
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

    /// One inbound message: rate accounting, then the session handles it.
    fn on_inbound(&mut self, message: Message) -> Option<End> {
        self.session.peer.touch();
        if let Some(bucket) = self.session.frames.as_mut()
            && !bucket.try_take()
        {
            self.session.node.metrics.reject("command_rate");
            self.throttle = Some(Box::pin(tokio::time::sleep(bucket.wait_time())));
        }
        match self.session.on_message(message) {
            Step::Continue => None,
            Step::Wait(command) => {
                self.pending = Some(command);
                None
            }
            Step::Violation(code, reason) => Some(End::Violation(code, reason)),
            Step::ClientClosed => Some(End::ClientClosed),
        }
    }

    /// True while the frame-rate throttle holds reading back.
    fn throttled(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(sleep) = self.throttle.as_mut() else {
            return false;
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return true;
        }
        self.throttle = None;
        false
    }

    /// Moves queued frames to the socket and flushes. `Ready` ends the
    /// session (a requested close once everything is written, or an error).
    fn poll_writes(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        if self.poll_gather(cx).is_pending() {
            return Poll::Pending;
        }
        let encoding = self.session.peer.encoding;
        let mut delivered = 0;
        let mut handed = 0;
        let result = loop {
            if handed >= WRITE_BUDGET {
                // A steady stream of frames: flush what was handed over, let
                // other tasks run, then carry on.
                if self.flushing {
                    match Pin::new(&mut self.ws).poll_flush(cx) {
                        Poll::Ready(Ok(())) => self.flushing = false,
                        Poll::Ready(Err(error)) => break Poll::Ready(End::WriteError(error)),
                        Poll::Pending => break Poll::Pending,
                    }
                }
                cx.waker().wake_by_ref();
                break Poll::Pending;
            }
            if self.outgoing.is_empty() {
                match self.session.peer.outbox.take() {
                    Taken::Items(items) => self.outgoing = items,
                    Taken::Close(close) if !self.flushing => break Poll::Ready(End::Requested(close)),
                    Taken::Close(_) | Taken::Empty if self.flushing => {
                        match Pin::new(&mut self.ws).poll_flush(cx) {
                            Poll::Ready(Ok(())) => {
                                self.flushing = false;
                                continue;
                            }
                            Poll::Ready(Err(error)) => break Poll::Ready(End::WriteError(error)),
                            Poll::Pending => break Poll::Pending,
                        }
                    }
                    Taken::Close(_) | Taken::Empty => break Poll::Pending,
                }
            }
            // Hand over everything the socket takes; one flush for the lot.
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => break Poll::Ready(End::WriteError(error)),
                Poll::Pending => break Poll::Pending,
            }
            let Some(item) = self.outgoing.pop_front() else {
                continue;
            };
            delivered += u64::from(matches!(&item, Outgoing::Publication(d) if d.is_publication()));
            if let Err(error) = Pin::new(&mut self.ws).start_send(item.into_message(encoding)) {
                break Poll::Ready(End::WriteError(error));
            }
            self.flushing = true;
            handed += 1;
            if self.outgoing.is_empty() {
                // Give the batch's memory back; an idle connection holds none.
                self.outgoing = VecDeque::new();
            }
        };
        if delivered > 0 {
            self.session.node.metrics.delivered.increment(delivered);
        }
        result
    }

    /// `--write-delay`: when frames arrive at an idle writer, waits that long
    /// before writing so that what is published meanwhile shares the write
    /// (one syscall, one TCP segment) instead of one write per frame. Only
    /// a close that must not wait skips the delay.
    fn poll_gather(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let delay = self.session.node.config.write_delay;
        if delay.is_zero() {
            return Poll::Ready(());
        }
        if self.gather.is_none() {
            let idle = self.outgoing.is_empty() && !self.flushing;
            if !idle || !self.session.peer.outbox.has_items() {
                return Poll::Ready(());
            }
            self.gather = Some(Box::pin(tokio::time::sleep(delay)));
        }
        let Some(timer) = self.gather.as_mut() else {
            return Poll::Ready(());
        };
        if timer.as_mut().poll(cx).is_pending() && self.session.peer.outbox.kill_request().is_none() {
            return Poll::Pending;
        }
        self.gather = None;
        Poll::Ready(())
    }

    /// Sends the close frame `end` calls for and waits (bounded) for the
    /// client's answer.
    async fn finish(mut self, end: End) {
        let (code, reason): (u16, Cow<'static, str>) = match &end {
            End::Requested(close) | End::Killed(close) => (close.code, close.reason_text()),
            End::Violation(code, reason) => (*code, Cow::Borrowed(*reason)),
            End::ReadError(error) => match read_error_close(error) {
                Some((code, reason)) => (code, Cow::Borrowed(reason)),
                None => return self.session.log_end(&end),
            },
            End::ClientClosed => {
                // tungstenite queued the echo of the client's close; send it.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.flush()).await;
                return self.session.log_end(&end);
            }
            End::WriteError(_) | End::Gone => return self.session.log_end(&end),
            End::Panicked => (close::INTERNAL_ERROR, Cow::Borrowed("internal error")),
        };
        if code == close::SLOW_CONSUMER {
            self.session.node.metrics.slow_consumer_disconnects.increment(1);
        }
        self.session.log_end(&end);
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: match reason {
                Cow::Borrowed(text) => Utf8Bytes::from_static(text),
                Cow::Owned(text) => Utf8Bytes::from(text),
            },
        };
        let encoding = self.session.peer.encoding;
        let (session, ws) = (&self.session, &mut self.ws);
        let closed = tokio::time::timeout(CLOSE_TIMEOUT, async {
            // A violation may follow a reply that explains it (the error for a
            // bad token): write what is queued before the close frame.
            if matches!(end, End::Violation(..))
                && let Taken::Items(items) = session.peer.outbox.take()
            {
                for item in items {
                    ws.feed(item.into_message(encoding)).await?;
                }
            }
            ws.send(Message::Close(Some(frame))).await?;
            // Read until the client answers the close (or goes away).
            while let Some(Ok(_)) = ws.next().await {}
            Ok::<(), WsError>(())
        })
        .await;
        if !matches!(closed, Ok(Ok(()))) {
            tracing::debug!(peer = self.session.peer.id, "close handshake did not complete");
        }
    }
}
