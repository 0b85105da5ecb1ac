//! Channel streams in Redis: offsets, epochs and history, kept atomically
//! with the publication by Lua scripts.
//!
//! Per channel two keys, sharing the channel's hash tag (so one script
//! touches one cluster slot):
//! - `<prefix>:{channel}:m`, a hash: `e` the epoch, `o` the last offset;
//! - `<prefix>:{channel}:s`, a stream: the last `history_size` messages, the
//!   entry id of each is `<offset>-0`.
//!
//! The publish script assigns the next offset, appends to the stream and
//! PUBLISHes in one round trip. The message it publishes (and stores) is the
//! protobuf envelope the node sent with the `offset` and `epoch` fields
//! appended by the script: protobuf merges concatenated messages, so the
//! result decodes as one envelope with the position set. Both keys expire
//! `history_ttl` after the last publication; when the hash is gone the
//! channel has no stream ([`crate::NO_STREAM`]) until the next publication
//! starts one with a new epoch. Reads never create keys.

use std::sync::Arc;

use bytes::Bytes;
use pubsub_proto::{Publication, envelope};
use redis::{Script, Value};

use super::route::{Connection, PublishCommand};
use crate::{BrokerError, History, Once, Published, StreamOptions, new_epoch};

/// Encodes a protobuf varint and the position fields (6: offset, 7: epoch)
/// in Lua, so the script can append them to the envelope.
const PROTOBUF_POSITION: &str = r#"
local function varint(n)
  local out = {}
  repeat
    local b = n % 128
    n = (n - b) / 128
    if n > 0 then b = b + 128 end
    out[#out + 1] = string.char(b)
  until n == 0
  return table.concat(out)
end
local function position(offset, epoch)
  return string.char(48) .. varint(offset) .. string.char(58) .. varint(#epoch) .. epoch
end
"#;

/// KEYS: meta, stream, and for an idempotent publish the key remembering
/// it (same hash tag). ARGV: pub/sub channel, envelope, history size, ttl
/// seconds, epoch for a new stream, publish command (`PUBLISH`, or
/// `SPUBLISH` on a cluster: the channel shares the keys' hash tag, so it
/// lives on their shard), and with the third key how long it is kept (ms).
/// Returns {offset, epoch, duplicate (0 or 1)}: a key seen before returns
/// the position stored with it and publishes nothing.
const PUBLISH: &str = r#"
if KEYS[3] then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local split = string.find(seen, ':', 1, true)
    return {tonumber(string.sub(seen, 1, split - 1)), string.sub(seen, split + 1), 1}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local ttl = tonumber(ARGV[4])
redis.call('EXPIRE', KEYS[1], ttl)
local message = ARGV[2] .. position(offset, epoch)
local size = tonumber(ARGV[3])
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, offset .. '-0', 'm', message)
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call(ARGV[6], ARGV[1], message)
if KEYS[3] then
  redis.call('SET', KEYS[3], offset .. ':' .. epoch, 'PX', tonumber(ARGV[7]))
end
return {offset, epoch, 0}
"#;

/// KEYS: meta, stream. ARGV: since (-1: position only), limit. Returns
/// {epoch, offset, entries}; a channel without a stream is ('', 0, {}) and
/// reading it writes nothing (a read must not leave a key behind).
const HISTORY: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  return {'', 0, {}}
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local since = tonumber(ARGV[1])
local entries = {}
if since >= 0 and since < offset then
  entries = redis.call('XRANGE', KEYS[2], '(' .. since .. '-0', '+', 'COUNT', tonumber(ARGV[2]))
end
return {epoch, offset, entries}
"#;

/// KEYS: meta, stream. ARGV: the epoch to leave, the new epoch, ttl
/// seconds. Starts the new epoch (empty history, offset 0) only if the
/// stream is still in the old one, so that nodes detecting the same
/// regression restart it once. Returns {epoch, offset}.
const RESTART: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch or epoch == ARGV[1] then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', ARGV[2], 'o', 0)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return {redis.call('HGET', KEYS[1], 'e'), tonumber(redis.call('HGET', KEYS[1], 'o'))}
"#;

/// The compiled scripts (EVALSHA, loaded on first use or after a restart).
pub(super) struct Scripts {
    publish: Script,
    history: Script,
    restart: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            publish: Script::new(&format!("{PROTOBUF_POSITION}{PUBLISH}")),
            history: Script::new(HISTORY),
            restart: Script::new(RESTART),
        }
    }
}

fn ttl_seconds(options: StreamOptions) -> u64 {
    options.history_ttl.as_secs().max(1)
}

/// Sends of a command that the server certainly did not run (see
/// [`super::did_not_run`]), at most.
const REDIRECTS: u32 = 5;

/// Runs `command`, sending it again (up to [`REDIRECTS`] times, a little
/// later each time) while Redis answers that it did not run it: a cluster
/// redirect the client could not follow, `TRYAGAIN`, `CLUSTERDOWN`,
/// `READONLY` (a demoted master), `LOADING`, `MASTERDOWN`. A lost
/// connection or a timeout is *not* retried: the command may have run, and
/// a publish script run twice would publish twice. (The cluster's
/// publishing client is built without retries of its own for that reason.)
pub(super) async fn redirected<T, F, Fut>(mut command: F) -> redis::RedisResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let mut attempt = 0;
    loop {
        match command().await {
            Err(error) if attempt < REDIRECTS && super::did_not_run(&error) => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20 * u64::from(attempt))).await;
            }
            outcome => return outcome,
        }
    }
}

