//! The WebSocket opening handshake (RFC 6455 section 4) on `GET /ws`.
//!
//! Checks the upgrade request (with the shared checks of
//! `crate::handshake` in between), negotiates the subprotocol (which fixes
//! the connection's encoding) and permessage-deflate (`deflate.rs`),
//! answers `101 Switching Protocols`, and hands the upgraded socket to a new
//! connection task. Everything refused here is
//! refused with a plain HTTP status and a JSON error body, before any
//! WebSocket exists.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pubsub_proto::Encoding;
use sha1::{Digest, Sha1};

use super::connection::Connection;
use super::deflate;
use super::socket::{Compression, Socket};
use crate::auth::Identity;
use crate::compression::Deflater;
use crate::handshake;
use crate::limits::Ticket;
use crate::node::Node;
use crate::response::{Body, empty, error_response};
use crate::session::Session;

/// Answers an upgrade request from `remote` and, on success, starts the
/// connection. Refusals, cheapest first: draining (503), malformed
/// handshake (400/426), Origin (403), subprotocol (400), token (401),
/// limits (503).
pub fn handle(node: &Arc<Node>, mut request: Request<Incoming>, remote: IpAddr) -> Response<Body> {
    let (upgrade, encoding, identity, ticket) = match check(node, request.headers(), remote) {
        Ok(checked) => checked,
        Err(refusal) => return refusal,
    };
    let response = upgrade.response(encoding.echo.then(|| encoding.encoding.subprotocol()));
    let on_upgrade = hyper::upgrade::on(&mut request);
    let node = node.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                if upgrade.compression.is_some() {
                    node.metrics.compressed_connections.increment(1.0);
                }
                let socket = Socket::new(
                    TokioIo::new(upgraded),
                    node.config.max_message_size,
                    upgrade.compression,
                );
                let session = Session::new(node, encoding.encoding, ticket, identity);
                // Its own task: it holds the connection's state and nothing else.
                tokio::spawn(Connection::new(socket, session));
            }
            Err(error) => tracing::debug!(%error, "upgrade did not complete"),
        }
    });
    response
}

/// The WebSocket part of an accepted upgrade request: the client's key and
/// what was agreed for compression.
pub struct Upgrade {
    key: String,
    pub compression: Option<Compression>,
    extensions: Option<String>,
}

impl Upgrade {
    /// Checks the handshake headers (RFC 6455 section 4.2.1) and negotiates
    /// permessage-deflate when `deflater` is given (compression on).
    #[allow(clippy::result_large_err)]
    pub fn check(headers: &HeaderMap, deflater: Option<&Arc<Deflater>>) -> Result<Upgrade, Response<Body>> {
        let key = check_request(headers)?;
        let offers = headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok());
        let agreed = deflater.and_then(|deflater| {
            deflate::negotiate(offers).map(|(agreed, response)| {
                (
                    Compression {
                        agreed,
                        deflater: deflater.clone(),
                    },
                    response,
                )
            })
        });
        let (compression, extensions) = agreed.unzip();
        Ok(Upgrade {
            key,
            compression,
            extensions,
        })
    }

    /// The `101 Switching Protocols` answer, naming `subprotocol` if one
    /// was chosen.
    pub fn response(&self, subprotocol: Option<&'static str>) -> Response<Body> {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(accept) = HeaderValue::from_str(&accept_key(&self.key)) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = subprotocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
        }
        if let Some(extensions) = self
            .extensions
            .as_deref()
            .and_then(|e| HeaderValue::from_str(e).ok())
        {
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, extensions);
        }
        response
    }
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455 section 4.2.2).
fn accept_key(key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// What an accepted upgrade request carries.
type Checked = (Upgrade, Negotiated, Option<Box<Identity>>, Ticket);

/// Every check of an upgrade request, in the order of [`handle`].
#[allow(clippy::result_large_err)]
fn check(node: &Node, headers: &HeaderMap, remote: IpAddr) -> Result<Checked, Response<Body>> {
    handshake::not_draining(node)?;
    let upgrade = Upgrade::check(headers, node.compression.as_ref())?;
    handshake::origin(node, headers)?;
    let encoding = negotiate(headers).map_err(|offered| {
        error_response(
            StatusCode::BAD_REQUEST,
            "unsupported_subprotocol",
            &format!(
                "none of the offered subprotocols ({offered}) is supported; offer {} or {}, or none for JSON",
                Encoding::JSON_SUBPROTOCOL,
                Encoding::PROTOBUF_SUBPROTOCOL
            ),
        )
    })?;
    let identity = handshake::token(node, headers)?;
    let ticket = handshake::admit(node, headers, remote)?;
    Ok((upgrade, encoding, identity, ticket))
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
    use crate::response::tests_support::headers;

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
    fn the_accept_key_is_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
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
