//! The messages of protocol v1 in their Rust form, independent of encoding.
//!
//! Decoders ([`crate::json`], [`crate::protobuf`]) turn a frame into a
//! [`ClientCommand`] or a [`DecodeError`] that still carries the command's
//! `id` where it could be read, so the error reply can echo it. Encoders turn
//! a [`ServerMessage`] or a [`Publication`] into a frame.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::channel::ChannelName;

/// A command from a client, with the optional id its reply echoes.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientCommand {
    pub id: Option<u64>,
    pub command: Command,
}

/// What a client asks the gateway to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Start the session, optionally authenticating with a token.
    Connect { token: String },
    /// Receive every publication on `channel`; with `since`, first replay
    /// what was published after that position.
    Subscribe {
        channel: ChannelName,
        since: Option<StreamPosition>,
    },
    /// Stop receiving publications on `channel`.
    Unsubscribe { channel: ChannelName },
    /// Publish `data` to every subscriber of `channel`. JSON clients send a
    /// JSON value (kept as its raw text) or base64 bytes; protobuf clients
    /// send bytes.
    Publish { channel: ChannelName, data: Bytes },
    /// Application-level heartbeat (browsers cannot see WebSocket pings).
    Ping,
    /// Replace the connection's token before it expires.
    Refresh { token: String },
    /// Who is in `channel` (its presence namespace keeps a member list).
    Presence { channel: ChannelName },
    /// How many clients and distinct users are in `channel`.
    PresenceStats { channel: ChannelName },
}

impl Command {
    /// The command's name as it appears in the JSON `type` field.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Connect { .. } => "connect",
            Command::Subscribe { .. } => "subscribe",
            Command::Unsubscribe { .. } => "unsubscribe",
            Command::Publish { .. } => "publish",
            Command::Ping => "ping",
            Command::Refresh { .. } => "refresh",
            Command::Presence { .. } => "presence",
            Command::PresenceStats { .. } => "presence_stats",
        }
    }
}

/// A position in a channel's stream: the epoch names the sequence, the
/// offset counts publications within it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    pub epoch: String,
    pub offset: u64,
}

/// A message from the server, with the id of the command it answers.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerMessage {
    pub id: Option<u64>,
    pub reply: Reply,
}

impl ServerMessage {
    /// An error reply to the command with `id`.
    pub fn error(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage {
            id,
            reply: Reply::Error {
                code,
                message: message.into(),
            },
        }
    }
}

/// Replies and notices from the server, other than publications (which are
/// encoded once per publication through [`Publication`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Connected {
        client: String,
        node: String,
        ping_interval_ms: u64,
    },
    Subscribed {
        channel: ChannelName,
        position: Option<StreamPosition>,
        recovered: Option<bool>,
        /// A server-side subscription (`POST /api/subscribe`), not the
        /// answer to a command.
        server: bool,
    },
    Unsubscribed {
        channel: ChannelName,
        /// Removed by the server (`POST /api/unsubscribe`).
        server: bool,
    },
    Published {
        channel: ChannelName,
        position: Option<StreamPosition>,
    },
    Pong,
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Publications up to `offset` in `epoch` could not be delivered (the
    /// node could not fill a hole from history); the stream continues after
    /// `offset`. The client should resync its state from its backend.
    Gap {
        channel: ChannelName,
        epoch: String,
        offset: u64,
    },
    /// The token expires in `expires_in_ms`: send `refresh` with a new one.
    TokenExpiring {
        expires_in_ms: u64,
    },
    /// A `refresh` was accepted; the new token expires in `expires_in_ms`.
    Refreshed {
        expires_in_ms: u64,
    },
    /// The members of `channel` (answers `presence`).
    Presence {
        channel: ChannelName,
        members: Vec<Member>,
    },
    /// The number of clients and distinct users in `channel` (answers
    /// `presence_stats`).
    PresenceStats {
        channel: ChannelName,
        clients: u64,
        users: u64,
    },
    /// A member joined `channel`; `first`: the user's first connection in
    /// it (the user joined, not just another tab).
    Join {
        channel: ChannelName,
        member: Member,
        first: bool,
    },
    /// A member left `channel`; `last`: it was the user's last connection
    /// in it (the user left).
    Leave {
        channel: ChannelName,
        member: Member,
        last: bool,
    },
}

