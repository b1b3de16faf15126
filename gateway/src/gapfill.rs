//! Gap filling: how a node delivers the broadcasts of topics with history so its subscribers
//! see every position in order, once. This module owns the node's `Sequencer` (the last
//! position delivered per topic) and the filling: a broadcast that arrives after a gap (its
//! offset past the last delivered + 1, or a new epoch), or the end of a Redis subscriber
//! resubscription (readiness back), makes the node read the missing range from the history
//! store and fan it out first; a broadcast at or before the last delivered position is dropped.
//! What cannot be filled (trimmed, expired, another epoch, store error) is counted in
//! `gateway_history_gaps_unfillable_total`; what is filled in `gateway_history_gaps_filled_total`.
//!
//! Broadcasts without a position never come here: topics without history pay nothing.

use std::sync::Arc;

use tracing::warn;

use crate::cluster::Broadcast;
use crate::history::sequence::{Sequencer, Verdict};
use crate::history::{Position, Recovered, Recovery};
use crate::session::Core;

/// Delivers positioned broadcasts in sequence on one node (owned by the node's delivery task).
pub struct GapFiller {
    /// The node's core (Hub, history store, Router for a topic's history limits).
    core: Arc<Core>,
    /// The last position delivered per topic, so gaps and duplicates are seen.
    sequencer: Sequencer,
}

impl GapFiller {
    /// A filler for `core`'s Hub and history store.
    pub fn new(core: Arc<Core>) -> Self {
        GapFiller {
            core,
            sequencer: Sequencer::default(),
        }
    }

    /// Deliver `msg` (which has `position`) on this node: after filling any gap before it,
    /// and not at all if its position was already delivered.
    pub async fn broadcast(&mut self, msg: Arc<Broadcast>, position: Position) {
        match self.sequencer.check(&msg.topic, &position) {
            Verdict::Deliver => {
                self.core.hub.fanout(&msg, msg.except);
            }
            Verdict::Duplicate => self.core.metrics.history_duplicates.inc(),
            Verdict::Gap {
                after,
                epoch_changed,
            } => {
                if epoch_changed {
                    // Whatever the old epoch had after the last delivered position is gone.
                    self.core.metrics.history_gaps_unfillable.inc();
                }
                // Only what precedes `msg`: what follows it arrives live.
                self.fill(&msg.topic, &after, Some(&position)).await;
                if self.sequencer.delivered(&msg.topic, &position) {
                    self.core.hub.fanout(&msg, msg.except);
                } else {
                    self.core.metrics.history_duplicates.inc();
                }
            }
        }
    }

    /// A join on this node told its client that `topic` stands at `position` (read after its
    /// subscription took effect): start the topic's sequence there unless broadcasts were
    /// delivered on it already, so one this node misses before hearing any (a resubscription
    /// right after the join) is filled too.
    pub fn seed(&mut self, topic: Arc<str>, position: Position) {
        self.sequencer.seed(topic, position);
    }

    /// After this node's Redis subscriber resubscribed: broadcasts published meanwhile were
    /// not received, and the last of them may have no successor to reveal the gap. Fill every
    /// topic still received from its last delivered position.
    pub async fn resubscribed(&mut self) {
        self.prune();
        for (topic, last) in self.sequencer.tracked() {
            self.fill(&topic, &last, None).await;
        }
    }

    /// Forget topics this node no longer has subscribers for.
    pub fn prune(&mut self) {
        let hub = &self.core.hub;
        self.sequencer.retain(|t| hub.subscribers(t) > 0);
    }

    /// Read the broadcasts after `after` (and before `before`, if given) and fan out, in
    /// order, those not delivered yet.
    async fn fill(&mut self, topic: &str, after: &Position, before: Option<&Position>) {
        let metrics = &self.core.metrics;
        // The topic's limits come from its channel (only the ttl matters to a read).
        let limits = self
            .core
            .router
            .route(topic)
            .and_then(|factory| factory(topic).history());
        let Some(limits) = limits else {
            metrics.history_gaps_unfillable.inc();
            return;
        };
        let read = self
            .core
            .hub
            .history()
            .since(topic, Some(after), limits)
            .await;
        match read {
            Ok(Recovered {
                recovery: Recovery::Exact(msgs),
                ..
            }) => {
                for msg in msgs {
                    let Some(pos) = msg.position.as_deref().and_then(Position::parse) else {
                        continue;
                    };
                    if before.is_some_and(|b| b.epoch == pos.epoch && pos.offset >= b.offset) {
                        break;
                    }
                    if self.sequencer.delivered(topic, &pos) {
                        self.core.hub.fanout(&msg, None);
                        metrics.history_gaps_filled.inc();
                    }
                }
            }
            Ok(_) => metrics.history_gaps_unfillable.inc(),
            Err(e) => {
                warn!(topic, error = %e, "history unavailable to fill a gap");
                metrics.history_errors.inc();
                metrics.history_gaps_unfillable.inc();
            }
        }
    }
}
