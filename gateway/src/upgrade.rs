//! The WebSocket opening handshake (RFC 6455 section 4) on `GET /ws`.
//!
//! Checks the upgrade request, negotiates the subprotocol (which fixes the
//! connection's encoding), answers `101 Switching Protocols`, and hands the
//! upgraded socket to a new session task. Everything refused here is refused
//! with a plain HTTP status and a JSON error body, before any WebSocket
//! exists.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pubsub_proto::Encoding;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::client_ip;
use crate::http_api::{Body, error_response};
use crate::limits::Refused;
use crate::node::Node;
use crate::session;

/// Answers an upgrade request from `remote` and, on success, starts the
/// session. Refusals, cheapest first: draining (503), malformed handshake
/// (400/426), Origin (403), subprotocol (400), token (401), limits (503).
pub fn handle(node: &Arc<Node>, mut request: Request<Incoming>, remote: IpAddr) -> Response<Body> {
    if node.is_draining() {
        node.metrics.reject("draining");
        return retry_later("draining", "this node is shutting down; connect to another node");
    }
    let key = match check_request(request.headers()) {
        Ok(key) => key,
        Err(response) => return response,
    };
    if let Err(message) = check_origin(node, request.headers()) {
        node.metrics.reject("origin");
        return error_response(StatusCode::FORBIDDEN, "forbidden_origin", &message);
    }
    let encoding = match negotiate(request.headers()) {
        Ok(encoding) => encoding,
        Err(offered) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "unsupported_subprotocol",
                &format!(
                    "none of the offered subprotocols ({offered}) is supported; offer {} or {}, or none for JSON",
                    Encoding::JSON_SUBPROTOCOL,
                    Encoding::PROTOBUF_SUBPROTOCOL
                ),
            );
        }
    };

    // Server-side clients may authenticate at the upgrade; browsers use `connect`.
    let identity = match (&node.auth, bearer_token(request.headers())) {
        (Some(auth), Some(token)) => match auth.verify(token) {
            Ok(identity) => Some(identity),
            Err(message) => {
                node.metrics.reject("unauthorized");
                let mut response = error_response(StatusCode::UNAUTHORIZED, "unauthorized", &message);
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return response;
            }
        },
        _ => None,
    };
    let client = client_ip::from_request(remote, request.headers(), &node.config.trusted_proxies);
    let ticket = match node.admission.admit(client) {
        Ok(ticket) => ticket,
        Err(refused) => {
            node.metrics.reject(refused.reason());
            let message = match refused {
                Refused::NodeFull => {
                    "this node has no room for more connections; retry (another node may have)"
                }
                Refused::IpFull => "too many connections from your address",
                Refused::RateLimited => "too many new connections right now; retry shortly",
            };
            return retry_later(refused.reason(), message);
        }
    };

    let on_upgrade = hyper::upgrade::on(&mut request);
    let node = node.clone();
    // What this task keeps across awaits stays with the connection for its
    // whole life: keep it small (the identity boxed, the config read later).
    let identity = identity.map(Box::new);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = Some(node.websocket_config());
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, config).await;
                // Its own task: it holds the connection's state and nothing else.
                tokio::spawn(session::start(ws, encoding.encoding, node, ticket, identity));
            }
            Err(error) => tracing::debug!(%error, "upgrade did not complete"),
        }
    });

    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if encoding.echo {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(encoding.encoding.subprotocol()),
        );
    }
    response
}

