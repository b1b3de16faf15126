//! Test support of this crate: a node (`RedisPubSub`) started against test servers, awaiting
//! its health and its messages with deadlines, and a proxy that freezes connections. The
//! redis-server processes, Redis Cluster and `eventually` come from the shared `testkit`.
#![allow(dead_code)]

pub mod proxy;

use std::time::{Duration, Instant};

use pubsub_redis::{Config, Health, Incoming, RedisPubSub};
use tokio::sync::{mpsc, watch};

/// Logs to the test output when RUST_LOG is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A config for a test node against `urls`.
pub fn config(urls: Vec<String>, node: &str) -> Config {
    Config {
        urls,
        node_id: Some(node.to_owned()),
        ..Config::default()
    }
}

/// Starts a node and waits until it is ready.
pub async fn node(config: Config) -> (RedisPubSub, mpsc::Receiver<Incoming>) {
    let (node, rx) = RedisPubSub::start(config).await.expect("start");
    wait_health(&node.health(), true, Duration::from_secs(5)).await;
    (node, rx)
}

/// Waits until `ready` has the wanted value; returns how long that took.
pub async fn wait_health(rx: &watch::Receiver<Health>, ready: bool, within: Duration) -> Duration {
    let started = Instant::now();
    let mut rx = rx.clone();
    let reached = tokio::time::timeout(within, rx.wait_for(|h| h.ready == ready))
        .await
        .is_ok_and(|r| r.is_ok());
    let now = rx.borrow().clone();
    assert!(
        reached,
        "health never became ready={ready} within {within:?}: {now:?}"
    );
    started.elapsed()
}

/// The next message, or `None` if nothing arrives within `within`.
pub async fn recv(rx: &mut mpsc::Receiver<Incoming>, within: Duration) -> Option<Incoming> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

/// Publishes a probe on `room:1` from `from` every `every` until `to_rx` receives one; returns
/// how long that took, panics after `within`.
pub async fn probe(
    from: &RedisPubSub,
    to_rx: &mut mpsc::Receiver<Incoming>,
    every: Duration,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    while started.elapsed() < within {
        let env = from.envelope("room:1", "probe", &b"{}"[..], false);
        let _ = from.publish("room:1", &env).await;
        if let Some(Incoming::Topic(env)) = recv(to_rx, every).await {
            if env.event == "probe" {
                return started.elapsed();
            }
        }
    }
    panic!("no probe delivered within {within:?}");
}
