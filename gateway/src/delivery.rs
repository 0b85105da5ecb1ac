//! Encode once, share everywhere.
//!
//! A [`Delivery`] wraps one publication on its way to local subscribers. The
//! first subscriber of each encoding encodes the frame; every other
//! subscriber clones the same reference-counted bytes. No subscriber copies
//! or re-serializes the payload.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use pubsub_proto::{Encoding, Publication, json, protobuf};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// One publication, with its frames cached per encoding.
pub struct Delivery {
    publication: Publication,
    json: OnceLock<Utf8Bytes>,
    protobuf: OnceLock<Bytes>,
}

impl Delivery {
    pub fn new(publication: Publication) -> Arc<Delivery> {
        Arc::new(Delivery {
            publication,
            json: OnceLock::new(),
            protobuf: OnceLock::new(),
        })
    }

    pub fn publication(&self) -> &Publication {
        &self.publication
    }

    /// What this delivery counts against a client's outbound queue: the
    /// payload plus a fixed allowance for the frame around it.
    pub fn queued_size(&self) -> usize {
        self.publication.data.len() + self.publication.channel.as_str().len() + 32
    }

    /// The WebSocket message for a client using `encoding`.
    pub fn message(&self, encoding: Encoding) -> Message {
        match encoding {
            Encoding::Json => Message::Text(
                self.json
                    .get_or_init(|| Utf8Bytes::from(json::encode_publication(&self.publication)))
                    .clone(),
            ),
            Encoding::Protobuf => Message::Binary(
                self.protobuf
                    .get_or_init(|| Bytes::from(protobuf::encode_publication(&self.publication)))
                    .clone(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pubsub_proto::ChannelName;

    #[test]
    fn frames_are_encoded_once_and_shared() {
        let d = Delivery::new(Publication::new(
            ChannelName::parse("news").unwrap(),
            Bytes::from_static(b"{\"a\":1}"),
        ));
        let (Message::Text(a), Message::Text(b)) = (d.message(Encoding::Json), d.message(Encoding::Json))
        else {
            panic!("JSON deliveries are text frames");
        };
        assert_eq!(
            a.as_str(),
            r#"{"type":"message","channel":"news","data":{"a":1}}"#
        );
        // Same allocation, not an equal copy.
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());

        let (Message::Binary(x), Message::Binary(y)) =
            (d.message(Encoding::Protobuf), d.message(Encoding::Protobuf))
        else {
            panic!("protobuf deliveries are binary frames");
        };
        assert_eq!(x.as_ptr(), y.as_ptr());
    }
}
