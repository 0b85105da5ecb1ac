//! Presence across real gateway processes on a real Redis: members on every
//! node are listed by every node, join and leave events reach every
//! subscriber once and in order, a killed node's members expire within the
//! TTL, a drained node's leave at once, a Redis restart loses nothing for
//! good; and on one node: who may read presence, where it is not enabled,
//! the HTTP API, hostile tokens.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::redis::RedisServer;
use support::tokens::{SECRET, hs256};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// A config file with the `room` namespace keeping presence and events.
fn presence_config() -> tempfile_path::Path {
    tempfile_path::Path::with(
        "[namespaces.room]\npresence = true\njoin_leave = true\n\n[namespaces.quiet]\npresence = true\n",
    )
}

/// A temporary file removed on drop.
mod tempfile_path {
    pub struct Path(pub std::path::PathBuf);

    impl Path {
        pub fn with(contents: &str) -> Path {
            let path = std::env::temp_dir().join(format!("presence-{}.toml", fastrand::u64(..)));
            std::fs::write(&path, contents).expect("config written");
            Path(path)
        }

        pub fn as_str(&self) -> &str {
            self.0.to_str().expect("a UTF-8 temp path")
        }
    }

    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

async fn presence_node(redis: &RedisServer, id: &str, config: &str, extra: &[&str]) -> GatewayProcess {
    let url = redis.url();
    let mut args = vec!["--redis-url", &url, "--node-id", id, "--config", config];
    args.extend_from_slice(extra);
    let process = GatewayProcess::spawn(&args);
    let addr = process.addr;
    eventually(&format!("{id} ready"), async || {
        get(addr, "/readyz").await.status == 200
    })
    .await;
    process
}

/// A connected client that keeps the events it reads past while waiting
/// for replies.
struct Member {
    ws: WsClient,
    client: String,
    events: Vec<Value>,
}

impl Member {
    async fn connect(addr: SocketAddr, token: Option<&str>) -> Member {
        let mut ws = WsClient::connect(addr, None).await;
        let mut connect = json!({"type":"connect","id":1});
        if let Some(token) = token {
            connect["token"] = json!(token);
        }
        let reply = ws.request(connect).await;
        assert_eq!(reply["type"], "connected", "{reply}");
        let client = reply["client"].as_str().unwrap_or_default().to_string();
        Member {
            ws,
            client,
            events: Vec::new(),
        }
    }

    async fn join(addr: SocketAddr, channel: &str) -> Member {
        let mut member = Member::connect(addr, None).await;
        let reply = member.ask(json!({"type":"subscribe","channel":channel})).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        member
    }

    /// Sends `command` with a fresh id and returns its reply; join and
    /// leave events read meanwhile are kept.
    async fn ask(&mut self, mut command: Value) -> Value {
        let id = fastrand::u32(2..u32::MAX);
        command["id"] = json!(id);
        self.ws.send_json(command).await;
        loop {
            let message = self.read().await;
            if message["id"] == id {
                return message;
            }
            match message["type"].as_str() {
                Some("join" | "leave") => self.events.push(message),
                // A Redis restart loses the channel's stream.
                Some("gap") => {}
                _ => panic!("unexpected {message}"),
            }
        }
    }

