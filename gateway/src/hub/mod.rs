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
mod presence;
mod recovery;
mod repair;
mod stream;
mod subscriptions;
mod worklist;

use std::sync::Arc;

use broker_adapter::{Broker, BrokerError, Health, History, Idempotency, Once, PresenceStats, Published};
use bytes::Bytes;
use pubsub_proto::{ChannelName, Member, Reply, ServerMessage, StreamPosition};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Namespaces;
use crate::metrics::Metrics;
use crate::peer::Peer;
use channels::{Channels, Counters, Join};
use presence::Presence;
pub use presence::PresenceConfig;
use worklist::Worklist;

/// How long closing the hub waits for the last presence changes (a
/// drain's leaves) to reach the broker.
const PRESENCE_CLOSE: std::time::Duration = std::time::Duration::from_secs(2);

/// Where a publication came from, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Api,
    Client,
}

/// Why the hub could not do what was asked. Broker errors stop here: what
/// is above the hub (sessions, the HTTP API) sees only these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The publication's data is over `--max-publication-size`.
    #[error("publication data is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    /// The broker (or the channel's shard) cannot be reached; nothing was
    /// done. Retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// The broker refused, or something unexpected happened.
    #[error("{0}")]
    Internal(String),
    /// The channel's namespace does not offer this (presence).
    #[error("{0}")]
    NotAvailable(String),
    /// A bound on what the node keeps (the embedded broker's stream limit)
    /// refused a publication into a new channel; nothing was done.
    #[error("{0}")]
    LimitExceeded(String),
}

impl HubError {
    /// What a client or caller is told: the broker's own error text (an
    /// address, an OS error, a Redis reply) stays in the log, where the
    /// details are logged once here.
    pub fn public_message(&self) -> String {
        match self {
            HubError::Unavailable(detail) => {
                tracing::debug!(%detail, "broker unavailable");
                "the broker is unavailable right now; retry shortly".into()
            }
            HubError::Internal(detail) => {
                tracing::warn!(%detail, "broker error");
                "internal error (the node's log has the details)".into()
            }
            HubError::TooLarge { .. } | HubError::NotAvailable(_) => self.to_string(),
            HubError::LimitExceeded(_) => {
                "the node holds as many channel streams as it may; retry later".into()
            }
        }
    }
}

impl From<BrokerError> for HubError {
    fn from(error: BrokerError) -> HubError {
        match error {
            BrokerError::Unavailable(_) | BrokerError::Partial(..) => {
                HubError::Unavailable(error.to_string())
            }
            BrokerError::Internal(_) => HubError::Internal(error.to_string()),
            BrokerError::LimitExceeded(_) => HubError::LimitExceeded(error.to_string()),
        }
    }
}

/// A client's subscribe: which channel, since where, and the command id
/// the `subscribed` reply echoes.
pub struct SubscribeRequest {
    pub id: Option<u64>,
    pub channel: ChannelName,
    pub since: Option<StreamPosition>,
    /// Ordered by the server (`POST /api/subscribe`): the reply is a
    /// notice marked `server`.
    pub server: bool,
}

/// A subscription that went live: the `subscribed` reply and any replay
/// are queued to the peer, live publications follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub position: StreamPosition,
    /// `None` without `since`; otherwise whether the replay is complete.
    pub recovered: Option<bool>,
}

/// The node's channels and its broker.
pub struct Hub {
    channels: Arc<Channels>,
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    namespaces: Namespaces,
    max_publication_size: usize,
    dirty: Arc<Worklist>,
    repairs: Arc<Worklist>,
    presence: Arc<Presence>,
    /// Messages addressed to this node, until the control task takes them.
    node_inbox: parking_lot::Mutex<Option<tokio::sync::mpsc::Receiver<Bytes>>>,
}

/// Node messages queued for the control task, at most.
const NODE_MESSAGES: usize = 1024;

