//! How gateway channels are named in Redis.
//!
//! A gateway channel `news` is the Redis channel `<prefix>:{news}`. The braces
//! are a Redis Cluster hash tag, so a channel's pub/sub name and its keys
//! (history, offsets) land on the same slot. Channel names cannot contain
//! braces, so the mapping is unambiguous. Each node's probe channel is
//! `<prefix>:!probe:<node id>`, which no gateway channel can map to; on a
//! cluster each shard gets one, `<prefix>:!probe:<node id>:{<tag>}` with a
//! tag that hashes to a slot of that shard.

/// Redis names for one deployment (prefix) and node.
pub(super) struct Names {
    prefix: String,
    node_id: String,
    probe: String,
}

/// The keys of a channel's presence (see `presence`).
pub(super) struct PresenceKeys {
    pub nodes: String,
    pub users: String,
    pub events: String,
    /// A node's hash is this followed by the node id.
    pub node_prefix: String,
}

impl Names {
    pub fn new(prefix: &str, node_id: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
            node_id: node_id.to_owned(),
            probe: format!("{prefix}:!probe:{node_id}"),
        }
    }

    /// The Redis pub/sub channel of a gateway channel.
    pub fn channel(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}", self.prefix)
    }

    /// The keys of a channel's stream: (meta hash, history stream).
    pub fn stream_keys(&self, channel: &str) -> (String, String) {
        (
            format!("{}:{{{channel}}}:m", self.prefix),
            format!("{}:{{{channel}}}:s", self.prefix),
        )
    }

    /// The key remembering an idempotent publication on a channel (the
    /// channel's hash tag, so the publish script can touch it).
    pub fn once_key(&self, channel: &str, key: &str) -> String {
        format!("{}:{{{channel}}}:i:{key}", self.prefix)
    }

    /// The hash of every node's announcement (one key, one slot).
    pub fn nodes(&self) -> String {
        format!("{}:!nodes", self.prefix)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The keys of a channel's presence.
    pub fn presence_keys(&self, channel: &str) -> PresenceKeys {
        let base = format!("{}:{{{channel}}}:p", self.prefix);
        PresenceKeys {
            nodes: format!("{base}n"),
            users: format!("{base}u"),
            events: format!("{base}e"),
            node_prefix: format!("{base}c:"),
        }
    }

    /// This node's hash of members in a channel's presence.
    pub fn presence_node(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:pc:{}", self.prefix, self.node_id)
    }

    /// This node's probe channel (on a cluster: the prefix of its shards'
    /// probe channels).
    pub fn probe(&self) -> &str {
        &self.probe
    }

    /// Another node's probe channel (on a cluster: the prefix of its
    /// shards' probe channels).
    pub fn probe_of(&self, node_id: &str) -> String {
        format!("{}:!probe:{node_id}", self.prefix)
    }

    /// A probe channel whose slot is the slot of `tag`.
    pub fn shard_probe(&self, tag: &str) -> String {
        format!("{}:{{{tag}}}", self.probe)
    }

    /// The gateway channel a Redis channel name stands for, if it is one.
    pub fn gateway_channel<'a>(&self, redis_channel: &'a [u8]) -> Option<&'a str> {
        let rest = redis_channel
            .strip_prefix(self.prefix.as_bytes())?
            .strip_prefix(b":{")?;
        std::str::from_utf8(rest.strip_suffix(b"}")?).ok()
    }
}

/// Checks a Redis prefix: non-empty, at most 64 bytes of `A-Z a-z 0-9 _ - . :`.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    match prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        Some(c) => Err(format!("contains {c:?}; allowed are A-Z a-z 0-9 _ - . :")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_carry_the_prefix_and_a_hash_tag() {
        let names = Names::new("gw", "node-1");
        assert_eq!(names.channel("news"), "gw:{news}");
        assert_eq!(names.channel("chat:room#1"), "gw:{chat:room#1}");
        assert_eq!(names.probe(), "gw:!probe:node-1");
        assert_eq!(
            names.stream_keys("news"),
            ("gw:{news}:m".to_string(), "gw:{news}:s".to_string())
        );
        assert!(validate_prefix("prod.eu:gw").is_ok());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("a{b}").is_err());
        assert_eq!(names.gateway_channel(b"gw:{chat:room#1}"), Some("chat:room#1"));
        assert_eq!(names.gateway_channel(b"gw:!probe:node-1"), None);
        assert_eq!(names.gateway_channel(b"other:{news}"), None);
        assert_eq!(names.shard_probe("p7"), "gw:!probe:node-1:{p7}");
        let keys = names.presence_keys("room:1");
        assert_eq!(keys.nodes, "gw:{room:1}:pn");
        assert_eq!(
            format!("{}node-1", keys.node_prefix),
            names.presence_node("room:1")
        );
    }
}
