//! No lost messages: the loss and duplication checker (loss_checker)
//! against three real gateway processes on a real Redis, under faults.
//! Publishers write numbered messages through HTTP and WebSocket on
//! different nodes; subscribers on every node record what they get and
//! recover with `since` when their connection dies.

mod support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use loss_checker::{Checker, Report};
use support::redis::RedisServer;
use support::*;

const CHANNELS: usize = 6;
/// Publications per second, per publisher.
const RATE: u32 = 60;

/// The checker with `CHANNELS` channels named after the test.
async fn checker(name: &str, nodes: &[SocketAddr; 3]) -> Checker {
    let channels = (0..CHANNELS).map(|i| format!("{name}:{i}")).collect();
    loss_checker(channels, nodes, RATE).await
}

/// Writes the report where CI shows it, even for a passing test.
fn show(test: &str, report: &Report) {
    let _ = writeln!(std::io::stderr(), "[{test}] {report}");
}

/// Kills Redis, keeps it down for a second, restarts it on the same port
/// and waits until every node is ready again.
async fn restart_redis(redis: &mut RedisServer, nodes: &[SocketAddr]) {
    redis.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart();
    for &addr in nodes {
        eventually("ready after the restart", async || {
            get(addr, "/readyz").await.status == 200
        })
        .await;
    }
}

async fn three_nodes(redis: &RedisServer) -> [GatewayProcess; 3] {
    [
        node(&redis.url(), "node-1").await,
        node(&redis.url(), "node-2").await,
        node(&redis.url(), "node-3").await,
    ]
}

