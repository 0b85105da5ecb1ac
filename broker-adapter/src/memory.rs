//! The embedded broker: publications stay inside this process.
//!
//! It is the default when no Redis is configured, so a single node works with
//! nothing else installed, and it keeps the same stream semantics as Redis:
//! offsets without holes, a bounded history per channel, a new epoch when a
//! channel's stream expired after `history_ttl` without publications or was
//! restarted.
//!
//! Publishing assigns the offset and appends to the history under the
//! channel's shard lock, and queues the publication on the channel. The
//! delivery into the listener happens after the lock is released: the first
//! publisher that finds nobody delivering on the channel delivers what is
//! queued, in offset order, until the queue is empty. So the hub's locks are
//! never taken while this broker holds its own, and every subscriber still
//! sees one order per channel.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use pubsub_proto::{ChannelName, Publication};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::{
    BoxFuture, Broker, BrokerError, Health, History, Listener, ListenerSlot, PresenceBatch, PresenceStats,
    Published, StreamOptions, new_epoch,
};
use presence::PresenceTable;
use pubsub_proto::Member;

mod presence;

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
    /// Publications accepted but not yet handed to the listener.
    undelivered: VecDeque<Publication>,
    /// Some publisher is handing `undelivered` to the listener.
    delivering: bool,
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
            undelivered: VecDeque::new(),
            delivering: false,
        }
    }

    fn expired(&self) -> bool {
        self.touched.elapsed() > self.ttl
    }

    /// Starts a new sequence (empty history, offset 0), keeping whether the
    /// node subscribed and what is still to be delivered.
    fn restart(&mut self, options: StreamOptions) {
        self.epoch = Arc::from(new_epoch());
        self.offset = 0;
        self.history.clear();
        self.touched = Instant::now();
        self.ttl = options.history_ttl;
    }

    /// Starts a new sequence if the stream expired.
    fn refresh(&mut self, options: StreamOptions) {
        if self.expired() {
            self.restart(options);
        }
    }

    fn position(&self) -> History {
        History {
            epoch: self.epoch.clone(),
            offset: self.offset,
            publications: Vec::new(),
        }
    }
}

type Shard = Mutex<HashMap<ChannelName, Channel>>;

struct Inner {
    listener: ListenerSlot,
    presence: PresenceTable,
    shards: Box<[Shard]>,
    hasher: RandomState,
}

impl Inner {
    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(channel) as usize % SHARDS]
    }

    /// Drops streams that expired, that no local subscriber uses and that
    /// have nothing left to deliver.
    fn sweep(&self) {
        for shard in self.shards.iter() {
            shard
                .lock()
                .retain(|_, c| c.subscribed || c.delivering || !c.expired());
        }
    }

    /// Hands what is queued on `channel` to the listener, outside the shard
    /// lock, until nothing is left. Only one caller per channel delivers at
    /// a time (the `delivering` flag), which keeps the order.
    fn deliver(&self, channel: &ChannelName, mut batch: VecDeque<Publication>) {
        loop {
            for publication in batch.drain(..) {
                self.listener.on_publication(publication);
            }
            let mut shard = self.shard(channel.as_str()).lock();
            let Some(stream) = shard.get_mut(channel.as_str()) else {
                return;
            };
            if stream.undelivered.is_empty() {
                stream.delivering = false;
                return;
            }
            batch = std::mem::take(&mut stream.undelivered);
        }
    }
}

/// An in-process broker for a single node.
pub struct MemoryBroker {
    inner: Arc<Inner>,
    health: watch::Sender<Health>,
    /// Stops the sweeper.
    stop: Arc<Notify>,
    sweeper: Mutex<Option<JoinHandle<()>>>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new()
    }
}

impl MemoryBroker {
    /// A broker with no channels; [`Broker::start`] gives it its listener.
    pub fn new() -> Self {
        MemoryBroker {
            inner: Arc::new(Inner {
                listener: ListenerSlot::default(),
                presence: PresenceTable::default(),
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                hasher: RandomState::new(),
            }),
            health: watch::Sender::new(Health::up()),
            stop: Arc::new(Notify::new()),
            sweeper: Mutex::new(None),
        }
    }

    /// Runs `read` on the channel's stream, creating it if needed.
    fn with_stream<T>(
        &self,
        channel: &ChannelName,
        options: StreamOptions,
        read: impl FnOnce(&mut Channel) -> T,
    ) -> T {
        let mut shard = self.inner.shard(channel.as_str()).lock();
        let stream = shard
            .entry(channel.clone())
            .or_insert_with(|| Channel::new(options));
        stream.refresh(options);
        read(stream)
    }
}

