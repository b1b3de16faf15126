//! Glue: the `pubsub-redis` adapter behind the `PubSub` trait. The trait's sends are
//! fire-and-forget and never block a session, so publishes go through a few bounded lanes
//! (topics hashed to a lane, which keeps each topic's order) drained by tasks that await Redis.
//! A full lane drops the message and counts it; while Redis is down the adapter fails each
//! publish fast (counted), so nothing queues without bound. Inbound, the adapter's reader
//! decodes each envelope into a `ClusterMessage` (`cluster::codec`) and offers it straight to
//! the node's `Inbox`: one queue, one overflow rule. The adapter's counters and health are
//! mirrored into metrics at each scrape.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use pubsub_redis::{Accepted, Health, Incoming, RedisPubSub, Sink, Stats};
#[cfg(test)]
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::debug;

use super::{Inbox, PubSub};
use crate::cluster::{codec, ClusterMessage, Route};
use crate::metrics::Metrics;

const LANES: usize = 4;
const LANE_CAPACITY: usize = 8192;

enum Send {
    Topic(String, ClusterMessage),
    Direct(String, ClusterMessage),
}

/// What the adapter's reader hands every message to: decoded and offered to the node's inbox.
#[derive(Debug)]
struct ToNode {
    /// This node's id (an echo of its own positioned broadcast keeps its `except`).
    node_id: String,
    /// The node's delivery queue.
    inbox: Inbox,
    /// Where undecodable kinds are counted.
    metrics: Arc<Metrics>,
}

impl Sink for ToNode {
    fn deliver(&self, msg: Incoming) -> Accepted {
        let (route, mut env) = match msg {
            Incoming::Topic(env) => (Route::Topic, env),
            Incoming::Direct(env) => (Route::Direct, env),
        };
        // Session keys are per node: an exception only means something in the origin's echo.
        if env.origin != self.node_id {
            env.except = None;
        }
        match codec::decode(route, env) {
            Ok(msg) => {
                if self.inbox.offer(msg) {
                    Accepted::Yes
                } else {
                    Accepted::Rejected // a full inbox counted the drop itself
                }
            }
            Err(why) => {
                debug!(reason = why.label(), "cluster message dropped");
                self.metrics.dropped(why.label());
                Accepted::Rejected
            }
        }
    }
}

/// The Redis adapter as a node's PubSub.
pub struct RedisAdapter {
    /// The leaf adapter.
    redis: RedisPubSub,
    /// Publish lanes.
    lanes: Box<[mpsc::Sender<Send>]>,
    /// Picks a topic's lane.
    hasher: RandomState,
    /// Readiness from the never-deaf canaries.
    health: watch::Receiver<Health>,
    /// Where the adapter's counters are mirrored.
    metrics: Arc<Metrics>,
    /// Longest wait for a subscription to take effect (the publish timeout).
    subscribe_wait: std::time::Duration,
    /// Counters at the previous mirroring (Prometheus counters only go up by deltas).
    last: Mutex<Stats>,
    /// Background tasks, aborted with the adapter.
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RedisAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAdapter")
            .field("node_id", &self.redis.node_id())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisAdapter {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RedisAdapter {
    /// Connect, and start delivering to `inbox`.
    pub async fn start(
        config: pubsub_redis::Config,
        metrics: Arc<Metrics>,
        inbox: Inbox,
    ) -> Result<Self, pubsub_redis::Error> {
        let subscribe_wait = config.publish_timeout;
        let sink = Arc::new(ToNode {
            node_id: config.node_id.clone().unwrap_or_default(),
            inbox,
            metrics: metrics.clone(),
        });
        let redis = RedisPubSub::start_with(config, sink).await?;
        let mut tasks = Vec::with_capacity(LANES);
        let mut lanes = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            let (tx, mut rx) = mpsc::channel::<Send>(LANE_CAPACITY);
            let redis = redis.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(send) = rx.recv().await {
                    let origin = redis.node_id();
                    let result = match send {
                        Send::Topic(topic, m) => {
                            let env = codec::encode(origin, &topic, &m);
                            redis.publish(&topic, &env).await
                        }
                        Send::Direct(node, m) => {
                            redis.direct(&node, &codec::encode(origin, "", &m)).await
                        }
                    };
                    if let Err(e) = result {
                        debug!(error = %e, "publish failed");
                    }
                }
            }));
            lanes.push(tx);
        }
        let health = redis.health();
        Ok(RedisAdapter {
            redis,
            lanes: lanes.into(),
            hasher: RandomState::new(),
            health,
            metrics,
            subscribe_wait,
            last: Mutex::default(),
            tasks,
        })
    }

    fn lane(&self, key: &str, send: Send) {
        let lane = &self.lanes[self.hasher.hash_one(key) as usize % LANES];
        if lane.try_send(send).is_err() {
            self.metrics
                .pubsub_dropped
                .with_label_values(&["publish_queue_full"])
                .inc();
        }
    }
}

