//! The Tracker: replicates presences between nodes through PubSub, with typed cluster messages
//! (`cluster::PresenceMessage`):
//!
//! * `Delta` on a topic: a node's own joins/leaves there (only nodes interested in the topic
//!   receive it — the same interest-based routing as broadcasts);
//! * `Sync` on a topic: a node that just got its first local subscriber asks for the state;
//!   every node answers with its own share, directly (`State`);
//! * `Heartbeat` on `HEARTBEAT_TOPIC`: every node's id and boot incarnation, every `heartbeat`.
//!
//! A dead node's presences leave everywhere within `down_after` of its death: every node
//! declares it down once silent for `down_after − heartbeat` (it died at or after the last
//! heartbeat heard), checking on every tick, and its clients get the leave at the next tick's
//! flush; two ticks fit in the heartbeat period left over whenever the tick (the diff batch
//! interval, 20 ms by default) is at most half the heartbeat (1 s by default). A new
//! incarnation replaces the old one at once. While this node cannot hear the cluster (PubSub
//! not ready) nobody is declared down, and when it hears again it re-syncs every topic, so a
//! Redis restart produces no leave/join for users who never left.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::info;

use super::{Change, Meta, Owner, Presence, PresenceSettings};
use crate::cluster::{ClusterMessage, Delta, NodeRef, PresenceMessage, Share};

/// Topic of the node heartbeats.
pub const HEARTBEAT_TOPIC: &str = "phx_presence:hb";

/// Longest a first local subscriber waits for the other nodes' shares of a topic.
const SYNC_WAIT: Duration = Duration::from_millis(500);

/// When a remote node was last heard, and as which incarnation.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    inc: u64,
    last: Instant,
}

fn meta_from(owner: &Owner, v: Value) -> Option<Meta> {
    let phx_ref: Arc<str> = Arc::from(v.get("phx_ref")?.as_str()?);
    Some(Meta {
        phx_ref,
        owner: owner.clone(),
        session: None,
        json: serde_json::to_vec(&v).ok()?.into(),
    })
}

fn owner_of(from: &NodeRef) -> Owner {
    Owner {
        node: Arc::from(from.node.as_str()),
        inc: from.inc,
    }
}

impl Presence {
    /// This node in the tracker's messages.
    fn me(&self) -> NodeRef {
        let me = &self.replicas.me;
        NodeRef {
            node: me.node.to_string(),
            inc: me.inc,
        }
    }

    fn publish(&self, topic: &str, msg: PresenceMessage) {
        self.hub
            .pubsub()
            .publish(topic, ClusterMessage::Presence(msg));
    }

    /// Apply a local change and send it to the other nodes.
    pub(super) fn replicate(&self, topic: &str, change: Change) {
        let delta = Delta {
            from: self.me(),
            joins: change
                .joins
                .iter()
                .filter_map(|(k, m)| Some((k.clone(), serde_json::from_slice(&m.json).ok()?)))
                .collect(),
            leaves: change
                .leaves
                .iter()
                .map(|(k, r)| (k.clone(), r.to_string()))
                .collect(),
        };
        self.replicas.apply(topic, change);
        self.publish(
            topic,
            PresenceMessage::Delta {
                topic: topic.to_owned(),
                delta,
            },
        );
        self.after_change();
    }

    fn ask(&self, topic: &str) {
        self.publish(
            topic,
            PresenceMessage::Sync {
                topic: topic.to_owned(),
                from: self.me(),
            },
        );
    }

