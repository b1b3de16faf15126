//! `floor --rounds`: the kernel floor of one broadcast, measured by the project itself. The
//! plain floor ([`crate::floor`]) streams rounds back to back, so its reader never sleeps and
//! its writer never pays for waking it; a broadcast instead reaches readers that have been idle
//! since the last one. Here one writer (this process, one thread, blocking sockets) writes one
//! small message to each of N loopback connections in turn, as a one-frame broadcast does, and
//! then waits; a reader (a `floor-reader --round-bytes` child, one thread, readiness-driven as
//! the load generator is) drains them and prints the time the round's last byte arrived. Each
//! round starts after a gap in which the reader has gone back to sleep.
//!
//! A round's time (writer's first write → reader's last byte, one wall clock) is the least a
//! one-frame broadcast to N idle subscribers can take on this machine at this moment, and the
//! two processes' CPU per write is what that costs both ends.

use crate::floor::{
    connect_child, next_line, read_to_eof, reap, run_child, ChildDone, ChildKind, FloorError,
};
use crate::metrics::proc_cpu_times;
use crate::session::now_us;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What one measurement found (`--json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundFloor {
    /// Loopback connections, one message each per round.
    pub sockets: usize,
    /// Bytes per write.
    pub bytes_per_write: usize,
    /// Idle time before each round, milliseconds.
    pub gap_ms: u64,
    /// Each round's time, first write to the reader's last byte, seconds.
    pub round_secs: Vec<f64>,
    /// The median of round_secs: the floor of one broadcast to `sockets` idle readers.
    pub median_round_secs: f64,
    /// sockets ÷ median_round_secs.
    pub writes_per_sec: f64,
    /// Writer CPU per write over all rounds, µs.
    pub writer_us_per_write: f64,
    /// Reader CPU per write over all rounds, µs.
    pub reader_us_per_write: f64,
    /// Both ends' CPU per write, µs: to compare with a gateway's plus its load generator's
    /// CPU per delivery of a one-frame broadcast.
    pub both_us_per_write: f64,
}

impl RoundFloor {
    /// One line for the bench scripts' logs.
    pub fn line(&self) -> String {
        let runs: Vec<String> = self
            .round_secs
            .iter()
            .map(|s| format!("{:.1}", s * 1e3))
            .collect();
        format!(
            "round floor: {} rounds of {} writes of {} B to idle readers ({} ms apart): median {:.1} ms \
             ({}) = {:.0} writes/s; writer {:.2} + reader {:.2} = {:.2} us/write",
            self.round_secs.len(),
            self.sockets,
            self.bytes_per_write,
            self.gap_ms,
            self.median_round_secs * 1e3,
            runs.join(" / "),
            self.writes_per_sec,
            self.writer_us_per_write,
            self.reader_us_per_write,
            self.both_us_per_write
        )
    }
}

/// The reader's line at the end of each round.
#[derive(Debug, Serialize, Deserialize)]
struct RoundEnd {
    /// When the round's last byte was read, µs since the Unix epoch.
    end_us: u64,
}

/// Measures `rounds` one-message rounds over `n` connections, `gap` apart.
pub fn measure(
    n: usize,
    rounds: u32,
    bytes: usize,
    sources: u32,
    gap: Duration,
) -> Result<RoundFloor, FloorError> {
    let msg = vec![b'x'; bytes.max(1)];
    let round_bytes = (n * msg.len()) as u64;
    let (child, mut lines, mut socks) = connect_child(n, sources, ChildKind::Rounds(round_bytes))?;
    let me = std::process::id();
    let cpu0 = proc_cpu_times(me).ok_or(FloorError::Cpu)?;
    let mut round_secs = Vec::with_capacity(rounds as usize);
    for _ in 0..rounds {
        std::thread::sleep(gap);
        let start = now_us();
        for s in &mut socks {
            s.write_all(&msg)?;
        }
        let end: RoundEnd = serde_json::from_str(&next_line(&mut lines, "a round's end")?)?;
        round_secs.push(end.end_us.saturating_sub(start) as f64 / 1e6);
    }
    let cpu = proc_cpu_times(me).ok_or(FloorError::Cpu)?.since(cpu0);
    drop(socks);
    let done: ChildDone = serde_json::from_str(&next_line(&mut lines, "its total")?)?;
    reap(child)?;
    if done.count != round_bytes * u64::from(rounds) {
        return Err(FloorError::Reader(format!(
            "read {} B, expected {}",
            done.count,
            round_bytes * u64::from(rounds)
        )));
    }
    let writes = (n as f64 * f64::from(rounds)).max(1.0);
    let median_round_secs = median(&round_secs);
    Ok(RoundFloor {
        sockets: n,
        bytes_per_write: msg.len(),
        gap_ms: gap.as_millis() as u64,
        round_secs,
        median_round_secs,
        writes_per_sec: if median_round_secs > 0.0 {
            n as f64 / median_round_secs
        } else {
            0.0
        },
        writer_us_per_write: cpu.total() * 1e6 / writes,
        reader_us_per_write: done.cpu_secs * 1e6 / writes,
        both_us_per_write: (cpu.total() + done.cpu_secs) * 1e6 / writes,
    })
}

/// The middle value (the mean of the middle two for an even count); 0 when empty.
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        k if k % 2 == 1 => s[k / 2],
        k => (s[k / 2 - 1] + s[k / 2]) / 2.0,
    }
}

/// The `floor-reader --round-bytes B` child: connects `n` sockets to `addr`, says `ready`,
/// drains them and prints a [`RoundEnd`] line each time another `round_bytes` have arrived in
/// all, then its byte count and CPU as one line once every connection is closed.
pub fn reader(
    addr: SocketAddr,
    n: usize,
    sources: u32,
    round_bytes: u64,
) -> Result<(), FloorError> {
    let total = Arc::new(AtomicU64::new(0));
    let round_bytes = round_bytes.max(1);
    run_child(addr, n, sources, move |s| {
        read_rounds(s, Arc::clone(&total), round_bytes)
    })
}

/// Reads one connection to EOF, adding to `total` and announcing each round it completes.
async fn read_rounds(
    s: tokio::net::TcpStream,
    total: Arc<AtomicU64>,
    round_bytes: u64,
) -> Result<u64, FloorError> {
    read_to_eof(s, |got| {
        let before = total.fetch_add(got, Ordering::Relaxed);
        if (before + got) / round_bytes > before / round_bytes {
            let line = serde_json::to_string(&RoundEnd { end_us: now_us() })?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()?;
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
