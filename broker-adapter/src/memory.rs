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

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use pubsub_proto::{ChannelName, Publication};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::{
    BoxFuture, Broker, BrokerError, Health, History, Idempotency, Listener, ListenerSlot, Once,
    PresenceBatch, PresenceStats, Published, StreamOptions, new_epoch,
};
use presence::PresenceTable;
use pubsub_proto::Member;

mod presence;
mod shard;

use shard::{Channel, Kept, Shard};

const SHARDS: usize = 32;
/// How often expired streams of idle channels are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Bounds on what the embedded broker keeps, whoever publishes.
///
/// Streams are made by publications only (reads and subscribes make none),
/// but where anonymous clients may publish, every new channel name would
/// otherwise be a new stream with its own history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Channels with a stream at most; a publication that would start one
    /// more is refused ([`BrokerError::LimitExceeded`]).
    pub max_streams: usize,
    /// Bytes of publication data kept in history, over all channels. Past
    /// it, the oldest publications are dropped from history (they were
    /// delivered; only recovery loses them). Enforced per shard, each
    /// holding 1/32 of it.
    pub max_history_bytes: usize,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            max_streams: 1_000_000,
            max_history_bytes: 1024 * 1024 * 1024,
        }
    }
}

struct Inner {
    listener: ListenerSlot,
    presence: PresenceTable,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    limits: MemoryLimits,
    /// Channels with a stream (an epoch), over all shards.
    streams: AtomicUsize,
}

impl Inner {
    fn shard(&self, channel: &str) -> &Mutex<Shard> {
        &self.shards[self.hasher.hash_one(channel) as usize % SHARDS]
    }

    /// Ends streams that expired and drops entries left with nothing.
    fn sweep(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let expired: Vec<ChannelName> = shard
                .channels
                .iter()
                .filter(|(_, c)| c.expired())
                .map(|(name, _)| name.clone())
                .collect();
            for channel in expired {
                if shard.end_stream(channel.as_str()) {
                    self.streams.fetch_sub(1, Ordering::Relaxed);
                }
            }
            shard.channels.retain(|_, c| !c.is_empty());
            shard.enforce(self.limits.max_history_bytes / SHARDS);
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
            let Some(stream) = shard.channels.get_mut(channel.as_str()) else {
                return;
            };
            if stream.undelivered.is_empty() {
                stream.delivering = false;
                if stream.is_empty() {
                    shard.channels.remove(channel.as_str());
                }
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
    /// This node's announcement and until when it holds.
    announced: Mutex<Option<(Bytes, Instant)>>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new()
    }
}

impl MemoryBroker {
    /// A broker with no channels and the default limits; [`Broker::start`]
    /// gives it its listener.
    pub fn new() -> Self {
        MemoryBroker::with_limits(MemoryLimits::default())
    }

    /// A broker with no channels, keeping at most what `limits` allow.
    pub fn with_limits(limits: MemoryLimits) -> Self {
        MemoryBroker {
            inner: Arc::new(Inner {
                listener: ListenerSlot::default(),
                presence: PresenceTable::default(),
                shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
                hasher: RandomState::new(),
                limits,
                streams: AtomicUsize::new(0),
            }),
            health: watch::Sender::new(Health::up()),
            stop: Arc::new(Notify::new()),
            sweeper: Mutex::new(None),
            announced: Mutex::new(None),
        }
    }

    /// Channels that have a stream now (for tests and metrics).
    pub fn stream_count(&self) -> usize {
        self.inner.streams.load(Ordering::Relaxed)
    }

    /// Entries held over all shards, streams or subscriptions (for tests:
    /// reads and subscribes must not leave any behind).
    pub fn entry_count(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().channels.len()).sum()
    }

