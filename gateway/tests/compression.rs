//! permessage-deflate (RFC 7692) against an in-process gateway, with a
//! client that speaks it (`ws-client`) beside tungstenite clients that do
//! not: every offer a client can make, identical payloads for everyone,
//! compressed publishing, and hostile compressed input with a bystander
//! that must keep receiving.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gateway::Config;
use serde_json::{Value, json};
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use ws_client::{BROWSER_OFFER, Options, WebSocket};

type Client = WebSocket<TcpStream>;

async fn deflate_client(
    addr: SocketAddr,
    offer: Option<&str>,
    subprotocol: &str,
) -> (Client, Option<String>) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let options = Options {
        offer: offer.map(str::to_string),
        compress_from: Some(0),
    };
    let (ws, headers) = ws_client::connect(
        stream,
        &ws_url(addr),
        &[("Sec-WebSocket-Protocol", subprotocol)],
        options,
    )
    .await
    .expect("handshake");
    let extensions = headers
        .iter()
        .find(|(name, _)| name == "sec-websocket-extensions")
        .map(|(_, value)| value.clone());
    (ws, extensions)
}

/// The next data or close message (pings and pongs are skipped).
async fn next(ws: &mut Client) -> Message {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message within the wait")
            .expect("the stream is open")
            .expect("a valid message");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

async fn request(ws: &mut Client, command: Value) -> Value {
    ws.send(Message::text(command.to_string())).await.expect("send");
    json_of(next(ws).await)
}

fn json_of(message: Message) -> Value {
    match message {
        Message::Text(text) => serde_json::from_str(&text).expect("JSON"),
        other => panic!("expected text, got {other:?}"),
    }
}

/// A JSON event of about 1 KiB, the kind frontend apps receive.
fn event(n: u64) -> Value {
    json!({
        "event": "order.updated",
        "n": n,
        "order": {
            "id": "ord_8f2b1c9d4e",
            "status": "shipped",
            "customer": {"id": "cus_19a7", "name": "Ann Example", "email": "ann@example.com"},
            "items": (0..8).map(|i| json!({
                "sku": format!("SKU-{i:04}"),
                "name": format!("Product number {i} with a descriptive name"),
                "quantity": i + 1,
                "price": {"amount": 1999 + i, "currency": "EUR"},
            })).collect::<Vec<_>>(),
            "shipping": {"carrier": "Example Post", "tracking": "EX123456789DE", "eta": "2026-12-05"},
        }
    })
}

#[tokio::test]
async fn every_offer_gets_the_same_payloads_and_compressed_ones_share_the_work() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let offers: [(Option<&str>, Option<&str>); 14] = [
        (Some(BROWSER_OFFER), Some("")),
        (Some("permessage-deflate"), Some("")),
        (Some("permessage-deflate; server_no_context_takeover"), Some("")),
        (Some("permessage-deflate; client_no_context_takeover"), Some("")),
        (
            Some("permessage-deflate; server_max_window_bits=15"),
            Some("; server_max_window_bits=15"),
        ),
        (Some("permessage-deflate; client_max_window_bits=8"), Some("")),
        (
            Some("permessage-deflate; server_max_window_bits=9; client_max_window_bits=9"),
            Some("; server_max_window_bits=9"),
        ),
        // A list: the first offer cannot be honoured, the second (with a
        // quoted value) is; an unknown extension before them is skipped.
        (
            Some(
                "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=8, \
                 permessage-deflate; server_max_window_bits=\"12\"",
            ),
            Some("; server_max_window_bits=12"),
        ),
        (
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            Some(""),
        ),
        (
            Some("permessage-deflate; server_max_window_bits=10"),
            Some("; server_max_window_bits=10"),
        ),
        (Some("permessage-deflate; client_max_window_bits=12"), Some("")),
        // Declined, the handshake still succeeds, uncompressed.
        (Some("permessage-deflate; server_max_window_bits=8"), None),
        (Some("permessage-deflate; no_such_parameter"), None),
        (None, None),
    ];
    let mut clients = Vec::new();
    for (offer, expected) in offers {
        let (mut ws, extensions) = deflate_client(addr, offer, "pubsub.v1.json").await;
        let expected = expected.map(|extra| {
            format!("permessage-deflate; server_no_context_takeover; client_no_context_takeover{extra}")
        });
        assert_eq!(extensions, expected, "offer {offer:?}");
        let reply = request(&mut ws, json!({"type":"subscribe","id":1,"channel":"news"})).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        clients.push((offer, ws));
    }
    // And one plain tungstenite client, which offers nothing.
    let mut plain = WsClient::connect(addr, None).await;
    plain.subscribe("news").await;
    let metrics = get(addr, "/metrics").await.text();
    assert_eq!(metric(&metrics, "gateway_compression_connections"), Some(11.0));

    let small = json!({"tiny": true});
    for data in [event(1), small.clone(), event(2)] {
        let answer = post_json(addr, "/api/publish", json!({"channel":"news","data":data})).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    let expected: Vec<Value> = vec![event(1), small, event(2)];
    for (offer, ws) in &mut clients {
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(json_of(next(ws).await)["data"].clone());
        }
        assert_eq!(got, expected, "offer {offer:?}");
        if ws.negotiated().is_some() {
            assert!(ws.compressed_in > 0, "offer {offer:?} received compressed frames");
            assert!(
                ws.inflated_in > 3 * ws.compressed_in,
                "at least 3x fewer bytes: {} -> {}",
                ws.inflated_in,
                ws.compressed_in
            );
        } else {
            assert_eq!(ws.compressed_in, 0);
        }
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(plain.recv_json().await["data"].clone());
    }
    assert_eq!(got, expected);
    let metrics = get(addr, "/metrics").await.text();
    let (before, after) = (
        metric(&metrics, "gateway_compression_bytes_in_total").unwrap_or(0.0),
        metric(&metrics, "gateway_compression_bytes_out_total").unwrap_or(0.0),
    );
    assert!(before > 3.0 * after && after > 0.0, "{before} -> {after}");
    // Compressed once per publication, not once per subscriber: the eight
    // clients on the usual 15-bit window share one compression of each
    // large event, the three that asked for a smaller server window (12,
    // 10, 9) get their own (the small one goes uncompressed): 2 x (1 + 3),
    // where compressing per subscriber would have been 2 x 11.
    assert_eq!(
        metric(&metrics, "gateway_compressions_total"),
        Some(8.0),
        "compressions"
    );
}

