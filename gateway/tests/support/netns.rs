//! Hosts of the test's own, in Linux network namespaces (iproute2's
//! `ip netns`, root only), linked to the test's namespace by veth pairs,
//! so a test can cut a link the way a network fails: the link goes down
//! and packets vanish, and neither side gets a reset. Everything is
//! removed when the host is dropped.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU8 = AtomicU8::new(0);

/// A network namespace.
pub struct Host {
    pub name: String,
    children: Vec<Child>,
}

/// One veth pair between the test's namespace and a host: `outside` is
/// the test's end, `inside` the host's.
pub struct Link {
    netns: String,
    inside_if: String,
    pub outside: Ipv4Addr,
    pub inside: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2's ip runs");
    assert!(
        output.status.success(),
        "ip {}: {} (network namespace tests need root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

impl Host {
    pub fn create() -> Host {
        let name = format!(
            "gwtest-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Host {
            name,
            children: Vec::new(),
        }
    }

    /// A new link to this host, on its own /30.
    pub fn link(&self) -> Link {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("gw{:x}{n}", pid & 0xffff);
        let (outside_if, inside_if) = (format!("{tag}o"), format!("{tag}i"));
        let net = [10, 100 + (pid % 100) as u8, n, 0];
        let outside = Ipv4Addr::new(net[0], net[1], net[2], 1);
        let inside = Ipv4Addr::new(net[0], net[1], net[2], 2);
        ip(&[
            "link",
            "add",
            &outside_if,
            "type",
            "veth",
            "peer",
            "name",
            &inside_if,
        ]);
        ip(&["link", "set", &inside_if, "netns", &self.name]);
        ip(&["addr", "add", &format!("{outside}/24"), "dev", &outside_if]);
        ip(&["link", "set", &outside_if, "up"]);
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{inside}/24"),
            "dev",
            &inside_if,
        ]);
        ip(&["-n", &self.name, "link", "set", &inside_if, "up"]);
        Link {
            netns: self.name.clone(),
            inside_if,
            outside,
            inside,
        }
    }

    /// Runs `program` inside this host; killed when the host is dropped.
    pub fn spawn(&mut self, program: &str, args: &[&str]) -> u32 {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ip netns exec runs");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Starts a Redis inside this host on `port`, reachable on every
    /// address of the host, and waits until `addr` answers.
    pub fn start_redis(&mut self, port: u16, addr: Ipv4Addr) {
        let dir = std::env::temp_dir().join(format!("{}-redis", self.name));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let dir = dir.to_string_lossy().into_owned();
        let port = port.to_string();
        self.spawn(
            "redis-server",
            &[
                "--port",
                &port,
                "--bind",
                "0.0.0.0",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir,
            ],
        );
        let url = format!("redis://{addr}:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let answered = redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok();
            if answered {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server in {} did not answer on {url}", self.name);
    }
}

impl Link {
    /// Cuts the link: the host's end goes down, packets either way are
    /// dropped, and nobody is told.
    pub fn cut(&self) {
        ip(&["-n", &self.netns, "link", "set", &self.inside_if, "down"]);
    }

    /// Brings the link back.
    pub fn heal(&self) {
        ip(&["-n", &self.netns, "link", "set", &self.inside_if, "up"]);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for child in &mut self.children {
            // `ip netns exec` runs the program in its own process: kill
            // what runs in the namespace, then the namespace.
            let _ = Command::new("ip")
                .args(["netns", "pids", &self.name])
                .output()
                .map(|out| {
                    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
