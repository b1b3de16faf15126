//! Reconnect pacing and task ownership helpers shared by the connection tasks.

use std::time::Duration;

use rand::Rng;
use tokio::task::JoinHandle;

/// Exponential backoff from 50 ms, doubling up to a maximum, with ±25 % jitter so that many
/// nodes losing the same Redis do not reconnect in lockstep.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

const START: Duration = Duration::from_millis(50);

impl Backoff {
    pub(crate) fn new(max: Duration) -> Self {
        Backoff {
            next: START.min(max),
            max,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.next = START.min(self.max);
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(rand::rng().random_range(0.75..1.25))
    }
}

/// A spawned task that is aborted when this guard is dropped, so that tearing down an owner
/// (a connection task, or the whole adapter) also stops what it spawned.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_max_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(400));
        let d: Vec<_> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert!((37..=63).contains(&d[0]), "{d:?}");
        assert!((300..=500).contains(&d[5]), "{d:?}");
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(63));
    }
}
