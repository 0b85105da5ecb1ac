//! `GET /stream` and `POST /stream/commands`: a session over a chunked
//! response with its commands POSTed, with real HTTP clients: commands and
//! replies, refusals, CORS and Origin, tokens, drain, a stream never read,
//! and three real nodes on a real Redis forwarding POSTs to the node that
//! holds the session, with recovery across nodes. The protobuf and SSE
//! formats: `http_stream_formats.rs`.

mod support;

use std::time::Duration;

use http::Method;
use pubsub_proto::pb;
use serde_json::json;
use support::http_stream::{ProtoStream, StreamClient, post_commands};
use support::redis::RedisServer;
use support::tokens::{SECRET, hs256};
use support::*;

#[tokio::test]
async fn commands_go_by_post_and_their_replies_come_on_the_stream() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let mut stream = StreamClient::open(addr, &[]).await;
    assert_eq!(stream.headers["content-type"], "application/x-ndjson");
    assert_eq!(stream.headers["x-accel-buffering"], "no");
    assert!(stream.session.ends_with(".test-node"), "{}", stream.session);

    let answer = stream
        .send(addr, &[json!({"type":"subscribe","id":1,"channel":"news"})])
        .await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    assert_eq!(answer.json()["accepted"], 1);
    let subscribed = stream.next().await.expect("subscribed");
    assert_eq!(
        (subscribed["type"].as_str(), subscribed["id"].as_u64()),
        (Some("subscribed"), Some(1))
    );

    // Several commands in one body run in order; text/plain is accepted
    // (a cross-origin page needs no preflight for it).
    let body = "{\"type\":\"publish\",\"id\":2,\"channel\":\"news\",\"data\":{\"n\":1}}\n{\"type\":\"ping\",\"id\":3}\n";
    let answer = post_commands(addr, &stream.session, "text/plain;charset=UTF-8", body.into()).await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    assert_eq!(answer.json()["accepted"], 2);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let message = stream.next().await.expect("a line");
        seen.push(message["type"].as_str().unwrap().to_string());
        if message["type"] == "message" {
            assert_eq!(message["data"]["n"], 1);
        }
    }
    assert!(
        seen.contains(&"published".to_string()) && seen.contains(&"message".to_string()),
        "{seen:?}"
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some("pong"),
        "the ping's pong after the publish: {seen:?}"
    );

    // Publications embedded across lines stay one line each.
    let answer = http(
        addr,
        Method::POST,
        "/api/publish",
        &[("content-type", "application/json")],
        "{\"channel\":\"news\",\"data\":{\n  \"n\": 2\n}}",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(stream.next_of("message").await["data"]["n"], 2);

    // The session in a header instead of the URL.
    let answer = http(
        addr,
        Method::POST,
        "/stream/commands",
        &[
            ("content-type", "text/plain"),
            ("x-stream-session", &stream.session),
        ],
        "{\"type\":\"ping\",\"id\":8}",
    )
    .await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    assert_eq!(stream.next_of("pong").await["id"], 8);
}

#[tokio::test]
async fn bad_posts_are_refused_with_their_codes_and_take_nothing() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let mut stream = StreamClient::open(addr, &[]).await;
    let session = stream.session.clone();
    let unknown = format!("{}.test-node", "0".repeat(32));
    let ping = "{\"type\":\"ping\",\"id\":1}\n".to_string();
    let cases: Vec<(String, &str, String, u16, &str)> = vec![
        (
            "/stream/commands".into(),
            "application/json",
            ping.clone(),
            400,
            "bad_request",
        ),
        (
            "/stream/commands?session=abc".into(),
            "application/json",
            ping.clone(),
            400,
            "bad_request",
        ),
        (
            format!("/stream/commands?session={session}&x=1"),
            "application/json",
            ping.clone(),
            400,
            "bad_request",
        ),
        (
            format!("/stream/commands?session={unknown}"),
            "application/json",
            ping.clone(),
            404,
            "unknown_session",
        ),
        (
            format!("/stream/commands?session={session}"),
            "application/xml",
            ping.clone(),
            415,
            "unsupported_media_type",
        ),
        (
            format!("/stream/commands?session={session}"),
            "application/json",
            format!("{ping}not json\n"),
            400,
            "bad_request",
        ),
        (
            format!("/stream/commands?session={session}"),
            "application/json",
            "[1]".into(),
            400,
            "bad_request",
        ),
        (
            format!("/stream/commands?session={session}"),
            "application/json",
            "\n".into(),
            400,
            "bad_request",
        ),
        (
            format!("/stream/commands?session={session}"),
            "application/json",
            ping.repeat(65),
            400,
            "bad_request",
        ),
        (
            format!("/stream/commands?session={session}"),
            "application/json",
            format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(70_000)),
            413,
            "too_large",
        ),
    ];
    for (path, content_type, body, status, code) in cases {
        let answer = http(addr, Method::POST, &path, &[("content-type", content_type)], body).await;
        assert_eq!(answer.status.as_u16(), status, "{path}: {}", answer.text());
        assert_eq!(answer.json()["error"]["code"], code, "{path}");
    }
    // None of the refused bodies reached the session: the next line on
    // the stream answers the first command it really got.
    let answer = stream.send(addr, &[json!({"type":"ping","id":99})]).await;
    assert_eq!(answer.status, 202);
    assert_eq!(stream.next().await.expect("pong"), json!({"type":"pong","id":99}));
    // A command the session cannot carry out is answered on the stream,
    // as over a WebSocket.
    stream
        .send(addr, &[json!({"type":"subscribe","id":5,"channel":"bad name"})])
        .await;
    let error = stream.next().await.expect("an error");
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("invalid_channel"))
    );
}

