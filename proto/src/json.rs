//! The JSON encoding (`pubsub.v1.json`): one JSON object per text frame.
//!
//! Commands look like `{"type":"subscribe","id":2,"channel":"news"}`. Unknown
//! fields are ignored so that newer clients can talk to older servers. The
//! `data` of a publish is kept as its raw JSON text, never re-serialized, so a
//! publication's bytes are exactly what the publisher sent.

use std::borrow::Cow;
use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::message::{
    ClientCommand, Command, DecodeError, ErrorCode, Member, Publication, Reply, ServerMessage,
    StreamPosition, parse_channel,
};

/// The shape every JSON command is read into before it is checked.
#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    id: Option<u64>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present_raw_value")]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    data_b64: Option<Cow<'a, str>>,
    token: Option<String>,
    since: Option<RawPosition>,
}

#[derive(Deserialize)]
struct RawPosition {
    epoch: String,
    offset: u64,
}

/// Used when the full parse failed, to still echo the command's id.
#[derive(Deserialize)]
struct IdOnly {
    id: Option<u64>,
}

/// Keeps `"data": null` as the JSON value `null` rather than "absent".
fn present_raw_value<'de, D>(d: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: Deserializer<'de>,
{
    <&'de RawValue>::deserialize(d).map(Some)
}

/// Deepest nesting of arrays and objects accepted in published JSON data.
/// serde_json does not limit the depth of a value it only skips over (as it
/// does for raw `data`), and browsers' parsers can overflow on deep input.
pub const MAX_DATA_DEPTH: usize = 128;

/// True when the JSON text `raw` nests arrays and objects at most `max` deep.
/// `raw` must already be valid JSON; this only counts brackets outside strings.
pub fn within_depth(raw: &str, max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in raw.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Decodes one JSON command frame.
pub fn decode_command(text: &str) -> Result<ClientCommand, DecodeError> {
    let raw: RawCommand<'_> = serde_json::from_str(text).map_err(|e| {
        let id = serde_json::from_str::<IdOnly>(text).ok().and_then(|r| r.id);
        DecodeError::new(id, ErrorCode::BadRequest, format!("malformed command: {e}"))
    })?;
    let id = raw.id;
    let Some(kind) = raw.kind else {
        return Err(DecodeError::new(
            id,
            ErrorCode::BadRequest,
            "missing field `type`",
        ));
    };
    let channel = |raw_channel: Option<Cow<'_, str>>| match raw_channel {
        Some(name) => parse_channel(id, &name),
        None => Err(DecodeError::new(
            id,
            ErrorCode::BadRequest,
            "missing field `channel`",
        )),
    };
    let command = match &*kind {
        "connect" => Command::Connect {
            token: raw.token.unwrap_or_default(),
        },
        "subscribe" => Command::Subscribe {
            channel: channel(raw.channel)?,
            since: raw.since.map(|p| StreamPosition {
                epoch: p.epoch,
                offset: p.offset,
            }),
        },
        "unsubscribe" => Command::Unsubscribe {
            channel: channel(raw.channel)?,
        },
        "publish" => {
            let channel = channel(raw.channel)?;
            let data = match (raw.data, raw.data_b64) {
                (Some(value), None) => {
                    if !within_depth(value.get(), MAX_DATA_DEPTH) {
                        return Err(DecodeError::new(
                            id,
                            ErrorCode::BadRequest,
                            format!("`data` is nested deeper than {MAX_DATA_DEPTH} levels"),
                        ));
                    }
                    Bytes::copy_from_slice(value.get().as_bytes())
                }
                (None, Some(b64)) => BASE64.decode(b64.as_bytes()).map(Bytes::from).map_err(|e| {
                    DecodeError::new(
                        id,
                        ErrorCode::BadRequest,
                        format!("`data_b64` is not base64: {e}"),
                    )
                })?,
                (Some(_), Some(_)) => {
                    return Err(DecodeError::new(
                        id,
                        ErrorCode::BadRequest,
                        "give either `data` or `data_b64`, not both",
                    ));
                }
                (None, None) => {
                    return Err(DecodeError::new(
                        id,
                        ErrorCode::BadRequest,
                        "missing field `data`",
                    ));
                }
            };
            Command::Publish { channel, data }
        }
        "ping" => Command::Ping,
        "refresh" => Command::Refresh {
            token: raw.token.unwrap_or_default(),
        },
        "presence" => Command::Presence {
            channel: channel(raw.channel)?,
        },
        "presence_stats" => Command::PresenceStats {
            channel: channel(raw.channel)?,
        },
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(DecodeError::new(
                id,
                ErrorCode::UnknownCommand,
                format!("unknown command type {shown:?}"),
            ));
        }
    };
    Ok(ClientCommand { id, command })
}

