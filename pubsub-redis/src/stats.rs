//! Counters the gateway reads for its metrics. Plain relaxed atomics: each is written from one
//! or a few tasks and only ever summed or read for display.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters, shared by every task of one adapter instance.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Successful publishes and direct sends (canaries excluded).
    pub published: AtomicU64,
    /// Failed publishes and direct sends, including fail-fast refusals and timeouts.
    pub publish_errors: AtomicU64,
    /// Messages handed to the gateway's incoming queue.
    pub received: AtomicU64,
    /// Topic messages dropped because this node published them.
    pub dropped_echoes: AtomicU64,
    /// Messages dropped because the incoming queue was full.
    pub dropped_full: AtomicU64,
    /// Messages dropped as undecodable, of another version, or on the wrong channel.
    pub decode_errors: AtomicU64,
    /// Completed resubscription passes after a reconnect (the first subscribe is not counted).
    pub resubscribes: AtomicU64,
    /// Subscriber connection losses (stream ended, command failed, or deaf watchdog).
    pub reconnects: AtomicU64,
    /// Topics this node currently owns (gauge).
    pub subscribed_topics: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            published: self.published.load(Relaxed),
            publish_errors: self.publish_errors.load(Relaxed),
            received: self.received.load(Relaxed),
            dropped_echoes: self.dropped_echoes.load(Relaxed),
            dropped_full: self.dropped_full.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            resubscribes: self.resubscribes.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            subscribed_topics: self.subscribed_topics.load(Relaxed),
        }
    }
}

/// A point-in-time copy of the counters (all monotonically increasing except
/// `subscribed_topics`, which is a gauge).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Successful publishes and direct sends (canaries excluded).
    pub published: u64,
    /// Failed publishes and direct sends, including fail-fast refusals and timeouts.
    pub publish_errors: u64,
    /// Messages handed to the gateway's incoming queue.
    pub received: u64,
    /// Topic messages dropped because this node published them (own echoes).
    pub dropped_echoes: u64,
    /// Messages dropped because the incoming queue was full.
    pub dropped_full: u64,
    /// Messages dropped as undecodable, of another envelope version, or on the wrong channel.
    pub decode_errors: u64,
    /// Completed resubscription passes after a reconnect.
    pub resubscribes: u64,
    /// Subscriber connection losses.
    pub reconnects: u64,
    /// Topics this node currently owns (gauge).
    pub subscribed_topics: u64,
}
