//! What the supervisor knows of each shard: the slot layout, each shard's
//! probe and health, and what it owes its channels (a resubscription, a
//! catch-up from history).
//!
//! A shard is *down* while its probe does not come back; a shard that was
//! down, or may have missed publications (a node connection of the cluster
//! client dropped), is caught up from history once a probe sent *after*
//! the trouble has come back, and only once its channels' subscriptions
//! are known to be in place. This module keeps that bookkeeping and the
//! health derived from it; the supervisor does the I/O.

use std::collections::HashSet;
use std::time::Duration;

use pubsub_proto::ChannelName;
use tokio::time::Instant;

use super::topology::{SLOTS, Shard, Topology, channel_slot};
use crate::Health;
use crate::redis::Shared;

/// One shard.
pub(super) struct ShardState {
    pub shard: Shard,
    /// This node's probe channel on the shard.
    pub probe: String,
    pub up: bool,
    /// Publications may have been missed: catch the shard's channels up
    /// from history when a probe sent after the trouble comes back.
    pub catch_up: bool,
    /// The shard's channels must be subscribed again (a resubscription
    /// failed, or the shard lost them); retried every probe round.
    pub resubscribe: bool,
    /// The probe in flight: its sequence number and when it was sent.
    pub outstanding: Option<(u64, Instant)>,
    gauge: metrics::Gauge,
}

/// What a new slot layout changed.
pub(super) struct Change {
    /// Probe channels to subscribe (new shards, moved probes).
    pub new_probes: Vec<String>,
    /// Probe channels nobody uses any more.
    pub old_probes: Vec<String>,
    /// Wanted channels whose shard changed: subscribe them on the new one.
    pub moved: Vec<ChannelName>,
}

/// Every shard, by index in the current layout.
#[derive(Default)]
pub(super) struct Shards {
    pub topology: Option<Topology>,
    pub states: Vec<ShardState>,
}

impl Shards {
    /// The shard serving a gateway channel.
    pub fn owner(&self, channel: &ChannelName) -> Option<usize> {
        self.topology.as_ref()?.owner(channel_slot(channel.as_str()))
    }

    pub fn is_up(&self, channel: &ChannelName) -> bool {
        self.owner(channel).is_some_and(|index| self.states[index].up)
    }

    /// The wanted channels the shard at `index` serves.
    pub fn channels_of(&self, index: usize, wanted: &HashSet<ChannelName>) -> Vec<ChannelName> {
        wanted
            .iter()
            .filter(|c| self.owner(c) == Some(index))
            .cloned()
            .collect()
    }

    /// Adopts a new slot layout. Everything that can fail (a probe tag per
    /// shard) is worked out before any state changes, so a failure leaves
    /// the old layout whole.
    pub fn replace(
        &mut self,
        topology: Topology,
        wanted: &HashSet<ChannelName>,
        shared: &Shared,
    ) -> Result<Change, String> {
        let mut probes = Vec::with_capacity(topology.shards.len());
        for (index, shard) in topology.shards.iter().enumerate() {
            let tag = topology
                .tag_for(index)
                .ok_or_else(|| format!("no probe tag found for shard {}", shard.label))?;
            probes.push(shared.names.shard_probe(&tag));
        }
        let masters_before: Vec<Option<String>> = wanted
            .iter()
            .map(|c| self.owner(c).map(|i| self.states[i].shard.master.clone()))
            .collect();
        let mut old = std::mem::take(&mut self.states);
        for (shard, probe) in topology.shards.iter().zip(probes) {
            let kept = old
                .iter()
                .position(|s| s.shard.master == shard.master && s.probe == probe)
                .map(|at| old.swap_remove(at));
            let state = match kept {
                Some(mut state) => {
                    if state.shard.label != shard.label {
                        // Its first range moved (a reshard): report under the
                        // label logs and readiness use now.
                        state.gauge.set(1.0);
                        state.gauge = (shared.metrics.shard_up)(&shard.label);
                    }
                    state.shard = shard.clone();
                    state
                }
                None => ShardState {
                    gauge: (shared.metrics.shard_up)(&shard.label),
                    shard: shard.clone(),
                    probe,
                    up: true,
                    catch_up: false,
                    resubscribe: false,
                    outstanding: None,
                },
            };
            self.states.push(state);
        }
        let new_probes: Vec<String> = self.states.iter().map(|s| s.probe.clone()).collect();
        // Shards that are gone report up: their series would otherwise
        // stay at whatever they last were (an alert that never clears).
        for gone in &old {
            if !self.states.iter().any(|s| s.shard.label == gone.shard.label) {
                gone.gauge.set(1.0);
            }
        }
        let old_probes = old
            .into_iter()
            .map(|s| s.probe)
            .filter(|p| !new_probes.contains(p))
            .collect();
        self.topology = Some(topology);
        let moved = wanted
            .iter()
            .zip(masters_before)
            .filter(|(c, before)| {
                let now = self.owner(c).map(|i| &self.states[i].shard.master);
                matches!((before, now), (Some(before), Some(now)) if before != now)
            })
            .map(|(c, _)| c.clone())
            .collect();
        Ok(Change {
            new_probes,
            old_probes,
            moved,
        })
    }

