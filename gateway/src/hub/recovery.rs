//! Client recovery: given where a joining client says it is (`since`) and
//! where the channel is for this node (`joined`), decide what to replay.
//!
//! The answer is all or nothing: either every publication after `since` up
//! to the join position is replayed (`recovered: true`), or none is and the
//! client is told `recovered: false` and resyncs from its backend. A partial
//! replay would leave a hole the client cannot see.

use broker_adapter::{History, NO_STREAM};
use pubsub_proto::{Publication, StreamPosition};

use super::channels::Joined;

/// What a subscribe with (or without) `since` leads to.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The position reported in `subscribed`.
    pub position: StreamPosition,
    /// `None` without `since`.
    pub recovered: Option<bool>,
    /// Publications to replay, oldest first.
    pub replay: Vec<Publication>,
    /// Live publications at or below this offset are not sent.
    pub floor: u64,
}

/// What to read before deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Decide now.
    Nothing,
    /// Read the history after `since` (at most `limit` publications).
    History { since: u64, limit: usize },
}

/// Whether the client's position is in the stream the node joined at: the
/// same epoch, or a position on a channel that had no stream yet
/// ([`NO_STREAM`], 0), which any first stream continues (its offsets start
/// at 1).
fn continued(since: &StreamPosition, joined: &Joined) -> bool {
    *since.epoch == *joined.epoch || (since.epoch == NO_STREAM && since.offset == 0)
}

/// Whether the plan needs a history read.
pub fn need(joined: &Joined, since: Option<&StreamPosition>, history_size: usize) -> Need {
    match since {
        Some(s) if continued(s, joined) && s.offset < joined.offset => {
            let missed = joined.offset - s.offset;
            if missed > history_size as u64 {
                // More than history keeps: cannot be complete.
                Need::Nothing
            } else {
                Need::History {
                    since: s.offset,
                    limit: missed as usize,
                }
            }
        }
        _ => Need::Nothing,
    }
}

