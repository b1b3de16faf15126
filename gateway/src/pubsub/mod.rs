//! PubSub: the trait that moves broadcasts between nodes (local delivery is the Hub's job), and
//! the message that travels. Adapters: `local` (in-process bus: a single node, or several nodes
//! in one process for tests) and, in the cluster build, Redis.
//!
//! The contract every adapter meets (checked by the shared `conformance` suite):
//! * `broadcast` reaches every *other* node currently subscribed to the topic, never the origin;
//! * a node only receives topics it is subscribed to (interest-based);
//! * `direct` reaches exactly the named node;
//! * delivery is at-most-once; `broadcast` never blocks the caller.

pub mod local;
pub mod redis;

#[cfg(test)]
mod conformance;

use std::sync::Arc;

use tokio::sync::mpsc;

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
}

/// What an adapter hands to its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A broadcast on a topic this node is subscribed to.
    Topic(Arc<Broadcast>),
    /// A message addressed to this node alone.
    Direct(Arc<Broadcast>),
}

/// Queue on which an adapter delivers to its node. Bounded; adapters drop (and count) when full.
pub type DeliveryTx = mpsc::Sender<Delivery>;

/// Cross-node fan-out.
pub trait PubSub: Send + Sync + 'static {
    /// This node's id, unique per boot.
    fn node_id(&self) -> &str;

    /// Start receiving `topic` (the Hub calls this when the first local subscriber arrives).
    /// Must not block: the adapter does any I/O in the background.
    fn subscribe(&self, topic: &str);

    /// Stop receiving `topic` (after the last local subscriber left).
    fn unsubscribe(&self, topic: &str);

    /// Send to every other node subscribed to the topic. Fire-and-forget; failures are counted.
    fn broadcast(&self, msg: Arc<Broadcast>);

    /// Send to one node.
    fn direct(&self, node_id: &str, msg: Arc<Broadcast>);

    /// Whether this node currently hears the cluster (drives `/readyz`).
    fn is_ready(&self) -> bool;

    /// Bring the adapter's own metrics up to date (called before each `/metrics` scrape).
    fn refresh_metrics(&self) {}
}

/// Shared handle to a node's adapter.
pub type SharedPubSub = Arc<dyn PubSub>;
