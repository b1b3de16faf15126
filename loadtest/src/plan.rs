//! Splitting a scenario's load into worker plans: which global session indices, what ramp rate
//! and how many churn cycles each worker process gets, honouring `--shard I/N`.
//!
//! Session `i` (global index) always joins topic `i mod topics`, connects to node
//! `i mod nodes` from source 127.0.0.(2 + i mod sources), so shards and workers compose.

use crate::cli::Common;
use crate::protocol::{Mode, WorkerPlan};
use crate::target::{Target, TargetError};
use std::net::SocketAddr;

/// File descriptors a worker may use for sessions (hard cap 20,000 minus stdio and slack).
pub const MAX_PER_WORKER: u64 = 19_500;

/// Why the flags do not make a runnable plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A `--url` was refused.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// `--shard` is not `I/N` with 1 ≤ I ≤ N.
    #[error("--shard must be I/N with 1 <= I <= N, got {0:?}")]
    Shard(String),
    /// A worker would need more sockets than a process may open.
    #[error("{0} sessions per worker exceeds {MAX_PER_WORKER}: raise --workers")]
    TooManyPerWorker(u64),
    /// Nothing to do.
    #[error("--sessions must be at least 1 and --rate positive")]
    Empty,
}

/// The load of this coordinator after sharding.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    /// First global session index.
    pub first: u64,
    /// Sessions of this shard.
    pub count: u64,
    /// This shard's number (1-based) and the shard count.
    pub shard: (u64, u64),
}

/// Parses `I/N`.
pub fn parse_shard(s: &str) -> Result<(u64, u64), PlanError> {
    let bad = || PlanError::Shard(s.to_string());
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (u64, u64) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if i == 0 || n == 0 || i > n {
        return Err(bad());
    }
    Ok((i, n))
}

/// `count` items split into `parts` near-equal pieces: (offset, len) of piece `k`.
fn piece(count: u64, parts: u64, k: u64) -> (u64, u64) {
    let base = count / parts;
    let extra = count % parts;
    let len = base + u64::from(k < extra);
    let off = k * base + k.min(extra);
    (off, len)
}

/// This coordinator's share of `--sessions`.
pub fn share(c: &Common) -> Result<Share, PlanError> {
    let shard = match &c.shard {
        Some(s) => parse_shard(s)?,
        None => (1, 1),
    };
    let (first, count) = piece(c.sessions, shard.1, shard.0 - 1);
    if count == 0 || c.rate <= 0.0 {
        return Err(PlanError::Empty);
    }
    Ok(Share {
        first,
        count,
        shard,
    })
}

/// Parsed `--url`s.
pub fn targets(c: &Common) -> Result<Vec<Target>, PlanError> {
    Ok(c.urls
        .iter()
        .map(|u| Target::parse(u))
        .collect::<Result<_, _>>()?)
}

/// Distinct node addresses (for `/metrics` and `/api/broadcast`).
pub fn nodes(targets: &[Target]) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = targets.iter().map(Target::socket_addr).collect();
    v.dedup();
    v
}

/// Worker plans for this shard. `cycles` is the shard's churn total (0 outside churn).
pub fn build(
    c: &Common,
    mode: Mode,
    topics: u64,
    cycles: u64,
    churn_hold_ms: u64,
) -> Result<Vec<WorkerPlan>, PlanError> {
    let targets = targets(c)?;
    let sh = share(c)?;
    let rate = c.rate / sh.shard.1 as f64;
    let workers = c
        .workers
        .map(|w| w as u64)
        .unwrap_or_else(|| sh.count.div_ceil(c.per_worker.max(1)))
        .clamp(1, sh.count);
    let per = sh.count.div_ceil(workers);
    if per > MAX_PER_WORKER {
        return Err(PlanError::TooManyPerWorker(per));
    }
    let inflight = (c.max_inflight as u64).div_ceil(workers).max(1) as usize;
    Ok((0..workers)
        .map(|w| {
            let (off, count) = piece(sh.count, workers, w);
            WorkerPlan {
                worker: w as usize,
                mode,
                targets: targets.clone(),
                first: sh.first + off,
                count,
                rate: rate * count as f64 / sh.count as f64,
                max_inflight: inflight,
                sources: c.sources,
                topic_prefix: c.topic_prefix.clone(),
                topics: topics.max(1),
                join_timeout_ms: c.join_timeout_ms,
                heartbeat_ms: c.heartbeat_secs.max(1) * 1000,
                cycles: piece(cycles, workers, w).1,
                churn_hold_ms,
                deadline_ms: c.max_secs * 1000,
                reconnect: false,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn common(args: &[&str]) -> Common {
        let mut v = vec!["loadtest", "capacity"];
        v.extend_from_slice(args);
        match crate::cli::Cli::parse_from(v).cmd {
            crate::cli::Cmd::Capacity(a) => a.common,
            _ => unreachable!(),
        }
    }

    #[test]
    fn splits_sessions_rate_and_cycles_over_workers() {
        let c = common(&["-n", "15001", "--per-worker", "8000", "--rate", "3000"]);
        let plans = build(&c, Mode::Hold, 1, 10, 0).unwrap();
        assert_eq!(plans.len(), 2);
        assert_eq!((plans[0].first, plans[0].count), (0, 7501));
        assert_eq!((plans[1].first, plans[1].count), (7501, 7500));
        let total_rate: f64 = plans.iter().map(|p| p.rate).sum();
        assert!((total_rate - 3000.0).abs() < 1e-6);
        assert_eq!(plans.iter().map(|p| p.cycles).sum::<u64>(), 10);
    }

    #[test]
    fn shards_partition_the_sessions() {
        let a = share(&common(&["-n", "10", "--shard", "1/3"])).unwrap();
        let b = share(&common(&["-n", "10", "--shard", "3/3"])).unwrap();
        assert_eq!((a.first, a.count), (0, 4));
        assert_eq!((b.first, b.count), (7, 3));
        assert!(parse_shard("0/2").is_err() && parse_shard("3/2").is_err());
        let too_many = common(&["-n", "40000", "--workers", "1"]);
        assert!(matches!(
            build(&too_many, Mode::Hold, 1, 0, 0),
            Err(PlanError::TooManyPerWorker(_))
        ));
    }
}
