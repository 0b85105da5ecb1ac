//! `GET /api/channels`: the channels with live subscribers across nodes,
//! with subscriber counts, in name order, a bounded page at a time.
//!
//! Nothing here scans the broker's keyspace: the node asks every live node
//! (through the broker, as a call with an id) for the first `limit` of its
//! own channels after the cursor that match the pattern, and merges the
//! pages. Each node answers from the channels it holds in memory, so the
//! cost is bounded by what the nodes hold, not by what the broker keeps.
//! Merging the first `limit` of each node gives exactly the first `limit`
//! overall, with full counts: a channel missing from one node's page sorts
//! after all `limit` names that node did send.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{Failure, authorize};
use crate::config::Scope;
use crate::control::{Command, MAX_PAGE};
use crate::node::Node;
use crate::response::{Body, json_response};

/// How long the node waits for the other nodes' pages; a node that has not
/// answered by then is listed in `missing`.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// The page size without `limit`.
const DEFAULT_LIMIT: usize = 100;
/// Longest pattern or cursor accepted.
const MAX_PATTERN: usize = 256;

/// `GET /api/channels?pattern=chat:*&limit=100&cursor=chat:42` →
/// `{"channels":[{"channel":"chat:7","subscribers":3}],"next_cursor":"chat:7","nodes":[…],"missing":[]}`.
pub async fn channels(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    match list(&node, &request).await {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(failure) => failure.into_response(),
    }
}

struct Query {
    pattern: Option<String>,
    cursor: Option<String>,
    limit: usize,
}

fn parse_query(request: &Request<Incoming>) -> Result<Query, Failure> {
    let mut query = Query {
        pattern: None,
        cursor: None,
        limit: DEFAULT_LIMIT,
    };
    for (key, value) in form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes()) {
        let value = value.into_owned();
        match &*key {
            "pattern" | "cursor" if value.is_empty() || value.len() > MAX_PATTERN => {
                return Err(Failure::bad_request(format!(
                    "`{key}` must be 1 to {MAX_PATTERN} bytes"
                )));
            }
            "pattern" => query.pattern = Some(value),
            "cursor" => query.cursor = Some(value),
            "limit" => {
                query.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| Failure::bad_request(format!("`limit` must be 1 to {MAX_PAGE}")))?;
            }
            other => return Err(Failure::bad_request(format!("unknown query parameter {other:?}"))),
        }
    }
    Ok(query)
}

async fn list(node: &Arc<Node>, request: &Request<Incoming>) -> Result<Value, Failure> {
    authorize(&node.config.api_keys, request.headers(), Scope::Read)?;
    let query = parse_query(request)?;
    let mut nodes: BTreeSet<String> = super::info::live_nodes(node)
        .await?
        .iter()
        .filter_map(|info| info["node"].as_str().map(str::to_owned))
        .collect();
    nodes.insert(node.config.node_id.clone());

    let mut call = node.calls.open();
    let question = Command::Channels {
        reply_to: node.config.node_id.clone(),
        call: call.id,
        pattern: query.pattern.clone(),
        after: query.cursor.clone(),
        limit: query.limit,
    }
    .encode();
    for target in &nodes {
        node.hub
            .send_to_node(target, &question)
            .await
            .map_err(Failure::from)?;
    }

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut waiting = nodes.clone();
    let mut some_page_full = false;
    let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
    while !waiting.is_empty() {
        let Ok(Some(answer)) = tokio::time::timeout_at(deadline, call.answers.recv()).await else {
            break;
        };
        let Ok(Command::ChannelsPage {
            node: from, channels, ..
        }) = serde_json::from_slice(&answer)
        else {
            continue;
        };
        if !waiting.remove(&from) {
            continue; // an answer twice, or from a node not asked
        }
        some_page_full |= channels.len() >= query.limit;
        for (channel, subscribers) in channels {
            *counts.entry(channel).or_default() += subscribers;
        }
    }

    let more = some_page_full || counts.len() > query.limit;
    let page: Vec<Value> = counts
        .into_iter()
        .take(query.limit)
        .map(|(channel, subscribers)| json!({"channel": channel, "subscribers": subscribers}))
        .collect();
    let next_cursor = more
        .then(|| {
            page.last()
                .and_then(|last| last["channel"].as_str().map(str::to_owned))
        })
        .flatten();
    Ok(json!({
        "channels": page,
        "next_cursor": next_cursor,
        "nodes": nodes.iter().filter(|n| !waiting.contains(*n)).collect::<Vec<_>>(),
        "missing": waiting,
    }))
}
