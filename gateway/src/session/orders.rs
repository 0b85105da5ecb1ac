//! What a session does with the orders of server-side operations
//! (`POST /api/subscribe`, `POST /api/unsubscribe`): the same hub calls as
//! the client's own commands, told to the client as notices marked
//! `server`. The backend is trusted, so channel permissions are not
//! checked; the per-connection subscription limit still holds.

use pubsub_proto::{ChannelName, Reply, ServerMessage};

use super::{Outcome, Session};
use crate::hub::SubscribeRequest;
use crate::order::Order;

impl Session {
    pub(super) fn on_order(&mut self, order: Order) {
        match order {
            Order::Subscribe(channel) => self.server_subscribe(channel),
            Order::Unsubscribe(channel) => self.server_unsubscribe(channel),
        }
    }

    fn server_subscribe(&mut self, channel: ChannelName) {
        if self.subscriptions.contains(&channel) {
            return;
        }
        if self.subscriptions.len() >= self.node.config.max_subscriptions {
            self.node.metrics.reject("max_subscriptions");
            tracing::info!(
                peer = self.peer.id,
                %channel,
                "server-side subscribe skipped: the connection is at its subscription limit"
            );
            return;
        }
        self.subscriptions.insert(channel.clone());
        let (node, peer) = (self.node.clone(), self.peer.clone());
        self.pending = Some(Box::pin(async move {
            let request = SubscribeRequest {
                id: None,
                channel: channel.clone(),
                since: None,
                server: true,
            };
            match node.hub.subscribe(&peer, request).await {
                Ok(_) => Outcome::Done,
                Err(error) => {
                    tracing::warn!(peer = peer.id, %channel, %error, "server-side subscribe failed");
                    Outcome::SubscribeFailed(channel, None)
                }
            }
        }));
    }

    fn server_unsubscribe(&mut self, channel: ChannelName) {
        if self.subscriptions.remove(&channel) {
            self.node.hub.unsubscribe(&channel, self.peer.id);
            self.reply(ServerMessage {
                id: None,
                reply: Reply::Unsubscribed {
                    channel,
                    server: true,
                },
            });
        }
    }
}
