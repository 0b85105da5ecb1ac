//! The hub: the node's view of channels.
//!
//! Sessions and the HTTP API talk to the hub, never to the broker directly.
//! The hub keeps one broker subscription per channel with local subscribers
//! (reference-counted through the channel table, driven by the subscription
//! manager), keeps each channel's stream gap-free for local subscribers
//! (the repair task reads history when a hole appears or after an outage),
//! and plans client recovery.
//!
//! Data flow: session → hub → broker → (every node's) hub → outboxes →
//! sessions.

mod channels;
mod recovery;
mod repair;
mod stream;
mod subscriptions;

use std::sync::Arc;

use broker_adapter::{Broker, BrokerError, Health, History, Listener, Published};
use bytes::Bytes;
use pubsub_proto::{ChannelName, StreamPosition};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::namespaces::Namespaces;
use crate::outbox::Outgoing;
use crate::peer::Peer;
pub use channels::Joined;
use channels::{Channels, Counters, Join};
pub use recovery::Plan;

/// Where a publication came from, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Api,
    Client,
}

/// Why a publication was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("publication data is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The node's channels and its broker.
pub struct Hub {
    channels: Arc<Channels>,
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    namespaces: Namespaces,
    max_publication_size: usize,
}

impl Hub {
    /// Builds the hub around the broker that `make_broker` creates (given
    /// the listener it must deliver into) and starts the subscription
    /// manager and the repair task.
    pub fn start(
        metrics: Arc<Metrics>,
        namespaces: Namespaces,
        max_publication_size: usize,
        make_broker: impl FnOnce(Arc<dyn Listener>) -> Arc<dyn Broker>,
    ) -> (Hub, Vec<JoinHandle<()>>) {
        let (dirty_tx, dirty_rx) = mpsc::unbounded_channel();
        let (repair_tx, repair_rx) = mpsc::unbounded_channel();
        let counters = Counters {
            subscriptions: metrics.subscriptions.clone(),
            channels: metrics.channels.clone(),
            gap_notices: metrics.gap_notices.clone(),
            repairs: metrics.repairs.clone(),
        };
        let channels = Arc::new(Channels::new(dirty_tx, repair_tx, counters));
        let broker = make_broker(channels.clone());
        let tasks = vec![
            tokio::spawn(subscriptions::run(channels.clone(), broker.clone(), dirty_rx)),
            tokio::spawn(repair::run(channels.clone(), broker.clone(), repair_rx)),
        ];
        let hub = Hub {
            channels,
            broker,
            metrics,
            namespaces,
            max_publication_size,
        };
        (hub, tasks)
    }

    /// Joins `peer` to `channel` in syncing mode: what arrives from now on
    /// waits for [`Hub::finish_subscribe`]. Resolves with the position the
    /// peer joined at, once the broker subscription is confirmed.
    pub async fn subscribe(&self, channel: &ChannelName, peer: &Arc<Peer>) -> Result<Joined, BrokerError> {
        let options = self.namespaces.of(channel).stream_options();
        match self.channels.join(channel, peer, options) {
            Join::Joined(joined) => Ok(joined),
            Join::Waiting(done) => done
                .await
                .unwrap_or_else(|_| Err(BrokerError::Internal("subscription manager stopped".into()))),
        }
    }

    /// Decides what a joined peer gets: with `since`, reads history and
    /// plans an exact replay or reports that recovery is impossible.
    pub async fn plan_recovery(
        &self,
        channel: &ChannelName,
        joined: &Joined,
        since: Option<StreamPosition>,
    ) -> Result<Plan, BrokerError> {
        let options = self.namespaces.of(channel).stream_options();
        let history = match recovery::need(joined, since.as_ref(), options.history_size) {
            recovery::Need::Nothing => None,
            recovery::Need::History { since, limit } => {
                Some(self.broker.history(channel, Some(since), limit, options).await?)
            }
        };
        Ok(recovery::plan(joined, since, history))
    }

    /// Ends a subscribe: queues `first` (the `subscribed` reply), the
    /// planned replay, then everything that arrived since the join.
    pub fn finish_subscribe(&self, channel: &ChannelName, peer_id: u64, first: Outgoing, plan: Plan) {
        self.channels
            .finish_sync(channel, peer_id, first, plan.replay, plan.floor);
    }

    /// Removes `peer_id` from `channel`. Never waits.
    pub fn unsubscribe(&self, channel: &ChannelName, peer_id: u64) {
        self.channels.leave(channel, peer_id);
    }

    /// Publishes `data` on `channel` through the broker, as the channel's
    /// next offset.
    pub async fn publish(
        &self,
        channel: ChannelName,
        data: Bytes,
        source: Source,
    ) -> Result<Published, PublishError> {
        if data.len() > self.max_publication_size {
            return Err(PublishError::TooLarge {
                size: data.len(),
                limit: self.max_publication_size,
            });
        }
        let options = self.namespaces.of(&channel).stream_options();
        let published = self.broker.publish(channel, data, options).await?;
        match source {
            Source::Api => self.metrics.published_api.increment(1),
            Source::Client => self.metrics.published_client.increment(1),
        }
        Ok(published)
    }

    /// A channel's position and, with `since`, its history after it.
    pub async fn history(
        &self,
        channel: &ChannelName,
        since: Option<u64>,
        limit: usize,
    ) -> Result<History, BrokerError> {
        let options = self.namespaces.of(channel).stream_options();
        self.broker.history(channel, since, limit, options).await
    }

    /// The broker's health, updated as it changes.
    pub fn broker_health(&self) -> watch::Receiver<Health> {
        self.broker.health()
    }

    /// Which broker this node uses (`memory`, `redis`).
    pub fn broker_kind(&self) -> &'static str {
        self.broker.kind()
    }

    /// Channels with local subscribers.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// The largest publication accepted, in bytes.
    pub fn max_publication_size(&self) -> usize {
        self.max_publication_size
    }
}
