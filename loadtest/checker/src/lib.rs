//! The loss and duplication checker.
//!
//! Publishers write numbered payloads (`{"pub":"<id>","seq":N}`) to many
//! channels through the HTTP API or WebSocket clients, and record what each
//! acknowledged publication became: its `(epoch, offset)`. Subscribers on
//! every node record what they receive (messages, gap notices, `subscribed`
//! replies), reconnecting elsewhere with `since` when their connection dies.
//! [`Checker::verify`] then checks, per subscriber and channel:
//! - offsets contiguous, no duplicates, order kept;
//! - each payload is the one acknowledged at that position;
//! - every acknowledged publication after the subscriber's first position
//!   was received, unless it falls in a hole the gateway *declared* (a gap
//!   notice or `recovered: false`): silent loss is what fails the check.
//!
//! Used by the gateway's fault tests; it depends on nothing else of the
//! load generator, so the tests need not build its plotting and histograms.

mod publisher;
mod subscriber;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use publisher::{PublishVia, Publisher};
pub use subscriber::Subscriber;

/// A position in a channel's stream.
pub type Position = (Arc<str>, u64);

/// A payload: which publisher, which sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Payload {
    pub publisher: String,
    pub seq: u64,
}

/// What a subscriber saw on one channel, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A `subscribed` reply: `recovered` is `None` without `since`.
    Subscribed {
        position: Position,
        recovered: Option<bool>,
    },
    Message {
        position: Position,
        payload: Option<Payload>,
    },
    Gap {
        position: Position,
    },
    /// The connection ended (the subscriber will reconnect).
    Disconnected,
}

/// What the publishers were told.
#[derive(Default)]
pub(crate) struct Ledger {
    /// Acknowledged publications by channel and position.
    pub acked: HashMap<String, BTreeMap<Position, Payload>>,
    /// Publications whose outcome is unknown (timeout, connection lost).
    pub ambiguous: HashSet<Payload>,
    /// Publications refused (nothing was published).
    pub refused: u64,
}

/// Publishers and subscribers around one set of channels.
pub struct Checker {
    pub(crate) channels: Vec<String>,
    pub(crate) ledger: Arc<Mutex<Ledger>>,
    stop: watch::Sender<bool>,
    publishers: Vec<JoinHandle<()>>,
    subscribers: Vec<Subscriber>,
}

impl Checker {
    pub fn new(channels: Vec<String>) -> Checker {
        Checker {
            channels,
            ledger: Arc::default(),
            stop: watch::Sender::new(false),
            publishers: Vec::new(),
            subscribers: Vec::new(),
        }
    }

    /// Starts a subscriber of every channel, connecting to `urls[0]` first
    /// and moving to the next URL whenever its connection dies. Returns once
    /// it is subscribed to every channel.
    pub async fn add_subscriber(&mut self, name: &str, urls: Vec<String>) -> anyhow::Result<()> {
        let subscriber = Subscriber::start(name, urls, self.channels.clone()).await?;
        self.subscribers.push(subscriber);
        Ok(())
    }

    /// Starts a publisher that writes to every channel in turn, `rate` times
    /// per second, until [`Checker::stop_publishers`].
    pub fn add_publisher(&mut self, name: &str, via: PublishVia, rate: u32) {
        let publisher = Publisher {
            name: name.to_owned(),
            via,
            rate,
            channels: self.channels.clone(),
            ledger: self.ledger.clone(),
            stop: self.stop.subscribe(),
        };
        self.publishers.push(tokio::spawn(publisher.run()));
    }

    /// The subscribers, to disconnect one on purpose.
    pub fn subscribers(&self) -> &[Subscriber] {
        &self.subscribers
    }

    /// Stops publishing and waits for the publishers to finish.
    pub async fn stop_publishers(&mut self) {
        let _ = self.stop.send(true);
        for publisher in self.publishers.drain(..) {
            let _ = publisher.await;
        }
    }

