//! What a session does with each command: the checks (authentication,
//! permissions, limits) and the work (replies, hub calls).
//!
//! Checks come before work and each refusal has its documented error code:
//! `unauthorized` (no `connect` yet, or a bad token), `forbidden` (the
//! identity may not use the channel), `limit_exceeded` (too many
//! subscriptions), `rate_limited` (publishing too fast). A few refusals end
//! the connection: a bad token in `connect` (4001), a `refresh` for another
//! user (4003), publishing on regardless of `rate_limited` (4029).

use std::time::{Duration, Instant};

use pubsub_proto::{
    ChannelName, ClientCommand, Command, DecodeError, ErrorCode, Reply, ServerMessage, StreamPosition, close,
};

use super::{AuthEvent, AuthTimer, End, Outcome, Session, Step, error_code};
use crate::access;
use crate::hub::{Source, SubscribeRequest};
use crate::peer::Who;

/// How long before a token expires the client is told.
const EXPIRY_NOTICE: Duration = Duration::from_secs(30);
/// Window over which rate-limited publishes are counted.
const REFUSAL_WINDOW: Duration = Duration::from_secs(10);

impl Session {
    pub(super) fn on_command(&mut self, decoded: Result<ClientCommand, DecodeError>) -> Step {
        let ClientCommand { id, command } = match decoded {
            Ok(command) => command,
            Err(error) => {
                self.reply(error.into_reply());
                return Step::Continue;
            }
        };
        let authenticated = self.node.security.auth.is_none() || self.identity.is_some();
        if !authenticated && !matches!(command, Command::Connect { .. }) {
            self.node.metrics.reject("unauthorized");
            self.reply(ServerMessage::error(
                id,
                ErrorCode::Unauthorized,
                "authentication required: send connect with a token first",
            ));
            return Step::Continue;
        }
        match command {
            Command::Connect { token } => self.connect(id, token),
            Command::Subscribe { channel, since } => self.subscribe(id, channel, since),
            Command::Unsubscribe { channel } => {
                self.unsubscribe(id, channel);
                Step::Continue
            }
            Command::Publish { channel, data } => self.publish(id, channel, data),
            Command::Ping => {
                self.reply(ServerMessage {
                    id,
                    reply: Reply::Pong,
                });
                Step::Continue
            }
            Command::Refresh { token } => self.refresh(id, token),
            Command::Presence { channel } => self.presence(id, channel, false),
            Command::PresenceStats { channel } => self.presence(id, channel, true),
        }
    }

    /// `presence` and `presence_stats`: for a channel the connection is
    /// subscribed to or may subscribe to, in a namespace with presence.
    fn presence(&mut self, id: Option<u64>, channel: ChannelName, stats: bool) -> Step {
        if !self.subscriptions.contains(&channel)
            && let Err(message) = access::may_subscribe(
                self.node.security.auth.is_some(),
                self.node.config.namespaces.of(&channel),
                self.identity.as_deref(),
                &channel,
            )
        {
            self.node.metrics.reject("forbidden");
            self.reply(ServerMessage::error(
                id,
                ErrorCode::Forbidden,
                format!("may not read presence: {message}"),
            ));
            return Step::Continue;
        }
        let node = self.node.clone();
        Step::Wait(Box::pin(async move {
            let reply = if stats {
                node.hub
                    .presence_stats(&channel)
                    .await
                    .map(|s| Reply::PresenceStats {
                        channel,
                        clients: s.clients,
                        users: s.users,
                    })
            } else {
                node.hub
                    .presence(&channel)
                    .await
                    .map(|members| Reply::Presence { channel, members })
            };
            let reply = reply.unwrap_or_else(|error| Reply::Error {
                code: error_code(&error),
                message: error.public_message(),
            });
            Outcome::Reply(ServerMessage { id, reply })
        }))
    }

