//! Moves publications between gateway nodes.
//!
//! A [`Broker`] is what a node publishes into and subscribes through. It is
//! deliberately small: publish one message, read a channel's history,
//! subscribe or unsubscribe a batch of channels, and report health.
//! Incoming publications are pushed into the node's [`Listener`] (the hub's
//! channel table) as they arrive, in broker order per channel; the listener
//! must not block, so a slow WebSocket client can never stall the broker's
//! reader.
//!
//! [`open`] builds the broker a [`BrokerConfig`] asks for; [`Broker::start`]
//! then hands it the listener and starts its tasks, and [`Broker::close`]
//! stops them. Implementations:
//! - [`memory::MemoryBroker`]: embedded, in-process; the default for a single
//!   node without Redis.
//! - [`redis::RedisBroker`]: Redis Pub/Sub on one Redis, or sharded pub/sub
//!   on a Redis Cluster for more than one Redis can carry.
//!
//! Every implementation keeps the same contract, which the conformance
//! suite ([`testing::conformance`], feature `testing`) checks against each
//! of them: a new broker is done when it passes that suite.
//!
//! The node keeps one broker subscription per channel with local subscribers
//! and drives `subscribe`/`unsubscribe` from a single task, so implementations
//! see calls for one channel in order and never concurrently.
//!
//! Every channel is a stream: each publication gets the next `offset` (1, 2,
//! 3, ... without holes) within the channel's `epoch`, an opaque name that
//! changes whenever the sequence restarts (the broker lost the channel's
//! state, or it expired after `history_ttl` without publications). The last
//! `history_size` publications are kept for recovery ([`Broker::history`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use pubsub_proto::{ChannelName, Member, Publication};
use tokio::sync::watch;

pub mod memory;
pub mod presence;
pub mod redis;
#[cfg(feature = "testing")]
pub mod testing;

pub use presence::{ChannelPresence, PresenceBatch, PresenceChange, PresenceEvent, PresenceStats};

/// A boxed future, so that [`Broker`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The interface between a node and the system that connects nodes.
pub trait Broker: Send + Sync + 'static {
    /// Publishes `data` on `channel` to every node subscribed to it, as the
    /// channel's next offset, and keeps it in the channel's history as
    /// `options` say. Resolves once the broker has accepted the publication;
    /// an error means it was not published.
    fn publish(
        &self,
        channel: ChannelName,
        data: Bytes,
        options: StreamOptions,
    ) -> BoxFuture<'_, Result<Published, BrokerError>>;

    /// Publishes like [`Broker::publish`] unless a publication with the
    /// same `once.key` was made on `channel` within `once.window`: then
    /// nothing is published and the first one's position is returned, as
    /// [`Once::Duplicate`]. The check and the publication are one atomic
    /// step on the channel's shard, so racing retries on several nodes
    /// publish once.
    fn publish_once(
        &self,
        channel: ChannelName,
        data: Bytes,
        options: StreamOptions,
        once: Idempotency,
    ) -> BoxFuture<'_, Result<Once, BrokerError>>;

    /// The channel's current position and, with `since`, the publications
    /// after offset `since` still in its history (oldest first, at most
    /// `limit`). A channel without a stream reports ([`NO_STREAM`], 0) and
    /// is not given one: reads create nothing.
    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<u64>,
        limit: usize,
        options: StreamOptions,
    ) -> BoxFuture<'a, Result<History, BrokerError>>;

    /// Drops the channel's stream: its history, offset and epoch. Reads
    /// then report [`NO_STREAM`]; the next publication starts a new epoch,
    /// so subscribers and recovering clients are told of the break (a gap
    /// notice, `recovered: false`). A channel without a stream is left as
    /// it is.
    fn remove_history<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Starts a new epoch for `channel` if its stream is still in `epoch`,
    /// and returns the position afterwards. A node calls this when the
    /// channel's offset went back below what it already delivered in that
    /// epoch (the broker lost acknowledged publications, for example after
    /// a failover to a replica that was behind): restarting the sequence
    /// tells every node and client that the stream restarted, instead of
    /// letting new publications pass for old ones.
    fn restart_stream<'a>(
        &'a self,
        channel: &'a ChannelName,
        epoch: &'a str,
        options: StreamOptions,
    ) -> BoxFuture<'a, Result<History, BrokerError>>;

    /// Starts delivering publications on `channels` to this node's listener.
    /// When it resolves `Ok`, every publication accepted afterwards reaches
    /// the listener. `Err(Partial)` names the channels that failed; the
    /// others are subscribed.
    fn subscribe<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Stops delivering publications on `channels` to this node.
    fn unsubscribe<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Applies this node's presence work ([`presence`]): every channel of
    /// the batch in one round trip where the broker allows, each channel's
    /// changes in order. Returns the channels whose count of this node's
    /// members differed from `expected` (the node syncs them next time).
    /// `Err(Partial)` names the channels that were not applied.
    fn presence_update<'a>(
        &'a self,
        batch: &'a PresenceBatch,
    ) -> BoxFuture<'a, Result<Vec<ChannelName>, BrokerError>>;

    /// The members of `channel` on every node. Members of nodes whose
    /// entries expired are dropped first (with leave events at most
    /// `events` per second, if given).
    fn presence<'a>(
        &'a self,
        channel: &'a ChannelName,
        events: Option<u32>,
    ) -> BoxFuture<'a, Result<Vec<Member>, BrokerError>>;

    /// How many clients and distinct users `channel` has, without reading
    /// the members (the cost does not grow with their number).
    fn presence_stats<'a>(
        &'a self,
        channel: &'a ChannelName,
        events: Option<u32>,
    ) -> BoxFuture<'a, Result<PresenceStats, BrokerError>>;

    /// Announces this node for `ttl`: `info` (JSON text) is what
    /// [`Broker::nodes`] returns for it until the announcement lapses. Nodes
    /// announce themselves periodically; a node that died drops out within
    /// its `ttl`.
    fn announce_node<'a>(&'a self, info: &'a [u8], ttl: Duration) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The latest announcement of every node whose announcement has not
    /// lapsed (with the embedded broker: this node's).
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<Bytes>, BrokerError>>;

    /// Sends `message` to the node `node` (its `--node-id`), whose
    /// listener gets it in [`Listener::on_node_message`]; at most once, and
    /// not at all to a node that is not connected (like a publication, it
    /// is not stored). With the embedded broker every node id is this one.
    fn send_to_node<'a>(&'a self, node: &'a str, message: &'a [u8])
    -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Current health, updated as it changes.
    fn health(&self) -> watch::Receiver<Health>;

    /// Short name for logs and metrics, such as `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// Hands the broker the listener it delivers into and starts its
    /// background tasks (connections, supervisors, sweepers). Called once,
    /// inside a tokio runtime, before any other call; a second call is
    /// ignored.
    fn start(&self, listener: Arc<dyn Listener>);

    /// Stops the broker's background tasks and resolves once they ended.
    /// Calls made afterwards fail with [`BrokerError::Unavailable`] (or are
    /// answered from what the broker still holds, for the memory broker).
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Which broker a node uses.
#[derive(Debug, Clone)]
pub enum BrokerConfig {
    /// The embedded broker: one node, nothing else to run.
    Memory(memory::MemoryLimits),
    /// Redis (one server or a cluster).
    Redis(Box<redis::RedisConfig>),
}

