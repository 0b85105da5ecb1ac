//! What one gateway node shares between its sessions and HTTP handlers,
//! in named parts: the configuration, the hub, the metrics, the clients
//! (registry, admission, pending connections, `/stream` sessions, ids),
//! the security settings (tokens, origins, TLS), the lifecycle (draining),
//! the HTTP API's admission, the deflate pools and the calls to other
//! nodes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use broker_adapter::memory::MemoryLimits;
use broker_adapter::redis::{RedisConfig, RedisTarget};
use broker_adapter::{BrokerConfig, BrokerError};
use tokio::task::JoinHandle;

use crate::auth::Authenticator;
use crate::calls::Calls;
use crate::compression::Deflater;
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::{Admission, Concurrency, PendingConnections};
use crate::metrics::Metrics;
use crate::origin::OriginRule;
use crate::registry::Registry;
use crate::streams::Streams;
use crate::tls::Tls;

/// How often histogram samples are folded into their buckets.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Shared state of one node.
pub struct Node {
    pub config: Config,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    pub clients: Clients,
    pub security: Security,
    pub lifecycle: Lifecycle,
    /// Bounds the HTTP API requests served at once (`--max-api-requests`).
    pub api: Concurrency,
    /// The pooled compressors of permessage-deflate; `None` with
    /// `--compression off`.
    pub compression: Option<Arc<Deflater>>,
    /// This node's questions to all nodes that wait for answers.
    pub calls: Calls,
}

/// The node's clients: who is connected, who may connect, the `/stream`
/// sessions, and their ids.
pub struct Clients {
    /// Every live session, for the heartbeat and the drain.
    pub registry: Arc<Registry>,
    /// Connection limits checked before each connection is accepted.
    pub admission: Admission,
    /// Bounds the accepted connections that are not clients yet
    /// (`--max-pending-connections`, `--max-pending-per-ip`).
    pub pending: PendingConnections,
    /// The session streams of `GET /stream`, by session id, and the
    /// live-node list their forwarded commands are checked against.
    pub streams: Streams,
    next_session: AtomicU64,
    /// `<node>-<boot>-`, where boot is random per process start: client ids
    /// (`<node>-<boot>-<n>`) stay unique across restarts of a node that
    /// keeps its id.
    client_prefix: Arc<str>,
    /// Reference point for the peers' idle clocks.
    pub epoch: Instant,
}

impl Clients {
    /// A new session id, unique within this node's lifetime.
    pub fn next_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// What every client id of this node starts with.
    pub fn client_prefix(&self) -> Arc<str> {
        self.client_prefix.clone()
    }
}

/// Who may connect and how: tokens, origins, TLS.
pub struct Security {
    /// Client-token verification; `None` when authentication is off.
    pub auth: Option<Arc<Authenticator>>,
    /// `--allowed-origin` rules; empty allows every origin.
    pub origins: Vec<OriginRule>,
    /// TLS for https/wss; `None` for plain http/ws.
    pub tls: Option<Tls>,
}

/// Where the node is in its life.
#[derive(Default)]
pub struct Lifecycle {
    draining: AtomicBool,
}

impl Lifecycle {
    /// True once shutdown began: not ready, no new connections.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// The broker the configuration asks for: the primary the sentinels name
/// with `--redis-sentinel-url`, Redis with `--redis-url`, a Redis Cluster
/// with `--redis-cluster-url`, the embedded broker otherwise.
fn broker_config(config: &Config) -> Result<BrokerConfig, BrokerError> {
    let target = match (&config.redis_url, config.redis_cluster_urls.is_empty()) {
        _ if !config.redis_sentinel_urls.is_empty() => RedisTarget::Sentinel {
            sentinels: config.redis_sentinel_urls.clone(),
            master: config.redis_sentinel_master.clone().unwrap_or_default(),
            data: config.redis_url.clone(),
        },
        (Some(url), _) => RedisTarget::Single(url.clone()),
        (None, false) => RedisTarget::Cluster(config.redis_cluster_urls.clone()),
        (None, true) => {
            return Ok(BrokerConfig::Memory(MemoryLimits {
                max_streams: config.memory_max_streams,
                max_history_bytes: config.memory_max_history_bytes,
            }));
        }
    };
    let mut redis = RedisConfig::new(target, config.redis_prefix.clone(), config.node_id.clone());
    redis.ca_pem = match &config.redis_ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            BrokerError::Internal(format!("cannot read Redis CA file {}: {e}", path.display()))
        })?),
        None => None,
    };
    Ok(BrokerConfig::Redis(Box::new(redis)))
}

impl Node {
    /// Builds the node and starts its background tasks (subscription
    /// manager, heartbeat, broker health watcher). Fails on settings that
    /// cannot work (unreadable keys or certificates, a bad broker
    /// configuration); an unreachable Redis is retried in the background
    /// while the node reports not ready.
    pub fn start(config: Config) -> Result<(Arc<Node>, Vec<JoinHandle<()>>), String> {
        let auth = Authenticator::from_config(&config)?.map(Arc::new);
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
        let broker = broker_config(&config)
            .and_then(|broker| broker_adapter::open(broker, metrics.broker.clone()))
            .map_err(|e| e.to_string())?;
        let (hub, mut tasks) = Hub::start(
            metrics.clone(),
            config.namespaces.clone(),
            config.max_publication_size,
            crate::hub::PresenceConfig {
                ttl: config.presence_ttl,
                event_rate: config.presence_event_rate,
            },
            broker,
        );
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
        let api = Concurrency::new(config.max_api_requests);
        let pending = PendingConnections::new(config.max_pending_connections, config.max_pending_per_ip);
        let boot: String = (0..4).map(|_| fastrand::alphanumeric()).collect();
        let client_prefix = Arc::from(format!("{}-{boot}-", config.node_id));
        let compression = config
            .compression
            .then(|| Deflater::new(config.compression_level, metrics.compressions.clone()));
        let node = Arc::new(Node {
            config,
            hub,
            metrics,
            clients: Clients {
                registry,
                admission,
                pending,
                streams: Streams::default(),
                next_session: AtomicU64::new(1),
                client_prefix,
                epoch: Instant::now(),
            },
            security: Security { auth, origins, tls },
            lifecycle: Lifecycle::default(),
            api,
            compression,
            calls: Calls::default(),
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
        if let Some(auth) = &node.security.auth
            && auth.jwks.is_some()
        {
            tasks.push(tokio::spawn(crate::auth::jwks::refresh_loop(auth.clone())));
        }
        Ok((node, tasks))
    }

    /// Whether the node uses Redis (`redis`) or its embedded broker (`memory`).
    pub fn broker_kind(&self) -> &'static str {
        self.hub.broker_kind()
    }
}
