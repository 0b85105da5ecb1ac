//! The HTTP API for backend services.
//!
//! - `publish`: `POST /api/publish`, `POST /api/broadcast`, `POST /api/batch`;
//! - `history`: `GET /api/history`;
//! - `presence`: `GET /api/presence`, `GET /api/presence/stats`;
//! - `control`: `POST /api/disconnect`, `/api/subscribe`, `/api/unsubscribe`;
//! - `info`: `GET /api/info`; `channels`: `GET /api/channels`;
//! - here: what every request goes through (API key, content type, body).
//!
//! Checks run in a fixed order so a caller gets the most useful error first:
//! API key (401), content type (415), body size (413), JSON (400), channel
//! (400), publication size (413), broker (503). docs/api.md documents each.

mod channels;
mod control;
mod history;
mod info;
mod presence;
mod publish;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use pubsub_proto::ChannelName;
use pubsub_proto::json::{MAX_DATA_DEPTH, within_depth};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use crate::config::{ApiKey, Scope};
use crate::hub::HubError;
use crate::node::Node;
use crate::response::{Body, error_response};

pub use channels::{ANSWER_WITHIN, channels};
pub(crate) use channels::{Query as ChannelsQuery, list_channels};
pub use control::{disconnect, subscribe, unsubscribe};
pub(crate) use control::{disconnect_code, send_everywhere, target};
pub(crate) use history::{MAX_HISTORY_LIMIT, read_history};
pub use history::{history, remove_history};
pub use info::{announce_loop, info};
pub(crate) use info::{live_node_ids, live_nodes};
pub use presence::{presence, presence_stats};
pub(crate) use publish::{
    MAX_BATCH, Outcome, batch_item, broadcast_all, broadcast_channels, publish_in_order,
};
pub use publish::{batch, broadcast, publish};

pub(super) fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// An API failure: status, code and message.
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) StatusCode, pub(crate) &'static str, pub(crate) String);

impl Failure {
    pub(crate) fn bad_request(message: impl Into<String>) -> Failure {
        Failure(StatusCode::BAD_REQUEST, "bad_request", message.into())
    }

    pub(crate) fn into_response(self) -> Response<Body> {
        let mut response = error_response(self.0, self.1, &self.2);
        if self.0 == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<HubError> for Failure {
    fn from(error: HubError) -> Failure {
        match error {
            HubError::TooLarge { .. } => {
                Failure(StatusCode::PAYLOAD_TOO_LARGE, "too_large", error.to_string())
            }
            HubError::Unavailable(_) => Failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                error.public_message(),
            ),
            HubError::Internal(_) => Failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                error.public_message(),
            ),
            HubError::NotAvailable(_) => Failure(StatusCode::BAD_REQUEST, "not_available", error.to_string()),
            HubError::LimitExceeded(_) => Failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "limit_exceeded",
                error.public_message(),
            ),
        }
    }
}

pub(super) fn add_position(answer: &mut serde_json::Value, published: &broker_adapter::Published) {
    answer["offset"] = json!(published.offset);
    answer["epoch"] = json!(&*published.epoch);
}

/// The position of an idempotent publish, with `"duplicate": true` when an
/// earlier publication with the same key was found (nothing published now).
pub(super) fn add_outcome(answer: &mut serde_json::Value, once: &broker_adapter::Once) {
    add_position(answer, once.position());
    if once.is_duplicate() {
        answer["duplicate"] = json!(true);
    }
}

/// The idempotency of a request's `idempotency_key`, if it has one.
pub(crate) fn idempotency(
    node: &Node,
    key: Option<String>,
) -> Result<Option<broker_adapter::Idempotency>, Failure> {
    let Some(key) = key else { return Ok(None) };
    broker_adapter::validate_idempotency_key(&key).map_err(Failure::bad_request)?;
    Ok(Some(broker_adapter::Idempotency {
        key,
        window: node.config.idempotency_window,
    }))
}

/// Checks the API key, content type and size, and reads the body.
pub(super) async fn read_body(
    node: &Node,
    request: Request<Incoming>,
    scope: Scope,
) -> Result<Bytes, Failure> {
    authorize(&node.config.api_keys, request.headers(), scope)?;
    check_content_type(request.headers())?;
    read_limited(request, node.config.max_body_size, node.config.handshake_timeout).await
}

