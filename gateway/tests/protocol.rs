//! Wire protocol v1 against an in-process gateway, with real WebSocket
//! clients: both encodings, every error code a client can cause, and the
//! close codes of protocol violations.

mod support;

use bytes::Bytes;
use pubsub_proto::pb::server_message::Kind;
use pubsub_proto::{ChannelName, ClientCommand, Command, StreamPosition, pb, protobuf};
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

#[tokio::test]
async fn json_connect_subscribe_publish_unsubscribe() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let mut alice = WsClient::connect(addr, Some("pubsub.v1.json")).await;
    assert_eq!(alice.subprotocol.as_deref(), Some("pubsub.v1.json"));
    let mut bob = WsClient::connect(addr, None).await;
    assert_eq!(bob.subprotocol, None, "no offer, no subprotocol in the answer");

    let connected = alice.request(json!({"type":"connect","id":1,"token":""})).await;
    assert_eq!(connected["type"], "connected");
    assert_eq!(connected["id"], 1);
    assert_eq!(connected["node"], "test-node");
    assert_eq!(connected["ping_interval_ms"], 25000);
    assert!(connected["client"].as_str().is_some_and(|c| !c.is_empty()));

    // Bob never sends connect: anonymous from his first command.
    let subscribed = bob
        .request(json!({"type":"subscribe","id":2,"channel":"news"}))
        .await;
    assert_eq!(
        without(&subscribed, &["epoch", "offset"]),
        json!({"type":"subscribed","id":2,"channel":"news"})
    );
    assert_eq!(
        position(&subscribed),
        (String::new(), 0),
        "nothing published on the channel yet: no stream, the empty epoch"
    );
    let subscribed = alice
        .request(json!({"type":"subscribe","id":2,"channel":"news"}))
        .await;
    assert_eq!(position(&subscribed), (String::new(), 0));

    let published = alice
        .request(json!({"type":"publish","id":4,"channel":"news","data":{"text":"hi","n":[1,2]}}))
        .await;
    // The publisher is subscribed too: it gets the message and the reply.
    let mut got = vec![published, alice.recv_json().await];
    got.sort_by_key(|v| v["type"].as_str().unwrap_or_default().to_string());
    // The first publication starts the channel's stream, at offset 1.
    let epoch = position(&got[0]).0;
    assert!(!epoch.is_empty(), "{got:?}");
    assert!(got.iter().all(|v| position(v) == (epoch.clone(), 1)), "{got:?}");
    assert_eq!(
        got.iter()
            .map(|v| without(v, &["epoch", "offset"]))
            .collect::<Vec<_>>(),
        vec![
            json!({"type":"message","channel":"news","data":{"text":"hi","n":[1,2]}}),
            json!({"type":"published","id":4,"channel":"news"}),
        ]
    );
    let message = bob.recv_json().await;
    assert_eq!(
        without(&message, &["epoch", "offset"]),
        json!({"type":"message","channel":"news","data":{"text":"hi","n":[1,2]}})
    );
    assert_eq!(position(&message), (epoch, 1));

    assert_eq!(
        bob.request(json!({"type":"unsubscribe","id":3,"channel":"news"}))
            .await,
        json!({"type":"unsubscribed","id":3,"channel":"news"})
    );
    alice
        .request(json!({"type":"publish","id":5,"channel":"news","data":2}))
        .await;
    alice.recv_json().await;
    assert_eq!(
        bob.request(json!({"type":"ping","id":6})).await,
        json!({"type":"pong","id":6}),
        "nothing more for bob after unsubscribing"
    );
}

fn pb_frame(id: Option<u64>, command: Command) -> Message {
    Message::binary(protobuf::encode_command(&ClientCommand { id, command }))
}

async fn pb_next(client: &mut WsClient) -> pb::ServerMessage {
    match client.next().await {
        Message::Binary(bytes) => protobuf::decode_server_message(bytes).expect("protobuf frame"),
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name).unwrap()
}

