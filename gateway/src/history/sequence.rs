//! Sequencing of positioned broadcasts on one node: the last position this node delivered per
//! topic with history, and the verdict on each arriving broadcast (the next one, a duplicate,
//! or one after a gap the node must fill from the store first). Pure bookkeeping: the node's
//! delivery task owns one `Sequencer` and does the filling.

use std::collections::HashMap;
use std::sync::Arc;

use super::Position;

/// What to do with an arriving positioned broadcast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it: the topic's first on this node, or the one after the last delivered.
    Deliver,
    /// At or before the last delivered position: drop it (counted).
    Duplicate,
    /// Broadcasts are missing before it: fill the range after `after` from the store, then
    /// deliver it. `epoch_changed`: the topic's history started a new life, so whatever the
    /// old epoch still had after the last delivered position is lost (counted).
    Gap {
        /// The last position known delivered (offset 0 of the new epoch after a change).
        after: Position,
        /// Whether the epoch differs from the last delivered one.
        epoch_changed: bool,
    },
}

/// The last position delivered per topic.
#[derive(Debug, Default)]
pub struct Sequencer {
    /// Topic → the last position this node delivered on it, so a gap or a duplicate is seen.
    last: HashMap<Arc<str>, Position>,
}

impl Sequencer {
    /// The verdict on `pos` arriving on `topic`. Records `pos` as delivered for `Deliver`;
    /// after a `Gap` the caller records what it delivers with `delivered`.
    pub fn check(&mut self, topic: &str, pos: &Position) -> Verdict {
        let Some(last) = self.last.get_mut(topic) else {
            self.last.insert(Arc::from(topic), pos.clone());
            return Verdict::Deliver;
        };
        if last.epoch != pos.epoch {
            return Verdict::Gap {
                after: Position {
                    epoch: pos.epoch.clone(),
                    offset: 0,
                },
                epoch_changed: true,
            };
        }
        match pos.offset {
            o if o <= last.offset => Verdict::Duplicate,
            o if o == last.offset + 1 => {
                last.offset = o;
                Verdict::Deliver
            }
            _ => Verdict::Gap {
                after: last.clone(),
                epoch_changed: false,
            },
        }
    }

    /// Record `pos` as delivered on `topic` if it is later than the last (or of another epoch).
    /// Returns whether it was: `false` means it is a duplicate not to deliver.
    pub fn delivered(&mut self, topic: &str, pos: &Position) -> bool {
        match self.last.get_mut(topic) {
            Some(last) if last.epoch == pos.epoch && pos.offset <= last.offset => false,
            Some(last) => {
                *last = pos.clone();
                true
            }
            None => {
                self.last.insert(Arc::from(topic), pos.clone());
                true
            }
        }
    }

    /// Start `topic`'s sequence at `pos` if nothing was delivered on it yet: a join on this
    /// node told its client the topic stands there, so whatever follows must reach it, even a
    /// broadcast missed before the first one this node hears.
    pub fn seed(&mut self, topic: Arc<str>, pos: Position) {
        self.last.entry(topic).or_insert(pos);
    }

    /// Every topic with its last delivered position (to check for a tail missed meanwhile).
    pub fn tracked(&self) -> Vec<(Arc<str>, Position)> {
        self.last
            .iter()
            .map(|(t, p)| (t.clone(), p.clone()))
            .collect()
    }

    /// Forget the topics `keep` says no: the node no longer receives them, and a later
    /// subscription starts over.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.last.retain(|t, _| keep(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(s: &str) -> Position {
        Position::parse(s).unwrap()
    }

    #[test]
    fn in_order_broadcasts_are_delivered_and_repeats_are_duplicates() {
        let mut s = Sequencer::default();
        assert_eq!(s.check("t", &pos("e-5")), Verdict::Deliver);
        assert_eq!(s.check("t", &pos("e-6")), Verdict::Deliver);
        assert_eq!(s.check("t", &pos("e-6")), Verdict::Duplicate);
        assert_eq!(s.check("t", &pos("e-2")), Verdict::Duplicate);
        assert_eq!(s.check("u", &pos("e-9")), Verdict::Deliver, "topics apart");
    }

    #[test]
    fn a_seed_starts_an_untracked_topic_and_never_moves_a_tracked_one() {
        let mut s = Sequencer::default();
        s.seed("t".into(), pos("e-3"));
        assert_eq!(
            s.check("t", &pos("e-3")),
            Verdict::Duplicate,
            "told already"
        );
        assert_eq!(
            s.check("t", &pos("e-5")),
            Verdict::Gap {
                after: pos("e-3"),
                epoch_changed: false
            },
            "e-4 was missed"
        );
        assert!(s.delivered("t", &pos("e-4")));
        s.seed("t".into(), pos("e-9"));
        s.seed("t".into(), pos("e-1"));
        assert_eq!(
            s.check("t", &pos("e-5")),
            Verdict::Deliver,
            "seeds left it at e-4"
        );
    }

    #[test]
    fn a_gap_asks_for_the_range_after_the_last_delivered() {
        let mut s = Sequencer::default();
        s.check("t", &pos("e-1"));
        let gap = Verdict::Gap {
            after: pos("e-1"),
            epoch_changed: false,
        };
        assert_eq!(s.check("t", &pos("e-4")), gap);
        // Nothing recorded until the filler delivers.
        assert_eq!(s.check("t", &pos("e-4")), gap);
        assert!(s.delivered("t", &pos("e-2")));
        assert!(s.delivered("t", &pos("e-3")));
        assert!(!s.delivered("t", &pos("e-3")), "already delivered");
        assert_eq!(s.check("t", &pos("e-4")), Verdict::Deliver);
        assert_eq!(s.check("t", &pos("e-3")), Verdict::Duplicate);
    }

    #[test]
    fn an_epoch_change_fills_the_new_epoch_from_its_start() {
        let mut s = Sequencer::default();
        s.check("t", &pos("old-7"));
        let changed = Verdict::Gap {
            after: pos("new-0"),
            epoch_changed: true,
        };
        assert_eq!(s.check("t", &pos("new-1")), changed);
        assert!(s.delivered("t", &pos("new-1")));
        assert_eq!(s.check("t", &pos("new-2")), Verdict::Deliver);
        assert_eq!(
            s.check("t", &pos("other-3")),
            Verdict::Gap {
                after: pos("other-0"),
                epoch_changed: true
            }
        );
        assert!(s.delivered("t", &pos("other-1")));
        assert_eq!(s.check("t", &pos("other-2")), Verdict::Deliver);
    }

    #[test]
    fn forgotten_topics_start_over() {
        let mut s = Sequencer::default();
        s.check("t", &pos("e-3"));
        s.check("u", &pos("e-3"));
        s.retain(|t| t == "u");
        assert_eq!(s.tracked().len(), 1);
        assert_eq!(s.check("t", &pos("e-9")), Verdict::Deliver);
    }
}
