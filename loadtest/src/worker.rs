//! The hidden `worker` subcommand: runs one share of the sessions on a current-thread runtime
//! and speaks the JSON-lines protocol of `protocol.rs` with the coordinator.
//!
//! One task per session (hold) or per lane (churn); the ramp paces session starts at the plan's
//! rate and bounds connects in flight with a semaphore. Everything ends by the plan's deadline
//! even if the coordinator goes silent.

use crate::protocol::{Command, Event, Mode, WorkerPlan};
use crate::session::{now_us, Session};
use crate::stats::{record, Stats};
use crate::target::source_ip;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// How often the worker reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// How long sessions get to close politely after stop.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Upper bound on waiting for all session tasks after stop.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// stdin/stdout failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A line was not a valid command.
    #[error("bad command: {0}")]
    Json(#[from] serde_json::Error),
    /// The first line was not `start`.
    #[error("expected a start command first")]
    NoPlan,
}

/// State shared by the ramp and the session tasks.
struct Shared {
    /// The plan.
    plan: WorkerPlan,
    /// Counters and histograms.
    stats: Stats,
    /// Joined sessions per topic index.
    by_topic: Vec<AtomicU64>,
    /// Sessions settled (joined or failed) in hold mode; lanes finished in churn mode.
    settled: AtomicU64,
    /// Churn cycles not yet claimed by a lane.
    budget: AtomicU64,
    /// Set when the ramp has started every session or lane.
    ramped: AtomicBool,
}