#[tokio::test]
async fn protobuf_subscribe_publish_and_cross_encoding_delivery() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let mut proto = WsClient::connect(addr, Some("pubsub.v1.proto")).await;
    assert_eq!(proto.subprotocol.as_deref(), Some("pubsub.v1.proto"));
    let mut json_client = WsClient::connect(addr, Some("pubsub.v1.json")).await;

    proto
        .send(pb_frame(Some(1), Command::Connect { token: String::new() }))
        .await;
    let m = pb_next(&mut proto).await;
    assert_eq!(m.id, Some(1));
    assert!(
        matches!(m.kind, Some(Kind::Connected(c)) if c.node == "test-node" && c.ping_interval_ms == 25000)
    );

    proto
        .send(pb_frame(
            Some(2),
            Command::Subscribe {
                channel: ch("bin"),
                since: None,
            },
        ))
        .await;
    let m = pb_next(&mut proto).await;
    assert_eq!(m.id, Some(2));
    assert!(matches!(m.kind, Some(Kind::Subscribed(s)) if s.channel == "bin" && s.recovered.is_none()));
    json_client.subscribe("bin").await;

    // Bytes that are not JSON reach JSON clients as data_b64.
    proto
        .send(pb_frame(
            Some(3),
            Command::Publish {
                channel: ch("bin"),
                data: Bytes::from_static(&[0, 159, 255]),
            },
        ))
        .await;
    let mut saw_reply = false;
    let mut saw_message = false;
    for _ in 0..2 {
        match pb_next(&mut proto).await.kind {
            Some(Kind::Published(p)) => saw_reply = p.channel == "bin",
            Some(Kind::Message(m)) => saw_message = m.channel == "bin" && m.data[..] == [0, 159, 255],
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_reply && saw_message);
    let message = json_client.recv_json().await;
    assert_eq!(
        without(&message, &["epoch", "offset"]),
        json!({"type":"message","channel":"bin","data_b64":"AJ//"})
    );
    assert_eq!(position(&message).1, 1);

    // JSON published by a JSON client reaches protobuf clients as its bytes.
    json_client
        .request(json!({"type":"publish","id":9,"channel":"bin","data":{"a":1}}))
        .await;
    match pb_next(&mut proto).await.kind {
        Some(Kind::Message(m)) => assert_eq!(&m.data[..], br#"{"a":1}"#),
        other => panic!("unexpected {other:?}"),
    }

    // Unsubscribe and errors over protobuf.
    proto
        .send(pb_frame(Some(4), Command::Unsubscribe { channel: ch("nope") }))
        .await;
    let m = pb_next(&mut proto).await;
    assert_eq!(m.id, Some(4));
    assert!(matches!(m.kind, Some(Kind::Error(e)) if e.code == "not_subscribed"));
    proto.send(Message::binary(vec![0xff, 0xff, 0xff])).await;
    assert!(matches!(pb_next(&mut proto).await.kind, Some(Kind::Error(e)) if e.code == "bad_request"));
    proto.send(pb_frame(Some(5), Command::Ping)).await;
    let m = pb_next(&mut proto).await;
    assert_eq!((m.id, matches!(m.kind, Some(Kind::Pong(_)))), (Some(5), true));
}

/// Publishes `n` numbered messages over HTTP; returns the last position.
async fn publish_numbered(
    addr: std::net::SocketAddr,
    channel: &str,
    range: std::ops::Range<u64>,
) -> (String, u64) {
    let mut last = (String::new(), 0);
    for i in range {
        let answer = post_json(addr, "/api/publish", json!({"channel":channel,"data":i})).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        last = position(&answer.json());
    }
    last
}

#[tokio::test]
async fn recovery_replays_exactly_what_was_missed() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let mut client = WsClient::connect(addr, None).await;
    client.subscribe("news").await;
    let (epoch, _) = publish_numbered(addr, "news", 1..6).await;
    for i in 1..6 {
        let m = client.recv_json().await;
        assert_eq!((m["data"].as_u64(), position(&m)), (Some(i), (epoch.clone(), i)));
    }
    drop(client);
    publish_numbered(addr, "news", 6..9).await;

    let mut back = WsClient::connect(addr, None).await;
    let reply = back
        .request(json!({"type":"subscribe","id":7,"channel":"news","since":{"epoch":epoch,"offset":5}}))
        .await;
    assert_eq!(
        reply,
        json!({"type":"subscribed","id":7,"channel":"news","epoch":epoch,"offset":8,"recovered":true})
    );
    publish_numbered(addr, "news", 9..10).await;
    for i in 6..10 {
        let m = back.recv_json().await;
        assert_eq!(
            (m["type"].as_str(), m["data"].as_u64(), position(&m).1),
            (Some("message"), Some(i), i)
        );
    }
    assert_eq!(
        back.request(json!({"type":"ping","id":1})).await,
        json!({"type":"pong","id":1}),
        "no duplicate"
    );

    // Another epoch: nothing replayed, told to resync.
    let mut other = WsClient::connect(addr, None).await;
    let reply = other
        .request(json!({"type":"subscribe","id":8,"channel":"news","since":{"epoch":"not-it","offset":5}}))
        .await;
    assert_eq!(reply["recovered"], false);
    assert_eq!(position(&reply), (epoch.clone(), 9));
    assert_eq!(
        other.request(json!({"type":"ping","id":2})).await,
        json!({"type":"pong","id":2}),
        "no partial replay"
    );
}

