//! The protobuf encoding (`pubsub.v1.proto`): one `ClientCommand` or
//! `ServerMessage` (see `pubsub/v1/protocol.proto`) per binary frame.
//!
//! Decoding from [`Bytes`] is zero-copy for `data`: prost slices the frame.

use bytes::Bytes;
use prost::Message as _;

use crate::message::{
    ClientCommand, Command, DecodeError, ErrorCode, Member, Publication, Reply, ServerMessage,
    StreamPosition, parse_channel,
};
use crate::pb;

/// Decodes one binary command frame.
pub fn decode_command(frame: Bytes) -> Result<ClientCommand, DecodeError> {
    let raw = pb::ClientCommand::decode(frame).map_err(|e| {
        DecodeError::new(
            None,
            ErrorCode::BadRequest,
            format!("malformed protobuf command: {e}"),
        )
    })?;
    let id = raw.id;
    use pb::client_command::Command as C;
    let command = match raw.command {
        Some(C::Connect(c)) => Command::Connect { token: c.token },
        Some(C::Subscribe(s)) => Command::Subscribe {
            channel: parse_channel(id, &s.channel)?,
            since: s.since.map(|p| StreamPosition {
                epoch: p.epoch,
                offset: p.offset,
            }),
        },
        Some(C::Unsubscribe(u)) => Command::Unsubscribe {
            channel: parse_channel(id, &u.channel)?,
        },
        Some(C::Publish(p)) => Command::Publish {
            channel: parse_channel(id, &p.channel)?,
            data: p.data,
        },
        Some(C::Ping(_)) => Command::Ping,
        Some(C::Refresh(r)) => Command::Refresh { token: r.token },
        Some(C::Presence(p)) => Command::Presence {
            channel: parse_channel(id, &p.channel)?,
        },
        Some(C::PresenceStats(p)) => Command::PresenceStats {
            channel: parse_channel(id, &p.channel)?,
        },
        None => {
            return Err(DecodeError::new(
                id,
                ErrorCode::UnknownCommand,
                "command is empty or of a type this server does not know",
            ));
        }
    };
    Ok(ClientCommand { id, command })
}

/// Encodes a command (used by clients: tests, the load generator).
pub fn encode_command(cmd: &ClientCommand) -> Vec<u8> {
    use pb::client_command::Command as C;
    let command = match &cmd.command {
        Command::Connect { token } => C::Connect(pb::Connect { token: token.clone() }),
        Command::Subscribe { channel, since } => C::Subscribe(pb::Subscribe {
            channel: channel.to_string(),
            since: since.as_ref().map(|p| pb::StreamPosition {
                epoch: p.epoch.clone(),
                offset: p.offset,
            }),
        }),
        Command::Unsubscribe { channel } => C::Unsubscribe(pb::Unsubscribe {
            channel: channel.to_string(),
        }),
        Command::Publish { channel, data } => C::Publish(pb::Publish {
            channel: channel.to_string(),
            data: data.clone(),
        }),
        Command::Ping => C::Ping(pb::Ping {}),
        Command::Refresh { token } => C::Refresh(pb::Refresh { token: token.clone() }),
        Command::Presence { channel } => C::Presence(pb::Presence {
            channel: channel.to_string(),
        }),
        Command::PresenceStats { channel } => C::PresenceStats(pb::PresenceStats {
            channel: channel.to_string(),
        }),
    };
    pb::ClientCommand {
        id: cmd.id,
        command: Some(command),
    }
    .encode_to_vec()
}

/// Encodes a reply or notice as one binary frame.
pub fn encode_reply(msg: &ServerMessage) -> Vec<u8> {
    use pb::server_message::Kind as K;
    let kind = match &msg.reply {
        Reply::Connected {
            client,
            node,
            ping_interval_ms,
        } => K::Connected(pb::Connected {
            client: client.clone(),
            node: node.clone(),
            ping_interval_ms: *ping_interval_ms,
        }),
        Reply::Subscribed {
            channel,
            position,
            recovered,
            server,
        } => K::Subscribed(pb::Subscribed {
            channel: channel.to_string(),
            epoch: position.as_ref().map(|p| p.epoch.clone()),
            offset: position.as_ref().map(|p| p.offset),
            recovered: *recovered,
            server: *server,
        }),
        Reply::Unsubscribed { channel, server } => K::Unsubscribed(pb::Unsubscribed {
            channel: channel.to_string(),
            server: *server,
        }),
        Reply::Published { channel, position } => K::Published(pb::Published {
            channel: channel.to_string(),
            offset: position.as_ref().map(|p| p.offset),
            epoch: position.as_ref().map(|p| p.epoch.clone()),
        }),
        Reply::Pong => K::Pong(pb::Pong {}),
        Reply::Error { code, message } => K::Error(pb::Error {
            code: code.as_str().to_owned(),
            message: message.clone(),
        }),
        Reply::Gap {
            channel,
            epoch,
            offset,
        } => K::Gap(pb::Gap {
            channel: channel.to_string(),
            epoch: epoch.clone(),
            offset: *offset,
        }),
        Reply::TokenExpiring { expires_in_ms } => K::TokenExpiring(pb::TokenExpiring {
            expires_in_ms: *expires_in_ms,
        }),
        Reply::Refreshed { expires_in_ms } => K::Refreshed(pb::Refreshed {
            expires_in_ms: *expires_in_ms,
        }),
        Reply::Presence { channel, members } => K::Presence(pb::PresenceReply {
            channel: channel.to_string(),
            members: members.iter().map(member).collect(),
        }),
        Reply::PresenceStats {
            channel,
            clients,
            users,
        } => K::PresenceStats(pb::PresenceStatsReply {
            channel: channel.to_string(),
            clients: *clients,
            users: *users,
        }),
        Reply::Join {
            channel,
            member: who,
            first,
        } => K::Join(pb::Join {
            channel: channel.to_string(),
            member: Some(member(who)),
            first: *first,
        }),
        Reply::Leave {
            channel,
            member: who,
            last,
        } => K::Leave(pb::Leave {
            channel: channel.to_string(),
            member: Some(member(who)),
            last: *last,
        }),
    };
    pb::ServerMessage {
        id: msg.id,
        kind: Some(kind),
    }
    .encode_to_vec()
}

