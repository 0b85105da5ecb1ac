//! Who may do what: whether a connection may subscribe or publish to a
//! channel.
//!
//! Channel rules, with authentication on (`--jwt-*`):
//! - a personal channel, `ns:name#42`, may be subscribed only by the user
//!   whose `sub` is `42`;
//! - subscribe: the token's `channels` patterns match, or the channel's
//!   namespace has `allow_anonymous_subscribe`;
//! - publish: the token's `publish` patterns match, or the namespace has
//!   `allow_client_publish`; a personal channel only by its owner, whatever
//!   the patterns and the namespace say (nobody else writes into a user's
//!   inbox; the HTTP API, for backends, may).
//!
//! Without authentication every client may subscribe to anything, and may
//! publish unless a namespace sets `allow_client_publish = false`.

use pubsub_proto::ChannelName;
use pubsub_proto::pattern::any_matches;

use crate::auth::Identity;
use crate::config::Namespace;

/// Why an action is refused (the error message for the client).
pub type Refusal = String;

/// May this connection subscribe to `channel`?
pub fn may_subscribe(
    auth_enabled: bool,
    namespace: &Namespace,
    identity: Option<&Identity>,
    channel: &ChannelName,
) -> Result<(), Refusal> {
    if !auth_enabled {
        return Ok(());
    }
    let user = identity.map_or("", |i| i.user.as_str());
    if let Some(owner) = personal_owner(channel) {
        return if !owner.is_empty() && owner == user {
            Ok(())
        } else {
            Err(format!("{channel} is a personal channel of another user"))
        };
    }
    if namespace.allow_anonymous_subscribe
        || identity.is_some_and(|i| any_matches(&i.channels, channel.as_str()))
    {
        Ok(())
    } else {
        Err(format!("the token does not allow subscribing to {channel}"))
    }
}

/// May this connection publish to `channel`?
pub fn may_publish(
    auth_enabled: bool,
    namespace: &Namespace,
    identity: Option<&Identity>,
    channel: &ChannelName,
) -> Result<(), Refusal> {
    if auth_enabled && let Some(owner) = personal_owner(channel) {
        let user = identity.map_or("", |i| i.user.as_str());
        if owner.is_empty() || owner != user {
            return Err(format!("{channel} is a personal channel of another user"));
        }
    }
    let open = namespace.allow_client_publish.unwrap_or(!auth_enabled);
    if open || identity.is_some_and(|i| any_matches(&i.publish, channel.as_str())) {
        Ok(())
    } else {
        Err(format!(
            "publishing to {channel} is not allowed for this connection"
        ))
    }
}

/// The user a personal channel belongs to: what follows the last `#`.
fn personal_owner(channel: &ChannelName) -> Option<&str> {
    channel.as_str().rsplit_once('#').map(|(_, owner)| owner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    fn user(sub: &str, channels: &[&str], publish: &[&str]) -> Identity {
        Identity {
            user: sub.into(),
            channels: channels.iter().map(|s| s.to_string()).collect(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            expires_at: u64::MAX,
            info: None,
        }
    }

    #[test]
    fn channel_rules_follow_claims_namespaces_and_ownership() {
        let strict = Namespace::global(100, Duration::from_secs(60));
        let open = Namespace {
            allow_anonymous_subscribe: true,
            allow_client_publish: Some(true),
            ..strict
        };
        let ann = user("ann", &["chat:*"], &["chat:lobby"]);
        assert!(may_subscribe(true, &strict, Some(&ann), &ch("chat:1")).is_ok());
        assert!(may_subscribe(true, &strict, Some(&ann), &ch("news")).is_err());
        assert!(may_subscribe(true, &open, Some(&user("", &[], &[])), &ch("news")).is_ok());
        assert!(may_subscribe(false, &strict, None, &ch("anything")).is_ok());

        // Personal channels: the owner only, whatever the patterns say.
        assert!(may_subscribe(true, &strict, Some(&user("42", &[], &[])), &ch("inbox:user#42")).is_ok());
        assert!(may_subscribe(true, &open, Some(&user("43", &["*"], &[])), &ch("inbox:user#42")).is_err());
        assert!(may_subscribe(true, &open, Some(&user("", &["*"], &[])), &ch("inbox:user#")).is_err());

        assert!(may_publish(true, &strict, Some(&ann), &ch("chat:lobby")).is_ok());
        assert!(may_publish(true, &strict, Some(&ann), &ch("chat:other")).is_err());
        assert!(may_publish(true, &open, None, &ch("chat:other")).is_ok());
        assert!(
            may_publish(false, &strict, None, &ch("x")).is_ok(),
            "without auth, open by default"
        );
        // Personal channels: only the owner publishes, even where clients
        // may publish anywhere.
        assert!(may_publish(true, &open, Some(&user("43", &[], &["*"])), &ch("chat:dm#42")).is_err());
        assert!(may_publish(true, &open, None, &ch("chat:dm#42")).is_err());
        assert!(may_publish(true, &open, Some(&user("42", &[], &[])), &ch("chat:dm#42")).is_ok());
        let closed = Namespace {
            allow_client_publish: Some(false),
            ..strict
        };
        assert!(
            may_publish(false, &closed, None, &ch("x")).is_err(),
            "unless the namespace says no"
        );
    }
}
