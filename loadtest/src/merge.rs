//! `loadtest merge`: combines the JSON reports of `--shard I/N` runs of one scenario into one
//! report: counters summed, histograms added, rates and per-session figures recomputed.

use crate::report::{Hists, Hold, Latency, Memory, Report};
use crate::scenario::fanout::dot;
use crate::scenario::RunError;
use std::path::PathBuf;

/// Element-wise sum of two per-topic vectors.
fn add_vec(acc: &mut Vec<u64>, v: &[u64]) {
    if acc.len() < v.len() {
        acc.resize(v.len(), 0);
    }
    acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
}

/// Two shards' memory readings: sessions and load-generator memory add up (each shard has its
/// own processes); the server readings usually cover the same nodes from every shard, so the
/// highest loaded and lowest baseline reading are kept rather than summed.
fn add_memory(mut a: Memory, b: &Memory) -> Memory {
    let opt = |x: Option<u64>, y: Option<u64>, f: fn(u64, u64) -> u64| match (x, y) {
        (Some(x), Some(y)) => Some(f(x, y)),
        (x, y) => x.or(y),
    };
    a.sessions += b.sessions;
    a.loadgen_rss = opt(a.loadgen_rss, b.loadgen_rss, |x, y| x + y);
    a.server_rss_baseline = opt(a.server_rss_baseline, b.server_rss_baseline, u64::min);
    a.server_rss_loaded = opt(a.server_rss_loaded, b.server_rss_loaded, u64::max);
    a.derive();
    a
}

/// Two shards' holds: heartbeats and load-generator CPU add up; the server readings cover the
/// same nodes from every shard, so the larger is kept.
fn add_hold(mut a: Hold, b: &Hold) -> Hold {
    let sum = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => Some(x + y),
        (x, y) => x.or(y),
    };
    a.heartbeats += b.heartbeats;
    a.secs = a.secs.max(b.secs);
    a.loadgen_cpu_secs = sum(a.loadgen_cpu_secs, b.loadgen_cpu_secs);
    a.loadgen_sys_cpu_secs = sum(a.loadgen_sys_cpu_secs, b.loadgen_sys_cpu_secs);
    if b.gateway_cpu_secs > a.gateway_cpu_secs {
        a.gateway_cpu_secs = b.gateway_cpu_secs;
        a.gateway_sys_cpu_secs = b.gateway_sys_cpu_secs;
    }
    a.derive();
    a
}

/// Reads and merges the reports.
pub fn merge_files(paths: &[PathBuf]) -> Result<Report, RunError> {
    let reports = paths
        .iter()
        .map(|p| Ok(serde_json::from_slice(&std::fs::read(p)?)?))
        .collect::<Result<Vec<Report>, RunError>>()?;
    merge(&reports)
}