    /// Acknowledged publications so far.
    pub fn acked(&self) -> usize {
        self.ledger.lock().acked.values().map(BTreeMap::len).sum()
    }

    /// Waits until every subscriber has caught up with every acknowledged
    /// publication (or `within` passes), then verifies.
    pub async fn settle_and_verify(&mut self, within: std::time::Duration) -> Report {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let report = self.verify();
            if report.caught_up() || tokio::time::Instant::now() >= deadline {
                for subscriber in &self.subscribers {
                    subscriber.stop();
                }
                return report;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Checks what every subscriber received against what was acknowledged.
    pub fn verify(&self) -> Report {
        let ledger = self.ledger.lock();
        let mut report = Report {
            acked: ledger.acked.values().map(BTreeMap::len).sum(),
            refused: ledger.refused,
            ambiguous: ledger.ambiguous.len(),
            subscribers: self.subscribers.len(),
            ..Report::default()
        };
        for subscriber in &self.subscribers {
            let log = subscriber.log();
            for channel in &self.channels {
                let events = log.get(channel).map(Vec::as_slice).unwrap_or(&[]);
                let acked = ledger.acked.get(channel);
                check_stream(events, acked, &ledger.ambiguous, &mut report);
            }
        }
        report
    }
}

/// Walks one subscriber's events on one channel.
fn check_stream(
    events: &[Event],
    acked: Option<&BTreeMap<Position, Payload>>,
    ambiguous: &HashSet<Payload>,
    report: &mut Report,
) {
    let empty = BTreeMap::new();
    let acked = acked.unwrap_or(&empty);
    // Where the subscriber is; None before its first `subscribed`.
    let mut at: Option<Position> = None;
    // Positions received, to count what was expected but never came.
    let mut received: HashSet<Position> = HashSet::new();
    // Declared holes and resets, as (epoch, from_exclusive, to_inclusive).
    let mut declared: Vec<(Arc<str>, u64, u64)> = Vec::new();
    let mut start: Option<Position> = None;
    for event in events {
        match event {
            Event::Subscribed { position, recovered } => {
                report.resubscribes += u64::from(start.is_some());
                match (&at, recovered) {
                    // Not recovered: what lay between is declared lost.
                    (Some(from), Some(false)) => {
                        report.not_recovered += 1;
                        declare(from, position, &mut declared);
                        at = Some(position.clone());
                    }
                    (None, _) => {
                        start = Some(position.clone());
                        at = Some(position.clone());
                    }
                    // Recovered: the replay follows from where we were.
                    (Some(_), _) => {}
                }
            }
            Event::Gap { position } => {
                report.gap_notices += 1;
                if let Some(from) = &at {
                    declare(from, position, &mut declared);
                }
                at = Some(position.clone());
            }
            Event::Message { position, payload } => {
                report.delivered += 1;
                if !received.insert(position.clone()) {
                    report.duplicates += 1;
                    continue;
                }
                if let Some((epoch, last)) = &at {
                    // A position on a channel without a stream (empty
                    // epoch, offset 0) is continued by its first stream.
                    let same_epoch = *epoch == position.0 || (epoch.is_empty() && *last == 0);
                    if same_epoch && position.1 <= *last {
                        report.out_of_order += 1;
                    } else if !same_epoch || position.1 > *last + 1 {
                        report.silent_holes += 1;
                    }
                }
                at = Some(position.clone());
                match (acked.get(position), payload) {
                    (Some(expected), Some(got)) if expected == got => {}
                    (None, Some(got)) if ambiguous.contains(got) => {}
                    _ => report.wrong_payloads += 1,
                }
            }
            Event::Disconnected => report.disconnects += 1,
        }
    }
    // Every acknowledged publication after the start must have arrived,
    // unless a declared hole covers it.
    let Some((start_epoch, start_offset)) = start else {
        return;
    };
    let mut epochs_seen: HashSet<Arc<str>> = received.iter().map(|(e, _)| e.clone()).collect();
    epochs_seen.insert(start_epoch.clone());
    for (epoch, offset) in acked.keys() {
        let in_scope = if *epoch == start_epoch {
            *offset > start_offset
        } else {
            epochs_seen.contains(epoch)
        };
        if !in_scope || received.contains(&(epoch.clone(), *offset)) {
            continue;
        }
        report.expected_missing += 1;
        let covered = declared
            .iter()
            .any(|(e, from, to)| e == epoch && *offset > *from && *offset <= *to);
        if !covered {
            report.lost += 1;
        }
    }
}

/// Records a declared jump from `from` to `to`: in one epoch the offsets
/// between; across epochs the rest of the old one and the start of the new.
fn declare(from: &Position, to: &Position, declared: &mut Vec<(Arc<str>, u64, u64)>) {
    if from.0 == to.0 {
        declared.push((from.0.clone(), from.1, to.1));
    } else {
        declared.push((from.0.clone(), from.1, u64::MAX));
        declared.push((to.0.clone(), 0, to.1));
    }
}

/// The checker's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub subscribers: usize,
    /// Publications acknowledged to publishers.
    pub acked: usize,
    /// Publications refused with an error that means nothing was published
    /// (a 503 `unavailable` is ambiguous instead: the broker connection may
    /// have failed after the publish was sent).
    pub refused: u64,
    /// Publications whose outcome the publisher could not know.
    pub ambiguous: usize,
    /// Messages received, over all subscribers and channels.
    pub delivered: u64,
    /// Acknowledged publications a subscriber did not receive and no
    /// declared hole covers: silent loss.
    pub lost: u64,
    /// Acknowledged publications a subscriber did not receive (declared or not).
    pub expected_missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Jumps in offsets (or epochs) without a notice before them.
    pub silent_holes: u64,
    /// Messages whose payload is not the one acknowledged at that position.
    pub wrong_payloads: u64,
    pub gap_notices: u64,
    pub not_recovered: u64,
    pub resubscribes: u64,
    pub disconnects: u64,
}

impl Report {
    /// Nothing lost silently, duplicated, reordered or corrupted.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.silent_holes == 0
            && self.wrong_payloads == 0
    }

