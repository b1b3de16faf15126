//! What the `recovery` scenario checks on the client side: positions (`<epoch>-<offset>`, the
//! `ref` slot of a broadcast on a topic with history), the join reply's `recovered` flag, and
//! whether the broadcasts replayed after a join with `since` came exactly once and in order.
//!
//! [`ReplayCheck`] is the pure part: after a rejoin with `since = S`, every probe must carry the
//! position right after the previous one (same epoch, offset + 1, starting from S) and a sequence
//! number not seen before below the expected count; anything past that count is an extra (a
//! duplicate). The order checked is the store's, not the sequence numbers': publishes to one
//! topic from two publisher connections may reach the gateway in either order.
//! The counters travel from workers to the coordinator inside [`crate::stats::WorkerStats`].

use crate::phoenix::Inbound;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

/// A history position: the store's epoch and the topic's offset in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Epoch (changes when the store loses the history).
    pub epoch: String,
    /// Offset within the epoch.
    pub offset: u64,
}

impl Position {
    /// Parses `<epoch>-<offset>` (the epoch may itself contain `-`).
    pub fn parse(s: &str) -> Option<Position> {
        let (epoch, offset) = s.rsplit_once('-')?;
        if epoch.is_empty() {
            return None;
        }
        Some(Position {
            epoch: epoch.to_string(),
            offset: offset.parse().ok()?,
        })
    }
}

/// One probe fed to the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// In order, more expected.
    Ok,
    /// In order, and it was the last one expected.
    Complete,
    /// Past the expected count (a duplicate or an unexpected broadcast).
    Extra,
    /// Wrong sequence number or position (missing, reordered or repeated).
    Violation,
}

/// Exactly-once-in-order check of one session's replay.
#[derive(Debug, Clone)]
pub struct ReplayCheck {
    /// Probes expected.
    expect: u64,
    /// Probes received so far (within the expected count).
    got: u64,
    /// Position of the last accepted probe (initially `since`).
    last: Position,
    /// Sequence numbers seen, one bit each below `expect`.
    seen: Vec<u64>,
    /// Probes received past the expected count.
    extra: u64,
    /// Probes out of sequence or position.
    violations: u64,
}

impl ReplayCheck {
    /// A check for `expect` probes after position `since`.
    pub fn new(since: Position, expect: u64) -> ReplayCheck {
        ReplayCheck {
            expect,
            got: 0,
            last: since,
            seen: vec![0; expect.div_ceil(64) as usize],
            extra: 0,
            violations: 0,
        }
    }

    /// Feeds one received probe: its sequence number (which broadcast it is) and the position in
    /// its `ref` slot (where the store put it).
    pub fn push(&mut self, seq: u64, position: Option<&str>) -> Step {
        if self.got >= self.expect {
            self.extra += 1;
            return Step::Extra;
        }
        let pos = position.and_then(Position::parse);
        let first_time = seq < self.expect && {
            let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
            let fresh = self.seen[word] & bit == 0;
            self.seen[word] |= bit;
            fresh
        };
        let in_order = first_time
            && pos.as_ref().is_some_and(|p| {
                p.epoch == self.last.epoch && p.offset == self.last.offset.wrapping_add(1)
            });
        self.got += 1;
        if let Some(p) = pos {
            self.last = p;
        }
        if !in_order {
            self.violations += 1;
            return Step::Violation;
        }
        if self.got == self.expect {
            Step::Complete
        } else {
            Step::Ok
        }
    }

    /// Every expected probe came, once each, in order, and nothing else.
    pub fn exact(&self) -> bool {
        self.got == self.expect && self.extra == 0 && self.violations == 0
    }

    /// Probes still missing.
    pub fn missing(&self) -> u64 {
        self.expect - self.got
    }

    /// Probes past the expected count.
    pub fn extra(&self) -> u64 {
        self.extra
    }
}

/// Live recovery counters of one worker.
#[derive(Debug, Default)]
pub struct RecoveryStats {
    /// Sessions that learnt a position (received a broadcast on their topic).
    pub positioned: AtomicU64,
    /// Sessions closed by the client for the storm.
    pub disconnected: AtomicU64,
    /// Sessions whose rejoin (with `since`) was answered ok.
    pub rejoined: AtomicU64,
    /// Rejoins answered `recovered: true`.
    pub recovered_true: AtomicU64,
    /// Rejoins answered `recovered: false` (or without the field).
    pub recovered_false: AtomicU64,
    /// Sessions that received every expected probe in order.
    pub complete: AtomicU64,
    /// Probes received after rejoining.
    pub replayed: AtomicU64,
    /// Sessions whose replay was not exactly once in order (or is incomplete at the end).
    pub inexact: AtomicU64,
    /// Probes missing at the end, over all sessions.
    pub missing: AtomicU64,
    /// Probes past the expected count, over all sessions.
    pub extra: AtomicU64,
    /// Earliest rejoin start, µs since epoch (`u64::MAX` until one).
    pub first_rejoin_us: AtomicU64,
    /// Latest session completion, µs since epoch.
    pub last_complete_us: AtomicU64,
}

