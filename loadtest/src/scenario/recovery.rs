//! `recovery`: a recovery storm. S sessions join T topics with history; one marker broadcast
//! per topic gives every session a position (the `ref` of the last broadcast it saw); all
//! sessions close; M broadcasts per topic are published while they are away; then all rejoin
//! at once (bounded by `--max-inflight` connects in flight) with `since` = their position.
//!
//! Reported: the time from the first rejoin to the last session having received all M
//! replayed broadcasts, replayed broadcasts per second, the per-session rejoin-to-complete
//! latency, whether every session got exactly the M broadcasts once each and in order (with
//! contiguous positions), the join replies' `recovered`, the increase of the gateways'
//! `gateway_history_recoveries_total` and `gateway_history_replayed_total`, and the CPU of the
//! gateways (`--server-pid`) and of the history store (`--store-pid`, e.g. redis-server) from
//! the rejoin command to the last completion. One coordinator only (no `--shard`).

use super::{base_report, launch_and_ramp, Clock, RunError, STOP_LIMIT};
use crate::cli::RecoveryArgs;
use crate::fleet::Fleet;
use crate::http;
use crate::metrics::{proc_cpu_sum, sample_sum, scrape};
use crate::plan;
use crate::protocol::{Command, Mode};
use crate::publisher::{self, PublishOutcome, PublishPlan};
use crate::report::{Latency, Recovery, Report};
use crate::session::now_us;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// The gateway counters read before and after the storm.
const METRICS: [&str; 3] = [
    "gateway_history_recoveries_total{outcome=\"exact\"}",
    "gateway_history_recoveries_total{outcome=\"not_exact\"}",
    "gateway_history_replayed_total",
];

/// Runs the scenario.
pub async fn run(a: &RecoveryArgs) -> Result<Report, RunError> {
    let c = &a.common;
    if plan::share(c)?.shard.1 != 1 {
        return Err(RunError::Usage(
            "recovery runs as one coordinator: --shard is not supported",
        ));
    }
    let plans = plan::build(c, Mode::Recover, a.topics, 0, 0)?;
    let nodes = plan::nodes(&plan::targets(c)?);
    let drain = Duration::from_secs(a.drain_secs.max(1));
    let clock = Clock::start();
    let (mut fleet, _) = launch_and_ramp(c, plans).await?;
    let joined = fleet.totals().joined;

    // Positions: one broadcast per topic.
    fleet.note = "marker broadcasts".into();
    let marker = publish(&mut fleet, a, &nodes, 1).await?;
    if marker.errors > 0 {
        eprintln!("warning: {} marker publishes failed", marker.errors);
    }
    fleet.note = "waiting for positions".into();
    fleet
        .run_until(drain, |f| f.totals().recovery.positioned >= joined)
        .await?;
    let positioned = fleet.totals().recovery.positioned;
    if positioned < joined {
        eprintln!("warning: only {positioned} of {joined} sessions learnt a position");
    }

    // Away: every session closes, the server forgets them, the missed broadcasts are stored.
    fleet.note = "disconnecting".into();
    fleet.command(&Command::Disconnect).await?;
    fleet
        .run_until(drain, |f| f.totals().recovery.disconnected >= joined)
        .await?;
    let away = Instant::now();
    while scrape(&nodes).await.sessions > 0.0 && away.elapsed() < drain {
        fleet
            .run_until(Duration::from_millis(100), |_| false)
            .await?;
    }
    fleet.note = format!("publishing {} per topic while away", a.missed);
    let missed = publish(&mut fleet, a, &nodes, a.missed).await?;
    if missed.errors > 0 {
        eprintln!("warning: {} publishes failed while away", missed.errors);
    }

    // The storm.
    let before = read_metrics(&nodes).await;
    let cpu0 = (proc_cpu_sum(&a.server_pids), proc_cpu_sum(&a.store_pids));
    let command_us = now_us();
    fleet.note = format!("rejoining (expect {} each)", a.missed);
    fleet.command(&Command::Rejoin { expect: a.missed }).await?;
    loop {
        let progress = |f: &Fleet| {
            let r = f.totals().recovery;
            (r.replayed, r.rejoined)
        };
        let seen = progress(&fleet);
        let done = fleet
            .run_until(drain, |f| f.totals().recovery.complete >= positioned)
            .await?;
        if done || progress(&fleet) == seen {
            break;
        }
    }
    let cpu1 = (proc_cpu_sum(&a.server_pids), proc_cpu_sum(&a.store_pids));
    fleet.note = "listening for extras".into();
    fleet
        .run_until(Duration::from_millis(a.settle_ms), |_| false)
        .await?;
    let after = read_metrics(&nodes).await;
    fleet.note = "closing sessions".into();
    let finals = fleet.stop(STOP_LIMIT).await?;

    let params = serde_json::json!({
        "urls": c.urls, "sessions": c.sessions, "topics": a.topics, "missed": a.missed,
        "topic_prefix": c.topic_prefix, "publish_rate": a.publish_rate,
        "publishers": a.publishers, "payload_bytes": a.payload_bytes, "rate": c.rate,
        "max_inflight": c.max_inflight, "sources": c.sources, "server_pids": a.server_pids,
        "store_pids": a.store_pids, "settle_ms": a.settle_ms,
    });
    let (mut report, hists) = base_report("recovery", c, params, &finals, clock)?;
    report.errors.publish += marker.errors + missed.errors;
    report.errors_total += marker.errors + missed.errors;
    let t = crate::fleet::sum(&finals).recovery;
    let storm_secs = (t.complete > 0 && t.first_rejoin_us != u64::MAX)
        .then(|| t.last_complete_us.saturating_sub(t.first_rejoin_us) as f64 / 1e6);
    let delta = |i: usize| Some(after[i]? - before[i]?);
    report.recovery = Some(Recovery {
        topics: a.topics.max(1),
        missed_per_topic: a.missed,
        publishes_ok: missed.ok_by_topic.iter().sum(),
        publish_latency: Latency::of(&missed.latency),
        positioned: t.positioned,
        disconnected: t.disconnected,
        rejoined: t.rejoined,
        recovered_true: t.recovered_true,
        recovered_false: t.recovered_false,
        complete: t.complete,
        inexact: t.inexact,
        expected_replayed: t.positioned * a.missed,
        replayed: t.replayed,
        missing: t.missing,
        extra: t.extra,
        storm_secs,
        from_command_secs: (t.complete > 0)
            .then(|| t.last_complete_us.saturating_sub(command_us) as f64 / 1e6),
        replayed_per_sec: storm_secs
            .filter(|s| *s > 0.0)
            .map_or(0.0, |s| t.replayed as f64 / s),
        session_complete: Latency::of(&hists[1]),
        gateway_cpu_secs: cpu_delta(cpu0.0, cpu1.0).filter(|_| !a.server_pids.is_empty()),
        store_cpu_secs: cpu_delta(cpu0.1, cpu1.1).filter(|_| !a.store_pids.is_empty()),
        metric_exact: delta(0),
        metric_not_exact: delta(1),
        metric_replayed: delta(2),
    });
    Ok(report)
}

