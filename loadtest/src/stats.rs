//! Counters and HDR histograms shared by the sessions of one worker process, plus their
//! serializable snapshot (`WorkerStats`) that travels to the coordinator and merges there.
//!
//! Histograms hold microseconds and travel as base64 of hdrhistogram's V2 serialization, so the
//! coordinator merges exact distributions rather than averaging percentiles.

use crate::replay::{RecoveryCounts, RecoveryStats};
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Kinds of failure a session or publisher can hit; each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP connect (or source bind) failed.
    Connect,
    /// WebSocket upgrade failed.
    Handshake,
    /// Join answered with an error status.
    JoinRefused,
    /// No join reply within the join timeout.
    JoinTimeout,
    /// Connection closed or failed after it was established.
    Closed,
    /// Undecodable frame or protocol violation from the server.
    Protocol,
    /// A heartbeat was still unanswered when the next one was due.
    HeartbeatTimeout,
    /// Leave not answered ok (churn).
    Leave,
    /// A broadcast publish failed (non-2xx or transport error).
    Publish,
}

/// Error counters by kind, as serialized in reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorCounts {
    /// See [`ErrorKind::Connect`].
    pub connect: u64,
    /// See [`ErrorKind::Handshake`].
    pub handshake: u64,
    /// See [`ErrorKind::JoinRefused`].
    pub join_refused: u64,
    /// See [`ErrorKind::JoinTimeout`].
    pub join_timeout: u64,
    /// See [`ErrorKind::Closed`].
    pub closed: u64,
    /// See [`ErrorKind::Protocol`].
    pub protocol: u64,
    /// See [`ErrorKind::HeartbeatTimeout`].
    pub heartbeat_timeout: u64,
    /// See [`ErrorKind::Leave`].
    pub leave: u64,
    /// See [`ErrorKind::Publish`].
    pub publish: u64,
}

impl ErrorCounts {
    /// Sum over all kinds.
    pub fn total(&self) -> u64 {
        self.connect
            + self.handshake
            + self.join_refused
            + self.join_timeout
            + self.closed
            + self.protocol
            + self.heartbeat_timeout
            + self.leave
            + self.publish
    }

    /// Adds another set of counts into this one.
    pub fn add(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.handshake += o.handshake;
        self.join_refused += o.join_refused;
        self.join_timeout += o.join_timeout;
        self.closed += o.closed;
        self.protocol += o.protocol;
        self.heartbeat_timeout += o.heartbeat_timeout;
        self.leave += o.leave;
        self.publish += o.publish;
    }
}

/// Highest latency tracked without resizing: one hour in µs.
const HIST_MAX_US: u64 = 3_600_000_000;

/// A fresh microsecond histogram (1 µs .. 1 h, 3 significant figures).
pub fn new_hist() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid bounds");
    h.auto(true);
    h
}

/// Base64 of the V2 serialization of `h`.
pub fn encode_hist(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    // Serializing into a Vec cannot fail for a valid histogram.
    if V2Serializer::new().serialize(h, &mut buf).is_err() {
        buf.clear();
    }
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Why a transported histogram could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistError {
    /// Not base64.
    #[error("histogram is not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// Not a V2 histogram.
    #[error("histogram does not deserialize: {0:?}")]
    Decode(hdrhistogram::serialization::DeserializeError),
}

/// Inverse of [`encode_hist`]; the empty string is an empty histogram.
pub fn decode_hist(s: &str) -> Result<Histogram<u64>, HistError> {
    if s.is_empty() {
        return Ok(new_hist());
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(s)?;
    let mut h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(HistError::Decode)?;
    h.auto(true);
    Ok(h)
}

/// Live state of one worker's sessions, shared by all its session tasks.
#[derive(Debug)]
pub struct Stats {
    /// Sessions whose join was answered ok (cumulative; churn counts every cycle).
    pub joined: AtomicU64,
    /// Sessions currently joined and held open.
    pub active: AtomicU64,
    /// Sessions that ended without a successful join.
    pub failed: AtomicU64,
    /// Error counters indexed like [`ErrorKind`].
    errors: [AtomicU64; 9],
    /// Probe frames received (with duplicates).
    pub deliveries: AtomicU64,
    /// Probe frames received for the first time per session and sequence number.
    pub unique: AtomicU64,
    /// Probe frames received again by the same session.
    pub duplicates: AtomicU64,
    /// Earliest probe receipt, µs since epoch (`u64::MAX` until one arrives).
    pub first_delivery_us: AtomicU64,
    /// Latest probe receipt, µs since epoch.
    pub last_delivery_us: AtomicU64,
    /// Completed churn cycles (connect, join, leave, close).
    pub cycles: AtomicU64,
    /// Heartbeats sent.
    pub heartbeats: AtomicU64,
    /// Latest successful join, µs since epoch (end of the ramp).
    pub last_join_us: AtomicU64,
    /// Sessions re-joined after the server closed them (failover).
    pub reconnects: AtomicU64,
    /// First server-side close of a joined session, µs since epoch (`u64::MAX` until one).
    pub first_close_us: AtomicU64,
    /// Latest re-join after a close, µs since epoch.
    pub last_rejoin_us: AtomicU64,
    /// Connect + upgrade + join latency, µs.
    pub connect_join: Mutex<Histogram<u64>>,
    /// Probe end-to-end latency (publisher timestamp to receipt), µs.
    pub delivery: Mutex<Histogram<u64>>,
    /// Leave round trip (churn), µs.
    pub leave: Mutex<Histogram<u64>>,
    /// Recovery scenario counters.
    pub recovery: RecoveryStats,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            joined: AtomicU64::new(0),
            active: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            errors: Default::default(),
            deliveries: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            first_delivery_us: AtomicU64::new(u64::MAX),
            last_delivery_us: AtomicU64::new(0),
            cycles: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            last_join_us: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            first_close_us: AtomicU64::new(u64::MAX),
            last_rejoin_us: AtomicU64::new(0),
            connect_join: Mutex::new(new_hist()),
            delivery: Mutex::new(new_hist()),
            leave: Mutex::new(new_hist()),
            recovery: RecoveryStats::new(),
        }
    }
}

