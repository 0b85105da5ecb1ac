//! Redis Cluster with sharded pub/sub: real clusters of `redis-server`
//! processes (3 masters, and 3 masters with 3 replicas), real gateway
//! processes, real WebSocket clients.

mod support;

use std::time::Duration;

use serde_json::json;
use support::cluster::{RedisCluster, keyslot};
use support::*;

/// A gateway process on the cluster, waited on until ready.
async fn cluster_node(cluster: &RedisCluster, id: &str) -> GatewayProcess {
    let urls = cluster.urls();
    let process = GatewayProcess::spawn(&["--redis-cluster-url", &urls, "--node-id", id]);
    let addr = process.addr;
    eventually_within(&format!("{id} ready"), Duration::from_secs(15), async || {
        get(addr, "/readyz").await.status == 200
    })
    .await;
    process
}

/// Channel names (`<prefix>:{name}` in Redis), at least two on every master.
fn channels_on_every_shard(cluster: &RedisCluster, prefix: &str) -> Vec<String> {
    let masters: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let mut per_master = vec![0usize; masters.len()];
    let mut names = Vec::new();
    for i in 0.. {
        let name = format!("{prefix}:{i}");
        let port = cluster.master_of(&format!("gw:{{{name}}}")).port;
        let index = masters.iter().position(|p| *p == port).expect("a master");
        if per_master[index] < 2 {
            per_master[index] += 1;
            names.push(name);
        }
        if per_master.iter().all(|n| *n == 2) {
            break;
        }
    }
    names
}

