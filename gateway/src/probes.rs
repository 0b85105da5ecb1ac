//! The probes Kubernetes and load balancers use, and the metrics endpoint:
//! `GET /healthz` (liveness: never depends on the broker), `GET /readyz`
//! (readiness: draining or broker down makes it 503 with the failing check
//! named), `GET /metrics` (Prometheus text format).

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;

use crate::node::Node;
use crate::response::{Body, full, json_response};

/// `GET /healthz`: the process is alive.
pub fn healthz() -> Response<Body> {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

/// The checks that fail, in `/readyz` order (empty: ready).
fn failing_checks(node: &Node, broker_up: bool) -> Vec<&'static str> {
    let mut failing = Vec::new();
    if node.lifecycle.is_draining() {
        failing.push("draining");
    }
    if !broker_up {
        failing.push("broker");
    }
    if node.security.auth.as_ref().is_some_and(|a| !a.keys_loaded()) {
        failing.push("jwks");
    }
    failing
}

/// `GET /readyz`: ready for connections, or 503 naming what fails.
pub fn readyz(node: &Node) -> Response<Body> {
    let draining = node.lifecycle.is_draining();
    let broker = node.hub.broker_health().borrow().clone();
    let failing = failing_checks(node, broker.up);
    let checks = json!({
        "draining": draining,
        "broker": {"kind": node.hub.broker_kind(), "up": broker.up, "detail": broker.detail},
    });
    let mut checks = checks;
    if let Some(auth) = &node.security.auth
        && auth.jwks.is_some()
    {
        checks["jwks"] = json!({"loaded": auth.keys_loaded()});
    }
    if failing.is_empty() {
        json_response(StatusCode::OK, &json!({"status": "ready", "checks": checks}))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not_ready", "failing": failing, "checks": checks}),
        )
    }
}

/// `GET /metrics`: Prometheus text format.
pub fn metrics(node: &Node) -> Response<Body> {
    // Readiness is a function of state read here, so it is exact at scrape time.
    let broker_up = node.hub.broker_health().borrow().up;
    let ready = failing_checks(node, broker_up).is_empty();
    node.metrics.ready.set(if ready { 1.0 } else { 0.0 });
    node.metrics
        .draining
        .set(if node.lifecycle.is_draining() { 1.0 } else { 0.0 });
    let mut response = Response::new(full(node.metrics.render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