    async fn read(&mut self) -> Value {
        match self.ws.next().await {
            Message::Text(text) => serde_json::from_str(&text).expect("JSON"),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Reads events for `wait`.
    async fn drain_events(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(message) = tokio::time::timeout_at(deadline, self.read()).await {
            if message["type"] != "gap" {
                self.events.push(message);
            }
        }
    }

    /// The clients `presence` lists, sorted.
    async fn members(&mut self, channel: &str) -> Vec<String> {
        let reply = self.ask(json!({"type":"presence","channel":channel})).await;
        assert_eq!(reply["type"], "presence", "{reply}");
        let mut clients: Vec<String> = reply["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m["client"].as_str().unwrap_or_default().to_string())
            .collect();
        clients.sort();
        clients
    }

    /// The events seen so far, as `join <client>` / `leave <client>`.
    fn seen(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["type"].as_str().unwrap_or("?"),
                    e["member"]["client"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }
}

fn sorted(clients: &[&Member]) -> Vec<String> {
    let mut all: Vec<String> = clients.iter().map(|m| m.client.clone()).collect();
    all.sort();
    all
}

#[tokio::test]
async fn three_nodes_list_every_member_and_every_subscriber_hears_each_join_and_leave_once_in_order() {
    let redis = RedisServer::start();
    let config = presence_config();
    let nodes = [
        presence_node(&redis, "node-1", config.as_str(), &[]).await,
        presence_node(&redis, "node-2", config.as_str(), &[]).await,
        presence_node(&redis, "node-3", config.as_str(), &[]).await,
    ];
    // Each one's join is in presence (a read sends it) before the next
    // subscribes, so the order of events is known.
    let mut a = Member::join(nodes[0].addr, "room:1").await;
    assert_eq!(
        a.members("room:1").await,
        [a.client.clone()],
        "a reader finds itself at once"
    );
    let mut b = Member::join(nodes[1].addr, "room:1").await;
    b.members("room:1").await;
    let mut c = Member::join(nodes[2].addr, "room:1").await;
    c.members("room:1").await;
    let everyone = sorted(&[&a, &b, &c]);
    for member in [&mut a, &mut b, &mut c] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while member.members("room:1").await != everyone {
            assert!(Instant::now() < deadline, "every node lists all three members");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stats = member
            .ask(json!({"type":"presence_stats","channel":"room:1"}))
            .await;
        assert_eq!(
            (stats["clients"].as_u64(), stats["users"].as_u64()),
            (Some(3), Some(0)),
            "{stats}"
        );
    }
    let reply = c.ask(json!({"type":"unsubscribe","channel":"room:1"})).await;
    assert_eq!(reply["type"], "unsubscribed");
    drop(c.ws);
    for member in [&mut a, &mut b] {
        member.drain_events(Duration::from_millis(800)).await;
    }
    let (ja, jb, jc) = (
        format!("join {}", a.client),
        format!("join {}", b.client),
        format!("join {}", c.client),
    );
    let lc = format!("leave {}", c.client);
    // Each saw its own join and every later one, then c's leave: once each.
    assert_eq!(a.seen(), [ja.clone(), jb.clone(), jc.clone(), lc.clone()]);
    assert_eq!(b.seen(), [jb, jc, lc]);
    assert_eq!(a.members("room:1").await, sorted(&[&a, &b]));
    // The HTTP API sees the same, on any node.
    let answer = get(nodes[2].addr, "/api/presence/stats?channel=room:1").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json(), json!({"channel":"room:1","clients":2,"users":0}));
    let answer = get(nodes[1].addr, "/api/presence?channel=room:1").await;
    assert_eq!(answer.json()["members"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn a_killed_nodes_members_leave_within_the_ttl_and_a_drained_nodes_at_once() {
    let redis = RedisServer::start();
    let config = presence_config();
    let short = ["--presence-ttl", "2s"];
    let n1 = presence_node(&redis, "node-1", config.as_str(), &short).await;
    let n2 = presence_node(&redis, "node-2", config.as_str(), &short).await;
    // The drained node's TTL is long: its members must leave by the drain,
    // not by expiring.
    let mut n3 = presence_node(
        &redis,
        "node-3",
        config.as_str(),
        &["--presence-ttl", "60s", "--drain-seconds", "1"],
    )
    .await;
    let mut a = Member::join(n1.addr, "room:kill").await;
    let b = Member::join(n2.addr, "room:kill").await;
    let c = Member::join(n3.addr, "room:kill").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.members("room:kill").await != sorted(&[&a, &b, &c]) {
        assert!(Instant::now() < deadline, "all three are listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n2.signal("KILL");
    let killed = Instant::now();
    loop {
        if a.members("room:kill").await == sorted(&[&a, &c]) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the killed node's member is gone within the TTL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_after = killed.elapsed();
    assert!(
        gone_after >= Duration::from_millis(1000),
        "not before its entries could expire: {gone_after:?}"
    );
    a.drain_events(Duration::from_millis(300)).await;
    assert!(
        a.seen().contains(&format!("leave {}", b.client)),
        "a heard b leave: {:?}",
        a.seen()
    );

    n3.signal("TERM");
    let drained = Instant::now();
    loop {
        if a.members("room:kill").await == [a.client.clone()] {
            break;
        }
        assert!(
            drained.elapsed() < Duration::from_secs(4),
            "the drained node's member left at once"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(n3.wait_exit(Duration::from_secs(10)), Some(0));
    a.drain_events(Duration::from_millis(300)).await;
    assert!(
        a.seen().contains(&format!("leave {}", c.client)),
        "a heard c leave: {:?}",
        a.seen()
    );
    drop(c);
}

#[tokio::test]
async fn presence_comes_back_after_a_redis_restart_without_the_clients() {
    let mut redis = RedisServer::start();
    let config = presence_config();
    let n1 = presence_node(&redis, "node-1", config.as_str(), &[]).await;
    let n2 = presence_node(&redis, "node-2", config.as_str(), &[]).await;
    let mut a = Member::join(n1.addr, "quiet:1").await;
    let b = Member::join(n2.addr, "quiet:1").await;
    let both = sorted(&[&a, &b]);
    eventually("both listed", async || a.members("quiet:1").await == both).await;
    redis.kill();
    let reply = a.ask(json!({"type":"presence","channel":"quiet:1"})).await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    // Clients get a generic message; the broker's error stays in the log.
    let message = reply["message"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        !message.contains("os error") && !message.contains("refused"),
        "{reply}"
    );
    let answer = get(n2.addr, "/api/presence?channel=quiet:1").await;
    assert_eq!(answer.status, 503);
    assert!(!answer.text().contains("os error"), "{}", answer.text());
    redis.restart();
    // The restarted Redis is empty; the nodes register their members again.
    eventually("both listed again", async || {
        let reply = a.ask(json!({"type":"presence","channel":"quiet:1"})).await;
        reply["type"] == "presence" && a.members("quiet:1").await == both
    })
    .await;
    assert!(
        a.events.is_empty(),
        "no events in a namespace without join_leave: {:?}",
        a.events
    );
}

#[tokio::test]
async fn reading_presence_follows_the_permissions_and_the_namespace() {
    let config = presence_config();
    let process = GatewayProcess::spawn(&[
        "--config",
        config.as_str(),
        "--jwt-secret",
        SECRET,
        "--api-key",
        "k",
        "--jwt-allow-any-audience",
        "--jwt-allow-any-issuer",
    ]);
    let addr = process.addr;
    let token = hs256(
        "ann",
        300,
        json!({"channels": ["room:*", "news"], "info": {"name": "Ann"}}),
    );
    let mut ann = Member::connect(addr, Some(&token)).await;
    let reply = ann.ask(json!({"type":"subscribe","channel":"room:1"})).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let reply = ann.ask(json!({"type":"presence","channel":"room:1"})).await;
    assert_eq!(
        reply["members"],
        json!([{"client": ann.client, "user": "ann", "info": {"name": "Ann"}}]),
        "{reply}"
    );
    // Allowed to subscribe: may read without subscribing.
    let reply = ann.ask(json!({"type":"presence_stats","channel":"room:2"})).await;
    assert_eq!(
        (reply["clients"].as_u64(), reply["users"].as_u64()),
        (Some(0), Some(0)),
        "{reply}"
    );
    // Not allowed to subscribe: forbidden.
    let reply = ann.ask(json!({"type":"presence","channel":"quiet:1"})).await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    // No presence in the namespace: not_available.
    let reply = ann.ask(json!({"type":"presence","channel":"news"})).await;
    assert_eq!(reply["code"], "not_available", "{reply}");

    // HTTP: the API key, the channel, the namespace.
    let key = [("authorization", "Bearer k")];
    let answer = http(
        addr,
        http::Method::GET,
        "/api/presence?channel=room:1",
        &key,
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["members"][0]["info"], json!({"name": "Ann"}));
    let answer = http(
        addr,
        http::Method::GET,
        "/api/presence/stats?channel=room:1",
        &key,
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(answer.json(), json!({"channel":"room:1","clients":1,"users":1}));
    assert_eq!(get(addr, "/api/presence?channel=room:1").await.status, 401);
    let answer = http(
        addr,
        http::Method::GET,
        "/api/presence?channel=news",
        &key,
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(
        (answer.status, answer.json()["error"]["code"].clone()),
        (http::StatusCode::BAD_REQUEST, json!("not_available"))
    );
    let answer = http(
        addr,
        http::Method::GET,
        "/api/presence",
        &key,
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 400);
    let answer = http(
        addr,
        http::Method::GET,
        "/api/presence?channel=a%20b",
        &key,
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 400);

    // An oversized info claim is refused at connect (4001).
    let huge = hs256("bob", 300, json!({"info": {"bio": "x".repeat(2000)}}));
    let mut ws = WsClient::connect(addr, None).await;
    let reply = ws.request(json!({"type":"connect","id":1,"token":huge})).await;
    assert_eq!(reply["code"], "unauthorized", "{reply}");
    assert!(
        reply["message"].as_str().unwrap_or_default().contains("info"),
        "{reply}"
    );
    assert_eq!(u16::from(ws.expect_close().await.code), 4001);
}

/// A client flooding presence reads is read at its command rate (nothing
/// dropped, every read answered in order) while a bystander's publications
/// arrive as usual.
#[tokio::test]
async fn a_flood_of_presence_reads_is_slowed_to_the_command_rate_and_harms_no_one() {
    let config = presence_config();
    let process = GatewayProcess::spawn(&["--config", config.as_str(), "--command-rate", "200"]);
    let addr = process.addr;
    let mut bystander = Member::join(addr, "room:flood").await;
    let mut flooder = Member::join(addr, "room:flood").await;
    bystander.drain_events(Duration::from_millis(200)).await;
    let reads = 600u64;
    let started = Instant::now();
    for id in 0..reads {
        flooder
            .ws
            .send_json(json!({"type":"presence_stats","id": 10_000 + id,"channel":"room:flood"}))
            .await;
    }
    // Meanwhile the bystander's publications arrive promptly.
    for n in 0..5 {
        let sent = Instant::now();
        let answer = post_json(
            addr,
            "/api/publish",
            json!({"channel":"room:flood","data":{"n": n}}),
        )
        .await;
        assert_eq!(answer.status, 200);
        loop {
            let message = bystander.read().await;
            if message["type"] == "message" {
                assert_eq!(message["data"]["n"], n);
                break;
            }
        }
        assert!(
            sent.elapsed() < Duration::from_millis(500),
            "publication {n} took {:?}",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut next = 10_000u64;
    while next < 10_000 + reads {
        let message = flooder.read().await;
        match message["type"].as_str() {
            Some("presence_stats") => {
                assert_eq!(message["id"], next, "answers in order, none dropped");
                assert_eq!(message["clients"], 2);
                next += 1;
            }
            Some("message" | "join" | "leave") => {}
            _ => panic!("unexpected {message}"),
        }
    }
    // 600 commands at 200/s (one second's burst allowed) take at least ~2 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not slowed: {:?}",
        started.elapsed()
    );
}

/// The ACL docs/operations.md gives is enough for everything, presence
/// included, with patterns that cannot match another deployment's prefix.
#[tokio::test]
async fn the_documented_redis_acl_is_enough() {
    let redis = RedisServer::start();
    let commands = "+hello +client +ping +evalsha +eval +script|load +hget +hset +hincrby +expire +del +xadd \
                    +xrange +publish +subscribe +unsubscribe +time +incr +pexpire +hdel +hgetall +hvals +hlen \
                    +zadd +zrem +zrange +zrangebyscore";
    let mut acl = ::redis::cmd("ACL");
    acl.arg("SETUSER")
        .arg("gw")
        .arg("on")
        .arg(">pw")
        .arg("resetchannels")
        .arg("&gw:{*")
        .arg("&gw:!*");
    acl.arg("resetkeys").arg("~gw:{*").arg("~gw:!*").arg("-@all");
    for command in commands.split_whitespace() {
        acl.arg(command);
    }
    let _: String = acl.query(&mut redis.connection()).expect("ACL SETUSER");
    let url = redis.url().replace("redis://", "redis://gw:pw@");
    let config = presence_config();
    let n1 = presence_node_at(&url, "node-1", config.as_str()).await;
    let n2 = presence_node_at(&url, "node-2", config.as_str()).await;
    let mut a = Member::join(n1.addr, "room:acl").await;
    let b = Member::join(n2.addr, "room:acl").await;
    let both = sorted(&[&a, &b]);
    eventually("both listed", async || a.members("room:acl").await == both).await;
    let answer = post_json(n2.addr, "/api/publish", json!({"channel":"room:acl","data":"x"})).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = get(n1.addr, "/api/history?channel=room:acl").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["publications"].as_array().map(Vec::len), Some(1));
    loop {
        let message = a.read().await;
        if message["type"] == "message" {
            assert_eq!(message["data"], "x");
            break;
        }
    }
    drop(b);
    a.drain_events(Duration::from_millis(500)).await;
    assert!(a.seen().iter().any(|e| e.starts_with("leave")), "{:?}", a.seen());
    assert_eq!(
        metric(
            &get(n1.addr, "/metrics").await.text(),
            "gateway_broker_reconnects_total"
        ),
        Some(0.0)
    );
}

async fn presence_node_at(url: &str, id: &str, config: &str) -> GatewayProcess {
    let process = GatewayProcess::spawn(&["--redis-url", url, "--node-id", id, "--config", config]);
    let addr = process.addr;
    eventually(&format!("{id} ready"), async || {
        get(addr, "/readyz").await.status == 200
    })
    .await;
    process
}
