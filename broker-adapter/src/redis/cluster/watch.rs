//! The one task that owns this node's sharded subscriptions and watches
//! every shard of the cluster.
//!
//! It connects (two cluster connections), reads the slot layout, subscribes
//! one probe channel per shard and every wanted channel (grouped by slot,
//! several commands in flight), then serves subscribe/unsubscribe requests
//! while it
//! - probes each shard every `probe_interval`: a probe that does not come
//!   back in time marks the shard down (its slots refuse publishes at once;
//!   readiness fails if it holds subscribed channels) and due for a
//!   resubscription and a catch-up;
//! - takes back channels a shard gives up (`sunsubscribe` after a slot
//!   moved, or the node was demoted by a failover) by subscribing them on
//!   their new owner;
//! - rereads the slot layout every `topology_interval` and moves
//!   subscriptions whose owner changed.
//!
//! Whenever a shard comes back, or channels moved, the listener hears
//! [`BrokerEvent::Missed`] for exactly those channels once their
//! subscriptions are in place again, and the hub fills what was missed from
//! history. Being the only user of the subscribing connection, the set of
//! wanted channels lives here, without locks. `shards` keeps the per-shard
//! bookkeeping.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use pubsub_proto::ChannelName;
use redis::RedisResult;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::Link;
use super::shards::{Shards, mark_down};
use super::topology::{Topology, channel_slot, slot};
use crate::redis::push::{PushHandler, Signals};
use crate::redis::streams::redirected;
use crate::redis::supervisor::Control;
use crate::redis::{Shared, classify};
use crate::{BrokerError, BrokerEvent};

/// Most channels in one SSUBSCRIBE (all of one slot).
const BATCH: usize = 1000;
/// SSUBSCRIBE/SUNSUBSCRIBE commands in flight at once.
const CONCURRENCY: usize = 32;
/// Without an answer from any shard for this long, the connections are
/// rebuilt from the seed nodes (the cluster may have been replaced).
const REBUILD_AFTER: Duration = Duration::from_secs(30);
/// `sunsubscribe` reports queued for the supervisor at most; past that they
/// are dropped and every wanted channel is taken back at the next probe.
const UNSUBSCRIBE_REPORTS: usize = 4096;

/// The two connections to the cluster.
struct Cluster {
    pubsub: ClusterConnection,
    publisher: ClusterConnection,
    signals: Arc<Signals>,
    /// `sunsubscribe` pushes: channels a shard gave up.
    unsubscribed: mpsc::Receiver<Vec<u8>>,
}

impl crate::redis::supervisor::Link for Link {
    type Connected = Watch;
    const NAME: &'static str = "the Redis cluster";

    async fn connect(
        &mut self,
        shared: &Arc<Shared>,
        wanted: &HashSet<ChannelName>,
    ) -> Result<Watch, String> {
        let (report, unsubscribed) = mpsc::channel(UNSUBSCRIBE_REPORTS);
        let signals = Arc::new(Signals::reporting_unsubscribes(report));
        let handler = PushHandler::new(shared, signals.clone());
        // (Un)subscribing is idempotent: the client may follow redirects and
        // retry as it likes. Publishing is not (see `streams::redirected`).
        let pubsub = self
            .client_builder(shared, 6)
            .push_sender(handler)
            .build()
            .map_err(|e| format!("invalid cluster settings: {e}"))?
            .get_async_connection()
            .await
            .map_err(|e| format!("subscribing connection: {e}"))?;
        let publisher = self
            .client_builder(shared, 0)
            .build()
            .map_err(|e| format!("invalid cluster settings: {e}"))?
            .get_async_connection()
            .await
            .map_err(|e| format!("publishing connection: {e}"))?;
        let mut watch = Watch {
            shared: shared.clone(),
            cluster: Cluster {
                pubsub,
                publisher,
                signals,
                unsubscribed,
            },
            shards: Shards::default(),
            sequence: 0,
            last_answer: Instant::now(),
            missed: Vec::new(),
        };
        watch.refresh(wanted).await?;
        // Shard by shard: a shard that is down now gets its channels back
        // when its probe returns, without holding the others.
        for index in 0..watch.shards.states.len() {
            let channels = watch.shards.channels_of(index, wanted);
            if let Err(error) = subscribe(shared, &watch.cluster.pubsub, &channels, "SSUBSCRIBE").await {
                let state = &mut watch.shards.states[index];
                mark_down(state, &format!("resubscribing: {error}"));
                state.resubscribe = true;
            }
        }
        Ok(watch)
    }

