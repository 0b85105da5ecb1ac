//! The Redis broker: nodes meet on Redis Pub/Sub, on one Redis or on a
//! Redis Cluster.
//!
//! Both shapes share everything but how they reach Redis:
//! - [`RedisBroker`] (here) is the one [`Broker`] implementation: it wraps
//!   a publication in the envelope and runs the stream scripts
//!   ([`streams`]) on the connection that serves the channel ([`route`]);
//! - [`supervisor`] is the one loop that connects, serves, notices a dead
//!   connection, reports it and reconnects with backoff; what "connect" and
//!   "serve" mean is a link: [`single`] (one Redis: a pub/sub connection and
//!   a publishing connection, one probe) or [`cluster`] (sharded pub/sub:
//!   slot layout, a probe per shard, channels that move);
//! - [`push`] hands what arrives on a pub/sub connection to the listener,
//!   [`names`] names channels and keys.
//!
//! While Redis (or a channel's shard) is unreachable, health is down,
//! publishes fail at once with `Unavailable` (never reported as published),
//! subscribes fail, and the supervisor reconnects with exponential backoff
//! and full jitter, then resubscribes every channel still wanted before
//! reporting healthy again. Probes published on the node's own channels
//! every `probe_interval` must come back within `probe_timeout`, which
//! catches a subscription that looks alive but delivers nothing.

pub mod cluster;
mod names;
mod nodes;
mod presence;
mod push;
mod route;
mod sentinel;
mod single;
mod streams;
mod supervisor;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use pubsub_proto::{ChannelName, Publication, envelope};
use redis::{ErrorKind, IntoConnectionInfo, ProtocolVersion, RedisError, ServerErrorKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{
    BoxFuture, Broker, BrokerError, BrokerMetrics, Health, History, Idempotency, Listener, ListenerSlot,
    Once, PresenceBatch, PresenceStats, Published, StreamOptions,
};
use names::Names;
pub use names::validate_prefix;
use pubsub_proto::Member;
use route::{PublishCommand, Route};
use supervisor::Control;

/// Where the Redis broker finds Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis: `redis://[user:password@]host:port[/db]`, or `rediss://`
    /// for TLS.
    Single(String),
    /// A Redis Cluster's seed nodes (`redis://host:port` or `rediss://`);
    /// any one reachable node is enough to discover the rest.
    Cluster(Vec<String>),
    /// A primary found through Redis Sentinel: the sentinels' URLs, the
    /// master's name, and how to talk to the data nodes (a URL whose
    /// scheme, user, password and db apply; its host is replaced by the
    /// primary's), `redis://` without credentials if `None`.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        data: Option<String>,
    },
}

/// The data-node URL of a Sentinel target without one: its host is never
/// used, the sentinels name the primary.
const SENTINEL_DATA_DEFAULT: &str = "redis://sentinel-primary";

/// Settings of the Redis broker, for one Redis and a cluster alike.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub target: RedisTarget,
    /// Prefix of every Redis name, so deployments can share one Redis.
    pub prefix: String,
    /// This node's id (names its probe channels, stamps its envelopes).
    pub node_id: String,
    /// How often the node probes its subscriptions (each shard's, on a
    /// cluster).
    pub probe_interval: Duration,
    /// How long a probe may take to come back before the connection (or
    /// the shard) is declared dead.
    pub probe_timeout: Duration,
    /// Cluster only: how often the slot layout is read again (it is also
    /// read at once when a shard gives up a channel or a probe goes
    /// missing).
    pub topology_interval: Duration,
    /// PEM certificates to trust for `rediss://` instead of the system's
    /// roots (a private CA).
    pub ca_pem: Option<Vec<u8>>,
    /// Timeout for connecting and for each command.
    pub timeout: Duration,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl RedisConfig {
    /// Defaults for everything but where Redis is and who we are.
    pub fn new(target: RedisTarget, prefix: impl Into<String>, node_id: impl Into<String>) -> RedisConfig {
        RedisConfig {
            target,
            prefix: prefix.into(),
            node_id: node_id.into(),
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(3),
            topology_interval: Duration::from_secs(5),
            ca_pem: None,
            timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }

    fn urls(&self) -> Vec<String> {
        match &self.target {
            RedisTarget::Single(url) => vec![url.clone()],
            RedisTarget::Cluster(urls) => urls.clone(),
            RedisTarget::Sentinel { data, .. } => {
                vec![data.clone().unwrap_or_else(|| SENTINEL_DATA_DEFAULT.into())]
            }
        }
    }

    /// The parsed URLs, each set to speak RESP3 (pub/sub pushes need it,
    /// whatever the URL says).
    fn connection_infos(&self) -> Result<Vec<redis::ConnectionInfo>, BrokerError> {
        if self.urls().is_empty() {
            return Err(BrokerError::Internal("no Redis URL given".into()));
        }
        self.urls()
            .iter()
            .map(|url| {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| BrokerError::Internal(format!("invalid Redis URL: {e}")))?;
                let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
                Ok(info.set_redis_settings(settings))
            })
            .collect()
    }

    /// TLS certificates for the clients, after checking the CA file makes
    /// sense here.
    fn tls_certificates(&self) -> Result<Option<redis::TlsCertificates>, BrokerError> {
        let sentinels = match &self.target {
            RedisTarget::Sentinel { sentinels, .. } => sentinels.clone(),
            _ => Vec::new(),
        };
        let tls = self
            .urls()
            .iter()
            .chain(&sentinels)
            .any(|u| u.starts_with("rediss:"));
        if tls {
            // rustls needs a process-wide crypto provider; ours is ring.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        match (&self.ca_pem, tls) {
            (Some(pem), true) => Ok(Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            })),
            (Some(_), false) => Err(BrokerError::Internal(
                "a Redis CA file only applies to rediss:// URLs".into(),
            )),
            (None, _) => Ok(None),
        }
    }
}

