//! Presence replicas: every topic's presences (key → metas) as this node knows them, in the
//! shapes phoenix.js `Presence` consumes, and the client diff being batched per topic. Pure
//! state: the tracker feeds it changes, the Presence service renders and sends what it holds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::protocol::Payload;

/// Largest meta object accepted (bytes of JSON); larger ones are cut to `online_at` only.
pub const MAX_META_BYTES: usize = 1024;

/// Who owns a meta: a node incarnation, and on the owner the session that tracked it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Node id.
    pub node: Arc<str>,
    /// Boot incarnation of that node.
    pub inc: u64,
}

/// One tracked presence (a tab, a device).
#[derive(Clone, Debug)]
pub struct Meta {
    /// Unique ref of this meta (`phx_ref`).
    pub phx_ref: Arc<str>,
    /// Owner node incarnation.
    pub owner: Owner,
    /// Session that tracked it (only on the owner node).
    pub session: Option<u64>,
    /// The meta object as JSON (includes `phx_ref`).
    pub json: Bytes,
}

/// Per-topic replica plus the client diff being batched.
#[derive(Debug, Default)]
struct TopicState {
    /// key → metas.
    entries: HashMap<String, Vec<Meta>>,
    /// Joins not yet sent to local clients: key → metas.
    joins: Pending,
    /// Leaves not yet sent to local clients: key → metas.
    leaves: Pending,
}

/// Metas of a batched diff side (joins or leaves): key → (phx_ref, meta JSON). The ref lets a
/// join cancel a leave of the same meta in the same batch: phoenix.js applies a diff's joins
/// before its leaves, so a meta that left and came back within one batch (a node judged down
/// and heard again) must not be among the leaves, or clients would drop a presence the replica
/// holds. It stays among the joins, for clients whose `presence_state` came between the two.
/// (A join then a leave keeps both: joins-then-leaves ends without it, as it should.)
type Pending = BTreeMap<String, Vec<(Arc<str>, Bytes)>>;

/// Removes `phx_ref` from `key`'s metas in `pending`; whether it was there.
fn cancel(pending: &mut Pending, key: &str, phx_ref: &str) -> bool {
    let Some(metas) = pending.get_mut(key) else {
        return false;
    };
    let Some(i) = metas.iter().position(|(r, _)| &**r == phx_ref) else {
        return false;
    };
    metas.remove(i);
    if metas.is_empty() {
        pending.remove(key);
    }
    true
}

/// A change to apply to a replica.
#[derive(Debug, Default, Clone)]
pub struct Change {
    /// (key, meta) added.
    pub joins: Vec<(String, Meta)>,
    /// (key, phx_ref) removed.
    pub leaves: Vec<(String, Arc<str>)>,
}

/// Every topic's replica on this node.
#[derive(Debug)]
pub struct Replicas {
    /// This node's identity in the tracker.
    pub me: Owner,
    /// Topic → state.
    topics: Mutex<HashMap<String, TopicState>>,
    /// Topics with a diff waiting for the next flush.
    dirty: Mutex<HashSet<String>>,
    /// Counter behind unique `phx_ref`s.
    next_ref: AtomicU64,
}

/// Render `{"key":{"metas":[...]}, ...}`.
fn render_map<M: AsRef<[u8]>>(map: &BTreeMap<String, Vec<M>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + map
            .values()
            .flatten()
            .map(|m| m.as_ref().len() + 1)
            .sum::<usize>(),
    );
    out.push(b'{');
    for (i, (key, metas)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Serializing a &str cannot fail.
        let _ = serde_json::to_writer(&mut out, key);
        out.extend_from_slice(b":{\"metas\":[");
        for (j, m) in metas.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            out.extend_from_slice(m.as_ref());
        }
        out.extend_from_slice(b"]}");
    }
    out.push(b'}');
    out
}

impl Replicas {
    /// Replicas of a node, with a new boot incarnation.
    pub fn new(node_id: &str) -> Self {
        Replicas {
            me: Owner {
                node: Arc::from(node_id),
                inc: rand::random::<u64>() >> 12,
            },
            topics: Mutex::default(),
            dirty: Mutex::default(),
            next_ref: AtomicU64::new(1),
        }
    }

    fn topics(&self) -> MutexGuard<'_, HashMap<String, TopicState>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new unique `phx_ref`.
    fn new_ref(&self) -> Arc<str> {
        let n = self.next_ref.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{:x}.{:x}.{}", self.me.inc, n, self.me.node.len()).as_str())
    }

