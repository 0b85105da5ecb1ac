//! A drain without a reconnect storm, behind a real HAProxy: a node with
//! 2,000 clients receives SIGTERM; readiness turns 503 at once; the clients
//! are closed with 1012 spread evenly over the drain window, each with a
//! reconnect hint; they reconnect through HAProxy to the remaining nodes,
//! recover with `since`, and miss nothing; the node exits 0 in time.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::haproxy::HaProxy;
use support::redis::{RedisServer, free_port};
use support::{GatewayProcess, get, metric, post_json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 2000;
const DRAIN_SECONDS: u64 = 4;
const JITTER_MS: u64 = 1500;
const CHANNEL: &str = "drain:news";

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// What one client saw.
struct Seen {
    node_before: String,
    node_after: String,
    close_code: u16,
    /// When the drain's close arrived, after the signal.
    closed_at: Duration,
    hint_ms: u64,
    /// Every offset received, in arrival order (one epoch: Redis keeps it).
    offsets: Vec<u64>,
}

async fn open(lb: SocketAddr) -> Result<Ws, String> {
    let stream = TcpStream::connect(lb).await.map_err(|e| e.to_string())?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{lb}/ws"), stream)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

async fn next_json(ws: &mut Ws) -> Result<Value, Message> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return Ok(serde_json::from_str(&text).expect("JSON")),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(other))) => return Err(other),
            other => panic!("connection failed while reading: {other:?}"),
        }
    }
}

async fn request(ws: &mut Ws, command: Value) -> Value {
    ws.send(Message::text(command.to_string())).await.expect("send");
    next_json(ws).await.expect("a reply")
}

