//! [`RedisPubSub`]: the handle the gateway holds. It starts the background tasks, records topic
//! ownership without waiting, publishes with a bound, and exposes health and counters.
//! Dropping the last clone of the handle stops every task it started.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::backoff::AbortOnDrop;
use crate::channels::ChannelNames;
use crate::config::Config;
use crate::dispatch::{Dispatcher, Incoming, Sink};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::health::{Health, HealthTracker};
use crate::interest::{Interest, Syncer};
use crate::publisher::{Publisher, Target};
use crate::stats::{Counters, Stats};
use crate::subscriber::ConnCtx;
use crate::{cluster, standalone};

/// A running Redis pub/sub adapter for one node. Cheap to clone; all clones share one set of
/// connections, and the last one dropped stops them.
#[derive(Debug, Clone)]
pub struct RedisPubSub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// This node's id.
    node_id: String,
    /// Channel naming.
    names: ChannelNames,
    /// Owned channels per subscriber connection.
    interest: Arc<Interest>,
    /// The publishing connection.
    publisher: Arc<Publisher>,
    /// Counters.
    counters: Arc<Counters>,
    /// Readiness.
    health: Arc<HealthTracker>,
    /// Background tasks, aborted when the last handle goes.
    _tasks: Vec<AbortOnDrop>,
}

impl RedisPubSub {
    /// Validates `config`, starts the connections in the background and returns the handle
    /// with the bounded queue of messages for this node (capacity `incoming_capacity`; a full
    /// queue drops and counts).
    ///
    /// Does not wait for Redis: if Redis is down the node starts not-ready and connects when
    /// it can. If Redis is reachable (standalone), fails with [`Error::DuplicateNodeId`] when
    /// another live node already listens on this node id's direct channel.
    pub async fn start(config: Config) -> Result<(Self, mpsc::Receiver<Incoming>), Error> {
        let (tx, rx) = mpsc::channel(config.incoming_capacity);
        Ok((Self::start_with(config, Arc::new(tx)).await?, rx))
    }

    /// [`RedisPubSub::start`], handing every message for this node to `sink` instead of a queue
    /// (on the Redis reader task: the sink must not wait).
    pub async fn start_with(config: Config, sink: Arc<dyn Sink>) -> Result<Self, Error> {
        config.validate()?;
        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("n{:016x}", rand::random::<u64>()));
        let k = config.subscriber_connections;
        let names = ChannelNames::new(&config.prefix, &node_id, config.cluster);
        let counters = Arc::new(Counters::default());
        let health = Arc::new(HealthTracker::new(k, config.not_ready_after));
        let interest = Arc::new(Interest::new(k));
        let dispatcher = Arc::new(Dispatcher {
            names: names.clone(),
            node_id: node_id.clone(),
            sink,
            counters: counters.clone(),
            health: health.clone(),
        });

        let standalone_client = if config.cluster {
            None
        } else {
            Some(redis::Client::open(config.urls[0].as_str()).map_err(Error::Client)?)
        };
        let target = match &standalone_client {
            Some(client) => Target::Standalone(client.clone()),
            None => Target::Cluster(Box::new(
                cluster::client(
                    &config.urls,
                    config.publish_timeout,
                    config.connect_timeout,
                    None,
                )
                .map_err(Error::Client)?,
            )),
        };
        let publisher = Arc::new(Publisher::new(
            target,
            config.publish_timeout,
            config.connect_timeout,
        ));
        let direct_channel = names.node(&node_id);
        if publisher.connect_once().await.is_ok() && standalone_client.is_some() {
            if let Ok(n) = publisher.numsub(&direct_channel).await {
                if n > 0 {
                    return Err(Error::DuplicateNodeId(node_id));
                }
            }
        }
        interest.add(direct_channel);

