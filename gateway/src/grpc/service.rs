//! The gRPC server API (`pubsub.api.v1.GatewayApi`): each call checks the
//! API key and its scope from the request metadata, takes an API permit
//! like an HTTP request, and runs the same operation as its HTTP twin
//! (`http_api`), so both surfaces share one set of checks, limits and
//! errors. Only the shapes differ: protobuf messages in, protobuf out.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb::gateway_api_server::GatewayApi;
use super::pb::*;
use crate::config::Scope;
use crate::control::Command;
use crate::http_api::{self, Failure};
use crate::node::Node;
use pubsub_proto::pb;

/// The service, over the node's shared state.
pub struct Service {
    pub node: Arc<Node>,
}

/// A failure as a gRPC status: the HTTP API's error code leads the message
/// and is also in the `error-code` metadata.
pub(crate) fn status(failure: Failure) -> Status {
    use tonic::Code;
    let Failure(http, code, message) = failure;
    let grpc = match (http.as_u16(), code) {
        (_, "not_available") => Code::FailedPrecondition,
        (_, "limit_exceeded" | "overloaded") => Code::ResourceExhausted,
        (400 | 413, _) => Code::InvalidArgument,
        (401, _) => Code::Unauthenticated,
        (403, _) => Code::PermissionDenied,
        (408, _) => Code::DeadlineExceeded,
        (503, _) => Code::Unavailable,
        _ => Code::Internal,
    };
    let mut status = Status::new(grpc, format!("{code}: {message}"));
    status
        .metadata_mut()
        .insert("error-code", tonic::metadata::MetadataValue::from_static(code));
    status
}

impl Service {
    /// The API key and its scope, then an API permit (`--max-api-requests`,
    /// shared with HTTP).
    fn enter<T>(
        &self,
        request: &Request<T>,
        scope: Scope,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        let headers = request.metadata().clone().into_headers();
        http_api::authorize(&self.node.config.api_keys, &headers, scope).map_err(status)?;
        self.node.api.try_enter().ok_or_else(|| {
            self.node.metrics.reject("api_concurrency");
            status(Failure(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!(
                    "this node is serving {} API requests already; retry shortly",
                    self.node.api.limit()
                ),
            ))
        })
    }

    /// What subscribe and unsubscribe share: the checks, then the command
    /// `make` builds, sent to every node.
    async fn channel_command(
        &self,
        request: Request<ChannelControlRequest>,
        make: fn(Option<String>, Option<String>, String) -> Command,
    ) -> Result<Response<NodesReply>, Status> {
        let _permit = self.enter(&request, Scope::Connections)?;
        let ChannelControlRequest {
            user,
            client,
            channel,
        } = request.into_inner();
        let (user, client) = http_api::target(user, client).map_err(status)?;
        let channel = http_api::parse_channel(&channel)
            .map_err(status)?
            .as_str()
            .to_owned();
        self.send(make(user, client, channel)).await
    }

    async fn send(&self, command: Command) -> Result<Response<NodesReply>, Status> {
        let nodes = http_api::send_everywhere(&self.node, command)
            .await
            .map_err(status)?;
        Ok(Response::new(NodesReply { nodes }))
    }
}

fn result(channel: String, outcome: Result<broker_adapter::Once, crate::hub::HubError>) -> PublishResult {
    match outcome {
        Ok(once) => {
            let position = once.position();
            PublishResult {
                channel,
                offset: position.offset,
                epoch: position.epoch.to_string(),
                duplicate: matches!(once, broker_adapter::Once::Duplicate(_)),
                ..PublishResult::default()
            }
        }
        Err(error) => {
            let Failure(_, code, message) = Failure::from(error);
            PublishResult {
                channel,
                error_code: code.to_owned(),
                error_message: message,
                ..PublishResult::default()
            }
        }
    }
}

fn results(outcomes: Vec<http_api::Outcome>) -> BatchReply {
    BatchReply {
        results: outcomes
            .into_iter()
            .map(|(channel, outcome)| result(channel.as_str().to_owned(), outcome))
            .collect(),
    }
}

