//! What this node owns: the set of channels each subscriber connection should be subscribed
//! to, and the reconciliation that makes a connection's Redis subscriptions match that set.
//!
//! `subscribe` / `unsubscribe` on the handle only edit the set and wake the connection's task
//! (a `Notify`, so no queue of commands can grow); the task diffs desired against applied and
//! sends SUBSCRIBE / UNSUBSCRIBE in batches. After a reconnect the task resubscribes the whole
//! set before it reports itself synced.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::channels::connection_of;

/// Desired channels of one subscriber connection.
#[derive(Debug, Default)]
pub(crate) struct ConnInterest {
    /// Channel names (topic and direct; canaries are handled by the connection task), and the
    /// version of the set: bumped by every addition, so a caller can wait until the additions
    /// it saw are subscribed in Redis.
    desired: Mutex<(HashSet<String>, u64)>,
    /// Woken whenever `desired` changes.
    pub dirty: Notify,
    /// The newest version of `desired` whose additions Redis confirmed on this connection.
    applied: watch::Sender<u64>,
}

/// Desired channels of every subscriber connection; a channel lives on `connection_of(name)`.
#[derive(Debug)]
pub(crate) struct Interest {
    conns: Vec<ConnInterest>,
}

impl Interest {
    pub(crate) fn new(connections: usize) -> Self {
        Interest {
            conns: (0..connections).map(|_| ConnInterest::default()).collect(),
        }
    }

    pub(crate) fn conn(&self, i: usize) -> &ConnInterest {
        &self.conns[i]
    }

    /// Records ownership of `channel`; true if it was not owned before.
    pub(crate) fn add(&self, channel: String) -> bool {
        let conn = &self.conns[connection_of(&channel, self.conns.len())];
        let added = {
            let mut desired = conn.desired.lock().unwrap();
            let added = desired.0.insert(channel);
            desired.1 += u64::from(added);
            added
        };
        if added {
            conn.dirty.notify_one();
        }
        added
    }

    /// Gives up ownership of `channel`; true if it was owned.
    pub(crate) fn remove(&self, channel: &str) -> bool {
        let conn = &self.conns[connection_of(channel, self.conns.len())];
        let removed = conn.desired.lock().unwrap().0.remove(channel);
        if removed {
            conn.dirty.notify_one();
        }
        removed
    }
}

impl Interest {
    /// Waits (at most `limit`) until `channel`, which this node owns, is subscribed in Redis
    /// on its connection. False when it is not owned or the wait timed out.
    pub(crate) async fn subscribed(&self, channel: &str, limit: Duration) -> bool {
        let conn = &self.conns[connection_of(channel, self.conns.len())];
        let target = {
            let desired = conn.desired.lock().unwrap();
            if !desired.0.contains(channel) {
                return false;
            }
            desired.1
        };
        let mut applied = conn.applied.subscribe();
        let confirmed = tokio::time::timeout(limit, applied.wait_for(|v| *v >= target))
            .await
            .is_ok_and(|r| r.is_ok());
        confirmed
    }
}

/// The subscription commands of one connection kind (RESP2 sink, or cluster sharded).
pub(crate) trait SubscribeOps {
    fn subscribe(
        &mut self,
        channels: Vec<String>,
    ) -> impl Future<Output = redis::RedisResult<()>> + Send;
    fn unsubscribe(
        &mut self,
        channels: Vec<String>,
    ) -> impl Future<Output = redis::RedisResult<()>> + Send;
}

/// Why a (re)subscription did not complete; the connection is then rebuilt or retried.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Batch size and per-command bound for subscription work.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Syncer {
    pub batch: usize,
    pub timeout: Duration,
}

