//! Presence: who is in a topic, cluster-wide, in the shapes phoenix.js `Presence` consumes
//! (`presence_state` after every join, `presence_diff` on changes).
//!
//! Each node is the authority for its own sessions' presences and replicates them to the other
//! nodes interested in the topic (`tracker`). Every node keeps a replica of the topic's whole
//! state (`replica`) and builds the client-facing diffs itself from changes to that replica, so
//! each client gets exactly one diff per change, from its own node. Diffs to clients are
//! batched per topic for `batch` (default 20 ms): a topic with many members gets one diff per
//! interval carrying every join and leave of that interval, instead of one fan-out per join.

mod replica;
pub mod tracker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};

pub use replica::{Change, Meta, Owner, Replicas, MAX_META_BYTES};

use crate::cluster::Broadcast;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::Payload;

/// Presence timings.
#[derive(Clone, Copy, Debug)]
pub struct PresenceSettings {
    /// Diffs to clients are batched per topic over this interval (0: one diff per change).
    pub batch: Duration,
    /// Period of this node's heartbeat.
    pub heartbeat: Duration,
    /// A node not heard for this long is down: its presences leave.
    pub down_after: Duration,
}

/// The node's presence service.
#[derive(Debug)]
pub struct Presence {
    /// Every topic's replica.
    replicas: Replicas,
    /// Fan-out of diffs to local clients, and the cluster the tracker talks to.
    hub: Arc<Hub>,
    /// Timings.
    settings: PresenceSettings,
    /// The presence gauge.
    metrics: Arc<Metrics>,
    /// Remote node incarnations and when they were last heard.
    nodes: Mutex<HashMap<Arc<str>, tracker::Seen>>,
    /// Topics whose state this node asked for: the nodes that answered so far.
    answers: Mutex<HashMap<String, HashSet<Arc<str>>>>,
}

impl Presence {
    /// The presence service of the node `hub` serves.
    pub fn new(hub: Arc<Hub>, settings: PresenceSettings, metrics: Arc<Metrics>) -> Self {
        Presence {
            replicas: Replicas::new(hub.node_id()),
            hub,
            settings,
            metrics,
            nodes: Mutex::default(),
            answers: Mutex::default(),
        }
    }

    /// Track a presence of a local session on `topic` under `key`; returns its `phx_ref`.
    pub fn track(
        &self,
        topic: &str,
        key: &str,
        fields: Map<String, Value>,
        session: Option<u64>,
    ) -> Arc<str> {
        let meta = self.replicas.local_meta(session, fields, None);
        let phx_ref = meta.phx_ref.clone();
        self.replicate(
            topic,
            Change {
                joins: vec![(key.to_owned(), meta)],
                leaves: vec![],
            },
        );
        phx_ref
    }

    /// Replace a session's presence on `topic` with new fields (`phx_ref_prev` names the old
    /// meta); one diff carries the join of the new meta and the leave of the old. `false` when
    /// the session tracks nothing there.
    pub fn update(&self, topic: &str, session: u64, fields: Map<String, Value>) -> bool {
        let old = self.replicas.of_session(topic, session);
        let Some((key, prev)) = old.first().cloned() else {
            return false;
        };
        let meta = self.replicas.local_meta(Some(session), fields, Some(&prev));
        self.replicate(
            topic,
            Change {
                joins: vec![(key, meta)],
                leaves: old,
            },
        );
        true
    }

    /// Untrack every presence a local session has on `topic`.
    pub fn untrack_session(&self, topic: &str, session: u64) {
        let leaves = self.replicas.of_session(topic, session);
        if !leaves.is_empty() {
            self.replicate(
                topic,
                Change {
                    joins: vec![],
                    leaves,
                },
            );
        }
    }

    /// A local session left `topic`: drop its presences there, and the topic's replica once no
    /// local session watches it.
    pub fn left(&self, topic: &str, session: u64) {
        self.untrack_session(topic, session);
        let watched = self.hub.subscribers(topic) > 0;
        self.replicas.forget_if_unwatched(topic, watched);
    }

    /// The topic's presence state (the `presence_state` payload).
    pub fn state(&self, topic: &str) -> Payload {
        self.replicas.state(topic)
    }

    /// The topic's presences: key → metas.
    pub fn list(&self, topic: &str) -> BTreeMap<String, Vec<Value>> {
        self.replicas.list(topic)
    }

    /// Send every batched diff to local subscribers (one `presence_diff` per changed topic).
    pub fn flush(&self) {
        for (topic, diff) in self.replicas.take_diffs() {
            self.hub
                .fanout(&Broadcast::new(topic, "presence_diff", diff), None);
        }
    }

    /// After a change: with batching off, diffs go out at once.
    fn after_change(&self) {
        if self.settings.batch.is_zero() {
            self.flush();
        }
    }
}
