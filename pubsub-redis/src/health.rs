//! Readiness: whether this node can hear itself on every subscriber connection and owns all of
//! its subscriptions there, published as a `watch` of [`Health`].
//!
//! Each subscriber connection reports its phase (connecting, subscribing, synced-at) and has one
//! or more canary channels (one per connection standalone, one per master per connection in
//! cluster mode). The node is ready only when every connection is synced and every canary has
//! been heard *after* that connection's last (re)subscription and within `not_ready_after`.
//! Transitions are logged once each: the first ready at info, every later change at warn.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// What the gateway's `/readyz` and metrics read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// True when every subscriber connection is subscribed to everything this node owns and
    /// has heard its own canary recently.
    pub ready: bool,
    /// The most recent canary round trip (publish until heard back), on any connection.
    pub canary_rtt: Option<Duration>,
    /// Why the node is not ready (human readable); `None` when ready.
    pub reason: Option<String>,
    /// How many times a subscriber connection finished (re)subscribing. A change means
    /// messages published meanwhile may have been missed, even when a watcher never saw
    /// `ready` drop (a fast reconnect between two looks).
    pub resyncs: u64,
}

/// Where a subscriber connection is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Establishing the connection (or waiting to retry).
    Connecting,
    /// Connected, (re)subscribing the owned channels.
    Subscribing,
    /// Every owned channel was subscribed at this instant.
    Synced(Instant),
}

#[derive(Debug, Default, Clone, Copy)]
struct Canary {
    /// When a canary on this channel last came back.
    heard: Option<Instant>,
    /// First successful canary publish not heard back yet (deaf-connection watchdog).
    unanswered_since: Option<Instant>,
}

#[derive(Debug)]
struct Conn {
    phase: Phase,
    canaries: HashMap<String, Canary>,
}

#[derive(Debug)]
struct State {
    conns: Vec<Conn>,
    rtt: Option<Duration>,
    ever_ready: bool,
    /// Subscriber connections that finished (re)subscribing, ever (`Health::resyncs`).
    resyncs: u64,
}

/// Shared readiness state of one adapter instance.
#[derive(Debug)]
pub(crate) struct HealthTracker {
    /// Epoch of the timestamps carried in canary payloads.
    base: Instant,
    /// `Config::not_ready_after`.
    threshold: Duration,
    state: Mutex<State>,
    tx: watch::Sender<Health>,
}

