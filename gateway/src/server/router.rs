//! Which handler answers a request: by path, then by method (405 with
//! `Allow` for the wrong one, 404 for an unknown path). Handlers return a
//! [`Body`] that may be a stream, for responses that stay open.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::node::Node;
use crate::response::{Body, error_response, retry_later};
use crate::transport::{http_stream, sse, websocket};
use crate::{demo, http_api, openapi, probes};

/// Every path the node serves (besides `/demo` with `--demo`) and its
/// method; GET paths answer HEAD too. `docs/openapi.yaml` documents exactly
/// these (a test compares the two).
pub const ROUTES: &[(&str, &str)] = &[
    ("/ws", "GET"),
    ("/sse", "GET"),
    ("/stream", "GET"),
    ("/stream/commands", "POST"),
    ("/healthz", "GET"),
    ("/readyz", "GET"),
    ("/metrics", "GET"),
    ("/api/openapi.json", "GET"),
    ("/api/history", "GET"),
    ("/api/info", "GET"),
    ("/api/channels", "GET"),
    ("/api/presence", "GET"),
    ("/api/presence/stats", "GET"),
    ("/api/publish", "POST"),
    ("/api/broadcast", "POST"),
    ("/api/batch", "POST"),
    ("/api/history/remove", "POST"),
    ("/api/disconnect", "POST"),
    ("/api/subscribe", "POST"),
    ("/api/unsubscribe", "POST"),
];

/// Paths that answer a CORS preflight (`OPTIONS`) from an allowed
/// origin, with the methods a page may use: the ones a browser calls with
/// headers or bodies that are not CORS-simple.
pub const PREFLIGHT: &[(&str, &str)] = &[("/stream", "GET"), ("/stream/commands", "POST")];

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Surface {
    /// `--listen`: clients and backends (and probes, without an admin
    /// listener).
    Public,
    /// `--admin-listen`: probes and metrics only.
    Admin,
}

/// `remote`: where the connection comes from (after PROXY protocol).
pub(super) async fn route(
    node: Arc<Node>,
    request: Request<Incoming>,
    remote: IpAddr,
    surface: Surface,
) -> Response<Body> {
    let path = request.uri().path();
    let operators = matches!(path, "/healthz" | "/readyz" | "/metrics");
    let here = match surface {
        Surface::Admin => operators,
        Surface::Public => !operators || node.config.admin_listen.is_none(),
    };
    if !here {
        return error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {path} on this listener"),
        );
    }
    let demo = node.config.demo && (path == "/demo" || path.starts_with("/demo/"));
    let route = ROUTES.iter().find(|(p, _)| *p == path).map(|(_, method)| *method);
    let allowed: &'static str = match route {
        Some(method) => method,
        None if demo => "GET",
        None => {
            return error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no route for {path}"),
            );
        }
    };
    if request.method() == Method::OPTIONS
        && let Some((_, methods)) = PREFLIGHT.iter().find(|(p, _)| *p == path)
    {
        return http_stream::commands::preflight(&node, &request, methods);
    }
    let method_ok =
        request.method().as_str() == allowed || (allowed == "GET" && request.method() == Method::HEAD);
    if !method_ok {
        let mut response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{path} accepts {allowed}"),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allowed));
        return response;
    }
    // The API is bounded in requests served at once; past the bound it
    // answers at once rather than piling requests up.
    let _permit = if path.starts_with("/api/") {
        match node.api.try_enter() {
            Some(permit) => Some(permit),
            None => {
                node.metrics.reject("api_concurrency");
                return retry_later(
                    "overloaded",
                    &format!(
                        "this node is serving {} API requests already; retry shortly",
                        node.api.limit()
                    ),
                );
            }
        }
    } else {
        None
    };
    match path {
        "/ws" => websocket::handle(&node, request, remote),
        "/sse" => sse::handle(&node, request, remote),
        "/stream" => http_stream::handle(&node, request, remote),
        "/stream/commands" => http_stream::commands::handle(node, request).await,
        "/healthz" => probes::healthz(),
        "/readyz" => probes::readyz(&node),
        "/metrics" => probes::metrics(&node),
        "/api/publish" => http_api::publish(node, request).await,
        "/api/history" => http_api::history(node, request).await,
        "/api/info" => http_api::info(node, request).await,
        "/api/channels" => http_api::channels(node, request).await,
        "/api/presence" => http_api::presence(node, request).await,
        "/api/presence/stats" => http_api::presence_stats(node, request).await,
        "/api/batch" => http_api::batch(node, request).await,
        "/api/broadcast" => http_api::broadcast(node, request).await,
        "/api/history/remove" => http_api::remove_history(node, request).await,
        "/api/disconnect" => http_api::disconnect(node, request).await,
        "/api/subscribe" => http_api::subscribe(node, request).await,
        "/api/unsubscribe" => http_api::unsubscribe(node, request).await,
        "/api/openapi.json" => openapi::serve(),
        _ => demo::serve(path),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{PREFLIGHT, ROUTES};

    /// The OpenAPI document names exactly the routes the router serves,
    /// each with its method (and HEAD beside every GET).
    #[test]
    fn the_openapi_document_and_the_router_name_the_same_endpoints() {
        let document: serde_json::Value =
            serde_json::from_str(crate::openapi::DOCUMENT).expect("the document is JSON");
        assert_eq!(document["openapi"].as_str().map(|v| &v[..3]), Some("3.1"));
        let methods = ["get", "head", "post", "put", "patch", "delete", "options"];
        let documented: BTreeSet<(String, String)> = document["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, item)| {
                methods
                    .iter()
                    .filter(|m| item.get(**m).is_some())
                    .map(|m| (path.clone(), m.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .flat_map(|(path, method)| {
                let mut both = vec![(path.to_string(), method.to_lowercase())];
                if *method == "GET" {
                    both.push((path.to_string(), "head".to_string()));
                }
                both
            })
            .chain(
                PREFLIGHT
                    .iter()
                    .map(|(path, _)| (path.to_string(), "options".to_string())),
            )
            .collect();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "served but not documented: {undocumented:?}; documented but not served: {unserved:?}"
        );
    }
}
