//! Presence: who is in a channel, kept by the broker across nodes.
//!
//! Each node registers its own local members of a channel (one entry per
//! connection) and refreshes them in batches; the broker keeps, per
//! channel, every node's members, a count per user, and when each node last
//! refreshed. A node that stops refreshing (killed, cut off) is dropped
//! with all its members once its entries are older than the TTL, and a
//! leave event goes out for each of them, so members never outlive their
//! node by more than the TTL.
//!
//! Events: with `events` on, the broker tells every node subscribed to the
//! channel about each join and leave ([`crate::Listener::on_presence`]),
//! in the order the changes were applied, at most `event_rate` per channel
//! per second (beyond that, changes are applied silently: a storm of
//! reconnects cannot turn into a storm of events; apps that must be exact
//! read [`crate::Broker::presence`]).
//!
//! Users: `first` on a join says it is the user's first connection in the
//! channel, `last` on a leave that it was the last. Anonymous connections
//! (empty user) count as their own user for `first`/`last` but not in
//! [`PresenceStats::users`].

use std::time::Duration;

use pubsub_proto::{ChannelName, Member};

/// This node's work on one channel's presence, applied in this order:
/// `sync`, then `changes`, then the check against `expected`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelPresence {
    pub channel: ChannelName,
    /// Send join and leave events for `changes`.
    pub events: bool,
    /// Replace this node's members of the channel with these, silently
    /// (no events): after an outage, or when the broker's count differed.
    pub sync: Option<Vec<Member>>,
    pub changes: Vec<PresenceChange>,
    /// How many members this node has in the channel once the changes are
    /// applied; the broker reports the channel when its count differs, and
    /// 0 removes the node from the channel.
    pub expected: usize,
}

/// A change to this node's members of a channel.
#[derive(Debug, Clone, PartialEq)]
pub enum PresenceChange {
    /// A connection joined (an event, if events are on and it was new).
    Join(Member),
    /// A connection left (an event, if events are on and it was there).
    Leave(Member),
}

/// A batch of presence work from one node: every channel with changes, and
/// the channels whose refresh is due. Applying it also refreshes this
/// node's entries in each channel of the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceBatch {
    /// How long this node's entries live without a refresh.
    pub ttl: Duration,
    /// Join and leave events per channel per second, at most.
    pub event_rate: u32,
    pub channels: Vec<ChannelPresence>,
}

/// What a channel's presence counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PresenceStats {
    /// Connections in the channel.
    pub clients: u64,
    /// Distinct non-empty user ids among them.
    pub users: u64,
}

/// A join or leave, as the broker reports it to every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    Join {
        channel: ChannelName,
        member: Member,
        first: bool,
    },
    Leave {
        channel: ChannelName,
        member: Member,
        last: bool,
    },
}

impl PresenceEvent {
    pub fn channel(&self) -> &ChannelName {
        match self {
            PresenceEvent::Join { channel, .. } | PresenceEvent::Leave { channel, .. } => channel,
        }
    }
}
