//! Topic history in Redis: the bounded, expiring list of a topic's last broadcasts, each with a
//! position `"<epoch>-<offset>"`, and the reads that recover what a client missed.
//!
//! Per topic three kinds of keys, all with the topic as hash tag (one Redis Cluster slot with
//! the topic's shard channel): `{prefix}:h:{topic}` the entries (a list, oldest first),
//! `{prefix}:hm:{topic}` a hash with `epoch` and the last `offset`, and
//! `{prefix}:hi:{topic}:{key}` one per idempotency key, holding the position it got.
//!
//! One Lua script appends: it assigns the next offset, stores the envelope with its position,
//! trims to the size, refreshes the expiry, records the idempotency key AND publishes the same
//! bytes on the topic's channel. Redis runs scripts one at a time, so the order in which every
//! subscriber connection receives a topic's broadcasts is the order of their positions, whichever
//! node published them. The epoch is random, chosen when the topic's hash is created: a Redis
//! that lost its data (restart without persistence, expiry, failover to an empty replica) gives
//! the topic a new epoch, and positions of the old one are known not to be recoverable.
//!
//! A list rather than a stream: offsets are contiguous, so the entries after an offset are one
//! `LRANGE` from an index computed from `LLEN`, and the position is the script's own counter
//! (a stream would add IDs of its own that mean nothing to clients). Measured with
//! `redis-benchmark` on Redis 7.0, the list append was also faster and smaller than `XADD
//! MAXLEN` (BENCHMARKS.md §12).
use std::sync::LazyLock;

use crate::envelope::Envelope;
use crate::error::Error;
use crate::handle::RedisPubSub;
use crate::publisher::LuaScript;
use crate::stats::Counters;

/// Appends one envelope (see the module comment). Returns `{1, position}` for a new entry,
/// `{0, position}` when the idempotency key was already used (nothing stored or published).
///
/// KEYS: entries, meta, idempotency key. ARGV: channel, envelope (a MessagePack fixmap
/// without `position`), size, ttl seconds, epoch for a new topic, "1" if the idempotency key
/// counts, the publish command.
const APPEND: &str = r#"
if ARGV[6] == '1' then
  local prev = redis.call('GET', KEYS[3])
  if prev then return {0, prev} end
end
local ttl = tonumber(ARGV[4])
if redis.call('HSETNX', KEYS[2], 'epoch', ARGV[5]) == 1 then
  redis.call('DEL', KEYS[1])
end
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
local pos = epoch .. '-' .. offset
local env = ARGV[2]
local msg = string.char(string.byte(env, 1) + 1) .. string.sub(env, 2)
  .. cmsgpack.pack('position') .. cmsgpack.pack(pos)
redis.call('RPUSH', KEYS[1], msg)
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
if ARGV[6] == '1' then
  redis.call('SET', KEYS[3], pos, 'EX', ttl)
end
redis.call(ARGV[7], ARGV[1], msg)
return {1, pos}
"#;

/// Reads a topic's epoch and last offset (creating them, offset 0, for a topic without
/// history yet, so a client that saw nothing can recover from the first broadcast), and the
/// entries after `since` when they are all still there. Returns `{epoch, last, exact,
/// entries}`; `exact` is 1 when `since` is of this epoch and nothing after it was trimmed.
///
/// KEYS: entries, meta. ARGV: epoch for a new topic, ttl seconds, since epoch ("" for none),
/// since offset.
const READ: &str = r#"
if redis.call('HSETNX', KEYS[2], 'epoch', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], 'offset', 0)
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
  redis.call('DEL', KEYS[1])
end
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'offset')
local epoch, last = meta[1], tonumber(meta[2] or '0')
if ARGV[3] == '' or ARGV[3] ~= epoch then return {epoch, last, 0, {}} end
local since = tonumber(ARGV[4])
if since == nil or since > last then return {epoch, last, 0, {}} end
if since == last then return {epoch, last, 1, {}} end
local first = last - redis.call('LLEN', KEYS[1]) + 1
if since + 1 < first then return {epoch, last, 0, {}} end
return {epoch, last, 1, redis.call('LRANGE', KEYS[1], since + 1 - first, -1)}
"#;

/// The scripts with their SHA1 computed once (calls use EVALSHA).
static APPEND_SCRIPT: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(APPEND));
static READ_SCRIPT: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(READ));

