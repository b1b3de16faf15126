//! Drain: the paced shutdown. The node refuses new sessions (503), `/readyz` turns 503, and sessions are
//! closed in batches (`drain_batch_size` every `drain_interval`) with close code 1012 so clients
//! reconnect — to other nodes — spread over time instead of all at once. The node exits when every
//! session is gone or `shutdown_timeout` has passed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::{sleep, timeout_at, Instant};
use tracing::{info, warn};

use crate::edge::Edge;
use crate::protocol::{Close, CloseCode};

/// Drain every session of the node `edge` belongs to.
pub async fn drain(edge: &Arc<Edge>) {
    edge.draining.store(true, Ordering::Relaxed);
    edge.metrics().draining.set(1);
    let cfg = &edge.config;
    let registry = &edge.core.registry;
    let deadline = Instant::now() + cfg.shutdown_timeout;
    info!(
        sessions = registry.len(),
        batch = cfg.drain_batch_size,
        interval_ms = cfg.drain_interval.as_millis() as u64,
        "draining"
    );
    let paced = async {
        loop {
            let batch = registry.pick_open(cfg.drain_batch_size);
            if batch.is_empty() {
                break;
            }
            for session in &batch {
                session.close(Close::new(CloseCode::RESTART, "node restarting"));
            }
            if registry.pick_open(1).is_empty() {
                break;
            }
            sleep(cfg.drain_interval).await;
        }
        registry.wait_empty().await;
    };
    if timeout_at(deadline, paced).await.is_err() {
        warn!(
            left = registry.len(),
            "shutdown timeout reached with sessions still open"
        );
    } else {
        info!("drained");
    }
}
