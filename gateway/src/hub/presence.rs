//! This node's side of presence: its own members of each presence channel,
//! and the task that keeps the broker's view of them current.
//!
//! Sessions join and leave through [`Presence::join`]/[`Presence::leave`],
//! which only record the change (never wait). The presence task sends what
//! changed in batches: it wakes on a change, gathers for
//! [`GATHER`] so that a mass reconnect becomes a few batches rather than
//! one broker call per connection, and sends every channel with changes in
//! one [`broker_adapter::Broker::presence_update`]. The same batches
//! refresh the node's entries, every channel once per `ttl / 3`, so a node
//! that dies stops refreshing and its members expire within the TTL.
//!
//! The local members are the truth: when the broker's count differs (an
//! outage, a restarted Redis, an expiry during a stall), or a batch failed,
//! the channel is synced next time (its members registered again, without
//! events). After a broker outage every channel is synced. Closing the hub
//! sends the last changes (a drain's leaves) before the broker closes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use broker_adapter::{Broker, BrokerError, ChannelPresence, PresenceBatch, PresenceChange};
use parking_lot::Mutex;
use pubsub_proto::{ChannelName, Member};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long the task gathers changes after the first one before sending.
const GATHER: Duration = Duration::from_millis(20);
/// Channels per broker call, at most.
const BATCH: usize = 512;
/// After a failed batch, the wait before trying again.
const RETRY: Duration = Duration::from_millis(500);

/// One channel's members on this node and what the broker has not seen.
struct Local {
    members: HashMap<u64, Member>,
    pending: Vec<PresenceChange>,
    events: bool,
    /// The broker's view may differ: register every member again.
    sync: bool,
    /// When the broker last heard about this channel from this node.
    refreshed: Option<Instant>,
}

#[derive(Default)]
struct State {
    channels: HashMap<ChannelName, Local>,
    closed: bool,
}

/// Presence settings for the node.
#[derive(Debug, Clone, Copy)]
pub struct PresenceConfig {
    /// How long the node's entries live without a refresh.
    pub ttl: Duration,
    /// Join and leave events per channel per second, at most.
    pub event_rate: u32,
}

/// This node's members of every presence channel.
pub struct Presence {
    state: Mutex<State>,
    changed: Notify,
    config: PresenceConfig,
    /// Held while work is taken and sent, so that one channel's changes
    /// reach the broker in the order they were made.
    sending: tokio::sync::Mutex<()>,
}

impl Presence {
    pub fn new(config: PresenceConfig) -> Presence {
        Presence {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            config,
            sending: tokio::sync::Mutex::new(()),
        }
    }

    pub fn config(&self) -> PresenceConfig {
        self.config
    }

    /// `peer_id` joined `channel` as `member`. Never waits.
    pub fn join(&self, channel: &ChannelName, peer_id: u64, member: Member, events: bool) {
        let mut state = self.state.lock();
        if state.closed {
            return;
        }
        let local = state.channels.entry(channel.clone()).or_insert_with(|| Local {
            members: HashMap::new(),
            pending: Vec::new(),
            events,
            sync: false,
            refreshed: None,
        });
        if local.members.insert(peer_id, member.clone()).is_none() {
            local.pending.push(PresenceChange::Join(member));
        }
        drop(state);
        self.changed.notify_one();
    }

    /// `peer_id` left `channel` (unsubscribed or disconnected). Never waits.
    pub fn leave(&self, channel: &ChannelName, peer_id: u64) {
        let mut state = self.state.lock();
        let Some(local) = state.channels.get_mut(channel) else {
            return;
        };
        if let Some(member) = local.members.remove(&peer_id) {
            local.pending.push(PresenceChange::Leave(member));
            drop(state);
            self.changed.notify_one();
        }
    }

    /// The broker lost what it had (an outage ended): sync every channel.
    pub fn sync_all(&self) {
        let mut state = self.state.lock();
        for local in state.channels.values_mut() {
            local.sync = true;
        }
        drop(state);
        self.changed.notify_one();
    }

