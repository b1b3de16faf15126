//! `capacity`: ramp to N joined sessions, hold them idle, and read what they cost the server:
//! resident bytes per session (from `/metrics` and, with `--server-pid`, from /proc VmRSS, the
//! method of reference/rust-stack.md §4), CPU per connect+join, and the connect+join rate.

use super::{base_report, hold, launch_and_ramp, Clock, RunError, STOP_LIMIT};
use crate::cli::CapacityArgs;
use crate::metrics::{proc_cpu_sum, proc_rss_sum, scrape};
use crate::plan;
use crate::protocol::Mode;
use crate::report::{Capacity, Report};

/// Runs the scenario.
pub async fn run(a: &CapacityArgs) -> Result<Report, RunError> {
    let c = &a.common;
    let plans = plan::build(c, Mode::Hold, a.topics, 0, 0)?;
    let nodes = plan::nodes(&plan::targets(c)?);
    let baseline = scrape(&nodes).await;
    let proc_base = proc_rss_sum(&a.server_pids);
    let cpu_base = proc_cpu_sum(&a.server_pids);
    if nodes.len() as u32 != baseline.nodes_read {
        eprintln!(
            "warning: /metrics answered on {} of {} nodes",
            baseline.nodes_read,
            nodes.len()
        );
    }

    let clock = Clock::start();
    let (mut fleet, _) = launch_and_ramp(c, plans).await?;
    let after_ramp = scrape(&nodes).await;
    let cpu_ramp = proc_cpu_sum(&a.server_pids);
    let held = hold(&mut fleet, &a.server_pids, a.hold_secs).await?;
    let loaded = scrape(&nodes).await;
    let proc_loaded = proc_rss_sum(&a.server_pids);
    let cpu_loaded = proc_cpu_sum(&a.server_pids);
    let joined_now = fleet.totals().active;
    let finals = fleet.stop(STOP_LIMIT).await?;

    let params = serde_json::json!({
        "urls": c.urls, "sessions": c.sessions, "rate": c.rate, "max_inflight": c.max_inflight,
        "sources": c.sources, "topics": a.topics, "hold_secs": a.hold_secs,
        "server_pids": a.server_pids, "heartbeat_secs": c.heartbeat_secs,
    });
    let (mut report, _) = base_report("capacity", c, params, &finals, clock)?;
    // Per-session figures divide by the sessions still joined at the loaded reading.
    let per = |delta: f64| (joined_now > 0).then(|| delta / joined_now as f64);
    let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    let proc_ramp = delta(cpu_base, cpu_ramp);
    let ramp_cpu = proc_ramp.unwrap_or(after_ramp.cpu_seconds - baseline.cpu_seconds);
    report.hold = Some(held);
    report.capacity = Some(Capacity {
        hold_secs: a.hold_secs,
        bytes_per_session_metrics: (loaded.nodes_read > 0)
            .then(|| per(loaded.rss_bytes - baseline.rss_bytes))
            .flatten(),
        proc_rss_baseline: proc_base,
        proc_rss_loaded: proc_loaded,
        bytes_per_session_proc: match (proc_base, proc_loaded) {
            (Some(b), Some(l)) => per(l as f64 - b as f64),
            _ => None,
        },
        cpu_seconds_ramp: after_ramp.cpu_seconds - baseline.cpu_seconds,
        proc_cpu_seconds_ramp: proc_ramp,
        proc_cpu_seconds_hold: delta(cpu_ramp, cpu_loaded),
        cpu_us_per_join: (report.sessions_joined > 0)
            .then(|| ramp_cpu * 1e6 / report.sessions_joined as f64),
        cpu_seconds_hold: loaded.cpu_seconds - after_ramp.cpu_seconds,
        baseline,
        after_ramp,
        loaded,
    });
    Ok(report)
}
