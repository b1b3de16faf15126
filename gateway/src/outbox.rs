//! The Outbox: a session's bounded queue of frames waiting to be written, shared between the
//! fan-out path (any task may push) and the session's own task (the only consumer).
//!
//! Nothing is allocated while it is empty. A push never blocks: when a session's queue passes its
//! limits the session is marked for closing with `SLOW_CONSUMER`, the queued frames are dropped
//! and the pusher moves on, so one slow reader never slows a broadcast down.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;

use crate::cluster::Broadcast;
use crate::protocol::{Close, CloseCode};

/// One queued item.
#[derive(Debug)]
pub enum OutItem {
    /// Bytes ready for the transport (a whole WebSocket frame, or a long-poll message).
    Frame(Bytes),
    /// A broadcast of an event the session's channel intercepts: the session's task runs the
    /// channel's `handle_out` on it and encodes the result itself.
    Intercept(Arc<Broadcast>),
}

impl OutItem {
    fn weight(&self) -> usize {
        match self {
            OutItem::Frame(b) => b.len(),
            OutItem::Intercept(b) => b.payload.bytes().len(),
        }
    }
}

/// Limits that make a session a slow consumer.
#[derive(Clone, Copy, Debug)]
pub struct OutboxLimits {
    /// Most items queued at once.
    pub max_items: usize,
    /// Most bytes queued at once.
    pub max_bytes: usize,
}

/// What happened to a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; the session's task was woken.
    Queued,
    /// The push overflowed the limits: the session is now closing as a slow consumer.
    Overflow,
    /// The session is already closing; the item was dropped.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    /// Items in send order.
    items: VecDeque<OutItem>,
    /// Sum of the queued items' sizes.
    bytes: usize,
    /// The close the node decided on; once set, data pushes are refused.
    close: Option<Close>,
}

/// A session's outbox.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Queue and close request, behind one short-held lock.
    state: Mutex<State>,
    /// Set by a push or close request, cleared by the consumer when it wakes.
    signalled: AtomicBool,
    /// The consumer is awake (its last wait returned ready and it has not waited since), so it
    /// will see `signalled` before it sleeps: a push then skips the wake-up. Replies pushed by
    /// the session's own task (a heartbeat's) would otherwise schedule it once more for nothing.
    awake: AtomicBool,
    /// The consumer's waker. An `AtomicWaker` rather than a `Notify`: it is smaller and needs
    /// no waiter storage in the consumer's future, which matters at a million idle sessions.
    waker: AtomicWaker,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (each critical
        // section is a single push/take), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue an item, enforcing `limits`.
    pub fn push(&self, item: OutItem, limits: OutboxLimits) -> Pushed {
        let mut s = self.lock();
        if s.close.is_some() {
            return Pushed::Closed;
        }
        let weight = item.weight();
        if s.items.len() >= limits.max_items || s.bytes + weight > limits.max_bytes {
            s.items = VecDeque::new();
            s.bytes = 0;
            s.close = Some(Close::new(CloseCode::SLOW_CONSUMER, "slow consumer"));
            drop(s);
            self.signal();
            return Pushed::Overflow;
        }
        s.bytes += weight;
        let was_empty = s.items.is_empty();
        s.items.push_back(item);
        drop(s);
        // Only the first item of a batch needs a wake-up; the task takes everything at once.
        if was_empty {
            self.signal();
        }
        Pushed::Queued
    }

    /// Ask the session to close after writing what is already queued. The first request wins.
    pub fn close(&self, close: Close) {
        let mut s = self.lock();
        if s.close.is_none() {
            s.close = Some(close);
        }
        drop(s);
        self.signal();
    }

    fn signal(&self) {
        // SeqCst pairs with `poll_wait`: either the consumer going to sleep sees `signalled`, or
        // this sees it asleep and wakes it.
        self.signalled.store(true, Ordering::SeqCst);
        if !self.awake.load(Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    /// Ready once something was pushed or a close requested since the last ready.
    pub fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.signalled.swap(false, Ordering::AcqRel) {
            self.awake.store(true, Ordering::SeqCst);
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        self.awake.store(false, Ordering::SeqCst);
        if self.signalled.swap(false, Ordering::SeqCst) {
            self.awake.store(true, Ordering::SeqCst);
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Move every queued item into `into` and return the pending close request, if any.
    pub fn take(&self, into: &mut VecDeque<OutItem>) -> Option<Close> {
        let mut s = self.lock();
        if into.is_empty() {
            std::mem::swap(into, &mut s.items);
        } else {
            into.extend(s.items.drain(..));
        }
        s.bytes = 0;
        s.close
    }

    /// The pending close request, if any.
    pub fn close_requested(&self) -> Option<Close> {
        self.lock().close
    }

    /// Wait until something is pushed or a close is requested (a wake-up that happened while
    /// nobody waited is remembered). One consumer at a time: the latest waiter is the one woken.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| self.poll_wait(cx)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: OutboxLimits = OutboxLimits {
        max_items: 3,
        max_bytes: 10,
    };

    #[test]
    fn overflow_closes_as_slow_consumer_and_frees_the_queue() {
        let o = Outbox::default();
        assert_eq!(
            o.push(OutItem::Frame(Bytes::from_static(b"1234")), LIMITS),
            Pushed::Queued
        );
        assert_eq!(
            o.push(OutItem::Frame(Bytes::from_static(b"1234")), LIMITS),
            Pushed::Queued
        );
        assert_eq!(
            o.push(OutItem::Frame(Bytes::from_static(b"1234")), LIMITS),
            Pushed::Overflow
        );
        assert_eq!(
            o.push(OutItem::Frame(Bytes::from_static(b"1")), LIMITS),
            Pushed::Closed
        );
        let mut q = VecDeque::new();
        assert_eq!(
            o.take(&mut q).map(|c| c.code),
            Some(CloseCode::SLOW_CONSUMER)
        );
        assert!(q.is_empty());
    }

    /// Counts wake-ups of the waker it makes.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn an_awake_consumer_is_not_woken_again_and_a_sleeping_one_is() {
        let o = Outbox::default();
        let wakes = Arc::new(Wakes(Default::default()));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let frame = || OutItem::Frame(Bytes::from_static(b"a"));
        assert!(o.poll_wait(&mut cx).is_pending());
        // Asleep: a push wakes it, and its next wait is ready.
        o.push(frame(), LIMITS);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(o.poll_wait(&mut cx).is_ready());
        // Awake (a reply pushed by its own task): no wake-up, but the wait is still ready.
        let mut q = VecDeque::new();
        o.take(&mut q);
        o.push(frame(), LIMITS);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(o.poll_wait(&mut cx).is_ready());
        // Nothing new: it sleeps, and a close request wakes it.
        assert!(o.poll_wait(&mut cx).is_pending());
        o.close(Close::new(CloseCode::RESTART, "drain"));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert!(o.poll_wait(&mut cx).is_ready());
    }

    #[test]
    fn close_keeps_queued_items_and_first_close_wins() {
        let o = Outbox::default();
        o.push(OutItem::Frame(Bytes::from_static(b"a")), LIMITS);
        o.close(Close::new(CloseCode::RESTART, "drain"));
        o.close(Close::new(CloseCode::GOING_AWAY, "later"));
        let mut q = VecDeque::new();
        assert_eq!(o.take(&mut q).map(|c| c.code), Some(CloseCode::RESTART));
        assert_eq!(q.len(), 1);
    }
}
