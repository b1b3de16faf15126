//! Wakeups: how a fan-out gets the frames it queued written. Waking each subscriber's task for
//! one frame costs a task wake-up and poll per session on top of the write itself; instead the
//! sessions a broadcast was the first queued item for are collected in chunks, and one task per
//! chunk writes straight to their sockets (`Outbox::write_or_wake`), waking a session's own task
//! only for what the socket would not take or the task must do itself. Chunks are spawned as
//! they fill, so the runtime's workers write a large topic in parallel while the fan-out goes on
//! queueing; a small last chunk is written by the caller once the topic's lock is released.
//!
//! Only a fan-out that starts while no earlier one is still being written goes this way (a lone
//! broadcast, a slow publish rate). During a burst, the next fan-out wakes each session's task
//! as before: those tasks run after the burst's later broadcasts queued, so each writes several
//! frames in one vectored write, which is what makes a burst cheap per delivery.
//!
//! A writing task yields every few sessions. Without that, a burst of broadcasts is written one
//! broadcast at a time (the next publish waits behind the writing tasks), one system call per
//! delivery; yielding lets the next broadcast queue meanwhile, so the sessions not yet written
//! get both frames in one vectored write, as when each session's task wrote its own.

use std::sync::atomic::{AtomicUsize, Ordering};
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

/// How many fan-outs still have writing tasks at work: one per hub, shared by its fan-outs.
#[derive(Debug, Default)]
pub struct Writing(AtomicUsize);

/// One fan-out's entry in `Writing`, held by each of its writing tasks; the last one to finish
/// takes it out.
struct Busy(Arc<Writing>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The sessions of one fan-out still to be written. Dropping it writes the rest, so none is
/// left queued without a writer.
pub struct Wakeups {
    /// Counts what the direct writes sent.
    metrics: Arc<Metrics>,
    /// The hub's count of fan-outs being written.
    writing: Arc<Writing>,
    /// This fan-out's entry in `writing`, once it spawned a writing task.
    busy: Option<Arc<Busy>>,
    /// The current, not yet full, chunk.
    batch: Vec<Arc<SessionHandle>>,
}

impl Wakeups {
    /// No sessions yet; nothing is allocated until the first. `None` while an earlier fan-out
    /// is still being written: the caller then wakes each session's task as it queues.
    pub fn new(metrics: &Arc<Metrics>, writing: &Arc<Writing>) -> Option<Self> {
        if writing.0.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(Wakeups {
            metrics: metrics.clone(),
            writing: writing.clone(),
            busy: None,
            batch: Vec::new(),
        })
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
                let writing = &self.writing;
                let busy = self.busy.get_or_insert_with(|| {
                    writing.0.fetch_add(1, Ordering::Relaxed);
                    Arc::new(Busy(writing.clone()))
                });
                let busy = busy.clone();
                rt.spawn(async move {
                    for turn in chunk.chunks(TURN) {
                        write(turn, &metrics);
                        tokio::task::yield_now().await;
                    }
                    drop(busy);
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
