//! Every Redis channel name this crate uses, built and parsed in this one place.
//!
//! * topic:  `{prefix}:t:{topic}` standalone, `{prefix}:t:{{topic}}` in cluster mode (the topic
//!   wrapped in a hash tag, so the slot depends on the topic alone and SSUBSCRIBE / SPUBLISH of
//!   one topic always meet on the same shard whatever the prefix);
//! * direct: `{prefix}:n:{node_id}` (cluster: `{prefix}:n:{{node_id}}`), one per node;
//! * canary: `{prefix}:c:{node_id}:{conn}` per subscriber connection standalone; in cluster mode
//!   `{prefix}:c:{node_id}:{conn}:{{n}}` with `n` chosen so the channel lands on a given master
//!   (one canary per master per connection, see `cluster::topology`).
//!
//! Node ids and prefixes may not contain `{`, `}` or whitespace (checked by `Config::validate`),
//! so the only hash tag in a name is the one placed here.

use std::hash::Hasher;

/// Number of Redis Cluster hash slots.
pub const SLOTS: u16 = 16384;

/// What a channel name we receive on means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind<'a> {
    /// A topic channel; carries the topic.
    Topic(&'a str),
    /// Our own node's direct channel.
    Direct,
    /// One of our canary channels (the health tracker knows which).
    Canary,
}

/// Builds and parses channel names for one node.
#[derive(Debug, Clone)]
pub struct ChannelNames {
    /// `{prefix}:`, precomputed because every name starts with it.
    head: String,
    /// This node's id.
    node_id: String,
    /// Wrap variable parts in hash tags (Redis Cluster mode).
    cluster: bool,
}

impl ChannelNames {
    /// Names for node `node_id` under `prefix`.
    pub fn new(prefix: &str, node_id: &str, cluster: bool) -> Self {
        ChannelNames {
            head: format!("{prefix}:"),
            node_id: node_id.to_owned(),
            cluster,
        }
    }

    /// The channel carrying `topic`.
    pub fn topic(&self, topic: &str) -> String {
        if self.cluster {
            format!("{}t:{{{topic}}}", self.head)
        } else {
            format!("{}t:{topic}", self.head)
        }
    }

    /// The direct-message channel of `node_id` (any node, not only this one).
    pub fn node(&self, node_id: &str) -> String {
        if self.cluster {
            format!("{}n:{{{node_id}}}", self.head)
        } else {
            format!("{}n:{node_id}", self.head)
        }
    }

    /// This node's canary channel on subscriber connection `conn` (standalone mode).
    pub fn canary(&self, conn: usize) -> String {
        format!("{}c:{}:{conn}", self.head, self.node_id)
    }

    /// This node's canary channel on connection `conn` whose slot is that of the string `tag`
    /// (cluster mode; `tag` is picked to land on a particular master).
    pub fn cluster_canary(&self, conn: usize, tag: u32) -> String {
        format!("{}c:{}:{conn}:{{{tag}}}", self.head, self.node_id)
    }

    /// A key of `topic`'s history (`kind`: `h` the entries, `hm` the epoch and offset, `hi`
    /// an idempotency key, then `suffix`): `{prefix}:{kind}:{{topic}}{suffix}` in both modes,
    /// so in Redis Cluster a topic's keys and its shard channel share one slot (the history
    /// script touches them all at once).
    pub fn history_key(&self, kind: &str, topic: &str, suffix: &str) -> String {
        format!("{}{kind}:{{{topic}}}{suffix}", self.head)
    }

    /// Classifies a channel we received a message on; `None` for names we never subscribe.
    pub fn classify<'a>(&self, channel: &'a str) -> Option<ChannelKind<'a>> {
        let rest = channel.strip_prefix(self.head.as_str())?;
        if let Some(topic) = rest.strip_prefix("t:") {
            if self.cluster {
                return topic
                    .strip_prefix('{')?
                    .strip_suffix('}')
                    .map(ChannelKind::Topic);
            }
            return Some(ChannelKind::Topic(topic));
        }
        if let Some(node) = rest.strip_prefix("n:") {
            let node = if self.cluster {
                node.strip_prefix('{')?.strip_suffix('}')?
            } else {
                node
            };
            return (node == self.node_id).then_some(ChannelKind::Direct);
        }
        let canary = rest.strip_prefix("c:")?;
        let mine = canary
            .strip_prefix(self.node_id.as_str())
            .is_some_and(|r| r.starts_with(':'));
        mine.then_some(ChannelKind::Canary)
    }
}

