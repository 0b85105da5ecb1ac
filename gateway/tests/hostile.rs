//! Hostile input. Each attack runs against a node while a well-behaved
//! client on the same node keeps receiving a steady stream; the test checks
//! the attack got its documented answer and the bystander saw every message,
//! in order, without a stall.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::Config;
use serde_json::{Value, json};
use support::tokens::{SECRET, hs256};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

/// Longest pause the bystander may see between two messages.
const MAX_STALL: Duration = Duration::from_millis(750);

fn config() -> Config {
    let mut config = test_config();
    config.jwt_secret = Some(SECRET.into());
    config.api_keys = vec![gateway::config::ApiKey::unrestricted("api-key")];
    config.max_message_size = 4096;
    config.max_connections = 50;
    config.handshake_timeout = Duration::from_millis(500);
    config.allowed_origins = vec!["https://app.example.com".into()];
    config
}

/// Runs `attack` against a fresh node while a bystander receives a message
/// every 10 ms; fails if the bystander misses one or stalls.
async fn with_bystander<F, Fut>(attack: F)
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: Future<Output = ()>,
{
    let gw = start(config()).await;
    let addr = gw.local_addr();
    let token = hs256("bystander", 600, json!({"channels":["bystander"]}));
    let (mut client, _) = WsClient::connect_with(addr, &[("authorization", &*format!("Bearer {token}"))])
        .await
        .expect("bystander connects");
    client.subscribe("bystander").await;
    let (stop, stopped) = watch::channel(false);
    let publisher = tokio::spawn(publish_steadily(addr, stopped));
    let receiver = tokio::spawn(async move {
        let mut arrivals = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(3), client.recv_json()).await {
                Ok(m) if m["data"] == "done" => return arrivals,
                Ok(m) => arrivals.push((m["offset"].as_u64().unwrap_or(0), Instant::now())),
                Err(_) => panic!("the bystander received nothing for 3 s"),
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let attack_started = Instant::now();
    attack(addr).await;
    let attack_ended = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = stop.send(true);
    publisher.await.expect("publisher");
    let arrivals = receiver.await.expect("bystander");
    let offsets: Vec<u64> = arrivals.iter().map(|(o, _)| *o).collect();
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "the bystander missed or reordered messages: {offsets:?}"
    );
    let during: Vec<Instant> = arrivals
        .iter()
        .map(|(_, at)| *at)
        .filter(|at| *at >= attack_started && *at <= attack_ended + MAX_STALL)
        .collect();
    let stall = during.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    assert!(
        stall < MAX_STALL,
        "the bystander stalled for {stall:?} during the attack"
    );
    assert!(
        !during.is_empty() || attack_ended - attack_started < MAX_STALL,
        "nothing arrived during the attack"
    );
}

async fn publish_steadily(addr: SocketAddr, stopped: watch::Receiver<bool>) {
    let headers = [
        ("content-type", "application/json"),
        ("authorization", "Bearer api-key"),
    ];
    let mut i = 0u64;
    while !*stopped.borrow() {
        let body = json!({"channel":"bystander","data":i}).to_string();
        assert_eq!(
            http(addr, http::Method::POST, "/api/publish", &headers, body)
                .await
                .status,
            200
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body = json!({"channel":"bystander","data":"done"}).to_string();
    http(addr, http::Method::POST, "/api/publish", &headers, body).await;
}

/// A connected (authenticated) attacker.
async fn attacker(addr: SocketAddr, claims: Value) -> WsClient {
    let token = hs256("mallory", 600, claims);
    let (client, _) = WsClient::connect_with(addr, &[("authorization", &*format!("Bearer {token}"))])
        .await
        .expect("attacker connects");
    client
}

async fn expect_close_code(client: &mut WsClient, code: u16) {
    let frame = client.expect_close().await;
    assert_eq!(u16::from(frame.code), code, "{}", frame.reason);
}

#[tokio::test]
async fn malformed_and_wrongly_shaped_commands_get_bad_request() {
    with_bystander(|addr| async move {
        let mut a = attacker(addr, json!({})).await;
        for text in [
            "{\"type\":",
            "[]",
            "42",
            "{\"type\":{\"nested\":1}}",
            "{\"type\":\"subscribe\",\"channel\":[1]}",
        ] {
            a.send(Message::text(text)).await;
            assert_eq!(a.recv_json().await["code"], "bad_request", "{text}");
        }
        let huge_id = r#"{"type":"ping","id":99999999999999999999999999999999}"#;
        a.send(Message::text(huge_id)).await;
        assert_eq!(a.recv_json().await["code"], "bad_request");
        let deep = format!(
            r#"{{"type":"publish","id":1,"channel":"x","data":{}{}}}"#,
            "[".repeat(1000),
            "]".repeat(1000)
        );
        a.send(Message::text(deep)).await;
        assert_eq!(a.recv_json().await["code"], "bad_request");
        a.send(Message::text(r#"{"type":"explode","id":2}"#)).await;
        assert_eq!(a.recv_json().await["code"], "unknown_command");
        for channel in ["", "has space", "ünïcode", &"x".repeat(300)] {
            let reply = a
                .request(json!({"type":"subscribe","id":3,"channel":channel}))
                .await;
            assert_eq!(reply["code"], "invalid_channel", "{channel:?}");
        }
        assert_eq!(
            a.request(json!({"type":"ping","id":4})).await["type"],
            "pong",
            "still connected"
        );
    })
    .await;
}

#[tokio::test]
async fn protobuf_garbage_gets_bad_request() {
    with_bystander(|addr| async move {
        let token = hs256("mallory", 600, json!({}));
        let (mut a, _) = WsClient::connect_with(
            addr,
            &[("authorization", &*format!("Bearer {token}")), ("sec-websocket-protocol", "pubsub.v1.proto")],
        )
        .await
        .unwrap();
        for garbage in [vec![0xff; 16], vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], vec![0x12, 0x05, 0x0a]] {
            a.send(Message::binary(garbage)).await;
            let Message::Binary(reply) = a.next().await else { panic!("binary reply") };
            let reply = pubsub_proto::protobuf::decode_server_message(reply).unwrap();
            assert!(matches!(reply.kind, Some(pubsub_proto::pb::server_message::Kind::Error(e)) if e.code == "bad_request"));
        }
    })
    .await;
}

#[tokio::test]
async fn oversize_frames_and_invalid_utf8_close_the_connection() {
    with_bystander(|addr| async move {
        let mut big = attacker(addr, json!({})).await;
        big.send(Message::text("x".repeat(5000))).await;
        expect_close_code(&mut big, 1009).await;

        let mut bad_text = attacker(addr, json!({})).await;
        let frame = Frame::message(Bytes::from_static(&[0xc3, 0x28]), OpCode::Data(Data::Text), true);
        bad_text.send(Message::Frame(frame)).await;
        expect_close_code(&mut bad_text, 1007).await;
    })
    .await;
}

#[tokio::test]
async fn a_fragmented_message_that_never_ends_is_cut_at_the_size_limit() {
    with_bystander(|addr| async move {
        let mut a = attacker(addr, json!({})).await;
        let first = Frame::message(Bytes::from_static(b"{\"type\":"), OpCode::Data(Data::Text), false);
        a.send(Message::Frame(first)).await;
        let mut sent = 0;
        let closed = loop {
            let header = FrameHeader {
                is_final: false,
                opcode: OpCode::Data(Data::Continue),
                ..FrameHeader::default()
            };
            let piece = Frame::from_payload(header, Bytes::from(vec![b' '; 512]));
            if futures_util::SinkExt::send(&mut a.ws, Message::Frame(piece))
                .await
                .is_err()
                || sent > 100
            {
                break a.expect_close().await;
            }
            sent += 1;
            if sent % 10 == 0
                && let Ok(Some(Ok(Message::Close(Some(frame))))) = tokio::time::timeout(
                    Duration::from_millis(10),
                    futures_util::StreamExt::next(&mut a.ws),
                )
                .await
            {
                break frame;
            }
        };
        assert_eq!(u16::from(closed.code), 1009, "{}", closed.reason);
    })
    .await;
}

#[tokio::test]
async fn a_handshake_that_never_completes_is_dropped() {
    with_bystander(|addr| async move {
        let mut slowloris = Vec::new();
        for _ in 0..20 {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
                .await
                .unwrap();
            slowloris.push(tcp);
        }
        for mut tcp in slowloris {
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf)).await;
            assert!(
                matches!(read, Ok(Ok(_)) | Ok(Err(_))),
                "dropped within the handshake timeout"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn ten_times_the_connection_limit_at_once() {
    with_bystander(|addr| async move {
        let attempts =
            futures_util::future::join_all((0..500).map(|_| WsClient::connect_with(addr, &[]))).await;
        let refused = attempts
            .iter()
            .filter(|a| matches!(a, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 503))
            .count();
        let accepted = attempts.iter().filter(|a| a.is_ok()).count();
        // 50 places, one taken by the bystander.
        assert_eq!(accepted, 49, "the limit held");
        assert_eq!(refused, 451, "every other attempt got 503");
    })
    .await;
}

#[tokio::test]
async fn bad_tokens_and_forbidden_actions() {
    with_bystander(|addr| async move {
        for token in [
            hs256("mallory", -30, json!({})),
            "e30.e30.".to_string(),
            "junk".to_string(),
        ] {
            let mut a = WsClient::connect(addr, None).await;
            let reply = a.request(json!({"type":"connect","id":1,"token":token})).await;
            assert_eq!(reply["code"], "unauthorized");
            expect_close_code(&mut a, 4001).await;
        }
        let mut a = attacker(addr, json!({"channels":["own"]})).await;
        let reply = a
            .request(json!({"type":"subscribe","id":1,"channel":"bystander"}))
            .await;
        assert_eq!(reply["code"], "forbidden");
        let reply = a
            .request(json!({"type":"publish","id":2,"channel":"bystander","data":"spoof"}))
            .await;
        assert_eq!(reply["code"], "forbidden");
    })
    .await;
}

#[tokio::test]
async fn wrong_origins_and_api_keys_are_refused() {
    with_bystander(|addr| async move {
        match WsClient::connect_with(addr, &[("origin", "https://evil.example")]).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
            other => panic!("expected 403, got {:?}", other.map(|_| "a connection")),
        }
        for auth in [None, Some("Bearer wrong"), Some("Basic YWRtaW46YWRtaW4=")] {
            let mut headers = vec![("content-type", "application/json")];
            headers.extend(auth.map(|a| ("authorization", a)));
            let answer = http(
                addr,
                http::Method::POST,
                "/api/publish",
                &headers,
                r#"{"channel":"bystander","data":"spoof"}"#,
            )
            .await;
            assert_eq!(answer.status, 401);
        }
    })
    .await;
}

#[tokio::test]
async fn floods_of_pings_and_commands_are_slowed_not_spread() {
    with_bystander(|addr| async move {
        let mut a = attacker(addr, json!({})).await;
        let flood = async {
            for _ in 0..3000 {
                futures_util::SinkExt::feed(&mut a.ws, Message::Ping(Bytes::new()))
                    .await
                    .ok();
                futures_util::SinkExt::feed(&mut a.ws, Message::text(r#"{"type":"ping"}"#))
                    .await
                    .ok();
            }
            futures_util::SinkExt::flush(&mut a.ws).await.ok();
        };
        // The flood takes what the command rate allows; the bystander's
        // stream is checked meanwhile.
        let _ = tokio::time::timeout(Duration::from_secs(2), flood).await;
        let text = get(addr, "/metrics").await.text();
        assert!(
            metric_line(&text, "gateway_rejections_total{reason=\"command_rate\"}") > 0.0,
            "the flood was throttled: {text}"
        );
    })
    .await;
}

fn metric_line(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Connections that never finish their handshake are bounded per address
/// (and in total) before anything is read; WebSockets leave the count when
/// they upgrade, and places come back when connections close.
#[tokio::test]
async fn half_open_handshakes_are_bounded() {
    let mut config = support::test_config();
    config.max_pending_per_ip = 5;
    config.max_pending_connections = 100;
    let gw = start(config).await;
    let addr = gw.local_addr();
    // Five upgraded WebSockets do not count.
    let mut sockets = Vec::new();
    for _ in 0..5 {
        sockets.push(WsClient::connect(addr, None).await);
    }
    // Five silent TCP connections fill the address's places.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The sixth is closed at once, before a byte is read.
    let mut sixth = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = sixth.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), sixth.read(&mut buf))
        .await
        .expect("closed promptly");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "refused without an answer: {read:?}"
    );
    drop(silent);
    // Places come back as the server sees the connections close.
    eventually("places came back", async || {
        let Ok(mut probe) = tokio::net::TcpStream::connect(addr).await else {
            return false;
        };
        let _ = probe.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut answer = [0u8; 12];
        matches!(
            tokio::time::timeout(Duration::from_millis(500), probe.read(&mut answer)).await,
            Ok(Ok(n)) if n > 0 && answer.starts_with(b"HTTP/1.1 200")
        )
    })
    .await;
    let metrics = get(addr, "/metrics").await.text();
    assert!(
        metric(
            &metrics,
            "gateway_rejections_total{reason=\"max_pending_per_ip\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    // The WebSockets still work.
    sockets[0].subscribe("still").await;
}
