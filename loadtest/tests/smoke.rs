//! CI smoke run of the `loadtest` binary: a Redis, two real gateway nodes,
//! a few hundred connections for a few seconds per scenario, and the
//! reports checked for zero loss. Behaviour only: no figure is asserted.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loadtest::report::Report;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Kills the process when the test ends, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The gateway binary next to this package's binary (built by
/// `cargo test --workspace`; built here when the test runs alone).
fn gateway_binary() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_loadtest"))
        .parent()
        .expect("binary directory")
        .to_path_buf();
    let gateway = dir.join("gateway");
    if !gateway.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "gateway"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build -p gateway failed");
    }
    gateway
}

struct Cluster {
    _redis: Process,
    nodes: Vec<(Process, SocketAddr)>,
}

fn cluster() -> Cluster {
    let redis_port = free_port();
    let dir = std::env::temp_dir().join(format!("loadtest-smoke-{redis_port}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let redis = Process(
        Command::new("redis-server")
            .args([
                "--port",
                &redis_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed"),
    );
    wait_listening(([127, 0, 0, 1], redis_port).into(), "redis-server");
    let gateway = gateway_binary();
    let nodes = (1..=2)
        .map(|n| {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let child = Command::new(&gateway)
                .args(["--listen", &addr.to_string(), "--log-level", "warn"])
                .args(["--redis-url", &format!("redis://127.0.0.1:{redis_port}")])
                .args(["--node-id", &format!("smoke-{n}")])
                .stdout(Stdio::null())
                .spawn()
                .expect("gateway starts");
            wait_listening(addr, "gateway");
            (Process(child), addr)
        })
        .collect();
    Cluster { _redis: redis, nodes }
}

impl Cluster {
    fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|(_, a)| format!("ws://{a}/ws"))
            .collect::<Vec<_>>()
            .join(",")
    }
    fn api(&self, n: usize) -> String {
        format!("http://{}", self.nodes[n].1)
    }
    fn pids(&self) -> String {
        self.nodes
            .iter()
            .map(|(p, _)| p.0.id().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Runs `loadtest <args> --json FILE`, asserts success, returns the report.
fn loadtest(args: &[&str]) -> Report {
    let json = std::env::temp_dir().join(format!("loadtest-smoke-{}.json", free_port()));
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("loadtest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "loadtest {args:?} failed:\n{stdout}\n{stderr}"
    );
    Report::read_json(&json).expect("a report")
}

fn assert_no_loss(report: &Report, connections: u64) {
    assert_eq!(report.connections.open, connections, "{report:?}");
    assert!(!report.steps.is_empty());
    for step in &report.steps {
        assert!(step.expected > 0, "the step expected deliveries: {step:?}");
        assert_eq!(step.received, step.expected, "{step:?}");
        assert_eq!(
            (step.lost, step.duplicates, step.disconnects),
            (0, 0, 0),
            "{step:?}"
        );
        assert!(step.latency.count == step.received && step.latency.p50 > 0.0);
    }
}

#[test]
fn scenarios_run_against_two_redis_backed_nodes_without_loss() {
    let cluster = cluster();
    let (urls, pids) = (cluster.urls(), cluster.pids());

    // Fan-out over both nodes from two worker processes, published on node 1,
    // protobuf clients; two ramp steps.
    let report = loadtest(&[
        "fanout",
        "--url",
        &urls,
        "--api",
        &cluster.api(0),
        "--pid",
        &pids,
        "--subscribers",
        "300",
        "--workers",
        "2",
        "--protocol",
        "proto",
        "--rate",
        "40",
        "--ramp",
        "2",
        "--max-steps",
        "2",
        "--duration",
        "2s",
    ]);
    assert_no_loss(&report, 300);
    assert_eq!(report.steps.len(), 2);
    assert_eq!(report.steps[0].expected, 80 * 300);
    assert!(report.steps[0].server_cpu_secs.is_some());

    // The same with permessage-deflate on every connection, JSON clients
    // and payloads large enough to be compressed.
    let report = loadtest(&[
        "fanout",
        "--url",
        &urls,
        "--api",
        &cluster.api(0),
        "--subscribers",
        "200",
        "--compression",
        "--payload",
        "1024",
        "--event",
        "--rate",
        "40",
        "--duration",
        "2s",
    ]);
    assert_no_loss(&report, 200);

    // Many channels, random targets, publishing through both APIs.
    let apis = format!("{},{}", cluster.api(0), cluster.api(1));
    let report = loadtest(&[
        "channels",
        "--url",
        &urls,
        "--api",
        &apis,
        "--connections",
        "400",
        "--channels",
        "100",
        "--rate",
        "300",
        "--duration",
        "2s",
    ]);
    assert_no_loss(&report, 400);

    // Churn while publishing through WebSocket clients.
    let report = loadtest(&[
        "churn",
        "--url",
        &urls,
        "--connections",
        "200",
        "--channels",
        "20",
        "--publish-via",
        "ws",
        "--churn-rate",
        "50",
        "--hold",
        "300ms",
        "--rate",
        "200",
        "--duration",
        "2s",
    ]);
    assert_no_loss(&report, 200);
    let churn = report.churn.expect("churn figures");
    assert!(churn.cycles > 0 && churn.failed == 0, "{churn:?}");

    // Idle: memory per connection from the nodes' PIDs.
    let report = loadtest(&[
        "idle",
        "--url",
        &urls,
        "--pid",
        &pids,
        "--connections",
        "300",
        "--hold",
        "1s",
    ]);
    assert_eq!(report.connections.open, 300);
    assert_eq!(report.connections.dropped, 0);
    let memory = report.memory.expect("memory figures");
    assert!(memory.rss_after > 0);
}

#[test]
fn plot_renders_reports_to_svg() {
    let dir = std::env::temp_dir().join(format!("loadtest-plot-{}", free_port()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut report = Report::default();
    for (rate, p50, p99) in [(1000.0, 1.0, 3.0), (2000.0, 2.0, 9.0)] {
        let mut step = loadtest::report::Step {
            deliveries_per_sec: rate,
            ..Default::default()
        };
        step.latency.p50 = p50;
        step.latency.p99 = p99;
        step.latency.curve = vec![(0.5, p50), (0.99, p99)];
        report.steps.push(step);
    }
    let path = dir.join("r.json");
    report.write_json(&path).expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["plot", &format!("run={}", path.display()), "--out"])
        .arg(dir.join("chart"))
        .output()
        .expect("loadtest plot runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for (name, label) in [("chart-ramp.svg", "run p99"), ("chart-percentiles.svg", "run")] {
        let svg = std::fs::read_to_string(dir.join(name)).expect("chart written");
        assert!(svg.starts_with("<svg"), "{name}");
        assert!(
            svg.lines().any(|l| l.trim() == label),
            "{name}: no legend {label}"
        );
    }
}
