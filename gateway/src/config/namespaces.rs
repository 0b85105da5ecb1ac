//! Per-namespace settings: the part of a channel name before the first `:`
//! selects a `[namespaces.<name>]` table of the config file; channels without
//! a namespace, or in a namespace without a table, use the global settings.
//!
//! A namespace sets how its channels' streams are kept (history size and
//! TTL; `history_size = 0` turns history off, offsets are still assigned)
//! and, with authentication on, who may use them without a token claim:
//! `allow_anonymous_subscribe` (any connected client may subscribe) and
//! `allow_client_publish` (any connected client may publish).
//!
//! Presence is per namespace too, off by default: `presence` (the channel
//! keeps a member list that subscribers may read) and `join_leave`
//! (subscribers receive `join` and `leave` events; it tracks members even
//! without `presence`, which only governs reading the list).

use std::collections::BTreeMap;
use std::time::Duration;

use broker_adapter::StreamOptions;
use pubsub_proto::ChannelName;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};

/// A `[namespaces.<name>]` table as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileNamespace {
    pub history_size: Option<usize>,
    /// `"10m"` or a number of seconds.
    pub history_ttl: Option<toml::Value>,
    pub allow_anonymous_subscribe: Option<bool>,
    pub allow_client_publish: Option<bool>,
    pub presence: Option<bool>,
    pub join_leave: Option<bool>,
}

/// The resolved settings of one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub history_size: usize,
    #[serde(serialize_with = "super::values::print::duration")]
    pub history_ttl: Duration,
    /// Any connected client may subscribe, without a `channels` claim.
    pub allow_anonymous_subscribe: bool,
    /// Any connected client may publish, without a `publish` claim.
    /// `None`: yes without authentication, no with it.
    pub allow_client_publish: Option<bool>,
    /// Subscribers may read the channel's members (`presence`,
    /// `presence_stats`).
    pub presence: bool,
    /// Subscribers receive `join` and `leave` events.
    pub join_leave: bool,
}

impl Namespace {
    /// The global settings: without authentication every client may
    /// publish; with it, publishing needs a `publish` claim.
    pub fn global(history_size: usize, history_ttl: Duration) -> Namespace {
        Namespace {
            history_size,
            history_ttl,
            allow_anonymous_subscribe: false,
            allow_client_publish: None,
            presence: false,
            join_leave: false,
        }
    }

    /// Whether the node tracks who is in the namespace's channels.
    pub fn tracks_members(&self) -> bool {
        self.presence || self.join_leave
    }

    pub fn stream_options(&self) -> StreamOptions {
        StreamOptions {
            history_size: self.history_size,
            history_ttl: self.history_ttl,
        }
    }
}

/// Every namespace's settings plus the global ones.
#[derive(Debug, Clone)]
pub struct Namespaces {
    pub global: Namespace,
    pub named: BTreeMap<String, Namespace>,
}

/// Printed as the file has it: the global history settings as top-level
/// keys, then the `[namespaces.<name>]` tables.
impl Serialize for Namespaces {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("history_size", &self.global.history_size)?;
        map.serialize_entry(
            "history_ttl",
            &humantime::format_duration(self.global.history_ttl).to_string(),
        )?;
        if !self.named.is_empty() {
            map.serialize_entry("namespaces", &self.named)?;
        }
        map.end()
    }
}

impl Namespaces {
    /// The settings that apply to `channel`.
    pub fn of(&self, channel: &ChannelName) -> &Namespace {
        channel
            .namespace()
            .and_then(|ns| self.named.get(ns))
            .unwrap_or(&self.global)
    }

    /// Resolves the file's tables over the global settings.
    pub fn resolve(
        global: Namespace,
        file: BTreeMap<String, FileNamespace>,
        parse_duration: impl Fn(&str) -> Result<Duration, String>,
    ) -> Result<Namespaces, String> {
        let mut named = BTreeMap::new();
        for (name, table) in file {
            if name.is_empty() || name.contains(':') || pubsub_proto::channel::validate(&name).is_err() {
                return Err(format!("namespace {name:?} is not a valid channel-name prefix"));
            }
            let history_ttl = match table.history_ttl {
                None => global.history_ttl,
                Some(toml::Value::Integer(seconds)) if seconds > 0 => Duration::from_secs(seconds as u64),
                Some(toml::Value::String(text)) => {
                    parse_duration(&text).map_err(|e| format!("namespaces.{name}.history_ttl: {e}"))?
                }
                Some(other) => {
                    return Err(format!(
                        "namespaces.{name}.history_ttl: {other} is not a duration"
                    ));
                }
            };
            if history_ttl < Duration::from_secs(1) {
                return Err(format!("namespaces.{name}.history_ttl must be at least 1s"));
            }
            let namespace = Namespace {
                history_size: table.history_size.unwrap_or(global.history_size),
                history_ttl,
                allow_anonymous_subscribe: table.allow_anonymous_subscribe.unwrap_or(false),
                allow_client_publish: table.allow_client_publish.or(global.allow_client_publish),
                presence: table.presence.unwrap_or(false),
                join_leave: table.join_leave.unwrap_or(false),
            };
            named.insert(name, namespace);
        }
        Ok(Namespaces { global, named })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_pick_their_namespace_or_the_global_settings() {
        let global = Namespace::global(100, Duration::from_secs(600));
        let mut file = BTreeMap::new();
        file.insert(
            "chat".to_string(),
            FileNamespace {
                history_size: Some(0),
                allow_client_publish: Some(true),
                ..FileNamespace::default()
            },
        );
        file.insert(
            "feed".to_string(),
            FileNamespace {
                history_ttl: Some(toml::Value::String("1h".into())),
                allow_anonymous_subscribe: Some(true),
                ..FileNamespace::default()
            },
        );
        let ns = Namespaces::resolve(global, file, super::super::values::parse_duration).unwrap();
        let of = |c: &str| *ns.of(&ChannelName::parse(c).unwrap());
        assert_eq!(of("chat:room-1").history_size, 0);
        assert!(
            of("chat:room-1").allow_client_publish == Some(true)
                && !of("chat:room-1").allow_anonymous_subscribe
        );
        assert_eq!(of("chat:room-1").history_ttl, Duration::from_secs(600));
        assert_eq!(of("feed:x").history_ttl, Duration::from_secs(3600));
        assert!(of("feed:x").allow_anonymous_subscribe && of("feed:x").allow_client_publish.is_none());
        assert_eq!(of("news"), global);
        assert_eq!(of("other:x"), global);

        let mut bad = BTreeMap::new();
        bad.insert("a b".to_string(), FileNamespace::default());
        assert!(Namespaces::resolve(global, bad, super::super::values::parse_duration).is_err());
    }
}
