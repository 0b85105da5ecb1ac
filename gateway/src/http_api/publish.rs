//! Publishing from backends: `POST /api/publish` (one publication),
//! `POST /api/broadcast` (one publication to several channels) and
//! `POST /api/batch` (many publications in one request).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use broker_adapter::{Idempotency, Once};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use pubsub_proto::ChannelName;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::{Failure, add_outcome, idempotency, parse_channel, payload, present, read_body};
use crate::config::Scope;
use crate::hub::{HubError, Source};
use crate::node::Node;
use crate::response::{Body, json_response};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishRequest<'a> {
    #[serde(borrow)]
    pub(super) channel: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub(super) data: Option<&'a RawValue>,
    pub(super) data_b64: Option<String>,
    /// Publish once per key and channel within `--idempotency-window`.
    pub(super) idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastRequest<'a> {
    #[serde(borrow)]
    channels: Vec<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    data_b64: Option<String>,
    /// Applies to each channel: a repeated broadcast publishes nowhere
    /// twice.
    idempotency_key: Option<String>,
}

/// `POST /api/publish`: `{"channel":"news","data":<JSON>}` → `{"channel":"news"}`.
pub async fn publish(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    let result = async {
        let body = read_body(&node, request, Scope::Publish).await?;
        let parsed: PublishRequest<'_> = serde_json::from_slice(&body)
            .map_err(|e| Failure::bad_request(format!("invalid request body: {e}")))?;
        let channel = parse_channel(&parsed.channel)?;
        let data = payload(parsed.data, parsed.data_b64, &body)?;
        let once = idempotency(&node, parsed.idempotency_key)?;
        let outcome = node
            .hub
            .publish_once(channel.clone(), data, Source::Api, once)
            .await?;
        let mut answer = json!({"channel": channel.as_str()});
        add_outcome(&mut answer, &outcome);
        Ok::<_, Failure>(answer)
    }
    .await;
    match result {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(failure) => failure.into_response(),
    }
}

/// `POST /api/broadcast`: `{"channels":["a","b"],"data":<JSON>}` →
/// `{"results":[{"channel":"a"},{"channel":"b"}]}`. If any channel fails the
/// answer is 503 and each failed result carries its `error`.
pub async fn broadcast(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    let result = async {
        let body = read_body(&node, request, Scope::Publish).await?;
        let parsed: BroadcastRequest<'_> = serde_json::from_slice(&body)
            .map_err(|e| Failure::bad_request(format!("invalid request body: {e}")))?;
        let channels = broadcast_channels(parsed.channels.iter().map(|c| &**c))?;
        let data = payload(parsed.data, parsed.data_b64, &body)?;
        let once = idempotency(&node, parsed.idempotency_key)?;
        broadcast_all(&node, channels, data, once).await
    }
    .await;
    answer_many(result)
}

/// The channels of a broadcast: 1 to [`MAX_BATCH`], valid, none twice.
pub(crate) fn broadcast_channels<'a>(
    names: impl ExactSizeIterator<Item = &'a str>,
) -> Result<Vec<ChannelName>, Failure> {
    if names.len() == 0 {
        return Err(Failure::bad_request("`channels` must name at least one channel"));
    }
    if names.len() > MAX_BATCH {
        return Err(Failure::bad_request(format!(
            "at most {MAX_BATCH} channels per broadcast (got {})",
            names.len()
        )));
    }
    let mut channels = Vec::with_capacity(names.len());
    let mut seen = HashSet::with_capacity(names.len());
    for name in names {
        let channel = parse_channel(name)?;
        if !seen.insert(channel.clone()) {
            return Err(Failure::bad_request(format!("channel {channel} is listed twice")));
        }
        channels.push(channel);
    }
    Ok(channels)
}

/// Publishes `data` to every channel at once.
pub(crate) async fn broadcast_all(
    node: &Node,
    channels: Vec<ChannelName>,
    data: Bytes,
    once: Option<Idempotency>,
) -> Result<Vec<Outcome>, Failure> {
    if data.len() > node.hub.max_publication_size() {
        return Err(HubError::TooLarge {
            size: data.len(),
            limit: node.hub.max_publication_size(),
        }
        .into());
    }
    let outcomes = futures_util::future::join_all(channels.iter().map(|channel| {
        node.hub
            .publish_once(channel.clone(), data.clone(), Source::Api, once.clone())
    }))
    .await;
    Ok(channels.into_iter().zip(outcomes).collect())
}

/// Most publications in one `POST /api/batch`, and channels in one
/// `POST /api/broadcast`.
pub(crate) const MAX_BATCH: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest<'a> {
    #[serde(borrow)]
    publications: Vec<PublishRequest<'a>>,
}

