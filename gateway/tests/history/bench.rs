//! Figures for BENCHMARKS.md §12, run on demand (`--ignored`): what a broadcast costs with
//! history on vs off (sequential `POST /api/broadcast`, answered once stored on a history
//! topic), and how long a join takes to replay N missed broadcasts. Memory store (one node)
//! and Redis store (a `redis-server` this test starts). Prints one line per figure.

use std::time::{Duration, Instant};

use gateway::config::ChannelSpec;
use gateway::Config;
use serde_json::json;
use testkit::redis::RedisServer;

use crate::common::TestNode;
use crate::{history_spec, join_since, next_msg};

const PUBLISHES: u64 = 2000;

async fn node(redis: Option<&RedisServer>) -> TestNode {
    let n = TestNode::start(Config {
        redis_url: redis.map(RedisServer::url),
        channels: vec![
            history_spec(1000),
            ChannelSpec::public("plain:*", &["new_msg"]),
        ],
        ..Config::default()
    })
    .await;
    testkit::eventually(Duration::from_secs(10), "ready", || async {
        n.http("GET", "/readyz", &[], "").await.0 == 200
    })
    .await;
    n
}

/// Mean time of one sequential API broadcast on `topic`, with one subscriber joined.
async fn publish_cost(n: &TestNode, topic: &str) -> Duration {
    let mut c = n.ws().await;
    join_since(&mut c, topic, None).await;
    let body =
        |i: u64| json!({"topic": topic, "event": "new_msg", "payload": {"i": i}}).to_string();
    for i in 0..100 {
        n.http("POST", "/api/broadcast", &[], &body(i)).await;
    }
    let start = Instant::now();
    for i in 0..PUBLISHES {
        let (s, _) = n.http("POST", "/api/broadcast", &[], &body(i)).await;
        assert_eq!(s, 202);
    }
    start.elapsed() / PUBLISHES as u32
}

/// Time from sending a join with `since` to the last of `missed` replayed broadcasts.
async fn recovery_time(n: &TestNode, topic: &str, missed: u64) -> Duration {
    let mut c = n.ws().await;
    let since = join_since(&mut c, topic, None).await["position"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(c);
    for i in 0..missed {
        let body = json!({"topic": topic, "event": "new_msg", "payload": {"i": i}}).to_string();
        n.http("POST", "/api/broadcast", &[], &body).await;
    }
    let mut d = n.ws().await;
    let start = Instant::now();
    assert_eq!(
        join_since(&mut d, topic, Some(&since)).await["recovered"],
        true
    );
    for _ in 0..missed {
        next_msg(&mut d, topic).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for BENCHMARKS.md, not a check"]
async fn history_figures() {
    let redis = RedisServer::start().await;
    for (label, store) in [("memory", None), ("redis", Some(&redis))] {
        let n = node(store).await;
        let plain = publish_cost(&n, "plain:bench").await;
        let kept = publish_cost(&n, "room:bench").await;
        println!("{label}: API broadcast, plain topic {plain:?}, history topic {kept:?} (mean of {PUBLISHES})");
        for missed in [100, 1000] {
            let t = recovery_time(&n, &format!("room:recover{missed}"), missed).await;
            println!("{label}: join replaying {missed} missed broadcasts: {t:?}");
        }
    }
}