/// How much of a topic's history to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Entries kept (the newest).
    pub size: u32,
    /// Seconds the history lives after the topic's last broadcast.
    pub ttl_secs: u64,
}

/// What [`RedisPubSub::history_append`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The broadcast's position (the first one's, for a repeated idempotency key).
    pub position: String,
    /// False when the idempotency key had been used: nothing was stored or published.
    pub fresh: bool,
}

/// A topic's history as read by [`RedisPubSub::history_read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRead {
    /// The topic's current epoch.
    pub epoch: String,
    /// The offset of its last broadcast (0: none yet in this epoch).
    pub last: u64,
    /// `Some(entries after since, oldest first)` when they are exactly known; `None` when
    /// `since` was not given, is of another epoch, or lies before what is kept.
    pub after: Option<Vec<Envelope>>,
}

/// A fresh epoch: a letter then 11 base-36 characters, so a position never reads as a number
/// and never contains the `-` that separates the offset.
pub fn new_epoch() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(12);
    out.push(char::from(b'a' + rand::random_range(0..26u8)));
    for _ in 0..11 {
        out.push(char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]));
    }
    out
}

impl RedisPubSub {
    /// Stores `envelope` in its topic's history and publishes it with its position to every
    /// node subscribed to the topic, this one included (positioned broadcasts are delivered
    /// from their echo), atomically. With `idempotency_key`, a key already used within the
    /// ttl returns the first position and stores nothing. Fails like a publish (fast while
    /// Redis is down, bounded by the publish timeout): then nothing was stored.
    pub async fn history_append(
        &self,
        envelope: &Envelope,
        retention: Retention,
        idempotency_key: Option<&str>,
    ) -> Result<Appended, Error> {
        let bytes = envelope.encode()?;
        // The script adds `position` as one more entry of a fixmap (at most 15 entries).
        if !matches!(bytes.first(), Some(0x80..=0x8e)) {
            return Err(Error::Unpositionable);
        }
        let topic = envelope.topic.as_str();
        let names = self.names();
        let command = if self.publisher().is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let idem = format!(":{}", idempotency_key.unwrap_or(""));
        let keys = [
            names.history_key("h", topic, ""),
            names.history_key("hm", topic, ""),
            names.history_key("hi", topic, &idem),
        ];
        let args = [
            names.topic(topic).into_bytes(),
            bytes,
            retention.size.max(1).to_string().into_bytes(),
            retention.ttl_secs.max(1).to_string().into_bytes(),
            new_epoch().into_bytes(),
            if idempotency_key.is_some() {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
            command.as_bytes().to_vec(),
        ];
        let result = self
            .publisher()
            .script::<(u8, String)>(&APPEND_SCRIPT, &keys, &args)
            .await;
        let counters = self.counters();
        match result {
            Ok((fresh, position)) => {
                Counters::bump(&counters.published);
                Ok(Appended {
                    position,
                    fresh: fresh == 1,
                })
            }
            Err(e) => {
                Counters::bump(&counters.publish_errors);
                Err(e)
            }
        }
    }

    /// Reads `topic`'s epoch and last offset, and with `since` (epoch, offset) the entries
    /// after it when they can be given exactly (see [`HistoryRead::after`]).
    pub async fn history_read(
        &self,
        topic: &str,
        ttl_secs: u64,
        since: Option<(&str, u64)>,
    ) -> Result<HistoryRead, Error> {
        let names = self.names();
        let (since_epoch, since_offset) = since.unwrap_or(("", 0));
        let keys = [
            names.history_key("h", topic, ""),
            names.history_key("hm", topic, ""),
        ];
        let args = [
            new_epoch().into_bytes(),
            ttl_secs.max(1).to_string().into_bytes(),
            since_epoch.as_bytes().to_vec(),
            since_offset.to_string().into_bytes(),
        ];
        let (epoch, last, exact, entries) = self
            .publisher()
            .script::<(String, u64, u8, Vec<Vec<u8>>)>(&READ_SCRIPT, &keys, &args)
            .await?;
        // An entry that does not decode breaks exactness: the client refetches instead.
        let after = (exact == 1)
            .then(|| {
                entries
                    .iter()
                    .map(|e| Envelope::decode(e).ok())
                    .collect::<Option<Vec<_>>>()
            })
            .flatten();
        Ok(HistoryRead { epoch, last, after })
    }
}
