//! Who may do what: allowed WebSocket origins, and whether a connection may
//! subscribe or publish to a channel.
//!
//! Channel rules, with authentication on (`--jwt-*`):
//! - a personal channel, `ns:name#42`, may be subscribed only by the user
//!   whose `sub` is `42`;
//! - subscribe: the token's `channels` patterns match, or the channel's
//!   namespace has `allow_anonymous_subscribe`;
//! - publish: the token's `publish` patterns match, or the namespace has
//!   `allow_client_publish`.
//!
//! Without authentication every client may subscribe to anything, and may
//! publish unless a namespace sets `allow_client_publish = false`.

use pubsub_proto::ChannelName;
use pubsub_proto::pattern::any_matches;

use crate::auth::Identity;
use crate::namespaces::Namespace;

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

/// One `--allowed-origin`: `scheme://host[:port]`, where host may start
/// with `*.` to allow any subdomain (not the bare domain itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginRule {
    scheme: String,
    host: Host,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Exact(String),
    /// `*.example.com`: stored as `.example.com`.
    Subdomains(String),
}

impl OriginRule {
    pub fn parse(rule: &str) -> Result<OriginRule, String> {
        let (scheme, host, port) = split_origin(rule)
            .ok_or_else(|| format!("{rule:?} is not an origin like https://app.example.com"))?;
        let host = match host.strip_prefix("*.") {
            Some(domain) if !domain.is_empty() && !domain.contains('*') => {
                Host::Subdomains(format!(".{domain}"))
            }
            Some(_) => return Err(format!("{rule:?}: a wildcard must look like *.example.com")),
            None if host.contains('*') => {
                return Err(format!("{rule:?}: a wildcard must look like *.example.com"));
            }
            None => Host::Exact(host),
        };
        Ok(OriginRule { scheme, host, port })
    }

    /// True when the `Origin` header value matches this rule.
    pub fn allows(&self, origin: &str) -> bool {
        let Some((scheme, host, port)) = split_origin(origin) else {
            return false;
        };
        scheme == self.scheme
            && port == self.port
            && match &self.host {
                Host::Exact(expected) => host == *expected,
                Host::Subdomains(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            }
    }
}

/// `scheme://host[:port]`, lowercased; `None` for anything else (including
/// the `null` origin of sandboxed documents, paths and credentials).
fn split_origin(origin: &str) -> Option<(String, String, Option<u16>)> {
    let origin = origin.trim().to_ascii_lowercase();
    let (scheme, rest) = origin.split_once("://")?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
            (host, Some(port.parse().ok()?))
        }
        _ => (rest, None),
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme.to_owned(), host.to_owned(), port))
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
        let closed = Namespace {
            allow_client_publish: Some(false),
            ..strict
        };
        assert!(
            may_publish(false, &closed, None, &ch("x")).is_err(),
            "unless the namespace says no"
        );
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain() {
        let exact = OriginRule::parse("https://app.example.com").unwrap();
        assert!(exact.allows("https://app.example.com"));
        assert!(exact.allows("HTTPS://App.Example.com"));
        assert!(!exact.allows("http://app.example.com"));
        assert!(!exact.allows("https://app.example.com:8443"));
        assert!(!exact.allows("https://evil-app.example.com"));
        assert!(!exact.allows("null"));

        let wildcard = OriginRule::parse("https://*.example.com").unwrap();
        assert!(wildcard.allows("https://a.example.com"));
        assert!(wildcard.allows("https://a.b.example.com"));
        assert!(!wildcard.allows("https://example.com"));
        assert!(!wildcard.allows("https://evilexample.com"));
        assert!(!wildcard.allows("https://example.com.evil.com"));

        let local = OriginRule::parse("http://localhost:3000").unwrap();
        assert!(local.allows("http://localhost:3000") && !local.allows("http://localhost:3001"));

        for bad in [
            "example.com",
            "https://*",
            "https://a.*.com",
            "ftp://x",
            "https://x/path",
            "*",
        ] {
            assert!(OriginRule::parse(bad).is_err(), "{bad}");
        }
    }
}
