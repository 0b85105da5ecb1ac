//! One WebSocket connection's task, written as one explicit state machine.
//!
//! An idle connection is this struct and nothing else: the session, the
//! socket, and at most a command in flight and a throttle timer inside the
//! session. One `poll` does, in a loop until nothing moves:
//! 1. the session's work: a close that must not wait ends the connection,
//!    the authentication timer, the command in flight;
//! 2. read one message (when the session is ready for input);
//! 3. write: take what the outbox holds, turn it into frames, flush.
//!
//! Every path that returns `Pending` has registered the task's waker with
//! whatever it waits on: the socket (read and write), the outbox, the
//! command or a timer.
//!
//! The connection *is* its task's future (no async wrapper around it): the
//! task holds exactly this state while the connection is open, and the close
//! path's state is allocated only when the connection ends.
//!
//! This is where the gateway's [`Frame`]s become WebSocket frames, each
//! publication's compressed form shared by every subscriber that
//! negotiated compression.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pubsub_proto::{Encoding, close};
use tokio::io::{AsyncRead, AsyncWrite};

use super::socket::{Incoming, Socket, SocketError};
use crate::frame::Frame;
use crate::outbox::Taken;
use crate::session::{End, Inbound, Session};

/// How long a close handshake may take before the socket is dropped.
/// Reading on meanwhile matters: a socket closed with the client's frames
/// unread (its pongs, say) is reset, and the reset discards the close frame
/// the client has not read yet.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Rounds of the loop in one poll before yielding to other tasks.
const BUDGET: usize = 64;
/// Frames are gathered up to this many bytes before a write; the writer
/// flushes after each batch, so small batches still go out at once.
const WRITE_BUFFER: usize = crate::outbox::FULL_WRITE;
/// Frames written in one poll before yielding to other tasks.
const WRITE_BUDGET: usize = 1024;
/// Where a connection's average time between frames starts: a second, so
/// that a stream is recognised after some twenty frames in quick
/// succession, never after one or two (a subscribe reply followed at once by
/// a publication is not a stream).
const FRAME_GAP_START_US: u32 = 1_000_000;

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
    socket: Socket<S>,
    /// Taken from the outbox, not yet framed.
    outgoing: VecDeque<Frame>,
    /// Frames queued on the socket and not yet flushed.
    flushing: bool,
    /// Armed when frames arrive at an idle writer that should wait (a
    /// fixed `--write-delay`, or a stream of frames): the frames queued
    /// until it fires go out in one write.
    gather: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When this connection last started a write, in microseconds since
    /// the node's clock epoch (0: never).
    last_write_us: u64,
    /// Moving average of the time between the frames it writes (µs): below
    /// the coalescing window, the connection is receiving a stream and
    /// gathers.
    frame_gap_us: u32,
}

