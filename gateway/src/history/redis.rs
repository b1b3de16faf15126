//! The cluster's history store: topic histories in Redis, through the script of
//! `pubsub_redis::history`, which stores, numbers and publishes a broadcast in one step.
//! Nothing is delivered here: every node, the origin included, delivers a positioned broadcast
//! when Redis publishes it, so every node delivers a topic in position order.

use std::sync::Arc;

use async_trait::async_trait;
use pubsub_redis::{RedisPubSub, Retention};

use super::{Deliver, HistoryError, HistoryStore, Limits, Position, Recovered, Recovery, Stored};
use crate::cluster::{codec, Broadcast, ClusterMessage, Route};

/// Topic histories in the cluster's Redis.
#[derive(Debug, Clone)]
pub struct RedisHistory {
    /// The node's Redis adapter (its publishing connection runs the scripts).
    redis: RedisPubSub,
}

impl RedisHistory {
    /// A store on the node's adapter.
    pub fn new(redis: RedisPubSub) -> Self {
        RedisHistory { redis }
    }
}

fn retention(limits: Limits) -> Retention {
    Retention {
        size: limits.size.max(1),
        ttl_secs: limits.ttl.as_secs().max(1),
    }
}

fn unavailable(e: pubsub_redis::Error) -> HistoryError {
    HistoryError::Unavailable(e.to_string())
}

#[async_trait]
impl HistoryStore for RedisHistory {
    async fn append(
        &self,
        msg: Broadcast,
        limits: Limits,
        idempotency_key: Option<&str>,
        _deliver: Deliver<'_>,
    ) -> Result<Stored, HistoryError> {
        let topic = msg.topic.clone();
        let env = codec::encode(
            self.redis.node_id(),
            &topic,
            &ClusterMessage::Broadcast(Arc::new(msg)),
        );
        let appended = self
            .redis
            .history_append(&env, retention(limits), idempotency_key)
            .await
            .map_err(unavailable)?;
        let position = Position::parse(&appended.position)
            .ok_or(HistoryError::BadPosition(appended.position))?;
        Ok(Stored {
            position,
            fresh: appended.fresh,
        })
    }

    async fn since(
        &self,
        topic: &str,
        since: Option<&Position>,
        limits: Limits,
    ) -> Result<Recovered, HistoryError> {
        let read = self
            .redis
            .history_read(
                topic,
                retention(limits).ttl_secs,
                since.map(|p| (&*p.epoch, p.offset)),
            )
            .await
            .map_err(unavailable)?;
        let latest = Position::parse(&format!("{}-{}", read.epoch, read.last))
            .ok_or_else(|| HistoryError::BadPosition(read.epoch.clone()))?;
        // Entries are decoded like live ones; one that is not a positioned broadcast of this
        // topic makes the recovery inexact rather than wrong.
        let exact = read.after.and_then(|envs| {
            envs.into_iter()
                .map(|env| match codec::decode(Route::Topic, env) {
                    Ok(ClusterMessage::Broadcast(mut b))
                        if b.topic == topic && b.position.is_some() =>
                    {
                        Arc::make_mut(&mut b).except = None;
                        Some(b)
                    }
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
        });
        Ok(Recovered {
            latest,
            recovery: exact.map_or(Recovery::NotExact, Recovery::Exact),
        })
    }
}

#[cfg(test)]
mod tests {
    //! The shared conformance suite against a real `redis-server` this test starts.
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_store_passes_the_conformance_suite() {
        let server = testkit::redis::RedisServer::start().await;
        let config = pubsub_redis::Config {
            urls: vec![server.url()],
            ..pubsub_redis::Config::default()
        };
        let (redis, _incoming) = RedisPubSub::start(config).await.unwrap();
        let mut health = redis.health();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            health.wait_for(|h| h.ready),
        )
        .await
        .expect("adapter never became ready")
        .unwrap();
        super::super::conformance::run(&RedisHistory::new(redis)).await;
    }
}