    /// A node connection of the cluster client dropped: which shard is not
    /// known, so every shard is caught up once a probe sent from now on
    /// comes back (a probe in flight may have been answered before).
    pub fn lost_contact(&mut self) {
        for state in &mut self.states {
            state.catch_up = true;
            state.outstanding = None;
        }
    }

    /// Looks at the probes in flight: returns the shards whose probe came
    /// back (and whether each owes a catch-up), marks late ones down.
    pub fn collect_probes(&mut self, seen: impl Fn(&str) -> u64, timeout: Duration) -> Collected {
        let mut collected = Collected::default();
        for (index, state) in self.states.iter_mut().enumerate() {
            let Some((sequence, sent)) = state.outstanding else {
                continue;
            };
            if seen(&state.probe) >= sequence {
                state.outstanding = None;
                collected.answered = true;
                if !state.up {
                    tracing::info!(shard = %state.shard.label, master = %state.shard.master, "Redis shard is back");
                    state.up = true;
                }
                if state.catch_up && !state.resubscribe {
                    state.catch_up = false;
                    collected.caught_up.push(index);
                }
            } else if sent.elapsed() > timeout {
                state.outstanding = None;
                mark_down(state, "probe not received back in time");
                // It may have lost this node's subscriptions (a restarted
                // master the cluster client did not notice).
                state.resubscribe = true;
                collected.late += 1;
            }
        }
        collected
    }

    /// Publishes per-slot availability, per-shard gauges and the broker's
    /// health: up while every shard holding wanted channels is up (and at
    /// least one shard is).
    pub fn publish_health(&self, shared: &Shared, wanted: &HashSet<ChannelName>) {
        let mut slot_up = vec![false; SLOTS];
        for state in &self.states {
            state.gauge.set(if state.up { 1.0 } else { 0.0 });
            for &(start, end) in &state.shard.ranges {
                slot_up[start as usize..=end as usize].fill(state.up);
            }
        }
        shared.route.set_slots(slot_up);
        let mut in_use = vec![false; self.states.len()];
        for channel in wanted {
            if let Some(index) = self.owner(channel) {
                in_use[index] = true;
            }
        }
        let down: Vec<String> = self
            .states
            .iter()
            .zip(&in_use)
            .filter(|(state, used)| !state.up && **used)
            .map(|(state, _)| format!("{} ({})", state.shard.label, state.shard.master))
            .collect();
        let health = if !self.states.iter().any(|s| s.up) {
            Health::down("no Redis shard reachable")
        } else if !down.is_empty() {
            Health::down(format!("Redis shards down: {}", down.join(", ")))
        } else {
            Health::up()
        };
        shared.health.send_if_modified(|current| {
            let changed = *current != health;
            *current = health;
            changed
        });
    }
}

/// What a look at the probes found.
#[derive(Default)]
pub(super) struct Collected {
    /// Some shard answered.
    pub answered: bool,
    /// Shards whose channels are due a catch-up now.
    pub caught_up: Vec<usize>,
    /// Shards whose probe was late.
    pub late: usize,
}

pub(super) fn mark_down(state: &mut ShardState, reason: &str) {
    if state.up {
        tracing::warn!(shard = %state.shard.label, master = %state.shard.master, reason, "Redis shard is down");
    }
    state.up = false;
    state.catch_up = true;
}
