//! The Outbox: a session's bounded queue of frames waiting to be written, shared between the
//! fan-out path (any task may push) and the session's own task (the consumer).
//!
//! Nothing is allocated while it is empty. A push never blocks: when a session's queue passes its
//! limits the session is marked for closing with `SLOW_CONSUMER`, the queued frames are dropped
//! and the pusher moves on, so one slow reader never slows a broadcast down.
//!
//! A WebSocket session attaches its socket, so a fan-out may also write what it queued straight
//! to the socket (`write_or_wake`) instead of waking the session's task for it: under this
//! outbox's lock, only while the session's task holds no taken frames, so frames still leave in
//! the order they were queued, and whatever the socket will not take stays queued for the task.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;

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

/// Most frames in one vectored write.
pub const MAX_IOV: usize = 64;

/// What happened to a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; the session's task was woken (or is awake, or, after `push_quiet`, others are
    /// queued before it whose writer is already on its way).
    Queued,
    /// Queued by `push_quiet` as the only item: nobody was woken, so the caller must call
    /// `write_or_wake`.
    First,
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
    /// Bytes of the front frame a direct write already put on the wire (the rest must follow
    /// before anything else, and survives an overflow).
    written: usize,
    /// The session's socket, while its connection accepts direct writes.
    sock: Option<Arc<TcpStream>>,
    /// The session's task holds frames it took and has not written all of: writing anything
    /// else now would reorder, so direct writes wait for it.
    busy: bool,
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
        let pushed = self.push_quiet(item, limits);
        if pushed != Pushed::First {
            return pushed;
        }
        // Only the first item of a batch needs a wake-up; the task takes everything at once.
        self.signal();
        Pushed::Queued
    }

    /// Queue an item without waking anyone: `First` asks the caller to `write_or_wake` (after
    /// it queued the same broadcast everywhere else, so one task writes many sessions).
    pub fn push_quiet(&self, item: OutItem, limits: OutboxLimits) -> Pushed {
        let mut s = self.lock();
        if s.close.is_some() {
            return Pushed::Closed;
        }
        let weight = item.weight();
        if s.items.len() >= limits.max_items || s.bytes + weight > limits.max_bytes {
            // A frame already partly on the wire is kept, so the close frame can follow it.
            let front = if s.written > 0 {
                s.items.pop_front()
            } else {
                None
            };
            s.bytes = front.as_ref().map_or(0, OutItem::weight);
            s.items = front.into_iter().collect();
            s.close = Some(Close::new(CloseCode::SLOW_CONSUMER, "slow consumer"));
            drop(s);
            self.signal();
            return Pushed::Overflow;
        }
        s.bytes += weight;
        let was_empty = s.items.is_empty();
        s.items.push_back(item);
        if was_empty {
            Pushed::First
        } else {
            Pushed::Queued
        }
    }

    /// Let direct writes use this socket (the session's connection calls it when it starts).
    pub fn attach(&self, sock: Arc<TcpStream>) {
        self.lock().sock = Some(sock);
    }

    /// Stop direct writes, waiting out one in progress: from here on only the connection
    /// writes (its close frame must be last) and the socket closes with it.
    pub fn detach(&self) {
        let sock = self.lock().sock.take();
        drop(sock);
    }

    /// Write what is queued to the attached socket from the calling task, unless the session's
    /// task holds taken frames or a close is pending; wake the session's task for whatever is
    /// left (a frame the socket would not take, an intercepted broadcast, no socket). Adds what
    /// it wrote to `out`.
    pub fn write_or_wake(&self, out: &mut Written) {
        let mut guard = self.lock();
        let s = &mut *guard;
        if let (None, false, Some(sock)) = (s.close, s.busy, &s.sock) {
            loop {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let n = frames_iov(&s.items, s.written, &mut iov);
                if n == 0 {
                    break;
                }
                // `WouldBlock` leaves the rest to the session's task, which waits for room; any
                // other error its task meets on its own next write.
                let Ok(k) = sock.try_write_vectored(&iov[..n]) else {
                    break;
                };
                out.writes += 1;
                out.bytes += k;
                let done = advance(&mut s.items, &mut s.written, k);
                out.frames += done.frames;
                s.bytes -= done.bytes;
            }
        }
        let rest = !s.items.is_empty() || s.close.is_some();
        if s.items.is_empty() && s.items.capacity() > 16 {
            s.items = VecDeque::new();
        }
        drop(guard);
        if rest {
            self.signal();
        }
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

    /// `take` for the connection that writes the taken items itself, into an empty `into`:
    /// sets `offset` to the bytes of the front frame a direct write already sent, and marks
    /// the task busy while it holds anything (so direct writes keep out until it is done).
    pub fn take_to_write(&self, into: &mut VecDeque<OutItem>, offset: &mut usize) -> Option<Close> {
        let mut s = self.lock();
        std::mem::swap(into, &mut s.items);
        s.bytes = 0;
        *offset = std::mem::take(&mut s.written);
        s.busy = !into.is_empty();
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

/// What direct writes put on the wire, for the per-message metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Vectored write calls that wrote something.
    pub writes: usize,
    /// Bytes written.
    pub bytes: usize,
    /// Frames completed.
    pub frames: usize,
}

/// Fill `iov` with the leading frames of `items` (the front one from `offset`), stopping at the
/// first item that is not bytes yet; returns how many slices it filled.
pub fn frames_iov<'a>(
    items: &'a VecDeque<OutItem>,
    offset: usize,
    iov: &mut [IoSlice<'a>; MAX_IOV],
) -> usize {
    let mut n = 0;
    for item in items.iter().take(MAX_IOV) {
        let OutItem::Frame(b) = item else { break };
        iov[n] = IoSlice::new(if n == 0 { &b[offset..] } else { b });
        n += 1;
    }
    n
}

/// Frames a write completed and their bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Advanced {
    /// Frames fully written and removed.
    pub frames: usize,
    /// Their total size.
    pub bytes: usize,
}

