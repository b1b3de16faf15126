//! PubSub: the trait that moves cluster messages between nodes (local delivery is the Hub's
//! job). Adapters: `local` (in-process bus: a single node, or several nodes in one process for
//! tests) and `redis` (the cluster).
//!
//! The contract every adapter meets (checked by the shared `conformance` suite):
//! * `publish` reaches every *other* node currently subscribed to the topic, never the origin;
//! * a node only receives topics it is subscribed to (interest-based);
//! * `direct` reaches exactly the named node;
//! * delivery is at-most-once; `publish` and `direct` never block the caller.
//!
//! Inbound, every adapter hands what it receives to its node through one bounded queue (an
//! `Inbox`) with one overflow rule: a full queue drops the message and counts it
//! (`gateway_pubsub_dropped_total{reason="receive_queue_full"}`), so a slow node never stalls
//! the adapter's reader (for Redis, a reader Redis would otherwise cut off as too slow).

pub mod local;
pub mod redis;

#[cfg(test)]
mod conformance;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::cluster::ClusterMessage;
use crate::metrics::Metrics;

/// Capacity of the queue from an adapter to its node.
pub const DELIVERY_QUEUE: usize = 65_536;

/// The sending end of a node's delivery queue, as its adapter holds it.
#[derive(Clone, Debug)]
pub struct Inbox {
    /// The bounded queue the node consumes.
    tx: mpsc::Sender<ClusterMessage>,
    /// Where a drop is counted.
    metrics: Arc<Metrics>,
}

impl Inbox {
    /// A delivery queue of `DELIVERY_QUEUE` messages and its consuming end.
    pub fn new(metrics: Arc<Metrics>) -> (Self, mpsc::Receiver<ClusterMessage>) {
        let (tx, rx) = mpsc::channel(DELIVERY_QUEUE);
        (Inbox { tx, metrics }, rx)
    }

    /// Hand a message to the node without waiting; `false` (counted) when the queue is full.
    pub fn offer(&self, msg: ClusterMessage) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.dropped("receive_queue_full");
                false
            }
            // The node is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Cross-node transport of cluster messages.
pub trait PubSub: Send + Sync + 'static {
    /// This node's id, unique per boot.
    fn node_id(&self) -> &str;

    /// Start receiving `topic` (the Hub calls this when the first local subscriber arrives).
    /// Must not block: the adapter does any I/O in the background.
    fn subscribe(&self, topic: &str);

    /// Resolves once this node's subscription to `topic` (already asked for) is in effect, so
    /// whatever is published afterwards reaches it, or after a bounded wait. A join reading a
    /// topic's history waits for it first, so no broadcast falls between the read and the
    /// subscription. Immediate for adapters that subscribe synchronously.
    fn subscribed<'a>(&'a self, _topic: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Stop receiving `topic` (after the last local subscriber left).
    fn unsubscribe(&self, topic: &str);

    /// Send to every other node subscribed to `topic`. Fire-and-forget; failures are counted.
    fn publish(&self, topic: &str, msg: ClusterMessage);

    /// Send to one node.
    fn direct(&self, node_id: &str, msg: ClusterMessage);

    /// Whether this node currently hears the cluster (drives `/readyz`).
    fn is_ready(&self) -> bool;

    /// Bring the adapter's own metrics up to date (called before each `/metrics` scrape).
    fn refresh_metrics(&self) {}
}

/// Shared handle to a node's adapter.
pub type SharedPubSub = Arc<dyn PubSub>;
