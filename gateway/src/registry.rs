//! The Registry: every live session of this node, for the things that must reach all of them —
//! the drain on shutdown and the shared idle sweep (one task instead of a timer per session) —
//! and the `SessionHandle`, the part of a session other tasks may touch (its outbox and
//! liveness), with the coarse `Clock` liveness is measured on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use crate::outbox::Outbox;
use crate::protocol::Close;

/// Which transport carries a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// `/socket/websocket`.
    WebSocket,
    /// `/socket/longpoll`.
    LongPoll,
}

impl TransportKind {
    /// Label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::WebSocket => "websocket",
            TransportKind::LongPoll => "longpoll",
        }
    }
}

/// The part of a session other tasks may touch: its outbox and liveness.
#[derive(Debug)]
pub struct SessionHandle {
    /// Node-unique serial: registry key, and how a broadcast excludes its sender.
    pub key: u64,
    /// Transport of the session.
    pub transport: TransportKind,
    /// Frames waiting to be written and the close request.
    pub outbox: Outbox,
    /// Seconds since node start when data last arrived; read by the idle sweep.
    last_seen: AtomicU32,
}

impl SessionHandle {
    /// Record that the client sent something.
    pub fn touch(&self, clock: &Clock) {
        self.last_seen.store(clock.now(), Ordering::Relaxed);
    }

    /// Ask the session to close.
    pub fn close(&self, close: Close) {
        self.outbox.close(close);
    }
}

/// A coarse clock (whole seconds since node start) cheap enough to read on every frame.
#[derive(Debug)]
pub struct Clock(Instant);

impl Default for Clock {
    fn default() -> Self {
        Clock(Instant::now())
    }
}

impl Clock {
    /// Seconds since node start.
    pub fn now(&self) -> u32 {
        self.0.elapsed().as_secs() as u32
    }

    /// Milliseconds since node start.
    pub fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

const SHARDS: usize = 32;

type Shard = Mutex<HashMap<u64, Arc<SessionHandle>>>;

/// All sessions of the node, sharded to keep lock contention low during connect storms.
#[derive(Debug)]
pub struct Registry {
    /// Sessions by key.
    shards: Box<[Shard]>,
    /// Next session key.
    next_key: AtomicU64,
    /// Number of live sessions (kept separately so reading it takes no lock).
    live: AtomicUsize,
    /// Woken when the last session is removed (the drain waits on it).
    emptied: Notify,
    /// Time base for `last_seen`.
    pub clock: Clock,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            next_key: AtomicU64::new(1),
            live: AtomicUsize::new(0),
            emptied: Notify::new(),
            clock: Clock::default(),
        }
    }
}

impl Registry {
    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<SessionHandle>>> {
        self.shards[key as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Create and register a session handle.
    pub fn register(&self, transport: TransportKind) -> Arc<SessionHandle> {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(SessionHandle {
            key,
            transport,
            outbox: Outbox::default(),
            last_seen: AtomicU32::new(self.clock.now()),
        });
        self.shard(key).insert(key, handle.clone());
        self.live.fetch_add(1, Ordering::Relaxed);
        handle
    }

    /// Remove a session (it has ended).
    pub fn remove(&self, key: u64) {
        if self.shard(key).remove(&key).is_some() && self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.emptied.notify_waiters();
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Wait until no session is live.
    pub async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `max` sessions that are not yet closing, for a drain batch.
    pub fn pick_open(&self, max: usize) -> Vec<Arc<SessionHandle>> {
        let mut out = Vec::new();
        for i in 0..SHARDS {
            let shard = self.shard(i as u64);
            for h in shard.values() {
                if out.len() >= max {
                    return out;
                }
                if h.outbox.close_requested().is_none() {
                    out.push(h.clone());
                }
            }
        }
        out
    }

    /// Close every session idle for at least `idle_secs` seconds; returns how many.
    pub fn sweep_idle(&self, idle_secs: u32, close: Close) -> usize {
        // The clock is read once per sweep, not once per session (a node walks all its
        // sessions every few seconds).
        let now = self.clock.now();
        let mut n = 0;
        for i in 0..SHARDS {
            let shard = self.shard(i as u64);
            for h in shard.values() {
                let seen = h.last_seen.load(Ordering::Relaxed);
                if h.transport == TransportKind::WebSocket && now.saturating_sub(seen) >= idle_secs
                {
                    h.close(close);
                    n += 1;
                }
            }
        }
        n
    }
}