/// One connection in a channel's presence.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    /// The client id (`connected.client`), unique across nodes.
    pub client: String,
    /// The token's `sub`; empty for an anonymous connection.
    pub user: String,
    /// The token's `info` claim as JSON text, if it had one.
    pub info: Option<Bytes>,
}

/// A publication on a channel, as delivered to subscribers.
///
/// `data` is opaque bytes. Publications from JSON clients and the HTTP API
/// carry the raw JSON text of the published value; protobuf clients may
/// publish any bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub channel: ChannelName,
    pub data: Bytes,
    /// Position in the channel's stream, where the broker tracks one.
    pub offset: Option<u64>,
    pub epoch: Option<Arc<str>>,
}

impl Publication {
    /// A publication without a stream position.
    pub fn new(channel: ChannelName, data: Bytes) -> Self {
        Publication {
            channel,
            data,
            offset: None,
            epoch: None,
        }
    }
}

/// Error codes of `error` replies. Their string forms are a contract with
/// clients; see docs/protocol.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The command could not be parsed or misses a required field.
    BadRequest,
    /// The command's `type` is not one this server knows.
    UnknownCommand,
    /// The channel name breaks the channel-name rules.
    InvalidChannel,
    /// The session is already subscribed to the channel.
    AlreadySubscribed,
    /// The session is not subscribed to the channel.
    NotSubscribed,
    /// The published data is over the publication size limit.
    TooLarge,
    /// The broker is unreachable; nothing was done. Retry later.
    Unavailable,
    /// A bug or an unexpected failure on the server.
    Internal,
    /// Authentication is required, or the token is invalid or expired.
    Unauthorized,
    /// The connection's identity may not do this (subscribe or publish to
    /// this channel).
    Forbidden,
    /// A per-connection limit was reached (subscriptions).
    LimitExceeded,
    /// Too many publications; slow down.
    RateLimited,
    /// The channel's namespace does not offer this (presence, join and
    /// leave events).
    NotAvailable,
}

impl ErrorCode {
    /// The code's wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotAvailable => "not_available",
        }
    }

    /// Parses a code's wire form.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "bad_request" => ErrorCode::BadRequest,
            "unknown_command" => ErrorCode::UnknownCommand,
            "invalid_channel" => ErrorCode::InvalidChannel,
            "already_subscribed" => ErrorCode::AlreadySubscribed,
            "not_subscribed" => ErrorCode::NotSubscribed,
            "too_large" => ErrorCode::TooLarge,
            "unavailable" => ErrorCode::Unavailable,
            "internal" => ErrorCode::Internal,
            "unauthorized" => ErrorCode::Unauthorized,
            "forbidden" => ErrorCode::Forbidden,
            "limit_exceeded" => ErrorCode::LimitExceeded,
            "rate_limited" => ErrorCode::RateLimited,
            "not_available" => ErrorCode::NotAvailable,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A frame that did not decode into a command. The session answers it with
/// an `error` reply and keeps the connection open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The command's id, if it could be read.
    pub id: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
}

impl DecodeError {
    pub(crate) fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        DecodeError {
            id,
            code,
            message: message.into(),
        }
    }

    /// The error reply that answers this frame.
    pub fn into_reply(self) -> ServerMessage {
        ServerMessage::error(self.id, self.code, self.message)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for DecodeError {}

/// Parses a channel name inside a command, mapping failure to the
/// `invalid_channel` error that echoes the command's id.
pub(crate) fn parse_channel(id: Option<u64>, name: &str) -> Result<ChannelName, DecodeError> {
    ChannelName::parse(name).map_err(|e| DecodeError::new(id, ErrorCode::InvalidChannel, e.to_string()))
}