#[tokio::test]
async fn a_session_ends_with_its_stream() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let stream = StreamClient::open(addr, &[]).await;
    let session = stream.session.clone();
    eventually("the stream counts as a connection", async || {
        metric(&get(addr, "/metrics").await.text(), "gateway_connections") == Some(1.0)
    })
    .await;
    drop(stream);
    eventually("the session ended with its stream", async || {
        metric(&get(addr, "/metrics").await.text(), "gateway_connections") == Some(0.0)
    })
    .await;
    let answer = post_commands(addr, &session, "application/json", "{\"type\":\"ping\"}".into()).await;
    assert_eq!(answer.status, 404, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "unknown_session");
}

#[tokio::test]
async fn origins_cors_and_tokens_are_checked_as_for_websockets() {
    let mut config = test_config();
    config.jwt_secret = Some(SECRET.into());
    config.jwt_allow_any_audience = true;
    config.jwt_allow_any_issuer = true;
    config.allowed_origins = vec!["https://app.example".into()];
    let gw = start(config).await;
    let addr = gw.local_addr();
    let evil = [("origin", "https://evil.example")];
    let answer = http(addr, Method::GET, "/stream", &evil, "").await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.json()["error"]["code"], "forbidden_origin");
    let answer = http(addr, Method::OPTIONS, "/stream/commands", &evil, "").await;
    assert_eq!(answer.status, 403);

    let app = ("origin", "https://app.example");
    let preflight = http(addr, Method::OPTIONS, "/stream/commands", &[app], "").await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(preflight.headers["access-control-allow-methods"], "POST");
    assert!(
        preflight.headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("content-type")
    );

    // The stream opens without a token; the token comes in `connect`, as
    // over a WebSocket, and nothing else is served before it.
    let mut stream = StreamClient::open(addr, &[app]).await;
    assert_eq!(
        stream.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let path = format!("/stream/commands?session={}", stream.session);
    let post = |body: String| {
        let path = path.clone();
        async move {
            http(
                addr,
                Method::POST,
                &path,
                &[app, ("content-type", "text/plain")],
                body,
            )
            .await
        }
    };
    let answer = post(json!({"type":"subscribe","id":1,"channel":"news"}).to_string()).await;
    assert_eq!(answer.status, 202);
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let refused = stream.next().await.expect("an answer");
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    let token = hs256("ann", 60, json!({}));
    post(json!({"type":"connect","id":2,"token":token}).to_string()).await;
    let connected = stream.next_of("connected").await;
    assert_eq!(connected["id"], 2);
    // A POST from a page on a refused origin is refused even with the id.
    let answer = http(
        addr,
        Method::POST,
        &path,
        &[evil[0], ("content-type", "text/plain")],
        "{\"type\":\"ping\"}",
    )
    .await;
    assert_eq!(answer.status, 403);
}

#[tokio::test]
async fn a_drain_ends_the_stream_with_a_close_line_and_a_reconnect_hint() {
    let mut config = test_config();
    config.drain = Duration::from_millis(50);
    let gw = start(config).await;
    let addr = gw.local_addr();
    let mut stream = StreamClient::open(addr, &[]).await;
    let drained = tokio::spawn(gw.drain());
    let close = stream.next().await.expect("the close line");
    assert_eq!(close["type"], "close", "{close}");
    assert_eq!(close["code"], 1012);
    assert_eq!(close["reason"], "draining");
    assert!(close["reconnect_after_ms"].is_u64(), "{close}");
    assert!(stream.next().await.is_none(), "and the stream ends");
    drained.await.unwrap();
}

