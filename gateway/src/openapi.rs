//! `GET /api/openapi.json`: the HTTP API's OpenAPI 3.1 document.
//!
//! The document is written in `docs/openapi.yaml`; the build script turns
//! it into JSON (so a broken document fails the build), and the node
//! serves those bytes as they are.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::response::{Body, full};

/// The document as JSON, made from `docs/openapi.yaml` at build time.
pub const DOCUMENT: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

pub fn serve() -> Response<Body> {
    let mut response = Response::new(full(DOCUMENT));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