/// State shared by the broker handle, the supervisor and the push handler.
struct Shared {
    config: RedisConfig,
    names: Arc<Names>,
    listener: ListenerSlot,
    metrics: BrokerMetrics,
    /// The publishing connection(s), and which channels they serve now.
    route: Route,
    scripts: streams::Scripts,
    presence: presence::Scripts,
    health: watch::Sender<Health>,
}

/// The supervisor's parts until [`Broker::start`] spawns it.
enum Supervisor {
    Ready(Box<dyn FnOnce(Arc<Shared>) -> JoinHandle<()> + Send>),
    Running(JoinHandle<()>),
    Stopped,
}

/// A broker on Redis Pub/Sub (one Redis) or sharded pub/sub (a cluster).
pub struct RedisBroker {
    shared: Arc<Shared>,
    /// Requests to the supervisor; taken (closing the channel) by `close`.
    control: Mutex<Option<mpsc::Sender<Control>>>,
    supervisor: Mutex<Supervisor>,
}

/// Requests queued for the supervisor at most: the hub's subscription
/// manager, its only caller, waits for each answer before the next.
const CONTROL_QUEUE: usize = 16;

impl RedisBroker {
    /// Validates the configuration and builds the clients. Nothing
    /// connects until [`Broker::start`]; the broker reports down until the
    /// supervisor has connected.
    pub fn new(config: RedisConfig, metrics: BrokerMetrics) -> Result<RedisBroker, BrokerError> {
        validate_prefix(&config.prefix)
            .map_err(|e| BrokerError::Internal(format!("invalid Redis prefix: {e}")))?;
        let infos = config.connection_infos()?;
        let certificates = config.tls_certificates()?;
        let (control, requests) = mpsc::channel(CONTROL_QUEUE);
        let (route, run): (Route, Supervisor) = match &config.target {
            RedisTarget::Single(_) => {
                let link = single::Link::new(infos, certificates)?;
                (
                    Route::single(),
                    Supervisor::Ready(Box::new(move |shared| {
                        tokio::spawn(supervisor::run(shared, link, requests))
                    })),
                )
            }
            RedisTarget::Sentinel {
                sentinels, master, ..
            } => {
                let template = infos
                    .first()
                    .cloned()
                    .ok_or_else(|| BrokerError::Internal("no Redis URL given".into()))?;
                let sentinel =
                    sentinel::Sentinel::new(sentinels, master.clone(), template, certificates.clone())?;
                // Replaced by the primary's before the first connection.
                let placeholder = single::Link::new(infos, certificates)?;
                let link = single::Link::with_sentinel(placeholder.into_client(), sentinel);
                (
                    Route::single(),
                    Supervisor::Ready(Box::new(move |shared| {
                        tokio::spawn(supervisor::run(shared, link, requests))
                    })),
                )
            }
            RedisTarget::Cluster(_) => {
                let link = cluster::Link::new(infos, certificates);
                (
                    Route::cluster(),
                    Supervisor::Ready(Box::new(move |shared| {
                        tokio::spawn(supervisor::run(shared, link, requests))
                    })),
                )
            }
        };
        let what = match config.target {
            RedisTarget::Single(_) => "connecting to Redis",
            RedisTarget::Cluster(_) => "connecting to the Redis cluster",
            RedisTarget::Sentinel { .. } => "asking the sentinels for the Redis primary",
        };
        let shared = Arc::new(Shared {
            names: Arc::new(Names::new(&config.prefix, &config.node_id)),
            config,
            listener: ListenerSlot::default(),
            metrics,
            route,
            scripts: streams::Scripts::new(),
            presence: presence::Scripts::new(),
            health: watch::Sender::new(Health::down(what)),
        });
        Ok(RedisBroker {
            shared,
            control: Mutex::new(Some(control)),
            supervisor: Mutex::new(run),
        })
    }

