//! The embedded broker: publications stay inside this process.
//!
//! It is the default when no Redis is configured, so a single node works with
//! nothing else installed, and it keeps the same stream semantics as Redis:
//! offsets without holes, a bounded history per channel, and a new epoch when
//! a channel's stream expired after `history_ttl` without publications.
//!
//! Publishing assigns the offset, appends to the history and delivers into
//! the listener while holding the channel's shard lock, which gives every
//! subscriber the same order and makes history and live delivery agree.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use pubsub_proto::{ChannelName, Publication};
use tokio::sync::watch;

use crate::{BoxFuture, Broker, BrokerError, Health, History, Listener, Published, StreamOptions, new_epoch};

const SHARDS: usize = 32;
/// How often expired streams of idle channels are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// One channel's stream and whether this node subscribed to it.
struct Channel {
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<Publication>,
    /// Last publication (or creation); the stream expires `ttl` after it.
    touched: Instant,
    ttl: Duration,
    subscribed: bool,
}

impl Channel {
    fn new(options: StreamOptions) -> Channel {
        Channel {
            epoch: Arc::from(new_epoch()),
            offset: 0,
            history: VecDeque::new(),
            touched: Instant::now(),
            ttl: options.history_ttl,
            subscribed: false,
        }
    }

    fn expired(&self) -> bool {
        self.touched.elapsed() > self.ttl
    }

    /// Starts a new sequence if the stream expired.
    fn refresh(&mut self, options: StreamOptions) {
        if self.expired() {
            let subscribed = self.subscribed;
            *self = Channel::new(options);
            self.subscribed = subscribed;
        }
    }
}

struct Inner {
    listener: Arc<dyn Listener>,
    shards: Box<[Mutex<HashMap<ChannelName, Channel>>]>,
    hasher: RandomState,
}

impl Inner {
    fn shard(&self, channel: &str) -> &Mutex<HashMap<ChannelName, Channel>> {
        &self.shards[self.hasher.hash_one(channel) as usize % SHARDS]
    }

    /// Drops streams that expired and that no local subscriber uses.
    fn sweep(&self) {
        for shard in self.shards.iter() {
            shard.lock().retain(|_, c| c.subscribed || !c.expired());
        }
    }
}

/// An in-process broker for a single node.
pub struct MemoryBroker {
    inner: Arc<Inner>,
    health: watch::Sender<Health>,
}

impl MemoryBroker {
    /// A broker that delivers into `listener`. Must be called inside a tokio
    /// runtime (it starts the sweeper of expired streams).
    pub fn new(listener: Arc<dyn Listener>) -> Self {
        let inner = Arc::new(Inner {
            listener,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        });
        tokio::spawn(sweep_loop(Arc::downgrade(&inner)));
        MemoryBroker {
            inner,
            health: watch::Sender::new(Health::up()),
        }
    }
}

async fn sweep_loop(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        match inner.upgrade() {
            Some(inner) => inner.sweep(),
            None => return,
        }
    }
}

impl Broker for MemoryBroker {
    fn publish(
        &self,
        channel: ChannelName,
        data: Bytes,
        options: StreamOptions,
    ) -> BoxFuture<'_, Result<Published, BrokerError>> {
        let mut shard = self.inner.shard(channel.as_str()).lock();
        let stream = shard
            .entry(channel.clone())
            .or_insert_with(|| Channel::new(options));
        stream.refresh(options);
        stream.offset += 1;
        stream.touched = Instant::now();
        stream.ttl = options.history_ttl;
        let publication = Publication {
            channel,
            data,
            offset: Some(stream.offset),
            epoch: Some(stream.epoch.clone()),
        };
        if options.history_size > 0 {
            stream.history.push_back(publication.clone());
        }
        while stream.history.len() > options.history_size {
            stream.history.pop_front();
        }
        let published = Published {
            offset: stream.offset,
            epoch: stream.epoch.clone(),
        };
        if stream.subscribed {
            self.inner.listener.on_publication(publication);
        }
        drop(shard);
        Box::pin(async move { Ok(published) })
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<u64>,
        limit: usize,
        options: StreamOptions,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        let mut shard = self.inner.shard(channel.as_str()).lock();
        let stream = shard
            .entry(channel.clone())
            .or_insert_with(|| Channel::new(options));
        stream.refresh(options);
        let publications = match since {
            Some(since) => stream
                .history
                .iter()
                .filter(|p| p.offset.is_some_and(|o| o > since))
                .take(limit)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        let history = History {
            epoch: stream.epoch.clone(),
            offset: stream.offset,
            publications,
        };
        drop(shard);
        Box::pin(async move { Ok(history) })
    }

