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
    let result = async {
        authorize(&node.config.api_keys, request.headers(), Scope::Read)?;
        let page = list_channels(&node, parse_query(&request)?).await?;
        let channels: Vec<Value> = page
            .channels
            .iter()
            .map(|(channel, subscribers)| json!({"channel": channel, "subscribers": subscribers}))
            .collect();
        Ok::<_, Failure>(json!({
            "channels": channels,
            "next_cursor": page.next_cursor,
            "nodes": page.nodes,
            "missing": page.missing,
        }))
    }
    .await;
    match result {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(failure) => failure.into_response(),
    }
}

/// What to list.
pub(crate) struct Query {
    pub pattern: Option<String>,
    pub cursor: Option<String>,
    pub limit: usize,
}

impl Query {
    /// Checks values that came from elsewhere than a query string (gRPC).
    pub(crate) fn new(
        pattern: Option<String>,
        cursor: Option<String>,
        limit: Option<usize>,
    ) -> Result<Query, Failure> {
        for (name, value) in [("pattern", &pattern), ("cursor", &cursor)] {
            if value
                .as_ref()
                .is_some_and(|v| v.is_empty() || v.len() > MAX_PATTERN)
            {
                return Err(Failure::bad_request(format!(
                    "`{name}` must be 1 to {MAX_PATTERN} bytes"
                )));
            }
        }
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Failure::bad_request(format!("`limit` must be 1 to {MAX_PAGE}")));
        }
        Ok(Query {
            pattern,
            cursor,
            limit,
        })
    }
}

/// One page of channels across nodes.
pub(crate) struct Page {
    pub channels: Vec<(String, usize)>,
    pub next_cursor: Option<String>,
    /// The nodes whose channels are in the page.
    pub nodes: Vec<String>,
    /// Live nodes that did not answer in time.
    pub missing: Vec<String>,
}

fn parse_query(request: &Request<Incoming>) -> Result<Query, Failure> {
    let (mut pattern, mut cursor, mut limit) = (None, None, None);
    for (key, value) in form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes()) {
        let value = value.into_owned();
        match &*key {
            "pattern" => pattern = Some(value),
            "cursor" => cursor = Some(value),
            "limit" => {
                limit = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| Failure::bad_request(format!("`limit` must be 1 to {MAX_PAGE}")))?,
                )
            }
            other => return Err(Failure::bad_request(format!("unknown query parameter {other:?}"))),
        }
    }
    Query::new(pattern, cursor, limit)
}

/// Asks every live node for its first page after the cursor and merges them.
pub(crate) async fn list_channels(node: &Arc<Node>, query: Query) -> Result<Page, Failure> {
    let nodes: BTreeSet<String> = super::info::live_node_ids(node).await?.into_iter().collect();

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
    let channels: Vec<(String, usize)> = counts.into_iter().take(query.limit).collect();
    let next_cursor = more
        .then(|| channels.last().map(|(name, _)| name.clone()))
        .flatten();
    Ok(Page {
        channels,
        next_cursor,
        nodes: nodes.iter().filter(|n| !waiting.contains(*n)).cloned().collect(),
        missing: waiting.into_iter().collect(),
    })
}
