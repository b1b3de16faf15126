//! The Node: one gateway process's shared state (config, Hub, PubSub adapter, Registry, Router,
//! Auth, Metrics) and the few operations every part uses: queue a frame for a session, and
//! broadcast to a topic across the cluster.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::debug;

use crate::auth::Auth;
use crate::channel::Router;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::Outgoing;
use crate::pubsub::{Broadcast, Delivery, SharedPubSub};
use crate::session::{OutItem, OutboxLimits, Pushed, Registry, SessionHandle};
use crate::transport::Wire;

/// Shared state of a node.
pub struct Node {
    /// Settings.
    pub config: Config,
    /// Topic index and local fan-out.
    pub hub: Hub,
    /// Cross-node adapter.
    pub pubsub: SharedPubSub,
    /// Every live session (drain, idle sweep).
    pub registry: Registry,
    /// Topic patterns → channels.
    pub router: Router,
    /// Token verification.
    pub auth: Auth,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Session cap and per-IP connect rate, checked before a session exists.
    pub admission: crate::admission::Admission,
    /// Set when the drain starts: `/readyz` fails and new connections are refused.
    pub draining: AtomicBool,
    /// Outbox limits of channel sessions.
    pub limits: OutboxLimits,
    /// Presence replicas and the tracker's bookkeeping.
    pub presence: crate::presence::Presence,
    /// Long-poll sessions and forwarded requests.
    pub longpoll: crate::transport::longpoll::LongPoll,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.pubsub.node_id())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Encode and queue a frame for one session.
    pub fn send(&self, session: &SessionHandle, wire: Wire, out: Outgoing<'_>) {
        match wire.frame(out) {
            Some(frame) => self.queue(session, OutItem::Frame(frame)),
            None => self.metrics.unencodable.inc(),
        }
    }

    /// Queue an item for one session.
    pub fn queue(&self, session: &SessionHandle, item: OutItem) {
        if session.outbox.push(item, self.limits) == Pushed::Overflow {
            self.metrics.slow_consumers.inc();
        }
    }

    /// Broadcast to a topic on every node; `exclude` skips one local session (broadcast_from).
    pub fn broadcast(&self, msg: Arc<Broadcast>, exclude: Option<u64>) {
        self.metrics.broadcasts.inc();
        self.hub.fanout(&msg, exclude);
        self.pubsub.broadcast(msg);
    }

    /// Whether the node should receive traffic (`/readyz`).
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.pubsub.is_ready()
    }

    /// Admit a new session from `peer` (session cap, per-IP rate), counting refusals.
    pub fn admit(
        &self,
        peer: Option<&crate::admission::PeerAddr>,
    ) -> Result<(), crate::admission::Refusal> {
        let verdict = self
            .admission
            .admit(self.registry.len(), peer.map(|p| p.0.ip()));
        if let Err(r) = verdict {
            self.metrics
                .connect_refusals
                .with_label_values(&[r.label()])
                .inc();
        }
        verdict
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Consume the adapter's deliveries until it closes the queue.
    pub async fn deliver(self: Arc<Self>, mut rx: mpsc::Receiver<Delivery>) {
        while let Some(d) = rx.recv().await {
            match d {
                Delivery::Topic(msg) => {
                    if !crate::presence::tracker::handle(&self, &msg) {
                        self.hub.fanout(&msg, None);
                    }
                }
                Delivery::Direct(msg) => {
                    if !crate::presence::tracker::handle(&self, &msg)
                        && !crate::transport::longpoll::handle_direct(&self, &msg)
                    {
                        debug!(event = %msg.event, "direct message with no handler");
                    }
                }
            }
        }
    }
}
