//! The coordinator ↔ worker protocol: one JSON object per line, commands on the worker's stdin,
//! events on its stdout (its stderr is free for diagnostics).
//!
//! A worker gets one `start` with its share of the sessions, reports `progress` a few times a
//! second, `ready` once its share is joined (or its churn cycles are done), and on `stop` (or
//! stdin EOF) closes everything and answers with one final `report` carrying its histograms.
//! A `recover` worker also takes `disconnect` and `rejoin` between `ready` and `stop`.

use crate::stats::WorkerStats;
use crate::target::Target;
use serde::{Deserialize, Serialize};

/// What a worker does with each session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Connect, join, hold until stop (capacity, fan-out).
    Hold,
    /// Repeat connect, join, hold briefly, leave, close (churn).
    Churn,
    /// Connect, join, note the position of the last broadcast; on `disconnect` close, on
    /// `rejoin` join again with `since` and check the replay (recovery).
    Recover,
}

/// Where the recovery sessions of a worker are (moved on by the coordinator's commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Joined, noting positions.
    Joined,
    /// Close the connection.
    Disconnect,
    /// Join again with `since` = the last position seen, expecting this many replayed probes.
    Rejoin(u64),
}

/// One worker's share of the load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerPlan {
    /// Worker number (for messages).
    pub worker: usize,
    /// Session behaviour.
    pub mode: Mode,
    /// Nodes; session `i` goes to `targets[i % len]`.
    pub targets: Vec<Target>,
    /// Global index of this worker's first session (topics, nodes and sources derive from it).
    pub first: u64,
    /// Number of sessions (churn: concurrent lanes) this worker runs.
    pub count: u64,
    /// Session starts per second for this worker.
    pub rate: f64,
    /// Maximum connects + joins in flight at once.
    pub max_inflight: usize,
    /// Number of loopback source addresses (127.0.0.2 ..).
    pub sources: u32,
    /// Topic name prefix; session `i` joins `{prefix}{i % topics}`.
    pub topic_prefix: String,
    /// Number of topics.
    pub topics: u64,
    /// Join (and leave) reply timeout.
    pub join_timeout_ms: u64,
    /// Heartbeat interval.
    pub heartbeat_ms: u64,
    /// Churn: total cycles this worker performs over all its lanes.
    pub cycles: u64,
    /// Churn: how long each session stays joined before leaving.
    pub churn_hold_ms: u64,
    /// Hard limit on the worker's run time before it stops by itself.
    pub deadline_ms: u64,
    /// Hold mode: when the server closes a joined session, reconnect (to the next target) and
    /// re-join (failover).
    #[serde(default)]
    pub reconnect: bool,
}

impl WorkerPlan {
    /// Topic joined by the session with global index `idx`.
    pub fn topic(&self, idx: u64) -> String {
        format!("{}{}", self.topic_prefix, idx % self.topics.max(1))
    }
}

/// Coordinator → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Begin with this plan (first line only).
    Start(Box<WorkerPlan>),
    /// Close all sessions and send the final report.
    Stop,
    /// Recovery: close every joined session (client side).
    Disconnect,
    /// Recovery: rejoin every disconnected session with `since`, expecting `expect` probes.
    Rejoin {
        /// Probes each session must receive after rejoining.
        expect: u64,
    },
}

/// Worker → coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Periodic counters (no histograms).
    Progress {
        /// Counters so far.
        stats: WorkerStats,
    },
    /// The share is joined (hold) or the cycles are done (churn).
    Ready {
        /// Counters at that moment.
        stats: WorkerStats,
        /// Joined sessions per topic index (hold mode), for fan-out expectations.
        joined_by_topic: Vec<u64>,
    },
    /// Final counters with histograms, after stop.
    Report {
        /// Final counters.
        stats: WorkerStats,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_as_json_lines() {
        let plan = WorkerPlan {
            worker: 1,
            mode: Mode::Hold,
            targets: vec![Target::parse("ws://127.0.0.1:4000").unwrap()],
            first: 10,
            count: 5,
            rate: 100.0,
            max_inflight: 8,
            sources: 2,
            topic_prefix: "room:lt".into(),
            topics: 3,
            join_timeout_ms: 1000,
            heartbeat_ms: 30000,
            cycles: 0,
            churn_hold_ms: 0,
            deadline_ms: 1000,
            reconnect: false,
        };
        assert_eq!(plan.topic(11), "room:lt2");
        let line = serde_json::to_string(&Command::Start(Box::new(plan.clone()))).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(
            serde_json::from_str::<Command>(&line).unwrap(),
            Command::Start(Box::new(plan))
        );
        let stop = serde_json::to_string(&Command::Stop).unwrap();
        assert_eq!(stop, r#"{"cmd":"stop"}"#);
        let rejoin = serde_json::to_string(&Command::Rejoin { expect: 100 }).unwrap();
        assert_eq!(rejoin, r#"{"cmd":"rejoin","expect":100}"#);
    }
}
