//! Redis Cluster: the supervisor's link for sharded pub/sub.
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
//! that prove the command did not run (`streams::redirected`), because a
//! publish script run twice would publish twice. [`watch`] watches every
//! shard once connected: a probe per shard (a probe channel whose slot the
//! shard serves) must come back, a shard that gives up a channel
//! (`sunsubscribe` after a slot moved or a failover) gets it back on the
//! new owner, and each shard that was down or moved is caught up from
//! history (`BrokerEvent::Missed`).
//!
//! A lost shard affects only its channels: publishes to them fail at once
//! with `Unavailable`; other channels keep working. The node is ready while
//! every shard holding subscribed channels is up.

mod shards;
mod topology;
mod watch;

use redis::ProtocolVersion;
use redis::cluster::ClusterClientBuilder;

use super::Shared;
pub use topology::{SLOTS, slot};

/// How the supervisor reaches a cluster: its seed nodes.
pub(super) struct Link {
    seeds: Vec<redis::ConnectionInfo>,
    certificates: Option<redis::TlsCertificates>,
}

impl Link {
    pub fn new(seeds: Vec<redis::ConnectionInfo>, certificates: Option<redis::TlsCertificates>) -> Link {
        Link { seeds, certificates }
    }

    /// A client for the cluster with the broker's settings, retrying as
    /// the cluster client does (redirects, and also lost connections and
    /// timeouts) up to `retries` times.
    fn client_builder(&self, shared: &Shared, retries: u32) -> ClusterClientBuilder {
        let config = &shared.config;
        let builder = ClusterClientBuilder::new(self.seeds.clone())
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(config.timeout)
            .response_timeout(config.timeout)
            .retries(retries);
        match &self.certificates {
            Some(certificates) => builder.certs(certificates.clone()),
            None => builder,
        }
    }
}
