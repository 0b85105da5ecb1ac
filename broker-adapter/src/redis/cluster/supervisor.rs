//! The one task that owns this node's sharded subscriptions and watches
//! every shard of the cluster.
//!
//! It connects (two cluster connections), reads the slot layout, subscribes
//! one probe channel per shard and every wanted channel (grouped by slot,
//! several commands in flight), then serves subscribe/unsubscribe requests
//! while it
//! - probes each shard every `probe_interval`: a probe that does not come
//!   back in time marks the shard down (its slots refuse publishes at once;
//!   readiness fails if it holds subscribed channels), due for a catch-up,
//!   and resubscribes its channels;
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
//! wanted channels lives here, without locks.

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

use super::Shared;
use super::topology::{SLOTS, Shard, Topology, slot};
use crate::redis::classify;
use crate::redis::push::{PushHandler, Signals};
use crate::redis::supervisor::{Control, backoff, wait_answering_unavailable};
use crate::{BrokerError, BrokerEvent, Health};

/// Most channels in one SSUBSCRIBE (all of one slot).
const BATCH: usize = 1000;
/// SSUBSCRIBE/SUNSUBSCRIBE commands in flight at once.
const CONCURRENCY: usize = 32;
/// Without an answer from any shard for this long, the connections are
/// rebuilt from the seed nodes (the cluster may have been replaced).
const REBUILD_AFTER: Duration = Duration::from_secs(30);

/// The two connections to the cluster.
struct Cluster {
    pubsub: ClusterConnection,
    publisher: ClusterConnection,
    signals: Arc<Signals>,
    /// `sunsubscribe` pushes: channels a shard gave up.
    unsubscribed: mpsc::UnboundedReceiver<Vec<u8>>,
}

/// What the supervisor knows of one shard.
struct ShardState {
    shard: Shard,
    /// This node's probe channel on the shard.
    probe: String,
    up: bool,
    /// Publications may have been missed: catch the shard's channels up
    /// from history when its probe next comes back.
    catch_up: bool,
    outstanding: Option<(u64, Instant)>,
    gauge: metrics::Gauge,
}

pub(in crate::redis) async fn run(shared: Arc<Shared>, mut control: mpsc::UnboundedReceiver<Control>) {
    let mut wanted: HashSet<ChannelName> = HashSet::new();
    let mut failed_attempts = 0u32;
    let mut lost = false;
    loop {
        match connect(&shared).await {
            Ok(cluster) => {
                failed_attempts = 0;
                let mut watch = Watch {
                    shared: &shared,
                    cluster,
                    topology: None,
                    shards: Vec::new(),
                    sequence: 0,
                    last_answer: Instant::now(),
                    missed: Vec::new(),
                };
                let Some(reason) = watch.serve(&mut wanted, &mut control, lost).await else {
                    return;
                };
                *shared.publisher.write() = None;
                shared.slot_up.write().fill(false);
                shared.health.send_replace(Health::down(reason.clone()));
                tracing::warn!(%reason, "Redis cluster connection lost");
                shared.listener.on_event(BrokerEvent::Lost { reason });
                lost = true;
            }
            Err(reason) => {
                failed_attempts = failed_attempts.saturating_add(1);
                if failed_attempts == 1 || failed_attempts.is_multiple_of(20) {
                    tracing::warn!(%reason, attempts = failed_attempts, "cannot connect to the Redis cluster");
                }
                shared.health.send_replace(Health::down(reason));
            }
        }
        let config = &shared.config;
        let delay = backoff(config.backoff_min, config.backoff_max, failed_attempts);
        if !wait_answering_unavailable(delay, &mut wanted, &mut control).await {
            return;
        }
    }
}

async fn connect(shared: &Arc<Shared>) -> Result<Cluster, String> {
    let (report, unsubscribed) = mpsc::unbounded_channel();
    let signals = Arc::new(Signals::reporting_unsubscribes(report));
    let handler = PushHandler {
        listener: shared.listener.clone(),
        names: shared.names.clone(),
        signals: signals.clone(),
        metrics: shared.metrics.clone(),
    };
    let pubsub = shared
        .client_builder()
        .push_sender(handler)
        .build()
        .map_err(|e| format!("invalid cluster settings: {e}"))?
        .get_async_connection()
        .await
        .map_err(|e| format!("subscribing connection: {e}"))?;
    let publisher = shared
        .client_builder()
        .build()
        .map_err(|e| format!("invalid cluster settings: {e}"))?
        .get_async_connection()
        .await
        .map_err(|e| format!("publishing connection: {e}"))?;
    Ok(Cluster {
        pubsub,
        publisher,
        signals,
        unsubscribed,
    })
}

