//! What arrives on the pub/sub connection, handled where it arrives.
//!
//! [`PushHandler`] is the connection's push sender: the redis crate calls it
//! from the connection's reader for every push, so a publication goes from
//! the socket to the node's listener without another queue or task. The
//! listener never blocks (it only queues to client outboxes), so the reader
//! keeps pace with Redis. The same handler serves one Redis (`message`
//! pushes) and a cluster (`smessage`, and `sunsubscribe` when a shard gives
//! up a channel because its slot moved or the node stopped being a master).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use pubsub_proto::envelope;
use redis::aio::{AsyncPushSender, SendError};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{Notify, mpsc};

use super::names::Names;
use super::presence;
use super::{Shared, now_us};
use crate::{BrokerMetrics, Listener};

/// First byte of a message another node sent to this one on its probe
/// channel ([`crate::Broker::send_to_node`]); probes themselves are digits.
pub(super) const NODE_MESSAGE_MARK: u8 = b'N';

/// Signals from a pub/sub connection to its supervisor.
#[derive(Default)]
pub(super) struct Signals {
    /// A connection closed (the redis crate's `Disconnection` push).
    pub disconnected: Notify,
    /// Highest probe sequence number received back, per probe channel.
    probes: Mutex<HashMap<Vec<u8>, u64>>,
    /// Where `sunsubscribe` pushes are reported (cluster only), as Redis
    /// channel names. Bounded: when the supervisor falls behind, reports
    /// are dropped and `unsubscribes_dropped` set instead, and the
    /// supervisor takes back every channel.
    pub unsubscribed: Option<mpsc::Sender<Vec<u8>>>,
    pub unsubscribes_dropped: AtomicBool,
}

impl Signals {
    /// Signals that report `sunsubscribe` pushes to `unsubscribed`.
    pub fn reporting_unsubscribes(unsubscribed: mpsc::Sender<Vec<u8>>) -> Signals {
        Signals {
            unsubscribed: Some(unsubscribed),
            ..Signals::default()
        }
    }

    /// The highest sequence number received back on `probe`.
    pub fn probe_seen(&self, probe: &str) -> u64 {
        self.probes.lock().get(probe.as_bytes()).copied().unwrap_or(0)
    }
}

pub(super) struct PushHandler {
    /// Set once the broker started (the supervisor connects only after).
    listener: Option<Arc<dyn Listener>>,
    names: Arc<Names>,
    signals: Arc<Signals>,
    metrics: BrokerMetrics,
}

impl AsyncPushSender for PushHandler {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::Message | PushKind::SMessage => self.on_message(info.data),
            PushKind::Disconnection => self.signals.disconnected.notify_one(),
            PushKind::SUnsubscribe => {
                if let (Some(report), Some(Value::BulkString(channel))) =
                    (&self.signals.unsubscribed, info.data.into_iter().next())
                    && report.try_send(channel).is_err()
                {
                    self.signals.unsubscribes_dropped.store(true, Ordering::Relaxed);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl PushHandler {
    /// A join or leave the presence scripts published on the channel.
    fn on_presence(&self, redis_channel: &[u8], payload: &[u8]) {
        let event = self
            .names
            .gateway_channel(redis_channel)
            .and_then(|name| pubsub_proto::ChannelName::parse(name).ok())
            .and_then(|channel| presence::decode_event(channel, payload));
        match (event, &self.listener) {
            (Some(event), Some(listener)) => listener.on_presence(event),
            (Some(_), None) => {}
            (None, _) => {
                self.metrics.dropped.increment(1);
                tracing::warn!("dropping a presence event that does not decode");
            }
        }
    }

    /// A handler for one connection of the broker `shared`, reporting to
    /// `signals`.
    pub fn new(shared: &Shared, signals: Arc<Signals>) -> PushHandler {
        PushHandler {
            listener: shared.listener.get().cloned(),
            names: shared.names.clone(),
            signals,
            metrics: shared.metrics.clone(),
        }
    }

    fn on_message(&self, data: Vec<Value>) {
        let mut parts = data.into_iter();
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
            (parts.next(), parts.next())
        else {
            self.metrics.dropped.increment(1);
            return;
        };
        if channel.starts_with(self.names.probe().as_bytes()) {
            if payload.first() == Some(&NODE_MESSAGE_MARK) {
                if let Some(listener) = &self.listener {
                    listener.on_node_message(Bytes::copy_from_slice(&payload[1..]));
                }
                return;
            }
            if let Some(seq) = std::str::from_utf8(&payload).ok().and_then(|s| s.parse().ok()) {
                let mut probes = self.signals.probes.lock();
                let seen = probes.entry(channel).or_default();
                *seen = (*seen).max(seq);
            }
            return;
        }
        if payload.first() == Some(&presence::EVENT_MARK) {
            self.on_presence(&channel, &payload);
            return;
        }
        let envelope = match envelope::decode(Bytes::from(payload)) {
            Ok(envelope) => envelope,
            Err(error) => {
                self.metrics.dropped.increment(1);
                tracing::warn!(%error, "dropping a broker message that is not a valid envelope");
                return;
            }
        };
        // The envelope must name the channel it was published on, so a stray
        // publisher cannot inject into other channels.
        if self
            .names
            .channel(envelope.publication.channel.as_str())
            .as_bytes()
            != channel
        {
            self.metrics.dropped.increment(1);
            tracing::warn!(channel = %envelope.publication.channel, "dropping an envelope published on another channel");
            return;
        }
        let latency_us = now_us().saturating_sub(envelope.published_at_us);
        self.metrics.latency.record(latency_us as f64 / 1e6);
        if let Some(listener) = &self.listener {
            listener.on_publication(envelope.publication);
        }
    }
}
