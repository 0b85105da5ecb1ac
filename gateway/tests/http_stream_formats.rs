//! The other framings of `GET /stream`: protobuf (`?encoding=protobuf`,
//! length-prefixed frames, commands POSTed as length-prefixed
//! `ClientCommand`s) and Server-Sent Events (`?format=sse`, for
//! `EventSource`), with real HTTP clients.

mod support;

use std::time::Duration;

use http::Method;
use pubsub_proto::pb;
use serde_json::json;
use support::http_stream::{FRAME_CLOSE, ProtoStream, post_bytes, post_commands};
use support::*;

/// `?encoding=protobuf`: frames of a kind byte, a u32 length and a
/// `ServerMessage`; commands POSTed as length-prefixed `ClientCommand`s;
/// the session named by the `X-Stream-Session` header; JSON for it is
/// refused (415), and its drain close is a close frame with the hint.
#[tokio::test]
async fn a_protobuf_stream_carries_length_prefixed_frames() {
    let mut config = test_config();
    config.drain = Duration::from_millis(50);
    let gw = start(config).await;
    let addr = gw.local_addr();
    let mut stream = ProtoStream::open(addr).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.headers["content-type"], "application/x-protobuf");
    let subscribe = pb::ClientCommand {
        id: Some(1),
        command: Some(pb::client_command::Command::Subscribe(pb::Subscribe {
            channel: "bin".into(),
            since: None,
        })),
    };
    let answer = stream.send(addr, &[subscribe]).await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    let reply = stream.next_message().await;
    assert_eq!(reply.id, Some(1));
    assert!(
        matches!(reply.kind, Some(pb::server_message::Kind::Subscribed(_))),
        "{reply:?}"
    );
    let answer = post_commands(
        addr,
        &stream.session,
        "application/json",
        "{\"type\":\"ping\"}".into(),
    )
    .await;
    assert_eq!(
        answer.status,
        415,
        "JSON for a protobuf session: {}",
        answer.text()
    );
    post_json(addr, "/api/publish", json!({"channel":"bin","data":{"n":1}})).await;
    let Some(pb::server_message::Kind::Message(message)) = stream.next_message().await.kind else {
        panic!("a publication");
    };
    assert_eq!(&message.data[..], br#"{"n":1}"#);
    let garbage = post_bytes(
        addr,
        &stream.session,
        "application/x-protobuf",
        vec![0u8, 0, 0, 9, 1],
    )
    .await;
    assert_eq!(garbage.status, 400, "{}", garbage.text());
    let drained = tokio::spawn(gw.drain());
    let (kind, payload) = stream.next().await;
    assert_eq!(kind, FRAME_CLOSE, "a close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1012);
    let reason: serde_json::Value = serde_json::from_slice(&payload[2..]).expect("the JSON hint");
    assert!(reason["reconnect_after_ms"].is_u64(), "{reason}");
    drained.await.unwrap();
}

/// `format=sse`: the same session as Server-Sent Events (for EventSource
/// behind proxies that buffer other streamed responses): the session event
/// first, each reply and publication an event, commands POSTed the same way.
#[tokio::test]
async fn the_session_as_server_sent_events() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let mut events = support::sse::SseClient::open(addr, "/stream?format=sse", &[]).await;
    assert_eq!(events.status, 200);
    assert_eq!(events.headers["content-type"], "text/event-stream");
    let first = events.next().await.expect("the session event").json();
    assert_eq!(first["type"], "session", "{first}");
    let session = first["session"].as_str().unwrap().to_string();
    assert_eq!(events.headers["x-stream-session"], session.as_str());
    let body = "{\"type\":\"subscribe\",\"id\":1,\"channel\":\"ev\"}\n";
    let answer = post_commands(addr, &session, "text/plain", body.into()).await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    let subscribed = events.next().await.expect("subscribed").json();
    assert_eq!(
        (subscribed["type"].as_str(), subscribed["id"].as_u64()),
        (Some("subscribed"), Some(1))
    );
    post_json(addr, "/api/publish", json!({"channel":"ev","data":{"n":1}})).await;
    assert_eq!(events.next_message().await["data"]["n"], 1);
    let answer = http(addr, Method::GET, "/stream?format=sse&encoding=protobuf", &[], "").await;
    assert_eq!(answer.status, 400);
}
