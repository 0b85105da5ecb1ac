//! The one task that owns a node's Redis connections, for one Redis and a
//! cluster alike.
//!
//! It loops: connect (the link's connections, the probe channels, every
//! wanted channel), report healthy, serve subscribe/unsubscribe requests
//! and probe until something shows the connection is dead. Then it reports
//! down, tells the listener (`Lost`), and reconnects with exponential
//! backoff and full jitter; after a successful reconnect it tells the
//! listener `Restored`. What connecting and serving mean is the [`Link`]'s
//! business ([`super::single`], [`super::cluster`]); this loop is the same
//! for both.
//!
//! Because it is the only user of the subscribing connection, the set of
//! wanted channels lives here, without locks. Requests arrive on a bounded
//! queue; when the broker is closed the queue closes and the task ends.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pubsub_proto::ChannelName;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::Shared;
use crate::{BoxFuture, BrokerError, BrokerEvent, Health};

/// A request from the broker handle.
pub(super) enum Control {
    Subscribe(Vec<ChannelName>, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(Vec<ChannelName>, oneshot::Sender<Result<(), BrokerError>>),
}

/// Sends a request to the supervisor and waits for its answer; a closed
/// broker answers `Unavailable`.
pub(super) fn request(
    control: Option<mpsc::Sender<Control>>,
    make: impl FnOnce(oneshot::Sender<Result<(), BrokerError>>) -> Control,
) -> BoxFuture<'static, Result<(), BrokerError>> {
    let (reply, done) = oneshot::channel();
    let message = make(reply);
    Box::pin(async move {
        let stopped = || BrokerError::Unavailable("the Redis broker is closed".into());
        let Some(control) = control else {
            return Err(stopped());
        };
        if control.send(message).await.is_err() {
            return Err(stopped());
        }
        done.await.unwrap_or_else(|_| Err(stopped()))
    })
}

/// How the supervisor reaches Redis: one server, or a cluster.
pub(super) trait Link: Send + 'static {
    /// A live set of connections.
    type Connected: Send;

    /// What to call the other side in logs ("Redis", "the Redis cluster").
    const NAME: &'static str;

    /// Connects and subscribes the probe channels and every `wanted`
    /// channel; an error says why it failed.
    fn connect(
        &mut self,
        shared: &Arc<Shared>,
        wanted: &HashSet<ChannelName>,
    ) -> impl Future<Output = Result<Self::Connected, String>> + Send;

    /// The connections are up: fill in the route and publish health.
    fn up(&mut self, shared: &Shared, connected: &mut Self::Connected, wanted: &HashSet<ChannelName>);

    /// Serves requests and probes until the connection is dead (returns
    /// why) or the broker is closed (`None`).
    fn serve(
        &mut self,
        shared: &Arc<Shared>,
        connected: Self::Connected,
        wanted: &mut HashSet<ChannelName>,
        control: &mut mpsc::Receiver<Control>,
    ) -> impl Future<Output = Option<String>> + Send;
}

pub(super) async fn run<L: Link>(shared: Arc<Shared>, mut link: L, mut control: mpsc::Receiver<Control>) {
    let mut wanted: HashSet<ChannelName> = HashSet::new();
    let mut failed_attempts = 0u32;
    let mut lost = false;
    loop {
        match link.connect(&shared, &wanted).await {
            Ok(mut connected) => {
                failed_attempts = 0;
                link.up(&shared, &mut connected, &wanted);
                if lost {
                    shared.metrics.reconnects.increment(1);
                    tracing::info!(
                        channels = wanted.len(),
                        "reconnected to {} and resubscribed",
                        L::NAME
                    );
                    shared.listener.on_event(BrokerEvent::Restored);
                } else {
                    tracing::info!("connected to {}", L::NAME);
                }
                let Some(reason) = link.serve(&shared, connected, &mut wanted, &mut control).await else {
                    return;
                };
                shared.route.clear();
                shared.health.send_replace(Health::down(reason.clone()));
                tracing::warn!(%reason, "connection to {} lost", L::NAME);
                shared.listener.on_event(BrokerEvent::Lost { reason });
                lost = true;
            }
            Err(reason) => {
                failed_attempts = failed_attempts.saturating_add(1);
                if failed_attempts == 1 || failed_attempts.is_multiple_of(20) {
                    tracing::warn!(%reason, attempts = failed_attempts, "cannot connect to {}", L::NAME);
                }
                shared.health.send_replace(Health::down(reason));
            }
        }
        let config = &shared.config;
        let delay = backoff(config.backoff_min, config.backoff_max, failed_attempts);
        if !wait_answering_unavailable(delay, &mut wanted, &mut control).await {
            return;
        }
    }
}

/// Full jitter: a uniform delay in [0, min(max, min * 2^attempt)], at least
/// a few milliseconds, so nodes that lost Redis together do not reconnect in
/// lockstep.
fn backoff(min: Duration, max: Duration, failed_attempts: u32) -> Duration {
    let ceiling = min.saturating_mul(1u32 << failed_attempts.min(16)).min(max);
    ceiling.mul_f64(fastrand::f64()).max(Duration::from_millis(10))
}

/// Sleeps `delay` while answering requests: subscribes fail (Redis is not
/// there), unsubscribes just forget the channel. Returns false when the
/// broker was closed.
async fn wait_answering_unavailable(
    delay: Duration,
    wanted: &mut HashSet<ChannelName>,
    control: &mut mpsc::Receiver<Control>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..30 {
            let delay = backoff(min, max, attempt);
            assert!(delay >= Duration::from_millis(10) && delay <= max, "{delay:?}");
        }
        assert!(backoff(min, max, 0) <= min);
    }
}
