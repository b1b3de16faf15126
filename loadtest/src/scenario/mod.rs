//! The scenarios and what they share: launching the fleet for a plan, merging the workers'
//! final stats (counters summed, histograms added) and filling the common part of the report.

pub mod capacity;
pub mod churn;
pub mod failover;
pub mod fanout;
pub mod recovery;

use crate::cli::Common;
use crate::fleet::{self, Fleet, FleetError};
use crate::metrics::{proc_cpu_times_sum, CpuTimes};
use crate::plan::{self, PlanError};
use crate::report::{Hists, Hold, Latency, Report};
use crate::session::now_us;
use crate::stats::{decode_hist, new_hist, HistError, WorkerStats};
use hdrhistogram::Histogram;
use std::time::Duration;
use tokio::time::Instant;

/// How long workers get to close their sessions and report after stop.
pub const STOP_LIMIT: Duration = Duration::from_secs(30);

/// Why a scenario could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad flags.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Worker processes failed.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// A histogram did not decode.
    #[error(transparent)]
    Hist(#[from] HistError),
    /// Reading or writing a report file failed.
    #[error("report file: {0}")]
    Io(#[from] std::io::Error),
    /// A report file is not a report.
    #[error("report json: {0}")]
    Json(#[from] serde_json::Error),
    /// Bad `--fail-if`.
    #[error(transparent)]
    Slo(#[from] crate::slo::SloError),
    /// The flags ask for something the scenario cannot do.
    #[error("{0}")]
    Usage(&'static str),
    /// `merge` got reports of different scenarios.
    #[error("cannot merge {0} with {1}")]
    Mismatch(String, String),
}

/// Clock marks of a run.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Monotonic start.
    pub started: Instant,
    /// Wall-clock start, µs since epoch (compared with workers' timestamps).
    pub t0_us: u64,
}

impl Clock {
    /// Now.
    pub fn start() -> Clock {
        Clock {
            started: Instant::now(),
            t0_us: now_us(),
        }
    }
}

/// Adds the workers' histograms: connect+join, delivery, leave.
pub fn merge_hists(all: &[WorkerStats]) -> Result<[Histogram<u64>; 3], HistError> {
    let mut h = [new_hist(), new_hist(), new_hist()];
    for s in all {
        for (acc, enc) in h
            .iter_mut()
            .zip([&s.connect_join_hist, &s.delivery_hist, &s.leave_hist])
        {
            // Auto-resizing histograms of equal precision always add.
            let _ = acc.add(decode_hist(enc)?);
        }
    }
    Ok(h)
}

/// Launches the fleet for `plans` and waits (bounded by `--max-secs`) until every worker is ready.
pub async fn launch_and_ramp(
    c: &Common,
    plans: Vec<crate::protocol::WorkerPlan>,
) -> Result<(Fleet, bool), RunError> {
    let mut fleet = Fleet::launch(plans, c.quiet).await?;
    let ready = fleet
        .run_until(Duration::from_secs(c.max_secs), Fleet::all_ready)
        .await?;
    if !ready {
        eprintln!("warning: not every worker finished its ramp within --max-secs");
    }
    Ok((fleet, ready))
}

/// Holds the joined sessions for `secs` (heartbeats, probes) and reads what it cost both sides:
/// the `server_pids`, and the load generator as this process and its workers.
pub async fn hold(fleet: &mut Fleet, server_pids: &[u32], secs: u64) -> Result<Hold, RunError> {
    let loadgen: Vec<u32> = fleet
        .pids()
        .into_iter()
        .chain([std::process::id()])
        .collect();
    let read = |fleet: &Fleet| {
        (
            proc_cpu_times_sum(server_pids).filter(|_| !server_pids.is_empty()),
            proc_cpu_times_sum(&loadgen),
            fleet.totals().heartbeats,
            Instant::now(),
        )
    };
    let before = read(fleet);
    fleet.note = format!("holding {secs} s");
    fleet
        .run_until(Duration::from_secs(secs), |_| false)
        .await?;
    let after = read(fleet);
    let spent = |a: Option<CpuTimes>, b: Option<CpuTimes>| Some(b?.since(a?));
    let (gateway, loadgen) = (spent(before.0, after.0), spent(before.1, after.1));
    let mut h = Hold {
        secs: (after.3 - before.3).as_secs_f64(),
        heartbeats: after.2.saturating_sub(before.2),
        gateway_cpu_secs: gateway.map(CpuTimes::total),
        gateway_sys_cpu_secs: gateway.map(|c| c.system),
        loadgen_cpu_secs: loadgen.map(CpuTimes::total),
        loadgen_sys_cpu_secs: loadgen.map(|c| c.system),
        ..Default::default()
    };
    h.derive();
    Ok(h)
}

/// The common part of a report from the workers' final stats.
pub fn base_report(
    scenario: &str,
    c: &Common,
    params: serde_json::Value,
    finals: &[WorkerStats],
    clock: Clock,
) -> Result<(Report, [Histogram<u64>; 3]), RunError> {
    let share = plan::share(c)?;
    let t = fleet::sum(finals);
    let hists = merge_hists(finals)?;
    let ramp_secs = if t.joined > 0 {
        t.last_join_us.saturating_sub(clock.t0_us) as f64 / 1e6
    } else {
        0.0
    };
    let report = Report {
        scenario: scenario.to_string(),
        shard: [share.shard.0, share.shard.1],
        started_unix: clock.t0_us / 1_000_000,
        duration_secs: clock.started.elapsed().as_secs_f64(),
        params,
        sessions_requested: share.count,
        sessions_joined: t.joined,
        sessions_failed: t.failed,
        workers: finals.len(),
        errors_total: t.errors.total(),
        errors: t.errors,
        ramp_secs,
        connect_join_rate: if ramp_secs > 0.0 {
            t.joined as f64 / ramp_secs
        } else {
            0.0
        },
        connect_join: Latency::of(&hists[0]),
        heartbeats: t.heartbeats,
        histograms: Hists::encode(&hists),
        ..Default::default()
    };
    Ok((report, hists))
}
