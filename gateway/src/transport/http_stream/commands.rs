//! `POST /stream/commands?session=<id>`: a `GET /stream` client's
//! commands, one JSON object per line, or length-prefixed protobuf
//! `ClientCommand`s for a protobuf stream (the same commands as over a
//! WebSocket). Their replies come on the session's stream, not in this
//! answer, which says only whether the session took them (202).
//!
//! Any node may receive the POST. The session id names the node that owns
//! the session (`crate::streams`); another node forwards the commands
//! through the broker (`control::Command::StreamCommands`) and waits up to
//! a second for the owner's word (`StreamDelivered`), one extra broker
//! round trip per POST instead of sticky sessions.
//!
//! The POST is checked like the stream was opened (Origin); knowing the
//! session id is what entitles it to speak for the session, so there is no
//! API key. `text/plain` is accepted beside `application/json` and
//! `application/x-ndjson` so a cross-origin page can POST without a CORS
//! preflight (the id is a secret no other page knows, so this opens no
//! cross-site request forgery).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::control::Command;
use crate::handshake;
use crate::http_api::{ANSWER_WITHIN, Failure, live_node_ids, read_limited};
use crate::node::Node;
use crate::response::{Body, json_response};
use crate::streams::{self, Delivered, MAX_QUEUED};

/// How long the list of live nodes (for forwarding) is trusted.
const LIVE_NODES_FOR: Duration = Duration::from_secs(1);

/// Answers `POST /stream/commands`: 202 `{"accepted":N}`, or 400
/// `bad_request`, 403 `forbidden_origin`, 404 `unknown_session`, 408, 413
/// `too_large`, 415 `unsupported_media_type`, 429 `queue_full`, 503
/// `unavailable`.
pub async fn handle(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    if let Err(refusal) = handshake::origin(&node, request.headers()) {
        return refusal;
    }
    let cors = cors(request.headers());
    let mut response = match accept(&node, request).await {
        Ok(accepted) => json_response(StatusCode::ACCEPTED, &json!({ "accepted": accepted })),
        Err(failure) => {
            let queue_full = failure.1 == "queue_full";
            let mut response = failure.into_response();
            if queue_full {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            response
        }
    };
    response.headers_mut().extend(cors);
    response
}

/// Answers a CORS preflight for `/stream` and `/stream/commands` from an
/// allowed origin: 204 with what the page may send; 403
/// `forbidden_origin` otherwise.
pub fn preflight(node: &Node, request: &Request<Incoming>, methods: &'static str) -> Response<Body> {
    if let Err(refusal) = handshake::origin(node, request.headers()) {
        return refusal;
    }
    let mut response = Response::new(crate::response::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.extend(cors(request.headers()));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, x-stream-session"),
    );
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    response
}

/// `Access-Control-Allow-Origin` for a request whose Origin passed.
fn cors(request: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    if let Some(origin) = request.get(header::ORIGIN) {
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        out.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    out
}

async fn accept(node: &Arc<Node>, request: Request<Incoming>) -> Result<usize, Failure> {
    let session = session_of(request.uri().query().unwrap_or(""), request.headers())?;
    let Some(owner) = streams::owner(&session).map(str::to_owned) else {
        return Err(Failure::bad_request(
            "session is not a session id (the `session` line of GET /stream)",
        ));
    };
    let binary = check_content_type(request.headers())?;
    let body = read_limited(
        request,
        node.config.max_message_size,
        node.config.handshake_timeout,
    )
    .await?;
    let commands = if binary {
        split_frames(body)?
    } else {
        split(&body)?
    };
    let count = commands.len();
    let delivered = if owner == node.config.node_id {
        node.clients.streams.deliver(&session, commands, binary)
    } else {
        forward(node, &owner, &session, commands, binary).await?
    };
    match delivered {
        Delivered::Accepted => Ok(count),
        Delivered::Unknown => Err(Failure(
            StatusCode::NOT_FOUND,
            "unknown_session",
            "no such session: it ended (open a new stream) or never existed".into(),
        )),
        Delivered::Full => Err(Failure(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            format!("the session has {MAX_QUEUED} commands waiting; retry when its replies came"),
        )),
        Delivered::WrongEncoding => Err(Failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the session's stream has the other encoding: JSON to a JSON stream, application/x-protobuf to a protobuf one".into(),
        )),
    }
}

/// `session=<id>` and nothing else in the query, or the session in the
/// `X-Stream-Session` header (which proxies do not log with the URL).
fn session_of(query: &str, headers: &HeaderMap) -> Result<String, Failure> {
    let mut session = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "session" if session.is_none() => session = Some(value.into_owned()),
            "session" => return Err(Failure::bad_request("session is named twice")),
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(Failure::bad_request(format!(
                    "unknown query parameter {shown:?}; expected session"
                )));
            }
        }
    }
    let header = headers
        .get(super::SESSION_HEADER)
        .map(|v| v.to_str().map(str::to_owned).unwrap_or_default());
    match (session, header) {
        (Some(query), Some(header)) if query != header => Err(Failure::bad_request(
            "?session and X-Stream-Session name different sessions",
        )),
        (Some(session), _) | (None, Some(session)) => Ok(session),
        (None, None) => Err(Failure::bad_request(
            "name the session: ?session=<id> or X-Stream-Session: <id>",
        )),
    }
}