/// Account for `n` bytes written from the front of `items`, whose front frame had `offset`
/// bytes written before: completed frames are removed and `offset` moves into the new front.
pub fn advance(items: &mut VecDeque<OutItem>, offset: &mut usize, mut n: usize) -> Advanced {
    let mut done = Advanced::default();
    while n > 0 {
        let Some(OutItem::Frame(front)) = items.front() else {
            break;
        };
        let left = front.len() - *offset;
        if n < left {
            *offset += n;
            break;
        }
        n -= left;
        *offset = 0;
        done.frames += 1;
        done.bytes += front.len();
        items.pop_front();
    }
    done
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

    /// A connected pair on loopback: the gateway's end (as the outbox holds it) and the
    /// client's.
    async fn pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (Arc::new(accepted.unwrap().0), client.unwrap())
    }

    /// Read exactly `n` bytes.
    async fn read_n(client: &mut TcpStream, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0; n];
        client.read_exact(&mut buf).await.unwrap();
        buf
    }

    const ROOMY: OutboxLimits = OutboxLimits {
        max_items: 1000,
        max_bytes: 64 << 20,
    };

    fn asleep(o: &Outbox, wakes: &Arc<Wakes>) {
        let waker = std::task::Waker::from(wakes.clone());
        assert!(o.poll_wait(&mut Context::from_waker(&waker)).is_pending());
    }

    #[tokio::test]
    async fn a_direct_write_sends_the_queue_in_order_without_waking_the_task() {
        let (sock, mut client) = pair().await;
        let o = Outbox::default();
        o.attach(sock);
        let wakes = Arc::new(Wakes(Default::default()));
        asleep(&o, &wakes);
        let frame = |b: &'static [u8]| OutItem::Frame(Bytes::from_static(b));
        assert_eq!(o.push_quiet(frame(b"one,"), ROOMY), Pushed::First);
        assert_eq!(o.push_quiet(frame(b"two"), ROOMY), Pushed::Queued);
        let mut out = Written::default();
        o.write_or_wake(&mut out);
        assert_eq!(
            out,
            Written {
                writes: 1,
                bytes: 7,
                frames: 2
            }
        );
        assert_eq!(read_n(&mut client, 7).await, b"one,two");
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            0,
            "nothing was left for the task"
        );
        // Detached (the connection is closing): nothing is written, the task is woken.
        o.detach();
        assert_eq!(o.push_quiet(frame(b"three"), ROOMY), Pushed::First);
        o.write_or_wake(&mut out);
        assert_eq!(out.writes, 1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_busy_task_keeps_direct_writes_out_until_it_took_everything() {
        let (sock, mut client) = pair().await;
        let o = Outbox::default();
        o.attach(sock.clone());
        let wakes = Arc::new(Wakes(Default::default()));
        let frame = |b: &'static [u8]| OutItem::Frame(Bytes::from_static(b));
        o.push_quiet(frame(b"first,"), ROOMY);
        // The task takes it and has not written it yet.
        let (mut pending, mut offset) = (VecDeque::new(), 0);
        assert!(o.take_to_write(&mut pending, &mut offset).is_none());
        assert_eq!((pending.len(), offset), (1, 0));
        asleep(&o, &wakes);
        assert_eq!(o.push_quiet(frame(b"second"), ROOMY), Pushed::First);
        let mut out = Written::default();
        o.write_or_wake(&mut out);
        assert_eq!(
            out,
            Written::default(),
            "a direct write now would pass the task's frame"
        );
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        // The task writes its frame, then takes the rest: it is no longer busy once empty.
        sock.try_write(b"first,").unwrap();
        pending.clear();
        o.take_to_write(&mut pending, &mut offset);
        assert_eq!(pending.len(), 1);
        sock.try_write(b"second").unwrap();
        pending.clear();
        o.take_to_write(&mut pending, &mut offset);
        assert!(pending.is_empty());
        o.push_quiet(frame(b",third"), ROOMY);
        o.write_or_wake(&mut out);
        assert_eq!(out.frames, 1);
        assert_eq!(read_n(&mut client, 18).await, b"first,second,third");
    }

    #[tokio::test]
    async fn a_frame_the_socket_took_part_of_is_finished_first_even_after_an_overflow() {
        let (sock, mut client) = pair().await;
        let o = Outbox::default();
        o.attach(sock);
        let wakes = Arc::new(Wakes(Default::default()));
        asleep(&o, &wakes);
        // Larger than loopback's socket buffers: the client does not read, so it goes part way.
        let big: Bytes = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
        let limits = OutboxLimits {
            max_items: 2,
            max_bytes: 64 << 20,
        };
        assert_eq!(
            o.push_quiet(OutItem::Frame(big.clone()), limits),
            Pushed::First
        );
        let mut out = Written::default();
        o.write_or_wake(&mut out);
        assert!(out.bytes > 0 && out.bytes < big.len(), "{out:?}");
        assert_eq!(out.frames, 0);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the rest is the task's");
        // Overflow: queued frames are dropped, but not the one half on the wire.
        let small = || OutItem::Frame(Bytes::from_static(b"x"));
        assert_eq!(o.push_quiet(small(), limits), Pushed::Queued);
        assert_eq!(o.push_quiet(small(), limits), Pushed::Overflow);
        let (mut pending, mut offset) = (VecDeque::new(), 0);
        let close = o.take_to_write(&mut pending, &mut offset);
        assert_eq!(close.map(|c| c.code), Some(CloseCode::SLOW_CONSUMER));
        assert_eq!((pending.len(), offset), (1, out.bytes));
        // The task sends the rest from there; the client gets the frame whole.
        let reader = tokio::spawn(async move { read_n(&mut client, 16 << 20).await });
        let OutItem::Frame(rest) = &pending[0] else {
            panic!("a frame")
        };
        let mut sock = Arc::into_inner(o.lock().sock.take().unwrap()).unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut sock, &rest[offset..])
            .await
            .unwrap();
        assert!(reader.await.unwrap() == big[..], "the frame arrived whole");
    }
}