    fn connect(&mut self, id: Option<u64>, token: String) -> Step {
        if self.connected {
            self.reply(ServerMessage::error(
                id,
                ErrorCode::BadRequest,
                "already connected",
            ));
            return Step::Continue;
        }
        if let Some(auth) = &self.node.security.auth {
            // Authenticated at the upgrade already: the token is optional here.
            if !(self.identity.is_some() && token.is_empty()) {
                match auth.verify(&token) {
                    Ok(identity) => {
                        if let Some(current) = &self.identity
                            && current.user != identity.user
                        {
                            return self.refuse_identity_change(id);
                        }
                        self.identity = Some(Box::new(identity));
                    }
                    Err(message) => {
                        self.node.metrics.reject("unauthorized");
                        self.reply(ServerMessage::error(id, ErrorCode::Unauthorized, message));
                        return Step::Violation(close::UNAUTHORIZED, "authentication failed");
                    }
                }
            }
            self.auth_timer = self.next_auth_timer();
        }
        self.connected = true;
        self.peer.set_who(Who {
            user: self
                .identity
                .as_ref()
                .map_or_else(Default::default, |i| i.user.as_str().into()),
            info: self.identity.as_ref().and_then(|i| i.info.clone()),
        });
        self.reply(ServerMessage {
            id,
            reply: Reply::Connected {
                client: self.peer.client(),
                node: self.node.config.node_id.clone(),
                ping_interval_ms: self.node.config.ping_interval.as_millis() as u64,
            },
        });
        Step::Continue
    }

    fn refresh(&mut self, id: Option<u64>, token: String) -> Step {
        let Some(auth) = &self.node.security.auth else {
            self.reply(ServerMessage::error(
                id,
                ErrorCode::BadRequest,
                "refresh needs token authentication, which is not enabled on this node",
            ));
            return Step::Continue;
        };
        match auth.verify(&token) {
            Ok(identity) => {
                if self
                    .identity
                    .as_ref()
                    .is_some_and(|current| current.user != identity.user)
                {
                    return self.refuse_identity_change(id);
                }
                let expires_in_ms = identity.expires_in().as_millis() as u64;
                self.identity = Some(Box::new(identity));
                self.auth_timer = self.next_auth_timer();
                self.reply(ServerMessage {
                    id,
                    reply: Reply::Refreshed { expires_in_ms },
                });
            }
            // The connection lives on until its current token expires.
            Err(message) => {
                self.node.metrics.reject("unauthorized");
                self.reply(ServerMessage::error(id, ErrorCode::Unauthorized, message));
            }
        }
        Step::Continue
    }

    fn refuse_identity_change(&mut self, id: Option<u64>) -> Step {
        self.node.metrics.reject("forbidden");
        self.reply(ServerMessage::error(
            id,
            ErrorCode::Forbidden,
            "a token for another user cannot replace this connection's",
        ));
        Step::Violation(close::FORBIDDEN, "token for another user")
    }

    fn subscribe(&mut self, id: Option<u64>, channel: ChannelName, since: Option<StreamPosition>) -> Step {
        if self.subscriptions.contains(&channel) {
            self.reply(ServerMessage::error(
                id,
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to {channel}"),
            ));
            return Step::Continue;
        }
        if self.subscriptions.len() >= self.node.config.max_subscriptions {
            self.node.metrics.reject("max_subscriptions");
            self.reply(ServerMessage::error(
                id,
                ErrorCode::LimitExceeded,
                format!(
                    "at most {} subscriptions per connection",
                    self.node.config.max_subscriptions
                ),
            ));
            return Step::Continue;
        }
        if let Some(bucket) = self.subscribes.as_mut()
            && !bucket.try_take()
        {
            self.node.metrics.reject("subscribe_rate");
            self.reply(ServerMessage::error(
                id,
                ErrorCode::RateLimited,
                format!(
                    "at most {} subscribes per second per connection; retry shortly",
                    self.node.config.subscribe_rate
                ),
            ));
            return Step::Continue;
        }
        let namespace = self.node.config.namespaces.of(&channel);
        if let Err(message) = access::may_subscribe(
            self.node.security.auth.is_some(),
            namespace,
            self.identity.as_deref(),
            &channel,
        ) {
            self.node.metrics.reject("forbidden");
            self.reply(ServerMessage::error(id, ErrorCode::Forbidden, message));
            return Step::Continue;
        }
        self.subscriptions.insert(channel.clone());
        let (node, peer) = (self.node.clone(), self.peer.clone());
        Step::Wait(Box::pin(async move {
            let request = SubscribeRequest {
                id,
                channel: channel.clone(),
                since,
                server: false,
            };
            match node.hub.subscribe(&peer, request).await {
                Ok(_) => Outcome::Done,
                Err(error) => {
                    let reply = ServerMessage::error(
                        id,
                        error_code(&error),
                        format!("cannot subscribe to {channel}: {}", error.public_message()),
                    );
                    Outcome::SubscribeFailed(channel, Some(reply))
                }
            }
        }))
    }

