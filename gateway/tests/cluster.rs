//! Three nodes clustered through a real `redis-server` the test owns: cross-node broadcasts,
//! the HTTP API on any node, forced disconnect across nodes, interest-based subscriptions, and
//! the never-deaf behaviour when Redis dies and returns or a subscriber connection is killed.

mod common;

use std::time::{Duration, Instant};

use common::{room_with_typing, TestNode};
use gateway::Config;
use serde_json::json;
use testkit::redis::{RedisCluster, RedisServer};
use testkit::{eventually, jwt, metric_value, now, Client};

fn config(redis: &RedisServer) -> Config {
    Config {
        redis_url: Some(redis.url()),
        jwt_secret: Some("s".into()),
        channels: vec![room_with_typing()],
        ..Config::default()
    }
}

async fn client(node: &TestNode, sub: &str) -> Client {
    let token = jwt("s", json!({"sub": sub, "exp": now() + 600}));
    Client::connect(
        node.addr,
        &format!("/socket/websocket?vsn=2.0.0&token={token}"),
    )
    .await
}

async fn ready(node: &TestNode) -> bool {
    node.http("GET", "/readyz", &[], "").await.0 == 200
}

async fn metric(node: &TestNode, name: &str) -> f64 {
    metric_value(&node.http("GET", "/metrics", &[], "").await.1, name)
}

/// Three nodes, all ready.
async fn cluster(redis: &RedisServer) -> [TestNode; 3] {
    let nodes = [
        TestNode::start(config(redis)).await,
        TestNode::start(config(redis)).await,
        TestNode::start(config(redis)).await,
    ];
    for n in &nodes {
        eventually(Duration::from_secs(10), "node ready", || ready(n)).await;
    }
    nodes
}

