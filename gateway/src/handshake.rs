//! The checks every transport makes before it accepts a client, in one
//! place: the node is not draining, the browser's `Origin` is allowed, a
//! token presented in the request is valid, and the client (behind trusted
//! proxies) is admitted by the connection limits. Each refusal is an HTTP
//! answer with a documented status and code, given before any session
//! exists (docs/security.md).
//!
//! A transport calls the checks in this order, cheapest first: draining
//! (503), Origin (403), token (401), limits (503), with its own protocol
//! checks in between (the WebSocket upgrade checks its headers after
//! `not_draining` and its subprotocol after `origin`).

use std::net::IpAddr;

use http::Response;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};

use crate::auth::Identity;
use crate::client_ip;
use crate::limits::{Refused, Ticket};
use crate::node::Node;
use crate::response::{Body, error_response, retry_later};

/// A draining node takes no new clients: 503 `draining`.
#[allow(clippy::result_large_err)]
pub fn not_draining(node: &Node) -> Result<(), Response<Body>> {
    if node.lifecycle.is_draining() {
        node.metrics.reject("draining");
        return Err(retry_later(
            "draining",
            "this node is shutting down; connect to another node",
        ));
    }
    Ok(())
}

/// With `--allowed-origin` rules, a browser's `Origin` must match one;
/// requests without `Origin` (non-browser clients) pass unless
/// `--require-origin`. Refused: 403 `forbidden_origin`.
#[allow(clippy::result_large_err)]
pub fn origin(node: &Node, headers: &HeaderMap) -> Result<(), Response<Body>> {
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let refusal = match origin {
        None if node.config.require_origin => Some("an Origin header is required".to_string()),
        None => None,
        Some(_) if node.security.origins.is_empty() => None,
        Some(origin) if node.security.origins.iter().any(|rule| rule.allows(origin)) => None,
        Some(origin) => {
            let shown: String = origin.chars().take(100).collect();
            Some(format!("origin {shown:?} is not allowed"))
        }
    };
    match refusal {
        None => Ok(()),
        Some(message) => {
            node.metrics.reject("origin");
            Err(error_response(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                &message,
            ))
        }
    }
}

/// A token in `Authorization: Bearer` (server-side clients may
/// authenticate at the handshake; browsers use `connect`). With
/// authentication on, a bad one is refused: 401 `unauthorized`.
#[allow(clippy::result_large_err)]
pub fn token(node: &Node, headers: &HeaderMap) -> Result<Option<Box<Identity>>, Response<Body>> {
    let (Some(auth), Some(token)) = (&node.security.auth, bearer_token(headers)) else {
        return Ok(None);
    };
    match auth.verify(token) {
        Ok(identity) => Ok(Some(Box::new(identity))),
        Err(message) => Err(unauthorized(node, &message)),
    }
}

/// The 401 `unauthorized` answer (with `WWW-Authenticate: Bearer`), counted
/// as a rejection.
pub fn unauthorized(node: &Node, message: &str) -> Response<Body> {
    node.metrics.reject("unauthorized");
    let mut response = error_response(StatusCode::UNAUTHORIZED, "unauthorized", message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Admission by the node's limits, for the client's address behind
/// trusted proxies: 503 with Retry-After when a limit is reached.
#[allow(clippy::result_large_err)]
pub fn admit(node: &Node, headers: &HeaderMap, remote: IpAddr) -> Result<Ticket, Response<Body>> {
    let client = client_ip::from_request(remote, headers, &node.config.trusted_proxies);
    let key = client_ip::limit_key(client, node.config.ipv6_limit_prefix);
    node.clients.admission.admit(key).map_err(|refused| {
        node.metrics.reject(refused.reason());
        let message = match refused {
            Refused::NodeFull => "this node has no room for more connections; retry (another node may have)",
            Refused::IpFull => "too many connections from your address",
            Refused::RateLimited => "too many new connections right now; retry shortly",
        };
        retry_later(refused.reason(), message)
    })
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
