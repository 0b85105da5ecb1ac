//! The envelope a publication travels in between nodes (see
//! `pubsub/v1/broker.proto`). Brokers encode and decode it; clients never
//! see it.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;

use crate::channel::ChannelName;
use crate::message::Publication;
use crate::pb;

/// The envelope version this code writes and reads.
pub const VERSION: u32 = 1;

/// A decoded envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub publication: Publication,
    /// Node id of the publisher.
    pub node: String,
    /// Microseconds since the Unix epoch when the publisher sent it.
    pub published_at_us: u64,
}

/// Why an envelope was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a protobuf envelope: {0}")]
    Malformed(String),
    #[error("envelope version {0} is not supported (this node reads version {VERSION})")]
    Version(u32),
    #[error("envelope names an invalid channel: {0}")]
    Channel(String),
}

/// Encodes a publication for the broker.
pub fn encode(publication: &Publication, node: &str, published_at_us: u64) -> Vec<u8> {
    pb::Envelope {
        version: VERSION,
        channel: publication.channel.to_string(),
        data: publication.data.clone(),
        node: node.to_owned(),
        published_at_us,
        offset: publication.offset,
        epoch: publication.epoch.as_deref().map(str::to_owned),
    }
    .encode_to_vec()
}

/// Decodes an envelope; `data` is a slice of `bytes`, not a copy.
pub fn decode(bytes: Bytes) -> Result<Envelope, EnvelopeError> {
    let raw = pb::Envelope::decode(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    if raw.version != VERSION {
        return Err(EnvelopeError::Version(raw.version));
    }
    let channel = ChannelName::parse(&raw.channel).map_err(|e| EnvelopeError::Channel(e.to_string()))?;
    Ok(Envelope {
        publication: Publication {
            channel,
            data: raw.data,
            offset: raw.offset,
            epoch: raw.epoch.map(Arc::from),
        },
        node: raw.node,
        published_at_us: raw.published_at_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_what_it_cannot_read() {
        let mut p = Publication::new(ChannelName::parse("news").unwrap(), Bytes::from_static(b"{}"));
        p.offset = Some(7);
        p.epoch = Some(Arc::from("e1"));
        let bytes = Bytes::from(encode(&p, "node-1", 1234));
        let e = decode(bytes).unwrap();
        assert_eq!(
            (e.publication, e.node.as_str(), e.published_at_us),
            (p, "node-1", 1234)
        );

        assert!(matches!(
            decode(Bytes::from_static(b"\xff\xff")),
            Err(EnvelopeError::Malformed(_))
        ));
        let future = pb::Envelope {
            version: 2,
            channel: "a".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(decode(Bytes::from(future)), Err(EnvelopeError::Version(2)));
        let bad = pb::Envelope {
            version: 1,
            channel: "a b".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(matches!(decode(Bytes::from(bad)), Err(EnvelopeError::Channel(_))));
    }
}