/// Reads a body of at most `limit` bytes (413 `too_large`) within
/// `deadline` (408 `timeout`).
pub(crate) async fn read_limited(
    request: Request<Incoming>,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<Bytes, Failure> {
    let too_large = || {
        Failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body is over the {limit}-byte limit"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    // A body dribbled in slowly must not hold a connection forever.
    match tokio::time::timeout(deadline, Limited::new(request.into_body(), limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(error)) => Err(Failure::bad_request(format!("cannot read request body: {error}"))),
        Err(_) => Err(Failure(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("request body not received within {deadline:?}"),
        )),
    }
}

/// With API keys configured, requires `Authorization: Bearer <key>` with one
/// of them. Compares in constant time and checks every key, so timing tells
/// nothing about which key (or how much of it) matched.
pub(crate) fn authorize(keys: &[ApiKey], headers: &HeaderMap, scope: Scope) -> Result<(), Failure> {
    if keys.is_empty() {
        return Ok(());
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let Some(presented) = presented else {
        return Err(Failure(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send an API key as Authorization: Bearer <key>".into(),
        ));
    };
    // Every key is compared (in constant time), so the time taken says
    // nothing of which key, if any, came close.
    let mut matched: Option<&ApiKey> = None;
    for key in keys {
        if bool::from(key.secret.as_bytes().ct_eq(presented.as_bytes())) {
            matched = Some(key);
        }
    }
    match matched {
        None => Err(Failure(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid API key".into(),
        )),
        Some(key) if !key.allows(scope) => Err(Failure(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this API key lacks the `{}` scope", scope.name()),
        )),
        Some(_) => Ok(()),
    }
}

/// A body must say it is JSON: a browser can send a cross-origin POST with
/// no Content-Type (or `text/plain`) without a CORS preflight, so accepting
/// those would let any web page a visitor opens publish through a gateway
/// the visitor can reach.
fn check_content_type(headers: &HeaderMap) -> Result<(), Failure> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(Failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/json".into(),
        ));
    };
    let mime = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        Err(Failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send Content-Type: application/json (got {mime:?})"),
        ))
    }
}

pub(crate) fn parse_channel(name: &str) -> Result<ChannelName, Failure> {
    ChannelName::parse(name).map_err(|e| Failure(StatusCode::BAD_REQUEST, "invalid_channel", e.to_string()))
}

/// The publication bytes: the raw JSON text of `data` (a slice of the body,
/// not a copy), or the decoded `data_b64`.
pub(super) fn payload(
    data: Option<&RawValue>,
    data_b64: Option<String>,
    body: &Bytes,
) -> Result<Bytes, Failure> {
    match (data, data_b64) {
        (Some(raw), None) => {
            if !within_depth(raw.get(), MAX_DATA_DEPTH) {
                return Err(Failure::bad_request(format!(
                    "`data` is nested deeper than {MAX_DATA_DEPTH} levels"
                )));
            }
            Ok(body.slice_ref(raw.get().as_bytes()))
        }
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map(Bytes::from)
            .map_err(|e| Failure::bad_request(format!("`data_b64` is not base64: {e}"))),
        (Some(_), Some(_)) => Err(Failure::bad_request("give either `data` or `data_b64`, not both")),
        (None, None) => Err(Failure::bad_request("missing field `data`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::response::tests_support::headers;

    #[test]
    fn api_keys_are_required_when_configured() {
        let keys = vec![ApiKey::unrestricted("k1"), ApiKey::unrestricted("second-key")];
        let publish = Scope::Publish;
        assert!(authorize(&[], &headers(&[]), publish).is_ok());
        assert!(authorize(&keys, &headers(&[("authorization", "Bearer k1")]), publish).is_ok());
        assert!(
            authorize(
                &keys,
                &headers(&[("authorization", "Bearer second-key")]),
                publish
            )
            .is_ok()
        );
        for bad in ["Bearer k2", "Bearer k", "Bearer second-key2", "k1", "Basic azE6"] {
            let err = authorize(&keys, &headers(&[("authorization", bad)]), publish)
                .err()
                .map(|f| f.0);
            assert_eq!(err, Some(StatusCode::UNAUTHORIZED), "{bad}");
        }
        assert!(authorize(&keys, &headers(&[]), publish).is_err());
    }

    #[test]
    fn a_scoped_key_may_do_only_what_its_scopes_name() {
        let keys = vec![
            ApiKey::parse("[publish read] pub").unwrap(),
            ApiKey::unrestricted("admin"),
        ];
        let with = |key: &str| match key {
            "pub" => headers(&[("authorization", "Bearer pub")]),
            _ => headers(&[("authorization", "Bearer admin")]),
        };
        assert!(authorize(&keys, &with("pub"), Scope::Publish).is_ok());
        assert!(authorize(&keys, &with("pub"), Scope::Read).is_ok());
        for scope in [Scope::Connections, Scope::History] {
            let err = authorize(&keys, &with("pub"), scope).err().map(|f| (f.0, f.1));
            assert_eq!(err, Some((StatusCode::FORBIDDEN, "forbidden")));
            assert!(authorize(&keys, &with("admin"), scope).is_ok());
        }
    }

    #[test]
    fn content_type_must_be_json() {
        // Absent: refused too (a browser's CORS-simple POST has none).
        assert!(check_content_type(&headers(&[])).is_err());
        assert!(check_content_type(&headers(&[("content-type", "application/json; charset=utf-8")])).is_ok());
        assert!(check_content_type(&headers(&[("content-type", "application/cloudevents+json")])).is_ok());
        let err = check_content_type(&headers(&[("content-type", "application/x-www-form-urlencoded")]));
        assert_eq!(err.err().map(|f| f.0), Some(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }

    #[test]
    fn payload_is_a_slice_of_the_body() {
        let body = Bytes::from_static(br#"{"channel":"a","data":{"x":[1,2]}}"#);
        let parsed: publish::PublishRequest<'_> = serde_json::from_slice(&body).unwrap();
        let data = payload(parsed.data, parsed.data_b64, &body).ok().unwrap();
        assert_eq!(&data[..], br#"{"x":[1,2]}"#);
        assert!(body.as_ptr_range().contains(&data.as_ptr()));
    }
}
