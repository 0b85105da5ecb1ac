//! What this node knows of one channel's stream, and what to hand to its
//! subscribers as publications arrive.
//!
//! Publications reach the node in broker order, but the node may miss some:
//! its pub/sub connection dropped, the probe found it dead, Redis restarted.
//! The stream state turns what arrives into a gap-free sequence for local
//! subscribers:
//! - the next offset is delivered; an offset already delivered is dropped;
//! - a hole (an offset beyond the next) switches the channel to *repairing*:
//!   what arrives is held while the history is read, then history and held
//!   publications are merged by offset;
//! - what history cannot fill (trimmed, disabled, or a new epoch) becomes an
//!   explicit gap notice, so no subscriber is silently left with a hole.
//!
//! This module does no I/O; `channels` feeds it and fans out its output.

use std::collections::VecDeque;
use std::mem;
use std::sync::Arc;

use broker_adapter::{BrokerError, History, NO_STREAM};
use pubsub_proto::Publication;

/// Publications held while waiting for a position or a repair, at most,
/// and their bytes at most. Past either, the oldest held are dropped and
/// the merge reports the hole (a gap notice, then what follows).
pub const MAX_HELD: usize = 10_000;
pub const MAX_HELD_BYTES: usize = 16 * 1024 * 1024;

/// Publications held in arrival order, bounded by count and bytes.
#[derive(Debug, Default)]
pub struct Held {
    queue: VecDeque<Publication>,
    bytes: usize,
}

impl Held {
    fn one(publication: Publication) -> Held {
        let mut held = Held::default();
        held.push(publication);
        held
    }

    /// Holds `publication`, dropping the oldest beyond the bounds
    /// (something is very wrong: the read never ends).
    fn push(&mut self, publication: Publication) {
        self.bytes += publication.data.len();
        self.queue.push_back(publication);
        while self.queue.len() > MAX_HELD || (self.bytes > MAX_HELD_BYTES && self.queue.len() > 1) {
            if let Some(dropped) = self.queue.pop_front() {
                self.bytes -= dropped.data.len();
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.len()
    }
}

impl IntoIterator for Held {
    type Item = Publication;
    type IntoIter = std::collections::vec_deque::IntoIter<Publication>;

    fn into_iter(self) -> Self::IntoIter {
        self.queue.into_iter()
    }
}

/// What to hand to subscribers, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Publication(Publication),
    /// Publications up to `offset` in `epoch` could not be delivered; the
    /// stream continues after it.
    Gap {
        epoch: Arc<str>,
        offset: u64,
    },
}

/// One channel's stream as this node sees it.
#[derive(Debug)]
pub enum Stream {
    /// The position is not known yet (broker subscription or position read
    /// pending); publications arriving meanwhile are held.
    Pending { held: Held },
    /// In sequence: `last` is the offset of the last publication delivered.
    Live { epoch: Arc<str>, last: u64 },
    /// History is being read to fill a hole (or to catch up after the broker
    /// connection came back); publications arriving meanwhile are held.
    Repairing {
        epoch: Arc<str>,
        last: u64,
        held: Held,
        /// Asked to repair again while this read was in flight (the read
        /// may predate what prompted the new request): read once more.
        again: bool,
    },
}

/// What a live publication did.
#[derive(Debug, PartialEq)]
pub enum Arrival {
    /// Hand these to subscribers.
    Deliver(Vec<Output>),
    /// Held: nothing to hand out now.
    Held,
    /// A hole was found: the stream is now repairing; read its history.
    NeedsRepair,
}

impl Default for Stream {
    fn default() -> Self {
        Stream::Pending {
            held: Held::default(),
        }
    }
}

impl Stream {
    /// The position subscribers joining now start from, once known.
    pub fn position(&self) -> Option<(Arc<str>, u64)> {
        match self {
            Stream::Pending { .. } => None,
            Stream::Live { epoch, last } | Stream::Repairing { epoch, last, .. } => {
                Some((epoch.clone(), *last))
            }
        }
    }

    /// A publication arrived from the broker.
    pub fn arrive(&mut self, publication: Publication) -> Arrival {
        match self {
            Stream::Pending { held } | Stream::Repairing { held, .. } => {
                held.push(publication);
                Arrival::Held
            }
            Stream::Live { epoch, last } => {
                adopt_first_stream(epoch, *last, &publication);
                let (same_epoch, offset) = (
                    publication.epoch.as_deref() == Some(&**epoch),
                    offset_of(&publication),
                );
                if same_epoch && offset <= *last {
                    return Arrival::Deliver(Vec::new());
                }
                if same_epoch && offset > *last + 1 {
                    let (epoch, last) = (epoch.clone(), *last);
                    *self = Stream::Repairing {
                        epoch,
                        last,
                        held: Held::one(publication),
                        again: false,
                    };
                    return Arrival::NeedsRepair;
                }
                let mut out = Vec::with_capacity(1);
                advance(epoch, last, publication, &mut out);
                Arrival::Deliver(out)
            }
        }
    }

