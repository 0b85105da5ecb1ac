//! The subscription manager: the one task that subscribes and unsubscribes
//! this node at the broker.
//!
//! The channel table reports channels whose local interest may have changed;
//! the manager compares the table with what it has subscribed and sends the
//! difference to the broker in batches. Because it is the only caller, the
//! broker sees the operations on one channel in order (an unsubscribe can
//! never overtake the subscribe that follows it), and many changes at once
//! (a mass reconnect) become a few batched calls.
//!
//! After subscribing, it reads each channel's position (epoch and last
//! offset) and activates the channel there: waiting peers join at that
//! position, and publications that arrived in between are merged by offset.

use std::collections::HashSet;
use std::sync::Arc;

use broker_adapter::{Broker, BrokerError};
use futures_util::StreamExt;
use pubsub_proto::ChannelName;

use super::channels::Channels;
use super::worklist::Worklist;

/// Most channels sent to the broker in one call.
const MAX_BATCH: usize = 4096;
/// Position reads in flight at once.
const READ_CONCURRENCY: usize = 64;

/// Runs until the worklist is closed.
pub async fn run(channels: Arc<Channels>, broker: Arc<dyn Broker>, dirty: Arc<Worklist>) {
    let mut subscribed: HashSet<ChannelName> = HashSet::new();
    loop {
        let mut batch = dirty.take(MAX_BATCH).await;
        if batch.is_empty() {
            return;
        }
        batch.sort_unstable();
        batch.dedup();
        let (mut subscribe, mut unsubscribe, mut reactivate) = (Vec::new(), Vec::new(), Vec::new());
        for channel in batch.drain(..) {
            match (channels.wants(&channel), subscribed.contains(&channel)) {
                (true, false) => subscribe.push(channel),
                (false, true) => unsubscribe.push(channel),
                // Left and rejoined before we got to it: still subscribed,
                // but the new entry needs its position.
                (true, true) => reactivate.push(channel),
                (false, false) => {}
            }
        }
        if !unsubscribe.is_empty() {
            if let Err(error) = broker.unsubscribe(&unsubscribe).await {
                // The broker connection is gone; it comes back with only the
                // channels we still want, so forgetting these is correct.
                tracing::warn!(%error, count = unsubscribe.len(), "broker unsubscribe failed");
            }
            for channel in &unsubscribe {
                subscribed.remove(channel);
            }
        }
        if !subscribe.is_empty() {
            match broker.subscribe(&subscribe).await {
                Ok(()) => {
                    subscribed.extend(subscribe.iter().cloned());
                    reactivate.append(&mut subscribe);
                }
                // Some channels failed (one shard of a cluster is down): the
                // others are subscribed.
                Err(BrokerError::Partial(failed, error)) => {
                    let failed: HashSet<ChannelName> = failed.into_iter().collect();
                    tracing::warn!(%error, count = failed.len(), "broker subscribe failed for some channels");
                    for channel in subscribe {
                        if failed.contains(&channel) {
                            channels.fail(&channel, &error);
                        } else {
                            subscribed.insert(channel.clone());
                            reactivate.push(channel);
                        }
                    }
                }
                // The broker refused something in the batch (an ACL, say) but
                // is up: find out channel by channel, so one refused channel
                // does not fail its neighbours.
                Err(BrokerError::Internal(_)) if subscribe.len() > 1 => {
                    for channel in subscribe {
                        match broker.subscribe(std::slice::from_ref(&channel)).await {
                            Ok(()) => {
                                subscribed.insert(channel.clone());
                                reactivate.push(channel);
                            }
                            Err(error) => {
                                tracing::warn!(%error, %channel, "broker refused a subscription");
                                channels.fail(&channel, &error);
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, count = subscribe.len(), "broker subscribe failed");
                    for channel in &subscribe {
                        channels.fail(channel, &error);
                    }
                }
            }
        }
        activate(&channels, &broker, reactivate).await;
    }
}

/// Reads the position of each channel and activates it there.
async fn activate(channels: &Arc<Channels>, broker: &Arc<dyn Broker>, list: Vec<ChannelName>) {
    let mut reads = futures_util::stream::iter(list.into_iter().filter_map(|channel| {
        // Gone meanwhile: nothing to activate.
        let options = channels.options(&channel)?;
        let broker = broker.clone();
        Some(async move {
            let position = broker.history(&channel, None, 0, options).await;
            (channel, position)
        })
    }))
    .buffer_unordered(READ_CONCURRENCY);
    while let Some((channel, position)) = reads.next().await {
        match position {
            Ok(position) => channels.activate(&channel, &position),
            Err(error) => {
                tracing::warn!(%error, %channel, "cannot read the channel's position");
                channels.fail(&channel, &error);
            }
        }
    }
}
