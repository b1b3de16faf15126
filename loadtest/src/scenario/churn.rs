//! `churn`: storms of connect → join → (hold) → leave → close, run by `--sessions` concurrent
//! lanes until `--cycles` cycles are done (or `--max-secs`); reports cycles/s, join and leave
//! latency and every failure by kind.

use super::{base_report, launch_and_ramp, Clock, RunError, STOP_LIMIT};
use crate::cli::ChurnArgs;
use crate::plan;
use crate::protocol::Mode;
use crate::report::{Churn, Latency, Report};

/// Runs the scenario.
pub async fn run(a: &ChurnArgs) -> Result<Report, RunError> {
    let c = &a.common;
    let share = plan::share(c)?;
    let total = a.cycles.unwrap_or(c.sessions * 5);
    // This shard's part of the cycles, in proportion to its lanes.
    let cycles = total * share.count / c.sessions.max(1);
    let plans = plan::build(c, Mode::Churn, a.topics, cycles, a.hold_ms)?;
    let clock = Clock::start();
    let (fleet, _) = launch_and_ramp(c, plans).await?;
    let elapsed = clock.started.elapsed().as_secs_f64();
    let finals = fleet.stop(STOP_LIMIT).await?;
    let params = serde_json::json!({
        "urls": c.urls, "lanes": c.sessions, "cycles": total, "rate": c.rate,
        "topics": a.topics, "hold_ms": a.hold_ms,
    });
    let (mut report, hists) = base_report("churn", c, params, &finals, clock)?;
    let done: u64 = finals.iter().map(|s| s.cycles).sum();
    report.churn = Some(Churn {
        cycles: done,
        cycles_requested: cycles,
        cycles_per_sec: if elapsed > 0.0 {
            done as f64 / elapsed
        } else {
            0.0
        },
        leave_latency: Latency::of(&hists[2]),
    });
    Ok(report)
}
