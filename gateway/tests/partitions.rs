//! Network partitions that send no reset: links cut by taking a veth
//! down inside a network namespace (support::netns), so packets vanish and
//! neither side is told, unlike a killed process whose kernel sends a
//! reset. The loss checker runs through each cut.

mod support;

use std::io::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;
use support::netns::Host;
use support::*;

/// The documented bound for noticing a silent Redis (docs/operations.md):
/// probe interval (1 s) plus probe timeout (3 s), with room for a loaded
/// CI machine.
const NOTICE_WITHIN: Duration = Duration::from_secs(4 + 4);

fn show(line: String) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Three nodes on one Redis, each over its own link; node 1's link goes
/// silent for 5 s. Node 1 turns not ready within the probe bound, keeps
/// its clients, refuses publishes with 503, and comes back by itself when
/// the link heals; nodes 2 and 3 stay ready throughout; the checker's
/// subscribers (one per node) lose nothing and none is disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_without_a_reset_recovers_and_only_its_clients_wait() {
    let mut redis_host = Host::create();
    let links = [redis_host.link(), redis_host.link(), redis_host.link()];
    let port = 6390;
    redis_host.start_redis(port, links[0].inside);
    let mut nodes = Vec::new();
    for (i, link) in links.iter().enumerate() {
        nodes.push(
            node(
                &format!("redis://{}:{port}", link.inside),
                &format!("part-{}", i + 1),
            )
            .await,
        );
    }
    let addrs = [nodes[0].addr, nodes[1].addr, nodes[2].addr];
    let channels = (0..6).map(|i| format!("partition:{i}")).collect();
    let mut checker = loss_checker(channels, &addrs, 60).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connections = |text: &str| metric(text, "gateway_connections").unwrap_or(-1.0);
    let before = connections(&get(addrs[0], "/metrics").await.text());

    links[0].cut();
    let cut = Instant::now();
    eventually_within("node 1 not ready", NOTICE_WITHIN, async || {
        get(addrs[0], "/readyz").await.status == 503
    })
    .await;
    let noticed = cut.elapsed();
    let refused = post_json(
        addrs[0],
        "/api/publish",
        json!({"channel":"partition:0","data":1}),
    )
    .await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "unavailable");
    for addr in &addrs[1..] {
        assert_eq!(
            get(*addr, "/readyz").await.status,
            200,
            "the other nodes keep working"
        );
    }
    assert_eq!(
        connections(&get(addrs[0], "/metrics").await.text()),
        before,
        "node 1 keeps its clients"
    );
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(cut.elapsed())).await;

    links[0].heal();
    let healed = Instant::now();
    eventually_within("node 1 ready again", Duration::from_secs(15), async || {
        get(addrs[0], "/readyz").await.status == 200
    })
    .await;
    let recovered = healed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    checker.stop_publishers().await;
    let report = checker.settle_and_verify(Duration::from_secs(10)).await;
    show(format!(
        "[gateway-Redis blackhole] noticed after {noticed:?}, ready {recovered:?} after the heal; {report}"
    ));
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.disconnects, 0, "no subscriber was disconnected: {report}");
    let text = get(addrs[0], "/metrics").await.text();
    assert!(
        metric(&text, "gateway_stream_repairs_total").unwrap_or(0.0) >= 6.0,
        "node 1 caught up from history"
    );
    drop(nodes);
    drop(redis_host);
}

/// A client whose link goes silent (a phone in a tunnel): the node, which
/// pings every second, frees the connection within two ping intervals and
/// a sweep, and the client, back on a new connection, recovers with
/// `since` everything published meanwhile. The node runs inside its own
/// host with two links: the client's, which is cut, and the backend's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_silent_is_freed_within_the_ping_bound_and_recovers_everything() {
    let mut host = Host::create();
    let (client_link, backend_link) = (host.link(), host.link());
    host.spawn(
        env!("CARGO_BIN_EXE_gateway"),
        &[
            "--listen",
            "0.0.0.0:8080",
            "--ping-interval",
            "1s",
            "--node-id",
            "tunnel",
            "--log-level",
            "warn",
        ],
    );
    let backend = std::net::SocketAddr::from((backend_link.inside, 8080));
    let for_clients = std::net::SocketAddr::from((client_link.inside, 8080));
    eventually("the node is ready", async || {
        tokio::net::TcpStream::connect(backend).await.is_ok() && get(backend, "/readyz").await.status == 200
    })
    .await;
    let connections = async || metric(&get(backend, "/metrics").await.text(), "gateway_connections");

    let mut client = WsClient::connect(for_clients, None).await;
    let reply = client
        .request(json!({"type":"subscribe","id":1,"channel":"tunnel"}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let publish = async |n: u64| {
        let answer = post_json(backend, "/api/publish", json!({"channel":"tunnel","data":n})).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        position(&answer.json())
    };
    let mut last = (String::new(), 0);
    for n in 0..3 {
        last = publish(n).await;
        assert_eq!(client.recv_json().await["data"], n);
    }
    assert_eq!(connections().await, Some(1.0));

    client_link.cut();
    let cut = Instant::now();
    for n in 3..8 {
        publish(n).await;
    }
    eventually_within("the silent client is freed", Duration::from_secs(8), async || {
        connections().await == Some(0.0)
    })
    .await;
    let freed = cut.elapsed();
    drop(client);

    client_link.heal();
    let mut back = WsClient::connect(for_clients, None).await;
    let reply = back
        .request(
            json!({"type":"subscribe","id":2,"channel":"tunnel","since":{"epoch":last.0,"offset":last.1}}),
        )
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    for n in 3..8 {
        let message = back.recv_json().await;
        assert_eq!(message["data"], n, "{message}");
    }
    show(format!(
        "[client-gateway blackhole] freed after {freed:?} (ping interval 1 s); 5 of 5 publications recovered"
    ));
    assert!(
        freed <= Duration::from_secs(4),
        "within two ping intervals and a sweep, with room: {freed:?}"
    );
}
