//! Connection lifecycle: heartbeat and stale cleanup, handshake timeout,
//! slow consumers, and the built binary's configuration and graceful drain.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn silent_client_is_closed_and_a_responsive_one_stays() {
    let mut config = test_config();
    config.ping_interval = Duration::from_millis(200);
    let gw = start(config).await;
    let addr = gw.local_addr();

    // This client never reads, so it never answers the server's pings.
    let mut silent = WsClient::connect(addr, None).await;
    // This one reads all the time; tungstenite answers pings as it reads.
    let mut lively = WsClient::connect(addr, None).await;
    lively.subscribe("x").await;
    let lively_task = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_millis(1500);
        let mut pings = 0;
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(100), lively.ws.next()).await {
                Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
                Ok(Some(Ok(Message::Close(frame)))) => panic!("responsive client was closed: {frame:?}"),
                Ok(None | Some(Err(_))) => panic!("responsive client lost its connection"),
                _ => {}
            }
        }
        (pings, lively)
    });

    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Reading now: buffered pings, then the close for staying silent.
    let frame = silent.expect_close().await;
    assert_eq!(u16::from(frame.code), 1001, "{}", frame.reason);

    let (pings, mut lively) = lively_task.await.unwrap();
    assert!(pings >= 4, "expected a ping every 200ms, saw {pings} in 1.5s");
    assert_eq!(
        lively.request(json!({"type":"ping","id":1})).await,
        json!({"type":"pong","id":1})
    );
}

#[tokio::test]
async fn connection_that_never_sends_a_request_is_dropped() {
    let mut config = test_config();
    config.handshake_timeout = Duration::from_millis(300);
    let gw = start(config).await;

    let started = Instant::now();
    let mut tcp = TcpStream::connect(gw.local_addr()).await.unwrap();
    // Half a request line, then nothing (slowloris).
    tcp.write_all(b"GET /ws HT").await.unwrap();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("server acts");
    // hyper answers 408 or just closes; either way the socket ends.
    match read {
        Ok(0) | Err(_) => {}
        Ok(n) => {
            let head = String::from_utf8_lossy(&buf[..n]);
            assert!(head.starts_with("HTTP/1.1 408"), "{head}");
        }
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed too early: {elapsed:?}"
    );
}

