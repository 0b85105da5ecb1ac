//! The shipped dashboard and alert rules (deploy/monitoring/, and the
//! PrometheusRule generated from them) name only metrics a running gateway
//! exports, and docs/operations.md documents every metric it exports.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use support::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `gateway_[a-z_]+` token in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("gateway_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let before = rest[..at].chars().next_back();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].trim_end_matches('_').to_string());
        }
        rest = &tail[end..];
    }
    names
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json" || e == "yaml") {
            out.push(path);
        }
    }
}

#[tokio::test]
async fn dashboards_alerts_and_docs_name_exactly_the_exported_metrics() {
    let gateway = start(test_config()).await;
    let scrape = get(gateway.local_addr(), "/metrics").await.text();
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(exported.contains("gateway_connections"), "{scrape}");
    // Histogram series carry suffixes.
    let known = |name: &str| {
        exported.contains(name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s).is_some_and(|base| exported.contains(base)))
    };

    let mut monitored = Vec::new();
    files(&repo().join("deploy/monitoring"), &mut monitored);
    files(
        &repo().join("deploy/kubernetes/components/prometheus-operator"),
        &mut monitored,
    );
    assert!(monitored.iter().any(|p| p.ends_with("grafana-dashboard.json")));
    assert!(monitored.iter().any(|p| p.ends_with("alerts.yaml")));
    let mut used = BTreeSet::new();
    for path in &monitored {
        let text = std::fs::read_to_string(path).expect("readable");
        for name in metric_names(&text) {
            assert!(
                known(&name),
                "{} names {name}, which the gateway does not export",
                path.display()
            );
            used.insert(name);
        }
    }
    for essential in [
        "gateway_connections",
        "gateway_broker_up",
        "gateway_slow_consumer_disconnects_total",
    ] {
        assert!(
            used.contains(essential),
            "the dashboard or alerts should use {essential}"
        );
    }

    let operations = std::fs::read_to_string(repo().join("docs/operations.md")).expect("operations.md");
    let documented = metric_names(&operations);
    for name in &exported {
        assert!(
            documented.contains(name),
            "docs/operations.md does not document {name}"
        );
    }
}

/// With `--admin-listen`, probes and metrics are served there only, and
/// nothing else is: clients on the public listener cannot read them.
#[tokio::test]
async fn an_admin_listener_takes_the_probes_and_metrics_off_the_public_one() {
    let mut config = test_config();
    config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let gw = start(config).await;
    let (public, admin) = (gw.local_addr(), gw.admin_addr().expect("an admin listener"));
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get(admin, path).await.status, 200, "{path} on the admin listener");
        assert_eq!(get(public, path).await.status, 404, "{path} is not public");
    }
    assert!(
        get(admin, "/metrics")
            .await
            .text()
            .contains("gateway_connections")
    );
    let answer = post_json(admin, "/api/publish", serde_json::json!({"channel":"a","data":1})).await;
    assert_eq!(answer.status, 404, "the admin listener serves nothing else");
    assert_eq!(get(admin, "/ws").await.status, 404);
    // The public listener still serves clients and the API.
    let mut client = WsClient::connect(public, None).await;
    client.subscribe("a").await;
    let answer = post_json(
        public,
        "/api/publish",
        serde_json::json!({"channel":"a","data":1}),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(client.recv_json().await["data"], 1);
}