    fn control(&self) -> Option<mpsc::Sender<Control>> {
        self.control.lock().clone()
    }
}

impl RedisBroker {
    async fn publish_maybe_once(
        &self,
        channel: ChannelName,
        data: Bytes,
        options: StreamOptions,
        once: Option<Idempotency>,
    ) -> Result<Once, BrokerError> {
        let shared = &self.shared;
        let redis_channel = shared.names.channel(channel.as_str());
        let connection = shared.route.connection_for(&redis_channel)?;
        let (meta, stream) = shared.names.stream_keys(channel.as_str());
        let once_key = once
            .as_ref()
            .map(|o| (shared.names.once_key(channel.as_str(), &o.key), o.window));
        let payload = envelope::encode(&Publication::new(channel, data), &shared.config.node_id, now_us());
        streams::publish(
            &shared.scripts,
            connection,
            (&meta, &stream),
            (&redis_channel, shared.route.publish_command()),
            payload,
            options,
            once_key.as_ref().map(|(k, w)| (k.as_str(), *w)),
        )
        .await
    }
}

impl Broker for RedisBroker {
    fn publish(
        &self,
        channel: ChannelName,
        data: Bytes,
        options: StreamOptions,
    ) -> BoxFuture<'_, Result<Published, BrokerError>> {
        Box::pin(async move {
            let once = self.publish_maybe_once(channel, data, options, None).await?;
            Ok(once.position().clone())
        })
    }

    fn publish_once(
        &self,
        channel: ChannelName,
        data: Bytes,
        options: StreamOptions,
        once: Idempotency,
    ) -> BoxFuture<'_, Result<Once, BrokerError>> {
        Box::pin(self.publish_maybe_once(channel, data, options, Some(once)))
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<u64>,
        limit: usize,
        _options: StreamOptions,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        Box::pin(async move {
            let (meta, stream) = self.shared.names.stream_keys(channel.as_str());
            let connection = self.shared.route.connection_for(&meta)?;
            streams::history(&self.shared.scripts, connection, (&meta, &stream), since, limit).await
        })
    }

    fn remove_history<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let (meta, stream) = self.shared.names.stream_keys(channel.as_str());
            let connection = self.shared.route.connection_for(&meta)?;
            streams::remove(connection, (&meta, &stream)).await
        })
    }

    fn restart_stream<'a>(
        &'a self,
        channel: &'a ChannelName,
        epoch: &'a str,
        options: StreamOptions,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        Box::pin(async move {
            let (meta, stream) = self.shared.names.stream_keys(channel.as_str());
            let connection = self.shared.route.connection_for(&meta)?;
            streams::restart(&self.shared.scripts, connection, (&meta, &stream), epoch, options).await
        })
    }

    fn subscribe<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), BrokerError>> {
        supervisor::request(self.control(), |reply| {
            Control::Subscribe(channels.to_vec(), reply)
        })
    }

    fn unsubscribe<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), BrokerError>> {
        supervisor::request(self.control(), |reply| {
            Control::Unsubscribe(channels.to_vec(), reply)
        })
    }

    fn presence_update<'a>(
        &'a self,
        batch: &'a PresenceBatch,
    ) -> BoxFuture<'a, Result<Vec<ChannelName>, BrokerError>> {
        Box::pin(presence::update(&self.shared, &self.shared.presence, batch))
    }

    fn presence<'a>(
        &'a self,
        channel: &'a ChannelName,
        events: Option<u32>,
    ) -> BoxFuture<'a, Result<Vec<Member>, BrokerError>> {
        Box::pin(presence::members(
            &self.shared,
            &self.shared.presence,
            channel,
            events,
        ))
    }

    fn presence_stats<'a>(
        &'a self,
        channel: &'a ChannelName,
        events: Option<u32>,
    ) -> BoxFuture<'a, Result<PresenceStats, BrokerError>> {
        Box::pin(presence::stats(
            &self.shared,
            &self.shared.presence,
            channel,
            events,
        ))
    }

    fn announce_node<'a>(&'a self, info: &'a [u8], ttl: Duration) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let key = self.shared.names.nodes();
            let connection = self.shared.route.connection_for(&key)?;
            nodes::announce(connection, &key, self.shared.names.node_id(), info, ttl).await
        })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<Bytes>, BrokerError>> {
        Box::pin(async move {
            let key = self.shared.names.nodes();
            let connection = self.shared.route.connection_for(&key)?;
            nodes::live(connection, &key).await
        })
    }

    fn send_to_node<'a>(
        &'a self,
        node: &'a str,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let shared = &self.shared;
            let command = shared.route.publish_command();
            // The target subscribes to its probe channel; on a cluster to
            // one per shard, tagged with the smallest `p<N>` tag landing on
            // the shard, so `p0` names the probe on p0's shard.
            let channel = match command {
                PublishCommand::Publish => shared.names.probe_of(node),
                PublishCommand::SPublish => format!("{}:{{p0}}", shared.names.probe_of(node)),
            };
            let connection = shared.route.connection_for(&channel)?;
            let mut payload = Vec::with_capacity(message.len() + 1);
            payload.push(push::NODE_MESSAGE_MARK);
            payload.extend_from_slice(message);
            streams::redirected(|| {
                let mut connection = connection.clone();
                let (channel, payload) = (&channel, &payload);
                async move {
                    redis::cmd(command.name())
                        .arg(channel)
                        .arg(&payload[..])
                        .query_async::<()>(&mut connection)
                        .await
                }
            })
            .await
            .map_err(classify)
        })
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.shared.health.subscribe()
    }

    fn kind(&self) -> &'static str {
        match self.shared.config.target {
            RedisTarget::Single(_) => "redis",
            RedisTarget::Sentinel { .. } => "redis-sentinel",
            RedisTarget::Cluster(_) => "redis-cluster",
        }
    }

    fn start(&self, listener: Arc<dyn Listener>) {
        if !self.shared.listener.set(listener) {
            return;
        }
        let mut supervisor = self.supervisor.lock();
        if let Supervisor::Ready(spawn) = std::mem::replace(&mut *supervisor, Supervisor::Stopped) {
            *supervisor = Supervisor::Running(spawn(self.shared.clone()));
        }
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        // Without its request channel the supervisor ends at its next look.
        drop(self.control.lock().take());
        let supervisor = std::mem::replace(&mut *self.supervisor.lock(), Supervisor::Stopped);
        Box::pin(async move {
            if let Supervisor::Running(task) = supervisor {
                let _ = task.await;
            }
            self.shared.route.clear();
            self.shared
                .health
                .send_replace(Health::down("the broker was closed"));
        })
    }
}

/// Microseconds since the Unix epoch: envelopes carry when they were
/// published, receivers measure broker latency from it.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Connection trouble is `Unavailable` (retry later); an error answer from
/// the server (out of memory, no permission, ...) is `Internal`, except the
/// answers that mean "not now".
fn classify(error: RedisError) -> BrokerError {
    if did_not_run(&error) {
        return BrokerError::Unavailable(error.to_string());
    }
    match error.kind() {
        ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::UnexpectedReturnType | ErrorKind::Parse => {
            BrokerError::Internal(format!("Redis answered: {error}"))
        }
        _ => BrokerError::Unavailable(format!("Redis unreachable: {error}")),
    }
}

/// Answers after which the command certainly did not run, so it may be
/// sent again: a cluster redirect the client could not follow (`MOVED`,
/// `ASK`: the slot is moving), `TRYAGAIN`, `CLUSTERDOWN`, `READONLY` (a
/// demoted master), `LOADING`, `MASTERDOWN`.
fn did_not_run(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Server(
            ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::BusyLoading
                | ServerErrorKind::MasterDown
        )
    )
}
