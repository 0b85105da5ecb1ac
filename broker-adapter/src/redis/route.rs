//! Which connection serves a channel's publishes and history reads.
//!
//! On one Redis it is the publishing connection, while connected. On a
//! cluster it is the publishing cluster connection (which routes by slot),
//! while the shard serving the channel's slot is up; a lost shard refuses
//! only its own channels, at once. The supervisor's link fills the route in
//! when it connects and clears it when the connection is lost.

use parking_lot::RwLock;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::cluster::{SLOTS, slot};
use crate::BrokerError;

/// How a publication reaches subscribers: `PUBLISH` on one Redis,
/// `SPUBLISH` (sharded pub/sub) on a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PublishCommand {
    Publish,
    SPublish,
}

impl PublishCommand {
    pub fn name(self) -> &'static str {
        match self {
            PublishCommand::Publish => "PUBLISH",
            PublishCommand::SPublish => "SPUBLISH",
        }
    }
}

/// The publishing side of the broker.
pub(super) enum Route {
    Single(RwLock<Option<MultiplexedConnection>>),
    Cluster {
        connection: RwLock<Option<ClusterConnection>>,
        /// Per slot: false while its shard is down.
        slot_up: RwLock<Vec<bool>>,
    },
}

impl Route {
    pub fn single() -> Route {
        Route::Single(RwLock::new(None))
    }

    pub fn cluster() -> Route {
        Route::Cluster {
            connection: RwLock::new(None),
            slot_up: RwLock::new(vec![false; SLOTS]),
        }
    }

    /// How publications reach subscribers: `PUBLISH` on one Redis,
    /// `SPUBLISH` (sharded pub/sub) on a cluster.
    pub fn publish_command(&self) -> PublishCommand {
        match self {
            Route::Single(_) => PublishCommand::Publish,
            Route::Cluster { .. } => PublishCommand::SPublish,
        }
    }

    /// The connection for the key or channel `redis_name`, or
    /// `Unavailable` while it cannot be served.
    pub fn connection_for(&self, redis_name: &str) -> Result<Connection, BrokerError> {
        match self {
            Route::Single(connection) => connection
                .read()
                .clone()
                .map(Connection::Single)
                .ok_or_else(|| BrokerError::Unavailable("not connected to Redis".into())),
            Route::Cluster { connection, slot_up } => {
                let up = slot_up
                    .read()
                    .get(slot(redis_name.as_bytes()) as usize)
                    .copied()
                    .unwrap_or(false);
                match (&*connection.read(), up) {
                    (Some(connection), true) => Ok(Connection::Cluster(connection.clone())),
                    (None, _) => Err(BrokerError::Unavailable(
                        "not connected to the Redis cluster".into(),
                    )),
                    (Some(_), false) => Err(BrokerError::Unavailable(
                        "the Redis shard serving this channel is down".into(),
                    )),
                }
            }
        }
    }

    /// One Redis: the publishing connection is up.
    pub fn set_single(&self, publisher: MultiplexedConnection) {
        if let Route::Single(connection) = self {
            *connection.write() = Some(publisher);
        }
    }

    /// A cluster: the publishing connection is up.
    pub fn set_cluster(&self, publisher: ClusterConnection) {
        if let Route::Cluster { connection, .. } = self {
            *connection.write() = Some(publisher);
        }
    }

    /// A cluster: which slots are served now.
    pub fn set_slots(&self, up: Vec<bool>) {
        if let Route::Cluster { slot_up, .. } = self {
            *slot_up.write() = up;
        }
    }

    /// The connection is lost: everything is refused until it is back.
    pub fn clear(&self) {
        match self {
            Route::Single(connection) => *connection.write() = None,
            Route::Cluster { connection, slot_up } => {
                *connection.write() = None;
                slot_up.write().fill(false);
            }
        }
    }
}

/// A publishing connection of either kind.
#[derive(Clone)]
pub(super) enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}
