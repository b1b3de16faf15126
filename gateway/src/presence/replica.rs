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
    /// Joins not yet sent to local clients: key → meta JSON.
    joins: BTreeMap<String, Vec<Bytes>>,
    /// Leaves not yet sent to local clients: key → meta JSON.
    leaves: BTreeMap<String, Vec<Bytes>>,
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
fn render_map(map: &BTreeMap<String, Vec<Bytes>>) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(64 + map.values().flatten().map(|m| m.len() + 1).sum::<usize>());
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
            out.extend_from_slice(m);
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
                state.leaves.entry(key).or_default().push(m.json);
                changed = true;
            }
        }
        for (key, meta) in change.joins {
            let metas = state.entries.entry(key.clone()).or_default();
            if metas.iter().any(|m| m.phx_ref == meta.phx_ref) {
                continue;
            }
            state.joins.entry(key).or_default().push(meta.json.clone());
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
                (
                    std::mem::take(&mut state.joins),
                    std::mem::take(&mut state.leaves),
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
}