/// Runs an operation that is safe to repeat (a read) again while Redis is
/// unavailable to it (a redirect, a lost connection), up to [`REDIRECTS`]
/// times.
async fn read_again<T, F, Fut>(mut operation: F) -> Result<T, BrokerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BrokerError>>,
{
    let mut attempt = 0;
    loop {
        match operation().await {
            Err(BrokerError::Unavailable(_)) if attempt < REDIRECTS => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20 * u64::from(attempt))).await;
            }
            outcome => return outcome,
        }
    }
}

/// Publishes `envelope` (without position) as the channel's next offset;
/// with `once` (its key's name and window), only if that key was not seen
/// within the window.
pub(super) async fn publish(
    scripts: &Scripts,
    connection: Connection,
    keys: (&str, &str),
    (redis_channel, command): (&str, PublishCommand),
    envelope: Vec<u8>,
    options: StreamOptions,
    once: Option<(&str, std::time::Duration)>,
) -> Result<Once, BrokerError> {
    let epoch = new_epoch();
    let (offset, epoch, duplicate): (u64, String, u8) = redirected(|| {
        let mut connection = connection.clone();
        let (envelope, epoch) = (&envelope, &epoch);
        async move {
            let mut invocation = scripts.publish.key(keys.0);
            invocation.key(keys.1);
            if let Some((key, _)) = once {
                invocation.key(key);
            }
            invocation
                .arg(redis_channel)
                .arg(&envelope[..])
                .arg(options.history_size)
                .arg(ttl_seconds(options))
                .arg(epoch)
                .arg(command.name());
            if let Some((_, window)) = once {
                invocation.arg(window.as_millis().max(1) as u64);
            }
            invocation.invoke_async(&mut connection).await
        }
    })
    .await
    .map_err(super::classify)?;
    let published = Published {
        offset,
        epoch: Arc::from(epoch),
    };
    Ok(if duplicate == 1 {
        Once::Duplicate(published)
    } else {
        Once::Published(published)
    })
}

/// Reads the channel's position and, with `since`, its history after it.
pub(super) async fn history(
    scripts: &Scripts,
    connection: Connection,
    keys: (&str, &str),
    since: Option<u64>,
    limit: usize,
) -> Result<History, BrokerError> {
    let since_arg: i64 = since.map_or(-1, |s| s.min(i64::MAX as u64) as i64);
    // Reading is safe to repeat.
    let (epoch, offset, entries): (String, u64, Value) = read_again(|| {
        let mut connection = connection.clone();
        async move {
            scripts
                .history
                .key(keys.0)
                .key(keys.1)
                .arg(since_arg)
                .arg(limit.max(1))
                .invoke_async(&mut connection)
                .await
                .map_err(super::classify)
        }
    })
    .await?;
    let publications = parse_entries(entries)?;
    Ok(History {
        epoch: Arc::from(epoch),
        offset,
        publications,
    })
}

/// Deletes the channel's stream keys (one slot: they share the hash tag).
pub(super) async fn remove(connection: Connection, keys: (&str, &str)) -> Result<(), BrokerError> {
    // Deleting is safe to repeat.
    read_again(|| {
        let mut connection = connection.clone();
        async move {
            redis::cmd("DEL")
                .arg(keys.0)
                .arg(keys.1)
                .query_async::<()>(&mut connection)
                .await
                .map_err(super::classify)
        }
    })
    .await
}

/// Starts a new epoch if the stream is still in `epoch` (see RESTART).
pub(super) async fn restart(
    scripts: &Scripts,
    connection: Connection,
    keys: (&str, &str),
    epoch: &str,
    options: StreamOptions,
) -> Result<History, BrokerError> {
    let new = new_epoch();
    // Restarting is conditional on the old epoch, so a repeat is harmless.
    let (epoch, offset): (String, u64) = read_again(|| {
        let mut connection = connection.clone();
        let new = &new;
        async move {
            scripts
                .restart
                .key(keys.0)
                .key(keys.1)
                .arg(epoch)
                .arg(new)
                .arg(ttl_seconds(options))
                .invoke_async(&mut connection)
                .await
                .map_err(super::classify)
        }
    })
    .await?;
    Ok(History {
        epoch: Arc::from(epoch),
        offset,
        publications: Vec::new(),
    })
}

/// Decodes XRANGE entries: `[[id, [field, value, ...]], ...]`.
fn parse_entries(entries: Value) -> Result<Vec<Publication>, BrokerError> {
    let Value::Array(entries) = entries else {
        return Ok(Vec::new());
    };
    let mut publications = Vec::with_capacity(entries.len());
    for entry in entries {
        let message = match entry {
            Value::Array(mut parts) if parts.len() == 2 => match parts.pop() {
                Some(Value::Array(fields)) => fields.into_iter().nth(1),
                Some(Value::Map(fields)) => fields.into_iter().next().map(|(_, v)| v),
                _ => None,
            },
            _ => None,
        };
        let Some(Value::BulkString(bytes)) = message else {
            return Err(BrokerError::Internal(
                "unexpected history entry from Redis".into(),
            ));
        };
        let envelope = envelope::decode(Bytes::from(bytes))
            .map_err(|e| BrokerError::Internal(format!("unreadable history entry: {e}")))?;
        publications.push(envelope.publication);
    }
    Ok(publications)
}