/// JSON, NDJSON or plain text (see the module's comment), or protobuf:
/// whether the commands are protobuf.
fn check_content_type(headers: &HeaderMap) -> Result<bool, Failure> {
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match mime.as_deref() {
        Some("application/json" | "application/x-ndjson" | "text/plain") => Ok(false),
        Some("application/x-protobuf") => Ok(true),
        other => Err(Failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "send Content-Type: application/json, application/x-ndjson, text/plain or application/x-protobuf (got {:?})",
                other.unwrap_or("nothing")
            ),
        )),
    }
}

/// A protobuf body's commands: each a big-endian u32 length and a
/// `ClientCommand` of that many bytes, at most [`MAX_QUEUED`]; all must
/// decode or none is taken.
fn split_frames(mut body: Bytes) -> Result<Vec<Bytes>, Failure> {
    use prost::Message;
    let mut commands = Vec::new();
    while !body.is_empty() {
        if body.len() < 4 {
            return Err(Failure::bad_request(
                "a frame is cut short: each is a u32 length, then the command",
            ));
        }
        let length = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
        if body.len() - 4 < length {
            return Err(Failure::bad_request(format!(
                "frame {} says {length} bytes, {} follow",
                commands.len() + 1,
                body.len() - 4
            )));
        }
        let command = body.slice(4..4 + length);
        body = body.slice(4 + length..);
        if pubsub_proto::pb::ClientCommand::decode(command.clone()).is_err() {
            return Err(Failure::bad_request(format!(
                "frame {} is not a ClientCommand",
                commands.len() + 1
            )));
        }
        commands.push(command);
        if commands.len() > MAX_QUEUED {
            return Err(Failure::bad_request(format!(
                "more than {MAX_QUEUED} commands per request"
            )));
        }
    }
    if commands.is_empty() {
        return Err(Failure::bad_request("no commands in the body"));
    }
    Ok(commands)
}

/// The body's commands: one JSON object per non-empty line, at most
/// [`MAX_QUEUED`]; all must be objects or none is taken.
fn split(body: &[u8]) -> Result<Vec<Bytes>, Failure> {
    let mut commands = Vec::new();
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let object = line.starts_with(b"{") && serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok();
        if !object {
            return Err(Failure::bad_request(format!(
                "line {} is not a JSON object; send one command per line",
                n + 1
            )));
        }
        commands.push(Bytes::copy_from_slice(line));
    }
    if commands.is_empty() {
        return Err(Failure::bad_request("no commands in the body"));
    }
    if commands.len() > MAX_QUEUED {
        return Err(Failure::bad_request(format!(
            "{} commands; at most {MAX_QUEUED} per request",
            commands.len()
        )));
    }
    Ok(commands)
}

