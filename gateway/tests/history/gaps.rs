//! Gap filling on every node: three nodes over one real `redis-server`, subscribers on each,
//! 200 broadcasts/s published through all three while the Redis subscriber connections are
//! killed again and again (`CLIENT KILL TYPE pubsub`), each time for long enough that every
//! node misses broadcasts live. Every subscriber must receive every
//! broadcast exactly once, in position order, and the nodes must say they filled gaps. And a
//! join that replayed what its node had missed never gets it again when the node fills late.

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

    // Broadcasts 2 and 3 are stored but never heard by the node (as if published while its
    // subscriber connection was down): stored the way the history script stores them.
    let (epoch, _) = first.rsplit_once('-').expect("epoch-offset");
    for i in 2..=3u64 {
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
