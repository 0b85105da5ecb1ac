//! The channel table: which local peers subscribe to which channel, each
//! channel's stream state, and the fan-out of what arrives.
//!
//! Everything about one channel changes under its shard lock: the fan-out,
//! joins and leaves, activation, repairs. That single lock is what makes the
//! guarantees simple to state:
//! - a peer joining a channel is positioned at the stream's current offset
//!   at that instant; from then on it receives every later publication,
//!   in order, without duplicates (recovery is merged in `finish_sync`);
//! - no publication reaches a peer before its `subscribed` reply (while
//!   syncing, the peer's share is buffered in its subscriber entry);
//! - no publication reaches a peer after it left.
//!
//! Nothing here waits: a peer's outbox never blocks the fan-out, history
//! reads happen in the repair task, broker subscriptions in the manager.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use broker_adapter::{BrokerError, BrokerEvent, History, Listener, PresenceEvent, StreamOptions};
use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use pubsub_proto::{ChannelName, Publication, Reply, ServerMessage};
use tokio::sync::oneshot;

use super::presence::Presence;
use super::stream::{Arrival, Output, Stream};
use super::worklist::Worklist;
use crate::delivery::Delivery;
use crate::frame::Frame;
use crate::peer::Peer;

const SHARDS: usize = 64;

/// Where a joining peer starts: the last offset of the channel delivered to
/// local subscribers when it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub epoch: Arc<str>,
    pub offset: u64,
}

/// The outcome of a join: at once, or once the broker confirmed.
pub enum Join {
    Joined(Joined),
    Waiting(oneshot::Receiver<Result<Joined, BrokerError>>),
}

/// One local peer on one channel.
struct Subscriber {
    peer: Arc<Peer>,
    /// Until the session finished its recovery read: what arrived meanwhile.
    syncing: Option<Vec<Arc<Delivery>>>,
    /// Publications at or below this offset are not sent (the client has
    /// them already). Reset when the epoch changes.
    floor: u64,
}

struct Waiter {
    peer: Arc<Peer>,
    done: oneshot::Sender<Result<Joined, BrokerError>>,
}

struct Entry {
    /// In a vector for the fan-out's sake (a straight walk), with an index
    /// by peer id so that a join or leave on a channel of 100,000
    /// subscribers does not scan them under the lock the fan-out needs.
    subscribers: Vec<Subscriber>,
    index: HashMap<u64, usize>,
    waiting: Vec<Waiter>,
    stream: Stream,
    options: StreamOptions,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.waiting.is_empty()
    }

    fn add(&mut self, subscriber: Subscriber) {
        self.index.insert(subscriber.peer.id, self.subscribers.len());
        self.subscribers.push(subscriber);
    }

    fn find_mut(&mut self, peer_id: u64) -> Option<&mut Subscriber> {
        let i = *self.index.get(&peer_id)?;
        self.subscribers.get_mut(i)
    }

    /// Removes a subscriber; false if `peer_id` was not one.
    fn remove(&mut self, peer_id: u64) -> bool {
        let Some(i) = self.index.remove(&peer_id) else {
            return false;
        };
        self.subscribers.swap_remove(i);
        if let Some(moved) = self.subscribers.get(i) {
            self.index.insert(moved.peer.id, i);
        }
        true
    }

    /// Hands stream output to every subscriber, in order.
    fn fan_out(&mut self, channel: &ChannelName, outputs: Vec<Output>, counters: &Counters) {
        for output in outputs {
            let delivery = match output {
                Output::Publication(publication) => Delivery::new(publication),
                Output::Gap { epoch, offset } => {
                    counters.gap_notices.increment(1);
                    for subscriber in &mut self.subscribers {
                        subscriber.floor = 0;
                    }
                    Delivery::gap(channel.clone(), epoch, offset)
                }
            };
            for subscriber in &mut self.subscribers {
                subscriber.offer(&delivery);
            }
        }
    }
}

impl Subscriber {
    fn offer(&mut self, delivery: &Arc<Delivery>) {
        if let Some(buffer) = &mut self.syncing {
            if !self.peer.outbox.may_hold(buffer.len() + 1) {
                self.syncing = None;
                return;
            }
            buffer.push(delivery.clone());
            return;
        }
        if delivery.offset().is_some_and(|o| o <= self.floor) {
            return;
        }
        // An overflowing peer closes itself (4008); the others go on.
        self.peer.outbox.push(Frame::Publication(delivery.clone()));
    }
}

/// Counters the table keeps.
pub struct Counters {
    pub subscriptions: Gauge,
    pub channels: Gauge,
    pub gap_notices: Counter,
    pub repairs: Counter,
}

