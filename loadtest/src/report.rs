//! The run report: what every scenario measured, as a JSON document (`--json FILE`) and as the
//! summary table printed at the end. Histograms are kept (base64 V2) so shard reports merge.

use crate::metrics::ServerReading;
use crate::slo::SloResult;
use crate::stats::{decode_hist, encode_hist, ErrorCounts, HistError};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Percentiles of one latency histogram, microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
}

impl Latency {
    /// Summary of `h`.
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

/// The three histograms of a run (base64 V2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hists {
    /// Connect + upgrade + join, µs.
    pub connect_join: String,
    /// Probe delivery latency, µs.
    pub delivery: String,
    /// Leave round trip, µs.
    pub leave: String,
}

impl Hists {
    /// Decodes all three.
    pub fn decode(&self) -> Result<[Histogram<u64>; 3], HistError> {
        Ok([
            decode_hist(&self.connect_join)?,
            decode_hist(&self.delivery)?,
            decode_hist(&self.leave)?,
        ])
    }

    /// Encodes all three.
    pub fn encode(h: &[Histogram<u64>; 3]) -> Hists {
        Hists {
            connect_join: encode_hist(&h[0]),
            delivery: encode_hist(&h[1]),
            leave: encode_hist(&h[2]),
        }
    }
}

/// Server memory and CPU figures of `capacity`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// Seconds the sessions were held before the loaded reading.
    pub hold_secs: u64,
    /// `/metrics` before connecting.
    pub baseline: ServerReading,
    /// `/metrics` right after the ramp.
    pub after_ramp: ServerReading,
    /// `/metrics` after the hold.
    pub loaded: ServerReading,
    /// (loaded − baseline) `process_resident_memory_bytes` / sessions joined.
    pub bytes_per_session_metrics: Option<f64>,
    /// VmRSS sum of `--server-pid`s before connecting, bytes.
    pub proc_rss_baseline: Option<u64>,
    /// VmRSS sum after the hold, bytes.
    pub proc_rss_loaded: Option<u64>,
    /// (loaded − baseline) VmRSS / sessions joined.
    pub bytes_per_session_proc: Option<f64>,
    /// Server CPU seconds spent during the ramp (`process_cpu_seconds_total`).
    pub cpu_seconds_ramp: f64,
    /// Server CPU seconds during the hold (idle sessions, heartbeats).
    pub cpu_seconds_hold: f64,
    /// Server CPU seconds during the ramp from /proc/<pid>/stat (`--server-pid`).
    pub proc_cpu_seconds_ramp: Option<f64>,
    /// Server CPU seconds during the hold from /proc/<pid>/stat.
    pub proc_cpu_seconds_hold: Option<f64>,
    /// Server CPU microseconds per connect+join (from /proc when available).
    pub cpu_us_per_join: Option<f64>,
}