#[tonic::async_trait]
impl GatewayApi for Service {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishReply>, Status> {
        let _permit = self.enter(&request, Scope::Publish)?;
        let PublishRequest {
            channel,
            data,
            idempotency_key,
        } = request.into_inner();
        let (channel, data, once) = http_api::batch_item(&self.node, 0, &channel, data, idempotency_key)
            .map_err(|f| status(plain(f)))?;
        let once = self
            .node
            .hub
            .publish_once(channel.clone(), data, crate::hub::Source::Api, once)
            .await
            .map_err(|e| status(e.into()))?;
        let position = once.position();
        Ok(Response::new(PublishReply {
            channel: channel.as_str().to_owned(),
            offset: position.offset,
            epoch: position.epoch.to_string(),
            duplicate: matches!(once, broker_adapter::Once::Duplicate(_)),
        }))
    }

    async fn broadcast(&self, request: Request<BroadcastRequest>) -> Result<Response<BatchReply>, Status> {
        let _permit = self.enter(&request, Scope::Publish)?;
        let BroadcastRequest {
            channels,
            data,
            idempotency_key,
        } = request.into_inner();
        let channels = http_api::broadcast_channels(channels.iter().map(String::as_str)).map_err(status)?;
        let once = http_api::idempotency(&self.node, idempotency_key).map_err(status)?;
        let outcomes = http_api::broadcast_all(&self.node, channels, data, once)
            .await
            .map_err(status)?;
        Ok(Response::new(results(outcomes)))
    }

    async fn batch(&self, request: Request<BatchRequest>) -> Result<Response<BatchReply>, Status> {
        let _permit = self.enter(&request, Scope::Publish)?;
        let publications = request.into_inner().publications;
        if publications.is_empty() || publications.len() > http_api::MAX_BATCH {
            return Err(status(Failure::bad_request(format!(
                "`publications` must hold 1 to {} publications",
                http_api::MAX_BATCH
            ))));
        }
        let mut items = Vec::with_capacity(publications.len());
        for (index, item) in publications.into_iter().enumerate() {
            items.push(
                http_api::batch_item(&self.node, index, &item.channel, item.data, item.idempotency_key)
                    .map_err(status)?,
            );
        }
        Ok(Response::new(results(
            http_api::publish_in_order(&self.node, items).await,
        )))
    }

    async fn history(&self, request: Request<HistoryRequest>) -> Result<Response<HistoryReply>, Status> {
        let _permit = self.enter(&request, Scope::Read)?;
        let HistoryRequest {
            channel,
            since,
            epoch,
            limit,
        } = request.into_inner();
        let channel = http_api::parse_channel(&channel).map_err(status)?;
        let limit = limit.map_or(100, |l| l as usize);
        if !(1..=http_api::MAX_HISTORY_LIMIT).contains(&limit) {
            return Err(status(Failure::bad_request(format!(
                "`limit` must be 1 to {}",
                http_api::MAX_HISTORY_LIMIT
            ))));
        }
        let page = http_api::read_history(&self.node, &channel, since, epoch.as_deref(), limit)
            .await
            .map_err(status)?;
        Ok(Response::new(HistoryReply {
            channel: channel.as_str().to_owned(),
            epoch: page.epoch.to_string(),
            offset: page.offset,
            publications: page
                .publications
                .into_iter()
                .map(|p| StoredPublication {
                    offset: p.offset.unwrap_or_default(),
                    data: p.data,
                })
                .collect(),
            more: page.more,
            recovered: page.recovered,
        }))
    }

