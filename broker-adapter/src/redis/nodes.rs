//! The node registry in Redis: one hash, `<prefix>:!nodes`, holding each
//! node's latest announcement as `<expires at, ms>:<info>`. Expiry uses
//! Redis's clock (`TIME` inside the scripts), so nodes' clocks need not
//! agree; reading drops the lapsed entries of nodes that died.

use std::time::Duration;

use bytes::Bytes;
use redis::{Script, Value};

use super::route::Connection;
use super::streams::redirected;
use crate::BrokerError;

/// KEYS: the hash. ARGV: node id, ttl ms, info.
const ANNOUNCE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], (now + tonumber(ARGV[2])) .. ':' .. ARGV[3])
return 1
"#;

/// KEYS: the hash. Returns the live announcements; deletes lapsed ones.
const LIVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local value = all[i + 1]
  local split = string.find(value, ':', 1, true)
  local expires = split and tonumber(string.sub(value, 1, split - 1))
  if expires and expires > now then
    live[#live + 1] = string.sub(value, split + 1)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return live
"#;

pub(super) async fn announce(
    connection: Connection,
    key: &str,
    node_id: &str,
    info: &[u8],
    ttl: Duration,
) -> Result<(), BrokerError> {
    let script = Script::new(ANNOUNCE);
    redirected(|| {
        let mut connection = connection.clone();
        let script = &script;
        async move {
            script
                .key(key)
                .arg(node_id)
                .arg(ttl.as_millis().max(1) as u64)
                .arg(info)
                .invoke_async::<Value>(&mut connection)
                .await
        }
    })
    .await
    .map(|_| ())
    .map_err(super::classify)
}

pub(super) async fn live(connection: Connection, key: &str) -> Result<Vec<Bytes>, BrokerError> {
    let script = Script::new(LIVE);
    let values: Vec<Vec<u8>> = redirected(|| {
        let mut connection = connection.clone();
        let script = &script;
        async move { script.key(key).invoke_async(&mut connection).await }
    })
    .await
    .map_err(super::classify)?;
    Ok(values.into_iter().map(Bytes::from).collect())
}
