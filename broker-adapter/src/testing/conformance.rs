//! The broker conformance suite: the contract every [`Broker`] keeps,
//! written once and run against each implementation (the memory broker, a
//! real Redis, a real Redis Cluster; `broker-adapter/tests/conformance.rs`).
//! A new broker is done when it passes every check here.
//!
//! The contract:
//! - per channel, offsets 1, 2, 3, ... without holes or repeats, within an
//!   epoch, however many publishers race; the listener sees them in that
//!   order; channels are independent;
//! - a channel without a stream reports ([`NO_STREAM`], 0), and its first
//!   publication is offset 1 in a fresh epoch; reading a channel and
//!   subscribing to it (and unsubscribing) leave no state behind;
//! - `history(since)` returns the kept publications after `since`, oldest
//!   first, at most `limit`, at most `history_size` are kept, each with its
//!   position and the bytes as published; `history_size = 0` keeps none
//!   but still assigns offsets; without `since` only the position;
//! - a stream idle for `history_ttl` ends (reads report [`NO_STREAM`]) and
//!   the next publication starts a new epoch;
//! - `restart_stream(epoch)` starts a new epoch (offset 0, no history)
//!   only if the stream is still in `epoch`;
//! - only subscribed channels reach the listener, and unsubscribing stops
//!   them;
//! - while the broker cannot be reached: health is down and publish,
//!   history and subscribe fail with `Unavailable` (never a false
//!   success); once it is back: health is up, the listener hears that
//!   publications may have been missed (`Restored`, or `Missed` naming the
//!   channel), and subscriptions deliver again without being renewed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use pubsub_proto::{ChannelName, Publication};

use super::cluster::RedisCluster;
use super::server::RedisServer;
use crate::memory::MemoryBroker;
use crate::redis::{RedisConfig, RedisTarget};
use crate::{
    Broker, BrokerConfig, BrokerError, BrokerEvent, BrokerMetrics, Listener, NO_STREAM, PresenceEvent,
    StreamOptions,
};

/// How long a check waits for something that should happen.
pub(super) const WAIT: Duration = Duration::from_secs(20);

/// A listener that records everything it is given.
#[derive(Default)]
pub struct Recorder {
    publications: Mutex<Vec<Publication>>,
    events: Mutex<Vec<BrokerEvent>>,
    presence: Mutex<Vec<PresenceEvent>>,
    node_messages: Mutex<Vec<Bytes>>,
}

impl Recorder {
    /// The publications received on `channel`, in arrival order.
    pub fn on(&self, channel: &str) -> Vec<Publication> {
        self.publications
            .lock()
            .iter()
            .filter(|p| p.channel.as_str() == channel)
            .cloned()
            .collect()
    }

    pub fn events(&self) -> Vec<BrokerEvent> {
        self.events.lock().clone()
    }

    /// The messages addressed to this node, in arrival order.
    pub fn node_messages(&self) -> Vec<Bytes> {
        self.node_messages.lock().clone()
    }

    /// The presence events received, in arrival order.
    pub fn presence(&self) -> Vec<PresenceEvent> {
        self.presence.lock().clone()
    }
}

impl Listener for Recorder {
    fn on_publication(&self, publication: Publication) {
        self.publications.lock().push(publication);
    }

    fn on_event(&self, event: BrokerEvent) {
        self.events.lock().push(event);
    }

    fn on_presence(&self, event: PresenceEvent) {
        self.presence.lock().push(event);
    }

    fn on_node_message(&self, message: Bytes) {
        self.node_messages.lock().push(message);
    }
}

/// What the suite can do to the system behind a broker.
enum Backing {
    Memory(Arc<MemoryBroker>),
    Redis(RedisServer),
    Cluster(RedisCluster),
}

/// A started broker under test, its recorder, and what backs it.
pub struct Subject {
    pub broker: Arc<dyn Broker>,
    pub recorder: Arc<Recorder>,
    backing: Backing,
}

impl Subject {
    fn started(config: BrokerConfig, backing: Backing) -> Subject {
        let broker = crate::open(config, BrokerMetrics::default()).expect("the broker opens");
        let recorder = Arc::new(Recorder::default());
        broker.start(recorder.clone());
        Subject {
            broker,
            recorder,
            backing,
        }
    }

    /// The embedded broker.
    pub fn memory() -> Subject {
        let memory = Arc::new(MemoryBroker::new());
        let recorder = Arc::new(Recorder::default());
        memory.start(recorder.clone());
        Subject {
            broker: memory.clone(),
            recorder,
            backing: Backing::Memory(memory),
        }
    }

