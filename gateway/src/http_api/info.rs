//! `GET /api/info`: the live nodes of the deployment, from the registry
//! every node keeps its announcement in ([`announce_loop`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::{Failure, authorize};
use crate::config::Scope;
use crate::node::Node;
use crate::response::{Body, json_response};

/// How often a node announces itself, and how long an announcement holds:
/// a node that died drops out of `GET /api/info` within [`ANNOUNCE_TTL`].
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(5);
pub const ANNOUNCE_TTL: Duration = Duration::from_secs(15);

/// What a node says of itself.
fn announcement(node: &Node) -> serde_json::Value {
    let uptime = node.clients.epoch.elapsed();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    json!({
        "node": node.config.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "broker": node.hub.broker_kind(),
        "started_at": now.saturating_sub(uptime).as_secs(),
        "uptime_seconds": uptime.as_secs(),
        "connections": node.clients.registry.len(),
        "subscriptions": node.hub.subscription_count(),
        "channels": node.hub.channel_count(),
        "draining": node.lifecycle.is_draining(),
        "announced_at": now.as_secs(),
    })
}

/// Announces the node every [`ANNOUNCE_INTERVAL`] until the task is
/// aborted. A failed announcement (the broker not connected yet, or down)
/// is tried again sooner, from 250 ms doubling up to the interval, so a
/// node that starts before its broker is listed as soon as it connects.
pub async fn announce_loop(node: Arc<Node>) {
    let mut retry = RETRY_FIRST;
    loop {
        let info = announcement(&node).to_string();
        let wait = match node.hub.announce(info.as_bytes(), ANNOUNCE_TTL).await {
            Ok(()) => {
                retry = RETRY_FIRST;
                ANNOUNCE_INTERVAL
            }
            Err(error) => {
                tracing::debug!(%error, retry_in = ?retry, "node announcement failed");
                let wait = retry;
                retry = (retry * 2).min(ANNOUNCE_INTERVAL);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The first wait after a failed announcement.
const RETRY_FIRST: Duration = Duration::from_millis(250);

/// Every live node's announcement, sorted by node id (unreadable ones,
/// which no gateway writes, are skipped). This node's entry is its
/// numbers now, not its last announcement (and is there even before it).
pub(crate) async fn live_nodes(node: &Node) -> Result<Vec<serde_json::Value>, Failure> {
    let announced = node.hub.nodes().await.map_err(Failure::from)?;
    let mut nodes: Vec<serde_json::Value> = announced
        .iter()
        .filter_map(|raw| serde_json::from_slice::<serde_json::Value>(raw).ok())
        .filter(|value| value["node"].is_string() && value["node"] != node.config.node_id.as_str())
        .collect();
    nodes.push(announcement(node));
    nodes.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
    Ok(nodes)
}

/// The ids of every live node, this one included (even before its first
/// announcement), sorted: what a command to all nodes needs, without
/// taking this node's numbers (a walk of its channels).
pub(crate) async fn live_node_ids(node: &Node) -> Result<Vec<String>, Failure> {
    let announced = node.hub.nodes().await.map_err(Failure::from)?;
    let mut ids: Vec<String> = announced
        .iter()
        .filter_map(|raw| serde_json::from_slice::<serde_json::Value>(raw).ok())
        .filter_map(|value| value["node"].as_str().map(str::to_owned))
        .collect();
    ids.push(node.config.node_id.clone());
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// `GET /api/info` → `{"nodes":[{"node":"gw-1","version":...}, ...]}`,
/// sorted by node id.
pub async fn info(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    let result = async {
        authorize(&node.config.api_keys, request.headers(), Scope::Read)?;
        if request.uri().query().is_some_and(|q| !q.is_empty()) {
            return Err(Failure::bad_request("GET /api/info takes no query parameters"));
        }
        Ok::<_, Failure>(json!({ "nodes": live_nodes(&node).await? }))
    }
    .await;
    match result {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(failure) => failure.into_response(),
    }
}