    /// The channel's position was read (activation): become live there and
    /// deliver what was held after it.
    pub fn positioned(&mut self, position: &History) -> Vec<Output> {
        let held = match mem::take(self) {
            Stream::Pending { held } | Stream::Repairing { held, .. } => held,
            live @ Stream::Live { .. } => {
                *self = live;
                return Vec::new();
            }
        };
        let (mut epoch, mut last) = (position.epoch.clone(), position.offset);
        let mut out = Vec::new();
        for publication in held {
            advance(&mut epoch, &mut last, publication, &mut out);
        }
        *self = Stream::Live { epoch, last };
        out
    }

    /// Switches a live stream to repairing (after the broker connection came
    /// back). Returns false if it is not live; a stream already repairing
    /// reads once more when its current read is done.
    pub fn start_repair(&mut self) -> bool {
        match self {
            Stream::Live { epoch, last } => {
                let (epoch, last) = (epoch.clone(), *last);
                *self = Stream::Repairing {
                    epoch,
                    last,
                    held: Held::default(),
                    again: false,
                };
                true
            }
            Stream::Repairing { again, .. } => {
                *again = true;
                false
            }
            Stream::Pending { .. } => false,
        }
    }

    /// True while a history read is due or in flight.
    pub fn is_repairing(&self) -> bool {
        matches!(self, Stream::Repairing { .. })
    }

    /// The epoch and offset to read history after, while repairing.
    pub fn repair_from(&self) -> Option<(Arc<str>, u64)> {
        match self {
            Stream::Repairing { epoch, last, .. } => Some((epoch.clone(), *last)),
            _ => None,
        }
    }

    /// The history read for a repair came back: merge it with what was held.
    pub fn repaired(&mut self, history: Result<History, BrokerError>) -> Vec<Output> {
        let (mut epoch, mut last, held, again) = match mem::take(self) {
            Stream::Repairing {
                epoch,
                last,
                held,
                again,
            } => (epoch, last, held, again),
            other => {
                *self = other;
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        if let Ok(history) = history {
            if epoch.is_empty() && last == 0 {
                // The channel had no stream when this node last knew it:
                // the one it has now continues from 0.
                epoch = history.epoch.clone();
            }
            if history.epoch != epoch {
                // The sequence restarted: whatever came after `last` in the
                // old epoch is gone. Continue in the new one.
                let base = history
                    .publications
                    .first()
                    .map_or(history.offset, |p| offset_of(p).saturating_sub(1));
                epoch = history.epoch.clone();
                last = base;
                out.push(Output::Gap {
                    epoch: epoch.clone(),
                    offset: base,
                });
            }
            for publication in history.publications {
                advance(&mut epoch, &mut last, publication, &mut out);
            }
        }
        for publication in held {
            advance(&mut epoch, &mut last, publication, &mut out);
        }
        *self = if again {
            Stream::Repairing {
                epoch,
                last,
                held: Held::default(),
                again: false,
            }
        } else {
            Stream::Live { epoch, last }
        };
        out
    }
}

/// A position of ([`NO_STREAM`], 0) is continued by whatever stream the
/// channel gets first: its offsets start at 1, so nothing is missed before
/// them. Takes that stream's epoch.
fn adopt_first_stream(epoch: &mut Arc<str>, last: u64, publication: &Publication) {
    if &**epoch == NO_STREAM
        && last == 0
        && let Some(first) = &publication.epoch
    {
        *epoch = first.clone();
    }
}

fn offset_of(publication: &Publication) -> u64 {
    publication.offset.unwrap_or(0)
}

/// Moves a live stream past one publication: duplicates are dropped, a hole
/// or a new epoch is announced with a gap notice, the publication delivered.
fn advance(epoch: &mut Arc<str>, last: &mut u64, publication: Publication, out: &mut Vec<Output>) {
    adopt_first_stream(epoch, *last, &publication);
    let offset = offset_of(&publication);
    match publication.epoch.as_deref() {
        Some(e) if e == &**epoch => {
            if offset <= *last {
                return;
            }
            if offset > *last + 1 {
                out.push(Output::Gap {
                    epoch: epoch.clone(),
                    offset: offset - 1,
                });
            }
        }
        Some(new_epoch) => {
            *epoch = Arc::from(new_epoch);
            out.push(Output::Gap {
                epoch: epoch.clone(),
                offset: offset.saturating_sub(1),
            });
        }
        // A publication without a position (not from our brokers): pass it on.
        None => {
            out.push(Output::Publication(publication));
            return;
        }
    }
    *last = offset;
    out.push(Output::Publication(publication));
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pubsub_proto::ChannelName;

    fn p(epoch: &str, offset: u64) -> Publication {
        Publication {
            channel: ChannelName::parse("c").unwrap(),
            data: Bytes::from(offset.to_string()),
            offset: Some(offset),
            epoch: Some(Arc::from(epoch)),
        }
    }

    #[test]
    fn what_is_held_is_bounded_by_bytes_as_well_as_count() {
        let big = |offset: u64| Publication {
            data: Bytes::from(vec![b'x'; 1024 * 1024]),
            ..p("e", offset)
        };
        let mut stream = Stream::default();
        for offset in 1..=40 {
            assert_eq!(stream.arrive(big(offset)), Arrival::Held);
        }
        let Stream::Pending { held } = &stream else {
            panic!("still pending");
        };
        assert_eq!(
            held.len(),
            MAX_HELD_BYTES / (1024 * 1024),
            "16 MiB of 1 MiB publications"
        );
        // The newest are kept; activation reports the hole before them.
        let out = stream.positioned(&history("e", 0, &[]));
        assert_eq!(gaps(&out), [("e".to_string(), 24)]);
        assert_eq!(pubs(&out), (25..=40).collect::<Vec<_>>());
    }

    fn history(epoch: &str, offset: u64, offsets: &[u64]) -> History {
        History {
            epoch: Arc::from(epoch),
            offset,
            publications: offsets.iter().map(|&o| p(epoch, o)).collect(),
        }
    }

    fn pubs(out: &[Output]) -> Vec<u64> {
        out.iter()
            .filter_map(|o| match o {
                Output::Publication(p) => p.offset,
                Output::Gap { .. } => None,
            })
            .collect()
    }

    fn gaps(out: &[Output]) -> Vec<(String, u64)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Gap { epoch, offset } => Some((epoch.to_string(), *offset)),
                Output::Publication(_) => None,
            })
            .collect()
    }

