//! What every subscriber connection task shares, whichever Redis mode it speaks: its index,
//! the node-wide state it reports into, its timing settings, and the canary sender.

use std::sync::Arc;
use std::time::Duration;

use crate::channels::ChannelNames;
use crate::dispatch::Dispatcher;
use crate::health::HealthTracker;
use crate::interest::{ConnInterest, Interest, Syncer};
use crate::publisher::Publisher;
use crate::stats::Counters;

/// Canary period while a connection has not yet heard itself.
const FAST_CANARY: Duration = Duration::from_millis(100);

/// Everything one subscriber connection task needs.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    /// This connection's index (0..K).
    pub idx: usize,
    /// Channel naming for this node.
    pub names: ChannelNames,
    /// What every connection should be subscribed to.
    pub interest: Arc<Interest>,
    /// Where received messages go.
    pub dispatcher: Arc<Dispatcher>,
    /// Readiness state this connection reports into.
    pub health: Arc<HealthTracker>,
    /// Counters shared with the handle.
    pub counters: Arc<Counters>,
    /// The node's publishing connection (standalone canaries go through it).
    pub publisher: Arc<Publisher>,
    /// Batch size and per-command bound for subscription work.
    pub syncer: Syncer,
    /// `Config::connect_timeout`.
    pub connect_timeout: Duration,
    /// `Config::reconnect_max_backoff`.
    pub max_backoff: Duration,
    /// `Config::canary_interval`.
    pub canary_interval: Duration,
}

impl ConnCtx {
    /// This connection's share of the node's interest.
    pub(crate) fn interest(&self) -> &ConnInterest {
        self.interest.conn(self.idx)
    }

    /// When the next canary should go out: every `canary_interval` while the connection hears
    /// itself, but every 100 ms while it has not since its last (re)subscription, so that
    /// readiness returns as soon as Redis (and the publisher) can carry a canary again.
    pub(crate) fn next_canary(&self) -> tokio::time::Instant {
        let wait = if self.health.conn_hears_itself(self.idx) {
            self.canary_interval
        } else {
            self.canary_interval.min(FAST_CANARY)
        };
        tokio::time::Instant::now() + wait
    }

    /// Publishes one canary on each of this connection's canary channels through the shared
    /// publisher, in a detached task bounded by the publish timeout (so a slow Redis delays
    /// nothing else, and at most about timeout/interval sends are ever in flight).
    pub(crate) fn spawn_canaries(&self) {
        let channels = self.health.canaries(self.idx);
        let (health, publisher, idx) = (self.health.clone(), self.publisher.clone(), self.idx);
        tokio::spawn(async move {
            for channel in channels {
                if publisher.publish(&channel, &health.stamp()).await.is_ok() {
                    health.sent(idx, &channel);
                }
            }
        });
    }
}