/// Connects (retrying, as a client would while the load balancer still
/// routes some attempts to the draining node) and returns the node id.
async fn connect_somewhere(lb: SocketAddr) -> (Ws, String) {
    let mut delay = Duration::from_millis(100);
    for _ in 0..40 {
        if let Ok(mut ws) = open(lb).await {
            let reply = request(&mut ws, json!({"type":"connect","id":1})).await;
            if reply["type"] == "connected" {
                return (ws, reply["node"].as_str().unwrap_or_default().to_string());
            }
        }
        tokio::time::sleep(delay.mul_f64(fastrand::f64())).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
    panic!("could not reconnect through HAProxy");
}

/// One client: subscribed before the drain; after the close, waits the
/// hinted delay, reconnects and recovers; reads until `last` arrives.
async fn client(
    mut ws: Ws,
    (node_before, mut epoch, mut since): (String, String, u64),
    lb: SocketAddr,
    signalled: Arc<std::sync::OnceLock<Instant>>,
    last: Arc<AtomicU64>,
    reconnected: Arc<AtomicU64>,
) -> Seen {
    let mut offsets = Vec::new();
    let close = loop {
        match next_json(&mut ws).await {
            Ok(message) => {
                assert_eq!(message["type"], "message", "{message}");
                epoch = message["epoch"].as_str().unwrap_or_default().to_string();
                since = message["offset"].as_u64().expect("offset");
                offsets.push(since);
            }
            Err(Message::Close(Some(frame))) => break frame,
            Err(other) => panic!("unexpected frame {other:?}"),
        }
    };
    let closed_at = signalled.get().expect("closed after the signal").elapsed();
    let hint: Value = serde_json::from_str(&close.reason).expect("the close reason is JSON");
    assert_eq!(hint["reason"], "draining", "{hint}");
    let hint_ms = hint["reconnect_after_ms"].as_u64().expect("reconnect_after_ms");
    drop(ws);
    tokio::time::sleep(Duration::from_millis(hint_ms)).await;

    let (mut ws, node_after) = connect_somewhere(lb).await;
    let reply = request(
        &mut ws,
        json!({"type":"subscribe","id":2,"channel":CHANNEL,"since":{"epoch":epoch,"offset":since}}),
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["recovered"], true, "{reply}");
    reconnected.fetch_add(1, Ordering::SeqCst);
    loop {
        let done = last.load(Ordering::SeqCst);
        if done > 0 && offsets.last().is_some_and(|o| *o >= done) {
            break;
        }
        let message = next_json(&mut ws).await.expect("a message");
        assert_eq!(message["type"], "message", "{message}");
        offsets.push(message["offset"].as_u64().expect("offset"));
    }
    Seen {
        node_before,
        node_after,
        close_code: u16::from(close.code),
        closed_at,
        hint_ms,
        offsets,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_spreads_its_clients_over_the_others_without_a_storm_or_loss() {
    let redis = RedisServer::start();
    let url = redis.url();
    let drain = DRAIN_SECONDS.to_string();
    let jitter = format!("{JITTER_MS}ms");
    let mut node1 = GatewayProcess::spawn(&[
        "--redis-url",
        &url,
        "--node-id",
        "drain-1",
        "--drain-seconds",
        &drain,
        "--drain-reconnect-jitter",
        &jitter,
    ]);
    // Nodes 2 and 3 start only once every client sits on node 1.
    let ports = [free_port(), free_port()];
    let later: Vec<SocketAddr> = ports
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    let haproxy = HaProxy::start([node1.addr, later[0], later[1]]);
    let lb = haproxy.addr();
    haproxy.wait_for_log("gw2 is DOWN", Duration::from_secs(15)).await;
    haproxy.wait_for_log("gw3 is DOWN", Duration::from_secs(15)).await;

    let mut sockets = Vec::with_capacity(CLIENTS);
    for chunk in 0..CLIENTS / 100 {
        let batch = (0..100).map(|_| async move {
            let (mut ws, node) = connect_somewhere(lb).await;
            let reply = request(&mut ws, json!({"type":"subscribe","id":2,"channel":CHANNEL})).await;
            assert_eq!(reply["type"], "subscribed", "{reply}");
            let epoch = reply["epoch"].as_str().expect("epoch").to_string();
            (ws, (node, epoch, reply["offset"].as_u64().expect("offset")))
        });
        sockets.extend(futures_util::future::join_all(batch).await);
        assert_eq!(sockets.len(), (chunk + 1) * 100);
    }
    assert!(sockets.iter().all(|(_, (node, _, _))| node == "drain-1"));
    let metrics = get(node1.addr, "/metrics").await.text();
    assert_eq!(metric(&metrics, "gateway_connections"), Some(CLIENTS as f64));

    let mut others = Vec::new();
    for (port, id) in ports.iter().zip(["drain-2", "drain-3"]) {
        let listen = format!("127.0.0.1:{port}");
        others.push(GatewayProcess::spawn(&[
            "--listen",
            &listen,
            "--redis-url",
            &url,
            "--node-id",
            id,
        ]));
    }
    haproxy.wait_for_log("gw2 is UP", Duration::from_secs(20)).await;
    haproxy.wait_for_log("gw3 is UP", Duration::from_secs(20)).await;

    // Publications keep flowing through node 2 during the whole drain.
    let signalled = Arc::new(std::sync::OnceLock::new());
    let last = Arc::new(AtomicU64::new(0));
    let reconnected = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = sockets
        .into_iter()
        .map(|(ws, start)| {
            tokio::spawn(client(
                ws,
                start,
                lb,
                signalled.clone(),
                last.clone(),
                reconnected.clone(),
            ))
        })
        .collect();
    let publisher_node = others[0].addr;
    let stop = Arc::new(AtomicU64::new(0));
    let publisher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut offset = 0;
            while stop.load(Ordering::SeqCst) == 0 {
                tick.tick().await;
                let answer = post_json(
                    publisher_node,
                    "/api/publish",
                    json!({"channel":CHANNEL,"data":offset}),
                )
                .await;
                assert_eq!(answer.status, 200, "{}", answer.text());
                offset = answer.json()["offset"].as_u64().expect("offset");
            }
            offset
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    signalled.set(Instant::now()).expect("signalled once");
    node1.signal("TERM");
    // Not ready at once: the load balancer stops sending new clients.
    let ready = get(node1.addr, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(signalled.get().unwrap().elapsed() < Duration::from_millis(500));

    let exit = tokio::task::spawn_blocking(move || node1.wait_exit(Duration::from_secs(DRAIN_SECONDS + 8)));
    // Every client reconnected and recovered elsewhere; let them receive
    // live publications for a second more, then end.
    support::eventually_within("every client reconnected", Duration::from_secs(30), async || {
        reconnected.load(Ordering::SeqCst) == CLIENTS as u64
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(1, Ordering::SeqCst);
    // The last publication is announced before it is sent, so a client that
    // receives it knows it is done.
    let final_offset = publisher.await.expect("publisher") + 1;
    last.store(final_offset, Ordering::SeqCst);
    let answer = post_json(
        publisher_node,
        "/api/publish",
        json!({"channel":CHANNEL,"data":"end"}),
    )
    .await;
    assert_eq!(answer.json()["offset"], final_offset);
    let mut seen = Vec::with_capacity(CLIENTS);
    for client in clients {
        seen.push(client.await.expect("client task"));
    }
    assert_eq!(
        exit.await.unwrap(),
        Some(0),
        "node 1 exits 0 within the grace period"
    );

    // Every client was drained with 1012, moved to another node, and
    // received every publication from its first on, once, in order.
    for s in &seen {
        assert_eq!(s.close_code, 1012);
        assert_eq!(s.node_before, "drain-1");
        assert!(
            s.node_after == "drain-2" || s.node_after == "drain-3",
            "{}",
            s.node_after
        );
        assert!(s.hint_ms <= JITTER_MS);
        let first = s.offsets.first().copied().unwrap_or(1);
        let expected: Vec<u64> = (first..=final_offset).collect();
        assert_eq!(s.offsets, expected, "a client missed or repeated a publication");
    }
    let on_two = seen.iter().filter(|s| s.node_after == "drain-2").count();
    assert!(
        on_two > CLIENTS / 5 && on_two < CLIENTS * 4 / 5,
        "{on_two} of {CLIENTS} on node 2"
    );
    let hints: std::collections::HashSet<u64> = seen.iter().map(|s| s.hint_ms / 100).collect();
    assert!(hints.len() >= 10, "hints are spread, not one value: {hints:?}");

    // Spread: no second of the window had more than about twice the average.
    let mut per_second = vec![0usize; DRAIN_SECONDS as usize + 2];
    for s in &seen {
        let second = (s.closed_at.as_secs() as usize).min(per_second.len() - 1);
        per_second[second] += 1;
    }
    let average = CLIENTS as f64 / DRAIN_SECONDS as f64;
    println!("closes per second after SIGTERM: {per_second:?} (average {average:.0})");
    assert!(
        per_second.iter().all(|n| (*n as f64) <= 2.0 * average),
        "closes per second {per_second:?}, average {average}"
    );
    assert!(
        per_second[DRAIN_SECONDS as usize + 1] == 0,
        "every close within the window: {per_second:?}"
    );
}
