//! One `GET /sse` or `GET /stream` stream: it *is* the connection's state
//! machine, polled by a task of its own (`direct`) or by hyper's
//! connection task as the response body. Each poll moves the session (its
//! command in flight, its timers, a close that must not wait), hands it
//! the next command (a subscribe the `/sse` request named, or a command a
//! `/stream` client POSTed, from its [`Inbox`]), and turns what the outbox
//! holds into one chunk.
//!
//! On `/sse` (`Framing::Sse`), SSE events:
//! - a publication or gap: `id: <positions>` (see `resume`) and
//!   `data: <the protocol v1 JSON message>`;
//! - a reply (`subscribed`, an `error`): `data:` (with an `id:` when it
//!   moved a channel's position);
//! - a heartbeat: a `: ping` comment, which keeps proxies from timing the
//!   stream out;
//! - the end: `event: close` with `{"code":…,"reason":…}` (and, on drain,
//!   `reconnect_after_ms` and a matching `retry:` so `EventSource` waits
//!   that long), then the response ends.
//!
//! On `/stream` (`Framing::Session`), one protocol v1 JSON message per
//! line, `{"type":"ping"}` as the heartbeat and `{"type":"close",…}` as the
//! end; with `format=sse`, each message a `data:` event, `: ping` and
//! `event: close` as on `/sse`; or, for protobuf, frames of a kind byte (1 message, 2 heartbeat,
//! 3 close), a big-endian u32 length and the bytes.
//!
//! A client that stops reading fills its outbox and is closed as a slow
//! consumer (4008) like any other; since nothing polls a stream whose
//! socket cannot be written, the outbox wakes the stream through
//! [`KillWaker`], which aborts the HTTP connection instead of waiting for
//! the client.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use hyper::body::Frame as BodyFrame;
use parking_lot::Mutex;
use pubsub_proto::{ChannelName, Encoding, close};

use super::resume::Positions;
use crate::frame::Frame;
use crate::http_connection::HttpConnection;
use crate::node::Node;
use crate::outbox::{FULL_WRITE, Taken};
use crate::peer::Peer;
use crate::session::{End, Inbound, Session};
use crate::streams::Inbox;

/// Rounds of work in one poll before yielding to other tasks.
const BUDGET: usize = 64;

/// The body of a `GET /sse` or `GET /stream` response.
pub(crate) struct EventStream {
    /// `None` once the stream ended.
    session: Option<Session>,
    /// Subscribe commands not yet handed to the session, in channel order.
    commands: VecDeque<Bytes>,
    framing: Framing,
    waker: Arc<KillWaker>,
    /// The outbox size of the frames in the chunk last handed to the
    /// writer: they count against the outbox's bound until the writer asks
    /// for the next chunk. The direct writer (`direct.rs`, the usual case)
    /// asks once that one is written, so a stalled client holds one bound,
    /// not a bound queued and another in the chunk being written; hyper
    /// (a later request on a kept-alive connection, HTTP/2) asks once it
    /// buffered the chunk, and its buffer (up to about 400 KiB) comes on
    /// top.
    unsent: usize,
}

/// How the stream's frames are written.
enum Framing {
    /// `GET /sse`: SSE events, publications with the stream's positions
    /// as their ids.
    Sse(Positions),
    /// `GET /stream`: one protocol v1 message per line (JSON), per
    /// length-prefixed frame (protobuf), or (`events`, JSON) per SSE event;
    /// the client's commands come from its POSTs, through the inbox.
    Session { listed: Listed, events: bool },
}

/// A session stream's place in the node's [`Streams`](crate::streams::Streams),
/// given up when the stream is dropped.
pub(crate) struct Listed {
    pub node: Arc<Node>,
    pub id: Box<str>,
    pub inbox: Arc<Inbox>,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.node.clients.streams.close(&self.id);
    }
}

impl EventStream {
    pub(super) fn new(
        session: Session,
        positions: Positions,
        connection: Option<Arc<HttpConnection>>,
    ) -> EventStream {
        let commands = positions
            .channels()
            .enumerate()
            .map(|(i, (channel, since))| super::subscribe_command(i as u64 + 1, channel, since))
            .collect();
        EventStream::with(session, commands, Framing::Sse(positions), connection)
    }

    /// A session stream (`GET /stream`), listed as `listed`, written as
    /// SSE events when `events`; the client's commands come from its inbox.
    pub(crate) fn session(
        session: Session,
        listed: Listed,
        events: bool,
        connection: Option<Arc<HttpConnection>>,
    ) -> EventStream {
        let framing = Framing::Session { listed, events };
        EventStream::with(session, VecDeque::new(), framing, connection)
    }

