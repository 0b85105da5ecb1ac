//! Server-side operations that reach every node: a backend's request
//! (`POST /api/disconnect`) becomes a [`Command`], sent to each live node
//! through the broker ([`crate::hub::Hub::send_to_node`]); each node's
//! control task ([`run`]) applies the commands addressed to it to its own
//! sessions.

use std::sync::Arc;

use bytes::Bytes;
use pubsub_proto::close;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::frame::CloseRequest;
use crate::node::Node;

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

/// Applies one command to this node's sessions; returns how many it closed.
fn apply(node: &Node, command: Command) -> usize {
    match command {
        Command::Disconnect { user, client, code } => {
            let Some(reason) = disconnect_reason(code) else {
                return 0;
            };
            let request = CloseRequest::now(code, reason);
            node.clients.registry.close_where(
                |peer| match (&user, &client) {
                    (Some(user), _) => peer.who().is_some_and(|who| *who.user == **user),
                    (None, Some(client)) => peer.client() == *client,
                    (None, None) => false,
                },
                &request,
            )
        }
    }
}

/// Applies the commands addressed to this node until the inbox closes.
pub async fn run(node: Arc<Node>, mut inbox: mpsc::Receiver<Bytes>) {
    while let Some(message) = inbox.recv().await {
        match serde_json::from_slice::<Command>(&message) {
            Ok(command) => {
                let closed = apply(&node, command.clone());
                tracing::info!(?command, closed, "server-side operation applied");
            }
            Err(error) => tracing::warn!(%error, "dropping a node message that is not a command"),
        }
    }
}
