//! The event ids of `GET /sse`: where the stream stands in every channel
//! it follows, so that `Last-Event-ID` resumes all of them.
//!
//! An id lists, in the order of the request's `channel` parameters, each
//! channel's `<epoch>:<offset>` (the last publication or gap delivered, or
//! the position the subscription started at), separated by `;`; `-` stands
//! for a channel whose position is not known yet. One channel's id is
//! therefore just `<epoch>:<offset>`. A browser's `EventSource` sends the
//! last id back by itself when it reconnects; `curl` users pass it in the
//! `Last-Event-ID` header.

use pubsub_proto::{ChannelName, StreamPosition};

/// Longest `Last-Event-ID` accepted (the id of `--max-subscriptions`
/// channels stays far below).
const MAX_ID_LEN: usize = 16 * 1024;

/// The position of every followed channel.
pub(super) struct Positions {
    channels: Vec<(ChannelName, Option<StreamPosition>)>,
}

impl Positions {
    /// Positions for `channels`, unknown until the stream learns them.
    pub fn new(channels: Vec<ChannelName>) -> Positions {
        Positions {
            channels: channels.into_iter().map(|c| (c, None)).collect(),
        }
    }

    /// Positions read from a `Last-Event-ID` for the same `channels`.
    pub fn resume(channels: Vec<ChannelName>, id: &str) -> Result<Positions, String> {
        if id.len() > MAX_ID_LEN {
            return Err(format!("Last-Event-ID is longer than {MAX_ID_LEN} bytes"));
        }
        let parts: Vec<&str> = id.split(';').collect();
        if parts.len() != channels.len() {
            return Err(format!(
                "Last-Event-ID names {} positions for {} channels; resume with the same channel list",
                parts.len(),
                channels.len()
            ));
        }
        let mut positions = Positions::new(channels);
        for ((_, position), part) in positions.channels.iter_mut().zip(parts) {
            *position = parse_position(part.trim())?;
        }
        Ok(positions)
    }

    /// The channels, in order, with where each resumes from.
    pub fn channels(&self) -> impl Iterator<Item = (&ChannelName, Option<&StreamPosition>)> {
        self.channels.iter().map(|(c, p)| (c, p.as_ref()))
    }

    /// True when the stream knows where `channel` stands.
    pub fn known(&self, channel: &ChannelName) -> bool {
        self.channels.iter().any(|(c, p)| c == channel && p.is_some())
    }

    /// Records that `channel` is now at `epoch`/`offset`. False if nothing
    /// changed (a channel not followed, or the same position).
    pub fn advance(&mut self, channel: &ChannelName, epoch: &str, offset: u64) -> bool {
        let Some((_, position)) = self.channels.iter_mut().find(|(c, _)| c == channel) else {
            return false;
        };
        if position
            .as_ref()
            .is_some_and(|p| p.offset == offset && p.epoch == epoch)
        {
            return false;
        }
        *position = Some(StreamPosition {
            epoch: epoch.to_string(),
            offset,
        });
        true
    }

    /// Appends the event id for the positions now to `out` (written in
    /// place: this runs for every event of every stream).
    pub fn write_id(&self, out: &mut impl std::fmt::Write) {
        for (i, (_, position)) in self.channels.iter().enumerate() {
            let separator = if i > 0 { ";" } else { "" };
            // Writing into memory cannot fail.
            let _ = match position {
                Some(p) => write!(out, "{separator}{}:{}", p.epoch, p.offset),
                None => write!(out, "{separator}-"),
            };
        }
    }

    /// The event id for the positions now.
    #[cfg(test)]
    pub fn id(&self) -> String {
        let mut id = String::new();
        self.write_id(&mut id);
        id
    }
}

fn parse_position(part: &str) -> Result<Option<StreamPosition>, String> {
    if part == "-" {
        return Ok(None);
    }
    let bad = || format!("Last-Event-ID part {part:?} is not <epoch>:<offset> or -");
    let (epoch, offset) = part.rsplit_once(':').ok_or_else(bad)?;
    let offset = offset.parse::<u64>().map_err(|_| bad())?;
    // Epochs are short and alphanumeric; anything else did not come from us
    // (and must not reach a broker key or a reply unchecked). The empty
    // epoch is a channel without a stream yet, always at offset 0.
    let valid = if epoch.is_empty() {
        offset == 0
    } else {
        epoch.len() <= 64
            && epoch
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !valid {
        return Err(bad());
    }
    Ok(Some(StreamPosition {
        epoch: epoch.to_string(),
        offset,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<ChannelName> {
        list.iter().map(|n| ChannelName::parse(n).unwrap()).collect()
    }

    #[test]
    fn ids_round_trip() {
        let mut positions = Positions::new(names(&["news", "sport"]));
        assert_eq!(positions.id(), "-;-");
        assert!(positions.advance(&ChannelName::parse("sport").unwrap(), "e1", 7));
        assert!(!positions.advance(&ChannelName::parse("sport").unwrap(), "e1", 7));
        assert!(!positions.advance(&ChannelName::parse("other").unwrap(), "e1", 7));
        assert_eq!(positions.id(), "-;e1:7");
        let resumed = Positions::resume(names(&["news", "sport"]), &positions.id()).unwrap();
        let got: Vec<_> = resumed.channels().map(|(_, p)| p.cloned()).collect();
        assert_eq!(
            got,
            vec![
                None,
                Some(StreamPosition {
                    epoch: "e1".into(),
                    offset: 7
                })
            ]
        );
    }

    #[test]
    fn bad_ids_are_refused() {
        let two = || names(&["a", "b"]);
        assert!(Positions::resume(two(), "e1:1").is_err());
        assert!(Positions::resume(two(), "e1:1;e2:x").is_err());
        assert!(Positions::resume(two(), "e1:1;e\"2:3").is_err());
        assert!(Positions::resume(two(), "e1:1;:3").is_err());
        assert!(Positions::resume(names(&["a"]), &"x".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(Positions::resume(two(), "e1:1; - ").is_ok());
        // A channel without a stream yet: the empty epoch, at 0 only.
        assert!(Positions::resume(two(), "e1:1;:0").is_ok());
    }
}