impl RecoveryStats {
    /// Fresh counters.
    pub fn new() -> RecoveryStats {
        let s = RecoveryStats::default();
        s.first_rejoin_us.store(u64::MAX, Ordering::Relaxed);
        s
    }

    /// Plain snapshot.
    pub fn snapshot(&self) -> RecoveryCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RecoveryCounts {
            positioned: l(&self.positioned),
            disconnected: l(&self.disconnected),
            rejoined: l(&self.rejoined),
            recovered_true: l(&self.recovered_true),
            recovered_false: l(&self.recovered_false),
            complete: l(&self.complete),
            replayed: l(&self.replayed),
            inexact: l(&self.inexact),
            missing: l(&self.missing),
            extra: l(&self.extra),
            first_rejoin_us: l(&self.first_rejoin_us),
            last_complete_us: l(&self.last_complete_us),
        }
    }
}

/// Serializable recovery counters (see [`RecoveryStats`] for each field).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryCounts {
    /// See [`RecoveryStats::positioned`].
    pub positioned: u64,
    /// See [`RecoveryStats::disconnected`].
    pub disconnected: u64,
    /// See [`RecoveryStats::rejoined`].
    pub rejoined: u64,
    /// See [`RecoveryStats::recovered_true`].
    pub recovered_true: u64,
    /// See [`RecoveryStats::recovered_false`].
    pub recovered_false: u64,
    /// See [`RecoveryStats::complete`].
    pub complete: u64,
    /// See [`RecoveryStats::replayed`].
    pub replayed: u64,
    /// See [`RecoveryStats::inexact`].
    pub inexact: u64,
    /// See [`RecoveryStats::missing`].
    pub missing: u64,
    /// See [`RecoveryStats::extra`].
    pub extra: u64,
    /// See [`RecoveryStats::first_rejoin_us`] (0 or `u64::MAX` when none).
    pub first_rejoin_us: u64,
    /// See [`RecoveryStats::last_complete_us`].
    pub last_complete_us: u64,
}

impl RecoveryCounts {
    /// Adds another worker's counters.
    pub fn add(&mut self, o: &RecoveryCounts) {
        self.positioned += o.positioned;
        self.disconnected += o.disconnected;
        self.rejoined += o.rejoined;
        self.recovered_true += o.recovered_true;
        self.recovered_false += o.recovered_false;
        self.complete += o.complete;
        self.replayed += o.replayed;
        self.inexact += o.inexact;
        self.missing += o.missing;
        self.extra += o.extra;
        // A worker without rejoins reports u64::MAX (or 0 from an older default): skip it.
        if o.first_rejoin_us != 0 && o.first_rejoin_us != u64::MAX {
            self.first_rejoin_us = match self.first_rejoin_us {
                0 | u64::MAX => o.first_rejoin_us,
                x => x.min(o.first_rejoin_us),
            };
        }
        self.last_complete_us = self.last_complete_us.max(o.last_complete_us);
    }
}

/// One server message as the recovery session keeps it (owned: it outlives the read buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// `phx_reply` to the message with this ref.
    Reply {
        /// The echoed ref (None if not numeric).
        msg_ref: Option<u32>,
        /// `status == "ok"`.
        ok: bool,
        /// The response's `recovered` field, when present.
        recovered: Option<bool>,
    },
    /// A probe broadcast: its sequence number and the position in its `ref` slot.
    Probe {
        /// Publisher sequence number (per topic).
        seq: u64,
        /// The `ref` slot (a position on a topic with history).
        position: Option<String>,
    },
    /// `phx_close` / `phx_error`.
    ChannelClosed,
    /// Anything else.
    Other,
}

impl From<Inbound<'_>> for Msg {
    fn from(m: Inbound<'_>) -> Msg {
        match m {
            Inbound::Reply {
                msg_ref,
                ok,
                recovered,
            } => Msg::Reply {
                msg_ref,
                ok,
                recovered,
            },
            Inbound::Probe { seq, position, .. } => Msg::Probe {
                seq,
                position: position.map(Cow::into_owned),
            },
            Inbound::ChannelClosed => Msg::ChannelClosed,
            Inbound::Other => Msg::Other,
        }
    }
}