impl Hub {
    /// Builds the hub around `broker`, hands the broker the channel table
    /// as its listener (which starts the broker), and starts the
    /// subscription manager and the repair task.
    pub fn start(
        metrics: Arc<Metrics>,
        namespaces: Namespaces,
        max_publication_size: usize,
        presence: PresenceConfig,
        broker: Arc<dyn Broker>,
    ) -> (Hub, Vec<JoinHandle<()>>) {
        let presence = Arc::new(Presence::new(presence));
        let (dirty, repairs) = (Arc::new(Worklist::default()), Arc::new(Worklist::default()));
        let counters = Counters {
            subscriptions: metrics.subscriptions.clone(),
            channels: metrics.channels.clone(),
            gap_notices: metrics.gap_notices.clone(),
            repairs: metrics.repairs.clone(),
        };
        let (node_messages, node_inbox) = tokio::sync::mpsc::channel(NODE_MESSAGES);
        let channels = Arc::new(Channels::new(
            dirty.clone(),
            repairs.clone(),
            counters,
            presence.clone(),
            node_messages,
        ));
        broker.start(channels.clone());
        let tasks = vec![
            tokio::spawn(subscriptions::run(
                channels.clone(),
                broker.clone(),
                dirty.clone(),
            )),
            tokio::spawn(repair::run(channels.clone(), broker.clone(), repairs.clone())),
            tokio::spawn(presence::run(presence.clone(), broker.clone())),
        ];
        let hub = Hub {
            channels,
            broker,
            metrics,
            namespaces,
            max_publication_size,
            dirty,
            repairs,
            presence,
            node_inbox: parking_lot::Mutex::new(Some(node_inbox)),
        };
        (hub, tasks)
    }

    /// Subscribes `peer`: joins the channel (once the broker subscription
    /// is confirmed), replays what it missed since `since` if it can, and
    /// queues the `subscribed` reply, the replay and then every live
    /// publication after the join, with neither gap nor duplicate between
    /// them. On error nothing is left behind and nothing was queued.
    pub async fn subscribe(
        &self,
        peer: &Arc<Peer>,
        request: SubscribeRequest,
    ) -> Result<Subscription, HubError> {
        let SubscribeRequest {
            id,
            channel,
            since,
            server,
        } = request;
        let options = self.namespaces.of(&channel).stream_options();
        let joined = match self.channels.join(&channel, peer, options) {
            Join::Joined(joined) => joined,
            Join::Waiting(done) => done
                .await
                .unwrap_or_else(|_| Err(BrokerError::Internal("subscription manager stopped".into())))?,
        };
        let history = match recovery::need(&joined, since.as_ref(), options.history_size) {
            recovery::Need::Nothing => None,
            recovery::Need::History { since, limit } => {
                match self.broker.history(&channel, Some(since), limit, options).await {
                    Ok(history) => Some(history),
                    Err(error) => {
                        // Leave, so the client can retry with the same
                        // position later.
                        self.channels.leave(&channel, peer.id);
                        return Err(error.into());
                    }
                }
            }
        };
        let plan = recovery::plan(&joined, since, history);
        let subscription = Subscription {
            position: plan.position.clone(),
            recovered: plan.recovered,
        };
        let reply = ServerMessage {
            id,
            reply: Reply::Subscribed {
                channel: channel.clone(),
                position: Some(plan.position),
                recovered: plan.recovered,
                server,
            },
        };
        self.channels
            .finish_sync(&channel, peer.id, &reply, plan.replay, plan.floor);
        let namespace = self.namespaces.of(&channel);
        if namespace.tracks_members() {
            let who = peer.who();
            let member = Member {
                client: peer.client(),
                user: who.map(|w| w.user.to_string()).unwrap_or_default(),
                info: who.and_then(|w| w.info.clone()),
            };
            self.presence
                .join(&channel, peer.id, member, namespace.join_leave);
        }
        Ok(subscription)
    }

    /// Removes `peer_id` from `channel`. Never waits.
    pub fn unsubscribe(&self, channel: &ChannelName, peer_id: u64) {
        self.channels.leave(channel, peer_id);
        if self.namespaces.of(channel).tracks_members() {
            self.presence.leave(channel, peer_id);
        }
    }

    /// The members of `channel` across nodes.
    pub async fn presence(&self, channel: &ChannelName) -> Result<Vec<Member>, HubError> {
        let events = self.presence_events(channel)?;
        self.presence.flush(&*self.broker, channel).await;
        Ok(self.broker.presence(channel, events).await?)
    }

    /// How many clients and distinct users `channel` has across nodes.
    pub async fn presence_stats(&self, channel: &ChannelName) -> Result<PresenceStats, HubError> {
        let events = self.presence_events(channel)?;
        self.presence.flush(&*self.broker, channel).await;
        Ok(self.broker.presence_stats(channel, events).await?)
    }