/// Builds the broker `config` asks for, checking its settings. Nothing
/// runs until [`Broker::start`].
pub fn open(config: BrokerConfig, metrics: BrokerMetrics) -> Result<Arc<dyn Broker>, BrokerError> {
    Ok(match config {
        BrokerConfig::Memory(limits) => Arc::new(memory::MemoryBroker::with_limits(limits)),
        BrokerConfig::Redis(config) => Arc::new(redis::RedisBroker::new(*config, metrics)?),
    })
}

/// Where a broker keeps its listener once [`Broker::start`] handed it over.
#[derive(Default)]
pub(crate) struct ListenerSlot(OnceLock<Arc<dyn Listener>>);

impl ListenerSlot {
    /// Stores the listener; false if one was stored before.
    pub(crate) fn set(&self, listener: Arc<dyn Listener>) -> bool {
        self.0.set(listener).is_ok()
    }

    /// The listener, once started.
    pub(crate) fn get(&self) -> Option<&Arc<dyn Listener>> {
        self.0.get()
    }

    pub(crate) fn on_publication(&self, publication: Publication) {
        if let Some(listener) = self.get() {
            listener.on_publication(publication);
        }
    }

    pub(crate) fn on_event(&self, event: BrokerEvent) {
        if let Some(listener) = self.get() {
            listener.on_event(event);
        }
    }

    pub(crate) fn on_presence(&self, event: PresenceEvent) {
        if let Some(listener) = self.get() {
            listener.on_presence(event);
        }
    }

    pub(crate) fn on_node_message(&self, message: Bytes) {
        if let Some(listener) = self.get() {
            listener.on_node_message(message);
        }
    }
}

/// Receives what a broker delivers to this node. Implemented by the hub.
pub trait Listener: Send + Sync + 'static {
    /// A publication on a channel this node subscribed to. Called in broker
    /// order per channel. Must return quickly and never wait on clients.
    fn on_publication(&self, publication: Publication);

    /// The broker's connection changed state. After [`BrokerEvent::Restored`]
    /// the node may have missed publications while it was down.
    fn on_event(&self, event: BrokerEvent);

    /// A member joined or left a channel (its namespace has join and
    /// leave events on), on any node. Called in the order the broker
    /// applied the changes per channel; must return quickly.
    fn on_presence(&self, event: PresenceEvent);

    /// A message another node (or this one) addressed to this node with
    /// [`Broker::send_to_node`]: server-side operations such as a
    /// disconnect. Must return quickly.
    fn on_node_message(&self, message: Bytes) {
        let _ = message;
    }
}

