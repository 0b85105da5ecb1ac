//! HAProxy in front of gateway nodes, run with the shipped production
//! config (deploy/haproxy/haproxy.cfg), addresses passed by environment.
//! Its log (health-check transitions among it) is kept for tests to wait on.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::redis::free_port;

pub struct HaProxy {
    pub port: u16,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

/// The shipped config file.
pub fn config_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy/haproxy.cfg")
}

impl HaProxy {
    /// Starts HAProxy for exactly three gateway nodes (addresses where
    /// nothing listens yet are fine: health checks mark them down).
    pub fn start(nodes: [SocketAddr; 3]) -> HaProxy {
        let port = free_port();
        let mut child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(config_path())
            .env("HAPROXY_BIND", format!("127.0.0.1:{port}"))
            .env("GATEWAY_1", nodes[0].to_string())
            .env("GATEWAY_2", nodes[1].to_string())
            .env("GATEWAY_3", nodes[2].to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("haproxy is installed (apt-get install haproxy)");
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().expect("log lock").push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        HaProxy { port, child, log }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Waits until HAProxy has logged a line containing `text`, such as
    /// `gw2 is DOWN` (a health-check transition).
    pub async fn wait_for_log(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self
                .log
                .lock()
                .expect("log lock")
                .iter()
                .any(|l| l.contains(text))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy did not log {text:?} within {within:?}; log: {:?}",
                self.log.lock().map(|l| l.clone())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
