//! Clustered: what the backend broadcasts reaches the topic's subscribers on other nodes.

use std::time::{Duration, Instant};

use gateway::Config;
use serde_json::json;
use testkit::eventually;
use testkit::redis::RedisServer;

use crate::common::TestNode;
use crate::support::{call, config, push, spec, ws, ExampleBackend, SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_broadcasts_reach_other_nodes() {
    let redis = RedisServer::start().await;
    let backend = ExampleBackend::start(Some(SECRET)).await;
    let node = |id: &str| Config {
        redis_url: Some(redis.url()),
        node_id: Some(id.into()),
        ..config(spec(backend.url()))
    };
    let (a, b) = (
        TestNode::start(node("a")).await,
        TestNode::start(node("b")).await,
    );
    for n in [&a, &b] {
        eventually(Duration::from_secs(10), "node ready", || async {
            n.http("GET", "/readyz", &[], "").await.0 == 200
        })
        .await;
    }
    let (mut ann, mut bob) = (ws(a.addr, "ann").await, ws(b.addr, "bob").await);
    let (jr, _) = ann.join("game:1", json!({})).await;
    bob.join("game:1", json!({})).await;
    // Node b subscribes to Redis in the background after bob's join: probe until it hears a.
    let start = Instant::now();
    let mut probe = 0;
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "node b never heard node a"
        );
        probe += 1;
        a.broadcast("game:1", "probe", json!({"n": probe})).await;
        if let Ok(f) = tokio::time::timeout(Duration::from_millis(100), bob.recv_json()).await {
            assert_eq!(f[3], "probe");
            break;
        }
    }
    // Flush: every probe up to a final one.
    probe += 1;
    a.broadcast("game:1", "probe", json!({"n": probe})).await;
    while bob.recv_json().await[4]["n"] != probe {}
    while ann.recv_json().await[4]["n"] != probe {}

    let shout = call(&mut ann, &jr, "game:1", "shout", json!({"body": "across"})).await;
    assert_eq!(shout[4]["status"], "ok");
    assert_eq!(
        bob.recv_json().await,
        json!([null, null, "game:1", "shout", {"body": "across"}])
    );
    push(&mut ann, &jr, "game:1", "typing", json!({"on": true})).await;
    assert_eq!(bob.recv_json().await[3], "typing");
}