#[tokio::test]
async fn clients_that_reconnect_elsewhere_with_since_lose_nothing() {
    let redis = RedisServer::start();
    let nodes = three_nodes(&redis).await;
    let mut checker = checker("reconnect", &nodes.each_ref().map(|n| n.addr)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Network cuts: each subscriber in turn drops its socket and comes back
    // on the next node with `since`.
    for i in 0..3 {
        checker.subscribers()[i].cut();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    checker.stop_publishers().await;
    let report = checker.settle_and_verify(Duration::from_secs(10)).await;
    show("client reconnects", &report);
    assert!(report.is_complete(), "{report}");
    assert!(
        report.acked > 300 && report.resubscribes >= 3 * CHANNELS as u64,
        "{report}"
    );
}

#[tokio::test]
async fn a_killed_gateway_loses_nothing_for_clients_that_move() {
    let redis = RedisServer::start();
    let mut nodes = three_nodes(&redis).await;
    let addrs = nodes.each_ref().map(|n| n.addr);
    let mut checker = checker("kill", &addrs).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Node 1 dies at once (no drain): its subscriber and the HTTP publisher
    // move to the surviving nodes.
    nodes[0].signal("KILL");
    assert!(
        nodes[0]
            .wait_exit(Duration::from_secs(5))
            .is_none_or(|code| code != 0)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    checker.stop_publishers().await;
    let report = checker.settle_and_verify(Duration::from_secs(10)).await;
    show("gateway SIGKILL", &report);
    assert!(report.is_complete(), "{report}");
    assert!(
        report.disconnects >= CHANNELS as u64,
        "the killed node's subscriber moved: {report}"
    );
}

#[tokio::test]
async fn a_redis_restart_with_aof_is_gap_filled_by_the_nodes() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let nodes = three_nodes(&redis).await;
    let addrs = nodes.each_ref().map(|n| n.addr);
    let mut checker = checker("aof", &addrs).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    restart_redis(&mut redis, &addrs).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    checker.stop_publishers().await;
    let report = checker.settle_and_verify(Duration::from_secs(10)).await;
    show("Redis restart with AOF", &report);
    assert!(report.is_complete(), "{report}");
    assert_eq!(
        report.disconnects, 0,
        "clients stayed connected; the nodes filled the gap: {report}"
    );
    assert!(
        report.refused + report.ambiguous as u64 > 0,
        "publications during the outage were answered with errors (unavailable: possibly \
         published, so counted as ambiguous), not lost: {report}"
    );
    for addr in addrs {
        let text = get(addr, "/metrics").await.text();
        assert!(metric(&text, "gateway_stream_repairs_total").unwrap_or(0.0) >= CHANNELS as f64);
    }
}

#[tokio::test]
async fn a_redis_restart_without_persistence_is_announced_not_hidden() {
    let mut redis = RedisServer::start();
    let nodes = three_nodes(&redis).await;
    let addrs = nodes.each_ref().map(|n| n.addr);
    let mut checker = checker("nopersist", &addrs).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    restart_redis(&mut redis, &addrs).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    checker.stop_publishers().await;
    let report = checker.settle_and_verify(Duration::from_secs(10)).await;
    show("Redis restart without persistence", &report);
    // Epochs changed: every subscriber of every channel was told.
    assert!(
        report.is_clean(),
        "nothing lost silently, duplicated or invented: {report}"
    );
    assert!(
        report.gap_notices + report.not_recovered >= 3 * CHANNELS as u64,
        "every affected subscriber was told: {report}"
    );
}

/// Redis comes back *behind* what the nodes delivered (a replica that had
/// not caught up took over, or AOF `everysec` lost its last second): the
/// channel's offset went back within the same epoch. The node notices when
/// it catches up, restarts the channel's epoch, tells its subscribers, and
/// new publications reach them instead of passing for old ones.
#[tokio::test]
async fn offsets_that_went_back_restart_the_epoch_instead_of_hiding_publications() {
    let redis = RedisServer::start();
    let node = node(&redis.url(), "behind-1").await;
    let mut client = WsClient::connect(node.addr, None).await;
    client.subscribe("behind").await;
    for i in 1..=10 {
        let answer = post_json(
            node.addr,
            "/api/publish",
            serde_json::json!({"channel":"behind","data":i}),
        )
        .await;
        assert_eq!(answer.status, 200);
        assert_eq!(client.recv_json().await["offset"], i);
    }
    let epoch = {
        let mut connection = redis.connection();
        let epoch: String = ::redis::cmd("HGET")
            .arg("gw:{behind}:m")
            .arg("e")
            .query(&mut connection)
            .unwrap();
        // Offsets 6..=10 "never reached" the Redis that is now serving.
        let _: () = ::redis::cmd("HSET")
            .arg("gw:{behind}:m")
            .arg("o")
            .arg(5)
            .query(&mut connection)
            .unwrap();
        let _: () = ::redis::cmd("XTRIM")
            .arg("gw:{behind}:s")
            .arg("MAXLEN")
            .arg(5)
            .query(&mut connection)
            .unwrap();
        // The node's pub/sub connection breaks, as in a failover.
        let _: () = ::redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut connection)
            .unwrap();
        epoch
    };
    let gap = client.recv_json().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_ne!(gap["epoch"], epoch.as_str(), "a new epoch: {gap}");
    assert_eq!(gap["offset"], 0);
    let answer = post_json(
        node.addr,
        "/api/publish",
        serde_json::json!({"channel":"behind","data":"new"}),
    )
    .await;
    assert_eq!(answer.json()["epoch"], gap["epoch"]);
    let message = client.recv_json().await;
    assert_eq!(
        (
            message["data"].as_str(),
            message["offset"].as_u64(),
            &message["epoch"]
        ),
        (Some("new"), Some(1), &gap["epoch"])
    );
}

/// Redis with Sentinel: three nodes find the primary through three
/// sentinels; the primary dies by SIGKILL under the checker, a sentinel
/// promotes the replica, and the nodes follow on their own: what was
/// acknowledged is delivered once, or announced (gap, epoch restart) where
/// asynchronous replication lost it; nothing silently.
#[tokio::test]
async fn a_sentinel_failover_is_followed_and_loses_nothing_silently() {
    let mut set = support::sentinel::SentinelSet::start();
    let args = set.gateway_args();
    let mut nodes = Vec::new();
    for id in ["sentinel-1", "sentinel-2", "sentinel-3"] {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend(["--node-id", id]);
        let process = GatewayProcess::spawn(&all);
        let addr = process.addr;
        eventually(&format!("{id} ready"), async || {
            get(addr, "/readyz").await.status == 200
        })
        .await;
        nodes.push(process);
    }
    let addrs = [nodes[0].addr, nodes[1].addr, nodes[2].addr];
    let mut checker = checker("sentinel", &addrs).await;
    let mut watcher = WsClient::connect(addrs[1], None).await;
    watcher.subscribe("sentinel:first-after").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let old = set.primary.port;
    set.primary.kill();
    let killed = std::time::Instant::now();
    // The first publication accepted after the kill, through node 3, to
    // the watcher on node 2.
    let first = loop {
        let answer = post_json(
            addrs[2],
            "/api/publish",
            serde_json::json!({"channel":"sentinel:first-after","data":1}),
        )
        .await;
        if answer.status == 200 {
            break watcher.recv_json().await;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no failover within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first_delivery = killed.elapsed();
    assert_eq!(first["data"], 1, "{first}");
    assert_eq!(
        set.primary_port(),
        Some(set.replica.port),
        "the sentinels promoted the replica"
    );
    for addr in addrs {
        eventually_within("ready on the new primary", Duration::from_secs(15), async || {
            get(addr, "/readyz").await.status == 200
        })
        .await;
    }
    let all_ready = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    checker.stop_publishers().await;
    let report = checker.settle_and_verify(Duration::from_secs(10)).await;
    show(
        &format!(
            "Sentinel failover (primary :{old} SIGKILLed): first delivery after {first_delivery:?}, \
             all nodes ready after {all_ready:?}"
        ),
        &report,
    );
    assert!(
        report.is_clean(),
        "nothing lost silently, duplicated or invented: {report}"
    );
    let info = get(addrs[0], "/api/info").await.json();
    assert_eq!(info["nodes"][0]["broker"], "redis-sentinel", "{info}");
}
