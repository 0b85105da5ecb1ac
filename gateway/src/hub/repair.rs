//! The repair task: reads history for channels whose stream has a hole (or
//! that must catch up after the broker connection came back) and hands the
//! result back to the channel table, which merges it.
//!
//! Repairs run concurrently (bounded), so catching up thousands of channels
//! after an outage takes a few round trips of pipelined reads, not one each.

use std::sync::Arc;

use broker_adapter::Broker;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use pubsub_proto::ChannelName;
use tokio::sync::mpsc;

use super::channels::Channels;

/// History reads in flight at once.
const CONCURRENCY: usize = 64;

/// Runs until the channel table's sender is dropped.
pub async fn run(
    channels: Arc<Channels>,
    broker: Arc<dyn Broker>,
    mut requests: mpsc::UnboundedReceiver<ChannelName>,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            request = requests.recv(), if open && in_flight.len() < CONCURRENCY => match request {
                Some(channel) => {
                    let Some((after, options)) = channels.repair_point(&channel) else {
                        continue;
                    };
                    let broker = broker.clone();
                    in_flight.push(async move {
                        let limit = options.history_size.max(1);
                        let history = broker.history(&channel, Some(after), limit, options).await;
                        (channel, history)
                    });
                }
                None => open = false,
            },
            Some((channel, history)) = in_flight.next(), if !in_flight.is_empty() => {
                if let Err(error) = &history {
                    tracing::warn!(%channel, %error, "history read for a repair failed");
                }
                channels.repaired(&channel, history);
            }
        }
    }
}