async fn sweep_loop(inner: Arc<Inner>, stop: Arc<Notify>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_INTERVAL) => inner.sweep(),
            _ = stop.notified() => return,
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
        let (published, deliver) = self.with_stream(&channel.clone(), options, |stream| {
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
            let mut deliver = None;
            if stream.subscribed {
                stream.undelivered.push_back(publication);
                if !stream.delivering {
                    stream.delivering = true;
                    deliver = Some(std::mem::take(&mut stream.undelivered));
                }
            }
            (published, deliver)
        });
        if let Some(batch) = deliver
            && let Some(first) = batch.front()
        {
            let channel = first.channel.clone();
            self.inner.deliver(&channel, batch);
        }
        Box::pin(async move { Ok(published) })
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<u64>,
        limit: usize,
        options: StreamOptions,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        let history = self.with_stream(channel, options, |stream| {
            let mut history = stream.position();
            if let Some(since) = since {
                history.publications = stream
                    .history
                    .iter()
                    .filter(|p| p.offset.is_some_and(|o| o > since))
                    .take(limit)
                    .cloned()
                    .collect();
            }
            history
        });
        Box::pin(async move { Ok(history) })
    }

    fn restart_stream<'a>(
        &'a self,
        channel: &'a ChannelName,
        epoch: &'a str,
        options: StreamOptions,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        let history = self.with_stream(channel, options, |stream| {
            if &*stream.epoch == epoch {
                stream.restart(options);
            }
            stream.position()
        });
        Box::pin(async move { Ok(history) })
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

    fn presence_update<'a>(
        &'a self,
        batch: &'a PresenceBatch,
    ) -> BoxFuture<'a, Result<Vec<ChannelName>, BrokerError>> {
        let mut differing = Vec::new();
        for work in &batch.channels {
            let (events, differs) = self.inner.presence.apply(work, batch.event_rate);
            for event in events {
                self.inner.listener.on_presence(event);
            }
            if differs {
                differing.push(work.channel.clone());
            }
        }
        Box::pin(async move { Ok(differing) })
    }

    fn presence<'a>(
        &'a self,
        channel: &'a ChannelName,
        _events: Option<u32>,
    ) -> BoxFuture<'a, Result<Vec<Member>, BrokerError>> {
        let members = self.inner.presence.members(channel);
        Box::pin(async move { Ok(members) })
    }

    fn presence_stats<'a>(
        &'a self,
        channel: &'a ChannelName,
        _events: Option<u32>,
    ) -> BoxFuture<'a, Result<PresenceStats, BrokerError>> {
        let stats = self.inner.presence.stats(channel);
        Box::pin(async move { Ok(stats) })
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn start(&self, listener: Arc<dyn Listener>) {
        if !self.inner.listener.set(listener) {
            return;
        }
        let sweeper = tokio::spawn(sweep_loop(self.inner.clone(), self.stop.clone()));
        *self.sweeper.lock() = Some(sweeper);
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.stop.notify_one();
        let sweeper = self.sweeper.lock().take();
        Box::pin(async move {
            if let Some(sweeper) = sweeper {
                let _ = sweeper.await;
            }
        })
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
        fn on_presence(&self, _: crate::PresenceEvent) {}
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
        let broker = MemoryBroker::new();
        broker.start(recorder.clone());
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

    /// A listener that publishes from inside its own delivery: with the
    /// broker's lock held across the delivery this would deadlock.
    struct Echo {
        broker: Mutex<Option<Arc<MemoryBroker>>>,
        seen: Mutex<Vec<Bytes>>,
    }

    impl Listener for Echo {
        fn on_publication(&self, p: Publication) {
            self.seen.lock().push(p.data.clone());
            if &p.data[..] == b"ping"
                && let Some(broker) = self.broker.lock().clone()
            {
                drop(broker.publish(p.channel, Bytes::from_static(b"pong"), opts(10)));
            }
        }
        fn on_event(&self, _: BrokerEvent) {}
        fn on_presence(&self, _: crate::PresenceEvent) {}
    }

    #[tokio::test]
    async fn the_listener_runs_without_the_brokers_lock_and_order_holds() {
        let broker = Arc::new(MemoryBroker::new());
        let echo = Arc::new(Echo {
            broker: Mutex::new(Some(broker.clone())),
            seen: Mutex::new(Vec::new()),
        });
        broker.start(echo.clone());
        broker.subscribe(&[ch("r")]).await.unwrap();
        broker
            .publish(ch("r"), Bytes::from_static(b"ping"), opts(10))
            .await
            .unwrap();
        broker
            .publish(ch("r"), Bytes::from_static(b"after"), opts(10))
            .await
            .unwrap();
        let seen: Vec<Bytes> = echo.seen.lock().clone();
        let expected: Vec<Bytes> = [&b"ping"[..], b"pong", b"after"]
            .into_iter()
            .map(Bytes::copy_from_slice)
            .collect();
        assert_eq!(seen, expected);
        echo.broker.lock().take();
    }

    #[tokio::test]
    async fn history_is_bounded_and_read_after_an_offset() {
        let broker = MemoryBroker::new();
        broker.start(Arc::new(Recorder::default()));
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
        let broker = MemoryBroker::new();
        broker.start(Arc::new(Recorder::default()));
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
        let broker = MemoryBroker::new();
        broker.start(Arc::new(Recorder::default()));
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
