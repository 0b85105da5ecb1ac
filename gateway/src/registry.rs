//! Every live session of the node, for the two jobs that need them all:
//! the heartbeat (ping each client every ping interval, close clients that
//! went silent) and the drain (close every client, spread over a window).
//!
//! One sweeper task serves all connections, visiting one shard per tick, so
//! an idle connection costs no timer and no wakeup of its own, and pings go
//! out spread over the interval rather than all at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use pubsub_proto::close;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};

use crate::frame::{CloseRequest, Frame};
use crate::peer::Peer;

const SHARDS: usize = 8;

type Shard = Mutex<HashMap<u64, Arc<Peer>>>;

/// The node's live sessions.
pub struct Registry {
    shards: Box<[Shard]>,
    /// Sessions registered now.
    count: AtomicUsize,
    /// Woken when the last session leaves (the drain waits on it).
    emptied: Notify,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            count: AtomicUsize::new(0),
            emptied: Notify::new(),
        }
    }
}

impl Registry {
    fn shard(&self, id: u64) -> &Shard {
        &self.shards[id as usize % SHARDS]
    }

    pub fn insert(&self, peer: Arc<Peer>) {
        if self.shard(peer.id).lock().insert(peer.id, peer).is_none() {
            self.count.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn remove(&self, id: u64) {
        if self.shard(id).lock().remove(&id).is_some() && self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.emptied.notify_waiters();
        }
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `act` on every session `matches` picks; returns how many.
    pub fn each_where(&self, matches: impl Fn(&Peer) -> bool, act: impl Fn(&Peer)) -> usize {
        let mut count = 0;
        for shard in self.shards.iter() {
            for peer in shard.lock().values() {
                if matches(peer) {
                    act(peer);
                    count += 1;
                }
            }
        }
        count
    }

    /// Resolves once no session is left (at once if none is).
    pub async fn wait_empty(&self) {
        loop {
            // Register before looking, so a removal in between is not missed.
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    /// Pings every client once per `ping_interval` and closes (1001) those
    /// that sent nothing for twice that long. Runs until the task is dropped.
    pub async fn run_heartbeat(self: Arc<Self>, ping_interval: Duration) {
        let mut tick = tokio::time::interval(ping_interval / SHARDS as u32);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let stale_after_ms = 2 * ping_interval.as_millis() as u64;
        for shard in (0..SHARDS).cycle() {
            tick.tick().await;
            self.sweep(shard, stale_after_ms);
        }
    }

    fn sweep(&self, shard: usize, stale_after_ms: u64) {
        let mut stale = Vec::new();
        {
            let peers = self.shards[shard].lock();
            for peer in peers.values() {
                if peer.idle_ms() > stale_after_ms {
                    stale.push(peer.clone());
                } else {
                    peer.outbox.push(Frame::Ping);
                }
            }
        }
        for peer in stale {
            tracing::debug!(
                peer = peer.id,
                idle_ms = peer.idle_ms(),
                "closing stale connection"
            );
            peer.outbox.close(CloseRequest::now(
                close::GOING_AWAY,
                "no traffic from client for two ping intervals",
            ));
        }
    }

    /// Closes every client with 1012 (service restart), spread evenly over
    /// `window` so that clients do not all reconnect at the same moment;
    /// each close carries a reconnect hint drawn from `[0, jitter]` to
    /// spread the reconnects further. Returns when every close has been
    /// requested.
    pub async fn drain(&self, window: Duration, jitter: Duration) {
        let mut peers: Vec<Arc<Peer>> = self
            .shards
            .iter()
            .flat_map(|s| s.lock().values().cloned().collect::<Vec<_>>())
            .collect();
        // Oldest first: a stable, fair order.
        peers.sort_unstable_by_key(|p| p.id);
        let count = peers.len();
        tracing::info!(clients = count, window_ms = window.as_millis() as u64, "draining");
        let start = Instant::now();
        for (i, peer) in peers.into_iter().enumerate() {
            let due = start + window.mul_f64(i as f64 / count as f64);
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            peer.outbox.close(drain_close(jitter));
        }
        // Sessions that registered while the snapshot was taken.
        for shard in self.shards.iter() {
            for peer in shard.lock().values() {
                peer.outbox.close(drain_close(jitter));
            }
        }
    }
}

/// The close of a drained client: 1012 with a reconnect hint in `[0, jitter]`.
pub fn drain_close(jitter: Duration) -> CloseRequest {
    let jitter_ms = jitter.as_millis().min(u128::from(u32::MAX)) as u32;
    CloseRequest {
        code: close::SERVICE_RESTART,
        reason: "draining",
        flush_queue: true,
        reconnect_after_ms: Some(fastrand::u32(0..=jitter_ms)),
    }
}
