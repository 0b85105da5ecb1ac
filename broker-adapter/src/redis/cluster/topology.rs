//! The cluster's shape: which shard (a master and its replicas) serves
//! which of the 16,384 hash slots, read from `CLUSTER SLOTS`, and the slot
//! of a name (CRC16 of its hash tag, as Redis computes it).

use redis::Value;

/// Hash slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// The slot Redis assigns to `key`: CRC16 (XMODEM) of the part between the
/// first `{` and the next `}` when that part is not empty, else of the
/// whole key, modulo 16,384.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|&b| b == b'}').map(|close| &rest[..close])
        })
        .filter(|tag| !tag.is_empty());
    (crc16(tagged.unwrap_or(key)) as usize % SLOTS) as u16
}

/// The slot of gateway channel `channel`: its Redis names are
/// `<prefix>:{channel}...`, whose hash tag is the channel name itself
/// (channel names are never empty and the prefix has no braces).
pub fn channel_slot(channel: &str) -> u16 {
    (crc16(channel.as_bytes()) as usize % SLOTS) as u16
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), a byte at a time.
fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &byte| {
        (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ byte)]
    })
}

const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// Inclusive slot ranges.
type Ranges = Vec<(u16, u16)>;

/// One shard as `CLUSTER SLOTS` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// Stable name for logs and the `shard` metric label: the shard's first
    /// slot range, such as `0-5460`. It survives failovers (a new master
    /// serves the same slots) and changes only when slots move.
    pub label: String,
    /// `host:port` of the master.
    pub master: String,
    /// Slot ranges served, inclusive, in order.
    pub ranges: Ranges,
}

/// Every shard, and the owner of every slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub shards: Vec<Shard>,
    /// Index into `shards` per slot; `None` for a slot no master serves.
    owners: Vec<Option<u16>>,
}

impl Topology {
    /// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ...],
    /// replicas...], ...]`. Ranges with the same master form one shard.
    pub fn from_cluster_slots(reply: &Value) -> Result<Topology, String> {
        let Value::Array(entries) = reply else {
            return Err("CLUSTER SLOTS did not answer an array".into());
        };
        // (master node id, master address, its ranges), in reply order.
        let mut masters: Vec<(String, String, Ranges)> = Vec::new();
        for entry in entries {
            let Value::Array(fields) = entry else {
                return Err("a CLUSTER SLOTS entry is not an array".into());
            };
            let (Some(start), Some(end), Some(Value::Array(master))) =
                (int(fields.first()), int(fields.get(1)), fields.get(2))
            else {
                return Err("a CLUSTER SLOTS entry lacks its range or master".into());
            };
            if start > end || end >= SLOTS as i64 || start < 0 {
                return Err(format!("CLUSTER SLOTS reported the range {start}-{end}"));
            }
            let host = text(master.first()).ok_or("a master without a host")?;
            let port = int(master.get(1)).ok_or("a master without a port")?;
            let id = text(master.get(2)).unwrap_or_else(|| format!("{host}:{port}"));
            let range = (start as u16, end as u16);
            match masters.iter_mut().find(|(known, _, _)| *known == id) {
                Some((_, _, ranges)) => ranges.push(range),
                None => masters.push((id, format!("{host}:{port}"), vec![range])),
            }
        }
        let mut shards: Vec<Shard> = masters
            .into_iter()
            .map(|(_, master, mut ranges)| {
                ranges.sort_unstable();
                let (start, end) = ranges[0];
                Shard {
                    label: format!("{start}-{end}"),
                    master,
                    ranges,
                }
            })
            .collect();
        shards.sort_by_key(|s| s.ranges[0]);
        let mut owners = vec![None; SLOTS];
        for (index, shard) in shards.iter().enumerate() {
            for &(start, end) in &shard.ranges {
                for owner in &mut owners[start as usize..=end as usize] {
                    *owner = Some(index as u16);
                }
            }
        }
        Ok(Topology { shards, owners })
    }

    /// The shard serving `slot`.
    pub fn owner(&self, slot: u16) -> Option<usize> {
        self.owners.get(slot as usize).copied().flatten().map(usize::from)
    }

    /// A short tag whose slot the shard at `index` serves (for its probe
    /// channel): `p0`, `p1`, ... until one lands on the shard.
    pub fn tag_for(&self, index: usize) -> Option<String> {
        (0..100_000u32)
            .map(|i| format!("p{i}"))
            .find(|tag| self.owner(slot(tag.as_bytes())) == Some(index))
    }
}

fn int(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"gw:{news}"), slot(b"news"));
        assert_eq!(channel_slot("chat:room#1"), slot(b"gw:{chat:room#1}:m"));
        assert_eq!(slot(b"gw:{news}:m"), slot(b"gw:{news}:s"));
        // An empty tag does not count: the whole key is hashed.
        assert_ne!(slot(b"{}news"), slot(b"news"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
    }

    fn node(host: &str, port: i64, id: &str) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(id.as_bytes().to_vec()),
        ])
    }

    fn range(start: i64, end: i64, master: Value) -> Value {
        Value::Array(vec![Value::Int(start), Value::Int(end), master])
    }

    #[test]
    fn cluster_slots_become_shards_with_owners() {
        let reply = Value::Array(vec![
            range(5461, 10922, node("127.0.0.1", 7002, "b")),
            range(0, 5460, node("127.0.0.1", 7001, "a")),
            range(12001, 16383, node("127.0.0.1", 7003, "c")),
            range(10923, 12000, node("127.0.0.1", 7003, "c")),
        ]);
        let topology = Topology::from_cluster_slots(&reply).unwrap();
        assert_eq!(topology.shards.len(), 3);
        assert_eq!(topology.shards[0].label, "0-5460");
        assert_eq!(topology.shards[0].master, "127.0.0.1:7001");
        assert_eq!(topology.shards[2].ranges, vec![(10923, 12000), (12001, 16383)]);
        assert_eq!(topology.shards[2].label, "10923-12000");
        assert_eq!(topology.owner(0), Some(0));
        assert_eq!(topology.owner(6000), Some(1));
        assert_eq!(topology.owner(16383), Some(2));
        for index in 0..3 {
            let tag = topology.tag_for(index).unwrap();
            assert_eq!(topology.owner(slot(tag.as_bytes())), Some(index));
        }
        assert!(Topology::from_cluster_slots(&Value::Nil).is_err());
        assert!(Topology::from_cluster_slots(&Value::Array(vec![range(5, 1, node("h", 1, "x"))])).is_err());
    }

    #[test]
    fn unserved_slots_have_no_owner() {
        let reply = Value::Array(vec![range(0, 99, node("h", 1, "a"))]);
        let topology = Topology::from_cluster_slots(&reply).unwrap();
        assert_eq!(topology.owner(99), Some(0));
        assert_eq!(topology.owner(100), None);
    }
}