/// Every field any reply can carry; absent ones are left out of the JSON.
#[derive(Serialize, Default)]
struct Out<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ping_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    /// `true` on a server-side subscribe or unsubscribe; absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    server: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

/// A presence member as JSON: `info` is the token claim's JSON text,
/// embedded as it is.
#[derive(Serialize)]
struct OutMember<'a> {
    client: &'a str,
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a RawValue>,
}

impl<'a> OutMember<'a> {
    fn of(member: &'a Member) -> OutMember<'a> {
        OutMember {
            client: &member.client,
            user: &member.user,
            // Checked when the token was read; anything else is left out.
            info: member
                .info
                .as_deref()
                .and_then(|raw| std::str::from_utf8(raw).ok())
                .and_then(|text| serde_json::from_str::<&RawValue>(text).ok()),
        }
    }
}

/// The presence replies and events, which carry members.
#[derive(Serialize)]
#[serde(untagged)]
enum PresenceOut<'a> {
    List {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        members: Vec<OutMember<'a>>,
    },
    Stats {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        clients: u64,
        users: u64,
    },
    Join {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        member: OutMember<'a>,
        first: bool,
    },
    Leave {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        member: OutMember<'a>,
        last: bool,
    },
}

fn encode_presence(id: Option<u64>, reply: &Reply) -> Option<String> {
    let out = match reply {
        Reply::Presence { channel, members } => PresenceOut::List {
            kind: "presence",
            id,
            channel: channel.as_str(),
            members: members.iter().map(OutMember::of).collect(),
        },
        Reply::PresenceStats {
            channel,
            clients,
            users,
        } => PresenceOut::Stats {
            kind: "presence_stats",
            id,
            channel: channel.as_str(),
            clients: *clients,
            users: *users,
        },
        Reply::Join {
            channel,
            member,
            first,
        } => PresenceOut::Join {
            kind: "join",
            channel: channel.as_str(),
            member: OutMember::of(member),
            first: *first,
        },
        Reply::Leave {
            channel,
            member,
            last,
        } => PresenceOut::Leave {
            kind: "leave",
            channel: channel.as_str(),
            member: OutMember::of(member),
            last: *last,
        },
        _ => return None,
    };
    serde_json::to_string(&out).ok()
}

