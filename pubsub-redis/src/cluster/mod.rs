//! Subscriber connection task for Redis Cluster: sharded pub/sub (SSUBSCRIBE / SPUBLISH) over
//! a redis-rs `cluster_async` connection speaking RESP3, one per subscriber connection index.
//!
//! redis-rs is the only way to follow slots here: it keeps one connection per master, routes
//! each SSUBSCRIBE by slot, reconnects a node after its `Disconnection` push and resubscribes
//! what it tracked there. We do not take that on trust: every `Disconnection` push makes this
//! task report itself not synced and re-issue SSUBSCRIBE for everything it owns (a no-op for
//! channels Redis still has) until that pass succeeds, and readiness further waits for a
//! canary on *every* master (see `topology`) to be heard after the pass. Canaries go out on this
//! same connection, so a dead node connection is exercised and repaired by redis-rs.
//!
//! Measured (tests/cluster.rs, three masters, redis-server 7.0.15): after the master owning a
//! topic's slot was SIGKILLed for 1 s and restarted on its port, delivery and readiness were
//! back ~0.1-0.5 s after the restart; publishes to that shard meanwhile failed within ~40 ms.

pub(crate) mod topology;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use tokio::sync::Notify;

use crate::backoff::Backoff;
use crate::channels::slot;
use crate::dispatch::Dispatcher;
use crate::health::Phase;
use crate::interest::SubscribeOps;
use crate::stats::Counters;
use crate::subscriber::ConnCtx;

/// How often the canary placement is re-derived from `CLUSTER SLOTS`.
const TOPOLOGY_REFRESH: Duration = Duration::from_secs(5);
/// Sharded subscribe commands in flight at once during a bulk (re)subscription.
const PARALLEL: usize = 32;

/// Builds a RESP3 cluster client with short retries (our own timeouts bound every call), and
/// with a push sender that feeds `dispatcher` and signals `disconnected`, when given.
pub(crate) fn client(
    urls: &[String],
    timeout: Duration,
    connect_timeout: Duration,
    pushes: Option<(Arc<Dispatcher>, Arc<Notify>)>,
) -> redis::RedisResult<ClusterClient> {
    let mut builder = ClusterClientBuilder::new(urls.to_vec())
        .use_protocol(redis::ProtocolVersion::RESP3)
        .connection_timeout(connect_timeout)
        .response_timeout(timeout)
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(200);
    if let Some((dispatcher, disconnected)) = pushes {
        builder = builder.push_sender(move |push: redis::PushInfo| {
            if push.kind == redis::PushKind::Disconnection {
                disconnected.notify_one();
            } else if let Some(msg) = redis::Msg::from_push_info(push) {
                dispatcher.on_message(msg.get_channel_name(), msg.get_payload_bytes());
            }
            Ok::<(), std::convert::Infallible>(())
        });
    }
    builder.build()
}

struct Sharded(ClusterConnection);

