//! Presence in Redis: every node's members of a channel, a count per user,
//! and when each node last refreshed, kept by Lua scripts.
//!
//! Per channel, all under the channel's hash tag (one cluster slot):
//! - `<prefix>:{channel}:pn`, a sorted set: node id → the time (ms) its
//!   entries expire unless it refreshes them;
//! - `<prefix>:{channel}:pc:<node>`, a hash per node: client id → member;
//! - `<prefix>:{channel}:pu`, a hash: user id → connections in the channel;
//! - `<prefix>:{channel}:pe`, the events sent in the current second.
//!
//! A member is stored as `<len>:<user><len>:<client><info>` (the info
//! claim's JSON text last), which Lua can split without a decoder. Every
//! script first drops the nodes whose time is past (their members leave,
//! with events); the update script then applies one node's changes and
//! sets its time to now + TTL; reads add up the nodes still alive. All
//! keys of a channel expire three TTLs after the last update by any node,
//! so a channel that every node left (or that only dead nodes held)
//! leaves nothing behind.
//!
//! Events go out from the script itself, on the channel's pub/sub channel,
//! as `P` + kind (`j`/`l`) + flag (`1`: first/last) + the member: in the
//! order the changes were applied, at most the event rate per second.
//! Envelopes (protobuf, first byte 0x08) never start with `P`.

use bytes::Bytes;
use futures_util::future::join_all;
use pubsub_proto::{ChannelName, Member};
use redis::Script;

use super::Shared;
use super::streams::redirected;
use crate::{BrokerError, ChannelPresence, PresenceBatch, PresenceChange, PresenceEvent, PresenceStats};

/// The first byte of a presence event on a pub/sub channel.
pub(super) const EVENT_MARK: u8 = b'P';

/// KEYS: nodes, users, event counter. ARGV: node-hash prefix, events
/// (`1`/`0`), event rate, publish command, pub/sub channel.
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function user_of(blob)
  local colon = string.find(blob, ':', 1, true)
  if not colon then return '' end
  local n = tonumber(string.sub(blob, 1, colon - 1)) or 0
  return string.sub(blob, colon + 1, colon + n)
end
local function emit(kind, flag, blob)
  if ARGV[2] ~= '1' then return end
  local sent = redis.call('INCR', KEYS[3])
  if sent == 1 then redis.call('PEXPIRE', KEYS[3], 1000) end
  if sent <= tonumber(ARGV[3]) then
    redis.call(ARGV[4], ARGV[5], 'P' .. kind .. flag .. blob)
  end
end
local function drop(hash, client, blob, events)
  redis.call('HDEL', hash, client)
  local user = user_of(blob)
  local last = '1'
  if user ~= '' then
    if redis.call('HINCRBY', KEYS[2], user, -1) > 0 then
      last = '0'
    else
      redis.call('HDEL', KEYS[2], user)
    end
  end
  if events then emit('l', last, blob) end
end
local function prune(self)
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
    if node ~= self then
      local hash = ARGV[1] .. node
      local all = redis.call('HGETALL', hash)
      for i = 1, #all, 2 do drop(hash, all[i], all[i + 1], true) end
      redis.call('DEL', hash)
      redis.call('ZREM', KEYS[1], node)
    end
  end
end
"#;

/// KEYS: prelude's, this node's hash. ARGV: prelude's, node id, ttl ms,
/// expected count, sync count (-1: no sync), the sync's (client, member)
/// pairs, then changes as (`j`|`l`, client, member). Returns 1 when the
/// node's count differs from the expected one.
const UPDATE: &str = r#"
local self, ttl = ARGV[6], tonumber(ARGV[7])
local function add(client, blob, events)
  if redis.call('HSET', KEYS[4], client, blob) == 0 then return end
  local user = user_of(blob)
  local first = '1'
  if user ~= '' and redis.call('HINCRBY', KEYS[2], user, 1) > 1 then first = '0' end
  if events then emit('j', first, blob) end
end
prune(self)
local i = 10
local sync = tonumber(ARGV[9])
if sync >= 0 then
  local keep = {}
  for k = 0, sync - 1 do keep[ARGV[i + 2 * k]] = ARGV[i + 2 * k + 1] end
  local all = redis.call('HGETALL', KEYS[4])
  for k = 1, #all, 2 do
    if not keep[all[k]] then drop(KEYS[4], all[k], all[k + 1], false) end
  end
  for client, blob in pairs(keep) do add(client, blob, false) end
  i = i + 2 * sync