/// Metric handles a broker records into (registered by the node).
#[derive(Clone)]
pub struct BrokerMetrics {
    /// Seconds from publish on any node to arrival on this node.
    pub latency: metrics::Histogram,
    /// Successful reconnections after the connection was lost.
    pub reconnects: metrics::Counter,
    /// Times the subscription probe did not come back in time.
    pub probe_failures: metrics::Counter,
    /// Broker messages dropped as unreadable.
    pub dropped: metrics::Counter,
    /// The up/down gauge of one shard (Redis Cluster), by shard label.
    pub shard_up: Arc<dyn Fn(&str) -> metrics::Gauge + Send + Sync>,
}

impl Default for BrokerMetrics {
    /// Handles that record nothing.
    fn default() -> Self {
        BrokerMetrics {
            latency: metrics::Histogram::noop(),
            reconnects: metrics::Counter::noop(),
            probe_failures: metrics::Counter::noop(),
            dropped: metrics::Counter::noop(),
            shard_up: Arc::new(|_| metrics::Gauge::noop()),
        }
    }
}

/// Connection-state changes a node must know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerEvent {
    /// The broker became unreachable; publications may be missed from now on.
    Lost { reason: String },
    /// The broker is reachable again and every subscription is restored.
    Restored,
    /// Publications on these channels may have been missed (their shard
    /// failed over, their slot moved, their subscription was restored), and
    /// the subscriptions are in place again: catch up from history.
    Missed {
        channels: Vec<ChannelName>,
        reason: String,
    },
}

/// Health of a broker as the node's readiness check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// True when publish and subscribe are expected to work.
    pub up: bool,
    /// Human-readable detail, such as the last connection error.
    pub detail: String,
}

impl Health {
    /// A healthy broker.
    pub fn up() -> Self {
        Health {
            up: true,
            detail: String::from("ok"),
        }
    }

    /// An unhealthy broker, with the reason.
    pub fn down(detail: impl Into<String>) -> Self {
        Health {
            up: false,
            detail: detail.into(),
        }
    }
}

/// What a successful publish returns: the publication's position in its
/// channel's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub offset: u64,
    pub epoch: Arc<str>,
}

/// A publication's idempotency key and how long it is remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] bytes of `A-Z a-z 0-9 _ - . :`
    /// ([`validate_idempotency_key`]).
    pub key: String,
    pub window: Duration,
}

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// Checks an idempotency key: 1 to 128 bytes of `A-Z a-z 0-9 _ - . :`
/// (it becomes part of a Redis key name).
pub fn validate_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(format!(
            "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
        ));
    }
    match key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        Some(c) => Err(format!(
            "idempotency_key contains {c:?}; allowed are A-Z a-z 0-9 _ - . :"
        )),
        None => Ok(()),
    }
}

/// What an idempotent publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Once {
    /// Published now, at this position.
    Published(Published),
    /// Published before with the same key: this is where it went; nothing
    /// was published now.
    Duplicate(Published),
}

impl Once {
    pub fn position(&self) -> &Published {
        match self {
            Once::Published(p) | Once::Duplicate(p) => p,
        }
    }

    pub fn is_duplicate(&self) -> bool {
        matches!(self, Once::Duplicate(_))
    }
}

/// The epoch reported for a channel that has no stream: nothing was ever
/// published on it, or its stream expired. Reading a channel or
/// subscribing to it creates no stream (so neither can grow the broker's
/// state); the first publication starts one with a fresh epoch at offset
/// 1, which continues a position of (`NO_STREAM`, 0) without a gap.
pub const NO_STREAM: &str = "";

/// A channel's position and the publications read from its history.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub epoch: Arc<str>,
    /// Offset of the channel's latest publication (0: none yet).
    pub offset: u64,
    /// Publications after the requested offset, oldest first, each with
    /// `offset` and `epoch` set.
    pub publications: Vec<Publication>,
}

impl History {
    /// The position of a channel without a stream ([`NO_STREAM`], 0).
    pub fn none() -> History {
        History {
            epoch: Arc::from(NO_STREAM),
            offset: 0,
            publications: Vec::new(),
        }
    }
}

/// How a channel's stream is kept; set per namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// Publications kept for recovery; 0 keeps none (offsets are still
    /// assigned).
    pub history_size: usize,
    /// How long a channel's stream (history, offset, epoch) survives without
    /// publications. After that its epoch changes.
    pub history_ttl: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            history_size: 100,
            history_ttl: Duration::from_secs(600),
        }
    }
}

/// A new epoch name: random, so that a restarted sequence is never mistaken
/// for the old one.
pub fn new_epoch() -> String {
    (0..12).map(|_| fastrand::alphanumeric()).collect()
}

/// Why a broker operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached; nothing was done. Retrying later may work.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker answered with something unexpected.
    #[error("broker error: {0}")]
    Internal(String),
    /// A bound on what the broker keeps refused the operation (the
    /// embedded broker's stream limit); nothing was done.
    #[error("broker limit reached: {0}")]
    LimitExceeded(String),
    /// Only these channels of a `subscribe` failed, with this error; every
    /// other channel of the call was subscribed (a cluster with one shard
    /// down).
    #[error("{count} channels not subscribed: {error}", count = .0.len(), error = .1)]
    Partial(Vec<ChannelName>, Box<BrokerError>),
}

impl fmt::Debug for dyn Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Broker({})", self.kind())
    }
}
