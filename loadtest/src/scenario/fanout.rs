//! `fanout`: S subscribers over T topics; once all are joined, publish R/s probes through
//! `POST /api/broadcast`, wait for the deliveries to drain, and report end-to-end latency,
//! deliveries/s, loss (expected − distinct receipts) and duplicates.
//!
//! Expected deliveries are Σ over topics of (2xx publishes × joined subscribers), so a refused
//! publish or a failed join never shows up as loss. With `--shard`, only shard 1 publishes.
//!
//! With `--hold-secs`, the joined subscribers are held idle that long first, and the memory of
//! both sides is read at its end (servers by `--server-pid` VmRSS, the load generator as the
//! VmRSS of the coordinator and its workers), and both sides' CPU over it goes into `hold`
//! (per heartbeat, when the sessions heartbeat during it). A single publish (`--publish-rate 1
//! --duration-secs 1`) then measures one broadcast's time to reach every subscriber.
//!
//! CPU is read for both sides from the first publish to the end of the drain, so the report
//! separates what the gateways spent per delivery from what the load generator (sharing the
//! cores) spent receiving; with `--floor-writes-per-sec` the full-delivery time is also given
//! as a ratio to the kernel floor of the same run.

use super::{base_report, hold, launch_and_ramp, Clock, RunError, STOP_LIMIT};
use crate::cli::FanoutArgs;
use crate::fleet::Fleet;
use crate::metrics::{proc_cpu_times_sum, proc_rss, proc_rss_sum, CpuTimes};
use crate::plan;
use crate::protocol::Mode;
use crate::publisher::{self, PublishPlan};
use crate::report::{Fanout, Latency, Memory, Report};
use crate::target::Target;
use std::time::Duration;

