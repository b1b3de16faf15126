//! History: the last broadcasts of topics that keep one (channel rule `history_size` > 0), each
//! with a position, so a client that rejoins with `since` gets exactly what it missed. This
//! module owns the one interface every store meets (`HistoryStore`), positions, and the two
//! stores: `memory` (in-process, one node: a bounded ring per topic under a node-wide memory
//! cap) and `redis` (the cluster: the script in `pubsub_redis::history` stores, numbers and
//! publishes in one step).
//!
//! A position is `"<epoch>-<offset>"`: the epoch is a random, non-numeric name of one life of the
//! topic's history (a node boot for the ring, the creation of the topic's keys in Redis), the
//! offset counts the topic's broadcasts from 1. Positions are unique and increasing per topic
//! within an epoch; a position of another epoch is never recoverable, which is how a Redis
//! that lost its data, or a `since` from elsewhere, is detected.
//!
//! The contract every store meets (checked by the shared `conformance` suite): `append` numbers
//! and stores a broadcast and delivers it in position order, an idempotency key used again
//! within the ttl returns the first position and stores nothing, and `since` returns exactly
//! the broadcasts after a position when all of them are still kept, else `NotExact`.

pub mod memory;
pub mod redis;
pub mod sequence;

#[cfg(test)]
mod conformance;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::cluster::Broadcast;

/// How much of a topic's history is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Broadcasts kept (the newest); a topic with history has at least 1.
    pub size: u32,
    /// How long the history lives after the topic's last broadcast.
    pub ttl: Duration,
}

/// A broadcast's place in its topic's history.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// The life of the topic's history this position belongs to.
    pub epoch: Arc<str>,
    /// The broadcast's number within the epoch (0: before the first).
    pub offset: u64,
}

impl Position {
    /// Parse `"<epoch>-<offset>"`; `None` for anything else (a malformed `since`). The epoch
    /// must start with a letter and be ASCII alphanumeric, the offset decimal.
    pub fn parse(text: &str) -> Option<Self> {
        let (epoch, offset) = text.rsplit_once('-')?;
        let valid_epoch = epoch.len() <= 64
            && epoch.starts_with(|c: char| c.is_ascii_alphabetic())
            && epoch.bytes().all(|b| b.is_ascii_alphanumeric());
        let valid_offset = !offset.is_empty() && offset.bytes().all(|b| b.is_ascii_digit());
        if !(valid_epoch && valid_offset) {
            return None;
        }
        Some(Position {
            epoch: Arc::from(epoch),
            offset: offset.parse().ok()?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.offset)
    }
}

/// What a join can be given from history.
#[derive(Clone, Debug, PartialEq)]
pub enum Recovery {
    /// Every broadcast after `since`, oldest first (possibly none).
    Exact(Vec<Arc<Broadcast>>),
    /// Not exactly known: no `since`, another epoch, too old, expired.
    NotExact,
}

/// A read of a topic's history for a join.
#[derive(Clone, Debug, PartialEq)]
pub struct Recovered {
    /// The topic's latest position (offset 0 when it has had no broadcast in this epoch).
    pub latest: Position,
    /// What was asked for after `since`.
    pub recovery: Recovery,
}

/// The outcome of an append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The broadcast's position (the first one's, for a repeated idempotency key).
    pub position: Position,
    /// False when the idempotency key had already been used: nothing was stored or sent.
    pub fresh: bool,
}

/// Why the history could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The store cannot be reached (Redis down or too slow); nothing was stored.
    #[error("history store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with something that is not a position.
    #[error("history store returned a malformed position {0:?}")]
    BadPosition(String),
}

/// Delivers one positioned broadcast on this node and to the other nodes. A store calls it in
/// position order (the ring under its lock); the Redis store never calls it, since its script
/// publishes and every node, the origin included, delivers from Redis.
pub type Deliver<'a> = &'a (dyn Fn(Arc<Broadcast>) + Send + Sync);

/// Where topic histories live.
#[async_trait]
pub trait HistoryStore: Send + Sync + fmt::Debug + 'static {
    /// Number and store `msg` (its `except` is kept for delivery only), and deliver it with its
    /// position. With `idempotency_key`, a key used within the ttl stores nothing and returns
    /// the first position. An error means it was neither stored nor delivered.
    async fn append(
        &self,
        msg: Broadcast,
        limits: Limits,
        idempotency_key: Option<&str>,
        deliver: Deliver<'_>,
    ) -> Result<Stored, HistoryError>;

    /// The topic's latest position, and with `since` the broadcasts after it when exactly
    /// known.
    async fn since(
        &self,
        topic: &str,
        since: Option<&Position>,
        limits: Limits,
    ) -> Result<Recovered, HistoryError>;

    /// The topic's latest position.
    async fn latest(&self, topic: &str, limits: Limits) -> Result<Position, HistoryError> {
        Ok(self.since(topic, None, limits).await?.latest)
    }
}

/// Shared handle to a node's history store.
pub type SharedHistory = Arc<dyn HistoryStore>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_only_their_own_shape() {
        let p = Position::parse("abc12-42").unwrap();
        assert_eq!((&*p.epoch, p.offset), ("abc12", 42));
        assert_eq!(p.to_string(), "abc12-42");
        for bad in [
            "", "42", "-42", "abc", "abc-", "abc-x", "1bc-4", "a-b-3", "a b-3", "abc--3", "abc-+3",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
    }
}