/// Fan-out figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fanout {
    /// Topics.
    pub topics: u64,
    /// Joined subscribers per topic index.
    pub joined_by_topic: Vec<u64>,
    /// Successful publishes per topic index.
    pub published_by_topic: Vec<u64>,
    /// Target publish rate, 1/s.
    pub publish_rate_target: f64,
    /// Publishes attempted.
    pub publishes: u64,
    /// Publishes answered 2xx.
    pub publishes_ok: u64,
    /// Achieved publish rate, 1/s.
    pub publish_rate: f64,
    /// POST /api/broadcast round trip.
    pub publish_latency: Latency,
    /// Σ over topics of publishes_ok × joined subscribers.
    pub expected: u64,
    /// Probe frames received (with duplicates).
    pub deliveries: u64,
    /// Distinct (session, seq) receipts.
    pub unique: u64,
    /// Repeated receipts.
    pub duplicates: u64,
    /// expected − unique (never negative).
    pub loss: u64,
    /// loss / expected.
    pub loss_ratio: f64,
    /// Deliveries / (last delivery − first publish).
    pub deliveries_per_sec: f64,
    /// First publish send time, µs since epoch.
    pub first_publish_us: u64,
    /// Last delivery, µs since epoch.
    pub last_delivery_us: u64,
    /// End-to-end latency (publisher timestamp → subscriber receipt).
    pub latency: Latency,
    /// Subscribers joined and held when publishing began (lower than the joined count when
    /// the server closed some during the ramp or the hold).
    #[serde(default)]
    pub subscribers_at_publish: u64,
    /// Subscribers still held after the deliveries drained, before the load generator closed
    /// them.
    #[serde(default)]
    pub subscribers_after: u64,
    /// First publish → last delivery, seconds, when every expected delivery arrived (no loss):
    /// for a single publish, the time for one broadcast to reach every subscriber.
    #[serde(default)]
    pub full_delivery_secs: Option<f64>,
    /// CPU seconds (user + system, `/proc/<pid>/stat`) of the `--server-pid`s from the first
    /// publish to the end of the drain.
    #[serde(default)]
    pub gateway_cpu_secs: Option<f64>,
    /// The system (kernel) part of gateway_cpu_secs: what of it is TCP and system calls.
    #[serde(default)]
    pub gateway_sys_cpu_secs: Option<f64>,
    /// CPU seconds of the load generator (coordinator + workers) over the same window.
    #[serde(default)]
    pub loadgen_cpu_secs: Option<f64>,
    /// The system (kernel) part of loadgen_cpu_secs.
    #[serde(default)]
    pub loadgen_sys_cpu_secs: Option<f64>,
    /// gateway_cpu_secs / distinct deliveries, µs.
    #[serde(default)]
    pub gateway_cpu_us_per_delivery: Option<f64>,
    /// loadgen_cpu_secs / distinct deliveries, µs: what receiving costs the generator, which
    /// shares the cores with the gateway.
    #[serde(default)]
    pub loadgen_cpu_us_per_delivery: Option<f64>,
    /// gateway_sys_cpu_secs / distinct deliveries, µs.
    #[serde(default)]
    pub gateway_sys_cpu_us_per_delivery: Option<f64>,
    /// loadgen_sys_cpu_secs / distinct deliveries, µs.
    #[serde(default)]
    pub loadgen_sys_cpu_us_per_delivery: Option<f64>,
    /// `--floor-writes-per-sec`: the kernel floor (`loadtest floor`) of the same run.
    #[serde(default)]
    pub floor_writes_per_sec: Option<f64>,
    /// expected ÷ floor: the least time these deliveries take as one write each, seconds.
    #[serde(default)]
    pub floor_secs: Option<f64>,
    /// full_delivery_secs ÷ floor_secs (1.0 = as fast as bare loopback writes).
    #[serde(default)]
    pub full_delivery_to_floor: Option<f64>,
}

impl Fanout {
    /// Recomputes the derived figures (loss, rates, full-delivery time) from the counters.
    pub fn derive(&mut self) {
        self.loss = self.expected.saturating_sub(self.unique);
        self.loss_ratio = if self.expected > 0 {
            self.loss as f64 / self.expected as f64
        } else {
            0.0
        };
        let window = self.last_delivery_us.saturating_sub(self.first_publish_us) as f64 / 1e6;
        self.deliveries_per_sec = if window > 0.0 && self.deliveries > 0 {
            self.deliveries as f64 / window
        } else {
            0.0
        };
        self.full_delivery_secs =
            (self.expected > 0 && self.loss == 0 && self.last_delivery_us > 0).then_some(window);
        let per = |cpu: Option<f64>| {
            cpu.filter(|_| self.unique > 0)
                .map(|c| c * 1e6 / self.unique as f64)
        };
        self.gateway_cpu_us_per_delivery = per(self.gateway_cpu_secs);
        self.loadgen_cpu_us_per_delivery = per(self.loadgen_cpu_secs);
        self.gateway_sys_cpu_us_per_delivery = per(self.gateway_sys_cpu_secs);
        self.loadgen_sys_cpu_us_per_delivery = per(self.loadgen_sys_cpu_secs);
        self.floor_secs = self
            .floor_writes_per_sec
            .filter(|f| *f > 0.0 && self.expected > 0)
            .map(|f| self.expected as f64 / f);
        self.full_delivery_to_floor = match (self.full_delivery_secs, self.floor_secs) {
            (Some(full), Some(floor)) => Some(full / floor),
            _ => None,
        };
    }
}