/// A 503 with `Retry-After`, so clients back off before retrying.
fn retry_later(code: &str, message: &str) -> Response<Body> {
    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, code, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// With `--allowed-origin` rules, a browser's `Origin` must match one.
/// Requests without `Origin` (non-browser clients) pass unless
/// `--require-origin`.
fn check_origin(node: &Node, headers: &HeaderMap) -> Result<(), String> {
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    match origin {
        None if node.config.require_origin => Err("an Origin header is required".into()),
        None => Ok(()),
        Some(_) if node.origins.is_empty() => Ok(()),
        Some(origin) if node.origins.iter().any(|rule| rule.allows(origin)) => Ok(()),
        Some(origin) => {
            let shown: String = origin.chars().take(100).collect();
            Err(format!("origin {shown:?} is not allowed"))
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Validates the handshake headers and returns the client's key.
#[allow(clippy::result_large_err)]
fn check_request(headers: &HeaderMap) -> Result<String, Response<Body>> {
    if !header_has_token(headers, &header::UPGRADE, "websocket") {
        let mut response = error_response(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this endpoint speaks WebSocket: send Upgrade: websocket",
        );
        response
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return Err(response);
    }
    if !header_has_token(headers, &header::CONNECTION, "upgrade") {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "bad_handshake",
            "the Connection header must include Upgrade",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut response = error_response(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported_version",
            "only WebSocket version 13 is supported",
        );
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return Err(response);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| is_valid_key(k));
    match key {
        Some(key) => Ok(key.to_owned()),
        None => Err(error_response(
            StatusCode::BAD_REQUEST,
            "bad_handshake",
            "Sec-WebSocket-Key must be the base64 form of 16 bytes",
        )),
    }
}

/// A key is 16 random bytes in base64: 24 characters ending in `==`.
fn is_valid_key(key: &str) -> bool {
    use base64::Engine as _;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|raw| raw.len() == 16)
}

/// True when the comma-separated header `name` contains `token`
/// (case-insensitive), in any of its occurrences.
fn header_has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The negotiated encoding, and whether to name it in the response.
#[derive(Debug, PartialEq, Eq)]
struct Negotiated {
    encoding: Encoding,
    echo: bool,
}

/// Picks the first offered subprotocol we support (the client's order of
/// preference). No offer means JSON; offers without a supported one are an
/// error carrying the offered list.
fn negotiate(headers: &HeaderMap) -> Result<Negotiated, String> {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(Negotiated {
            encoding: Encoding::Json,
            echo: false,
        });
    }
    match offered.iter().find_map(|t| Encoding::from_subprotocol(t)) {
        Some(encoding) => Ok(Negotiated { encoding, echo: true }),
        None => {
            let shown: String = offered.join(", ").chars().take(200).collect();
            Err(shown)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_api::tests::headers;

    #[test]
    fn negotiation_follows_the_clients_preference() {
        assert_eq!(
            negotiate(&headers(&[])),
            Ok(Negotiated {
                encoding: Encoding::Json,
                echo: false
            })
        );
        assert_eq!(
            negotiate(&headers(&[(
                "sec-websocket-protocol",
                "pubsub.v1.proto, pubsub.v1.json"
            )])),
            Ok(Negotiated {
                encoding: Encoding::Protobuf,
                echo: true
            })
        );
        assert_eq!(
            negotiate(&headers(&[
                ("sec-websocket-protocol", "mqtt"),
                ("sec-websocket-protocol", "pubsub.v1.json")
            ])),
            Ok(Negotiated {
                encoding: Encoding::Json,
                echo: true
            })
        );
        assert_eq!(
            negotiate(&headers(&[("sec-websocket-protocol", "mqtt, stomp")])),
            Err("mqtt, stomp".into())
        );
    }

    #[test]
    fn handshake_headers_are_checked() {
        let good = [
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert_eq!(
            check_request(&headers(&good)).ok().as_deref(),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );

        let status =
            |h: &[(&'static str, &'static str)]| check_request(&headers(h)).err().map(|r| r.status());
        assert_eq!(status(&good[1..]), Some(StatusCode::UPGRADE_REQUIRED));
        assert_eq!(
            status(&[good[0], good[2], good[3]]),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            status(&[good[0], good[1], ("sec-websocket-version", "8"), good[3]]),
            Some(StatusCode::UPGRADE_REQUIRED)
        );
        assert_eq!(
            status(&[good[0], good[1], good[2], ("sec-websocket-key", "short")]),
            Some(StatusCode::BAD_REQUEST)
        );
    }
}
