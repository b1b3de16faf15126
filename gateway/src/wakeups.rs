//! Wakeups: how a fan-out gets the frames it queued written. Waking each subscriber's task for
//! one frame costs a task wake-up and poll per session on top of the write itself; instead the
//! sessions a broadcast was the first queued item for are collected in chunks, and one task per
//! chunk writes straight to their sockets (`Outbox::write_or_wake`), waking a session's own task
//! only for what the socket would not take or the task must do itself. Chunks are spawned as
//! they fill, so the runtime's workers write a large topic in parallel while the fan-out goes on
//! queueing; a small last chunk is written by the caller once the topic's lock is released.
//!
//! A writing task yields every few sessions. Without that, a burst of broadcasts is written one
//! broadcast at a time (the next publish waits behind the writing tasks), one system call per
//! delivery; yielding lets the next broadcast queue meanwhile, so the sessions not yet written
//! get both frames in one vectored write, as when each session's task wrote its own.

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::outbox::Written;
use crate::registry::SessionHandle;

/// Sessions per writing task: large enough that spawning is a small share of the work (a
/// spawn costs about what one write does), small enough to spread a topic over the workers.
const CHUNK: usize = 128;

/// Sessions a writing task writes per turn on a worker (≈ 0.1 ms), and the most the caller
/// writes itself.
const TURN: usize = 16;

/// The sessions of one fan-out still to be written. Dropping it writes the rest, so none is
/// left queued without a writer.
pub struct Wakeups {
    /// Counts what the direct writes sent.
    metrics: Arc<Metrics>,
    /// The current, not yet full, chunk.
    batch: Vec<Arc<SessionHandle>>,
}

impl Wakeups {
    /// No sessions yet; nothing is allocated until the first.
    pub fn new(metrics: &Arc<Metrics>) -> Self {
        Wakeups {
            metrics: metrics.clone(),
            batch: Vec::new(),
        }
    }

    /// A session the fan-out queued a first item for (`Pushed::First`).
    pub fn add(&mut self, session: &Arc<SessionHandle>) {
        if self.batch.capacity() == 0 {
            self.batch.reserve_exact(CHUNK);
        }
        self.batch.push(session.clone());
        if self.batch.len() == CHUNK {
            self.spawn();
        }
    }

    /// Hand the current chunk to a task of its own (or write it here outside a runtime).
    fn spawn(&mut self) {
        let chunk = std::mem::take(&mut self.batch);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let metrics = self.metrics.clone();
                rt.spawn(async move {
                    for turn in chunk.chunks(TURN) {
                        write(turn, &metrics);
                        tokio::task::yield_now().await;
                    }
                });
            }
            Err(_) => write(&chunk, &self.metrics),
        }
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        if self.batch.len() > TURN {
            self.spawn();
        } else {
            write(&self.batch, &self.metrics);
        }
    }
}

fn write(sessions: &[Arc<SessionHandle>], metrics: &Metrics) {
    let mut out = Written::default();
    for session in sessions {
        session.outbox.write_or_wake(&mut out);
    }
    if metrics.per_message && out.writes > 0 {
        metrics.writes.inc_by(out.writes as u64);
        metrics.bytes_out.inc_by(out.bytes as u64);
        metrics.frames_out.inc_by(out.frames as u64);
    }
}
