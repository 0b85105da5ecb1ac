//! The embedded broker: publications stay inside this process.
//!
//! It is the default when no Redis is configured, so a single node works with
//! nothing else installed. Publishing delivers synchronously into the
//! listener while holding the channel's shard lock, which gives every
//! subscriber the same total order per channel.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use pubsub_proto::{ChannelName, Publication};
use tokio::sync::watch;

use crate::{BoxFuture, Broker, BrokerError, Health, Listener, Published};

const SHARDS: usize = 32;

/// An in-process broker for a single node.
pub struct MemoryBroker {
    listener: Arc<dyn Listener>,
    /// Channels this node subscribed to, sharded to keep publishers on
    /// different channels from contending.
    shards: Box<[Mutex<HashSet<ChannelName>>]>,
    hasher: RandomState,
    health: watch::Sender<Health>,
}

impl MemoryBroker {
    /// A broker that delivers into `listener`.
    pub fn new(listener: Arc<dyn Listener>) -> Self {
        MemoryBroker {
            listener,
            shards: (0..SHARDS).map(|_| Mutex::new(HashSet::new())).collect(),
            hasher: RandomState::new(),
            health: watch::Sender::new(Health::up()),
        }
    }

    fn shard(&self, channel: &ChannelName) -> &Mutex<HashSet<ChannelName>> {
        let index = self.hasher.hash_one(channel.as_str()) as usize % SHARDS;
        &self.shards[index]
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, channel: ChannelName, data: Bytes) -> BoxFuture<'_, Result<Published, BrokerError>> {
        let shard = self.shard(&channel).lock();
        if shard.contains(&channel) {
            self.listener.on_publication(Publication::new(channel, data));
        }
        drop(shard);
        Box::pin(async { Ok(Published::default()) })
    }

    fn subscribe<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), BrokerError>> {
        for channel in channels {
            self.shard(channel).lock().insert(channel.clone());
        }
        Box::pin(async { Ok(()) })
    }

    fn unsubscribe<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), BrokerError>> {
        for channel in channels {
            self.shard(channel).lock().remove(channel);
        }
        Box::pin(async { Ok(()) })
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BrokerEvent;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, Bytes)>>);

    impl Listener for Recorder {
        fn on_publication(&self, p: Publication) {
            self.0.lock().push((p.channel.to_string(), p.data));
        }
        fn on_event(&self, _: BrokerEvent) {}
    }

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    #[tokio::test]
    async fn delivers_only_subscribed_channels_in_order() {
        let recorder = Arc::new(Recorder::default());
        let broker = MemoryBroker::new(recorder.clone());
        broker.publish(ch("a"), Bytes::from_static(b"0")).await.unwrap();
        broker.subscribe(&[ch("a"), ch("b")]).await.unwrap();
        for i in 1..=3 {
            broker.publish(ch("a"), Bytes::from(i.to_string())).await.unwrap();
        }
        broker.publish(ch("c"), Bytes::from_static(b"x")).await.unwrap();
        broker.unsubscribe(&[ch("a")]).await.unwrap();
        broker.publish(ch("a"), Bytes::from_static(b"4")).await.unwrap();
        broker.publish(ch("b"), Bytes::from_static(b"y")).await.unwrap();

        let got: Vec<(String, Bytes)> = recorder.0.lock().clone();
        let expected: Vec<(String, Bytes)> = [("a", "1"), ("a", "2"), ("a", "3"), ("b", "y")]
            .into_iter()
            .map(|(c, d)| (c.to_string(), Bytes::from(d)))
            .collect();
        assert_eq!(got, expected);
        assert!(broker.health().borrow().up);
    }
}
