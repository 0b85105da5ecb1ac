//! What the gateway sends to a client, before any transport has seen it.
//!
//! A [`Frame`] is one item of a connection's outbox: a publication shared
//! by every subscriber (encoded once per encoding, see [`Delivery`]), a
//! message for this client only (a reply or a notice, already in the
//! client's encoding), or a heartbeat. A [`CloseRequest`] ends the
//! connection with a code and a reason. Each transport turns these into its
//! own wire form: WebSocket frames (`transport::websocket`), or the events
//! of an HTTP stream; nothing else in the gateway knows a transport's types.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use crate::delivery::Delivery;

/// One queued item of a connection's outbox.
pub enum Frame {
    /// A publication (or gap notice) shared with other subscribers.
    Publication(Arc<Delivery>),
    /// A reply or notice for this client only, encoded in its encoding
    /// (JSON text or protobuf bytes).
    Message(Bytes),
    /// A transport-level heartbeat (a WebSocket ping).
    Ping,
}

impl Frame {
    /// What this frame counts against the client's outbound queue: the
    /// payload plus a fixed allowance for the framing around it.
    pub fn queued_size(&self) -> usize {
        match self {
            Frame::Publication(d) => d.queued_size(),
            Frame::Message(bytes) => bytes.len() + 16,
            Frame::Ping => 16,
        }
    }

    /// True for publications (what `gateway_messages_delivered_total`
    /// counts), as opposed to notices, replies and pings.
    pub fn is_publication(&self) -> bool {
        matches!(self, Frame::Publication(d) if d.is_publication())
    }
}

/// A request to end the connection with a close code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    pub code: u16,
    pub reason: &'static str,
    /// Write what is queued before closing (drain) or drop it (slow
    /// consumer, where the queue is the problem).
    pub flush_queue: bool,
    /// A suggested reconnect delay for the client. When set, the reason
    /// sent is `{"reason":"<reason>","reconnect_after_ms":N}`, so that
    /// drained clients spread their reconnects (docs/protocol.md).
    pub reconnect_after_ms: Option<u32>,
}

impl CloseRequest {
    /// A close that drops what is queued.
    pub fn now(code: u16, reason: &'static str) -> CloseRequest {
        CloseRequest {
            code,
            reason,
            flush_queue: false,
            reconnect_after_ms: None,
        }
    }

    /// The reason text sent to the client.
    pub fn reason_text(&self) -> Cow<'static, str> {
        match self.reconnect_after_ms {
            None => self.reason.into(),
            Some(ms) => format!(r#"{{"reason":"{}","reconnect_after_ms":{ms}}}"#, self.reason).into(),
        }
    }
}