/// Σ_t a[t] × b[t].
pub fn dot(a: &[u64], b: &[u64]) -> u64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Runs the scenario.
pub async fn run(a: &FanoutArgs) -> Result<Report, RunError> {
    let c = &a.common;
    let share = plan::share(c)?;
    let plans = plan::build(c, Mode::Hold, a.topics, 0, 0)?;
    let nodes = if a.publish_urls.is_empty() {
        plan::nodes(&plan::targets(c)?)
    } else {
        let publish = a
            .publish_urls
            .iter()
            .map(|u| Target::parse(u))
            .collect::<Result<Vec<_>, _>>()
            .map_err(plan::PlanError::from)?;
        plan::nodes(&publish)
    };
    let server_base = proc_rss_sum(&a.server_pids);
    let clock = Clock::start();
    let (mut fleet, _) = launch_and_ramp(c, plans).await?;
    let joined_by_topic = fleet.joined_by_topic();
    let held = if a.hold_secs > 0 {
        Some(hold(&mut fleet, &a.server_pids, a.hold_secs).await?)
    } else {
        None
    };
    let at_publish = fleet.totals().active;
    let memory = (a.hold_secs > 0 || !a.server_pids.is_empty()).then(|| {
        let mut m = Memory {
            sessions: at_publish,
            server_rss_baseline: server_base,
            server_rss_loaded: proc_rss_sum(&a.server_pids),
            loadgen_rss: fleet
                .pids()
                .into_iter()
                .chain([std::process::id()])
                .map(proc_rss)
                .sum(),
            ..Default::default()
        };
        if a.server_pids.is_empty() {
            (m.server_rss_baseline, m.server_rss_loaded) = (None, None);
        }
        m.derive();
        m
    });

    let count = if share.shard.0 == 1 {
        (a.publish_rate * a.duration_secs).round() as u64
    } else {
        0
    };
    let pub_plan = PublishPlan {
        nodes,
        topic_prefix: c.topic_prefix.clone(),
        topics: a.topics.max(1),
        rate: a.publish_rate,
        count,
        publishers: a.publishers,
        pad: "x".repeat(a.payload_bytes),
        api_key: a.api_key.clone(),
        limit: Duration::from_secs(c.max_secs),
    };
    // CPU of each side from the first publish to the end of the drain: the gateways by their
    // pids, the load generator as this process and its workers.
    let loadgen_pids: Vec<u32> = fleet
        .pids()
        .into_iter()
        .chain([std::process::id()])
        .collect();
    let cpu0 = (
        proc_cpu_times_sum(&a.server_pids),
        proc_cpu_times_sum(&loadgen_pids),
    );
    let publishing = tokio::spawn(publisher::run(pub_plan));
    fleet.note = format!("publishing {count} probes");
    fleet
        .run_until(
            Duration::from_secs_f64(a.duration_secs) + Duration::from_secs(c.max_secs),
            |_| publishing.is_finished(),
        )
        .await?;
    let outcome = publishing
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let expected = dot(&outcome.ok_by_topic, &joined_by_topic);
    fleet.note = format!("draining (expect {expected})");
    drain(&mut fleet, expected, Duration::from_secs(a.drain_secs)).await?;
    let cpu1 = (
        proc_cpu_times_sum(&a.server_pids),
        proc_cpu_times_sum(&loadgen_pids),
    );
    let gateway_cpu = cpu_delta(cpu0.0, cpu1.0).filter(|_| !a.server_pids.is_empty());
    let loadgen_cpu = cpu_delta(cpu0.1, cpu1.1);
    let after = fleet.totals().active;
    fleet.note = "closing sessions".into();
    let finals = fleet.stop(STOP_LIMIT).await?;

    let params = serde_json::json!({
        "urls": c.urls, "subscribers": c.sessions, "topics": a.topics,
        "publish_rate": a.publish_rate, "duration_secs": a.duration_secs,
        "publishers": a.publishers, "payload_bytes": a.payload_bytes, "rate": c.rate,
        "publish_urls": a.publish_urls, "hold_secs": a.hold_secs, "server_pids": a.server_pids,
        "heartbeat_secs": c.heartbeat_secs, "sources": c.sources, "max_inflight": c.max_inflight,
        "floor_writes_per_sec": a.floor_writes_per_sec,
    });
    let (mut report, hists) = base_report("fanout", c, params, &finals, clock)?;
    report.errors.publish += outcome.errors;
    report.errors_total += outcome.errors;
    let t = crate::fleet::sum(&finals);
    let publishes_ok: u64 = outcome.ok_by_topic.iter().sum();
    let mut fanout = Fanout {
        topics: a.topics.max(1),
        joined_by_topic,
        published_by_topic: outcome.ok_by_topic.clone(),
        publish_rate_target: a.publish_rate,
        publishes: outcome.attempted,
        publishes_ok,
        publish_rate: if outcome.secs > 0.0 {
            outcome.attempted as f64 / outcome.secs
        } else {
            0.0
        },
        publish_latency: Latency::of(&outcome.latency),
        expected,
        deliveries: t.deliveries,
        unique: t.unique,
        duplicates: t.duplicates,
        first_publish_us: outcome.first_us,
        last_delivery_us: t.last_delivery_us,
        latency: Latency::of(&hists[1]),
        subscribers_at_publish: at_publish,
        subscribers_after: after,
        gateway_cpu_secs: gateway_cpu.map(CpuTimes::total),
        gateway_sys_cpu_secs: gateway_cpu.map(|c| c.system),
        loadgen_cpu_secs: loadgen_cpu.map(CpuTimes::total),
        loadgen_sys_cpu_secs: loadgen_cpu.map(|c| c.system),
        floor_writes_per_sec: a.floor_writes_per_sec,
        ..Default::default()
    };
    fanout.derive();
    report.fanout = Some(fanout);
    report.memory = memory;
    report.hold = held;
    Ok(report)
}

/// after − before, when both readings exist.
fn cpu_delta(before: Option<CpuTimes>, after: Option<CpuTimes>) -> Option<CpuTimes> {
    Some(after?.since(before?))
}

/// Waits until `expected` distinct deliveries arrived, or nothing new arrived for `quiet`.
async fn drain(fleet: &mut Fleet, expected: u64, quiet: Duration) -> Result<(), RunError> {
    loop {
        let before = fleet.totals().unique;
        if before >= expected {
            return Ok(());
        }
        let done = fleet
            .run_until(quiet, |f| f.totals().unique >= expected)
            .await?;
        if done || fleet.totals().unique == before {
            return Ok(());
        }
    }
}