/// Decides, with the history read if [`need`] asked for one.
pub fn plan(joined: &Joined, since: Option<StreamPosition>, history: Option<History>) -> Plan {
    let at_join = StreamPosition {
        epoch: joined.epoch.to_string(),
        offset: joined.offset,
    };
    let not_recovered = |position| Plan {
        position,
        recovered: Some(false),
        replay: Vec::new(),
        floor: joined.offset,
    };
    let Some(since) = since else {
        return Plan {
            position: at_join,
            recovered: None,
            replay: Vec::new(),
            floor: joined.offset,
        };
    };
    if !continued(&since, joined) {
        return not_recovered(at_join);
    }
    if since.offset >= joined.offset {
        // Nothing missed (or this node is behind the client: skip what it has).
        return Plan {
            position: StreamPosition {
                epoch: at_join.epoch,
                offset: since.offset,
            },
            recovered: Some(true),
            replay: Vec::new(),
            floor: since.offset,
        };
    }
    let Some(history) = history.filter(|h| *h.epoch == *joined.epoch) else {
        return not_recovered(at_join);
    };
    let replay: Vec<Publication> = history
        .publications
        .into_iter()
        .filter(|p| p.offset.is_some_and(|o| o > since.offset && o <= joined.offset))
        .collect();
    let expected = joined.offset - since.offset;
    let contiguous = replay
        .iter()
        .zip(since.offset + 1..)
        .all(|(p, want)| p.offset == Some(want));
    if replay.len() as u64 != expected || !contiguous {
        return not_recovered(at_join);
    }
    Plan {
        position: at_join,
        recovered: Some(true),
        replay,
        floor: joined.offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pubsub_proto::ChannelName;
    use std::sync::Arc;

    fn joined(epoch: &str, offset: u64) -> Joined {
        Joined {
            epoch: Arc::from(epoch),
            offset,
        }
    }

    fn since(epoch: &str, offset: u64) -> StreamPosition {
        StreamPosition {
            epoch: epoch.into(),
            offset,
        }
    }

    fn history(epoch: &str, offsets: impl IntoIterator<Item = u64>) -> History {
        let publications: Vec<Publication> = offsets
            .into_iter()
            .map(|o| Publication {
                channel: ChannelName::parse("c").unwrap(),
                data: Bytes::new(),
                offset: Some(o),
                epoch: Some(Arc::from(epoch)),
            })
            .collect();
        History {
            epoch: Arc::from(epoch),
            offset: publications.last().and_then(|p| p.offset).unwrap_or(0),
            publications,
        }
    }

    fn offsets(plan: &Plan) -> Vec<u64> {
        plan.replay.iter().filter_map(|p| p.offset).collect()
    }

    #[test]
    fn without_since_the_client_starts_at_the_join_position() {
        let plan = plan(&joined("e", 7), None, None);
        assert_eq!((plan.recovered, plan.position.offset, plan.floor), (None, 7, 7));
        assert_eq!(need(&joined("e", 7), None, 100), Need::Nothing);
    }

    #[test]
    fn missed_publications_are_replayed_exactly() {
        let j = joined("e", 45);
        let s = since("e", 41);
        assert_eq!(need(&j, Some(&s), 100), Need::History { since: 41, limit: 4 });
        // History may already hold more (published after the join): those come live.
        let plan = plan(&j, Some(s), Some(history("e", 42..=47)));
        assert_eq!(
            (plan.recovered, offsets(&plan), plan.floor),
            (Some(true), vec![42, 43, 44, 45], 45)
        );
        assert_eq!(plan.position, since("e", 45));
    }

    #[test]
    fn a_trimmed_history_or_another_epoch_is_not_recovered() {
        let j = joined("e", 45);
        let trimmed = plan(&j, Some(since("e", 41)), Some(history("e", 43..=45)));
        assert_eq!((trimmed.recovered, trimmed.replay.len()), (Some(false), 0));
        let holed = plan(&j, Some(since("e", 41)), Some(history("e", [42, 44, 45])));
        assert_eq!(holed.recovered, Some(false));
        let other = plan(&j, Some(since("old", 41)), None);
        assert_eq!(
            (other.recovered, other.position.clone()),
            (Some(false), since("e", 45))
        );
        let restarted = plan(&j, Some(since("e", 41)), Some(history("new", 1..=3)));
        assert_eq!(restarted.recovered, Some(false));
        // More missed than history keeps: no read, not recovered.
        assert_eq!(need(&j, Some(&since("e", 5)), 10), Need::Nothing);
        assert_eq!(plan(&j, Some(since("e", 5)), None).recovered, Some(false));
    }

    #[test]
    fn a_position_before_any_stream_is_continued_by_the_first() {
        // The client subscribed when the channel had no stream; three were
        // published while it was away.
        let j = joined("first", 3);
        let s = since(NO_STREAM, 0);
        assert_eq!(need(&j, Some(&s), 100), Need::History { since: 0, limit: 3 });
        let plan = plan(&j, Some(s), Some(history("first", 1..=3)));
        assert_eq!((plan.recovered, offsets(&plan)), (Some(true), vec![1, 2, 3]));
        assert_eq!(plan.position, since("first", 3));
        // Still no stream: nothing to replay.
        let none = super::plan(&joined(NO_STREAM, 0), Some(since(NO_STREAM, 0)), None);
        assert_eq!((none.recovered, none.replay.len()), (Some(true), 0));
        // A client that knew a stream the channel no longer has is not.
        let gone = super::plan(&joined(NO_STREAM, 0), Some(since("old", 4)), None);
        assert_eq!(gone.recovered, Some(false));
        // An empty epoch with an offset is no position at all.
        let bogus = super::plan(&joined("first", 3), Some(since(NO_STREAM, 2)), None);
        assert_eq!(bogus.recovered, Some(false));
    }

    #[test]
    fn a_client_at_or_ahead_of_the_node_is_recovered_without_replay() {
        let at = plan(&joined("e", 45), Some(since("e", 45)), None);
        assert_eq!((at.recovered, at.floor, at.replay.len()), (Some(true), 45, 0));
        let ahead = plan(&joined("e", 45), Some(since("e", 50)), None);
        assert_eq!(
            (ahead.recovered, ahead.floor, ahead.position.offset),
            (Some(true), 50, 50)
        );
    }
}