/// The Redis Cluster hash slot of a key or shard channel name (CRC16/XMODEM of the hash tag,
/// or of the whole name when it has no non-empty `{...}`), as Redis computes it.
pub fn slot(name: &str) -> u16 {
    let bytes = name.as_bytes();
    let hashed = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let after = &bytes[open + 1..];
            let close = after.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &after[..close])
        })
        .unwrap_or(bytes);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

/// Which of `connections` subscriber connections owns `channel`: a stable FNV-1a hash, so the
/// same topic maps to the same connection in every process and across restarts.
pub fn connection_of(channel: &str, connections: usize) -> usize {
    let mut hash = fnv::FnvHasher::default();
    // `write`, not `Hash::hash`: the bare bytes, without the `str` terminator byte
    hash.write(channel.as_bytes());
    (hash.finish() % connections.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_names() {
        let n = ChannelNames::new("gw", "node1", false);
        assert_eq!(n.topic("room:1"), "gw:t:room:1");
        assert_eq!(n.node("node2"), "gw:n:node2");
        assert_eq!(n.canary(1), "gw:c:node1:1");
        assert_eq!(
            n.classify("gw:t:room:1"),
            Some(ChannelKind::Topic("room:1"))
        );
        assert_eq!(n.classify("gw:n:node1"), Some(ChannelKind::Direct));
        assert_eq!(n.classify("gw:n:node2"), None);
        assert_eq!(n.classify("gw:c:node1:0"), Some(ChannelKind::Canary));
        assert_eq!(n.classify("gw:c:node10:0"), None);
        assert_eq!(n.classify("other:t:room:1"), None);
    }

    #[test]
    fn cluster_names_use_hash_tags() {
        let n = ChannelNames::new("gw", "node1", true);
        assert_eq!(n.topic("room:1"), "gw:t:{room:1}");
        assert_eq!(slot(&n.topic("room:1")), slot("room:1"));
        assert_eq!(n.node("node2"), "gw:n:{node2}");
        assert_eq!(n.cluster_canary(0, 7), "gw:c:node1:0:{7}");
        assert_eq!(slot(&n.cluster_canary(0, 7)), slot("7"));
        assert_eq!(
            n.classify("gw:t:{room:1}"),
            Some(ChannelKind::Topic("room:1"))
        );
        assert_eq!(n.classify("gw:t:{a}b}"), Some(ChannelKind::Topic("a}b")));
        assert_eq!(n.classify("gw:n:{node1}"), Some(ChannelKind::Direct));
        assert_eq!(n.classify("gw:c:node1:0:{7}"), Some(ChannelKind::Canary));
        assert_eq!(n.classify("gw:t:room:1"), None);
    }

    #[test]
    fn slots_match_redis() {
        // Values from CLUSTER KEYSLOT on redis-server 7.0.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("bar"), 5061);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        // an empty first tag hashes the whole name; only the first `{...}` counts
        assert_eq!(slot("foo{}{bar}"), 8363);
        assert_eq!(slot("foo{}"), 5542);
        assert_eq!(slot("foo{{bar}}zap"), 4015);
        assert_eq!(slot("foo{bar}{zap}"), 5061);
    }

    #[test]
    fn connection_hash_is_stable_and_spreads() {
        assert_eq!(connection_of("gw:t:room:1", 1), 0);
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[connection_of(&format!("gw:t:room:{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (published test vector): every process
        // and every build maps a channel to the same connection
        assert_eq!(
            connection_of("a", 1000),
            (0xaf63_dc4c_8601_ec8c_u64 % 1000) as usize
        );
        assert_eq!(connection_of("a", 0), 0);
    }
}