    /// Takes the work that is due: every channel with changes or a sync,
    /// and those whose refresh is due.
    fn take(&self, now: Instant, only: Option<&ChannelName>) -> Vec<ChannelPresence> {
        let refresh_every = self.config.ttl / 3;
        let mut state = self.state.lock();
        let mut work = Vec::new();
        state.channels.retain(|channel, local| {
            let due = local
                .refreshed
                .is_none_or(|at| now.duration_since(at) >= refresh_every);
            let wanted = match only {
                Some(only) => only == channel && (local.sync || !local.pending.is_empty()),
                None => due || local.sync || !local.pending.is_empty(),
            };
            if work.len() < BATCH && wanted {
                work.push(ChannelPresence {
                    channel: channel.clone(),
                    events: local.events,
                    sync: local.sync.then(|| local.members.values().cloned().collect()),
                    changes: std::mem::take(&mut local.pending),
                    expected: local.members.len(),
                });
                local.sync = false;
                local.refreshed = Some(now);
            }
            // A channel the node left is forgotten once the broker heard.
            !(local.members.is_empty() && local.pending.is_empty() && !local.sync)
        });
        work
    }

    /// The broker may have lost these channels' members (their shard
    /// failed over): sync them.
    pub fn sync(&self, channels: &[ChannelName]) {
        self.mark_sync(channels);
        self.changed.notify_one();
    }

    /// Channels the broker must sync next time.
    fn mark_sync(&self, channels: &[ChannelName]) {
        let mut state = self.state.lock();
        for channel in channels {
            if let Some(local) = state.channels.get_mut(channel) {
                local.sync = true;
            }
        }
    }

    /// Sends `work`; on failure the channels are synced later (their events
    /// are not sent: the broker was not there to send them).
    async fn send(&self, broker: &dyn Broker, channels: Vec<ChannelPresence>) -> bool {
        let names: Vec<ChannelName> = channels.iter().map(|c| c.channel.clone()).collect();
        let batch = PresenceBatch {
            ttl: self.config.ttl,
            event_rate: self.config.event_rate,
            channels,
        };
        match broker.presence_update(&batch).await {
            Ok(differing) => {
                if !differing.is_empty() {
                    tracing::debug!(channels = differing.len(), "presence differed: syncing");
                    self.mark_sync(&differing);
                }
                true
            }
            Err(BrokerError::Partial(failed, error)) => {
                tracing::warn!(channels = failed.len(), %error, "presence update failed for some channels");
                self.mark_sync(&failed);
                false
            }
            Err(error) => {
                tracing::warn!(%error, "presence update failed");
                self.mark_sync(&names);
                false
            }
        }
    }

    /// Sends `channel`'s pending changes now, so that a read that follows
    /// sees this node's members as they are (a client reading presence
    /// right after it subscribed finds itself).
    pub async fn flush(&self, broker: &dyn Broker, channel: &ChannelName) {
        let _sending = self.sending.lock().await;
        let work = self.take(Instant::now(), Some(channel));
        if !work.is_empty() {
            self.send(broker, work).await;
        }
    }

    /// Stops taking changes and sends what is pending (the leaves of a
    /// drain), at most within `within`.
    pub async fn close(&self, broker: &dyn Broker, within: Duration) {
        self.state.lock().closed = true;
        let _ = tokio::time::timeout(within, async {
            let _sending = self.sending.lock().await;
            loop {
                let work = self.take(Instant::now(), None);
                let pending = work.iter().any(|w| !w.changes.is_empty());
                if !pending || !self.send(broker, work).await {
                    return;
                }
            }
        })
        .await;
        self.changed.notify_one();
    }
}

/// The presence task: sends changes in batches and refreshes the node's
/// entries until the hub closes.
pub async fn run(presence: Arc<Presence>, broker: Arc<dyn Broker>) {
    let tick = (presence.config.ttl / 3).min(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = presence.changed.notified() => {
                // Let the changes of a burst gather into one batch.
                tokio::time::sleep(GATHER).await;
            }
            _ = tokio::time::sleep(tick) => {}
        }
        if presence.state.lock().closed {
            return;
        }
        loop {
            let sending = presence.sending.lock().await;
            let work = presence.take(Instant::now(), None);
            if work.is_empty() {
                break;
            }
            let full = work.len() >= BATCH;
            let sent = presence.send(&*broker, work).await;
            drop(sending);
            if !sent {
                tokio::time::sleep(RETRY).await;
                break;
            }
            if !full {
                break;
            }
        }
    }
}
