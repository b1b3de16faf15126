//! `failover`: sessions spread over several nodes, held with reconnect on: when a node closes
//! its sessions (drain on SIGTERM, crash, or `--kill-pid`), each re-joins on the next node.
//! Reports how many were closed, how many came back, and the recovery time.

use super::{base_report, launch_and_ramp, Clock, RunError, STOP_LIMIT};
use crate::cli::FailoverArgs;
use crate::fleet::Fleet;
use crate::plan;
use crate::protocol::Mode;
use crate::report::{Failover, Report};
use crate::session::now_us;
use std::time::Duration;

/// Runs the scenario.
pub async fn run(a: &FailoverArgs) -> Result<Report, RunError> {
    let c = &a.common;
    let mut plans = plan::build(c, Mode::Hold, a.topics, 0, 0)?;
    for p in &mut plans {
        p.reconnect = true;
    }
    let clock = Clock::start();
    let (mut fleet, _) = launch_and_ramp(c, plans).await?;
    let before = fleet.totals().active;

    let mut kill_us = None;
    if let Some(pid) = a.kill_pid {
        fleet.note = format!("SIGTERM to {pid} in {} s", a.kill_after_secs);
        fleet
            .run_until(Duration::from_secs(a.kill_after_secs), |_| false)
            .await?;
        kill_us = Some(now_us());
        let status = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await?;
        if !status.success() {
            eprintln!("warning: kill -TERM {pid} failed ({status})");
        }
    }
    fleet.note = "waiting for closures and re-joins".into();
    fleet
        .run_until(Duration::from_secs(a.hold_secs), |f| recovered(f, before))
        .await?;
    let end = fleet.totals();
    let finals = fleet.stop(STOP_LIMIT).await?;

    let params = serde_json::json!({
        "urls": c.urls, "sessions": c.sessions, "topics": a.topics, "hold_secs": a.hold_secs,
        "kill_pid": a.kill_pid, "kill_after_secs": a.kill_after_secs, "rate": c.rate,
    });
    let (mut report, _) = base_report("failover", c, params, &finals, clock)?;
    let t = crate::fleet::sum(&finals);
    let closed = t.errors.closed;
    let rejoined = t.last_rejoin_us > 0 && t.first_close_us != u64::MAX;
    report.failover = Some(Failover {
        sessions_before: before,
        killed_pid: a.kill_pid,
        kill_us,
        closed_by_server: closed,
        reconnects: t.reconnects,
        sessions_after: end.active,
        recovered: closed > 0 && end.active >= before,
        recovery_secs: rejoined
            .then(|| t.last_rejoin_us.saturating_sub(t.first_close_us) as f64 / 1e6),
        from_kill_secs: kill_us
            .filter(|_| rejoined)
            .map(|k| t.last_rejoin_us.saturating_sub(k) as f64 / 1e6),
    });
    Ok(report)
}

/// Some sessions were closed and every one of them is joined again.
fn recovered(f: &Fleet, before: u64) -> bool {
    let t = f.totals();
    t.errors.closed > 0 && t.active >= before
}