fn member(m: &Member) -> pb::Member {
    pb::Member {
        client: m.client.clone(),
        user: m.user.clone(),
        info: m.info.clone(),
    }
}

/// Encodes a publication as a `Message` frame. Called once per publication;
/// the bytes are shared by every protobuf subscriber.
pub fn encode_publication(p: &Publication) -> Vec<u8> {
    pb::ServerMessage {
        id: None,
        kind: Some(pb::server_message::Kind::Message(pb::Message {
            channel: p.channel.to_string(),
            data: p.data.clone(),
            offset: p.offset,
            epoch: p.epoch.as_deref().map(str::to_owned),
        })),
    }
    .encode_to_vec()
}

/// Decodes a server frame (used by clients: tests, the load generator).
pub fn decode_server_message(frame: Bytes) -> Result<pb::ServerMessage, prost::DecodeError> {
    pb::ServerMessage::decode(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelName;

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    #[test]
    fn commands_round_trip() {
        let commands = [
            ClientCommand {
                id: Some(1),
                command: Command::Connect { token: "t".into() },
            },
            ClientCommand {
                id: Some(2),
                command: Command::Subscribe {
                    channel: ch("news"),
                    since: Some(StreamPosition {
                        epoch: "e".into(),
                        offset: 9,
                    }),
                },
            },
            ClientCommand {
                id: None,
                command: Command::Subscribe {
                    channel: ch("a:b"),
                    since: None,
                },
            },
            ClientCommand {
                id: Some(3),
                command: Command::Unsubscribe { channel: ch("news") },
            },
            ClientCommand {
                id: Some(u64::MAX),
                command: Command::Publish {
                    channel: ch("news"),
                    data: Bytes::from_static(&[0, 159, 146, 150]),
                },
            },
            ClientCommand {
                id: Some(0),
                command: Command::Ping,
            },
            ClientCommand {
                id: None,
                command: Command::Refresh { token: "r".into() },
            },
            ClientCommand {
                id: Some(8),
                command: Command::Presence {
                    channel: ch("room:1"),
                },
            },
            ClientCommand {
                id: None,
                command: Command::PresenceStats {
                    channel: ch("room:1"),
                },
            },
        ];
        for cmd in commands {
            let bytes = Bytes::from(encode_command(&cmd));
            assert_eq!(decode_command(bytes), Ok(cmd));
        }
    }

    #[test]
    fn rejects_garbage_and_bad_fields() {
        let err = decode_command(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff])).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);

        // A command with an id but no known command type.
        let empty = pb::ClientCommand {
            id: Some(4),
            command: None,
        }
        .encode_to_vec();
        let err = decode_command(Bytes::from(empty)).unwrap_err();
        assert_eq!((err.id, err.code), (Some(4), ErrorCode::UnknownCommand));

        let bad_channel = pb::ClientCommand {
            id: Some(5),
            command: Some(pb::client_command::Command::Subscribe(pb::Subscribe {
                channel: "no spaces".into(),
                since: None,
            })),
        }
        .encode_to_vec();
        let err = decode_command(Bytes::from(bad_channel)).unwrap_err();
        assert_eq!((err.id, err.code), (Some(5), ErrorCode::InvalidChannel));

        // Invalid UTF-8 in a string field is a malformed command.
        let mut raw = pb::ClientCommand {
            id: None,
            command: Some(pb::client_command::Command::Unsubscribe(pb::Unsubscribe {
                channel: "ab".into(),
            })),
        }
        .encode_to_vec();
        let last = raw.len() - 1;
        raw[last] = 0xff;
        assert_eq!(
            decode_command(Bytes::from(raw)).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn replies_and_publications_decode_back() {
        let msg = ServerMessage::error(Some(7), ErrorCode::NotSubscribed, "not subscribed to news");
        let pb = decode_server_message(Bytes::from(encode_reply(&msg))).unwrap();
        assert_eq!(pb.id, Some(7));
        match pb.kind {
            Some(pb::server_message::Kind::Error(e)) => {
                assert_eq!(e.code, "not_subscribed");
                assert_eq!(e.message, "not subscribed to news");
            }
            other => panic!("unexpected {other:?}"),
        }

        let mut p = Publication::new(ch("news"), Bytes::from_static(b"\x00\x01"));
        p.offset = Some(3);
        let pb = decode_server_message(Bytes::from(encode_publication(&p))).unwrap();
        match pb.kind {
            Some(pb::server_message::Kind::Message(m)) => {
                assert_eq!(
                    (m.channel.as_str(), &m.data[..], m.offset, m.epoch),
                    ("news", &b"\x00\x01"[..], Some(3), None)
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
