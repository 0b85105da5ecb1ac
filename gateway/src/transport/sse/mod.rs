//! Server-Sent Events for simple consumers: `GET /sse?channel=news&channel=…`
//! follows channels over a plain `text/event-stream`, so `curl -N` or a
//! browser's `EventSource` can subscribe without a client library and
//! without WebSocket (a proxy that breaks upgrades passes plain HTTP).
//!
//! The request makes the same checks as a WebSocket upgrade
//! (`crate::handshake`: draining, Origin, token, admission limits), then
//! checks every channel against the identity's permissions before the
//! stream starts, so a refusal is a plain HTTP error. The stream is an
//! ordinary [`Session`] (same outbox, same slow-consumer policy, same
//! recovery) whose subscribe commands the transport sends itself, one per
//! channel, with `since` from `Last-Event-ID` ([`resume`]). What the
//! session queues is written as SSE events by [`stream`].

pub mod direct;
mod resume;
mod stream;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pubsub_proto::{ChannelName, Encoding};

use self::resume::Positions;
pub(crate) use self::stream::{EventStream, Listed};
use crate::access;
use crate::auth::Identity;
use crate::handshake;
use crate::http_connection::HttpConnection;
use crate::node::Node;
use crate::response::{Body, error_response};
use crate::session::Session;

/// Answers `GET /sse` served by hyper (a request after the first on a
/// kept-alive connection, or one with a body). Refusals, cheapest first:
/// draining (503), Origin (403), query (400), token (401), permissions
/// (403), `Last-Event-ID` (400), limits (503).
pub fn handle(node: &Arc<Node>, request: Request<Incoming>, remote: IpAddr) -> Response<Body> {
    match open(node, &request, remote) {
        Ok(opened) => opened.into_response(),
        Err(refusal) => refusal,
    }
}

/// An accepted stream: its body and the headers of its response.
pub struct Opened {
    pub(crate) stream: EventStream,
    pub headers: HeaderMap,
}

impl Opened {
    /// The response hyper serves: the headers, and the stream as its body.
    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(self.stream.boxed_unsync());
        *response.headers_mut() = self.headers;
        response
    }
}

/// What the query asks for.
struct Query {
    channels: Vec<ChannelName>,
    token: Option<String>,
}

/// Checks `request` and opens its stream (see [`handle`] for the
/// refusals). The request's body, if any, is not read.
#[allow(clippy::result_large_err)]
pub fn open<B>(node: &Arc<Node>, request: &Request<B>, remote: IpAddr) -> Result<Opened, Response<Body>> {
    let headers = request.headers();
    handshake::not_draining(node)?;
    handshake::origin(node, headers)?;
    let query = parse_query(node, request.uri().query().unwrap_or(""))?;
    let identity = identify(node, headers, query.token.as_deref())?;
    for channel in &query.channels {
        access::may_subscribe(
            node.security.auth.is_some(),
            node.config.namespaces.of(channel),
            identity.as_deref(),
            channel,
        )
        .map_err(|message| {
            node.metrics.reject("forbidden");
            error_response(StatusCode::FORBIDDEN, "forbidden", &message)
        })?;
    }
    let positions = match headers.get("last-event-id").map(HeaderValue::to_str) {
        None => Positions::new(query.channels),
        Some(Ok(id)) if id.trim().is_empty() => Positions::new(query.channels),
        Some(Ok(id)) => Positions::resume(query.channels, id.trim())
            .map_err(|message| error_response(StatusCode::BAD_REQUEST, "bad_last_event_id", &message))?,
        Some(Err(_)) => {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                "bad_last_event_id",
                "Last-Event-ID is not text",
            ));
        }
    };
    let ticket = handshake::admit(node, headers, remote)?;
    let session = Session::new(node.clone(), Encoding::Json, ticket, identity);
    // The HTTP connection carries a client now: it is counted by the
    // connection limits, no longer among the pending connections.
    let connection = request.extensions().get::<Arc<HttpConnection>>().cloned();
    if let Some(connection) = &connection {
        connection.release_pending();
    }
    let stream = EventStream::new(session, positions, connection);
    Ok(Opened {
        stream,
        headers: response_headers(headers, "text/event-stream"),
    })
}

/// `channel` (one or more), `token` (optional); anything else is an error,
/// so a typo is not silently ignored.
#[allow(clippy::result_large_err)]
fn parse_query(node: &Node, query: &str) -> Result<Query, Response<Body>> {
    let bad = |message: String| error_response(StatusCode::BAD_REQUEST, "bad_request", &message);
    let mut channels: Vec<ChannelName> = Vec::new();
    let mut token = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "channel" => {
                let channel = ChannelName::parse(&value).map_err(|e| {
                    error_response(StatusCode::BAD_REQUEST, "invalid_channel", &e.to_string())
                })?;
                if channels.contains(&channel) {
                    return Err(bad(format!("channel {channel} is named twice")));
                }
                channels.push(channel);
            }
            "token" => token = Some(value.into_owned()),
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(bad(format!(
                    "unknown query parameter {shown:?}; expected channel or token"
                )));
            }
        }
    }
    if channels.is_empty() {
        return Err(bad("name at least one channel: /sse?channel=<name>".into()));
    }
    if channels.len() > node.config.max_subscriptions {
        node.metrics.reject("max_subscriptions");
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "limit_exceeded",
            &format!(
                "at most {} channels per stream (--max-subscriptions)",
                node.config.max_subscriptions
            ),
        ));
    }
    Ok(Query { channels, token })
}

/// The identity of the request: a token in `Authorization: Bearer`, else
/// in the `token` query parameter. With authentication on, one is required
/// (a stream has no `connect` to send it in later).
#[allow(clippy::result_large_err)]
fn identify(
    node: &Node,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Option<Box<Identity>>, Response<Body>> {
    if let Some(identity) = handshake::token(node, headers)? {
        return Ok(Some(identity));
    }
    let Some(auth) = &node.security.auth else {
        return Ok(None);
    };
    match query_token {
        None => Err(handshake::unauthorized(
            node,
            "authentication required: send Authorization: Bearer <token> or ?token=<token>",
        )),
        Some(token) => auth
            .verify(token)
            .map(|identity| Some(Box::new(identity)))
            .map_err(|message| handshake::unauthorized(node, &message)),
    }
}

/// The subscribe command the stream sends for one channel.
fn subscribe_command(id: u64, channel: &ChannelName, since: Option<&pubsub_proto::StreamPosition>) -> Bytes {
    let mut command = serde_json::json!({"type": "subscribe", "id": id, "channel": channel.as_str()});
    if let Some(since) = since {
        command["since"] = serde_json::json!({"epoch": since.epoch, "offset": since.offset});
    }
    Bytes::from(command.to_string())
}

/// The headers of a stream's response: no caching, no buffering proxies,
/// and the CORS answer for an allowed cross-origin page.
pub(crate) fn response_headers(request: &HeaderMap, content_type: &'static str) -> HeaderMap {
    let mut out = HeaderMap::new();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    // nginx (and proxies that follow its convention) would otherwise
    // buffer the stream and hold messages back.
    out.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(origin) = request.get(header::ORIGIN) {
        // It passed the Origin check: a cross-origin page may read.
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        out.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    out
}