/// `POST /api/batch`: `{"publications":[{"channel":"a","data":<JSON>},
/// {"channel":"b","data_b64":"..."}]}` → `{"results":[...]}`, one result per
/// publication in request order. Every publication is checked before any
/// is published (a bad one fails the request with 400, nothing published).
/// Publications to one channel are published in the order given, each once
/// the previous was accepted; different channels go concurrently, so a
/// batch costs about one broker round trip per publication to its busiest
/// channel, and one HTTP request for all.
pub async fn batch(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    let result = async {
        let body = read_body(&node, request, Scope::Publish).await?;
        let parsed: BatchRequest<'_> = serde_json::from_slice(&body)
            .map_err(|e| Failure::bad_request(format!("invalid request body: {e}")))?;
        if parsed.publications.is_empty() || parsed.publications.len() > MAX_BATCH {
            return Err(Failure::bad_request(format!(
                "`publications` must hold 1 to {MAX_BATCH} publications"
            )));
        }
        let mut items = Vec::with_capacity(parsed.publications.len());
        for (index, item) in parsed.publications.into_iter().enumerate() {
            let data = payload(item.data, item.data_b64, &body).map_err(|f| at(index, f))?;
            items.push(batch_item(
                &node,
                index,
                &item.channel,
                data,
                item.idempotency_key,
            )?);
        }
        Ok(publish_in_order(&node, items).await)
    }
    .await;
    answer_many(result)
}

/// Names the item a failure is about.
fn at(index: usize, failure: Failure) -> Failure {
    Failure(
        failure.0,
        failure.1,
        format!("publications[{index}]: {}", failure.2),
    )
}

/// Checks publication `index` of a batch: channel, size, idempotency key.
pub(crate) fn batch_item(
    node: &Node,
    index: usize,
    channel: &str,
    data: Bytes,
    key: Option<String>,
) -> Result<Item, Failure> {
    let channel = parse_channel(channel).map_err(|f| at(index, f))?;
    let limit = node.hub.max_publication_size();
    if data.len() > limit {
        return Err(at(
            index,
            HubError::TooLarge {
                size: data.len(),
                limit,
            }
            .into(),
        ));
    }
    let once = idempotency(node, key).map_err(|f| at(index, f))?;
    Ok((channel, data, once))
}

/// What publishing to one channel came to.
pub(crate) type Outcome = (ChannelName, Result<Once, HubError>);

/// One checked publication of a batch.
pub(crate) type Item = (ChannelName, Bytes, Option<Idempotency>);

/// Publishes a batch: per channel in the order given, each once the
/// previous was accepted (after a failure the channel's later items are
/// not attempted); different channels concurrently. One outcome per item,
/// in item order.
pub(crate) async fn publish_in_order(node: &Node, items: Vec<Item>) -> Vec<Outcome> {
    let mut by_channel: HashMap<&ChannelName, Vec<usize>> = HashMap::new();
    for (index, (channel, _, _)) in items.iter().enumerate() {
        by_channel.entry(channel).or_default().push(index);
    }
    let runs = by_channel.into_values().map(|indices| {
        let items = &items;
        async move {
            let mut outcomes = Vec::with_capacity(indices.len());
            let mut failed = false;
            for index in indices {
                let (channel, data, once) = &items[index];
                // Publishing later items after a failure would reorder the
                // channel once the caller retries the failed one.
                let outcome = if failed {
                    Err(HubError::Unavailable(
                        "not attempted: an earlier publication to this channel in the batch failed".into(),
                    ))
                } else {
                    node.hub
                        .publish_once(channel.clone(), data.clone(), Source::Api, once.clone())
                        .await
                };
                failed |= outcome.is_err();
                outcomes.push((index, outcome));
            }
            outcomes
        }
    });
    let mut outcomes: Vec<_> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    outcomes.sort_unstable_by_key(|(index, _)| *index);
    items
        .iter()
        .zip(outcomes)
        .map(|((channel, _, _), (_, outcome))| (channel.clone(), outcome))
        .collect()
}

/// The answer of a request that published several times: 200 with every
/// result, or (when any failed) 503 `unavailable` (500 `internal` when
/// every failure was a refusal, not an outage) with each failed result
/// carrying its `error`.
fn answer_many(result: Result<Vec<Outcome>, Failure>) -> Response<Body> {
    let outcomes = match result {
        Ok(outcomes) => outcomes,
        Err(failure) => return failure.into_response(),
    };
    // The first failure, and whether every failure was a refusal.
    let mut failed: Option<(String, bool)> = None;
    let results: Vec<serde_json::Value> = outcomes
        .into_iter()
        .map(|(channel, outcome)| {
            let mut result = json!({"channel": channel.as_str()});
            match outcome {
                Ok(once) => add_outcome(&mut result, &once),
                Err(error) => {
                    let Failure(_, code, message) = Failure::from(error);
                    result["error"] = json!({"code": code, "message": message});
                    let refused = code == "internal";
                    let first = failed.get_or_insert((message, true));
                    first.1 &= refused;
                }
            }
            result
        })
        .collect();
    match failed {
        None => json_response(StatusCode::OK, &json!({"results": results})),
        Some((message, all_refused)) => {
            let (status, code) = if all_refused {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            };
            json_response(
                status,
                &json!({
                    "error": {"code": code, "message": format!("not every publication was published: {message}")},
                    "results": results,
                }),
            )
        }
    }
}