    fn unsubscribe(&mut self, id: Option<u64>, channel: ChannelName) {
        if self.subscriptions.remove(&channel) {
            self.node.hub.unsubscribe(&channel, self.peer.id);
            self.reply(ServerMessage {
                id,
                reply: Reply::Unsubscribed {
                    channel,
                    server: false,
                },
            });
        } else {
            self.reply(ServerMessage::error(
                id,
                ErrorCode::NotSubscribed,
                format!("not subscribed to {channel}"),
            ));
        }
    }

    fn publish(&mut self, id: Option<u64>, channel: ChannelName, data: bytes::Bytes) -> Step {
        let namespace = self.node.config.namespaces.of(&channel);
        if let Err(message) = access::may_publish(
            self.node.security.auth.is_some(),
            namespace,
            self.identity.as_deref(),
            &channel,
        ) {
            self.node.metrics.reject("forbidden");
            self.reply(ServerMessage::error(id, ErrorCode::Forbidden, message));
            return Step::Continue;
        }
        if let Some(limit) = self.publishes.as_mut()
            && !limit.bucket.try_take()
        {
            self.node.metrics.reject("publish_rate");
            if limit.since.elapsed() > REFUSAL_WINDOW {
                (limit.refused, limit.since) = (0, Instant::now());
            }
            limit.refused += 1;
            // Ignoring `rate_limited` for a while (three seconds' worth of
            // refused publishes within the window) ends the connection.
            if limit.refused > self.node.config.publish_rate.saturating_mul(3).max(30) {
                return Step::Violation(close::RATE_LIMITED, "publish rate limit ignored");
            }
            self.reply(ServerMessage::error(
                id,
                ErrorCode::RateLimited,
                format!(
                    "at most {} publications per second",
                    self.node.config.publish_rate
                ),
            ));
            return Step::Continue;
        }
        let node = self.node.clone();
        Step::Wait(Box::pin(async move {
            let reply = match node.hub.publish(channel.clone(), data, Source::Client).await {
                Ok(published) => Reply::Published {
                    channel,
                    position: Some(StreamPosition {
                        epoch: published.epoch.to_string(),
                        offset: published.offset,
                    }),
                },
                Err(error) => Reply::Error {
                    code: error_code(&error),
                    message: error.public_message(),
                },
            };
            Outcome::Reply(ServerMessage { id, reply })
        }))
    }

    /// The next authentication deadline: `connect` within the handshake
    /// timeout, then the token's expiry notice and expiry.
    pub(super) fn next_auth_timer(&self) -> Option<AuthTimer> {
        self.node.security.auth.as_ref()?;
        let (after, event) = match &self.identity {
            None if self.connected => return None,
            None => (self.node.config.handshake_timeout, AuthEvent::ConnectDeadline),
            Some(identity) => {
                let left = identity.expires_in();
                let notice = EXPIRY_NOTICE.min(left / 2);
                if left > notice && !notice.is_zero() {
                    (left - notice, AuthEvent::Expiring)
                } else {
                    (left, AuthEvent::Expired)
                }
            }
        };
        Some(AuthTimer {
            sleep: Box::pin(tokio::time::sleep(after)),
            event,
        })
    }

    /// The authentication timer fired.
    pub(super) fn on_auth_event(&mut self, event: AuthEvent) -> Option<End> {
        match event {
            AuthEvent::ConnectDeadline => {
                self.node.metrics.reject("unauthorized");
                Some(End::Violation(
                    close::UNAUTHORIZED,
                    "no connect within the handshake timeout",
                ))
            }
            AuthEvent::Expiring => {
                let left = self.identity.as_ref().map(|i| i.expires_in()).unwrap_or_default();
                self.reply(ServerMessage {
                    id: None,
                    reply: Reply::TokenExpiring {
                        expires_in_ms: left.as_millis() as u64,
                    },
                });
                self.auth_timer = Some(AuthTimer {
                    sleep: Box::pin(tokio::time::sleep(left)),
                    event: AuthEvent::Expired,
                });
                None
            }
            AuthEvent::Expired => Some(End::Violation(close::UNAUTHORIZED, "token expired")),
        }
    }
}
