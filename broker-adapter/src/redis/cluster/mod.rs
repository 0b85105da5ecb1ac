//! The Redis Cluster broker: nodes meet on sharded pub/sub.
//!
//! Classic `PUBLISH` in a cluster is broadcast to every shard, so it does
//! not scale; `SPUBLISH`/`SSUBSCRIBE` (Redis 7) route a channel to the shard
//! that owns its slot. A gateway channel `news` is the shard channel
//! `<prefix>:{news}`, and its history keys share the `{news}` hash tag, so
//! the publish script (offset, history, `SPUBLISH`) runs on one shard.
//!
//! Two cluster connections (the redis crate's, which route by slot): one
//! for sharded subscriptions, whose pushes go straight to the listener and
//! which follows redirects and retries on its own (subscribing is
//! idempotent); one for publishing and history, which retries only answers
//! that prove the command did not run ([`redirected`]), because a publish
//! script run twice would publish twice. The [`supervisor`] owns the subscriptions and watches every shard: a probe
//! per shard (a probe channel whose slot the shard serves) must come back,
//! a shard that gives up a channel (`sunsubscribe` after a slot moved or a
//! failover) gets it back on the new owner, and each shard that was down
//! or moved is caught up from history (`BrokerEvent::Missed`).
//!
//! A lost shard affects only its channels: publishes to them fail at once
//! with `Unavailable`; other channels keep working. The node is ready while
//! every shard holding subscribed channels is up.

mod shards;
mod supervisor;
mod topology;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::RwLock;
use pubsub_proto::{ChannelName, Publication, envelope};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{IntoConnectionInfo, ProtocolVersion};
use tokio::sync::{mpsc, watch};

use super::classify;
use super::names::{Names, validate_prefix};
use super::streams::{self, PublishCommand};
use super::supervisor::{self as requests, Control};
use crate::{
    BoxFuture, Broker, BrokerError, BrokerMetrics, Health, History, Listener, Published, StreamOptions,
};
pub use topology::slot;

/// Settings of the cluster broker.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Seed nodes, `redis://host:port` (or `rediss://`); any one reachable
    /// node is enough to discover the rest.
    pub urls: Vec<String>,
    /// Prefix of every Redis name.
    pub prefix: String,
    /// This node's id (names its probe channels, stamps its envelopes).
    pub node_id: String,
    /// How often each shard is probed.
    pub probe_interval: Duration,
    /// How long a probe may take before its shard counts as down.
    pub probe_timeout: Duration,
    /// How often the slot layout is read again (it is also read at once
    /// when a shard gives up a channel or a probe goes missing).
    pub topology_interval: Duration,
    /// PEM certificates to trust for `rediss://` (a private CA).
    pub ca_pem: Option<Vec<u8>>,
    /// Timeout for connecting and for each command.
    pub timeout: Duration,
    /// Reconnect backoff while no seed node answers.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl ClusterConfig {
    /// Defaults for everything but where the cluster is and who we are.
    pub fn new(urls: Vec<String>, prefix: impl Into<String>, node_id: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            urls,
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
}

/// State shared by the broker handle and the supervisor.
struct Shared {
    config: ClusterConfig,
    /// Seed nodes, parsed.
    seeds: Vec<redis::ConnectionInfo>,
    names: Arc<Names>,
    listener: Arc<dyn Listener>,
    metrics: BrokerMetrics,
    scripts: streams::Scripts,
    /// The publishing connection, once the cluster was reached.
    publisher: RwLock<Option<ClusterConnection>>,
    /// Per slot: false while its shard is down (publishes fail at once).
    slot_up: RwLock<Vec<bool>>,
    health: watch::Sender<Health>,
}

impl Shared {
    /// A client for the cluster with this broker's settings, retrying as
    /// the cluster client does (redirects, and also lost connections and
    /// timeouts) up to `retries` times.
    fn client_builder(&self, retries: u32) -> ClusterClientBuilder {
        let builder = ClusterClientBuilder::new(self.seeds.clone())
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(self.config.timeout)
            .response_timeout(self.config.timeout)
            .retries(retries);
        match &self.config.ca_pem {
            Some(pem) => builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            }),
            None => builder,
        }
    }

    /// The publishing connection, if the slot of `redis_name` is served.
    fn connection_for(&self, redis_name: &str) -> Result<ClusterConnection, BrokerError> {
        let up = self
            .slot_up
            .read()
            .get(slot(redis_name.as_bytes()) as usize)
            .copied()
            .unwrap_or(false);
        match (&*self.publisher.read(), up) {
            (Some(connection), true) => Ok(connection.clone()),
            (None, _) => Err(BrokerError::Unavailable(
                "not connected to the Redis cluster".into(),
            )),
            (Some(_), false) => Err(BrokerError::Unavailable(
                "the Redis shard serving this channel is down".into(),
            )),
        }
    }
}

/// Answers after which the command certainly did not run: it may be sent
/// again.
const REDIRECTS: u32 = 5;

