//! The channel table: which local peers subscribe to which channel, and the
//! fan-out of incoming publications to them.
//!
//! A peer joining a channel whose broker subscription is not confirmed yet
//! waits in the entry's `waiting` list; the subscription manager activates
//! the entry once the broker confirmed (or fails it). A publication is handed
//! to every active subscriber's outbox while the shard lock is held, which
//! keeps per-channel order identical for all subscribers and never waits on
//! a socket.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use broker_adapter::{BrokerError, BrokerEvent, Listener};
use metrics::Gauge;
use parking_lot::Mutex;
use pubsub_proto::{ChannelName, Publication};
use tokio::sync::{mpsc, oneshot};

use crate::delivery::Delivery;
use crate::outbox::Outgoing;
use crate::peer::Peer;

const SHARDS: usize = 64;

/// The outcome of a join: at once, or once the broker confirmed.
pub enum Join {
    Joined,
    Waiting(oneshot::Receiver<Result<(), BrokerError>>),
}

struct Waiter {
    peer: Arc<Peer>,
    /// Queued to the peer at the moment it becomes a subscriber, so nothing
    /// published on the channel can reach the peer before it.
    first: Outgoing,
    done: oneshot::Sender<Result<(), BrokerError>>,
}

#[derive(Default)]
struct Entry {
    subscribers: Vec<Arc<Peer>>,
    waiting: Vec<Waiter>,
    /// The broker subscription for this channel is confirmed.
    active: bool,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.waiting.is_empty()
    }
}

/// Local subscribers per channel, sharded by channel name.
pub struct Channels {
    shards: Box<[Mutex<HashMap<ChannelName, Entry>>]>,
    hasher: RandomState,
    /// Channels whose wanted broker state may have changed, for the manager.
    dirty: mpsc::UnboundedSender<ChannelName>,
    subscriptions_gauge: Gauge,
    channels_gauge: Gauge,
}

impl Channels {
    pub fn new(
        dirty: mpsc::UnboundedSender<ChannelName>,
        subscriptions_gauge: Gauge,
        channels_gauge: Gauge,
    ) -> Channels {
        Channels {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            dirty,
            subscriptions_gauge,
            channels_gauge,
        }
    }

    fn shard(&self, channel: &str) -> &Mutex<HashMap<ChannelName, Entry>> {
        &self.shards[self.hasher.hash_one(channel) as usize % SHARDS]
    }

    /// Adds `peer` as a subscriber of `channel`, queueing `first` to it at
    /// that moment. Joins at once when the broker subscription exists.
    pub fn join(&self, channel: &ChannelName, peer: &Arc<Peer>, first: Outgoing) -> Join {
        let mut shard = self.shard(channel.as_str()).lock();
        let entry = match shard.get_mut(channel.as_str()) {
            Some(entry) => entry,
            None => {
                self.channels_gauge.increment(1.0);
                // A new entry needs the broker: tell the manager.
                let _ = self.dirty.send(channel.clone());
                shard.entry(channel.clone()).or_default()
            }
        };
        if entry.active {
            peer.outbox.push(first);
            entry.subscribers.push(peer.clone());
            self.subscriptions_gauge.increment(1.0);
            return Join::Joined;
        }
        let (done, wait) = oneshot::channel();
        entry.waiting.push(Waiter {
            peer: peer.clone(),
            first,
            done,
        });
        Join::Waiting(wait)
    }

    /// Removes `peer_id` from `channel`, as subscriber or waiter.
    pub fn leave(&self, channel: &ChannelName, peer_id: u64) {
        let mut shard = self.shard(channel.as_str()).lock();
        let Some(entry) = shard.get_mut(channel.as_str()) else {
            return;
        };
        if let Some(i) = entry.subscribers.iter().position(|p| p.id == peer_id) {
            entry.subscribers.swap_remove(i);
            self.subscriptions_gauge.decrement(1.0);
        } else {
            entry.waiting.retain(|w| w.peer.id != peer_id);
        }
        if entry.is_empty() {
            shard.remove(channel.as_str());
            self.channels_gauge.decrement(1.0);
            let _ = self.dirty.send(channel.clone());
        }
    }

    /// True when some local peer subscribes to (or waits for) `channel`.
    pub fn wants(&self, channel: &ChannelName) -> bool {
        self.shard(channel.as_str()).lock().contains_key(channel.as_str())
    }

    /// The broker subscription for `channel` is confirmed: waiters become
    /// subscribers and their joins resolve.
    pub fn activate(&self, channel: &ChannelName) {
        let mut shard = self.shard(channel.as_str()).lock();
        let Some(entry) = shard.get_mut(channel.as_str()) else {
            return;
        };
        entry.active = true;
        for waiter in entry.waiting.drain(..) {
            // A waiter whose session ended meanwhile is dropped here.
            if waiter.done.send(Ok(())).is_ok() {
                waiter.peer.outbox.push(waiter.first);
                entry.subscribers.push(waiter.peer);
                self.subscriptions_gauge.increment(1.0);
            }
        }
        if entry.is_empty() {
            shard.remove(channel.as_str());
            self.channels_gauge.decrement(1.0);
            let _ = self.dirty.send(channel.clone());
        }
    }

    /// The broker refused or failed to subscribe `channel`: its waiters get
    /// the error, and the entry goes if nobody else is on it.
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
            self.channels_gauge.decrement(1.0);
        }
    }

    /// Number of channels with local subscribers or waiters.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

impl Listener for Channels {
    fn on_publication(&self, publication: Publication) {
        let shard = self.shard(publication.channel.as_str()).lock();
        let Some(entry) = shard.get(publication.channel.as_str()) else {
            return;
        };
        if entry.subscribers.is_empty() {
            return;
        }
        let delivery = Delivery::new(publication);
        for peer in &entry.subscribers {
            // An overflowing peer closes itself (4008); the others go on.
            peer.outbox.push(Outgoing::Publication(delivery.clone()));
        }
    }

    fn on_event(&self, event: BrokerEvent) {
        match event {
            BrokerEvent::Lost { reason } => tracing::warn!(%reason, "broker connection lost"),
            BrokerEvent::Restored => tracing::info!("broker connection restored"),
        }
    }
}