/// Three nodes on one Redis: the stream lives on node 1, its POSTs land on
/// nodes 2 and 3 (a non-sticky balancer) and are forwarded; after the
/// stream is lost the client opens one on node 3 and recovers what it
/// missed with `since`, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_to_any_node_reach_the_session_and_recovery_works_across_nodes() {
    let redis = RedisServer::start();
    let one = node(&redis.url(), "hs-1").await;
    let two = node(&redis.url(), "hs-2").await;
    let three = node(&redis.url(), "hs-3").await;
    eventually_within("three nodes announced", Duration::from_secs(15), async || {
        get(one.addr, "/api/info").await.json()["nodes"]
            .as_array()
            .map_or(0, Vec::len)
            == 3
    })
    .await;
    let mut stream = StreamClient::open(one.addr, &[]).await;
    assert!(stream.session.ends_with(".hs-1"));
    let answer = stream
        .send(two.addr, &[json!({"type":"subscribe","id":1,"channel":"room"})])
        .await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    stream.next_of("subscribed").await;
    let answer = stream
        .send(
            three.addr,
            &[json!({"type":"publish","id":2,"channel":"room","data":{"n":1}})],
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    let message = stream.next_of("message").await;
    assert_eq!(message["data"]["n"], 1);
    // The position of the last message processed, as a client keeps it.
    let (epoch, offset) = position(&message);
    let forwarded = metric(
        &get(two.addr, "/metrics").await.text(),
        "gateway_stream_commands_forwarded_total",
    );
    assert_eq!(forwarded, Some(1.0));

    // An id naming a node that is not live is unknown at once.
    let ghost = format!("{}.hs-9", "a".repeat(32));
    let answer = post_commands(two.addr, &ghost, "application/json", "{\"type\":\"ping\"}".into()).await;
    assert_eq!(answer.status, 404, "{}", answer.text());

    drop(stream);
    for n in 2..=4 {
        let answer = post_json(one.addr, "/api/publish", json!({"channel":"room","data":{"n":n}})).await;
        assert_eq!(answer.status, 200);
    }
    let mut resumed = StreamClient::open(three.addr, &[]).await;
    let since = json!({"epoch": epoch, "offset": offset});
    let answer = resumed
        .send(
            one.addr,
            &[json!({"type":"subscribe","id":1,"channel":"room","since":since})],
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    let subscribed = resumed.next_of("subscribed").await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(resumed.next_of("message").await["data"]["n"].as_u64().unwrap());
    }
    assert_eq!(got, vec![2, 3, 4], "exactly the missed publications, in order");
    post_json(two.addr, "/api/publish", json!({"channel":"room","data":{"n":5}})).await;
    assert_eq!(
        resumed.next_of("message").await["data"]["n"],
        5,
        "and then live ones"
    );

    // Protobuf commands are forwarded too (as base64 between the nodes).
    let mut binary = ProtoStream::open(three.addr).await;
    let answer = binary
        .send(
            one.addr,
            &[pb::ClientCommand {
                id: Some(9),
                command: Some(pb::client_command::Command::Ping(Default::default())),
            }],
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    let pong = binary.next_message().await;
    assert_eq!(pong.id, Some(9));
    assert!(
        matches!(pong.kind, Some(pb::server_message::Kind::Pong(_))),
        "{pong:?}"
    );
}

/// A session stream that is never read is closed as a slow consumer
/// (4008) like a WebSocket, its connection dropped without waiting for it;
/// a healthy stream on the same channel loses nothing.
#[tokio::test]
async fn a_stream_that_is_never_read_is_closed_as_a_slow_consumer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = test_config();
    config.outbound_queue_bytes = 64 * 1024;
    let gw = start(config).await;
    let addr = gw.local_addr();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 1024];
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\"session\":\"")
        || !String::from_utf8_lossy(&seen).contains("}\n")
    {
        let n = tokio::time::timeout(WAIT, stalled.read(&mut head))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&head[..n]);
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    let session = text
        .split("\"session\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    let answer = post_commands(
        addr,
        &session,
        "text/plain",
        "{\"type\":\"subscribe\",\"id\":1,\"channel\":\"flood\"}\n".into(),
    )
    .await;
    assert_eq!(answer.status, 202);

    let mut healthy = StreamClient::open(addr, &[]).await;
    healthy
        .send(addr, &[json!({"type":"subscribe","id":1,"channel":"flood"})])
        .await;
    healthy.next_of("subscribed").await;
    let big = "x".repeat(30_000);
    let mut sent = 0;
    loop {
        let answer = post_json(addr, "/api/publish", json!({"channel": "flood", "data": big})).await;
        assert_eq!(answer.status, 200);
        sent += 1;
        assert_eq!(
            healthy.next_of("message").await["data"].as_str().map(str::len),
            Some(30_000)
        );
        let metrics = get(addr, "/metrics").await.text();
        if metric(&metrics, "gateway_slow_consumer_disconnects_total").unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(sent < 2_000, "the stalled stream was never closed");
    }
    eventually("the stalled session ended", async || {
        metric(&get(addr, "/metrics").await.text(), "gateway_connections") == Some(1.0)
    })
    .await;
    let answer = post_commands(addr, &session, "text/plain", "{\"type\":\"ping\"}".into()).await;
    assert_eq!(answer.status, 404, "its session is gone");
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
    post_json(addr, "/api/publish", json!({"channel": "flood", "data": 1})).await;
    assert_eq!(healthy.next_of("message").await["data"], 1);
}
