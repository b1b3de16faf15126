//! Nodes over a real `redis-server` the test owns: positions cluster-wide, delivery in position
//! order on every node with two nodes publishing at once, recovery on another node, a Redis
//! that lost its data (recovered: false) or kept it (AOF: recovered), 503 and `unavailable`
//! while Redis is down, and idempotency across nodes.

use std::time::Duration;

use gateway::Config;
use serde_json::{json, Value};
use testkit::redis::{RedisCluster, RedisOptions, RedisServer};
use testkit::{eventually, Client};

use crate::common::TestNode;
use crate::{
    history_spec, join_since, next_msg, nothing_more, offset, publish, ready,
    redis_config as config,
};

async fn started(redis: &RedisServer, count: usize) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for _ in 0..count {
        let n = TestNode::start(config(redis)).await;
        eventually(Duration::from_secs(10), "node ready", || ready(&n)).await;
        nodes.push(n);
    }
    nodes
}

/// Wait until `nodes` nodes hear `topic` in Redis (subscriptions are made in the background
/// after a topic's first local join).
async fn subscribed(redis: &RedisServer, topic: &str, nodes: u64) {
    let channel = format!("gw:t:{topic}");
    eventually(Duration::from_secs(5), "redis subscriptions", || async {
        redis.numsub(&channel).await == nodes
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_publishing_at_once_deliver_in_position_order_everywhere() {
    let redis = RedisServer::start().await;
    let nodes = started(&redis, 2).await;
    let topic = "room:order";
    let mut on_a = nodes[0].ws().await;
    let mut on_b = nodes[1].ws().await;
    let start = join_since(&mut on_a, topic, None).await["position"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        join_since(&mut on_b, topic, None).await["position"],
        start.as_str()
    );
    subscribed(&redis, topic, 2).await;
    let mut leaver = nodes[0].ws().await;
    join_since(&mut leaver, topic, None).await;
    drop(leaver); // disconnected: it will recover on the other node

    let publishers: Vec<_> = [nodes[0].addr, nodes[1].addr]
        .into_iter()
        .enumerate()
        .map(|(k, addr)| {
            tokio::spawn(async move {
                for i in 0..100u64 {
                    let payload = json!({"i": k as u64 * 1000 + i});
                    let body =
                        json!({"topic": "room:order", "event": "new_msg", "payload": payload});
                    let (s, text) =
                        testkit::http(addr, "POST", "/api/broadcast", &[], &body.to_string()).await;
                    assert_eq!(s, 202, "{text}");
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let mut sequences = Vec::new();
    for c in [&mut on_a, &mut on_b] {
        let mut seen = Vec::new();
        for _ in 0..200 {
            seen.push(next_msg(c, topic).await);
        }
        let offsets: Vec<u64> = seen.iter().map(|(p, _)| offset(p)).collect();
        assert_eq!(
            offsets,
            (1..=200).collect::<Vec<_>>(),
            "out of position order"
        );
        nothing_more(c).await;
        sequences.push(seen);
    }
    assert_eq!(
        sequences[0], sequences[1],
        "both nodes deliver the same sequence"
    );

    // The client that left reconnects to the other node and gets all 200, in order.
    let mut back = nodes[1].ws().await;
    let joined = join_since(&mut back, topic, Some(&start)).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    for want in &sequences[0] {
        assert_eq!(&next_msg(&mut back, topic).await, want);
    }
    nothing_more(&mut back).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_gives_recovered_false_and_one_with_aof_recovers() {
    for aof in [false, true] {
        let mut redis = if aof {
            RedisOptions::default()
                .args(&["--appendonly", "yes", "--appendfsync", "always"])
                .start()
                .await
        } else {
            RedisServer::start().await
        };
        let nodes = started(&redis, 1).await;
        let topic = "room:restart";
        let mut c = nodes[0].ws().await;
        join_since(&mut c, topic, None).await;
        subscribed(&redis, topic, 1).await;
        let p1 = publish(&nodes[0], topic, 1).await;
        let p2 = publish(&nodes[0], topic, 2).await;
        redis.restart().await;
        eventually(Duration::from_secs(10), "node ready again", || {
            ready(&nodes[0])
        })
        .await;
        let mut d = nodes[0].ws().await;
        let joined = join_since(&mut d, topic, Some(&p1)).await;
        if aof {
            assert_eq!(
                joined,
                json!({"recovered": true, "position": p2}),
                "AOF kept it"
            );
            assert_eq!(next_msg(&mut d, topic).await, (p2.clone(), 2));
        } else {
            assert_eq!(joined["recovered"], false, "{joined}");
            let now = joined["position"].as_str().unwrap();
            assert_eq!(offset(now), 0, "a new epoch starts empty");
            assert_ne!(
                now.rsplit_once('-').unwrap().0,
                p1.rsplit_once('-').unwrap().0
            );
        }
        nothing_more(&mut d).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_history_broadcasts_are_refused_not_lost() {
    let mut redis = RedisServer::start().await;
    let nodes = started(&redis, 1).await;
    let n = &nodes[0];
    let topic = "room:down";
    let mut c = n.ws().await;
    let (jr, _) = c.join(topic, json!({})).await;
    redis.kill();
    eventually(Duration::from_secs(10), "node not ready", || async {
        !ready(n).await
    })
    .await;
    let body = json!({"topic": topic, "event": "new_msg", "payload": {"i": 1}}).to_string();
    let (status, text) = n.http("POST", "/api/broadcast", &[], &body).await;
    assert_eq!(status, 503, "{text}");
    let err: Value = serde_json::from_str(&text).unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("not stored"),
        "{text}"
    );
    c.send_json(json!([jr, "5", topic, "new_msg", {"i": 2}]))
        .await;
    let reply = c.until("push reply", |m| m[1] == "5").await;
    assert_eq!(
        reply[4],
        json!({"status": "error", "response": {"reason": "unavailable"}})
    );
    let metrics = n.http("GET", "/metrics", &[], "").await.1;
    assert!(testkit::metric_value(&metrics, "gateway_history_errors_total") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_deduplicates_a_retry_through_another_node() {
    let redis = RedisServer::start().await;
    let nodes = started(&redis, 2).await;
    let topic = "room:idem";
    let mut c: Client = nodes[1].ws().await;
    join_since(&mut c, topic, None).await;
    subscribed(&redis, topic, 1).await;
    let body = json!({"topic": topic, "event": "new_msg", "payload": {"i": 7}, "idempotency_key": "order-7"})
        .to_string();
    let first = nodes[0].http("POST", "/api/broadcast", &[], &body).await;
    let retry = nodes[1].http("POST", "/api/broadcast", &[], &body).await;
    assert_eq!(first.0, 202, "{first:?}");
    assert_eq!(first, retry, "the retry answers the first position");
    assert_eq!(next_msg(&mut c, topic).await.1, 7);
    nothing_more(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_on_a_node_new_to_the_topic_misses_nothing_published_meanwhile() {
    let redis = RedisServer::start().await;
    let nodes = started(&redis, 2).await;
    let topic = "room:fresh";
    let mut first = nodes[0].ws().await;
    let start = join_since(&mut first, topic, None).await["position"]
        .as_str()
        .unwrap()
        .to_owned();
    let addr = nodes[0].addr;
    let (published, mut progress) = tokio::sync::watch::channel(0u64);
    let publisher = tokio::spawn(async move {
        for i in 1..=200u64 {
            let body = json!({"topic": "room:fresh", "event": "new_msg", "payload": {"i": i}});
            let (s, _) =
                testkit::http(addr, "POST", "/api/broadcast", &[], &body.to_string()).await;
            assert_eq!(s, 202);
            published.send_replace(i);
        }
    });
    // The first join of the topic on node B lands mid-stream: B subscribes in Redis during it.
    progress.wait_for(|n| *n >= 50).await.unwrap();
    let mut late = nodes[1].ws().await;
    assert_eq!(
        join_since(&mut late, topic, Some(&start)).await["recovered"],
        true
    );
    publisher.await.unwrap();
    for want in 1..=200u64 {
        let (pos, i) = next_msg(&mut late, topic).await;
        assert_eq!((offset(&pos), i), (want, want));
    }
    nothing_more(&mut late).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_redis_cluster_mode_a_topics_keys_and_channel_share_a_slot() {
    let rc = RedisCluster::start().await;
    let urls = rc.urls().join(",");
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let n = TestNode::start(Config {
            redis_url: Some(urls.clone()),
            redis_cluster: true,
            channels: vec![history_spec(100)],
            ..Config::default()
        })
        .await;
        eventually(Duration::from_secs(20), "node ready", || ready(&n)).await;
        nodes.push(n);
    }
    let topic = "room:sharded";
    let mut c = nodes[1].ws().await;
    let start = join_since(&mut c, topic, None).await["position"]
        .as_str()
        .unwrap()
        .to_owned();
    // The script runs on the topic's slot and SPUBLISHes there: the subscriber on the other
    // node gets each broadcast with the position the API answered.
    for i in 1..=20 {
        let pos = publish(&nodes[0], topic, i).await;
        assert_eq!(next_msg(&mut c, topic).await, (pos, i));
    }
    drop(c);
    let mut back = nodes[0].ws().await;
    assert_eq!(
        join_since(&mut back, topic, Some(&start)).await["recovered"],
        true
    );
    for i in 1..=20 {
        assert_eq!(next_msg(&mut back, topic).await.1, i);
    }
    nothing_more(&mut back).await;
}
