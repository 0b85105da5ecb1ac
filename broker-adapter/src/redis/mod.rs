//! The Redis broker: nodes meet on Redis Pub/Sub.
//!
//! Two connections per node, both owned by the [`supervisor`] task:
//! - a dedicated pub/sub connection (RESP3), subscribed to the channels the
//!   hub asks for plus this node's probe channel; its pushes go straight to
//!   the listener ([`push`]);
//! - a multiplexed connection for `PUBLISH`.
//!
//! While Redis is unreachable, health is down, publishes fail at once with
//! `Unavailable` (never reported as published), subscribes fail, and the
//! supervisor reconnects with exponential backoff and full jitter, then
//! resubscribes every channel still wanted before reporting healthy again.
//! A probe published on the node's own channel every `probe_interval` must
//! come back within `probe_timeout`, which catches a subscription that
//! looks alive but delivers nothing.

pub mod cluster;
mod names;
mod push;
mod streams;
mod supervisor;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::RwLock;
use pubsub_proto::{ChannelName, Publication, envelope};
use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, IntoConnectionInfo, ProtocolVersion, RedisError, ServerErrorKind};
use tokio::sync::{mpsc, watch};

use crate::{
    BoxFuture, Broker, BrokerError, BrokerMetrics, Health, History, Listener, Published, StreamOptions,
};
use names::Names;
pub use names::validate_prefix;
use supervisor::Control;

/// Settings of the Redis broker.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` for TLS.
    pub url: String,
    /// Prefix of every Redis name, so deployments can share one Redis.
    pub prefix: String,
    /// This node's id (names its probe channel, stamps its envelopes).
    pub node_id: String,
    /// How often the node probes its own subscription.
    pub probe_interval: Duration,
    /// How long a probe may take to come back before the pub/sub connection
    /// is declared dead.
    pub probe_timeout: Duration,
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
    pub fn new(url: impl Into<String>, prefix: impl Into<String>, node_id: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            prefix: prefix.into(),
            node_id: node_id.into(),
            ca_pem: None,
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// State shared by the broker handle, the supervisor and the push handler.
struct Shared {
    config: RedisConfig,
    client: redis::Client,
    names: Arc<Names>,
    listener: Arc<dyn Listener>,
    metrics: BrokerMetrics,
    /// The publishing connection while connected.
    publisher: RwLock<Option<MultiplexedConnection>>,
    scripts: streams::Scripts,
    health: watch::Sender<Health>,
}

impl Shared {
    /// The publishing connection, or `Unavailable` while disconnected.
    fn connection(&self) -> Result<MultiplexedConnection, BrokerError> {
        self.publisher
            .read()
            .clone()
            .ok_or_else(|| BrokerError::Unavailable("not connected to Redis".into()))
    }
}

/// A broker on Redis Pub/Sub.
pub struct RedisBroker {
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
}

impl RedisBroker {
    /// Validates the configuration and starts the supervisor, which connects
    /// in the background: the broker reports down until it has.
    pub fn start(
        config: RedisConfig,
        listener: Arc<dyn Listener>,
        metrics: BrokerMetrics,
    ) -> Result<RedisBroker, BrokerError> {
        validate_prefix(&config.prefix)
            .map_err(|e| BrokerError::Internal(format!("invalid Redis prefix: {e}")))?;
        let info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| BrokerError::Internal(format!("invalid Redis URL: {e}")))?;
        // Pub/sub pushes need RESP3, whatever the URL says.
        let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(settings);
        let tls = config.url.starts_with("rediss:");
        if tls {
            // rustls needs a process-wide crypto provider; ours is ring.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = match (&config.ca_pem, tls) {
            (Some(pem), true) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            (Some(_), false) => {
                return Err(BrokerError::Internal(
                    "a Redis CA file only applies to rediss:// URLs".into(),
                ));
            }
            (None, _) => redis::Client::open(info),
        }
        .map_err(|e| BrokerError::Internal(format!("invalid Redis settings: {e}")))?;
        let shared = Arc::new(Shared {
            names: Arc::new(Names::new(&config.prefix, &config.node_id)),
            config,
            client,
            listener,
            metrics,
            publisher: RwLock::new(None),
            scripts: streams::Scripts::new(),
            health: watch::Sender::new(Health::down("connecting to Redis")),
        });
        let (control, requests) = mpsc::unbounded_channel();
        tokio::spawn(supervisor::run(shared.clone(), requests));
        Ok(RedisBroker { shared, control })
    }
}

impl Broker for RedisBroker {
    fn publish(
        &self,
        channel: ChannelName,
        data: Bytes,
        options: StreamOptions,
    ) -> BoxFuture<'_, Result<Published, BrokerError>> {
        let connection = self.shared.connection();
        let shared = self.shared.clone();
        Box::pin(async move {
            let mut connection = connection?;
            let published_at_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0);
            let redis_channel = shared.names.channel(channel.as_str());
            let (meta, stream) = shared.names.stream_keys(channel.as_str());
            let payload = envelope::encode(
                &Publication::new(channel, data),
                &shared.config.node_id,
                published_at_us,
            );
            streams::publish(
                &shared.scripts,
                &mut connection,
                (&meta, &stream),
                (&redis_channel, streams::PublishCommand::Publish),
                payload,
                options,
            )
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
        let connection = self.shared.connection();
        Box::pin(async move {
            let mut connection = connection?;
            let (meta, stream) = self.shared.names.stream_keys(channel.as_str());
            streams::history(
                &self.shared.scripts,
                &mut connection,
                (&meta, &stream),
                since,
                limit,
                options,
            )
            .await
        })
    }

    fn restart_stream<'a>(
        &'a self,
        channel: &'a ChannelName,
        epoch: &'a str,
        options: StreamOptions,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        let connection = self.shared.connection();
        Box::pin(async move {
            let mut connection = connection?;
            let (meta, stream) = self.shared.names.stream_keys(channel.as_str());
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
        supervisor::request(&self.control, |reply| {
            Control::Subscribe(channels.to_vec(), reply)
        })
    }

    fn unsubscribe<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), BrokerError>> {
        supervisor::request(&self.control, |reply| {
            Control::Unsubscribe(channels.to_vec(), reply)
        })
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.shared.health.subscribe()
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// Connection trouble is `Unavailable` (retry later); an error answer from
/// the server (out of memory, no permission, ...) is `Internal`, except the
/// answers that mean "not now".
fn classify(error: RedisError) -> BrokerError {
    match error.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::ReadOnly
            // A cluster redirect the client could not follow in time: the
            // slot is moving or its shard failing over.
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask,
        ) => BrokerError::Unavailable(error.to_string()),
        ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::UnexpectedReturnType | ErrorKind::Parse => {
            BrokerError::Internal(format!("Redis answered: {error}"))
        }
        _ => BrokerError::Unavailable(format!("Redis unreachable: {error}")),
    }
}
