//! The HTTP answer types every handler of the node shares: the response
//! body (a whole body, or a stream for long-lived responses), JSON
//! answers, and the JSON error form every HTTP error of the gateway uses:
//! `{"error":{"code":"...","message":"..."}}`.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::json;

/// The body of every response: whole (`full`) or streamed, for responses
/// that stay open (HTTP-streaming transports).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A body of these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A JSON response.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The gateway's JSON error answer.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(status, &json!({"error": {"code": code, "message": message}}))
}

/// A 503 with `Retry-After: 1`, so clients back off before retrying.
pub fn retry_later(code: &str, message: &str) -> Response<Body> {
    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, code, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
pub(crate) mod tests_support {
    use http::HeaderMap;
    use http::header::HeaderValue;

    /// A header map from static pairs (for the handlers' unit tests).
    pub(crate) fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }
}