#[tokio::test]
async fn protobuf_clients_get_compressed_publications_too() {
    use pubsub_proto::pb::server_message::Kind;
    use pubsub_proto::{ChannelName, ClientCommand, Command, protobuf};
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let (mut ws, extensions) = deflate_client(addr, Some(BROWSER_OFFER), "pubsub.v1.proto").await;
    assert!(extensions.is_some());
    let subscribe = ClientCommand {
        id: Some(1),
        command: Command::Subscribe {
            channel: ChannelName::parse("news").unwrap(),
            since: None,
        },
    };
    ws.send(Message::binary(protobuf::encode_command(&subscribe)))
        .await
        .expect("send");
    let Message::Binary(reply) = next(&mut ws).await else {
        panic!("binary reply")
    };
    assert!(matches!(
        protobuf::decode_server_message(reply).unwrap().kind,
        Some(Kind::Subscribed(_))
    ));
    let answer = post_json(addr, "/api/publish", json!({"channel":"news","data":event(7)})).await;
    assert_eq!(answer.status, 200);
    let Message::Binary(frame) = next(&mut ws).await else {
        panic!("binary publication")
    };
    let Some(Kind::Message(message)) = protobuf::decode_server_message(frame).unwrap().kind else {
        panic!("a message")
    };
    assert_eq!(serde_json::from_slice::<Value>(&message.data).unwrap(), event(7));
    assert!(ws.compressed_in > 0);
}

#[tokio::test]
async fn compressed_publishes_from_clients_arrive_intact_and_compression_can_be_off() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let mut reader = WsClient::connect(addr, None).await;
    reader.subscribe("chat:room").await;
    let (mut writer, _) = deflate_client(addr, Some(BROWSER_OFFER), "pubsub.v1.json").await;
    for n in 0..3 {
        let reply = request(
            &mut writer,
            json!({"type":"publish","id":n,"channel":"chat:room","data":event(n)}),
        )
        .await;
        assert_eq!(reply["type"], "published", "{reply}");
    }
    for n in 0..3 {
        assert_eq!(reader.recv_json().await["data"], event(n));
    }

    let off = start(Config {
        compression: false,
        ..test_config()
    })
    .await;
    let (mut ws, extensions) = deflate_client(off.local_addr(), Some(BROWSER_OFFER), "pubsub.v1.json").await;
    assert_eq!(extensions, None, "--compression off declines every offer");
    let reply = request(&mut ws, json!({"type":"ping","id":1})).await;
    assert_eq!(reply["type"], "pong");
}

/// Hostile compressed input: each gets its close code; a bystander on the
/// same node keeps receiving in order throughout.
#[tokio::test]
async fn hostile_compressed_input_closes_only_its_own_connection() {
    let gw = start(Config {
        max_message_size: 4096,
        ..test_config()
    })
    .await;
    let addr = gw.local_addr();
    let mut bystander = WsClient::connect(addr, None).await;
    bystander.subscribe("feed").await;
    let publisher = tokio::spawn(async move {
        for n in 0..40u64 {
            post_json(addr, "/api/publish", json!({"channel":"feed","data":n})).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    let deflater = {
        let (mut probe, _) = deflate_client(addr, Some(BROWSER_OFFER), "pubsub.v1.json").await;
        // Inflates to 100 KiB from a frame of well under 1 KiB.
        let bomb = probe.deflate(&vec![b' '; 100 * 1024]);
        assert!(bomb.len() < 1024, "{}", bomb.len());
        bomb
    };
    let cases: Vec<(&str, Option<&str>, Vec<u8>, u16)> = vec![
        (
            "corrupt deflate data",
            Some(BROWSER_OFFER),
            ws_client::masked_frame(0xC1, &[0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x13, 0x37]),
            1007,
        ),
        (
            "a small frame that inflates past the size limit",
            Some(BROWSER_OFFER),
            ws_client::masked_frame(0xC1, &deflater),
            1009,
        ),
        (
            "a compressed control frame",
            Some(BROWSER_OFFER),
            ws_client::masked_frame(0xC9, b"x"),
            1002,
        ),
        (
            "RSV1 without the extension",
            None,
            ws_client::masked_frame(0xC1, b"x"),
            1002,
        ),
    ];
    for (what, offer, frame, code) in cases {
        let (mut ws, _) = deflate_client(addr, offer, "pubsub.v1.json").await;
        ws.send_raw(&frame).await.expect("send");
        let close = loop {
            match next(&mut ws).await {
                Message::Close(frame) => break frame,
                _ => continue,
            }
        };
        assert_eq!(close.map(|f| u16::from(f.code)), Some(code), "{what}");
    }
    publisher.await.expect("publisher");
    for n in 0..40u64 {
        assert_eq!(
            bystander.recv_json().await["data"],
            json!(n),
            "the bystander's stream"
        );
    }
}