    /// Build a meta owned by this node: `phx_ref`, optional `phx_ref_prev`, `online_at`, and
    /// `fields` (size-limited).
    pub fn local_meta(
        &self,
        session: Option<u64>,
        fields: Map<String, Value>,
        prev: Option<&str>,
    ) -> Meta {
        let phx_ref = self.new_ref();
        let online_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut obj = fields;
        obj.insert("online_at".into(), Value::from(online_at));
        obj.insert("phx_ref".into(), Value::from(&*phx_ref));
        if let Some(p) = prev {
            obj.insert("phx_ref_prev".into(), Value::from(p));
        }
        let mut json = serde_json::to_vec(&obj).unwrap_or_default();
        if json.len() > MAX_META_BYTES {
            let mut small = Map::new();
            small.insert("online_at".into(), Value::from(online_at));
            small.insert("phx_ref".into(), Value::from(&*phx_ref));
            json = serde_json::to_vec(&small).unwrap_or_default();
        }
        Meta {
            phx_ref,
            owner: self.me.clone(),
            session,
            json: Bytes::from(json),
        }
    }

    /// Apply a change to a topic's replica, recording the client diff. Returns whether anything
    /// changed.
    pub fn apply(&self, topic: &str, change: Change) -> bool {
        let mut topics = self.topics();
        let state = topics.entry(topic.to_owned()).or_default();
        let mut changed = false;
        for (key, phx_ref) in change.leaves {
            let Some(metas) = state.entries.get_mut(&key) else {
                continue;
            };
            if let Some(i) = metas.iter().position(|m| m.phx_ref == phx_ref) {
                let m = metas.swap_remove(i);
                if metas.is_empty() {
                    state.entries.remove(&key);
                }
                state
                    .leaves
                    .entry(key)
                    .or_default()
                    .push((m.phx_ref, m.json));
                changed = true;
            }
        }
        for (key, meta) in change.joins {
            let metas = state.entries.entry(key.clone()).or_default();
            if metas.iter().any(|m| m.phx_ref == meta.phx_ref) {
                continue;
            }
            // back within the batch it left in: the diff carries the join only
            cancel(&mut state.leaves, &key, &meta.phx_ref);
            let pending = (meta.phx_ref.clone(), meta.json.clone());
            state.joins.entry(key).or_default().push(pending);
            metas.push(meta);
            changed = true;
        }
        drop(topics);
        if changed {
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(topic.to_owned());
        }
        changed
    }

    /// The full state of a topic, as the `presence_state` payload.
    pub fn state(&self, topic: &str) -> Payload {
        let topics = self.topics();
        let mut map = BTreeMap::new();
        if let Some(state) = topics.get(topic) {
            for (key, metas) in &state.entries {
                map.insert(key.clone(), metas.iter().map(|m| m.json.clone()).collect());
            }
        }
        Payload::raw_json(render_map(&map))
    }

    /// Keys and their metas' JSON, for the Rust API.
    pub fn list(&self, topic: &str) -> BTreeMap<String, Vec<Value>> {
        let topics = self.topics();
        let mut out = BTreeMap::new();
        if let Some(state) = topics.get(topic) {
            for (key, metas) in &state.entries {
                out.insert(
                    key.clone(),
                    metas
                        .iter()
                        .filter_map(|m| serde_json::from_slice(&m.json).ok())
                        .collect(),
                );
            }
        }
        out
    }

    /// Metas of `topic` owned by `owner` (a node's share, for sync answers).
    pub fn owned_by(&self, topic: &str, node: &str) -> Vec<(String, Meta)> {
        let topics = self.topics();
        let Some(state) = topics.get(topic) else {
            return Vec::new();
        };
        state
            .entries
            .iter()
            .flat_map(|(k, ms)| {
                ms.iter()
                    .filter(|m| &*m.owner.node == node)
                    .map(move |m| (k.clone(), m.clone()))
            })
            .collect()
    }

    /// Metas tracked by a local session on a topic.
    pub fn of_session(&self, topic: &str, session: u64) -> Vec<(String, Arc<str>)> {
        let topics = self.topics();
        let Some(state) = topics.get(topic) else {
            return Vec::new();
        };
        state
            .entries
            .iter()
            .flat_map(|(k, ms)| {
                ms.iter()
                    .filter(|m| m.session == Some(session))
                    .map(move |m| (k.clone(), m.phx_ref.clone()))
            })
            .collect()
    }

    /// Every (topic, key, ref) owned by a node incarnation other than `keep_inc` (or any, when
    /// `keep_inc` is `None`): what to remove when that node is down or restarted.
    pub fn of_node(&self, node: &str, keep_inc: Option<u64>) -> Vec<(String, String, Arc<str>)> {
        let topics = self.topics();
        let mut out = Vec::new();
        for (topic, state) in topics.iter() {
            for (key, metas) in &state.entries {
                for m in metas {
                    if &*m.owner.node == node && Some(m.owner.inc) != keep_inc {
                        out.push((topic.clone(), key.clone(), m.phx_ref.clone()));
                    }
                }
            }
        }
        out
    }

    /// Topics with a replica on this node.
    pub fn topic_names(&self) -> Vec<String> {
        self.topics().keys().cloned().collect()
    }