impl HealthTracker {
    pub(crate) fn new(connections: usize, threshold: Duration) -> Self {
        let conns = (0..connections)
            .map(|_| Conn {
                phase: Phase::Connecting,
                canaries: HashMap::new(),
            })
            .collect();
        let (tx, _) = watch::channel(Health {
            ready: false,
            canary_rtt: None,
            reason: Some("starting".to_owned()),
            resyncs: 0,
        });
        HealthTracker {
            base: Instant::now(),
            threshold,
            state: Mutex::new(State {
                conns,
                rtt: None,
                ever_ready: false,
                resyncs: 0,
            }),
            tx,
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Health> {
        self.tx.subscribe()
    }

    /// Moves `conn` to `phase`. Unanswered canaries are forgotten: they were sent to the
    /// connection that is being replaced, so they say nothing about deafness of the next one.
    pub(crate) fn set_phase(&self, conn: usize, phase: Phase) {
        {
            let mut state = self.state.lock().unwrap();
            if matches!(phase, Phase::Synced(_)) {
                state.resyncs += 1;
            }
            let c = &mut state.conns[conn];
            c.phase = phase;
            for canary in c.canaries.values_mut() {
                canary.unanswered_since = None;
            }
        }
        self.evaluate();
    }

    /// Replaces the canary channels of `conn`, keeping the state of names that stay.
    pub(crate) fn set_canaries(&self, conn: usize, names: &[String]) {
        let mut state = self.state.lock().unwrap();
        let old = std::mem::take(&mut state.conns[conn].canaries);
        state.conns[conn].canaries = names
            .iter()
            .map(|n| (n.clone(), old.get(n).copied().unwrap_or_default()))
            .collect();
    }

    pub(crate) fn canaries(&self, conn: usize) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state.conns[conn].canaries.keys().cloned().collect()
    }

    /// The payload of a canary published now.
    pub(crate) fn stamp(&self) -> [u8; 8] {
        (self.base.elapsed().as_nanos() as u64).to_be_bytes()
    }

    /// A canary publish on `channel` succeeded (Redis accepted it).
    pub(crate) fn sent(&self, conn: usize, channel: &str) {
        let mut state = self.state.lock().unwrap();
        if let Some(c) = state.conns[conn].canaries.get_mut(channel) {
            c.unanswered_since.get_or_insert_with(Instant::now);
        }
    }

    /// A canary came back on `channel`; called from the Redis reader, so it never waits.
    pub(crate) fn heard(&self, channel: &str, payload: &[u8]) {
        let now = Instant::now();
        let rtt = <[u8; 8]>::try_from(payload).ok().and_then(|b| {
            let sent = Duration::from_nanos(u64::from_be_bytes(b));
            self.base.elapsed().checked_sub(sent)
        });
        {
            let mut state = self.state.lock().unwrap();
            let found = state
                .conns
                .iter_mut()
                .find_map(|conn| conn.canaries.get_mut(channel));
            let Some(canary) = found else { return };
            canary.heard = Some(now);
            canary.unanswered_since = None;
            if rtt.is_some() {
                state.rtt = rtt;
            }
        }
        self.evaluate();
    }

    /// True when `conn` is synced but a successfully published canary has gone unheard for
    /// twice the not-ready threshold: the connection looks alive but is deaf (half-open TCP,
    /// lost subscription), so its owner should tear it down and rebuild it.
    pub(crate) fn is_deaf(&self, conn: usize) -> bool {
        let state = self.state.lock().unwrap();
        let c = &state.conns[conn];
        matches!(c.phase, Phase::Synced(_))
            && c.canaries.values().any(|k| {
                k.unanswered_since
                    .is_some_and(|t| t.elapsed() > self.threshold * 2)
            })
    }

    /// True when connection `conn` is synced and has heard all its canaries since.
    pub(crate) fn conn_hears_itself(&self, conn: usize) -> bool {
        let state = self.state.lock().unwrap();
        let c = &state.conns[conn];
        let Phase::Synced(at) = c.phase else {
            return false;
        };
        !c.canaries.is_empty()
            && c.canaries
                .values()
                .all(|k| k.heard.is_some_and(|t| t >= at))
    }

    /// Recomputes readiness and publishes it; logs each transition once. The state lock is
    /// held across the publish so concurrent callers cannot log one transition twice.
    pub(crate) fn evaluate(&self) {
        let mut state = self.state.lock().unwrap();
        let reason = self.not_ready_reason(&state);
        let ready = reason.is_none();
        let (rtt, resyncs) = (state.rtt, state.resyncs);
        if ready != self.tx.borrow().ready {
            match &reason {
                Some(why) => tracing::warn!(reason = %why, "redis pubsub NOT READY"),
                None if state.ever_ready => {
                    tracing::warn!(canary_rtt = ?rtt, "redis pubsub ready again")
                }
                None => tracing::info!(canary_rtt = ?rtt, "redis pubsub ready"),
            }
        }
        state.ever_ready |= ready;
        self.tx.send_if_modified(|h| {
            let new = Health {
                ready,
                canary_rtt: rtt,
                reason,
                resyncs,
            };
            let changed = *h != new;
            *h = new;
            changed
        });
    }

    fn not_ready_reason(&self, state: &State) -> Option<String> {
        for (i, conn) in state.conns.iter().enumerate() {
            let synced_at = match conn.phase {
                Phase::Connecting => return Some(format!("subscriber connection {i}: connecting")),
                Phase::Subscribing => {
                    return Some(format!("subscriber connection {i}: subscribing"));
                }
                Phase::Synced(at) => at,
            };
            if conn.canaries.is_empty() {
                return Some(format!("subscriber connection {i}: no canary channel"));
            }
            for (name, canary) in &conn.canaries {
                match canary.heard {
                    Some(t) if t >= synced_at && t.elapsed() <= self.threshold => {}
                    Some(t) if t >= synced_at => {
                        return Some(format!("canary {name} not heard for {:.1?}", t.elapsed()));
                    }
                    _ => return Some(format!("canary {name} not heard since subscribing")),
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_after_sync_and_fresh_canary() {
        let t = HealthTracker::new(1, Duration::from_millis(50));
        let rx = t.subscribe();
        t.set_canaries(0, &["c0".to_owned()]);
        t.heard("c0", &t.stamp()); // heard before sync: does not count
        t.set_phase(0, Phase::Synced(Instant::now()));
        assert!(!rx.borrow().ready);
        t.heard("c0", &t.stamp());
        assert!(rx.borrow().ready, "{:?}", rx.borrow());
        assert!(rx.borrow().canary_rtt.is_some());
        std::thread::sleep(Duration::from_millis(60));
        t.evaluate();
        assert!(!rx.borrow().ready);
        t.heard("c0", &t.stamp());
        assert!(rx.borrow().ready);
        t.set_phase(0, Phase::Connecting);
        assert!(!rx.borrow().ready);
    }

    #[test]
    fn deaf_when_published_canary_goes_unheard() {
        let t = HealthTracker::new(1, Duration::from_millis(10));
        t.set_canaries(0, &["c0".to_owned()]);
        t.set_phase(0, Phase::Synced(Instant::now()));
        t.sent(0, "c0");
        assert!(!t.is_deaf(0));
        std::thread::sleep(Duration::from_millis(25));
        assert!(t.is_deaf(0));
        t.heard("c0", b"short");
        assert!(!t.is_deaf(0));
    }
}
