//! The human-readable summary table printed at the end of a run (the JSON report carries the
//! same figures).

use crate::report::{Latency, Report};
use std::fmt::Write as _;

impl Report {
    /// The table printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let ms = |us: u64| us as f64 / 1000.0;
        let lat =
            |l: &Latency| {
                format!(
                "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (n={})",
                ms(l.p50_us), ms(l.p90_us), ms(l.p99_us), ms(l.p999_us), ms(l.max_us), l.count
            )
            };
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "  {k:<24} {v}");
        };
        row(
            "scenario",
            format!(
                "{} (shard {}/{}, {} workers)",
                self.scenario, self.shard[0], self.shard[1], self.workers
            ),
        );
        row("duration", format!("{:.1} s", self.duration_secs));
        row(
            "sessions",
            format!(
                "{} joined / {} requested, {} failed",
                self.sessions_joined, self.sessions_requested, self.sessions_failed
            ),
        );
        row(
            "connect+join rate",
            format!(
                "{:.0} sessions/s over {:.2} s",
                self.connect_join_rate, self.ramp_secs
            ),
        );
        row("connect+join latency", lat(&self.connect_join));
        if let Some(c) = &self.capacity {
            let opt = |v: Option<f64>| v.map_or("n/a".into(), |b| format!("{b:.0} B"));
            row("bytes/session (metrics)", opt(c.bytes_per_session_metrics));
            row("bytes/session (/proc)", opt(c.bytes_per_session_proc));
            row(
                "server RSS",
                format!(
                    "{:.1} MiB -> {:.1} MiB (metrics)",
                    c.baseline.rss_bytes / 1048576.0,
                    c.loaded.rss_bytes / 1048576.0
                ),
            );
            row("server sessions gauge", format!("{}", c.loaded.sessions));
            let ramp = c.proc_cpu_seconds_ramp.unwrap_or(c.cpu_seconds_ramp);
            let hold = c.proc_cpu_seconds_hold.unwrap_or(c.cpu_seconds_hold);
            let per = c
                .cpu_us_per_join
                .map_or("n/a".into(), |v| format!("{v:.0}"));
            row(
                "server CPU",
                format!("ramp {ramp:.2} s ({per} us/join), hold {hold:.2} s"),
            );
        }
        if let Some(f) = &self.fanout {
            row(
                "publishes",
                format!(
                    "{} ok / {} at {:.1}/s (target {:.1}/s)",
                    f.publishes_ok, f.publishes, f.publish_rate, f.publish_rate_target
                ),
            );
            row("publish latency", lat(&f.publish_latency));
            row(
                "deliveries",
                format!(
                    "{} ({} unique, {} duplicates) of {} expected",
                    f.deliveries, f.unique, f.duplicates, f.expected
                ),
            );
            row(
                "loss",
                format!("{} ({:.4} %)", f.loss, f.loss_ratio * 100.0),
            );
            row("deliveries/s", format!("{:.0}", f.deliveries_per_sec));
            row("delivery latency", lat(&f.latency));
            row(
                "full delivery",
                f.full_delivery_secs
                    .map_or("n/a (loss or nothing expected)".into(), |v| {
                        format!("{v:.3} s from first publish to last delivery")
                    }),
            );
            let us = |v: Option<f64>, sys: Option<f64>| {
                v.map_or("n/a".into(), |v| {
                    let sys = sys.map_or(String::new(), |s| format!(" ({s:.2} system)"));
                    format!("{v:.2} us/delivery{sys}")
                })
            };
            row(
                "CPU per delivery",
                format!(
                    "gateway {}, load generator {}",
                    us(
                        f.gateway_cpu_us_per_delivery,
                        f.gateway_sys_cpu_us_per_delivery
                    ),
                    us(
                        f.loadgen_cpu_us_per_delivery,
                        f.loadgen_sys_cpu_us_per_delivery
                    )
                ),
            );
            if let (Some(w), Some(fs)) = (f.floor_writes_per_sec, f.floor_secs) {
                let ratio = f
                    .full_delivery_to_floor
                    .map_or("n/a".into(), |r| format!("{r:.2}x"));
                row(
                    "kernel floor",
                    format!(
                        "{w:.0} writes/s: {} writes take {fs:.3} s; full delivery = {ratio} that",
                        f.expected
                    ),
                );
            }
            row(
                "subscribers held",
                format!(
                    "{} at first publish, {} after the drain",
                    f.subscribers_at_publish, f.subscribers_after
                ),
            );
        }
        if let Some(m) = &self.memory {
            let mib = |v: Option<u64>| {
                v.map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
            };
            let per = |v: Option<f64>| v.map_or("n/a".into(), |b| format!("{b:.0} B/session"));
            row(
                "server RSS (/proc)",
                format!(
                    "{} -> {} ({}) with {} sessions",
                    mib(m.server_rss_baseline),
                    mib(m.server_rss_loaded),
                    per(m.server_bytes_per_session),
                    m.sessions
                ),
            );
            row(
                "load generator RSS",
                format!(
                    "{} ({})",
                    mib(m.loadgen_rss),
                    per(m.loadgen_bytes_per_session)
                ),
            );
        }
        if let Some(h) = self.hold.as_ref().filter(|h| h.heartbeats > 0) {
            let cpu = |secs: Option<f64>, us: Option<f64>| match (secs, us) {
                (Some(s), Some(u)) => format!("{s:.2} s = {u:.2} us/heartbeat"),
                _ => "n/a".into(),
            };
            row(
                "hold",
                format!(
                    "{:.1} s, {} heartbeats; CPU gateway {}, load generator {}",
                    h.secs,
                    h.heartbeats,
                    cpu(h.gateway_cpu_secs, h.gateway_cpu_us_per_heartbeat),
                    cpu(h.loadgen_cpu_secs, h.loadgen_cpu_us_per_heartbeat)
                ),
            );
        }
        if let Some(c) = &self.churn {
            row(
                "cycles",
                format!(
                    "{} / {} at {:.0}/s",
                    c.cycles, c.cycles_requested, c.cycles_per_sec
                ),
            );
            row("leave latency", lat(&c.leave_latency));
        }
        if let Some(f) = &self.failover {
            row(
                "closed by server",
                format!("{} of {} joined", f.closed_by_server, f.sessions_before),
            );
            row(
                "re-joined",
                format!(
                    "{} (sessions at end {}, recovered: {})",
                    f.reconnects, f.sessions_after, f.recovered
                ),
            );
            let secs = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.3} s"));
            row(
                "recovery",
                format!(
                    "{} from first close, {} from kill",
                    secs(f.recovery_secs),
                    secs(f.from_kill_secs)
                ),
            );
        }
        if let Some(r) = &self.recovery {
            let secs = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.3} s"));
            let opt = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v}"));
            row(
                "missed while away",
                format!(
                    "{} per topic x {} topics ({} published ok)",
                    r.missed_per_topic, r.topics, r.publishes_ok
                ),
            );
            row("publish latency", lat(&r.publish_latency));
            row(
                "sessions",
                format!(
                    "{} positioned, {} disconnected, {} rejoined ({} recovered, {} not)",
                    r.positioned, r.disconnected, r.rejoined, r.recovered_true, r.recovered_false
                ),
            );
            row(
                "replay",
                format!(
                    "{} of {} expected; {} sessions complete, {} inexact; missing {}, extra {}",
                    r.replayed, r.expected_replayed, r.complete, r.inexact, r.missing, r.extra
                ),
            );
            row(
                "storm",
                format!(
                    "{} first rejoin -> last complete ({} from command), {:.0} replayed/s",
                    secs(r.storm_secs),
                    secs(r.from_command_secs),
                    r.replayed_per_sec
                ),
            );
            row("per-session complete", lat(&r.session_complete));
            row(
                "cpu over the storm",
                format!(
                    "gateway {}, store {}",
                    secs(r.gateway_cpu_secs),
                    secs(r.store_cpu_secs)
                ),
            );
            row(
                "gateway metrics delta",
                format!(
                    "recoveries exact {} not_exact {}, replayed {}",
                    opt(r.metric_exact),
                    opt(r.metric_not_exact),
                    opt(r.metric_replayed)
                ),
            );
        }
        row("errors", format!("{} {:?}", self.errors_total, self.errors));
        for g in &self.slo {
            let v = g.value.map_or("not measured".into(), |v| format!("{v}"));
            row(
                "slo",
                format!(
                    "{} (value {v}) {}",
                    g.expr,
                    if g.violated { "VIOLATED" } else { "ok" }
                ),
            );
        }
        s
    }
}
