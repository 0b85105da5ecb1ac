//! One Redis: the supervisor's link.
//!
//! Two connections: a dedicated pub/sub connection (RESP3) subscribed to
//! the wanted channels and this node's probe channel, whose pushes go to
//! the listener ([`super::push`]), and a multiplexed connection for the
//! scripts and probes. A probe published every `probe_interval` must come
//! back within `probe_timeout`; Redis reporting no subscriber on the probe
//! channel, a late probe, a failed command or a closed connection all end
//! `serve` and the supervisor reconnects.

use std::collections::HashSet;
use std::sync::Arc;

use pubsub_proto::ChannelName;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::push::{PushHandler, Signals};
use super::sentinel::Sentinel;
use super::supervisor::Control;
use super::{Shared, classify};
use crate::{BrokerError, Health};

/// Most channels in one SUBSCRIBE or UNSUBSCRIBE command.
const BATCH: usize = 1000;

pub(super) struct Link {
    client: redis::Client,
    /// With Sentinel: where `client` comes from before each connection.
    sentinel: Option<Sentinel>,
}

impl Link {
    pub fn new(
        mut infos: Vec<redis::ConnectionInfo>,
        certificates: Option<redis::TlsCertificates>,
    ) -> Result<Link, BrokerError> {
        let info = infos
            .pop()
            .ok_or_else(|| BrokerError::Internal("no Redis URL given".into()))?;
        let client = match certificates {
            Some(certificates) => redis::Client::build_with_tls(info, certificates),
            None => redis::Client::open(info),
        }
        .map_err(|e| BrokerError::Internal(format!("invalid Redis settings: {e}")))?;
        Ok(Link {
            client,
            sentinel: None,
        })
    }

    pub fn into_client(self) -> redis::Client {
        self.client
    }

    /// A link to whichever server the sentinels name as the primary.
    pub fn with_sentinel(client: redis::Client, sentinel: Sentinel) -> Link {
        Link {
            client,
            sentinel: Some(sentinel),
        }
    }
}

/// A live pair of connections.
pub(super) struct Connected {
    pubsub: MultiplexedConnection,
    publisher: MultiplexedConnection,
    signals: Arc<Signals>,
}

impl super::supervisor::Link for Link {
    type Connected = Connected;
    const NAME: &'static str = "Redis";

    async fn connect(
        &mut self,
        shared: &Arc<Shared>,
        wanted: &HashSet<ChannelName>,
    ) -> Result<Connected, String> {
        if let Some(sentinel) = self.sentinel.as_mut() {
            self.client = sentinel.primary(shared.config.timeout).await?;
        }
        let timeout = Some(shared.config.timeout);
        let signals = Arc::new(Signals::default());
        let handler = PushHandler::new(shared, signals.clone());
        let pubsub_config = AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_push_sender(handler);
        let mut pubsub = self
            .client
            .get_multiplexed_async_connection_with_config(&pubsub_config)
            .await
            .map_err(|e| format!("pub/sub connection: {e}"))?;
        let publish_config = AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        let publisher = self
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

    fn up(&mut self, shared: &Shared, connected: &mut Connected, _: &HashSet<ChannelName>) {
        shared.route.set_single(connected.publisher.clone());
        shared.health.send_replace(Health::up());
    }

    async fn serve(
        &mut self,
        shared: &Arc<Shared>,
        mut connected: Connected,
        wanted: &mut HashSet<ChannelName>,
        control: &mut mpsc::Receiver<Control>,
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
                        let names: Vec<String> = channels.iter().map(|c| shared.names.channel(c.as_str())).collect();
                        for batch in names.chunks(BATCH) {
                            if let Err(error) = connected.pubsub.unsubscribe(batch).await {
                                // Forgotten either way: the new connection
                                // subscribes only what is still wanted.
                                let _ = reply.send(Ok(()));
                                return Some(format!("UNSUBSCRIBE failed: {error}"));
                            }
                        }
                        // Answered once Redis confirmed: nothing published
                        // afterwards reaches this node.
                        let _ = reply.send(Ok(()));
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
                    if self.sentinel.is_some() {
                        match super::sentinel::is_primary(&mut connected.publisher).await {
                            Ok(true) => {}
                            Ok(false) => return Some("the primary was demoted (Sentinel failover)".into()),
                            Err(error) => return Some(error),
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
}
