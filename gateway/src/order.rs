//! What a server-side operation asks of one session: orders reach the
//! session through its peer's outbox (the only way into a session from
//! outside) and the session carries them out between its own commands, so
//! its subscription set stays its own to change.

use pubsub_proto::ChannelName;

/// One order to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// Subscribe to the channel (a server-side subscription): the client
    /// is told with a `subscribed` notice marked `server`.
    Subscribe(ChannelName),
    /// Leave the channel; the client is told with an `unsubscribed` notice
    /// marked `server`.
    Unsubscribe(ChannelName),
}
