//! `GET /sse`: channels followed over Server-Sent Events, with real HTTP
//! clients: events, resume with `Last-Event-ID`, refusals, drain, a stream
//! that is never read, and publications from another node over Redis.

mod support;

use std::time::Duration;

use http::Method;
use serde_json::json;
use support::redis::RedisServer;
use support::sse::SseClient;
use support::tokens::{SECRET, hs256};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn publish(addr: std::net::SocketAddr, channel: &str, n: u64) {
    let answer = post_json(
        addr,
        "/api/publish",
        json!({"channel": channel, "data": {"n": n}}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[tokio::test]
async fn a_stream_follows_its_channels_and_resumes_from_last_event_id() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let mut stream = SseClient::open(addr, "/sse?channel=news&channel=sport", &[]).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    assert_eq!(stream.headers["x-accel-buffering"], "no");
    for channel in ["news", "sport"] {
        let event = stream.next().await.expect("subscribed");
        assert_eq!(event.json()["type"], "subscribed");
        assert_eq!(event.json()["channel"], channel);
        assert!(event.id.is_some(), "the starting position is an id");
    }
    publish(addr, "news", 1).await;
    publish(addr, "sport", 1).await;
    publish(addr, "news", 2).await;
    for (channel, n) in [("news", 1), ("sport", 1), ("news", 2)] {
        let event = stream.next().await.expect("a message");
        let message = event.json();
        assert_eq!(
            (message["channel"].as_str(), message["data"]["n"].as_u64()),
            (Some(channel), Some(n))
        );
        assert!(
            event.id.is_some(),
            "every publication carries the stream's position"
        );
    }
    let last = stream.last_id.clone().expect("an id");
    drop(stream);

    // Missed while away, on both channels.
    publish(addr, "news", 3).await;
    publish(addr, "sport", 2).await;
    publish(addr, "news", 4).await;
    let mut resumed = SseClient::open(
        addr,
        "/sse?channel=news&channel=sport",
        &[("last-event-id", &last)],
    )
    .await;
    assert_eq!(resumed.status, 200);
    let mut got = Vec::new();
    while got.len() < 3 {
        let message = resumed.next_message().await;
        got.push((
            message["channel"].as_str().unwrap().to_string(),
            message["data"]["n"].as_u64().unwrap(),
        ));
    }
    got.sort();
    assert_eq!(
        got,
        vec![("news".into(), 3), ("news".into(), 4), ("sport".into(), 2)],
        "exactly the missed publications, none twice"
    );
    publish(addr, "sport", 3).await;
    assert_eq!(
        resumed.next_message().await["data"]["n"],
        3,
        "and the stream goes on"
    );
}

#[tokio::test]
async fn multi_line_data_and_heartbeats_keep_the_stream_readable() {
    let mut config = test_config();
    config.ping_interval = Duration::from_millis(200);
    let gw = start(config).await;
    let addr = gw.local_addr();
    let mut stream = SseClient::open(addr, "/sse?channel=doc", &[]).await;
    stream.next().await.expect("subscribed");
    // Pretty-printed JSON is embedded as published: several data lines.
    let answer = http(
        addr,
        Method::POST,
        "/api/publish",
        &[("content-type", "application/json")],
        "{\"channel\":\"doc\",\"data\":{\r\n  \"a\": 1,\n  \"b\": [2]\n}}",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let message = stream.next().await.expect("message").json();
    assert_eq!(message["data"], json!({"a": 1, "b": [2]}));
    // Heartbeats are comments; two ping intervals later the stream is
    // still open (a one-way stream is not closed as stale).
    tokio::time::sleep(Duration::from_millis(700)).await;
    publish(addr, "doc", 9).await;
    assert_eq!(stream.next().await.expect("message").json()["data"]["n"], 9);
    assert!(stream.comments >= 2, "heartbeat comments: {}", stream.comments);
}

/// A request path, its headers, and the status and code it must get.
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    u16,
    &'static str,
);

#[tokio::test]
async fn bad_requests_are_refused_with_their_codes() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let cases: [Case; 7] = [
        ("/sse", &[], 400, "bad_request"),
        ("/sse?channel=a&verbose=1", &[], 400, "bad_request"),
        ("/sse?channel=a&channel=a", &[], 400, "bad_request"),
        ("/sse?channel=no%20spaces", &[], 400, "invalid_channel"),
        (
            "/sse?channel=a",
            &[("last-event-id", "not-a-position")],
            400,
            "bad_last_event_id",
        ),
        (
            "/sse?channel=a&channel=b",
            &[("last-event-id", "e1:1")],
            400,
            "bad_last_event_id",
        ),
        (
            "/sse?channel=a",
            &[("last-event-id", "e1:x")],
            400,
            "bad_last_event_id",
        ),
    ];
    for (path, headers, status, code) in cases {
        let answer = http(addr, Method::GET, path, headers, "").await;
        assert_eq!(answer.status.as_u16(), status, "{path}: {}", answer.text());
        assert_eq!(answer.json()["error"]["code"], code, "{path}");
    }
    let answer = http(addr, Method::POST, "/sse?channel=a", &[], "").await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.headers["allow"], "GET");
    // The node still serves streams.
    let mut stream = SseClient::open(addr, "/sse?channel=a", &[]).await;
    assert_eq!(
        stream.next().await.expect("subscribed").json()["type"],
        "subscribed"
    );
}

