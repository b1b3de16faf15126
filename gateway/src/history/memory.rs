//! The in-process history store of a single node: per topic a ring of its newest broadcasts,
//! dropped `ttl` after the topic's last broadcast, and a node-wide memory cap
//! (`--history-memory-max-bytes`) past which the appending topic gives up its oldest entries
//! (counted in `gateway_history_evicted_total`; a `since` before them is then not exact).
//!
//! Each ring has an epoch of its own: the node's boot epoch plus a counter, so a ring that
//! expired and was made again never reuses positions a client may still hold. One lock guards
//! every ring, and delivery happens under it, so a topic's broadcasts are fanned out in
//! position order even when several sessions broadcast at once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Deliver, HistoryError, HistoryStore, Limits, Position, Recovered, Recovery, Stored};
use crate::cluster::Broadcast;
use crate::metrics::Metrics;

/// Bytes counted per entry besides its topic, event and payload (the entry, its `Arc`).
const ENTRY_OVERHEAD: usize = 96;

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

#[derive(Debug, Default)]
struct State {
    /// Topic → its ring.
    rings: HashMap<Arc<str>, Ring>,
    /// Bytes held by every ring's entries (what the cap limits).
    bytes: usize,
    /// Rings made so far (the suffix of each new ring's epoch).
    made: u64,
}

/// The in-process store.
#[derive(Debug)]
pub struct MemoryHistory {
    /// Epoch prefix of this boot.
    boot: String,
    /// Every ring.
    state: Mutex<State>,
    /// Node-wide cap on the bytes of kept entries.
    max_bytes: usize,
    /// Where memory and evictions are reported.
    metrics: Arc<Metrics>,
}

impl MemoryHistory {
    /// A store holding at most `max_bytes` of entries.
    pub fn new(max_bytes: usize, metrics: Arc<Metrics>) -> Self {
        MemoryHistory {
            boot: pubsub_redis::history::new_epoch(),
            state: Mutex::default(),
            max_bytes,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The topic's live ring, made (with a new epoch) when it has none or it expired.
    fn ring<'a>(&self, state: &'a mut State, topic: &str, ttl: Duration) -> &'a mut Ring {
        let now = Instant::now();
        if state.rings.get(topic).is_some_and(|r| r.expires <= now) {
            if let Some(old) = state.rings.remove(topic) {
                state.bytes -= old.entries.iter().map(|(_, n)| n).sum::<usize>();
            }
        }
        if !state.rings.contains_key(topic) {
            state.made += 1;
            let ring = Ring {
                epoch: Arc::from(format!("{}x{}", self.boot, state.made)),
                last: 0,
                entries: VecDeque::new(),
                expires: now + ttl,
                keys: HashMap::new(),
            };
            state.rings.insert(Arc::from(topic), ring);
        }
        state.rings.get_mut(topic).expect("just made")
    }

    /// Over the cap: first drop expired rings, then the oldest entries of `topic` (keeping its
    /// newest one), counting each entry dropped early.
    fn enforce_cap(&self, state: &mut State, topic: &str) {
        if state.bytes <= self.max_bytes {
            return;
        }
        let now = Instant::now();
        let mut freed = 0;
        state.rings.retain(|_, r| {
            let live = r.expires > now;
            if !live {
                freed += r.entries.iter().map(|(_, n)| n).sum::<usize>();
            }
            live
        });
        state.bytes -= freed;
        let Some(ring) = state.rings.get_mut(topic) else {
            return;
        };
        while state.bytes > self.max_bytes && ring.entries.len() > 1 {
            if let Some((_, n)) = ring.entries.pop_front() {
                state.bytes -= n;
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
        let mut state = self.lock();
        let now = Instant::now();
        let ring = self.ring(&mut state, &msg.topic, limits.ttl);
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
        state.bytes = state.bytes + size - freed;
        let topic = stored.topic.clone();
        self.enforce_cap(&mut state, &topic);
        self.metrics.history_memory_bytes.set(state.bytes as i64);
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
        drop(state);
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
        let mut state = self.lock();
        let ring = self.ring(&mut state, topic, limits.ttl);
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
