//! HAProxy in front of gateway nodes, run with the shipped production
//! config (deploy/haproxy/haproxy.cfg), addresses passed by environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::free_port;

pub struct HaProxy {
    pub port: u16,
    child: Child,
}

/// The shipped config file.
pub fn config_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy/haproxy.cfg")
}

impl HaProxy {
    /// Starts HAProxy for exactly three gateway nodes.
    pub fn start(nodes: [SocketAddr; 3]) -> HaProxy {
        let port = free_port();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(config_path())
            .env("HAPROXY_BIND", format!("127.0.0.1:{port}"))
            .env("GATEWAY_1", nodes[0].to_string())
            .env("GATEWAY_2", nodes[1].to_string())
            .env("GATEWAY_3", nodes[2].to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is installed (apt-get install haproxy)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        HaProxy { port, child }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
