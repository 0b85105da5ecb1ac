//! The one task that owns this node's Redis connections.
//!
//! It loops: connect (pub/sub connection with the push handler, publishing
//! connection), subscribe the probe channel and every wanted channel in
//! batches, report healthy, then serve subscribe/unsubscribe requests and
//! probe the subscription until something shows the connection is dead.
//! Then it reports down, tells the listener (`Lost`), and reconnects with
//! exponential backoff and full jitter; after a successful reconnect it
//! tells the listener `Restored`.
//!
//! Because it is the only user of the pub/sub connection, the set of wanted
//! channels lives here, without locks.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use pubsub_proto::ChannelName;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

use super::push::{PushHandler, Signals};
use super::{Shared, classify};
use crate::{BrokerError, BrokerEvent, Health};

/// Most channels in one SUBSCRIBE or UNSUBSCRIBE command.
const BATCH: usize = 1000;

/// A request from the broker handle.
pub(super) enum Control {
    Subscribe(Vec<ChannelName>, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(Vec<ChannelName>, oneshot::Sender<Result<(), BrokerError>>),
}

/// Sends a request to a supervisor and waits for its answer; a supervisor
/// that is gone answers `Internal`. Both Redis brokers use it.
pub(super) fn request(
    control: &mpsc::UnboundedSender<Control>,
    make: impl FnOnce(oneshot::Sender<Result<(), BrokerError>>) -> Control,
) -> crate::BoxFuture<'static, Result<(), BrokerError>> {
    let (reply, done) = oneshot::channel();
    let sent = control.send(make(reply));
    Box::pin(async move {
        let stopped = || BrokerError::Internal("Redis supervisor stopped".into());
        if sent.is_err() {
            return Err(stopped());
        }
        done.await.unwrap_or_else(|_| Err(stopped()))
    })
}

/// A live pair of connections.
struct Connected {
    pubsub: MultiplexedConnection,
    publisher: MultiplexedConnection,
    signals: Arc<Signals>,
}

pub(super) async fn run(shared: Arc<Shared>, mut control: mpsc::UnboundedReceiver<Control>) {
    let mut wanted: HashSet<ChannelName> = HashSet::new();
    let mut failed_attempts = 0u32;
    let mut lost = false;
    loop {
        match connect(&shared, &wanted).await {
            Ok(connected) => {
                failed_attempts = 0;
                *shared.publisher.write() = Some(connected.publisher.clone());
                shared.health.send_replace(Health::up());
                if lost {
                    shared.metrics.reconnects.increment(1);
                    tracing::info!(channels = wanted.len(), "reconnected to Redis and resubscribed");
                    shared.listener.on_event(BrokerEvent::Restored);
                } else {
                    tracing::info!("connected to Redis");
                }
                let Some(reason) = serve(&shared, connected, &mut wanted, &mut control).await else {
                    return;
                };
                *shared.publisher.write() = None;
                shared.health.send_replace(Health::down(reason.clone()));
                tracing::warn!(%reason, "Redis connection lost");
                shared.listener.on_event(BrokerEvent::Lost { reason });
                lost = true;
            }
            Err(reason) => {
                failed_attempts = failed_attempts.saturating_add(1);
                if failed_attempts == 1 || failed_attempts.is_multiple_of(20) {
                    tracing::warn!(%reason, attempts = failed_attempts, "cannot connect to Redis");
                }
                shared.health.send_replace(Health::down(reason));
            }
        }
        let delay = backoff(
            shared.config.backoff_min,
            shared.config.backoff_max,
            failed_attempts,
        );
        if !wait_answering_unavailable(delay, &mut wanted, &mut control).await {
            return;
        }
    }
}

/// Full jitter: a uniform delay in [0, min(max, min * 2^attempt)], at least
/// a few milliseconds, so nodes that lost Redis together do not reconnect in
/// lockstep.
pub(super) fn backoff(min: Duration, max: Duration, failed_attempts: u32) -> Duration {
    let ceiling = min.saturating_mul(1u32 << failed_attempts.min(16)).min(max);
    ceiling.mul_f64(fastrand::f64()).max(Duration::from_millis(10))
}

/// Sleeps `delay` while answering requests: subscribes fail (Redis is not
/// there), unsubscribes just forget the channel. Returns false when the
/// broker handle is gone.
pub(super) async fn wait_answering_unavailable(
    delay: Duration,
    wanted: &mut HashSet<ChannelName>,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> bool {
    let until = Instant::now() + delay;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return true,
            request = control.recv() => match request {
                None => return false,
                Some(Control::Subscribe(_, reply)) => {
                    let _ = reply.send(Err(BrokerError::Unavailable("not connected to Redis".into())));
                }
                Some(Control::Unsubscribe(channels, reply)) => {
                    for channel in &channels {
                        wanted.remove(channel);
                    }
                    let _ = reply.send(Ok(()));
                }
            },
        }
    }
}

