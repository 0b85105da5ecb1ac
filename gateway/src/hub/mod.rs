//! The hub: the node's view of channels.
//!
//! Sessions and the HTTP API talk to the hub, never to the broker directly.
//! The hub keeps one broker subscription per channel with local subscribers
//! (reference-counted through the channel table, driven by the subscription
//! manager) and checks publications before they go to the broker.
//!
//! Data flow: session → hub → broker → (every node's) hub → outboxes →
//! sessions.

mod channels;
mod subscriptions;

use std::sync::Arc;

use broker_adapter::{Broker, BrokerError, Health, Listener, Published};
use bytes::Bytes;
use pubsub_proto::ChannelName;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::outbox::Outgoing;
use crate::peer::Peer;
use channels::{Channels, Join};

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
    max_publication_size: usize,
}

impl Hub {
    /// Builds the hub around the broker that `make_broker` creates (given
    /// the listener it must deliver into) and starts the subscription
    /// manager.
    pub fn start(
        metrics: Arc<Metrics>,
        max_publication_size: usize,
        make_broker: impl FnOnce(Arc<dyn Listener>) -> Arc<dyn Broker>,
    ) -> (Hub, JoinHandle<()>) {
        let (dirty_tx, dirty_rx) = mpsc::unbounded_channel();
        let channels = Arc::new(Channels::new(
            dirty_tx,
            metrics.subscriptions.clone(),
            metrics.channels.clone(),
        ));
        let broker = make_broker(channels.clone());
        let manager = tokio::spawn(subscriptions::run(channels.clone(), broker.clone(), dirty_rx));
        let hub = Hub {
            channels,
            broker,
            metrics,
            max_publication_size,
        };
        (hub, manager)
    }

    /// Subscribes `peer` to `channel`. `first` (the `subscribed` reply) is
    /// queued to the peer before any publication on the channel. Resolves
    /// once the broker subscription is confirmed.
    pub async fn subscribe(
        &self,
        channel: &ChannelName,
        peer: &Arc<Peer>,
        first: Outgoing,
    ) -> Result<(), BrokerError> {
        match self.channels.join(channel, peer, first) {
            Join::Joined => Ok(()),
            Join::Waiting(done) => done
                .await
                .unwrap_or_else(|_| Err(BrokerError::Internal("subscription manager stopped".into()))),
        }
    }

    /// Removes `peer_id` from `channel`. Never waits.
    pub fn unsubscribe(&self, channel: &ChannelName, peer_id: u64) {
        self.channels.leave(channel, peer_id);
    }

    /// Publishes `data` on `channel` through the broker.
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
        let published = self.broker.publish(channel, data).await?;
        match source {
            Source::Api => self.metrics.published_api.increment(1),
            Source::Client => self.metrics.published_client.increment(1),
        }
        Ok(published)
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
