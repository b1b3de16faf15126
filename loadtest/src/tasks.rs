//! What one session task does inside a worker: open (connect, upgrade, join) and record the
//! outcome, hold until stop (re-joining after a server-side close when the plan asks for
//! failover), or run churn cycles.

use crate::protocol::WorkerPlan;
use crate::session::{now_us, Session};
use crate::stats::{record, Stats};
use crate::target::source_ip;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long sessions get to close politely after stop.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Reconnect attempts per server-side close before a session gives up (failover).
const MAX_RECONNECTS: u32 = 20;

/// State shared by the ramp and the session tasks.
pub struct Shared {
    /// The plan.
    pub plan: WorkerPlan,
    /// Counters and histograms.
    pub stats: Stats,
    /// Joined sessions per topic index.
    pub by_topic: Vec<AtomicU64>,
    /// Sessions settled (joined or failed) in hold mode; lanes finished in churn mode.
    pub settled: AtomicU64,
    /// Churn cycles not yet claimed by a lane.
    pub budget: AtomicU64,
    /// Set when the ramp has started every session or lane.
    pub ramped: AtomicBool,
    /// Recovery mode: the phase the coordinator moved the sessions to, and the rejoin gate.
    pub recover: crate::rejoin::Recover,
}

/// Opens session `idx` on target `idx + attempt` and records the outcome: a first open counts
/// as joined or failed, a re-open (`attempt > 0`) as a reconnect or just an error.
async fn open(sh: &Shared, idx: u64, attempt: u32) -> Option<Session> {
    let plan = &sh.plan;
    let target = &plan.targets[((idx + u64::from(attempt)) % plan.targets.len() as u64) as usize];
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
        Ok(s) if attempt > 0 => {
            sh.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            sh.stats
                .last_rejoin_us
                .fetch_max(now_us(), Ordering::Relaxed);
            Some(s)
        }
        Ok(s) => {
            record(&sh.stats.connect_join, t0.elapsed().as_micros() as u64);
            sh.stats.joined.fetch_add(1, Ordering::Relaxed);
            sh.stats.last_join_us.fetch_max(now_us(), Ordering::Relaxed);
            Some(s)
        }
        Err(kind) => {
            sh.stats.error(kind);
            if attempt == 0 {
                sh.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            None
        }
    }
}

/// Hold mode: join, stay joined until stop, close. With `plan.reconnect`, a session the server
/// closes is re-opened on the next target (bounded attempts, staggered backoff).
pub async fn hold_session(
    sh: &Shared,
    idx: u64,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let session = Box::pin(open(sh, idx, 0)).await;
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
    let mut attempt = 0u32;
    loop {
        let r = s.hold(heartbeat, &sh.stats, &mut stop).await;
        sh.stats.active.fetch_sub(1, Ordering::Relaxed);
        let kind = match r {
            Ok(()) => return Box::pin(s.close(CLOSE_GRACE, &sh.stats)).await,
            Err(kind) => kind,
        };
        sh.stats.error(kind);
        sh.stats
            .first_close_us
            .fetch_min(now_us(), Ordering::Relaxed);
        if !sh.plan.reconnect {
            return;
        }
        drop(s);
        s = loop {
            attempt += 1;
            if attempt > MAX_RECONNECTS || !backoff(idx, attempt, &mut stop).await {
                return;
            }
            if let Some(new) = Box::pin(open(sh, idx, attempt)).await {
                break new;
            }
        };
        sh.stats.active.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits before reconnect `attempt`: 50 ms × attempt (at most 1 s) plus a per-session offset
/// of up to 99 ms so a closed node's sessions do not all reconnect at once. False on stop.
async fn backoff(idx: u64, attempt: u32, stop: &mut watch::Receiver<bool>) -> bool {
    let wait = Duration::from_millis((50 * u64::from(attempt)).min(1000) + idx % 100);
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = stop.changed() => false,
    }
}

/// Churn mode: repeat connect, join, short hold, leave, close until the budget, the deadline
/// or stop ends it.
pub async fn churn_lane(sh: &Shared, lane: u64, stop: watch::Receiver<bool>, deadline: Instant) {
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
        let Some(mut s) = Box::pin(open(sh, idx, 0)).await else {
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
    use crate::protocol::Mode;
    use crate::target::Target;
    use std::sync::Arc;
    use tokio::sync::Semaphore;

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
            reconnect: true,
        };
        let sh = Shared {
            plan,
            stats: Stats::default(),
            by_topic: vec![AtomicU64::new(0)],
            settled: AtomicU64::new(0),
            budget: AtomicU64::new(0),
            ramped: AtomicBool::new(false),
            recover: crate::rejoin::Recover::new(1),
        };
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let (_tx, rx) = watch::channel(false);
        let fut = hold_session(&sh, 0, permit, rx);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1024, "hold_session future is {size} bytes");
    }
}