        let mut tasks = Vec::with_capacity(k + 2);
        let p = publisher.clone();
        let max_backoff = config.reconnect_max_backoff;
        tasks.push(spawn(async move { p.run_connector(max_backoff).await }));
        let h = health.clone();
        // Staleness is a matter of time passing, so readiness is also re-evaluated on a tick.
        let period = (config.not_ready_after / 10).min(Duration::from_millis(100));
        tasks.push(spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                h.evaluate();
            }
        }));
        for idx in 0..k {
            let ctx = Arc::new(ConnCtx {
                idx,
                names: names.clone(),
                interest: interest.clone(),
                dispatcher: dispatcher.clone(),
                health: health.clone(),
                counters: counters.clone(),
                publisher: publisher.clone(),
                syncer: Syncer {
                    batch: config.subscribe_batch,
                    timeout: config.publish_timeout,
                },
                connect_timeout: config.connect_timeout,
                max_backoff,
                canary_interval: config.canary_interval,
            });
            tasks.push(match &standalone_client {
                Some(client) => spawn(standalone::run(ctx, client.clone())),
                None => spawn(cluster::run(
                    ctx,
                    config.urls.clone(),
                    config.publish_timeout,
                )),
            });
        }
        tracing::info!(node_id = %node_id, cluster = config.cluster, connections = k, "redis pubsub started");
        let inner = Inner {
            node_id,
            names,
            interest,
            publisher,
            counters,
            health,
            _tasks: tasks,
        };
        Ok(RedisPubSub {
            inner: Arc::new(inner),
        })
    }

    /// This node's id (the origin of its envelopes, the name of its direct channel).
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The Redis channel a topic travels on (for diagnostics and tests).
    pub fn topic_channel(&self, topic: &str) -> String {
        self.inner.names.topic(topic)
    }

    /// The Redis channel of a node's direct messages (for diagnostics and tests).
    pub fn node_channel(&self, node_id: &str) -> String {
        self.inner.names.node(node_id)
    }

    /// Starts receiving `topic` on this node. Never waits: records ownership and lets the
    /// topic's subscriber connection do the Redis work in the background. Idempotent; returns
    /// true if the topic was not owned before. Call it when the first local subscriber of a
    /// topic arrives.
    pub fn subscribe(&self, topic: &str) -> bool {
        let added = self.inner.interest.add(self.inner.names.topic(topic));
        if added {
            self.inner.counters.subscribed_topics.fetch_add(1, Relaxed);
        }
        added
    }

    /// Stops receiving `topic` (after its last local subscriber left). Never waits;
    /// idempotent; returns true if the topic was owned.
    pub fn unsubscribe(&self, topic: &str) -> bool {
        let removed = self.inner.interest.remove(&self.inner.names.topic(topic));
        if removed {
            self.inner.counters.subscribed_topics.fetch_sub(1, Relaxed);
        }
        removed
    }

    /// Waits (at most `limit`) until this node's subscription to `topic` is confirmed by
    /// Redis, so what is published afterwards reaches it (a topic's history read after that
    /// misses nothing). False when the topic is not owned or the wait timed out.
    pub async fn subscribed(&self, topic: &str, limit: Duration) -> bool {
        let channel = self.inner.names.topic(topic);
        self.inner.interest.subscribed(&channel, limit).await
    }

    /// A broadcast envelope from this node.
    pub fn envelope(
        &self,
        topic: &str,
        event: &str,
        payload: impl Into<Bytes>,
        binary: bool,
    ) -> Envelope {
        Envelope::new(self.inner.node_id.as_str(), topic, event, payload, binary)
    }

    /// Broadcasts `envelope` to every node subscribed to `topic` (this node drops its own
    /// echo). Returns how many subscriber connections Redis delivered it to (this node's own
    /// included when it is subscribed; in cluster mode, counted on the topic's shard).
    /// Bounded by `publish_timeout`; fails at once with [`Error::Unavailable`] while the
    /// publishing connection is known to be down. Failures are counted in `publish_errors`.
    pub async fn publish(&self, topic: &str, envelope: &Envelope) -> Result<u64, Error> {
        if envelope.topic != topic {
            Counters::bump(&self.inner.counters.publish_errors);
            return Err(Error::TopicMismatch {
                topic: topic.to_owned(),
                envelope: envelope.topic.clone(),
            });
        }
        self.send(&self.inner.names.topic(topic), envelope).await
    }

    /// Sends `envelope` to the node `node_id` only (its direct channel). Returns 1 if that node
    /// is listening, 0 if no such node is (the message is then lost). Same bounds and
    /// failure behaviour as [`RedisPubSub::publish`].
    pub async fn direct(&self, node_id: &str, envelope: &Envelope) -> Result<u64, Error> {
        self.send(&self.inner.names.node(node_id), envelope).await
    }

    async fn send(&self, channel: &str, envelope: &Envelope) -> Result<u64, Error> {
        let result = match envelope.encode() {
            Ok(bytes) => self.inner.publisher.publish(channel, &bytes).await,
            Err(err) => Err(err.into()),
        };
        let counter = match result {
            Ok(_) => &self.inner.counters.published,
            Err(_) => &self.inner.counters.publish_errors,
        };
        Counters::bump(counter);
        result
    }

    /// The publishing connection (the history scripts run on it).
    pub(crate) fn publisher(&self) -> &Publisher {
        &self.inner.publisher
    }

    /// Channel and key naming.
    pub(crate) fn names(&self) -> &ChannelNames {
        &self.inner.names
    }

    /// Counters (history appends count as publishes).
    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Readiness: `ready` is true only while every subscriber connection owns all of this
    /// node's subscriptions and hears its own canary. `borrow()` it for `/readyz`, or await
    /// `changed()` for transitions.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.inner.health.subscribe()
    }

    /// A snapshot of the counters, for metrics.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }
}

fn spawn(fut: impl std::future::Future<Output = ()> + Send + 'static) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(fut))
}