/// Entry point of `loadtest worker`.
pub async fn run() -> Result<(), WorkerError> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines.next_line().await?.ok_or(WorkerError::NoPlan)?;
    let Command::Start(plan) = serde_json::from_str(&first)? else {
        return Err(WorkerError::NoPlan);
    };
    let topics = plan.topics.max(1) as usize;
    let shared = Arc::new(Shared {
        by_topic: (0..topics).map(|_| AtomicU64::new(0)).collect(),
        budget: AtomicU64::new(plan.cycles),
        plan: *plan,
        stats: Stats::default(),
        settled: AtomicU64::new(0),
        ramped: AtomicBool::new(false),
    });
    let deadline = Instant::now() + Duration::from_millis(shared.plan.deadline_ms);
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = TaskTracker::new();
    tracker.spawn(ramp(shared.clone(), tracker.clone(), stop_rx, deadline));

    let mut out = tokio::io::stdout();
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    let mut ready = false;
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) if l.trim().is_empty() => {}
                Ok(Some(l)) => {
                    if let Command::Stop = serde_json::from_str(&l)? {
                        break;
                    }
                }
                _ => break,
            },
            _ = ticker.tick() => {
                let stats = shared.stats.snapshot(false);
                emit(&mut out, &Event::Progress { stats: stats.clone() }).await?;
                let settled = shared.ramped.load(Ordering::Acquire)
                    && shared.settled.load(Ordering::Acquire) >= shared.plan.count;
                if settled && !ready {
                    ready = true;
                    let joined_by_topic = shared.by_topic.iter().map(|a| a.load(Ordering::Relaxed)).collect();
                    emit(&mut out, &Event::Ready { stats, joined_by_topic }).await?;
                }
                if Instant::now() >= deadline {
                    eprintln!("worker {}: deadline reached, stopping", shared.plan.worker);
                    break;
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    tracker.close();
    if tokio::time::timeout(STOP_LIMIT, tracker.wait())
        .await
        .is_err()
    {
        eprintln!(
            "worker {}: sessions still closing after {STOP_LIMIT:?}",
            shared.plan.worker
        );
    }
    let stats = shared.stats.snapshot(true);
    emit(&mut out, &Event::Report { stats }).await?;
    Ok(())
}

/// Writes one event line.
async fn emit(out: &mut tokio::io::Stdout, ev: &Event) -> Result<(), WorkerError> {
    let mut line = serde_json::to_vec(ev)?;
    line.push(b'\n');
    out.write_all(&line).await?;
    out.flush().await?;
    Ok(())
}

/// Starts sessions (or lanes) at the plan's rate, at most `max_inflight` connecting at once.
async fn ramp(
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop: watch::Receiver<bool>,
    deadline: Instant,
) {
    let plan = &shared.plan;
    let gate = Arc::new(Semaphore::new(plan.max_inflight.max(1)));
    let start = Instant::now();
    let per = Duration::from_secs_f64(1.0 / plan.rate.max(0.001));
    for i in 0..plan.count {
        if *stop.borrow() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep_until(start + per.mul_f64(i as f64)).await;
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let (sh, st) = (shared.clone(), stop.clone());
        match plan.mode {
            Mode::Hold => tracker.spawn(async move {
                hold_session(&sh, plan_idx(&sh, i), permit, st).await;
            }),
            Mode::Churn => {
                drop(permit);
                tracker.spawn(async move { churn_lane(&sh, i, st, deadline).await })
            }
        };
    }
    shared.ramped.store(true, Ordering::Release);
}

/// Global session index of the worker's `i`-th session.
fn plan_idx(sh: &Shared, i: u64) -> u64 {
    sh.plan.first + i
}

/// Opens session `idx`, recording the outcome; counts it as settled either way.
async fn open(sh: &Shared, idx: u64) -> Option<Session> {
    let plan = &sh.plan;
    let target = &plan.targets[(idx % plan.targets.len() as u64) as usize];
    let t0 = Instant::now();
    let timeout = Duration::from_millis(plan.join_timeout_ms);
    // Boxed: the handshake's state (read chunk, response head) lives on the heap only while
    // connecting, instead of sizing every long-lived session task for it.
    let res = Box::pin(Session::open(
        target,
        source_ip(idx, plan.sources),
        plan.topic(idx),
        timeout,
        &sh.stats,
    ))
    .await;
    match res {
        Ok(s) => {
            record(&sh.stats.connect_join, t0.elapsed().as_micros() as u64);
            sh.stats.joined.fetch_add(1, Ordering::Relaxed);
            sh.stats.last_join_us.fetch_max(now_us(), Ordering::Relaxed);
            Some(s)
        }
        Err(kind) => {
            sh.stats.error(kind);
            sh.stats.failed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Hold mode: join, stay joined until stop, close.
async fn hold_session(
    sh: &Shared,
    idx: u64,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let session = Box::pin(open(sh, idx)).await;
    drop(permit);
    let Some(mut s) = session else {
        sh.settled.fetch_add(1, Ordering::Release);
        return;
    };
    let topic = (idx % sh.plan.topics.max(1)) as usize;
    sh.by_topic[topic].fetch_add(1, Ordering::Relaxed);
    sh.stats.active.fetch_add(1, Ordering::Relaxed);
    sh.settled.fetch_add(1, Ordering::Release);
    let heartbeat = Duration::from_millis(sh.plan.heartbeat_ms.max(1));
    let r = s.hold(heartbeat, &sh.stats, &mut stop).await;
    sh.stats.active.fetch_sub(1, Ordering::Relaxed);
    match r {
        Ok(()) => Box::pin(s.close(CLOSE_GRACE, &sh.stats)).await,
        Err(kind) => sh.stats.error(kind),
    }
}

/// Churn mode: repeat connect, join, short hold, leave, close until the budget, the deadline
/// or stop ends it.
async fn churn_lane(sh: &Shared, lane: u64, stop: watch::Receiver<bool>, deadline: Instant) {
    let plan = &sh.plan;
    let hold = Duration::from_millis(plan.churn_hold_ms);
    let timeout = Duration::from_millis(plan.join_timeout_ms);
    let mut k = 0u64;
    while !*stop.borrow()
        && Instant::now() < deadline
        && sh
            .budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(1))
            .is_ok()
    {
        let idx = plan.first + lane + k * plan.count;
        k += 1;
        let Some(mut s) = open(sh, idx).await else {
            continue;
        };
        sh.stats.active.fetch_add(1, Ordering::Relaxed);
        if !hold.is_zero() {
            tokio::time::sleep(hold.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
        let t0 = Instant::now();
        let left = s.leave(timeout, &sh.stats).await;
        sh.stats.active.fetch_sub(1, Ordering::Relaxed);
        match left {
            Ok(()) => record(&sh.stats.leave, t0.elapsed().as_micros() as u64),
            Err(kind) => sh.stats.error(kind),
        }
        s.close(CLOSE_GRACE, &sh.stats).await;
        sh.stats.cycles.fetch_add(1, Ordering::Relaxed);
    }
    sh.settled.fetch_add(1, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Target;

    /// The long-lived part of a session task must stay small: this is the client's idle cost.
    #[test]
    fn idle_session_task_is_small() {
        let plan = WorkerPlan {
            worker: 0,
            mode: Mode::Hold,
            targets: vec![Target::parse("ws://127.0.0.1:1").unwrap()],
            first: 0,
            count: 1,
            rate: 1.0,
            max_inflight: 1,
            sources: 1,
            topic_prefix: "room:".into(),
            topics: 1,
            join_timeout_ms: 1,
            heartbeat_ms: 1,
            cycles: 0,
            churn_hold_ms: 0,
            deadline_ms: 1,
        };
        let sh = Shared {
            plan,
            stats: Stats::default(),
            by_topic: vec![AtomicU64::new(0)],
            settled: AtomicU64::new(0),
            budget: AtomicU64::new(0),
            ramped: AtomicBool::new(false),
        };
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let (_tx, rx) = watch::channel(false);
        let fut = hold_session(&sh, 0, permit, rx);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1024, "hold_session future is {size} bytes");
    }
}