    /// How much state the backing holds: the embedded broker's channel
    /// entries, or the keys of every Redis server.
    pub fn stored(&self) -> usize {
        let dbsize = |server: &RedisServer| -> usize {
            redis::cmd("DBSIZE")
                .query(&mut server.connection())
                .expect("DBSIZE")
        };
        match &self.backing {
            Backing::Memory(memory) => memory.entry_count(),
            Backing::Redis(server) => dbsize(server),
            Backing::Cluster(cluster) => cluster.masters().into_iter().map(dbsize).sum(),
        }
    }

    /// The Redis broker on a throwaway `redis-server`.
    pub fn redis() -> Subject {
        let server = RedisServer::start();
        let config = fast(RedisConfig::new(
            RedisTarget::Single(server.url()),
            "conformance",
            "node-1",
        ));
        Subject::started(BrokerConfig::Redis(Box::new(config)), Backing::Redis(server))
    }

    /// The Redis broker on a throwaway three-master Redis Cluster.
    pub fn cluster() -> Subject {
        let cluster = RedisCluster::start(3, 0);
        let urls = cluster.nodes.iter().map(RedisServer::url).collect();
        let config = fast(RedisConfig::new(
            RedisTarget::Cluster(urls),
            "conformance",
            "node-1",
        ));
        Subject::started(BrokerConfig::Redis(Box::new(config)), Backing::Cluster(cluster))
    }

    /// A broker of another node (`node_id`) on the same backing, started
    /// with its own recorder; `None` for the embedded broker (one node).
    pub fn another_node(&self, node_id: &str) -> Option<(Arc<dyn Broker>, Arc<Recorder>)> {
        let target = match &self.backing {
            Backing::Memory(_) => return None,
            Backing::Redis(server) => RedisTarget::Single(server.url()),
            Backing::Cluster(cluster) => {
                RedisTarget::Cluster(cluster.nodes.iter().map(RedisServer::url).collect())
            }
        };
        let config = fast(RedisConfig::new(target, "conformance", node_id));
        let broker = crate::open(BrokerConfig::Redis(Box::new(config)), BrokerMetrics::default()).ok()?;
        let recorder = Arc::new(Recorder::default());
        broker.start(recorder.clone());
        Some((broker, recorder))
    }

    /// Waits until the broker reports healthy.
    pub async fn ready(&self) {
        let mut health = self.broker.health();
        let _ = tokio::time::timeout(WAIT, health.wait_for(|h| h.up))
            .await
            .expect("the broker becomes healthy");
    }

    /// Makes the backing unreachable; false if it cannot be (memory).
    fn cut(&mut self) -> bool {
        match &mut self.backing {
            Backing::Memory(_) => false,
            Backing::Redis(server) => {
                server.kill();
                true
            }
            Backing::Cluster(cluster) => {
                cluster.nodes.iter_mut().for_each(RedisServer::kill);
                true
            }
        }
    }

    /// Brings the backing back (empty: nothing was persisted).
    fn heal(&mut self) {
        match &mut self.backing {
            Backing::Memory(_) => {}
            Backing::Redis(server) => server.restart(),
            Backing::Cluster(cluster) => cluster.nodes.iter_mut().for_each(RedisServer::restart),
        }
    }
}

/// Probes and backoff short enough for tests.
fn fast(mut config: RedisConfig) -> RedisConfig {
    config.probe_interval = Duration::from_millis(200);
    config.probe_timeout = Duration::from_millis(1000);
    config.topology_interval = Duration::from_millis(500);
    config.backoff_max = Duration::from_millis(300);
    config
}

pub(super) fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("a valid channel name")
}

pub(super) fn options(history_size: usize) -> StreamOptions {
    StreamOptions {
        history_size,
        history_ttl: Duration::from_secs(60),
    }
}

