//! Server-side operations that reach every node: a backend's request
//! (`POST /api/disconnect`, `/api/subscribe`, `/api/unsubscribe`) becomes a
//! [`Command`], sent to each live node
//! through the broker ([`crate::hub::Hub::send_to_node`]); each node's
//! control task ([`run`]) applies the commands addressed to it to its own
//! sessions.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use pubsub_proto::{ChannelName, close};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::frame::CloseRequest;
use crate::node::Node;
use crate::order::Order;
use crate::peer::Peer;

/// What a node is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Close the connections of `user` (every one it has), or the one
    /// connection `client`, with `code` ([`close::LOGGED_OUT`] or
    /// [`close::DISCONNECTED`]).
    Disconnect {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        code: u16,
    },
    /// Subscribe the connections of `user` (or the one connection
    /// `client`) to `channel`: a server-side subscription.
    Subscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        channel: String,
    },
    /// Answer call `call` of node `reply_to` with this node's page of
    /// channels ([`Command::ChannelsPage`]).
    Channels {
        reply_to: String,
        call: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pattern: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        limit: usize,
    },
    /// One node's answer to [`Command::Channels`]: its channels with local
    /// subscribers, in name order, with their counts.
    ChannelsPage {
        call: u64,
        node: String,
        channels: Vec<(String, usize)>,
    },
    /// Hand `commands` (JSON texts) to session stream `session` on this
    /// node, POSTed on node `reply_to`; answer its call `call` with
    /// [`Command::StreamDelivered`].
    StreamCommands {
        reply_to: String,
        call: u64,
        session: String,
        /// JSON texts, or (with `binary`) base64 of protobuf commands.
        commands: Vec<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        binary: bool,
    },
    /// What became of [`Command::StreamCommands`]: `accepted`,
    /// `unknown_session` or `queue_full`.
    StreamDelivered { call: u64, outcome: String },
    /// Remove the connections of `user` (or `client`) from `channel`.
    Unsubscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        channel: String,
    },
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The close reason sent with each code backends may choose.
pub fn disconnect_reason(code: u16) -> Option<&'static str> {
    match code {
        close::LOGGED_OUT => Some("logged out"),
        close::DISCONNECTED => Some("disconnected by the server"),
        _ => None,
    }
}

/// The connections a command is about: every one of `user`, or the one
/// connection `client`.
fn target<'a>(user: &'a Option<String>, client: &'a Option<String>) -> impl Fn(&Peer) -> bool + 'a {
    move |peer| match (user, client) {
        (Some(user), _) => peer.who().is_some_and(|who| *who.user == **user),
        (None, Some(client)) => peer.client() == *client,
        (None, None) => false,
    }
}

/// Most channels one page may hold (`GET /api/channels?limit=`).
pub const MAX_PAGE: usize = 1000;

/// Applies one command to this node's sessions; returns how many it
/// reached.
async fn apply(node: &Arc<Node>, command: Command) -> usize {
    let registry = &node.clients.registry;
    match command {
        Command::Channels {
            reply_to,
            call,
            pattern,
            after,
            limit,
        } => {
            let page = node
                .hub
                .channel_page(pattern.as_deref(), after.as_deref(), limit.min(MAX_PAGE));
            let answer = Command::ChannelsPage {
                call,
                node: node.config.node_id.clone(),
                channels: page
                    .iter()
                    .map(|(name, n)| (name.as_str().to_owned(), *n))
                    .collect(),
            };
            if let Err(error) = node.hub.send_to_node(&reply_to, &answer.encode()).await {
                tracing::warn!(%error, to = reply_to, "could not answer a channels call");
            }
            page.len()
        }
        // Answers go to the waiting call as they came (see `run`).
        Command::ChannelsPage { .. } | Command::StreamDelivered { .. } => 0,
        Command::StreamCommands {
            reply_to,
            call,
            session,
            commands,
            binary,
        } => {
            let count = commands.len();
            let decoded: Option<Vec<Bytes>> = commands
                .into_iter()
                .map(|c| match binary {
                    false => Some(Bytes::from(c)),
                    true => base64::engine::general_purpose::STANDARD
                        .decode(c)
                        .ok()
                        .map(Bytes::from),
                })
                .collect();
            let outcome = match decoded {
                Some(commands) => node.clients.streams.deliver(&session, commands, binary),
                // No node sends that: treated as for a session that is not here.
                None => crate::streams::Delivered::Unknown,
            };
            let answer = Command::StreamDelivered {
                call,
                outcome: outcome.as_str().to_owned(),
            }
            .encode();
            // Answered off this loop: a client's POST waits on it, and the
            // next node message should not wait for this one's round trip.
            let node = node.clone();
            tokio::spawn(async move {
                if let Err(error) = node.hub.send_to_node(&reply_to, &answer).await {
                    tracing::warn!(%error, to = reply_to, "could not answer forwarded stream commands");
                }
            });
            count
        }
        Command::Disconnect { user, client, code } => {
            let Some(reason) = disconnect_reason(code) else {
                return 0;
            };
            let request = CloseRequest::now(code, reason);
            registry.each_where(target(&user, &client), |peer| peer.outbox.close(request.clone()))
        }
        Command::Subscribe {
            user,
            client,
            channel,
        } => order(node, &user, &client, &channel, Order::Subscribe),
        Command::Unsubscribe {
            user,
            client,
            channel,
        } => order(node, &user, &client, &channel, Order::Unsubscribe),
    }
}

/// Hands the matching sessions an order about `channel`; returns how many.
fn order(
    node: &Node,
    user: &Option<String>,
    client: &Option<String>,
    channel: &str,
    make: fn(ChannelName) -> Order,
) -> usize {
    let Ok(channel) = ChannelName::parse(channel) else {
        return 0;
    };
    node.clients.registry.each_where(target(user, client), |peer| {
        peer.outbox.order(make(channel.clone()));
    })
}

/// Applies the commands addressed to this node until the inbox closes.
pub async fn run(node: Arc<Node>, mut inbox: mpsc::Receiver<Bytes>) {
    while let Some(message) = inbox.recv().await {
        match serde_json::from_slice::<Command>(&message) {
            Ok(Command::ChannelsPage { call, .. } | Command::StreamDelivered { call, .. }) => {
                node.calls.answer(call, message)
            }
            Ok(command) => {
                // Questions and a client's own commands are not operations.
                let logged = match &command {
                    Command::Channels { .. }
                    | Command::ChannelsPage { .. }
                    | Command::StreamCommands { .. }
                    | Command::StreamDelivered { .. } => None,
                    other => Some(other.clone()),
                };
                let reached = apply(&node, command).await;
                if let Some(command) = logged {
                    tracing::info!(?command, reached, "server-side operation applied");
                }
            }
            Err(error) => tracing::warn!(%error, "dropping a node message that is not a command"),
        }
    }
}