    /// Publishes, unless `once` names a key seen within its window.
    fn publish_maybe_once(
        &self,
        channel: ChannelName,
        data: Bytes,
        options: StreamOptions,
        once: Option<Idempotency>,
    ) -> Result<Once, BrokerError> {
        let inner = &self.inner;
        let mut guard = inner.shard(channel.as_str()).lock();
        let shard = &mut *guard;
        if shard.end_if_expired(channel.as_str()) {
            inner.streams.fetch_sub(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        // Keys live with the stream, so a duplicate is only ever found on a
        // channel that has one.
        if let Some(once) = &once
            && let Some(stream) = shard.channels.get_mut(channel.as_str())
        {
            stream.forget_expired_keys(now);
            if let Some((first, until)) = stream.once.get(once.key.as_str())
                && *until > now
            {
                return Ok(Once::Duplicate(first.clone()));
            }
        }
        let starts_stream = shard
            .channels
            .get(channel.as_str())
            .is_none_or(|c| c.epoch.is_none());
        if starts_stream {
            if inner.streams.load(Ordering::Relaxed) >= inner.limits.max_streams {
                return Err(BrokerError::LimitExceeded(format!(
                    "the embedded broker holds {} channel streams, its limit",
                    inner.limits.max_streams
                )));
            }
            inner.streams.fetch_add(1, Ordering::Relaxed);
        }
        let stream = shard.channels.entry(channel.clone()).or_insert_with(Channel::new);
        let epoch = stream.epoch.get_or_insert_with(|| Arc::from(new_epoch())).clone();
        stream.offset += 1;
        stream.touched = now;
        stream.ttl = options.history_ttl;
        let publication = Publication {
            channel: channel.clone(),
            data,
            offset: Some(stream.offset),
            epoch: Some(epoch.clone()),
        };
        if options.history_size > 0 {
            shard.usage.add(&publication);
            shard.kept.push_back(Kept {
                channel: channel.clone(),
                epoch: epoch.clone(),
                offset: stream.offset,
            });
            stream.history.push_back(publication.clone());
        }
        while stream.history.len() > options.history_size {
            if let Some(dropped) = stream.history.pop_front() {
                shard.usage.remove(&dropped);
            }
        }
        let published = Published {
            offset: stream.offset,
            epoch,
        };
        if let Some(once) = once {
            let until = now + once.window;
            let key: Box<str> = once.key.into();
            stream.once.insert(key.clone(), (published.clone(), until));
            stream.once_order.push_back((key, until));
        }
        let mut deliver = None;
        if stream.subscribed {
            stream.undelivered.push_back(publication);
            if !stream.delivering {
                stream.delivering = true;
                deliver = Some(std::mem::take(&mut stream.undelivered));
            }
        }
        shard.enforce(inner.limits.max_history_bytes / SHARDS);
        drop(guard);
        if let Some(batch) = deliver
            && let Some(first) = batch.front()
        {
            let channel = first.channel.clone();
            self.inner.deliver(&channel, batch);
        }
        Ok(Once::Published(published))
    }

    /// Runs `read` on the channel's entry if it has one, after ending its
    /// stream if that expired. Never creates an entry.
    fn read_stream<T>(&self, channel: &ChannelName, read: impl FnOnce(Option<&mut Channel>) -> T) -> T {
        let mut shard = self.inner.shard(channel.as_str()).lock();
        if shard.end_if_expired(channel.as_str()) {
            self.inner.streams.fetch_sub(1, Ordering::Relaxed);
        }
        read(shard.channels.get_mut(channel.as_str()))
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
        let outcome = self.publish_maybe_once(channel, data, options, None);
        Box::pin(async move { outcome.map(|once| once.position().clone()) })
    }

    fn publish_once(
        &self,
        channel: ChannelName,
        data: Bytes,
        options: StreamOptions,
        once: Idempotency,
    ) -> BoxFuture<'_, Result<Once, BrokerError>> {
        let outcome = self.publish_maybe_once(channel, data, options, Some(once));
        Box::pin(async move { outcome })
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<u64>,
        limit: usize,
        _options: StreamOptions,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        let history = self.read_stream(channel, |stream| {
            let Some(stream) = stream else {
                return History::none();
            };
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

    fn remove_history<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, Result<(), BrokerError>> {
        let mut shard = self.inner.shard(channel.as_str()).lock();
        if shard.end_stream(channel.as_str()) {
            self.inner.streams.fetch_sub(1, Ordering::Relaxed);
        }
        Box::pin(async { Ok(()) })
    }

    fn restart_stream<'a>(
        &'a self,
        channel: &'a ChannelName,
        epoch: &'a str,
        options: StreamOptions,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        let mut shard = self.inner.shard(channel.as_str()).lock();
        let shard = &mut *shard;
        // Only a stream still in `epoch` restarts; a channel without a
        // stream has nothing to restart.
        let history = match shard.channels.get_mut(channel.as_str()) {
            Some(stream) if stream.epoch.as_deref() == Some(epoch) => {
                stream.epoch = Some(Arc::from(new_epoch()));
                stream.offset = 0;
                stream.touched = Instant::now();
                stream.ttl = options.history_ttl;
                for dropped in stream.history.drain(..) {
                    shard.usage.remove(&dropped);
                }
                stream.position()
            }
            Some(stream) => stream.position(),
            None => History::none(),
        };
        Box::pin(async move { Ok(history) })
    }

    fn subscribe<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), BrokerError>> {
        for channel in channels {
            let mut shard = self.inner.shard(channel.as_str()).lock();
            shard
                .channels
                .entry(channel.clone())
                .or_insert_with(Channel::new)
                .subscribed = true;
        }
        Box::pin(async { Ok(()) })
    }

    fn unsubscribe<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), BrokerError>> {
        for channel in channels {
            let mut shard = self.inner.shard(channel.as_str()).lock();
            if let Some(stream) = shard.channels.get_mut(channel.as_str()) {
                stream.subscribed = false;
                // A channel subscribed to but never published on leaves
                // nothing behind.
                if stream.is_empty() {
                    shard.channels.remove(channel.as_str());
                }
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

    fn announce_node<'a>(&'a self, info: &'a [u8], ttl: Duration) -> BoxFuture<'a, Result<(), BrokerError>> {
        *self.announced.lock() = Some((Bytes::copy_from_slice(info), Instant::now() + ttl));
        Box::pin(async { Ok(()) })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<Bytes>, BrokerError>> {
        let nodes = match &*self.announced.lock() {
            Some((info, until)) if *until > Instant::now() => vec![info.clone()],
            _ => Vec::new(),
        };
        Box::pin(async move { Ok(nodes) })
    }

    fn send_to_node<'a>(
        &'a self,
        _node: &'a str,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        // One node: whoever is named, it is this one.
        self.inner
            .listener
            .on_node_message(Bytes::copy_from_slice(message));
        Box::pin(async { Ok(()) })
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
    use crate::{BrokerEvent, NO_STREAM};

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
    async fn no_history_still_assigns_offsets_and_reads_create_nothing() {
        let broker = MemoryBroker::new();
        broker.start(Arc::new(Recorder::default()));
        let fresh = broker.history(&ch("new"), Some(0), 10, opts(0)).await.unwrap();
        assert_eq!((&*fresh.epoch, fresh.offset), (NO_STREAM, 0));
        assert_eq!(broker.entry_count(), 0, "a read makes no entry");
        let p = broker
            .publish(ch("new"), Bytes::from_static(b"1"), opts(0))
            .await
            .unwrap();
        assert_eq!(p.offset, 1);
        assert_ne!(&*p.epoch, NO_STREAM);
        let h = broker.history(&ch("new"), Some(0), 10, opts(0)).await.unwrap();
        assert_eq!((h.offset, h.publications.len()), (1, 0));
    }

    #[tokio::test]
    async fn subscribing_and_unsubscribing_random_channels_leaves_nothing() {
        let broker = MemoryBroker::new();
        broker.start(Arc::new(Recorder::default()));
        for i in 0..20_000 {
            let name = [ch(&format!("random:{i}"))];
            broker.subscribe(&name).await.unwrap();
            broker.unsubscribe(&name).await.unwrap();
            broker.history(&name[0], Some(0), 10, opts(10)).await.unwrap();
        }
        assert_eq!((broker.entry_count(), broker.stream_count()), (0, 0));
        // A subscribed channel that gets publications keeps its stream
        // after the unsubscribe, until it expires.
        broker.subscribe(&[ch("kept")]).await.unwrap();
        broker
            .publish(ch("kept"), Bytes::from_static(b"1"), opts(10))
            .await
            .unwrap();
        broker.unsubscribe(&[ch("kept")]).await.unwrap();
        assert_eq!((broker.entry_count(), broker.stream_count()), (1, 1));
    }

    #[tokio::test]
    async fn streams_and_history_bytes_are_bounded() {
        let broker = MemoryBroker::with_limits(MemoryLimits {
            max_streams: 3,
            max_history_bytes: SHARDS * 1000,
        });
        broker.start(Arc::new(Recorder::default()));
        for name in ["a", "b", "c"] {
            broker
                .publish(ch(name), Bytes::from_static(b"x"), opts(10))
                .await
                .unwrap();
        }
        let refused = broker.publish(ch("d"), Bytes::from_static(b"x"), opts(10)).await;
        assert!(
            matches!(refused, Err(BrokerError::LimitExceeded(_))),
            "{refused:?}"
        );
        // Channels that have a stream go on.
        broker
            .publish(ch("a"), Bytes::from_static(b"y"), opts(10))
            .await
            .unwrap();
        // 1000 bytes per shard: ten 300-byte publications keep three.
        for _ in 0..10 {
            broker
                .publish(ch("b"), Bytes::from(vec![b'z'; 300]), opts(100))
                .await
                .unwrap();
        }
        let h = broker.history(&ch("b"), Some(0), 100, opts(100)).await.unwrap();
        let bytes: usize = h.publications.iter().map(|p| p.data.len()).sum();
        assert!(bytes <= 1000, "history holds {bytes} bytes");
        let offsets: Vec<u64> = h.publications.iter().filter_map(|p| p.offset).collect();
        assert_eq!(offsets, [9, 10, 11], "the oldest went first");
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