#[tokio::test]
async fn recovery_beyond_the_history_window_is_refused_whole() {
    let mut config = test_config();
    config.namespaces.global.history_size = 3;
    let gw = start(config).await;
    let addr = gw.local_addr();
    let (epoch, last) = publish_numbered(addr, "short", 1..11).await;
    assert_eq!(last, 10);
    let mut client = WsClient::connect(addr, None).await;
    // Offsets 3..=10 missed, but only 8..=10 are kept: no partial replay.
    let reply = client
        .request(json!({"type":"subscribe","id":1,"channel":"short","since":{"epoch":epoch,"offset":2}}))
        .await;
    assert_eq!(
        (reply["recovered"].as_bool(), position(&reply)),
        (Some(false), (epoch.clone(), 10))
    );
    assert_eq!(
        client.request(json!({"type":"ping","id":2})).await,
        json!({"type":"pong","id":2})
    );
    // Within the window it works.
    let mut near = WsClient::connect(addr, None).await;
    let reply = near
        .request(json!({"type":"subscribe","id":1,"channel":"short","since":{"epoch":epoch,"offset":7}}))
        .await;
    assert_eq!(reply["recovered"], true);
    for i in 8..11 {
        assert_eq!(near.recv_json().await["data"], i);
    }
}

#[tokio::test]
async fn recovery_over_protobuf() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let (epoch, _) = publish_numbered(addr, "pb", 1..4).await;
    let mut proto = WsClient::connect(addr, Some("pubsub.v1.proto")).await;
    let since = Some(StreamPosition {
        epoch: epoch.clone(),
        offset: 1,
    });
    proto
        .send(pb_frame(
            Some(1),
            Command::Subscribe {
                channel: ch("pb"),
                since,
            },
        ))
        .await;
    match pb_next(&mut proto).await.kind {
        Some(Kind::Subscribed(s)) => {
            assert_eq!(
                (s.recovered, s.offset, s.epoch.as_deref()),
                (Some(true), Some(3), Some(epoch.as_str()))
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    for i in 2..4u64 {
        match pb_next(&mut proto).await.kind {
            Some(Kind::Message(m)) => {
                assert_eq!((m.offset, m.data), (Some(i), bytes::Bytes::from(i.to_string())))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn every_client_error_code_keeps_the_connection_open() {
    let mut config = test_config();
    config.max_publication_size = 1000;
    let gw = start(config).await;
    let mut client = WsClient::connect(gw.local_addr(), None).await;
    client.subscribe("taken").await;

    let cases: Vec<(Value, Option<u64>, &str)> = vec![
        (json!("not an object"), None, "bad_request"),
        (json!({"id":1}), Some(1), "bad_request"),
        (json!({"type":"subscribe","id":2}), Some(2), "bad_request"),
        (json!({"type":"teleport","id":3}), Some(3), "unknown_command"),
        (
            json!({"type":"subscribe","id":4,"channel":"spaces are bad"}),
            Some(4),
            "invalid_channel",
        ),
        (
            json!({"type":"subscribe","id":5,"channel":"x".repeat(256)}),
            Some(5),
            "invalid_channel",
        ),
        (
            json!({"type":"subscribe","id":6,"channel":"taken"}),
            Some(6),
            "already_subscribed",
        ),
        (
            json!({"type":"unsubscribe","id":7,"channel":"never"}),
            Some(7),
            "not_subscribed",
        ),
        (
            json!({"type":"publish","id":8,"channel":"a","data":"x".repeat(2000)}),
            Some(8),
            "too_large",
        ),
        (
            json!({"type":"publish","id":9,"channel":"a"}),
            Some(9),
            "bad_request",
        ),
        (json!({"type":"connect","id":10}), Some(10), "connected"),
        (json!({"type":"connect","id":11}), Some(11), "bad_request"),
        (
            json!({"type":"refresh","id":12,"token":"t"}),
            Some(12),
            "bad_request",
        ),
    ];
    for (command, id, code) in cases {
        let reply = client.request(command.clone()).await;
        if code == "connected" {
            assert_eq!(reply["type"], "connected");
            continue;
        }
        assert_eq!(reply["type"], "error", "{command}: {reply}");
        assert_eq!(reply["code"], code, "{command}: {reply}");
        assert_eq!(reply.get("id").and_then(Value::as_u64), id, "{command}: {reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Malformed JSON text, then a huge id: still answered, still open.
    client.send(Message::text("{\"type\":")).await;
    assert_eq!(client.recv_json().await["code"], "bad_request");
    client
        .send(Message::text(
            r#"{"type":"ping","id":123456789012345678901234567890}"#,
        ))
        .await;
    assert_eq!(client.recv_json().await["code"], "bad_request");
    assert_eq!(
        client.request(json!({"type":"ping","id":99})).await,
        json!({"type":"pong","id":99})
    );
}

#[tokio::test]
async fn messages_arrive_in_publish_order() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let mut subscriber = WsClient::connect(addr, None).await;
    subscriber.subscribe("seq").await;
    let mut publisher = WsClient::connect(addr, None).await;

    let sub = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 1000 {
            let m = subscriber.recv_json().await;
            got.push(m["data"].as_u64().expect("numbered"));
        }
        got
    });
    // Half over WebSocket, half over HTTP, interleaved in a known order.
    for i in 0..1000u64 {
        if i % 2 == 0 {
            let reply = publisher
                .request(json!({"type":"publish","id":i,"channel":"seq","data":i}))
                .await;
            assert_eq!(reply["type"], "published");
        } else {
            let answer = post_json(addr, "/api/publish", json!({"channel":"seq","data":i})).await;
            assert_eq!(answer.status, 200);
        }
    }
    let got = sub.await.unwrap();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_write_delay_gathers_frames_without_losing_or_reordering_any() {
    let mut config = test_config();
    config.write_delay = std::time::Duration::from_millis(20);
    let gw = start(config).await;
    let addr = gw.local_addr();
    let mut subscriber = WsClient::connect(addr, None).await;
    // Replies go through the same gathered writes.
    subscriber.subscribe("gathered").await;
    let mut publisher = WsClient::connect(addr, None).await;
    for i in 0..300u64 {
        let reply = publisher
            .request(json!({"type":"publish","id":i,"channel":"gathered","data":i}))
            .await;
        assert_eq!(reply["type"], "published");
    }
    let mut got = Vec::new();
    while got.len() < 300 {
        got.push(subscriber.recv_json().await["data"].as_u64().expect("numbered"));
    }
    assert_eq!(got, (0..300).collect::<Vec<_>>());
    // A ping still gets its pong, and the connection closes normally.
    assert_eq!(
        subscriber.request(json!({"type":"ping","id":7})).await["type"],
        "pong"
    );
}

#[tokio::test]
async fn websocket_ping_frames_are_answered() {
    let gw = start(test_config()).await;
    let mut client = WsClient::connect(gw.local_addr(), None).await;
    client.send(Message::Ping(Bytes::from_static(b"hello"))).await;
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            use futures_util::StreamExt;
            if let Some(Ok(Message::Pong(p))) = client.ws.next().await {
                return p;
            }
        }
    })
    .await
    .expect("a pong");
    assert_eq!(&pong[..], b"hello");
}

#[tokio::test]
async fn unknown_subprotocol_is_refused_with_400() {
    let gw = start(test_config()).await;
    let err = WsClient::try_connect(gw.local_addr(), Some("mqtt, stomp"))
        .await
        .err();
    match err {
        Some(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
            let body: Value = serde_json::from_str(&body).expect("JSON body");
            assert_eq!(body["error"]["code"], "unsupported_subprotocol");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("mqtt")
            );
        }
        other => panic!("expected HTTP 400, got {other:?}"),
    }
    // The preferred supported one is picked from a mixed offer.
    let client = WsClient::connect(gw.local_addr(), Some("mqtt, pubsub.v1.proto")).await;
    assert_eq!(client.subprotocol.as_deref(), Some("pubsub.v1.proto"));
}

#[tokio::test]
async fn plain_get_on_ws_needs_an_upgrade() {
    let gw = start(test_config()).await;
    let answer = get(gw.local_addr(), "/ws").await;
    assert_eq!(answer.status, 426);
    assert_eq!(answer.json()["error"]["code"], "upgrade_required");
}

async fn expect_close_code(client: &mut WsClient, code: u16) {
    let frame = client.expect_close().await;
    assert_eq!(u16::from(frame.code), code, "reason: {}", frame.reason);
}

#[tokio::test]
async fn binary_frame_on_json_closes_1003_and_text_on_proto_too() {
    let gw = start(test_config()).await;
    let mut json_client = WsClient::connect(gw.local_addr(), None).await;
    json_client.send(Message::binary(vec![1, 2, 3])).await;
    expect_close_code(&mut json_client, 1003).await;

    let mut proto = WsClient::connect(gw.local_addr(), Some("pubsub.v1.proto")).await;
    proto.send(Message::text("{}")).await;
    expect_close_code(&mut proto, 1003).await;
}

#[tokio::test]
async fn oversize_message_closes_1009() {
    let mut config = test_config();
    config.max_message_size = 4096;
    let gw = start(config).await;
    let mut client = WsClient::connect(gw.local_addr(), None).await;
    let big = json!({"type":"publish","channel":"a","data":"x".repeat(5000)});
    client.send(Message::text(big.to_string())).await;
    expect_close_code(&mut client, 1009).await;
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let gw = start(test_config()).await;
    let mut client = WsClient::connect(gw.local_addr(), None).await;
    let frame = Frame::message(
        Bytes::from_static(&[0x7b, 0xff, 0xfe, 0x7d]),
        OpCode::Data(Data::Text),
        true,
    );
    client.send(Message::Frame(frame)).await;
    expect_close_code(&mut client, 1007).await;
}

#[tokio::test]
async fn protocol_violation_closes_1002() {
    let gw = start(test_config()).await;
    let mut client = WsClient::connect(gw.local_addr(), None).await;
    // A continuation frame with no message to continue.
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Continue),
        ..FrameHeader::default()
    };
    client
        .send(Message::Frame(Frame::from_payload(
            header,
            Bytes::from_static(b"x"),
        )))
        .await;
    expect_close_code(&mut client, 1002).await;
}

#[tokio::test]
async fn a_bad_client_does_not_disturb_a_good_one() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let mut good = WsClient::connect(addr, None).await;
    good.subscribe("news").await;
    for bad_input in [Message::binary(vec![0u8; 10]), Message::text("garbage")] {
        let mut bad = WsClient::connect(addr, None).await;
        bad.subscribe("news").await;
        bad.send(bad_input).await;
        post_json(
            addr,
            "/api/publish",
            json!({"channel":"news","data":"still here"}),
        )
        .await;
        assert_eq!(good.recv_json().await["data"], "still here");
    }
}
