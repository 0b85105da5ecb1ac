//! Presence across real gateway processes on a real Redis: members on every
//! node are listed by every node, join and leave events reach every
//! subscriber once and in order, a killed node's members expire within the
//! TTL, a drained node's leave at once, a Redis restart loses nothing for
//! good; and on one node: who may read presence, where it is not enabled,
//! the HTTP API, hostile tokens, the protobuf subprotocol, and a burst of
//! joins bounded to the event rate. (On a Redis Cluster:
//! `presence_cluster.rs`.)

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::presence::{Member, presence_config, sorted};
use support::redis::RedisServer;
use support::tokens::{SECRET, hs256};
use support::*;

async fn presence_node(redis: &RedisServer, id: &str, config: &str, extra: &[&str]) -> GatewayProcess {
    presence_node_url(&redis.url(), id, config, extra).await
}

async fn presence_node_url(url: &str, id: &str, config: &str, extra: &[&str]) -> GatewayProcess {
    let mut args = vec!["--redis-url", url, "--node-id", id, "--config", config];
    args.extend_from_slice(extra);
    let process = GatewayProcess::spawn(&args);
    let addr = process.addr;
    eventually(&format!("{id} ready"), async || {
        get(addr, "/readyz").await.status == 200
    })
    .await;
    process
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
        // The TTL (2 s), plus 1 s for this loop's reads and a loaded
        // machine's scheduling.
        assert!(
            killed.elapsed() < Duration::from_millis(3000),
            "the killed node's member is gone within the TTL: still listed after {:?}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_after = killed.elapsed();
    // Its last refresh was at most TTL/3 before the kill: its entries
    // cannot expire much sooner than 2/3 of the TTL after it.
    assert!(
        gone_after >= Duration::from_millis(500),
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
    let n1 = presence_node_url(&url, "node-1", config.as_str(), &[]).await;
    let n2 = presence_node_url(&url, "node-2", config.as_str(), &[]).await;
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

/// Presence over the protobuf subprotocol: the `presence` and
/// `presence_stats` commands, their replies, and `join`/`leave` events,
/// as protobuf frames (one node on the embedded broker).
#[tokio::test]
async fn presence_over_protobuf_lists_counts_and_sends_join_and_leave() {
    use pubsub_proto::pb::server_message::Kind;
    use pubsub_proto::{ChannelName, ClientCommand, Command, protobuf};
    use tokio_tungstenite::tungstenite::Message;

    async fn next(client: &mut WsClient) -> pubsub_proto::pb::ServerMessage {
        match client.next().await {
            Message::Binary(bytes) => protobuf::decode_server_message(bytes).expect("protobuf frame"),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }
    async fn send(client: &mut WsClient, id: u64, command: Command) {
        let frame = protobuf::encode_command(&ClientCommand {
            id: Some(id),
            command,
        });
        client.send(Message::binary(frame)).await;
    }
    let channel = ChannelName::parse("room:pb").expect("a channel name");
    let config = presence_config();
    let node = GatewayProcess::spawn(&["--config", config.as_str()]);
    let addr = node.addr;
    eventually("ready", async || get(addr, "/readyz").await.status == 200).await;

    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut client = WsClient::connect(addr, Some("pubsub.v1.proto")).await;
        send(&mut client, 1, Command::Connect { token: String::new() }).await;
        let Some(Kind::Connected(connected)) = next(&mut client).await.kind else {
            panic!("connected");
        };
        let subscribe = Command::Subscribe {
            channel: channel.clone(),
            since: None,
        };
        send(&mut client, 2, subscribe).await;
        // Its own join may come before or after the reply.
        let mut subscribed = false;
        while !subscribed {
            match next(&mut client).await.kind {
                Some(Kind::Subscribed(_)) => subscribed = true,
                Some(Kind::Join(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        clients.push((client, connected.client));
    }
    let (mut a, a_id) = clients.remove(0);
    let (b, b_id) = clients.remove(0);
    // The second's join reaches the first, as a protobuf Join.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "a hears b's join");
        if let Some(Kind::Join(join)) = next(&mut a).await.kind
            && join.member.as_ref().map(|m| m.client.as_str()) == Some(b_id.as_str())
        {
            assert_eq!(join.channel, "room:pb");
            break;
        }
    }
    send(
        &mut a,
        3,
        Command::Presence {
            channel: channel.clone(),
        },
    )
    .await;
    let reply = next(&mut a).await;
    assert_eq!(reply.id, Some(3));
    let Some(Kind::Presence(list)) = reply.kind else {
        panic!("a PresenceReply: {reply:?}");
    };
    let mut listed: Vec<String> = list.members.iter().map(|m| m.client.clone()).collect();
    listed.sort();
    let mut both = vec![a_id.clone(), b_id.clone()];
    both.sort();
    assert_eq!(listed, both);
    send(
        &mut a,
        4,
        Command::PresenceStats {
            channel: channel.clone(),
        },
    )
    .await;
    let reply = next(&mut a).await;
    let Some(Kind::PresenceStats(stats)) = reply.kind else {
        panic!("a PresenceStatsReply: {reply:?}");
    };
    assert_eq!((reply.id, stats.clients, stats.users), (Some(4), 2, 0));
    drop(b);
    let Some(Kind::Leave(leave)) = next(&mut a).await.kind else {
        panic!("a Leave");
    };
    assert_eq!(
        leave.member.map(|m| m.client),
        Some(b_id),
        "b's leave, as a protobuf Leave"
    );
}

/// A burst of joins (a mass reconnect) does not become a burst of events:
/// with `--presence-event-rate 5`, a subscriber hears at most 5 joins per
/// second of 40 that arrive within a moment, while the member list has
/// every one of them.
#[tokio::test]
async fn a_burst_of_joins_is_bounded_to_the_event_rate_and_the_list_stays_complete() {
    let config = presence_config();
    let node = GatewayProcess::spawn(&["--config", config.as_str(), "--presence-event-rate", "5"]);
    let addr = node.addr;
    eventually("ready", async || get(addr, "/readyz").await.status == 200).await;
    let mut watcher = Member::join(addr, "room:burst").await;
    // Let the watcher's own join use up its second, then start a fresh one.
    watcher.drain_events(Duration::from_millis(1100)).await;
    watcher.events.clear();
    let started = Instant::now();
    let mut joined = Vec::new();
    for _ in 0..40 {
        joined.push(Member::join(addr, "room:burst").await);
    }
    let joining = started.elapsed();
    watcher.drain_events(Duration::from_millis(300)).await;
    let heard = watcher.events.len();
    // Seconds the burst and the wait could touch, each worth 5 events.
    let seconds = (joining + Duration::from_millis(300)).as_secs() + 2;
    assert!(
        heard >= 1 && heard as u64 <= 5 * seconds,
        "{heard} join events for 40 joins in {joining:?} (at most 5 per second)"
    );
    assert!(heard < 40, "events were bounded: {heard} of 40");
    let deadline = Instant::now() + Duration::from_secs(5);
    while watcher.members("room:burst").await.len() != 41 {
        assert!(
            Instant::now() < deadline,
            "every member is listed without its event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