/// Memory of both sides with the sessions held (fan-out with `--hold-secs`/`--server-pid`),
/// read just before the first publish.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Sessions joined and held at the reading.
    pub sessions: u64,
    /// VmRSS sum of the `--server-pid`s before the ramp, bytes.
    pub server_rss_baseline: Option<u64>,
    /// VmRSS sum of the `--server-pid`s at the reading, bytes.
    pub server_rss_loaded: Option<u64>,
    /// (loaded − baseline) server VmRSS / sessions.
    pub server_bytes_per_session: Option<f64>,
    /// VmRSS sum of the load generator (coordinator + every worker) at the reading, bytes.
    pub loadgen_rss: Option<u64>,
    /// Load-generator VmRSS / sessions (whole processes, fixed costs included).
    pub loadgen_bytes_per_session: Option<f64>,
}

impl Memory {
    /// Recomputes the per-session figures from the sums.
    pub fn derive(&mut self) {
        let per = |b: f64| (self.sessions > 0).then(|| b / self.sessions as f64);
        self.server_bytes_per_session = match (self.server_rss_baseline, self.server_rss_loaded) {
            (Some(b), Some(l)) => per(l as f64 - b as f64),
            _ => None,
        };
        self.loadgen_bytes_per_session = self.loadgen_rss.and_then(|r| per(r as f64));
    }
}

/// What holding the joined sessions cost each side (`--hold-secs`); with a short
/// `--heartbeat-secs`, the CPU of the heartbeats and their replies, per heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    /// Wall seconds of the hold.
    pub secs: f64,
    /// Heartbeats the sessions sent during the hold (from the workers' progress reports).
    pub heartbeats: u64,
    /// CPU of the `--server-pid`s over the hold, seconds.
    pub gateway_cpu_secs: Option<f64>,
    /// The system (kernel) part of gateway_cpu_secs.
    pub gateway_sys_cpu_secs: Option<f64>,
    /// CPU of the load generator (coordinator and workers) over the hold, seconds.
    pub loadgen_cpu_secs: Option<f64>,
    /// The system (kernel) part of loadgen_cpu_secs.
    pub loadgen_sys_cpu_secs: Option<f64>,
    /// gateway_cpu_secs per heartbeat, µs.
    pub gateway_cpu_us_per_heartbeat: Option<f64>,
    /// loadgen_cpu_secs per heartbeat, µs.
    pub loadgen_cpu_us_per_heartbeat: Option<f64>,
}

impl Hold {
    /// Recomputes the per-heartbeat figures from the sums.
    pub fn derive(&mut self) {
        let per = |cpu: Option<f64>| {
            let cpu = cpu?;
            (self.heartbeats > 0).then(|| cpu * 1e6 / self.heartbeats as f64)
        };
        self.gateway_cpu_us_per_heartbeat = per(self.gateway_cpu_secs);
        self.loadgen_cpu_us_per_heartbeat = per(self.loadgen_cpu_secs);
    }
}

/// Churn figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Churn {
    /// Completed cycles.
    pub cycles: u64,
    /// Cycles requested.
    pub cycles_requested: u64,
    /// Completed cycles per second.
    pub cycles_per_sec: f64,
    /// Leave round trip.
    pub leave_latency: Latency,
}

/// Failover figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Failover {
    /// Sessions joined before the failure.
    pub sessions_before: u64,
    /// Pid sent SIGTERM, if any.
    pub killed_pid: Option<u32>,
    /// When the kill was sent, µs since epoch.
    pub kill_us: Option<u64>,
    /// Joined sessions the server closed.
    pub closed_by_server: u64,
    /// Sessions re-joined on another node.
    pub reconnects: u64,
    /// Sessions joined at the end of the window.
    pub sessions_after: u64,
    /// Every closed session came back.
    pub recovered: bool,
    /// First close to last re-join, seconds.
    pub recovery_secs: Option<f64>,
    /// Kill to last re-join, seconds.
    pub from_kill_secs: Option<f64>,
}