    fn live(epoch: &str, last: u64) -> Stream {
        Stream::Live {
            epoch: Arc::from(epoch),
            last,
        }
    }

    #[test]
    fn in_order_publications_pass_and_duplicates_are_dropped() {
        let mut s = live("e", 5);
        assert_eq!(
            s.arrive(p("e", 6)),
            Arrival::Deliver(vec![Output::Publication(p("e", 6))])
        );
        assert_eq!(s.arrive(p("e", 6)), Arrival::Deliver(vec![]));
        assert_eq!(s.arrive(p("e", 3)), Arrival::Deliver(vec![]));
        assert_eq!(s.position().map(|(_, o)| o), Some(6));
    }

    #[test]
    fn a_hole_is_repaired_from_history_and_held_publications_follow() {
        let mut s = live("e", 5);
        assert_eq!(s.arrive(p("e", 9)), Arrival::NeedsRepair);
        assert_eq!(s.repair_from(), Some((Arc::from("e"), 5)));
        assert_eq!(s.arrive(p("e", 10)), Arrival::Held);
        // History has 6..=9 (read after 9 arrived, before 10).
        let out = s.repaired(Ok(history("e", 9, &[6, 7, 8, 9])));
        assert_eq!(pubs(&out), [6, 7, 8, 9, 10]);
        assert!(gaps(&out).is_empty());
        assert_eq!(s.position().map(|(_, o)| o), Some(10));
    }

    #[test]
    fn a_hole_history_cannot_fill_becomes_a_gap_notice() {
        let mut s = live("e", 5);
        assert_eq!(s.arrive(p("e", 20)), Arrival::NeedsRepair);
        // History was trimmed: only 15.. are left.
        let out = s.repaired(Ok(history("e", 20, &[15, 16, 17, 18, 19, 20])));
        assert_eq!(gaps(&out), [("e".to_string(), 14)]);
        assert_eq!(pubs(&out), [15, 16, 17, 18, 19, 20]);
        // The notice comes before the publications after the hole.
        assert!(matches!(out[0], Output::Gap { .. }));
    }