    /// Clean, and without any declared hole either: nothing missed at all.
    pub fn is_complete(&self) -> bool {
        self.is_clean() && self.expected_missing == 0 && self.gap_notices == 0 && self.not_recovered == 0
    }

    fn caught_up(&self) -> bool {
        self.lost == 0 && self.expected_missing == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "checker: {} subscribers, {} acked ({} refused, {} ambiguous), {} delivered; \
             lost {}, duplicated {}, out of order {}, silent holes {}, wrong payloads {}; \
             declared: {} gap notices, {} not recovered ({} publications); \
             {} disconnects, {} resubscribes",
            self.subscribers,
            self.acked,
            self.refused,
            self.ambiguous,
            self.delivered,
            self.lost,
            self.duplicates,
            self.out_of_order,
            self.silent_holes,
            self.wrong_payloads,
            self.gap_notices,
            self.not_recovered,
            self.expected_missing - self.lost,
            self.disconnects,
            self.resubscribes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(epoch: &str, offset: u64) -> Position {
        (Arc::from(epoch), offset)
    }

    fn payload(seq: u64) -> Payload {
        Payload {
            publisher: "p".into(),
            seq,
        }
    }

    fn acked(epoch: &str, offsets: std::ops::RangeInclusive<u64>) -> BTreeMap<Position, Payload> {
        offsets.map(|o| (pos(epoch, o), payload(o))).collect()
    }

    fn message(epoch: &str, offset: u64) -> Event {
        Event::Message {
            position: pos(epoch, offset),
            payload: Some(payload(offset)),
        }
    }

    fn check(events: &[Event], acked: &BTreeMap<Position, Payload>) -> Report {
        let mut report = Report::default();
        check_stream(events, Some(acked), &HashSet::new(), &mut report);
        report
    }

    #[test]
    fn a_complete_stream_is_clean() {
        let events = vec![
            Event::Subscribed {
                position: pos("e", 0),
                recovered: None,
            },
            message("e", 1),
            message("e", 2),
            Event::Disconnected,
            Event::Subscribed {
                position: pos("e", 3),
                recovered: Some(true),
            },
            message("e", 3),
            message("e", 4),
        ];
        let report = check(&events, &acked("e", 1..=4));
        assert!(report.is_complete(), "{report}");
        assert_eq!((report.delivered, report.resubscribes), (4, 1));
    }

    #[test]
    fn a_subscription_before_any_stream_is_continued_by_the_first() {
        let events = vec![
            Event::Subscribed {
                position: pos("", 0),
                recovered: None,
            },
            message("e", 1),
            message("e", 2),
        ];
        let report = check(&events, &acked("e", 1..=2));
        assert!(report.is_complete(), "{report}");
        // Its first publication missed is still a hole.
        let holed = check(&[events[0].clone(), message("e", 2)], &acked("e", 1..=2));
        assert_eq!(holed.silent_holes, 1, "{holed}");
    }

    #[test]
    fn silent_loss_duplicates_and_corruption_are_caught() {
        let acked = acked("e", 1..=4);
        let lost = check(
            &[
                Event::Subscribed {
                    position: pos("e", 0),
                    recovered: None,
                },
                message("e", 1),
                message("e", 3),
            ],
            &acked,
        );
        assert_eq!(
            (lost.lost, lost.silent_holes),
            (2, 1),
            "2 and 4 never came, 2 silently skipped"
        );
        let dup = check(
            &[
                Event::Subscribed {
                    position: pos("e", 0),
                    recovered: None,
                },
                message("e", 1),
                message("e", 1),
            ],
            &acked,
        );
        assert_eq!(dup.duplicates, 1);
        let wrong = check(
            &[
                Event::Subscribed {
                    position: pos("e", 0),
                    recovered: None,
                },
                Event::Message {
                    position: pos("e", 1),
                    payload: Some(payload(9)),
                },
            ],
            &acked,
        );
        assert_eq!(wrong.wrong_payloads, 1);
        assert!(!lost.is_clean() && !dup.is_clean() && !wrong.is_clean());
    }

    #[test]
    fn declared_holes_are_not_silent_loss() {
        // A gap notice covers 2..=3; an epoch reset after recovered:false covers the rest.
        let mut acked = acked("e", 1..=5);
        acked.extend(super::tests::acked("f", 1..=2));
        let events = vec![
            Event::Subscribed {
                position: pos("e", 0),
                recovered: None,
            },
            message("e", 1),
            Event::Gap {
                position: pos("e", 3),
            },
            message("e", 4),
            Event::Disconnected,
            Event::Subscribed {
                position: pos("f", 1),
                recovered: Some(false),
            },
            message("f", 2),
        ];
        let report = check(&events, &acked);
        assert!(report.is_clean(), "{report}");
        assert!(!report.is_complete());
        assert_eq!((report.gap_notices, report.not_recovered), (1, 1));
        assert_eq!(report.expected_missing, 4, "e2, e3, e5 and f1 were declared lost");
    }

    #[test]
    fn a_declared_hole_does_not_hide_a_later_silent_one() {
        let acked = acked("e", 1..=6);
        let events = vec![
            Event::Subscribed {
                position: pos("e", 0),
                recovered: None,
            },
            message("e", 1),
            Event::Gap {
                position: pos("e", 2),
            },
            message("e", 3),
            message("e", 5),
            message("e", 6),
        ];
        let report = check(&events, &acked);
        assert_eq!(
            (report.lost, report.silent_holes),
            (1, 1),
            "4 was lost silently: {report}"
        );
    }
}