end
while i + 2 <= #ARGV do
  local op, client = ARGV[i], ARGV[i + 1]
  if op == 'j' then
    add(client, ARGV[i + 2], true)
  else
    local old = redis.call('HGET', KEYS[4], client)
    if old then drop(KEYS[4], client, old, true) end
  end
  i = i + 3
end
local count = redis.call('HLEN', KEYS[4])
if count == 0 then
  redis.call('ZREM', KEYS[1], self)
else
  redis.call('ZADD', KEYS[1], now + ttl, self)
end
local keep_ms = ttl * 3
for _, node in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  redis.call('PEXPIRE', ARGV[1] .. node, keep_ms)
end
redis.call('PEXPIRE', KEYS[1], keep_ms)
redis.call('PEXPIRE', KEYS[2], keep_ms)
if count ~= tonumber(ARGV[8]) then return 1 end
return 0
"#;

/// KEYS, ARGV: the prelude's. Returns every live node's members.
const MEMBERS: &str = r#"
prune('')
local out = {}
for _, node in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  for _, blob in ipairs(redis.call('HVALS', ARGV[1] .. node)) do out[#out + 1] = blob end
end
return out
"#;

/// KEYS, ARGV: the prelude's. Returns {clients, users}.
const STATS: &str = r#"
prune('')
local clients = 0
for _, node in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  clients = clients + redis.call('HLEN', ARGV[1] .. node)
end
return {clients, redis.call('HLEN', KEYS[2])}
"#;

pub(super) struct Scripts {
    update: Script,
    members: Script,
    stats: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            update: Script::new(&format!("{PRELUDE}{UPDATE}")),
            members: Script::new(&format!("{PRELUDE}{MEMBERS}")),
            stats: Script::new(&format!("{PRELUDE}{STATS}")),
        }
    }
}

/// A member as stored: `<len>:<user><len>:<client><info>`.
pub(super) fn encode_member(member: &Member) -> Vec<u8> {
    let info = member.info.as_deref().unwrap_or_default();
    let mut out = Vec::with_capacity(member.user.len() + member.client.len() + info.len() + 8);
    for part in [member.user.as_bytes(), member.client.as_bytes()] {
        out.extend_from_slice(part.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(part);
    }
    out.extend_from_slice(info);
    out
}

/// Reads a stored member; `None` if it is not one.
pub(super) fn decode_member(blob: &[u8]) -> Option<Member> {
    fn part(blob: &[u8]) -> Option<(String, &[u8])> {
        let colon = blob.iter().position(|&b| b == b':')?;
        let len: usize = std::str::from_utf8(&blob[..colon]).ok()?.parse().ok()?;
        let rest = &blob[colon + 1..];
        let text = std::str::from_utf8(rest.get(..len)?).ok()?.to_owned();
        Some((text, &rest[len..]))
    }
    let (user, rest) = part(blob)?;
    let (client, info) = part(rest)?;
    Some(Member {
        client,
        user,
        info: (!info.is_empty()).then(|| Bytes::copy_from_slice(info)),
    })
}

/// Reads a presence event published on `channel`'s pub/sub channel.
pub(super) fn decode_event(channel: ChannelName, payload: &[u8]) -> Option<PresenceEvent> {
    let (&[mark, kind, flag], blob) = payload.split_first_chunk::<3>()?;
    if mark != EVENT_MARK {
        return None;
    }
    let member = decode_member(blob)?;
    let flag = flag == b'1';
    match kind {
        b'j' => Some(PresenceEvent::Join {
            channel,
            member,
            first: flag,
        }),
        b'l' => Some(PresenceEvent::Leave {
            channel,
            member,
            last: flag,
        }),
        _ => None,
    }
}

/// A script call with the prelude's keys and arguments for `channel`.
fn prepared<'s>(
    shared: &Shared,
    script: &'s Script,
    channel: &ChannelName,
    events: Option<u32>,
) -> redis::ScriptInvocation<'s> {
    let keys = shared.names.presence_keys(channel.as_str());
    let mut invocation = script.prepare_invoke();
    invocation
        .key(keys.nodes)
        .key(keys.users)
        .key(keys.events)
        .arg(keys.node_prefix)
        .arg(if events.is_some() { "1" } else { "0" })
        .arg(events.unwrap_or(0))
        .arg(shared.route.publish_command().name())
        .arg(shared.names.channel(channel.as_str()));
    invocation
}

