//! Gap filling on every node: three nodes over one real `redis-server`, subscribers on each,
//! 200 broadcasts/s published through all three while the Redis subscriber connections are
//! killed again and again (`CLIENT KILL TYPE pubsub`), each time for long enough that every
//! node misses broadcasts live. Every subscriber must receive every
//! broadcast exactly once, in position order, and the nodes must say they filled gaps. A join
//! that replayed what its node had missed never gets it again when the node fills late, and a
//! node that misses a broadcast before hearing any on the topic fills it from where its join
//! told the client the topic stood.

use std::ops::RangeInclusive;
use std::time::Duration;

use pubsub_redis::Envelope;
use serde_json::json;
use testkit::metrics::metric_value;
use testkit::redis::RedisServer;
use testkit::{eventually, Client};

use crate::common::TestNode;
use crate::{join_since, next_msg, nothing_more, offset, publish, ready, redis_config as config};

const TOPIC: &str = "room:gaps";
const NODES: usize = 3;
const PER_NODE: u64 = 100;
/// Each publisher's pace: three of them make 200 broadcasts/s.
const PACE: Duration = Duration::from_millis(15);

async fn metric(nodes: &[TestNode], series: &str) -> f64 {
    let mut sum = 0.0;
    for n in nodes {
        let (status, text) = n.http("GET", "/metrics", &[], "").await;
        assert_eq!(status, 200, "{text}");
        sum += metric_value(&text, series);
    }
    sum
}

