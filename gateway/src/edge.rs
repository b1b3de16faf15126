//! The Edge: what every edge of a node shares — the transports, the HTTP API, the drain and the
//! demo page. It holds the core the sessions act through plus what only edges need: the
//! settings they read, token verification, admission, and whether the node is draining. The
//! core never sees it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::admission::{Admission, PeerAddr, Refusal};
use crate::auth::Auth;
use crate::backend::Backend;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::outbox::OutboxLimits;
use crate::session::Core;

/// Shared state of a node's edges.
pub struct Edge {
    /// The core services sessions act through.
    pub core: Arc<Core>,
    /// Settings (origins, long-poll timings, API key, limits...).
    pub config: Config,
    /// Token verification.
    pub auth: Auth,
    /// Session cap and per-IP connect rate, checked before a session exists.
    pub admission: Admission,
    /// Set when the drain starts: `/readyz` fails and new connections are refused.
    pub draining: AtomicBool,
    /// The backend whose `connect` hook admits new sessions (when `[backend] connect = true`).
    pub backend: Option<Arc<Backend>>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("node_id", &self.node_id())
            .finish_non_exhaustive()
    }
}

impl Edge {
    /// This node's id.
    pub fn node_id(&self) -> &str {
        self.core.hub.node_id()
    }

    /// Metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.core.metrics
    }

    /// Outbox limits of channel sessions.
    pub fn outbox_limits(&self) -> OutboxLimits {
        OutboxLimits {
            max_items: self.config.outbox_max_frames,
            max_bytes: self.config.outbox_max_bytes,
        }
    }

    /// Whether the node should receive traffic (`/readyz`).
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.core.hub.pubsub().is_ready()
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Admit a new session from `peer` (session cap, per-IP rate), counting refusals.
    pub fn admit(&self, peer: Option<&PeerAddr>) -> Result<(), Refusal> {
        let verdict = self
            .admission
            .admit(self.core.registry.len(), peer.map(|p| p.0.ip()));
        if let Err(r) = verdict {
            self.metrics()
                .connect_refusals
                .with_label_values(&[r.label()])
                .inc();
        }
        verdict
    }

    /// Count a refused connect attempt (`reason` is the metric label).
    pub fn refused(&self, reason: &str) {
        self.metrics()
            .connect_refusals
            .with_label_values(&[reason])
            .inc();
    }
}
