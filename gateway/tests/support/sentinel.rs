//! A Redis primary, one replica and three sentinels watching them, all
//! real processes on loopback, for failover tests.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::{RedisServer, free_port};

/// The master name the sentinels monitor.
pub const MASTER: &str = "gwmaster";

pub struct SentinelSet {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinel_ports: Vec<u16>,
    sentinels: Vec<Child>,
    dir: std::path::PathBuf,
}

fn query<T: redis::FromRedisValue>(port: u16, command: &mut redis::Cmd) -> Option<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut connection = client
        .get_connection_with_timeout(Duration::from_millis(300))
        .ok()?;
    command.query(&mut connection).ok()
}

fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

impl SentinelSet {
    /// Starts everything and waits until the replica is in sync and every
    /// sentinel knows the replica and the two other sentinels (else a
    /// failover could not happen).
    pub fn start() -> SentinelSet {
        let primary = RedisServer::start();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
        wait_for("the replica in sync", Duration::from_secs(10), || {
            query::<String>(replica.port, redis::cmd("INFO").arg("replication"))
                .is_some_and(|info| info.contains("master_link_status:up"))
        });
        let dir = std::env::temp_dir().join(format!("gw-sentinels-{}-{}", std::process::id(), primary.port));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 10000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir.display(),
                    primary.port
                ),
            )
            .expect("sentinel config");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel starts");
            sentinels.push(child);
            sentinel_ports.push(port);
        }
        for &port in &sentinel_ports {
            wait_for(
                "each sentinel to know the replica and its peers",
                Duration::from_secs(30),
                || {
                    let replicas: Option<Vec<redis::Value>> =
                        query(port, redis::cmd("SENTINEL").arg("replicas").arg(MASTER));
                    let peers: Option<Vec<redis::Value>> =
                        query(port, redis::cmd("SENTINEL").arg("sentinels").arg(MASTER));
                    replicas.is_some_and(|r| r.len() == 1) && peers.is_some_and(|p| p.len() == 2)
                },
            );
        }
        SentinelSet {
            primary,
            replica,
            sentinel_ports,
            sentinels,
            dir,
        }
    }

    /// The gateway's flags for these sentinels.
    pub fn gateway_args(&self) -> Vec<String> {
        let urls: Vec<String> = self
            .sentinel_ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
        vec![
            "--redis-sentinel-url".into(),
            urls.join(","),
            "--redis-sentinel-master".into(),
            MASTER.into(),
        ]
    }

    /// The primary the first sentinel names now.
    pub fn primary_port(&self) -> Option<u16> {
        let address: Option<(String, u16)> = query(
            self.sentinel_ports[0],
            redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(MASTER),
        )?;
        address.map(|(_, port)| port)
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for child in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