/// Runs `command`, sending it again (up to [`REDIRECTS`] times, a little
/// later each time) while the cluster answers that it did not run it:
/// `MOVED` (the client rereads the slot map), `ASK`, `TRYAGAIN`,
/// `CLUSTERDOWN`, `READONLY` (a demoted master), `LOADING`. A lost
/// connection or a timeout is *not* retried: the command may have run, and
/// a publish script run twice would publish twice. (The publishing client
/// is built without retries of its own for that reason.)
pub(super) async fn redirected<T, F, Fut>(mut command: F) -> redis::RedisResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let mut attempt = 0;
    loop {
        match command().await {
            Err(error) if attempt < REDIRECTS && did_not_run(&error) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
            }
            outcome => return outcome,
        }
    }
}

/// Runs an operation that is safe to repeat again while the cluster is
/// unavailable to it (a redirect, a lost connection), up to [`REDIRECTS`]
/// times.
async fn read_again<T, F, Fut>(mut operation: F) -> Result<T, BrokerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BrokerError>>,
{
    let mut attempt = 0;
    loop {
        match operation().await {
            Err(BrokerError::Unavailable(_)) if attempt < REDIRECTS => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
            }
            outcome => return outcome,
        }
    }
}

fn did_not_run(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
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

/// A broker on Redis Cluster sharded pub/sub.
pub struct RedisClusterBroker {
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
}

impl RedisClusterBroker {
    /// Validates the configuration and starts the supervisor, which
    /// connects in the background: the broker reports down until it has.
    pub fn start(
        config: ClusterConfig,
        listener: Arc<dyn Listener>,
        metrics: BrokerMetrics,
    ) -> Result<RedisClusterBroker, BrokerError> {
        validate_prefix(&config.prefix)
            .map_err(|e| BrokerError::Internal(format!("invalid Redis prefix: {e}")))?;
        if config.urls.is_empty() {
            return Err(BrokerError::Internal(
                "a Redis cluster needs at least one node URL".into(),
            ));
        }
        let mut nodes = Vec::with_capacity(config.urls.len());
        for url in &config.urls {
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(|e| BrokerError::Internal(format!("invalid Redis URL {url:?}: {e}")))?;
            nodes.push(info);
        }
        let tls = config.urls.iter().any(|u| u.starts_with("rediss:"));
        if tls {
            // rustls needs a process-wide crypto provider; ours is ring.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        if config.ca_pem.is_some() && !tls {
            return Err(BrokerError::Internal(
                "a Redis CA file only applies to rediss:// URLs".into(),
            ));
        }
        let shared = Arc::new(Shared {
            names: Arc::new(Names::new(&config.prefix, &config.node_id)),
            config,
            seeds: nodes,
            listener,
            metrics,
            scripts: streams::Scripts::new(),
            publisher: RwLock::new(None),
            slot_up: RwLock::new(vec![false; topology::SLOTS]),
            health: watch::Sender::new(Health::down("connecting to the Redis cluster")),
        });
        let (control, requests) = mpsc::unbounded_channel();
        tokio::spawn(supervisor::run(shared.clone(), requests));
        Ok(RedisClusterBroker { shared, control })
    }
}

impl Broker for RedisClusterBroker {
    fn publish(
        &self,
        channel: ChannelName,
        data: Bytes,
        options: StreamOptions,
    ) -> BoxFuture<'_, Result<Published, BrokerError>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let redis_channel = shared.names.channel(channel.as_str());
            let connection = shared.connection_for(&redis_channel)?;
            let published_at_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0);
            let (meta, stream) = shared.names.stream_keys(channel.as_str());
            let payload = envelope::encode(
                &Publication::new(channel, data),
                &shared.config.node_id,
                published_at_us,
            );
            redirected(|| {
                let mut connection = connection.clone();
                let (meta, stream, redis_channel, payload, shared) =
                    (&meta, &stream, &redis_channel, payload.clone(), &shared);
                async move {
                    streams::publish(
                        &shared.scripts,
                        &mut connection,
                        (meta, stream),
                        (redis_channel, PublishCommand::SPublish),
                        payload,
                        options,
                    )
                    .await
                }
            })
            .await
            .map_err(classify)
        })
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<u64>,
        limit: usize,
        options: StreamOptions,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        Box::pin(async move {
            let (meta, stream) = self.shared.names.stream_keys(channel.as_str());
            let connection = self.shared.connection_for(&meta)?;
            // Reading (and creating an absent stream) is safe to repeat.
            read_again(|| {
                let mut connection = connection.clone();
                let (meta, stream) = (&meta, &stream);
                async move {
                    streams::history(
                        &self.shared.scripts,
                        &mut connection,
                        (meta, stream),
                        since,
                        limit,
                        options,
                    )
                    .await
                }
            })
            .await
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
            let mut connection = self.shared.connection_for(&meta)?;
            streams::restart(
                &self.shared.scripts,
                &mut connection,
                (&meta, &stream),
                epoch,
                options,
            )
            .await
        })
    }

    fn subscribe<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), BrokerError>> {
        requests::request(&self.control, |reply| {
            Control::Subscribe(channels.to_vec(), reply)
        })
    }

    fn unsubscribe<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), BrokerError>> {
        requests::request(&self.control, |reply| {
            Control::Unsubscribe(channels.to_vec(), reply)
        })
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.shared.health.subscribe()
    }

    fn kind(&self) -> &'static str {
        "redis-cluster"
    }
}