impl<S> Connection<S> {
    pub(super) fn new(socket: Socket<S>, session: Session) -> Connection<S> {
        Connection::Open(Open {
            session,
            socket,
            outgoing: VecDeque::new(),
            flushing: false,
            gather: None,
            last_write_us: 0,
            frame_gap_us: FRAME_GAP_START_US,
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

/// What a socket error means for the session.
fn read_error(error: SocketError) -> End {
    match error {
        SocketError::Protocol(code, reason) => End::Violation(code, reason),
        SocketError::Io(error) => End::Gone(format!("read failed: {error}")),
    }
}

/// Counts of one write batch, recorded once per batch.
#[derive(Default)]
struct Written {
    publications: u64,
    /// Payload bytes of the messages sent compressed, before and after.
    uncompressed: u64,
    compressed: u64,
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
                match self.socket.poll_read(cx) {
                    Poll::Ready(Err(error)) => return Poll::Ready(read_error(error)),
                    Poll::Ready(Ok(incoming)) => {
                        progress = true;
                        let inbound = match incoming {
                            Incoming::Text(text) => Inbound::Text(text),
                            Incoming::Binary(bytes) => Inbound::Binary(bytes),
                            Incoming::Heartbeat => Inbound::Heartbeat,
                            Incoming::Close(_) => return Poll::Ready(End::ClientClosed),
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

    /// Queues one frame on the socket, compressed when the connection
    /// negotiated it and the payload is large enough to gain.
    fn put(&mut self, frame: Frame, written: &mut Written) {
        let encoding = self.session.peer().encoding;
        let text = encoding == Encoding::Json;
        let min_size = self.session.node().config.compression_min_size;
        let payload = match frame {
            Frame::Ping => return self.socket.queue_ping(),
            Frame::Message(payload) => {
                if let Some(size) = self.socket.queue_data(text, &payload, min_size) {
                    written.uncompressed += payload.len() as u64;
                    written.compressed += size as u64;
                }
                return;
            }
            Frame::Publication(delivery) => {
                written.publications += u64::from(delivery.is_publication());
                let payload = delivery.encoded(encoding);
                let shared = match self.socket.compression() {
                    // The usual window: compressed once, shared by every
                    // subscriber.
                    Some(c) if payload.len() >= min_size && c.agreed.server_window_bits == 15 => {
                        Some(delivery.deflated(encoding, |data| c.deflater.compress(data, 15)))
                    }
                    _ => None,
                };
                match shared {
                    Some(Some(compressed)) => {
                        written.uncompressed += payload.len() as u64;
                        written.compressed += compressed.len() as u64;
                        return self.socket.queue_compressed(text, &compressed);
                    }
                    // Not worth compressing.
                    Some(None) => return self.socket.queue_plain(text, &payload),
                    None => payload,
                }
            }
        };
        // A smaller window the client asked for: this connection's own.
        if let Some(size) = self.socket.queue_data(text, &payload, min_size) {
            written.uncompressed += payload.len() as u64;
            written.compressed += size as u64;
        }
    }

    /// Moves queued frames to the socket and flushes. `Ready` ends the
    /// session (a requested close once everything is written, or an error).
    fn poll_writes(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        if self.poll_gather(cx).is_pending() {
            return Poll::Pending;
        }
        let write_failed = |error: std::io::Error| End::Gone(format!("write failed: {error}"));
        let mut written = Written::default();
        let (mut handed, mut sent) = (0, 0);
        let result = loop {
            if self.flushing && (self.socket.buffered() >= WRITE_BUFFER || handed >= WRITE_BUDGET) {
                match self.socket.poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.flushing = false,
                    Poll::Ready(Err(error)) => break Poll::Ready(write_failed(error)),
                    Poll::Pending => break Poll::Pending,
                }
                if handed >= WRITE_BUDGET {
                    // A steady stream of frames: let other tasks run, then
                    // carry on.
                    cx.waker().wake_by_ref();
                    break Poll::Pending;
                }
            }
            if self.outgoing.is_empty() {
                match self.session.peer().outbox.take() {
                    Taken::Items(items) => self.outgoing = items,
                    Taken::Close(close) if !self.flushing => break Poll::Ready(End::Requested(close)),
                    Taken::Close(_) | Taken::Empty if self.flushing => match self.socket.poll_flush(cx) {
                        Poll::Ready(Ok(())) => {
                            self.flushing = false;
                            continue;
                        }
                        Poll::Ready(Err(error)) => break Poll::Ready(write_failed(error)),
                        Poll::Pending => break Poll::Pending,
                    },
                    Taken::Close(_) | Taken::Empty => break Poll::Pending,
                }
            }
            let Some(frame) = self.outgoing.pop_front() else {
                continue;
            };
            sent += frame.queued_size();
            self.put(frame, &mut written);
            self.flushing = true;
            handed += 1;
            if self.outgoing.is_empty() {
                // Give the batch's memory back; an idle connection holds none.
                self.outgoing = VecDeque::new();
            }
        };
        if sent > 0 {
            self.session.peer().outbox.sent(sent);
        }
        let metrics = &self.session.node().metrics;
        if written.publications > 0 {
            metrics.delivered.increment(written.publications);
        }
        if written.uncompressed > 0 {
            metrics.compression_bytes_in.increment(written.uncompressed);
            metrics.compression_bytes_out.increment(written.compressed);
        }
        result
    }

    /// When frames arrive at an idle writer, decides whether to write at
    /// once or gather a little longer, so that what is published meanwhile
    /// shares the write (one syscall, one TCP segment) instead of costing
    /// one write per frame:
    /// - `--write-delay D`: always wait D (a fixed window);
    /// - otherwise (the default, `--write-coalesce W`), adaptively: the
    ///   connection keeps a moving average of the time between its frames;
    ///   while that is under W (a stream of more than one frame per window)
    ///   it writes at most once per W, gathering what arrives in between;
    ///   otherwise it writes at once. Light or sporadic traffic
    ///   (one channel's publication now and then, even two close together)
    ///   gets no added latency; heavy fan-out gets most of a fixed delay's
    ///   savings.
    ///
    /// A full write's worth of queued bytes, or a close that must not wait,
    /// ends the wait early.
    fn poll_gather(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let node = self.session.node();
        let outbox = &self.session.peer().outbox;
        if self.gather.is_none() {
            let idle = self.outgoing.is_empty() && !self.flushing;
            if !idle {
                return Poll::Ready(());
            }
            let queued = outbox.len();
            if queued == 0 {
                return Poll::Ready(());
            }
            let now = (node.clients.epoch.elapsed().as_micros() as u64).max(1);
            let fixed = node.config.write_delay;
            let delay = if !fixed.is_zero() {
                fixed
            } else {
                let window = node.config.write_coalesce.as_micros().min(u128::from(u32::MAX)) as u64;
                let since = now.saturating_sub(self.last_write_us);
                if self.last_write_us != 0 {
                    // The gap per frame since the last write.
                    let sample = (since / queued as u64).min(u64::from(u32::MAX / 4)) as u32;
                    self.frame_gap_us = (self.frame_gap_us / 4) * 3 + sample / 4;
                }
                let streaming = u64::from(self.frame_gap_us) < window;
                if window == 0 || !streaming || since >= window {
                    self.last_write_us = now;
                    return Poll::Ready(());
                }
                Duration::from_micros(window - since)
            };
            self.gather = Some(Box::pin(tokio::time::sleep(delay)));
        }
        let Some(timer) = self.gather.as_mut() else {
            return Poll::Ready(());
        };
        // A full write's worth, or a close that must not wait, ends the
        // wait (pushes wake the task at both).
        if timer.as_mut().poll(cx).is_pending() && outbox.kill_request().is_none() && !outbox.has_full_write()
        {
            return Poll::Pending;
        }
        self.gather = None;
        self.last_write_us = (node.clients.epoch.elapsed().as_micros() as u64).max(1);
        Poll::Ready(())
    }

    /// Sends the close frame `end` calls for and waits (bounded) for the
    /// client's answer.
    async fn finish(mut self, end: End) {
        self.session.log_end(&end);
        if self.socket.compression().is_some() {
            self.session.node().metrics.compressed_connections.decrement(1.0);
        }
        let (code, reason): (u16, Cow<'static, str>) = match &end {
            End::Requested(close) | End::Killed(close) => (close.code, close.reason_text()),
            End::Violation(code, reason) => (*code, Cow::Borrowed(*reason)),
            End::ClientClosed => {
                // The socket queued the echo of the client's close: send it
                // and close the connection.
                let _ = tokio::time::timeout(
                    CLOSE_TIMEOUT,
                    std::future::poll_fn(|cx| self.socket.poll_shutdown(cx)),
                )
                .await;
                return;
            }
            End::Gone(_) => return,
            End::Panicked => (close::INTERNAL_ERROR, Cow::Borrowed("internal error")),
        };
        // A violation may follow a reply that explains it (the error for a
        // bad token): write what is queued before the close frame.
        if matches!(end, End::Violation(..))
            && let Taken::Items(items) = self.session.peer().outbox.take()
        {
            let mut written = Written::default();
            for frame in items {
                self.put(frame, &mut written);
            }
        }
        self.socket.queue_close(code, &reason);
        let peer = self.session.peer().id;
        let Open {
            session, mut socket, ..
        } = self;
        // A close that must not wait frees the session (subscriptions,
        // registry, admission place) now: a silent client must not hold
        // them through the handshake. A graceful close keeps it to the
        // end, so a drain that waits for every session waits for the
        // close frames too.
        let _session = if matches!(end, End::Killed(_)) {
            drop(session);
            None
        } else {
            Some(session)
        };
        let socket = &mut socket;
        let closed = tokio::time::timeout(CLOSE_TIMEOUT, async {
            std::future::poll_fn(|cx| socket.poll_flush(cx)).await?;
            // Read until the client answers the close (or goes away).
            while !socket.closed_by_client() {
                match std::future::poll_fn(|cx| socket.poll_read(cx)).await {
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            std::future::poll_fn(|cx| socket.poll_shutdown(cx)).await
        })
        .await;
        if !matches!(closed, Ok(Ok(()))) {
            tracing::debug!(peer, "close handshake did not complete");
        }
    }
}