    /// The embedded broker never loses what it accepted while it runs, so
    /// its sequences never go back: this only reports the position.
    fn restart_stream<'a>(
        &'a self,
        channel: &'a ChannelName,
        _epoch: &'a str,
        options: StreamOptions,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        self.history(channel, None, 0, options)
    }

    fn subscribe<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), BrokerError>> {
        for channel in channels {
            let mut shard = self.inner.shard(channel.as_str()).lock();
            shard
                .entry(channel.clone())
                .or_insert_with(|| Channel::new(StreamOptions::default()))
                .subscribed = true;
        }
        Box::pin(async { Ok(()) })
    }

    fn unsubscribe<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), BrokerError>> {
        for channel in channels {
            if let Some(stream) = self
                .inner
                .shard(channel.as_str())
                .lock()
                .get_mut(channel.as_str())
            {
                stream.subscribed = false;
            }
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
    struct Recorder(Mutex<Vec<(String, Bytes, Option<u64>)>>);

    impl Listener for Recorder {
        fn on_publication(&self, p: Publication) {
            self.0.lock().push((p.channel.to_string(), p.data, p.offset));
        }
        fn on_event(&self, _: BrokerEvent) {}
    }

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    fn opts(size: usize) -> StreamOptions {
        StreamOptions {
            history_size: size,
            history_ttl: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn delivers_only_subscribed_channels_in_order_with_offsets() {
        let recorder = Arc::new(Recorder::default());
        let broker = MemoryBroker::new(recorder.clone());
        let first = broker
            .publish(ch("a"), Bytes::from_static(b"0"), opts(10))
            .await
            .unwrap();
        assert_eq!(first.offset, 1);
        broker.subscribe(&[ch("a"), ch("b")]).await.unwrap();
        for i in 1..=3 {
            let p = broker
                .publish(ch("a"), Bytes::from(i.to_string()), opts(10))
                .await
                .unwrap();
            assert_eq!((p.offset, &*p.epoch), (i + 1, &*first.epoch));
        }
        broker
            .publish(ch("c"), Bytes::from_static(b"x"), opts(10))
            .await
            .unwrap();
        broker.unsubscribe(&[ch("a")]).await.unwrap();
        broker
            .publish(ch("a"), Bytes::from_static(b"4"), opts(10))
            .await
            .unwrap();
        broker
            .publish(ch("b"), Bytes::from_static(b"y"), opts(10))
            .await
            .unwrap();

        let got: Vec<(String, Bytes, Option<u64>)> = recorder.0.lock().clone();
        let expected: Vec<(String, Bytes, Option<u64>)> =
            [("a", "1", 2), ("a", "2", 3), ("a", "3", 4), ("b", "y", 1)]
                .into_iter()
                .map(|(c, d, o)| (c.to_string(), Bytes::from(d), Some(o)))
                .collect();
        assert_eq!(got, expected);
        assert!(broker.health().borrow().up);
    }

    #[tokio::test]
    async fn history_is_bounded_and_read_after_an_offset() {
        let broker = MemoryBroker::new(Arc::new(Recorder::default()));
        for i in 1..=10u64 {
            broker
                .publish(ch("h"), Bytes::from(i.to_string()), opts(5))
                .await
                .unwrap();
        }
        let h = broker.history(&ch("h"), Some(7), 100, opts(5)).await.unwrap();
        assert_eq!(h.offset, 10);
        let offsets: Vec<u64> = h.publications.iter().filter_map(|p| p.offset).collect();
        assert_eq!(offsets, [8, 9, 10]);
        assert!(
            h.publications
                .iter()
                .all(|p| p.epoch.as_deref() == Some(&*h.epoch))
        );
        // Only the last 5 are kept.
        let all = broker.history(&ch("h"), Some(0), 100, opts(5)).await.unwrap();
        assert_eq!(all.publications.first().and_then(|p| p.offset), Some(6));
        let limited = broker.history(&ch("h"), Some(0), 2, opts(5)).await.unwrap();
        assert_eq!(limited.publications.len(), 2);
        // Without `since`: the position only.
        let position = broker.history(&ch("h"), None, 100, opts(5)).await.unwrap();
        assert_eq!((position.offset, position.publications.len()), (10, 0));
    }

    #[tokio::test]
    async fn no_history_still_assigns_offsets_and_new_channels_get_an_epoch() {
        let broker = MemoryBroker::new(Arc::new(Recorder::default()));
        let fresh = broker.history(&ch("new"), Some(0), 10, opts(0)).await.unwrap();
        assert_eq!((fresh.offset, fresh.publications.len()), (0, 0));
        let p = broker
            .publish(ch("new"), Bytes::from_static(b"1"), opts(0))
            .await
            .unwrap();
        assert_eq!(
            (p.offset, &*p.epoch),
            (1, &*fresh.epoch),
            "the epoch made by the read is kept"
        );
        let h = broker.history(&ch("new"), Some(0), 10, opts(0)).await.unwrap();
        assert_eq!((h.offset, h.publications.len()), (1, 0));
    }

    #[tokio::test]
    async fn an_expired_stream_restarts_with_a_new_epoch() {
        let broker = MemoryBroker::new(Arc::new(Recorder::default()));
        let short = StreamOptions {
            history_size: 10,
            history_ttl: Duration::from_millis(50),
        };
        let before = broker
            .publish(ch("e"), Bytes::from_static(b"1"), short)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        let after = broker
            .publish(ch("e"), Bytes::from_static(b"2"), short)
            .await
            .unwrap();
        assert_eq!(after.offset, 1);
        assert_ne!(after.epoch, before.epoch);
        let h = broker.history(&ch("e"), Some(0), 10, short).await.unwrap();
        assert_eq!(h.publications.len(), 1, "the old history went with the old epoch");
    }
}
