//! The repair task: reads history for channels whose stream has a hole (or
//! that must catch up after the broker connection came back) and hands the
//! result back to the channel table, which merges it.
//!
//! Repairs run concurrently (bounded), so catching up thousands of channels
//! after an outage takes a few round trips of pipelined reads, not one each.

use std::sync::Arc;
use std::time::Duration;

use super::channels::Channels;
use super::worklist::Worklist;
use broker_adapter::{Broker, BrokerError};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

/// History reads in flight at once.
const CONCURRENCY: usize = 64;
/// Waits before the retries of a read the broker could not serve.
const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
];

/// Runs until the worklist is closed.
pub async fn run(channels: Arc<Channels>, broker: Arc<dyn Broker>, requests: Arc<Worklist>) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            taken = requests.take(CONCURRENCY.saturating_sub(in_flight.len())), if open && in_flight.len() < CONCURRENCY => {
                if taken.is_empty() {
                    open = false;
                }
                for channel in taken {
                    let Some((epoch, after, options)) = channels.repair_point(&channel) else {
                        continue;
                    };
                    let broker = broker.clone();
                    in_flight.push(async move {
                        let limit = options.history_size.max(1);
                        let mut history = broker.history(&channel, Some(after), limit, options).await;
                        // A broker that is briefly unavailable (a shard
                        // failing over) gets a few more tries: giving up
                        // turns the hole into a gap notice.
                        for delay in RETRY_DELAYS {
                            if !matches!(history, Err(BrokerError::Unavailable(_))) {
                                break;
                            }
                            tokio::time::sleep(delay).await;
                            history = broker.history(&channel, Some(after), limit, options).await;
                        }
                        if let Ok(read) = &history
                            && read.epoch == epoch
                            && read.offset < after
                        {
                            // The broker's sequence went back below what
                            // this node delivered: it lost publications.
                            tracing::warn!(
                                %channel,
                                delivered = after,
                                broker = read.offset,
                                "the channel's offset went back: starting a new epoch"
                            );
                            history = broker.restart_stream(&channel, &epoch, options).await;
                            for delay in RETRY_DELAYS {
                                if history.is_ok() {
                                    break;
                                }
                                tokio::time::sleep(delay).await;
                                history = broker.restart_stream(&channel, &epoch, options).await;
                            }
                        }
                        (channel, history)
                    });
                }
            }
            Some((channel, history)) = in_flight.next(), if !in_flight.is_empty() => {
                if let Err(error) = &history {
                    tracing::warn!(%channel, %error, "history read for a repair failed");
                }
                channels.repaired(&channel, history);
            }
        }
    }
}
