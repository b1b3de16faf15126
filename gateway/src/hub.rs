//! The Hub: this node's index of topic → subscribed sessions, local fan-out, and broadcasts to
//! the cluster (local fan-out plus a publish through the PubSub adapter).
//!
//! Fan-out is the fastlane: a broadcast is encoded at most once per wire format present among
//! the topic's subscribers, and the same `Bytes` is queued on every subscriber's outbox (each
//! session's own task then writes it, coalescing frames that queue up). Channels that intercept
//! an event get the broadcast itself instead, to run `handle_out`. The index is sharded by topic
//! so joins on different topics do not contend. The Hub tells the PubSub adapter when a topic
//! gets its first local subscriber and when its last one leaves (interest-based subscriptions).
//!
//! Topics with history broadcast through `broadcast_stored`: the node's history store numbers
//! and stores the broadcast and delivers it in position order. A session joining such a topic
//! first subscribes as `Recovering` (live broadcasts are set aside for it), reads the history
//! without any lock held, then `settle`s: under the topic's lock it queues the join reply,
//! the replay and the set-aside broadcasts it has not replayed, and becomes a plain subscriber.
//! Topics without history pay nothing for this.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;

use crate::cluster::{Broadcast, ClusterMessage};
use crate::history::{HistoryError, Limits, Position, SharedHistory, Stored};
use crate::metrics::Metrics;
use crate::outbox::{OutItem, OutboxLimits, Pushed};
use crate::protocol::{Close, CloseCode, Outgoing, Wire};
use crate::pubsub::SharedPubSub;
use crate::registry::SessionHandle;

/// Event that, broadcast on a session id topic, closes those sessions.
pub const DISCONNECT_EVENT: &str = "disconnect";

/// How a subscription receives broadcasts.
#[derive(Clone, Debug)]
pub enum SubKind {
    /// A joined channel: fastlaned frames in this wire format, except intercepted events.
    Channel {
        /// Wire format of the session.
        wire: Wire,
        /// Events the channel runs `handle_out` for (`None`: it intercepts nothing).
        intercepts: Option<Arc<[String]>>,
    },
    /// The session id topic (`user_socket:42`): only `disconnect` matters, and closes the session.
    SessionId,
    /// A channel joining a history topic, not settled yet: broadcasts are set aside in
    /// `aside` (in arrival order) until `Hub::settle` queues them after the replay.
    Recovering {
        /// Wire format of the session.
        wire: Wire,
        /// Events the channel runs `handle_out` for.
        intercepts: Option<Arc<[String]>>,
        /// Broadcasts that arrived since the subscription.
        aside: Arc<Mutex<Vec<Arc<Broadcast>>>>,
    },
    /// A settled channel of a history topic whose join was told `latest`: like `Channel`, but
    /// a broadcast at or before `latest` (replayed, or filled late by this node) is skipped.
    Replayed {
        /// Wire format of the session.
        wire: Wire,
        /// Events the channel runs `handle_out` for.
        intercepts: Option<Arc<[String]>>,
        /// The position the join reply told; nothing at or before it is delivered again.
        latest: Position,
    },
}

/// Whether a broadcast's position is of `latest`'s epoch and at or before it (no allocation:
/// it runs in the fan-out of history topics).
fn at_or_before(position: Option<&str>, latest: &Position) -> bool {
    let Some((epoch, offset)) = position.and_then(|p| p.rsplit_once('-')) else {
        return false;
    };
    epoch == &*latest.epoch && offset.parse::<u64>().is_ok_and(|o| o <= latest.offset)
}

#[derive(Clone, Debug)]
struct Subscriber {
    /// The session.
    session: Arc<SessionHandle>,
    /// How it receives.
    kind: SubKind,
}

type Topics = HashMap<Arc<str>, HashMap<u64, Subscriber>>;

const SHARDS: usize = 64;

/// The node-local topic index.
pub struct Hub {
    /// Topic → subscribers (by session key), sharded by topic hash.
    shards: Box<[RwLock<Topics>]>,
    /// Hasher that picks a topic's shard.
    hasher: RandomState,
    /// Adapter told about first/last local subscribers.
    pubsub: SharedPubSub,
    /// Outbox limits applied to fan-out pushes.
    limits: OutboxLimits,
    /// Where topics with history store their broadcasts.
    history: SharedHistory,
    /// Where joins on topics with history report the position they told their client, so the
    /// node's delivery task starts the topic's sequence there (`gapfill`); `None` when no
    /// cluster-wide store is there to fill gaps from.
    seeds: Option<mpsc::Sender<Seed>>,
    /// Counters.
    metrics: Arc<Metrics>,
}