    async fn presence(
        &self,
        request: Request<ChannelRequest>,
    ) -> Result<Response<pb::PresenceReply>, Status> {
        let _permit = self.enter(&request, Scope::Read)?;
        let channel = http_api::parse_channel(&request.into_inner().channel).map_err(status)?;
        let members = self
            .node
            .hub
            .presence(&channel)
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(pb::PresenceReply {
            channel: channel.as_str().to_owned(),
            members: members
                .into_iter()
                .map(|m| pb::Member {
                    client: m.client,
                    user: m.user,
                    info: m.info,
                })
                .collect(),
        }))
    }

    async fn presence_stats(
        &self,
        request: Request<ChannelRequest>,
    ) -> Result<Response<pb::PresenceStatsReply>, Status> {
        let _permit = self.enter(&request, Scope::Read)?;
        let channel = http_api::parse_channel(&request.into_inner().channel).map_err(status)?;
        let stats = self
            .node
            .hub
            .presence_stats(&channel)
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(pb::PresenceStatsReply {
            channel: channel.as_str().to_owned(),
            clients: stats.clients,
            users: stats.users,
        }))
    }

    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoReply>, Status> {
        let _permit = self.enter(&request, Scope::Read)?;
        let nodes = http_api::live_nodes(&self.node).await.map_err(status)?;
        let number = |v: &serde_json::Value, key: &str| v[key].as_u64().unwrap_or_default();
        let text = |v: &serde_json::Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
        Ok(Response::new(InfoReply {
            nodes: nodes
                .iter()
                .map(|v| NodeInfo {
                    node: text(v, "node"),
                    version: text(v, "version"),
                    broker: text(v, "broker"),
                    started_at: number(v, "started_at"),
                    uptime_seconds: number(v, "uptime_seconds"),
                    connections: number(v, "connections"),
                    subscriptions: number(v, "subscriptions"),
                    channels: number(v, "channels"),
                    draining: v["draining"].as_bool().unwrap_or_default(),
                    announced_at: number(v, "announced_at"),
                })
                .collect(),
        }))
    }

    async fn channels(&self, request: Request<ChannelsRequest>) -> Result<Response<ChannelsReply>, Status> {
        let _permit = self.enter(&request, Scope::Read)?;
        let ChannelsRequest {
            pattern,
            cursor,
            limit,
        } = request.into_inner();
        let query =
            http_api::ChannelsQuery::new(pattern, cursor, limit.map(|l| l as usize)).map_err(status)?;
        let page = http_api::list_channels(&self.node, query).await.map_err(status)?;
        Ok(Response::new(ChannelsReply {
            channels: page
                .channels
                .into_iter()
                .map(|(channel, subscribers)| ChannelCount {
                    channel,
                    subscribers: subscribers as u64,
                })
                .collect(),
            next_cursor: page.next_cursor,
            nodes: page.nodes,
            missing: page.missing,
        }))
    }

    async fn remove_history(
        &self,
        request: Request<ChannelRequest>,
    ) -> Result<Response<RemoveHistoryReply>, Status> {
        let _permit = self.enter(&request, Scope::History)?;
        let channel = http_api::parse_channel(&request.into_inner().channel).map_err(status)?;
        self.node
            .hub
            .remove_history(&channel)
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(RemoveHistoryReply {
            channel: channel.as_str().to_owned(),
        }))
    }

    async fn disconnect(&self, request: Request<DisconnectRequest>) -> Result<Response<NodesReply>, Status> {
        let _permit = self.enter(&request, Scope::Connections)?;
        let DisconnectRequest { user, client, code } = request.into_inner();
        let (user, client) = http_api::target(user, client).map_err(status)?;
        let code = code.map(|c| u16::try_from(c).unwrap_or(u16::MAX));
        let code = http_api::disconnect_code(code).map_err(status)?;
        self.send(Command::Disconnect { user, client, code }).await
    }

    async fn subscribe(
        &self,
        request: Request<ChannelControlRequest>,
    ) -> Result<Response<NodesReply>, Status> {
        self.channel_command(request, |user, client, channel| Command::Subscribe {
            user,
            client,
            channel,
        })
        .await
    }

    async fn unsubscribe(
        &self,
        request: Request<ChannelControlRequest>,
    ) -> Result<Response<NodesReply>, Status> {
        self.channel_command(request, |user, client, channel| Command::Unsubscribe {
            user,
            client,
            channel,
        })
        .await
    }
}

/// A single publish names no batch index.
fn plain(failure: Failure) -> Failure {
    let Failure(http, code, message) = failure;
    let message = message
        .strip_prefix("publications[0]: ")
        .map(str::to_owned)
        .unwrap_or(message);
    Failure(http, code, message)
}