impl Sharded {
    /// Runs `cmd` for `channels` grouped by slot (a sharded command may not span slots).
    async fn per_slot(
        &mut self,
        cmd: &'static str,
        channels: Vec<String>,
    ) -> redis::RedisResult<()> {
        let mut groups: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for channel in channels {
            groups.entry(slot(&channel)).or_default().push(channel);
        }
        let conn = self.0.clone();
        futures_util::stream::iter(groups.into_values())
            .map(|group| {
                let mut conn = conn.clone();
                async move {
                    if cmd == "SSUBSCRIBE" {
                        conn.ssubscribe(group).await
                    } else {
                        conn.sunsubscribe(group).await
                    }
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<()>()
            .await
    }
}

impl SubscribeOps for Sharded {
    async fn subscribe(&mut self, channels: Vec<String>) -> redis::RedisResult<()> {
        self.per_slot("SSUBSCRIBE", channels).await
    }
    async fn unsubscribe(&mut self, channels: Vec<String>) -> redis::RedisResult<()> {
        self.per_slot("SUNSUBSCRIBE", channels).await
    }
}

/// Runs one sharded subscriber connection forever (until the adapter aborts it).
pub(crate) async fn run(ctx: Arc<ConnCtx>, urls: Vec<String>, timeout: Duration) {
    let idx = ctx.idx;
    let disconnected = Arc::new(Notify::new());
    let mut backoff = Backoff::new(ctx.max_backoff);
    let mut first = true;
    'rebuild: loop {
        ctx.health.set_phase(idx, Phase::Connecting);
        let pushes = Some((ctx.dispatcher.clone(), disconnected.clone()));
        let conn = match client(&urls, timeout, ctx.connect_timeout, pushes) {
            Ok(c) => tokio::time::timeout(ctx.connect_timeout, c.get_async_connection()).await,
            Err(err) => Ok(Err(err)),
        };
        let mut ops = match conn {
            Ok(Ok(conn)) => Sharded(conn),
            _ => {
                tracing::debug!(conn = idx, "cluster subscriber connect failed");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        let mut canaries: Vec<String> = Vec::new();
        let mut failures = 0;
        'resync: loop {
            ctx.health.set_phase(idx, Phase::Subscribing);
            if failures > 0 {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            if failures >= 10 {
                Counters::bump(&ctx.counters.reconnects);
                continue 'rebuild;
            }
            let started = Instant::now();
            let mut applied = HashSet::new();
            let masters = match topology::fetch(&mut ops.0).await {
                Ok(Some(m)) if !m.is_empty() => m,
                _ => {
                    failures += 1;
                    continue 'resync;
                }
            };
            let fresh = topology::canary_channels(&masters, &ctx.names, idx);
            let stale: Vec<String> = canaries
                .iter()
                .filter(|c| !fresh.contains(c))
                .cloned()
                .collect();
            let synced = async {
                let n = ctx
                    .syncer
                    .full(&mut ops, ctx.interest(), &mut applied)
                    .await?;
                ctx.syncer.subscribe(&mut ops, &fresh).await?;
                // Old canaries would only leak subscriptions; failing to drop them is harmless.
                let _ = ctx.syncer.unsubscribe(&mut ops, &stale).await;
                Ok::<usize, crate::interest::SyncError>(n)
            }
            .await;
            match synced {
                Ok(n) => {
                    canaries = fresh;
                    ctx.health.set_canaries(idx, &canaries);
                    if !first {
                        Counters::bump(&ctx.counters.resubscribes);
                        tracing::info!(conn = idx, channels = n, took = ?started.elapsed(), "resubscribed (cluster)");
                    }
                    first = false;
                    failures = 0;
                    backoff.reset();
                    ctx.health.set_phase(idx, Phase::Synced(Instant::now()));
                }
                Err(err) => {
                    tracing::debug!(conn = idx, %err, "cluster resubscription failed; retrying");
                    failures += 1;
                    continue 'resync;
                }
            }
            // The first canary goes out at once: hear ourselves as soon as we are subscribed.
            let mut next_canary = tokio::time::Instant::now();
            let mut topology_tick = tokio::time::interval(TOPOLOGY_REFRESH);
            topology_tick.tick().await;
            loop {
                tokio::select! {
                    _ = disconnected.notified() => {
                        tracing::warn!(conn = idx, "cluster node connection lost; resubscribing");
                        Counters::bump(&ctx.counters.reconnects);
                        continue 'resync;
                    }
                    _ = ctx.interest().dirty.notified() => {
                        if let Err(err) = ctx.syncer.reconcile(&mut ops, ctx.interest(), &mut applied).await {
                            tracing::warn!(conn = idx, %err, "sharded subscription update failed");
                            failures += 1;
                            continue 'resync;
                        }
                    }
                    _ = tokio::time::sleep_until(next_canary) => {
                        if ctx.health.is_deaf(idx) {
                            tracing::warn!(conn = idx, "cluster connection deaf to a canary; rebuilding");
                            Counters::bump(&ctx.counters.reconnects);
                            continue 'rebuild;
                        }
                        spawn_canaries(&ctx, &ops.0, timeout);
                        next_canary = ctx.next_canary();
                    }
                    _ = topology_tick.tick() => {
                        let moved = match topology::fetch(&mut ops.0).await {
                            Ok(Some(m)) => topology::canary_channels(&m, &ctx.names, idx) != canaries,
                            _ => false,
                        };
                        if moved {
                            tracing::info!(conn = idx, "cluster topology changed; resubscribing");
                            continue 'resync;
                        }
                    }
                }
            }
        }
    }
}

/// SPUBLISHes this connection's canaries over the connection itself, detached and bounded.
fn spawn_canaries(ctx: &ConnCtx, conn: &ClusterConnection, timeout: Duration) {
    let channels = ctx.health.canaries(ctx.idx);
    let (health, mut conn, idx) = (ctx.health.clone(), conn.clone(), ctx.idx);
    tokio::spawn(async move {
        for channel in channels {
            let mut cmd = redis::cmd("SPUBLISH");
            cmd.arg(&channel).arg(&health.stamp()[..]);
            let publish = cmd.query_async::<u64>(&mut conn);
            if let Ok(Ok(_)) = tokio::time::timeout(timeout, publish).await {
                health.sent(idx, &channel);
            }
        }
    });
}
