//! `GET /api/presence` and `GET /api/presence/stats`: who is in a channel,
//! across nodes, for backends.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::{Failure, authorize, parse_channel};
use crate::config::Scope;
use crate::node::Node;
use crate::response::{Body, json_response};

/// `GET /api/presence?channel=room:1`: the members, each with `client`,
/// `user` and `info` (if the connection's token had one).
pub async fn presence(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    answer(async {
        let channel = read(&node, &request)?;
        let members = node.hub.presence(&channel).await.map_err(Failure::from)?;
        let members: Vec<serde_json::Value> = members
            .iter()
            .map(|m| {
                let mut item = json!({"client": m.client, "user": m.user});
                if let Some(info) = m
                    .info
                    .as_deref()
                    .and_then(|raw| serde_json::from_slice::<serde_json::Value>(raw).ok())
                {
                    item["info"] = info;
                }
                item
            })
            .collect();
        Ok(json!({"channel": channel.as_str(), "members": members}))
    })
    .await
}

/// `GET /api/presence/stats?channel=room:1`: `clients` and distinct
/// `users` (anonymous connections count as clients only).
pub async fn presence_stats(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    answer(async {
        let channel = read(&node, &request)?;
        let stats = node.hub.presence_stats(&channel).await.map_err(Failure::from)?;
        Ok(json!({"channel": channel.as_str(), "clients": stats.clients, "users": stats.users}))
    })
    .await
}

/// The API key and the one query parameter, `channel`.
fn read(node: &Node, request: &Request<Incoming>) -> Result<pubsub_proto::ChannelName, Failure> {
    authorize(&node.config.api_keys, request.headers(), Scope::Read)?;
    let mut channel = None;
    for (key, value) in form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes()) {
        match &*key {
            "channel" => channel = Some(value.into_owned()),
            other => return Err(Failure::bad_request(format!("unknown query parameter {other:?}"))),
        }
    }
    let channel = channel.ok_or_else(|| Failure::bad_request("missing query parameter `channel`"))?;
    parse_channel(&channel)
}

async fn answer(result: impl Future<Output = Result<serde_json::Value, Failure>>) -> Response<Body> {
    match result.await {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(failure) => failure.into_response(),
    }
}