/// Encodes a reply or notice as one JSON text frame.
pub fn encode_reply(msg: &ServerMessage) -> String {
    let id = msg.id;
    let out = match &msg.reply {
        Reply::Connected {
            client,
            node,
            ping_interval_ms,
        } => Out {
            kind: "connected",
            id,
            client: Some(client),
            node: Some(node),
            ping_interval_ms: Some(*ping_interval_ms),
            ..Out::default()
        },
        Reply::Subscribed {
            channel,
            position,
            recovered,
            server,
        } => Out {
            kind: "subscribed",
            id,
            channel: Some(channel.as_str()),
            epoch: position.as_ref().map(|p| p.epoch.as_str()),
            offset: position.as_ref().map(|p| p.offset),
            recovered: *recovered,
            server: *server,
            ..Out::default()
        },
        Reply::Unsubscribed { channel, server } => Out {
            kind: "unsubscribed",
            id,
            channel: Some(channel.as_str()),
            server: *server,
            ..Out::default()
        },
        Reply::Published { channel, position } => Out {
            kind: "published",
            id,
            channel: Some(channel.as_str()),
            epoch: position.as_ref().map(|p| p.epoch.as_str()),
            offset: position.as_ref().map(|p| p.offset),
            ..Out::default()
        },
        Reply::Pong => Out {
            kind: "pong",
            id,
            ..Out::default()
        },
        Reply::Error { code, message } => Out {
            kind: "error",
            id,
            code: Some(code.as_str()),
            message: Some(message),
            ..Out::default()
        },
        Reply::Gap {
            channel,
            epoch,
            offset,
        } => Out {
            kind: "gap",
            id,
            channel: Some(channel.as_str()),
            epoch: Some(epoch),
            offset: Some(*offset),
            ..Out::default()
        },
        Reply::TokenExpiring { expires_in_ms } => Out {
            kind: "token_expiring",
            id,
            expires_in_ms: Some(*expires_in_ms),
            ..Out::default()
        },
        Reply::Refreshed { expires_in_ms } => Out {
            kind: "refreshed",
            id,
            expires_in_ms: Some(*expires_in_ms),
            ..Out::default()
        },
        presence @ (Reply::Presence { .. }
        | Reply::PresenceStats { .. }
        | Reply::Join { .. }
        | Reply::Leave { .. }) => {
            return encode_presence(id, presence)
                .unwrap_or_else(|| String::from(r#"{"type":"error","code":"internal"}"#));
        }
    };
    // Serializing a struct of strings and integers into a String cannot fail.
    serde_json::to_string(&out).unwrap_or_else(|_| String::from(r#"{"type":"error","code":"internal"}"#))
}

/// True when `data` is one complete JSON value (so it can be embedded as is).
pub fn is_json(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok_and(|text| serde_json::from_str::<IgnoredAny>(text).is_ok())
}

/// Encodes a publication as a `message` frame. Data that is valid JSON is
/// embedded verbatim as `data`; anything else travels as `data_b64`.
///
/// Called once per publication per encoding in use; the result is shared by
/// every subscriber.
pub fn encode_publication(p: &Publication) -> String {
    let mut out = String::with_capacity(p.data.len() + p.channel.as_str().len() + 64);
    out.push_str(r#"{"type":"message","channel":""#);
    // Channel names never need escaping (see `channel`).
    out.push_str(p.channel.as_str());
    out.push('"');
    match std::str::from_utf8(&p.data) {
        Ok(text) if serde_json::from_str::<IgnoredAny>(text).is_ok() => {
            out.push_str(r#","data":"#);
            out.push_str(text);
        }
        _ => {
            out.push_str(r#","data_b64":""#);
            BASE64.encode_string(&p.data, &mut out);
            out.push('"');
        }
    }
    if let Some(offset) = p.offset {
        let _ = write!(out, r#","offset":{offset}"#);
    }
    if let Some(epoch) = &p.epoch {
        out.push_str(r#","epoch":"#);
        // Epochs are generated by the broker, but escape them anyway.
        out.push_str(&serde_json::to_string(&**epoch).unwrap_or_default());
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelName;
    use serde_json::{Value, json};

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    fn decode_err(text: &str) -> DecodeError {
        decode_command(text).unwrap_err()
    }

    #[test]
    fn decodes_every_command() {
        let cases = [
            (
                r#"{"type":"connect","id":1,"token":"t"}"#,
                Some(1),
                Command::Connect { token: "t".into() },
            ),
            (
                r#"{"type":"connect"}"#,
                None,
                Command::Connect { token: String::new() },
            ),
            (
                r#"{"type":"subscribe","id":2,"channel":"news"}"#,
                Some(2),
                Command::Subscribe {
                    channel: ch("news"),
                    since: None,
                },
            ),
            (
                r#"{"type":"subscribe","id":2,"channel":"news","since":{"epoch":"e1","offset":41}}"#,
                Some(2),
                Command::Subscribe {
                    channel: ch("news"),
                    since: Some(StreamPosition {
                        epoch: "e1".into(),
                        offset: 41,
                    }),
                },
            ),
            (
                r#"{"type":"unsubscribe","id":3,"channel":"news"}"#,
                Some(3),
                Command::Unsubscribe { channel: ch("news") },
            ),
            (
                r#"{"type":"publish","id":4,"channel":"news","data":{"a": [1, 2]}}"#,
                Some(4),
                Command::Publish {
                    channel: ch("news"),
                    data: Bytes::from_static(br#"{"a": [1, 2]}"#),
                },
            ),
            (
                r#"{"type":"publish","channel":"news","data":null}"#,
                None,
                Command::Publish {
                    channel: ch("news"),
                    data: Bytes::from_static(b"null"),
                },
            ),
            (
                r#"{"type":"publish","channel":"news","data_b64":"AAEC"}"#,
                None,
                Command::Publish {
                    channel: ch("news"),
                    data: Bytes::from_static(&[0, 1, 2]),
                },
            ),
            (
                r#"{"type":"ping","id":5,"extra":"ignored"}"#,
                Some(5),
                Command::Ping,
            ),
            (
                r#"{"id":6,"type":"refresh","token":"t2"}"#,
                Some(6),
                Command::Refresh { token: "t2".into() },
            ),
            (
                r#"{"type":"presence","id":7,"channel":"room:1"}"#,
                Some(7),
                Command::Presence {
                    channel: ch("room:1"),
                },
            ),
            (
                r#"{"type":"presence_stats","id":8,"channel":"room:1"}"#,
                Some(8),
                Command::PresenceStats {
                    channel: ch("room:1"),
                },
            ),
        ];
        for (text, id, command) in cases {
            assert_eq!(decode_command(text), Ok(ClientCommand { id, command }), "{text}");
        }
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let cmd = decode_command(r#"{"type":"subscribe","channel":"n\u0065ws"}"#).unwrap();
        assert_eq!(
            cmd.command,
            Command::Subscribe {
                channel: ch("news"),
                since: None
            }
        );
    }

    #[test]
    fn rejects_malformed_input_with_the_right_code() {
        let cases = [
            ("not json", None, ErrorCode::BadRequest),
            ("[1,2]", None, ErrorCode::BadRequest),
            ("\"subscribe\"", None, ErrorCode::BadRequest),
            (r#"{"id":7}"#, Some(7), ErrorCode::BadRequest),
            (r#"{"type":"nope","id":8}"#, Some(8), ErrorCode::UnknownCommand),
            (r#"{"type":"subscribe","id":9}"#, Some(9), ErrorCode::BadRequest),
            (
                r#"{"type":"subscribe","id":10,"channel":"bad name"}"#,
                Some(10),
                ErrorCode::InvalidChannel,
            ),
            (
                r#"{"type":"subscribe","id":11,"channel":""}"#,
                Some(11),
                ErrorCode::InvalidChannel,
            ),
            (
                r#"{"type":"subscribe","id":12,"channel":5}"#,
                Some(12),
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"publish","id":13,"channel":"a"}"#,
                Some(13),
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"publish","id":14,"channel":"a","data":1,"data_b64":"AA=="}"#,
                Some(14),
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"publish","id":15,"channel":"a","data_b64":"!!"}"#,
                Some(15),
                ErrorCode::BadRequest,
            ),
            (r#"{"type":"ping","id":-1}"#, None, ErrorCode::BadRequest),
            (r#"{"type":"ping","id":1.5}"#, None, ErrorCode::BadRequest),
            (
                r#"{"type":"ping","id":18446744073709551616}"#,
                None,
                ErrorCode::BadRequest,
            ),
            (r#"{"type":"ping","type":"ping"}"#, None, ErrorCode::BadRequest),
            (
                r#"{"type":"subscribe","id":16,"channel":"a","since":{"offset":1}}"#,
                Some(16),
                ErrorCode::BadRequest,
            ),
        ];
        for (text, id, code) in cases {
            let err = decode_err(text);
            assert_eq!((err.id, err.code), (id, code), "{text}: {}", err.message);
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn deep_nesting_is_rejected_not_overflowing() {
        let nested = |depth: usize| {
            format!(
                r#"{{"type":"publish","id":1,"channel":"a","data":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        let err = decode_command(&nested(100_000)).err().map(|e| (e.id, e.code));
        assert_eq!(err, Some((Some(1), ErrorCode::BadRequest)));
        assert!(decode_command(&nested(MAX_DATA_DEPTH)).is_ok());
        let err = decode_command(&nested(MAX_DATA_DEPTH + 1)).err().map(|e| e.code);
        assert_eq!(err, Some(ErrorCode::BadRequest));
        // Brackets inside strings do not count.
        let in_string = format!(
            r#"{{"type":"publish","channel":"a","data":"{}\\\"{}"}}"#,
            "[".repeat(500),
            "{".repeat(500)
        );
        assert!(decode_command(&in_string).is_ok());
    }

    #[test]
    fn unknown_type_text_is_truncated_in_the_message() {
        let long = format!(r#"{{"type":"{}"}}"#, "x".repeat(10_000));
        assert!(decode_err(&long).message.len() < 200);
    }

    #[test]
    fn presence_replies_and_events_encode_as_documented() {
        let ann = Member {
            client: "n1-a-1".into(),
            user: "ann".into(),
            info: Some(Bytes::from_static(br#"{"name":"Ann"}"#)),
        };
        let anon = Member {
            client: "n2-b-2".into(),
            user: String::new(),
            info: None,
        };
        let cases = [
            (
                ServerMessage {
                    id: Some(7),
                    reply: Reply::Presence {
                        channel: ch("room:1"),
                        members: vec![ann.clone(), anon.clone()],
                    },
                },
                json!({"type":"presence","id":7,"channel":"room:1","members":[
                    {"client":"n1-a-1","user":"ann","info":{"name":"Ann"}},
                    {"client":"n2-b-2","user":""}]}),
            ),
            (
                ServerMessage {
                    id: Some(8),
                    reply: Reply::PresenceStats {
                        channel: ch("room:1"),
                        clients: 3,
                        users: 2,
                    },
                },
                json!({"type":"presence_stats","id":8,"channel":"room:1","clients":3,"users":2}),
            ),
            (
                ServerMessage {
                    id: None,
                    reply: Reply::Join {
                        channel: ch("room:1"),
                        member: ann.clone(),
                        first: true,
                    },
                },
                json!({"type":"join","channel":"room:1","member":
                    {"client":"n1-a-1","user":"ann","info":{"name":"Ann"}},"first":true}),
            ),
            (
                ServerMessage {
                    id: None,
                    reply: Reply::Leave {
                        channel: ch("room:1"),
                        member: anon,
                        last: false,
                    },
                },
                json!({"type":"leave","channel":"room:1","member":{"client":"n2-b-2","user":""},"last":false}),
            ),
        ];
        for (message, expected) in cases {
            let v: Value = serde_json::from_str(&encode_reply(&message)).unwrap();
            assert_eq!(v, expected);
        }
    }

    #[test]
    fn replies_encode_as_documented() {
        let cases = [
            (
                ServerMessage {
                    id: Some(1),
                    reply: Reply::Connected {
                        client: "c1".into(),
                        node: "n1".into(),
                        ping_interval_ms: 25000,
                    },
                },
                json!({"type":"connected","id":1,"client":"c1","node":"n1","ping_interval_ms":25000}),
            ),
            (
                ServerMessage {
                    id: Some(2),
                    reply: Reply::Subscribed {
                        channel: ch("news"),
                        position: None,
                        recovered: None,
                        server: false,
                    },
                },
                json!({"type":"subscribed","id":2,"channel":"news"}),
            ),
            (
                ServerMessage {
                    id: None,
                    reply: Reply::Subscribed {
                        channel: ch("news"),
                        position: Some(StreamPosition {
                            epoch: "e1".into(),
                            offset: 7,
                        }),
                        recovered: None,
                        server: true,
                    },
                },
                json!({"type":"subscribed","channel":"news","epoch":"e1","offset":7,"server":true}),
            ),
            (
                ServerMessage {
                    id: None,
                    reply: Reply::Unsubscribed {
                        channel: ch("news"),
                        server: true,
                    },
                },
                json!({"type":"unsubscribed","channel":"news","server":true}),
            ),
            (
                ServerMessage {
                    id: Some(2),
                    reply: Reply::Subscribed {
                        channel: ch("news"),
                        position: Some(StreamPosition {
                            epoch: "e1".into(),
                            offset: 7,
                        }),
                        recovered: Some(true),
                        server: false,
                    },
                },
                json!({"type":"subscribed","id":2,"channel":"news","epoch":"e1","offset":7,"recovered":true}),
            ),
            (
                ServerMessage {
                    id: Some(3),
                    reply: Reply::Unsubscribed {
                        channel: ch("news"),
                        server: false,
                    },
                },
                json!({"type":"unsubscribed","id":3,"channel":"news"}),
            ),
            (
                ServerMessage {
                    id: Some(4),
                    reply: Reply::Published {
                        channel: ch("news"),
                        position: None,
                    },
                },
                json!({"type":"published","id":4,"channel":"news"}),
            ),
            (
                ServerMessage {
                    id: Some(5),
                    reply: Reply::Pong,
                },
                json!({"type":"pong","id":5}),
            ),
            (
                ServerMessage {
                    id: None,
                    reply: Reply::Pong,
                },
                json!({"type":"pong"}),
            ),
            (
                ServerMessage {
                    id: None,
                    reply: Reply::Gap {
                        channel: ch("news"),
                        epoch: "e2".into(),
                        offset: 0,
                    },
                },
                json!({"type":"gap","channel":"news","epoch":"e2","offset":0}),
            ),
            (
                ServerMessage::error(None, ErrorCode::Unavailable, "broker \"down\""),
                json!({"type":"error","code":"unavailable","message":"broker \"down\""}),
            ),
        ];
        for (msg, expected) in cases {
            let text = encode_reply(&msg);
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn publication_embeds_json_and_base64_encodes_the_rest() {
        let p = Publication::new(ch("news"), Bytes::from_static(br#"{"x": "y"}"#));
        assert_eq!(
            encode_publication(&p),
            r#"{"type":"message","channel":"news","data":{"x": "y"}}"#
        );

        let p = Publication::new(ch("bin"), Bytes::from_static(&[0xff, 0, 1]));
        let v: Value = serde_json::from_str(&encode_publication(&p)).unwrap();
        assert_eq!(v, json!({"type":"message","channel":"bin","data_b64":"/wAB"}));

        // Two values, or a value and garbage, are not one JSON value.
        for not_one_value in [&b"1 2"[..], b"{} x", b"", b"hello"] {
            let p = Publication::new(ch("a"), Bytes::copy_from_slice(not_one_value));
            let v: Value = serde_json::from_str(&encode_publication(&p)).unwrap();
            assert!(v.get("data_b64").is_some(), "{not_one_value:?}");
        }

        let mut p = Publication::new(ch("a"), Bytes::from_static(b"1"));
        p.offset = Some(42);
        p.epoch = Some("e\"1".into());
        let v: Value = serde_json::from_str(&encode_publication(&p)).unwrap();
        assert_eq!(
            v,
            json!({"type":"message","channel":"a","data":1,"offset":42,"epoch":"e\"1"})
        );
    }

    #[test]
    fn is_json_accepts_one_value_only() {
        assert!(is_json(b" {\"a\":1} "));
        assert!(is_json(b"\"s\""));
        assert!(!is_json(b"1 2"));
        assert!(!is_json(&[0xff]));
    }
}