    #[test]
    fn a_failed_history_read_reports_the_hole() {
        let mut s = live("e", 5);
        s.arrive(p("e", 8));
        let out = s.repaired(Err(BrokerError::Unavailable("down".into())));
        assert_eq!(gaps(&out), [("e".to_string(), 7)]);
        assert_eq!(pubs(&out), [8]);
    }

    #[test]
    fn a_new_epoch_is_announced() {
        let mut s = live("old", 40);
        let Arrival::Deliver(out) = s.arrive(p("new", 1)) else {
            panic!("delivers")
        };
        assert_eq!(gaps(&out), [("new".to_string(), 0)]);
        assert_eq!(pubs(&out), [1]);
        assert_eq!(s.position(), Some((Arc::from("new"), 1)));
    }

    #[test]
    fn a_channel_without_a_stream_is_continued_by_its_first_stream() {
        // Live on a channel nothing was published on: the first stream
        // continues it without a gap notice.
        let mut s = live(NO_STREAM, 0);
        let Arrival::Deliver(out) = s.arrive(p("first", 1)) else {
            panic!("delivers")
        };
        assert_eq!((pubs(&out), gaps(&out)), (vec![1], vec![]));
        assert_eq!(s.position(), Some((Arc::from("first"), 1)));

        // Its first publications were missed: repaired from history at 0.
        let mut s = live(NO_STREAM, 0);
        assert_eq!(s.arrive(p("first", 3)), Arrival::NeedsRepair);
        let out = s.repaired(Ok(history("first", 3, &[1, 2, 3])));
        assert_eq!((pubs(&out), gaps(&out)), (vec![1, 2, 3], vec![]));

        // A catch-up read finds the stream that started meanwhile.
        let mut s = live(NO_STREAM, 0);
        s.start_repair();
        let out = s.repaired(Ok(history("first", 2, &[1, 2])));
        assert_eq!((pubs(&out), gaps(&out)), (vec![1, 2], vec![]));

        // The stream expired while this node followed it: announced, and
        // the next stream continues that.
        let mut s = live("e", 5);
        s.start_repair();
        let out = s.repaired(Ok(history(NO_STREAM, 0, &[])));
        assert_eq!(gaps(&out), [(NO_STREAM.to_string(), 0)]);
        let Arrival::Deliver(out) = s.arrive(p("next", 1)) else {
            panic!("delivers")
        };
        assert_eq!((pubs(&out), gaps(&out)), (vec![1], vec![]));
    }

    #[test]
    fn catching_up_after_reconnect_fills_or_announces() {
        // Same epoch: the missed publications are filled.
        let mut s = live("e", 5);
        assert!(s.start_repair());
        let out = s.repaired(Ok(history("e", 7, &[6, 7])));
        assert_eq!((pubs(&out), gaps(&out)), (vec![6, 7], vec![]));

        // Redis lost its data: the epoch changed, nothing published yet.
        let mut s = live("e", 5);
        s.start_repair();
        let out = s.repaired(Ok(history("fresh", 0, &[])));
        assert_eq!((pubs(&out), gaps(&out)), (vec![], vec![("fresh".to_string(), 0)]));
        assert_eq!(s.position(), Some((Arc::from("fresh"), 0)));

        // Nothing missed: no output at all.
        let mut s = live("e", 5);
        s.start_repair();
        assert!(s.repaired(Ok(history("e", 5, &[]))).is_empty());
    }

    #[test]
    fn a_repair_asked_for_during_a_read_reads_again() {
        let mut s = live("e", 5);
        assert!(s.start_repair());
        // Another catch-up is asked for while the read is in flight.
        assert!(!s.start_repair());
        let out = s.repaired(Ok(history("e", 6, &[6])));
        assert_eq!(pubs(&out), [6]);
        assert!(s.is_repairing(), "reads once more");
        assert_eq!(s.repair_from(), Some((Arc::from("e"), 6)));
        assert_eq!(pubs(&s.repaired(Ok(history("e", 7, &[7])))), [7]);
        assert!(!s.is_repairing());
    }

    #[test]
    fn activation_delivers_only_what_is_after_the_position() {
        let mut s = Stream::default();
        assert_eq!(s.position(), None);
        assert_eq!(s.arrive(p("e", 4)), Arrival::Held);
        assert_eq!(s.arrive(p("e", 5)), Arrival::Held);
        assert_eq!(s.arrive(p("e", 6)), Arrival::Held);
        let out = s.positioned(&history("e", 5, &[]));
        assert_eq!(pubs(&out), [6]);
        assert_eq!(s.position().map(|(_, o)| o), Some(6));
    }
}