impl Syncer {
    async fn bounded(
        &self,
        fut: impl Future<Output = redis::RedisResult<()>>,
    ) -> Result<(), SyncError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(res) => Ok(res?),
            Err(_) => Err(SyncError::Timeout(self.timeout)),
        }
    }

    /// Subscribes `channels` in batches, each batch awaited (confirmations included).
    pub(crate) async fn subscribe<S: SubscribeOps>(
        &self,
        ops: &mut S,
        channels: &[String],
    ) -> Result<(), SyncError> {
        for chunk in channels.chunks(self.batch) {
            self.bounded(ops.subscribe(chunk.to_vec())).await?;
        }
        Ok(())
    }

    /// Unsubscribes `channels` in batches.
    pub(crate) async fn unsubscribe<S: SubscribeOps>(
        &self,
        ops: &mut S,
        channels: &[String],
    ) -> Result<(), SyncError> {
        for chunk in channels.chunks(self.batch) {
            self.bounded(ops.unsubscribe(chunk.to_vec())).await?;
        }
        Ok(())
    }

    /// After a (re)connect: subscribes everything `conn` owns; `applied` becomes that set.
    pub(crate) async fn full<S: SubscribeOps>(
        &self,
        ops: &mut S,
        conn: &ConnInterest,
        applied: &mut HashSet<String>,
    ) -> Result<usize, SyncError> {
        applied.clear();
        let (wanted, version): (Vec<String>, u64) = {
            let desired = conn.desired.lock().unwrap();
            (desired.0.iter().cloned().collect(), desired.1)
        };
        self.subscribe(ops, &wanted).await?;
        let n = wanted.len();
        applied.extend(wanted);
        conn.applied.send_if_modified(|v| raise(v, version));
        Ok(n)
    }

    /// Steady state: applies the difference between what `conn` owns and `applied`.
    pub(crate) async fn reconcile<S: SubscribeOps>(
        &self,
        ops: &mut S,
        conn: &ConnInterest,
        applied: &mut HashSet<String>,
    ) -> Result<(), SyncError> {
        let (add, remove, version): (Vec<String>, Vec<String>, u64) = {
            let desired = conn.desired.lock().unwrap();
            (
                desired.0.difference(applied).cloned().collect(),
                applied.difference(&desired.0).cloned().collect(),
                desired.1,
            )
        };
        if !add.is_empty() {
            self.subscribe(ops, &add).await?;
            applied.extend(add);
        }
        conn.applied.send_if_modified(|v| raise(v, version));
        if !remove.is_empty() {
            self.unsubscribe(ops, &remove).await?;
            for channel in &remove {
                applied.remove(channel);
            }
        }
        Ok(())
    }
}

/// Raise a confirmed version (never lower it); true when it changed.
fn raise(current: &mut u64, to: u64) -> bool {
    let higher = to > *current;
    if higher {
        *current = to;
    }
    higher
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        log: Vec<(bool, Vec<String>)>,
    }

    impl SubscribeOps for Recorder {
        async fn subscribe(&mut self, channels: Vec<String>) -> redis::RedisResult<()> {
            self.log.push((true, channels));
            Ok(())
        }
        async fn unsubscribe(&mut self, channels: Vec<String>) -> redis::RedisResult<()> {
            self.log.push((false, channels));
            Ok(())
        }
    }

    #[tokio::test]
    async fn batches_and_diffs() {
        let interest = Interest::new(1);
        for i in 0..5 {
            assert!(interest.add(format!("c{i}")));
        }
        assert!(!interest.add("c0".into()), "idempotent");
        let syncer = Syncer {
            batch: 2,
            timeout: Duration::from_secs(1),
        };
        let mut ops = Recorder::default();
        let mut applied = HashSet::new();
        let n = syncer
            .full(&mut ops, interest.conn(0), &mut applied)
            .await
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(ops.log.len(), 3, "5 channels in batches of 2");
        ops.log.clear();
        assert!(interest.remove("c1"));
        assert!(!interest.remove("c1"));
        interest.add("c9".into());
        syncer
            .reconcile(&mut ops, interest.conn(0), &mut applied)
            .await
            .unwrap();
        assert_eq!(
            ops.log,
            vec![
                (true, vec!["c9".to_owned()]),
                (false, vec!["c1".to_owned()])
            ]
        );
        assert_eq!(applied.len(), 5);
    }
}
