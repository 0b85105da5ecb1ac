//! The subscription manager: the one task that subscribes and unsubscribes
//! this node at the broker.
//!
//! The channel table reports channels whose local interest may have changed;
//! the manager compares the table with what it has subscribed and sends the
//! difference to the broker in batches. Because it is the only caller, the
//! broker sees the operations on one channel in order (an unsubscribe can
//! never overtake the subscribe that follows it), and many changes at once
//! (a mass reconnect) become a few batched calls.

use std::collections::HashSet;
use std::sync::Arc;

use broker_adapter::{Broker, BrokerError};
use pubsub_proto::ChannelName;
use tokio::sync::mpsc;

use super::channels::Channels;

/// Most channels sent to the broker in one call.
const MAX_BATCH: usize = 4096;

/// Runs until the channel table is dropped.
pub async fn run(
    channels: Arc<Channels>,
    broker: Arc<dyn Broker>,
    mut dirty: mpsc::UnboundedReceiver<ChannelName>,
) {
    let mut subscribed: HashSet<ChannelName> = HashSet::new();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while dirty.recv_many(&mut batch, MAX_BATCH).await > 0 {
        batch.sort_unstable();
        batch.dedup();
        let (mut subscribe, mut unsubscribe, mut reactivate) = (Vec::new(), Vec::new(), Vec::new());
        for channel in batch.drain(..) {
            match (channels.wants(&channel), subscribed.contains(&channel)) {
                (true, false) => subscribe.push(channel),
                (false, true) => unsubscribe.push(channel),
                // Left and rejoined before we got to it: still subscribed.
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
        for channel in &reactivate {
            channels.activate(channel);
        }
        if !subscribe.is_empty() {
            match broker.subscribe(&subscribe).await {
                Ok(()) => {
                    for channel in subscribe {
                        channels.activate(&channel);
                        subscribed.insert(channel);
                    }
                }
                // The broker refused something in the batch (an ACL, say) but
                // is up: find out channel by channel, so one refused channel
                // does not fail its neighbours.
                Err(BrokerError::Internal(_)) if subscribe.len() > 1 => {
                    for channel in subscribe {
                        match broker.subscribe(std::slice::from_ref(&channel)).await {
                            Ok(()) => {
                                channels.activate(&channel);
                                subscribed.insert(channel);
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
    }
}