/// Merges reports of the same scenario.
pub fn merge(reports: &[Report]) -> Result<Report, RunError> {
    let Some(first) = reports.first() else {
        return Ok(Report::default());
    };
    let mut m = first.clone();
    let mut hists = first.histograms.decode()?;
    for r in &reports[1..] {
        if r.scenario != m.scenario {
            return Err(RunError::Mismatch(m.scenario.clone(), r.scenario.clone()));
        }
        m.sessions_requested += r.sessions_requested;
        m.sessions_joined += r.sessions_joined;
        m.sessions_failed += r.sessions_failed;
        m.workers += r.workers;
        m.heartbeats += r.heartbeats;
        m.errors.add(&r.errors);
        m.duration_secs = m.duration_secs.max(r.duration_secs);
        m.ramp_secs = m.ramp_secs.max(r.ramp_secs);
        for (acc, h) in hists.iter_mut().zip(r.histograms.decode()?) {
            let _ = acc.add(h);
        }
        if let (Some(a), Some(b)) = (m.capacity.as_mut(), &r.capacity) {
            // Different shards may read the same node: keep the larger loaded reading per field.
            a.bytes_per_session_metrics = None;
            a.bytes_per_session_proc = match (a.bytes_per_session_proc, b.bytes_per_session_proc) {
                (Some(x), Some(y)) => Some(x.min(y)),
                _ => None,
            };
        }
        if let (Some(a), Some(b)) = (m.fanout.as_mut(), &r.fanout) {
            add_vec(&mut a.joined_by_topic, &b.joined_by_topic);
            add_vec(&mut a.published_by_topic, &b.published_by_topic);
            a.publishes += b.publishes;
            a.publishes_ok += b.publishes_ok;
            a.deliveries += b.deliveries;
            a.unique += b.unique;
            a.duplicates += b.duplicates;
            a.first_publish_us = match (a.first_publish_us, b.first_publish_us) {
                (0, y) => y,
                (x, 0) => x,
                (x, y) => x.min(y),
            };
            a.last_delivery_us = a.last_delivery_us.max(b.last_delivery_us);
            a.subscribers_at_publish += b.subscribers_at_publish;
            a.subscribers_after += b.subscribers_after;
            // Each shard is its own generator; shards may read the same gateways.
            a.loadgen_cpu_secs = sum_opt(a.loadgen_cpu_secs, b.loadgen_cpu_secs);
            a.loadgen_sys_cpu_secs = sum_opt(a.loadgen_sys_cpu_secs, b.loadgen_sys_cpu_secs);
            // the larger reading of the gateways (a later end), with its own system part
            let b_larger = match (a.gateway_cpu_secs, b.gateway_cpu_secs) {
                (Some(x), Some(y)) => y > x,
                (x, y) => x.is_none() && y.is_some(),
            };
            if b_larger {
                a.gateway_cpu_secs = b.gateway_cpu_secs;
                a.gateway_sys_cpu_secs = b.gateway_sys_cpu_secs;
            }
            a.floor_writes_per_sec = a.floor_writes_per_sec.or(b.floor_writes_per_sec);
        }
        m.memory = match (m.memory.take(), &r.memory) {
            (Some(a), Some(b)) => Some(add_memory(a, b)),
            (a, b) => a.or_else(|| b.clone()),
        };
        m.hold = match (m.hold.take(), &r.hold) {
            (Some(a), Some(b)) => Some(add_hold(a, b)),
            (a, b) => a.or_else(|| b.clone()),
        };
        if let (Some(a), Some(b)) = (m.churn.as_mut(), &r.churn) {
            a.cycles += b.cycles;
            a.cycles_requested += b.cycles_requested;
            a.cycles_per_sec += b.cycles_per_sec;
        }
    }
    m.shard = [1, 1];
    m.errors_total = m.errors.total();
    m.connect_join = Latency::of(&hists[0]);
    m.connect_join_rate = if m.ramp_secs > 0.0 {
        m.sessions_joined as f64 / m.ramp_secs
    } else {
        0.0
    };
    if let Some(f) = m.fanout.as_mut() {
        f.expected = dot(&f.published_by_topic, &f.joined_by_topic);
        f.derive();
        f.latency = Latency::of(&hists[1]);
    }
    if let Some(c) = m.churn.as_mut() {
        c.leave_latency = Latency::of(&hists[2]);
    }
    m.histograms = Hists::encode(&hists);
    Ok(m)
}

/// x + y when both are known.
fn sum_opt(x: Option<f64>, y: Option<f64>) -> Option<f64> {
    Some(x? + y?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_of_shards_adds_load_generators_and_keeps_one_server_reading() {
        let shard = |sessions, loadgen, loaded| {
            let mut m = Memory {
                sessions,
                server_rss_baseline: Some(1000),
                server_rss_loaded: Some(loaded),
                loadgen_rss: Some(loadgen),
                ..Default::default()
            };
            m.derive();
            Report {
                scenario: "fanout".into(),
                memory: Some(m),
                ..Default::default()
            }
        };
        let m = merge(&[shard(10, 500, 3000), shard(30, 1500, 5000)])
            .unwrap()
            .memory
            .unwrap();
        assert_eq!(m.sessions, 40);
        assert_eq!(m.loadgen_rss, Some(2000));
        assert_eq!(m.loadgen_bytes_per_session, Some(50.0));
        assert_eq!(
            (m.server_rss_baseline, m.server_rss_loaded),
            (Some(1000), Some(5000))
        );
        assert_eq!(m.server_bytes_per_session, Some(100.0));
    }

    #[test]
    fn holds_of_shards_add_heartbeats_and_load_generators_and_keep_one_server_reading() {
        let shard = |heartbeats, loadgen, gateway| {
            let mut h = Hold {
                secs: 10.0,
                heartbeats,
                gateway_cpu_secs: Some(gateway),
                gateway_sys_cpu_secs: Some(gateway / 2.0),
                loadgen_cpu_secs: Some(loadgen),
                loadgen_sys_cpu_secs: Some(loadgen / 2.0),
                ..Default::default()
            };
            h.derive();
            Report {
                scenario: "capacity".into(),
                hold: Some(h),
                ..Default::default()
            }
        };
        let h = merge(&[shard(1000, 0.01, 0.03), shard(3000, 0.03, 0.04)])
            .unwrap()
            .hold
            .unwrap();
        assert_eq!(h.heartbeats, 4000);
        assert_eq!(h.loadgen_cpu_secs, Some(0.04));
        assert_eq!(h.gateway_cpu_secs, Some(0.04));
        assert_eq!(h.gateway_sys_cpu_secs, Some(0.02));
        let us = |v: Option<f64>| (v.unwrap() * 1000.0).round() / 1000.0;
        assert_eq!(us(h.loadgen_cpu_us_per_heartbeat), 10.0);
        assert_eq!(us(h.gateway_cpu_us_per_heartbeat), 10.0);
    }
}
