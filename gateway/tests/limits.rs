//! Admission limits, per-connection limits and Origin checks, each with its
//! documented answer and rejection metric.

mod support;

use std::net::SocketAddr;

use serde_json::json;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Error as WsError;

fn status_of(result: Result<(WsClient, http::HeaderMap), WsError>) -> Option<(u16, Option<String>)> {
    match result {
        Ok(_) => None,
        Err(WsError::Http(response)) => Some((
            response.status().as_u16(),
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or_default().to_string()),
        )),
        Err(other) => panic!("unexpected error {other}"),
    }
}

async fn rejections(addr: SocketAddr, reason: &str) -> f64 {
    let text = get(addr, "/metrics").await.text();
    let prefix = format!("gateway_rejections_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

#[tokio::test]
async fn the_node_connection_limit_answers_503_with_retry_after() {
    let mut config = test_config();
    config.max_connections = 3;
    let gw = start(config).await;
    let addr = gw.local_addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(WsClient::connect(addr, None).await);
    }
    assert_eq!(
        status_of(WsClient::connect_with(addr, &[]).await),
        Some((503, Some("1".into())))
    );
    drop(held.pop());
    eventually("a place is free again", async || {
        WsClient::try_connect(addr, None).await.is_ok()
    })
    .await;
    assert!(rejections(addr, "max_connections").await >= 1.0);
}

#[tokio::test]
async fn per_ip_limits_use_forwarded_addresses_only_from_trusted_proxies() {
    let mut config = test_config();
    config.max_connections_per_ip = 2;
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let gw = start(config).await;
    let addr = gw.local_addr();
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    let _a = WsClient::connect_with(addr, &from("198.51.100.1")).await.unwrap();
    let _b = WsClient::connect_with(addr, &from("198.51.100.1")).await.unwrap();
    assert_eq!(
        status_of(WsClient::connect_with(addr, &from("198.51.100.1")).await).map(|s| s.0),
        Some(503)
    );
    // Another client behind the same proxy is counted on its own.
    let _c = WsClient::connect_with(addr, &from("198.51.100.2")).await.unwrap();
    // A forged leftmost entry does not help: the rightmost untrusted one counts.
    let forged = [("x-forwarded-for", "203.0.113.5, 198.51.100.1")];
    assert_eq!(
        status_of(WsClient::connect_with(addr, &forged).await).map(|s| s.0),
        Some(503)
    );
    assert!(rejections(addr, "max_connections_per_ip").await >= 2.0);

    // The reviewer's bypass: the proxy's entry with a port (or `unknown`)
    // used to be skipped and the client's forged leftmost one counted.
    let mut config = test_config();
    config.max_connections_per_ip = 1;
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let gw = start(config).await;
    let addr = gw.local_addr();
    let _first = WsClient::connect_with(addr, &[("x-forwarded-for", "9.9.9.1, 203.0.113.5:4444")])
        .await
        .unwrap();
    for forged in [
        "9.9.9.2, 203.0.113.5:4444",
        "9.9.9.3, 203.0.113.5:5555",
        "9.9.9.4, 203.0.113.5",
    ] {
        assert_eq!(
            status_of(WsClient::connect_with(addr, &[("x-forwarded-for", forged)]).await).map(|s| s.0),
            Some(503),
            "{forged}"
        );
    }
    let _unknown = WsClient::connect_with(addr, &[("x-forwarded-for", "9.9.9.5, unknown")])
        .await
        .unwrap();
    assert_eq!(
        status_of(WsClient::connect_with(addr, &[("x-forwarded-for", "9.9.9.6, unknown")]).await)
            .map(|s| s.0),
        Some(503),
        "`unknown` counts as the proxy itself, never as the forged entry to its left"
    );
    // IPv6 counts per /64: four addresses of one network are one client.
    let _v6 = WsClient::connect_with(addr, &[("x-forwarded-for", "[2001:db8:0:1::1]:443")])
        .await
        .unwrap();
    for other in ["2001:db8:0:1::2", "2001:db8:0:1:ffff::3", "[2001:db8:0:1::4]"] {
        assert_eq!(
            status_of(WsClient::connect_with(addr, &[("x-forwarded-for", other)]).await).map(|s| s.0),
            Some(503),
            "{other}"
        );
    }
    let _next_network = WsClient::connect_with(addr, &[("x-forwarded-for", "2001:db8:0:2::1")])
        .await
        .unwrap();

    // Without trusted proxies the header counts for nothing.
    let mut config = test_config();
    config.max_connections_per_ip = 2;
    let gw = start(config).await;
    let addr = gw.local_addr();
    let _x = WsClient::connect_with(addr, &from("198.51.100.1")).await.unwrap();
    let _y = WsClient::connect_with(addr, &from("198.51.100.2")).await.unwrap();
    assert_eq!(
        status_of(WsClient::connect_with(addr, &from("198.51.100.3")).await).map(|s| s.0),
        Some(503)
    );
}

/// A WebSocket connection that starts with a PROXY v1 header.
async fn via_proxy_protocol(addr: SocketAddr, source: &str) -> Result<(WsClient, http::HeaderMap), WsError> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.map_err(WsError::Io)?;
    let header = format!("PROXY TCP4 {source} 127.0.0.1 40000 {}\r\n", addr.port());
    tcp.write_all(header.as_bytes()).await.map_err(WsError::Io)?;
    WsClient::handshake(Box::new(tcp), &ws_url(addr), &[]).await
}