    /// Forget a topic's replica once no local session subscribes to it any more.
    pub fn forget_if_unwatched(&self, topic: &str, watched: bool) {
        if watched {
            return;
        }
        let mut topics = self.topics();
        if topics
            .get(topic)
            .is_some_and(|s| s.entries.values().flatten().all(|m| m.owner != self.me))
        {
            topics.remove(topic);
        }
    }

    /// Take every batched diff: one `presence_diff` payload per topic that changed.
    pub fn take_diffs(&self) -> Vec<(String, Payload)> {
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        let mut out = Vec::with_capacity(dirty.len());
        for topic in dirty {
            let (joins, leaves) = {
                let mut topics = self.topics();
                let Some(state) = topics.get_mut(&topic) else {
                    continue;
                };
                let json = |pending: Pending| -> BTreeMap<String, Vec<Bytes>> {
                    pending
                        .into_iter()
                        .map(|(k, metas)| (k, metas.into_iter().map(|(_, j)| j).collect()))
                        .collect()
                };
                (
                    json(std::mem::take(&mut state.joins)),
                    json(std::mem::take(&mut state.leaves)),
                )
            };
            if joins.is_empty() && leaves.is_empty() {
                continue;
            }
            let mut body = Vec::with_capacity(32);
            body.extend_from_slice(b"{\"joins\":");
            body.extend_from_slice(&render_map(&joins));
            body.extend_from_slice(b",\"leaves\":");
            body.extend_from_slice(&render_map(&leaves));
            body.push(b'}');
            out.push((topic, Payload::raw_json(body)));
        }
        out
    }

    /// Number of metas in replicas on this node (a metric).
    pub fn entries(&self) -> usize {
        self.topics()
            .values()
            .map(|s| s.entries.values().map(Vec::len).sum::<usize>())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_and_state_render_like_phoenix() {
        let p = Replicas::new("n1");
        let m = p.local_meta(Some(1), Map::new(), None);
        let r = m.phx_ref.clone();
        assert!(p.apply(
            "t",
            Change {
                joins: vec![("ann".into(), m)],
                leaves: vec![]
            }
        ));
        let state: Value = serde_json::from_slice(p.state("t").bytes()).unwrap();
        assert_eq!(state["ann"]["metas"][0]["phx_ref"], Value::from(&*r));
        assert!(state["ann"]["metas"][0]["online_at"].is_u64());
        // Same ref again is a no-op; leave removes the key.
        let again = p.topics()["t"].entries["ann"][0].clone();
        assert!(!p.apply(
            "t",
            Change {
                joins: vec![("ann".into(), again)],
                leaves: vec![]
            }
        ));
        assert_eq!(p.of_session("t", 1), vec![("ann".to_string(), r.clone())]);
        assert!(p.apply(
            "t",
            Change {
                joins: vec![],
                leaves: vec![("ann".into(), r)]
            }
        ));
        assert_eq!(p.state("t").bytes().as_ref(), b"{}");
        let oversized = Map::from_iter([("blob".to_string(), Value::from("x".repeat(5000)))]);
        assert!(p.local_meta(None, oversized, None).json.len() < 200);
    }
    /// A meta that leaves and comes back within one batch (its node judged down, then heard
    /// again) is not among the diff's leaves: phoenix.js applies joins before leaves, so a diff
    /// carrying both would drop it from clients' lists while the replica holds it.
    #[test]
    fn a_meta_back_within_its_leave_batch_is_not_among_the_leaves() {
        let p = Replicas::new("n1");
        let bob = p.local_meta(Some(1), Map::new(), None);
        let join = |m: &Meta| Change {
            joins: vec![("bob".into(), m.clone())],
            leaves: vec![],
        };
        let leave = |m: &Meta| Change {
            joins: vec![],
            leaves: vec![("bob".into(), m.phx_ref.clone())],
        };
        let diff = |p: &Replicas| -> Value {
            let diffs = p.take_diffs();
            assert_eq!(diffs.len(), 1);
            serde_json::from_slice(diffs[0].1.bytes()).unwrap()
        };
        p.apply("t", join(&bob));
        diff(&p);

        assert!(p.apply("t", leave(&bob)));
        assert!(p.apply("t", join(&bob)));
        let d = diff(&p);
        assert_eq!(
            d["leaves"],
            serde_json::json!({}),
            "no leave for a meta that came back"
        );
        assert_eq!(
            d["joins"]["bob"]["metas"][0]["phx_ref"],
            Value::from(&*bob.phx_ref)
        );
        assert_eq!(p.list("t")["bob"].len(), 1);

        // joined and gone within one batch: both sides, so joins-then-leaves ends without it
        let cat = p.local_meta(Some(2), Map::new(), None);
        assert!(p.apply("t", join(&cat)));
        assert!(p.apply("t", leave(&cat)));
        let d = diff(&p);
        assert_eq!(
            d["joins"]["bob"]["metas"][0]["phx_ref"],
            Value::from(&*cat.phx_ref)
        );
        assert_eq!(
            d["leaves"]["bob"]["metas"][0]["phx_ref"],
            Value::from(&*cat.phx_ref)
        );
    }
}
