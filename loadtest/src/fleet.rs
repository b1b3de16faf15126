//! The coordinator's view of its worker processes: spawns `loadtest worker` children, feeds
//! them their plans, folds their JSON-lines events into totals and prints the progress line.
//!
//! Children are spawned with `kill_on_drop`, so an early return of the coordinator never leaves
//! load generators behind.

use crate::protocol::{Command, Event, WorkerPlan};
use crate::stats::WorkerStats;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often the progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Why the fleet failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Spawning or talking to a worker failed.
    #[error("worker io: {0}")]
    Io(#[from] std::io::Error),
    /// Encoding a command failed.
    #[error("worker protocol: {0}")]
    Json(#[from] serde_json::Error),
    /// A worker exited or sent garbage before its final report.
    #[error("worker {0} failed: {1}")]
    Worker(usize, String),
}

/// Running worker processes and what they last reported.
#[derive(Debug)]
pub struct Fleet {
    /// Child processes.
    children: Vec<Child>,
    /// Their stdins (commands).
    stdins: Vec<ChildStdin>,
    /// Events from all workers, tagged with the worker number.
    events: mpsc::UnboundedReceiver<(usize, Result<Event, String>)>,
    /// Latest counters per worker.
    pub latest: Vec<WorkerStats>,
    /// `ready` payloads per worker (joined per topic).
    pub ready: Vec<Option<Vec<u64>>>,
    /// Final reports per worker.
    reports: Vec<Option<WorkerStats>>,
    /// Requested sessions (for the progress line).
    requested: u64,
    /// Start of the run.
    started: Instant,
    /// Last progress print and the deliveries counted then.
    last_print: (Instant, u64),
    /// Extra text the scenario wants on the progress line.
    pub note: String,
    /// Suppress progress lines.
    quiet: bool,
}

impl Fleet {
    /// Spawns one worker per plan (this same executable, `worker` subcommand).
    pub async fn launch(plans: Vec<WorkerPlan>, quiet: bool) -> Result<Fleet, FleetError> {
        let exe = std::env::current_exe()?;
        let (tx, events) = mpsc::unbounded_channel();
        let (mut children, mut stdins) = (Vec::new(), Vec::new());
        let requested = plans.iter().map(|p| p.count).sum();
        for plan in plans {
            let w = plan.worker;
            let mut child = tokio::process::Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()?;
            let mut stdin = child
                .stdin
                .take()
                .ok_or_else(|| FleetError::Worker(w, "no stdin".into()))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| FleetError::Worker(w, "no stdout".into()))?;
            send(&mut stdin, &Command::Start(Box::new(plan))).await?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                loop {
                    let ev = match lines.next_line().await {
                        Ok(Some(l)) => {
                            serde_json::from_str(&l).map_err(|e| format!("bad line {l:?}: {e}"))
                        }
                        Ok(None) => Err("exited".to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    let end = ev.is_err() || matches!(ev, Ok(Event::Report { .. }));
                    if tx.send((w, ev)).is_err() || end {
                        return;
                    }
                }
            });
            children.push(child);
            stdins.push(stdin);
        }
        let n = children.len();
        let now = Instant::now();
        Ok(Fleet {
            children,
            stdins,
            events,
            latest: vec![WorkerStats::default(); n],
            ready: vec![None; n],
            reports: vec![None; n],
            requested,
            started: now,
            last_print: (now, 0),
            note: String::new(),
            quiet,
        })
    }

    /// Process ids of the workers still running (for reading their memory).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(Child::id).collect()
    }

    /// Sum of the latest counters (no histograms).
    pub fn totals(&self) -> WorkerStats {
        sum(&self.latest)
    }

    /// Whether every worker sent `ready`.
    pub fn all_ready(&self) -> bool {
        self.ready.iter().all(Option::is_some)
    }

    /// Joined sessions per topic, summed over workers' `ready` events.
    pub fn joined_by_topic(&self) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for v in self.ready.iter().flatten() {
            if out.len() < v.len() {
                out.resize(v.len(), 0);
            }
            out.iter_mut().zip(v).for_each(|(a, b)| *a += b);
        }
        out
    }

    /// Processes events until `done(self)` or `limit` elapses; true if `done` held.
    pub async fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Fleet) -> bool,
    ) -> Result<bool, FleetError> {
        let deadline = Instant::now() + limit;
        loop {
            if done(self) {
                return Ok(true);
            }
            let next_print = self.last_print.0 + PROGRESS_EVERY;
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some((w, Ok(ev))) => self.apply(w, ev),
                    Some((w, Err(e))) => return Err(FleetError::Worker(w, e)),
                    None => return Err(FleetError::Worker(0, "all workers gone".into())),
                },
                _ = tokio::time::sleep_until(next_print) => self.print(),
                _ = tokio::time::sleep_until(deadline) => return Ok(done(self)),
            }
        }
    }

    /// Folds one event in.
    fn apply(&mut self, w: usize, ev: Event) {
        match ev {
            Event::Progress { stats } => self.latest[w] = stats,
            Event::Ready {
                stats,
                joined_by_topic,
            } => {
                self.latest[w] = stats;
                self.ready[w] = Some(joined_by_topic);
            }
            Event::Report { stats } => {
                self.latest[w] = stats.clone();
                self.reports[w] = Some(stats);
            }
        }
    }

    /// Prints the progress line to stderr.
    fn print(&mut self) {
        let t = self.totals();
        let now = Instant::now();
        let dt = now
            .duration_since(self.last_print.0)
            .as_secs_f64()
            .max(1e-3);
        let rate = (t.deliveries.saturating_sub(self.last_print.1)) as f64 / dt;
        self.last_print = (now, t.deliveries);
        if self.quiet {
            return;
        }
        eprintln!(
            "[{:6.1}s] sessions {}/{} active {} failed {} | msgs {} ({:.0}/s) | cycles {} | errors {} {}",
            self.started.elapsed().as_secs_f64(),
            t.joined,
            self.requested,
            t.active,
            t.failed,
            t.deliveries,
            rate,
            t.cycles,
            t.errors.total(),
            self.note
        );
    }

    /// Sends `cmd` to every worker (recovery's `disconnect` and `rejoin`).
    pub async fn command(&mut self, cmd: &Command) -> Result<(), FleetError> {
        for stdin in &mut self.stdins {
            send(stdin, cmd).await?;
        }
        Ok(())
    }

    /// Tells every worker to stop and collects the final reports (bounded by `limit`).
    pub async fn stop(mut self, limit: Duration) -> Result<Vec<WorkerStats>, FleetError> {
        for stdin in &mut self.stdins {
            // A worker that already exited is reported below as missing its report.
            let _ = send(stdin, &Command::Stop).await;
        }
        let _ = self
            .run_until(limit, |f| f.reports.iter().all(Option::is_some))
            .await;
        for child in &mut self.children {
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
        self.reports
            .into_iter()
            .enumerate()
            .map(|(w, r)| r.ok_or_else(|| FleetError::Worker(w, "no final report".into())))
            .collect()
    }
}