/// Local subscribers and stream state per channel, sharded by channel name.
pub struct Channels {
    /// Messages other nodes addressed to this one (server-side operations),
    /// for the node's control task; dropped when it falls behind.
    node_messages: tokio::sync::mpsc::Sender<bytes::Bytes>,
    shards: Box<[Mutex<HashMap<ChannelName, Entry>>]>,
    hasher: RandomState,
    /// Channels whose wanted broker state may have changed, for the manager.
    dirty: Arc<Worklist>,
    /// Channels whose history must be read, for the repair task.
    repairs: Arc<Worklist>,
    counters: Counters,
    /// This node's members, synced again after an outage.
    presence: Arc<Presence>,
}

impl Channels {
    pub fn new(
        dirty: Arc<Worklist>,
        repairs: Arc<Worklist>,
        counters: Counters,
        presence: Arc<Presence>,
        node_messages: tokio::sync::mpsc::Sender<bytes::Bytes>,
    ) -> Channels {
        Channels {
            node_messages,
            presence,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            dirty,
            repairs,
            counters,
        }
    }

    fn shard(&self, channel: &str) -> &Mutex<HashMap<ChannelName, Entry>> {
        &self.shards[self.hasher.hash_one(channel) as usize % SHARDS]
    }

    /// Adds `peer` to `channel` in syncing mode: what arrives from now on is
    /// buffered for it until [`Channels::finish_sync`]. Joins at once when
    /// the channel's position is known; otherwise waits for the manager.
    pub fn join(&self, channel: &ChannelName, peer: &Arc<Peer>, options: StreamOptions) -> Join {
        let mut shard = self.shard(channel.as_str()).lock();
        let entry = match shard.get_mut(channel.as_str()) {
            Some(entry) => entry,
            None => {
                self.counters.channels.increment(1.0);
                // A new entry needs the broker: tell the manager.
                self.dirty.push(channel.clone());
                shard.entry(channel.clone()).or_insert_with(|| Entry {
                    subscribers: Vec::new(),
                    index: HashMap::new(),
                    waiting: Vec::new(),
                    stream: Stream::default(),
                    options,
                })
            }
        };
        match entry.stream.position() {
            Some((epoch, offset)) => {
                entry.add(Subscriber {
                    peer: peer.clone(),
                    syncing: Some(Vec::new()),
                    floor: offset,
                });
                self.counters.subscriptions.increment(1.0);
                Join::Joined(Joined { epoch, offset })
            }
            None => {
                let (done, wait) = oneshot::channel();
                entry.waiting.push(Waiter {
                    peer: peer.clone(),
                    done,
                });
                Join::Waiting(wait)
            }
        }
    }

    /// Ends `peer_id`'s sync on `channel`: queues `first` (the `subscribed`
    /// reply), then `replay` (recovered publications), then what arrived
    /// since it joined, skipping anything at or below `floor`.
    pub fn finish_sync(
        &self,
        channel: &ChannelName,
        peer_id: u64,
        first: &ServerMessage,
        replay: Vec<Publication>,
        floor: u64,
    ) {
        let mut shard = self.shard(channel.as_str()).lock();
        let Some(subscriber) = shard
            .get_mut(channel.as_str())
            .and_then(|entry| entry.find_mut(peer_id))
        else {
            return;
        };
        subscriber.peer.reply(first);
        let outbox = &subscriber.peer.outbox;
        for publication in replay {
            outbox.push(Frame::Publication(Delivery::new(publication)));
        }
        subscriber.floor = floor;
        for delivery in subscriber.syncing.take().unwrap_or_default() {
            if delivery.offset().is_some_and(|o| o <= subscriber.floor) {
                continue;
            }
            if delivery.is_gap() {
                subscriber.floor = 0;
            }
            outbox.push(Frame::Publication(delivery));
        }
    }

    /// Removes `peer_id` from `channel`, as subscriber or waiter.
    pub fn leave(&self, channel: &ChannelName, peer_id: u64) {
        let mut shard = self.shard(channel.as_str()).lock();
        let Some(entry) = shard.get_mut(channel.as_str()) else {
            return;
        };
        if entry.remove(peer_id) {
            self.counters.subscriptions.decrement(1.0);
        } else {
            entry.waiting.retain(|w| w.peer.id != peer_id);
        }
        if entry.is_empty() {
            shard.remove(channel.as_str());
            self.counters.channels.decrement(1.0);
            self.dirty.push(channel.clone());
        }
    }

