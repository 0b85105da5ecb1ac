//! A real `redis-server` per test, on a free loopback port, that the test
//! can kill and restart on the same port. Never the shared one on 6379.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    extra: Vec<String>,
    tls: bool,
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisServer {
    /// Starts a throwaway Redis without persistence.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a throwaway Redis that only speaks TLS, with this
    /// certificate, key and CA (PEM files).
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> RedisServer {
        let port = free_port();
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let extra = [
            "--port".to_string(),
            "0".to_string(),
            "--tls-port".to_string(),
            port.to_string(),
            "--tls-cert-file".to_string(),
            path(cert),
            "--tls-key-file".to_string(),
            path(key),
            "--tls-ca-cert-file".to_string(),
            path(ca),
            "--tls-auth-clients".to_string(),
            "no".to_string(),
        ];
        Self::start_on(port, extra.to_vec(), true)
    }

    /// Starts a throwaway Redis with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        Self::start_on(free_port(), extra.iter().map(|s| s.to_string()).collect(), false)
    }

    fn start_on(port: u16, extra: Vec<String>, tls: bool) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("gw-test-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut server = RedisServer {
            port,
            child: None,
            dir,
            extra,
            tls,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let port = if self.tls {
            String::from("0")
        } else {
            self.port.to_string()
        };
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.try_ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    fn try_ping(&self) -> bool {
        if self.tls {
            // Listening is enough: the tests connect through the gateway.
            return std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        }
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .expect("a connection to the test Redis")
    }

    /// Subscribers Redis counts on `channel` (`PUBSUB NUMSUB`).
    pub fn numsub(&self, channel: &str) -> i64 {
        let (_, count): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query(&mut self.connection())
            .expect("PUBSUB NUMSUB");
        count
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