/// Writes one command line.
async fn send(stdin: &mut ChildStdin, cmd: &Command) -> Result<(), FleetError> {
    let mut line = serde_json::to_vec(cmd)?;
    line.push(b'\n');
    stdin.write_all(&line).await?;
    stdin.flush().await?;
    Ok(())
}

/// Counter sum of several workers' stats (histogram fields left empty; see `merge`).
pub fn sum(all: &[WorkerStats]) -> WorkerStats {
    let mut t = WorkerStats::default();
    for s in all {
        t.joined += s.joined;
        t.active += s.active;
        t.failed += s.failed;
        t.errors.add(&s.errors);
        t.deliveries += s.deliveries;
        t.unique += s.unique;
        t.duplicates += s.duplicates;
        t.first_delivery_us = t.first_delivery_us.min(s.first_delivery_us);
        t.last_delivery_us = t.last_delivery_us.max(s.last_delivery_us);
        t.cycles += s.cycles;
        t.heartbeats += s.heartbeats;
        t.last_join_us = t.last_join_us.max(s.last_join_us);
        t.reconnects += s.reconnects;
        t.first_close_us = t.first_close_us.min(s.first_close_us);
        t.last_rejoin_us = t.last_rejoin_us.max(s.last_rejoin_us);
        t.recovery.add(&s.recovery);
    }
    t
}
