//! Cluster messages: everything one node sends another, as one typed enum. Client-visible
//! broadcasts, presence replication (delta, sync request, state share, heartbeat) and long-poll
//! request forwarding (request, ack, response) each have their own variant, so nothing is sorted
//! by event-name strings and no client event can be mistaken for cluster traffic.
//!
//! On the wire (Redis) a broadcast is an envelope of version 1 — the documented format backends
//! may publish themselves — and the cluster's own kinds are envelopes of version 2 that name
//! their kind (`codec`). A backend's envelope is therefore always a broadcast; one whose event is
//! reserved (`phx_*`, `presence_*`), or any message of an unknown kind, on the wrong route, or
//! malformed, is dropped and counted, never acted on.

pub mod codec;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::protocol::Payload;

/// A topic broadcast, as it travels between nodes and through the Hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broadcast {
    /// Topic, e.g. `room:42`.
    pub topic: String,
    /// Event name.
    pub event: String,
    /// Already-encoded payload, passed through untouched.
    pub payload: Payload,
    /// Its position in the topic's history (`"<epoch>-<offset>"`, see `history`), sent to
    /// clients in the `ref` slot; `None` on topics without history.
    pub position: Option<Arc<str>>,
    /// A session of the origin node that must not get it (`broadcast_from` on a history
    /// topic, delivered from its echo). Only ever set on the origin node.
    pub except: Option<u64>,
}

impl Broadcast {
    /// A shared broadcast of `event` on `topic`.
    pub fn new(topic: impl Into<String>, event: impl Into<String>, payload: Payload) -> Arc<Self> {
        Arc::new(Broadcast::plain(topic, event, payload))
    }

    /// A broadcast without position or exception, to be shared or positioned.
    pub fn plain(topic: impl Into<String>, event: impl Into<String>, payload: Payload) -> Self {
        Broadcast {
            topic: topic.into(),
            event: event.into(),
            payload,
            position: None,
            except: None,
        }
    }
}

/// Everything nodes send each other.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterMessage {
    /// A broadcast to a topic's subscribers (on its topic).
    Broadcast(Arc<Broadcast>),
    /// Presence replication.
    Presence(PresenceMessage),
    /// Long-poll request forwarding (always direct, node to node).
    LongPoll(LongPollMessage),
}

/// How a message travels: on a topic (to every node interested in it) or to one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Published on a topic.
    Topic,
    /// Sent to one node.
    Direct,
}

impl ClusterMessage {
    /// Whether this kind of message travels by `route`; one arriving any other way is dropped.
    pub fn travels_by(&self, route: Route) -> bool {
        match self {
            ClusterMessage::Broadcast(_)
            | ClusterMessage::Presence(PresenceMessage::Delta { .. })
            | ClusterMessage::Presence(PresenceMessage::Sync { .. })
            | ClusterMessage::Presence(PresenceMessage::Heartbeat(_)) => route == Route::Topic,
            // Directly to who asked, or on the topic when a node re-syncs after an outage.
            ClusterMessage::Presence(PresenceMessage::State(_)) => true,
            ClusterMessage::LongPoll(_) => route == Route::Direct,
        }
    }
}

/// A node incarnation: its id and a random number per boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    /// Node id.
    pub node: String,
    /// Boot incarnation.
    pub inc: u64,
}

/// Presence replication between nodes (see `presence::tracker`).
#[derive(Clone, Debug, PartialEq)]
pub enum PresenceMessage {
    /// A node's own joins and leaves on a topic (to the nodes interested in it).
    Delta {
        /// The topic.
        topic: String,
        /// The change.
        delta: Delta,
    },
    /// A node asks the others for their shares of a topic (answered with `State`, directly).
    Sync {
        /// The topic.
        topic: String,
        /// Who asks.
        from: NodeRef,
    },
    /// A node's whole share of a topic (directly to who asked, or on the topic after a
    /// re-sync); receivers replace what they hold of that node there.
    State(Share),
    /// A node's periodic "I am alive", on the heartbeat topic.
    Heartbeat(NodeRef),
}

/// Joins and leaves of one node on one topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// The owner node.
    #[serde(flatten)]
    pub from: NodeRef,
    /// (key, meta) joined.
    #[serde(default)]
    pub joins: Vec<(String, Value)>,
    /// (key, phx_ref) left.
    #[serde(default)]
    pub leaves: Vec<(String, String)>,
}

/// One node's metas on one topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Share {
    /// The topic.
    pub topic: String,
    /// The owner node.
    #[serde(flatten)]
    pub from: NodeRef,
    /// (key, meta) it owns there.
    pub metas: Vec<(String, Value)>,
}

/// Long-poll forwarding: a node that gets a request for a session another node owns sends it to
/// the owner, which acknowledges at once and answers with the response body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LongPollMessage {
    /// A GET (no body) or POST (body) for a session of the receiving node.
    Request {
        /// Request id, unique on the sender.
        id: u64,
        /// The sender, where the answer goes.
        from: String,
        /// The session token the client presented.
        token: String,
        /// POST body (text; base64 lines stay base64). `None` for a GET.
        body: Option<String>,
        /// Whether the POST body is ndjson.
        ndjson: bool,
    },
    /// The owner has the request (its answer may take up to the poll window).
    Ack {
        /// Request id.
        id: u64,
    },
    /// The owner's answer body.
    Response {
        /// Request id.
        id: u64,
        /// The long-poll answer body.
        body: String,
    },
}
