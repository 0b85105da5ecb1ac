//! `POST /api/disconnect`: close a user's connections (or one client's) on
//! every node.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use pubsub_proto::close;
use serde::Deserialize;
use serde_json::json;

use super::{Failure, read_body};
use crate::control::Command;
use crate::node::Node;
use crate::response::{Body, json_response};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    user: Option<String>,
    client: Option<String>,
    code: Option<u16>,
}

/// Longest user or client id accepted.
const MAX_ID_LEN: usize = 256;

/// `POST /api/disconnect`: `{"user":"42"}` (or `{"client":"gw-1-Qx3z-7"}`,
/// with an optional `code`: 4011 logged out, the default, or 4010) →
/// `{"nodes":["gw-1","gw-2"]}`, the nodes the command was sent to. Each
/// closes the matching connections within milliseconds.
pub async fn disconnect(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    let result = async {
        let body = read_body(&node, request).await?;
        let parsed: DisconnectRequest = serde_json::from_slice(&body)
            .map_err(|e| Failure::bad_request(format!("invalid request body: {e}")))?;
        let (user, client) = match (parsed.user, parsed.client) {
            (Some(user), None) if !user.is_empty() && user.len() <= MAX_ID_LEN => (Some(user), None),
            (None, Some(client)) if !client.is_empty() && client.len() <= MAX_ID_LEN => (None, Some(client)),
            _ => {
                return Err(Failure::bad_request(format!(
                    "give exactly one of `user` and `client`, 1 to {MAX_ID_LEN} characters"
                )));
            }
        };
        let code = parsed.code.unwrap_or(close::LOGGED_OUT);
        if crate::control::disconnect_reason(code).is_none() {
            return Err(Failure::bad_request(format!(
                "`code` must be {} (logged out: do not reconnect) or {} (disconnected: reconnect)",
                close::LOGGED_OUT,
                close::DISCONNECTED
            )));
        }
        let command = Command::Disconnect { user, client, code }.encode();
        let mut nodes: Vec<String> = super::info::live_nodes(&node)
            .await?
            .iter()
            .filter_map(|info| info["node"].as_str().map(str::to_owned))
            .collect();
        // This node, even before its first announcement.
        if !nodes.contains(&node.config.node_id) {
            nodes.push(node.config.node_id.clone());
        }
        nodes.sort();
        for target in &nodes {
            node.hub
                .send_to_node(target, &command)
                .await
                .map_err(Failure::from)?;
        }
        Ok::<_, Failure>(json!({ "nodes": nodes }))
    }
    .await;
    match result {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(failure) => failure.into_response(),
    }
}
