//! The node's session streams (`GET /stream`): sessions whose client
//! sends its commands as separate `POST /stream/commands` requests. Each
//! stream has a session id, a secret the client names in its POSTs, and an
//! [`Inbox`] those POSTs fill and the stream's task empties into its
//! session, one command at a time, as a WebSocket reads its frames.
//!
//! A session id is `<32 hex digits of OS randomness>.<node id>`: the
//! random part makes it unguessable (knowing it is what entitles a POST to
//! speak for the session), the node part tells any node where to forward a
//! POST (`transport::http_stream::commands`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

/// Commands one inbox holds before POSTs are refused with `queue_full`.
pub const MAX_QUEUED: usize = 64;
/// Hex digits of the random part of a session id.
const SECRET_DIGITS: usize = 32;

/// The node's open session streams, by session id.
#[derive(Default)]
pub struct Streams {
    open: Mutex<HashMap<Box<str>, Weak<Inbox>>>,
    /// The live nodes as last read, and when: where POSTs for other nodes'
    /// sessions may be forwarded (`transport::http_stream::commands`).
    live: Mutex<Option<(Instant, Arc<[String]>)>>,
}

/// What became of commands handed to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Accepted,
    /// No such session here (it ended, or never existed).
    Unknown,
    /// The session has [`MAX_QUEUED`] commands waiting already.
    Full,
    /// JSON commands for a protobuf session, or the other way round.
    WrongEncoding,
}

impl Delivered {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivered::Accepted => "accepted",
            Delivered::Unknown => "unknown_session",
            Delivered::Full => "queue_full",
            Delivered::WrongEncoding => "wrong_encoding",
        }
    }

    pub fn parse(text: &str) -> Option<Delivered> {
        [
            Delivered::Accepted,
            Delivered::Unknown,
            Delivered::Full,
            Delivered::WrongEncoding,
        ]
        .into_iter()
        .find(|d| d.as_str() == text)
    }
}

/// Commands POSTed for one session, waiting for its task.
pub struct Inbox {
    queue: Mutex<VecDeque<Bytes>>,
    waker: AtomicWaker,
    /// Whether its commands are protobuf (else JSON).
    binary: bool,
}

impl Inbox {
    /// The oldest command waiting; registers `waker` for the next POST.
    pub fn take(&self, waker: &Waker) -> Option<Bytes> {
        self.waker.register(waker);
        let mut queue = self.queue.lock();
        let command = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 0 {
            // An idle stream holds no queue.
            *queue = VecDeque::new();
        }
        command
    }
}

impl Streams {
    /// Opens a stream on node `node_id`: its session id and inbox. The
    /// stream is listed until [`Streams::close`] (or its inbox is dropped).
    /// `None` when the OS has no randomness to give: a guessable id would
    /// let anyone speak for the session.
    pub fn open(&self, node_id: &str, binary: bool) -> Option<(Box<str>, Arc<Inbox>)> {
        let mut secret = [0u8; SECRET_DIGITS / 2];
        getrandom::fill(&mut secret).ok()?;
        let mut id = String::with_capacity(SECRET_DIGITS + 1 + node_id.len());
        for byte in secret {
            id.push_str(&format!("{byte:02x}"));
        }
        id.push('.');
        id.push_str(node_id);
        let id: Box<str> = id.into();
        let inbox = Arc::new(Inbox {
            queue: Mutex::default(),
            waker: AtomicWaker::new(),
            binary,
        });
        let mut open = self.open.lock();
        open.insert(id.clone(), Arc::downgrade(&inbox));
        drop(open);
        Some((id, inbox))
    }

    /// Forgets stream `id` (it ended).
    pub fn close(&self, id: &str) {
        self.open.lock().remove(id);
    }

    /// Hands `commands` (protobuf when `binary`, else JSON) to session
    /// `id`, all or none.
    pub fn deliver(&self, id: &str, commands: Vec<Bytes>, binary: bool) -> Delivered {
        let Some(inbox) = self.open.lock().get(id).and_then(Weak::upgrade) else {
            return Delivered::Unknown;
        };
        if inbox.binary != binary {
            return Delivered::WrongEncoding;
        }
        let mut queue = inbox.queue.lock();
        if queue.len() + commands.len() > MAX_QUEUED {
            return Delivered::Full;
        }
        queue.extend(commands);
        drop(queue);
        inbox.waker.wake();
        Delivered::Accepted
    }

    /// The live nodes as last remembered, and when.
    pub fn live_nodes(&self) -> Option<(Instant, Arc<[String]>)> {
        self.live.lock().clone()
    }

    pub fn remember_live_nodes(&self, nodes: Vec<String>) {
        *self.live.lock() = Some((Instant::now(), nodes.into()));
    }
}

/// The node a session id names, if it is one.
pub fn owner(session: &str) -> Option<&str> {
    let (secret, node) = session.split_once('.')?;
    let well_formed = secret.len() == SECRET_DIGITS
        && secret
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && !node.is_empty();
    well_formed.then_some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_and_name_their_node() {
        let streams = Streams::default();
        let (a, _ia) = streams.open("gw-1", false).unwrap();
        let (b, _ib) = streams.open("gw-1", false).unwrap();
        assert_ne!(a, b);
        assert_eq!(owner(&a), Some("gw-1"));
        assert_eq!(owner("nothex.gw-1"), None);
        assert_eq!(owner(&a.replace(".gw-1", ".")), None);
        assert_eq!(owner("0123"), None);
    }

    #[test]
    fn commands_reach_an_open_stream_in_order_and_are_bounded() {
        let streams = Streams::default();
        let (id, inbox) = streams.open("gw-1", false).unwrap();
        let waker = futures_util::task::noop_waker();
        let commands = |n: usize| (0..n).map(|i| Bytes::from(i.to_string())).collect::<Vec<_>>();
        assert_eq!(streams.deliver(&id, commands(2), false), Delivered::Accepted);
        assert_eq!(streams.deliver(&id, commands(MAX_QUEUED), false), Delivered::Full);
        assert_eq!(streams.deliver(&id, commands(1), true), Delivered::WrongEncoding);
        assert_eq!(inbox.take(&waker).as_deref(), Some(&b"0"[..]));
        assert_eq!(inbox.take(&waker).as_deref(), Some(&b"1"[..]));
        assert_eq!(inbox.take(&waker), None);
        streams.close(&id);
        assert_eq!(streams.deliver(&id, commands(1), false), Delivered::Unknown);
        let (other, inbox) = streams.open("gw-1", false).unwrap();
        drop(inbox);
        assert_eq!(streams.deliver(&other, commands(1), false), Delivered::Unknown);
    }
}
