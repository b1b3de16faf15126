//! The hidden `worker` subcommand: runs one share of the sessions on a current-thread runtime
//! and speaks the JSON-lines protocol of `protocol.rs` with the coordinator.
//!
//! One task per session (hold, recover) or per lane (churn); the ramp paces session starts at the plan's
//! rate and bounds connects in flight with a semaphore. Everything ends by the plan's deadline
//! even if the coordinator goes silent.

use crate::protocol::{Command, Event, Mode, Phase};
use crate::rejoin::{recover_session, Recover};
use crate::stats::Stats;
use crate::tasks::{churn_lane, hold_session, Shared};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// How often the worker reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
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
        recover: Recover::new(plan.max_inflight),
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
                Ok(Some(l)) => match serde_json::from_str(&l)? {
                    Command::Stop => break,
                    Command::Disconnect => {
                        shared.recover.phase.send_replace(Phase::Disconnect);
                    }
                    Command::Rejoin { expect } => {
                        shared.recover.phase.send_replace(Phase::Rejoin(expect));
                    }
                    Command::Start(_) => {}
                },
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
                hold_session(&sh, sh.plan.first + i, permit, st).await;
            }),
            Mode::Recover => tracker.spawn(async move {
                recover_session(&sh, sh.plan.first + i, permit, st).await;
            }),
            Mode::Churn => {
                drop(permit);
                tracker.spawn(async move { churn_lane(&sh, i, st, deadline).await })
            }
        };
    }
    shared.ramped.store(true, Ordering::Release);
}
