//! The Tracker: replicates presences between nodes through PubSub.
//!
//! * `phx_presence_delta` on a topic: a node's own joins/leaves there (only nodes interested in
//!   the topic receive it — the same interest-based routing as broadcasts);
//! * `phx_presence_sync` on a topic: a node that just got its first local subscriber asks for
//!   the state; every node answers with its own share, directly (`phx_presence_state`);
//! * `phx_presence_hb` on `phx_presence:hb`: every node's heartbeat (id + boot incarnation).
//!
//! A node silent for `presence_down_after` is declared down and its presences leave; a new
//! incarnation replaces the old one at once. While this node cannot hear the cluster (PubSub
//! not ready) nobody is declared down, and when it hears again it re-syncs every topic, so a
//! Redis restart produces no leave/join for users who never left.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::{debug, info};

use super::{Change, Meta, Owner};
use crate::node::Node;
use crate::protocol::Payload;
use crate::pubsub::Broadcast;

/// Topic of the node heartbeats.
pub const HEARTBEAT_TOPIC: &str = "phx_presence:hb";
const DELTA: &str = "phx_presence_delta";
const SYNC: &str = "phx_presence_sync";
const STATE: &str = "phx_presence_state";
const HEARTBEAT: &str = "phx_presence_hb";

/// Whether an event is the tracker's (never delivered to clients as is).
pub fn is_tracker_event(event: &str) -> bool {
    event.starts_with("phx_presence_")
}

/// When a remote node was last heard, and as which incarnation.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    inc: u64,
    last: Instant,
}

#[derive(Serialize, Deserialize)]
struct Delta {
    node: String,
    inc: u64,
    #[serde(default)]
    joins: Vec<(String, Value)>,
    #[serde(default)]
    leaves: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize)]
struct StateMsg {
    topic: String,
    node: String,
    inc: u64,
    metas: Vec<(String, Value)>,
}

#[derive(Serialize, Deserialize)]
struct Hello {
    node: String,
    inc: u64,
}