#[tokio::test]
async fn proxy_protocol_names_the_client_for_limits() {
    let mut config = test_config();
    config.max_connections_per_ip = 1;
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    config.proxy_protocol = true;
    let gw = start(config).await;
    let addr = gw.local_addr();
    let _first = via_proxy_protocol(addr, "192.0.2.10").await.unwrap();
    assert_eq!(
        status_of(via_proxy_protocol(addr, "192.0.2.10").await).map(|s| s.0),
        Some(503)
    );
    let _other = via_proxy_protocol(addr, "192.0.2.11").await.unwrap();
    // A trusted peer that sends no PROXY header is dropped.
    assert!(WsClient::try_connect(addr, None).await.is_err());
}

#[tokio::test]
async fn the_connect_rate_is_limited_per_node() {
    let mut config = test_config();
    config.max_connect_rate = 5;
    let gw = start(config).await;
    let addr = gw.local_addr();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..12 {
        match WsClient::connect_with(addr, &[]).await {
            Ok((client, _)) => accepted.push(client),
            Err(error) => {
                assert_eq!(status_of(Err(error)), Some((503, Some("1".into()))));
                refused += 1;
            }
        }
    }
    assert!(
        accepted.len() >= 5 && refused >= 5,
        "{} accepted, {refused} refused",
        accepted.len()
    );
    assert_eq!(rejections(addr, "connect_rate").await, f64::from(refused));
}

#[tokio::test]
async fn subscriptions_per_connection_are_limited() {
    let mut config = test_config();
    config.max_subscriptions = 3;
    let gw = start(config).await;
    let mut client = WsClient::connect(gw.local_addr(), None).await;
    for i in 0..3 {
        client.subscribe(&format!("c{i}")).await;
    }
    let refused = client
        .request(json!({"type":"subscribe","id":9,"channel":"c3"}))
        .await;
    assert_eq!(
        (refused["code"].as_str(), refused["id"].as_u64()),
        (Some("limit_exceeded"), Some(9))
    );
    client
        .request(json!({"type":"unsubscribe","id":1,"channel":"c0"}))
        .await;
    assert_eq!(
        client
            .request(json!({"type":"subscribe","id":2,"channel":"c3"}))
            .await["type"],
        "subscribed"
    );
}

#[tokio::test]
async fn publishing_too_fast_is_refused_then_closed_4029() {
    let mut config = test_config();
    config.publish_rate = 5;
    let gw = start(config).await;
    let addr = gw.local_addr();
    let mut client = WsClient::connect(addr, None).await;
    let mut refused = 0;
    for i in 0..8 {
        let reply = client
            .request(json!({"type":"publish","id":i,"channel":"fast","data":i}))
            .await;
        if reply["code"] == "rate_limited" {
            refused += 1;
        }
    }
    assert!(
        refused >= 2,
        "a burst of one second's worth, then refusals ({refused})"
    );
    // Ignoring the refusals ends the connection.
    let mut closed = None;
    for i in 0..100 {
        client
            .send_json(json!({"type":"publish","id":100 + i,"channel":"fast","data":i}))
            .await;
    }
    while closed.is_none() {
        if let tokio_tungstenite::tungstenite::Message::Close(frame) = client.next().await {
            closed = frame.map(|f| u16::from(f.code));
        }
    }
    assert_eq!(closed, Some(4029));
    assert!(rejections(addr, "publish_rate").await >= 30.0);
}