/// Join on every client, then wait until a probe broadcast from `from` reaches all of them
/// (Redis subscriptions are made in the background after the first local join). Returns with
/// every client's queue empty.
async fn join_all(topic: &str, from: &TestNode, clients: &mut [&mut Client]) {
    for c in clients.iter_mut() {
        c.join_ok(topic).await;
    }
    let mut seen = vec![false; clients.len()];
    let mut n = 0;
    let start = Instant::now();
    while !seen.iter().all(|s| *s) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "probes never reached every node"
        );
        n += 1;
        from.broadcast(topic, "probe", json!({"n": n})).await;
        for (i, c) in clients.iter_mut().enumerate() {
            while let Ok(f) = tokio::time::timeout(Duration::from_millis(50), c.recv_json()).await {
                assert_eq!(f[3], "probe", "unexpected frame {f}");
                seen[i] = true;
            }
        }
    }
    // Everyone is subscribed now: one last probe flushes stragglers of the earlier ones.
    n += 1;
    from.broadcast(topic, "probe", json!({"n": n})).await;
    for c in clients.iter_mut() {
        while c.recv_json().await[4]["n"] != n {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_api_and_forced_disconnect_cross_nodes() {
    let redis = RedisServer::start().await;
    let [a, b, c] = cluster(&redis).await;
    let mut ca = client(&a, "1").await;
    let mut ca2 = client(&a, "2").await;
    let mut cb = client(&b, "3").await;
    let mut cc = client(&c, "42").await;
    join_all("room:x", &a, &mut [&mut ca, &mut ca2, &mut cb, &mut cc]).await;

    // A client on A broadcasts: everyone on every node gets it once, sender included.
    ca.send_json(json!([null, "10", "room:x", "new_msg", {"from": "a"}]))
        .await;
    let msg = json!([null, null, "room:x", "new_msg", {"from": "a"}]);
    assert_eq!(ca.recv_json().await, msg);
    assert_eq!(ca.recv_json().await[3], "phx_reply");
    for cl in [&mut ca2, &mut cb, &mut cc] {
        assert_eq!(cl.recv_json().await, msg);
    }
    // broadcast_from: the sender is excluded on its own node only.
    ca.send_json(json!([null, "11", "room:x", "typing", {}]))
        .await;
    assert_eq!(ca.recv_json().await[3], "phx_reply");
    let typing = json!([null, null, "room:x", "typing", {}]);
    for cl in [&mut ca2, &mut cb, &mut cc] {
        assert_eq!(cl.recv_json().await, typing);
    }
    ca.assert_nothing_queued().await;
    // The HTTP API on B reaches A and C.
    b.broadcast("room:x", "api", json!({"via": "b"})).await;
    for cl in [&mut ca, &mut ca2, &mut cb, &mut cc] {
        assert_eq!(
            cl.recv_json().await,
            json!([null, null, "room:x", "api", {"via": "b"}])
        );
    }
    // Forced disconnect on A of a session that lives on C.
    let (status, _) = a
        .http(
            "POST",
            "/api/disconnect",
            &[],
            &json!({"id": "user_socket:42"}).to_string(),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(cc.expect_close().await, Some(1001));
    for cl in [&mut ca, &mut ca2, &mut cb] {
        cl.assert_nothing_queued().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_with_subscribers_receive_a_topic() {
    let redis = RedisServer::start().await;
    let [a, b, c] = cluster(&redis).await;
    let mut ca = client(&a, "1").await;
    let mut cb = client(&b, "2").await;
    join_all("room:interest", &a, &mut [&mut ca, &mut cb]).await;
    // A and B are subscribed to the topic's Redis channel, C is not.
    assert_eq!(redis.numsub("gw:t:room:interest").await, 2);
    let before = metric(&c, "gateway_pubsub_received_total").await;
    for i in 0..20 {
        a.broadcast("room:interest", "n", json!({"i": i})).await;
    }
    for i in 0..20 {
        assert_eq!(cb.recv_json().await[4]["i"], i);
    }
    // B has received all 20; had C been sent any, its counter would have moved by now.
    assert_eq!(
        metric(&c, "gateway_pubsub_received_total").await,
        before,
        "C received traffic it has no subscriber for"
    );
    // When B's last subscriber leaves, B unsubscribes.
    cb.send_json(json!([null, "5", "room:interest", "phx_leave", {}]))
        .await;
    eventually(Duration::from_secs(5), "B unsubscribes", || async {
        redis.numsub("gw:t:room:interest").await == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_nobody_is_dropped_and_delivery_resumes() {
    let mut redis = RedisServer::start().await;
    let [a, b, c] = cluster(&redis).await;
    let mut ca = client(&a, "1").await;
    let mut cb = client(&b, "2").await;
    let mut cc = client(&c, "3").await;
    join_all("room:fault", &a, &mut [&mut ca, &mut cb, &mut cc]).await;

    redis.kill();
    for n in [&a, &b, &c] {
        eventually(
            Duration::from_secs(10),
            "node not ready during the outage",
            || async { !ready(n).await },
        )
        .await;
    }
    // Publishing during the outage fails fast and is counted (those messages are lost).
    for i in 0..5 {
        a.broadcast("room:fault", "lost", json!({"i": i})).await;
        assert_eq!(ca.recv_json().await[3], "lost", "local delivery continues");
    }
    eventually(Duration::from_secs(5), "lost publishes counted", || async {
        metric(&a, "gateway_pubsub_publish_errors_total").await >= 5.0
    })
    .await;

    redis.restart().await;
    let back = Instant::now();
    for n in [&a, &b, &c] {
        eventually(
            Duration::from_secs(10),
            "node ready after Redis returns",
            || ready(n),
        )
        .await;
    }
    // Broadcasts resume: probe until a cross-node broadcast arrives, and time it.
    let mut n = 0;
    loop {
        n += 1;
        a.broadcast("room:fault", "back", json!({"n": n})).await;
        assert_eq!(ca.recv_json().await[4]["n"], n);
        let got = tokio::time::timeout(Duration::from_millis(100), cb.recv_json()).await;
        if let Ok(f) = got {
            assert_eq!(f[3], "back");
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "delivery did not resume"
        );
    }
    let resumed = back.elapsed();
    assert!(
        resumed < Duration::from_secs(2),
        "delivery resumed only after {resumed:?}"
    );
    // No client session was dropped: each still answers a heartbeat on the same connection.
    for cl in [&mut ca, &mut cb, &mut cc] {
        while let Ok(f) = tokio::time::timeout(Duration::from_millis(200), cl.recv_json()).await {
            assert_eq!(f[3], "back");
        }
        cl.assert_nothing_queued().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_connection_recovers_within_two_seconds() {
    let redis = RedisServer::start().await;
    let [a, b, _c] = cluster(&redis).await;
    let mut ca = client(&a, "1").await;
    let mut cb = client(&b, "2").await;
    join_all("room:kill", &a, &mut [&mut ca, &mut cb]).await;
    assert!(redis.client_kill("pubsub").await > 0);
    let killed = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        a.broadcast("room:kill", "again", json!({"n": n})).await;
        assert_eq!(ca.recv_json().await[4]["n"], n);
        if let Ok(f) = tokio::time::timeout(Duration::from_millis(50), cb.recv_json()).await {
            assert_eq!(f[3], "again");
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "B never heard again"
        );
    }
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "recovered after {:?}",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_sharded_mode_delivers_and_survives_a_slot_master_restart() {
    let mut rc = RedisCluster::start().await;
    let cfg = |urls: String| Config {
        redis_url: Some(urls),
        redis_cluster: true,
        ..Config::default()
    };
    let a = TestNode::start(cfg(rc.urls().join(","))).await;
    let b = TestNode::start(cfg(rc.urls().join(","))).await;
    for n in [&a, &b] {
        eventually(Duration::from_secs(20), "node ready", || ready(n)).await;
    }
    let mut ca = a.ws().await;
    let mut cb = b.ws().await;
    join_all("room:shard", &a, &mut [&mut ca, &mut cb]).await;
    // The topic's channel is `gw:t:{room:shard}`: its slot is that of the hash tag.
    let owner = rc.owner_of_key("room:shard").await;
    rc.nodes[owner].kill();
    rc.nodes[owner].restart().await;
    rc.wait_ok().await;
    let back = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        a.broadcast("room:shard", "again", json!({"n": n})).await;
        while let Ok(f) = tokio::time::timeout(Duration::from_millis(10), ca.recv_json()).await {
            assert_eq!(f[3], "again");
        }
        if let Ok(f) = tokio::time::timeout(Duration::from_millis(100), cb.recv_json()).await {
            assert_eq!(f[3], "again");
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "sharded delivery never recovered"
        );
    }
}
