//! Faults against a real redis-server: SIGKILL + restart on the same port, `CLIENT KILL TYPE
//! pubsub`, and starting while Redis is down. Each measures what it asserts and prints the
//! timings (`cargo test -- --nocapture`).

mod support;

use std::time::{Duration, Instant};

use pubsub_redis::{Error, Incoming, RedisPubSub};
use support::{config, init_tracing, node, probe, wait_health};
use testkit::eventually;
use testkit::redis::{free_port, RedisServer};
use tokio::sync::mpsc;

const TOPICS: usize = 300;
/// How often a probe is published while waiting for delivery to resume.
const PACE: Duration = Duration::from_millis(50);
/// How soon delivery must resume.
const RESUME: Duration = Duration::from_secs(2);

async fn owned_channels(redis: &RedisServer) -> usize {
    let chans: Vec<String> = redis
        .query(redis::cmd("PUBSUB").arg("CHANNELS").arg("gw:t:*"))
        .await;
    chans.len()
}

async fn two_nodes(redis: &RedisServer) -> (RedisPubSub, RedisPubSub, mpsc::Receiver<Incoming>) {
    let (a, _a_rx) = node(config(vec![redis.url()], "a")).await;
    let (b, b_rx) = node(config(vec![redis.url()], "b")).await;
    b.subscribe("room:1");
    for i in 0..TOPICS {
        b.subscribe(&format!("many:{i}"));
    }
    eventually(Duration::from_secs(2), "b owns its topics", || async {
        owned_channels(redis).await == TOPICS + 1
    })
    .await;
    (a, b, b_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_recovers() {
    init_tracing();
    let mut redis = RedisServer::start().await;
    let (a, b, mut b_rx) = two_nodes(&redis).await;
    probe(&a, &mut b_rx, PACE, RESUME).await;

    redis.kill();
    let killed = Instant::now();
    let to_not_ready = wait_health(&b.health(), false, Duration::from_secs(4)).await;
    wait_health(&a.health(), false, Duration::from_secs(4)).await;

    // A one-second outage: publishes keep failing fast (never waiting for the timeout) and
    // are counted, while the reconnect backoff grows to its maximum.
    let errors_before = a.stats().publish_errors;
    let mut slowest = Duration::ZERO;
    let mut attempts = 0;
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    while killed.elapsed() < Duration::from_secs(1) {
        pace.tick().await;
        let started = Instant::now();
        let env = a.envelope("room:1", "lost", &b"{}"[..], false);
        let result = a.publish("room:1", &env).await;
        slowest = slowest.max(started.elapsed());
        attempts += 1;
        assert!(result.is_err(), "publish succeeded with Redis down");
    }
    assert!(
        slowest < Duration::from_millis(250),
        "slowest failing publish {slowest:?}"
    );
    assert_eq!(a.stats().publish_errors, errors_before + attempts);
    let env = a.envelope("room:1", "lost", &b"{}"[..], false);
    assert!(matches!(
        a.publish("room:1", &env).await,
        Err(Error::Unavailable)
    ));

    let resubscribes_before = b.stats().resubscribes;
    redis.restart().await;
    let back = Instant::now();
    let delivered = probe(&a, &mut b_rx, PACE, RESUME).await;
    let ready = wait_health(&b.health(), true, Duration::from_secs(3)).await;
    let since_back = back.elapsed();
    assert_eq!(
        owned_channels(&redis).await,
        TOPICS + 1,
        "every topic resubscribed"
    );
    assert!(
        b.stats().resubscribes >= resubscribes_before + 2,
        "both connections"
    );
    eprintln!(
        "sigkill: not-ready after {to_not_ready:?}; outage {:?}; failing publish <= {slowest:?}; \
         ({attempts} publishes); delivery {delivered:?} after restart; b ready {ready:?} after that ({since_back:?} total)",
        back - killed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_pubsub_recovers() {
    init_tracing();
    let redis = RedisServer::start().await;
    let (a, b, mut b_rx) = two_nodes(&redis).await;
    let resubscribes_before = b.stats().resubscribes;

    let killed = redis.client_kill("pubsub").await;
    assert_eq!(killed, 4, "two subscriber connections per node");
    let started = Instant::now();
    let delivered = probe(&a, &mut b_rx, PACE, RESUME).await;
    eventually(
        Duration::from_secs(2),
        "both connections resubscribed",
        || async { b.stats().resubscribes >= resubscribes_before + 2 },
    )
    .await;
    assert_eq!(owned_channels(&redis).await, TOPICS + 1);
    assert_eq!(
        redis.numsub(&b.node_channel("b")).await,
        1,
        "direct channel back"
    );
    wait_health(&b.health(), true, Duration::from_secs(2)).await;
    let recovered = started.elapsed();
    assert!(recovered < Duration::from_secs(2), "{recovered:?}");
    eprintln!(
        "client kill: delivery after {delivered:?}, resubscribed + ready after {recovered:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_redis_and_becomes_ready_when_it_appears() {
    init_tracing();
    let port = free_port();
    let (a, _rx) = RedisPubSub::start(config(vec![format!("redis://127.0.0.1:{port}/")], "a"))
        .await
        .expect("start does not need Redis");
    assert!(!a.health().borrow().ready);
    let started = Instant::now();
    let env = a.envelope("room:1", "e", &b"{}"[..], false);
    assert!(matches!(
        a.publish("room:1", &env).await,
        Err(Error::Unavailable)
    ));
    assert!(started.elapsed() < Duration::from_millis(50));
    let _redis = RedisServer::options().port(port).start().await;
    let ready = wait_health(&a.health(), true, Duration::from_secs(3)).await;
    eprintln!("late redis: ready {ready:?} after it answered PING");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deaf_connection_is_detected_and_rebuilt() {
    init_tracing();
    let redis = RedisServer::start().await;
    let proxy = support::proxy::FreezingProxy::start(redis.port).await;
    let (a, _a_rx) = node(config(vec![redis.url()], "a")).await;
    let mut cfg = config(vec![proxy.url()], "b");
    cfg.canary_interval = Duration::from_millis(200);
    cfg.not_ready_after = Duration::from_millis(800);
    cfg.publish_timeout = Duration::from_millis(300);
    let (b, mut b_rx) = node(cfg).await;
    b.subscribe("room:1");
    probe(&a, &mut b_rx, PACE, RESUME).await;
    let reconnects_before = b.stats().reconnects;

    // Every connection of b now looks alive to both ends but carries nothing.
    proxy.freeze();
    let frozen = Instant::now();
    let to_not_ready = wait_health(&b.health(), false, Duration::from_secs(3)).await;
    let to_ready = wait_health(&b.health(), true, Duration::from_secs(5)).await;
    let delivered = probe(&a, &mut b_rx, PACE, RESUME).await;
    assert!(
        b.stats().reconnects >= reconnects_before + 2,
        "{:?}",
        b.stats()
    );
    eprintln!(
        "deaf: not-ready after {to_not_ready:?}, rebuilt and ready {to_ready:?} later, \
         delivering {delivered:?} after that ({:?} total)",
        frozen.elapsed()
    );
}
