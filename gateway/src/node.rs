//! What one gateway node shares between its sessions and HTTP handlers:
//! configuration, hub, registry, metrics, and the draining flag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use broker_adapter::memory::MemoryBroker;
use broker_adapter::redis::cluster::{ClusterConfig, RedisClusterBroker};
use broker_adapter::redis::{RedisBroker, RedisConfig};
use broker_adapter::{Broker, BrokerError, Listener};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::access::OriginRule;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::Admission;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::tls::Tls;

/// Read buffer of each WebSocket. It is allocated for every connection and
/// kept while the connection lives, so it is sized for commands (small),
/// not for bulk upload; larger messages grow it as needed.
const WS_READ_BUFFER: usize = 256;
/// Frames are collected up to this size before a write; the writer flushes
/// after each batch, so small batches still go out at once.
const WS_WRITE_BUFFER: usize = 16 * 1024;

/// The broker the configuration asks for: Redis with `--redis-url`, the
/// embedded broker otherwise.
fn make_broker(
    config: &Config,
    listener: Arc<dyn Listener>,
    metrics: &Metrics,
) -> Result<Arc<dyn Broker>, BrokerError> {
    let ca_pem = match &config.redis_ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            BrokerError::Internal(format!("cannot read Redis CA file {}: {e}", path.display()))
        })?),
        None => None,
    };
    if !config.redis_cluster_urls.is_empty() {
        let mut cluster = ClusterConfig::new(
            config.redis_cluster_urls.clone(),
            config.redis_prefix.clone(),
            config.node_id.clone(),
        );
        cluster.ca_pem = ca_pem;
        return Ok(Arc::new(RedisClusterBroker::start(
            cluster,
            listener,
            metrics.broker.clone(),
        )?));
    }
    match &config.redis_url {
        Some(url) => {
            let mut redis =
                RedisConfig::new(url.clone(), config.redis_prefix.clone(), config.node_id.clone());
            redis.ca_pem = ca_pem;
            Ok(Arc::new(RedisBroker::start(
                redis,
                listener,
                metrics.broker.clone(),
            )?))
        }
        None => Ok(Arc::new(MemoryBroker::new(listener))),
    }
}

/// How often histogram samples are folded into their buckets.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Shared state of one node.
pub struct Node {
    pub config: Config,
    pub hub: Hub,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// Client-token verification; `None` when authentication is off.
    pub auth: Option<Authenticator>,
    /// Connection limits checked before each upgrade.
    pub admission: Admission,
    /// `--allowed-origin` rules; empty allows every origin.
    pub origins: Vec<OriginRule>,
    /// TLS for https/wss; `None` for plain http/ws.
    pub tls: Option<Tls>,
    draining: AtomicBool,
    next_session: AtomicU64,
    /// Random per process start: client ids (`<node>-<boot>-<n>`) stay
    /// unique across restarts of a node that keeps its id.
    pub boot: String,
    /// Reference point for the peers' idle clocks.
    pub epoch: Instant,
}

impl Node {
    /// Builds the node and starts its background tasks (subscription
    /// manager, heartbeat, broker health watcher). Fails on settings that
    /// cannot work (unreadable keys or certificates, a bad broker
    /// configuration); an unreachable Redis is retried in the background
    /// while the node reports not ready.
    pub fn start(config: Config) -> Result<(Arc<Node>, Vec<JoinHandle<()>>), String> {
        let auth = Authenticator::from_config(&config)?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Tls::load(cert, key)?),
            _ => None,
        };
        let origins = config
            .allowed_origins
            .iter()
            .map(|rule| OriginRule::parse(rule))
            .collect::<Result<Vec<_>, _>>()?;
        let admission = Admission::new(
            config.max_connections,
            config.max_connections_per_ip,
            config.max_connect_rate,
        );
        let metrics = Arc::new(Metrics::new());
        metrics.connections_limit.set(config.max_connections as f64);
        let mut broker_error = None;
        let (hub, mut tasks) = Hub::start(
            metrics.clone(),
            config.namespaces.clone(),
            config.max_publication_size,
            |listener| match make_broker(&config, listener.clone(), &metrics) {
                Ok(broker) => broker,
                Err(error) => {
                    broker_error = Some(error);
                    Arc::new(MemoryBroker::new(listener))
                }
            },
        );
        if let Some(error) = broker_error {
            tasks.iter().for_each(JoinHandle::abort);
            return Err(error.to_string());
        }
        let registry = Arc::new(Registry::default());
        let heartbeat = tokio::spawn(registry.clone().run_heartbeat(config.ping_interval));
        let mut health = hub.broker_health();
        let broker_up = metrics.broker_up.clone();
        let health_watch = tokio::spawn(async move {
            loop {
                broker_up.set(if health.borrow_and_update().up { 1.0 } else { 0.0 });
                if health.changed().await.is_err() {
                    break;
                }
            }
        });
        let node = Arc::new(Node {
            config,
            hub,
            registry,
            metrics,
            auth,
            admission,
            origins,
            tls,
            draining: AtomicBool::new(false),
            next_session: AtomicU64::new(1),
            boot: (0..4).map(|_| fastrand::alphanumeric()).collect(),
            epoch: Instant::now(),
        });
        // Histograms keep their samples until upkeep folds them in; without
        // it a node nobody scrapes would grow without bound.
        let upkeep_metrics = node.metrics.clone();
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(METRICS_UPKEEP);
            loop {
                tick.tick().await;
                upkeep_metrics.run_upkeep();
            }
        });
        tasks.extend([heartbeat, health_watch, upkeep]);
        Ok((node, tasks))
    }

    /// Whether the node uses Redis (`redis`) or its embedded broker (`memory`).
    pub fn broker_kind(&self) -> &'static str {
        self.hub.broker_kind()
    }

    /// True once shutdown began: not ready, no new connections.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// A new session id, unique within this node's lifetime.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// tungstenite settings for every connection.
    pub fn websocket_config(&self) -> WebSocketConfig {
        let mut config = WebSocketConfig::default();
        config.read_buffer_size = WS_READ_BUFFER;
        config.write_buffer_size = WS_WRITE_BUFFER;
        config.max_message_size = Some(self.config.max_message_size);
        config.max_frame_size = Some(self.config.max_message_size);
        config
    }
}