/// Polls `check` until it holds or the wait runs out.
pub(super) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Racing publishers on one channel get offsets 1..=N without holes or
/// repeats, in one epoch, and the listener sees them in offset order.
pub async fn offsets_without_holes_in_order(subject: &Subject) {
    let name = "order:racing";
    subject
        .broker
        .subscribe(&[channel(name)])
        .await
        .expect("subscribed");
    let (publishers, each) = (4u64, 50u64);
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let broker = subject.broker.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..each {
                    let data = Bytes::from(format!("{p}-{i}"));
                    got.push(
                        broker
                            .publish(channel(name), data, options(10))
                            .await
                            .expect("published"),
                    );
                }
                got
            })
        })
        .collect();
    let mut offsets = BTreeSet::new();
    let mut epochs = BTreeSet::new();
    for task in tasks {
        for published in task.await.expect("publisher") {
            assert!(
                offsets.insert(published.offset),
                "offset {} twice",
                published.offset
            );
            epochs.insert(published.epoch.to_string());
        }
    }
    let total = publishers * each;
    assert_eq!(offsets, (1..=total).collect(), "offsets without holes");
    assert_eq!(epochs.len(), 1, "one epoch: {epochs:?}");
    eventually("every publication arrived", || {
        subject.recorder.on(name).len() as u64 >= total
    })
    .await;
    let arrived: Vec<u64> = subject
        .recorder
        .on(name)
        .iter()
        .map(|p| p.offset.expect("an offset"))
        .collect();
    assert_eq!(
        arrived,
        (1..=total).collect::<Vec<_>>(),
        "in offset order, once each"
    );
    // Each publisher's own publications keep their order too.
    for p in 0..publishers {
        let mine: Vec<Bytes> = subject
            .recorder
            .on(name)
            .into_iter()
            .map(|x| x.data)
            .filter(|d| d.starts_with(format!("{p}-").as_bytes()))
            .collect();
        let expected: Vec<Bytes> = (0..each).map(|i| Bytes::from(format!("{p}-{i}"))).collect();
        assert_eq!(mine, expected);
    }
}

/// Channels have their own offsets; only subscribed channels reach the
/// listener; unsubscribing stops them.
pub async fn only_subscribed_channels_arrive(subject: &Subject) {
    let broker = &subject.broker;
    broker
        .subscribe(&[channel("ind:a"), channel("ind:b")])
        .await
        .expect("subscribed");
    for (name, count) in [("ind:a", 3), ("ind:b", 2), ("ind:c", 4)] {
        for i in 1..=count {
            let published = broker
                .publish(channel(name), Bytes::from(format!("{i}")), options(10))
                .await
                .expect("published");
            assert_eq!(published.offset, i, "{name} counts on its own");
        }
    }
    eventually("a and b arrived", || {
        subject.recorder.on("ind:a").len() == 3 && subject.recorder.on("ind:b").len() == 2
    })
    .await;
    broker
        .unsubscribe(&[channel("ind:a")])
        .await
        .expect("unsubscribed");
    broker
        .publish(channel("ind:a"), Bytes::from_static(b"late"), options(10))
        .await
        .expect("published");
    broker
        .publish(channel("ind:b"), Bytes::from_static(b"3"), options(10))
        .await
        .expect("published");
    eventually("b's third arrived", || subject.recorder.on("ind:b").len() == 3).await;
    // Published after b's, on the same connection: had it been delivered,
    // it would have arrived by now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(subject.recorder.on("ind:a").len(), 3, "nothing after unsubscribe");
    assert!(subject.recorder.on("ind:c").is_empty(), "never subscribed");
    for p in subject.recorder.on("ind:b") {
        assert_eq!(p.channel.as_str(), "ind:b");
        assert!(
            p.epoch.is_some() && p.offset.is_some(),
            "delivered with a position"
        );
    }
}

/// History: bounded, read after an offset, limited, with positions and the
/// published bytes; the position alone without `since`.
pub async fn history_is_bounded_and_read_after_an_offset(subject: &Subject) {
    let (broker, ch) = (&subject.broker, channel("hist:bounded"));
    let mut epoch = None;
    for i in 1..=10u8 {
        // Bytes that are not text survive too.
        let data = Bytes::from(vec![0xff, i, 0, b'x']);
        let published = broker
            .publish(ch.clone(), data, options(5))
            .await
            .expect("published");
        assert_eq!(published.offset, u64::from(i));
        epoch.get_or_insert(published.epoch);
    }
    let epoch = epoch.expect("an epoch");
    let h = broker
        .history(&ch, Some(7), 100, options(5))
        .await
        .expect("history");
    assert_eq!((h.offset, &h.epoch), (10, &epoch));
    let offsets: Vec<u64> = h.publications.iter().filter_map(|p| p.offset).collect();
    assert_eq!(offsets, [8, 9, 10]);
    for p in &h.publications {
        assert_eq!(p.epoch.as_ref(), Some(&epoch));
        assert_eq!(p.channel, ch);
        let offset = p.offset.expect("an offset") as u8;
        assert_eq!(p.data, Bytes::from(vec![0xff, offset, 0, b'x']));
    }
    let all = broker
        .history(&ch, Some(0), 100, options(5))
        .await
        .expect("history");
    let offsets: Vec<u64> = all.publications.iter().filter_map(|p| p.offset).collect();
    assert_eq!(offsets, [6, 7, 8, 9, 10], "only the last history_size are kept");
    let limited = broker
        .history(&ch, Some(0), 2, options(5))
        .await
        .expect("history");
    let offsets: Vec<u64> = limited.publications.iter().filter_map(|p| p.offset).collect();
    assert_eq!(offsets, [6, 7], "oldest first, at most limit");
    let position = broker
        .history(&ch, None, 100, options(5))
        .await
        .expect("position");
    assert_eq!((position.offset, position.publications.len()), (10, 0));
    let after_last = broker
        .history(&ch, Some(10), 100, options(5))
        .await
        .expect("history");
    assert!(after_last.publications.is_empty());
}