    fn with(
        session: Session,
        commands: VecDeque<Bytes>,
        framing: Framing,
        connection: Option<Arc<HttpConnection>>,
    ) -> EventStream {
        let waker = Arc::new(KillWaker {
            task: Mutex::new(None),
            peer: Arc::downgrade(session.peer()),
            connection,
        });
        EventStream {
            session: Some(session),
            commands,
            framing,
            waker,
            unsent: 0,
        }
    }

    /// One poll's work; the bytes to send, and whether the stream ended.
    fn serve(&mut self, cx: &mut Context<'_>, out: &mut BytesMut) -> Poll<()> {
        let Some(session) = self.session.as_mut() else {
            return Poll::Ready(());
        };
        for _ in 0..BUDGET {
            let mut progress = match session.poll_work(cx) {
                Ok(progress) => progress,
                Err(end) => return self.finish(end, out),
            };
            let next = match &self.framing {
                _ if !self.commands.is_empty() => session.ready_for_input(cx).then(|| {
                    let command = self.commands.pop_front().unwrap_or_default();
                    if self.commands.is_empty() {
                        // An open stream keeps none of its start-up state.
                        self.commands = VecDeque::new();
                    }
                    command
                }),
                Framing::Session { listed, .. } if session.ready_for_input(cx) => {
                    listed.inbox.take(cx.waker())
                }
                _ => None,
            };
            if let Some(command) = next {
                let inbound = match session.peer().encoding {
                    Encoding::Json => Inbound::Text(command),
                    Encoding::Protobuf => Inbound::Binary(command),
                };
                if let Some(end) = session.on_inbound(inbound) {
                    return self.finish(end, out);
                }
                progress = true;
            }
            match session.peer().outbox.take() {
                Taken::Items(items) => {
                    // Room for the batch at once, not a regrowth per frame
                    // (a frame's framing adds some bytes to its own).
                    out.reserve(items.iter().map(|f| f.queued_size() + 32).sum());
                    let mut queued = 0;
                    let mut publications = 0;
                    for frame in items {
                        queued += frame.queued_size();
                        publications += u64::from(frame.is_publication());
                        self.framing.write(session.peer(), frame, out);
                    }
                    self.unsent += queued;
                    if publications > 0 {
                        session.node().metrics.delivered.increment(publications);
                    }
                    progress = true;
                }
                Taken::Close(close) => return self.finish(End::Requested(close), out),
                Taken::Empty => {}
            }
            if !progress || out.len() >= FULL_WRITE {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes the close event `end` calls for and ends the session.
    fn finish(&mut self, end: End, out: &mut BytesMut) -> Poll<()> {
        let Some(session) = self.session.take() else {
            return Poll::Ready(());
        };
        session.peer().outbox.sent(std::mem::take(&mut self.unsent));
        session.log_end(&end);
        let (code, reason, retry) = match &end {
            End::Requested(c) | End::Killed(c) => (c.code, c.reason, c.reconnect_after_ms),
            End::Violation(code, reason) => (*code, *reason, None),
            End::Panicked => (close::INTERNAL_ERROR, "internal error", None),
            End::ClientClosed | End::Gone(_) => return Poll::Ready(()),
        };
        let mut data = serde_json::json!({"code": code, "reason": reason});
        if let Some(ms) = retry {
            data["reconnect_after_ms"] = ms.into();
        }
        match &self.framing {
            Framing::Sse(_) | Framing::Session { events: true, .. } => {
                if let Some(ms) = retry {
                    out.put_slice(format!("retry: {ms}\n").as_bytes());
                }
                out.put_slice(b"event: close\n");
                put_data(out, data.to_string().as_bytes());
            }
            Framing::Session { .. } if session.peer().encoding == Encoding::Protobuf => {
                // The payload of a WebSocket close frame: the code, then the
                // reason (the JSON hint on drain, as over a WebSocket).
                let reason = match retry {
                    Some(ms) => format!(r#"{{"reason":"{reason}","reconnect_after_ms":{ms}}}"#),
                    None => reason.to_owned(),
                };
                let mut payload = code.to_be_bytes().to_vec();
                payload.extend_from_slice(reason.as_bytes());
                put_frame(out, FRAME_CLOSE, &payload);
            }
            Framing::Session { .. } => {
                data["type"] = "close".into();
                put_line(out, data.to_string().as_bytes());
            }
        }
        if matches!(end, End::Killed(_))
            && let Some(connection) = &self.waker.connection
        {
            // The client is not reading: do not wait for it.
            connection.abort();
        }
        Poll::Ready(())
    }
}

impl EventStream {
    /// The next chunk of the stream, `None` once it ended.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let Some(session) = self.session.as_ref() else {
            return Poll::Ready(None);
        };
        if self.unsent > 0 {
            // Asked for more: the last chunk was written.
            session.peer().outbox.sent(std::mem::take(&mut self.unsent));
        }
        let waker = self.waker.register(cx.waker());
        let mut cx = Context::from_waker(&waker);
        let mut out = BytesMut::new();
        // A bug in a session must not take the node down.
        let done = match std::panic::catch_unwind(AssertUnwindSafe(|| self.serve(&mut cx, &mut out))) {
            Ok(done) => done,
            Err(_) => self.finish(End::Panicked, &mut out),
        };
        if !out.is_empty() {
            return Poll::Ready(Some(out.freeze()));
        }
        match done {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::body::Body for EventStream {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Self::Error>>> {
        self.get_mut()
            .poll_next(cx)
            .map(|chunk| chunk.map(|bytes| Ok(BodyFrame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.session.is_none()
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        // The client went away (hyper dropped the response).
        if let Some(session) = self.session.take() {
            let end = match session.peer().outbox.kill_request() {
                Some(close) => End::Killed(close),
                None => End::Gone("the client closed the stream".into()),
            };
            session.log_end(&end);
        }
    }
}

impl Framing {
    /// Appends one frame of the outbox.
    fn write(&mut self, peer: &Peer, frame: Frame, out: &mut BytesMut) {
        match self {
            Framing::Sse(positions) => write_event(positions, peer, frame, out),
            Framing::Session { events: true, .. } => write_session_event(peer, frame, out),
            Framing::Session { .. } if peer.encoding == Encoding::Protobuf => write_binary(peer, frame, out),
            Framing::Session { .. } => write_line(peer, frame, out),
        }
    }
}

/// Protobuf session streams: each frame is a kind byte, a big-endian u32
/// length and that many bytes.
const FRAME_MESSAGE: u8 = 1;
const FRAME_PING: u8 = 2;
const FRAME_CLOSE: u8 = 3;

fn put_frame(out: &mut BytesMut, kind: u8, payload: &[u8]) {
    out.put_u8(kind);
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
}

/// One frame as a frame of a protobuf session stream: a `ServerMessage`
/// (the bytes of a WebSocket binary frame), or a heartbeat.
fn write_binary(peer: &Peer, frame: Frame, out: &mut BytesMut) {
    match frame {
        Frame::Ping => {
            peer.touch();
            put_frame(out, FRAME_PING, &[]);
        }
        Frame::Publication(delivery) => put_frame(out, FRAME_MESSAGE, &delivery.encoded(Encoding::Protobuf)),
        Frame::Message(message) => put_frame(out, FRAME_MESSAGE, &message),
    }
}

/// One frame as an SSE event of a session stream: every message a `data`
/// event without an id (the client resubscribes with `since` itself).
fn write_session_event(peer: &Peer, frame: Frame, out: &mut BytesMut) {
    match frame {
        Frame::Ping => {
            peer.touch();
            out.put_slice(b": ping\n\n");
        }
        Frame::Publication(delivery) => put_data(out, &delivery.encoded(Encoding::Json)),
        Frame::Message(message) => put_data(out, &message),
    }
}

/// One frame as a line of a session stream.
fn write_line(peer: &Peer, frame: Frame, out: &mut BytesMut) {
    match frame {
        Frame::Ping => {
            // The heartbeat keeps proxies from timing the stream out; as
            // over SSE, a heartbeat written is the sign of life.
            peer.touch();
            out.put_slice(b"{\"type\":\"ping\"}\n");
        }
        Frame::Publication(delivery) => put_line(out, &delivery.encoded(Encoding::Json)),
        Frame::Message(message) => put_line(out, &message),
    }
}

/// A JSON message as one line. Publication data is embedded as it was
/// published and may span lines (pretty-printed JSON): a line break can
/// only be JSON whitespace there, so it becomes a space.
fn put_line(out: &mut BytesMut, json: &[u8]) {
    if json.iter().any(|b| matches!(b, b'\n' | b'\r')) {
        out.extend(
            json.iter()
                .map(|b| if matches!(b, b'\n' | b'\r') { b' ' } else { *b }),
        );
    } else {
        out.put_slice(json);
    }
    out.put_u8(b'\n');
}

/// Appends one frame of the outbox as an SSE event.
fn write_event(positions: &mut Positions, peer: &Peer, frame: Frame, out: &mut BytesMut) {
    match frame {
        Frame::Ping => {
            // No pong comes back over a one-way stream: a heartbeat hyper
            // accepted is the sign of life (a vanished client is found when
            // the writes fail, or when its outbox fills).
            peer.touch();
            out.put_slice(b": ping\n\n");
        }
        Frame::Publication(delivery) => {
            if let Some((channel, epoch, offset)) = delivery.position()
                && positions.advance(channel, epoch, offset)
            {
                put_id(out, positions);
            }
            put_data(out, &delivery.encoded(Encoding::Json));
        }
        Frame::Message(message) => {
            // A subscription that recovers starts where it resumed from
            // (the replayed publications follow and advance it); one without
            // a position, or whose position could not be recovered, starts
            // where the channel is now.
            if let Some((channel, epoch, offset, recovered)) = subscribed_position(&message)
                && (!recovered || !positions.known(&channel))
                && positions.advance(&channel, &epoch, offset)
            {
                put_id(out, positions);
            }
            put_data(out, &message);
        }
    }
}

fn put_id(out: &mut BytesMut, positions: &Positions) {
    out.put_slice(b"id: ");
    positions.write_id(out);
    out.put_u8(b'\n');
}

/// `data:` lines for a JSON message, then the blank line that ends the
/// event. Publication data is embedded as it was published and may span
/// lines (pretty-printed JSON); each line gets its own `data:` and
/// `EventSource` joins them back with `\n`. A carriage return can only be
/// JSON whitespace there, so it is dropped (SSE would read it as a line end).
fn put_data(out: &mut BytesMut, json: &[u8]) {
    for line in json.split(|b| *b == b'\n') {
        out.put_slice(b"data: ");
        if line.contains(&b'\r') {
            out.extend(line.iter().filter(|b| **b != b'\r'));
        } else {
            out.put_slice(line);
        }
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// The position a `subscribed` reply names, and whether it recovered.
fn subscribed_position(message: &[u8]) -> Option<(ChannelName, String, u64, bool)> {
    #[derive(serde::Deserialize)]
    struct Subscribed {
        #[serde(rename = "type")]
        kind: String,
        channel: String,
        epoch: Option<String>,
        offset: Option<u64>,
        recovered: Option<bool>,
    }
    if !message.starts_with(br#"{"type":"subscribed""#) {
        return None;
    }
    let reply: Subscribed = serde_json::from_slice(message).ok()?;
    if reply.kind != "subscribed" {
        return None;
    }
    Some((
        ChannelName::parse(&reply.channel).ok()?,
        reply.epoch?,
        reply.offset?,
        reply.recovered == Some(true),
    ))
}

/// The waker the stream's session registers (with its outbox, timers and
/// command): wakes hyper's connection task and, when the outbox asks for a
/// close that must not wait, aborts the connection, since hyper does not
/// poll the body of a client that stopped reading.
struct KillWaker {
    task: Mutex<Option<Waker>>,
    peer: Weak<Peer>,
    connection: Option<Arc<HttpConnection>>,
}

impl KillWaker {
    /// Records the current task's waker; returns the waker to poll with.
    fn register(self: &Arc<Self>, waker: &Waker) -> Waker {
        let mut task = self.task.lock();
        if !task.as_ref().is_some_and(|t| t.will_wake(waker)) {
            *task = Some(waker.clone());
        }
        drop(task);
        Waker::from(self.clone())
    }
}

impl Wake for KillWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(task) = self.task.lock().as_ref() {
            task.wake_by_ref();
        }
        let (Some(connection), Some(peer)) = (&self.connection, self.peer.upgrade()) else {
            return;
        };
        if peer.outbox.kill_request().is_some() {
            connection.abort();
        } else {
            // A wake empties the outbox's waker slot, and a body hyper
            // cannot write is not polled to fill it again: stay registered,
            // so that the overflow that follows is seen.
            peer.outbox.register(&Waker::from(self.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_lines_split_and_drop_carriage_returns() {
        let mut out = BytesMut::new();
        put_data(&mut out, b"{\"a\":\r\n 1}");
        assert_eq!(&out[..], b"data: {\"a\":\ndata:  1}\n\n");
    }

    #[test]
    fn lines_are_one_message_each() {
        let mut out = BytesMut::new();
        put_line(&mut out, b"{\"a\":\r\n 1}");
        put_line(&mut out, b"{}");
        assert_eq!(&out[..], b"{\"a\":   1}\n{}\n");
    }

    #[test]
    fn subscribed_replies_give_the_starting_position() {
        let reply = br#"{"type":"subscribed","id":1,"channel":"news","epoch":"e1","offset":4}"#;
        let (channel, epoch, offset, recovered) = subscribed_position(reply).unwrap();
        assert_eq!(
            (channel.as_str(), epoch.as_str(), offset, recovered),
            ("news", "e1", 4, false)
        );
        assert!(subscribed_position(br#"{"type":"error","code":"forbidden"}"#).is_none());
    }
}