/// A topic and the position a join on this node told its client it stands at.
pub type Seed = (Arc<str>, Position);

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// Frames encoded for one broadcast, at most once per wire format.
#[derive(Default)]
struct EncodeCache {
    /// Indexed by `Wire::index()`; inner `None` = this wire cannot carry the broadcast.
    frames: [Option<Option<bytes::Bytes>>; Wire::COUNT],
}

impl EncodeCache {
    fn get(&mut self, wire: Wire, msg: &Broadcast) -> Option<bytes::Bytes> {
        self.frames[wire.index()]
            .get_or_insert_with(|| {
                let out = Outgoing::Broadcast {
                    position: msg.position.as_deref(),
                    topic: &msg.topic,
                    event: &msg.event,
                    payload: &msg.payload,
                };
                wire.frame(out)
            })
            .clone()
    }
}

impl Hub {
    /// A hub that reports interest changes to `pubsub`, keeps histories in `history` and
    /// reports the positions joins were told to `seeds`.
    pub fn new(
        pubsub: SharedPubSub,
        history: SharedHistory,
        seeds: Option<mpsc::Sender<Seed>>,
        limits: OutboxLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            pubsub,
            history,
            seeds,
            limits,
            metrics,
        }
    }

    /// A client on this node was told `topic` stands at `position`. Never waits: when the
    /// delivery task is that far behind the report is dropped, and the topic's sequence
    /// starts at the first broadcast the node hears, as it would without it.
    pub fn seed(&self, topic: &Arc<str>, position: &Position) {
        if let Some(seeds) = &self.seeds {
            // a full queue only loses the head start, never a broadcast
            let _ = seeds.try_send((topic.clone(), position.clone()));
        }
    }

    /// The node's history store.
    pub fn history(&self) -> &SharedHistory {
        &self.history
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        self.pubsub.node_id()
    }

    /// The node's PubSub adapter (cluster traffic other than broadcasts: presence, long-poll).
    pub fn pubsub(&self) -> &SharedPubSub {
        &self.pubsub
    }

    /// Broadcast to a topic on every node; `exclude` skips one local session (broadcast_from).
    pub fn broadcast(&self, msg: Arc<Broadcast>, exclude: Option<u64>) {
        self.metrics.broadcasts.inc();
        self.fanout(&msg, exclude);
        self.pubsub
            .publish(&msg.topic, ClusterMessage::Broadcast(msg.clone()));
    }

    /// Broadcast on a topic with history: stored first, then delivered with its position (in
    /// position order on every node); `exclude` skips one local session. Resolves once it is
    /// stored; an error means it was neither stored nor sent (counted).
    pub async fn broadcast_stored(
        &self,
        msg: Broadcast,
        exclude: Option<u64>,
        limits: Limits,
        idempotency_key: Option<&str>,
    ) -> Result<Stored, HistoryError> {
        let mut msg = msg;
        msg.except = exclude;
        let deliver = |b: Arc<Broadcast>| {
            self.fanout(&b, b.except);
            let topic = b.topic.clone();
            self.pubsub.publish(&topic, ClusterMessage::Broadcast(b));
        };
        let result = self
            .history
            .append(msg, limits, idempotency_key, &deliver)
            .await;
        match &result {
            Ok(stored) => {
                let label = if stored.fresh { "stored" } else { "duplicate" };
                self.metrics
                    .history_appends
                    .with_label_values(&[label])
                    .inc();
                if stored.fresh {
                    self.metrics.broadcasts.inc();
                }
            }
            Err(_) => self.metrics.history_errors.inc(),
        }
        result
    }

    /// Queue one broadcast for one subscriber: its frame, or the broadcast itself when the
    /// channel intercepts the event.
    pub fn deliver_to(
        &self,
        session: &SessionHandle,
        wire: Wire,
        intercepts: Option<&[String]>,
        msg: &Arc<Broadcast>,
    ) {
        if intercepts.is_some_and(|ev| ev.iter().any(|e| *e == msg.event)) {
            return self.queue(session, OutItem::Intercept(msg.clone()));
        }
        let out = Outgoing::Broadcast {
            position: msg.position.as_deref(),
            topic: &msg.topic,
            event: &msg.event,
            payload: &msg.payload,
        };
        self.send(session, wire, out);
    }

    /// End a `Recovering` subscription: under the topic's lock, `settle` gets the broadcasts
    /// set aside meanwhile and queues what the session must get first (join reply, replay,
    /// the set-aside broadcasts it wants); the subscription then receives like any other,
    /// except broadcasts at or before `latest` (the position the join reply told).
    /// Returns the shared topic string.
    pub fn settle(
        &self,
        topic: &str,
        session_key: u64,
        latest: Option<Position>,
        settle: impl FnOnce(&Arc<str>, Vec<Arc<Broadcast>>),
    ) -> Option<Arc<str>> {
        let mut shard = self.shard(topic).write().unwrap_or_else(|e| e.into_inner());
        let (key, subs) = shard
            .get_key_value(topic)
            .map(|(k, _)| k.clone())
            .and_then(|k| {
                let subs = shard.get_mut(topic)?;
                Some((k, subs))
            })?;
        let sub = subs.get_mut(&session_key)?;
        let (wire, intercepts, aside) = match &sub.kind {
            SubKind::Recovering {
                wire,
                intercepts,
                aside,
            } => (*wire, intercepts.clone(), aside.clone()),
            _ => return None,
        };
        sub.kind = match latest {
            Some(latest) => SubKind::Replayed {
                wire,
                intercepts,
                latest,
            },
            None => SubKind::Channel { wire, intercepts },
        };
        let aside = std::mem::take(&mut *aside.lock().unwrap_or_else(|e| e.into_inner()));
        settle(&key, aside);
        Some(key)
    }

    /// Encode and queue a frame for one session.
    pub fn send(&self, session: &SessionHandle, wire: Wire, out: Outgoing<'_>) {
        match wire.frame(out) {
            Some(frame) => self.queue(session, OutItem::Frame(frame)),
            None => self.metrics.unencodable.inc(),
        }
    }

    /// Queue an item for one session, counting a slow consumer it makes.
    pub fn queue(&self, session: &SessionHandle, item: OutItem) {
        if session.outbox.push(item, self.limits) == Pushed::Overflow {
            self.metrics.slow_consumers.inc();
        }
    }

    fn shard(&self, topic: &str) -> &RwLock<Topics> {
        &self.shards[self.hasher.hash_one(topic) as usize % SHARDS]
    }

    /// Subscribe a session to a topic. Returns the shared topic string for the caller to keep.
    pub fn subscribe(&self, topic: &str, session: &Arc<SessionHandle>, kind: SubKind) -> Arc<str> {
        self.subscribe_with(topic, session, kind, |_| {})
    }

    /// `subscribe`, running `prelude` under the topic's lock once the session is in: what it
    /// queues on the session precedes every broadcast the subscription delivers, and no
    /// broadcast fanned out before it is lost to a snapshot `prelude` takes (presence state).
    pub fn subscribe_with(
        &self,
        topic: &str,
        session: &Arc<SessionHandle>,
        kind: SubKind,
        prelude: impl FnOnce(&Arc<str>),
    ) -> Arc<str> {
        let mut shard = self.shard(topic).write().unwrap_or_else(|e| e.into_inner());
        let key = self.entry(&mut shard, topic).0;
        if let Some(subs) = shard.get_mut(topic) {
            subs.insert(
                session.key,
                Subscriber {
                    session: session.clone(),
                    kind,
                },
            );
        }
        prelude(&key);
        key
    }

    /// Make this node interested in `topic` before any local session subscribes (a presence
    /// channel fetches the other nodes' state first). Returns a hold if the interest is new;
    /// dropping it withdraws the interest unless a session subscribed meanwhile.
    pub fn hold<'a>(&'a self, topic: &'a str) -> Option<Hold<'a>> {
        let mut shard = self.shard(topic).write().unwrap_or_else(|e| e.into_inner());
        let new = self.entry(&mut shard, topic).1;
        drop(shard);
        // Lazily: a `Hold` made and dropped for an existing topic would withdraw its interest.
        new.then(|| Hold { hub: self, topic })
    }

    /// The topic's entry, created (and the adapter told) if it is new.
    fn entry(&self, shard: &mut Topics, topic: &str) -> (Arc<str>, bool) {
        match shard.get_key_value(topic) {
            Some((k, _)) => (k.clone(), false),
            None => {
                self.pubsub.subscribe(topic);
                self.metrics.topics.inc();
                let k: Arc<str> = Arc::from(topic);
                shard.insert(k.clone(), HashMap::new());
                (k, true)
            }
        }
    }

    /// Remove a session's subscription to a topic.
    pub fn unsubscribe(&self, topic: &str, session_key: u64) {
        self.remove(topic, Some(session_key));
    }

    /// Remove a subscriber (if any), and the topic with its interest once nobody is left.
    fn remove(&self, topic: &str, session_key: Option<u64>) {
        let mut shard = self.shard(topic).write().unwrap_or_else(|e| e.into_inner());
        if let Some(subs) = shard.get_mut(topic) {
            if let Some(k) = session_key {
                subs.remove(&k);
            }
            if subs.is_empty() {
                shard.remove(topic);
                self.pubsub.unsubscribe(topic);
                self.metrics.topics.dec();
            }
        }
    }

    /// Number of local subscribers of a topic.
    pub fn subscribers(&self, topic: &str) -> usize {
        self.shard(topic)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .map_or(0, |s| s.len())
    }

    /// Deliver a broadcast to this node's subscribers, except the session `exclude`.
    /// Returns the number of sessions it was queued for.
    pub fn fanout(&self, msg: &Arc<Broadcast>, exclude: Option<u64>) -> usize {
        let per_message = self.metrics.per_message;
        let timer = per_message.then(|| self.metrics.fanout_seconds.start_timer());
        let shard = self
            .shard(&msg.topic)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let Some(subs) = shard.get(msg.topic.as_str()) else {
            if let Some(t) = timer {
                t.stop_and_discard();
            }
            return 0;
        };
        let mut cache = EncodeCache::default();
        let mut delivered = 0;
        for (key, sub) in subs {
            if Some(*key) == exclude {
                continue;
            }
            let item = match &sub.kind {
                SubKind::SessionId => {
                    if msg.event == DISCONNECT_EVENT {
                        sub.session
                            .close(Close::new(CloseCode::GOING_AWAY, "disconnected"));
                        self.metrics.forced_disconnects.inc();
                    }
                    continue;
                }
                SubKind::Recovering { aside, .. } => {
                    aside
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(msg.clone());
                    continue;
                }
                SubKind::Replayed { latest, .. }
                    if at_or_before(msg.position.as_deref(), latest) =>
                {
                    continue;
                }
                SubKind::Channel {
                    intercepts: Some(ev),
                    ..
                }
                | SubKind::Replayed {
                    intercepts: Some(ev),
                    ..
                } if ev.iter().any(|e| *e == msg.event) => OutItem::Intercept(msg.clone()),
                SubKind::Channel { wire, .. } | SubKind::Replayed { wire, .. } => {
                    match cache.get(*wire, msg) {
                        Some(frame) => OutItem::Frame(frame),
                        None => {
                            self.metrics.unencodable.inc();
                            continue;
                        }
                    }
                }
            };
            match sub.session.outbox.push(item, self.limits) {
                Pushed::Queued => delivered += 1,
                Pushed::Overflow => self.metrics.slow_consumers.inc(),
                Pushed::Closed => {}
            }
        }
        drop(shard);
        if let Some(t) = timer {
            t.observe_duration();
            self.metrics.deliveries.inc_by(delivered as u64);
        }
        delivered
    }
}

/// Interest in a topic held without a subscriber (see `Hub::hold`).
pub struct Hold<'a> {
    /// The hub holding the interest.
    hub: &'a Hub,
    /// The topic.
    topic: &'a str,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.hub.remove(self.topic, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replayed_subscription_skips_what_its_join_was_told() {
        let latest = Position::parse("ep-5").unwrap();
        assert!(at_or_before(Some("ep-5"), &latest));
        assert!(at_or_before(Some("ep-1"), &latest));
        assert!(!at_or_before(Some("ep-6"), &latest), "later");
        assert!(!at_or_before(Some("other-3"), &latest), "another epoch");
        assert!(!at_or_before(None, &latest), "no position");
        assert!(!at_or_before(Some("ep-x"), &latest), "malformed");
    }
}