#[tokio::test]
async fn tokens_origins_and_permissions_are_checked_before_the_stream() {
    let mut config = test_config();
    config.jwt_secret = Some(SECRET.into());
    config.allowed_origins = vec!["https://app.example".into()];
    let gw = start(config).await;
    let addr = gw.local_addr();
    let alice = hs256("alice", 60, json!({}));
    let bearer = format!("Bearer {alice}");

    let answer = get(addr, "/sse?channel=news").await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["error"]["code"], "unauthorized");
    let answer = get(addr, "/sse?channel=news&token=garbage").await;
    assert_eq!(answer.status, 401);
    let answer = http(
        addr,
        Method::GET,
        "/sse?channel=chat%23bob",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "forbidden");
    let answer = http(
        addr,
        Method::GET,
        "/sse?channel=news",
        &[("authorization", &bearer), ("origin", "https://evil.example")],
        "",
    )
    .await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.json()["error"]["code"], "forbidden_origin");

    // A token in the query (EventSource cannot set headers), from an
    // allowed origin: the stream may be read cross-origin.
    let path = format!("/sse?channel=chat%23alice&token={alice}");
    let mut stream = SseClient::open(addr, &path, &[("origin", "https://app.example")]).await;
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(
        stream.next().await.expect("subscribed").json()["channel"],
        "chat#alice"
    );
    publish(addr, "chat#alice", 1).await;
    assert_eq!(stream.next_message().await["data"]["n"], 1);
}

#[tokio::test]
async fn a_drain_ends_the_stream_with_a_close_event_and_a_retry_hint() {
    let mut config = test_config();
    config.drain = Duration::from_millis(50);
    let gw = start(config).await;
    let addr = gw.local_addr();
    let mut stream = SseClient::open(addr, "/sse?channel=news", &[]).await;
    stream.next().await.expect("subscribed");
    let drained = tokio::spawn(gw.drain());
    let close = stream.next().await.expect("the close event");
    assert_eq!(close.event.as_deref(), Some("close"));
    let data = close.json();
    assert_eq!(data["code"], 1012);
    assert_eq!(data["reason"], "draining");
    let hint = data["reconnect_after_ms"].as_u64().expect("a reconnect hint");
    assert_eq!(
        close.retry,
        Some(hint),
        "EventSource waits as long as the hint says"
    );
    assert!(stream.next().await.is_none(), "and the stream ends");
    drained.await.unwrap();
}