#[tokio::test]
async fn three_nodes_spread_channels_over_every_shard_and_deliver_in_order() {
    let cluster = RedisCluster::start(3, 0);
    let nodes = [
        cluster_node(&cluster, "c-1").await,
        cluster_node(&cluster, "c-2").await,
        cluster_node(&cluster, "c-3").await,
    ];
    let channels = channels_on_every_shard(&cluster, "spread");
    let mut subscribers = Vec::new();
    for node in &nodes {
        let mut client = WsClient::connect(node.addr, None).await;
        for channel in &channels {
            client.subscribe(channel).await;
        }
        subscribers.push(client);
    }
    // Each channel's shard channel has the three nodes as subscribers on
    // the master serving it, and none elsewhere.
    for channel in &channels {
        let redis_name = format!("gw:{{{channel}}}");
        let owner = cluster.master_of(&redis_name).port;
        for master in cluster.masters() {
            let expected = if master.port == owner { 3 } else { 0 };
            assert_eq!(
                cluster.shardnumsub(master, &redis_name),
                expected,
                "{redis_name} on {} (owner {owner})",
                master.port
            );
        }
    }

    // (a) HTTP on node 1, (b) a WebSocket client on node 2, (c) broadcast
    // on node 3: every subscriber gets all of it, once, in order.
    let mut publisher = WsClient::connect(nodes[1].addr, None).await;
    for round in 0..3 {
        for channel in &channels {
            let answer = post_json(
                nodes[0].addr,
                "/api/publish",
                json!({"channel":channel,"data":[round,"http"]}),
            )
            .await;
            assert_eq!(answer.status, 200, "{}", answer.text());
            let reply = publisher
                .request(json!({"type":"publish","id":1,"channel":channel,"data":[round,"ws"]}))
                .await;
            assert_eq!(reply["type"], "published", "{reply}");
        }
        let answer = post_json(
            nodes[2].addr,
            "/api/broadcast",
            json!({"channels":channels,"data":[round,"broadcast"]}),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    for client in &mut subscribers {
        let mut per_channel: std::collections::HashMap<String, Vec<(u64, serde_json::Value)>> =
            Default::default();
        for _ in 0..channels.len() * 9 {
            let message = client.recv_json().await;
            assert_eq!(message["type"], "message", "{message}");
            per_channel
                .entry(message["channel"].as_str().unwrap().to_string())
                .or_default()
                .push((message["offset"].as_u64().unwrap(), message["data"].clone()));
        }
        for channel in &channels {
            let got = &per_channel[channel];
            let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
            assert_eq!(offsets, (1..=9).collect::<Vec<_>>(), "{channel}");
            let sources: Vec<&str> = got.iter().map(|(_, d)| d[1].as_str().unwrap()).collect();
            assert_eq!(sources, ["http", "ws", "broadcast"].repeat(3), "{channel}");
        }
    }

    // After node 3's last local subscriber leaves, the shard counts two.
    drop(subscribers.pop());
    let redis_name = format!("gw:{{{}}}", channels[0]);
    let owner = cluster.master_of(&redis_name);
    eventually("node 3 unsubscribed", async || {
        cluster.shardnumsub(owner, &redis_name) == 2
    })
    .await;
}

#[tokio::test]
async fn a_lost_shard_affects_only_its_own_channels() {
    let mut cluster = RedisCluster::start(3, 0);
    let node = cluster_node(&cluster, "lost-1").await;
    let channels = channels_on_every_shard(&cluster, "lost");
    let victim_port = cluster.master_of(&format!("gw:{{{}}}", channels[0])).port;
    let on_victim: Vec<&String> = channels
        .iter()
        .filter(|c| cluster.master_of(&format!("gw:{{{c}}}")).port == victim_port)
        .collect();
    let elsewhere: Vec<&String> = channels.iter().filter(|c| !on_victim.contains(c)).collect();
    let mut client = WsClient::connect(node.addr, None).await;
    for channel in &channels {
        client.subscribe(channel).await;
    }
    let label = {
        let victim = cluster.nodes.iter().find(|n| n.port == victim_port).unwrap();
        let (start, end) = cluster.ranges_of(victim)[0];
        format!("{start}-{end}")
    };
    let shard_metric = format!("gateway_broker_up{{shard=\"{label}\"}}");
    assert_eq!(
        metric(&get(node.addr, "/metrics").await.text(), &shard_metric),
        Some(1.0)
    );

    let victim = cluster.nodes.iter_mut().find(|n| n.port == victim_port).unwrap();
    victim.kill();
    eventually_within("readiness fails", Duration::from_secs(10), async || {
        get(node.addr, "/readyz").await.status == 503
    })
    .await;
    let ready = get(node.addr, "/readyz").await.json();
    assert_eq!(ready["failing"], json!(["broker"]), "{ready}");
    assert!(
        ready["checks"]["broker"]["detail"]
            .as_str()
            .unwrap()
            .contains(&label),
        "{ready}"
    );
    let metrics = get(node.addr, "/metrics").await.text();
    assert_eq!(metric(&metrics, &shard_metric), Some(0.0), "{metrics}");
    // Publishes to the lost shard's channels are refused; the others work.
    for channel in &on_victim {
        let answer = post_json(node.addr, "/api/publish", json!({"channel":channel,"data":"x"})).await;
        assert_eq!(answer.status, 503, "{}", answer.text());
        assert_eq!(answer.json()["error"]["code"], "unavailable");
    }
    for channel in &elsewhere {
        let answer = post_json(
            node.addr,
            "/api/publish",
            json!({"channel":channel,"data":"still"}),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let message = client.recv_json().await;
        assert_eq!(
            (message["channel"].as_str(), &message["data"]),
            (Some(channel.as_str()), &json!("still"))
        );
    }

    // The shard comes back (empty: no persistence): ready again, its
    // channels work again, and its subscribers were told of the new epoch.
    cluster
        .nodes
        .iter_mut()
        .find(|n| n.port == victim_port)
        .unwrap()
        .restart();
    eventually_within("ready again", Duration::from_secs(20), async || {
        get(node.addr, "/readyz").await.status == 200
    })
    .await;
    let channel = on_victim[0];
    let answer = post_json(
        node.addr,
        "/api/publish",
        json!({"channel":channel,"data":"back"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    loop {
        let message = client.recv_json().await;
        if message["type"] == "gap" {
            continue;
        }
        assert_eq!(message["type"], "message", "{message}");
        if message["channel"] == channel.as_str() {
            assert_eq!(message["data"], "back");
            break;
        }
    }
}

#[tokio::test]
async fn a_manual_failover_loses_nothing() {
    let cluster = RedisCluster::start(3, 1);
    let nodes = [
        cluster_node(&cluster, "f-1").await,
        cluster_node(&cluster, "f-2").await,
        cluster_node(&cluster, "f-3").await,
    ];
    let addrs = nodes.each_ref().map(|n| n.addr);
    let channels = channels_on_every_shard(&cluster, "failover");
    let mut checker = loss_checker(channels.clone(), &addrs, 40).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A manual failover of the master serving the first channel.
    let master = cluster.master_of(&format!("gw:{{{}}}", channels[0]));
    let new_master = cluster.fail_over(master);
    eprintln!("failover: master {} -> {new_master}", master.port);
    tokio::time::sleep(Duration::from_secs(3)).await;
    checker.stop_publishers().await;
    let report = checker.settle_and_verify(Duration::from_secs(15)).await;
    eprintln!("[cluster failover] {report}");
    assert!(report.is_complete(), "{report}");
    assert!(report.acked > 200, "{report}");
    for node in &nodes {
        let ready = get(node.addr, "/readyz").await;
        assert_eq!(ready.status, 200, "{}", ready.text());
    }
}

#[tokio::test]
async fn resharding_a_subscribed_slot_keeps_delivering() {
    let cluster = RedisCluster::start(3, 0);
    let nodes = [
        cluster_node(&cluster, "r-1").await,
        cluster_node(&cluster, "r-2").await,
        cluster_node(&cluster, "r-3").await,
    ];
    let addrs = nodes.each_ref().map(|n| n.addr);
    // A channel in the lowest slot of a master: the one reshard moves.
    let masters = cluster.masters();
    let (from, to) = (masters[0], masters[1]);
    let lowest = cluster.lowest_slot(from);
    let moving = (0..)
        .map(|i| format!("reshard:{i}"))
        .find(|c| keyslot(&cluster.nodes[0], &format!("gw:{{{c}}}")) == lowest)
        .expect("a channel name in the slot");
    let mut channels = channels_on_every_shard(&cluster, "reshard-other");
    channels.push(moving.clone());
    let mut checker = loss_checker(channels, &addrs, 40).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    cluster.reshard_one_slot(from, to);
    let redis_name = format!("gw:{{{moving}}}");
    assert_eq!(cluster.master_of(&redis_name).port, to.port, "the slot moved");
    eventually_within(
        "the nodes subscribed on the new owner",
        Duration::from_secs(10),
        async || cluster.shardnumsub(to, &redis_name) == 3,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    checker.stop_publishers().await;
    let report = checker.settle_and_verify(Duration::from_secs(15)).await;
    eprintln!("[cluster reshard] {report}");
    assert!(report.is_complete(), "{report}");
    assert!(report.acked > 200, "{report}");
}
