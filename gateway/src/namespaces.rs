//! Per-namespace settings: the part of a channel name before the first `:`
//! selects a `[namespaces.<name>]` table of the config file; channels without
//! a namespace, or in a namespace without a table, use the global settings.
//!
//! Today a namespace sets how its channels' streams are kept (history size
//! and TTL); history can be turned off with `history_size = 0` (offsets are
//! still assigned).

use std::collections::BTreeMap;
use std::time::Duration;

use broker_adapter::StreamOptions;
use pubsub_proto::ChannelName;
use serde::{Deserialize, Serialize};

/// A `[namespaces.<name>]` table as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileNamespace {
    pub history_size: Option<usize>,
    /// `"10m"` or a number of seconds.
    pub history_ttl: Option<toml::Value>,
}

/// The resolved settings of one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub history_size: usize,
    #[serde(serialize_with = "as_humantime")]
    pub history_ttl: Duration,
}

impl Namespace {
    pub fn stream_options(&self) -> StreamOptions {
        StreamOptions {
            history_size: self.history_size,
            history_ttl: self.history_ttl,
        }
    }
}

/// Every namespace's settings plus the global ones.
#[derive(Debug, Clone, Serialize)]
pub struct Namespaces {
    #[serde(flatten)]
    pub global: Namespace,
    #[serde(rename = "namespaces", skip_serializing_if = "BTreeMap::is_empty")]
    pub named: BTreeMap<String, Namespace>,
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
    pub(crate) fn resolve(
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
            };
            named.insert(name, namespace);
        }
        Ok(Namespaces { global, named })
    }
}

fn as_humantime<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_pick_their_namespace_or_the_global_settings() {
        let global = Namespace {
            history_size: 100,
            history_ttl: Duration::from_secs(600),
        };
        let mut file = BTreeMap::new();
        file.insert(
            "chat".to_string(),
            FileNamespace {
                history_size: Some(0),
                history_ttl: None,
            },
        );
        file.insert(
            "feed".to_string(),
            FileNamespace {
                history_size: None,
                history_ttl: Some(toml::Value::String("1h".into())),
            },
        );
        let ns = Namespaces::resolve(global, file, crate::config::parse_duration).unwrap();
        let of = |c: &str| *ns.of(&ChannelName::parse(c).unwrap());
        assert_eq!(of("chat:room-1").history_size, 0);
        assert_eq!(of("chat:room-1").history_ttl, Duration::from_secs(600));
        assert_eq!(of("feed:x").history_ttl, Duration::from_secs(3600));
        assert_eq!(of("feed:x").history_size, 100);
        assert_eq!(of("news"), global);
        assert_eq!(of("other:x"), global);

        let mut bad = BTreeMap::new();
        bad.insert("a b".to_string(), FileNamespace::default());
        assert!(Namespaces::resolve(global, bad, crate::config::parse_duration).is_err());
    }
}
