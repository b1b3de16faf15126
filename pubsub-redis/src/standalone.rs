//! Subscriber connection task for a standalone Redis: a dedicated RESP2 `aio::PubSub`
//! connection with our own reconnect loop.
//!
//! Why not the RESP3 `ConnectionManager` with automatic resubscription (also measured in
//! `reference/rust-stack.md`: ~100 ms to recover after `CLIENT KILL`)? Because readiness must
//! mean "subscribed to everything owned": here every SUBSCRIBE batch is awaited with its
//! confirmations, so the task knows exactly when the resubscription is complete, while the
//! manager resubscribes invisibly. Owning the connection also lets the deaf watchdog tear down
//! a connection that looks alive but no longer hears its canary (half-open TCP), which the
//! manager offers no way to do, and RESP2 works through proxies and servers without HELLO 3.
//! Measured with this loop (tests/fault.rs, redis-server 7.0.15, K = 2, 301 topics): after
//! `CLIENT KILL TYPE pubsub` delivery and readiness are back in ~0.05 s; after a SIGKILLed
//! redis-server has been down 1 s and restarts on its port, delivery resumes in ~0.3 s (the
//! reconnect backoff is at its 0.5 s cap by then) and readiness with it; a connection frozen
//! by a proxy (no FIN, no data) is not-ready after `not_ready_after` and rebuilt after twice
//! that.
//!
//! Loop: connect (bounded) -> spawn the reader -> subscribe all owned channels in batches,
//! then the canary -> report synced -> steady state (apply interest changes, publish canaries,
//! watch for loss or deafness) -> on any failure drop everything and start over with backoff.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use redis::aio::PubSubSink;

use crate::backoff::{AbortOnDrop, Backoff};
use crate::health::Phase;
use crate::interest::SubscribeOps;
use crate::stats::Counters;
use crate::subscriber::ConnCtx;

struct Resp2<'a>(&'a mut PubSubSink);

impl SubscribeOps for Resp2<'_> {
    async fn subscribe(&mut self, channels: Vec<String>) -> redis::RedisResult<()> {
        self.0.subscribe(channels).await
    }
    async fn unsubscribe(&mut self, channels: Vec<String>) -> redis::RedisResult<()> {
        self.0.unsubscribe(channels).await
    }
}

/// Runs one subscriber connection forever (until the adapter aborts it).
pub(crate) async fn run(ctx: Arc<ConnCtx>, client: redis::Client) {
    let idx = ctx.idx;
    let canary = ctx.names.canary(idx);
    ctx.health.set_canaries(idx, std::slice::from_ref(&canary));
    let mut backoff = Backoff::new(ctx.max_backoff);
    let mut first = true;
    loop {
        ctx.health.set_phase(idx, Phase::Connecting);
        let connected = tokio::time::timeout(ctx.connect_timeout, client.get_async_pubsub()).await;
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(err)) => {
                tracing::debug!(conn = idx, %err, "subscriber connect failed");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(_) => {
                tracing::debug!(conn = idx, "subscriber connect timed out");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        ctx.health.set_phase(idx, Phase::Subscribing);
        let (mut sink, mut stream) = pubsub.split();
        let dispatcher = ctx.dispatcher.clone();
        let mut reader = AbortOnDrop(tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                dispatcher.on_message(msg.get_channel_name(), msg.get_payload_bytes());
            }
        }));

        let started = Instant::now();
        let mut applied = HashSet::new();
        let mut ops = Resp2(&mut sink);
        let synced = match ctx
            .syncer
            .full(&mut ops, ctx.interest(), &mut applied)
            .await
        {
            Ok(n) => ctx
                .syncer
                .subscribe(&mut ops, std::slice::from_ref(&canary))
                .await
                .map(|()| n),
            Err(err) => Err(err),
        };
        match synced {
            Ok(n) => {
                if !first {
                    Counters::bump(&ctx.counters.resubscribes);
                    tracing::info!(conn = idx, channels = n, took = ?started.elapsed(), "resubscribed");
                }
                first = false;
                backoff.reset();
                ctx.health.set_phase(idx, Phase::Synced(Instant::now()));
            }
            Err(err) => {
                tracing::warn!(conn = idx, %err, "subscribing failed; reconnecting");
                Counters::bump(&ctx.counters.reconnects);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        }
        // The first canary goes out at once: hear ourselves as soon as we are subscribed.
        let mut next_canary = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = &mut reader.0 => {
                    tracing::warn!(conn = idx, "subscriber connection lost");
                    break;
                }
                _ = ctx.interest().dirty.notified() => {
                    if let Err(err) = ctx.syncer.reconcile(&mut ops, ctx.interest(), &mut applied).await {
                        tracing::warn!(conn = idx, %err, "subscription update failed; reconnecting");
                        break;
                    }
                }
                _ = tokio::time::sleep_until(next_canary) => {
                    if ctx.health.is_deaf(idx) {
                        tracing::warn!(conn = idx, "subscriber connection deaf to its canary; reconnecting");
                        break;
                    }
                    ctx.spawn_canaries();
                    next_canary = ctx.next_canary();
                }
            }
        }
        Counters::bump(&ctx.counters.reconnects);
        ctx.health.set_phase(idx, Phase::Connecting);
    }
}