/// A channel without a stream is at ([`NO_STREAM`], 0); its first
/// publication is offset 1 in a fresh epoch; history off still assigns
/// offsets.
pub async fn new_streams_start_at_zero_and_history_can_be_off(subject: &Subject) {
    let (broker, ch) = (&subject.broker, channel("fresh:one"));
    let fresh = broker
        .history(&ch, Some(0), 10, options(0))
        .await
        .expect("position");
    assert_eq!(
        (&*fresh.epoch, fresh.offset, fresh.publications.len()),
        (NO_STREAM, 0, 0)
    );
    let first = broker
        .publish(ch.clone(), Bytes::from_static(b"1"), options(0))
        .await
        .expect("published");
    assert_eq!(first.offset, 1);
    assert_ne!(&*first.epoch, NO_STREAM, "the first publication starts an epoch");
    let second = broker
        .publish(ch.clone(), Bytes::from_static(b"2"), options(0))
        .await
        .expect("published");
    assert_eq!(second.offset, 2);
    let h = broker
        .history(&ch, Some(0), 10, options(0))
        .await
        .expect("history");
    assert_eq!(
        (h.offset, h.publications.len()),
        (2, 0),
        "history_size 0 keeps none"
    );
}

/// Reads, subscribes and unsubscribes of channels nobody published on
/// leave nothing in the broker: an anonymous client naming random channels
/// cannot grow it.
pub async fn reads_and_subscribes_leave_no_state(subject: &Subject) {
    let broker = &subject.broker;
    let before = subject.stored();
    let names: Vec<ChannelName> = (0..200).map(|i| channel(&format!("probe:{i}"))).collect();
    for ch in &names {
        let h = broker.history(ch, Some(0), 10, options(10)).await.expect("read");
        assert_eq!((&*h.epoch, h.offset), (NO_STREAM, 0));
        broker.history(ch, None, 10, options(10)).await.expect("position");
    }
    broker.subscribe(&names).await.expect("subscribed");
    broker.unsubscribe(&names).await.expect("unsubscribed");
    assert_eq!(subject.stored(), before, "reads and subscribes created state");
    // A publication does make a stream, and a read then sees it.
    broker
        .publish(names[0].clone(), Bytes::from_static(b"x"), options(10))
        .await
        .expect("published");
    assert!(subject.stored() > before);
    let h = broker
        .history(&names[0], Some(0), 10, options(10))
        .await
        .expect("read");
    assert_eq!((h.offset, h.publications.len()), (1, 1));
}

/// A stream idle for its TTL restarts in a new epoch, without its history.
pub async fn an_idle_stream_expires_into_a_new_epoch(subject: &Subject) {
    let (broker, ch) = (&subject.broker, channel("ttl:short"));
    let short = StreamOptions {
        history_size: 10,
        history_ttl: Duration::from_secs(1),
    };
    let before = broker
        .publish(ch.clone(), Bytes::from_static(b"1"), short)
        .await
        .expect("published");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let after = broker
        .publish(ch.clone(), Bytes::from_static(b"2"), short)
        .await
        .expect("published");
    assert_eq!(after.offset, 1, "the sequence restarted");
    assert_ne!(after.epoch, before.epoch, "in a new epoch");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let ended = broker.history(&ch, Some(0), 10, short).await.expect("history");
    assert_eq!(
        (&*ended.epoch, ended.offset, ended.publications.len()),
        (NO_STREAM, 0, 0),
        "an expired stream reads as none"
    );
    let again = broker
        .publish(ch.clone(), Bytes::from_static(b"3"), short)
        .await
        .expect("published");
    assert_eq!(again.offset, 1);
    let h = broker.history(&ch, Some(0), 10, short).await.expect("history");
    assert_eq!(h.publications.len(), 1, "the old history went with the old epoch");
}