/// One connected cluster, watched.
struct Watch<'a> {
    shared: &'a Shared,
    cluster: Cluster,
    topology: Option<Topology>,
    shards: Vec<ShardState>,
    sequence: u64,
    /// When a shard last answered a probe.
    last_answer: Instant,
    /// Catch-ups to announce once health is published (so that the
    /// history reads they cause find their shards up).
    missed: Vec<(Vec<ChannelName>, &'static str)>,
}

impl Watch<'_> {
    /// Serves until the connections must be rebuilt (returns why) or the
    /// broker handle is gone (`None`).
    async fn serve(
        &mut self,
        wanted: &mut HashSet<ChannelName>,
        control: &mut mpsc::UnboundedReceiver<Control>,
        restored: bool,
    ) -> Option<String> {
        if let Err(error) = self.refresh(wanted).await {
            return Some(error);
        }
        let all: Vec<ChannelName> = wanted.iter().cloned().collect();
        if let Err(error) = subscribe(self.shared, &self.cluster.pubsub, &all, "SSUBSCRIBE").await {
            return Some(format!("resubscribing: {error}"));
        }
        *self.shared.publisher.write() = Some(self.cluster.publisher.clone());
        if restored {
            self.shared.metrics.reconnects.increment(1);
            tracing::info!(
                channels = wanted.len(),
                "reconnected to the Redis cluster and resubscribed"
            );
            self.shared.listener.on_event(BrokerEvent::Restored);
        } else {
            tracing::info!(shards = self.shards.len(), "connected to the Redis cluster");
        }
        self.publish_health(wanted);
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
                        let _ = reply.send(Ok(()));
                        if let Err(error) = subscribe(self.shared, &self.cluster.pubsub, &channels, "SUNSUBSCRIBE").await {
                            tracing::warn!(%error, "SUNSUBSCRIBE failed");
                        }
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
                    for state in &mut self.shards {
                        state.catch_up = true;
                    }
                }
                _ = probe_tick.tick() => {
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
            self.publish_health(wanted);
            for (channels, reason) in self.missed.drain(..) {
                self.shared.listener.on_event(BrokerEvent::Missed {
                    channels,
                    reason: reason.to_owned(),
                });
            }
        }
    }

    /// A subscribe request: refused at once for channels whose shard is
    /// down, otherwise subscribed on their shards.
    async fn subscribe(
        &mut self,
        wanted: &mut HashSet<ChannelName>,
        channels: Vec<ChannelName>,
    ) -> Result<(), BrokerError> {
        if let Some(channel) = channels.iter().find(|c| !self.is_up(c)) {
            return Err(BrokerError::Unavailable(format!(
                "the Redis shard serving {channel} is down"
            )));
        }
        subscribe(self.shared, &self.cluster.pubsub, &channels, "SSUBSCRIBE")
            .await
            .map_err(classify)?;
        wanted.extend(channels);
        Ok(())
    }

    /// The shard index serving a channel's Redis name.
    fn owner_of(&self, redis_name: &str) -> Option<usize> {
        self.topology.as_ref()?.owner(slot(redis_name.as_bytes()))
    }

    fn is_up(&self, channel: &ChannelName) -> bool {
        self.owner_of(&self.shared.names.channel(channel.as_str()))
            .is_some_and(|index| self.shards[index].up)
    }

    /// Reads the slot layout. A changed layout moves probes to the new
    /// shards and resubscribes (then catches up) the channels whose owner
    /// changed; `sunsubscribe` pushes usually report the same, and doing it
    /// twice is harmless.
    async fn refresh(&mut self, wanted: &HashSet<ChannelName>) -> Result<(), String> {
        let reply = self
            .cluster
            .publisher
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .map_err(|e| format!("CLUSTER SLOTS: {e}"))?;
        let topology = Topology::from_cluster_slots(&reply)?;
        if self.topology.as_ref() == Some(&topology) {
            return Ok(());
        }
        let before: HashMap<String, String> = match &self.topology {
            Some(old) => wanted
                .iter()
                .filter_map(|c| {
                    let name = self.shared.names.channel(c.as_str());
                    let owner = old.owner(slot(name.as_bytes()))?;
                    Some((name, old.shards[owner].master.clone()))
                })
                .collect(),
            None => HashMap::new(),
        };
        let mut old_states: Vec<ShardState> = std::mem::take(&mut self.shards);
        for (index, shard) in topology.shards.iter().enumerate() {
            let tag = topology
                .tag_for(index)
                .ok_or_else(|| format!("no probe tag found for shard {}", shard.label))?;
            let probe = self.shared.names.shard_probe(&tag);
            let kept = old_states
                .iter()
                .position(|s| s.shard.master == shard.master && s.probe == probe)
                .map(|at| old_states.swap_remove(at));
            let state = match kept {
                Some(mut state) => {
                    if state.shard.label != shard.label {
                        // Its first range moved (a reshard): report under
                        // the label the logs and readiness use now.
                        state.gauge = (self.shared.metrics.shard_up)(&shard.label);
                    }
                    state.shard = shard.clone();
                    state
                }
                None => ShardState {
                    gauge: (self.shared.metrics.shard_up)(&shard.label),
                    shard: shard.clone(),
                    probe,
                    up: true,
                    catch_up: false,
                    outstanding: None,
                },
            };
            self.shards.push(state);
        }
        let old_probes: Vec<String> = old_states.into_iter().map(|s| s.probe).collect();
        let new_probes: Vec<String> = self.shards.iter().map(|s| s.probe.clone()).collect();
        tracing::info!(
            shards = ?self.shards.iter().map(|s| format!("{} on {}", s.shard.label, s.shard.master)).collect::<Vec<_>>(),
            "cluster slot layout"
        );
        self.topology = Some(topology);
        raw_subscribe(&self.cluster.pubsub, new_probes, "SSUBSCRIBE")
            .await
            .map_err(|e| format!("SSUBSCRIBE probes: {e}"))?;
        if let Err(error) = raw_subscribe(&self.cluster.pubsub, old_probes, "SUNSUBSCRIBE").await {
            tracing::debug!(%error, "SUNSUBSCRIBE of old probes failed");
        }
        let moved: Vec<ChannelName> = wanted
            .iter()
            .filter(|c| {
                let name = self.shared.names.channel(c.as_str());
                match (before.get(&name), self.owner_of(&name)) {
                    (Some(old), Some(now)) => *old != self.shards[now].shard.master,
                    _ => false,
                }
            })
            .cloned()
            .collect();
        if !moved.is_empty() {
            self.resubscribe(moved, "their slots moved to another shard")
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
            let all: Vec<String> = self.shards.iter().map(|s| s.probe.clone()).collect();
            if let Err(error) = raw_subscribe(&self.cluster.pubsub, all, "SSUBSCRIBE").await {
                tracing::warn!(%error, "SSUBSCRIBE probes failed");
            }
        }
        if !channels.is_empty() {
            self.resubscribe(channels, "a shard gave them up (slot moved or failover)")
                .await;
        }
    }

    /// Subscribes `channels` again and tells the listener to catch them up;
    /// on failure, their shards are marked down so the probe retries.
    async fn resubscribe(&mut self, channels: Vec<ChannelName>, reason: &'static str) {
        match subscribe(self.shared, &self.cluster.pubsub, &channels, "SSUBSCRIBE").await {
            Ok(()) => {
                tracing::info!(channels = channels.len(), reason, "resubscribed on the new shard");
                self.missed.push((channels, reason));
            }
            Err(error) => {
                tracing::warn!(%error, channels = channels.len(), "cannot resubscribe moved channels");
                for channel in &channels {
                    if let Some(index) = self.owner_of(&self.shared.names.channel(channel.as_str())) {
                        let state = &mut self.shards[index];
                        state.up = false;
                        state.catch_up = true;
                    }
                }
            }
        }
    }

    /// One probe round: collect what came back, mark late shards down, send
    /// the next probes, catch up shards that came back.
    async fn probe(&mut self, wanted: &HashSet<ChannelName>) {
        let config = &self.shared.config;
        let timeout = config.probe_timeout;
        // A shard that does not take the probe within an interval is not
        // waited for longer: the supervisor has requests to serve.
        let send_timeout = config.probe_interval.min(timeout);
        let mut returned = Vec::new();
        let mut late = Vec::new();
        for (index, state) in self.shards.iter_mut().enumerate() {
            let Some((sequence, sent)) = state.outstanding else {
                continue;
            };
            if self.cluster.signals.probe_seen(&state.probe) >= sequence {
                state.outstanding = None;
                self.last_answer = Instant::now();
                if !state.up || state.catch_up {
                    returned.push(index);
                }
            } else if sent.elapsed() > timeout {
                state.outstanding = None;
                self.shared.metrics.probe_failures.increment(1);
                mark_down(state, "probe not received back in time");
                late.push(index);
            }
        }
        for index in returned {
            let state = &mut self.shards[index];
            if !state.up {
                tracing::info!(shard = %state.shard.label, master = %state.shard.master, "Redis shard is back");
            }
            state.up = true;
            state.catch_up = false;
            let channels = self.channels_of(index, wanted);
            if !channels.is_empty() {
                self.missed.push((channels, "their shard was unreachable"));
            }
        }
        // A probe that did not come back may mean the shard lost this
        // node's subscriptions (a restarted master the cluster client did
        // not notice): subscribe them again; the catch-up follows when the
        // probe returns.
        for index in late {
            let mut names = vec![self.shards[index].probe.clone()];
            names.extend(
                self.channels_of(index, wanted)
                    .iter()
                    .map(|c| self.shared.names.channel(c.as_str())),
            );
            if let Err(error) = raw_subscribe(&self.cluster.pubsub, names, "SSUBSCRIBE").await {
                tracing::debug!(%error, shard = %self.shards[index].shard.label, "cannot resubscribe on the shard");
            }
        }
        self.sequence += 1;
        let sequence = self.sequence;
        let sends = self
            .shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.outstanding.is_none())
            .map(|(index, state)| {
                let mut publisher = self.cluster.publisher.clone();
                let probe = state.probe.clone();
                async move {
                    let mut command = redis::cmd("SPUBLISH");
                    command.arg(probe).arg(sequence.to_string());
                    let sent = command.query_async::<i64>(&mut publisher);
                    (index, tokio::time::timeout(send_timeout, sent).await)
                }
            });
        // The receiver count SPUBLISH answers is the master's own: this
        // node may be subscribed at a replica of the shard (which delivers
        // too), so only the probe's return counts.
        for (index, result) in futures_util::future::join_all(sends).await {
            let state = &mut self.shards[index];
            match result {
                Ok(Ok(_)) => state.outstanding = Some((sequence, Instant::now())),
                Ok(Err(error)) => mark_down(state, &format!("probe SPUBLISH failed: {error}")),
                Err(_) => mark_down(state, "probe SPUBLISH timed out"),
            }
        }
    }

    /// The wanted channels the shard at `index` serves.
    fn channels_of(&self, index: usize, wanted: &HashSet<ChannelName>) -> Vec<ChannelName> {
        wanted
            .iter()
            .filter(|c| self.owner_of(&self.shared.names.channel(c.as_str())) == Some(index))
            .cloned()
            .collect()
    }

    /// Publishes per-slot availability, per-shard gauges and the broker's
    /// health: up while every shard holding wanted channels is up (and at
    /// least one shard is).
    fn publish_health(&self, wanted: &HashSet<ChannelName>) {
        let mut slot_up = vec![false; SLOTS];
        for state in &self.shards {
            state.gauge.set(if state.up { 1.0 } else { 0.0 });
            for &(start, end) in &state.shard.ranges {
                slot_up[start as usize..=end as usize].fill(state.up);
            }
        }
        *self.shared.slot_up.write() = slot_up;
        let mut in_use = vec![false; self.shards.len()];
        for channel in wanted {
            if let Some(index) = self.owner_of(&self.shared.names.channel(channel.as_str())) {
                in_use[index] = true;
            }
        }
        let down: Vec<String> = self
            .shards
            .iter()
            .zip(&in_use)
            .filter(|(state, used)| !state.up && **used)
            .map(|(state, _)| format!("{} ({})", state.shard.label, state.shard.master))
            .collect();
        let health = if !self.shards.iter().any(|s| s.up) {
            Health::down("no Redis shard reachable")
        } else if !down.is_empty() {
            Health::down(format!("Redis shards down: {}", down.join(", ")))
        } else {
            Health::up()
        };
        self.shared.health.send_if_modified(|current| {
            let changed = *current != health;
            *current = health;
            changed
        });
    }
}

fn mark_down(state: &mut ShardState, reason: &str) {
    if state.up {
        tracing::warn!(shard = %state.shard.label, master = %state.shard.master, reason, "Redis shard is down");
    }
    state.up = false;
    state.catch_up = true;
}

/// SSUBSCRIBE or SUNSUBSCRIBE gateway channels on their shards.
async fn subscribe(
    shared: &Shared,
    pubsub: &ClusterConnection,
    channels: &[ChannelName],
    command: &'static str,
) -> RedisResult<()> {
    let names = channels
        .iter()
        .map(|c| shared.names.channel(c.as_str()))
        .collect();
    raw_subscribe(pubsub, names, command).await
}

/// SSUBSCRIBE or SUNSUBSCRIBE Redis channel names: one command per slot
/// (a sharded subscription may not span slots), several in flight.
async fn raw_subscribe(
    pubsub: &ClusterConnection,
    names: Vec<String>,
    command: &'static str,
) -> RedisResult<()> {
    let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
    for name in names {
        by_slot.entry(slot(name.as_bytes())).or_default().push(name);
    }
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
