//! A queue of channels that need a task's attention (the subscription
//! manager's "interest may have changed", the repair task's "read the
//! history"), without duplicates.
//!
//! A channel is queued at most once however often it is pushed, so the
//! queue is bounded by the number of distinct channels, not by the number
//! of events: a mass reconnect that touches one channel a thousand times
//! queues it once. Pushing never waits (the channel table pushes under its
//! shard lock); the task takes what is queued in batches.

use std::collections::{HashSet, VecDeque};

use parking_lot::Mutex;
use pubsub_proto::ChannelName;
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    order: VecDeque<ChannelName>,
    queued: HashSet<ChannelName>,
    closed: bool,
}

/// Channels waiting for a task, each at most once, in first-pushed order.
#[derive(Default)]
pub struct Worklist {
    state: Mutex<State>,
    ready: Notify,
}

impl Worklist {
    /// Queues `channel` unless it is queued already. Never waits.
    pub fn push(&self, channel: ChannelName) {
        let mut state = self.state.lock();
        if state.closed || state.queued.contains(&channel) {
            return;
        }
        state.queued.insert(channel.clone());
        state.order.push_back(channel);
        drop(state);
        self.ready.notify_one();
    }

    /// Stops the queue: the task's next `take` returns empty.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_one();
    }

    /// Waits until something is queued and takes up to `max` channels (at
    /// least one); an empty answer means the queue was closed.
    pub async fn take(&self, max: usize) -> Vec<ChannelName> {
        loop {
            {
                let mut state = self.state.lock();
                if state.closed {
                    return Vec::new();
                }
                if !state.order.is_empty() {
                    let count = max.max(1).min(state.order.len());
                    let taken: Vec<ChannelName> = state.order.drain(..count).collect();
                    for channel in &taken {
                        state.queued.remove(channel);
                    }
                    return taken;
                }
            }
            // `notify_one` keeps a permit when nobody waits, so a push
            // between the look above and this wait is not missed.
            self.ready.notified().await;
        }
    }

    /// Channels queued now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    #[tokio::test]
    async fn channels_are_queued_once_in_order() {
        let list = Worklist::default();
        for name in ["a", "b", "a", "c", "b"] {
            list.push(ch(name));
        }
        assert_eq!(list.len(), 3);
        assert_eq!(list.take(2).await, [ch("a"), ch("b")]);
        list.push(ch("a"));
        assert_eq!(list.take(10).await, [ch("c"), ch("a")]);
        list.close();
        assert!(list.take(10).await.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_task_is_woken_by_a_push() {
        let list = std::sync::Arc::new(Worklist::default());
        let waiter = tokio::spawn({
            let list = list.clone();
            async move { list.take(5).await }
        });
        tokio::task::yield_now().await;
        list.push(ch("x"));
        assert_eq!(waiter.await.unwrap(), [ch("x")]);
    }
}