    /// The topic's first local subscriber: ask every node for its share and wait (bounded) until
    /// every node this one knows to be alive has answered.
    pub async fn sync_first(&self, topic: &str) {
        let answers = || self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers().insert(topic.to_owned(), Default::default());
        self.ask(topic);
        let expected: Vec<Arc<str>> = self.nodes().keys().cloned().collect();
        let deadline = Instant::now() + SYNC_WAIT;
        while Instant::now() < deadline {
            let done = answers()
                .get(topic)
                .is_none_or(|got| expected.iter().all(|n| got.contains(n)));
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        answers().remove(topic);
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Arc<str>, Seen>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn own_share(&self, topic: &str) -> Share {
        let metas = self
            .replicas
            .owned_by(topic, &self.replicas.me.node)
            .into_iter()
            .filter_map(|(k, m)| Some((k, serde_json::from_slice(&m.json).ok()?)))
            .collect();
        Share {
            topic: topic.to_owned(),
            from: self.me(),
            metas,
        }
    }

    fn heard(&self, from: &NodeRef) {
        let (old_inc, new) = {
            let mut nodes = self.nodes();
            let now = Instant::now();
            let seen = Seen {
                inc: from.inc,
                last: now,
            };
            match nodes.insert(Arc::from(from.node.as_str()), seen) {
                Some(old) => (old.inc, false),
                None => (from.inc, true),
            }
        };
        if old_inc != from.inc {
            info!(node = %from.node, "node restarted: its old presences leave");
            self.remove_node(&from.node, Some(from.inc));
        }
        if new {
            // A node joined, or came back after being declared down: fetch its shares of the
            // topics this node holds (its users re-join here).
            for topic in self.replicas.topic_names() {
                self.ask(&topic);
            }
        }
    }

    fn remove_node(&self, node: &str, keep_inc: Option<u64>) {
        let mut by_topic: std::collections::HashMap<String, Vec<(String, Arc<str>)>> =
            Default::default();
        for (topic, key, r) in self.replicas.of_node(node, keep_inc) {
            by_topic.entry(topic).or_default().push((key, r));
        }
        for (topic, leaves) in by_topic {
            self.replicas.apply(
                &topic,
                Change {
                    joins: vec![],
                    leaves,
                },
            );
        }
        self.after_change();
    }

    /// Apply a node's whole share of a topic: it replaces what this node holds of that node.
    fn replace_share(&self, s: Share) {
        if let Some(got) = self
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&s.topic)
        {
            got.insert(Arc::from(s.from.node.as_str()));
        }
        let owner = owner_of(&s.from);
        let fresh: Vec<(String, Meta)> = s
            .metas
            .into_iter()
            .filter_map(|(k, v)| Some((k, meta_from(&owner, v)?)))
            .collect();
        let current = self.replicas.owned_by(&s.topic, &s.from.node);
        let leaves = current
            .iter()
            .filter(|(_, m)| !fresh.iter().any(|(_, f)| f.phx_ref == m.phx_ref))
            .map(|(k, m)| (k.clone(), m.phx_ref.clone()))
            .collect();
        self.replicas.apply(
            &s.topic,
            Change {
                joins: fresh,
                leaves,
            },
        );
        self.after_change();
    }

    /// Handle a presence message from another node.
    pub fn handle(&self, msg: PresenceMessage) {
        let me = &self.replicas.me.node;
        match msg {
            PresenceMessage::Delta { topic, delta } => {
                if *delta.from.node == **me {
                    return;
                }
                self.heard(&delta.from);
                let owner = owner_of(&delta.from);
                let joins = delta
                    .joins
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, meta_from(&owner, v)?)))
                    .collect();
                let leaves = delta
                    .leaves
                    .into_iter()
                    .map(|(k, r)| (k, Arc::from(r.as_str())))
                    .collect();
                self.replicas.apply(&topic, Change { joins, leaves });
                self.after_change();
            }
            PresenceMessage::Sync { topic, from } => {
                let share = self.own_share(&topic);
                self.hub.pubsub().direct(
                    &from.node,
                    ClusterMessage::Presence(PresenceMessage::State(share)),
                );
            }
            PresenceMessage::State(share) => {
                if *share.from.node != **me {
                    self.heard(&share.from);
                    self.replace_share(share);
                }
            }
            PresenceMessage::Heartbeat(from) => {
                if *from.node != **me {
                    self.heard(&from);
                }
            }
        }
    }

    /// The tracker's periodic work, forever: heartbeats, down detection, re-sync after
    /// deafness, and the batched flush of client diffs. Down detection runs on every tick, not
    /// once per heartbeat, so when a node is removed does not depend on this node's heartbeat
    /// phase.
    pub async fn run(self: Arc<Self>) {
        let pubsub = self.hub.pubsub().clone();
        pubsub.subscribe(HEARTBEAT_TOPIC);
        let PresenceSettings {
            batch,
            heartbeat: period,
            down_after,
        } = self.settings;
        let tick_every = if batch.is_zero() {
            period.min(Duration::from_millis(100))
        } else {
            batch.min(period)
        };
        // silence measured from the last heartbeat heard; the node died at or after it
        let silent_limit = down_after.saturating_sub(period);
        let mut tick = tokio::time::interval(tick_every);
        let mut last_beat = Instant::now() - period;
        let mut was_ready = pubsub.is_ready();
        // whether this node lost the cluster after a ready heartbeat (an outage seen while ready)
        let mut was_deaf = false;
        // the first tick that saw PubSub ready since it was last not ready: from then on this
        // node could hear the others, though the re-sync below waits for a heartbeat
        let mut ready_since: Option<Instant> = None;
        loop {
            tick.tick().await;
            self.flush();
            let beat = last_beat.elapsed() >= period;
            if beat {
                last_beat = Instant::now();
                self.publish(HEARTBEAT_TOPIC, PresenceMessage::Heartbeat(self.me()));
            }
            // deafness is noticed on any tick (a short outage must not go unseen), recovery
            // only at the heartbeat's pace, so a broker connection flapping while it comes back
            // re-syncs once per heartbeat, not once per tick
            let ready = pubsub.is_ready();
            if ready {
                ready_since.get_or_insert_with(Instant::now);
            } else {
                was_deaf |= was_ready;
                was_ready = false;
                ready_since = None;
            }
            if beat && ready && !was_ready {
                was_ready = true;
                info!("pubsub is back: re-syncing presence");
                // Silence is measured from the return of readiness at the earliest: nodes heard
                // before an outage are not judged by its silence, even one that began before
                // this node's first ready heartbeat (Redis dying just after start-up). From
                // that tick, not from this later heartbeat, or a node that died meanwhile would
                // get up to a heartbeat more than `down_after`. After an outage seen while
                // ready, every node gets the whole `down_after` from then, as the others
                // reconnect to the broker on their own schedule; at start-up no extra grace, so
                // a node that dies right after is still gone within `down_after`.
                let back = ready_since.unwrap_or_else(Instant::now);
                let fresh = if std::mem::take(&mut was_deaf) {
                    back + period
                } else {
                    back
                };
                for seen in self.nodes().values_mut() {
                    seen.last = seen.last.max(fresh);
                }
                for topic in self.replicas.topic_names() {
                    // This node's whole share (the others replace what they hold of it), and
                    // a request for theirs.
                    self.publish(&topic, PresenceMessage::State(self.own_share(&topic)));
                    self.ask(&topic);
                }
            }
            if !was_ready {
                continue; // deaf: nobody can be judged
            }
            let down: Vec<Arc<str>> = {
                let mut nodes = self.nodes();
                let down: Vec<Arc<str>> = nodes
                    .iter()
                    .filter(|(_, s)| s.last.elapsed() > silent_limit)
                    .map(|(n, _)| n.clone())
                    .collect();
                for n in &down {
                    nodes.remove(n);
                }
                down
            };
            for n in down {
                info!(node = %n, "node is down: its presences leave");
                self.remove_node(&n, None);
            }
            if beat {
                self.metrics
                    .presence_entries
                    .set(self.replicas.entries() as i64);
            }
        }
    }
}