/// `restart_stream` starts a new epoch once: only while the stream is in
/// the epoch named.
pub async fn restart_stream_starts_one_new_epoch(subject: &Subject) {
    let (broker, ch) = (&subject.broker, channel("restart:once"));
    let mut last = None;
    for i in 0..3 {
        last = Some(
            broker
                .publish(ch.clone(), Bytes::from(format!("{i}")), options(10))
                .await
                .expect("published"),
        );
    }
    let old = last.expect("published").epoch;
    let restarted = broker
        .restart_stream(&ch, &old, options(10))
        .await
        .expect("restarted");
    assert_ne!(restarted.epoch, old);
    assert_eq!((restarted.offset, restarted.publications.len()), (0, 0));
    // A second node that saw the same regression: no second restart.
    let again = broker
        .restart_stream(&ch, &old, options(10))
        .await
        .expect("answered");
    assert_eq!((&again.epoch, again.offset), (&restarted.epoch, 0));
    let next = broker
        .publish(ch.clone(), Bytes::from_static(b"new"), options(10))
        .await
        .expect("published");
    assert_eq!((next.offset, &next.epoch), (1, &restarted.epoch));
    let h = broker
        .history(&ch, Some(0), 10, options(10))
        .await
        .expect("history");
    let offsets: Vec<u64> = h.publications.iter().filter_map(|p| p.offset).collect();
    assert_eq!(offsets, [1], "the old epoch's history is gone");
}

/// While the broker is unreachable, everything is refused as
/// `Unavailable`; once it is back, the listener hears that publications may
/// have been missed and subscriptions deliver again by themselves.
pub async fn outages_refuse_and_recover(subject: &mut Subject) {
    let ch = channel("outage:live");
    subject
        .broker
        .subscribe(std::slice::from_ref(&ch))
        .await
        .expect("subscribed");
    subject
        .broker
        .publish(ch.clone(), Bytes::from_static(b"before"), options(10))
        .await
        .expect("published");
    eventually("the first publication arrived", || {
        subject.recorder.on("outage:live").len() == 1
    })
    .await;
    if !subject.cut() {
        // A broker that cannot be down (the embedded one) stays up.
        assert!(subject.broker.health().borrow().up);
        return;
    }
    let mut health = subject.broker.health();
    let _ = tokio::time::timeout(WAIT, health.wait_for(|h| !h.up))
        .await
        .expect("health goes down");
    let unavailable = |result: Result<(), BrokerError>, what: &str| match result {
        Err(BrokerError::Unavailable(_)) => {}
        other => panic!("{what} while down: expected Unavailable, got {other:?}"),
    };
    let published = subject
        .broker
        .publish(ch.clone(), Bytes::from_static(b"lost"), options(10))
        .await;
    unavailable(published.map(drop), "publish");
    let read = subject.broker.history(&ch, Some(0), 10, options(10)).await;
    unavailable(read.map(drop), "history");
    let other = channel("outage:other");
    unavailable(
        subject.broker.subscribe(std::slice::from_ref(&other)).await,
        "subscribe",
    );
    let events_before = subject.recorder.events().len();
    subject.heal();
    let _ = tokio::time::timeout(WAIT, health.wait_for(|h| h.up))
        .await
        .expect("health comes back");
    eventually("the listener hears of the outage's end", || {
        subject.recorder.events()[events_before..]
            .iter()
            .any(|e| match e {
                BrokerEvent::Restored => true,
                BrokerEvent::Missed { channels, .. } => channels.contains(&ch),
                BrokerEvent::Lost { .. } => false,
            })
    })
    .await;
    // The subscription delivers again, without being renewed (publishes may
    // be refused for a moment while a cluster settles: retry those).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match subject
            .broker
            .publish(ch.clone(), Bytes::from_static(b"after"), options(10))
            .await
        {
            Ok(_) => break,
            Err(BrokerError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("publish after the outage: {error}"),
        }
    }
    eventually("a publication after the outage arrived", || {
        subject
            .recorder
            .on("outage:live")
            .iter()
            .any(|p| &p.data[..] == b"after")
    })
    .await;
    assert!(
        !subject
            .recorder
            .on("outage:live")
            .iter()
            .any(|p| &p.data[..] == b"lost"),
        "a refused publication was not published"
    );
}
