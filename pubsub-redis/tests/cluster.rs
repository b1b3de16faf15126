//! Redis Cluster mode against a real three-master cluster started by the test: sharded
//! delivery between two nodes, and recovery after the master owning the topic's slot is
//! SIGKILLed and restarted on the same port.

mod support;

use std::time::{Duration, Instant};

use pubsub_redis::{channels, Config, Incoming};
use support::{init_tracing, node, probe, recv, wait_health};
use testkit::eventually;
use testkit::redis::RedisCluster;

fn cluster_config(cluster: &RedisCluster, id: &str) -> Config {
    Config {
        urls: cluster.urls(),
        cluster: true,
        node_id: Some(id.to_owned()),
        ..Config::default()
    }
}

async fn shard_numsub(cluster: &RedisCluster, owner: usize, channel: &str) -> u64 {
    let (_, n): (String, u64) = cluster.nodes[owner]
        .query(redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(channel))
        .await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_delivery_survives_slot_master_restart() {
    init_tracing();
    let mut cluster = RedisCluster::start().await;
    let (a, mut a_rx) = node(cluster_config(&cluster, "a")).await;
    let (b, mut b_rx) = node(cluster_config(&cluster, "b")).await;
    a.subscribe("room:1");
    b.subscribe("room:1");
    let channel = b.topic_channel("room:1");
    assert_eq!(channel, "gw:t:{room:1}");
    let owner = cluster.owner_of_slot(channels::slot(&channel)).await;
    eventually(
        Duration::from_secs(3),
        "both nodes on the topic's shard",
        || async { shard_numsub(&cluster, owner, &channel).await == 2 },
    )
    .await;

    let env = a.envelope("room:1", "new_msg", &br#"{"n":1}"#[..], false);
    assert_eq!(a.publish("room:1", &env).await.unwrap(), 2);
    match recv(&mut b_rx, Duration::from_secs(2)).await {
        Some(Incoming::Topic(got)) => assert_eq!(got, env),
        other => panic!("expected the broadcast, got {other:?}"),
    }
    let direct = b.envelope("n/a", "sync", &b"{}"[..], false);
    assert_eq!(b.direct("a", &direct).await.unwrap(), 1);
    match recv(&mut a_rx, Duration::from_secs(2)).await {
        Some(Incoming::Direct(got)) => assert_eq!(got, direct),
        other => panic!("expected the direct message, got {other:?}"),
    }
    assert!(
        recv(&mut a_rx, Duration::from_millis(200)).await.is_none(),
        "echo dropped"
    );
    assert_eq!(a.stats().dropped_echoes, 1);

    // Restart the master that owns the topic's slot (same port, same nodes.conf).
    cluster.nodes[owner].kill();
    let killed = Instant::now();
    let not_ready = wait_health(&b.health(), false, Duration::from_secs(5)).await;
    // A one-second outage of that shard: publishes to it fail within the publish timeout.
    let mut slowest = Duration::ZERO;
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    while killed.elapsed() < Duration::from_secs(1) {
        pace.tick().await;
        let started = Instant::now();
        let env = a.envelope("room:1", "lost", &b"{}"[..], false);
        assert!(a.publish("room:1", &env).await.is_err());
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    cluster.nodes[owner].restart().await;
    let back = Instant::now();
    let delivered = probe(
        &a,
        &mut b_rx,
        Duration::from_millis(100),
        Duration::from_secs(10),
    )
    .await;
    wait_health(&b.health(), true, Duration::from_secs(5)).await;
    let ready = back.elapsed();
    wait_health(&a.health(), true, Duration::from_secs(5)).await;
    assert_eq!(
        shard_numsub(&cluster, owner, &channel).await,
        2,
        "both resubscribed"
    );
    eprintln!(
        "cluster: not-ready {not_ready:?} after kill; publishes to the dead shard failed \
         in <= {slowest:?}; outage {:?}; delivery {delivered:?} and ready {:?} after restart",
        back - killed,
        ready
    );
}