#[tokio::test]
async fn origins_are_checked_before_the_upgrade() {
    let mut config = test_config();
    config.allowed_origins = vec!["https://app.example.com".into(), "https://*.example.org".into()];
    let gw = start(config).await;
    let addr = gw.local_addr();
    for allowed in ["https://app.example.com", "https://a.b.example.org"] {
        assert!(
            WsClient::connect_with(addr, &[("origin", allowed)]).await.is_ok(),
            "{allowed}"
        );
    }
    for refused in [
        "https://evil.com",
        "http://app.example.com",
        "https://example.org",
        "null",
    ] {
        assert_eq!(
            status_of(WsClient::connect_with(addr, &[("origin", refused)]).await).map(|s| s.0),
            Some(403),
            "{refused}"
        );
    }
    // Non-browser clients send no Origin: allowed unless required.
    assert!(WsClient::connect_with(addr, &[]).await.is_ok());
    let mut strict = test_config();
    strict.require_origin = true;
    let gw = start(strict).await;
    assert_eq!(
        status_of(WsClient::connect_with(gw.local_addr(), &[]).await).map(|s| s.0),
        Some(403)
    );
    assert!(rejections(gw.local_addr(), "origin").await >= 1.0);
}

/// Stream keys (`<prefix>:{channel}:m` and `:s`) in a Redis server.
fn stream_keys(redis: &support::redis::RedisServer) -> usize {
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("*}:[ms]")
        .query(&mut redis.connection())
        .expect("KEYS");
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churning_through_channel_names_leaves_nothing_in_redis() {
    let redis = support::redis::RedisServer::start();
    let mut config = test_config();
    config.redis_url = Some(redis.url());
    config.subscribe_rate = 0;
    let gw = start(config).await;
    let addr = gw.local_addr();
    eventually("ready", async || get(addr, "/readyz").await.status == 200).await;
    let mut client = WsClient::connect(addr, None).await;
    for i in 0..300 {
        let channel = format!("churn:{i}-{}", fastrand::u64(..));
        let reply = client
            .request(json!({"type":"subscribe","id":i,"channel":channel,"since":{"epoch":"gone","offset":3}}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        assert_eq!(
            (reply["epoch"].as_str(), reply["offset"].as_u64()),
            (Some(""), Some(0))
        );
        client
            .request(json!({"type":"unsubscribe","id":i,"channel":channel}))
            .await;
        if i % 4 == 0 {
            let history = get(addr, &format!("/api/history?channel={channel}&since=0")).await;
            assert_eq!(history.status, 200);
        }
    }
    assert_eq!(stream_keys(&redis), 0, "reads and subscribes created stream keys");
    let text = get(addr, "/metrics").await.text();
    assert_eq!(metric(&text, "gateway_channels"), Some(0.0));
    // A publication makes the channel's stream; subscribers from before
    // it continue into it without a gap.
    let mut follower = WsClient::connect(addr, None).await;
    let reply = follower
        .request(json!({"type":"subscribe","id":1,"channel":"fresh"}))
        .await;
    assert_eq!(
        (reply["epoch"].as_str(), reply["offset"].as_u64()),
        (Some(""), Some(0))
    );
    let mut publisher = WsClient::connect(addr, None).await;
    let ack = publisher
        .request(json!({"type":"publish","id":1,"channel":"fresh","data":"one"}))
        .await;
    assert_eq!(ack["offset"], 1, "{ack}");
    let first = follower.recv_json().await;
    assert_eq!(
        (first["type"].as_str(), first["offset"].as_u64()),
        (Some("message"), Some(1)),
        "{first}"
    );
    assert_eq!(stream_keys(&redis), 2);
}

#[tokio::test]
async fn subscribing_too_fast_is_refused_after_a_burst() {
    let mut config = test_config();
    config.subscribe_rate = 10;
    config.max_subscriptions = 20;
    let gw = start(config).await;
    let addr = gw.local_addr();
    let mut client = WsClient::connect(addr, None).await;
    let mut refused = 0;
    for i in 0..60 {
        let channel = format!("burst:{i}");
        let reply = client
            .request(json!({"type":"subscribe","id":i,"channel":channel}))
            .await;
        match reply["type"].as_str() {
            Some("subscribed") => {
                client
                    .request(json!({"type":"unsubscribe","id":i,"channel":channel}))
                    .await;
            }
            _ => {
                assert_eq!(reply["code"], "rate_limited", "{reply}");
                refused += 1;
            }
        }
    }
    // A burst of --max-subscriptions (20) passes; 60 in well under the
    // four seconds the rest would take cannot.
    assert!(refused >= 20, "refused {refused}");
    assert!(rejections(addr, "subscribe_rate").await >= 20.0);
}
