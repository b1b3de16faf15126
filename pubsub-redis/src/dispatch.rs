//! Turns one message read from Redis into an [`Incoming`] for the gateway, a canary for the
//! health tracker, or a counted drop. Runs on the Redis reader, so it never waits: the queue to
//! the gateway is bounded and a full queue drops the message (counted in `dropped_full`).

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::channels::{ChannelKind, ChannelNames};
use crate::envelope::{DecodeError, Envelope};
use crate::health::HealthTracker;
use crate::stats::Counters;

/// A message from another node (or a backend) for this node.
///
/// A topic message may still arrive shortly after `unsubscribe(topic)` (it was in flight);
/// the consumer should ignore topics it no longer serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A broadcast on a topic this node subscribed to. Never this node's own publish (those
    /// are dropped as echoes). `envelope.topic` equals the topic of the channel it came on.
    Topic(Envelope),
    /// A message sent to this node's direct channel with [`crate::RedisPubSub::direct`].
    Direct(Envelope),
}

impl Incoming {
    /// The envelope, whichever way it came.
    pub fn envelope(&self) -> &Envelope {
        match self {
            Incoming::Topic(e) | Incoming::Direct(e) => e,
        }
    }

    /// The envelope, whichever way it came.
    pub fn into_envelope(self) -> Envelope {
        match self {
            Incoming::Topic(e) | Incoming::Direct(e) => e,
        }
    }
}

/// Routes messages from every subscriber connection.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    /// Channel naming for this node.
    pub names: ChannelNames,
    /// This node's id, for echo suppression.
    pub node_id: String,
    /// The bounded queue to the gateway.
    pub tx: mpsc::Sender<Incoming>,
    /// Counters shared with the handle.
    pub counters: Arc<Counters>,
    /// Where canaries go.
    pub health: Arc<HealthTracker>,
}

impl Dispatcher {
    /// Handles one message; never blocks.
    pub(crate) fn on_message(&self, channel: &str, payload: &[u8]) {
        match self.names.classify(channel) {
            Some(ChannelKind::Canary) => self.health.heard(channel, payload),
            Some(ChannelKind::Topic(topic)) => {
                let Some(env) = self.decode(channel, payload) else {
                    return;
                };
                if env.topic != topic {
                    tracing::debug!(channel, envelope_topic = %env.topic, "envelope topic mismatch, dropped");
                    Counters::bump(&self.counters.decode_errors);
                } else if env.origin == self.node_id {
                    Counters::bump(&self.counters.dropped_echoes);
                } else {
                    self.deliver(Incoming::Topic(env));
                }
            }
            Some(ChannelKind::Direct) => {
                if let Some(env) = self.decode(channel, payload) {
                    self.deliver(Incoming::Direct(env));
                }
            }
            None => {
                tracing::debug!(channel, "message on an unexpected channel, dropped");
                Counters::bump(&self.counters.decode_errors);
            }
        }
    }

    fn decode(&self, channel: &str, payload: &[u8]) -> Option<Envelope> {
        match Envelope::decode(payload) {
            Ok(env) => Some(env),
            Err(err) => {
                match &err {
                    DecodeError::Version { .. } => tracing::warn!(channel, %err, "dropped"),
                    DecodeError::Malformed(_) => tracing::debug!(channel, %err, "dropped"),
                }
                Counters::bump(&self.counters.decode_errors);
                None
            }
        }
    }

    fn deliver(&self, msg: Incoming) {
        match self.tx.try_send(msg) {
            Ok(()) => Counters::bump(&self.counters.received),
            Err(mpsc::error::TrySendError::Full(_)) => Counters::bump(&self.counters.dropped_full),
            // The gateway dropped its receiver: it is shutting down, nothing to count.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn dispatcher(cap: usize) -> (Dispatcher, mpsc::Receiver<Incoming>) {
        let (tx, rx) = mpsc::channel(cap);
        let d = Dispatcher {
            names: ChannelNames::new("gw", "me", false),
            node_id: "me".into(),
            tx,
            counters: Arc::new(Counters::default()),
            health: Arc::new(HealthTracker::new(1, Duration::from_secs(3))),
        };
        (d, rx)
    }

    fn enc(origin: &str, topic: &str) -> Vec<u8> {
        Envelope::new(origin, topic, "e", &b"{}"[..], false)
            .encode()
            .unwrap()
    }

    #[test]
    fn routes_drops_and_counts() {
        let (d, mut rx) = dispatcher(1);
        d.on_message("gw:t:room:1", &enc("other", "room:1"));
        assert!(matches!(rx.try_recv(), Ok(Incoming::Topic(e)) if e.topic == "room:1"));
        d.on_message("gw:t:room:1", &enc("me", "room:1"));
        d.on_message("gw:t:room:1", &enc("other", "room:2"));
        d.on_message("gw:t:room:1", b"garbage");
        d.on_message("gw:x:what", b"");
        d.on_message("gw:n:me", &enc("me", "anything"));
        assert!(matches!(rx.try_recv(), Ok(Incoming::Direct(_))));
        d.on_message("gw:t:room:1", &enc("", "room:1"));
        d.on_message("gw:t:room:1", &enc("", "room:1")); // queue (capacity 1) is full
        let s = d.counters.snapshot();
        assert_eq!(s.received, 3);
        assert_eq!(s.dropped_echoes, 1);
        assert_eq!(s.decode_errors, 3);
        assert_eq!(s.dropped_full, 1);
    }
}
