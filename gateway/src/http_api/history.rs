//! `GET /api/history`: a channel's position and its recent publications,
//! for backends and for clients that resync over HTTP.

use std::sync::Arc;

use base64::Engine as _;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::{Failure, authorize, parse_channel};
use crate::config::Scope;
use crate::node::Node;
use crate::response::{Body, json_response};

/// Largest `limit` of `GET /api/history`.
pub(crate) const MAX_HISTORY_LIMIT: usize = 1000;

/// `GET /api/history?channel=news&since=41&epoch=e1&limit=100`: the
/// channel's position and the publications after `since` (the latest ones
/// without `since`), oldest first.
pub async fn history(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    let result = async {
        authorize(&node.config.api_keys, request.headers(), Scope::Read)?;
        let query = HistoryQuery::parse(request.uri().query().unwrap_or(""))?;
        let channel = parse_channel(&query.channel)?;
        let page = read_history(&node, &channel, query.since, query.epoch.as_deref(), query.limit).await?;
        let mut answer = json!({
            "channel": channel.as_str(),
            "epoch": &*page.epoch,
            "offset": page.offset,
            "publications": page.publications.iter().map(stored_json).collect::<Vec<_>>(),
            "more": page.more,
        });
        if let Some(recovered) = page.recovered {
            answer["recovered"] = json!(recovered);
        }
        Ok::<_, Failure>(answer)
    }
    .await;
    match result {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(failure) => failure.into_response(),
    }
}

/// A page of a channel's history, for HTTP and gRPC alike.
pub(crate) struct HistoryPage {
    pub epoch: Arc<str>,
    pub offset: u64,
    pub publications: Vec<pubsub_proto::Publication>,
    /// More publications follow the last one returned.
    pub more: bool,
    /// With `since` only: whether every publication after it is here (or
    /// in the pages that follow).
    pub recovered: Option<bool>,
}

/// The channel's position and up to `limit` publications after `since`
/// (the latest `limit` without it); none if `epoch` is not the channel's.
pub(crate) async fn read_history(
    node: &Node,
    channel: &pubsub_proto::ChannelName,
    since: Option<u64>,
    epoch: Option<&str>,
    limit: usize,
) -> Result<HistoryPage, Failure> {
    let asked_since = since.is_some();
    let since = match since {
        Some(since) => since,
        None => {
            let position = node.hub.history(channel, None, 0).await.map_err(Failure::from)?;
            position.offset.saturating_sub(limit as u64)
        }
    };
    let history = node
        .hub
        .history(channel, Some(since), limit)
        .await
        .map_err(Failure::from)?;
    // An empty epoch at 0 is a channel that had no stream: its first
    // stream continues it.
    let same_epoch =
        epoch.is_none_or(|e| e == &*history.epoch || (e == broker_adapter::NO_STREAM && since == 0));
    let publications = if same_epoch {
        history.publications
    } else {
        Vec::new()
    };
    let complete_from_since = publications
        .first()
        .map_or(since >= history.offset, |p| p.offset == Some(since + 1));
    let last = publications.last().and_then(|p| p.offset).unwrap_or(since);
    Ok(HistoryPage {
        more: same_epoch && last < history.offset && publications.len() == limit,
        recovered: asked_since.then_some(same_epoch && complete_from_since),
        epoch: history.epoch,
        offset: history.offset,
        publications,
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveRequest {
    channel: String,
}

/// `POST /api/history/remove`: `{"channel":"news"}` → `{"channel":"news"}`.
/// Drops the channel's history, offset and epoch on the broker: the next
/// publication starts a new epoch (subscribers get a gap notice before it,
/// recovering clients `recovered: false`).
pub async fn remove_history(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    let result = async {
        let body = super::read_body(&node, request, Scope::History).await?;
        let parsed: RemoveRequest = serde_json::from_slice(&body)
            .map_err(|e| Failure::bad_request(format!("invalid request body: {e}")))?;
        let channel = parse_channel(&parsed.channel)?;
        node.hub.remove_history(&channel).await.map_err(Failure::from)?;
        Ok::<_, Failure>(json!({"channel": channel.as_str()}))
    }
    .await;
    match result {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(failure) => failure.into_response(),
    }
}

/// One stored publication as JSON: `data` if it is JSON, else `data_b64`.
fn stored_json(publication: &pubsub_proto::Publication) -> serde_json::Value {
    let mut item = json!({"offset": publication.offset});
    match std::str::from_utf8(&publication.data)
        .ok()
        .filter(|_| pubsub_proto::json::is_json(&publication.data))
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
    {
        Some(value) => item["data"] = value,
        None => item["data_b64"] = json!(base64::engine::general_purpose::STANDARD.encode(&publication.data)),
    }
    item
}

struct HistoryQuery {
    channel: String,
    since: Option<u64>,
    epoch: Option<String>,
    limit: usize,
}

impl HistoryQuery {
    fn parse(query: &str) -> Result<HistoryQuery, Failure> {
        let (mut channel, mut since, mut epoch, mut limit) = (None, None, None, 100);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "channel" => channel = Some(value.into_owned()),
                "since" => {
                    since = Some(value.parse::<u64>().map_err(|_| {
                        Failure::bad_request(format!(
                            "`since` must be an offset (unsigned integer), not {value:?}"
                        ))
                    })?)
                }
                "epoch" => epoch = Some(value.into_owned()),
                "limit" => {
                    limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|l| (1..=MAX_HISTORY_LIMIT).contains(l))
                        .ok_or_else(|| {
                            Failure::bad_request(format!(
                                "`limit` must be 1 to {MAX_HISTORY_LIMIT}, not {value:?}"
                            ))
                        })?
                }
                other => return Err(Failure::bad_request(format!("unknown query parameter {other:?}"))),
            }
        }
        let channel = channel.ok_or_else(|| Failure::bad_request("missing query parameter `channel`"))?;
        Ok(HistoryQuery {
            channel,
            since,
            epoch,
            limit,
        })
    }
}