#[tokio::test]
async fn a_stream_that_is_never_read_is_closed_as_a_slow_consumer() {
    let mut config = test_config();
    config.outbound_queue_bytes = 64 * 1024;
    let gw = start(config).await;
    let addr = gw.local_addr();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /sse?channel=flood HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 256];
    let n = stalled.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );

    // A healthy stream on the same channel, read all along.
    let mut healthy = SseClient::open(addr, "/sse?channel=flood", &[]).await;
    healthy.next().await.expect("subscribed");
    let big = "x".repeat(30_000);
    let mut sent = 0;
    loop {
        let answer = post_json(addr, "/api/publish", json!({"channel": "flood", "data": big})).await;
        assert_eq!(answer.status, 200);
        sent += 1;
        assert_eq!(
            healthy.next_message().await["data"].as_str().map(str::len),
            Some(30_000)
        );
        let metrics = get(addr, "/metrics").await.text();
        if metric(&metrics, "gateway_slow_consumer_disconnects_total").unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(sent < 2_000, "the stalled stream was never closed");
    }
    eventually("the stalled stream's session ended", async || {
        metric(&get(addr, "/metrics").await.text(), "gateway_connections") == Some(1.0)
    })
    .await;
    // The connection itself is gone: reading what was buffered ends.
    let mut sink = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stalled.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled connection was not closed");
    // The healthy stream lost nothing.
    publish(addr, "flood", 1).await;
    assert_eq!(healthy.next_message().await["data"]["n"], 1);
}

#[tokio::test]
async fn a_stream_receives_what_other_nodes_publish_over_redis() {
    let redis = RedisServer::start();
    let one = node(&redis.url(), "sse-1").await;
    let two = node(&redis.url(), "sse-2").await;
    let mut stream = SseClient::open(two.addr, "/sse?channel=live", &[]).await;
    stream.next().await.expect("subscribed");
    for n in 1..=3 {
        publish(one.addr, "live", n).await;
    }
    for n in 1..=3 {
        assert_eq!(stream.next_message().await["data"]["n"], n);
    }
    let last = stream.last_id.clone().expect("an id");
    drop(stream);
    publish(one.addr, "live", 4).await;
    // Resumed on the other node: the position is the channel's, not a node's.
    let mut resumed = SseClient::open(one.addr, "/sse?channel=live", &[("last-event-id", &last)]).await;
    assert_eq!(resumed.next_message().await["data"]["n"], 4);
}

/// Reads from `socket` until `text` has arrived; everything read so far.
async fn read_until(socket: &mut tokio::net::TcpStream, text: &str) -> String {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        while !String::from_utf8_lossy(&seen).contains(text) {
            let n = socket.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "closed before {text:?}: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {text:?} in: {}", String::from_utf8_lossy(&seen)));
    String::from_utf8_lossy(&seen).into_owned()
}

/// A stream as a connection's first request is written by the gateway
/// itself (chunked, no hyper buffers); one after another request on a
/// kept-alive connection is hyper's. Both follow the channel, and a client
/// that closes its side frees its session.
#[tokio::test]
async fn a_stream_is_served_first_or_after_other_requests_on_the_connection() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let head = "GET /sse?channel=raw HTTP/1.1\r\nHost: gw\r\n\r\n";
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Cut in two writes: the head is read until it is complete.
    first.write_all(&head.as_bytes()[..11]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.write_all(&head.as_bytes()[11..]).await.unwrap();
    let answer = read_until(&mut first, "\"subscribed\"").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("transfer-encoding: chunked\r\n"), "{answer}");
    assert!(answer.contains("x-accel-buffering: no\r\n"), "{answer}");

    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut kept, "\r\n\r\n").await;
    kept.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until(&mut kept, "\"subscribed\"").await;
    assert!(answer.contains("HTTP/1.1 200 OK\r\n"), "{answer}");

    publish(addr, "raw", 7).await;
    read_until(&mut first, "\"n\":7").await;
    read_until(&mut kept, "\"n\":7").await;
    eventually("two streams open", async || {
        metric(&get(addr, "/metrics").await.text(), "gateway_connections") == Some(2.0)
    })
    .await;
    drop(first);
    drop(kept);
    eventually("both sessions ended with their connections", async || {
        metric(&get(addr, "/metrics").await.text(), "gateway_connections") == Some(0.0)
    })
    .await;
    // A refusal on the direct path is a whole answer, then the close.
    let mut refused = tokio::net::TcpStream::connect(addr).await.unwrap();
    refused
        .write_all(b"GET /sse HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut all = String::new();
    tokio::time::timeout(WAIT, refused.read_to_string(&mut all))
        .await
        .expect("closed after the answer")
        .unwrap();
    assert!(all.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{all}");
    assert!(all.ends_with("}"), "the JSON error body: {all}");
    assert!(all.contains("\"bad_request\""), "{all}");
}
