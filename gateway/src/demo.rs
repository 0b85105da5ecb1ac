//! The demo page (`--demo`): a browser client of this node at `/demo/`,
//! the first thing a newcomer opens. The page and the JavaScript SDK it
//! uses are compiled into the binary from `clients/js/`, so an installed
//! gateway needs no files beside it.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::response::{Body, error_response, full};

const PAGE: &str = include_str!("../../clients/js/demo/index.html");
const SDK: &str = include_str!("../../clients/js/src/pubsub.js");

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
        "/demo/pubsub.js" => file(SDK, "text/javascript; charset=utf-8"),
        _ => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {path}"),
        ),
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
