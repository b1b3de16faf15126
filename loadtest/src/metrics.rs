//! Server-side readings: Prometheus text from each node's `/metrics`, and `VmRSS` straight from
//! `/proc/<pid>/status` when the server's pid is known.
//!
//! `/proc` is read in addition to the metric because it does not depend on the gateway's own
//! instrumentation being right, and it is the method of reference/rust-stack.md §4.

use crate::http;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// One scrape of the figures the capacity scenario needs (summed over nodes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerReading {
    /// `process_resident_memory_bytes`.
    pub rss_bytes: f64,
    /// `gateway_sessions` summed over label sets.
    pub sessions: f64,
    /// `process_cpu_seconds_total`.
    pub cpu_seconds: f64,
    /// Nodes whose `/metrics` answered.
    pub nodes_read: u32,
}

/// Sum of every sample of metric `name` (any labels) in Prometheus text; None if absent.
pub fn sample_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if rest.starts_with('{') {
            rest.rsplit_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None // a longer metric name with this prefix
        };
        if let Some(v) = value
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Scrapes `/metrics` of every node and sums the readings. Nodes that fail are skipped (and
/// visible as `nodes_read` < nodes).
pub async fn scrape(nodes: &[SocketAddr]) -> ServerReading {
    let mut r = ServerReading::default();
    for addr in nodes {
        let Ok(resp) = http::get(*addr, "/metrics").await else {
            continue;
        };
        if resp.status != 200 {
            continue;
        }
        let text = String::from_utf8_lossy(&resp.body);
        r.nodes_read += 1;
        r.rss_bytes += sample_sum(&text, "process_resident_memory_bytes").unwrap_or(0.0);
        r.sessions += sample_sum(&text, "gateway_sessions").unwrap_or(0.0);
        r.cpu_seconds += sample_sum(&text, "process_cpu_seconds_total").unwrap_or(0.0);
    }
    r
}

/// `VmRSS` of `pid` in bytes, from `/proc/<pid>/status`.
pub fn proc_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss(&status)
}

/// The `VmRSS:  1234 kB` line of a `/proc/<pid>/status` text, in bytes.
fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU seconds of a process, split as the kernel accounts them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    /// In the process's own code (utime).
    pub user: f64,
    /// In the kernel on the process's behalf (stime): system calls, and on loopback the TCP
    /// receive path of the other end that a `write` runs.
    pub system: f64,
}

impl CpuTimes {
    /// user + system.
    pub fn total(self) -> f64 {
        self.user + self.system
    }

    /// `self − earlier`, field by field.
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

impl std::iter::Sum for CpuTimes {
    fn sum<I: Iterator<Item = CpuTimes>>(iter: I) -> CpuTimes {
        iter.fold(CpuTimes::default(), |a, b| CpuTimes {
            user: a.user + b.user,
            system: a.system + b.system,
        })
    }
}

/// User and system CPU seconds of `pid` from `/proc/<pid>/stat` (10 ms resolution, finer than
/// the whole seconds some Prometheus process collectors export).
pub fn proc_cpu_times(pid: u32) -> Option<CpuTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu(&stat)
}

/// utime and stime of a `/proc/<pid>/stat` line, in seconds. USER_HZ is 100 on every Linux ABI
/// this runs on, which avoids an unsafe `sysconf` call.
fn parse_cpu(stat: &str) -> Option<CpuTimes> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| Some(f.get(i)?.parse::<u64>().ok()? as f64 / 100.0);
    Some(CpuTimes {
        user: ticks(11)?,
        system: ticks(12)?,
    })
}

/// Sum of CPU seconds over `pids` (None if any is unreadable).
pub fn proc_cpu_sum(pids: &[u32]) -> Option<f64> {
    proc_cpu_times_sum(pids).map(CpuTimes::total)
}

/// Sum of user and system CPU seconds over `pids` (None if any is unreadable).
pub fn proc_cpu_times_sum(pids: &[u32]) -> Option<CpuTimes> {
    pids.iter().map(|p| proc_cpu_times(*p)).sum()
}

/// Sum of VmRSS over `pids` (None if any is unreadable).
pub fn proc_rss_sum(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|p| proc_rss(*p)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_labelled_samples_and_ignores_prefix_names() {
        let text = "# HELP gateway_sessions x\n# TYPE gateway_sessions gauge\n\
            gateway_sessions{transport=\"websocket\"} 15000\n\
            gateway_sessions{transport=\"longpoll\"} 2\n\
            gateway_sessions_total 99\n\
            process_resident_memory_bytes 1.2e7\n";
        assert_eq!(sample_sum(text, "gateway_sessions"), Some(15002.0));
        assert_eq!(
            sample_sum(text, "process_resident_memory_bytes"),
            Some(12e6)
        );
        assert_eq!(sample_sum(text, "process_cpu_seconds_total"), None);
    }

    #[test]
    fn reads_vmrss() {
        assert_eq!(
            parse_vmrss("Name:\tx\nVmRSS:\t  2048 kB\n"),
            Some(2048 * 1024)
        );
        let own = proc_rss(std::process::id()).unwrap();
        assert!(own > 0);
        let line = "42 (a b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(
            parse_cpu(line),
            Some(CpuTimes {
                user: 2.5,
                system: 0.5
            })
        );
        assert_eq!(parse_cpu(line).map(CpuTimes::total), Some(3.0));
        assert!(proc_cpu_times(std::process::id()).is_some());
    }
}
