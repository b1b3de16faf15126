//! The in-process PubSub adapter: a `LocalBus` that any number of nodes in one process attach to.
//! A lone node gets a bus of its own (broadcasts then reach nobody else, which is correct for a
//! single node); tests attach several nodes to one bus to get a cluster without Redis.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use super::{Inbox, PubSub};
use crate::cluster::ClusterMessage;

#[derive(Default)]
struct BusState {
    /// Attached nodes by id.
    nodes: HashMap<String, Inbox>,
    /// Topic → ids of nodes subscribed to it.
    topics: HashMap<String, HashSet<String>>,
}

/// An in-process bus shared by the nodes attached to it.
#[derive(Default, Clone)]
pub struct LocalBus {
    /// Attached nodes and their subscriptions.
    state: Arc<Mutex<BusState>>,
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus").finish_non_exhaustive()
    }
}

impl LocalBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attach a node; deliveries for it go to `inbox`.
    pub fn attach(&self, node_id: impl Into<String>, inbox: Inbox) -> LocalPubSub {
        let node_id = node_id.into();
        self.lock().nodes.insert(node_id.clone(), inbox);
        LocalPubSub {
            node_id,
            bus: Arc::downgrade(&self.state),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BusState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One node's attachment to a `LocalBus`.
#[derive(Debug)]
pub struct LocalPubSub {
    /// This node's id.
    node_id: String,
    /// The bus; weak so a bus dropped by its owner (end of a test) does not live on.
    bus: Weak<Mutex<BusState>>,
}

impl LocalPubSub {
    fn with_bus(&self, f: impl FnOnce(&mut BusState)) {
        if let Some(bus) = self.bus.upgrade() {
            f(&mut bus.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

impl Drop for LocalPubSub {
    fn drop(&mut self) {
        let id = self.node_id.clone();
        self.with_bus(|s| {
            s.nodes.remove(&id);
            s.topics.retain(|_, nodes| {
                nodes.remove(&id);
                !nodes.is_empty()
            });
        });
    }
}

impl PubSub for LocalPubSub {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn subscribe(&self, topic: &str) {
        let id = self.node_id.clone();
        self.with_bus(|s| {
            s.topics.entry(topic.to_owned()).or_default().insert(id);
        });
    }

    fn unsubscribe(&self, topic: &str) {
        self.with_bus(|s| {
            if let Some(nodes) = s.topics.get_mut(topic) {
                nodes.remove(&self.node_id);
                if nodes.is_empty() {
                    s.topics.remove(topic);
                }
            }
        });
    }

    fn publish(&self, topic: &str, msg: ClusterMessage) {
        // Session keys are per node: an exception means nothing to the receivers.
        let msg = match msg {
            ClusterMessage::Broadcast(b) if b.except.is_some() => {
                let mut b = (*b).clone();
                b.except = None;
                ClusterMessage::Broadcast(std::sync::Arc::new(b))
            }
            other => other,
        };
        self.with_bus(|s| {
            let Some(nodes) = s.topics.get(topic) else {
                return;
            };
            for node in nodes.iter().filter(|n| **n != self.node_id) {
                if let Some(tx) = s.nodes.get(node) {
                    tx.offer(msg.clone());
                }
            }
        });
    }

    fn direct(&self, node_id: &str, msg: ClusterMessage) {
        self.with_bus(|s| {
            if let Some(tx) = s.nodes.get(node_id) {
                tx.offer(msg);
            }
        });
    }

    fn is_ready(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::SharedPubSub;

    #[tokio::test]
    async fn local_adapter_passes_the_conformance_suite() {
        let bus = LocalBus::new();
        crate::pubsub::conformance::run(|id| {
            let bus = bus.clone();
            async move {
                let (inbox, rx) = Inbox::new(Arc::new(crate::metrics::Metrics::new()));
                let ps: SharedPubSub = Arc::new(bus.attach(id, inbox));
                (ps, rx)
            }
        })
        .await;
    }
}