    fn up(&mut self, shared: &Shared, watch: &mut Watch, wanted: &HashSet<ChannelName>) {
        shared.route.set_cluster(watch.cluster.publisher.clone());
        tracing::debug!(shards = watch.shards.states.len(), "cluster shards");
        watch.shards.publish_health(shared, wanted);
    }

    async fn serve(
        &mut self,
        _: &Arc<Shared>,
        mut watch: Watch,
        wanted: &mut HashSet<ChannelName>,
        control: &mut mpsc::Receiver<Control>,
    ) -> Option<String> {
        watch.serve(wanted, control).await
    }
}

/// One connected cluster, watched.
pub(in crate::redis) struct Watch {
    shared: Arc<Shared>,
    cluster: Cluster,
    shards: Shards,
    sequence: u64,
    /// When a shard last answered a probe.
    last_answer: Instant,
    /// Catch-ups to announce once health is published (so that the
    /// history reads they cause find their shards up).
    missed: Vec<(Vec<ChannelName>, &'static str)>,
}

impl Watch {
    /// Serves until the connections must be rebuilt (returns why) or the
    /// broker is closed (`None`).
    async fn serve(
        &mut self,
        wanted: &mut HashSet<ChannelName>,
        control: &mut mpsc::Receiver<Control>,
    ) -> Option<String> {
        // Connections the cluster client opened and closed while starting
        // (seed nodes) are not losses.
        let _ = futures_util::FutureExt::now_or_never(self.cluster.signals.disconnected.notified());
        let config = &self.shared.config;
        let mut probe_tick = tokio::time::interval(config.probe_interval);
        probe_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut topology_tick = tokio::time::interval(config.topology_interval);
        topology_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        topology_tick.reset();
        loop {
            tokio::select! {
                request = control.recv() => match request? {
                    Control::Subscribe(channels, reply) => {
                        let _ = reply.send(self.subscribe(wanted, channels).await);
                    }
                    Control::Unsubscribe(channels, reply) => {
                        for channel in &channels {
                            wanted.remove(channel);
                        }
                        if let Err(error) = subscribe(&self.shared, &self.cluster.pubsub, &channels, "SUNSUBSCRIBE").await {
                            tracing::warn!(%error, "SUNSUBSCRIBE failed");
                        }
                        // Answered once the shards confirmed (or failed,
                        // which a lost shard's rebuild settles).
                        let _ = reply.send(Ok(()));
                    }
                },
                Some(first) = self.cluster.unsubscribed.recv() => {
                    let mut given_up = vec![first];
                    while let Ok(more) = self.cluster.unsubscribed.try_recv() {
                        given_up.push(more);
                    }
                    self.take_back(wanted, given_up).await;
                }
                _ = self.cluster.signals.disconnected.notified() => {
                    // One of the cluster connection's node connections
                    // dropped; it reconnects and resubscribes on its own,
                    // but publications may have been lost meanwhile.
                    self.shards.lost_contact();
                }
                _ = probe_tick.tick() => {
                    if self.cluster.signals.unsubscribes_dropped.swap(false, std::sync::atomic::Ordering::Relaxed) {
                        // Some `sunsubscribe` reports were dropped: take
                        // everything back, as if every shard gave it up.
                        let mut given_up = vec![self.shared.names.probe().as_bytes().to_vec()];
                        given_up.extend(wanted.iter().map(|c| self.shared.names.channel(c.as_str()).into_bytes()));
                        self.take_back(wanted, given_up).await;
                    }
                    self.probe(wanted).await;
                    if self.last_answer.elapsed() > REBUILD_AFTER {
                        return Some(format!("no shard answered a probe for {REBUILD_AFTER:?}"));
                    }
                }
                _ = topology_tick.tick() => {
                    if let Err(error) = self.refresh(wanted).await {
                        tracing::warn!(%error, "cannot read the cluster's slot layout");
                    }
                }
            }
            self.shards.publish_health(&self.shared, wanted);
            for (channels, reason) in self.missed.drain(..) {
                self.shared.listener.on_event(BrokerEvent::Missed {
                    channels,
                    reason: reason.to_owned(),
                });
            }
        }
    }

    /// A subscribe request: channels whose shard is down are refused at
    /// once (`Partial` when others could be subscribed), the rest are
    /// subscribed on their shards.
    async fn subscribe(
        &mut self,
        wanted: &mut HashSet<ChannelName>,
        channels: Vec<ChannelName>,
    ) -> Result<(), BrokerError> {
        let (up, down): (Vec<ChannelName>, Vec<ChannelName>) =
            channels.into_iter().partition(|c| self.shards.is_up(c));
        if !up.is_empty() {
            subscribe(&self.shared, &self.cluster.pubsub, &up, "SSUBSCRIBE")
                .await
                .map_err(classify)?;
            wanted.extend(up.iter().cloned());
        }
        if down.is_empty() {
            return Ok(());
        }
        let error = BrokerError::Unavailable("the Redis shard serving the channel is down".into());
        if up.is_empty() {
            Err(error)
        } else {
            Err(BrokerError::Partial(down, Box::new(error)))
        }
    }