/// Store broadcasts `{"i": i}` at positions `<epoch>-<i>` for each `i` in `offsets` the way the
/// history script stores them, but publish them to nobody: as if published while every
/// subscriber connection was down.
async fn store_unheard(
    redis: &RedisServer,
    topic: &str,
    epoch: &str,
    offsets: RangeInclusive<u64>,
) {
    for i in offsets {
        let mut env = Envelope::new(
            "elsewhere",
            topic,
            "new_msg",
            json!({"i": i}).to_string(),
            false,
        );
        env.position = Some(format!("{epoch}-{i}"));
        let bytes = env.encode().expect("encodable");
        redis.rpush(&format!("gw:h:{{{topic}}}"), &bytes).await;
        redis
            .hincrby(&format!("gw:hm:{{{topic}}}"), "offset", 1)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriber_connections_lose_nothing_on_any_node() {
    let redis = RedisServer::start().await;
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        let n = TestNode::start(config(&redis)).await;
        eventually(Duration::from_secs(10), "node ready", || ready(&n)).await;
        nodes.push(n);
    }
    // Two subscribers per node.
    let mut subscribers: Vec<Client> = Vec::new();
    let mut start = None;
    for n in nodes.iter().chain(nodes.iter()) {
        let mut c = n.ws().await;
        let joined = join_since(&mut c, TOPIC, None).await;
        let position = joined["position"].as_str().expect("a position").to_owned();
        assert_eq!(start.get_or_insert_with(|| position.clone()), &position);
        subscribers.push(c);
    }
    let start = offset(&start.expect("joined"));
    let channel = format!("gw:t:{TOPIC}");
    eventually(Duration::from_secs(5), "redis subscriptions", || async {
        redis.numsub(&channel).await == NODES as u64
    })
    .await;

    let publishers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(k, n)| {
            let addr = n.addr;
            tokio::spawn(async move {
                let mut pace = tokio::time::interval(PACE);
                for i in 0..PER_NODE {
                    pace.tick().await;
                    let payload = json!({"i": k as u64 * 1000 + i});
                    let body = json!({"topic": TOPIC, "event": "new_msg", "payload": payload});
                    let (s, text) =
                        testkit::http(addr, "POST", "/api/broadcast", &[], &body.to_string()).await;
                    assert_eq!(s, 202, "{text}");
                }
            })
        })
        .collect();
    // Four times while the publishers run, kill every subscriber connection again and again for
    // 100 ms: each node is deaf for that long (a reconnect that is killed backs off), so
    // broadcasts are published that no node hears live.
    let mut killed = 0;
    let mut every = tokio::time::interval(Duration::from_millis(300));
    every.tick().await;
    for _ in 0..4 {
        every.tick().await;
        let storm = tokio::time::Instant::now() + Duration::from_millis(100);
        while tokio::time::Instant::now() < storm {
            killed += redis.client_kill("pubsub").await;
        }
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    assert!(killed >= NODES as u64, "killed only {killed} connections");

    let total = PER_NODE * NODES as u64;
    let want_offsets: Vec<u64> = (start + 1..=start + total).collect();
    let mut want_values: Vec<u64> = (0..NODES as u64)
        .flat_map(|k| (0..PER_NODE).map(move |i| k * 1000 + i))
        .collect();
    want_values.sort_unstable();
    let mut first: Option<Vec<(String, u64)>> = None;
    for (n, c) in subscribers.iter_mut().enumerate() {
        let mut seen = Vec::with_capacity(total as usize);
        for _ in 0..total {
            seen.push(next_msg(c, TOPIC).await);
        }
        let offsets: Vec<u64> = seen.iter().map(|(p, _)| offset(p)).collect();
        assert_eq!(
            offsets, want_offsets,
            "subscriber {n}: gap, duplicate or disorder"
        );
        let mut values: Vec<u64> = seen.iter().map(|(_, i)| *i).collect();
        values.sort_unstable();
        assert_eq!(values, want_values, "subscriber {n}: not every broadcast");
        nothing_more(c).await;
        match &first {
            Some(f) => assert_eq!(&seen, f, "subscriber {n}: another sequence"),
            None => first = Some(seen),
        }
    }
    assert!(
        metric(&nodes, "gateway_history_gaps_filled_total").await > 0.0,
        "no node filled a gap: the kills lost nothing to fill"
    );
    assert_eq!(
        metric(&nodes, "gateway_history_gaps_unfillable_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_filling_late_never_repeats_what_a_join_replayed() {
    let redis = RedisServer::start().await;
    let node = TestNode::start(config(&redis)).await;
    eventually(Duration::from_secs(10), "node ready", || ready(&node)).await;
    let topic = "room:late";
    let mut early = node.ws().await;
    join_since(&mut early, topic, None).await;
    let channel = format!("gw:t:{topic}");
    eventually(Duration::from_secs(5), "redis subscription", || async {
        redis.numsub(&channel).await == 1
    })
    .await;
    let first = publish(&node, topic, 1).await;
    assert_eq!(next_msg(&mut early, topic).await, (first.clone(), 1));

    // Broadcasts 2 and 3 are stored but never heard by the node.
    let (epoch, _) = first.rsplit_once('-').expect("epoch-offset");
    store_unheard(&redis, topic, epoch, 2..=3).await;

    // A client joining now is replayed 2 and 3 from history.
    let mut late = node.ws().await;
    let joined = join_since(&mut late, topic, Some(&first)).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    let third = format!("{epoch}-3");
    assert_eq!(joined["position"], third.as_str(), "{joined}");
    assert_eq!(next_msg(&mut late, topic).await, (format!("{epoch}-2"), 2));
    assert_eq!(next_msg(&mut late, topic).await, (third.clone(), 3));

    // Broadcast 4 reveals the gap: the node fills 2 and 3 before it, for `early` only.
    let fourth = publish(&node, topic, 4).await;
    for (offset, i) in [(2, 2), (3, 3), (4, 4)] {
        assert_eq!(
            next_msg(&mut early, topic).await,
            (format!("{epoch}-{offset}"), i)
        );
    }
    assert_eq!(next_msg(&mut late, topic).await, (fourth, 4));
    nothing_more(&mut early).await;
    nothing_more(&mut late).await;
    let nodes = [node];
    assert_eq!(
        metric(&nodes, "gateway_history_gaps_filled_total").await,
        2.0
    );
    assert_eq!(
        metric(&nodes, "gateway_history_duplicates_total").await,
        0.0
    );
}

/// A node's sequence of a topic starts where its first join told the client the topic stands,
/// not at the first broadcast it hears: a broadcast it misses before hearing any there (its
/// subscriber connection gone right after the join) reaches the client once it resubscribes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_missed_before_the_node_heard_any_on_the_topic_is_filled() {
    let redis = RedisServer::start().await;
    let a = TestNode::start(config(&redis)).await;
    let b = TestNode::start(config(&redis)).await;
    for n in [&a, &b] {
        eventually(Duration::from_secs(10), "node ready", || ready(n)).await;
    }
    let topic = "room:fresh";
    // Published through A while nobody listens anywhere: B never hears it.
    let first = publish(&a, topic, 1).await;
    let mut c = b.ws().await;
    let joined = join_since(&mut c, topic, None).await;
    assert_eq!(joined["position"], first.as_str(), "{joined}");

    let (epoch, _) = first.rsplit_once('-').expect("epoch-offset");
    store_unheard(&redis, topic, epoch, 2..=2).await;
    let nodes = [b];
    let resubscribes = "gateway_pubsub_resubscribes_total";
    let before = metric(&nodes, resubscribes).await;
    assert!(redis.client_kill("pubsub").await > 0);
    eventually(
        Duration::from_secs(10),
        "B resubscribed and ready",
        || async { metric(&nodes, resubscribes).await > before && ready(&nodes[0]).await },
    )
    .await;
    assert_eq!(next_msg(&mut c, topic).await, (format!("{epoch}-2"), 2));
    let live = publish(&a, topic, 3).await;
    assert_eq!(next_msg(&mut c, topic).await, (live, 3));
    nothing_more(&mut c).await;
    assert_eq!(
        metric(&nodes, "gateway_history_gaps_filled_total").await,
        1.0
    );
}