/// `["1","1",topic,"phx_join",{"since":position}]` (payload `{}` without a position).
pub fn join(topic: &str, since: Option<&str>) -> String {
    let payload = match since {
        Some(p) => serde_json::json!({ "since": p }),
        None => serde_json::json!({}),
    };
    serde_json::json!(["1", "1", topic, "phx_join", payload]).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn since() -> Position {
        Position::parse("ep-7").unwrap()
    }

    #[test]
    fn positions_parse_with_dashes_in_the_epoch() {
        let p = Position::parse("17a-b2-42").unwrap();
        assert_eq!((p.epoch.as_str(), p.offset), ("17a-b2", 42));
        assert!(Position::parse("42").is_none());
        assert!(Position::parse("-42").is_none());
        assert!(Position::parse("ep-x").is_none());
    }

    #[test]
    fn an_exact_replay_completes_and_extras_count() {
        let mut c = ReplayCheck::new(since(), 3);
        assert_eq!(c.push(0, Some("ep-8")), Step::Ok);
        assert_eq!(c.push(1, Some("ep-9")), Step::Ok);
        assert_eq!(c.push(2, Some("ep-10")), Step::Complete);
        assert!(c.exact());
        assert_eq!(c.push(2, Some("ep-10")), Step::Extra);
        assert!(!c.exact());
        assert_eq!((c.missing(), c.extra()), (0, 1));
    }

    #[test]
    fn gaps_reorders_repeats_and_foreign_positions_are_violations() {
        // A missing message: seq 1 skipped.
        let mut c = ReplayCheck::new(since(), 3);
        assert_eq!(c.push(0, Some("ep-8")), Step::Ok);
        assert_eq!(c.push(2, Some("ep-10")), Step::Violation);
        assert!(!c.exact());
        assert_eq!(c.missing(), 1);
        // The message at `since` replayed again (seq 0 twice).
        let mut c = ReplayCheck::new(since(), 2);
        assert_eq!(c.push(0, Some("ep-7")), Step::Violation);
        // Right sequence, another epoch or no position at all.
        let mut c = ReplayCheck::new(since(), 2);
        assert_eq!(c.push(0, Some("other-8")), Step::Violation);
        let mut c = ReplayCheck::new(since(), 2);
        assert_eq!(c.push(0, None), Step::Violation);
        // Reordered positions.
        let mut c = ReplayCheck::new(since(), 2);
        assert_eq!(c.push(1, Some("ep-9")), Step::Violation);
        assert_eq!(c.push(0, Some("ep-8")), Step::Violation);
        assert!(!c.exact());
        // One broadcast twice under two positions, or a sequence number never published.
        let mut c = ReplayCheck::new(since(), 3);
        assert_eq!(c.push(1, Some("ep-8")), Step::Ok);
        assert_eq!(c.push(1, Some("ep-9")), Step::Violation);
        let mut c = ReplayCheck::new(since(), 2);
        assert_eq!(c.push(5, Some("ep-8")), Step::Violation);
    }

    #[test]
    fn publishes_stored_in_another_order_than_numbered_are_exact() {
        // Two publisher connections: seq 1 reached the store before seq 0.
        let mut c = ReplayCheck::new(since(), 3);
        assert_eq!(c.push(1, Some("ep-8")), Step::Ok);
        assert_eq!(c.push(0, Some("ep-9")), Step::Ok);
        assert_eq!(c.push(2, Some("ep-10")), Step::Complete);
        assert!(c.exact());
    }

    #[test]
    fn decodes_positioned_probes_and_recovered_replies() {
        let decode = |text: &[u8]| crate::phoenix::decode(text).map(Msg::from);
        let m =
            decode(br#"[null,"e1-5","hist:lt0","lt_probe",{"seq":3,"ts":1,"pad":""}]"#).unwrap();
        assert_eq!(
            m,
            Msg::Probe {
                seq: 3,
                position: Some("e1-5".into())
            }
        );
        let r = decode(
            br#"["1","1","hist:lt0","phx_reply",{"status":"ok","response":{"recovered":true,"position":"e1-5"}}]"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Msg::Reply {
                msg_ref: Some(1),
                ok: true,
                recovered: Some(true)
            }
        );
        let r =
            decode(br#"[null,"2","phoenix","phx_reply",{"status":"ok","response":{}}]"#).unwrap();
        assert!(matches!(
            r,
            Msg::Reply {
                recovered: None,
                ..
            }
        ));
        assert!(decode(b"[1,2").is_err());
        let j: serde_json::Value = serde_json::from_str(&join("hist:lt0", Some("e1-5"))).unwrap();
        assert_eq!(j[4]["since"], "e1-5");
        assert_eq!(join("t", None), r#"["1","1","t","phx_join",{}]"#);
    }

    #[test]
    fn counts_add_and_skip_workers_without_rejoins() {
        let mut a = RecoveryStats::new().snapshot();
        let b = RecoveryCounts {
            complete: 2,
            first_rejoin_us: 50,
            last_complete_us: 90,
            ..Default::default()
        };
        a.add(&b);
        a.add(&RecoveryStats::new().snapshot());
        assert_eq!(
            (a.complete, a.first_rejoin_us, a.last_complete_us),
            (2, 50, 90)
        );
    }
}
