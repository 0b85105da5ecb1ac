//! The few protocol frames the load generator sends and reads, in either
//! encoding, and the probe payload every publication carries.
//!
//! A probe is `{"seq":N,"t":MICROS,"pad":"..."}`: the publication's number
//! within its channel and its *scheduled* send time in microseconds since
//! the Unix epoch. Readers scan for the two numbers instead of parsing the
//! whole frame: the generator shares the cores with the gateway, and a full
//! JSON parse per delivery would make it the bottleneck.

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use memchr::memmem;
use prost::Message as _;
use pubsub_proto::pb;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

/// The subprotocol clients speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Json,
    Proto,
}

impl Protocol {
    pub fn subprotocol(self) -> &'static str {
        match self {
            Protocol::Json => "pubsub.v1.json",
            Protocol::Proto => "pubsub.v1.proto",
        }
    }
}

/// What a received frame is, as far as the generator cares.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A publication carrying a probe.
    Probe {
        seq: u64,
        sent_micros: u64,
    },
    Subscribed,
    Published,
    Error(String),
    /// A WebSocket close frame: the server ended the connection.
    Closed,
    /// Anything else (pongs, publications without a probe, ...).
    Other,
}

/// Microseconds since the Unix epoch (comparable across processes).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The probe payload for publication `seq` scheduled at `sent_micros`;
/// `padding` (from [`padding`]) follows the two numbers.
pub fn probe(seq: u64, sent_micros: u64, padding: &str) -> String {
    format!(r#"{{"seq":{seq},"t":{sent_micros}{padding}}}"#)
}

/// What pads each probe to about `bytes`: `x`s, or with `event` a JSON
/// event of the kind frontend apps receive (an order with its items), which
/// compresses the way real payloads do rather than as a run of one letter.
pub fn padding(bytes: usize, event: bool) -> String {
    if !event {
        return format!(r#","pad":"{}""#, "x".repeat(bytes));
    }
    let mut items = Vec::new();
    let mut event = String::new();
    for i in 0.. {
        items.push(format!(
            r#"{{"sku":"SKU-{:05}","name":"Product {i} with a longer descriptive name","quantity":{},"price":{{"amount":{},"currency":"EUR"}}}}"#,
            (i * 7919) % 100_000,
            i % 5 + 1,
            1999 + i * 37
        ));
        event = format!(
            r#","event":"order.updated","order":{{"id":"ord_8f2b1c9d4e","status":"shipped","customer":{{"id":"cus_19a7","name":"Ann Example"}},"items":[{}]}}"#,
            items.join(",")
        );
        if event.len() >= bytes {
            break;
        }
    }
    event
}

pub fn subscribe(protocol: Protocol, id: u64, channel: &str) -> Message {
    match protocol {
        Protocol::Json => {
            Message::text(serde_json::json!({"type":"subscribe","id":id,"channel":channel}).to_string())
        }
        Protocol::Proto => command(
            id,
            pb::client_command::Command::Subscribe(pb::Subscribe {
                channel: channel.to_owned(),
                since: None,
            }),
        ),
    }
}

/// A publish command whose data is `payload` (a JSON value).
pub fn publish(protocol: Protocol, id: u64, channel: &str, payload: &str) -> Message {
    match protocol {
        Protocol::Json => Message::text(format!(
            r#"{{"type":"publish","id":{id},"channel":{},"data":{payload}}}"#,
            serde_json::Value::from(channel)
        )),
        Protocol::Proto => command(
            id,
            pb::client_command::Command::Publish(pb::Publish {
                channel: channel.to_owned(),
                data: Bytes::copy_from_slice(payload.as_bytes()),
            }),
        ),
    }
}

fn command(id: u64, command: pb::client_command::Command) -> Message {
    let frame = pb::ClientCommand {
        id: Some(id),
        command: Some(command),
    };
    Message::binary(frame.encode_to_vec())
}

/// Classifies a received frame.
pub fn parse(protocol: Protocol, message: &Message) -> Frame {
    match (protocol, message) {
        (_, Message::Close(_)) => Frame::Closed,
        (Protocol::Json, Message::Text(text)) => parse_json(text.as_str()),
        (Protocol::Proto, Message::Binary(bytes)) => parse_proto(bytes.clone()),
        _ => Frame::Other,
    }
}

pub fn parse_json(text: &str) -> Frame {
    // The type comes first in every server frame: `{"type":"message",...`.
    let kind = text
        .strip_prefix(r#"{"type":""#)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("");
    match kind {
        "message" => probe_of(text.as_bytes()),
        "subscribed" => Frame::Subscribed,
        "published" => Frame::Published,
        "error" => Frame::Error(text.to_owned()),
        _ => Frame::Other,
    }
}

fn parse_proto(bytes: Bytes) -> Frame {
    use pb::server_message::Kind;
    match pb::ServerMessage::decode(bytes).ok().and_then(|m| m.kind) {
        Some(Kind::Message(m)) => probe_of(&m.data),
        Some(Kind::Subscribed(_)) => Frame::Subscribed,
        Some(Kind::Published(_)) => Frame::Published,
        Some(Kind::Error(e)) => Frame::Error(format!("{}: {}", e.code, e.message)),
        _ => Frame::Other,
    }
}

fn probe_of(data: &[u8]) -> Frame {
    static SEQ: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"seq\":"));
    static SENT: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"t\":"));
    match (number_after(data, &SEQ), number_after(data, &SENT)) {
        (Some(seq), Some(sent_micros)) => Frame::Probe { seq, sent_micros },
        _ => Frame::Other,
    }
}

/// The decimal number right after the first `key` in `data` (a SIMD
/// substring search: this runs for every frame the generator receives).
fn number_after(data: &[u8], key: &memmem::Finder<'_>) -> Option<u64> {
    let at = key.find(data)? + key.needle().len();
    let digits = &data[at..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_probes_from_json_frames() {
        let frame = Message::text(format!(
            r#"{{"type":"message","channel":"c","data":{},"offset":3}}"#,
            probe(42, 1_700_000_000_123_456, &padding(2, false))
        ));
        assert_eq!(
            parse(Protocol::Json, &frame),
            Frame::Probe {
                seq: 42,
                sent_micros: 1_700_000_000_123_456
            }
        );
        assert_eq!(
            parse(
                Protocol::Json,
                &Message::text(r#"{"type":"subscribed","id":1,"channel":"c"}"#)
            ),
            Frame::Subscribed
        );
        assert_eq!(
            parse(
                Protocol::Json,
                &Message::text(r#"{"type":"message","channel":"c","data":{"x":1}}"#)
            ),
            Frame::Other
        );
    }

    #[test]
    fn reads_probes_from_protobuf_frames() {
        let frame = pb::ServerMessage {
            id: None,
            kind: Some(pb::server_message::Kind::Message(pb::Message {
                channel: "c".into(),
                data: Bytes::from(probe(7, 99, &padding(0, false))),
                offset: None,
                epoch: None,
            })),
        };
        let message = Message::binary(frame.encode_to_vec());
        assert_eq!(
            parse(Protocol::Proto, &message),
            Frame::Probe {
                seq: 7,
                sent_micros: 99
            }
        );
    }

    #[test]
    fn protobuf_commands_decode_on_the_server_side() {
        let Message::Binary(bytes) = subscribe(Protocol::Proto, 5, "room") else {
            panic!("protobuf commands are binary frames");
        };
        let command = pubsub_proto::protobuf::decode_command(bytes).expect("valid command");
        assert_eq!(command.id, Some(5));
        assert_eq!(command.command.name(), "subscribe");
    }
}