/// Records `v` into a shared histogram (a poisoned lock only means a panicked recorder).
pub fn record(h: &Mutex<Histogram<u64>>, v: u64) {
    let mut g = h.lock().unwrap_or_else(|e| e.into_inner());
    // `record` grows an auto-resizing histogram; `saturating_record` would clamp to its range.
    if g.record(v.max(1)).is_err() {
        g.saturating_record(v.max(1));
    }
}

impl Stats {
    /// Counts one error of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Error counters as a plain struct.
    pub fn error_counts(&self) -> ErrorCounts {
        let g = |k: ErrorKind| self.errors[k as usize].load(Ordering::Relaxed);
        ErrorCounts {
            connect: g(ErrorKind::Connect),
            handshake: g(ErrorKind::Handshake),
            join_refused: g(ErrorKind::JoinRefused),
            join_timeout: g(ErrorKind::JoinTimeout),
            closed: g(ErrorKind::Closed),
            protocol: g(ErrorKind::Protocol),
            heartbeat_timeout: g(ErrorKind::HeartbeatTimeout),
            leave: g(ErrorKind::Leave),
            publish: g(ErrorKind::Publish),
        }
    }

    /// Records one probe receipt at `now_us`.
    pub fn delivered(&self, now_us: u64, latency_us: u64, fresh: bool) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        if fresh {
            self.unique.fetch_add(1, Ordering::Relaxed);
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        self.first_delivery_us.fetch_min(now_us, Ordering::Relaxed);
        self.last_delivery_us.fetch_max(now_us, Ordering::Relaxed);
        record(&self.delivery, latency_us);
    }

    /// Snapshot of the counters; histograms only when `with_hists` (final report).
    pub fn snapshot(&self, with_hists: bool) -> WorkerStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let h = |m: &Mutex<Histogram<u64>>| {
            if with_hists {
                encode_hist(&m.lock().unwrap_or_else(|e| e.into_inner()))
            } else {
                String::new()
            }
        };
        WorkerStats {
            joined: l(&self.joined),
            active: l(&self.active),
            failed: l(&self.failed),
            errors: self.error_counts(),
            deliveries: l(&self.deliveries),
            unique: l(&self.unique),
            duplicates: l(&self.duplicates),
            first_delivery_us: l(&self.first_delivery_us),
            last_delivery_us: l(&self.last_delivery_us),
            cycles: l(&self.cycles),
            heartbeats: l(&self.heartbeats),
            last_join_us: l(&self.last_join_us),
            reconnects: l(&self.reconnects),
            first_close_us: l(&self.first_close_us),
            last_rejoin_us: l(&self.last_rejoin_us),
            connect_join_hist: h(&self.connect_join),
            delivery_hist: h(&self.delivery),
            leave_hist: h(&self.leave),
            recovery: self.recovery.snapshot(),
        }
    }
}

/// Serializable counters of one worker (or, merged, of all workers).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerStats {
    /// See [`Stats::joined`].
    pub joined: u64,
    /// See [`Stats::active`].
    pub active: u64,
    /// See [`Stats::failed`].
    pub failed: u64,
    /// Error counters.
    pub errors: ErrorCounts,
    /// See [`Stats::deliveries`].
    pub deliveries: u64,
    /// See [`Stats::unique`].
    pub unique: u64,
    /// See [`Stats::duplicates`].
    pub duplicates: u64,
    /// See [`Stats::first_delivery_us`].
    pub first_delivery_us: u64,
    /// See [`Stats::last_delivery_us`].
    pub last_delivery_us: u64,
    /// See [`Stats::cycles`].
    pub cycles: u64,
    /// See [`Stats::heartbeats`].
    pub heartbeats: u64,
    /// See [`Stats::last_join_us`].
    pub last_join_us: u64,
    /// See [`Stats::reconnects`].
    pub reconnects: u64,
    /// See [`Stats::first_close_us`].
    pub first_close_us: u64,
    /// See [`Stats::last_rejoin_us`].
    pub last_rejoin_us: u64,
    /// Base64 V2 histogram (empty in progress snapshots).
    pub connect_join_hist: String,
    /// Base64 V2 histogram (empty in progress snapshots).
    pub delivery_hist: String,
    /// Base64 V2 histogram (empty in progress snapshots).
    pub leave_hist: String,
    /// Recovery scenario counters.
    #[serde(default)]
    pub recovery: RecoveryCounts,
}

impl Default for WorkerStats {
    fn default() -> Self {
        Stats::default().snapshot(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_keep_large_values_and_round_trip() {
        let s = Stats::default();
        for v in [2u64, 900, 15_000, 2_500_000] {
            record(&s.delivery, v);
        }
        let snap = s.snapshot(true);
        let h = decode_hist(&snap.delivery_hist).unwrap();
        assert_eq!(h.len(), 4);
        assert!(h.max() >= 2_490_000, "max {}", h.max());
        assert!(h.value_at_quantile(0.5) >= 890);
        assert!(decode_hist("").unwrap().is_empty());
        assert!(decode_hist("!!").is_err());
    }
}
