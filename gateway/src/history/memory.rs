//! The in-process history store of a single node: per topic a ring of its newest broadcasts,
//! dropped `ttl` after the topic's last broadcast, and a node-wide memory cap
//! (`--history-memory-max-bytes`) past which the appending topic gives up its oldest entries
//! (counted in `gateway_history_evicted_total`; a `since` before them is then not exact).
//!
//! Each ring has an epoch of its own: the node's boot epoch plus a counter, so a ring that
//! expired and was made again never reuses positions a client may still hold. Rings are
//! sharded by topic; a broadcast is numbered, stored and delivered under its shard's lock, so
//! a topic's broadcasts are fanned out in position order even when several sessions broadcast
//! at once, while topics of other shards proceed in parallel. Expired rings are dropped when
//! they are next used, when the cap is reached, and every 1,024 rings made.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Deliver, HistoryError, HistoryStore, Limits, Position, Recovered, Recovery, Stored};
use crate::cluster::Broadcast;
use crate::metrics::Metrics;

/// Bytes counted per entry besides its topic, event and payload, as measured: a node holding
/// 1,000,000 entries grew by 283 B per entry beyond those (BENCHMARKS §12.3: the `Arc`'d
/// broadcast and its strings, the payload buffer's shared header, the ring's slot, the
/// allocator's rounding), so `--history-memory-max-bytes` bounds what the process spends.
const ENTRY_OVERHEAD: usize = 288;

/// One topic's history.
#[derive(Debug)]
struct Ring {
    /// This ring's epoch.
    epoch: Arc<str>,
    /// Offset of the last broadcast appended.
    last: u64,
    /// The kept broadcasts, oldest first, with their sizes; offsets are contiguous up to `last`.
    entries: VecDeque<(Arc<Broadcast>, usize)>,
    /// When the ring expires (`ttl` after its last broadcast, or its creation).
    expires: Instant,
    /// Idempotency keys used within the ttl: key → (offset, expiry).
    keys: HashMap<String, (u64, Instant)>,
}

impl Ring {
    /// Offset of the oldest kept broadcast (`last + 1` when none is kept).
    fn first(&self) -> u64 {
        self.last + 1 - self.entries.len() as u64
    }

    fn position(&self, offset: u64) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset,
        }
    }
}

/// The rings of the topics hashed to one shard.
type Shard = HashMap<Arc<str>, Ring>;

/// Shards of the store: broadcasts on topics of different shards are stored and delivered in
/// parallel; one topic's stay in position order under its shard's lock.
const SHARDS: usize = 16;

/// Every this many rings made, a shard drops its expired rings (a topic that was joined but
/// never broadcast on holds no entries, so the memory cap alone would never free it).
const SWEEP_EVERY: u64 = 1024;

/// The in-process store.
#[derive(Debug)]
pub struct MemoryHistory {
    /// Epoch prefix of this boot.
    boot: String,
    /// Topic → its ring, sharded by topic hash.
    shards: Box<[Mutex<Shard>]>,
    /// Picks a topic's shard.
    hasher: RandomState,
    /// Bytes held by every ring's entries (what the cap limits).
    bytes: AtomicUsize,
    /// Rings made so far (the suffix of each new ring's epoch).
    made: AtomicU64,
    /// Node-wide cap on the bytes of kept entries.
    max_bytes: usize,
    /// Where memory and evictions are reported.
    metrics: Arc<Metrics>,
}

/// Bytes of a ring's entries.
fn held(ring: &Ring) -> usize {
    ring.entries.iter().map(|(_, n)| n).sum()
}

impl MemoryHistory {
    /// A store holding at most `max_bytes` of entries.
    pub fn new(max_bytes: usize, metrics: Arc<Metrics>) -> Self {
        MemoryHistory {
            boot: pubsub_redis::history::new_epoch(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            bytes: AtomicUsize::new(0),
            made: AtomicU64::new(0),
            max_bytes,
            metrics,
        }
    }

    fn lock(&self, topic: &str) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[self.hasher.hash_one(topic) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Drop a shard's expired rings.
    fn sweep(&self, shard: &mut Shard, now: Instant) {
        let mut freed = 0;
        shard.retain(|_, r| {
            let live = r.expires > now;
            if !live {
                freed += held(r);
            }
            live
        });
        self.bytes.fetch_sub(freed, Relaxed);
    }

    /// The topic's live ring, made (with a new epoch) when it has none or it expired.
    fn ring<'a>(&self, shard: &'a mut Shard, topic: &str, ttl: Duration) -> &'a mut Ring {
        let now = Instant::now();
        if shard.get(topic).is_some_and(|r| r.expires <= now) {
            if let Some(old) = shard.remove(topic) {
                self.bytes.fetch_sub(held(&old), Relaxed);
            }
        }
        if !shard.contains_key(topic) {
            let made = self.made.fetch_add(1, Relaxed) + 1;
            if made.is_multiple_of(SWEEP_EVERY) {
                self.sweep(shard, now);
            }
            let ring = Ring {
                epoch: Arc::from(format!("{}x{made}", self.boot)),
                last: 0,
                entries: VecDeque::new(),
                expires: now + ttl,
                keys: HashMap::new(),
            };
            shard.insert(Arc::from(topic), ring);
        }
        shard.get_mut(topic).expect("just made")
    }