/// Recovery storm figures (`recovery`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    /// Topics the sessions were spread over.
    pub topics: u64,
    /// Broadcasts published per topic while the sessions were away.
    pub missed_per_topic: u64,
    /// 2xx publishes while away (of `topics × missed_per_topic`).
    pub publishes_ok: u64,
    /// `POST /api/broadcast` round trips while away.
    pub publish_latency: Latency,
    /// Sessions that learnt a position before disconnecting.
    pub positioned: u64,
    /// Sessions disconnected.
    pub disconnected: u64,
    /// Rejoins answered ok.
    pub rejoined: u64,
    /// Rejoins answered `recovered: true`.
    pub recovered_true: u64,
    /// Rejoins answered `recovered: false`.
    pub recovered_false: u64,
    /// Sessions that received all missed broadcasts in order.
    pub complete: u64,
    /// Sessions whose replay was not exactly the missed broadcasts once each in order.
    pub inexact: u64,
    /// positioned × missed_per_topic.
    pub expected_replayed: u64,
    /// Probes received after rejoining.
    pub replayed: u64,
    /// Probes missing at the end.
    pub missing: u64,
    /// Probes past the expected count (duplicates).
    pub extra: u64,
    /// First rejoin start to the last session complete, seconds.
    pub storm_secs: Option<f64>,
    /// The coordinator's `rejoin` command to the last session complete, seconds.
    pub from_command_secs: Option<f64>,
    /// replayed ÷ storm_secs.
    pub replayed_per_sec: f64,
    /// Per session: rejoin start (connect) to its last missed broadcast, µs.
    pub session_complete: Latency,
    /// CPU of the gateways (`--server-pid`) from the rejoin command to the last completion.
    pub gateway_cpu_secs: Option<f64>,
    /// CPU of the history store process (`--store-pid`, e.g. redis-server), same window.
    pub store_cpu_secs: Option<f64>,
    /// Increase of `gateway_history_recoveries_total{outcome="exact"}` over the storm.
    pub metric_exact: Option<f64>,
    /// Increase of `gateway_history_recoveries_total{outcome="not_exact"}` over the storm.
    pub metric_not_exact: Option<f64>,
    /// Increase of `gateway_history_replayed_total` over the storm.
    pub metric_replayed: Option<f64>,
}

/// A whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `capacity` | `fanout` | `churn`.
    pub scenario: String,
    /// Shard `[i, n]` this report covers (`[1, 1]` = everything).
    pub shard: [u64; 2],
    /// Start, seconds since epoch.
    pub started_unix: u64,
    /// Wall time of the run, seconds.
    pub duration_secs: f64,
    /// The flags, for the record.
    pub params: serde_json::Value,
    /// Sessions asked for (churn: lanes).
    pub sessions_requested: u64,
    /// Successful joins (churn: every cycle's join).
    pub sessions_joined: u64,
    /// Sessions that never joined.
    pub sessions_failed: u64,
    /// Worker processes used.
    pub workers: usize,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Sum of errors.
    pub errors_total: u64,
    /// Ramp duration (start to last join), seconds.
    pub ramp_secs: f64,
    /// Joined sessions per second of ramp.
    pub connect_join_rate: f64,
    /// Connect + join latency.
    pub connect_join: Latency,
    /// Heartbeats sent (their missing replies count as `heartbeat_timeout` errors).
    pub heartbeats: u64,
    /// Capacity figures.
    pub capacity: Option<Capacity>,
    /// Fan-out figures.
    pub fanout: Option<Fanout>,
    /// Churn figures.
    pub churn: Option<Churn>,
    /// Failover figures.
    #[serde(default)]
    pub failover: Option<Failover>,
    /// Memory of servers and load generator with the sessions held (fan-out).
    #[serde(default)]
    pub memory: Option<Memory>,
    /// CPU of both sides over the hold (`--hold-secs`, capacity and fan-out).
    #[serde(default)]
    pub hold: Option<Hold>,
    /// Recovery storm figures.
    #[serde(default)]
    pub recovery: Option<Recovery>,
    /// Raw histograms.
    pub histograms: Hists,
    /// SLO gate results.
    pub slo: Vec<SloResult>,
    /// No gate violated.
    pub passed: bool,
}