    /// True when some local peer subscribes to (or waits for) `channel`.
    pub fn wants(&self, channel: &ChannelName) -> bool {
        self.shard(channel.as_str()).lock().contains_key(channel.as_str())
    }

    /// The stream options of a channel's entry.
    pub fn options(&self, channel: &ChannelName) -> Option<StreamOptions> {
        self.shard(channel.as_str())
            .lock()
            .get(channel.as_str())
            .map(|e| e.options)
    }

    /// The broker subscription is confirmed and the position read: the
    /// stream goes live there and waiters join at the resulting offset.
    pub fn activate(&self, channel: &ChannelName, position: &History) {
        let mut shard = self.shard(channel.as_str()).lock();
        let Some(entry) = shard.get_mut(channel.as_str()) else {
            return;
        };
        let outputs = entry.stream.positioned(position);
        entry.fan_out(channel, outputs, &self.counters);
        let Some((epoch, offset)) = entry.stream.position() else {
            return;
        };
        for waiter in std::mem::take(&mut entry.waiting) {
            let joined = Joined {
                epoch: epoch.clone(),
                offset,
            };
            // A waiter whose session ended meanwhile is dropped here.
            if waiter.done.send(Ok(joined)).is_ok() {
                entry.add(Subscriber {
                    peer: waiter.peer,
                    syncing: Some(Vec::new()),
                    floor: offset,
                });
                self.counters.subscriptions.increment(1.0);
            }
        }
        if entry.is_empty() {
            shard.remove(channel.as_str());
            self.counters.channels.decrement(1.0);
            self.dirty.push(channel.clone());
        }
    }

    /// The broker could not subscribe `channel` (or read its position): its
    /// waiters get the error, and the entry goes if nobody else is on it.
    pub fn fail(&self, channel: &ChannelName, error: &BrokerError) {
        let mut shard = self.shard(channel.as_str()).lock();
        let Some(entry) = shard.get_mut(channel.as_str()) else {
            return;
        };
        for waiter in entry.waiting.drain(..) {
            let _ = waiter.done.send(Err(error.clone()));
        }
        if entry.is_empty() {
            shard.remove(channel.as_str());
            self.counters.channels.decrement(1.0);
            // The broker may hold a subscription for it: let the manager check.
            self.dirty.push(channel.clone());
        }
    }

    /// Where a repair of `channel` reads history from, and how.
    pub fn repair_point(&self, channel: &ChannelName) -> Option<(Arc<str>, u64, StreamOptions)> {
        let shard = self.shard(channel.as_str()).lock();
        let entry = shard.get(channel.as_str())?;
        entry
            .stream
            .repair_from()
            .map(|(epoch, last)| (epoch, last, entry.options))
    }

    /// The history read for a repair of `channel` came back.
    pub fn repaired(&self, channel: &ChannelName, history: Result<History, BrokerError>) {
        let mut shard = self.shard(channel.as_str()).lock();
        let Some(entry) = shard.get_mut(channel.as_str()) else {
            return;
        };
        self.counters.repairs.increment(1);
        let outputs = entry.stream.repaired(history);
        entry.fan_out(channel, outputs, &self.counters);
        if entry.stream.is_repairing() {
            // Asked again while reading: read once more.
            self.repairs.push(channel.clone());
        }
    }

    /// Number of channels with local subscribers or waiters.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Up to `limit` channels with local subscribers, with their counts,
    /// in name order, after `after` and matching `pattern`: one walk of
    /// the local channels, keeping only the `limit` smallest names.
    pub fn page(
        &self,
        pattern: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(ChannelName, usize)> {
        let mut kept: std::collections::BinaryHeap<(ChannelName, usize)> =
            std::collections::BinaryHeap::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (name, entry) in shard.iter() {
                if entry.subscribers.is_empty()
                    || after.is_some_and(|after| name.as_str() <= after)
                    || pattern.is_some_and(|p| !pubsub_proto::pattern::matches(p, name.as_str()))
                {
                    continue;
                }
                if kept.len() < limit {
                    kept.push((name.clone(), entry.subscribers.len()));
                } else if kept.peek().is_some_and(|(largest, _)| name < largest) {
                    kept.pop();
                    kept.push((name.clone(), entry.subscribers.len()));
                }
            }
        }
        kept.into_sorted_vec()
    }

