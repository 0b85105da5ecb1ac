//! Encode once, share everywhere.
//!
//! A [`Delivery`] is one thing on its way to a channel's local subscribers:
//! a publication, a gap notice, or an event (a presence join or leave). The first subscriber of each encoding
//! encodes the frame; every other subscriber clones the same
//! reference-counted bytes. No subscriber copies or re-serializes a payload.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use pubsub_proto::{ChannelName, Encoding, Publication, Reply, ServerMessage, json, protobuf};

enum Content {
    Publication(Publication),
    Gap(ServerMessage),
    Event(ServerMessage),
}

/// One publication or notice, with its frames cached per encoding.
pub struct Delivery {
    content: Content,
    json: OnceLock<Bytes>,
    protobuf: OnceLock<Bytes>,
    /// The encoded bytes deflated (JSON, protobuf), made by the first
    /// subscriber with compression; `None` inside: not worth it.
    deflated: [OnceLock<Option<Bytes>>; 2],
}

impl Delivery {
    pub fn new(publication: Publication) -> Arc<Delivery> {
        Self::with(Content::Publication(publication))
    }

    /// A gap notice: publications up to `offset` in `epoch` were lost.
    pub fn gap(channel: ChannelName, epoch: Arc<str>, offset: u64) -> Arc<Delivery> {
        Self::with(Content::Gap(ServerMessage {
            id: None,
            reply: Reply::Gap {
                channel,
                epoch: epoch.to_string(),
                offset,
            },
        }))
    }

    /// A notice for every subscriber that is neither a publication nor a
    /// gap (a presence `join` or `leave`).
    pub fn event(message: ServerMessage) -> Arc<Delivery> {
        Self::with(Content::Event(message))
    }

    fn with(content: Content) -> Arc<Delivery> {
        Arc::new(Delivery {
            content,
            json: OnceLock::new(),
            protobuf: OnceLock::new(),
            deflated: Default::default(),
        })
    }

    /// The publication's offset; `None` for notices.
    pub fn offset(&self) -> Option<u64> {
        match &self.content {
            Content::Publication(p) => p.offset,
            Content::Gap(_) | Content::Event(_) => None,
        }
    }

    /// The channel and the stream position this delivery moves its
    /// subscribers to: a publication's epoch and offset, or the end of a
    /// gap. `None` for events and publications without a position.
    pub fn position(&self) -> Option<(&ChannelName, &str, u64)> {
        match &self.content {
            Content::Publication(p) => Some((&p.channel, p.epoch.as_deref()?, p.offset?)),
            Content::Gap(ServerMessage {
                reply:
                    Reply::Gap {
                        channel,
                        epoch,
                        offset,
                    },
                ..
            }) => Some((channel, epoch.as_str(), *offset)),
            Content::Gap(_) | Content::Event(_) => None,
        }
    }

    pub fn is_gap(&self) -> bool {
        matches!(self.content, Content::Gap(_))
    }

    /// True for publications (what `gateway_messages_delivered_total` counts).
    pub fn is_publication(&self) -> bool {
        matches!(self.content, Content::Publication(_))
    }

    /// What this delivery counts against a client's outbound queue: the
    /// payload plus a fixed allowance for the frame around it.
    pub fn queued_size(&self) -> usize {
        match &self.content {
            Content::Publication(p) => p.data.len() + p.channel.as_str().len() + 64,
            Content::Gap(_) => 128,
            Content::Event(_) => 256,
        }
    }

    /// The encoded publication (or notice) for a client using `encoding`:
    /// JSON text or protobuf bytes, the same allocation for every
    /// subscriber.
    pub fn encoded(&self, encoding: Encoding) -> Bytes {
        match encoding {
            Encoding::Json => self
                .json
                .get_or_init(|| {
                    Bytes::from(match &self.content {
                        Content::Publication(p) => json::encode_publication(p),
                        Content::Gap(notice) | Content::Event(notice) => json::encode_reply(notice),
                    })
                })
                .clone(),
            Encoding::Protobuf => self
                .protobuf
                .get_or_init(|| {
                    Bytes::from(match &self.content {
                        Content::Publication(p) => protobuf::encode_publication(p),
                        Content::Gap(notice) | Content::Event(notice) => protobuf::encode_reply(notice),
                    })
                })
                .clone(),
        }
    }
}

impl Delivery {
    /// The encoded bytes compressed by `compress` (raw deflate without
    /// context, so the result is the same for everyone): computed by the
    /// first caller per encoding, shared by all others. `None` when
    /// `compress` found it not worth it.
    pub fn deflated(
        &self,
        encoding: Encoding,
        compress: impl FnOnce(&[u8]) -> Option<Bytes>,
    ) -> Option<Bytes> {
        let slot = match encoding {
            Encoding::Json => 0,
            Encoding::Protobuf => 1,
        };
        self.deflated[slot]
            .get_or_init(|| compress(&self.encoded(encoding)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_encoded_once_and_shared() {
        let d = Delivery::new(Publication::new(
            ChannelName::parse("news").unwrap(),
            Bytes::from_static(b"{\"a\":1}"),
        ));
        let (a, b) = (d.encoded(Encoding::Json), d.encoded(Encoding::Json));
        assert_eq!(&a[..], br#"{"type":"message","channel":"news","data":{"a":1}}"#);
        // Same allocation, not an equal copy.
        assert_eq!(a.as_ptr(), b.as_ptr());
        let (x, y) = (d.encoded(Encoding::Protobuf), d.encoded(Encoding::Protobuf));
        assert_eq!(x.as_ptr(), y.as_ptr());
    }

    #[test]
    fn gap_notices_are_frames_too() {
        let d = Delivery::gap(ChannelName::parse("news").unwrap(), Arc::from("e2"), 0);
        assert!(d.is_gap() && !d.is_publication() && d.offset().is_none());
        assert_eq!(
            &d.encoded(Encoding::Json)[..],
            br#"{"type":"gap","channel":"news","epoch":"e2","offset":0}"#
        );
    }
}
