//! Turns one message read from Redis into an [`Incoming`] for the gateway, a canary for the
//! health tracker, or a counted drop. Runs on the Redis reader, so it never waits: it hands each
//! message to the gateway's [`Sink`], which must not wait either — a sink that cannot take a
//! message refuses it, and the refusal is counted in `dropped_full`.

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

/// Where the adapter hands what it reads. Called on the Redis reader task: it must return at
/// once (typically a `try_send` into one bounded queue).
pub trait Sink: std::fmt::Debug + Send + Sync + 'static {
    /// Take one message. `Accepted::Full` when it cannot (counted as dropped); `Closed` when
    /// the gateway is shutting down (not counted).
    fn deliver(&self, msg: Incoming) -> Accepted;
}

/// What a [`Sink`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Taken.
    Yes,
    /// Refused: the gateway's queue is full (counted in `dropped_full`).
    Full,
    /// Refused: the gateway is gone.
    Closed,
    /// Refused by the gateway for a reason of its own, which it counts itself.
    Rejected,
}

/// The default sink: a bounded queue, as [`crate::RedisPubSub::start`] returns it.
impl Sink for mpsc::Sender<Incoming> {
    fn deliver(&self, msg: Incoming) -> Accepted {
        match self.try_send(msg) {
            Ok(()) => Accepted::Yes,
            Err(mpsc::error::TrySendError::Full(_)) => Accepted::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Accepted::Closed,
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
    /// Where messages for the gateway go.
    pub sink: Arc<dyn Sink>,
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
                } else if env.origin == self.node_id && env.position.is_none() {
                    // A positioned broadcast is delivered from its echo on its origin too (the
                    // origin does not fan it out itself), which keeps position order there.
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
                    DecodeError::Malformed(_) | DecodeError::NoKind => {
                        tracing::debug!(channel, %err, "dropped")
                    }
                }
                Counters::bump(&self.counters.decode_errors);
                None
            }
        }
    }

    fn deliver(&self, msg: Incoming) {
        match self.sink.deliver(msg) {
            Accepted::Yes => Counters::bump(&self.counters.received),
            Accepted::Full => Counters::bump(&self.counters.dropped_full),
            // Shutting down, or counted by the gateway: nothing to count here.
            Accepted::Closed | Accepted::Rejected => {}
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
            sink: Arc::new(tx),
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
