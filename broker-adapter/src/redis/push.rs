//! What arrives on the pub/sub connection, handled where it arrives.
//!
//! [`PushHandler`] is the connection's push sender: the redis crate calls it
//! from the connection's reader for every push, so a publication goes from
//! the socket to the node's listener without another queue or task. The
//! listener never blocks (it only queues to client outboxes), so the reader
//! keeps pace with Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pubsub_proto::envelope;
use redis::aio::{AsyncPushSender, SendError};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::Notify;

use super::names::Names;
use crate::{BrokerMetrics, Listener};

/// Signals from one pub/sub connection to the supervisor.
#[derive(Default)]
pub(super) struct Signals {
    /// The connection closed (the redis crate's `Disconnection` push).
    pub disconnected: Notify,
    /// Highest probe sequence number received back.
    pub probe_seen: AtomicU64,
}

pub(super) struct PushHandler {
    pub listener: Arc<dyn Listener>,
    pub names: Arc<Names>,
    pub signals: Arc<Signals>,
    pub metrics: BrokerMetrics,
}

impl AsyncPushSender for PushHandler {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::Message => self.on_message(info.data),
            PushKind::Disconnection => self.signals.disconnected.notify_one(),
            _ => {}
        }
        Ok(())
    }
}

impl PushHandler {
    fn on_message(&self, data: Vec<Value>) {
        let mut parts = data.into_iter();
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
            (parts.next(), parts.next())
        else {
            self.metrics.dropped.increment(1);
            return;
        };
        if channel == self.names.probe().as_bytes() {
            if let Some(seq) = std::str::from_utf8(&payload).ok().and_then(|s| s.parse().ok()) {
                self.signals.probe_seen.fetch_max(seq, Ordering::Relaxed);
            }
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
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let latency_us = now_us.saturating_sub(envelope.published_at_us);
        self.metrics.latency.record(latency_us as f64 / 1e6);
        self.listener.on_publication(envelope.publication);
    }
}
