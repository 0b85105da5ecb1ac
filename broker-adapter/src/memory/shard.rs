//! The embedded broker's state: one channel's stream ([`Channel`]) and a
//! shard of channels ([`Shard`]), with the bytes their histories hold and
//! the order they were kept in, so the oldest leave first when a shard is
//! over its budget. No locking here: the broker holds each shard's lock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pubsub_proto::{ChannelName, Publication};

use crate::{History, NO_STREAM, Published};

/// One channel's stream and whether this node subscribed to it.
pub(super) struct Channel {
    /// `None` until the first publication (or after the stream expired):
    /// the channel has no stream and reads report [`NO_STREAM`].
    pub(super) epoch: Option<Arc<str>>,
    pub(super) offset: u64,
    pub(super) history: VecDeque<Publication>,
    /// Last publication; the stream expires `ttl` after it.
    pub(super) touched: Instant,
    pub(super) ttl: Duration,
    pub(super) subscribed: bool,
    /// Publications accepted but not yet handed to the listener.
    pub(super) undelivered: VecDeque<Publication>,
    /// Some publisher is handing `undelivered` to the listener.
    pub(super) delivering: bool,
    /// Idempotency keys of recent publications, with where each went and
    /// until when it is remembered; `once_order` holds them oldest first.
    pub(super) once: HashMap<Box<str>, (Published, Instant)>,
    pub(super) once_order: VecDeque<(Box<str>, Instant)>,
}

impl Channel {
    pub(super) fn new() -> Channel {
        Channel {
            epoch: None,
            offset: 0,
            history: VecDeque::new(),
            touched: Instant::now(),
            ttl: Duration::ZERO,
            subscribed: false,
            undelivered: VecDeque::new(),
            delivering: false,
            once: HashMap::new(),
            once_order: VecDeque::new(),
        }
    }

    /// Forgets idempotency keys whose window has passed.
    pub(super) fn forget_expired_keys(&mut self, now: Instant) {
        while let Some((key, until)) = self.once_order.front() {
            if *until > now {
                break;
            }
            if self.once.get(key).is_some_and(|(_, u)| u == until) {
                self.once.remove(key);
            }
            self.once_order.pop_front();
        }
    }

    pub(super) fn expired(&self) -> bool {
        self.epoch.is_some() && self.touched.elapsed() > self.ttl
    }

    /// Whether dropping the entry loses nothing: no stream, no local
    /// subscription, nothing left to deliver.
    pub(super) fn is_empty(&self) -> bool {
        self.epoch.is_none() && !self.subscribed && !self.delivering && self.undelivered.is_empty()
    }

    pub(super) fn position(&self) -> History {
        History {
            epoch: self.epoch.clone().unwrap_or_else(|| Arc::from(NO_STREAM)),
            offset: self.offset,
            publications: Vec::new(),
        }
    }
}

/// One publication kept in some channel's history, in publication order,
/// for dropping the oldest first when the shard is over its bytes. Entries
/// whose publication already left its history (trimmed by the channel's
/// own size, or its stream ended) are skipped and compacted away.
pub(super) struct Kept {
    pub(super) channel: ChannelName,
    pub(super) epoch: Arc<str>,
    pub(super) offset: u64,
}

/// What a shard's histories hold: publications and their data bytes.
#[derive(Default)]
pub(super) struct Usage {
    pub(super) bytes: usize,
    pub(super) len: usize,
}

impl Usage {
    pub(super) fn add(&mut self, publication: &Publication) {
        self.bytes += publication.data.len();
        self.len += 1;
    }

    pub(super) fn remove(&mut self, publication: &Publication) {
        self.bytes -= publication.data.len();
        self.len -= 1;
    }
}

/// One shard of the broker's channels: their entries, what their
/// histories hold, and in which order it was kept.
#[derive(Default)]
pub(super) struct Shard {
    pub(super) channels: HashMap<ChannelName, Channel>,
    pub(super) usage: Usage,
    pub(super) kept: VecDeque<Kept>,
}

impl Shard {
    /// Drops the stream of `channel` (history, offset, epoch) and, if
    /// nothing else is left, its entry. Returns whether a stream ended.
    pub(super) fn end_stream(&mut self, channel: &str) -> bool {
        let Some(entry) = self.channels.get_mut(channel) else {
            return false;
        };
        let had = entry.epoch.take().is_some();
        entry.offset = 0;
        entry.once.clear();
        entry.once_order.clear();
        for publication in entry.history.drain(..) {
            self.usage.remove(&publication);
        }
        if entry.is_empty() {
            self.channels.remove(channel);
        }
        had
    }

    /// Ends the channel's stream if it expired; returns whether it did.
    pub(super) fn end_if_expired(&mut self, channel: &str) -> bool {
        self.channels.get(channel).is_some_and(Channel::expired) && self.end_stream(channel)
    }

    /// Whether a `kept` entry's publication is still in its history.
    fn still_kept(&self, kept: &Kept) -> bool {
        self.channels.get(kept.channel.as_str()).is_some_and(|c| {
            c.epoch.as_ref().is_some_and(|e| Arc::ptr_eq(e, &kept.epoch))
                && c.history
                    .front()
                    .and_then(|p| p.offset)
                    .is_some_and(|o| o <= kept.offset)
        })
    }

    /// Drops the oldest kept publications while over `budget` bytes, and
    /// compacts the order when most of it is stale.
    pub(super) fn enforce(&mut self, budget: usize) {
        while self.usage.bytes > budget {
            let Some(oldest) = self.kept.pop_front() else {
                break;
            };
            if !self.still_kept(&oldest) {
                continue;
            }
            if let Some(channel) = self.channels.get_mut(oldest.channel.as_str())
                && let Some(dropped) = channel.history.pop_front()
            {
                self.usage.remove(&dropped);
            }
        }
        if self.kept.len() > 2 * self.usage.len + 64 {
            let kept = std::mem::take(&mut self.kept);
            self.kept = kept.into_iter().filter(|k| self.still_kept(k)).collect();
        }
    }
}