fn send(node: &Node, topic: &str, event: &str, body: &impl Serialize) {
    let msg = Broadcast {
        topic: topic.to_owned(),
        event: event.to_owned(),
        payload: Payload::json(body),
    };
    node.pubsub.broadcast(Arc::new(msg));
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

fn after_change(node: &Node) {
    if node.config.presence_batch.is_zero() {
        node.presence.flush(node);
    }
}

/// Track a presence of a local session on `topic` under `key`.
pub fn track(
    node: &Node,
    topic: &str,
    key: &str,
    fields: Map<String, Value>,
    session: Option<u64>,
) -> Arc<str> {
    let meta = node.presence.local_meta(session, fields, None);
    let phx_ref = meta.phx_ref.clone();
    replicate(
        node,
        topic,
        Change {
            joins: vec![(key.to_owned(), meta)],
            leaves: vec![],
        },
    );
    phx_ref
}

/// Replace a session's presence on `topic` with new fields (`phx_ref_prev` names the old meta);
/// one diff carries the join of the new meta and the leave of the old.
pub fn update(node: &Node, topic: &str, session: u64, fields: Map<String, Value>) -> bool {
    let old = node.presence.of_session(topic, session);
    let Some((key, prev)) = old.first().cloned() else {
        return false;
    };
    let meta = node.presence.local_meta(Some(session), fields, Some(&prev));
    replicate(
        node,
        topic,
        Change {
            joins: vec![(key, meta)],
            leaves: old,
        },
    );
    true
}

/// Untrack every presence a local session has on `topic`.
pub fn untrack_session(node: &Node, topic: &str, session: u64) {
    let leaves = node.presence.of_session(topic, session);
    if !leaves.is_empty() {
        replicate(
            node,
            topic,
            Change {
                joins: vec![],
                leaves,
            },
        );
    }
}

/// Apply a local change and send it to the other nodes.
fn replicate(node: &Node, topic: &str, change: Change) {
    let me = &node.presence.me;
    let delta = Delta {
        node: me.node.to_string(),
        inc: me.inc,
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
    node.presence.apply(topic, change);
    send(node, topic, DELTA, &delta);
    after_change(node);
}

/// Longest a first local subscriber waits for the other nodes' shares of a topic.
const SYNC_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

fn hello(node: &Node) -> Hello {
    Hello {
        node: node.presence.me.node.to_string(),
        inc: node.presence.me.inc,
    }
}

/// The topic's first local subscriber: ask every node for its share and wait (bounded) until
/// every node this one knows to be alive has answered.
pub async fn sync_first(node: &Node, topic: &str) {
    node.presence
        .answers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(topic.to_owned(), Default::default());
    send(node, topic, SYNC, &hello(node));
    let expected: Vec<Arc<str>> = node
        .presence
        .nodes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect();
    let deadline = Instant::now() + SYNC_WAIT;
    while Instant::now() < deadline {
        let done = node
            .presence
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .is_none_or(|got| expected.iter().all(|n| got.contains(n)));
        if done {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    node.presence
        .answers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(topic);
}

/// Tell the nodes interested in `topic` this node's whole share there (they replace what they
/// hold of it), and ask for theirs: after this node could not hear the cluster.
fn resync(node: &Node, topic: &str) {
    send(node, topic, STATE, &own_share(node, topic));
    send(node, topic, SYNC, &hello(node));
}

fn own_share(node: &Node, topic: &str) -> StateMsg {
    let me = &node.presence.me;
    let metas = node
        .presence
        .owned_by(topic, &me.node)
        .into_iter()
        .filter_map(|(k, m)| Some((k, serde_json::from_slice(&m.json).ok()?)))
        .collect();
    StateMsg {
        topic: topic.to_owned(),
        node: me.node.to_string(),
        inc: me.inc,
        metas,
    }
}

fn heard(node: &Node, from: &str, inc: u64) {
    let (old_inc, new) = {
        let mut nodes = node
            .presence
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let new = !nodes.contains_key(from);
        let seen = nodes.entry(Arc::from(from)).or_insert(Seen {
            inc,
            last: Instant::now(),
        });
        let old = seen.inc;
        *seen = Seen {
            inc,
            last: Instant::now(),
        };
        (old, new)
    };
    if old_inc != inc {
        info!(node = from, "node restarted: its old presences leave");
        remove_node(node, from, Some(inc));
    }
    if new {
        // A node joined, or came back after being declared down: fetch its shares of the
        // topics this node holds (its users re-join here).
        for topic in node.presence.topic_names() {
            send(node, &topic, SYNC, &hello(node));
        }
    }
}

fn remove_node(node: &Node, from: &str, keep_inc: Option<u64>) {
    let mut by_topic: std::collections::HashMap<String, Vec<(String, Arc<str>)>> =
        Default::default();
    for (topic, key, r) in node.presence.of_node(from, keep_inc) {
        by_topic.entry(topic).or_default().push((key, r));
    }
    for (topic, leaves) in by_topic {
        node.presence.apply(
            &topic,
            Change {
                joins: vec![],
                leaves,
            },
        );
    }
    after_change(node);
}

/// Handle a tracker message delivered on a topic or directly. Returns `false` if it is not one.
pub fn handle(node: &Arc<Node>, msg: &Broadcast) -> bool {
    if !is_tracker_event(&msg.event) {
        return false;
    }
    let body = msg.payload.bytes();
    match msg.event.as_str() {
        DELTA => {
            let Ok(d) = serde_json::from_slice::<Delta>(body) else {
                return true;
            };
            if d.node == *node.presence.me.node {
                return true;
            }
            heard(node, &d.node, d.inc);
            let owner = Owner {
                node: Arc::from(d.node.as_str()),
                inc: d.inc,
            };
            let joins = d
                .joins
                .into_iter()
                .filter_map(|(k, v)| Some((k, meta_from(&owner, v)?)))
                .collect();
            let leaves = d
                .leaves
                .into_iter()
                .map(|(k, r)| (k, Arc::from(r.as_str())))
                .collect();
            node.presence.apply(&msg.topic, Change { joins, leaves });
            after_change(node);
        }
        SYNC => {
            let Ok(h) = serde_json::from_slice::<Hello>(body) else {
                return true;
            };
            let share = own_share(node, &msg.topic);
            let reply = Broadcast {
                topic: String::new(),
                event: STATE.into(),
                payload: Payload::json(&share),
            };
            node.pubsub.direct(&h.node, Arc::new(reply));
        }
        STATE => {
            let Ok(s) = serde_json::from_slice::<StateMsg>(body) else {
                return true;
            };
            if s.node == *node.presence.me.node {
                return true;
            }
            heard(node, &s.node, s.inc);
            if let Some(got) = node
                .presence
                .answers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&s.topic)
            {
                got.insert(Arc::from(s.node.as_str()));
            }
            let owner = Owner {
                node: Arc::from(s.node.as_str()),
                inc: s.inc,
            };
            let fresh: Vec<(String, Meta)> = s
                .metas
                .into_iter()
                .filter_map(|(k, v)| Some((k, meta_from(&owner, v)?)))
                .collect();
            let current = node.presence.owned_by(&s.topic, &s.node);
            let leaves = current
                .iter()
                .filter(|(_, m)| !fresh.iter().any(|(_, f)| f.phx_ref == m.phx_ref))
                .map(|(k, m)| (k.clone(), m.phx_ref.clone()))
                .collect();
            node.presence.apply(
                &s.topic,
                Change {
                    joins: fresh,
                    leaves,
                },
            );
            after_change(node);
        }
        HEARTBEAT => {
            if let Ok(h) = serde_json::from_slice::<Hello>(body) {
                if h.node != *node.presence.me.node {
                    heard(node, &h.node, h.inc);
                }
            }
        }
        _ => debug!(event = %msg.event, "unknown tracker event"),
    }
    true
}

/// The tracker's periodic work: heartbeats, down detection, re-sync after deafness, and the
/// batched flush of client diffs.
pub async fn run(node: Arc<Node>) {
    node.pubsub.subscribe(HEARTBEAT_TOPIC);
    let period = node.config.presence_heartbeat;
    let batch = node.config.presence_batch;
    let tick_every = if batch.is_zero() {
        period.min(std::time::Duration::from_millis(100))
    } else {
        batch.min(period)
    };
    let mut tick = tokio::time::interval(tick_every);
    let mut last_beat = Instant::now() - period;
    let mut was_ready = node.pubsub.is_ready();
    loop {
        tick.tick().await;
        node.presence.flush(&node);
        if last_beat.elapsed() < period {
            continue;
        }
        last_beat = Instant::now();
        let ready = node.pubsub.is_ready();
        let me = Hello {
            node: node.presence.me.node.to_string(),
            inc: node.presence.me.inc,
        };
        send(&node, HEARTBEAT_TOPIC, HEARTBEAT, &me);
        if !ready {
            was_ready = false;
            continue; // deaf: nobody can be judged
        }
        if !was_ready {
            was_ready = true;
            info!("pubsub is back: re-syncing presence");
            for seen in node
                .presence
                .nodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values_mut()
            {
                seen.last = Instant::now();
            }
            for topic in node.presence.topic_names() {
                resync(&node, &topic);
            }
        }
        let down: Vec<Arc<str>> = {
            let mut nodes = node
                .presence
                .nodes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let down: Vec<Arc<str>> = nodes
                .iter()
                .filter(|(_, s)| s.last.elapsed() > node.config.presence_down_after)
                .map(|(n, _)| n.clone())
                .collect();
            for n in &down {
                nodes.remove(n);
            }
            down
        };
        for n in down {
            info!(node = %n, "node is down: its presences leave");
            remove_node(&node, &n, None);
        }
        node.metrics
            .presence_entries
            .set(node.presence.entries() as i64);
    }
}