async fn connect(shared: &Arc<Shared>, wanted: &HashSet<ChannelName>) -> Result<Connected, String> {
    let timeout = Some(shared.config.timeout);
    let signals = Arc::new(Signals::default());
    let handler = PushHandler {
        listener: shared.listener.clone(),
        names: shared.names.clone(),
        signals: signals.clone(),
        metrics: shared.metrics.clone(),
    };
    let pubsub_config = AsyncConnectionConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout)
        .set_push_sender(handler);
    let mut pubsub = shared
        .client
        .get_multiplexed_async_connection_with_config(&pubsub_config)
        .await
        .map_err(|e| format!("pub/sub connection: {e}"))?;
    let publish_config = AsyncConnectionConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout);
    let publisher = shared
        .client
        .get_multiplexed_async_connection_with_config(&publish_config)
        .await
        .map_err(|e| format!("publishing connection: {e}"))?;
    pubsub
        .subscribe(shared.names.probe())
        .await
        .map_err(|e| format!("SUBSCRIBE probe: {e}"))?;
    let wanted: Vec<String> = wanted.iter().map(|c| shared.names.channel(c.as_str())).collect();
    for batch in wanted.chunks(BATCH) {
        pubsub
            .subscribe(batch)
            .await
            .map_err(|e| format!("resubscribing: {e}"))?;
    }
    Ok(Connected {
        pubsub,
        publisher,
        signals,
    })
}

/// Serves one connection until it dies; returns why, or `None` when the
/// broker handle was dropped.
async fn serve(
    shared: &Arc<Shared>,
    mut connected: Connected,
    wanted: &mut HashSet<ChannelName>,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> Option<String> {
    let mut tick = tokio::time::interval(shared.config.probe_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sequence = 0u64;
    let mut outstanding: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = connected.signals.disconnected.notified() => {
                return Some("the pub/sub connection closed".into());
            }
            request = control.recv() => match request? {
                Control::Subscribe(channels, reply) => {
                    let names: Vec<String> = channels.iter().map(|c| shared.names.channel(c.as_str())).collect();
                    let mut result = Ok(());
                    for batch in names.chunks(BATCH) {
                        if let Err(error) = connected.pubsub.subscribe(batch).await {
                            result = Err(error);
                            break;
                        }
                    }
                    match result.map_err(classify) {
                        Ok(()) => {
                            wanted.extend(channels);
                            let _ = reply.send(Ok(()));
                        }
                        // Redis answered with an error (an ACL refusal, say):
                        // the connection itself is fine.
                        Err(error @ BrokerError::Internal(_)) => {
                            let _ = reply.send(Err(error));
                        }
                        Err(error) => {
                            let _ = reply.send(Err(error.clone()));
                            return Some(format!("SUBSCRIBE failed: {error}"));
                        }
                    }
                }
                Control::Unsubscribe(channels, reply) => {
                    for channel in &channels {
                        wanted.remove(channel);
                    }
                    let _ = reply.send(Ok(()));
                    let names: Vec<String> = channels.iter().map(|c| shared.names.channel(c.as_str())).collect();
                    for batch in names.chunks(BATCH) {
                        if let Err(error) = connected.pubsub.unsubscribe(batch).await {
                            return Some(format!("UNSUBSCRIBE failed: {error}"));
                        }
                    }
                }
            },
            _ = tick.tick() => {
                if let Some((seq, sent)) = outstanding {
                    if connected.signals.probe_seen(shared.names.probe()) >= seq {
                        outstanding = None;
                    } else if sent.elapsed() > shared.config.probe_timeout {
                        shared.metrics.probe_failures.increment(1);
                        return Some(format!(
                            "probe not received back within {:?}: the subscription is not delivering",
                            shared.config.probe_timeout
                        ));
                    }
                }
                if outstanding.is_none() {
                    sequence += 1;
                    let receivers = redis::cmd("PUBLISH")
                        .arg(shared.names.probe())
                        .arg(sequence.to_string())
                        .query_async::<i64>(&mut connected.publisher)
                        .await;
                    match receivers {
                        Ok(0) => {
                            shared.metrics.probe_failures.increment(1);
                            return Some("Redis reports no subscriber on this node's probe channel".into());
                        }
                        Ok(_) => outstanding = Some((sequence, Instant::now())),
                        Err(error) => return Some(format!("probe PUBLISH failed: {error}")),
                    }
                }
            }
        }
    }
}
