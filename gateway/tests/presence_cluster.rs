//! Presence on a real Redis Cluster (3 masters of `redis-server`), with
//! real gateway processes and WebSocket clients: a channel's presence lives
//! on its shard under the channel's hash tag.

mod support;

use std::time::{Duration, Instant};

use support::presence::{Member, presence_config, sorted};
use support::*;

/// Rooms on three shards: a channel's presence lives
/// on its shard under the channel's hash tag, so rooms on different shards
/// are listed by every node, their events reach every subscriber once, and
/// a killed node's member expires within the TTL.
#[tokio::test]
async fn every_node_lists_every_member_of_rooms_on_every_shard_and_a_killed_nodes_expire() {
    let cluster = support::cluster::RedisCluster::start(3, 0);
    let urls = cluster.urls();
    let config = presence_config();
    let node = |id: &'static str| {
        let (urls, config) = (urls.clone(), config.as_str().to_string());
        async move {
            let process = GatewayProcess::spawn(&[
                "--redis-cluster-url",
                &urls,
                "--node-id",
                id,
                "--config",
                &config,
                "--presence-ttl",
                "2s",
            ]);
            let addr = process.addr;
            eventually_within(&format!("{id} ready"), Duration::from_secs(15), async || {
                get(addr, "/readyz").await.status == 200
            })
            .await;
            process
        }
    };
    let nodes = [node("pc-1").await, node("pc-2").await, node("pc-3").await];
    // Rooms whose slots are on different masters.
    let rooms: Vec<String> =
        (0..40)
            .map(|i| format!("room:c{i}"))
            .fold(Vec::<String>::new(), |mut picked, room| {
                let shard = |r: &str| cluster.master_of(&format!("gw:{{{r}}}")).port;
                if picked.len() < 3 && picked.iter().all(|p| shard(p) != shard(&room)) {
                    picked.push(room);
                }
                picked
            });
    assert_eq!(rooms.len(), 3, "rooms on three shards: {rooms:?}");
    for room in &rooms {
        let mut a = Member::join(nodes[0].addr, room).await;
        a.members(room).await;
        let mut b = Member::join(nodes[1].addr, room).await;
        b.members(room).await;
        let c = Member::join(nodes[2].addr, room).await;
        let everyone = sorted(&[&a, &b, &c]);
        for member in [&mut a, &mut b] {
            let deadline = Instant::now() + Duration::from_secs(5);
            while member.members(room).await != everyone {
                assert!(
                    Instant::now() < deadline,
                    "{room}: every node lists all three members"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let answer = get(nodes[2].addr, &format!("/api/presence/stats?channel={room}")).await;
        assert_eq!(answer.json()["clients"], 3, "{room}: {:?}", answer.json());
        let c_client = c.client.clone();
        drop(c);
        a.drain_events(Duration::from_millis(800)).await;
        assert_eq!(
            a.seen(),
            [
                format!("join {}", a.client),
                format!("join {}", b.client),
                format!("join {c_client}"),
                format!("leave {c_client}"),
            ],
            "{room}: each join and the leave once, in order"
        );
    }
    // A member on a node that is killed expires within the TTL everywhere.
    let room = &rooms[0];
    let mut watcher = Member::join(nodes[0].addr, room).await;
    let _doomed = Member::join(nodes[1].addr, room).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while watcher.members(room).await.len() != 2 {
        assert!(Instant::now() < deadline, "the doomed member is listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodes[1].signal("KILL");
    let killed = Instant::now();
    loop {
        let members = watcher.members(room).await;
        if members == [watcher.client.clone()] {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_millis(4000),
            "the killed node's member is gone within the TTL (2 s, and 2 s for a loaded machine's reads): {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
