//! The server-side operations on connections, on every node:
//! `POST /api/disconnect` (close a user's connections, or one client's),
//! `POST /api/subscribe` and `POST /api/unsubscribe` (add or remove them
//! to or from a channel). Each request becomes a [`Command`] sent to every
//! live node; the answer names the nodes it was sent to, and each applies
//! it within milliseconds.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use pubsub_proto::close;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{Failure, parse_channel, read_body};
use crate::config::Scope;
use crate::control::Command;
use crate::node::Node;
use crate::response::{Body, json_response};

/// Longest user or client id accepted.
const MAX_ID_LEN: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    user: Option<String>,
    client: Option<String>,
    code: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelRequest {
    user: Option<String>,
    client: Option<String>,
    channel: String,
}

/// `POST /api/disconnect`: `{"user":"42"}` (or `{"client":"gw-1-Qx3z-7"}`,
/// with an optional `code`: 4011 logged out, the default, or 4010) →
/// `{"nodes":["gw-1","gw-2"]}`.
pub async fn disconnect(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    answer(
        async {
            let parsed: DisconnectRequest = parse(&node, request).await?;
            let (user, client) = target(parsed.user, parsed.client)?;
            let code = disconnect_code(parsed.code)?;
            send_to_all(&node, Command::Disconnect { user, client, code }).await
        }
        .await,
    )
}

/// `POST /api/subscribe`: `{"user":"42","channel":"inbox:42"}` (or
/// `client` instead of `user`) → `{"nodes":[…]}`. Each connection of the
/// user subscribes and is told with a `subscribed` notice marked `server`.
pub async fn subscribe(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    channel_command(node, request, |user, client, channel| Command::Subscribe {
        user,
        client,
        channel,
    })
    .await
}

/// `POST /api/unsubscribe`: the same body as subscribe; each connection of
/// the user leaves the channel and is told with an `unsubscribed` notice
/// marked `server`.
pub async fn unsubscribe(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    channel_command(node, request, |user, client, channel| Command::Unsubscribe {
        user,
        client,
        channel,
    })
    .await
}

/// What subscribe and unsubscribe share: the body, then the command `make`
/// builds, sent to every node.
async fn channel_command(
    node: Arc<Node>,
    request: Request<Incoming>,
    make: fn(Option<String>, Option<String>, String) -> Command,
) -> Response<Body> {
    answer(
        async {
            let parsed: ChannelRequest = parse(&node, request).await?;
            let (user, client) = target(parsed.user, parsed.client)?;
            let channel = parse_channel(&parsed.channel)?.as_str().to_owned();
            send_to_all(&node, make(user, client, channel)).await
        }
        .await,
    )
}

/// The close code of a disconnect: 4011 (the default) or 4010.
pub(crate) fn disconnect_code(code: Option<u16>) -> Result<u16, Failure> {
    let code = code.unwrap_or(close::LOGGED_OUT);
    if crate::control::disconnect_reason(code).is_none() {
        return Err(Failure::bad_request(format!(
            "`code` must be {} (logged out: do not reconnect) or {} (disconnected: reconnect)",
            close::LOGGED_OUT,
            close::DISCONNECTED
        )));
    }
    Ok(code)
}

fn answer(result: Result<Value, Failure>) -> Response<Body> {
    match result {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(failure) => failure.into_response(),
    }
}

async fn parse<T: DeserializeOwned>(node: &Arc<Node>, request: Request<Incoming>) -> Result<T, Failure> {
    let body = read_body(node, request, Scope::Connections).await?;
    serde_json::from_slice(&body).map_err(|e| Failure::bad_request(format!("invalid request body: {e}")))
}

/// Exactly one of `user` and `client`, each 1 to [`MAX_ID_LEN`] characters.
pub(crate) fn target(
    user: Option<String>,
    client: Option<String>,
) -> Result<(Option<String>, Option<String>), Failure> {
    match (user, client) {
        (Some(user), None) if !user.is_empty() && user.len() <= MAX_ID_LEN => Ok((Some(user), None)),
        (None, Some(client)) if !client.is_empty() && client.len() <= MAX_ID_LEN => Ok((None, Some(client))),
        _ => Err(Failure::bad_request(format!(
            "give exactly one of `user` and `client`, 1 to {MAX_ID_LEN} characters"
        ))),
    }
}

/// Sends `command` to every live node (this one included, even before its
/// first announcement); answers `{"nodes":[…]}`.
async fn send_to_all(node: &Arc<Node>, command: Command) -> Result<Value, Failure> {
    Ok(json!({ "nodes": send_everywhere(node, command).await? }))
}

/// Sends `command` to every live node (this one included, even before its
/// first announcement); returns their ids, sorted.
pub(crate) async fn send_everywhere(node: &Arc<Node>, command: Command) -> Result<Vec<String>, Failure> {
    let command = command.encode();
    let nodes = super::info::live_node_ids(node).await?;
    for target in &nodes {
        node.hub
            .send_to_node(target, &command)
            .await
            .map_err(Failure::from)?;
    }
    Ok(nodes)
}
