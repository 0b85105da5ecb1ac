//! A real Redis Cluster per test: `redis-server` processes in cluster mode
//! on free loopback ports, joined by `redis-cli --cluster create`, stopped
//! when dropped. Helpers find masters, the shard serving a name, and drive
//! failovers and slot moves the way an operator would.

use std::process::Command;
use std::time::{Duration, Instant};

use super::server::RedisServer;

pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

/// The slot of a name, as Redis computes it (`CLUSTER KEYSLOT`).
pub fn keyslot(node: &RedisServer, name: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(name)
        .query(&mut node.connection())
        .expect("CLUSTER KEYSLOT")
}

impl RedisCluster {
    /// Starts `masters` masters with `replicas` replicas each and waits
    /// until the cluster is up. Full slot coverage is not required, so a
    /// lost shard affects only its own slots.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1500",
                    "--cluster-require-full-coverage",
                    "no",
                    // Replicas of a lost master may take over at once.
                    "--cluster-replica-validity-factor",
                    "0",
                ])
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli is installed (apt-get install redis-tools)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until("the cluster is ok with every replica in sync", |c| {
            c.nodes
                .iter()
                .all(|n| c.info(n, "CLUSTER", "INFO").contains("cluster_state:ok"))
                && c.replicas().len() == masters * replicas
                && c.replicas()
                    .iter()
                    .all(|r| c.info(r, "INFO", "replication").contains("master_link_status:up"))
        });
        cluster
    }

    /// `redis://` URLs of every node, comma-separated (the gateway's
    /// `--redis-cluster-url`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn info(&self, node: &RedisServer, command: &str, section: &str) -> String {
        let mut connection = match redis::Client::open(node.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
        {
            Ok(connection) => connection,
            Err(_) => return String::new(),
        };
        redis::cmd(command)
            .arg(section)
            .query(&mut connection)
            .unwrap_or_default()
    }

    fn role(&self, node: &RedisServer) -> Option<String> {
        let info = self.info(node, "INFO", "replication");
        info.lines()
            .find_map(|l| l.strip_prefix("role:"))
            .map(|r| r.trim().to_string())
    }

    /// The nodes that are masters now.
    pub fn masters(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|n| self.role(n).as_deref() == Some("master"))
            .collect()
    }

    /// The nodes that are replicas now.
    pub fn replicas(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|n| self.role(n).as_deref() == Some("slave"))
            .collect()
    }

    /// The node id of a node (`CLUSTER MYID`).
    pub fn id(&self, node: &RedisServer) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut node.connection())
            .expect("CLUSTER MYID")
    }

    /// The master serving `name`'s slot.
    pub fn master_of(&self, name: &str) -> &RedisServer {
        let slot = keyslot(&self.nodes[0], name);
        self.masters()
            .into_iter()
            .find(|m| self.ranges_of(m).iter().any(|(a, b)| *a <= slot && slot <= *b))
            .expect("a master serves every slot")
    }

    /// The slot ranges `master` serves, by its own `CLUSTER SLOTS`.
    pub fn ranges_of(&self, master: &RedisServer) -> Vec<(u16, u16)> {
        let id = self.id(master);
        let slots: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut master.connection())
            .expect("CLUSTER SLOTS");
        let redis::Value::Array(entries) = slots else {
            return Vec::new();
        };
        let int = |v: Option<&redis::Value>| match v {
            Some(redis::Value::Int(n)) => *n as u16,
            _ => 0,
        };
        let mut ranges: Vec<(u16, u16)> = entries
            .iter()
            .filter_map(|entry| {
                let redis::Value::Array(fields) = entry else {
                    return None;
                };
                let Some(redis::Value::Array(owner)) = fields.get(2) else {
                    return None;
                };
                let Some(redis::Value::BulkString(owner_id)) = owner.get(2) else {
                    return None;
                };
                (String::from_utf8_lossy(owner_id) == id).then(|| (int(fields.first()), int(fields.get(1))))
            })
            .collect();
        ranges.sort_unstable();
        ranges
    }

    /// Subscribers of a shard channel on `node` (`PUBSUB SHARDNUMSUB`).
    pub fn shardnumsub(&self, node: &RedisServer, channel: &str) -> i64 {
        let (_, count): (String, i64) = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(channel)
            .query(&mut node.connection())
            .expect("PUBSUB SHARDNUMSUB");
        count
    }

    /// A manual failover of `master`: one of its replicas takes over after
    /// catching up (`CLUSTER FAILOVER` on the replica). Returns the new
    /// master's port.
    pub fn fail_over(&self, master: &RedisServer) -> u16 {
        let master_id = self.id(master);
        let replica = self
            .replicas()
            .into_iter()
            .find(|r| {
                self.info(r, "INFO", "replication")
                    .contains(&format!("master_port:{}", master.port))
            })
            .unwrap_or_else(|| panic!("no replica of {master_id}"));
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query(&mut replica.connection())
            .expect("CLUSTER FAILOVER");
        let port = replica.port;
        self.wait_until("the replica took over", |c| {
            c.nodes
                .iter()
                .any(|n| n.port == port && c.role(n).as_deref() == Some("master"))
                && c.nodes
                    .iter()
                    .all(|n| c.info(n, "CLUSTER", "INFO").contains("cluster_state:ok"))
        });
        port
    }

    /// Moves one slot from its master to `to` with `redis-cli --cluster
    /// reshard`: the slot of `name` must be the lowest slot its master
    /// serves, which is the one `reshard` moves first (see `lowest_slot`).
    pub fn reshard_one_slot(&self, from: &RedisServer, to: &RedisServer) {
        let output = Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{}", from.port)])
            .args(["--cluster-from", &self.id(from)])
            .args(["--cluster-to", &self.id(to)])
            .args(["--cluster-slots", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster reshard failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The lowest slot `master` serves.
    pub fn lowest_slot(&self, master: &RedisServer) -> u16 {
        self.ranges_of(master)
            .first()
            .expect("the master serves a slot")
            .0
    }

    fn wait_until(&self, what: &str, check: impl Fn(&RedisCluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