    /// Reads the slot layout. A changed layout moves probes to the new
    /// shards and resubscribes (then catches up) the channels whose owner
    /// changed; `sunsubscribe` pushes usually report the same, and doing it
    /// twice is harmless.
    async fn refresh(&mut self, wanted: &HashSet<ChannelName>) -> Result<(), String> {
        let publisher = &self.cluster.publisher;
        let reply = redirected(|| {
            let mut connection = publisher.clone();
            async move {
                connection
                    .route_command(
                        redis::cmd("CLUSTER").arg("SLOTS").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await
            }
        })
        .await
        .map_err(|e| format!("CLUSTER SLOTS: {e}"))?;
        let topology = Topology::from_cluster_slots(&reply)?;
        if self.shards.topology.as_ref() == Some(&topology) {
            return Ok(());
        }
        let change = self.shards.replace(topology, wanted, &self.shared)?;
        tracing::info!(
            shards = ?self
                .shards
                .states
                .iter()
                .map(|s| format!("{} on {}", s.shard.label, s.shard.master))
                .collect::<Vec<_>>(),
            "cluster slot layout"
        );
        if let Err(error) = raw_subscribe(&self.cluster.pubsub, change.new_probes, "SSUBSCRIBE").await {
            // The probes of the shards concerned go missing: they are marked
            // down and resubscribed from the probe round.
            tracing::warn!(%error, "SSUBSCRIBE of the probes failed");
        }
        if let Err(error) = raw_subscribe(&self.cluster.pubsub, change.old_probes, "SUNSUBSCRIBE").await {
            tracing::debug!(%error, "SUNSUBSCRIBE of old probes failed");
        }
        if !change.moved.is_empty() {
            self.resubscribe(change.moved, "their slots moved to another shard")
                .await;
        }
        Ok(())
    }

    /// Channels a shard gave up (`sunsubscribe`): those still wanted are
    /// subscribed again on their current owner and caught up.
    async fn take_back(&mut self, wanted: &HashSet<ChannelName>, given_up: Vec<Vec<u8>>) {
        let probe_prefix = self.shared.names.probe().as_bytes();
        let mut probes = false;
        let mut channels = Vec::new();
        for name in &given_up {
            if name.starts_with(probe_prefix) {
                probes = true;
            } else if let Some(channel) = self
                .shared
                .names
                .gateway_channel(name)
                .and_then(|c| ChannelName::parse(c).ok())
                .filter(|c| wanted.contains(c))
            {
                channels.push(channel);
            }
        }
        if channels.is_empty() && !probes {
            // Confirmations of our own unsubscribes.
            return;
        }
        // The layout changed: learn the new owners first.
        if let Err(error) = self.refresh(wanted).await {
            tracing::warn!(%error, "cannot read the cluster's slot layout");
        }
        if probes {
            let all: Vec<String> = self.shards.states.iter().map(|s| s.probe.clone()).collect();
            if let Err(error) = raw_subscribe(&self.cluster.pubsub, all, "SSUBSCRIBE").await {
                tracing::warn!(%error, "SSUBSCRIBE probes failed");
            }
        }
        if !channels.is_empty() {
            self.resubscribe(channels, "a shard gave them up (slot moved or failover)")
                .await;
        }
    }

    /// Subscribes `channels` again and, once that worked, has them caught
    /// up; on failure their shards owe a resubscription (probe round).
    async fn resubscribe(&mut self, channels: Vec<ChannelName>, reason: &'static str) {
        match subscribe(&self.shared, &self.cluster.pubsub, &channels, "SSUBSCRIBE").await {
            Ok(()) => {
                tracing::info!(channels = channels.len(), reason, "resubscribed on the new shard");
                self.missed.push((channels, reason));
            }
            Err(error) => {
                tracing::warn!(%error, channels = channels.len(), "cannot resubscribe moved channels");
                for channel in &channels {
                    if let Some(index) = self.shards.owner(channel) {
                        let state = &mut self.shards.states[index];
                        mark_down(state, "resubscribing failed");
                        state.resubscribe = true;
                    }
                }
            }
        }
    }

    /// One probe round: collect what came back (catching up shards that
    /// owe it), resubscribe shards that owe it, send the next probes.
    async fn probe(&mut self, wanted: &HashSet<ChannelName>) {
        let config = &self.shared.config;
        let timeout = config.probe_timeout;
        // A shard that does not take the probe within an interval is not
        // waited for longer: the supervisor has requests to serve.
        let send_timeout = config.probe_interval.min(timeout);
        let signals = self.cluster.signals.clone();
        let collected = self
            .shards
            .collect_probes(|probe| signals.probe_seen(probe), timeout);
        if collected.answered {
            self.last_answer = Instant::now();
        }
        if collected.late > 0 {
            self.shared
                .metrics
                .probe_failures
                .increment(collected.late as u64);
        }
        for index in collected.caught_up {
            let channels = self.shards.channels_of(index, wanted);
            if !channels.is_empty() {
                self.missed.push((channels, "their shard was unreachable"));
            }
        }
        // Shards owing their channels a subscription: the catch-up follows
        // when a probe sent after it returns.
        for index in 0..self.shards.states.len() {
            if !self.shards.states[index].resubscribe {
                continue;
            }
            let mut names = vec![self.shards.states[index].probe.clone()];
            names.extend(
                self.shards
                    .channels_of(index, wanted)
                    .iter()
                    .map(|c| self.shared.names.channel(c.as_str())),
            );
            let state = &mut self.shards.states[index];
            match raw_subscribe(&self.cluster.pubsub, names, "SSUBSCRIBE").await {
                Ok(()) => {
                    state.resubscribe = false;
                    state.catch_up = true;
                    state.outstanding = None;
                }
                Err(error) => {
                    tracing::debug!(%error, shard = %state.shard.label, "cannot resubscribe on the shard")
                }
            }
        }
        self.sequence += 1;
        let sequence = self.sequence;
        let publisher = &self.cluster.publisher;
        let sends = self
            .shards
            .states
            .iter()
            .enumerate()
            .filter(|(_, s)| s.outstanding.is_none())
            .map(|(index, state)| {
                let probe = state.probe.clone();
                async move {
                    let sent = redirected(|| {
                        let (mut connection, probe) = (publisher.clone(), probe.clone());
                        async move {
                            redis::cmd("SPUBLISH")
                                .arg(probe)
                                .arg(sequence.to_string())
                                .query_async::<i64>(&mut connection)
                                .await
                        }
                    });
                    (index, tokio::time::timeout(send_timeout, sent).await)
                }
            });
        // The receiver count SPUBLISH answers is the master's own: this
        // node may be subscribed at a replica of the shard (which delivers
        // too), so only the probe's return counts.
        for (index, result) in futures_util::future::join_all(sends).await {
            let state = &mut self.shards.states[index];
            match result {
                Ok(Ok(_)) => state.outstanding = Some((sequence, Instant::now())),
                Ok(Err(error)) => mark_down(state, &format!("probe SPUBLISH failed: {error}")),
                Err(_) => mark_down(state, "probe SPUBLISH timed out"),
            }
        }
    }
}

/// SSUBSCRIBE or SUNSUBSCRIBE gateway channels on their shards.
async fn subscribe(
    shared: &Shared,
    pubsub: &ClusterConnection,
    channels: &[ChannelName],
    command: &'static str,
) -> RedisResult<()> {
    let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
    for channel in channels {
        by_slot
            .entry(channel_slot(channel.as_str()))
            .or_default()
            .push(shared.names.channel(channel.as_str()));
    }
    send_grouped(pubsub, by_slot, command).await
}

/// SSUBSCRIBE or SUNSUBSCRIBE Redis channel names.
async fn raw_subscribe(
    pubsub: &ClusterConnection,
    names: Vec<String>,
    command: &'static str,
) -> RedisResult<()> {
    let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
    for name in names {
        by_slot.entry(slot(name.as_bytes())).or_default().push(name);
    }
    send_grouped(pubsub, by_slot, command).await
}

/// One command per slot (a sharded subscription may not span slots),
/// several in flight.
async fn send_grouped(
    pubsub: &ClusterConnection,
    by_slot: HashMap<u16, Vec<String>>,
    command: &'static str,
) -> RedisResult<()> {
    let batches: Vec<Vec<String>> = by_slot
        .into_values()
        .flat_map(|names| names.chunks(BATCH).map(<[String]>::to_vec).collect::<Vec<_>>())
        .collect();
    let mut sent = futures_util::stream::iter(batches)
        .map(|batch| {
            let mut connection = pubsub.clone();
            async move {
                if command == "SSUBSCRIBE" {
                    connection.ssubscribe(batch).await
                } else {
                    connection.sunsubscribe(batch).await
                }
            }
        })
        .buffer_unordered(CONCURRENCY);
    let mut result = Ok(());
    while let Some(outcome) = sent.next().await {
        if let Err(error) = outcome {
            result = Err(error);
        }
    }
    result
}