impl RedisAdapter {
    /// The leaf adapter (the Redis history store runs its scripts through it).
    pub fn redis(&self) -> &RedisPubSub {
        &self.redis
    }

    /// Mirror the adapter's counters and health into Prometheus (called at each scrape, so
    /// the exported values are never stale).
    fn refresh(&self) {
        let metrics = &self.metrics;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.redis.stats();
        let delta = |new: u64, old: u64| new.saturating_sub(old);
        metrics
            .pubsub_published
            .inc_by(delta(now.published, last.published));
        metrics
            .pubsub_publish_errors
            .inc_by(delta(now.publish_errors, last.publish_errors));
        metrics
            .pubsub_received
            .inc_by(delta(now.received, last.received));
        metrics
            .pubsub_resubscribes
            .inc_by(delta(now.resubscribes, last.resubscribes));
        metrics
            .pubsub_reconnects
            .inc_by(delta(now.reconnects, last.reconnects));
        let dropped = &metrics.pubsub_dropped;
        dropped
            .with_label_values(&["own_echo"])
            .inc_by(delta(now.dropped_echoes, last.dropped_echoes));
        dropped
            .with_label_values(&["undecodable"])
            .inc_by(delta(now.decode_errors, last.decode_errors));
        metrics.pubsub_topics.set(now.subscribed_topics as i64);
        *last = now;
        let h = self.health.borrow().clone();
        metrics.pubsub_healthy.set(i64::from(h.ready));
        if let Some(rtt) = h.canary_rtt {
            metrics.pubsub_canary_rtt.observe(rtt.as_secs_f64());
        }
    }
}

impl PubSub for RedisAdapter {
    fn node_id(&self) -> &str {
        self.redis.node_id()
    }

    fn subscribe(&self, topic: &str) {
        self.redis.subscribe(topic);
    }

    fn unsubscribe(&self, topic: &str) {
        self.redis.unsubscribe(topic);
    }

    fn subscribed<'a>(&'a self, topic: &'a str) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            if !self.redis.subscribed(topic, self.subscribe_wait).await {
                debug!(topic, "subscription not confirmed in time");
            }
        })
    }

    fn publish(&self, topic: &str, msg: ClusterMessage) {
        self.lane(topic, Send::Topic(topic.to_owned(), msg));
    }

    fn direct(&self, node_id: &str, msg: ClusterMessage) {
        self.lane(node_id, Send::Direct(node_id.to_owned(), msg));
    }

    fn is_ready(&self) -> bool {
        self.health.borrow().ready
    }

    fn refresh_metrics(&self) {
        self.refresh();
    }
}

#[cfg(test)]
mod tests {
    //! The shared conformance suite against a real `redis-server` this test starts.
    use super::*;
    use crate::pubsub::SharedPubSub;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_adapter_passes_the_conformance_suite() {
        let server = testkit::redis::RedisServer::start().await;
        let url = server.url();
        crate::pubsub::conformance::run(|id| {
            let url = url.clone();
            async move {
                let metrics = Arc::new(Metrics::new());
                let (inbox, rx) = Inbox::new(metrics.clone());
                let config = pubsub_redis::Config {
                    urls: vec![url],
                    node_id: Some(id),
                    ..pubsub_redis::Config::default()
                };
                let adapter = RedisAdapter::start(config, metrics, inbox).await.unwrap();
                // `start` does not wait for Redis: the suite begins once the node hears itself.
                let mut health = adapter.health.clone();
                tokio::time::timeout(Duration::from_secs(10), health.wait_for(|h| h.ready))
                    .await
                    .expect("adapter never became ready")
                    .unwrap();
                let ps: SharedPubSub = Arc::new(adapter);
                (ps, rx)
            }
        })
        .await;
    }
}