/// One channel's update: `Ok(true)` when the count differed.
async fn update_channel(
    shared: &Shared,
    scripts: &Scripts,
    batch: &PresenceBatch,
    work: &ChannelPresence,
) -> Result<bool, BrokerError> {
    let keys = shared.names.presence_keys(work.channel.as_str());
    let connection = shared.route.connection_for(&keys.nodes)?;
    let mut invocation = prepared(
        shared,
        &scripts.update,
        &work.channel,
        work.events.then_some(batch.event_rate),
    );
    invocation
        .key(shared.names.presence_node(work.channel.as_str()))
        .arg(&shared.config.node_id)
        .arg(batch.ttl.as_millis().max(1) as u64)
        .arg(work.expected);
    match &work.sync {
        None => {
            invocation.arg(-1);
        }
        Some(members) => {
            invocation.arg(members.len());
            for member in members {
                invocation.arg(&member.client).arg(encode_member(member));
            }
        }
    }
    for change in &work.changes {
        match change {
            PresenceChange::Join(member) => {
                invocation.arg("j").arg(&member.client).arg(encode_member(member))
            }
            PresenceChange::Leave(member) => invocation.arg("l").arg(&member.client).arg(""),
        };
    }
    let differs: i64 = redirected(|| {
        let mut connection = connection.clone();
        let invocation = &invocation;
        async move { invocation.invoke_async(&mut connection).await }
    })
    .await
    .map_err(super::classify)?;
    Ok(differs != 0)
}

/// Applies a batch: every channel's script at once, so that they share
/// round trips on the multiplexed connection(s).
pub(super) async fn update(
    shared: &Shared,
    scripts: &Scripts,
    batch: &PresenceBatch,
) -> Result<Vec<ChannelName>, BrokerError> {
    let outcomes = join_all(
        batch
            .channels
            .iter()
            .map(|work| update_channel(shared, scripts, batch, work)),
    )
    .await;
    let (mut differing, mut failed, mut error) = (Vec::new(), Vec::new(), None);
    for (work, outcome) in batch.channels.iter().zip(outcomes) {
        match outcome {
            Ok(true) => differing.push(work.channel.clone()),
            Ok(false) => {}
            Err(e) => {
                failed.push(work.channel.clone());
                error.get_or_insert(e);
            }
        }
    }
    match error {
        None => Ok(differing),
        // The caller syncs failed and differing channels alike.
        Some(error) => {
            failed.extend(differing);
            Err(BrokerError::Partial(failed, Box::new(error)))
        }
    }
}

pub(super) async fn members(
    shared: &Shared,
    scripts: &Scripts,
    channel: &ChannelName,
    events: Option<u32>,
) -> Result<Vec<Member>, BrokerError> {
    let keys = shared.names.presence_keys(channel.as_str());
    let connection = shared.route.connection_for(&keys.nodes)?;
    let invocation = prepared(shared, &scripts.members, channel, events);
    let blobs: Vec<Vec<u8>> = redirected(|| {
        let mut connection = connection.clone();
        let invocation = &invocation;
        async move { invocation.invoke_async(&mut connection).await }
    })
    .await
    .map_err(super::classify)?;
    Ok(blobs.iter().filter_map(|b| decode_member(b)).collect())
}

pub(super) async fn stats(
    shared: &Shared,
    scripts: &Scripts,
    channel: &ChannelName,
    events: Option<u32>,
) -> Result<PresenceStats, BrokerError> {
    let keys = shared.names.presence_keys(channel.as_str());
    let connection = shared.route.connection_for(&keys.nodes)?;
    let invocation = prepared(shared, &scripts.stats, channel, events);
    let (clients, users): (u64, u64) = redirected(|| {
        let mut connection = connection.clone();
        let invocation = &invocation;
        async move { invocation.invoke_async(&mut connection).await }
    })
    .await
    .map_err(super::classify)?;
    Ok(PresenceStats { clients, users })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_events_survive_the_stored_form() {
        let ann = Member {
            client: "n1-x-7".into(),
            user: "a:n:n".into(),
            info: Some(Bytes::from_static(br#"{"n":"1:2"}"#)),
        };
        let anon = Member {
            client: "n2-y-1".into(),
            user: String::new(),
            info: None,
        };
        for member in [&ann, &anon] {
            assert_eq!(decode_member(&encode_member(member)).as_ref(), Some(member));
        }
        assert_eq!(decode_member(b"9:short"), None);
        assert_eq!(decode_member(b"x:y"), None);
        let channel = ChannelName::parse("room:1").unwrap();
        let mut event = b"Pj1".to_vec();
        event.extend(encode_member(&ann));
        assert_eq!(
            decode_event(channel.clone(), &event),
            Some(PresenceEvent::Join {
                channel: channel.clone(),
                member: ann,
                first: true
            })
        );
        assert_eq!(decode_event(channel, b"\x08\x01"), None);
    }
}