    /// `NotAvailable` unless the channel's namespace has presence; else
    /// the event rate for leaves found while reading (members of a node
    /// that expired), if its subscribers get events.
    fn presence_events(&self, channel: &ChannelName) -> Result<Option<u32>, HubError> {
        let namespace = self.namespaces.of(channel);
        if !namespace.presence {
            return Err(HubError::NotAvailable(format!(
                "presence is not enabled for {channel} (set presence = true in its namespace)"
            )));
        }
        Ok(namespace.join_leave.then_some(self.presence.config().event_rate))
    }

    /// Publishes `data` on `channel` through the broker, as the channel's
    /// next offset.
    pub async fn publish(
        &self,
        channel: ChannelName,
        data: Bytes,
        source: Source,
    ) -> Result<Published, HubError> {
        let outcome = self.publish_once(channel, data, source, None).await?;
        Ok(outcome.position().clone())
    }

    /// Publishes unless `once` names a key already used on the channel
    /// within its window (then answers with that publication's position).
    pub async fn publish_once(
        &self,
        channel: ChannelName,
        data: Bytes,
        source: Source,
        once: Option<Idempotency>,
    ) -> Result<Once, HubError> {
        if data.len() > self.max_publication_size {
            return Err(HubError::TooLarge {
                size: data.len(),
                limit: self.max_publication_size,
            });
        }
        let options = self.namespaces.of(&channel).stream_options();
        let outcome = match once {
            Some(once) => self.broker.publish_once(channel, data, options, once).await?,
            None => Once::Published(self.broker.publish(channel, data, options).await?),
        };
        match (&outcome, source) {
            (Once::Duplicate(_), _) => self.metrics.publish_duplicates.increment(1),
            (Once::Published(_), Source::Api) => self.metrics.published_api.increment(1),
            (Once::Published(_), Source::Client) => self.metrics.published_client.increment(1),
        }
        Ok(outcome)
    }

    /// Drops a channel's history, offset and epoch (`POST
    /// /api/history/remove`); its next publication starts a new epoch.
    pub async fn remove_history(&self, channel: &ChannelName) -> Result<(), HubError> {
        Ok(self.broker.remove_history(channel).await?)
    }

    /// A channel's position and, with `since`, its history after it.
    pub async fn history(
        &self,
        channel: &ChannelName,
        since: Option<u64>,
        limit: usize,
    ) -> Result<History, HubError> {
        let options = self.namespaces.of(channel).stream_options();
        Ok(self.broker.history(channel, since, limit, options).await?)
    }

    /// The broker's health, updated as it changes.
    pub fn broker_health(&self) -> watch::Receiver<Health> {
        self.broker.health()
    }

    /// Which broker this node uses (`memory`, `redis`, `redis-cluster`).
    pub fn broker_kind(&self) -> &'static str {
        self.broker.kind()
    }

    /// Channels with local subscribers.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// A page of the channels with local subscribers and their counts (see
    /// `GET /api/channels`).
    pub fn channel_page(
        &self,
        pattern: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(ChannelName, usize)> {
        self.channels.page(pattern, after, limit)
    }

    /// Subscriptions of local clients.
    pub fn subscription_count(&self) -> usize {
        self.channels.subscription_count()
    }

    /// Announces this node (its info as JSON) for `ttl` (see `GET /api/info`).
    pub async fn announce(&self, info: &[u8], ttl: std::time::Duration) -> Result<(), HubError> {
        Ok(self.broker.announce_node(info, ttl).await?)
    }

    /// The latest announcement of every live node.
    pub async fn nodes(&self) -> Result<Vec<Bytes>, HubError> {
        Ok(self.broker.nodes().await?)
    }

    /// Sends `message` to node `node` (see [`Broker::send_to_node`]).
    pub async fn send_to_node(&self, node: &str, message: &[u8]) -> Result<(), HubError> {
        Ok(self.broker.send_to_node(node, message).await?)
    }

    /// The messages other nodes address to this one; `None` once taken.
    pub fn take_node_inbox(&self) -> Option<tokio::sync::mpsc::Receiver<Bytes>> {
        self.node_inbox.lock().take()
    }

    /// The largest publication accepted, in bytes.
    pub fn max_publication_size(&self) -> usize {
        self.max_publication_size
    }

    /// Stops the hub's tasks and the broker's (shutdown).
    pub async fn close(&self) {
        self.dirty.close();
        self.repairs.close();
        self.presence.close(&*self.broker, PRESENCE_CLOSE).await;
        self.broker.close().await;
    }
}
