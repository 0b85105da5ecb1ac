//! Several real gateway processes on one real Redis: cross-node delivery,
//! per-channel broker subscriptions, Redis outages, a silently dead
//! subscription, and a real HAProxy with sticky sessions in front.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pubsub_proto::pb::server_message::Kind;
use pubsub_proto::protobuf;
use serde_json::{Value, json};
use support::haproxy::HaProxy;
use support::proxy::SilencingProxy;
use support::redis::RedisServer;
use support::*;
use tokio_tungstenite::tungstenite::Message;

async fn metric_of(addr: SocketAddr, name: &str) -> f64 {
    metric(&get(addr, "/metrics").await.text(), name).unwrap_or(-1.0)
}

/// Reads publications until `count` arrived; returns (channel, data) pairs.
/// Works for both encodings.
async fn collect(client: &mut WsClient, count: usize) -> Vec<(String, Value)> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        match client.next().await {
            Message::Text(text) => {
                let m: Value = serde_json::from_str(&text).expect("JSON");
                assert_eq!(m["type"], "message", "{m}");
                got.push((
                    m["channel"].as_str().unwrap_or_default().to_string(),
                    m["data"].clone(),
                ));
            }
            Message::Binary(bytes) => match protobuf::decode_server_message(bytes).expect("protobuf").kind {
                Some(Kind::Message(m)) => {
                    got.push((m.channel, serde_json::from_slice(&m.data).expect("JSON data")));
                }
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

async fn subscribe_proto(client: &mut WsClient, channel: &str) {
    use pubsub_proto::{ChannelName, ClientCommand, Command};
    let command = ClientCommand {
        id: Some(1),
        command: Command::Subscribe {
            channel: ChannelName::parse(channel).unwrap(),
            since: None,
        },
    };
    client
        .send(Message::binary(protobuf::encode_command(&command)))
        .await;
    match client.next().await {
        Message::Binary(bytes) => {
            let m = protobuf::decode_server_message(bytes).unwrap();
            assert!(matches!(m.kind, Some(Kind::Subscribed(_))), "{m:?}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn three_nodes_deliver_every_publication_exactly_once_in_order() {
    let redis = RedisServer::start();
    let nodes = [
        node(&redis.url(), "node-1").await,
        node(&redis.url(), "node-2").await,
        node(&redis.url(), "node-3").await,
    ];
    // On every node: a JSON and a protobuf subscriber of both channels.
    let mut readers = Vec::new();
    for n in &nodes {
        for proto in [false, true] {
            let mut client = WsClient::connect(n.addr, proto.then_some("pubsub.v1.proto")).await;
            for channel in ["orders", "alerts"] {
                if proto {
                    subscribe_proto(&mut client, channel).await;
                } else {
                    client.subscribe(channel).await;
                }
            }
            readers.push(tokio::spawn(async move {
                let got = collect(&mut client, 400).await;
                // Nothing more may follow: exactly once.
                let extra = tokio::time::timeout(Duration::from_millis(500), client.next()).await;
                assert!(extra.is_err(), "unexpected extra message: {:?}", extra.ok());
                got
            }));
        }
    }

    const N: u64 = 100;
    // (a) HTTP on node 1.
    for i in 0..N {
        let answer = post_json(
            nodes[0].addr,
            "/api/publish",
            json!({"channel":"orders","data":{"src":"a","n":i}}),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    // (b) a WebSocket client on node 2.
    let mut publisher = WsClient::connect(nodes[1].addr, None).await;
    for i in 0..N {
        let reply = publisher
            .request(json!({"type":"publish","id":i,"channel":"orders","data":{"src":"b","n":i}}))
            .await;
        assert_eq!(reply["type"], "published", "{reply}");
    }
    // (c) broadcast on node 3.
    for i in 0..N {
        let answer = post_json(
            nodes[2].addr,
            "/api/broadcast",
            json!({"channels":["orders","alerts"],"data":{"src":"c","n":i}}),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }

    let expected_orders: Vec<Value> = ["a", "b", "c"]
        .iter()
        .flat_map(|src| (0..N).map(move |n| json!({"src":src,"n":n})))
        .collect();
    let expected_alerts: Vec<Value> = (0..N).map(|n| json!({"src":"c","n":n})).collect();
    for reader in readers {
        let got = reader.await.unwrap();
        let orders: Vec<Value> = got
            .iter()
            .filter(|(c, _)| c == "orders")
            .map(|(_, d)| d.clone())
            .collect();
        let alerts: Vec<Value> = got
            .iter()
            .filter(|(c, _)| c == "alerts")
            .map(|(_, d)| d.clone())
            .collect();
        assert_eq!(
            orders, expected_orders,
            "orders: all 300, once each, in publish order"
        );
        assert_eq!(
            alerts, expected_alerts,
            "alerts: all 100, once each, in publish order"
        );
    }
}

#[tokio::test]
async fn broker_subscriptions_follow_local_interest() {
    let redis = RedisServer::start();
    let n1 = node(&redis.url(), "node-1").await;
    let n2 = node(&redis.url(), "node-2").await;
    assert_eq!(redis.numsub("gw:{x}"), 0);

    let mut a = WsClient::connect(n1.addr, None).await;
    a.subscribe("x").await;
    assert_eq!(redis.numsub("gw:{x}"), 1, "confirmed before `subscribed`");
    let mut b = WsClient::connect(n1.addr, None).await;
    b.subscribe("x").await;
    assert_eq!(
        redis.numsub("gw:{x}"),
        1,
        "one broker subscription per node, not per client"
    );
    let mut c = WsClient::connect(n2.addr, None).await;
    c.subscribe("x").await;
    assert_eq!(redis.numsub("gw:{x}"), 2);
    // Node 2 has nobody on y: Redis sends it nothing for y.
    a.subscribe("y").await;
    assert_eq!(redis.numsub("gw:{y}"), 1);

    let reply = a
        .request(json!({"type":"unsubscribe","id":2,"channel":"x"}))
        .await;
    assert_eq!(reply["type"], "unsubscribed");
    assert_eq!(redis.numsub("gw:{x}"), 2, "b is still on x at node 1");
    drop(b);
    eventually("node 1 leaves x when its last client goes", async || {
        redis.numsub("gw:{x}") == 1
    })
    .await;
    c.request(json!({"type":"unsubscribe","id":3,"channel":"x"}))
        .await;
    eventually("node 2 leaves x", async || redis.numsub("gw:{x}") == 0).await;

    // Many channels at once: each gets exactly one broker subscription.
    let mut clients = Vec::new();
    for i in 0..100 {
        let mut client = WsClient::connect(n2.addr, None).await;
        client.subscribe(&format!("many-{i}")).await;
        clients.push(client);
    }
    for i in 0..100 {
        assert_eq!(redis.numsub(&format!("gw:{{many-{i}}}")), 1);
    }
    drop(clients);
    eventually("all 100 released", async || {
        (0..100).all(|i| redis.numsub(&format!("gw:{{many-{i}}}")) == 0)
    })
    .await;
}

#[tokio::test]
async fn redis_outage_is_reported_and_recovered_without_dropping_clients() {
    let mut redis = RedisServer::start();
    let mut nodes = vec![
        node(&redis.url(), "node-1").await,
        node(&redis.url(), "node-2").await,
        node(&redis.url(), "node-3").await,
    ];
    let mut clients = Vec::new();
    for n in &nodes {
        let mut client = WsClient::connect(n.addr, None).await;
        client.subscribe("news").await;
        clients.push(client);
    }
    // The channel has a stream (a first publication) for Redis to lose.
    let answer = post_json(
        nodes[0].addr,
        "/api/publish",
        json!({"channel":"news","data":"before"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    for client in &mut clients {
        assert_eq!(client.recv_json().await["data"], "before");
    }

    redis.kill();
    for n in &nodes {
        let addr = n.addr;
        eventually("not ready while Redis is down", async || {
            get(addr, "/readyz").await.status == 503
        })
        .await;
        let ready = get(addr, "/readyz").await.json();
        assert_eq!(ready["failing"], json!(["broker"]), "{ready}");
        assert_eq!(ready["checks"]["broker"]["up"], false);
        assert_eq!(
            get(addr, "/healthz").await.status,
            200,
            "liveness does not depend on Redis"
        );
        assert_eq!(metric_of(addr, "gateway_broker_up").await, 0.0);
    }
    let answer = post_json(
        nodes[0].addr,
        "/api/publish",
        json!({"channel":"news","data":"lost?"}),
    )
    .await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.json()["error"]["code"], "unavailable");
    let answer = post_json(
        nodes[2].addr,
        "/api/broadcast",
        json!({"channels":["news"],"data":1}),
    )
    .await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.json()["results"][0]["error"]["code"], "unavailable");
    let reply = clients[1]
        .request(json!({"type":"publish","id":7,"channel":"news","data":1}))
        .await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{reply}"
    );
    let reply = clients[1]
        .request(json!({"type":"subscribe","id":8,"channel":"other"}))
        .await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    for client in &mut clients {
        assert_eq!(
            client.request(json!({"type":"ping","id":9})).await,
            json!({"type":"pong","id":9})
        );
    }

    let restarted = Instant::now();
    redis.restart();
    for n in &nodes {
        let addr = n.addr;
        eventually("ready again", async || get(addr, "/readyz").await.status == 200).await;
    }
    let recovery = restarted.elapsed();
    assert!(
        recovery < Duration::from_secs(5),
        "every node ready within 5 s of the restart: {recovery:?}"
    );

    let answer = post_json(
        nodes[0].addr,
        "/api/publish",
        json!({"channel":"news","data":"after"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let after = position(&answer.json());
    for client in &mut clients {
        // Redis kept nothing: when the node caught up, the channel had no
        // stream any more, and every subscriber was told so (a gap to the
        // empty epoch) before the first publication of the new stream,
        // which continues it.
        let gap = client.recv_json().await;
        assert_eq!(gap["type"], "gap", "{gap}");
        assert_eq!(position(&gap), (String::new(), 0), "{gap}");
        assert_eq!(after.1, 1, "the new stream starts at 1");
        let message = client.recv_json().await;
        assert_eq!(message["data"], "after", "resubscribed on every node");
        assert_eq!(position(&message), after);
    }
    // The subscribe that failed during the outage works now.
    let reply = clients[1]
        .request(json!({"type":"subscribe","id":10,"channel":"other"}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    for n in &mut nodes {
        assert!(metric_of(n.addr, "gateway_broker_reconnects_total").await >= 1.0);
        assert_eq!(metric_of(n.addr, "gateway_broker_up").await, 1.0);
        assert!(n.child.try_wait().unwrap().is_none(), "no gateway crashed");
    }
}

/// Publishes numbered messages until `client` receives one: the node's
/// delivery works again. Returns how long that took.
async fn until_delivered(addr: SocketAddr, client: &mut WsClient, within: Duration) -> Duration {
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < within {
        n += 1;
        let answer = post_json(addr, "/api/publish", json!({"channel":"news","data":n})).await;
        if answer.status == 200 {
            use futures_util::StreamExt;
            if let Ok(Some(Ok(Message::Text(_)))) =
                tokio::time::timeout(Duration::from_millis(200), client.ws.next()).await
            {
                return started.elapsed();
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("no delivery within {within:?}");
}

#[tokio::test]
async fn a_silently_dead_subscription_is_caught_by_the_probe() {
    let redis = RedisServer::start();
    let proxy = SilencingProxy::start(redis.port).await;
    let n1 = node(&proxy.url(), "node-1").await;
    let mut client = WsClient::connect(n1.addr, None).await;
    client.subscribe("news").await;
    post_json(n1.addr, "/api/publish", json!({"channel":"news","data":"before"})).await;
    let before = client.recv_json().await;
    assert_eq!(before["data"], "before");

    // The pub/sub connection stays open, but nothing reaches the node.
    proxy.silence_current_subscribers();
    let silenced = Instant::now();
    let answer = post_json(
        n1.addr,
        "/api/publish",
        json!({"channel":"news","data":"swallowed"}),
    )
    .await;
    assert_eq!(
        answer.status, 200,
        "publishing still works; only receiving is dead"
    );
    // Probe every 1 s, 3 s to come back: the node notices by itself...
    let addr = n1.addr;
    eventually_within(
        "the probe fails and the node reconnects",
        Duration::from_secs(10),
        async || metric_of(addr, "gateway_broker_reconnects_total").await == 1.0,
    )
    .await;
    assert!(
        silenced.elapsed() >= Duration::from_secs(2),
        "found by the probe, not by luck"
    );
    assert_eq!(
        metric_of(n1.addr, "gateway_broker_probe_failures_total").await,
        1.0
    );
    // ...and fills what it missed from history: the client gets it without
    // anything else being published, at the next offset.
    let swallowed = client.recv_json().await;
    assert_eq!(swallowed["data"], "swallowed", "{swallowed}");
    assert_eq!(
        position(&swallowed),
        (position(&before).0, position(&before).1 + 1)
    );
    post_json(n1.addr, "/api/publish", json!({"channel":"news","data":"after"})).await;
    assert_eq!(position(&client.recv_json().await).1, position(&before).1 + 2);
}

#[tokio::test]
async fn a_killed_pubsub_connection_is_reestablished() {
    let redis = RedisServer::start();
    let n1 = node(&redis.url(), "node-1").await;
    let mut client = WsClient::connect(n1.addr, None).await;
    client.subscribe("news").await;
    let killed: i64 = ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut redis.connection())
        .unwrap();
    assert_eq!(killed, 1);
    until_delivered(n1.addr, &mut client, Duration::from_secs(5)).await;
    assert_eq!(metric_of(n1.addr, "gateway_broker_reconnects_total").await, 1.0);
    assert_eq!(redis.numsub("gw:{news}"), 1);
}

/// Through HAProxy: GET something to get the sticky cookie, then upgrade with it.
async fn sticky_client(haproxy: SocketAddr) -> (WsClient, String, String) {
    let answer = get(haproxy, "/healthz").await;
    let cookie = answer
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("HAProxy sets the GWNODE cookie")
        .to_string();
    let (mut client, _) = WsClient::connect_with(haproxy, &[("cookie", &cookie)])
        .await
        .expect("upgrade through HAProxy");
    let node = client.node_id().await;
    (client, cookie, node)
}

#[tokio::test]
async fn behind_haproxy_with_sticky_sessions() {
    let redis = RedisServer::start();
    let nodes = [
        node(&redis.url(), "node-1").await,
        node(&redis.url(), "node-2").await,
        node(&redis.url(), "node-3").await,
    ];
    let haproxy = HaProxy::start([nodes[0].addr, nodes[1].addr, nodes[2].addr]);
    let lb = haproxy.addr();
    eventually("HAProxy forwards", async || {
        get(lb, "/readyz").await.status == 200
    })
    .await;

    let mut clients = Vec::new();
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for _ in 0..9 {
        let (mut client, cookie, node) = sticky_client(lb).await;
        // The cookie names the server HAProxy chose, and that is the node we got.
        let server = cookie.trim_start_matches("GWNODE=").trim_start_matches("gw");
        assert_eq!(node, format!("node-{server}"), "cookie {cookie}");
        client.subscribe("news").await;
        *per_node.entry(node).or_default() += 1;
        clients.push((client, cookie));
    }
    assert_eq!(
        per_node.len(),
        3,
        "new clients spread over all nodes: {per_node:?}"
    );

    // Stickiness: reconnecting with the cookie lands on the same node.
    for (_, cookie) in clients.iter().take(3) {
        let (mut again, _) = WsClient::connect_with(lb, &[("cookie", cookie)]).await.unwrap();
        let server = cookie.trim_start_matches("GWNODE=").trim_start_matches("gw");
        assert_eq!(again.node_id().await, format!("node-{server}"));
    }

    // Published through the load balancer (HTTP and WebSocket): everyone gets both.
    let answer = post_json(lb, "/api/publish", json!({"channel":"news","data":"via lb"})).await;
    assert_eq!(answer.status, 200);
    let (mut publisher, _, _) = sticky_client(lb).await;
    let reply = publisher
        .request(json!({"type":"publish","id":5,"channel":"news","data":"from a client"}))
        .await;
    assert_eq!(reply["type"], "published");
    for (client, _) in &mut clients {
        assert_eq!(client.recv_json().await["data"], "via lb");
        assert_eq!(client.recv_json().await["data"], "from a client");
    }
}

#[tokio::test]
async fn redis_error_answers_are_internal_and_the_node_stays_ready() {
    let redis = RedisServer::start();
    // The default user may use its probe channel and `gw:{ok}`, nothing else.
    let _: String = ::redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("resetchannels")
        .arg("&gw:!probe:*")
        .arg("&gw:{ok}")
        .query(&mut redis.connection())
        .unwrap();
    let n1 = node(&redis.url(), "node-1").await;
    let mut client = WsClient::connect(n1.addr, None).await;
    client.subscribe("ok").await;

    let answer = post_json(n1.addr, "/api/publish", json!({"channel":"refused","data":1})).await;
    assert_eq!(answer.status, 500, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "internal");
    let reply = client
        .request(json!({"type":"publish","id":1,"channel":"refused","data":1}))
        .await;
    assert_eq!(reply["code"], "internal", "{reply}");
    let reply = client
        .request(json!({"type":"subscribe","id":2,"channel":"refused"}))
        .await;
    assert_eq!(reply["code"], "internal", "{reply}");

    // The connection to Redis was not torn down for it.
    assert_eq!(get(n1.addr, "/readyz").await.status, 200);
    assert_eq!(metric_of(n1.addr, "gateway_broker_reconnects_total").await, 0.0);
    let answer = post_json(n1.addr, "/api/publish", json!({"channel":"ok","data":"fine"})).await;
    assert_eq!(answer.status, 200);
    assert_eq!(client.recv_json().await["data"], "fine");
}

#[tokio::test]
async fn rediss_with_a_private_ca() {
    let pki = support::pki::TestPki::generate("redis");
    let redis = RedisServer::start_tls(&pki.server_cert, &pki.server_key, &pki.ca_cert);
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let ca = pki.ca_cert.to_string_lossy().into_owned();
    let n1 = GatewayProcess::spawn(&["--redis-url", &url, "--redis-ca-file", &ca, "--node-id", "tls-1"]);
    let n2 = GatewayProcess::spawn(&["--redis-url", &url, "--redis-ca-file", &ca, "--node-id", "tls-2"]);
    for addr in [n1.addr, n2.addr] {
        eventually("ready over TLS", async || {
            get(addr, "/readyz").await.status == 200
        })
        .await;
    }
    let mut client = WsClient::connect(n2.addr, None).await;
    client.subscribe("secure").await;
    let answer = post_json(
        n1.addr,
        "/api/publish",
        json!({"channel":"secure","data":"over tls"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(client.recv_json().await["data"], "over tls");

    // Without the CA the server's certificate is not trusted: the node stays not ready.
    let untrusting = GatewayProcess::spawn(&["--redis-url", &url, "--node-id", "tls-3"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ready = get(untrusting.addr, "/readyz").await;
    assert_eq!(ready.status, 503);
    let detail = ready.json()["checks"]["broker"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        detail.contains("certificate") || detail.contains("tls") || detail.contains("issuer"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_retried_on_another_node_after_a_lost_reply_is_published_once() {
    use tokio::io::AsyncWriteExt;
    let redis = RedisServer::start();
    let first = node(&redis.url(), "once-1").await;
    let second = node(&redis.url(), "once-2").await;
    let mut subscriber = WsClient::connect(second.addr, None).await;
    subscriber.subscribe("payments").await;

    // The backend sends its publish to node 1 and loses the connection
    // before it reads the reply: it cannot know whether it was published.
    let body = json!({"channel":"payments","data":{"id":1},"idempotency_key":"payment-1"}).to_string();
    let mut socket = tokio::net::TcpStream::connect(first.addr).await.expect("connect");
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.expect("write");
    socket.write_all(body.as_bytes()).await.expect("write");
    // It was published (the subscriber sees it); the reply is never read.
    let delivered = subscriber.recv_json().await;
    assert_eq!(delivered["data"]["id"], 1, "{delivered}");
    drop(socket);

    // The retry goes to node 2: not published again, same position.
    let retry = post_json(
        second.addr,
        "/api/publish",
        json!({"channel":"payments","data":{"id":1},"idempotency_key":"payment-1"}),
    )
    .await;
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["duplicate"], true);
    assert_eq!(position(&retry.json()), position(&delivered));
    // The next message the subscriber gets is the next publication.
    let next = post_json(
        second.addr,
        "/api/publish",
        json!({"channel":"payments","data":{"id":2}}),
    )
    .await;
    assert_eq!(next.status, 200);
    let got = subscriber.recv_json().await;
    assert_eq!(
        got["data"]["id"], 2,
        "exactly one publication of id 1 arrived: {got}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_info_lists_the_live_nodes_and_drops_a_dead_one() {
    let redis = RedisServer::start();
    let first = node(&redis.url(), "info-1").await;
    let mut second = node(&redis.url(), "info-2").await;
    let mut client = WsClient::connect(second.addr, None).await;
    client.subscribe("info:room").await;
    let listed = |addr| async move {
        let answer = get(addr, "/api/info").await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.json()["nodes"].as_array().cloned().unwrap_or_default()
    };
    // Node 2 announces itself every 5 s, and its first announcement may
    // predate the client: wait for the next one, with room to spare.
    let next_announcement = Duration::from_secs(15);
    eventually_within(
        "both nodes announced, with node 2's client",
        next_announcement,
        async || {
            let nodes = listed(first.addr).await;
            nodes.len() == 2 && nodes[1]["connections"] == 1 && nodes[1]["subscriptions"] == 1
        },
    )
    .await;
    let nodes = listed(first.addr).await;
    assert_eq!(nodes[0]["node"], "info-1");
    assert_eq!(nodes[1]["node"], "info-2");
    for node in &nodes {
        assert_eq!(node["broker"], "redis", "{node}");
        assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
        assert!(
            node["uptime_seconds"].is_u64() && node["started_at"].is_u64(),
            "{node}"
        );
    }
    assert_eq!(nodes[1]["channels"], 1);
    // Node 2 dies without a word: it drops out within the announcement TTL.
    second.signal("KILL");
    second.wait_exit(Duration::from_secs(5));
    eventually_within("node 2 gone", Duration::from_secs(25), async || {
        let nodes = listed(first.addr).await;
        nodes.len() == 1 && nodes[0]["node"] == "info-1"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_a_user_closes_its_connections_on_every_node() {
    let redis = RedisServer::start();
    let url = redis.url();
    let auth = [
        "--jwt-secret",
        support::tokens::SECRET,
        "--jwt-allow-any-audience",
        "--jwt-allow-any-issuer",
        "--allow-open-api",
    ];
    let spawn = |id: &'static str| {
        let mut args = vec!["--redis-url", url.as_str(), "--node-id", id];
        args.extend(auth);
        GatewayProcess::spawn(&args)
    };
    let (first, second) = (spawn("logout-1"), spawn("logout-2"));
    for addr in [first.addr, second.addr] {
        eventually("ready", async || get(addr, "/readyz").await.status == 200).await;
    }
    let connect = |addr, user: &'static str| async move {
        let mut client = WsClient::connect(addr, None).await;
        let token = support::tokens::hs256(user, 300, json!({}));
        let reply = client
            .request(json!({"type":"connect","id":1,"token":token}))
            .await;
        assert_eq!(reply["type"], "connected", "{reply}");
        client
    };
    let mut ann_here = connect(first.addr, "ann").await;
    let mut ann_there = connect(second.addr, "ann").await;
    let mut bob = connect(second.addr, "bob").await;
    // Both nodes announced themselves before the command goes out.
    eventually("both nodes listed", async || {
        get(first.addr, "/api/info").await.json()["nodes"]
            .as_array()
            .map_or(0, Vec::len)
            == 2
    })
    .await;
    let answer = post_json(first.addr, "/api/disconnect", json!({"user":"ann"})).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json(), json!({"nodes":["logout-1","logout-2"]}));
    for client in [&mut ann_here, &mut ann_there] {
        let frame = client.expect_close().await;
        assert_eq!(u16::from(frame.code), 4011, "{}", frame.reason);
    }
    assert_eq!(
        bob.request(json!({"type":"ping","id":2})).await,
        json!({"type":"pong","id":2}),
        "another user stays connected"
    );
}

/// `POST /api/subscribe` subscribes a user's connections on every node
/// (each told with a `server` notice), `GET /api/channels` lists them with
/// their counts across nodes, a page at a time, and `POST /api/unsubscribe`
/// takes them out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_subscriptions_reach_a_users_connections_on_every_node() {
    let redis = RedisServer::start();
    let url = redis.url();
    let spawn = |id: &'static str| {
        GatewayProcess::spawn(&[
            "--redis-url",
            url.as_str(),
            "--node-id",
            id,
            "--jwt-secret",
            support::tokens::SECRET,
            "--jwt-allow-any-audience",
            "--jwt-allow-any-issuer",
            "--allow-open-api",
        ])
    };
    let (first, second) = (spawn("serversub-1"), spawn("serversub-2"));
    for addr in [first.addr, second.addr] {
        eventually("ready", async || get(addr, "/readyz").await.status == 200).await;
    }
    // Ann's token allows no channel: server-side subscriptions need none.
    let connect = |addr, user: &'static str| async move {
        let mut client = WsClient::connect(addr, None).await;
        let claims = if user == "bob" {
            json!({"channels":["room:*"]})
        } else {
            json!({})
        };
        let token = support::tokens::hs256(user, 300, claims);
        let reply = client
            .request(json!({"type":"connect","id":1,"token":token}))
            .await;
        assert_eq!(reply["type"], "connected", "{reply}");
        client
    };
    let mut ann_here = connect(first.addr, "ann").await;
    let mut ann_there = connect(second.addr, "ann").await;
    let mut bob = connect(second.addr, "bob").await;
    bob.subscribe("room:b").await;
    eventually("both nodes listed", async || {
        get(first.addr, "/api/info").await.json()["nodes"]
            .as_array()
            .map_or(0, Vec::len)
            == 2
    })
    .await;

    for channel in ["inbox:ann", "room:a"] {
        let answer = post_json(
            first.addr,
            "/api/subscribe",
            json!({"user":"ann","channel":channel}),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.json(), json!({"nodes":["serversub-1","serversub-2"]}));
        for client in [&mut ann_here, &mut ann_there] {
            let notice = client.recv_json().await;
            assert_eq!(
                without(&notice, &["epoch", "offset"]),
                json!({"type":"subscribed","channel":channel,"server":true}),
                "{notice}"
            );
            assert_eq!(notice["offset"], 0, "{notice}");
        }
    }
    // Subscribing again changes nothing (and sends nothing).
    let again = post_json(
        first.addr,
        "/api/subscribe",
        json!({"user":"ann","channel":"room:a"}),
    )
    .await;
    assert_eq!(again.status, 200);

    let published = post_json(
        second.addr,
        "/api/publish",
        json!({"channel":"inbox:ann","data":{"n":1}}),
    )
    .await;
    assert_eq!(published.status, 200, "{}", published.text());
    for client in [&mut ann_here, &mut ann_there] {
        let publication = client.recv_json().await;
        assert_eq!(publication["type"], "message", "{publication}");
        assert_eq!(publication["channel"], "inbox:ann");
        assert_eq!(publication["data"], json!({"n":1}));
    }

    // The channels across both nodes, with counts, then one per page.
    let all = get(second.addr, "/api/channels").await;
    assert_eq!(all.status, 200, "{}", all.text());
    assert_eq!(
        all.json(),
        json!({
            "channels": [
                {"channel":"inbox:ann","subscribers":2},
                {"channel":"room:a","subscribers":2},
                {"channel":"room:b","subscribers":1},
            ],
            "next_cursor": null,
            "nodes": ["serversub-1","serversub-2"],
            "missing": [],
        })
    );
    let rooms = get(first.addr, "/api/channels?pattern=room:*").await.json();
    assert_eq!(rooms["channels"].as_array().map(Vec::len), Some(2), "{rooms}");
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let path = match &cursor {
            Some(cursor) => format!("/api/channels?limit=1&cursor={cursor}"),
            None => "/api/channels?limit=1".to_owned(),
        };
        let page = get(first.addr, &path).await.json();
        for item in page["channels"].as_array().expect("channels") {
            walked.push(item["channel"].as_str().expect("name").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(walked, ["inbox:ann", "room:a", "room:b"]);
    let bad = get(first.addr, "/api/channels?limit=0").await;
    assert_eq!(bad.status, 400, "{}", bad.text());

    let answer = post_json(
        first.addr,
        "/api/unsubscribe",
        json!({"user":"ann","channel":"inbox:ann"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    for client in [&mut ann_here, &mut ann_there] {
        assert_eq!(
            client.recv_json().await,
            json!({"type":"unsubscribed","channel":"inbox:ann","server":true})
        );
    }
    // Gone from the list, and from the client's own view: unsubscribing
    // again is `not_subscribed`.
    let left = get(first.addr, "/api/channels").await.json();
    assert_eq!(
        left["channels"],
        json!([{"channel":"room:a","subscribers":2},{"channel":"room:b","subscribers":1}])
    );
    let reply = ann_here
        .request(json!({"type":"unsubscribe","id":5,"channel":"inbox:ann"}))
        .await;
    assert_eq!(reply["code"], "not_subscribed", "{reply}");
    // Bob got nothing of ann's.
    assert_eq!(
        bob.request(json!({"type":"ping","id":2})).await,
        json!({"type":"pong","id":2})
    );
}
