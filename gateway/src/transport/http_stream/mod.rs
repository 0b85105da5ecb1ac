//! HTTP streaming with bidirectional emulation, for clients whose
//! WebSocket upgrade is blocked: `GET /stream` opens a session whose
//! server-to-client messages are a chunked response, one protocol v1 JSON
//! message per line (NDJSON), and whose client sends its commands as
//! `POST /stream/commands?session=<id>` requests ([`commands`]), to any
//! node: a node that does not own the session forwards them through the
//! broker to the one that does. No sticky sessions needed.
//!
//! The request makes the same checks as a WebSocket upgrade
//! (`crate::handshake`: draining, Origin, token, admission limits). The
//! session is an ordinary [`Session`] (same outbox and slow-consumer
//! policy, same command rate, same `connect`/`subscribe`/`since`), carried
//! by the same [`EventStream`] as `/sse` with the session framing: JSON
//! lines, whose first names the session id
//! (`{"type":"session","session":"<id>"}`), or with `?encoding=protobuf`
//! length-prefixed protobuf frames; the `X-Stream-Session` header names it
//! for both.

pub mod commands;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use pubsub_proto::Encoding;

use super::sse::{EventStream, Listed, Opened, response_headers};
use crate::frame::Frame;
use crate::handshake;
use crate::http_connection::HttpConnection;
use crate::node::Node;
use crate::response::{Body, error_response};
use crate::session::Session;

/// Answers `GET /stream` served by hyper (see [`open`]).
pub fn handle(node: &Arc<Node>, request: Request<Incoming>, remote: IpAddr) -> Response<Body> {
    match open(node, &request, remote) {
        Ok(opened) => opened.into_response(),
        Err(refusal) => refusal,
    }
}

/// Checks `request` and opens its session. Refusals, cheapest first:
/// draining (503), Origin (403), query (400), token (401), limits (503).
#[allow(clippy::result_large_err)]
pub fn open<B>(node: &Arc<Node>, request: &Request<B>, remote: IpAddr) -> Result<Opened, Response<Body>> {
    let headers = request.headers();
    handshake::not_draining(node)?;
    handshake::origin(node, headers)?;
    let (encoding, events) = format_of(request.uri().query().unwrap_or(""))?;
    // With authentication on, the token may come here or in `connect`.
    let identity = handshake::token(node, headers)?;
    let ticket = handshake::admit(node, headers, remote)?;
    let binary = encoding == Encoding::Protobuf;
    let Some((id, inbox)) = node.clients.streams.open(&node.config.node_id, binary) else {
        return Err(error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no randomness for a session id",
        ));
    };
    let session = Session::new(node.clone(), encoding, ticket, identity);
    if !binary {
        let hello = serde_json::json!({"type": "session", "session": &*id}).to_string();
        session.peer().outbox.push(Frame::Message(Bytes::from(hello)));
    }
    let session_header = HeaderValue::from_str(&id).ok();
    let connection = request.extensions().get::<Arc<HttpConnection>>().cloned();
    if let Some(connection) = &connection {
        connection.release_pending();
    }
    let listed = Listed {
        node: node.clone(),
        id,
        inbox,
    };
    let stream = EventStream::session(session, listed, events, connection);
    let content_type = match (encoding, events) {
        (_, true) => "text/event-stream",
        (Encoding::Json, false) => "application/x-ndjson",
        (Encoding::Protobuf, false) => "application/x-protobuf",
    };
    let mut headers = response_headers(headers, content_type);
    if let Some(value) = session_header {
        headers.insert(SESSION_HEADER, value);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(SESSION_HEADER),
        );
    }
    Ok(Opened { stream, headers })
}

/// The response header that names the session (for either encoding).
pub const SESSION_HEADER: &str = "x-stream-session";

/// `encoding=json` (the default) or `encoding=protobuf`, and
/// `format=chunked` (the default) or `format=sse` (JSON only): the
/// encoding, and whether messages are SSE events.
#[allow(clippy::result_large_err)]
fn format_of(query: &str) -> Result<(Encoding, bool), Response<Body>> {
    let bad = |message: String| error_response(StatusCode::BAD_REQUEST, "bad_request", &message);
    let (mut encoding, mut events) = (Encoding::Json, false);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match (&*key, &*value) {
            ("encoding", "json") => encoding = Encoding::Json,
            ("encoding", "protobuf") => encoding = Encoding::Protobuf,
            ("format", "chunked") => events = false,
            ("format", "sse") => events = true,
            _ => {
                let shown: String = format!("{key}={value}").chars().take(64).collect();
                return Err(bad(format!(
                    "unknown query parameter {shown:?}; /stream takes encoding=json|protobuf and format=chunked|sse"
                )));
            }
        }
    }
    if events && encoding == Encoding::Protobuf {
        return Err(bad("format=sse carries JSON only".into()));
    }
    Ok((encoding, events))
}
