//! Channel names: validation and a cheaply clonable, shareable form.
//!
//! A channel name is 1 to 255 bytes of `A-Z a-z 0-9 _ - . : @ / = #`. The
//! part before the first `:` is the namespace, which later configuration
//! (history, permissions) keys on. The character set is deliberately free of
//! anything JSON or Redis would need to escape, so encoders can copy names
//! verbatim.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// A validated channel name. Cloning shares the allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a string is not a valid channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidChannel {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {0} bytes long; the limit is 255")]
    TooLong(usize),
    #[error("channel name contains {0:?}; allowed are A-Z a-z 0-9 and _ - . : @ / = #")]
    BadChar(char),
}

impl ChannelName {
    /// Validates `name` and returns it as a channel name.
    pub fn parse(name: &str) -> Result<Self, InvalidChannel> {
        validate(name)?;
        Ok(ChannelName(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace: the part before the first `:`, if there is one.
    pub fn namespace(&self) -> Option<&str> {
        self.0.split_once(':').map(|(ns, _)| ns)
    }
}

/// Checks the channel-name rules without allocating.
pub fn validate(name: &str) -> Result<(), InvalidChannel> {
    if name.is_empty() {
        return Err(InvalidChannel::Empty);
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(InvalidChannel::TooLong(name.len()));
    }
    match name.bytes().find(|b| !is_channel_byte(*b)) {
        None => Ok(()),
        // Report the whole (possibly multi-byte) character for a clear message.
        Some(_) => {
            let bad = name
                .chars()
                .find(|c| !c.is_ascii() || !is_channel_byte(*c as u8))
                .unwrap_or('?');
            Err(InvalidChannel::BadChar(bad))
        }
    }
}

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'/' | b'=' | b'#')
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for ChannelName {
    type Error = InvalidChannel;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        ChannelName::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_allowed_character() {
        let all = "AZaz09_-.:@/=#";
        assert_eq!(ChannelName::parse(all).unwrap().as_str(), all);
        assert!(ChannelName::parse(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(ChannelName::parse(""), Err(InvalidChannel::Empty));
        assert_eq!(
            ChannelName::parse(&"a".repeat(256)),
            Err(InvalidChannel::TooLong(256))
        );
        assert_eq!(ChannelName::parse("a b"), Err(InvalidChannel::BadChar(' ')));
        assert_eq!(ChannelName::parse("news\""), Err(InvalidChannel::BadChar('"')));
        assert_eq!(
            ChannelName::parse("caf\u{e9}"),
            Err(InvalidChannel::BadChar('\u{e9}'))
        );
        assert_eq!(ChannelName::parse("a\0"), Err(InvalidChannel::BadChar('\0')));
    }

    #[test]
    fn namespace_is_the_part_before_the_first_colon() {
        assert_eq!(
            ChannelName::parse("chat:room:1").unwrap().namespace(),
            Some("chat")
        );
        assert_eq!(ChannelName::parse("news").unwrap().namespace(), None);
        assert_eq!(ChannelName::parse(":x").unwrap().namespace(), Some(""));
    }
}
