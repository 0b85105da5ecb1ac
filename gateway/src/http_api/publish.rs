//! Publishing from backends: `POST /api/publish` (one publication),
//! `POST /api/broadcast` (one publication to several channels) and
//! `POST /api/batch` (many publications in one request).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use broker_adapter::Once;
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
        if parsed.channels.is_empty() {
            return Err(Failure::bad_request("`channels` must name at least one channel"));
        }
        if parsed.channels.len() > MAX_BATCH {
            return Err(Failure::bad_request(format!(
                "at most {MAX_BATCH} channels per broadcast (got {})",
                parsed.channels.len()
            )));
        }
        let mut channels = Vec::with_capacity(parsed.channels.len());
        let mut seen = HashSet::with_capacity(parsed.channels.len());
        for name in &parsed.channels {
            let channel = parse_channel(name)?;
            if !seen.insert(channel.clone()) {
                return Err(Failure::bad_request(format!("channel {channel} is listed twice")));
            }
            channels.push(channel);
        }
        let data = payload(parsed.data, parsed.data_b64, &body)?;
        let once = idempotency(&node, parsed.idempotency_key)?;
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
    .await;
    answer_many(result)
}

/// Most publications in one `POST /api/batch`, and channels in one
/// `POST /api/broadcast`.
const MAX_BATCH: usize = 1000;

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
        let limit = node.hub.max_publication_size();
        let mut items = Vec::with_capacity(parsed.publications.len());
        for (index, item) in parsed.publications.into_iter().enumerate() {
            let at = |failure: Failure| {
                Failure(
                    failure.0,
                    failure.1,
                    format!("publications[{index}]: {}", failure.2),
                )
            };
            let channel = parse_channel(&item.channel).map_err(at)?;
            let data = payload(item.data, item.data_b64, &body).map_err(at)?;
            if data.len() > limit {
                return Err(at(HubError::TooLarge {
                    size: data.len(),
                    limit,
                }
                .into()));
            }
            let once = idempotency(&node, item.idempotency_key).map_err(at)?;
            items.push((channel, data, once));
        }
        // Per channel, in request order.
        let mut by_channel: HashMap<&ChannelName, Vec<usize>> = HashMap::new();
        for (index, (channel, _, _)) in items.iter().enumerate() {
            by_channel.entry(channel).or_default().push(index);
        }
        let runs = by_channel.into_values().map(|indices| {
            let (node, items) = (&node, &items);
            async move {
                let mut outcomes = Vec::with_capacity(indices.len());
                let mut failed = false;
                for index in indices {
                    let (channel, data, once) = &items[index];
                    // After a failure the channel's later items are not
                    // attempted: publishing them would reorder the channel
                    // once the caller retries the failed one.
                    let outcome = if failed {
                        Err(HubError::Unavailable(
                            "not attempted: an earlier publication to this channel in the batch failed"
                                .into(),
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
        Ok(items
            .iter()
            .zip(outcomes)
            .map(|((channel, _, _), (_, outcome))| (channel.clone(), outcome))
            .collect())
    }
    .await;
    answer_many(result)
}

/// What publishing to one channel came to.
type Outcome = (ChannelName, Result<Once, HubError>);

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