    /// Local subscriptions over all channels (a walk of the channels, for
    /// the node's periodic announcement, not for hot paths).
    pub fn subscription_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().values().map(|e| e.subscribers.len()).sum::<usize>())
            .sum()
    }

    /// Puts `channels` (those still live) into repair.
    fn repair(&self, channels: &[ChannelName]) {
        for channel in channels {
            let mut shard = self.shard(channel.as_str()).lock();
            if let Some(entry) = shard.get_mut(channel.as_str())
                && entry.stream.start_repair()
            {
                self.repairs.push(channel.clone());
            }
        }
    }

    /// Puts every live channel into repair (the broker connection came back
    /// and publications may have been missed).
    fn repair_all(&self) {
        for shard in self.shards.iter() {
            for (channel, entry) in shard.lock().iter_mut() {
                if entry.stream.start_repair() {
                    self.repairs.push(channel.clone());
                }
            }
        }
    }
}

impl Listener for Channels {
    fn on_node_message(&self, message: bytes::Bytes) {
        if self.node_messages.try_send(message).is_err() {
            tracing::warn!("dropping a node message: the control task is behind or gone");
        }
    }

    fn on_publication(&self, publication: Publication) {
        let channel = publication.channel.clone();
        let mut shard = self.shard(channel.as_str()).lock();
        let Some(entry) = shard.get_mut(channel.as_str()) else {
            return;
        };
        match entry.stream.arrive(publication) {
            Arrival::Deliver(outputs) => entry.fan_out(&channel, outputs, &self.counters),
            Arrival::Held => {}
            Arrival::NeedsRepair => {
                self.repairs.push(channel);
            }
        }
    }

    fn on_event(&self, event: BrokerEvent) {
        match event {
            BrokerEvent::Lost { reason } => tracing::warn!(%reason, "broker connection lost"),
            BrokerEvent::Restored => {
                tracing::info!("broker connection restored: catching up every channel from history");
                self.repair_all();
                self.presence.sync_all();
            }
            BrokerEvent::Missed { channels, reason } => {
                tracing::info!(channels = channels.len(), %reason, "catching up channels from history");
                self.repair(&channels);
                self.presence.sync(&channels);
            }
        }
    }

    /// A join or leave: every local subscriber of the channel gets it, in
    /// the order the broker reports them (under the channel's lock, like
    /// publications; a subscriber still syncing gets it after its reply).
    fn on_presence(&self, event: PresenceEvent) {
        let mut shard = self.shard(event.channel().as_str()).lock();
        let Some(entry) = shard.get_mut(event.channel().as_str()) else {
            return;
        };
        let reply = match event {
            PresenceEvent::Join {
                channel,
                member,
                first,
            } => Reply::Join {
                channel,
                member,
                first,
            },
            PresenceEvent::Leave {
                channel,
                member,
                last,
            } => Reply::Leave {
                channel,
                member,
                last,
            },
        };
        let delivery = Delivery::event(ServerMessage { id: None, reply });
        for subscriber in &mut entry.subscribers {
            subscriber.offer(&delivery);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;

    fn subscriber(id: u64) -> Subscriber {
        let peer = Peer::new(
            id,
            Arc::from("test"),
            pubsub_proto::Encoding::Json,
            Outbox::new(1 << 20, 100),
            std::time::Instant::now(),
        );
        Subscriber {
            peer: Arc::new(peer),
            syncing: None,
            floor: 0,
        }
    }

    /// The index by peer id stays true through joins and leaves in any
    /// order (a leave moves the last subscriber into the gap).
    #[test]
    fn the_subscriber_index_follows_joins_and_leaves() {
        let mut entry = Entry {
            subscribers: Vec::new(),
            index: HashMap::new(),
            waiting: Vec::new(),
            stream: Stream::default(),
            options: StreamOptions::default(),
        };
        let mut expected = std::collections::BTreeSet::new();
        let mut state = 7u64;
        for step in 0..5_000u64 {
            // A cheap deterministic mix of joins and leaves over 300 ids.
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let id = (state >> 33) % 300;
            if step % 3 == 0 || !expected.contains(&id) {
                if expected.insert(id) {
                    entry.add(subscriber(id));
                }
            } else {
                assert!(entry.remove(id), "{id} was subscribed");
                expected.remove(&id);
                assert!(!entry.remove(id), "{id} leaves once");
            }
            assert_eq!(entry.subscribers.len(), expected.len());
            assert_eq!(entry.index.len(), expected.len());
        }
        for (i, subscriber) in entry.subscribers.iter().enumerate() {
            assert_eq!(
                entry.index[&subscriber.peer.id], i,
                "the index points at its subscriber"
            );
        }
        for id in 0..300 {
            assert_eq!(entry.find_mut(id).is_some(), expected.contains(&id));
            if let Some(found) = entry.find_mut(id) {
                assert_eq!(found.peer.id, id);
            }
        }
    }
}