/// Hands `commands` to the session on node `owner` through the broker.
async fn forward(
    node: &Arc<Node>,
    owner: &str,
    session: &str,
    commands: Vec<Bytes>,
    binary: bool,
) -> Result<Delivered, Failure> {
    if !is_live(node, owner).await? {
        return Ok(Delivered::Unknown);
    }
    let mut call = node.calls.open();
    let question = Command::StreamCommands {
        reply_to: node.config.node_id.clone(),
        call: call.id,
        session: session.to_owned(),
        // Checked JSON above: text; protobuf travels as base64.
        commands: commands
            .iter()
            .map(|c| match binary {
                false => String::from_utf8_lossy(c).into_owned(),
                true => base64::engine::general_purpose::STANDARD.encode(c),
            })
            .collect(),
        binary,
    };
    node.hub
        .send_to_node(owner, &question.encode())
        .await
        .map_err(Failure::from)?;
    node.metrics
        .stream_commands_forwarded
        .increment(commands.len() as u64);
    let answer = tokio::time::timeout(ANSWER_WITHIN, call.answers.recv()).await;
    let outcome = match answer {
        Ok(Some(answer)) => match serde_json::from_slice(&answer) {
            Ok(Command::StreamDelivered { outcome, .. }) => Delivered::parse(&outcome),
            _ => None,
        },
        _ => None,
    };
    outcome.ok_or_else(|| {
        Failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("node {owner}, which holds the session, did not answer within {ANSWER_WITHIN:?}"),
        )
    })
}

/// Whether node `owner` is live, from a list of live nodes at most
/// [`LIVE_NODES_FOR`] old (read again at once for a node not on it, which
/// may have started since).
async fn is_live(node: &Arc<Node>, owner: &str) -> Result<bool, Failure> {
    let fresh_enough = |at: Instant, limit: Duration| at.elapsed() < limit;
    if let Some((at, nodes)) = node.clients.streams.live_nodes()
        && fresh_enough(at, LIVE_NODES_FOR)
        && (nodes.iter().any(|n| n == owner) || fresh_enough(at, Duration::from_millis(100)))
    {
        return Ok(nodes.iter().any(|n| n == owner));
    }
    let nodes = live_node_ids(node).await?;
    let live = nodes.iter().any(|n| n == owner);
    node.clients.streams.remember_live_nodes(nodes);
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_one_command_per_line_all_or_none() {
        let commands = split(b"{\"type\":\"ping\",\"id\":1}\r\n\n  {\"type\":\"ping\"}\n").unwrap();
        assert_eq!(commands.len(), 2);
        assert_eq!(&commands[0][..], b"{\"type\":\"ping\",\"id\":1}");
        assert!(split(b"{\"type\":\"ping\"}\nnot json").is_err());
        assert!(split(b"[1,2]").is_err());
        assert!(split(b"\n\n").is_err());
        let many = "{}\n".repeat(MAX_QUEUED + 1);
        assert!(split(many.as_bytes()).is_err());
    }

    #[test]
    fn a_protobuf_body_is_length_prefixed_commands() {
        use prost::Message;
        let ping = pubsub_proto::pb::ClientCommand {
            id: Some(7),
            command: Some(pubsub_proto::pb::client_command::Command::Ping(Default::default())),
        }
        .encode_to_vec();
        let mut body = Vec::new();
        for _ in 0..2 {
            body.extend_from_slice(&(ping.len() as u32).to_be_bytes());
            body.extend_from_slice(&ping);
        }
        let commands = split_frames(Bytes::from(body.clone())).unwrap();
        assert_eq!(commands.len(), 2);
        assert_eq!(&commands[1][..], &ping[..]);
        assert!(split_frames(Bytes::from(body[..body.len() - 1].to_vec())).is_err());
        assert!(split_frames(Bytes::from_static(&[0, 0, 0, 2, 0xff, 0xff])).is_err());
        assert!(split_frames(Bytes::new()).is_err());
    }

    #[test]
    fn the_query_names_the_session_once() {
        let none = HeaderMap::new();
        assert_eq!(session_of("session=a.b", &none).unwrap(), "a.b");
        assert!(session_of("", &none).is_err());
        assert!(session_of("session=a&session=b", &none).is_err());
        assert!(session_of("session=a&x=1", &none).is_err());
        let mut named = HeaderMap::new();
        named.insert(super::super::SESSION_HEADER, HeaderValue::from_static("a.b"));
        assert_eq!(session_of("", &named).unwrap(), "a.b");
        assert_eq!(session_of("session=a.b", &named).unwrap(), "a.b");
        assert!(session_of("session=c.d", &named).is_err());
    }
}