/// Publishes `per_topic` probes to every topic (probe `seq` 0.. per topic) while keeping the
/// fleet's events flowing.
async fn publish(
    fleet: &mut Fleet,
    a: &RecoveryArgs,
    nodes: &[SocketAddr],
    per_topic: u64,
) -> Result<PublishOutcome, RunError> {
    let c = &a.common;
    let plan = PublishPlan {
        nodes: nodes.to_vec(),
        topic_prefix: c.topic_prefix.clone(),
        topics: a.topics.max(1),
        rate: a.publish_rate,
        count: per_topic * a.topics.max(1),
        publishers: a.publishers,
        pad: "x".repeat(a.payload_bytes),
        api_key: a.api_key.clone(),
        limit: Duration::from_secs(c.max_secs),
    };
    let task = tokio::spawn(publisher::run(plan));
    fleet
        .run_until(Duration::from_secs(c.max_secs), |_| task.is_finished())
        .await?;
    task.await
        .map_err(|e| RunError::Io(std::io::Error::other(e.to_string())))
}

/// [`METRICS`] summed over the nodes (None where a node did not answer or lacks it).
async fn read_metrics(nodes: &[SocketAddr]) -> [Option<f64>; 3] {
    let mut out = [Some(0.0); 3];
    for addr in nodes {
        let text = match http::get(*addr, "/metrics").await {
            Ok(r) if r.status == 200 => String::from_utf8_lossy(&r.body).into_owned(),
            _ => return [None; 3],
        };
        for (acc, name) in out.iter_mut().zip(METRICS) {
            // A counter not yet incremented may be absent: it is 0.
            *acc = acc.map(|v| v + sample_sum(&text, name).unwrap_or(0.0));
        }
    }
    out
}

/// after − before, when both readings exist.
fn cpu_delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}