    /// Over the cap: first drop the shard's expired rings, then the oldest entries of `topic`
    /// (keeping its newest one), counting each entry dropped early.
    fn enforce_cap(&self, shard: &mut Shard, topic: &str) {
        if self.bytes.load(Relaxed) <= self.max_bytes {
            return;
        }
        self.sweep(shard, Instant::now());
        let Some(ring) = shard.get_mut(topic) else {
            return;
        };
        while self.bytes.load(Relaxed) > self.max_bytes && ring.entries.len() > 1 {
            if let Some((_, n)) = ring.entries.pop_front() {
                self.bytes.fetch_sub(n, Relaxed);
                self.metrics.history_evicted.inc();
            }
        }
    }
}

#[async_trait]
impl HistoryStore for MemoryHistory {
    async fn append(
        &self,
        mut msg: Broadcast,
        limits: Limits,
        idempotency_key: Option<&str>,
        deliver: Deliver<'_>,
    ) -> Result<Stored, HistoryError> {
        let mut shard = self.lock(&msg.topic);
        let now = Instant::now();
        let ring = self.ring(&mut shard, &msg.topic, limits.ttl);
        if let Some(key) = idempotency_key {
            if let Some((offset, until)) = ring.keys.get(key) {
                if *until > now {
                    return Ok(Stored {
                        position: ring.position(*offset),
                        fresh: false,
                    });
                }
            }
        }
        ring.last += 1;
        let position = ring.position(ring.last);
        msg.position = Some(Arc::from(position.to_string()));
        let size = ENTRY_OVERHEAD + msg.topic.len() + msg.event.len() + msg.payload.bytes().len();
        let except = msg.except.take();
        let stored = Arc::new(msg);
        ring.entries.push_back((stored.clone(), size));
        let mut freed = 0;
        while ring.entries.len() > limits.size.max(1) as usize {
            freed += ring.entries.pop_front().map_or(0, |(_, n)| n);
        }
        ring.expires = now + limits.ttl;
        if let Some(key) = idempotency_key {
            // Forget expired keys now and then, so a busy topic's key map stays bounded.
            if ring.keys.len() >= 64 {
                ring.keys.retain(|_, (_, until)| *until > now);
            }
            ring.keys
                .insert(key.to_owned(), (position.offset, now + limits.ttl));
        }
        self.bytes.fetch_add(size, Relaxed);
        self.bytes.fetch_sub(freed, Relaxed);
        let topic = stored.topic.clone();
        self.enforce_cap(&mut shard, &topic);
        self.metrics
            .history_memory_bytes
            .set(self.bytes.load(Relaxed) as i64);
        // Under the lock: the next broadcast of the topic is delivered after this one.
        let delivered = match except {
            None => stored,
            Some(key) => {
                let mut own = (*stored).clone();
                own.except = Some(key);
                Arc::new(own)
            }
        };
        deliver(delivered);
        drop(shard);
        Ok(Stored {
            position,
            fresh: true,
        })
    }

    async fn since(
        &self,
        topic: &str,
        since: Option<&Position>,
        limits: Limits,
    ) -> Result<Recovered, HistoryError> {
        let mut shard = self.lock(topic);
        let ring = self.ring(&mut shard, topic, limits.ttl);
        let latest = ring.position(ring.last);
        let recovery = match since {
            Some(p) if *p.epoch == *ring.epoch && p.offset <= ring.last => {
                if p.offset + 1 >= ring.first() {
                    let skip = (p.offset + 1 - ring.first()) as usize;
                    Recovery::Exact(
                        ring.entries
                            .iter()
                            .skip(skip)
                            .map(|(b, _)| b.clone())
                            .collect(),
                    )
                } else {
                    Recovery::NotExact
                }
            }
            _ => Recovery::NotExact,
        };
        Ok(Recovered { latest, recovery })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Payload;

    #[tokio::test]
    async fn memory_store_passes_the_conformance_suite() {
        let metrics = Arc::new(Metrics::new());
        let store = MemoryHistory::new(64 << 20, metrics);
        super::super::conformance::run(&store).await;
    }

    #[tokio::test]
    async fn the_memory_cap_evicts_the_oldest_entries_of_the_appending_topic() {
        let metrics = Arc::new(Metrics::new());
        let store = MemoryHistory::new(10 * (ENTRY_OVERHEAD + 64), metrics.clone());
        let limits = Limits {
            size: 1000,
            ttl: Duration::from_secs(60),
        };
        let mut first = None;
        for i in 0..40 {
            let msg =
                Broadcast::plain("t:cap", "e", Payload::raw_json(format!("{{\"i\":{i:40}}}")));
            let stored = store.append(msg, limits, None, &|_| {}).await.unwrap();
            first.get_or_insert(stored.position);
        }
        assert!(metrics.history_evicted.get() > 0);
        assert!(metrics.history_memory_bytes.get() as usize <= 10 * (ENTRY_OVERHEAD + 64));
        let read = store.since("t:cap", first.as_ref(), limits).await.unwrap();
        assert_eq!(read.recovery, Recovery::NotExact);
        assert_eq!(read.latest.offset, 40);
    }
}
