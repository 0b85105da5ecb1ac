//! The demo page (`--demo`): a browser client of this node at `/demo/`,
//! the first thing a newcomer opens. The page and the JavaScript SDK it
//! uses (its modules) are compiled into the binary from `clients/js/`, so an installed
//! gateway needs no files beside it.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::response::{Body, error_response, full};

const PAGE: &str = include_str!("../../clients/js/demo/index.html");
/// The SDK's modules, served at `/demo/<path>`: the page imports
/// `pubsub.js`, which imports the rest by relative path.
const SDK: &[(&str, &str)] = &[
    ("pubsub.js", include_str!("../../clients/js/src/pubsub.js")),
    ("base64.js", include_str!("../../clients/js/src/base64.js")),
    ("client.js", include_str!("../../clients/js/src/client.js")),
    (
        "connection.js",
        include_str!("../../clients/js/src/connection.js"),
    ),
    ("constants.js", include_str!("../../clients/js/src/constants.js")),
    ("emitter.js", include_str!("../../clients/js/src/emitter.js")),
    (
        "environment.js",
        include_str!("../../clients/js/src/environment.js"),
    ),
    ("errors.js", include_str!("../../clients/js/src/errors.js")),
    ("heartbeat.js", include_str!("../../clients/js/src/heartbeat.js")),
    ("options.js", include_str!("../../clients/js/src/options.js")),
    ("protocol.js", include_str!("../../clients/js/src/protocol.js")),
    ("reconnect.js", include_str!("../../clients/js/src/reconnect.js")),
    ("requests.js", include_str!("../../clients/js/src/requests.js")),
    (
        "subscription.js",
        include_str!("../../clients/js/src/subscription.js"),
    ),
    ("tokens.js", include_str!("../../clients/js/src/tokens.js")),
    ("transport.js", include_str!("../../clients/js/src/transport.js")),
    (
        "transports/http-stream.js",
        include_str!("../../clients/js/src/transports/http-stream.js"),
    ),
    (
        "transports/websocket.js",
        include_str!("../../clients/js/src/transports/websocket.js"),
    ),
];

/// Serves `path` (under `/demo`), or 404.
pub fn serve(path: &str) -> Response<Body> {
    match path {
        "/demo" => {
            let mut response = Response::new(crate::response::empty());
            *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
            response
                .headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/demo/"));
            response
        }
        "/demo/" | "/demo/index.html" => file(PAGE, "text/html; charset=utf-8"),
        _ => match path
            .strip_prefix("/demo/")
            .and_then(|module| SDK.iter().find(|(name, _)| *name == module))
        {
            Some((_, source)) => file(source, "text/javascript; charset=utf-8"),
            None => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no route for {path}"),
            ),
        },
    }
}

fn file(contents: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from_static(contents.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