#[tokio::test]
async fn slow_consumer_is_disconnected_while_a_fast_one_keeps_receiving() {
    let mut config = test_config();
    config.outbound_queue_bytes = 256 * 1024;
    config.max_publication_size = 64 * 1024;
    config.max_body_size = 128 * 1024;
    let gw = start(config).await;
    let addr = gw.local_addr();

    let mut slow = WsClient::connect(addr, None).await;
    slow.subscribe("firehose").await;
    let mut fast = WsClient::connect(addr, None).await;
    fast.subscribe("firehose").await;

    const COUNT: u64 = 600;
    let fast_task = tokio::spawn(async move {
        for i in 0..COUNT {
            let m = fast.recv_json().await;
            assert_eq!(m["data"]["n"], i, "fast client got every message in order");
        }
        fast
    });
    // ~19 MB in total: more than the kernel buffers of the slow client
    // (which never reads) can hold, so its outbox must overflow.
    let padding = "x".repeat(32 * 1024);
    for i in 0..COUNT {
        let answer = post_json(
            addr,
            "/api/publish",
            json!({"channel":"firehose","data":{"n":i,"pad":padding}}),
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    let mut fast = fast_task.await.unwrap();

    let text = get(addr, "/metrics").await.text();
    assert_eq!(
        metric(&text, "gateway_slow_consumer_disconnects_total"),
        Some(1.0),
        "{text}"
    );
    // The slow client, reading at last, finds the 4008 close after what was
    // already in flight.
    let frame = slow.expect_close().await;
    assert_eq!(u16::from(frame.code), 4008, "{}", frame.reason);
    assert_eq!(
        fast.request(json!({"type":"ping","id":7})).await,
        json!({"type":"pong","id":7})
    );
    eventually("the slow client's subscription is gone", async || {
        metric(&get(addr, "/metrics").await.text(), "gateway_subscriptions") == Some(1.0)
    })
    .await;
}

#[test]
fn binary_reads_flags_env_and_file_in_order() {
    let dir = std::env::temp_dir().join(format!("gw-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        "node_id = \"from-file\"\ndrain_seconds = 7\nping_interval = \"9s\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--config",
            file.to_str().unwrap(),
            "--print-config",
            "--ping-interval",
            "3s",
        ])
        .env("GATEWAY_DRAIN_SECONDS", "4")
        .env("GATEWAY_PING_INTERVAL", "5s")
        .env("GATEWAY_API_KEY", "k1,k2")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("node_id = \"from-file\""), "{printed}");
    assert!(printed.contains("drain_seconds = 4"), "env beats file: {printed}");
    assert!(
        printed.contains("ping_interval = \"3s\""),
        "flag beats env: {printed}"
    );
    assert!(
        printed.contains("api_key = [\"<redacted>\", \"<redacted>\"]"),
        "{printed}"
    );

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--max-message-size", "lots"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("max-message-size"));

    let help = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--node-id",
        "--api-key",
        "--ping-interval",
        "--drain-seconds",
        "--max-message-size",
        "--log-format",
        "--config",
    ] {
        assert!(help.contains(flag), "--help documents {flag}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn sigterm_drains_clients_with_1012_spread_over_the_window_then_exits_0() {
    let mut gateway = GatewayProcess::spawn(&[
        "--drain-seconds",
        "2",
        "--drain-reconnect-jitter",
        "3s",
        "--node-id",
        "drain-test",
    ]);
    let addr = gateway.addr;

    const CLIENTS: usize = 40;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut c = WsClient::connect(addr, None).await;
        c.subscribe("news").await;
        clients.push(c);
    }
    let answer = post_json(
        addr,
        "/api/publish",
        json!({"channel":"news","data":"before drain"}),
    )
    .await;
    assert_eq!(answer.status, 200);
    for c in &mut clients {
        assert_eq!(c.recv_json().await["data"], "before drain");
    }
    assert_eq!(get(addr, "/readyz").await.status, 200);

    let signalled = Instant::now();
    gateway.signal("TERM");
    let closes = tokio::spawn(async move {
        let mut at = Vec::new();
        for mut c in clients {
            let frame = c.expect_close().await;
            let hint: serde_json::Value = serde_json::from_str(&frame.reason).expect("JSON close reason");
            assert_eq!(hint["reason"], "draining", "{hint}");
            let after = hint["reconnect_after_ms"].as_u64().expect("a reconnect hint");
            assert!(after <= 3000, "{hint}");
            at.push((u16::from(frame.code), signalled.elapsed()));
        }
        at
    });

    // Not ready at once, and new upgrades are refused, while draining.
    eventually("readyz turns 503", async || {
        get(addr, "/readyz").await.status == 503
    })
    .await;
    let ready = get(addr, "/readyz").await;
    assert!(
        signalled.elapsed() < Duration::from_millis(1500),
        "checked within the drain window"
    );
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["failing"], json!(["draining"]));
    match WsClient::try_connect(addr, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!(
            "expected 503 during the drain, got {:?}",
            other.map(|_| "a connection")
        ),
    }

    let mut closes = closes.await.unwrap();
    closes.sort_by_key(|(_, at)| *at);
    assert!(closes.iter().all(|(code, _)| *code == 1012), "{closes:?}");
    let first = closes[0].1;
    let last = closes[CLIENTS - 1].1;
    assert!(
        last - first >= Duration::from_millis(1200),
        "spread over the window: {first:?}..{last:?}"
    );
    assert!(
        last <= Duration::from_millis(3500),
        "all closed within the window: {last:?}"
    );
    // Evenly: no half of the window holds more than ~3/4 of the closes.
    let halfway = first + (last - first) / 2;
    let early = closes.iter().filter(|(_, at)| *at <= halfway).count();
    assert!(
        (CLIENTS / 4..=3 * CLIENTS / 4).contains(&early),
        "{early} of {CLIENTS} in the first half"
    );

    let code = tokio::task::spawn_blocking(move || gateway.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "exits 0 after draining");
}

#[tokio::test]
async fn binary_serves_the_whole_flow_as_a_separate_process() {
    let gateway = GatewayProcess::spawn(&["--api-key", "secret"]);
    let addr = gateway.addr;
    let mut client = WsClient::connect(addr, Some("pubsub.v1.json")).await;
    client.subscribe("news").await;
    let headers = [
        ("content-type", "application/json"),
        ("authorization", "Bearer secret"),
    ];
    let answer = http(
        addr,
        http::Method::POST,
        "/api/publish",
        &headers,
        r#"{"channel":"news","data":"hi"}"#,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let message = client.recv_json().await;
    assert_eq!(
        without(&message, &["epoch", "offset"]),
        json!({"type":"message","channel":"news","data":"hi"})
    );
    // The open-API warning is not logged when a key is set.
    let log = gateway.log.lock().unwrap().join("\n");
    assert!(!log.contains("HTTP publish API is open"), "{log}");
}

#[tokio::test]
async fn healthcheck_exits_0_for_a_live_node_and_1_otherwise() {
    let gateway = GatewayProcess::spawn(&["--node-id", "checked"]);
    let run = |args: Vec<String>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(args)
            .output()
            .expect("gateway runs")
    };
    let live = run(vec![
        "--healthcheck".into(),
        format!("http://{}/healthz", gateway.addr),
    ]);
    assert!(live.status.success(), "{}", String::from_utf8_lossy(&live.stderr));
    // Without a URL it checks its own configuration's listener.
    let own = run(vec![
        "--listen".into(),
        gateway.addr.to_string(),
        "--healthcheck".into(),
    ]);
    assert!(own.status.success(), "{}", String::from_utf8_lossy(&own.stderr));
    let missing = run(vec![
        "--healthcheck".into(),
        format!("http://{}/nothing", gateway.addr),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    drop(gateway);
    let closed = run(vec!["--healthcheck".into(), "http://127.0.0.1:1/healthz".into()]);
    assert_eq!(closed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&closed.stderr).contains("cannot connect"));
}
